"""Runs the effects the dialog asks for and turns each outcome into a `result` event.

A failing outside system becomes a result with a reason, never an exception into the dialog.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlmodel import delete, select

from bot.storage import ConsentRecord, OtpChallenge, User, Verification
from dialogs.model import Effect, Event, Msg
from integrations.registry import RegistryError, RegistryUnavailable

if TYPE_CHECKING:
    from bot.runtime import Runtime

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EffectContext:
    user: User
    lang: str
    now: datetime


class EffectRunner:
    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime

    async def run(self, effect: Effect, ctx: EffectContext) -> Event | None:
        handler = getattr(self, "_" + effect.kind.replace(".", "_"), None)
        if handler is None:
            raise LookupError(f"no runner for effect {effect.kind}")
        try:
            result = await handler(effect.args, ctx)
        except RegistryUnavailable:
            log.warning("registry unavailable", extra={"effect": effect.kind})
            result = {"ok": False, "reason": "unavailable"}
        except RegistryError:
            log.exception("registry error", extra={"effect": effect.kind})
            result = {"ok": False, "reason": "unavailable"}
        if result is None:
            return None
        return Event("result", effect=effect.kind, result=result, now=ctx.now)

    def _sms_text(self, lang: str):  # type: ignore[no-untyped-def]
        catalog = self.rt.catalog

        def render(code: str, ttl_minutes: int) -> str:
            return catalog.render(Msg("sms.code", {"code": code, "minutes": ttl_minutes}), lang)

        return render

    async def _consent_record(self, args: Mapping[str, Any], ctx: EffectContext) -> None:
        async with self.rt.db.session() as session:
            session.add(ConsentRecord(user_id=_uid(ctx), version=str(args["version"]),
                                      accepted=bool(args["accepted"]), at=ctx.now))
            await session.commit()
        return None

    async def _otp_send(self, args: Mapping[str, Any], ctx: EffectContext) -> dict[str, Any]:
        outcome = await self.rt.otp.send(_uid(ctx), str(args["phone"]), self._sms_text(ctx.lang), ctx.now)
        return outcome.__dict__

    async def _otp_resend(self, args: Mapping[str, Any], ctx: EffectContext) -> dict[str, Any]:
        challenge_id = args.get("challenge_id")
        if not isinstance(challenge_id, int):
            return {"ok": False, "reason": "failed"}
        outcome = await self.rt.otp.resend(_uid(ctx), challenge_id, self._sms_text(ctx.lang), ctx.now)
        return outcome.__dict__

    async def _otp_check(self, args: Mapping[str, Any], ctx: EffectContext) -> dict[str, Any]:
        challenge_id = args.get("challenge_id")
        if not isinstance(challenge_id, int):
            return {"ok": False, "reason": "invalid"}
        outcome = await self.rt.otp.check(_uid(ctx), challenge_id, str(args["code"]), ctx.now)
        return outcome.__dict__

    async def _contact_verify(self, args: Mapping[str, Any], ctx: EffectContext) -> dict[str, Any]:
        outcome = await self.rt.otp.verify_contact(_uid(ctx), str(args["phone"]), ctx.now)
        return outcome.__dict__

    async def _registry_lookup(self, args: Mapping[str, Any], ctx: EffectContext) -> dict[str, Any]:
        async with self.rt.db.session() as session:
            verification = await session.get(Verification, int(args["verification_id"]))
        if verification is None or verification.user_id != _uid(ctx):
            return {"ok": False, "reason": "unavailable"}
        phone = self.rt.vault.reveal(verification.phone_enc)
        registry = self.rt.registry
        info = await registry.number_info(phone)
        if info is None:
            return {"ok": False, "reason": "unknown"}
        if info.status != "assigned":
            return {"ok": False, "reason": "not_assigned"}
        _tenure_start, bindings = await registry.bindings(phone)
        platforms = {p.id: p for p in await registry.platforms()}

        def item(platform: str, month: str) -> dict[str, str]:
            known = platforms.get(platform)
            return {"platform": platform, "month": month,
                    "name_zh": known.name_zh if known else platform, "name_en": known.name_en if known else platform}

        previous = [item(b.platform, b.bound_month) for b in bindings if b.tenure == "previous"]
        current = [item(b.platform, b.bound_month) for b in bindings if b.tenure == "current"]
        return {
            "ok": True, "masked": verification.phone_masked, "carrier": info.carrier,
            "original_carrier": info.original_carrier, "ported": info.ported,
            "virtual_operator": info.virtual_operator,
            "tenure_start": info.tenure_start.isoformat() if info.tenure_start else None,
            "previous": sorted(previous, key=lambda i: i["month"]),
            "current": sorted(current, key=lambda i: i["month"]),
        }

    async def _settings_reminders(self, args: Mapping[str, Any], ctx: EffectContext) -> None:
        async with self.rt.db.session() as session:
            user = await session.get(User, _uid(ctx))
            if user is not None:
                user.reminders_on = bool(args["on"])
                session.add(user)
                await session.commit()
        return None

    async def _data_forget(self, args: Mapping[str, Any], ctx: EffectContext) -> dict[str, Any]:
        uid = _uid(ctx)
        async with self.rt.db.session() as session:
            for table in (Verification, OtpChallenge, ConsentRecord):
                await session.exec(delete(table).where(table.user_id == uid))  # type: ignore[arg-type]
            await session.commit()
            remaining = (await session.exec(select(Verification).where(Verification.user_id == uid))).all()
        log.info("user data deleted", extra={"user": uid, "left": len(remaining)})
        return {"ok": True, "kept_requests": 0}


def _uid(ctx: EffectContext) -> int:
    assert ctx.user.id is not None
    return ctx.user.id

