"""Issue 15: PostgreSQL connections per worker, and what a request meets when the ORM's pool is exhausted.

Every pooled connection busy: a session waits for one (POOL_TIMEOUT), then SQLAlchemy's pool gives up, and that
counts as the database being unavailable (a 503 the channel retries), not as a bug in the request (a 500, which a
Telegram webhook counts towards giving the update up). The exhaustion here is real: a one-connection pool on the
loopback PostgreSQL, its connection held.
"""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import text

from bot.step_store import PG_LOCK_SLOTS, PG_POOL_SIZE
from bot.storage import LOCK_SLOTS, POOL_OVERFLOW, POOL_SIZE, Database, storage_unavailable
from tests.test_postgres import pg_url  # noqa: F401 (fixture)

# PostgreSQL's default max_connections, less its superuser_reserved_connections.
DEFAULT_USABLE = 100 - 3


def test_four_workers_fit_a_default_postgresql_with_room_to_spare() -> None:
    per_worker = POOL_SIZE + POOL_OVERFLOW + PG_POOL_SIZE + 1  # ORM, step store, the staff console's LISTEN
    assert 4 * per_worker <= DEFAULT_USABLE - 10, per_worker
    # Lock holders need a second connection for their queries: locks never take more than half a pool.
    assert LOCK_SLOTS <= (POOL_SIZE + POOL_OVERFLOW) // 2
    assert PG_LOCK_SLOTS < PG_POOL_SIZE


async def test_an_exhausted_pool_waits_then_counts_as_the_database_unavailable(pg_url: str) -> None:  # noqa: F811
    db = Database(pg_url, pool_size=1, max_overflow=0, pool_timeout=0.2)
    try:
        async with db.engine.connect() as held:
            await held.execute(text("SELECT 1"))
            waiting = asyncio.create_task(_one_query(db))
            with pytest.raises(Exception) as raised:
                await waiting
        assert storage_unavailable(raised.value), type(raised.value)
        # Once the connection is back, the same pool serves again.
        assert await _one_query(db) == 1
    finally:
        await db.close()


async def _one_query(db: Database) -> int:
    async with db.session() as session:
        return int((await session.exec(text("SELECT 1"))).scalar_one())  # type: ignore[call-overload]
