"""/forget during a broadcast: the user's rows still to go out are settled as unreachable (`forgotten`), counted
like any outcome, and nothing more reaches them, whether their row was waiting or already claimed by an engine."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, cast

import aiohttp
from sqlalchemy import text

from bot.broadcasts import BROADCASTS, SENT, BroadcastEngine, BroadcastService, Delivery, Outcome
from bot.config import Settings
from bot.i18n import Catalog
from bot.people import forget_user
from bot.server import RunningServer
from bot.storage import Database
from bot.vault import Vault
from tests.broadcast_support import TEXTS, Recipient, finished, insert, migrate
from tests.conftest import Chat


async def _rows(db: Database, broadcast_id: int) -> dict[int, tuple[str, str | None]]:
    async with db.engine.connect() as conn:
        rows = (await conn.execute(text(
            "SELECT user_id, status, reason FROM broadcast_recipients WHERE broadcast_id = :bid"),
            {"bid": broadcast_id})).all()
    return {int(uid): (status, reason) for uid, status, reason in rows}


async def test_a_web_chat_user_who_forgets_before_their_turn_gets_nothing(
        server: RunningServer, http: aiohttp.ClientSession) -> None:
    leaving, staying = [await Chat(http, server.url).open() for _ in range(2)]
    for chat in (leaving, staying):
        await chat.say("/start")
    service = server.app[BROADCASTS]
    created = await service.create(texts=TEXTS, segment={}, dry_run=False)
    assert created["recipients"] == 2

    await leaving.say("/forget")
    await leaving.pick("confirm")
    status = await service.status(created["id"])
    assert (status["unreachable"], status["left"]) == (1, 1), "settled at /forget, before the broadcast starts"

    await service.start(created["id"])
    status = await finished(service, created["id"])
    assert (status["sent"], status["failed"], status["unreachable"], status["left"]) == (1, 0, 1, 0)
    assert not [m for m in await leaving.pushed(0) if m["text"].startswith("号清提醒")]
    assert [m for m in await staying.pushed(0) if m["text"].startswith("号清提醒")]
    assert await service.report_csv(created["id"]) == (
        "channel,outcome,reason,count\nweb,sent,,1\nweb,unreachable,forgotten,1\n")
    assert sorted((await _rows(server.runtime.db, created["id"])).values()) == [
        ("sent", None), ("unreachable", "forgotten")]


class Gate:
    """A channel whose sends wait until the test lets them go."""

    channel = "telegram"
    concurrency = 16

    def __init__(self) -> None:
        self.waiting: list[Delivery] = []
        self.go = asyncio.Event()

    async def send(self, delivery: Delivery) -> Outcome:
        self.waiting.append(delivery)
        await self.go.wait()
        return SENT


class NoJobs:
    async def cancel(self, prefix: str, session: Any) -> None:
        return None


async def test_a_claimed_row_settled_by_forget_stays_forgotten_and_is_counted_once(tmp_path: Path) -> None:
    secret = "forget-test-secret"
    path = await migrate(tmp_path)
    insert(path, secret, (Recipient("telegram", str(600_000_000 + i)) for i in range(3)))
    settings = Settings(_env_file=None, data_dir=tmp_path, secret_key=secret,  # type: ignore[call-arg]
                        telegram_bot_token="123456:TEST-forget")
    db = Database(settings.resolved_database_url())
    service = BroadcastService(db, Vault(secret.encode()), Catalog.load(), settings)
    gate = Gate()
    engine = BroadcastEngine(service, {"telegram": gate}, poll_seconds=0.05, round_seconds=0.0)
    runner = asyncio.create_task(engine.run_forever())
    try:
        created = await service.create(texts=TEXTS, segment={}, dry_run=False)
        await service.start(created["id"])
        for _ in range(200):
            if len(gate.waiting) == 3:
                break
            await asyncio.sleep(0.02)
        assert len(gate.waiting) == 3, "every row claimed, its send under way"
        gone = gate.waiting[0].user_id

        await forget_user(db, cast(Any, NoJobs()), gone)
        assert (await _rows(db, created["id"]))[gone] == ("unreachable", "forgotten")
        gate.go.set()
        status = await finished(service, created["id"])
        assert (status["sent"], status["unreachable"], status["left"]) == (2, 1, 0), status
        assert (await _rows(db, created["id"]))[gone] == ("unreachable", "forgotten"), "the engine's settle skips it"
        assert await service.report_csv(created["id"]) == (
            "channel,outcome,reason,count\ntelegram,sent,,2\ntelegram,unreachable,forgotten,1\n")
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        await db.close()
