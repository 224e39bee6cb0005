"""Durable jobs: due jobs run once, leases are taken over, and two schedulers never run one job twice."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlmodel import select

from bot.jobs import JobOutcome, JobScheduler
from bot.storage import Database, Job

T0 = datetime(2026, 12, 1, 2, 0, tzinfo=UTC)


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
async def db(tmp_path: Path):
    database = Database(f"sqlite+aiosqlite:///{tmp_path / 'jobs.sqlite3'}")
    await database.create_all()
    yield database
    await database.close()


async def test_due_jobs_run_once_and_not_before_their_time(db: Database) -> None:
    clock = Clock(T0)
    scheduler = JobScheduler(db, clock=clock)
    runs: list[str] = []

    async def handler(job: Job, now: datetime) -> JobOutcome:
        runs.append(job.key)
        return JobOutcome()

    scheduler.register("test", handler)
    assert await scheduler.schedule("test", "a", {}, T0 + timedelta(hours=1))
    assert not await scheduler.schedule("test", "a", {}, T0)  # same key: no second job
    assert await scheduler.run_due() == 0
    clock.now = T0 + timedelta(hours=1)
    assert await scheduler.run_due() == 1
    assert await scheduler.run_due() == 0
    assert runs == ["a"]


async def test_a_dead_workers_claim_is_taken_over_after_the_lease(db: Database) -> None:
    clock = Clock(T0)
    dead = JobScheduler(db, clock=clock, lease_seconds=30, worker_id="dead")
    alive = JobScheduler(db, clock=clock, lease_seconds=30, worker_id="alive")
    runs: list[str] = []

    async def handler(job: Job, now: datetime) -> JobOutcome:
        runs.append(now.isoformat())
        return JobOutcome()

    alive.register("test", handler)
    await alive.schedule("test", "k", {}, T0)
    assert [j.key for j in await dead.claim()] == ["k"]  # claimed, then the process "dies"
    assert await alive.run_due() == 0  # leased
    clock.now = T0 + timedelta(seconds=31)
    assert await alive.run_due() == 1
    assert len(runs) == 1
    # The dead worker cannot complete it afterwards either.
    async with db.session() as session:
        job = (await session.exec(select(Job))).one()
    assert job.status == "done" and job.locked_by == "alive"


async def test_failures_back_off_and_recurring_jobs_reuse_their_row(db: Database) -> None:
    clock = Clock(T0)
    scheduler = JobScheduler(db, clock=clock)
    calls = 0

    async def flaky(job: Job, now: datetime) -> JobOutcome:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("registry down for 13800138000")
        return JobOutcome(reschedule_at=now + timedelta(minutes=5))

    scheduler.register("sweep", flaky)
    await scheduler.schedule("sweep", "sweep", {}, T0)
    assert await scheduler.run_due() == 0
    async with db.session() as session:
        job = (await session.exec(select(Job))).one()
    assert job.status == "pending" and job.last_error and "13800138000" not in job.last_error
    clock.now = job.due_at
    assert await scheduler.run_due() == 1
    async with db.session() as session:
        job = (await session.exec(select(Job))).one()
    assert job.status == "pending" and job.due_at == T0 + timedelta(seconds=10) + timedelta(minutes=5)


async def test_two_schedulers_on_one_sqlite_file_never_run_a_job_twice(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'shared.sqlite3'}"
    first, second = Database(url), Database(url)
    await first.create_all()
    runs: list[str] = []

    async def handler(job: Job, now: datetime) -> JobOutcome:
        runs.append(job.key)
        await asyncio.sleep(0)
        return JobOutcome()

    schedulers = [JobScheduler(first, clock=Clock(T0), worker_id="one"),
                  JobScheduler(second, clock=Clock(T0), worker_id="two")]
    for scheduler in schedulers:
        scheduler.register("test", handler)
    for i in range(60):
        await schedulers[0].schedule("test", f"job-{i}", {}, T0)
    results = await asyncio.gather(*(s.run_due(limit=7) for s in schedulers for _ in range(6)))
    assert sum(results) == 60
    assert sorted(runs) == sorted(f"job-{i}" for i in range(60))
    await first.close()
    await second.close()


async def test_a_cancellation_lost_in_a_round_still_stops_the_scheduler(db: Database) -> None:
    """Python 3.11's asyncio.wait_for can return its result instead of raising when a cancellation lands just as
    its awaitable finishes. A round that loses the cancellation that way must not keep the scheduler running, or
    the closing event loop (asyncio.run, pytest's) waits for it for good."""
    scheduler = JobScheduler(db)
    entered = asyncio.Event()
    rounds = 0
    halt = False

    class Halt(BaseException):
        """Ends the loop if the fix regresses, so the test fails instead of hanging the event loop's close."""

    async def run_due() -> int:
        nonlocal rounds
        if halt:
            raise Halt
        rounds += 1
        entered.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            return 0  # what wait_for does in that race: the result, not the cancellation
        return 0

    scheduler.run_due = run_due  # type: ignore[method-assign]
    task = asyncio.create_task(scheduler.run_forever(poll_seconds=0))
    await entered.wait()
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=30)
    if not done:
        halt = True
        task.cancel()  # lost again, and the next round halts
        with contextlib.suppress(Halt, asyncio.CancelledError):
            await task
    assert done and task.cancelled(), "the scheduler stopped at its next round"
    assert rounds == 1
