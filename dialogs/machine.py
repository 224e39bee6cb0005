"""Joins the flows into one machine: `step(state, data, event) -> Step`, global commands, and the diagram.

Pure: no I/O. A handler that moves along an undeclared edge is a bug, and `step` raises for it.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Mapping
from typing import Any

from dialogs import cancel_plan, handoff, menu, registry, settings
from dialogs.commands import parse_command
from dialogs.intents import IntentModel
from dialogs.model import Ctx, Edge, Event, Flow, Handler, Msg, Reply, Step
from dialogs.understand import GO, after_handler, go_choice, number_as_choice, phone_sealed, typed_number

MAX_TEXT = 2000
STUCK_AFTER = 3
# Replies that mean "I did not understand that": three in a row hand the user to staff.
NOT_UNDERSTOOD = frozenset({"menu.pick_one", "intent.not_understood"})
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]")


class UndeclaredTransition(RuntimeError):
    pass


def _menu_flow(flow: Flow) -> Flow:
    """The menu as declared, plus an edge to each flow's starter from that flow's menu line."""
    lines = tuple(Edge(menu.MENU, f"@{entry.starter}", entry.choice) for entry in registry.menu_entries())
    return Flow(flow.name, flow.handlers, flow.edges + lines, flow.starters, flow.entries, flow.prompts,
                flow.menu, flow.goals, flow.errand_keys)


# Every flow declares its own starters, entries, prompts, menu line, goals and errand data (dialogs/model.py
# Flow); the registry finds them, so a new flow is a new module and nothing here changes.
FLOWS: tuple[Flow, ...] = tuple(_menu_flow(f) if f.name == "menu" else f for f in registry.flows())
STARTERS: dict[str, Handler] = {name: start for flow in FLOWS for name, start in flow.starters.items()}
# Where each starter may lead; drawn in the diagram and enforced like any other edge.
ENTRY_EDGES: tuple[Edge, ...] = tuple(edge for flow in FLOWS for edge in flow.entries)
GOALS: tuple[str, ...] = tuple(goal for flow in FLOWS for goal in flow.goals)
HANDLERS: dict[str, Handler] = {state: handler for flow in FLOWS for state, handler in flow.handlers.items()}
PROMPTS: dict[str, Callable[[Ctx], Reply]] = {state: p for flow in FLOWS for state, p in flow.prompts.items()}
_EDGES: frozenset[tuple[str, str]] = frozenset(
    (edge.source, edge.target) for flow in FLOWS for edge in flow.edges
) | frozenset((edge.source, edge.target) for edge in ENTRY_EDGES)


def clean_text(text: str) -> str:
    """Drops control and direction-override characters; keeps line breaks and emoji."""
    return _CONTROL.sub("", unicodedata.normalize("NFC", text)).strip()


# States that read a typed number as one of their own numbered items (or a date), not as a button position.
OWN_NUMBERS = frozenset({cancel_plan.VIEW, cancel_plan.DATE})


def step(state: str, data: Mapping[str, Any], event: Event, model: IntentModel | None = None) -> Step:
    """One step. `model` ranks typed intent; without it free text is left to the states alone."""
    ctx = Ctx(state, data, event)
    if event.kind == "text":
        text = clean_text(event.text)
        if len(text) > MAX_TEXT:
            return _stay(ctx, Reply(Msg("input.too_long", {"max": MAX_TEXT}), error=True))
        if not text:
            return _stay(ctx, Reply(Msg("input.empty"), error=True))
        command = parse_command(text)
        if command is not None:
            event = Event("command", command=command[0], command_arg=command[1], now=event.now)
        else:
            event = Event("text", text=text, now=event.now)
        ctx = Ctx(state, data, event)
        if (event.kind == "text" and typed_number(text) is not None and state not in OWN_NUMBERS
                and state not in handoff.STATES and state in HANDLERS):
            prompt = PROMPTS.get(state)
            picked = number_as_choice(ctx, prompt(ctx) if prompt else None)
            if isinstance(picked, Step):
                return picked
            event = picked
            ctx = Ctx(state, data, event)
    if event.kind == "command":
        held = handoff.hold(ctx)
        if held is not None:
            return _resolve(ctx, held)
        left = handoff.left_by_command(ctx)
        if left is not None:
            after = _command(Ctx(state, left.data, event))
            return _resolve(ctx, Step(after.state, after.data, left.replies + after.replies,
                                      left.effects + after.effects))
        return _resolve(ctx, _command(ctx))
    if event.kind == "media" and state not in handoff.STATES:
        return _stay(ctx, Reply(Msg("input.media", {"kind": Msg(f"media.{event.media or 'other'}")}), error=True))
    if state not in handoff.STATES:
        # Typed intent and its follow-ups work from every state, like the global commands.
        if event.kind == "choice" and event.choice.startswith(GO):
            return _resolve(ctx, go_choice(ctx))
        if event.kind == "result" and event.effect == "phone.seal":
            return _resolve(ctx, phone_sealed(ctx))
    handler = HANDLERS.get(state)
    if handler is None:
        welcomed = _resolve(ctx, menu.welcome(ctx))
        if event.kind == "text" and typed_number(event.text) is None and welcomed.state in HANDLERS:
            # Someone's first words (a WeChat follower from before the account had a bot writes "设置"): greeted,
            # and what they asked for done, when the menu understands it; else the greeting and the menu alone.
            # A bare number is not read as a menu item they have not seen yet.
            then = step(welcomed.state, welcomed.data, event, model)
            if not any(reply.msg.key in NOT_UNDERSTOOD for reply in then.replies):
                return Step(then.state, then.data, (Reply(Msg("welcome")), *then.replies), then.effects)
        return welcomed
    raw = handler(ctx)
    if raw.state != state and (state, raw.state) not in _EDGES:
        raise UndeclaredTransition(f"{state} -> {raw.state}")
    if state not in handoff.STATES:
        understood = after_handler(ctx, raw, model)
        if understood is not None:
            return _count_misses(ctx, _resolve(ctx, understood))
    if handoff.is_leaving(ctx):
        # Leaving the human was asked for by a command: run it now that the user confirmed.
        after = _command(Ctx(state, raw.data, handoff.pending_command(ctx)))
        raw = Step(after.state, after.data, raw.replies + after.replies, raw.effects + after.effects)
    return _count_misses(ctx, _resolve(ctx, raw))


def _count_misses(ctx: Ctx, result: Step) -> Step:
    """Three "not understood" in a row mean the user is stuck: a person takes over."""
    if ctx.event.kind not in ("text", "choice") or result.state in handoff.STATES:
        return result
    if not any(reply.msg.key in NOT_UNDERSTOOD for reply in result.replies):
        return result if "_misses" not in result.data else Step(
            result.state, {k: v for k, v in result.data.items() if k != "_misses"}, result.replies, result.effects)
    misses = int(result.data.get("_misses") or 0) + 1
    if misses < STUCK_AFTER:
        return Step(result.state, {**result.data, "_misses": misses}, result.replies, result.effects)
    data = {k: v for k, v in result.data.items() if k != "_misses"}
    return _resolve(ctx, Step("@handoff", {**data, "handoff_reason": "stuck"}, (Reply(Msg("handoff.stuck")),)))


def _stay(ctx: Ctx, reply: Reply) -> Step:
    prompt = PROMPTS.get(ctx.state)
    if prompt is None:
        return _resolve(ctx, menu.show_menu(ctx, reply))
    return Step(ctx.state, ctx.data, (reply, prompt(ctx)))


def _command(ctx: Ctx) -> Step:
    command = ctx.event.command
    if command == "start":
        return menu.welcome(ctx)
    if command == "cancel" and ctx.state not in (menu.MENU, ""):
        # Said, not silent: the user should know the errand was dropped (issue 12).
        return menu.show_menu(ctx, Reply(Msg("menu.cancelled")))
    if command == "help":
        prompt = PROMPTS.get(ctx.state)
        help_reply = Reply(Msg("help"))
        if prompt is None or ctx.state == menu.MENU:
            return menu.show_menu(ctx, help_reply)
        return Step(ctx.state, ctx.data, (help_reply, prompt(ctx)))
    if command == "language":
        return settings.start_language(ctx)
    if command == "forget":
        return settings.start_forget(ctx)
    if command == "stop":
        return settings.stop_reminders(ctx)
    if command == "human":
        return Step("@handoff", ctx.data)
    if command == "check":
        return Step("@check", ctx.data)
    return menu.show_menu(ctx)


def _resolve(ctx: Ctx, result: Step) -> Step:
    """Follows `@name` pseudo-states to the starter they name, keeping replies and effects in order."""
    hops = 0
    while result.state.startswith("@"):
        hops += 1
        if hops > 8:
            raise UndeclaredTransition(f"loop through {result.state}")
        target = result.state[1:]
        if target == "goal":
            goal = result.data.get("goal")
            target = goal if goal in GOALS else "menu"
        starter = STARTERS.get(target)
        if starter is None:
            raise UndeclaredTransition(f"no starter for {result.state}")
        following = starter(Ctx(result.state, result.data, ctx.event))
        if (f"@{target}", following.state) not in _EDGES:
            raise UndeclaredTransition(f"@{target} -> {following.state}")
        result = Step(following.state, following.data, result.replies + following.replies,
                      result.effects + following.effects)
    return result


def mermaid() -> str:
    """The whole conversation as a Mermaid state diagram, drawn from the declared edges."""

    def node(name: str) -> str:
        return re.sub(r"[^A-Za-z0-9_]", "_", name.lstrip("@")) + ("_start" if name.startswith("@") else "")

    names = sorted({n for flow in FLOWS for e in flow.edges for n in (e.source, e.target)}
                   | {n for e in ENTRY_EDGES for n in (e.source, e.target)})
    lines = ["stateDiagram-v2", "    %% Generated by `make diagram` from dialogs/machine.py: do not edit by hand."]
    for name in names:
        if name.startswith("@"):
            lines.append(f"    state {node(name)} <<choice>>")
        else:
            lines.append(f'    state "{name}" as {node(name)}')
    lines.append(f"    [*] --> {node(menu.MENU)}: /start")
    for flow in FLOWS:
        lines.append(f"    %% flow: {flow.name}")
        for edge in flow.edges:
            label = f": {edge.label}" if edge.label else ""
            lines.append(f"    {node(edge.source)} --> {node(edge.target)}{label}")
    lines.append("    %% entries")
    for edge in ENTRY_EDGES:
        label = f": {edge.label}" if edge.label else ""
        lines.append(f"    {node(edge.source)} --> {node(edge.target)}{label}")
    lines.append("    note right of menu: /menu, /cancel, /help, /language and /human work from every state")
    return "\n".join(lines) + "\n"
