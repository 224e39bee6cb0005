"""Broadcasts on PostgreSQL with several workers: each runs its own engine against the same database, claims with
`FOR UPDATE SKIP LOCKED`, and a worker that dies mid-broadcast has its claims taken over once the lease runs out.
Every recipient is sent to once, except at most what the dead worker held."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

from bot.broadcasts import SENT, BroadcastEngine, BroadcastService, Delivery, Outcome
from bot.config import Settings
from bot.i18n import Catalog
from bot.storage import Database
from bot.vault import Vault
from tests.broadcast_support import Recipient, insert_into
from tests.test_postgres import pg_url  # noqa: F401  (fixture)

SECRET = "pg-broadcast-secret"
USERS = 1500
TEXTS = {"zh_CN": "号清提醒：周六系统维护。", "en": "Haoqing: maintenance on Saturday."}


class Recorder:
    """A channel that accepts, slowly enough that both workers take part, and remembers who got what."""

    channel = "telegram"
    concurrency = 32

    def __init__(self, log: Counter[str], *, stall: asyncio.Event | None = None) -> None:
        self.log = log
        self.stall = stall

    async def send(self, delivery: Delivery) -> Outcome:
        if self.stall is not None and self.stall.is_set():
            await asyncio.Event().wait()  # a worker that stopped answering: its claims are never settled
        await asyncio.sleep(0.002)
        self.log[delivery.address] += 1
        if delivery.address.endswith("13"):
            return Outcome("failed", "blocked", inactive=True)
        return SENT


async def test_two_workers_share_a_broadcast_and_one_dies(tmp_path: Path, pg_url: str) -> None:  # noqa: F811
    settings = Settings(_env_file=None, data_dir=tmp_path, secret_key=SECRET,  # type: ignore[call-arg]
                        database_url=pg_url, telegram_bot_token="123456:PG-broadcast")
    dbs = [Database(pg_url) for _ in range(2)]
    await dbs[0].create_all()
    await insert_into(dbs[0], SECRET, [Recipient("telegram", str(710_000_000 + i), reminders_on=i % 100 != 7)
                                       for i in range(USERS)])
    services = [BroadcastService(db, Vault(SECRET.encode()), Catalog.load(), settings) for db in dbs]
    planned = await services[0].create(texts=TEXTS, segment={"channel": "telegram"}, dry_run=True)
    assert planned["recipients"] == USERS - USERS // 100 and planned["opted_out"] == USERS // 100
    created = await services[0].create(texts=TEXTS, segment={"channel": "telegram"}, dry_run=False)
    got: Counter[str] = Counter()
    stall = asyncio.Event()
    engines = [BroadcastEngine(services[0], {"telegram": Recorder(got, stall=stall)}, lease_seconds=1.0,
                               poll_seconds=0.1, settle_seconds=0.05),
               BroadcastEngine(services[1], {"telegram": Recorder(got)}, lease_seconds=1.0, poll_seconds=0.1,
                               settle_seconds=0.05)]
    await services[1].start(created["id"])
    tasks = [asyncio.create_task(engine.run_forever()) for engine in engines]
    try:
        while sum(got.values()) < USERS // 3:
            await asyncio.sleep(0.02)
        stall.set()  # worker 0 hangs with its claims; worker 1 carries on and, after the lease, takes them over
        held = engines[0].inflight["telegram"]
        for _ in range(600):
            if (await services[1].status(created["id"]))["status"] == "done":
                break
            await asyncio.sleep(0.1)
        status = await services[1].status(created["id"])
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for db in dbs:
            await db.close()
    assert status["status"] == "done" and status["left"] == 0, status
    blocked = sum(1 for address in got if address.endswith("13"))
    assert status["sent"] == planned["recipients"] - blocked and status["failed"] == blocked
    assert len(got) == planned["recipients"], "every recipient, and no opted-out user"
    doubled = sum(n - 1 for n in got.values())
    assert doubled <= held, "only what the hung worker held may go twice"
