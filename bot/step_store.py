"""The hot path's storage: the few reads and writes one conversation step needs, in as few round trips
as the database allows.

On SQLite the event loop's thread runs the work itself, in groups: what one pass of the loop submitted commits
together at the start of the next, so a step shares its commit with every step submitted beside it, and no
thread hop or GIL hand-over stands between a step and its rows. On PostgreSQL a raw asyncpg pool runs each
operation as one statement, so one round trip and one transaction: the inbox row (with the conversation read),
then the new state, the sequence numbers, the replies and the inbox answer together. SQLAlchemy's async layer
cost about 7 ms of CPU and some 20 round trips per step there (pool pre-ping, BEGIN/COMMIT, a greenlet per
call); this path costs a fraction of a millisecond and 3 round trips. Either way the inbox row is committed
before a step with effects runs, and the new state, the replies and the inbox answer commit together; a step
without effects commits with its inbox row (`begin_step`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

from sqlalchemy import text

from bot import jsoncodec
from bot.storage import SQLITE_BUSY_SECONDS, SQLITE_PRAGMAS, Database, sqlite_now, utcnow

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


@dataclass(slots=True)
class PureStep:
    """A step that ran without effects: what its commit writes, and the caller's own outcome passed through."""

    state: str
    data: str
    payloads: list[dict[str, Any]]  # as stored; the commit gives each its `seq`
    lang: str | None
    reminders: bool
    outcome: Any = None


# Runs the step from where `begin` left the conversation; None when it has effects to run first.
PureRun = Callable[[Begin], PureStep | None]


class StepStore(Protocol):
    async def resolve_user(self, channel: str, external_id: str, lang: str, create: bool,
                           sealed: str | None = None) -> UserRef | None: ...

    async def begin(self, user_id: int, channel: str, dedupe_key: str | None, lang: str) -> Begin: ...

    async def commit(self, user_id: int, version: int | None, state: str, data: str,
                     payloads: list[dict[str, Any]], inbox_id: int | None, channel: str, lang: str | None,
                     reminders: bool) -> None: ...

    async def begin_step(self, user_id: int, channel: str, dedupe_key: str | None, lang: str,
                         run: PureRun) -> tuple[Begin, PureStep | None]:
        """`begin`, then, for a delivery not seen before, `run`; when that needs no effect, its commit. With the
        PureStep back the step is done; without it (a replay, or effects to run) the caller goes on from Begin.
        SQLite does it all in one unit (one transaction, no second hand-over); a networked database in the two
        round trips it needs anyway."""
        ...

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


async def _begin_then_commit(store: StepStore, user_id: int, channel: str, dedupe_key: str | None, lang: str,
                             run: PureRun) -> tuple[Begin, PureStep | None]:
    begin = await store.begin(user_id, channel, dedupe_key, lang)
    if begin.answer is not None:
        return begin, None
    done = run(begin)
    if done is not None:
        await store.commit(user_id, begin.version, done.state, done.data, done.payloads, begin.inbox_id, channel,
                           done.lang, done.reminders)
    return begin, done


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


def _begin_step(tx: _Tx, user_id: int, channel: str, key: str | None, now: Any, lang: str,
                run: PureRun) -> tuple[Begin, PureStep | None]:
    begin = _begin(tx, user_id, channel, key, now, lang)
    if begin.answer is not None:
        return begin, None
    done = run(begin)
    if done is not None:
        _commit(tx, user_id, begin.version, done.state, done.data, done.payloads, begin.inbox_id, channel, done.lang,
                done.reminders, now)
    return begin, done


class _SqliteTx:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.now = ""  # the batch's time, as SQLite stores times: one clock reading for all its units

    def one(self, sql: str, params: dict[str, Any]) -> tuple[Any, ...] | None:
        row: tuple[Any, ...] | None = self.conn.execute(sql, params).fetchone()
        return row

    def all(self, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        return list(self.conn.execute(sql, params).fetchall())

    def run(self, sql: str, params: dict[str, Any]) -> int:
        return self.conn.execute(sql, params).rowcount


@dataclass(slots=True)
class _Work:
    fn: Callable[[_SqliteTx], Any]
    future: asyncio.Future[Any]
    write: bool


def _busy(exc: BaseException) -> bool:
    """SQLite refused for a lock another connection holds (SQLITE_BUSY, SQLITE_LOCKED): try again later."""
    return isinstance(exc, sqlite3.OperationalError) and getattr(exc, "sqlite_errorcode", None) in (
        sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


class _Lane:
    """One event loop's connection, and the units submitted on that loop since its last flush."""

    __slots__ = ("backoff", "batches", "busy_since", "conn", "pending", "scheduled", "tx")

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.tx = _SqliteTx(conn)
        self.pending: list[_Work] = []
        self.scheduled = False  # a flush is on the loop's schedule (next pass, or a retry's timer)
        self.busy_since: float | None = None  # when the pending batch first met another connection's lock
        self.backoff = 0.0
        self.batches = 0  # committed (or failed) batches, for the checkpointer's nudges and the tests


class _Checkpointer:
    """Passive WAL checkpoints on a thread of their own. A checkpoint fsyncs, so it must not run inside a commit
    on the event loop (SQLite's automatic checkpoint would); a passive one never blocks a writer or a reader."""

    def __init__(self, path: str, wal_bytes: int) -> None:
        self.path, self.wal_bytes = path, wal_bytes
        self.runs = 0
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None

    def nudge(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name="sqlite-checkpoint", daemon=True)
            self._thread.start()
        self._wake.set()

    def _serve(self) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None, timeout=SQLITE_BUSY_SECONDS)
        try:
            for pragma in SQLITE_PRAGMAS:
                conn.execute(pragma)
            while True:
                self._wake.wait()
                self._wake.clear()
                if self._stopping:
                    return
                try:
                    if os.path.getsize(self.path + "-wal") < self.wal_bytes:
                        continue
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    self.runs += 1
                except (OSError, sqlite3.Error):
                    log.warning("sqlite checkpoint skipped", exc_info=True)
        finally:
            conn.close()

    def stop(self) -> threading.Thread | None:
        self._stopping = True
        self._wake.set()
        return self._thread


class SqliteStepStore:
    """Group commit on the event loop's own thread: the units submitted while the loop runs one pass of its
    callbacks run together, in one transaction, at the start of the next pass (bare, and again with a savepoint
    each only when one of them fails), and their outcomes are settled right there.

    A step's SQL is a few indexed statements and a commit is a write to the WAL (synchronous=NORMAL: no fsync),
    so running it on the loop costs less than handing it to a thread. The writer thread this replaced paid a
    queue hand-over, a wake-up of the loop through its self-pipe and, above all, a GIL hand-over around every
    statement, which kept the loop waiting (bench/dispatch_path.py on uvloop: x1.12 to x1.24 updates per CPU second
    without it).
    What could stall the loop is kept off it:
    - a lock another connection holds (the ORM's, the broadcast engine's): this connection never waits inside
      SQLite (busy timeout 0); the batch is tried again on a timer, with backoff, for as long as the busy timeout
      every other connection has (SQLITE_BUSY_SECONDS), and the loop runs meanwhile;
    - the WAL checkpoint, which fsyncs: automatic checkpoints are off on this connection, and a thread runs
      passive ones as the WAL grows (_Checkpointer).
    Each event loop gets a connection of its own, so a store shared by two loops never interleaves their work.
    """

    MAX_BATCH = 256
    NUDGE_EVERY = 32  # batches between two looks at the WAL's size
    MAX_BACKOFF = 0.02

    def __init__(self, path: str, *, wal_bytes: int = 4 << 20) -> None:
        self.path = path
        self.busy_timeout: float = SQLITE_BUSY_SECONDS
        self._lanes: dict[asyncio.AbstractEventLoop, _Lane] = {}
        self._checkpointer = _Checkpointer(path, wal_bytes)
        self._closed = False

    def _lane(self, loop: asyncio.AbstractEventLoop) -> _Lane:
        if self._closed:
            raise RuntimeError("the step store is closed")
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        for pragma in SQLITE_PRAGMAS:
            conn.execute(pragma)
        conn.execute("PRAGMA busy_timeout=0")  # waits happen on the loop's timer instead (_flush)
        conn.execute("PRAGMA wal_autocheckpoint=0")  # checkpoints happen on the checkpointer's thread
        lane = self._lanes[loop] = _Lane(conn)
        return lane

    async def _submit(self, fn: Callable[[_SqliteTx], T], write: bool = True) -> T:
        loop = asyncio.get_running_loop()
        lane = self._lanes.get(loop) or self._lane(loop)
        future: asyncio.Future[T] = loop.create_future()
        lane.pending.append(_Work(fn, future, write))
        if not lane.scheduled:
            lane.scheduled = True
            loop.call_soon(self._flush, loop, lane)
        return await future

    def _flush(self, loop: asyncio.AbstractEventLoop, lane: _Lane) -> None:
        lane.scheduled = False
        if not lane.pending:
            return
        if self._closed:  # its connection is gone: whoever still waits is told, not left waiting
            failed, lane.pending = lane.pending, []
            for work in failed:
                _settle(work.future, False, RuntimeError("the step store is closed"))
            return
        if len(lane.pending) <= self.MAX_BATCH:
            batch, lane.pending = lane.pending, []
        else:
            batch, lane.pending = lane.pending[:self.MAX_BATCH], lane.pending[self.MAX_BATCH:]
        results = self._run_batch(lane, batch)
        if results is None:  # another connection holds the write lock
            lane.pending[:0] = batch
            now = loop.time()
            if lane.busy_since is None:
                lane.busy_since, lane.backoff = now, 0.0005
            elif now - lane.busy_since >= self.busy_timeout:
                # Locked for as long as any connection waits: everything queued fails, as a lock wait does.
                lane.busy_since = None
                failed, lane.pending = lane.pending, []
                error = sqlite3.OperationalError("database is locked")
                for work in failed:
                    _settle(work.future, False, error)
                return
            lane.scheduled = True
            loop.call_later(lane.backoff, self._flush, loop, lane)
            lane.backoff = min(lane.backoff * 2, self.MAX_BACKOFF)
            return
        lane.busy_since = None
        for work, ok, value in results:
            _settle(work.future, ok, value)
        lane.batches += 1
        if lane.batches % self.NUDGE_EVERY == 0:
            self._checkpointer.nudge()
        if lane.pending and not lane.scheduled:
            lane.scheduled = True
            loop.call_soon(self._flush, loop, lane)

    def _run_batch(self, lane: _Lane, batch: list[_Work]) -> list[tuple[_Work, bool, Any]] | None:
        """The batch's outcomes, or None when it must wait for another connection's lock. Most batches have no
        failing unit: they run bare, and only when one raises does the batch run again with a savepoint per unit,
        so that one unit's failure does not undo its neighbours. A unit is a function of the database alone (its
        inputs are fixed when it is queued), so running it twice is safe."""
        try:
            try:
                return self._attempt(lane.conn, lane.tx, batch, savepoints=False)
            except Exception as exc:
                if _busy(exc):
                    return None
            return self._attempt(lane.conn, lane.tx, batch, savepoints=True)
        except Exception as exc:
            if _busy(exc):
                return None
            log.exception("sqlite step store batch failed")
            return [(work, False, exc) for work in batch]

    @staticmethod
    def _attempt(conn: sqlite3.Connection, tx: _SqliteTx, batch: list[_Work],
                 savepoints: bool) -> list[tuple[_Work, bool, Any]]:
        """Runs `batch` in one transaction and commits it. Bare (no savepoints), a unit's exception rolls
        everything back and is raised; with savepoints, the failing unit alone is undone and its exception is its
        result. A lock another connection holds is raised either way."""
        results: list[tuple[_Work, bool, Any]] = []
        tx.now = sqlite_now()
        conn.execute("BEGIN IMMEDIATE" if any(w.write for w in batch) else "BEGIN")
        try:
            for work in batch:
                if not savepoints:
                    results.append((work, True, work.fn(tx)))
                    continue
                conn.execute("SAVEPOINT unit")
                try:
                    value = work.fn(tx)
                except Exception as exc:  # one unit's failure must not undo its neighbours
                    if _busy(exc):
                        raise
                    conn.execute("ROLLBACK TO unit")
                    conn.execute("RELEASE unit")
                    results.append((work, False, exc))
                else:
                    conn.execute("RELEASE unit")
                    results.append((work, True, value))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return results

    async def resolve_user(self, channel: str, external_id: str, lang: str, create: bool,
                           sealed: str | None = None) -> UserRef | None:
        return await self._submit(
            lambda tx: _resolve_user(tx, channel, external_id, lang, create, tx.now, sealed), create)

    async def begin(self, user_id: int, channel: str, dedupe_key: str | None, lang: str) -> Begin:
        return await self._submit(lambda tx: _begin(tx, user_id, channel, dedupe_key, tx.now, lang),
                                  dedupe_key is not None)

    async def commit(self, user_id: int, version: int | None, state: str, data: str,
                     payloads: list[dict[str, Any]], inbox_id: int | None, channel: str, lang: str | None,
                     reminders: bool) -> None:
        await self._submit(lambda tx: _commit(tx, user_id, version, state, data, payloads, inbox_id, channel, lang,
                                              reminders, tx.now))

    async def begin_step(self, user_id: int, channel: str, dedupe_key: str | None, lang: str,
                         run: PureRun) -> tuple[Begin, PureStep | None]:
        # One unit: the inbox row, the step and its commit in one transaction, on the loop's thread. `run` is pure
        # (the conversation machine and rendering), so running it again (a neighbour's failure reruns the batch
        # with savepoints) is safe.
        return await self._submit(lambda tx: _begin_step(tx, user_id, channel, dedupe_key, tx.now, lang, run))

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
        """Lets this loop's queued units finish (a lock wait included, within its timeout), then closes every
        connection and stops the checkpointer."""
        loop = asyncio.get_running_loop()
        lane = self._lanes.get(loop)
        if lane is not None and lane.pending:
            await asyncio.wait([work.future for work in lane.pending])
        self._closed = True
        lanes, self._lanes = self._lanes, {}
        for other in lanes.values():
            other.conn.close()
        thread = self._checkpointer.stop()
        if thread is not None:
            await asyncio.to_thread(thread.join, 10)


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

    async def begin_step(self, user_id: int, channel: str, dedupe_key: str | None, lang: str,
                         run: PureRun) -> tuple[Begin, PureStep | None]:
        return await _begin_then_commit(self, user_id, channel, dedupe_key, lang, run)

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

    async def begin_step(self, user_id: int, channel: str, dedupe_key: str | None, lang: str,
                         run: PureRun) -> tuple[Begin, PureStep | None]:
        return await _begin_then_commit(self, user_id, channel, dedupe_key, lang, run)

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
        return Begin(inbox_id, None, "", jsoncodec.dumps_str({"lang": lang}), None)
    return Begin(inbox_id, None, str(conv[0]), str(conv[1]), int(conv[2]))


def step_store_for(db: Database) -> StepStore:
    if db.is_sqlite:
        return SqliteStepStore(db.url.split("///", 1)[1])
    if db.url.startswith("postgresql+asyncpg"):
        return AsyncpgStepStore(db.url)
    return SqlAlchemyStepStore(db)
