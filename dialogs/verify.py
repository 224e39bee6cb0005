"""Verification: consent, phone number, SMS code (or an own Telegram contact). Never keeps the raw number."""

from __future__ import annotations

import re
import unicodedata
from datetime import datetime, timedelta

from dialogs.model import Choice, Ctx, Edge, Effect, Flow, Msg, Reply, Step
from dialogs.phones import parse_mainland_mobile
from dialogs.results import CodeChecked, CodeSent, answer

CONSENT = "verify.consent"
PHONE = "verify.phone"
CODE = "verify.code"

CONSENT_VERSION = "2026-11-v1"
FRESH_FOR = timedelta(minutes=30)


def recent(record: object, now: datetime) -> bool:
    """True when `record` is a dict whose `at` timestamp is less than FRESH_FOR old."""
    if not isinstance(record, dict):
        return False
    try:
        at = datetime.fromisoformat(str(record.get("at")))
    except ValueError:
        return False
    return now - at < FRESH_FOR


def verified_recently(ctx: Ctx) -> bool:
    typed = ctx.data.get("typed_phone")
    verified = ctx.data.get("verified")
    if isinstance(typed, dict) and isinstance(verified, dict) and typed.get("masked") != verified.get("masked"):
        return False  # the user just typed another number: that one needs its own code
    return recent(verified, ctx.event.now)


def _send_typed(ctx: Ctx) -> Effect | None:
    """A number typed earlier in the conversation (kept sealed) saves typing it again."""
    typed = ctx.data.get("typed_phone")
    if isinstance(typed, dict) and typed.get("sealed"):
        return Effect("otp.send", {"sealed": str(typed["sealed"]), "lang": ctx.lang})
    return None


def start(ctx: Ctx) -> Step:
    """Entry for every flow that needs a verified number; `goal` in data says where to go next."""
    if ctx.data.get("consent") != CONSENT_VERSION:
        return Step(CONSENT, ctx.data, (_consent_reply(),))
    typed = _send_typed(ctx)
    if typed is not None:
        return Step(PHONE, ctx.with_data(typed_phone=None), (), (typed,))
    return Step(PHONE, ctx.data, (_phone_reply(),))


def _consent_reply() -> Reply:
    return Reply(
        Msg("verify.consent", {"version": CONSENT_VERSION}),
        (Choice("agree", Msg("verify.consent.agree")), Choice("decline", Msg("verify.consent.decline"))),
    )


def _phone_reply() -> Reply:
    return Reply(Msg("verify.ask_phone"), (Choice("menu", Msg("common.back_to_menu")),), request_contact=True,
                 expects="phone")


def _code_reply(masked: str) -> Reply:
    return Reply(Msg("verify.ask_code", {"masked": masked}), _code_choices(), expects="code")


def _code_next() -> Reply:
    return Reply(Msg("verify.code_next"), _code_choices(), expects="code")


def _code_choices() -> tuple[Choice, ...]:
    return (
        Choice("resend", Msg("verify.resend")),
        Choice("change", Msg("verify.change_number")),
        Choice("menu", Msg("common.back_to_menu")),
    )


def _consent(ctx: Ctx) -> Step:
    event = ctx.event
    if event.kind == "choice" and event.choice == "agree":
        typed = _send_typed(ctx)
        if typed is not None:
            return Step(PHONE, ctx.with_data(consent=CONSENT_VERSION, typed_phone=None),
                        (Reply(Msg("verify.consent.thanks")),), (_record(True), typed))
        return Step(
            PHONE,
            ctx.with_data(consent=CONSENT_VERSION),
            (Reply(Msg("verify.consent.thanks")), _phone_reply()),
            (_record(True),),
        )
    if event.kind == "choice" and event.choice == "decline":
        return Step("@menu", ctx.with_data(goal=None), (Reply(Msg("verify.consent.declined")),), (_record(False),))
    return Step(CONSENT, ctx.data, (Reply(Msg("verify.consent.pick"), error=True), _consent_reply()))


def _record(accepted: bool) -> Effect:
    return Effect("consent.record", {"version": CONSENT_VERSION, "accepted": accepted})


def _send_failure(ctx: Ctx, state: str) -> Step:
    result = answer(ctx.event, CodeSent)
    reason = str(result.get("reason", "failed"))
    params: dict[str, int | str] = {"seconds": int(result.get("retry_in", 0))}
    key = {
        "too_soon": "verify.sms.too_soon",
        "number_daily_limit": "verify.sms.number_daily_limit",
        "user_daily_limit": "verify.sms.user_daily_limit",
        "budget": "verify.sms.budget",
    }.get(reason, "verify.sms.failed")
    follow = _phone_reply() if state == PHONE else _code_next()
    return Step(state, ctx.data, (Reply(Msg(key, params), error=True), follow))


def _sent(ctx: Ctx) -> Step:
    result = answer(ctx.event, CodeSent)
    masked = str(result["masked"])
    data = ctx.with_data(challenge_id=int(result["challenge_id"]), phone_masked=masked)
    return Step(CODE, data, (_code_reply(masked),))


def _phone(ctx: Ctx) -> Step:
    event = ctx.event
    if event.kind == "result" and event.effect in ("otp.send", "contact.verify"):
        if event.effect == "contact.verify":
            return _verified(ctx)
        return _sent(ctx) if answer(event, CodeSent)["ok"] else _send_failure(ctx, PHONE)
    if event.kind == "choice" and event.choice == "menu":
        return Step("@menu", ctx.data)
    if event.kind == "contact":
        if not event.contact_own:
            return Step(PHONE, ctx.data, (Reply(Msg("verify.contact_not_own"), error=True), _phone_reply()))
        parsed = parse_mainland_mobile(event.contact_phone)
        if parsed.problem != "ok":
            return _phone_problem(ctx, parsed.problem)
        return Step(PHONE, ctx.data, (), (Effect("contact.verify", {"phone": parsed.national}),))
    if event.kind != "text":
        return Step(PHONE, ctx.data, (Reply(Msg("verify.phone_expected"), error=True), _phone_reply()))
    parsed = parse_mainland_mobile(event.text)
    if parsed.problem != "ok":
        return _phone_problem(ctx, parsed.problem)
    return Step(PHONE, ctx.data, (), (Effect("otp.send", {"phone": parsed.national, "lang": ctx.lang}),))


def _phone_problem(ctx: Ctx, problem: str) -> Step:
    return Step(PHONE, ctx.data, (Reply(Msg(f"verify.phone.{problem}"), error=True), _phone_reply()))


_CODE_RE = re.compile(r"\d{6}")


def _code(ctx: Ctx) -> Step:
    event = ctx.event
    if event.kind == "result" and event.effect in ("otp.send", "otp.resend"):
        return _sent(ctx) if answer(event, CodeSent)["ok"] else _send_failure(ctx, CODE)
    if event.kind == "result" and event.effect == "otp.check":
        return _checked(ctx)
    if event.kind == "choice":
        if event.choice == "resend":
            return Step(CODE, ctx.data, (), (Effect("otp.resend", {"challenge_id": ctx.data.get("challenge_id"),
                                                                     "lang": ctx.lang}),))
        if event.choice == "change":
            return Step(PHONE, ctx.with_data(challenge_id=None, phone_masked=None), (_phone_reply(),))
        if event.choice == "menu":
            return Step("@menu", ctx.data)
    if event.kind == "text":
        code = re.sub(r"\s", "", unicodedata.normalize("NFKC", event.text))
        if _CODE_RE.fullmatch(code):
            return Step(CODE, ctx.data, (), (Effect("otp.check", {"challenge_id": ctx.data.get("challenge_id"),
                                                                  "code": code}),))
        if parse_mainland_mobile(event.text).problem == "ok":
            # A number typed at the code prompt: the user wants another number, so start over with it.
            return _phone(Ctx(PHONE, ctx.with_data(challenge_id=None, phone_masked=None), event))
    # Not "the code was sent to …" again: nothing was sent, and repeating it reads as if something was (issue 12).
    return Step(CODE, ctx.data, (Reply(Msg("verify.code_format"), error=True), _code_next()))


def _masked(ctx: Ctx) -> str:
    return str(ctx.data.get("phone_masked", ""))


def _checked(ctx: Ctx) -> Step:
    result = answer(ctx.event, CodeChecked)
    if result.get("ok"):
        return _verified(ctx)
    reason = str(result.get("reason", "wrong"))
    if reason == "wrong":
        remaining = int(result.get("remaining", 0))
        return Step(CODE, ctx.data, (Reply(Msg("verify.code_wrong", {"remaining": remaining}), error=True),
                                     _code_next()))
    key = {"locked": "verify.code_locked", "expired": "verify.code_expired"}.get(reason, "verify.code_invalid")
    return Step(CODE, ctx.data, (Reply(Msg(key), error=True), _code_next()))


def _verified(ctx: Ctx) -> Step:
    result = answer(ctx.event, CodeChecked)
    if not result.get("ok"):
        return Step(PHONE, ctx.data, (Reply(Msg("verify.sms.failed"), error=True), _phone_reply()))
    masked = str(result["masked"])
    verified = {"id": int(result["verification_id"]), "at": ctx.event.now.isoformat(), "masked": masked}
    data = ctx.with_data(verified=verified, challenge_id=None, phone_masked=None)
    return Step("@goal", data, (Reply(Msg("verify.done", {"masked": masked})),))


PROMPTS = {
    CONSENT: lambda ctx: _consent_reply(),
    PHONE: lambda ctx: _phone_reply(),
    CODE: lambda ctx: _code_reply(_masked(ctx)),
}

FLOW = Flow(
    name="verify",
    handlers={CONSENT: _consent, PHONE: _phone, CODE: _code},
    edges=(
        Edge(CONSENT, PHONE, "agree"),
        Edge(CONSENT, "@menu", "decline"),
        Edge(PHONE, CODE, "code sent"),
        Edge(PHONE, "@goal", "own contact"),
        Edge(PHONE, "@menu", "back"),
        Edge(CODE, PHONE, "change number"),
        Edge(CODE, "@goal", "code ok"),
        Edge(CODE, "@menu", "back"),
    ),
    starters={"verify": start},
    entries=(Edge("@verify", CONSENT, "no consent yet"), Edge("@verify", PHONE, "consented")),
    prompts=PROMPTS,
    errand_keys=("challenge_id", "phone_masked"),
)
