"""Limits that hold against a hostile client (invariant 8): windows counted per number, per ID number, per
client and for the whole bot, in Redis when `REDIS_URL` is set and in the database otherwise.

These are security records: `/forget` never resets them, they hold only keyed hashes (never a number, an
address or a session id) and each one is gone when its window ends. Never logs a subject in the clear.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import case, literal
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import col, delete

from bot import metrics
from bot.config import Settings
from bot.storage import AbuseCounter, Database
from bot.vault import Vault
from domain.beijing import day_start

log = logging.getLogger(__name__)


class Counters(Protocol):
    async def hit(self, key: str, until: datetime, now: datetime) -> tuple[int, datetime]:
        """Adds one to the window at `key` (opening it, to end at `until`, when none is open) and returns
        (count including this one, when the window ends)."""
        ...

    async def peek(self, key: str, now: datetime) -> int: ...

    async def purge(self, now: datetime) -> int: ...

    async def close(self) -> None: ...


class DbCounters:
    """One row per open window; an upsert makes every hit atomic on SQLite and PostgreSQL alike."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def hit(self, key: str, until: datetime, now: datetime) -> tuple[int, datetime]:
        table: Any = AbuseCounter.__table__  # type: ignore[attr-defined]
        dialect = sqlite if self.db.is_sqlite else postgresql
        stale = table.c.expires_at <= literal(now, type_=table.c.expires_at.type)
        statement = (
            dialect.insert(table).values(key=key, count=1, expires_at=until)
            .on_conflict_do_update(index_elements=[table.c.key], set_={
                "count": case((stale, 1), else_=table.c.count + 1),
                "expires_at": case((stale, literal(until, type_=table.c.expires_at.type)),
                                   else_=table.c.expires_at)})
            .returning(table.c.count, table.c.expires_at)
        )
        async with self.db.session() as session:
            row = (await session.execute(statement)).one()
            await session.commit()
        ends = row[1] if row[1].tzinfo is not None else row[1].replace(tzinfo=UTC)
        return int(row[0]), ends

    async def peek(self, key: str, now: datetime) -> int:
        async with self.db.session() as session:
            row = await session.get(AbuseCounter, key)
        if row is None:
            return 0
        ends = row.expires_at if row.expires_at.tzinfo is not None else row.expires_at.replace(tzinfo=UTC)
        return row.count if ends > now else 0

    async def purge(self, now: datetime) -> int:
        async with self.db.session() as session:
            result = await session.exec(delete(AbuseCounter).where(col(AbuseCounter.expires_at) <= now))
            await session.commit()
        return int(result.rowcount or 0)

    async def close(self) -> None:
        return None


# INCR and the expiry in one step, so a crash between them can never leave a counter that never expires.
_HIT = """
local count = redis.call('INCR', KEYS[1])
if count == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then redis.call('PEXPIRE', KEYS[1], ARGV[1]); ttl = tonumber(ARGV[1]) end
return {count, ttl}
"""


class RedisCounters:
    """The same windows in Redis, shared by every worker; Redis expires them itself."""

    def __init__(self, url: str, prefix: str = "haoqing:abuse:") -> None:
        import redis.asyncio as redis

        # Short timeouts: a Redis that is down must cost a request milliseconds, not seconds (see FallbackCounters).
        self.redis: Any = redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5)
        self.prefix = prefix
        self._script: Any = self.redis.register_script(_HIT)

    async def hit(self, key: str, until: datetime, now: datetime) -> tuple[int, datetime]:
        ttl_ms = max(1, int((until - now).total_seconds() * 1000))
        count, left = await self._script(keys=[self.prefix + key], args=[ttl_ms])
        return int(count), now + timedelta(milliseconds=int(left))

    async def peek(self, key: str, now: datetime) -> int:
        value = await self.redis.get(self.prefix + key)
        return int(value or 0)

    async def purge(self, now: datetime) -> int:
        return 0

    async def close(self) -> None:
        await self.redis.aclose()


class FallbackCounters:
    """Redis first; while it is unreachable, the database. The limits keep holding through a Redis outage
    (counts split between the two for its length, so a limit may admit up to twice its number then), and
    Redis is not asked again for `pause` seconds after a failure, so an outage costs no request a timeout."""

    def __init__(self, primary: Counters, fallback: Counters, pause: float = 5.0,
                 clock: Any = time.monotonic) -> None:
        self.primary, self.fallback, self.pause, self.clock = primary, fallback, pause, clock
        self._down_until = 0.0

    async def _try(self, call: str, *args: Any) -> Any:
        if self.clock() >= self._down_until:
            try:
                return await getattr(self.primary, call)(*args)
            except Exception:  # redis.exceptions.RedisError, OSError, TimeoutError: all mean "not now"
                if self._down_until == 0.0 or self.clock() - self._down_until > self.pause:
                    log.warning("abuse counters: redis unreachable, using the database meanwhile")
                self._down_until = self.clock() + self.pause
        return await getattr(self.fallback, call)(*args)

    async def hit(self, key: str, until: datetime, now: datetime) -> tuple[int, datetime]:
        result: tuple[int, datetime] = await self._try("hit", key, until, now)
        return result

    async def peek(self, key: str, now: datetime) -> int:
        return int(await self._try("peek", key, now))

    async def purge(self, now: datetime) -> int:
        return await self.fallback.purge(now)

    async def close(self) -> None:
        await self.primary.close()
        await self.fallback.close()


@dataclass(frozen=True)
class Refusal:
    rule: str
    retry_in: int  # seconds until the window that refused ends


@dataclass(frozen=True)
class Rule:
    """`limit` uses per window of `seconds`; `daily` windows end at the next Beijing midnight instead."""

    name: str
    limit: int
    seconds: float = 0.0
    daily: bool = False

    def ends(self, now: datetime) -> datetime:
        if self.daily:
            return day_start(now) + timedelta(days=1)
        return now + timedelta(seconds=self.seconds)

    @property
    def active(self) -> bool:
        return self.limit > 0 and (self.daily or self.seconds > 0)


class Limits:
    """Named rules over keyed-hash subjects. `take` counts a use against every rule and stops at the first
    one over its limit; `exceeded` only looks, for lockouts counted by failures."""

    def __init__(self, counters: Counters, vault: Vault) -> None:
        self.counters = counters
        self.vault = vault

    def subject(self, kind: str, value: str) -> str:
        # 128 bits of a keyed hash: enough to tell subjects apart, useless to anyone without the server key.
        return self.vault.keyed_hash(value, purpose=f"abuse:{kind}")[:32]

    async def take(self, uses: list[tuple[Rule, str]], now: datetime) -> Refusal | None:
        for rule, subject in uses:
            if not rule.active:
                continue
            count, ends = await self.counters.hit(f"{rule.name}:{subject}", rule.ends(now), now)
            if count > rule.limit:
                log.info("limit reached", extra={"rule": rule.name})
                metrics.LIMIT_REFUSALS.labels(rule.name).inc()
                return Refusal(rule.name, max(1, math.ceil((ends - now).total_seconds())))
        return None

    async def exceeded(self, uses: list[tuple[Rule, str]], now: datetime) -> Refusal | None:
        for rule, subject in uses:
            if rule.active and await self.counters.peek(f"{rule.name}:{subject}", now) >= rule.limit:
                metrics.LIMIT_REFUSALS.labels(rule.name).inc()
                return Refusal(rule.name, 0)
        return None

    async def add(self, uses: list[tuple[Rule, str]], now: datetime) -> None:
        for rule, subject in uses:
            if rule.active:
                await self.counters.hit(f"{rule.name}:{subject}", rule.ends(now), now)


def realname_rule(kind: str, settings: Settings) -> Rule:
    """Real-name lockout: failed holder checks per number and per ID number, and per client per day."""
    if kind == "client":
        return Rule("realname.client", settings.realname_client_daily, daily=True)
    return Rule(f"realname.{kind}", settings.realname_attempts, settings.realname_lock_hours * 3600)


def counters_for(db: Database, redis_url: str) -> Counters:
    return FallbackCounters(RedisCounters(redis_url), DbCounters(db)) if redis_url else DbCounters(db)


def client_address(remote: str | None, forwarded_for: str | None, trusted: list[str]) -> str:
    """The web chat's client: the peer address, or, when the peer is a trusted proxy, the nearest address in
    `X-Forwarded-For` that is not one. IPv6 clients are one /64: a host gets a whole /64 to rotate through."""
    networks = [ipaddress.ip_network(n.strip(), strict=False) for n in trusted if n.strip()]

    def parsed(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        try:
            return ipaddress.ip_address(value.strip().strip("[]"))
        except ValueError:
            return None

    def is_trusted(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        return any(address in network for network in networks)

    peer = parsed(remote or "")
    client = peer
    if peer is not None and is_trusted(peer) and forwarded_for:
        # Walk from the right: every hop we trust appended the one before it; the first we don't is the client.
        for hop in reversed(forwarded_for.split(",")[-20:]):
            address = parsed(hop)
            if address is None:
                break
            client = address
            if not is_trusted(address):
                break
    if client is None:
        return "unknown"
    if isinstance(client, ipaddress.IPv6Address):
        if client.ipv4_mapped is not None:
            return str(client.ipv4_mapped)
        return str(ipaddress.ip_network(f"{client}/64", strict=False))
    return str(client)
