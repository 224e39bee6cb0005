"""My requests: the unbind requests and number-tag statements of the verified number's holder (from any session
or channel), with status and due date. Only ever the asker's own, and never a previous holder's."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date
from typing import Any

from dialogs import escalation
from dialogs.model import Choice, Ctx, Edge, Effect, Flow, Lines, Localized, MenuEntry, Msg, Reply, Step
from dialogs.results import RequestList, answer
from domain import beijing

VIEW = "requests.view"
LADDER = "requests.ladder"
OPEN = ("queued", "submitted", "processing")


def start(ctx: Ctx) -> Step:
    # Requests belong to the verified number, not to this chat (invariant 7): until this conversation has
    # verified one, there is nobody to show requests for.
    if not isinstance(ctx.data.get("verified"), dict):
        return Step("@verify", ctx.with_data(goal="requests"), (Reply(Msg("requests.verify_first")),))
    return Step(VIEW, ctx.with_data(goal=None), (), (Effect("requests.list", _list_args(ctx)),))


def _list_args(ctx: Ctx) -> dict[str, Any]:
    # The verified number's carrier is looked up for the ladder's second rung (its complaint line).
    verified = ctx.data.get("verified") or {}
    return {"verification_id": verified.get("id")} if verified.get("id") else {}


def _tag(item: Mapping[str, Any]) -> Msg:
    kind = "tag.clear_harassment" if item.get("kind") == "clear_harassment" else "tag.new_holder"
    return Msg("requests.tag", {"kind": Msg(kind), "code": str(item.get("code", "")),
                                "masked": str(item.get("masked", "")), "date": str(item.get("date", ""))})


def _today(ctx: Ctx) -> date:
    return beijing.today(ctx.event.now)  # the user's calendar day is Beijing's


def _stored(ctx: Ctx) -> list[Mapping[str, Any]]:
    items = ctx.data.get("requests_items")
    return list(items) if isinstance(items, list) else []


def _choices(ctx: Ctx | None = None) -> tuple[Choice, ...]:
    ladders: list[Choice] = []
    if ctx is not None:
        ladders = [Choice(f"esc:{i['reference']}", Msg("requests.next_steps", {"reference": str(i["reference"])}))
                   for i in _stored(ctx) if escalation.needs_ladder(i, _today(ctx))][:3]
    return (*ladders, Choice("refresh", Msg("requests.refresh")), Choice("menu", Msg("common.back_to_menu")))


def _platform_line(p: Mapping[str, Any]) -> Msg:
    name = Localized(str(p["name_zh"]), str(p["name_en"]))
    status = Msg(f"requests.status.{p['status']}")
    if p.get("reason") and p["status"] in ("rejected", "refused"):
        reason = p["reason"] if p["reason"] in escalation.REASONS else "other"
        return Msg("requests.platform_line_reason", {"name": name, "status": status,
                                                     "reason": Msg(f"unbind.reason.{reason}")})
    return Msg("requests.platform_line", {"name": name, "status": status})


def _item(item: Mapping[str, Any], today: date | None = None) -> Msg:
    platforms = Lines(tuple(_platform_line(p) for p in item.get("platforms", [])))
    if item["status"] in ("done", "rejected", "refused"):
        due = Msg("requests.finished")
    else:
        due = Msg("unbind.due_estimated" if item.get("estimated") else "unbind.due", {"date": str(item["due"])})
    rung = escalation.status_line(item, today) if today is not None else None
    if rung is not None:
        due = Msg("requests.due_and_rung", {"due": due, "rung": rung})
    return Msg("requests.item", {"reference": str(item["reference"]),
                                 "status": Msg(f"requests.status.{item['status']}"), "due": due, "lines": platforms})


def _ladder_reply(ctx: Ctx) -> Reply:
    reference = ctx.data.get("requests_ladder")
    item = next((i for i in _stored(ctx) if i["reference"] == reference), None)
    if item is None:
        return Reply(Msg("requests.summary_final", {"count": len(_stored(ctx))}), _choices(ctx))
    return Reply(escalation.detail(item, str(ctx.data.get("requests_carrier") or ""),
                                   str((ctx.data.get("verified") or {}).get("masked", "")), _today(ctx)),
                 (Choice("list", Msg("requests.back_to_list")), Choice("menu", Msg("common.back_to_menu"))))


def _view(ctx: Ctx) -> Step:
    event = ctx.event
    if event.kind == "result" and event.effect == "requests.list":
        listed = answer(event, RequestList)
        items = list(listed.get("items", []))
        tags = [Reply(_tag(t)) for t in list(listed.get("tags", []))[:5]]
        data = ctx.with_data(requests_items=items[:10] or None, requests_carrier=listed.get("carrier") or None)
        fresh = Ctx(VIEW, data, event)
        if not items:
            return Step(VIEW, data, (*tags, Reply(Msg("requests.none"), _choices())))
        replies = [Reply(_item(item, _today(ctx))) for item in items[:10]] + tags
        # "We'll tell you when something changes" only while something still can.
        summary = "requests.summary" if any(i["status"] in OPEN for i in items) else "requests.summary_final"
        replies.append(Reply(Msg(summary, {"count": len(items)}), _choices(fresh)))
        return Step(VIEW, data, tuple(replies))
    if event.kind == "choice" and event.choice.startswith("esc:"):
        data = ctx.with_data(requests_ladder=event.choice[4:])
        return Step(LADDER, data, (_ladder_reply(Ctx(LADDER, data, event)),))
    if event.kind == "choice" and event.choice == "refresh":
        return start(ctx)
    if event.kind == "choice" and event.choice == "menu":
        return Step("@menu", ctx.data)
    return Step(VIEW, ctx.data, (Reply(Msg("menu.pick_one"), error=True), Reply(Msg("lookup.next"), _choices(ctx))))


def _ladder(ctx: Ctx) -> Step:
    event = ctx.event
    if event.kind == "choice" and event.choice == "list":
        return Step(VIEW, ctx.with_data(requests_ladder=None), (), (Effect("requests.list", _list_args(ctx)),))
    if event.kind == "choice" and event.choice == "menu":
        return Step("@menu", ctx.with_data(requests_ladder=None))
    return Step(LADDER, ctx.data, (Reply(Msg("menu.pick_one"), error=True), _ladder_reply(ctx)))


PROMPTS = {VIEW: lambda ctx: Reply(Msg("lookup.next"), _choices(ctx)), LADDER: _ladder_reply}

FLOW = Flow(
    name="requests",
    handlers={VIEW: _view, LADDER: _ladder},
    edges=(Edge(VIEW, "@menu", "back"), Edge(VIEW, LADDER, "next steps for a rejected / overdue one"),
           Edge(VIEW, "@verify", "refresh, no number verified"),
           Edge(LADDER, VIEW, "back to the list"), Edge(LADDER, "@menu", "back")),
    starters={"requests": start},
    entries=(Edge("@requests", VIEW, "verified in this chat"), Edge("@requests", "@verify", "needs verification")),
    prompts=PROMPTS,
    menu=MenuEntry("requests", "requests", 60),
    goals=("requests",),
    errand_keys=("requests_items", "requests_carrier", "requests_ladder"),
)
