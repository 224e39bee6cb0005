"""The bot-wide send budget holds for a whole deployment: three worker processes reserving slots of one budget
through Redis, or through PostgreSQL, never plan more than the rate in any one-second window; and a budget
whose Redis is down keeps working on the database.

Needs PostgreSQL and Redis on loopback; under CI=true a missing server fails the test instead of skipping it.
"""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from pathlib import Path

import pytest

from bot.budgets import LocalBudget, RedisBudget, Slot, budget_for
from bot.storage import Database
from tests.conftest import IN_CI
from tests.fakes.fake_bot_api import FloodRules, flood_violations
from tests.processes import ROOT, free_port
from tests.test_postgres import pg_url  # noqa: F401 - the fixture

# Several processes of their own each: the tests of one group run one after another on one pytest worker, so at
# most two such tests (one per group) load the machine's two cores at once.
pytestmark = pytest.mark.xdist_group("processes-a")

RATE = 30.0

# A worker: reserves `count` slots and prints the moments it planned to send at (unix seconds).
WORKER = """
import asyncio, json, sys, time
from bot.budgets import budget_for
from bot.storage import Database


async def main(url, redis_url, key, count):
    db = Database(url)
    budget = budget_for(db, redis_url)
    planned = []
    for _ in range(count):
        wait = await budget.reserve(key, {rate}, 1)
        planned.append(time.time() + wait)
        await asyncio.sleep(wait)
    await db.close()
    print(json.dumps(planned))

asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))
""".replace("{rate}", str(RATE))


async def run_workers(url: str, redis_url: str, workers: int = 3, count: int = 40) -> list[float]:
    key = f"test:{uuid.uuid4().hex}"
    procs = [await asyncio.create_subprocess_exec(sys.executable, "-c", WORKER, url, redis_url, key, str(count),
                                                  cwd=ROOT, stdout=asyncio.subprocess.PIPE,
                                                  stderr=asyncio.subprocess.PIPE)
             for _ in range(workers)]
    planned: list[float] = []
    for proc in procs:
        out, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()[-2000:]
        planned.extend(json.loads(out))
    assert len(planned) == workers * count
    return sorted(planned)


def busiest_second(moments: list[float]) -> int:
    """The most moments in any window of one second."""
    best, start = 0, 0
    for end, moment in enumerate(moments):
        while moment - moments[start] >= 1.0:
            start += 1
        best = max(best, end - start + 1)
    return best


async def redis_url_or_skip() -> str:
    import redis.asyncio as redis_asyncio

    client = redis_asyncio.from_url("redis://127.0.0.1:6379/0")
    try:
        await client.ping()
    except Exception as exc:
        if IN_CI:
            pytest.fail(f"Redis is not reachable on 127.0.0.1:6379: {exc}")
        pytest.skip(f"Redis is not reachable: {exc}")
    finally:
        await client.aclose()
    return "redis://127.0.0.1:6379/0"


async def migrated(url: str) -> None:
    db = Database(url)
    await db.create_all()
    await db.close()


async def test_local_budget_spaces_slots_by_the_rate() -> None:
    clock = [100.0]
    budget = LocalBudget(clock=lambda: clock[0])
    waits = [await budget.reserve("tg", 10.0) for _ in range(5)]
    assert waits == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])
    clock[0] = 200.0  # long idle: no credit is banked beyond the burst
    assert [await budget.reserve("tg", 10.0, burst=3) for _ in range(4)] == pytest.approx([0.0, 0.0, 0.0, 0.1])


async def test_three_workers_share_one_budget_through_postgres(pg_url: str) -> None:  # noqa: F811
    await migrated(pg_url)
    planned = await run_workers(pg_url, "")
    assert busiest_second(planned) <= RATE + 2, busiest_second(planned)


async def test_three_workers_share_one_budget_through_redis(pg_url: str) -> None:  # noqa: F811
    redis_url = await redis_url_or_skip()
    await migrated(pg_url)
    planned = await run_workers(pg_url, redis_url)
    assert busiest_second(planned) <= RATE + 2, busiest_second(planned)


async def test_redis_down_falls_back_to_the_database(tmp_path: Path) -> None:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'b.sqlite3'}")
    await db.create_all()
    budget = budget_for(db, f"redis://127.0.0.1:{free_port()}/0")
    assert isinstance(budget, RedisBudget)
    waits = [await budget.reserve("tg", 10.0) for _ in range(3)]
    assert waits[0] == 0.0 and waits[1] > 0.0 and waits[2] > waits[1]
    await db.close()


# A worker sending to a few chats every worker also sends to: each send reserves the chat's slot and the bot's
# together (Budget.reserve_joint), waiting aside while its chat is not ready; prints [chat, planned moment] pairs.
JOINT_WORKER = """
import asyncio, json, sys, time
from bot.budgets import Slot, budget_for
from bot.storage import Database


async def main(url, redis_url, key, count, chats):
    db = Database(url)
    budget = budget_for(db, redis_url)
    bot = Slot(key, {rate})
    planned = []
    for i in range(count):
        chat_id = i % chats
        chat = Slot(f"{key}:chat:{chat_id}", {chat_rate}, 3)
        while True:
            taken, wait = await budget.reserve_joint(chat, bot, bot.interval)
            if taken:
                break
            await asyncio.sleep(wait)
        planned.append([chat_id, time.time() + wait])
        await asyncio.sleep(wait)
    await db.close()
    print(json.dumps(planned))

asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])))
"""
CHAT_RATE = 10.0


async def run_joint_workers(url: str, redis_url: str, workers: int = 3, count: int = 30,
                            chats: int = 3) -> list[tuple[int, float]]:
    key = f"test:{uuid.uuid4().hex}"
    script = JOINT_WORKER.replace("{rate}", str(RATE)).replace("{chat_rate}", str(CHAT_RATE))
    procs = [await asyncio.create_subprocess_exec(sys.executable, "-c", script, url, redis_url, key, str(count),
                                                  str(chats), cwd=ROOT, stdout=asyncio.subprocess.PIPE,
                                                  stderr=asyncio.subprocess.PIPE)
             for _ in range(workers)]
    planned: list[tuple[int, float]] = []
    for proc in procs:
        out, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()[-2000:]
        planned.extend((int(chat), float(at)) for chat, at in json.loads(out))
    assert len(planned) == workers * count
    return planned


def over_telegram_limits(planned: list[tuple[int, float]]) -> list[str]:
    """The fake Bot API's own flood rules replayed over the planned sends (chat ids offset to private chats). The
    workers pace a tenth under the rules, as the bot does under Telegram's: a planned moment is read from this
    machine's clock after the reservation returns, so a busy machine adds a few milliseconds to some of them."""
    rules = FloodRules(bot_per_second=int(RATE * 1.1), chat_per_second=CHAT_RATE * 1.1, chat_burst=3)
    return flood_violations([("sendMessage", 1000 + chat, at) for chat, at in planned], rules)


async def test_joint_reservation_takes_both_slots_at_the_later_start() -> None:
    clock = [100.0]
    budget = LocalBudget(clock=lambda: clock[0])
    bot, chat = Slot("tg", 10.0), Slot("tg:chat:1", 1.0)
    assert await budget.reserve_joint(chat, bot, bot.interval) == (True, 0.0)
    # The chat's next slot is a second away, the bot's a tenth: nothing is taken, and the bot stays free for others.
    taken, wait = await budget.reserve_joint(chat, bot, bot.interval)
    assert not taken and wait == pytest.approx(1.0)
    assert await budget.reserve_joint(Slot("tg:chat:2", 1.0), bot, bot.interval) == (True, pytest.approx(0.1))
    # Once the chat is ready, both are taken at the later start, and the chat counts the send there.
    clock[0] = 101.0
    assert await budget.reserve_joint(chat, bot, bot.interval) == (True, 0.0)
    assert budget.tat("tg:chat:1") == pytest.approx(102.0) and budget.tat("tg") == pytest.approx(101.1)
    # The bot is the later one: the chat's slot moves with the bot's start, not from when it was asked for.
    for _ in range(5):
        await budget.reserve("tg", 10.0)
    taken, wait = await budget.reserve_joint(Slot("tg:chat:3", 1.0), bot, bot.interval)
    assert taken and wait == pytest.approx(0.6) and budget.tat("tg:chat:3") == pytest.approx(102.6)


async def test_three_workers_share_chat_and_bot_paces_through_redis(pg_url: str) -> None:  # noqa: F811
    redis_url = await redis_url_or_skip()
    await migrated(pg_url)
    planned = await run_joint_workers(pg_url, redis_url)
    assert over_telegram_limits(planned) == [], sorted(planned, key=lambda p: p[1])


async def test_three_workers_share_chat_and_bot_paces_through_postgres(pg_url: str) -> None:  # noqa: F811
    await migrated(pg_url)
    planned = await run_joint_workers(pg_url, "")
    assert over_telegram_limits(planned) == []
