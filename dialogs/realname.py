"""Real-name step: name + ID number checked against the number's holder record before unbind or tagging.

Never keeps the name or ID in conversation data: the name is stashed sealed by the runner, the ID goes
straight to the check, and only masked forms come back.
"""

from __future__ import annotations

import re
import unicodedata

from dialogs.idcard import validate_id_number
from dialogs.model import Choice, Ctx, Edge, Effect, Flow, Msg, Reply, Step
from dialogs.results import HolderChecked, NameStashed, answer
from dialogs.verify import recent

NAME = "realname.name"
ID = "realname.id"
CONFIRM = "realname.confirm"

_NAME_RE = re.compile(r"[\u3400-\u9fffA-Za-z·•\. ]{2,30}")
# An ID number typed in the same message as the name ("张三 11010519491231002X"): one action instead of two.
_ID_IN_TEXT = re.compile(r"\d[\d ]{13,21}[\dXx]")


def checked_recently(ctx: Ctx) -> bool:
    realname = ctx.data.get("realname")
    verified = ctx.data.get("verified")
    if not isinstance(realname, dict) or not isinstance(verified, dict):
        return False
    # A check belongs to the verification it was made under: a new number means a new check.
    return realname.get("verification_id") == verified.get("id") and recent(realname, ctx.event.now)


def start(ctx: Ctx) -> Step:
    return Step(NAME, ctx.data, (Reply(Msg("realname.intro")), _name_reply()))


def _name_reply() -> Reply:
    return Reply(Msg("realname.ask_name"), (Choice("menu", Msg("common.back_to_menu")),), expects="name")


def _id_reply() -> Reply:
    return Reply(Msg("realname.ask_id"), (Choice("menu", Msg("common.back_to_menu")),), expects="id_number")


def _confirm_reply(ctx: Ctx) -> Reply:
    pending = ctx.data.get("realname_pending") or {}
    return Reply(
        Msg("realname.confirm", {"masked": str(pending.get("masked", "")),
                                 "tenure_start": str(pending.get("tenure_start", ""))}),
        (Choice("confirm", Msg("realname.confirm_yes")), Choice("menu", Msg("realname.confirm_no"))),
    )


def _name(ctx: Ctx) -> Step:
    event = ctx.event
    if event.kind == "result" and event.effect == "realname.stash":
        return Step(ID, ctx.with_data(name_masked=str(answer(event, NameStashed).get("masked", ""))), (_id_reply(),))
    if event.kind == "result" and event.effect == "realname.check":
        return _checked(ctx)
    if event.kind == "choice" and event.choice == "menu":
        return Step("@menu", ctx.data)
    if event.kind == "text":
        name = unicodedata.normalize("NFKC", event.text).strip()
        both = _name_and_id(ctx, name)
        if both is not None:
            return both
        if _NAME_RE.fullmatch(name):
            return Step(NAME, ctx.data, (), (Effect("realname.stash", {"name": name}),))
    return Step(NAME, ctx.data, (Reply(Msg("realname.name_invalid"), error=True), _name_reply()))


def _name_and_id(ctx: Ctx, text: str) -> Step | None:
    found = _ID_IN_TEXT.search(text)
    if found is None:
        return None
    # NFKC already turned full-width commas and colons into ASCII ones.
    name = (text[:found.start()] + " " + text[found.end():]).strip(" ,;:/-")
    if not _NAME_RE.fullmatch(name):
        return None
    check = validate_id_number(found.group(0), ctx.event.now.date())
    if not check.ok:
        return Step(NAME, ctx.data, (Reply(Msg(f"realname.id.{check.reason}"), error=True), _name_reply()))
    verified = ctx.data.get("verified") or {}
    # The name is sealed by the first effect before the second reads it: effects run in order.
    return Step(NAME, ctx.data, (), (Effect("realname.stash", {"name": name}),
                                     Effect("realname.check", {"verification_id": verified.get("id"),
                                                               "id_number": check.normalised})))


def _id(ctx: Ctx) -> Step:
    event = ctx.event
    if event.kind == "result" and event.effect == "realname.check":
        return _checked(ctx)
    if event.kind == "choice" and event.choice == "menu":
        return Step("@menu", ctx.data)
    if event.kind != "text":
        return Step(ID, ctx.data, (Reply(Msg("realname.id.chars"), error=True), _id_reply()))
    check = validate_id_number(event.text, event.now.date())
    if not check.ok:
        return Step(ID, ctx.data, (Reply(Msg(f"realname.id.{check.reason}"), error=True), _id_reply()))
    verified = ctx.data.get("verified") or {}
    return Step(ID, ctx.data, (), (Effect("realname.check", {"verification_id": verified.get("id"),
                                                             "id_number": check.normalised}),))


def _checked(ctx: Ctx) -> Step:
    result = answer(ctx.event, HolderChecked)
    if result.get("ok") and result.get("match"):
        pending = {"masked": str(result["masked"]), "tenure_start": str(result["tenure_start"]),
                   "check_id": int(result["check_id"])}
        data = ctx.with_data(realname_pending=pending)
        return Step(CONFIRM, data, (_confirm_reply(Ctx(CONFIRM, data, ctx.event)),))
    reason = str(result.get("reason", "no_match"))
    if reason == "locked":
        return Step("@menu", ctx.with_data(name_masked=None), (Reply(Msg("realname.locked"), error=True),))
    if reason == "no_match":
        remaining = int(result.get("remaining", 0))
        return Step(NAME, ctx.with_data(name_masked=None),
                    (Reply(Msg("realname.no_match", {"remaining": remaining}), error=True), _name_reply()))
    return Step("@menu", ctx.data, (Reply(Msg("realname.unavailable"), error=True),))


def _confirm(ctx: Ctx) -> Step:
    event = ctx.event
    pending = ctx.data.get("realname_pending")
    if event.kind == "choice" and event.choice == "confirm" and isinstance(pending, dict):
        verified = ctx.data.get("verified") or {}
        realname = {"at": event.now.isoformat(), "verification_id": verified.get("id"),
                    "tenure_start": pending["tenure_start"], "check_id": pending["check_id"]}
        return Step("@goal", ctx.with_data(realname=realname, realname_pending=None, name_masked=None))
    if event.kind == "choice" and event.choice == "menu":
        return Step("@menu", ctx.with_data(realname_pending=None, name_masked=None),
                    (Reply(Msg("realname.not_me")),))
    return Step(CONFIRM, ctx.data, (Reply(Msg("menu.pick_one"), error=True), _confirm_reply(ctx)))


PROMPTS = {NAME: lambda ctx: _name_reply(), ID: lambda ctx: _id_reply(), CONFIRM: _confirm_reply}

FLOW = Flow(
    name="realname",
    handlers={NAME: _name, ID: _id, CONFIRM: _confirm},
    edges=(
        Edge(NAME, ID, "name given"),
        Edge(NAME, CONFIRM, "name + ID in one message"),
        Edge(NAME, "@menu", "back"),
        Edge(ID, CONFIRM, "holder matches"),
        Edge(ID, NAME, "no match"),
        Edge(ID, "@menu", "locked / back"),
        Edge(CONFIRM, "@goal", "confirmed"),
        Edge(CONFIRM, "@menu", "not me"),
    ),
    starters={"realname": start},
    entries=(Edge("@realname", NAME, ""),),
    prompts=PROMPTS,
    errand_keys=("realname_pending", "name_masked"),
)
