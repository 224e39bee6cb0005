"""Free text the current state did not take: typed numbers, typed intent, a phone number typed anywhere.

Runs inside the machine, before and after a state's handler. It never acts destructively: a number picks only
what the user was shown numbered, and an intent starts a flow that asks before it does anything.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from typing import Any

from dialogs.intents import TARGETS, IntentModel, Understanding
from dialogs.model import Choice, Ctx, Effect, Event, Msg, Reply, Step
from dialogs.results import PhoneSealed, answer

GO = "go:"
PHONE_CHOICES = ("phone_lookup", "phone_recycle")
# States where the user is between errands: text they type is a new request, so an unclear one gets the three
# likeliest intents. Elsewhere the state's own prompt (with its buttons) is the better answer.
IDLE = frozenset({"menu", "lookup.done", "unbind.done", "recycle.done", "requests.view"})
# States that read phone numbers themselves.
PHONE_STATES = frozenset({"verify.phone", "verify.code", "recycle.phone", "recycle.done"})
# Default "likeliest" intents when a text matches nothing at all: the errands people come for most.
PRIOR = ("unbind", "lookup", "recycle")


# "10." "10)" "10、": what people type after a list number. chr() keeps CJK out of code literals.
_AFTER_NUMBER = ".)" + chr(0x3001)

def typed_number(text: str) -> int | None:
    cleaned = unicodedata.normalize("NFKC", text).strip().rstrip(_AFTER_NUMBER)
    if cleaned.isdigit() and len(cleaned) <= 2:
        return int(cleaned)
    return None


def offered(data: Mapping[str, Any]) -> list[str]:
    raw = data.get("_offered")
    if not isinstance(raw, list):
        return []
    return [str(item[0]) for item in raw if isinstance(item, list | tuple) and item]


def number_as_choice(ctx: Ctx, prompt: Reply | None) -> Event | Step:
    """A typed number picks the button shown with that number; anything else out of range says how many exist."""
    number = typed_number(ctx.event.text)
    assert number is not None
    ids = offered(ctx.data)
    if 1 <= number <= len(ids):
        return Event("choice", choice=ids[number - 1], now=ctx.event.now)
    reply = Reply(Msg("input.number_range", {"count": len(ids)}) if ids else Msg("input.number_none"), error=True)
    return Step(ctx.state, ctx.data, (reply, prompt) if prompt else (reply,))


def go(ctx: Ctx, intent: str) -> Step:
    """Starts what an intent names. Greetings and thanks are answered, not routed."""
    if intent in ("greet", "thanks", "help"):
        key = {"greet": "intent.greeting", "thanks": "intent.thanks", "help": "help"}[intent]
        return Step("@menu", ctx.data, (Reply(Msg(key)),))
    return Step(TARGETS.get(intent, "@menu"), ctx.data)


def suggestions(ctx: Ctx, understanding: Understanding) -> Step:
    picks = list(understanding.top(3))
    for intent in PRIOR:
        if len(picks) >= 3:
            break
        if intent not in picks:
            picks.append(intent)
    choices = tuple(Choice(GO + intent, Msg(f"intent.{intent}.label")) for intent in picks)
    return Step(ctx.state, ctx.data,
                (Reply(Msg("intent.not_understood"), (*choices, Choice(GO + "menu", Msg("intent.all_features")))),))


def after_handler(ctx: Ctx, raw: Step, model: IntentModel | None) -> Step | None:
    """When the state answered a text with an error and nothing else, typed intent may know better."""
    if ctx.event.kind != "text" or model is None or raw.state != ctx.state or raw.effects:
        return None
    if not any(reply.error for reply in raw.replies) and ctx.state not in IDLE:
        return None
    understanding = model.understand(ctx.event.text)
    intent = understanding.confident
    if understanding.phone and ctx.state not in PHONE_STATES:
        # Kept only sealed: the runner encrypts it and the dialog holds the ciphertext until it is used.
        return Step(ctx.state, ctx.data, (), (Effect("phone.seal", {"phone": understanding.phone,
                                                                      "then": intent}),))
    if intent:
        return go(ctx, intent)
    if ctx.state in IDLE and any(reply.error for reply in raw.replies):
        return suggestions(ctx, understanding)
    return None


def phone_sealed(ctx: Ctx) -> Step:
    """The typed number is sealed: go where the message said, or ask what it is for."""
    result = answer(ctx.event, PhoneSealed)
    if not result.get("ok"):
        return Step("@menu", ctx.data, (Reply(Msg("lookup.unavailable"), error=True),))
    data = ctx.with_data(typed_phone={"sealed": str(result["sealed"]), "masked": str(result["masked"])})
    then = str(result.get("then") or "")
    if then in ("lookup", "unbind", "tag", "plan", "recycle"):
        return Step(TARGETS[then], data)
    # Stays where it is: the menu would drop the sealed number, and its buttons would hide these.
    return Step(ctx.state, data, (Reply(
        Msg("intent.phone_seen", {"masked": str(result["masked"])}),
        (Choice(GO + "phone_lookup", Msg("intent.phone_lookup")),
         Choice(GO + "phone_recycle", Msg("intent.phone_recycle")),
         Choice(GO + "menu", Msg("intent.all_features")))),))


def go_choice(ctx: Ctx) -> Step:
    target = ctx.event.choice[len(GO):]
    if target == "phone_lookup":
        return Step("@lookup", ctx.data)
    if target == "phone_recycle":
        return Step("@recycle", ctx.data)
    if target == "menu":
        return Step("@menu", ctx.with_data(typed_phone=None))
    if target in TARGETS:
        return go(ctx, target)
    return Step("@menu", ctx.data)
