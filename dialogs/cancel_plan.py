"""Pre-cancellation plan (注销前提醒): pick a date, get the checklist for one's own number, tick or snooze
items, change or cancel the plan. Reminders themselves are durable jobs run by the bot.

A checklist of any length: items are numbered in the text, the open ones come as buttons a page at a time,
and a typed number or name ticks the item with that number or name, never a hidden button position.
Cancelling the plan always asks first.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from typing import Any

from dialogs.dates import parse_plan_date
from dialogs.model import Choice, Ctx, Edge, Effect, Flow, Lines, Localized, MenuEntry, Msg, Reply, Step
from dialogs.results import PlanMarked, PlanView, answer
from dialogs.verify import verified_recently
from domain import beijing

DATE = "plan.date"
VIEW = "plan.view"
ITEM = "plan.item"
CANCEL = "plan.cancel_confirm"

PAGE = 8


# "10." "10)" "10、": what people type after a list number. chr() keeps CJK out of code literals.
_AFTER_NUMBER = ".)" + chr(0x3001)

def start(ctx: Ctx) -> Step:
    if not verified_recently(ctx):
        return Step("@verify", ctx.with_data(goal="plan"), (Reply(Msg("plan.intro")), Reply(Msg("verify.needed"))))
    return Step(VIEW, ctx.with_data(goal=None, plan_page=None), (), (Effect("plan.load"),))


def _date_reply(ctx: Ctx) -> Reply:
    back = (Choice("view", Msg("plan.back")),) if _plan(ctx) else ()
    return Reply(Msg("plan.ask_date"), (*back, Choice("menu", Msg("common.back_to_menu"))), date_picker=True)


def _plan(ctx: Ctx) -> Mapping[str, Any]:
    plan = ctx.data.get("plan")
    return plan if isinstance(plan, dict) else {}


def _items(ctx: Ctx) -> list[Mapping[str, Any]]:
    return list(_plan(ctx).get("items", []))


def _name(item: Mapping[str, Any]) -> Localized:
    return Localized(str(item["name_zh"]), str(item["name_en"]))


def _when(days: int) -> Msg:
    return Msg("plan.when_today") if days <= 0 else Msg("plan.when_days", {"days": days})


def _open_numbered(ctx: Ctx) -> list[tuple[int, Mapping[str, Any]]]:
    return [(n, item) for n, item in enumerate(_items(ctx), start=1) if not item["done"]]


def _page(ctx: Ctx) -> int:
    pages = max(1, -(-len(_open_numbered(ctx)) // PAGE))
    page = ctx.data.get("plan_page")
    return min(max(int(page), 0), pages - 1) if isinstance(page, int) else 0


def _choices(ctx: Ctx) -> tuple[Choice, ...]:
    open_items = _open_numbered(ctx)
    page = _page(ctx)
    shown = open_items[page * PAGE:(page + 1) * PAGE]
    choices = [Choice(f"i:{item['id']}", Msg("plan.item_choice_n", {"n": n, "name": _name(item)}))
               for n, item in shown]
    if page > 0:
        choices.append(Choice("page:prev", Msg("plan.page_prev")))
    if (page + 1) * PAGE < len(open_items):
        choices.append(Choice("page:next", Msg("plan.page_next", {"count": len(open_items) - (page + 1) * PAGE})))
    choices += [Choice("list", Msg("plan.show_list")), Choice("date", Msg("plan.change_date")),
                Choice("cancel", Msg("plan.cancel")), Choice("menu", Msg("common.back_to_menu"))]
    return tuple(choices)


def _view_reply(ctx: Ctx) -> Reply:
    plan = _plan(ctx)
    lines = []
    for number, item in enumerate(_items(ctx), start=1):
        key = "plan.line_done" if item["done"] else ("plan.line_snoozed" if item.get("snoozed_until")
                                                      else "plan.line_todo")
        lines.append(Msg(key, {"n": number, "name": _name(item), "until": str(item.get("snoozed_until") or "")}))
    return Reply(Msg("plan.view", {"date": str(plan.get("date", "")), "when": _when(int(plan.get("days_left", 0))),
                                   "done": int(plan.get("done", 0)), "total": int(plan.get("total", 0)),
                                   "lines": Lines(tuple(lines))}), _choices(ctx), numbered=False)


def _short_reply(ctx: Ctx, note: Msg) -> Reply:
    """After a tick: one line and the buttons, not the whole list again."""
    return Reply(note, _choices(ctx), numbered=False)


def _item_reply(ctx: Ctx) -> Reply:
    item_id = ctx.data.get("plan_item")
    item = next((i for i in _items(ctx) if i["id"] == item_id), None)
    name: Localized = _name(item) if item else Localized("", "")
    return Reply(Msg("plan.item", {"name": name}),
                 (Choice("done", Msg("plan.tick")), Choice("snooze", Msg("plan.snooze")),
                  Choice("back", Msg("plan.back"))))


def _cancel_reply(ctx: Ctx) -> Reply:
    plan = _plan(ctx)
    return Reply(Msg("plan.cancel_ask", {"date": str(plan.get("date", "")), "total": int(plan.get("total", 0))}),
                 (Choice("confirm", Msg("plan.cancel_yes")), Choice("back", Msg("plan.cancel_no"))))


def _with_plan(ctx: Ctx, plan: Mapping[str, Any], *before: Reply) -> Step:
    data = ctx.with_data(plan=dict(plan), plan_item=None)
    return Step(VIEW, data, (*before, _view_reply(Ctx(VIEW, data, ctx.event))))


def _marked(ctx: Ctx) -> Step:
    """A tick or snooze came back: say what changed in one line, about the item the runner says it changed."""
    marked = answer(ctx.event, PlanMarked)
    plan = marked.get("plan")
    if not marked["ok"] or not isinstance(plan, dict):
        return Step(VIEW, ctx.with_data(plan_item=None),
                    (Reply(Msg("lookup.unavailable"), error=True), _view_reply(ctx)))
    data = ctx.with_data(plan=dict(plan), plan_item=None)
    fresh = Ctx(VIEW, data, ctx.event)
    # The runner's word for which item changed; an outcome kept from before it said so (a replay within the day
    # outcomes are kept) falls back to the item this conversation asked about.
    item_id = marked.get("item_id", ctx.data.get("plan_item"))
    numbered = [(n, i) for n, i in enumerate(_items(fresh), start=1) if i["id"] == item_id]
    left = len(_open_numbered(fresh))
    if not numbered:
        return Step(VIEW, data, (_view_reply(fresh),))
    n, item = numbered[0]
    if item["done"]:
        note = Msg("plan.ticked" if left else "plan.all_done", {"n": n, "name": _name(item), "left": left})
    elif item.get("snoozed_until"):
        note = Msg("plan.snoozed", {"n": n, "name": _name(item), "until": str(item["snoozed_until"])})
    else:
        note = Msg("plan.unticked", {"n": n, "name": _name(item)})
    return Step(VIEW, data, (_short_reply(fresh, note),))


def _fold(text: str) -> str:
    return "".join(unicodedata.normalize("NFKC", text).casefold().split())


def _by_name(ctx: Ctx, text: str) -> list[tuple[int, Mapping[str, Any]]]:
    wanted = _fold(text)
    if len(wanted) < 2:
        return []
    found = []
    for n, item in enumerate(_items(ctx), start=1):
        names = (_fold(str(item["name_zh"])), _fold(str(item["name_en"])))
        if any(wanted == name or wanted in name for name in names):
            found.append((n, item))
    return found


def _tick(ctx: Ctx, n: int, item: Mapping[str, Any]) -> Step:
    if item["done"]:
        return Step(VIEW, ctx.data, (_short_reply(ctx, Msg("plan.already_done", {"n": n, "name": _name(item)})),))
    return Step(VIEW, ctx.with_data(plan_item=item["id"]), (),
                (Effect("plan.mark", {"item_id": item["id"], "action": "done"}),))


def _typed(ctx: Ctx) -> Step | None:
    text = unicodedata.normalize("NFKC", ctx.event.text).strip().rstrip(_AFTER_NUMBER)
    items = _items(ctx)
    if text.isdigit() and len(text) <= 3:
        n = int(text)
        if 1 <= n <= len(items):
            return _tick(ctx, n, items[n - 1])
        return Step(VIEW, ctx.data, (Reply(Msg("plan.number_range", {"count": len(items)}), error=True),
                                     _short_reply(ctx, Msg("plan.pick_hint"))))
    found = _by_name(ctx, text)
    if len(found) == 1:
        return _tick(ctx, *found[0])
    if len(found) > 1:
        return Step(VIEW, ctx.data, (Reply(Msg("plan.which", {"lines": Lines(tuple(
            Msg("plan.line_todo", {"n": n, "name": _name(i)}) for n, i in found))})), _short_reply(
            ctx, Msg("plan.pick_hint"))))
    return None


def _view(ctx: Ctx) -> Step:
    event = ctx.event
    if event.kind == "result" and event.effect == "plan.load":
        loaded = answer(event, PlanView)
        plan = loaded.get("plan")
        if not loaded.get("ok"):
            return Step("@menu", ctx.data, (Reply(Msg("lookup.unavailable"), error=True),))
        if not plan:
            data = ctx.with_data(plan=None)
            return Step(DATE, data, (Reply(Msg("plan.intro")), _date_reply(Ctx(DATE, data, event))))
        return _with_plan(ctx, plan)
    if event.kind == "result" and event.effect == "plan.mark":
        return _marked(ctx)
    if event.kind == "choice":
        if event.choice.startswith("i:") and event.choice[2:].isdigit():
            data = ctx.with_data(plan_item=int(event.choice[2:]))
            return Step(ITEM, data, (_item_reply(Ctx(ITEM, data, event)),))
        if event.choice in ("page:next", "page:prev"):
            data = ctx.with_data(plan_page=_page(ctx) + (1 if event.choice == "page:next" else -1))
            fresh = Ctx(VIEW, data, event)
            return Step(VIEW, data, (_short_reply(fresh, Msg("plan.page", {"page": _page(fresh) + 1})),))
        if event.choice == "list":
            return Step(VIEW, ctx.data, (_view_reply(ctx),))
        if event.choice == "date":
            return Step(DATE, ctx.data, (_date_reply(ctx),))
        if event.choice == "cancel":
            return Step(CANCEL, ctx.data, (_cancel_reply(ctx),))
        if event.choice == "menu":
            return Step("@menu", ctx.with_data(plan_page=None))
    if event.kind == "text":
        typed = _typed(ctx)
        if typed is not None:
            return typed
    return Step(VIEW, ctx.data, (Reply(Msg("plan.pick_hint"), error=True), _short_reply(ctx, Msg("plan.pick_or"))))


def _cancel(ctx: Ctx) -> Step:
    event = ctx.event
    if event.kind == "result" and event.effect == "plan.cancel":
        return Step("@menu", ctx.with_data(plan=None, plan_page=None), (Reply(Msg("plan.cancelled")),))
    if event.kind == "choice" and event.choice == "confirm":
        return Step(CANCEL, ctx.data, (), (Effect("plan.cancel"),))
    if event.kind == "choice" and event.choice == "back":
        return Step(VIEW, ctx.data, (_short_reply(ctx, Msg("plan.kept")),))
    return Step(CANCEL, ctx.data, (Reply(Msg("menu.pick_one"), error=True), _cancel_reply(ctx)))


def _saved_note(plan: Mapping[str, Any]) -> Msg:
    days = int(plan.get("days_left", 0))
    if days <= 0:
        return Msg("plan.saved_today")
    if days < 7:
        return Msg("plan.saved_soon", {"when": _when(days)})
    return Msg("plan.saved")


def _date(ctx: Ctx) -> Step:
    event = ctx.event
    if event.kind == "result" and event.effect == "plan.save":
        saved = answer(event, PlanView)
        plan = saved.get("plan")
        if not saved["ok"] or not isinstance(plan, dict):
            return Step("@menu", ctx.data, (Reply(Msg("lookup.unavailable"), error=True),))
        return _with_plan(ctx, plan, Reply(_saved_note(plan)))
    if event.kind == "choice" and event.choice == "menu":
        return Step("@menu", ctx.data)
    if event.kind == "choice" and event.choice == "view" and _plan(ctx):
        return Step(VIEW, ctx.data, (_view_reply(ctx),))
    if event.kind != "text":
        return Step(DATE, ctx.data, (Reply(Msg("plan.date.unreadable"), error=True), _date_reply(ctx)))
    today = beijing.today(event.now)  # the user's calendar day is Beijing's
    parsed = parse_plan_date(event.text, today)
    if parsed.problem != "ok" or parsed.value is None:
        return Step(DATE, ctx.data, (Reply(Msg(f"plan.date.{parsed.problem}"), error=True), _date_reply(ctx)))
    verified = ctx.data.get("verified") or {}
    return Step(DATE, ctx.data, (), (Effect("plan.save", {"verification_id": verified.get("id"),
                                                          "date": parsed.value.isoformat()}),))


def _item(ctx: Ctx) -> Step:
    event = ctx.event
    if event.kind == "result" and event.effect == "plan.mark":
        step = _marked(ctx)
        return Step(VIEW, step.data, step.replies)
    if event.kind == "choice" and event.choice in ("done", "snooze"):
        return Step(ITEM, ctx.data, (), (Effect("plan.mark", {"item_id": ctx.data.get("plan_item"),
                                                              "action": event.choice}),))
    if event.kind == "choice" and event.choice == "back":
        return Step(VIEW, ctx.with_data(plan_item=None), (_short_reply(ctx, Msg("plan.pick_or")),))
    return Step(ITEM, ctx.data, (Reply(Msg("menu.pick_one"), error=True), _item_reply(ctx)))


PROMPTS = {DATE: _date_reply, VIEW: lambda ctx: _short_reply(ctx, Msg("plan.pick_or")), ITEM: _item_reply,
           CANCEL: _cancel_reply}

FLOW = Flow(
    name="plan",
    handlers={DATE: _date, VIEW: _view, ITEM: _item, CANCEL: _cancel},
    edges=(
        Edge(VIEW, DATE, "no plan yet / change date"),
        Edge(VIEW, ITEM, "tap an item"),
        Edge(VIEW, CANCEL, "cancel plan (asks first)"),
        Edge(VIEW, "@menu", "back"),
        Edge(CANCEL, "@menu", "cancelled"),
        Edge(CANCEL, VIEW, "keep the plan"),
        Edge(DATE, VIEW, "date saved / back to plan"),
        Edge(DATE, "@menu", "back"),
        Edge(ITEM, VIEW, "ticked / snoozed / back"),
    ),
    starters={"plan": start},
    entries=(Edge("@plan", VIEW, "verified"), Edge("@plan", "@verify", "needs verification")),
    prompts=PROMPTS,
    menu=MenuEntry("plan", "plan", 50),
    goals=("plan",),
    errand_keys=("plan_item", "plan_page"),
)
