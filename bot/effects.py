"""Runs the effects the dialog asks for and turns each outcome into a `result` event.

A failing outside system becomes a result with a reason, never an exception into the dialog.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from bot.abuse import Rule, realname_rule
from bot.storage import (
    ConsentRecord,
    EffectOutcome,
    PendingRealName,
    RealNameCheck,
    User,
    Verification,
)
from dialogs import escalation as escalation_rules
from dialogs import results
from dialogs.model import Effect, Event, Msg
from dialogs.tenure import before_tenure, eligible_platforms
from domain import beijing
from domain.masking import mask_id_number, mask_name, mask_phone
from integrations.registry import RegistryError, RegistryUnavailable

if TYPE_CHECKING:
    from bot.abuse import Limits
    from bot.config import Settings
    from bot.i18n import Catalog
    from bot.otp import CheckOutcome, OtpService, SendOutcome
    from bot.people import PeopleService
    from bot.plans import PlanService
    from bot.storage import Database
    from bot.unbind_requests import UnbindService
    from bot.vault import Vault
    from integrations.platform_directory import PlatformDirectory
    from integrations.registry import RegistryClient

log = logging.getLogger(__name__)

# --- channels: per-channel registry budget ---
# A channel's cap on one registry read inside a step (WeChat: the step must end within the 5 s passive reply),
# set by the channel around Dispatcher.handle; past it the read counts as unavailable. None: the client's timeout.
REGISTRY_READ_BUDGET: ContextVar[float | None] = ContextVar("registry_read_budget", default=None)
# Reads only: a write (unbind.create, tag.create) cut off half-way could leave the registry and us disagreeing.
BUDGETED_READS = frozenset({"registry.lookup", "unbind.options", "recycle.check", "tag.lookup"})


@dataclass(frozen=True)
class EffectContext:
    user_id: int
    lang: str
    now: datetime
    # Unique per (delivery, effect round, effect index) and the same when that delivery is replayed: whatever the
    # effect creates carries it (or a key derived from it) under a unique constraint, so it acts once.
    delivery_key: str = ""
    # The client the abuse limits count (bot/abuse.py): "web:ADDRESS", or the channel and its user id.
    client: str = ""


# Effects that change something: their outcome is kept under the delivery's key, so a step replayed after a crash
# (between the effect and the step's commit) is answered with the first outcome instead of acting again. The
# ones that reach outside also carry a key the far side deduplicates on (SMS, unbind requests, tags), which
# covers the instant between the action and this record. Reads are simply run again.
ACTING = frozenset({"consent.record", "otp.send", "otp.resend", "otp.check", "contact.verify", "realname.stash",
                    "realname.check", "unbind.create", "tag.create", "recycle.check", "plan.save", "plan.mark",
                    "plan.cancel", "settings.reminders", "data.forget"})


# A runner answers with its effect kind's record (dialogs/results.py), or None when the dialog needs no answer.
Runner = Callable[[Any, Mapping[str, Any], "EffectContext"], Awaitable[Mapping[str, Any] | None]]
# Effect kind -> its runner, filled by @runs as EffectRunner's body is read: the table is complete once this
# module is imported, and nothing else can become a runner by the shape of its name.
RUNNERS: dict[str, Runner] = {}


RunnerT = TypeVar("RunnerT", bound=Callable[..., Awaitable[Any]])


def runs(kind: str) -> Callable[[RunnerT], RunnerT]:
    """Registers the decorated EffectRunner method as the runner of effects of `kind`."""
    def register(method: RunnerT) -> RunnerT:
        if kind in RUNNERS:
            raise RuntimeError(f"two runners for effect {kind}")
        RUNNERS[kind] = method
        return method

    return register


class TicketDesk(Protocol):
    """What the handoff dialog's effects ask of the ticket service (bot/staff/tickets.py TicketService)."""

    async def open(self, user_id: int, reason: str) -> results.TicketOpened: ...

    async def user_message(self, user_id: int, text: str, delivery_key: str) -> None: ...

    async def user_left(self, user_id: int) -> None: ...

    async def forget(self, user_id: int) -> None: ...


@dataclass(frozen=True)
class EscalationHooks:
    """The escalation ladder's outside half (bot/escalation.py), bound by the runtime to what it reads."""

    with_appeals: Callable[[list[dict[str, Any]]], list[dict[str, Any]]]
    carrier_of: Callable[[str], Awaitable[str]]
    schedule_overdue: Callable[[str, str], Awaitable[None]]


class EffectRunner:
    def __init__(self, *, db: Database, vault: Vault, catalog: Catalog, settings: Settings, limits: Limits,
                 registry: Callable[[], RegistryClient], directory: PlatformDirectory, otp: OtpService,
                 people: PeopleService, unbind: UnbindService, plans: PlanService, escalation: EscalationHooks,
                 tickets: Callable[[], TicketDesk | None]) -> None:
        self.db, self.vault, self.catalog, self.settings, self.limits = db, vault, catalog, settings, limits
        self.directory, self.otp, self.people, self.unbind, self.plans = directory, otp, people, unbind, plans
        self.escalation = escalation
        # Asked each time: the registry client is replaced once the server knows its port (bot/server.py), and
        # the ticket service is mounted after the runtime is built (bot/staff).
        self._registry, self._tickets = registry, tickets

    @property
    def registry(self) -> RegistryClient:
        return self._registry()

    @property
    def tickets(self) -> TicketDesk | None:
        return self._tickets()

    async def run(self, effect: Effect, ctx: EffectContext) -> Event | None:
        runner = RUNNERS.get(effect.kind)
        if runner is None:
            raise LookupError(f"no runner for effect {effect.kind}")
        handler = partial(runner, self)
        remembered = effect.kind in ACTING and bool(ctx.delivery_key)
        if remembered:
            async with self.db.session() as session:
                earlier = await session.get(EffectOutcome, ctx.delivery_key)
            if earlier is not None and earlier.kind == effect.kind:
                # This delivery ran the effect before a crash: its first outcome, not a second action.
                log.info("effect replayed", extra={"effect": effect.kind})
                first = json.loads(earlier.result)
                return None if first is None else Event("result", effect=effect.kind, result=first, now=ctx.now)
        event = await self._run(handler, effect, ctx)
        if remembered:
            async with self.db.session() as session:
                session.add(EffectOutcome(delivery_key=ctx.delivery_key, user_id=ctx.user_id, kind=effect.kind,
                                          result=json.dumps(None if event is None else dict(event.result),
                                                            ensure_ascii=False), at=ctx.now))
                await session.commit()
        return event

    async def _run(self, handler: Any, effect: Effect, ctx: EffectContext) -> Event | None:
        budget = REGISTRY_READ_BUDGET.get() if effect.kind in BUDGETED_READS else None
        result: Mapping[str, Any] | None
        unavailable: results.Failed = {"ok": False, "reason": "unavailable"}
        try:
            if budget is None:
                result = await handler(effect.args, ctx)
            else:
                async with asyncio.timeout(budget):
                    result = await handler(effect.args, ctx)
        except TimeoutError:
            if budget is None:
                raise
            # Only the channel's budget fires here (the client's own timeouts surface as RegistryUnavailable).
            log.warning("registry read over the channel's budget", extra={"effect": effect.kind, "budget": budget})
            result = unavailable
        except RegistryUnavailable:
            log.warning("registry unavailable", extra={"effect": effect.kind})
            result = unavailable
        except RegistryError:
            log.exception("registry error", extra={"effect": effect.kind})
            result = unavailable
        if result is None:
            return None
        return Event("result", effect=effect.kind, result=result, now=ctx.now)

    def _sms_text(self, lang: str) -> Callable[[str, int], str]:
        catalog = self.catalog

        def render(code: str, ttl_minutes: int) -> str:
            return catalog.render(Msg("sms.code", {"code": code, "minutes": ttl_minutes}), lang)

        return render

    @runs("consent.record")
    async def _consent_record(self, args: Mapping[str, Any], ctx: EffectContext) -> None:
        async with self.db.session() as session:
            session.add(ConsentRecord(user_id=_uid(ctx), version=str(args["version"]),
                                      accepted=bool(args["accepted"]), at=ctx.now))
            await session.commit()
        return None

    def _phone_arg(self, args: Mapping[str, Any]) -> str:
        """A phone number passed in clear, or one the dialog holds sealed (typed earlier: issue 12)."""
        if args.get("sealed"):
            return self.vault.reveal(str(args["sealed"]))
        return str(args["phone"])

    @runs("guide.letter")
    async def _guide_letter(self, args: Mapping[str, Any], ctx: EffectContext) -> results.LetterNumber:
        """The holder's own full number for their letter; only for this user's own verification."""
        own = await self._own_verification(args, ctx)
        return {"ok": own is not None, "phone": own[1] if own else ""}

    @runs("phone.seal")
    async def _phone_seal(self, args: Mapping[str, Any], ctx: EffectContext) -> results.PhoneSealed:
        phone = str(args["phone"])
        return {"ok": True, "sealed": self.vault.seal(phone), "masked": mask_phone(phone),
                "then": str(args.get("then") or "")}

    @runs("otp.send")
    async def _otp_send(self, args: Mapping[str, Any], ctx: EffectContext) -> results.CodeSent:
        outcome = await self.otp.send(_uid(ctx), self._phone_arg(args), self._sms_text(ctx.lang), ctx.now,
                                      client=ctx.client, delivery_key=ctx.delivery_key)
        return _code_sent(outcome)

    @runs("otp.resend")
    async def _otp_resend(self, args: Mapping[str, Any], ctx: EffectContext) -> results.CodeSent:
        challenge_id = args.get("challenge_id")
        if not isinstance(challenge_id, int):
            return {"ok": False, "reason": "failed"}
        outcome = await self.otp.resend(_uid(ctx), challenge_id, self._sms_text(ctx.lang), ctx.now,
                                        client=ctx.client, delivery_key=ctx.delivery_key)
        return _code_sent(outcome)

    @runs("otp.check")
    async def _otp_check(self, args: Mapping[str, Any], ctx: EffectContext) -> results.CodeChecked:
        challenge_id = args.get("challenge_id")
        if not isinstance(challenge_id, int):
            return {"ok": False, "reason": "invalid"}
        outcome = await self.otp.check(_uid(ctx), challenge_id, str(args["code"]), ctx.now)
        if outcome.ok:
            await self._link_person(outcome.verification_id, ctx)
        return _code_checked(outcome)

    @runs("contact.verify")
    async def _contact_verify(self, args: Mapping[str, Any], ctx: EffectContext) -> results.CodeChecked:
        outcome = await self.otp.verify_contact(_uid(ctx), str(args["phone"]), ctx.now)
        if outcome.ok:
            await self._link_person(outcome.verification_id, ctx)
        return _code_checked(outcome)

    async def _link_person(self, verification_id: int, ctx: EffectContext) -> None:
        """The verified number is the person (invariant 7): this channel identity now sees their requests."""
        async with self.db.session() as session:
            verification = await session.get(Verification, verification_id)
        if verification is not None and verification.user_id == _uid(ctx):
            await self.people.link(_uid(ctx), self.vault.reveal(verification.phone_enc), ctx.now)

    @runs("registry.lookup")
    async def _registry_lookup(self, args: Mapping[str, Any], ctx: EffectContext) -> results.Lookup:
        async with self.db.session() as session:
            verification = await session.get(Verification, int(args["verification_id"]))
        if verification is None or verification.user_id != _uid(ctx):
            return {"ok": False, "reason": "unavailable"}
        phone = self.vault.reveal(verification.phone_enc)
        registry = self.registry
        info = await registry.number_info(phone)
        if info is None:
            return {"ok": False, "reason": "unknown"}
        if info.status != "assigned":
            return {"ok": False, "reason": "not_assigned"}
        _tenure_start, bindings = await registry.bindings(phone)
        platforms = {p.id: p for p in await registry.platforms()}

        def item(platform: str, month: str) -> results.Binding:
            known = platforms.get(platform)
            return {"platform": platform, "month": month, "remote": bool(known and known.unbind_supported),
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

    @runs("settings.reminders")
    async def _settings_reminders(self, args: Mapping[str, Any], ctx: EffectContext) -> None:
        async with self.db.session() as session:
            user = await session.get(User, _uid(ctx))
            if user is not None:
                user.reminders_on = bool(args["on"])
                session.add(user)
                await session.commit()
        return None

    @runs("data.forget")
    async def _data_forget(self, args: Mapping[str, Any], ctx: EffectContext) -> results.Forgotten:
        kept = await self.people.forget(_uid(ctx))
        if self.tickets is not None:
            await self.tickets.forget(_uid(ctx))
        return {"ok": True, "kept_requests": kept}

    async def _own_verification(self, args: Mapping[str, Any], ctx: EffectContext) -> tuple[Verification, str] | None:
        verification_id = args.get("verification_id")
        if not isinstance(verification_id, int):
            return None
        async with self.db.session() as session:
            verification = await session.get(Verification, verification_id)
        if verification is None or verification.user_id != _uid(ctx):
            return None
        return verification, self.vault.reveal(verification.phone_enc)

    @runs("realname.stash")
    async def _realname_stash(self, args: Mapping[str, Any], ctx: EffectContext) -> results.NameStashed:
        name = str(args["name"])
        async with self.db.session() as session:
            pending = await session.get(PendingRealName, _uid(ctx))
            pending = pending or PendingRealName(user_id=_uid(ctx), name_enc="")
            pending.name_enc = self.vault.seal(name)
            pending.created_at = ctx.now
            session.add(pending)
            await session.commit()
        return {"ok": True, "masked": mask_name(name)}

    @runs("realname.check")
    async def _realname_check(self, args: Mapping[str, Any], ctx: EffectContext) -> results.HolderChecked:
        own = await self._own_verification(args, ctx)
        if own is None:
            return {"ok": False, "reason": "unavailable"}
        verification, phone = own
        limit = self.settings.realname_attempts
        limits = self.limits
        # The lockout belongs to the number and to the ID number, not to this session (invariant 8).
        by_number = (realname_rule("number", self.settings), limits.subject("phone", verification.phone_hash))
        by_client = (realname_rule("client", self.settings), limits.subject("client", ctx.client or str(_uid(ctx))))
        async with self.db.session() as session:
            pending = await session.get(PendingRealName, _uid(ctx))
            if pending is not None:
                await session.delete(pending)
                await session.commit()
        failures = await limits.counters.peek(f"{by_number[0].name}:{by_number[1]}", ctx.now)
        if await limits.exceeded([by_number, by_client], ctx.now):
            return {"ok": False, "reason": "locked"}
        if pending is None or ctx.now - pending.created_at > timedelta(minutes=30):
            return {"ok": False, "reason": "no_match", "remaining": limit - failures}
        name = self.vault.reveal(pending.name_enc)
        id_number = str(args["id_number"])
        id_hash = self.vault.keyed_hash(id_number, purpose="id")
        by_id = (realname_rule("id", self.settings), limits.subject("id", id_hash))
        if await limits.exceeded([by_id], ctx.now):
            return {"ok": False, "reason": "locked"}
        matched = await self.registry.holder_check(phone, name, id_number)
        check = RealNameCheck(user_id=_uid(ctx), verification_id=verification.id or 0, id_hash=id_hash,
                              id_masked=mask_id_number(id_number), name_masked=mask_name(name), matched=matched,
                              at=ctx.now)
        async with self.db.session() as session:
            session.add(check)
            await session.commit()
        log.info("holder check", extra={"phone": verification.phone_masked, "matched": matched})
        if not matched:
            await limits.add([by_number, by_id, by_client], ctx.now)
            remaining = limit - failures - 1
            return {"ok": False, "reason": "locked" if remaining <= 0 else "no_match", "remaining": remaining}
        info = await self.registry.number_info(phone)
        if info is None or info.tenure_start is None:
            return {"ok": False, "reason": "unavailable"}
        return {"ok": True, "match": True, "masked": verification.phone_masked,
                "tenure_start": info.tenure_start.isoformat(), "check_id": check.id or 0}

    @runs("unbind.options")
    async def _unbind_options(self, args: Mapping[str, Any], ctx: EffectContext) -> results.UnbindOptions:
        own = await self._own_verification(args, ctx)
        if own is None:
            return {"ok": False, "reason": "unavailable"}
        _verification, phone = own
        tenure_start = date.fromisoformat(str(args["tenure_start"]))
        _start, bindings = await self.registry.bindings(phone)
        platforms = {p.id: p for p in await self.registry.platforms()}
        raw = [{"platform": b.platform, "bound_month": b.bound_month, "tenure": b.tenure} for b in bindings]
        unbindable = [pid for pid, p in platforms.items() if p.unbind_supported]
        eligible = set(eligible_platforms(raw, tenure_start, unbindable))

        def item(b: Mapping[str, str]) -> dict[str, str]:
            known = platforms.get(b["platform"])
            return {"platform": b["platform"], "month": b["bound_month"],
                    "name_zh": known.name_zh if known else b["platform"],
                    "name_en": known.name_en if known else b["platform"]}

        previous = [b for b in raw if b["tenure"] == "previous" and before_tenure(b["bound_month"], tenure_start)]
        # What became of earlier requests for the same platforms: a rejected one is never offered again silently,
        # and one still open is not filed twice (issue 12).
        history: dict[str, dict[str, str]] = {}
        for request in reversed(await self.unbind.list_for(_uid(ctx))):  # oldest first: the newest wins
            for platform in request["platforms"]:
                history[platform["platform"]] = {"history": platform["status"],
                                                 "reason": str(platform.get("reason", ""))}

        def eligible_item(b: Mapping[str, str]) -> dict[str, str]:
            return {**item(b), **history.get(b["platform"], {})}

        return {"ok": True,
                "eligible": [eligible_item(b) for b in previous if b["platform"] in eligible],
                "manual": [item(b) for b in previous if b["platform"] not in eligible]}

    @runs("unbind.create")
    async def _unbind_create(self, args: Mapping[str, Any], ctx: EffectContext) -> results.UnbindFiled:
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
        outcome = await self.unbind.create(_uid(ctx), phone, verification.phone_masked, platforms, tenure_start,
                                              ctx.now, ctx.delivery_key)
        if outcome.get("ok") and outcome.get("reference") and outcome.get("due"):
            # Still open the day after its due date: the escalation ladder starts then (issue 12).
            await self.escalation.schedule_overdue(str(outcome["reference"]), str(outcome["due"]))
        return outcome

    @runs("requests.list")
    async def _requests_list(self, args: Mapping[str, Any], ctx: EffectContext) -> results.RequestList:
        # The person's, from any session or channel where they verified this number (invariant 7). Verified
        # while the registry was down, this chat is not linked yet: link it now.
        if isinstance(args.get("verification_id"), int) and await self.people.of(_uid(ctx)) is None:
            await self._link_person(int(args["verification_id"]), ctx)
        items = self.escalation.with_appeals(await self.unbind.list_for(_uid(ctx)))
        carrier = ""
        own = await self._own_verification(args, ctx) if args.get("verification_id") else None
        if own is not None and any(escalation_rules.needs_ladder(i, beijing.today(ctx.now)) for i in items):
            carrier = await self.escalation.carrier_of(own[1])  # rung 2 is this carrier's complaint line
        return {"ok": True, "items": items, "tags": await self.people.tags_for(_uid(ctx)), "carrier": carrier}

    @runs("guide.list")
    async def _guide_list(self, args: Mapping[str, Any], ctx: EffectContext) -> results.GuideList:
        group = self.directory.by_category().get(str(args.get("category")), ())
        return {"ok": True, "platforms": [{"id": p.id, "name_zh": p.name_zh, "name_en": p.name_en} for p in group]}

    @runs("guide.platform")
    async def _guide_platform(self, args: Mapping[str, Any], ctx: EffectContext) -> results.GuidePlatform:
        platform = self.directory.get(str(args.get("id")))
        if platform is None:
            return {"ok": False, "reason": "not_found"}
        return {"ok": True, "platform": {
            "id": platform.id, "name_zh": platform.name_zh, "name_en": platform.name_en,
            "path_zh": platform.change_path_zh, "path_en": platform.change_path_en,
            "notes_zh": platform.notes_zh, "notes_en": platform.notes_en,
            "difficulty": platform.difficulty, "registry_unbind": platform.registry_unbind}}

    @runs("recycle.check")
    async def _recycle_check(self, args: Mapping[str, Any], ctx: EffectContext) -> results.RecycleAnswer:
        settings = self.settings
        # Counted per client, so new sessions or /forget start nothing afresh (invariant 8).
        who = self.limits.subject("client", ctx.client or f"user:{_uid(ctx)}")
        refusal = await self.limits.take([(Rule("recycle.hour", settings.recycle_checks_per_hour, 3600), who),
                                             (Rule("recycle.day", settings.recycle_checks_per_day, daily=True), who)],
                                            ctx.now)
        if refusal is not None:
            return {"ok": False, "reason": "rate_limited", "retry_minutes": max(1, -(-refusal.retry_in // 60))}
        phone = self._phone_arg(args)
        answer = await self.registry.recycle_check(phone)
        return {"ok": True, "masked": mask_phone(phone), "known": answer.known, "reissued": answer.reissued,
                "released_days_ago": answer.released_days_ago,
                "previous_bindings_remain": answer.previous_bindings_remain}

    async def _existing_tags(self, ctx: EffectContext, masked: str) -> dict[str, dict[str, Any]]:
        """The person's statements for this number, newest per kind (one statement per number and kind)."""
        existing: dict[str, dict[str, Any]] = {}
        for statement in await self.people.tags_for(_uid(ctx)):
            if statement["masked"] == masked and statement["kind"] not in existing:
                tag = await self.registry.get_tag(statement["code"])
                existing[statement["kind"]] = {**statement, "since": tag.since if tag else ""}
        return existing

    @runs("tag.status")
    async def _tag_status(self, args: Mapping[str, Any], ctx: EffectContext) -> results.TagStatus:
        own = await self._own_verification(args, ctx)
        if own is None:
            return {"ok": False, "reason": "unavailable"}
        verification, phone = own
        info = await self.registry.number_info(phone)
        return {"ok": True, "labelled": bool(info and info.tagged),
                "existing": await self._existing_tags(ctx, verification.phone_masked)}

    @runs("tag.create")
    async def _tag_create(self, args: Mapping[str, Any], ctx: EffectContext) -> results.TagStatement:
        own = await self._own_verification(args, ctx)
        kind = args.get("kind")
        if own is None or kind not in ("new_holder", "clear_harassment"):
            return {"ok": False, "reason": "unavailable"}
        verification, phone = own
        existing = (await self._existing_tags(ctx, verification.phone_masked)).get(str(kind))
        if existing is not None:
            return {"ok": True, "existing": True, "kind": str(existing["kind"]), "code": str(existing["code"]),
                    "masked": str(existing["masked"]), "date": str(existing.get("date", "")),
                    "since": str(existing.get("since", ""))}
        # A replay of the delivery gets the statement first filed, not a second one with a new code.
        key = hashlib.sha256(b"tag:" + ctx.delivery_key.encode()).hexdigest()[:32] if ctx.delivery_key else None
        tag = await self.registry.create_tag(phone, kind, str(args["since"]), idempotency_key=key)
        log.info("number tagged", extra={"phone": verification.phone_masked, "kind": kind})
        await self.people.record_tag(_uid(ctx), str(kind), tag.code, verification.phone_masked, ctx.now)
        return {"ok": True, "code": tag.code, "kind": tag.kind, "since": tag.since, "masked": verification.phone_masked}

    @runs("plan.load")
    async def _plan_load(self, args: Mapping[str, Any], ctx: EffectContext) -> results.PlanView:
        return {"ok": True, "plan": await self.plans.load(_uid(ctx), ctx.now)}

    @runs("plan.save")
    async def _plan_save(self, args: Mapping[str, Any], ctx: EffectContext) -> results.PlanView:
        verification_id = args.get("verification_id")
        if not isinstance(verification_id, int):
            return {"ok": False, "reason": "unavailable"}
        plan = await self.plans.save(_uid(ctx), verification_id, date.fromisoformat(str(args["date"])), ctx.now)
        return {"ok": True, "plan": plan}

    @runs("plan.mark")
    async def _plan_mark(self, args: Mapping[str, Any], ctx: EffectContext) -> results.PlanMarked:
        item_id = args.get("item_id")
        if not isinstance(item_id, int):
            return {"ok": False, "reason": "unavailable"}
        plan = await self.plans.mark(_uid(ctx), item_id, str(args.get("action")), ctx.now)
        return {"ok": plan is not None, "plan": plan, "item_id": item_id}

    @runs("plan.cancel")
    async def _plan_cancel(self, args: Mapping[str, Any], ctx: EffectContext) -> results.Done:
        return {"ok": await self.plans.cancel(_uid(ctx), ctx.now)}

    @runs("tag.lookup")
    async def _tag_lookup(self, args: Mapping[str, Any], ctx: EffectContext) -> results.TagStatement:
        tag = await self.registry.get_tag(str(args["code"]))
        if tag is None:
            return {"ok": False, "reason": "not_found"}
        return {"ok": True, "code": tag.code, "kind": tag.kind, "since": tag.since, "masked": tag.phone_masked}

    # --- staff handoff (issue 13): the ticket behind the handoff dialog (bot/staff/tickets.py) ---
    @runs("ticket.open")
    async def _ticket_open(self, args: Mapping[str, Any], ctx: EffectContext) -> results.TicketOpened:
        if self.tickets is None:
            return {"ok": False, "reason": "unavailable"}
        return await self.tickets.open(_uid(ctx), str(args.get("reason") or "asked"))

    @runs("ticket.message")
    async def _ticket_message(self, args: Mapping[str, Any], ctx: EffectContext) -> None:
        if self.tickets is not None:
            await self.tickets.user_message(_uid(ctx), str(args.get("text") or ""), ctx.delivery_key)
        return None

    @runs("ticket.close")
    async def _ticket_close(self, args: Mapping[str, Any], ctx: EffectContext) -> None:
        if self.tickets is not None:
            await self.tickets.user_left(_uid(ctx))
        return None


def _uid(ctx: EffectContext) -> int:
    return ctx.user_id


def _code_sent(outcome: SendOutcome) -> results.CodeSent:
    return {"ok": outcome.ok, "reason": outcome.reason, "challenge_id": outcome.challenge_id,
            "masked": outcome.masked, "retry_in": outcome.retry_in}


def _code_checked(outcome: CheckOutcome) -> results.CodeChecked:
    return {"ok": outcome.ok, "reason": outcome.reason, "remaining": outcome.remaining,
            "verification_id": outcome.verification_id, "masked": outcome.masked}

