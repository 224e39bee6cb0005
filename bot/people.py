"""The verified number is the person (invariant 7): a number's keyed hash plus its holder's tenure start.

Channel identities (web sessions, Telegram chats, WeChat openids) link to the person when they verify the
number and unlink on /forget; requests, plans, tag statements and tickets belong to the person, so whoever
verifies that number again sees them and a later holder (another tenure start) never does.
Holds no number in the clear and never logs one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, delete, or_, select

from bot.broadcasts import settle_forgotten
from bot.storage import (
    ConsentRecord,
    EffectOutcome,
    InboxItem,
    OtpChallenge,
    OutboxMessage,
    PendingRealName,
    Person,
    Plan,
    PlanItem,
    RealNameCheck,
    TagStatement,
    UnbindRequestRow,
    UsageEvent,
    User,
    Verification,
    utcnow,
)
from integrations.registry import RegistryError

if TYPE_CHECKING:
    from bot.jobs import JobScheduler
    from bot.storage import Database
    from bot.vault import Vault
    from integrations.registry import RegistryClient

log = logging.getLogger(__name__)


async def person_for_user(session: Any, user_id: int) -> int | None:
    """The person this channel identity last verified as, or None (never verified, or forgotten)."""
    user = await session.get(User, user_id)
    return None if user is None else user.person_id


async def recipient(session: Any, person_id: int | None, fallback_user_id: int | None) -> int | None:
    """Where news for a person goes: the linked identity they used last, else the one that asked."""
    if person_id is not None:
        newest = (await session.exec(
            select(User.id).where(User.person_id == person_id, col(User.active).is_(True))
            .order_by(col(User.last_seen_at).desc()).limit(1))).first()
        if newest is not None:
            return int(newest)
    return fallback_user_id


class PeopleService:
    def __init__(self, db: Database, vault: Vault, jobs: JobScheduler, registry: Callable[[], RegistryClient]) -> None:
        # `registry` is asked each time: the client is replaced once the server knows its port (bot/server.py).
        self.db, self.vault, self.jobs, self._registry = db, vault, jobs, registry

    async def link(self, user_id: int, phone: str, now: datetime) -> int | None:
        """Links `user_id` to the person holding `phone` now. The tenure start comes from the registry; when
        it cannot say (down, number unknown or unassigned) the identity stays unlinked and sees nothing."""
        try:
            info = await self._registry().number_info(phone)
        except RegistryError:
            log.warning("person not linked: registry unavailable")
            return None
        if info is None or info.status != "assigned" or info.tenure_start is None:
            return None
        phone_hash = self.vault.keyed_hash(phone)
        tenure = info.tenure_start.isoformat()
        person_id = await self._find_or_create(phone_hash, tenure, now)
        async with self.db.session() as session:
            await session.exec(update(User).where(col(User.id) == user_id).values(person_id=person_id))
            await session.commit()
        return person_id

    async def _find_or_create(self, phone_hash: str, tenure: str, now: datetime) -> int:
        query = select(Person.id).where(Person.phone_hash == phone_hash, Person.tenure_start == tenure)
        for _ in range(2):
            async with self.db.session() as session:
                found = (await session.exec(query)).first()
                if found is not None:
                    await session.exec(update(Person).where(col(Person.id) == found).values(last_seen_at=now))
                    await session.commit()
                    return int(found)
                session.add(Person(phone_hash=phone_hash, tenure_start=tenure, created_at=now, last_seen_at=now))
                try:
                    await session.commit()
                except IntegrityError:
                    # Verified at the same moment from another session: theirs won, read it back.
                    await session.rollback()
                    continue
        async with self.db.session() as session:
            found = (await session.exec(query)).first()
        assert found is not None
        return int(found)

    async def of(self, user_id: int) -> int | None:
        async with self.db.session() as session:
            return await person_for_user(session, user_id)

    async def record_tag(self, user_id: int, kind: str, code: str, masked: str, now: datetime) -> None:
        """Keeps the statement's code with the person, so they see it again from any session or channel."""
        await record_tag(self.db, user_id, kind, code, masked, now)

    async def tags_for(self, user_id: int) -> list[dict[str, str]]:
        return await tags_for(self.db, user_id)

    async def forget(self, user_id: int) -> int:
        """/forget (see forget_user); the count of open requests that run on anonymised."""
        return await forget_user(self.db, self.jobs, user_id)


async def record_tag(db: Database, user_id: int, kind: str, code: str, masked: str, now: datetime) -> None:
    """Keeps the statement's code with the person, so they see it again from any session or channel."""
    async with db.session() as session:
        person_id = await person_for_user(session, user_id)
        if person_id is None:
            return
        session.add(TagStatement(person_id=person_id, kind=kind, code=code, phone_masked=masked, created_at=now))
        await session.commit()


async def tags_for(db: Database, user_id: int) -> list[dict[str, str]]:
    async with db.session() as session:
        person_id = await person_for_user(session, user_id)
        if person_id is None:
            return []
        rows = (await session.exec(select(TagStatement).where(TagStatement.person_id == person_id)
                                   .order_by(col(TagStatement.created_at).desc()))).all()
    return [{"kind": r.kind, "code": r.code, "masked": r.phone_masked,
             "date": r.created_at.date().isoformat()} for r in rows]


FINISHED = ("done", "rejected", "refused")


async def forget_user(db: Database, jobs: JobScheduler, user_id: int) -> int:
    """/forget: deletes what this identity and its person hold (verifications, codes, consents, real-name
    checks, plans, tag statements, finished requests, the transcript and stored answers), unlinks every
    channel identity from the person, and settles the identity's rows of broadcasts still going out (nothing
    more reaches it). Open requests run to completion anonymised; their count is returned.
    Abuse counters stay: they are security records (invariant 8) and hold only keyed hashes."""
    async with db.session() as session:
        person_id = await person_for_user(session, user_id)
        for table in (Verification, OtpChallenge, ConsentRecord, RealNameCheck, PendingRealName, UsageEvent,
                      EffectOutcome):
            await session.exec(delete(table).where(table.user_id == user_id))  # type: ignore[arg-type]
        plan_owner = or_(col(Plan.user_id) == user_id, col(Plan.person_id) == person_id) if person_id \
            else col(Plan.user_id) == user_id
        for plan in (await session.exec(select(Plan).where(plan_owner))).all():
            await jobs.cancel(f"plan:{plan.id}:", session)
            await session.exec(delete(PlanItem).where(col(PlanItem.plan_id) == plan.id))
            await session.delete(plan)
        request_owner = or_(col(UnbindRequestRow.user_id) == user_id, col(UnbindRequestRow.person_id) == person_id) \
            if person_id else col(UnbindRequestRow.user_id) == user_id
        kept = 0
        for row in (await session.exec(select(UnbindRequestRow).where(request_owner))).all():
            if row.status in FINISHED:
                await session.delete(row)
                continue
            # Open requests run to completion, detached from everyone; a queued one keeps its sealed number
            # only until the registry has it.
            kept += 1
            row.user_id, row.person_id, row.phone_masked = None, None, ""
            session.add(row)
        # The transcript: every message we sent, and the answers kept for replayed deliveries. The delivery
        # keys stay, so a replay of an old delivery changes nothing and gets an empty answer.
        await session.exec(delete(OutboxMessage).where(col(OutboxMessage.user_id) == user_id))
        await session.exec(update(InboxItem).where(col(InboxItem.user_id) == user_id).values(response=None))
        # Broadcasts still going out reach this identity no more: its rows are settled as `forgotten`.
        await settle_forgotten(await session.connection(), user_id, utcnow(), sqlite=db.is_sqlite)
        if person_id is not None:
            await session.exec(delete(TagStatement).where(col(TagStatement.person_id) == person_id))
            await session.exec(update(User).where(col(User.person_id) == person_id).values(person_id=None))
            await session.exec(delete(Person).where(col(Person.id) == person_id))
        await session.commit()
    log.info("user data deleted", extra={"user": user_id, "kept_requests": kept})
    return kept
