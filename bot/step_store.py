"""The hot path's storage: the few reads and writes one conversation step needs, in as few round trips
as the database allows.

On SQLite one writer thread owns a connection and commits queued work in groups: a step costs two thread
hops and shares its commit with every step queued beside it. On PostgreSQL a raw asyncpg pool runs each
operation as one statement, so one round trip and one transaction: the inbox row (with the conversation read),
then the new state, the sequence numbers, the replies and the inbox answer together. SQLAlchemy's async layer
cost about 7 ms of CPU and some 20 round trips per step there (pool pre-ping, BEGIN/COMMIT, a greenlet per
call); this path costs a fraction of a millisecond and 3 round trips. Either way the inbox row is committed
before the step runs, and the new state, the replies and the inbox answer commit together.
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

from sqlalchemy import text

from bot import jsoncodec
from bot.storage import SQLITE_PRAGMAS, Database, sqlite_time, utcnow

log = logging.getLogger(__name__)

T = TypeVar("T")


class ConflictError(RuntimeError):
    """Another worker changed this conversation meanwhile; the delivery is retried."""


@dataclass(frozen=True)
class UserRef:
    id: int
    lang: str
    active: bool


@dataclass(frozen=True)
class Begin:
    inbox_id: int | None
    # The first answer, when this delivery was handled before.
    answer: list[dict[str, Any]] | None
    state: str
    data: str
    version: int | None  # None: no conversation yet


class StepStore(Protocol):
    async def resolve_user(self, channel: str, external_id: str, lang: str, create: bool,
                           sealed: str | None = None) -> UserRef | None: ...

    async def begin(self, user_id: int, channel: str, dedupe_key: str | None, lang: str) -> Begin: ...

    async def commit(self, user_id: int, version: int | None, state: str, data: str,
                     payloads: list[dict[str, Any]], inbox_id: int | None, channel: str, lang: str | None,
                     reminders: bool) -> None: ...

    async def messages_after(self, user_id: int, after: int, limit: int) -> list[str]: ...

    async def last_seen(self, channel: str, external_id: str) -> tuple[int, datetime] | None: ...

    def user_lock(self, user_id: int, space: int = 0) -> AbstractAsyncContextManager[None]:
        """Serialises one user's steps across workers: the same advisory lock as `Database.user_lock` (they
        exclude each other), on this store's own connections."""
        ...

    async def close(self) -> None: ...


# --- SQL shared by both implementations (plain SQL both dialects accept) ---
_SELECT_USER = "SELECT id, lang, active FROM users WHERE channel = :channel AND external_id = :external_id"
_INSERT_USER = (
    "INSERT INTO users (channel, external_id, external_enc, lang, active, reminders_on, created_at, last_seen_at, "
    "next_seq) VALUES (:channel, :external_id, :external_enc, :lang, :true, :true, :now, :now, 1) "
    "ON CONFLICT DO NOTHING RETURNING id, lang, active"
)
# The inbox row and the conversation the step starts from, in one statement: a hot path pays per statement.
_INSERT_INBOX = (
    "INSERT INTO inbox (channel, dedupe_key, user_id, status, received_at) "
    "VALUES (:channel, :key, :user_id, 'received', :now) ON CONFLICT DO NOTHING RETURNING id, "
    "(SELECT state FROM conversations WHERE user_id = :user_id), "
    "(SELECT data FROM conversations WHERE user_id = :user_id), "
    "(SELECT version FROM conversations WHERE user_id = :user_id)"
)
_SELECT_INBOX = "SELECT id, user_id, status, response FROM inbox WHERE channel = :channel AND dedupe_key = :key"
_SELECT_CONV = "SELECT state, data, version FROM conversations WHERE user_id = :user_id"
_INSERT_CONV = (
    "INSERT INTO conversations (user_id, state, data, version, updated_at) "
    "VALUES (:user_id, :state, :data, 1, :now) ON CONFLICT DO NOTHING"
)
_UPDATE_CONV = (
    "UPDATE conversations SET state = :state, data = :data, version = version + 1, updated_at = :now "
    "WHERE user_id = :user_id AND version = :version"
)
_RESERVE_SEQ = (
    "UPDATE users SET next_seq = next_seq + :count, last_seen_at = :now, lang = COALESCE(:lang, lang), "
    "reminders_on = :reminders WHERE id = :user_id RETURNING next_seq"
)
# Pushes (reminders, status changes, staff replies) reserve their numbers from the same counter, with the same
# statement style, so a push and a reply can never take the same sequence number.
RESERVE_PUSH_SEQ = "UPDATE users SET next_seq = next_seq + :count WHERE id = :user_id RETURNING next_seq"
_INSERT_OUTBOX = (
    "INSERT INTO outbox (user_id, channel, seq, inbox_id, kind, payload, status, attempts, created_at, sent_at) "
    "VALUES (:user_id, :channel, :seq, :inbox_id, 'reply', :payload, 'sent', 0, :now, :now)"
)
_ANSWER_INBOX = "UPDATE inbox SET status = 'done', done_at = :now, response = :response WHERE id = :id"
# Read on every web chat request (is the session alive, and not idle too long?): on the step store's own
# connection, not the ORM's, so it costs what a step's reads cost.
_SELECT_SEEN = "SELECT id, last_seen_at FROM users WHERE channel = :channel AND external_id = :external_id"
_MESSAGES_AFTER = (
    "SELECT payload FROM outbox WHERE user_id = :user_id AND seq > :after ORDER BY seq LIMIT :limit"
)


def _moment(value: Any) -> datetime:
    """A stored time as an aware UTC datetime (SQLite hands back text, PostgreSQL a datetime)."""
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


class _Tx(Protocol):
    def one(self, sql: str, params: dict[str, Any]) -> tuple[Any, ...] | None: ...

    def all(self, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]: ...

    def run(self, sql: str, params: dict[str, Any]) -> int: ...


def _resolve_user(tx: _Tx, channel: str, external_id: str, lang: str, create: bool, now: Any,
                  sealed: str | None) -> UserRef | None:
    params = {"channel": channel, "external_id": external_id}
    row = tx.one(_SELECT_USER, params)
    if row is None and create:
        row = tx.one(_INSERT_USER, {**params, "external_enc": sealed, "lang": lang, "true": True, "now": now})
        if row is None:  # created meanwhile by another connection
            row = tx.one(_SELECT_USER, params)
    return None if row is None else UserRef(int(row[0]), str(row[1]), bool(row[2]))


def _begin(tx: _Tx, user_id: int, channel: str, key: str | None, now: Any, lang: str) -> Begin:
    inbox_id: int | None = None
    if key is not None:
        inserted = tx.one(_INSERT_INBOX, {"channel": channel, "key": key, "user_id": user_id, "now": now})
        if inserted is not None:
            return _begun(int(inserted[0]), None if inserted[3] is None else inserted[1:], lang)
        existing = tx.one(_SELECT_INBOX, {"channel": channel, "key": key})
        assert existing is not None
        if int(existing[1]) == user_id:
            inbox_id = int(existing[0])
            if existing[2] == "done":
                return Begin(inbox_id, jsoncodec.loads(existing[3] or "[]"), "", "", None)
        # Another user's delivery id: never replay their answer, and process this one undeduplicated.
    return _begun(inbox_id, tx.one(_SELECT_CONV, {"user_id": user_id}), lang)


def _commit(tx: _Tx, user_id: int, version: int | None, state: str, data: str, payloads: list[dict[str, Any]],
            inbox_id: int | None, channel: str, lang: str | None, reminders: bool, now: Any) -> None:
    params = {"user_id": user_id, "state": state, "data": data, "now": now, "version": version}
    changed = tx.run(_INSERT_CONV if version is None else _UPDATE_CONV, params)
    if changed != 1:
        raise ConflictError(f"conversation of user {user_id} changed meanwhile")
    row = tx.one(_RESERVE_SEQ, {"count": len(payloads), "now": now, "lang": lang, "reminders": reminders,
                                "user_id": user_id})
    assert row is not None
    first = int(row[0]) - len(payloads)
    encoded: list[str] = []
    for offset, payload in enumerate(payloads):
        payload["seq"] = first + offset
        encoded.append(jsoncodec.dumps_str(payload))
        tx.run(_INSERT_OUTBOX, {"user_id": user_id, "channel": channel, "seq": first + offset, "inbox_id": inbox_id,
                                "payload": encoded[-1], "now": now})
    if inbox_id is not None:
        # The replies as encoded for the outbox, spliced: what jsoncodec.dumps_str(payloads) writes, without encoding
        # twice.
        tx.run(_ANSWER_INBOX, {"now": now, "response": "[" + ",".join(encoded) + "]", "id": inbox_id})


class _SqliteTx:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def one(self, sql: str, params: dict[str, Any]) -> tuple[Any, ...] | None:
        row: tuple[Any, ...] | None = self.conn.execute(sql, params).fetchone()
        return row

    def all(self, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        return list(self.conn.execute(sql, params).fetchall())

    def run(self, sql: str, params: dict[str, Any]) -> int:
        return self.conn.execute(sql, params).rowcount


@dataclass
class _Work:
    fn: Callable[[_SqliteTx], Any]
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop
    write: bool


class SqliteStepStore:
    """One thread, one connection, group commit: queued units run in one transaction (bare, and again with a
    savepoint each only when one of them fails), and their outcomes reach the event loop in one wake-up."""

    MAX_BATCH = 256

    def __init__(self, path: str) -> None:
        self.path = path
        self._queue: queue.SimpleQueue[_Work | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name="sqlite-step-store", daemon=True)
        self._ready = threading.Event()
        # Outcomes settled by the writer thread, per event loop, not yet handed to it (see _run_batch).
        self._settled: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], bool, Any]]] = {}
        self._settled_lock = threading.Lock()
        self._thread.start()
        self._ready.wait()

    def _serve(self) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None, timeout=30)
        for pragma in SQLITE_PRAGMAS:
            conn.execute(pragma)
        tx = _SqliteTx(conn)
        self._ready.set()
        while True:
            first = self._queue.get()
            if first is None:
                break
            batch = [first]
            while len(batch) < self.MAX_BATCH:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._queue.put(None)
                    break
                batch.append(item)
            self._run_batch(conn, tx, batch)
        conn.close()

    def _run_batch(self, conn: sqlite3.Connection, tx: _SqliteTx, batch: list[_Work]) -> None:
        try:
            # Most batches have no failing unit: run them bare, and only when one raises roll back and run the batch
            # again with a savepoint per unit, so that one unit's failure does not undo its neighbours. A unit is a
            # function of the database alone (its inputs are fixed when it is queued), so running it twice is safe.
            results = self._attempt(conn, tx, batch, savepoints=False)
            if results is None:
                results = self._attempt(conn, tx, batch, savepoints=True)
        except Exception as exc:
            log.exception("sqlite step store batch failed")
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            results = [(work, False, exc) for work in batch]
        assert results is not None
        # At most one wake-up of a loop outstanding: each call_soon_threadsafe writes to the loop's self-pipe (a
        # system call, and a wake of the loop's thread), so outcomes wait in `_settled` for the wake-up already
        # on its way, if there is one, rather than each unit or batch sending its own.
        wake: list[asyncio.AbstractEventLoop] = []
        with self._settled_lock:
            for work, ok, value in results:
                waiting = self._settled.get(work.loop)
                if waiting is None:
                    waiting = self._settled[work.loop] = []
                    wake.append(work.loop)
                waiting.append((work.future, ok, value))
        for loop in wake:
            try:
                loop.call_soon_threadsafe(self._deliver, loop)
            except RuntimeError:  # that loop has closed: nobody is left to wait for these outcomes
                with self._settled_lock:
                    self._settled.pop(loop, None)

    def _deliver(self, loop: asyncio.AbstractEventLoop) -> None:
        """On `loop`: settles every outcome that arrived for it since its wake-up was sent."""
        with self._settled_lock:
            outcomes = self._settled.pop(loop, [])
        for future, ok, value in outcomes:
            _settle(future, ok, value)

    @staticmethod
    def _attempt(conn: sqlite3.Connection, tx: _SqliteTx, batch: list[_Work],
                 savepoints: bool) -> list[tuple[_Work, bool, Any]] | None:
        """Runs `batch` in one transaction. Bare (no savepoints), a unit's exception rolls everything back and
        None comes back; with savepoints, the failing unit alone is undone and its exception is its result."""
        results: list[tuple[_Work, bool, Any]] = []
        conn.execute("BEGIN IMMEDIATE" if any(w.write for w in batch) else "BEGIN")
        for work in batch:
            if not savepoints:
                try:
                    value = work.fn(tx)
                except Exception:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    return None
                results.append((work, True, value))
                continue
            conn.execute("SAVEPOINT unit")
            try:
                value = work.fn(tx)
            except Exception as exc:  # one unit's failure must not undo its neighbours
                conn.execute("ROLLBACK TO unit")
                conn.execute("RELEASE unit")
                results.append((work, False, exc))
            else:
                conn.execute("RELEASE unit")
                results.append((work, True, value))
        conn.execute("COMMIT")
        return results

    async def _submit(self, fn: Callable[[_SqliteTx], T], write: bool = True) -> T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.put(_Work(fn, future, loop, write))
        return await future

    async def resolve_user(self, channel: str, external_id: str, lang: str, create: bool,
                           sealed: str | None = None) -> UserRef | None:
        now = sqlite_time(utcnow())
        return await self._submit(lambda tx: _resolve_user(tx, channel, external_id, lang, create, now, sealed), create)

    async def begin(self, user_id: int, channel: str, dedupe_key: str | None, lang: str) -> Begin:
        now = sqlite_time(utcnow())
        return await self._submit(lambda tx: _begin(tx, user_id, channel, dedupe_key, now, lang),
                                  dedupe_key is not None)

    async def commit(self, user_id: int, version: int | None, state: str, data: str,
                     payloads: list[dict[str, Any]], inbox_id: int | None, channel: str, lang: str | None,
                     reminders: bool) -> None:
        now = sqlite_time(utcnow())
        await self._submit(lambda tx: _commit(tx, user_id, version, state, data, payloads, inbox_id, channel, lang,
                                              reminders, now))

    async def messages_after(self, user_id: int, after: int, limit: int) -> list[str]:
        rows = await self._submit(lambda tx: tx.all(_MESSAGES_AFTER, {"user_id": user_id, "after": after,
                                                                      "limit": limit}), write=False)
        return [str(row[0]) for row in rows]

    async def last_seen(self, channel: str, external_id: str) -> tuple[int, datetime] | None:
        row = await self._submit(lambda tx: tx.one(_SELECT_SEEN, {"channel": channel, "external_id": external_id}),
                                 write=False)
        return None if row is None else (int(row[0]), _moment(row[1]))

    def user_lock(self, user_id: int, space: int = 0) -> AbstractAsyncContextManager[None]:
        return _NO_LOCK  # one process on SQLite: the in-process KeyedLocks are the whole story

    async def close(self) -> None:
        self._queue.put(None)
        await asyncio.to_thread(self._thread.join, 10)


class _NoLock:
    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc: object) -> None:
        return None


_NO_LOCK = _NoLock()


def _settle(future: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if future.cancelled():
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)


class _SyncConnTx:
    """The same operations on a SQLAlchemy connection, run inside `run_sync` (one greenlet hop per unit)."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def one(self, sql: str, params: dict[str, Any]) -> tuple[Any, ...] | None:
        row = self.conn.execute(text(sql), params).first()
        return None if row is None else tuple(row)

    def all(self, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        return [tuple(row) for row in self.conn.execute(text(sql), params).all()]

    def run(self, sql: str, params: dict[str, Any]) -> int:
        return int(self.conn.execute(text(sql), params).rowcount)


class SqlAlchemyStepStore:
    """PostgreSQL (or any SQLAlchemy database): each unit is one transaction."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def _unit(self, fn: Callable[[_SyncConnTx], T]) -> T:
        async with self.db.engine.begin() as conn:
            return await conn.run_sync(lambda sync: fn(_SyncConnTx(sync)))

    async def _read(self, fn: Callable[[_SyncConnTx], T]) -> T:
        """One statement that only reads: autocommit, so no BEGIN and COMMIT round trips around it."""
        async with self.db.engine.connect() as conn:
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            return await conn.run_sync(lambda sync: fn(_SyncConnTx(sync)))

    async def resolve_user(self, channel: str, external_id: str, lang: str, create: bool,
                           sealed: str | None = None) -> UserRef | None:
        now = datetime.now(UTC)
        return await self._unit(lambda tx: _resolve_user(tx, channel, external_id, lang, create, now, sealed))

    async def begin(self, user_id: int, channel: str, dedupe_key: str | None, lang: str) -> Begin:
        now = datetime.now(UTC)
        return await self._unit(lambda tx: _begin(tx, user_id, channel, dedupe_key, now, lang))

    async def commit(self, user_id: int, version: int | None, state: str, data: str,
                     payloads: list[dict[str, Any]], inbox_id: int | None, channel: str, lang: str | None,
                     reminders: bool) -> None:
        now = datetime.now(UTC)
        await self._unit(lambda tx: _commit(tx, user_id, version, state, data, payloads, inbox_id, channel, lang,
                                            reminders, now))

    async def messages_after(self, user_id: int, after: int, limit: int) -> list[str]:
        rows = await self._unit(lambda tx: tx.all(_MESSAGES_AFTER, {"user_id": user_id, "after": after,
                                                                    "limit": limit}))
        return [str(row[0]) for row in rows]

    async def last_seen(self, channel: str, external_id: str) -> tuple[int, datetime] | None:
        row = await self._read(lambda tx: tx.one(_SELECT_SEEN, {"channel": channel, "external_id": external_id}))
        return None if row is None else (int(row[0]), _moment(row[1]))

    def user_lock(self, user_id: int, space: int = 0) -> AbstractAsyncContextManager[None]:
        return self.db.user_lock(user_id, space)

    async def close(self) -> None:
        return None


# --- PostgreSQL through asyncpg: one statement per operation --------------------------------------------------
_PG_SELECT_USER = "SELECT id, lang, active FROM users WHERE channel = $1 AND external_id = $2"
_PG_INSERT_USER = (
    "INSERT INTO users (channel, external_id, external_enc, lang, active, reminders_on, created_at, last_seen_at, "
    "next_seq) VALUES ($1, $2, $3, $4, true, true, $5, $5, 1) ON CONFLICT DO NOTHING RETURNING id, lang, active"
)
# The inbox row and the conversation in one statement (its own transaction): the row commits before the step.
_PG_BEGIN = """
WITH ins AS (
    INSERT INTO inbox (channel, dedupe_key, user_id, status, received_at)
    VALUES ($1, $2, $3, 'received', $4) ON CONFLICT DO NOTHING RETURNING id)
SELECT (SELECT id FROM ins), c.state, c.data, c.version
FROM (SELECT 1) AS one LEFT JOIN conversations AS c ON c.user_id = $3
"""
_PG_SELECT_INBOX = "SELECT id, user_id, status, response FROM inbox WHERE channel = $1 AND dedupe_key = $2"
_PG_SELECT_CONV = "SELECT state, data, version FROM conversations WHERE user_id = $1"
# The whole commit in one statement: the conversation (only at the version the step read), the sequence
# numbers, the replies and the inbox answer, or nothing at all when the version moved. Each stored payload gets
# its number spliced in front ({"seq": N, ...}), so the JSON is built once, in Python, and never re-encoded.
_PG_STEP_TAIL = """
, seq AS (
    UPDATE users SET next_seq = next_seq + $6, last_seen_at = $4, lang = COALESCE($7, lang), reminders_on = $8
    WHERE id = (SELECT user_id FROM conv) RETURNING next_seq - $6 AS first
), rows AS (
    SELECT seq.first + p.ord - 1 AS n,
           CASE WHEN p.body = '{}' THEN '{"seq": ' || (seq.first + p.ord - 1) || '}'
                ELSE '{"seq": ' || (seq.first + p.ord - 1) || ', ' || substr(p.body, 2) END AS payload
    FROM seq, unnest($9::text[]) WITH ORDINALITY AS p(body, ord)
), out AS (
    INSERT INTO outbox (user_id, channel, seq, inbox_id, kind, payload, status, attempts, created_at, sent_at)
    SELECT $1, $10, n, $11, 'reply', payload, 'sent', 0, $4, $4 FROM rows
), answer AS (
    UPDATE inbox SET status = 'done', done_at = $4,
        response = (SELECT '[' || COALESCE(string_agg(payload, ', ' ORDER BY n), '') || ']' FROM rows)
    WHERE id = $11 AND EXISTS (SELECT 1 FROM seq)
)
SELECT first FROM seq
"""
_PG_COMMIT_UPDATE = """
WITH conv AS (
    UPDATE conversations SET state = $2, data = $3, version = version + 1, updated_at = $4
    WHERE user_id = $1 AND version = $5 RETURNING user_id)
""" + _PG_STEP_TAIL  # noqa: S608 (constants only: every value is a $n parameter)
_PG_COMMIT_INSERT = """
WITH conv AS (
    INSERT INTO conversations (user_id, state, data, version, updated_at)
    SELECT $1, $2, $3, 1, $4 WHERE $5::integer IS NULL ON CONFLICT DO NOTHING RETURNING user_id)
""" + _PG_STEP_TAIL
_PG_SEEN = "SELECT id, last_seen_at FROM users WHERE channel = $1 AND external_id = $2"
_PG_MESSAGES_AFTER = "SELECT payload FROM outbox WHERE user_id = $1 AND seq > $2 ORDER BY seq LIMIT $3"

# One pool per worker for the step's statements and the advisory locks; at most PG_LOCK_SLOTS of its connections
# hold a lock (and wait out a step), so statements always find one free. Small on purpose: every worker also has
# the ORM's pool (bot/storage.py), and PostgreSQL's max_connections (100 by default) is shared by all of them.
# Idle connections close after PG_IDLE_SECONDS.
PG_POOL_SIZE, PG_LOCK_SLOTS, PG_IDLE_SECONDS = 8, 6, 10.0
_PG_LOCK = ("SELECT pg_advisory_lock($1)", "SELECT pg_advisory_unlock($1)")
_PG_LOCK2 = ("SELECT pg_advisory_lock($2, $1)", "SELECT pg_advisory_unlock($2, $1)")


async def _keep_session(_connection: Any) -> None:
    """Released connections keep their session as it is: every operation here is one self-contained statement
    (an open transaction is still rolled back by asyncpg), so the default reset's round trip buys nothing."""


def asyncpg_dsn(url: str) -> str:
    """The asyncpg form of a `postgresql+asyncpg://` URL (query options such as sslmode pass through)."""
    from sqlalchemy.engine import make_url

    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


class AsyncpgStepStore:
    """PostgreSQL through a raw asyncpg pool: each operation is one statement, so one round trip and one
    transaction (autocommit), with asyncpg's per-connection prepared statements. Connections that break (a
    restart) are dropped by the pool and the error reaches the caller, which answers 503."""

    def __init__(self, url: str, *, size: int = PG_POOL_SIZE) -> None:
        self.dsn = asyncpg_dsn(url)
        self.size = size
        self._pool: Any = None
        self._opening: asyncio.Lock | None = None
        self._lock_slots = asyncio.Semaphore(min(PG_LOCK_SLOTS, max(1, size - 2)))

    async def _get_pool(self) -> Any:
        pool = self._pool
        if pool is not None:
            return pool
        import asyncpg

        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            if self._pool is None:
                # min_size 0: nothing connects until needed, so a database that is down fails a request (503),
                # never the start, and a connection lost in a restart is simply made again.
                self._pool = await asyncpg.create_pool(self.dsn, min_size=0, max_size=self.size,
                                                       reset=_keep_session, command_timeout=30,
                                                       max_inactive_connection_lifetime=PG_IDLE_SECONDS)
            return self._pool

    async def _fetchrow(self, sql: str, *args: Any) -> Any:
        pool = await self._get_pool()
        async with pool.acquire() as conn:
            return await conn.fetchrow(sql, *args)

    async def resolve_user(self, channel: str, external_id: str, lang: str, create: bool,
                           sealed: str | None = None) -> UserRef | None:
        row = await self._fetchrow(_PG_SELECT_USER, channel, external_id)
        if row is None and create:
            row = await self._fetchrow(_PG_INSERT_USER, channel, external_id, sealed, lang, utcnow())
            if row is None:  # another worker created it meanwhile
                row = await self._fetchrow(_PG_SELECT_USER, channel, external_id)
        return None if row is None else UserRef(int(row[0]), str(row[1]), bool(row[2]))

    async def begin(self, user_id: int, channel: str, dedupe_key: str | None, lang: str) -> Begin:
        if dedupe_key is None:
            conv = await self._fetchrow(_PG_SELECT_CONV, user_id)
            return _begun(None, conv, lang)
        pool = await self._get_pool()
        async with pool.acquire() as conn:
            for _attempt in range(3):
                row = await conn.fetchrow(_PG_BEGIN, channel, dedupe_key, user_id, utcnow())
                conv = None if row[3] is None else (row[1], row[2], row[3])
                if row[0] is not None:
                    return _begun(int(row[0]), conv, lang)
                existing = await conn.fetchrow(_PG_SELECT_INBOX, channel, dedupe_key)
                if existing is None:
                    continue  # deleted in between (retention): insert it again
                if int(existing[1]) != user_id:
                    # Another user's delivery id: never replay their answer, and process this one undeduplicated.
                    return _begun(None, conv, lang)
                if existing[2] == "done":
                    return Begin(int(existing[0]), jsoncodec.loads(existing[3] or "[]"), "", "", None)
                return _begun(int(existing[0]), conv, lang)
        raise ConflictError(f"inbox row of user {user_id} keeps disappearing")

    async def commit(self, user_id: int, version: int | None, state: str, data: str,
                     payloads: list[dict[str, Any]], inbox_id: int | None, channel: str, lang: str | None,
                     reminders: bool) -> None:
        bodies = [jsoncodec.dumps_str({k: v for k, v in payload.items() if k != "seq"})
                  for payload in payloads]
        row = await self._fetchrow(_PG_COMMIT_INSERT if version is None else _PG_COMMIT_UPDATE, user_id, state,
                                   data, utcnow(), version, len(payloads), lang, reminders, bodies, channel,
                                   inbox_id)
        if row is None:
            raise ConflictError(f"conversation of user {user_id} changed meanwhile")
        first = int(row[0])
        for offset, payload in enumerate(payloads):
            payload["seq"] = first + offset

    async def messages_after(self, user_id: int, after: int, limit: int) -> list[str]:
        pool = await self._get_pool()
        async with pool.acquire() as conn:
            rows = await conn.fetch(_PG_MESSAGES_AFTER, user_id, after, limit)
        return [str(row[0]) for row in rows]

    async def last_seen(self, channel: str, external_id: str) -> tuple[int, datetime] | None:
        row = await self._fetchrow(_PG_SEEN, channel, external_id)
        return None if row is None else (int(row[0]), _moment(row[1]))

    @asynccontextmanager
    async def user_lock(self, user_id: int, space: int = 0) -> AsyncIterator[None]:
        """A session-level advisory lock on a pooled connection, held while the step runs (two round trips).

        A connection whose unlock did not certainly happen (cancelled, broken) is closed: ending its session is
        what releases the lock then, so a lock can never stay behind on a pooled connection."""
        lock, unlock = _PG_LOCK2 if space else _PG_LOCK
        args = (user_id, space) if space else (user_id,)
        pool = await self._get_pool()
        async with self._lock_slots, pool.acquire() as conn:
            try:
                await conn.execute(lock, *args)
            except BaseException:
                conn.terminate()
                raise
            try:
                yield
            finally:
                try:
                    await conn.execute(unlock, *args)
                except BaseException:
                    conn.terminate()
                    raise

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), 5)
            except (TimeoutError, OSError):
                pool.terminate()


def _begun(inbox_id: int | None, conv: Any, lang: str) -> Begin:
    if conv is None:
        return Begin(inbox_id, None, "", json.dumps({"lang": lang}), None)
    return Begin(inbox_id, None, str(conv[0]), str(conv[1]), int(conv[2]))


def step_store_for(db: Database) -> StepStore:
    if db.is_sqlite:
        return SqliteStepStore(db.url.split("///", 1)[1])
    if db.url.startswith("postgresql+asyncpg"):
        return AsyncpgStepStore(db.url)
    return SqlAlchemyStepStore(db)
