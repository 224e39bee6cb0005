"""Runs the effects the dialog asks for and turns each outcome into a `result` event.

A failing outside system becomes a result with a reason, never an exception into the dialog.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlmodel import col, delete, func, select

from bot.storage import (
    ConsentRecord,
    OtpChallenge,
    PendingRealName,
    Plan,
    PlanItem,
    RealNameCheck,
    UnbindRequestRow,
    UsageEvent,
    User,
    Verification,
)
from dialogs.model import Effect, Event, Msg
from dialogs.tenure import before_tenure, eligible_platforms
from domain.masking import mask_id_number, mask_name, mask_phone
from integrations.registry import RegistryError, RegistryUnavailable

if TYPE_CHECKING:
    from bot.runtime import Runtime

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EffectContext:
    user_id: int
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

    def _sms_text(self, lang: str) -> Callable[[str, int], str]:
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
            for table in (Verification, OtpChallenge, ConsentRecord, RealNameCheck, PendingRealName, UsageEvent):
                await session.exec(delete(table).where(table.user_id == uid))  # type: ignore[arg-type]
            for plan in (await session.exec(select(Plan).where(Plan.user_id == uid))).all():
                await self.rt.jobs.cancel(f"plan:{plan.id}:", session)
                await session.exec(delete(PlanItem).where(col(PlanItem.plan_id) == plan.id))
                await session.delete(plan)
            rows = (await session.exec(select(UnbindRequestRow).where(UnbindRequestRow.user_id == uid))).all()
            kept = 0
            for row in rows:
                if row.status in ("done", "rejected", "refused"):
                    await session.delete(row)
                    continue
                # Open requests run to completion, detached from the user; a queued one keeps its sealed
                # number only until the registry has it.
                kept += 1
                row.user_id = None
                row.phone_masked = ""
                session.add(row)
            await session.commit()
        log.info("user data deleted", extra={"user": uid, "kept_requests": kept})
        return {"ok": True, "kept_requests": kept}

    async def _own_verification(self, args: Mapping[str, Any], ctx: EffectContext) -> tuple[Verification, str] | None:
        verification_id = args.get("verification_id")
        if not isinstance(verification_id, int):
            return None
        async with self.rt.db.session() as session:
            verification = await session.get(Verification, verification_id)
        if verification is None or verification.user_id != _uid(ctx):
            return None
        return verification, self.rt.vault.reveal(verification.phone_enc)

    async def _realname_stash(self, args: Mapping[str, Any], ctx: EffectContext) -> dict[str, Any]:
        name = str(args["name"])
        async with self.rt.db.session() as session:
            pending = await session.get(PendingRealName, _uid(ctx))
            pending = pending or PendingRealName(user_id=_uid(ctx), name_enc="")
            pending.name_enc = self.rt.vault.seal(name)
            pending.created_at = ctx.now
            session.add(pending)
            await session.commit()
        return {"ok": True, "masked": mask_name(name)}

    async def _realname_check(self, args: Mapping[str, Any], ctx: EffectContext) -> dict[str, Any]:
        own = await self._own_verification(args, ctx)
        if own is None:
            return {"ok": False, "reason": "unavailable"}
        verification, phone = own
        limit = self.rt.settings.realname_attempts
        async with self.rt.db.session() as session:
            failures = int((await session.exec(select(func.count()).select_from(RealNameCheck).where(
                RealNameCheck.verification_id == verification.id, col(RealNameCheck.matched).is_(False)))).one())
            pending = await session.get(PendingRealName, _uid(ctx))
            if pending is not None:
                await session.delete(pending)
                await session.commit()
        if failures >= limit:
            return {"ok": False, "reason": "locked"}
        if pending is None or ctx.now - pending.created_at > timedelta(minutes=30):
            return {"ok": False, "reason": "no_match", "remaining": limit - failures}
        name = self.rt.vault.reveal(pending.name_enc)
        id_number = str(args["id_number"])
        matched = await self.rt.registry.holder_check(phone, name, id_number)
        check = RealNameCheck(user_id=_uid(ctx), verification_id=verification.id or 0,
                              id_hash=self.rt.vault.keyed_hash(id_number, purpose="id"),
                              id_masked=mask_id_number(id_number), name_masked=mask_name(name), matched=matched,
                              at=ctx.now)
        async with self.rt.db.session() as session:
            session.add(check)
            await session.commit()
        log.info("holder check", extra={"phone": verification.phone_masked, "matched": matched})
        if not matched:
            remaining = limit - failures - 1
            return {"ok": False, "reason": "locked" if remaining <= 0 else "no_match", "remaining": remaining}
        info = await self.rt.registry.number_info(phone)
        if info is None or info.tenure_start is None:
            return {"ok": False, "reason": "unavailable"}
        return {"ok": True, "match": True, "masked": verification.phone_masked,
                "tenure_start": info.tenure_start.isoformat(), "check_id": check.id}

    async def _unbind_options(self, args: Mapping[str, Any], ctx: EffectContext) -> dict[str, Any]:
        own = await self._own_verification(args, ctx)
        if own is None:
            return {"ok": False, "reason": "unavailable"}
        _verification, phone = own
        tenure_start = date.fromisoformat(str(args["tenure_start"]))
        _start, bindings = await self.rt.registry.bindings(phone)
        platforms = {p.id: p for p in await self.rt.registry.platforms()}
        raw = [{"platform": b.platform, "bound_month": b.bound_month, "tenure": b.tenure} for b in bindings]
        unbindable = [pid for pid, p in platforms.items() if p.unbind_supported]
        eligible = set(eligible_platforms(raw, tenure_start, unbindable))

        def item(b: Mapping[str, str]) -> dict[str, str]:
            known = platforms.get(b["platform"])
            return {"platform": b["platform"], "month": b["bound_month"],
                    "name_zh": known.name_zh if known else b["platform"],
                    "name_en": known.name_en if known else b["platform"]}

        previous = [b for b in raw if b["tenure"] == "previous" and before_tenure(b["bound_month"], tenure_start)]
        return {"ok": True,
                "eligible": [item(b) for b in previous if b["platform"] in eligible],
                "manual": [item(b) for b in previous if b["platform"] not in eligible]}

    async def _unbind_create(self, args: Mapping[str, Any], ctx: EffectContext) -> dict[str, Any]:
        own = await self._own_verification(args, ctx)
        if own is None:
            return {"ok": False, "reason": "unavailable"}
        verification, phone = own
        tenure_start = date.fromisoformat(str(args["tenure_start"]))
        requested = [str(p) for p in args.get("platforms", [])]
        try:
            # The tenure rule again, against the registry's answer of now rather than the one the list was built on.
            options = await self._unbind_options(args, ctx)
            allowed = {i["platform"] for i in options.get("eligible", [])}
            platforms = [p for p in requested if p in allowed]
        except RegistryUnavailable:
            # The list came from the registry minutes ago, and the registry applies the rule again on submission.
            platforms = requested
        if not platforms:
            return {"ok": False, "reason": "nothing_eligible"}
        return await self.rt.unbind.create(_uid(ctx), phone, verification.phone_masked, platforms, tenure_start,
                                           ctx.now)

    async def _requests_list(self, args: Mapping[str, Any], ctx: EffectContext) -> dict[str, Any]:
        return {"ok": True, "items": await self.rt.unbind.list_for(_uid(ctx))}

    async def _guide_list(self, args: Mapping[str, Any], ctx: EffectContext) -> dict[str, Any]:
        group = self.rt.directory.by_category().get(str(args.get("category")), ())
        return {"ok": True, "platforms": [{"id": p.id, "name_zh": p.name_zh, "name_en": p.name_en} for p in group]}

    async def _guide_platform(self, args: Mapping[str, Any], ctx: EffectContext) -> dict[str, Any]:
        platform = self.rt.directory.get(str(args.get("id")))
        if platform is None:
            return {"ok": False, "reason": "not_found"}
        return {"ok": True, "platform": {
            "id": platform.id, "name_zh": platform.name_zh, "name_en": platform.name_en,
            "path_zh": platform.change_path_zh, "path_en": platform.change_path_en,
            "notes_zh": platform.notes_zh, "notes_en": platform.notes_en,
            "difficulty": platform.difficulty, "registry_unbind": platform.registry_unbind}}

    async def _recycle_check(self, args: Mapping[str, Any], ctx: EffectContext) -> dict[str, Any]:
        settings = self.rt.settings
        uid = _uid(ctx)
        async with self.rt.db.session() as session:
            async def used(since: timedelta) -> int:
                return int((await session.exec(select(func.count()).select_from(UsageEvent).where(
                    UsageEvent.user_id == uid, UsageEvent.kind == "recycle_check",
                    col(UsageEvent.at) >= ctx.now - since))).one())

            if await used(timedelta(hours=1)) >= settings.recycle_checks_per_hour:
                return {"ok": False, "reason": "rate_limited", "retry_minutes": 60}
            if await used(timedelta(days=1)) >= settings.recycle_checks_per_day:
                return {"ok": False, "reason": "rate_limited", "retry_minutes": 24 * 60}
            session.add(UsageEvent(user_id=uid, kind="recycle_check", at=ctx.now))
            await session.commit()
        phone = str(args["phone"])
        answer = await self.rt.registry.recycle_check(phone)
        return {"ok": True, "masked": mask_phone(phone), "known": answer.known, "reissued": answer.reissued,
                "released_days_ago": answer.released_days_ago,
                "previous_bindings_remain": answer.previous_bindings_remain}

    async def _tag_create(self, args: Mapping[str, Any], ctx: EffectContext) -> dict[str, Any]:
        own = await self._own_verification(args, ctx)
        kind = args.get("kind")
        if own is None or kind not in ("new_holder", "clear_harassment"):
            return {"ok": False, "reason": "unavailable"}
        verification, phone = own
        tag = await self.rt.registry.create_tag(phone, kind, str(args["since"]))
        log.info("number tagged", extra={"phone": verification.phone_masked, "kind": kind})
        return {"ok": True, "code": tag.code, "kind": tag.kind, "since": tag.since, "masked": verification.phone_masked}

    async def _plan_load(self, args: Mapping[str, Any], ctx: EffectContext) -> dict[str, Any]:
        return {"ok": True, "plan": await self.rt.plans.load(_uid(ctx), ctx.now)}

    async def _plan_save(self, args: Mapping[str, Any], ctx: EffectContext) -> dict[str, Any]:
        verification_id = args.get("verification_id")
        if not isinstance(verification_id, int):
            return {"ok": False, "reason": "unavailable"}
        plan = await self.rt.plans.save(_uid(ctx), verification_id, date.fromisoformat(str(args["date"])), ctx.now)
        return {"ok": True, "plan": plan}

    async def _plan_mark(self, args: Mapping[str, Any], ctx: EffectContext) -> dict[str, Any]:
        item_id = args.get("item_id")
        if not isinstance(item_id, int):
            return {"ok": False}
        plan = await self.rt.plans.mark(_uid(ctx), item_id, str(args.get("action")), ctx.now)
        return {"ok": plan is not None, "plan": plan}

    async def _plan_cancel(self, args: Mapping[str, Any], ctx: EffectContext) -> dict[str, Any]:
        return {"ok": await self.rt.plans.cancel(_uid(ctx), ctx.now)}

    async def _tag_lookup(self, args: Mapping[str, Any], ctx: EffectContext) -> dict[str, Any]:
        tag = await self.rt.registry.get_tag(str(args["code"]))
        if tag is None:
            return {"ok": False, "reason": "not_found"}
        return {"ok": True, "code": tag.code, "kind": tag.kind, "since": tag.since, "masked": tag.phone_masked}


def _uid(ctx: EffectContext) -> int:
    return ctx.user_id

