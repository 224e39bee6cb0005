"""One-time codes: random, HMAC-hashed at rest, expiring, attempt-, resend- and budget-limited.

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

from sqlalchemy import func, update
from sqlmodel import col, select

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
    def __init__(self, db: Database, vault: Vault, gateway: SmsGateway, settings: Settings) -> None:
        self.db = db
        self.vault = vault
        self.gateway = gateway
        self.settings = settings

    def _code_hash(self, salt: str, code: str) -> str:
        return self.vault.keyed_hash(f"{salt}:{code}", purpose="otp")

    async def send(self, user_id: int, phone: str, text_for: _TextFor, now: datetime) -> SendOutcome:
        phone_hash = self.vault.keyed_hash(phone)
        masked = mask_phone(phone)
        # Daily limits follow the Beijing calendar day, the day our users live in.
        beijing = timedelta(hours=8)
        day_start = (now + beijing).replace(hour=0, minute=0, second=0, microsecond=0) - beijing
        async with self.db.session() as session:
            last = (await session.exec(
                select(OtpChallenge.created_at).where(OtpChallenge.user_id == user_id)
                .order_by(col(OtpChallenge.created_at).desc()).limit(1)
            )).first()
            if last is not None:
                wait = self.settings.otp_resend_seconds - int((now - last).total_seconds())
                if wait > 0:
                    return SendOutcome(False, "too_soon", retry_in=wait)
            by_number = await _count(session, OtpChallenge.phone_hash == phone_hash, day_start)
            if by_number >= self.settings.otp_per_number_daily:
                return SendOutcome(False, "number_daily_limit")
            by_user = await _count(session, OtpChallenge.user_id == user_id, day_start)
            if by_user >= self.settings.otp_per_user_daily:
                return SendOutcome(False, "user_daily_limit")
            overall = await _count(session, None, day_start)
            if overall >= self.settings.otp_global_daily:
                log.warning("otp global daily budget reached", extra={"budget": self.settings.otp_global_daily})
                return SendOutcome(False, "budget")
            code = f"{secrets.randbelow(1_000_000):06d}"
            salt = secrets.token_hex(8)
            challenge = OtpChallenge(
                user_id=user_id, phone_hash=phone_hash, phone_enc=self.vault.seal(phone), phone_masked=masked,
                salt=salt, code_hash=self._code_hash(salt, code), created_at=now,
                expires_at=now + timedelta(seconds=self.settings.otp_ttl_seconds),
            )
            session.add(challenge)
            await session.commit()
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

    async def resend(self, user_id: int, challenge_id: int, text_for: _TextFor, now: datetime) -> SendOutcome:
        async with self.db.session() as session:
            challenge = await session.get(OtpChallenge, challenge_id)
        if challenge is None or challenge.user_id != user_id:
            return SendOutcome(False, "failed")
        return await self.send(user_id, self.vault.reveal(challenge.phone_enc), text_for, now)

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


async def _count(session, where, since: datetime) -> int:  # type: ignore[no-untyped-def]
    query = select(func.count()).select_from(OtpChallenge).where(OtpChallenge.created_at >= since)
    if where is not None:
        query = query.where(where)
    return int((await session.exec(query)).one())

