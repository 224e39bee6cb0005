"""号码标记: a verified holder declares the change of holder or asks for harassment labels to be cleared,
and gets a statement with a short code that anyone can check with /check CODE (revealing nothing more).

Preview first, then confirm; one statement per number and kind (a repeat shows the one already made); clearing a
label is offered only when the registry says the number carries one."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from typing import Any

from dialogs.model import Choice, Ctx, Edge, Effect, Flow, MenuEntry, Msg, Reply, Step
from dialogs.realname import checked_recently
from dialogs.results import TagStatement, TagStatus, answer
from dialogs.verify import verified_recently

PICK = "tag.pick"
PREVIEW = "tag.preview"
CHECK = "tag.check"
KINDS = ("new_holder", "clear_harassment")

_CODE_RE = re.compile(r"[A-Za-z0-9]{6,12}")


def start(ctx: Ctx) -> Step:
    if not verified_recently(ctx):
        return Step("@verify", ctx.with_data(goal="tag"), (Reply(Msg("verify.needed")),))
    if not checked_recently(ctx):
        return Step("@realname", ctx.with_data(goal="tag"))
    verified = ctx.data.get("verified") or {}
    return Step(PICK, ctx.with_data(goal=None, tag_status=None, tag_preview=None), (),
                (Effect("tag.status", {"verification_id": verified.get("id")}),))


def start_check(ctx: Ctx) -> Step:
    code = ctx.event.command_arg if ctx.event.kind == "command" else ""
    if code:
        return _lookup(ctx, code)
    return Step(CHECK, ctx.data, (_check_reply(),))


def _status(ctx: Ctx) -> dict[str, Any]:
    status = ctx.data.get("tag_status")
    return status if isinstance(status, dict) else {}


def _existing(ctx: Ctx, kind: str) -> dict[str, Any] | None:
    found = (_status(ctx).get("existing") or {}).get(kind)
    return found if isinstance(found, dict) else None


def _pick_reply(ctx: Ctx | None = None) -> Reply:
    status = _status(ctx) if ctx is not None else {}
    labelled = bool(status.get("labelled"))
    choices = [Choice("new_holder", Msg("tag.view_new_holder" if ctx and _existing(ctx, "new_holder")
                                        else "tag.new_holder"))]
    if labelled or (ctx is not None and _existing(ctx, "clear_harassment")):
        choices.append(Choice("clear_harassment", Msg("tag.view_clear" if ctx and _existing(ctx, "clear_harassment")
                                                      else "tag.clear_harassment")))
    choices.append(Choice("menu", Msg("common.back_to_menu")))
    note = Msg("tag.prompt_labelled") if labelled else Msg("tag.prompt_no_label")
    return Reply(Msg("tag.prompt_with", {"note": note}), tuple(choices))


def _preview_reply(ctx: Ctx) -> Reply:
    kind = str(ctx.data.get("tag_preview") or "new_holder")
    realname = ctx.data.get("realname") or {}
    verified = ctx.data.get("verified") or {}
    key = "tag.preview_new_holder" if kind == "new_holder" else "tag.preview_clear"
    return Reply(Msg(key, {"masked": str(verified.get("masked", "")),
                           "since": str(realname.get("tenure_start", ""))[:7]}),
                 (Choice("confirm", Msg("tag.publish")), Choice("back", Msg("tag.not_now"))))


def _statement(result: Mapping[str, Any], existing: bool = False) -> Msg:
    key = "tag.statement" if result.get("kind") == "new_holder" else "tag.cleared"
    statement = Msg(key, {"masked": str(result["masked"]), "since": str(result["since"]),
                          "code": str(result["code"])})
    return Msg("tag.existing", {"statement": statement, "date": str(result.get("date", ""))}) if existing \
        else statement


def _check_reply() -> Reply:
    return Reply(Msg("tag.ask_code"), (Choice("menu", Msg("common.back_to_menu")),))


def _lookup(ctx: Ctx, raw: str) -> Step:
    code = unicodedata.normalize("NFKC", raw).strip().upper()
    if not _CODE_RE.fullmatch(code):
        return Step(CHECK, ctx.data, (Reply(Msg("tag.code_invalid"), error=True), _check_reply()))
    return Step(CHECK, ctx.data, (), (Effect("tag.lookup", {"code": code}),))


def _pick(ctx: Ctx) -> Step:
    event = ctx.event
    if event.kind == "result" and event.effect == "tag.status":
        status = answer(event, TagStatus)
        if not status.get("ok"):
            return Step("@menu", ctx.data, (Reply(Msg("lookup.unavailable"), error=True),))
        data = ctx.with_data(tag_status={"labelled": bool(status.get("labelled")),
                                         "existing": dict(status.get("existing") or {})})
        return Step(PICK, data, (_pick_reply(Ctx(PICK, data, event)),))
    if event.kind == "choice" and event.choice in KINDS:
        offered = {c.id for c in _pick_reply(ctx).choices}
        if event.choice not in offered:
            return Step(PICK, ctx.data, (Reply(Msg("tag.no_label"), error=True), _pick_reply(ctx)))
        existing = _existing(ctx, event.choice)
        if existing is not None:
            # One statement per number and kind: the one already made, not a second code.
            return Step(PICK, ctx.data, (Reply(_statement(existing, existing=True)), _pick_reply(ctx)))
        data = ctx.with_data(tag_preview=event.choice)
        return Step(PREVIEW, data, (_preview_reply(Ctx(PREVIEW, data, event)),))
    if event.kind == "choice" and event.choice == "menu":
        return Step("@menu", ctx.data)
    return Step(PICK, ctx.data, (Reply(Msg("menu.pick_one"), error=True), _pick_reply(ctx)))


def _preview(ctx: Ctx) -> Step:
    event = ctx.event
    if event.kind == "result" and event.effect == "tag.create":
        result = answer(event, TagStatement)
        if not result.get("ok"):
            return Step("@menu", ctx.data, (Reply(Msg("lookup.unavailable"), error=True),))
        return Step("@menu", ctx.with_data(tag_preview=None, tag_status=None),
                    (Reply(_statement(result, existing=bool(result.get("existing")))),))
    if event.kind == "choice" and event.choice == "confirm" and ctx.data.get("tag_preview") in KINDS:
        verified = ctx.data.get("verified") or {}
        realname = ctx.data.get("realname") or {}
        return Step(PREVIEW, ctx.data, (), (Effect("tag.create", {
            "verification_id": verified.get("id"), "kind": ctx.data["tag_preview"],
            "since": str(realname.get("tenure_start", ""))[:7]}),))
    if event.kind == "choice" and event.choice == "back":
        return Step(PICK, ctx.with_data(tag_preview=None), (_pick_reply(ctx),))
    return Step(PREVIEW, ctx.data, (Reply(Msg("menu.pick_one"), error=True), _preview_reply(ctx)))


def _check(ctx: Ctx) -> Step:
    event = ctx.event
    if event.kind == "result" and event.effect == "tag.lookup":
        result = answer(event, TagStatement)
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


PROMPTS = {PICK: _pick_reply, PREVIEW: _preview_reply, CHECK: lambda ctx: _check_reply()}

FLOW = Flow(
    name="tag",
    handlers={PICK: _pick, PREVIEW: _preview, CHECK: _check},
    edges=(
        Edge(PICK, PREVIEW, "preview a statement"),
        Edge(PICK, "@menu", "back / registry down"),
        Edge(PREVIEW, PICK, "not now"),
        Edge(PREVIEW, "@menu", "published"),
        Edge(CHECK, "@menu", "statement / back"),
    ),
    starters={"tag": start, "check": start_check},
    entries=(Edge("@tag", PICK, "verified + real name"), Edge("@tag", "@verify", "needs verification"),
             Edge("@tag", "@realname", "needs real name"), Edge("@check", CHECK, "/check CODE")),
    prompts=PROMPTS,
    menu=MenuEntry("tag", "tag", 40),
    goals=("tag",),
    errand_keys=("tag_preview",),
)
