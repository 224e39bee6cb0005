"""Staff accounts and console sessions: argon2 password hashes, session tokens stored only as keyed hashes,
CSRF tokens bound to the session, and a login rate limit kept in the database so every worker agrees.

It must never store or log a password or a session token, and compares every secret in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import delete, func
from sqlmodel import col, select

from bot.storage import Database, StaffAccount, StaffLoginFailure, StaffSession, utcnow

log = logging.getLogger(__name__)

ROLES = ("staff", "admin")
FAILURE_WINDOW = timedelta(minutes=15)
# One address may mistype for several colleagues behind the same office NAT, but not without end.
PER_CLIENT_FACTOR = 4
# Guesses at one name spread over many addresses: a brake well above what lockout-by-stranger would need.
PER_NAME_FACTOR = 10
_HASHER = PasswordHasher()
# Verified against when the name is unknown, so a wrong name costs as long as a wrong password. A fixed hash of a
# random string nobody kept (hashing one at import cost every process 0.4 s of CPU); made afresh only when the
# hasher's parameters change, so the check still costs what a real one does.
_DUMMY_HASH = "$argon2id$v=19$m=65536,t=3,p=4$5NhLHDPgf2nbPTZyHOZPag$P1q5VC7thdxbEpHDAMR2ygKttq4n9324iYizkg3QDJ4"
if _HASHER.check_needs_rehash(_DUMMY_HASH):
    _DUMMY_HASH = _HASHER.hash(secrets.token_urlsafe(16))


@dataclass(frozen=True)
class StaffMember:
    id: int
    name: str
    role: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


def hash_password(password: str) -> str:
    return _HASHER.hash(password)


def valid_name(name: str) -> bool:
    return 1 <= len(name) <= 64 and name.isprintable() and name.strip() == name


class StaffAuth:
    def __init__(self, db: Database, session_key: bytes, *, session_hours: float = 12.0,
                 max_failures: int = 5) -> None:
        self.db = db
        self._key = hmac.new(session_key, b"staff-console", hashlib.sha256).digest()
        self.session_ttl = timedelta(hours=session_hours)
        self.max_failures = max_failures

    # --- tokens -------------------------------------------------------------------------------------------
    def _token_hash(self, token: str) -> str:
        return hmac.new(self._key, b"session:" + token.encode(), hashlib.sha256).hexdigest()

    def csrf_for(self, token: str) -> str:
        """The CSRF token of a session: derived from it, so it needs no storage and dies with the session."""
        return hmac.new(self._key, b"csrf:" + token.encode(), hashlib.sha256).hexdigest()

    def csrf_ok(self, token: str, presented: str) -> bool:
        return bool(presented) and hmac.compare_digest(self.csrf_for(token), presented)

    def _name_key(self, name: str) -> str:
        return hmac.new(self._key, b"name:" + name.casefold().encode(), hashlib.sha256).hexdigest()

    # --- login ----------------------------------------------------------------------------------------------
    async def throttled(self, name: str, client: str, now: datetime) -> bool:
        """True when this name from this address, this address, or (a distributed guess) this name from anywhere
        failed too often lately. The name alone has a much higher cap, so a stranger cannot lock staff out."""
        since = now - FAILURE_WINDOW
        recent = col(StaffLoginFailure.at) >= since
        name_key, client = self._name_key(name), client[:64]
        async with self.db.session() as session:
            async def count(*where: Any) -> int:
                query = select(func.count()).select_from(StaffLoginFailure).where(recent, *where)
                return int((await session.exec(query)).one())

            pair = await count(StaffLoginFailure.name_key == name_key, StaffLoginFailure.client == client)
            by_client = await count(StaffLoginFailure.client == client)
            by_name = await count(StaffLoginFailure.name_key == name_key)
        limit = self.max_failures
        return pair >= limit or by_client >= limit * PER_CLIENT_FACTOR or by_name >= limit * PER_NAME_FACTOR

    async def login(self, name: str, password: str, client: str, now: datetime) -> tuple[StaffMember, str] | None:
        """A new session token for the right password of an active account; None (and a counted failure) else."""
        async with self.db.session() as session:
            account = (await session.exec(select(StaffAccount).where(StaffAccount.name == name))).first()
            stored = account.password_hash if account is not None and account.active else _DUMMY_HASH
            try:
                ok = _HASHER.verify(stored, password) and account is not None and account.active
            except (VerifyMismatchError, VerificationError, InvalidHashError):
                ok = False
            if not ok or account is None or account.id is None:
                session.add(StaffLoginFailure(name_key=self._name_key(name), client=client[:64], at=now))
                await session.commit()
                return None
            if _HASHER.check_needs_rehash(account.password_hash):
                account.password_hash = _HASHER.hash(password)
            account.last_login_at = now
            session.add(account)
            token = secrets.token_urlsafe(32)
            session.add(StaffSession(token_hash=self._token_hash(token), staff_id=account.id, created_at=now,
                                     expires_at=now + self.session_ttl))
            # A successful login clears this name's failures from this address; the address keeps its count.
            await session.exec(delete(StaffLoginFailure).where(
                col(StaffLoginFailure.name_key) == self._name_key(name), col(StaffLoginFailure.client) == client[:64]))
            await session.commit()
            return StaffMember(account.id, account.name, account.role), token

    async def member_for(self, token: str, now: datetime) -> StaffMember | None:
        if not token or len(token) > 128:
            return None
        async with self.db.session() as session:
            row = (await session.exec(
                select(StaffSession, StaffAccount)
                .join(StaffAccount, col(StaffAccount.id) == col(StaffSession.staff_id))
                .where(StaffSession.token_hash == self._token_hash(token)))).first()
        if row is None:
            return None
        staff_session, account = row
        expires = staff_session.expires_at
        if expires.tzinfo is None:
            expires = expires.replace(tzinfo=UTC)
        if expires <= now or not account.active or account.id is None:
            return None
        return StaffMember(account.id, account.name, account.role)

    async def logout(self, token: str) -> None:
        async with self.db.session() as session:
            await session.exec(delete(StaffSession).where(
                col(StaffSession.token_hash) == self._token_hash(token)))
            await session.commit()

    # --- accounts (the CLI) ---------------------------------------------------------------------------------
    async def add(self, name: str, password: str, role: str) -> StaffMember:
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}")
        async with self.db.session() as session:
            account = StaffAccount(name=name, password_hash=hash_password(password), role=role, created_at=utcnow())
            session.add(account)
            await session.commit()
            await session.refresh(account)
        assert account.id is not None
        return StaffMember(account.id, account.name, account.role)

    async def accounts(self) -> list[StaffAccount]:
        async with self.db.session() as session:
            return list((await session.exec(select(StaffAccount).order_by(col(StaffAccount.name)))).all())

    async def set_active(self, name: str, active: bool) -> bool:
        async with self.db.session() as session:
            account = (await session.exec(select(StaffAccount).where(StaffAccount.name == name))).first()
            if account is None:
                return False
            account.active = active
            session.add(account)
            if not active and account.id is not None:
                # A disabled account's open consoles stop working at once.
                await session.exec(delete(StaffSession).where(
                    col(StaffSession.staff_id) == account.id))
            await session.commit()
        return True

    async def link_telegram(self, name: str, telegram_user_id: int | None) -> bool:
        async with self.db.session() as session:
            account = (await session.exec(select(StaffAccount).where(StaffAccount.name == name))).first()
            if account is None:
                return False
            account.telegram_user_id = telegram_user_id
            session.add(account)
            await session.commit()
        return True

    async def set_password(self, name: str, password: str) -> bool:
        async with self.db.session() as session:
            account = (await session.exec(select(StaffAccount).where(StaffAccount.name == name))).first()
            if account is None:
                return False
            account.password_hash = hash_password(password)
            session.add(account)
            if account.id is not None:
                await session.exec(delete(StaffSession).where(
                    col(StaffSession.staff_id) == account.id))
            await session.commit()
        return True
