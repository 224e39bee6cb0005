"""Send budgets shared by every worker: a channel's bot-wide rate (Telegram's ~30 messages/s) must hold for the
deployment, not per process.

One algorithm, GCRA, with the theoretical arrival time (TAT) kept where all workers see it: in Redis when
REDIS_URL is set (one Lua script, atomic, on Redis's own clock), in PostgreSQL otherwise (one row per budget,
updated under its row lock, on the database's clock), and in memory for a single process on SQLite. A caller
*reserves* the next slot and sleeps until it; nobody ever holds a lock while waiting. If Redis stops answering,
the budget falls back to the database (or memory) instead of failing a send.

Never keyed by a user, number or session: keys name a channel and a bot.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Protocol

from sqlalchemy import text

log = logging.getLogger(__name__)


class Budget(Protocol):
    async def reserve(self, key: str, rate: float, burst: int = 1) -> float:
        """Takes the next slot of `key` (`rate` per second, `burst` back to back); returns the seconds to wait
        before using it (0 when it is free now)."""
        ...

    async def close(self) -> None: ...


class LocalBudget:
    """One process: the TATs in a dict, on the monotonic clock."""

    def __init__(self, clock: Any = time.monotonic) -> None:
        self.clock = clock
        self._tat: dict[str, float] = {}

    async def reserve(self, key: str, rate: float, burst: int = 1) -> float:
        now = float(self.clock())
        interval = 1.0 / rate
        start = max(self._tat.get(key, 0.0), now - (max(burst, 1) - 1) * interval)
        self._tat[key] = start + interval
        return max(0.0, start - now)

    async def close(self) -> None:
        return None


# KEYS[1]: the budget; ARGV: interval, tolerance (seconds). Redis's own clock, so workers' clocks never matter.
_RESERVE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
local start = math.max(tat, now - tolerance)
local new_tat = start + interval
redis.call('SET', KEYS[1], string.format('%.6f', new_tat), 'PX', math.ceil((new_tat - now) * 1000) + 60000)
return string.format('%.6f', math.max(0, start - now))
"""

# The row's lock serialises concurrent reservations; clock_timestamp() is the database's clock.
_RESERVE_SQL = """
INSERT INTO send_budgets (key, tat) VALUES (:key, extract(epoch FROM clock_timestamp()) + :interval)
ON CONFLICT (key) DO UPDATE SET tat = GREATEST(send_budgets.tat,
    extract(epoch FROM clock_timestamp()) - :tolerance) + :interval
RETURNING tat - :interval - extract(epoch FROM clock_timestamp())
"""
_RESERVE_SQLITE = """
INSERT INTO send_budgets (key, tat) VALUES (:key, :now + :interval)
ON CONFLICT (key) DO UPDATE SET tat = MAX(send_budgets.tat, :now - :tolerance) + :interval
RETURNING tat - :interval - :now
"""


class DatabaseBudget:
    """Shared through the `send_budgets` table: one round trip per reservation, fine at tens per second."""

    def __init__(self, db: Any) -> None:
        self.db = db

    async def reserve(self, key: str, rate: float, burst: int = 1) -> float:
        interval = 1.0 / rate
        params = {"key": key, "interval": interval, "tolerance": (max(burst, 1) - 1) * interval}
        if self.db.is_sqlite:
            statement, params = text(_RESERVE_SQLITE), {**params, "now": time.time()}
        else:
            statement = text(_RESERVE_SQL)
        async with self.db.engine.begin() as connection:
            wait = (await connection.execute(statement, params)).scalar_one()
        return max(0.0, float(wait))

    async def close(self) -> None:
        return None  # the database is the runtime's to close


class RedisBudget:
    """Shared through Redis; when Redis does not answer, `fallback` keeps the budget (never fails a send)."""

    def __init__(self, redis: Any, fallback: Budget, prefix: str = "haoqing:budget:") -> None:
        self.redis = redis
        self.fallback = fallback
        self.prefix = prefix
        self._script = redis.register_script(_RESERVE_LUA)
        self._down_until = 0.0

    async def reserve(self, key: str, rate: float, burst: int = 1) -> float:
        if time.monotonic() >= self._down_until:
            interval = 1.0 / rate
            try:
                wait = await self._script(keys=[self.prefix + key], args=[interval, (max(burst, 1) - 1) * interval])
                return max(0.0, float(wait))
            except Exception as exc:  # redis.exceptions.* and OSError alike: degrade, say so once per outage
                log.warning("send budget: Redis unavailable, using the database", extra={"error": type(exc).__name__})
                self._down_until = time.monotonic() + 5.0
        return await self.fallback.reserve(key, rate, burst)

    async def close(self) -> None:
        await self.redis.aclose()


def budget_for(db: Any, redis_url: str) -> Budget:
    """The budget a deployment shares: Redis when configured, else the database (or memory on SQLite, where
    one process serves)."""
    fallback: Budget = LocalBudget() if db.is_sqlite else DatabaseBudget(db)
    if not redis_url:
        return fallback
    import redis.asyncio as redis_asyncio

    client = redis_asyncio.from_url(redis_url, socket_connect_timeout=0.5, socket_timeout=0.5)
    return RedisBudget(client, fallback)


async def pace(budget: Budget, key: str, rate: float, burst: int = 1) -> None:
    """Waits for this caller's slot of `key`."""
    wait = await budget.reserve(key, rate, burst)
    if wait > 0:
        await asyncio.sleep(wait)
