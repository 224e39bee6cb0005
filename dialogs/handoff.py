"""Handing a conversation to support staff: waiting in the queue, talking with staff, asking before leaving.

Pure: the ticket itself lives outside (effects `ticket.open`, `ticket.message`, `ticket.close`), and staff
actions come back in as `result` events (`handoff.claimed`, `handoff.closed`, `handoff.timeout`). While staff
hold the conversation the bot says nothing to the user's text; it never drops a message without forwarding it.
"""

from __future__ import annotations

from typing import Any

from dialogs.model import Choice, Ctx, Edge, Effect, Event, Flow, MenuEntry, Msg, Reply, Step
from dialogs.results import StaffJoined, TicketOpened, answer

WAITING = "handoff.waiting"
WITH_STAFF = "handoff.with_staff"
CONFIRM_LEAVE = "handoff.confirm_leave"
STATES = frozenset({WAITING, WITH_STAFF, CONFIRM_LEAVE})

LEAVE = "leave"
STAY = "stay"
# Data this flow keeps while the user is with staff; dropped on the way out.
KEYS = ("handoff_reason", "handoff_return", "handoff_then", "handoff_then_arg", "handoff_by")

# Commands that answer in place: everything else would leave the human, so it is asked first.
_IN_PLACE = frozenset({"help", "human"})
# A file or picture cannot reach the console: staff see this placeholder and the user is told.
MEDIA_PLACEHOLDER = "[{kind}]"


def _leave_choice() -> Choice:
    return Choice(LEAVE, Msg("handoff.leave"))


def _waiting_prompt(ctx: Ctx) -> Reply:
    return Reply(Msg("handoff.still_waiting"), (_leave_choice(),))


def _with_staff_prompt(ctx: Ctx) -> Reply:
    return Reply(Msg("handoff.with_staff_note", {"staff": str(ctx.data.get("handoff_by") or "")}))


def _confirm_prompt(ctx: Ctx) -> Reply:
    return Reply(Msg("handoff.confirm_leave"), (_leave_choice(), Choice(STAY, Msg("handoff.stay"))))


def start(ctx: Ctx) -> Step:
    reason = "stuck" if ctx.data.get("handoff_reason") == "stuck" else "asked"
    data = ctx.with_data(**dict.fromkeys(KEYS))
    return Step(WAITING, data, (Reply(Msg("handoff.connecting")),), (Effect("ticket.open", {"reason": reason}),))


def _cleared(ctx: Ctx) -> dict[str, Any]:
    return ctx.with_data(**dict.fromkeys(KEYS))


def leave(ctx: Ctx) -> Step:
    """The user ends the handoff: the ticket closes, and the caller decides where the user goes next."""
    return Step("@menu", _cleared(ctx), (Reply(Msg("handoff.left")),), (Effect("ticket.close", {}),))


def _forward(ctx: Ctx) -> Effect:
    event = ctx.event
    if event.kind == "media":
        return Effect("ticket.message", {"text": MEDIA_PLACEHOLDER.format(kind=event.media or "file")})
    return Effect("ticket.message", {"text": event.text})


def _staff_result(ctx: Ctx) -> Step | None:
    """Staff actions, the same in every state of this flow."""
    event = ctx.event
    if event.kind != "result":
        return None
    if event.effect == "handoff.closed":
        return Step("@menu", _cleared(ctx), (Reply(Msg("handoff.closed")),))
    if event.effect == "handoff.timeout":
        return Step("@menu", _cleared(ctx), (Reply(Msg("handoff.timeout")),))
    if event.effect == "handoff.claimed":
        staff = answer(event, StaffJoined).get("staff", "")
        joined = Reply(Msg("handoff.joined", {"staff": staff}))
        if ctx.state == CONFIRM_LEAVE:
            data = ctx.with_data(handoff_by=staff, handoff_return=WITH_STAFF)
            return Step(CONFIRM_LEAVE, data, (joined, _confirm_prompt(ctx)))
        return Step(WITH_STAFF, ctx.with_data(handoff_by=staff), (joined,))
    return None


def _opened(ctx: Ctx) -> Step:
    """The answer to `ticket.open`: the place in the queue, or when staff will be back."""
    opened = answer(ctx.event, TicketOpened)
    if not opened["ok"]:
        return Step("@menu", _cleared(ctx), (Reply(Msg("handoff.unavailable"), error=True),))
    if opened.get("status") == "claimed":
        staff = opened.get("staff") or ""
        data = ctx.with_data(handoff_by=staff)
        return Step(WITH_STAFF, data, (Reply(Msg("handoff.with_staff_note", {"staff": staff})),))
    if not opened.get("in_hours"):
        msg = Msg("handoff.off_hours", {"hours": opened.get("hours", ""), "when": opened.get("opens_at", "")})
    else:
        msg = Msg("handoff.queued", {"position": opened.get("position") or 1,
                                     "minutes": opened.get("wait_minutes") or 1})
    return Step(WAITING, ctx.data, (Reply(msg, (_leave_choice(),)),))


def _waiting(ctx: Ctx) -> Step:
    event = ctx.event
    by_staff = _staff_result(ctx)
    if by_staff is not None:
        return by_staff
    if event.kind == "result" and event.effect == "ticket.open":
        return _opened(ctx)
    if event.kind == "choice" and event.choice == LEAVE:
        return leave(ctx)
    if event.kind == "text":
        return Step(WAITING, ctx.data, (Reply(Msg("handoff.forwarded"), (_leave_choice(),)),), (_forward(ctx),))
    if event.kind == "media":
        return Step(WAITING, ctx.data, (Reply(Msg("handoff.media_note"), (_leave_choice(),)),), (_forward(ctx),))
    return Step(WAITING, ctx.data, (_waiting_prompt(ctx),))


def _with_staff(ctx: Ctx) -> Step:
    event = ctx.event
    by_staff = _staff_result(ctx)
    if by_staff is not None:
        return by_staff
    if event.kind == "text":
        # Silent: the staff member answers, not the bot.
        return Step(WITH_STAFF, ctx.data, (), (_forward(ctx),))
    if event.kind == "media":
        return Step(WITH_STAFF, ctx.data, (Reply(Msg("handoff.media_note")),), (_forward(ctx),))
    if event.kind == "choice":
        # An old button from before the handoff: going there would leave the human, so ask.
        data = ctx.with_data(handoff_return=WITH_STAFF, handoff_then="menu", handoff_then_arg=None)
        return Step(CONFIRM_LEAVE, data, (_confirm_prompt(ctx),))
    return Step(WITH_STAFF, ctx.data, (_with_staff_prompt(ctx),))


def _back_to(ctx: Ctx) -> str:
    target = ctx.data.get("handoff_return")
    return target if target in (WAITING, WITH_STAFF) else WAITING


def _confirm(ctx: Ctx) -> Step:
    event = ctx.event
    by_staff = _staff_result(ctx)
    if by_staff is not None:
        return by_staff
    back = _back_to(ctx)
    data = ctx.with_data(handoff_return=None, handoff_then=None, handoff_then_arg=None)
    if event.kind == "choice" and event.choice == LEAVE:
        return leave(ctx)  # machine.step runs the command that asked, right after
    if event.kind == "choice" and event.choice == STAY:
        return Step(back, data, (Reply(Msg("handoff.stayed")),))
    if event.kind in ("text", "media"):
        # Typing on instead of answering means staying: the text is for staff.
        replies = (Reply(Msg("handoff.forwarded")),) if back == WAITING else ()
        return Step(back, data, replies, (_forward(ctx),))
    return Step(CONFIRM_LEAVE, ctx.data, (_confirm_prompt(ctx),))


def hold(ctx: Ctx) -> Step | None:
    """A global command typed in this flow: answered in place, or, while staff hold the conversation, asked
    about before leaving. None when the command should just run (see `left_by_command`)."""
    if ctx.state not in STATES:
        return None
    command = ctx.event.command
    if command == "help":
        prompt = {WAITING: _waiting_prompt, WITH_STAFF: _with_staff_prompt, CONFIRM_LEAVE: _confirm_prompt}
        return Step(ctx.state, ctx.data, (Reply(Msg("help")), prompt[ctx.state](ctx)))
    if command == "human":
        data = ctx.with_data(handoff_return=None, handoff_then=None, handoff_then_arg=None)
        if (ctx.state if ctx.state != CONFIRM_LEAVE else _back_to(ctx)) == WITH_STAFF:
            return Step(WITH_STAFF, data, (_with_staff_prompt(ctx),))
        # Where am I in the queue? `ticket.open` finds the open ticket and answers with its place.
        return Step(WAITING, data, (Reply(Msg("handoff.connecting")),), (Effect("ticket.open", {"reason": "asked"}),))
    if ctx.state == WAITING:
        return None  # nobody has the conversation yet: the command leaves the queue at once
    back = ctx.state if ctx.state != CONFIRM_LEAVE else _back_to(ctx)
    data = ctx.with_data(handoff_return=back, handoff_then=command, handoff_then_arg=ctx.event.command_arg or None)
    return Step(CONFIRM_LEAVE, data, (_confirm_prompt(ctx),))


def left_by_command(ctx: Ctx) -> Step | None:
    """A global command typed while still queued: the ticket closes, and the caller runs the command."""
    if ctx.state != WAITING or ctx.event.kind != "command":
        return None
    return Step("@menu", _cleared(ctx), (Reply(Msg("handoff.left_queue")),), (Effect("ticket.close", {}),))


def pending_command(ctx: Ctx) -> Event:
    """The command the user typed before confirming that they leave the human."""
    command = str(ctx.data.get("handoff_then") or "menu")
    arg = str(ctx.data.get("handoff_then_arg") or "")
    return Event("command", command=command, command_arg=arg, now=ctx.event.now)


def is_leaving(ctx: Ctx) -> bool:
    return ctx.state == CONFIRM_LEAVE and ctx.event.kind == "choice" and ctx.event.choice == LEAVE


PROMPTS = {WAITING: _waiting_prompt, WITH_STAFF: _with_staff_prompt, CONFIRM_LEAVE: _confirm_prompt}

FLOW = Flow(
    name="handoff",
    handlers={WAITING: _waiting, WITH_STAFF: _with_staff, CONFIRM_LEAVE: _confirm},
    edges=(
        Edge(WAITING, WITH_STAFF, "staff claims"),
        Edge(WAITING, "@menu", "leave / closed / timeout"),
        Edge(WAITING, CONFIRM_LEAVE, "/menu"),
        Edge(WITH_STAFF, CONFIRM_LEAVE, "/menu"),
        Edge(WITH_STAFF, "@menu", "staff closes"),
        Edge(CONFIRM_LEAVE, WAITING, "stay"),
        Edge(CONFIRM_LEAVE, WITH_STAFF, "stay"),
        Edge(CONFIRM_LEAVE, "@menu", "leave / closed"),
    ),
    starters={"handoff": start},
    entries=(Edge("@handoff", WAITING, "/human, menu item, or stuck 3x"),),
    prompts=PROMPTS,
    menu=MenuEntry("human", "handoff", 80),
)
