"""Tables and the database engine. Holds no plain phone or ID number: only keyed hashes,
masked forms and AES-GCM ciphertext (see bot/vault.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import BigInteger, Column, Index, Text, UniqueConstraint, event
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlmodel import Field, SQLModel
from sqlmodel.ext.asyncio.session import AsyncSession


def utcnow() -> datetime:
    return datetime.now(UTC)


def sqlite_time(moment: datetime) -> str:
    """The text form sqlmodel stores datetimes in on SQLite (naive UTC), for raw SQL that must match it."""
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")


def sqlite_now() -> str:
    """sqlite_time(utcnow()), for the hot path: an aware UTC time's ISO form is that text and "+00:00"."""
    return datetime.now(UTC).isoformat(sep=" ", timespec="microseconds")[:-6]


class User(SQLModel, table=True):
    __tablename__ = "users"
    __table_args__ = (UniqueConstraint("channel", "external_id"),)
    id: int | None = Field(default=None, primary_key=True)
    channel: str = Field(max_length=16)
    # Channel's own id (Telegram chat id, WeChat openid, or the hash of a web chat session token).
    external_id: str = Field(max_length=128)
    lang: str = Field(default="zh_CN", max_length=8)
    active: bool = True
    reminders_on: bool = True
    created_at: datetime = Field(default_factory=utcnow)
    last_seen_at: datetime = Field(default_factory=utcnow)
    # Next sequence number for messages to this user (web chat ?after=N).
    next_seq: int = 1
    # --- trust and identity (issue 11) ---
    # The person this channel identity verified as (invariant 7); cleared by /forget.
    person_id: int | None = Field(default=None, foreign_key="people.id", index=True)
    # Telegram chat id / WeChat openid sealed (external_id then holds its keyed hash); web sessions need none.
    external_enc: str | None = Field(default=None, max_length=256)


class Conversation(SQLModel, table=True):
    __tablename__ = "conversations"
    user_id: int = Field(primary_key=True, foreign_key="users.id")
    state: str = Field(default="", max_length=64)
    data: str = Field(default="{}", sa_column=Column(Text, nullable=False))
    # Optimistic concurrency: every step bumps it; a stale writer fails instead of overwriting.
    version: int = 0
    updated_at: datetime = Field(default_factory=utcnow)


class InboxItem(SQLModel, table=True):
    """One delivery from a channel; the unique key makes redelivery a no-op."""

    __tablename__ = "inbox"
    __table_args__ = (UniqueConstraint("channel", "dedupe_key"),)
    id: int | None = Field(default=None, primary_key=True)
    channel: str = Field(max_length=16)
    dedupe_key: str = Field(max_length=160)
    user_id: int = Field(foreign_key="users.id", index=True)
    status: str = Field(default="received", max_length=16)  # received | done
    received_at: datetime = Field(default_factory=utcnow)
    done_at: datetime | None = None
    # The rendered answer, so a repeated delivery gets the first answer again.
    response: str | None = Field(default=None, sa_column=Column(Text))


class OutboxMessage(SQLModel, table=True):
    """Every message to a user; channels with push senders pick up `pending` rows."""

    __tablename__ = "outbox"
    __table_args__ = (UniqueConstraint("user_id", "seq"), Index("ix_outbox_pending", "channel", "status"))
    id: int | None = Field(default=None, primary_key=True)
    user_id: int = Field(foreign_key="users.id")
    channel: str = Field(max_length=16)
    seq: int
    inbox_id: int | None = Field(default=None, foreign_key="inbox.id")
    kind: str = Field(default="reply", max_length=16)  # reply | push
    payload: str = Field(sa_column=Column(Text, nullable=False))
    status: str = Field(default="pending", max_length=16)  # pending | sent | failed
    attempts: int = 0
    created_at: datetime = Field(default_factory=utcnow)
    sent_at: datetime | None = None


class ConsentRecord(SQLModel, table=True):
    __tablename__ = "consents"
    id: int | None = Field(default=None, primary_key=True)
    user_id: int = Field(foreign_key="users.id", index=True)
    version: str = Field(max_length=32)
    accepted: bool
    at: datetime = Field(default_factory=utcnow)


class OtpChallenge(SQLModel, table=True):
    __tablename__ = "otp_challenges"
    id: int | None = Field(default=None, primary_key=True)
    user_id: int = Field(foreign_key="users.id", index=True)
    phone_hash: str = Field(max_length=64, index=True)
    phone_enc: str = Field(max_length=256)
    phone_masked: str = Field(max_length=16)
    salt: str = Field(max_length=32)
    code_hash: str = Field(max_length=64)
    created_at: datetime = Field(default_factory=utcnow, index=True)
    expires_at: datetime
    attempts: int = 0
    consumed_at: datetime | None = None
    void: bool = False
    # The effect delivery that sent this code: a replayed delivery gets this challenge, not a second SMS.
    delivery_key: str | None = Field(default=None, max_length=160, unique=True)


class Verification(SQLModel, table=True):
    __tablename__ = "verifications"
    id: int | None = Field(default=None, primary_key=True)
    user_id: int = Field(foreign_key="users.id", index=True)
    phone_hash: str = Field(max_length=64, index=True)
    phone_enc: str = Field(max_length=256)
    phone_masked: str = Field(max_length=16)
    method: str = Field(max_length=16)  # sms | contact
    verified_at: datetime = Field(default_factory=utcnow)


class PendingRealName(SQLModel, table=True):
    """The name between the two real-name messages, sealed; deleted once the ID is checked."""

    __tablename__ = "pending_real_names"
    user_id: int = Field(primary_key=True, foreign_key="users.id")
    name_enc: str = Field(max_length=512)
    created_at: datetime = Field(default_factory=utcnow)


class RealNameCheck(SQLModel, table=True):
    """A holder check: the ID only as a keyed hash plus a masked form; the name only masked."""

    __tablename__ = "real_name_checks"
    id: int | None = Field(default=None, primary_key=True)
    user_id: int = Field(foreign_key="users.id", index=True)
    verification_id: int = Field(index=True)
    id_hash: str = Field(max_length=64)
    id_masked: str = Field(max_length=32)
    name_masked: str = Field(max_length=64)
    matched: bool
    at: datetime = Field(default_factory=utcnow)


class UnbindRequestRow(SQLModel, table=True):
    """One unbind request, kept until done. The idempotency key makes resubmission after an outage safe."""

    __tablename__ = "unbind_requests"
    id: int | None = Field(default=None, primary_key=True)
    reference: str = Field(max_length=32, unique=True)
    # Null once the user deleted their data: the request still runs to completion, anonymised.
    user_id: int | None = Field(default=None, foreign_key="users.id", index=True)
    phone_hash: str = Field(max_length=64, index=True)
    # Needed only until the registry has the request; cleared after submission.
    phone_enc: str | None = Field(default=None, max_length=256)
    phone_masked: str = Field(max_length=16)
    platforms: str = Field(sa_column=Column(Text, nullable=False))  # JSON list of platform ids
    tenure_start: str = Field(max_length=10)
    idempotency_key: str = Field(max_length=64, unique=True)
    registry_id: str | None = Field(default=None, max_length=64, index=True)
    status: str = Field(default="queued", max_length=16)  # queued|submitted|processing|done|rejected|refused
    items: str = Field(default="[]", sa_column=Column(Text, nullable=False))  # JSON [{platform,status,reason}]
    due_date: str = Field(max_length=10)
    due_estimated: bool = False
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    attempts: int = 0
    # The person (number + tenure) it belongs to; null once they deleted their data.
    person_id: int | None = Field(default=None, foreign_key="people.id", index=True)
    # When the registry reported the status we hold (its signed callback time): older news is ignored.
    status_at: datetime | None = None


class UsageEvent(SQLModel, table=True):
    """Counts uses of rate-limited features (recycled-number checks) per user."""

    __tablename__ = "usage_events"
    id: int | None = Field(default=None, primary_key=True)
    user_id: int = Field(foreign_key="users.id", index=True)
    kind: str = Field(max_length=32)
    at: datetime = Field(default_factory=utcnow, index=True)


class Job(SQLModel, table=True):
    """A durable timed job. A claim sets a lease; a job whose worker died is taken over when the lease ends."""

    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_due", "status", "due_at"),)
    id: int | None = Field(default=None, primary_key=True)
    kind: str = Field(max_length=32)
    # Unique while it exists: scheduling the same key twice is a no-op (recurring jobs reuse their row).
    key: str = Field(max_length=128, unique=True)
    payload: str = Field(default="{}", sa_column=Column(Text, nullable=False))
    due_at: datetime
    status: str = Field(default="pending", max_length=16)  # pending | running | done | failed | cancelled
    lease_until: datetime | None = None
    locked_by: str | None = Field(default=None, max_length=64)
    attempts: int = 0
    last_error: str | None = Field(default=None, max_length=500)
    created_at: datetime = Field(default_factory=utcnow)
    done_at: datetime | None = None


class Plan(SQLModel, table=True):
    """A pre-cancellation plan (注销前提醒) for the user's own number."""

    __tablename__ = "plans"
    id: int | None = Field(default=None, primary_key=True)
    user_id: int = Field(foreign_key="users.id", index=True)
    phone_hash: str = Field(max_length=64)
    phone_enc: str = Field(max_length=256)
    phone_masked: str = Field(max_length=16)
    target_date: str = Field(max_length=10)
    status: str = Field(default="active", max_length=16)  # active | cancelled | finished
    created_at: datetime = Field(default_factory=utcnow)
    person_id: int | None = Field(default=None, foreign_key="people.id", index=True)


class PlanItem(SQLModel, table=True):
    __tablename__ = "plan_items"
    id: int | None = Field(default=None, primary_key=True)
    plan_id: int = Field(foreign_key="plans.id", index=True)
    position: int
    # A platform bound in the user's own tenure, or a task from the police checklist.
    platform: str | None = Field(default=None, max_length=32)
    task: str | None = Field(default=None, max_length=32)
    name_zh: str = Field(default="", max_length=64)
    name_en: str = Field(default="", max_length=64)
    done_at: datetime | None = None
    snoozed_until: datetime | None = None


class WeChatAccessToken(SQLModel, table=True):
    """The official account's access token, shared by every worker; refreshed by one lease holder at a time."""

    __tablename__ = "wechat_access_tokens"
    app_id: str = Field(primary_key=True, max_length=64)
    token_enc: str | None = Field(default=None, max_length=1024)  # a credential: sealed like a phone number
    token_hash: str | None = Field(default=None, max_length=64)
    expires_at: float = 0.0  # epoch seconds
    lease_until: float | None = None
    lease_owner: str | None = Field(default=None, max_length=64)


# --- trust and identity (issue 11): the verified number is the person; abuse counters ---


class Person(SQLModel, table=True):
    """A verified number within one holder's tenure (invariant 7): a later holder has another tenure start,
    so another person. Holds only the number's keyed hash."""

    __tablename__ = "people"
    __table_args__ = (UniqueConstraint("phone_hash", "tenure_start"),)
    id: int | None = Field(default=None, primary_key=True)
    phone_hash: str = Field(max_length=64)
    tenure_start: str = Field(max_length=10)
    created_at: datetime = Field(default_factory=utcnow)
    last_seen_at: datetime = Field(default_factory=utcnow, index=True)


class TagStatement(SQLModel, table=True):
    """A number-tag statement the person filed, so they see it again from any session or channel."""

    __tablename__ = "tag_statements"
    id: int | None = Field(default=None, primary_key=True)
    person_id: int = Field(foreign_key="people.id", index=True)
    kind: str = Field(max_length=32)
    code: str = Field(max_length=32)
    phone_masked: str = Field(max_length=16)
    created_at: datetime = Field(default_factory=utcnow)


class AbuseCounter(SQLModel, table=True):
    """A rate-limit window (invariant 8): a security record /forget does not reset. The key holds only
    keyed hashes; the row is useless after `expires_at` and retention deletes it."""

    __tablename__ = "abuse_counters"
    key: str = Field(primary_key=True, max_length=128)
    count: int = 0
    expires_at: datetime = Field(index=True)


# --- staff handoff (issue 13): staff accounts, their sessions, tickets, transcripts and the audit log ---
class StaffAccount(SQLModel, table=True):
    """A support staff member; the password only as an argon2 hash."""

    __tablename__ = "staff_accounts"
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=64, unique=True)
    password_hash: str = Field(max_length=256)
    role: str = Field(default="staff", max_length=16)  # staff | admin
    active: bool = True
    created_at: datetime = Field(default_factory=utcnow)
    last_login_at: datetime | None = None
    # Their Telegram user id, so a reply in the staff group's topic is known to be theirs.
    telegram_user_id: int | None = Field(default=None, sa_column=Column(BigInteger, unique=True, nullable=True))


class StaffSession(SQLModel, table=True):
    """A console login; only the keyed hash of the cookie's token is stored."""

    __tablename__ = "staff_sessions"
    token_hash: str = Field(primary_key=True, max_length=64)
    staff_id: int = Field(foreign_key="staff_accounts.id", index=True)
    created_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime


class StaffLoginFailure(SQLModel, table=True):
    """A failed login, counted per account name and per client address for the rate limit."""

    __tablename__ = "staff_login_failures"
    id: int | None = Field(default=None, primary_key=True)
    name_key: str = Field(max_length=64, index=True)
    client: str = Field(max_length=64, index=True)
    at: datetime = Field(default_factory=utcnow, index=True)


class Ticket(SQLModel, table=True):
    """A user waiting for, or talking with, a staff member."""

    __tablename__ = "tickets"
    __table_args__ = (Index("ix_tickets_status", "status", "created_at"),)
    id: int | None = Field(default=None, primary_key=True)
    user_id: int = Field(foreign_key="users.id", index=True)
    channel: str = Field(max_length=16)
    status: str = Field(default="open", max_length=16)  # open | claimed | closed
    reason: str = Field(default="asked", max_length=16)  # asked | stuck
    claimed_by: int | None = Field(default=None, foreign_key="staff_accounts.id")
    created_at: datetime = Field(default_factory=utcnow)
    claimed_at: datetime | None = None
    closed_at: datetime | None = None
    close_reason: str | None = Field(default=None, max_length=16)  # staff | user | timeout | forget
    # The Telegram staff group's forum topic mirroring this ticket, when one is configured.
    staff_topic_id: int | None = None


class TicketMessage(SQLModel, table=True):
    """One line of a ticket's transcript; user text is stored scrubbed of phone and ID numbers."""

    __tablename__ = "ticket_messages"
    id: int | None = Field(default=None, primary_key=True)
    ticket_id: int = Field(foreign_key="tickets.id", index=True)
    author: str = Field(max_length=8)  # user | staff | bot
    staff_id: int | None = Field(default=None, foreign_key="staff_accounts.id")
    text: str = Field(sa_column=Column(Text, nullable=False))
    # The delivery that carried a user's message, so a replayed step does not add it twice.
    delivery_key: str | None = Field(default=None, max_length=160, unique=True)
    at: datetime = Field(default_factory=utcnow)


class StaffAudit(SQLModel, table=True):
    """Who read which ticket and who wrote what. Kept through /forget: it is the record of staff access."""

    __tablename__ = "staff_audit"
    id: int | None = Field(default=None, primary_key=True)
    staff_id: int | None = Field(default=None, index=True)
    staff_name: str = Field(max_length=64)
    action: str = Field(max_length=32)
    ticket_id: int | None = Field(default=None, index=True)
    detail: str = Field(default="", sa_column=Column(Text, nullable=False))
    client: str = Field(default="", max_length=64)
    at: datetime = Field(default_factory=utcnow, index=True)


# --- past one machine (issue 15): budgets every worker shares when there is no Redis ---
class SendBudget(SQLModel, table=True):
    """A channel's bot-wide send rate as a GCRA theoretical arrival time (unix seconds); see bot/budgets.py."""

    __tablename__ = "send_budgets"
    key: str = Field(primary_key=True, max_length=128)
    tat: float = 0.0




# --- past one machine (issue 15): WeChat customer-service sends, counted for every worker ---
class WeChatCsSend(SQLModel, table=True):
    """One customer-service message sent to a user: the window allowance (5 in 48 h after a message, 3 in a
    minute after a click) is counted from these rows, so every worker and a restart agree."""

    __tablename__ = "wechat_cs_sends"
    id: int | None = Field(default=None, primary_key=True)
    user_id: int = Field(index=True)
    sent_at: datetime = Field(default_factory=utcnow, index=True)

# --- core (issue 9): effects bound to their delivery ---
class EffectOutcome(SQLModel, table=True):
    """The first outcome of an acting effect, under its delivery's key (delivery, round, index): a replay of
    the step gets it back instead of acting again. Masked values only; kept a day, removed by /forget."""

    __tablename__ = "effect_outcomes"
    delivery_key: str = Field(primary_key=True, max_length=160)
    user_id: int | None = Field(default=None, index=True)
    kind: str = Field(max_length=32)
    result: str = Field(sa_column=Column(Text, nullable=False))
    at: datetime = Field(default_factory=utcnow, index=True)


# --- broadcasts (issue 14): reminders an admin sends to many users, one state row per recipient ---
class Broadcast(SQLModel, table=True):
    """One broadcast: its texts per language, its segment, and where it stands. The counts live in
    `broadcast_counts`; the recipients (fixed when it is created) in `broadcast_recipients`."""

    __tablename__ = "broadcasts"
    id: int | None = Field(default=None, primary_key=True)
    texts: str = Field(sa_column=Column(Text, nullable=False))  # JSON {lang: text}
    segment: str = Field(default="{}", sa_column=Column(Text, nullable=False))  # JSON
    status: str = Field(default="draft", max_length=16)  # draft | scheduled | running | paused | done | cancelled
    created_by: str = Field(default="", max_length=64)
    recipients: int = 0
    # Recipients per channel at creation, JSON {channel: n}.
    by_channel: str = Field(default="{}", sa_column=Column(Text, nullable=False))
    created_at: datetime = Field(default_factory=utcnow)
    scheduled_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    # The send rate as last measured: messages settled since `rate_mark_at` (`rate_mark_done` then).
    rate: float = 0.0
    rate_mark_at: datetime | None = None
    rate_mark_done: int = 0


class BroadcastRecipient(SQLModel, table=True):
    """One user's delivery of one broadcast: pending → sending (claimed, `claimed_at` the lease) → sent | failed
    | unreachable. A retry goes back to pending with `not_before`."""

    __tablename__ = "broadcast_recipients"
    __table_args__ = (UniqueConstraint("broadcast_id", "user_id"),
                      Index("ix_broadcast_recipients_todo", "broadcast_id", "channel", "status", "id"))
    id: int | None = Field(default=None, primary_key=True)
    broadcast_id: int = Field(foreign_key="broadcasts.id")
    user_id: int
    channel: str = Field(max_length=16)
    status: str = Field(default="pending", max_length=16)
    reason: str | None = Field(default=None, max_length=32)
    attempts: int = 0
    claim: str | None = Field(default=None, max_length=32)
    claimed_at: datetime | None = None
    not_before: datetime | None = None
    finished_at: datetime | None = None


class BroadcastCount(SQLModel, table=True):
    """Settled recipients by channel, outcome and reason: the progress figures and the CSV report, counted in
    the transaction that settles them."""

    __tablename__ = "broadcast_counts"
    broadcast_id: int = Field(primary_key=True, foreign_key="broadcasts.id")
    channel: str = Field(primary_key=True, max_length=16)
    outcome: str = Field(primary_key=True, max_length=16)
    reason: str = Field(default="", primary_key=True, max_length=32)
    count: int = 0


# PostgreSQL connections, per worker process. The hot path (a step: its user lock, inbox, conversation and outbox
# statements) runs on the step store's own asyncpg pool (bot/step_store.py, PG_POOL_SIZE = 8); this ORM pool
# serves the rest: effect runners inside a step (at most PG_LOCK_SLOTS = 6 steps run at once), the outbox senders
# and the broadcast engine, jobs, the staff console, the shared send budget without Redis, the WeChat token and
# customer-service locks. A worker opens at most POOL_SIZE + POOL_OVERFLOW here, PG_POOL_SIZE there, and one
# LISTEN connection for the staff console without Redis: 12 + 8 + 1 = 21. `serve --workers 4` so stays at 84,
# under PostgreSQL's default max_connections (100, 3 of them reserved for superusers) with room for migrations
# and an operator's psql; it was 20 + 8 + 1 = 29 a worker, 116 for four, which PostgreSQL refuses under load
# ("too many clients already"). More workers need max_connections raised (or a pooler such as PgBouncer).
# At most LOCK_SLOTS of these connections hold an advisory lock (the WeChat customer-service lock, which holds its
# connection through the API call), and a lock holder needs a second connection for its queries: half the pool
# stays free for everyone else, so locks can never starve the queries they wait for.
# When every connection is busy a session waits for one, up to POOL_TIMEOUT seconds; then SQLAlchemy's pool
# raises TimeoutError, which `storage_unavailable` counts as the database being unavailable: the channel gets a
# 503 and delivers again, rather than a 500 that Telegram's webhook counts towards giving the update up.
POOL_SIZE, POOL_OVERFLOW, POOL_TIMEOUT = 6, 6, 30.0
LOCK_SLOTS = 6


class Database:
    """The engine plus a session factory; SQLite gets WAL, a busy timeout and a single writer."""

    def __init__(self, url: str, *, echo: bool = False, pool_size: int = POOL_SIZE,
                 max_overflow: int = POOL_OVERFLOW, pool_timeout: float = POOL_TIMEOUT) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        kwargs: dict[str, Any] = {"echo": echo}
        if self.is_sqlite:
            # One connection: SQLite has one writer anyway, and this avoids SQLITE_BUSY upgrade deadlocks.
            kwargs.update(pool_size=1, max_overflow=0, connect_args={"timeout": 30})
        else:
            kwargs.update(pool_size=pool_size, max_overflow=max_overflow, pool_timeout=pool_timeout,
                          pool_pre_ping=True)
        self.engine: AsyncEngine = create_async_engine(url, **kwargs)
        # A per-user advisory lock holds a pooled connection for the whole time, and its holder needs others to
        # do its work: without a cap, a burst of distinct users takes every connection for locks and the work
        # inside them waits for the pool until it times out. At most this many locks are held (or awaited) at once,
        # never more than half the pool.
        self._lock_slots = asyncio.Semaphore(max(1, min(LOCK_SLOTS, (pool_size + max_overflow) // 2)))
        if self.is_sqlite:
            event.listen(self.engine.sync_engine, "connect", apply_sqlite_pragmas)
        self._sessions = async_sessionmaker(self.engine, class_=AsyncSession, expire_on_commit=False)

    async def create_all(self) -> None:
        """Brings the schema to the newest migration (Alembic, bot/migrations)."""
        async with self.engine.begin() as conn:
            await conn.run_sync(_migrate)

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        async with self._sessions() as session:
            yield session

    @asynccontextmanager
    async def user_lock(self, user_id: int, space: int = 0) -> AsyncIterator[None]:
        """Serialises one user's steps across worker processes; SQLite has one process, so nothing to do.

        `space` 0 is the user's steps; another space (1: the user's WeChat customer-service sends) is a separate
        lock, PostgreSQL's two-key form, which never collides with the one-key form."""
        if self.is_sqlite:
            yield
            return
        from sqlalchemy import text

        if space:
            lock, unlock = "SELECT pg_advisory_lock(:space, :key)", "SELECT pg_advisory_unlock(:space, :key)"
        else:
            lock, unlock = "SELECT pg_advisory_lock(:key)", "SELECT pg_advisory_unlock(:key)"
        params = {"key": user_id, "space": space}
        async with self._lock_slots, self.engine.connect() as conn:
            # Session-level advisory locks need no transaction: autocommit spares a BEGIN and COMMIT each way.
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.execute(text(lock), params)
            try:
                yield
            finally:
                await conn.execute(text(unlock), params)

    async def ping(self) -> bool:
        from sqlalchemy import text

        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
        return True

    async def close(self) -> None:
        await self.engine.dispose()


MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def alembic_config(connection: Any) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def _migrate(connection: Any) -> None:
    """Upgrades to the newest revision; used at startup and by `python -m bot migration`."""
    from alembic import command
    from sqlalchemy import inspect

    config = alembic_config(connection)
    tables = set(inspect(connection).get_table_names())
    if "alembic_version" not in tables and "users" in tables:
        # A database made before migrations existed holds the baseline schema: adopt it as such.
        command.stamp(config, "0001")
    command.upgrade(config, "head")


def storage_unavailable(exc: BaseException | None) -> bool:
    """True when `exc`, or what caused it, means the database cannot be reached right now (down, restarting,
    refusing connections), as opposed to a bug: the caller answers 503 so the channel delivers again later."""
    from sqlalchemy.exc import DBAPIError, OperationalError
    from sqlalchemy.exc import TimeoutError as PoolTimeout

    seen = 0
    while exc is not None and seen < 5:
        # PoolTimeout: every pooled connection stayed busy for POOL_TIMEOUT seconds; the database is overloaded
        # for now, not this request's fault.
        if isinstance(exc, OperationalError | ConnectionError | TimeoutError | PoolTimeout):
            return True
        if isinstance(exc, DBAPIError) and exc.connection_invalidated:
            return True
        # asyncpg's connection-level failures (CannotConnectNow, ConnectionDoesNotExist, AdminShutdown …)
        if type(exc).__module__.startswith("asyncpg") and any(
                part in type(exc).__name__ for part in ("Connect", "Connection", "Shutdown", "CannotConnectNow")):
            return True
        exc, seen = exc.__cause__, seen + 1
    return False


# Every SQLite connection we open (the ORM's, the step store's writer, the broadcast engine's) runs with the same
# settings, so a constraint or a lock wait behaves the same whichever path a write takes.
SQLITE_BUSY_SECONDS = 30  # how long a write waits for another connection's lock before it fails
SQLITE_PRAGMAS = ("PRAGMA journal_mode=WAL", f"PRAGMA busy_timeout={SQLITE_BUSY_SECONDS * 1000}",
                  "PRAGMA synchronous=NORMAL", "PRAGMA foreign_keys=ON")


def apply_sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    for pragma in SQLITE_PRAGMAS:
        cursor.execute(pragma)
    cursor.close()


# --- past one machine (issue 15): WeChat nonces seen by any worker, when there is no Redis ---
class WeChatNonce(SQLModel, table=True):
    """A (timestamp, nonce) pair a signed WeChat request carried, with the digest of that request: the same pair
    again with the same digest is WeChat's retry, with another digest a replay. Kept only while the timestamp
    could still pass the freshness check (bot/channels/wechat_crypto.py)."""

    __tablename__ = "wechat_nonces"
    nonce_key: str = Field(primary_key=True, max_length=80)  # "{timestamp}:{nonce}"
    digest: str = Field(max_length=32)  # hex of the request digest
    ts: int = Field(sa_column=Column(BigInteger, nullable=False, index=True))
