"""Unbind requests for the previous holder's bindings: per platform or all eligible, behind a confirmation
that lists exactly what will be requested. Only previous-tenure bindings are ever offered (dialogs/tenure.py)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from dialogs.escalation import REASONS
from dialogs.model import Choice, Ctx, Edge, Effect, Flow, Lines, Localized, MenuEntry, Msg, Reply, Step
from dialogs.realname import checked_recently
from dialogs.results import UnbindFiled, UnbindOptions, answer
from dialogs.verify import verified_recently

PICK = "unbind.pick"
CONFIRM = "unbind.confirm"
DONE = "unbind.done"


def start(ctx: Ctx) -> Step:
    if not verified_recently(ctx):
        return Step("@verify", ctx.with_data(goal="unbind"), (Reply(Msg("verify.needed")),))
    if not checked_recently(ctx):
        return Step("@realname", ctx.with_data(goal="unbind"))
    realname = ctx.data["realname"]
    return Step(PICK, ctx.with_data(goal=None), (Reply(Msg("unbind.working")),),
                (Effect("unbind.options", {"verification_id": ctx.data["verified"]["id"],
                                           "tenure_start": realname["tenure_start"]}),))


def _name(item: Mapping[str, Any]) -> Localized:
    return Localized(str(item["name_zh"]), str(item["name_en"]))


def _lines(items: Sequence[Mapping[str, Any]]) -> Lines:
    return Lines(tuple(Msg("lookup.platform_line", {"name": _name(i), "month": str(i["month"])}) for i in items))


def _options(ctx: Ctx) -> tuple[list[Mapping[str, Any]], list[Mapping[str, Any]]]:
    options = ctx.data.get("unbind_options") or {}
    return list(options.get("eligible", [])), list(options.get("manual", []))


OPEN = ("queued", "submitted", "processing")


def _groups(ctx: Ctx) -> tuple[list[Mapping[str, Any]], list[Mapping[str, Any]], list[Mapping[str, Any]]]:
    """Eligible platforms split by what became of earlier requests: never filed (or done and bound again),
    still open, and rejected. Only the first group is filed by "all"."""
    eligible, _ = _options(ctx)
    pending = [i for i in eligible if i.get("history") in OPEN]
    rejected = [i for i in eligible if i.get("history") in ("rejected", "refused")]
    fresh = [i for i in eligible if i not in pending and i not in rejected]
    return fresh, pending, rejected


def _reason(item: Mapping[str, Any]) -> Msg:
    reason = str(item.get("reason") or "")
    return Msg(f"unbind.reason.{reason}" if reason in REASONS else "unbind.reason.other")


def _pick_reply(ctx: Ctx) -> Reply:
    fresh, pending, rejected = _groups(ctx)
    _, manual = _options(ctx)
    choices: list[Choice] = []
    if len(fresh) > 1:
        choices.append(Choice("all", Msg("unbind.all", {"count": len(fresh)})))
    choices.extend(Choice(f"p:{i['platform']}", Msg("unbind.one", {"name": _name(i)})) for i in fresh)
    choices.extend(Choice(f"re:{i['platform']}", Msg("unbind.refile", {"name": _name(i)})) for i in rejected)
    if manual:
        choices.append(Choice("guide", Msg("unbind.guide", {"count": len(manual)})))
    choices.append(Choice("menu", Msg("common.back_to_menu")))
    if fresh:
        key = "unbind.pick" if len(fresh) > 1 else "unbind.pick_single"
        main = Msg(key, {"count": len(fresh), "lines": _lines(fresh)})
    elif pending or rejected:
        main = Msg("unbind.none_new")
    else:
        return Reply(Msg("unbind.none_eligible"), tuple(choices))
    notes: list[Msg] = []
    if pending:
        notes.append(Msg("unbind.pending_note", {"lines": _lines(pending)}))
    if rejected:
        notes.append(Msg("unbind.rejected_note", {"lines": Lines(tuple(
            Msg("requests.platform_line_reason", {"name": _name(i), "status": Msg("requests.status.rejected"),
                                                  "reason": _reason(i)}) for i in rejected))}))
    if notes:
        main = Msg("unbind.pick_with_notes", {"main": main, "notes": Lines(tuple(notes))})
    return Reply(main, tuple(choices))


def _confirm_reply(ctx: Ctx) -> Reply:
    eligible, _ = _options(ctx)
    selected = set(ctx.data.get("unbind_selected") or [])
    chosen = [i for i in eligible if i["platform"] in selected]
    choices = (Choice("confirm", Msg("unbind.confirm_yes")), Choice("back", Msg("unbind.confirm_back")))
    refiled = [i for i in chosen if i.get("history") in ("rejected", "refused")]
    if refiled:
        # Re-filing what was rejected is asked for explicitly, with the reason it failed last time.
        return Reply(Msg("unbind.refile_confirm", {"name": _name(refiled[0]), "reason": _reason(refiled[0])}),
                     choices)
    return Reply(Msg("unbind.confirm", {"count": len(chosen), "lines": _lines(chosen)}), choices)


def _done_reply() -> Reply:
    return Reply(Msg("lookup.next"), (Choice("requests", Msg("menu.requests")), Choice("guide", Msg("menu.guide")),
                                      Choice("menu", Msg("common.back_to_menu"))))


def _pick(ctx: Ctx) -> Step:
    event = ctx.event
    if event.kind == "result" and event.effect == "unbind.options":
        options_found = answer(event, UnbindOptions)
        if not options_found.get("ok"):
            return Step("@menu", ctx.data, (Reply(Msg("lookup.unavailable"), error=True),))
        options = {"eligible": list(options_found.get("eligible", [])),
                   "manual": list(options_found.get("manual", []))}
        data = ctx.with_data(unbind_options=options)
        return Step(PICK, data, (_pick_reply(Ctx(PICK, data, event)),))
    fresh, _pending, rejected = _groups(ctx)
    ids = [str(i["platform"]) for i in fresh]
    if event.kind == "choice":
        if event.choice.startswith("re:") and event.choice[3:] in [str(i["platform"]) for i in rejected]:
            return _to_confirm(ctx, [event.choice[3:]])
        if event.choice == "all" and ids:
            # The list above the button is the explicit list of what is filed: no second screen (issue 12).
            return _file(ctx.with_data(unbind_selected=ids), CONFIRM)
        if event.choice.startswith("p:") and event.choice[2:] in ids:
            return _to_confirm(ctx, [event.choice[2:]])
        if event.choice == "guide":
            return Step("@guide", ctx.data)
        if event.choice == "menu":
            return Step("@menu", ctx.with_data(unbind_options=None, unbind_selected=None))
    return Step(PICK, ctx.data, (Reply(Msg("menu.pick_one"), error=True), _pick_reply(ctx)))


def _to_confirm(ctx: Ctx, platforms: list[str]) -> Step:
    data = ctx.with_data(unbind_selected=platforms)
    return Step(CONFIRM, data, (_confirm_reply(Ctx(CONFIRM, data, ctx.event)),))


def _confirm(ctx: Ctx) -> Step:
    event = ctx.event
    if event.kind == "result" and event.effect == "unbind.create":
        return _created(ctx)
    if event.kind == "choice" and event.choice == "confirm" and ctx.data.get("unbind_selected"):
        return _file(ctx.data, CONFIRM)
    if event.kind == "choice" and event.choice == "back":
        return Step(PICK, ctx.with_data(unbind_selected=None), (_pick_reply(ctx),))
    return Step(CONFIRM, ctx.data, (Reply(Msg("menu.pick_one"), error=True), _confirm_reply(ctx)))


def _file(data: Mapping[str, Any], state: str) -> Step:
    realname = data.get("realname") or {}
    verified = data.get("verified") or {}
    return Step(state, data, (), (Effect("unbind.create", {
        "verification_id": verified.get("id"), "platforms": list(data["unbind_selected"]),
        "tenure_start": realname.get("tenure_start")}),))


def _created(ctx: Ctx) -> Step:
    result = answer(ctx.event, UnbindFiled)
    data = ctx.with_data(unbind_selected=None)
    if not result.get("ok"):
        key = "unbind.nothing_eligible" if result.get("reason") == "nothing_eligible" else "lookup.unavailable"
        return Step(DONE, data, (Reply(Msg(key), error=True), _done_reply()))
    due = Msg("unbind.due_estimated" if result.get("estimated") else "unbind.due", {"date": str(result["due"])})
    key = "unbind.queued" if result.get("queued") else "unbind.submitted"
    replies = [Reply(Msg(key, {"reference": str(result["reference"]), "count": int(result["count"]), "due": due}))]
    refused = int(result.get("refused", 0))
    if refused:
        replies.append(Reply(Msg("unbind.some_refused", {"count": refused})))
    return Step(DONE, data, (*replies, _done_reply()))


def _done(ctx: Ctx) -> Step:
    event = ctx.event
    if event.kind == "choice" and event.choice in ("requests", "guide", "menu"):
        return Step(f"@{event.choice}", ctx.data)
    return Step(DONE, ctx.data, (Reply(Msg("menu.pick_one"), error=True), _done_reply()))


PROMPTS = {PICK: _pick_reply, CONFIRM: _confirm_reply, DONE: lambda ctx: _done_reply()}

FLOW = Flow(
    name="unbind",
    handlers={PICK: _pick, CONFIRM: _confirm, DONE: _done},
    edges=(
        Edge(PICK, CONFIRM, "one platform / all eligible"),
        Edge(PICK, "@guide", "manual platforms"),
        Edge(PICK, "@menu", "back / registry down"),
        Edge(CONFIRM, PICK, "back"),
        Edge(CONFIRM, DONE, "requested"),
        Edge(DONE, "@requests", "my requests"),
        Edge(DONE, "@guide", "guidance"),
        Edge(DONE, "@menu", "back"),
    ),
    starters={"unbind": start},
    entries=(Edge("@unbind", PICK, "verified + real name"), Edge("@unbind", "@verify", "needs verification"),
             Edge("@unbind", "@realname", "needs real name")),
    prompts=PROMPTS,
    menu=MenuEntry("unbind", "unbind", 20),
    goals=("unbind",),
    errand_keys=("unbind_selected",),
)
