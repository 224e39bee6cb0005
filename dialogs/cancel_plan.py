"""Pre-cancellation plan (注销前提醒): pick a date, get the checklist for one's own number, tick or snooze
items, change or cancel the plan. Reminders themselves are durable jobs run by the bot."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from dialogs.dates import parse_plan_date
from dialogs.model import Choice, Ctx, Edge, Effect, Flow, Lines, Localized, Msg, Reply, Step
from dialogs.verify import verified_recently

DATE = "plan.date"
VIEW = "plan.view"
ITEM = "plan.item"

MAX_ITEM_BUTTONS = 8


def start(ctx: Ctx) -> Step:
    if not verified_recently(ctx):
        return Step("@verify", ctx.with_data(goal="plan"), (Reply(Msg("plan.intro")), Reply(Msg("verify.needed"))))
    return Step(VIEW, ctx.with_data(goal=None), (), (Effect("plan.load"),))


def _date_reply() -> Reply:
    return Reply(Msg("plan.ask_date"), (Choice("menu", Msg("common.back_to_menu")),), date_picker=True)


def _plan(ctx: Ctx) -> Mapping[str, Any]:
    plan = ctx.data.get("plan")
    return plan if isinstance(plan, dict) else {}


def _name(item: Mapping[str, Any]) -> Localized:
    return Localized(str(item["name_zh"]), str(item["name_en"]))


def _view_reply(ctx: Ctx) -> Reply:
    plan = _plan(ctx)
    items = list(plan.get("items", []))
    lines = []
    for number, item in enumerate(items, start=1):
        key = "plan.line_done" if item["done"] else ("plan.line_snoozed" if item.get("snoozed_until")
                                                      else "plan.line_todo")
        lines.append(Msg(key, {"n": number, "name": _name(item), "until": str(item.get("snoozed_until") or "")}))
    open_items = [i for i in items if not i["done"]]
    choices = [Choice(f"i:{i['id']}", Msg("plan.item_choice", {"name": _name(i)}))
               for i in open_items[:MAX_ITEM_BUTTONS]]
    choices += [Choice("date", Msg("plan.change_date")), Choice("cancel", Msg("plan.cancel")),
                Choice("menu", Msg("common.back_to_menu"))]
    return Reply(Msg("plan.view", {"date": str(plan.get("date", "")), "days": int(plan.get("days_left", 0)),
                                   "done": int(plan.get("done", 0)), "total": int(plan.get("total", 0)),
                                   "lines": Lines(tuple(lines))}), tuple(choices))


def _item_reply(ctx: Ctx) -> Reply:
    item_id = ctx.data.get("plan_item")
    item = next((i for i in _plan(ctx).get("items", []) if i["id"] == item_id), None)
    name: Localized = _name(item) if item else Localized("", "")
    return Reply(Msg("plan.item", {"name": name}),
                 (Choice("done", Msg("plan.tick")), Choice("snooze", Msg("plan.snooze")),
                  Choice("back", Msg("plan.back"))))


def _with_plan(ctx: Ctx, plan: Mapping[str, Any], *before: Reply) -> Step:
    data = ctx.with_data(plan=dict(plan), plan_item=None)
    return Step(VIEW, data, (*before, _view_reply(Ctx(VIEW, data, ctx.event))))


def _view(ctx: Ctx) -> Step:
    event = ctx.event
    if event.kind == "result" and event.effect in ("plan.load", "plan.mark"):
        plan = event.result.get("plan")
        if not event.result.get("ok"):
            return Step("@menu", ctx.data, (Reply(Msg("lookup.unavailable"), error=True),))
        if not plan:
            return Step(DATE, ctx.with_data(plan=None), (Reply(Msg("plan.intro")), _date_reply()))
        return _with_plan(ctx, plan)
    if event.kind == "result" and event.effect == "plan.cancel":
        return Step("@menu", ctx.with_data(plan=None), (Reply(Msg("plan.cancelled")),))
    if event.kind == "choice":
        if event.choice.startswith("i:") and event.choice[2:].isdigit():
            return Step(ITEM, ctx.with_data(plan_item=int(event.choice[2:])),
                        (_item_reply(Ctx(ITEM, ctx.with_data(plan_item=int(event.choice[2:])), event)),))
        if event.choice == "date":
            return Step(DATE, ctx.data, (_date_reply(),))
        if event.choice == "cancel":
            return Step(VIEW, ctx.data, (), (Effect("plan.cancel"),))
        if event.choice == "menu":
            return Step("@menu", ctx.data)
    return Step(VIEW, ctx.data, (Reply(Msg("menu.pick_one"), error=True), _view_reply(ctx)))


def _date(ctx: Ctx) -> Step:
    event = ctx.event
    if event.kind == "result" and event.effect == "plan.save":
        if not event.result.get("ok"):
            return Step("@menu", ctx.data, (Reply(Msg("lookup.unavailable"), error=True),))
        return _with_plan(ctx, event.result["plan"], Reply(Msg("plan.saved")))
    if event.kind == "choice" and event.choice == "menu":
        return Step("@menu", ctx.data)
    if event.kind != "text":
        return Step(DATE, ctx.data, (Reply(Msg("plan.date.unreadable"), error=True), _date_reply()))
    today = (event.now + timedelta(hours=8)).date()  # the user's calendar day is Beijing's
    parsed = parse_plan_date(event.text, today)
    if parsed.problem != "ok" or parsed.value is None:
        return Step(DATE, ctx.data, (Reply(Msg(f"plan.date.{parsed.problem}"), error=True), _date_reply()))
    verified = ctx.data.get("verified") or {}
    return Step(DATE, ctx.data, (), (Effect("plan.save", {"verification_id": verified.get("id"),
                                                          "date": parsed.value.isoformat()}),))


def _item(ctx: Ctx) -> Step:
    event = ctx.event
    if event.kind == "result" and event.effect == "plan.mark":
        if not event.result.get("ok") or not event.result.get("plan"):
            return Step(VIEW, ctx.data, (Reply(Msg("menu.pick_one"), error=True), _view_reply(ctx)))
        return _with_plan(ctx, event.result["plan"])
    if event.kind == "choice" and event.choice in ("done", "snooze"):
        return Step(ITEM, ctx.data, (), (Effect("plan.mark", {"item_id": ctx.data.get("plan_item"),
                                                              "action": event.choice}),))
    if event.kind == "choice" and event.choice == "back":
        return Step(VIEW, ctx.with_data(plan_item=None), (_view_reply(ctx),))
    return Step(ITEM, ctx.data, (Reply(Msg("menu.pick_one"), error=True), _item_reply(ctx)))


FLOW = Flow(
    name="plan",
    handlers={DATE: _date, VIEW: _view, ITEM: _item},
    edges=(
        Edge(VIEW, DATE, "no plan yet / change date"),
        Edge(VIEW, ITEM, "pick an item"),
        Edge(VIEW, "@menu", "cancel plan / back"),
        Edge(DATE, VIEW, "date saved"),
        Edge(DATE, "@menu", "back"),
        Edge(ITEM, VIEW, "ticked / snoozed / back"),
    ),
)
PROMPTS = {DATE: lambda ctx: _date_reply(), VIEW: _view_reply, ITEM: _item_reply}
