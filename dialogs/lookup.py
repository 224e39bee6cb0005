"""Lookup: the verified number's carrier, 开户时间 and bound platforms, split by tenure.

Shows the previous holder's bindings only as platform names, counts and months — never anything else.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from dialogs.model import Choice, Ctx, Edge, Effect, Flow, Lines, Localized, MenuEntry, Msg, Param, Reply, Step
from dialogs.results import Lookup, answer
from dialogs.verify import verified_recently

LOOKUP = "lookup"
DONE = "lookup.done"


def start(ctx: Ctx) -> Step:
    if not verified_recently(ctx):
        return Step("@verify", ctx.with_data(goal="lookup"), (Reply(Msg("verify.needed")),))
    verified = ctx.data["verified"]
    return Step(LOOKUP, ctx.with_data(goal=None), (Reply(Msg("lookup.working")),),
                (Effect("registry.lookup", {"verification_id": verified["id"]}),))


def _done_reply() -> Reply:
    return Reply(
        Msg("lookup.next"),
        (Choice("unbind", Msg("menu.unbind")), Choice("menu", Msg("common.back_to_menu"))),
    )


def _platform_lines(items: Sequence[Mapping[str, Any]], mark_manual: bool = False) -> Lines:
    """For the previous holder's bindings, says which ones cannot be unbound remotely (issue 12)."""
    return Lines(tuple(
        Msg("lookup.platform_line_manual" if mark_manual and i.get("remote") is False else "lookup.platform_line",
            {"name": Localized(str(i["name_zh"]), str(i["name_en"])), "month": str(i["month"])})
        for i in items
    ))


def _carrier(result: Mapping[str, Any]) -> Param:
    carrier = Msg(f"carrier.{result['carrier']}")
    if result.get("ported"):
        carrier = Msg("lookup.carrier_ported", {"carrier": carrier,
                                                "original": Msg(f"carrier.{result['original_carrier']}")})
    if result.get("virtual_operator"):
        carrier = Msg("lookup.carrier_virtual", {"carrier": carrier})
    return carrier


def _lookup(ctx: Ctx) -> Step:
    event = ctx.event
    if event.kind != "result" or event.effect != "registry.lookup":
        return Step(LOOKUP, ctx.data, (Reply(Msg("lookup.working")),))
    result = answer(event, Lookup)
    if not result.get("ok"):
        reason = str(result.get("reason", "unavailable"))
        key = {"unknown": "lookup.unknown", "not_assigned": "lookup.not_assigned"}.get(reason, "lookup.unavailable")
        return Step("@menu", ctx.data, (Reply(Msg(key), error=True),))
    previous = list(result.get("previous", []))
    current = list(result.get("current", []))
    summary: dict[str, Param] = {
        "masked": str(result["masked"]),
        "carrier": _carrier(result),
        "tenure_start": str(result.get("tenure_start") or "—"),
    }
    replies: list[Reply] = [Reply(Msg("lookup.summary", summary))]
    if result.get("ported"):
        replies.append(Reply(Msg("lookup.ported_note")))
    if previous:
        replies.append(Reply(Msg("lookup.previous", {"count": len(previous),
                                                     "lines": _platform_lines(previous, mark_manual=True)})))
    else:
        replies.append(Reply(Msg("lookup.previous_none")))
    if current:
        replies.append(Reply(Msg("lookup.current", {"count": len(current), "lines": _platform_lines(current)})))
    else:
        replies.append(Reply(Msg("lookup.current_none")))
    replies.append(_done_reply())
    return Step(DONE, ctx.data, tuple(replies))


def _done(ctx: Ctx) -> Step:
    event = ctx.event
    if event.kind == "choice" and event.choice == "unbind":
        return Step("@unbind", ctx.data)
    if event.kind == "choice" and event.choice == "menu":
        return Step("@menu", ctx.data)
    return Step(DONE, ctx.data, (Reply(Msg("menu.pick_one"), error=True), _done_reply()))


PROMPTS = {DONE: lambda ctx: _done_reply()}

FLOW = Flow(
    name="lookup",
    handlers={LOOKUP: _lookup, DONE: _done},
    edges=(
        Edge(LOOKUP, DONE, "bindings shown"),
        Edge(LOOKUP, "@menu", "registry error"),
        Edge(DONE, "@unbind", "unbind"),
        Edge(DONE, "@menu", "back"),
    ),
    starters={"lookup": start},
    entries=(Edge("@lookup", LOOKUP, "verified < 30 min"), Edge("@lookup", "@verify", "needs verification")),
    prompts=PROMPTS,
    menu=MenuEntry("lookup", "lookup", 10),
    goals=("lookup",),
)
