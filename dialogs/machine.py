"""Joins the flows into one machine: `step(state, data, event) -> Step`, global commands, and the diagram.

Pure: no I/O. A handler that moves along an undeclared edge is a bug, and `step` raises for it.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Mapping
from typing import Any

from dialogs import (
    cancel_plan,
    guide,
    lookup,
    menu,
    realname,
    recycle,
    requests,
    settings,
    tag,
    unbind,
    upcoming,
    verify,
)
from dialogs.commands import parse_command
from dialogs.model import Ctx, Edge, Event, Flow, Handler, Msg, Reply, Step

MAX_TEXT = 2000
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]")


class UndeclaredTransition(RuntimeError):
    pass


FLOWS: tuple[Flow, ...] = (menu.FLOW, verify.FLOW, realname.FLOW, lookup.FLOW, unbind.FLOW, requests.FLOW,
                           guide.FLOW, recycle.FLOW, tag.FLOW, cancel_plan.FLOW, settings.FLOW)

STARTERS: dict[str, Handler] = {
    "menu": lambda ctx: menu.show_menu(ctx),
    "verify": verify.start,
    "realname": realname.start,
    "lookup": lookup.start,
    "unbind": unbind.start,
    "requests": requests.start,
    "guide": guide.start,
    "recycle": recycle.start,
    "tag": tag.start,
    "check": tag.start_check,
    "plan": cancel_plan.start,
    "settings": settings.start,
    **{name: upcoming.starter(name) for name in upcoming.UPCOMING},
}

# Where each starter may lead; drawn in the diagram and enforced like any other edge.
ENTRY_EDGES: tuple[Edge, ...] = (
    Edge("@menu", menu.MENU, ""),
    Edge("@verify", verify.CONSENT, "no consent yet"),
    Edge("@verify", verify.PHONE, "consented"),
    Edge("@lookup", lookup.LOOKUP, "verified < 30 min"),
    Edge("@lookup", "@verify", "needs verification"),
    Edge("@realname", realname.NAME, ""),
    Edge("@unbind", unbind.PICK, "verified + real name"),
    Edge("@unbind", "@verify", "needs verification"),
    Edge("@unbind", "@realname", "needs real name"),
    Edge("@requests", requests.VIEW, ""),
    Edge("@guide", guide.PICK, "manual platforms known"),
    Edge("@guide", guide.CATEGORY, "browse"),
    Edge("@recycle", recycle.PHONE, ""),
    Edge("@tag", tag.PICK, "verified + real name"),
    Edge("@tag", "@verify", "needs verification"),
    Edge("@tag", "@realname", "needs real name"),
    Edge("@check", tag.CHECK, "/check CODE"),
    Edge("@plan", cancel_plan.VIEW, "verified"),
    Edge("@plan", "@verify", "needs verification"),
    Edge("@settings", settings.SETTINGS, ""),
    *(Edge(f"@{name}", "@menu", "coming soon") for name in upcoming.UPCOMING),
)

GOALS = ("lookup", "unbind", "tag", "plan")

HANDLERS: dict[str, Handler] = {state: handler for flow in FLOWS for state, handler in flow.handlers.items()}
PROMPTS: dict[str, Callable[[Ctx], Reply]] = {
    **menu.PROMPTS, **verify.PROMPTS, **realname.PROMPTS, **lookup.PROMPTS, **unbind.PROMPTS,
    **requests.PROMPTS, **guide.PROMPTS, **recycle.PROMPTS, **tag.PROMPTS, **cancel_plan.PROMPTS,
    **settings.PROMPTS,
}
_EDGES: frozenset[tuple[str, str]] = frozenset(
    (edge.source, edge.target) for flow in FLOWS for edge in flow.edges
) | frozenset((edge.source, edge.target) for edge in ENTRY_EDGES)


def clean_text(text: str) -> str:
    """Drops control and direction-override characters; keeps line breaks and emoji."""
    return _CONTROL.sub("", unicodedata.normalize("NFC", text)).strip()


def step(state: str, data: Mapping[str, Any], event: Event) -> Step:
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
    if event.kind == "command":
        return _resolve(ctx, _command(ctx))
    if event.kind == "media":
        return _stay(ctx, Reply(Msg("input.media", {"kind": Msg(f"media.{event.media or 'other'}")}), error=True))
    handler = HANDLERS.get(state)
    if handler is None:
        return _resolve(ctx, menu.welcome(ctx))
    raw = handler(ctx)
    if raw.state != state and (state, raw.state) not in _EDGES:
        raise UndeclaredTransition(f"{state} -> {raw.state}")
    return _resolve(ctx, raw)


def _stay(ctx: Ctx, reply: Reply) -> Step:
    prompt = PROMPTS.get(ctx.state)
    if prompt is None:
        return _resolve(ctx, menu.show_menu(ctx, reply))
    return Step(ctx.state, ctx.data, (reply, prompt(ctx)))


def _command(ctx: Ctx) -> Step:
    command = ctx.event.command
    if command == "start":
        return menu.welcome(ctx)
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
