"""Send budgets shared by every worker: a channel's bot-wide rate (Telegram's ~30 messages/s) must hold for the
deployment, not per process.

One algorithm, GCRA, with the theoretical arrival time (TAT) kept where all workers see it: in Redis when
REDIS_URL is set (one Lua script, atomic, on Redis's own clock), in PostgreSQL otherwise (one row per budget,
updated under its row lock, on the database's clock), and in memory for a single process on SQLite. A caller
*reserves* the next slot and sleeps until it; nobody ever holds a lock while waiting. If Redis stops answering,
the budget falls back to the database (or memory) instead of failing a send.

A send that must respect two budgets at once (Telegram: the chat's pace and the bot's) reserves both in one
atomic step (`reserve_joint`): one start, the later of the two, taken from both, so the chat's slot is where the
message really goes out; and when the chat's next slot is later than the bot's next one, nothing is taken and the
caller comes back then, so a slow chat never holds the bot's slots. A caller that must never hold a slot ahead of
others (a broadcast message, behind every reply) asks with `now_only`: both slots if free this instant, else nothing
and when to look again.

Never keyed by a user, number or session: keys name a channel, a bot and a chat.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import text

log = logging.getLogger(__name__)


class Budget(Protocol):
    async def reserve(self, key: str, rate: float, burst: int = 1) -> float:
        """Takes the next slot of `key` (`rate` per second, `burst` back to back); returns the seconds to wait
        before using it (0 when it is free now)."""
        ...

    async def reserve_joint(self, chat: Slot, bot: Slot, slack: float, now_only: bool = False) -> tuple[bool, float]:
        """Takes a slot of `chat` and of `bot` together, at the later of their next free moments: (True, seconds
        to wait). When the chat's next moment comes more than `slack` after the bot's, takes nothing and returns
        (False, seconds until the chat's), so the caller tries again then and the bot's slots go to others.
        With `now_only`, takes them only when both are free this instant, else nothing and (False, seconds until
        they are): a caller that must never hold a slot ahead of others (a broadcast behind replies)."""
        ...

    async def close(self) -> None: ...


@dataclass(frozen=True)
class Slot:
    """One budget's part in a joint reservation."""

    key: str
    rate: float
    burst: int = 1
    # Seconds before the budget's next free moment that this caller may already take a slot (the TAT still moves
    # on by a full interval): replies get one interval of it on the bot's budget, so a reply arriving just after a
    # broadcast message goes at once instead of waiting out that message's interval; the budget then holds every
    # other caller back by as much, and no window of a second holds more than rate + burst + 1.
    credit: float = 0.0

    @property
    def interval(self) -> float:
        return 1.0 / self.rate

    @property
    def tolerance(self) -> float:
        return (max(self.burst, 1) - 1) / self.rate


def joint(now: float, chat: Slot, chat_tat: float, bot: Slot, bot_tat: float,
          slack: float, now_only: bool = False) -> tuple[bool, float, float, float]:
    """The joint reservation's arithmetic, the same in memory, in SQL's caller and in Redis's Lua: (taken, start,
    the chat's new TAT, the bot's new TAT). A budget's slot is free from its TAT on; taking one at `start` moves
    the TAT to max(TAT, start - tolerance) + interval (the burst is the credit an idle budget keeps). With
    `now_only`, a start later than `now` takes nothing."""
    chat_at, bot_at = max(now, chat_tat), max(now, bot_tat - bot.credit)
    if chat_at > bot_at + slack:
        return False, chat_at, chat_tat, bot_tat
    start = max(chat_at, bot_at)
    if now_only and start > now:
        return False, start, chat_tat, bot_tat
    return (True, start, max(chat_tat, start - chat.tolerance) + chat.interval,
            max(bot_tat, start - bot.tolerance) + bot.interval)


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

    async def reserve_joint(self, chat: Slot, bot: Slot, slack: float, now_only: bool = False) -> tuple[bool, float]:
        now = float(self.clock())
        taken, start, chat_tat, bot_tat = joint(now, chat, self._tat.get(chat.key, 0.0), bot,
                                                self._tat.get(bot.key, 0.0), slack, now_only)
        if taken:
            self._tat[chat.key], self._tat[bot.key] = chat_tat, bot_tat
        return taken, max(0.0, start - now)

    def tat(self, key: str) -> float:
        return self._tat.get(key, 0.0)

    def put(self, key: str, tat: float) -> None:
        self._tat[key] = tat

    def forget_idle(self, now: float | None = None) -> None:
        """Drops TATs in the past (an idle chat's), which hold nothing any more."""
        now = float(self.clock()) if now is None else now
        for key in [k for k, tat in self._tat.items() if tat < now]:
            del self._tat[key]

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

# KEYS[1]: the chat's budget, KEYS[2]: the bot's; ARGV: chat interval, chat tolerance, bot interval, bot tolerance,
# slack, bot credit, now only (1/0). bot.budgets.joint in Lua: both slots at one start, or nothing while the chat's is
# the later by over slack (or, now only, while the start is still to come).
_RESERVE_JOINT_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local ci, ct = tonumber(ARGV[1]), tonumber(ARGV[2])
local bi, bt = tonumber(ARGV[3]), tonumber(ARGV[4])
local chat_tat = tonumber(redis.call('GET', KEYS[1]) or '0')
local bot_tat = tonumber(redis.call('GET', KEYS[2]) or '0')
local chat_at = math.max(now, chat_tat)
local bot_at = math.max(now, bot_tat - tonumber(ARGV[6] or '0'))
if chat_at > bot_at + tonumber(ARGV[5]) then
  return {0, string.format('%.6f', chat_at - now)}
end
local start = math.max(chat_at, bot_at)
if tonumber(ARGV[7] or '0') == 1 and start > now then
  return {0, string.format('%.6f', start - now)}
end
local new_chat = math.max(chat_tat, start - ct) + ci
local new_bot = math.max(bot_tat, start - bt) + bi
redis.call('SET', KEYS[1], string.format('%.6f', new_chat), 'PX', math.ceil((new_chat - now) * 1000) + 60000)
redis.call('SET', KEYS[2], string.format('%.6f', new_bot), 'PX', math.ceil((new_bot - now) * 1000) + 60000)
return {1, string.format('%.6f', start - now)}
"""

# The row's lock serialises concurrent reservations; clock_timestamp() is the database's clock.
_RESERVE_SQL = """
INSERT INTO send_budgets (key, tat) VALUES (:key, extract(epoch FROM clock_timestamp()) + :interval)
ON CONFLICT (key) DO UPDATE SET tat = GREATEST(send_budgets.tat,
    extract(epoch FROM clock_timestamp()) - :tolerance) + :interval
RETURNING tat - :interval - extract(epoch FROM clock_timestamp())
"""
# The joint reservation on the database: both rows made if missing, then locked in key order (so two
# reservations never deadlock), read with the database's clock, and moved together in the same transaction.
_ENSURE_ROWS = "INSERT INTO send_budgets (key, tat) VALUES (:first, 0), (:second, 0) ON CONFLICT (key) DO NOTHING"
_LOCK_ROWS = ("SELECT key, tat, extract(epoch FROM clock_timestamp()) FROM send_budgets "
              "WHERE key IN (:first, :second) ORDER BY key FOR UPDATE")
_LOCK_ROWS_SQLITE = "SELECT key, tat, :now FROM send_budgets WHERE key IN (:first, :second) ORDER BY key"
_MOVE_ROWS = ("UPDATE send_budgets SET tat = CASE WHEN key = :chat THEN CAST(:chat_tat AS DOUBLE PRECISION) "
              "ELSE CAST(:bot_tat AS DOUBLE PRECISION) END WHERE key IN (:chat, :bot)")
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

    async def reserve_joint(self, chat: Slot, bot: Slot, slack: float, now_only: bool = False) -> tuple[bool, float]:
        first, second = sorted((chat.key, bot.key))
        keys = {"first": first, "second": second}
        lock = text(_LOCK_ROWS_SQLITE if self.db.is_sqlite else _LOCK_ROWS)
        async with self.db.engine.begin() as connection:
            await connection.execute(text(_ENSURE_ROWS), keys)
            rows = (await connection.execute(lock, {**keys, "now": time.time()})).all()
            tats = {str(row[0]): float(row[1]) for row in rows}
            now = float(rows[0][2])
            taken, start, chat_tat, bot_tat = joint(now, chat, tats.get(chat.key, 0.0), bot, tats.get(bot.key, 0.0),
                                                    slack, now_only)
            if taken:
                await connection.execute(text(_MOVE_ROWS), {"chat": chat.key, "bot": bot.key, "chat_tat": chat_tat,
                                                            "bot_tat": bot_tat})
        return taken, max(0.0, start - now)

    async def close(self) -> None:
        return None  # the database is the runtime's to close


class RedisBudget:
    """Shared through Redis; when Redis does not answer, `fallback` keeps the budget (never fails a send)."""

    def __init__(self, redis: Any, fallback: Budget, prefix: str = "haoqing:budget:") -> None:
        self.redis = redis
        self.fallback = fallback
        self.prefix = prefix
        self._script = redis.register_script(_RESERVE_LUA)
        self._joint = redis.register_script(_RESERVE_JOINT_LUA)
        self._down_until = 0.0

    async def reserve(self, key: str, rate: float, burst: int = 1) -> float:
        if time.monotonic() >= self._down_until:
            interval = 1.0 / rate
            try:
                wait = await self._script(keys=[self.prefix + key], args=[interval, (max(burst, 1) - 1) * interval])
                return max(0.0, float(wait))
            except Exception as exc:  # redis.exceptions.* and OSError alike: degrade, say so once per outage
                self._degrade(exc)
        return await self.fallback.reserve(key, rate, burst)

    async def reserve_joint(self, chat: Slot, bot: Slot, slack: float, now_only: bool = False) -> tuple[bool, float]:
        if time.monotonic() >= self._down_until:
            try:
                taken, wait = await self._joint(
                    keys=[self.prefix + chat.key, self.prefix + bot.key],
                    args=[chat.interval, chat.tolerance, bot.interval, bot.tolerance, slack, bot.credit,
                          1 if now_only else 0])
                return bool(int(taken)), max(0.0, float(wait))
            except Exception as exc:  # as in reserve: degrade to the fallback, never fail a send
                self._degrade(exc)
        return await self.fallback.reserve_joint(chat, bot, slack, now_only)

    def _degrade(self, exc: Exception) -> None:
        log.warning("send budget: Redis unavailable, using the database", extra={"error": type(exc).__name__})
        self._down_until = time.monotonic() + 5.0

    async def close(self) -> None:
        await self.redis.aclose()


def budget_for(db: Any, redis_url: str) -> Budget:
    """The budget a deployment shares: Redis when configured, else the database (or memory on SQLite, where
    one process serves)."""
    fallback: Budget = LocalBudget() if db.is_sqlite else DatabaseBudget(db)
    if not redis_url:
        return fallback
    import redis.asyncio as redis_asyncio

    # A refused connection fails at once whatever the timeouts. The answer's timeout is long enough that a busy
    # worker whose event loop stalled for a moment does not take Redis for gone: a worker that falls back while
    # the others stay on Redis is a second budget beside theirs for 5 s, and Telegram counts both.
    client = redis_asyncio.from_url(redis_url, socket_connect_timeout=0.5, socket_timeout=2.0)
    return RedisBudget(client, fallback)


async def pace(budget: Budget, key: str, rate: float, burst: int = 1) -> None:
    """Waits for this caller's slot of `key`."""
    wait = await budget.reserve(key, rate, burst)
    if wait > 0:
        await asyncio.sleep(wait)
