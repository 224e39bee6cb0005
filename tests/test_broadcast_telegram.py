"""A broadcast to 10,000 Telegram users through the strict fake Bot API, killed with SIGKILL halfway and resumed.

The bot runs as a real process (`python -m bot run`) against the fake Bot API in this process, which refuses
(429) anything over its flood limits on its own, and answers injected 429s and 403s. The broadcast is created
and started through the product's own service on the same database, as the CLI does. Counts are taken on the far
side: the fake's log of accepted sendMessage calls per chat.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections import Counter
from pathlib import Path

import pytest

from bot.broadcasts import BroadcastService
from bot.config import Settings
from bot.i18n import Catalog
from bot.storage import Database
from bot.vault import Vault
from tests.broadcast_support import Recipient, insert, migrate
from tests.fakes.fake_bot_api import FakeBotApi, FloodRules, flood_violations
from tests.processes import free_port, start_bot

pytestmark = pytest.mark.xdist_group("processes-a")

TOKEN = "123456:TEST-broadcast"
SECRET = "broadcast-test-secret"
USERS = int(os.environ.get("BROADCAST_TEST_USERS", "10000"))
# Telegram lifts the bot-wide limit to up to 1000/s for paid broadcasts; the fake enforces what it is given. The
# broadcast goes at half of it, so sends a stalled process delivers in a bunch still fit in the fake's count.
BOT_LIMIT = 1000
BROADCAST_RATE = 500
OPTED_OUT = USERS // 50
BLOCKED = USERS // 100
THROTTLED = USERS // 200
BASE_CHAT = 700_000_000
TEXTS = {"zh_CN": "号清提醒：系统将于周六维护。", "en": "Haoqing: maintenance on Saturday."}


def chat(i: int) -> int:
    return BASE_CHAT + i


def _query(path: Path, sql: str, *args: object) -> list[tuple[object, ...]]:
    with sqlite3.connect(path) as conn:
        return list(conn.execute(sql, args).fetchall())


async def _wait(predicate: object, what: str, proc: asyncio.subprocess.Process | None = None,
                timeout: float = 240.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():  # type: ignore[operator]
        if proc is not None and proc.returncode is not None:
            said = (await proc.stderr.read()).decode(errors="replace") if proc.stderr else ""
            raise AssertionError(f"the bot exited {proc.returncode} while waiting for {what}: {said[-2000:]}")
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def test_ten_thousand_recipients_killed_halfway_get_it_once(tmp_path: Path) -> None:
    fake = FakeBotApi(TOKEN, timeline=True, flood=FloodRules(bot_per_second=BOT_LIMIT))
    await fake.start()
    opted_out = set(range(0, OPTED_OUT * 50, 50))
    blocked = {i for i in range(7, USERS, USERS // BLOCKED)} - opted_out
    throttled = {i for i in range(11, USERS, USERS // THROTTLED)} - opted_out - blocked
    for i in blocked:
        fake.block(chat(i))
    for i in throttled:
        fake.fail("429", method="sendMessage", chat_id=chat(i), retry_after=1)
    db_path = await migrate(tmp_path)
    insert(db_path, SECRET, (Recipient("telegram", str(chat(i)), lang="en" if i % 3 == 0 else "zh_CN",
                                       reminders_on=i not in opted_out) for i in range(USERS)))

    settings = Settings(_env_file=None, data_dir=tmp_path, secret_key=SECRET,  # type: ignore[call-arg]
                        telegram_bot_token=TOKEN)
    db = Database(settings.resolved_database_url())
    service = BroadcastService(db, Vault(SECRET.encode()), Catalog.load(), settings)
    planned = await service.create(texts=TEXTS, segment={"channel": "telegram"}, dry_run=True)
    assert planned["recipients"] == USERS - len(opted_out) and planned["opted_out"] == len(opted_out)
    created = await service.create(texts=TEXTS, segment={"channel": "telegram"}, dry_run=False, created_by="test")
    broadcast_id = created["id"]
    await service.start(broadcast_id)

    port = free_port()
    env = {"DATA_DIR": str(tmp_path), "SECRET_KEY": SECRET, "TELEGRAM_BOT_TOKEN": TOKEN,
           "TELEGRAM_API_BASE_URL": fake.base_url, "TELEGRAM_WEBHOOK_URL": "https://bot.example.test/telegram/webhook",
           "TELEGRAM_WEBHOOK_SECRET": "broadcast-secret", "TELEGRAM_BOT_PER_SECOND": str(BOT_LIMIT * 0.9),
           "TELEGRAM_BROADCAST_PER_SECOND": str(BROADCAST_RATE), "BROADCAST_LEASE_SECONDS": "30"}
    proc = await start_bot(port, env)
    try:
        await _wait(lambda: fake.sent_count >= USERS // 2, "half the broadcast", proc)
        proc.kill()
        await proc.wait()
        in_flight = int(_query(db_path, "SELECT count(*) FROM broadcast_recipients WHERE status = 'sending'")[0][0])
        before = fake.sent_count
        assert 0 < before < USERS, "killed while the broadcast was under way"

        proc = await start_bot(port, env)
        # Pausing stops new sends; resuming carries on where it was.
        await _wait(lambda: fake.sent_count > before + 200, "sends after the restart", proc)
        await service.pause(broadcast_id)
        await _wait(lambda: not _query(db_path, "SELECT 1 FROM broadcast_recipients WHERE status = 'sending'"),
                    "the sends under way at the pause to settle", proc)
        paused_at = fake.sent_count
        await asyncio.sleep(1.0)
        assert fake.sent_count == paused_at, "nothing is sent while paused"
        await service.resume(broadcast_id)
        await _wait(lambda: _query(db_path, "SELECT status FROM broadcasts WHERE id = ?", broadcast_id)[0][0] == "done",
                    "the broadcast to finish", proc)
    finally:
        if proc.returncode is None:
            proc.terminate()
            await proc.wait()
        await fake.stop()

    accepted = Counter(int(call.chat_id) for call in fake.called("sendMessage", ok=True) if call.chat_id)
    reachable = {chat(i) for i in range(USERS)} - {chat(i) for i in opted_out | blocked}
    missing = reachable - set(accepted)
    doubled = sum(n - 1 for n in accepted.values() if n > 1)
    print(f"\nbroadcast: {len(reachable)} reachable, {sum(accepted.values())} accepted sends, {doubled} twice; "
          f"{in_flight} claimed at the kill")
    assert not missing, f"{len(missing)} reachable users never got it"
    assert doubled <= in_flight, "only the sends in flight at the kill may go twice"
    assert not (set(accepted) - reachable), "nothing reaches a user who opted out or blocked the bot"
    assert not fake.called("sendMessage", chat_id=chat(next(iter(opted_out)))), "opted-out users are never tried"
    assert all(accepted[chat(i)] >= 1 for i in throttled), "a 429 delays that chat only; it still gets it"
    assert len(fake.called("sendMessage", ok=False)) >= len(throttled) + len(blocked)
    # The limit held in every second: the fake refused nothing on its own, and a replay of its log agrees.
    assert fake.flood_refusals == [], fake.flood_refusals[:5]
    timeline = fake.timeline or []
    assert flood_violations(timeline, FloodRules(bot_per_second=BOT_LIMIT)) == []
    per_second = Counter(int(at) for method, _chat, at in timeline if method == "sendMessage")
    assert max(per_second.values()) <= BOT_LIMIT
    print("per second:", [per_second[k] for k in sorted(per_second)])

    status = await service.status(broadcast_id)
    await db.close()
    assert status["status"] == "done" and status["left"] == 0
    assert status["sent"] == len(reachable) and status["failed"] == len(blocked) and status["unreachable"] == 0
    inactive = _query(db_path, "SELECT count(*) FROM users WHERE active = 0")[0][0]
    assert inactive == len(blocked), "a 403 marks the user inactive"
    report = await _report(settings, broadcast_id)
    assert f"telegram,sent,,{len(reachable)}" in report and f"telegram,failed,blocked,{len(blocked)}" in report


async def _report(settings: Settings, broadcast_id: int) -> str:
    db = Database(settings.resolved_database_url())
    try:
        return await BroadcastService(db, Vault(SECRET.encode()), Catalog.load(), settings).report_csv(broadcast_id)
    finally:
        await db.close()
