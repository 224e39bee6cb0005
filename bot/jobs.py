"""Durable jobs: due times live in the database; a scheduler claims due jobs with a lease and runs them.

A restart or `kill -9` loses none: a job claimed by a dead process is taken over when its lease ends.
A job's effects (pushed messages, follow-ups) commit in the same transaction as its completion, guarded by
the claim, so a job that was taken over cannot complete twice. On PostgreSQL several schedulers share the
work (`FOR UPDATE SKIP LOCKED`); on SQLite one scheduler runs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select, update
from sqlmodel.ext.asyncio.session import AsyncSession

from bot.loops import stop_requested
from bot.storage import Database, Job, sqlite_time, utcnow
from domain.masking import scrub

log = logging.getLogger(__name__)


@dataclass
class JobOutcome:
    """What a job leaves behind, committed atomically with its completion."""

    # Called with the completing session: stage pushed messages and other writes there.
    stage: Callable[[AsyncSession], Awaitable[None]] | None = None
    # For recurring jobs: run again at this time (the same row is reused).
    reschedule_at: datetime | None = None
    follow_ups: list[tuple[str, str, Mapping[str, Any], datetime]] = field(default_factory=list)


Handler = Callable[[Job, datetime], Awaitable[JobOutcome | None]]

# SQLite runs the whole statement under its single writer lock, so two claimers cannot both win a row.
_CLAIM_SQLITE = (
    "UPDATE jobs SET status = 'running', lease_until = :lease, locked_by = :me, attempts = attempts + 1 "
    "WHERE id IN (SELECT id FROM jobs WHERE (status = 'pending' AND due_at <= :now) "
    "OR (status = 'running' AND lease_until < :now) ORDER BY due_at LIMIT :limit) RETURNING id"
)
# PostgreSQL: rows another worker is claiming are skipped, not waited for.
_CLAIM_POSTGRES = (
    "UPDATE jobs SET status = 'running', lease_until = :lease, locked_by = :me, attempts = attempts + 1 "
    "WHERE id IN (SELECT id FROM jobs WHERE (status = 'pending' AND due_at <= :now) "
    "OR (status = 'running' AND lease_until < :now) ORDER BY due_at LIMIT :limit FOR UPDATE SKIP LOCKED) "
    "RETURNING id"
)


class JobScheduler:
    def __init__(self, db: Database, *, clock: Callable[[], datetime] = utcnow, lease_seconds: float = 60.0,
                 max_attempts: int = 8, worker_id: str | None = None) -> None:
        self.db = db
        self.clock = clock
        self.lease = timedelta(seconds=lease_seconds)
        self.max_attempts = max_attempts
        self.worker_id = worker_id or f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.handlers: dict[str, Handler] = {}

    def register(self, kind: str, handler: Handler) -> None:
        self.handlers[kind] = handler

    async def schedule(self, kind: str, key: str, payload: Mapping[str, Any], due_at: datetime,
                       session: AsyncSession | None = None) -> bool:
        """Adds a job unless one with `key` exists; True when added. Pass `session` to join its transaction."""
        job = Job(kind=kind, key=key, payload=json.dumps(payload), due_at=due_at)
        if session is not None:
            existing = (await session.exec(select(Job.id).where(Job.key == key))).first()
            if existing is not None:
                return False
            session.add(job)
            return True
        async with self.db.session() as own:
            own.add(job)
            try:
                await own.commit()
            except IntegrityError:
                await own.rollback()
                return False
        return True

    async def reschedule(self, key: str, due_at: datetime, session: AsyncSession) -> None:
        await session.exec(update(Job).where(col(Job.key) == key, col(Job.status) != "running")
                           .values(status="pending", due_at=due_at, attempts=0, lease_until=None, locked_by=None))

    async def cancel(self, key_prefix: str, session: AsyncSession) -> None:
        await session.exec(update(Job).where(col(Job.key).startswith(key_prefix), col(Job.status) == "pending")
                           .values(status="cancelled", done_at=self.clock()))

    async def claim(self, limit: int = 20) -> list[Job]:
        now = self.clock()
        # Constant SQL (no user input): the two dialects differ only in the row-locking clause.
        statement = text(_CLAIM_SQLITE if self.db.is_sqlite else _CLAIM_POSTGRES)
        params = {"now": _db_time(now, self.db), "lease": _db_time(now + self.lease, self.db), "me": self.worker_id,
                  "limit": limit}
        async with self.db.session() as session:
            connection = await session.connection()
            ids = [row[0] for row in (await connection.execute(statement, params)).all()]
            await session.commit()
            if not ids:
                return []
            return list((await session.exec(select(Job).where(col(Job.id).in_(ids)))).all())

    async def run_due(self, limit: int = 20) -> int:
        """Claims and runs what is due now; returns how many jobs completed."""
        completed = 0
        for job in await self.claim(limit):
            if await self._run(job):
                completed += 1
        return completed

    async def _run(self, job: Job) -> bool:
        handler = self.handlers.get(job.kind)
        now = self.clock()
        try:
            if handler is None:
                raise LookupError(f"no handler for job kind {job.kind}")
            outcome = await handler(job, now) or JobOutcome()
        except Exception as exc:
            log.exception("job failed", extra={"job": job.id, "kind": job.kind, "attempt": job.attempts})
            await self._fail(job, exc, now)
            return False
        async with self.db.session() as session:
            values: dict[str, Any] = {"status": "done", "done_at": now, "lease_until": None}
            if outcome.reschedule_at is not None:
                values = {"status": "pending", "due_at": outcome.reschedule_at, "attempts": 0, "lease_until": None,
                          "locked_by": None}
            finished = await session.exec(
                update(Job).where(col(Job.id) == job.id, col(Job.locked_by) == self.worker_id,
                                  col(Job.status) == "running").values(**values)
            )
            if finished.rowcount != 1:
                # Our lease ran out and another worker took the job: its run counts, ours leaves no trace.
                await session.rollback()
                log.warning("job lease lost", extra={"job": job.id, "kind": job.kind})
                return False
            if outcome.stage is not None:
                await outcome.stage(session)
            for kind, key, payload, due_at in outcome.follow_ups:
                await self.schedule(kind, key, payload, due_at, session=session)
            await session.commit()
        return True

    async def hand_back(self) -> int:
        """On shutdown: returns the jobs this scheduler claimed and did not finish to the queue, so another
        worker runs them now instead of after the lease. The claim's attempt is not counted against them."""
        async with self.db.session() as session:
            result = await session.exec(
                update(Job).where(col(Job.locked_by) == self.worker_id, col(Job.status) == "running")
                .values(status="pending", lease_until=None, locked_by=None, attempts=Job.attempts - 1)
            )
            await session.commit()
        if result.rowcount:
            log.info("jobs handed back", extra={"count": result.rowcount})
        return int(result.rowcount)

    async def _fail(self, job: Job, exc: Exception, now: datetime) -> None:
        # Back off exponentially; give up after max_attempts so a poison job cannot spin forever.
        final = job.attempts >= self.max_attempts
        retry_at = now + timedelta(seconds=min(3600, 5 * 2 ** job.attempts))
        async with self.db.session() as session:
            await session.exec(
                update(Job).where(col(Job.id) == job.id, col(Job.locked_by) == self.worker_id)
                .values(status="failed" if final else "pending", due_at=retry_at, lease_until=None, locked_by=None,
                        last_error=scrub(f"{type(exc).__name__}: {exc}")[:500])
            )
            await session.commit()

    async def run_forever(self, poll_seconds: float = 1.0) -> None:
        while True:
            stop_requested()
            try:
                while await self.run_due() > 0:
                    pass
            except Exception:
                log.exception("scheduler round failed")
            await asyncio.sleep(poll_seconds)


def _db_time(moment: datetime, db: Database) -> Any:
    return sqlite_time(moment) if db.is_sqlite else moment
