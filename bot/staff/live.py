"""Live updates for staff consoles: an in-process fan-out, and Redis pub/sub when REDIS_URL is set so every
worker's consoles see what happened on any worker. Without Redis, workers on PostgreSQL share them through
LISTEN/NOTIFY instead (fine at a staff console's scale); a single process on SQLite needs neither.

Events carry ids and statuses only, never message text or personal data: a console fetches the ticket itself,
through the API that checks its session and writes the audit log.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from bot.loops import stop_requested

log = logging.getLogger(__name__)

QUEUE_LIMIT = 256
STARTUP_WAIT_SECONDS = 3.0


class LiveHub:
    def __init__(self, redis_url: str = "", scope: str = "") -> None:
        self.redis_url = redis_url
        # Without Redis, a PostgreSQL database (the scope is the database URL) carries the events instead.
        self.postgres_dsn = "" if redis_url or not scope.startswith("postgresql") else \
            "postgresql://" + scope.split("://", 1)[1]
        self.pg_channel = "haoqing_staff_" + hashlib.sha256(scope.encode()).hexdigest()[:16]
        self._pg: Any = None
        # Workers that share a database share a channel; anything else on the same Redis stays apart.
        self.channel = "haoqing:staff:" + hashlib.sha256(scope.encode()).hexdigest()[:16]
        self._subscribers: set[asyncio.Queue[dict[str, Any]]] = set()
        self._redis: Any = None
        self._subscriber: Any = None
        self._listener: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    async def start(self) -> None:
        if self.postgres_dsn and self._listener is None:
            self._listener = asyncio.create_task(self._listen_postgres())
            try:
                await asyncio.wait_for(self._ready.wait(), STARTUP_WAIT_SECONDS)
            except TimeoutError:
                log.warning("staff live: PostgreSQL LISTEN not ready; consoles see this worker's events for now")
            return
        if not self.redis_url or self._listener is not None:
            self._ready.set()
            return
        import redis.asyncio as redis

        # Short timeouts: with Redis down, a staff action falls back to this worker's consoles at once.
        self._redis = redis.from_url(self.redis_url, socket_connect_timeout=2, socket_timeout=2)
        self._subscriber = redis.from_url(self.redis_url, socket_connect_timeout=2)
        self._listener = asyncio.create_task(self._listen())
        try:
            await asyncio.wait_for(self._ready.wait(), STARTUP_WAIT_SECONDS)
        except TimeoutError:
            # Redis holds nothing that cannot be lost: serve, and subscribe when it comes back.
            log.warning("staff live: Redis unreachable; consoles see this worker's events until it is back")

    async def _listen(self) -> None:
        subscribed_before = False
        backoff = 1.0
        while True:
            stop_requested()
            pubsub = self._subscriber.pubsub()
            try:
                await pubsub.subscribe(self.channel)
                self._ready.set()
                if subscribed_before:
                    # Events published while we were away are lost: consoles reload what they show.
                    self._fan_out({"type": "resync"})
                subscribed_before = True
                backoff = 1.0
                async for message in pubsub.listen():
                    if message.get("type") != "message":
                        continue
                    try:
                        self._fan_out(json.loads(message["data"]))
                    except (ValueError, TypeError):
                        log.warning("staff live: unreadable event on the channel")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("staff live: Redis subscription lost; retrying", extra={"error": type(exc).__name__,
                                                                                    "retry_seconds": backoff})
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    async def _listen_postgres(self) -> None:
        import asyncpg

        def heard(_connection: Any, _pid: int, _channel: str, payload: str) -> None:
            try:
                self._fan_out(json.loads(payload))
            except (ValueError, TypeError):
                log.warning("staff live: unreadable event on the channel")

        listened_before = False
        backoff = 1.0
        while True:
            stop_requested()
            try:
                lost = asyncio.Event()
                self._pg = await asyncpg.connect(self.postgres_dsn, timeout=5)
                self._pg.add_termination_listener(lambda _connection, lost=lost: lost.set())
                await self._pg.add_listener(self.pg_channel, heard)
                self._ready.set()
                if listened_before:
                    self._fan_out({"type": "resync"})
                listened_before, backoff = True, 1.0
                await lost.wait()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("staff live: PostgreSQL LISTEN lost; retrying", extra={"error": type(exc).__name__,
                                                                                   "retry_seconds": backoff})
            finally:
                connection, self._pg = self._pg, None
                if connection is not None:
                    with contextlib.suppress(Exception):
                        await connection.close()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 30.0)

    async def publish(self, event: dict[str, Any]) -> None:
        if self._pg is not None and not self._pg.is_closed():
            try:
                # Delivered to every listening worker, this one included (its listener fans out).
                await self._pg.execute("SELECT pg_notify($1, $2)", self.pg_channel, json.dumps(event))
                return
            except Exception as exc:
                log.warning("staff live: NOTIFY failed; delivering locally", extra={"error": type(exc).__name__})
        if self._redis is not None:
            try:
                await self._redis.publish(self.channel, json.dumps(event))
                return
            except Exception as exc:
                # Consoles on this worker still hear it; the others resync when their subscription is back.
                log.warning("staff live: Redis publish failed; delivering locally",
                            extra={"error": type(exc).__name__})
        self._fan_out(event)

    def _fan_out(self, event: dict[str, Any]) -> None:
        for queue in list(self._subscribers):
            if queue.full():
                # A console that stopped reading gets a resync marker instead of an unbounded backlog.
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
                queue.put_nowait({"type": "resync"})
                continue
            queue.put_nowait(event)

    @contextlib.asynccontextmanager
    async def subscribe(self) -> AsyncIterator[asyncio.Queue[dict[str, Any]]]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(QUEUE_LIMIT)
        self._subscribers.add(queue)
        try:
            yield queue
        finally:
            self._subscribers.discard(queue)

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(BaseException):
                await self._listener
            self._listener = None
        for client in (self._redis, self._subscriber):
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.aclose()
        self._redis = self._subscriber = None
