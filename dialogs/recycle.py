"""二次号检测: is a number second-hand? Open to anyone (no verification), rate-limited by the runner.

Answers only: reissued or not, how long ago it was released, and whether previous-tenure bindings remain.
"""

from __future__ import annotations

from dialogs.model import Choice, Ctx, Edge, Effect, Flow, MenuEntry, Msg, Param, Reply, Step
from dialogs.phones import parse_mainland_mobile
from dialogs.results import RecycleAnswer, answer

PHONE = "recycle.phone"
DONE = "recycle.done"


def start(ctx: Ctx) -> Step:
    typed = ctx.data.get("typed_phone")
    if isinstance(typed, dict) and typed.get("sealed"):
        return Step(PHONE, ctx.with_data(typed_phone=None), (),
                    (Effect("recycle.check", {"sealed": str(typed["sealed"])}),))
    return Step(PHONE, ctx.data, (_ask(),))


def _ask() -> Reply:
    return Reply(Msg("recycle.ask"), (Choice("menu", Msg("common.back_to_menu")),), expects="phone")


def _again(ctx: Ctx | None = None) -> Reply:
    # The buying tips once per conversation; after that, just the way on.
    seen = ctx is not None and bool(ctx.data.get("recycle_tips_seen"))
    return Reply(Msg("recycle.next" if seen else "recycle.tips"),
                 (Choice("again", Msg("recycle.again")), Choice("menu", Msg("common.back_to_menu"))))


def _ago(days: int) -> Msg:
    if days >= 365:
        return Msg("recycle.ago_years", {"years": days // 365})
    if days >= 60:
        return Msg("recycle.ago_months", {"months": days // 30})
    return Msg("recycle.ago_days", {"days": days})


def _phone(ctx: Ctx) -> Step:
    event = ctx.event
    if event.kind == "result" and event.effect == "recycle.check":
        return _answer(ctx)
    if event.kind == "choice" and event.choice == "menu":
        return Step("@menu", ctx.data)
    if event.kind == "text":
        parsed = parse_mainland_mobile(event.text)
        if parsed.problem == "ok":
            return Step(PHONE, ctx.data, (), (Effect("recycle.check", {"phone": parsed.national}),))
        return Step(PHONE, ctx.data, (Reply(Msg(f"verify.phone.{parsed.problem}"), error=True), _ask()))
    return Step(PHONE, ctx.data, (Reply(Msg("verify.phone_expected"), error=True), _ask()))


def _answer(ctx: Ctx) -> Step:
    result = answer(ctx.event, RecycleAnswer)
    if not result.get("ok"):
        reason = str(result.get("reason", "unavailable"))
        if reason == "rate_limited":
            reply = Reply(Msg("recycle.rate_limited", {"minutes": int(result.get("retry_minutes", 60))}), error=True)
            return Step("@menu", ctx.data, (reply,))
        return Step("@menu", ctx.data, (Reply(Msg("lookup.unavailable"), error=True),))
    masked = str(result["masked"])
    if not result.get("known"):
        verdict = Msg("recycle.unknown", {"masked": masked})
    elif result.get("reissued"):
        days = result.get("released_days_ago")
        ago: Param = _ago(days) if isinstance(days, int) else Msg("recycle.ago_unknown")
        remain = Msg("recycle.bindings_remain" if result.get("previous_bindings_remain") else "recycle.bindings_clear")
        verdict = Msg("recycle.reissued", {"masked": masked, "ago": ago, "remain": remain})
    else:
        verdict = Msg("recycle.not_reissued", {"masked": masked})
    return Step(DONE, ctx.with_data(recycle_tips_seen=True), (Reply(verdict), _again(ctx)))


def _done(ctx: Ctx) -> Step:
    event = ctx.event
    if event.kind == "choice" and event.choice == "again":
        return start(ctx)
    if event.kind == "choice" and event.choice == "menu":
        return Step("@menu", ctx.data)
    if event.kind == "text" and parse_mainland_mobile(event.text).problem == "ok":
        return _phone(Ctx(PHONE, ctx.data, event))
    return Step(DONE, ctx.data, (Reply(Msg("menu.pick_one"), error=True), _again(ctx)))


PROMPTS = {PHONE: lambda ctx: _ask(), DONE: _again}

FLOW = Flow(
    name="recycle",
    handlers={PHONE: _phone, DONE: _done},
    edges=(
        Edge(PHONE, DONE, "answered"),
        Edge(PHONE, "@menu", "back / rate limited"),
        Edge(DONE, PHONE, "check another"),
        Edge(DONE, "@menu", "back"),
    ),
    starters={"recycle": start},
    entries=(Edge("@recycle", PHONE, ""),),
    prompts=PROMPTS,
    menu=MenuEntry("recycle", "recycle", 30),
)
