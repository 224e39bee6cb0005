"""One-time codes: random, HMAC-hashed at rest, expiring, attempt-limited; sending is limited per number,
per client and for the whole bot by bot/abuse.py, so /forget or a new session resets nothing.

Never logs or stores a code or a phone number in the clear; answers the same whether or not the
registry knows the number.
"""

from __future__ import annotations

import hmac
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select

from bot.abuse import DbCounters, Limits, Rule
from bot.config import Settings
from bot.storage import Database, OtpChallenge, Verification
from bot.vault import Vault
from domain.masking import mask_phone
from integrations.sms.base import SmsError, SmsGateway

log = logging.getLogger(__name__)

# Renders the SMS text in the user's language: (code, ttl_minutes) -> text.
_TextFor = Callable[[str, int], str]


@dataclass(frozen=True)
class SendOutcome:
    ok: bool
    reason: str = ""
    challenge_id: int = 0
    masked: str = ""
    retry_in: int = 0


@dataclass(frozen=True)
class CheckOutcome:
    ok: bool
    reason: str = ""  # wrong | locked | expired | invalid
    remaining: int = 0
    verification_id: int = 0
    masked: str = ""


class OtpService:
    def __init__(self, db: Database, vault: Vault, gateway: SmsGateway, settings: Settings,
                 limits: Limits | None = None) -> None:
        self.db = db
        self.vault = vault
        self.gateway = gateway
        self.settings = settings
        self.limits = limits or Limits(DbCounters(db), vault)

    def _code_hash(self, salt: str, code: str) -> str:
        return self.vault.keyed_hash(f"{salt}:{code}", purpose="otp")

    def rules(self) -> dict[str, Rule]:
        s = self.settings
        return {
            # Resend spacing is the number's, not the session's: three sessions wait like one.
            "too_soon": Rule("otp.gap", 1, s.otp_resend_seconds),
            "number_daily_limit": Rule("otp.number", s.otp_per_number_daily, daily=True),
            "user_daily_limit": Rule("otp.client", s.otp_per_user_daily, daily=True),
            "budget_minute": Rule("otp.all.minute", s.otp_global_per_minute, 60),
            "budget": Rule("otp.all", s.otp_global_daily, daily=True),
            # Never refuses: counts a client's codes in the last hour for the proof-of-work threshold.
            "pow": Rule("otp.client.hour", 1 << 30, 3600),
        }

    async def sent_recently(self, client: str, now: datetime) -> int:
        """Codes sent to `client` within the last hour (the web chat asks for a proof of work past a few)."""
        return await self.limits.counters.peek(f"otp.client.hour:{self.limits.subject('client', client)}", now)

    async def _replayed(self, delivery_key: str) -> SendOutcome | None:
        if not delivery_key:
            return None
        async with self.db.session() as session:
            first = (await session.exec(select(OtpChallenge).where(OtpChallenge.delivery_key == delivery_key))).first()
        if first is None:
            return None
        if first.void:
            return SendOutcome(False, "failed")
        assert first.id is not None
        return SendOutcome(True, challenge_id=first.id, masked=first.phone_masked)

    async def send(self, user_id: int, phone: str, text_for: _TextFor, now: datetime, *, client: str = "",
                   delivery_key: str = "") -> SendOutcome:
        """Sends a code unless a limit says no. A `delivery_key` seen before gets its first outcome back and
        no second SMS (a replayed delivery after a crash, or a channel's retry)."""
        replayed = await self._replayed(delivery_key)
        if replayed is not None:
            return replayed
        phone_hash = self.vault.keyed_hash(phone)
        masked = mask_phone(phone)
        rules = self.rules()
        number = self.limits.subject("phone", phone_hash)
        who = self.limits.subject("client", client or f"user:{user_id}")
        # A client past its own limit touches nothing else: it cannot spend a victim number's wait or daily
        # codes once its own are gone. Then the number's, the client's and the bot's windows, in that order.
        refusal = await self.limits.exceeded([(rules["user_daily_limit"], who)], now)
        if refusal is None:
            refusal = await self.limits.take([
                (rules["too_soon"], number), (rules["number_daily_limit"], number), (rules["user_daily_limit"], who),
                (rules["budget_minute"], "all"), (rules["budget"], "all"), (rules["pow"], who)], now)
        if refusal is not None:
            reason = next(name for name, rule in rules.items() if rule.name == refusal.rule)
            if reason.startswith("budget"):
                log.warning("otp global budget reached", extra={"rule": refusal.rule})
                return SendOutcome(False, "budget")
            return SendOutcome(False, reason, retry_in=refusal.retry_in if reason == "too_soon" else 0)
        code = f"{secrets.randbelow(1_000_000):06d}"
        salt = secrets.token_hex(8)
        challenge = OtpChallenge(
            user_id=user_id, phone_hash=phone_hash, phone_enc=self.vault.seal(phone), phone_masked=masked,
            salt=salt, code_hash=self._code_hash(salt, code), created_at=now,
            expires_at=now + timedelta(seconds=self.settings.otp_ttl_seconds), delivery_key=delivery_key or None,
        )
        async with self.db.session() as session:
            session.add(challenge)
            try:
                await session.commit()
            except IntegrityError:
                # The same delivery, replayed concurrently: the first one sends.
                await session.rollback()
                replayed = await self._replayed(delivery_key)
                return replayed or SendOutcome(False, "failed")
            challenge_id = challenge.id
        assert challenge_id is not None
        ttl_minutes = max(1, self.settings.otp_ttl_seconds // 60)
        try:
            await self.gateway.send_code(phone, code, ttl_minutes, text_for(code, ttl_minutes))
        except SmsError as exc:
            log.warning("sms send failed", extra={"gateway": self.gateway.name, "code": exc.code})
            async with self.db.session() as session:
                await session.exec(update(OtpChallenge).where(col(OtpChallenge.id) == challenge_id)
                                   .values(void=True))
                await session.commit()
            return SendOutcome(False, "failed")
        log.info("otp sent", extra={"phone": masked, "challenge": challenge_id})
        return SendOutcome(True, challenge_id=challenge_id, masked=masked)

    async def resend(self, user_id: int, challenge_id: int, text_for: _TextFor, now: datetime, *, client: str = "",
                     delivery_key: str = "") -> SendOutcome:
        replayed = await self._replayed(delivery_key)
        if replayed is not None:
            return replayed
        async with self.db.session() as session:
            challenge = await session.get(OtpChallenge, challenge_id)
        if challenge is None or challenge.user_id != user_id:
            return SendOutcome(False, "failed")
        return await self.send(user_id, self.vault.reveal(challenge.phone_enc), text_for, now, client=client,
                               delivery_key=delivery_key)

    async def check(self, user_id: int, challenge_id: int, code: str, now: datetime) -> CheckOutcome:
        limit = self.settings.otp_max_attempts
        async with self.db.session() as session:
            # Count the attempt first and atomically, so parallel guesses can't exceed the limit.
            counted = await session.exec(
                update(OtpChallenge)
                .where(col(OtpChallenge.id) == challenge_id, col(OtpChallenge.user_id) == user_id,
                       col(OtpChallenge.consumed_at).is_(None), col(OtpChallenge.void).is_(False),
                       col(OtpChallenge.attempts) < limit)
                .values(attempts=OtpChallenge.attempts + 1)
            )
            await session.commit()
            challenge = await session.get(OtpChallenge, challenge_id)
            if challenge is None or challenge.user_id != user_id:
                return CheckOutcome(False, "invalid")
            if counted.rowcount != 1:
                return CheckOutcome(False, "locked" if challenge.attempts >= limit else "invalid")
            if now >= challenge.expires_at:
                return CheckOutcome(False, "expired")
            if not hmac.compare_digest(challenge.code_hash, self._code_hash(challenge.salt, code)):
                remaining = limit - challenge.attempts
                return CheckOutcome(False, "locked" if remaining <= 0 else "wrong", remaining=max(0, remaining))
            consumed = await session.exec(
                update(OtpChallenge)
                .where(col(OtpChallenge.id) == challenge_id, col(OtpChallenge.consumed_at).is_(None))
                .values(consumed_at=now)
            )
            if consumed.rowcount != 1:
                await session.rollback()
                return CheckOutcome(False, "invalid")
            verification = Verification(user_id=user_id, phone_hash=challenge.phone_hash,
                                        phone_enc=challenge.phone_enc, phone_masked=challenge.phone_masked,
                                        method="sms", verified_at=now)
            session.add(verification)
            await session.commit()
            assert verification.id is not None
            log.info("phone verified", extra={"phone": challenge.phone_masked, "method": "sms"})
            return CheckOutcome(True, verification_id=verification.id, masked=challenge.phone_masked)

    async def verify_contact(self, user_id: int, phone: str, now: datetime) -> CheckOutcome:
        masked = mask_phone(phone)
        verification = Verification(user_id=user_id, phone_hash=self.vault.keyed_hash(phone),
                                    phone_enc=self.vault.seal(phone), phone_masked=masked,
                                    method="contact", verified_at=now)
        async with self.db.session() as session:
            session.add(verification)
            await session.commit()
        assert verification.id is not None
        log.info("phone verified", extra={"phone": masked, "method": "contact"})
        return CheckOutcome(True, verification_id=verification.id, masked=masked)

