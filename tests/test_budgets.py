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

from bot.budgets import LocalBudget, RedisBudget, budget_for
from bot.storage import Database
from tests.conftest import IN_CI
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
