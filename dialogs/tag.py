"""号码标记: a verified holder declares the change of holder or asks for harassment labels to be cleared,
and gets a statement with a short code that anyone can check with /check CODE (revealing nothing more)."""

from __future__ import annotations

import re
import unicodedata

from dialogs.model import Choice, Ctx, Edge, Effect, Flow, Msg, Reply, Step
from dialogs.realname import checked_recently
from dialogs.verify import verified_recently

PICK = "tag.pick"
CHECK = "tag.check"

_CODE_RE = re.compile(r"[A-Za-z0-9]{6,12}")


def start(ctx: Ctx) -> Step:
    if not verified_recently(ctx):
        return Step("@verify", ctx.with_data(goal="tag"), (Reply(Msg("verify.needed")),))
    if not checked_recently(ctx):
        return Step("@realname", ctx.with_data(goal="tag"))
    return Step(PICK, ctx.with_data(goal=None), (_pick_reply(),))


def start_check(ctx: Ctx) -> Step:
    code = ctx.event.command_arg if ctx.event.kind == "command" else ""
    if code:
        return _lookup(ctx, code)
    return Step(CHECK, ctx.data, (_check_reply(),))


def _pick_reply() -> Reply:
    return Reply(Msg("tag.prompt"), (Choice("new_holder", Msg("tag.new_holder")),
                                     Choice("clear_harassment", Msg("tag.clear_harassment")),
                                     Choice("menu", Msg("common.back_to_menu"))))


def _check_reply() -> Reply:
    return Reply(Msg("tag.ask_code"), (Choice("menu", Msg("common.back_to_menu")),))


def _lookup(ctx: Ctx, raw: str) -> Step:
    code = unicodedata.normalize("NFKC", raw).strip().upper()
    if not _CODE_RE.fullmatch(code):
        return Step(CHECK, ctx.data, (Reply(Msg("tag.code_invalid"), error=True), _check_reply()))
    return Step(CHECK, ctx.data, (), (Effect("tag.lookup", {"code": code}),))


def _pick(ctx: Ctx) -> Step:
    event = ctx.event
    if event.kind == "result" and event.effect == "tag.create":
        result = event.result
        if not result.get("ok"):
            return Step("@menu", ctx.data, (Reply(Msg("lookup.unavailable"), error=True),))
        key = "tag.statement" if result.get("kind") == "new_holder" else "tag.cleared"
        statement = Msg(key, {"masked": str(result["masked"]), "since": str(result["since"]),
                              "code": str(result["code"])})
        return Step("@menu", ctx.data, (Reply(statement),))
    if event.kind == "choice" and event.choice in ("new_holder", "clear_harassment"):
        verified = ctx.data.get("verified") or {}
        realname = ctx.data.get("realname") or {}
        return Step(PICK, ctx.data, (), (Effect("tag.create", {
            "verification_id": verified.get("id"), "kind": event.choice,
            "since": str(realname.get("tenure_start", ""))[:7]}),))
    if event.kind == "choice" and event.choice == "menu":
        return Step("@menu", ctx.data)
    return Step(PICK, ctx.data, (Reply(Msg("menu.pick_one"), error=True), _pick_reply()))


def _check(ctx: Ctx) -> Step:
    event = ctx.event
    if event.kind == "result" and event.effect == "tag.lookup":
        result = event.result
        if not result.get("ok"):
            key = "tag.not_found" if result.get("reason") == "not_found" else "lookup.unavailable"
            return Step(CHECK, ctx.data, (Reply(Msg(key), error=True), _check_reply()))
        key = "tag.check_new_holder" if result.get("kind") == "new_holder" else "tag.check_cleared"
        return Step("@menu", ctx.data, (Reply(Msg(key, {"masked": str(result["masked"]),
                                                        "since": str(result["since"]),
                                                        "code": str(result["code"])})),))
    if event.kind == "choice" and event.choice == "menu":
        return Step("@menu", ctx.data)
    if event.kind == "text":
        return _lookup(ctx, event.text)
    return Step(CHECK, ctx.data, (Reply(Msg("tag.code_invalid"), error=True), _check_reply()))


FLOW = Flow(
    name="tag",
    handlers={PICK: _pick, CHECK: _check},
    edges=(
        Edge(PICK, "@menu", "statement / back"),
        Edge(CHECK, "@menu", "statement / back"),
    ),
)
PROMPTS = {PICK: lambda ctx: _pick_reply(), CHECK: lambda ctx: _check_reply()}
