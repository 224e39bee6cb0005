"""Broadcasts: reminders an admin sends to many users (issue 14).

A broadcast is created from texts per language and a segment; its recipients are fixed then, one state row each
(`broadcast_recipients`), so it can be paused, resumed, and survives `kill -9` and restarts. Every worker runs an
engine that claims pending rows in small batches (`FOR UPDATE SKIP LOCKED` on PostgreSQL), hands each to its
channel's transport and settles the outcomes in one transaction per batch, counting them by channel, outcome
and reason (`broadcast_counts`: the progress figures and the CSV report). On SQLite the claims and settles run
whole in the engine's own thread and connection, between conversation steps, so they neither hold the one write
lock a step's commit needs for longer than their statements nor take the event loop's time (`_SqliteWriter`).

Rules it keeps:
- users who turned reminders off are never included, and one who turns them off after the broadcast was created
  is skipped when their turn comes;
- one message per person: a verified number reached on two channels gets it once, on the channel last used;
- each channel's transport keeps the channel's rules (Telegram's bot-wide pace with replies first, WeChat's
  customer-service window or template); the broadcast's own rate is a budget below the channel's, shared by all
  workers (bot/budgets.py);
- a row claimed by a worker that died is sent again once its lease runs out: at least once, and at most the sends
  in flight at the crash twice;
- a 403 (blocked, unfollowed) marks the user inactive;
- /forget settles the user's rows still to go out as unreachable (`forgotten`): nothing more reaches them.

It never logs a text, a number or a channel id.

Interface for the console and the CLI:

    service = BroadcastService(db, vault, catalog, settings)
    await service.create(texts={"zh_CN": ..., "en": ...}, segment={...}, dry_run=True|False,
                         scheduled_at=None, created_by="name")      -> dict (see `create`)
    await service.start(id) / pause(id) / resume(id) / cancel(id)   -> status dict
    await service.status(id)                                       -> status dict
    await service.recent(limit)                                    -> list of status dicts, newest first
    await service.report_csv(id)                                   -> str (CSV: channel,outcome,reason,count)
    service.preview(texts)                                         -> {channel: {lang: rendered text}}
Errors raise BroadcastError(code) with code in: not_found, bad_state, bad_texts, bad_segment, bad_schedule.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import logging
import time
import unicodedata
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web
from sqlalchemy import Connection, TextClause, bindparam, text

from bot import identities, jsoncodec, metrics
from bot.loops import stop_requested
from bot.storage import Broadcast, Database, sqlite_time, utcnow
from bot.vault import Vault

if TYPE_CHECKING:
    from bot.config import Settings
    from bot.i18n import Catalog
    from bot.runtime import Runtime

log = logging.getLogger(__name__)

LANGS = ("zh_CN", "en")
CHANNELS = ("telegram", "wechat", "web")
STATUSES = ("draft", "scheduled", "running", "paused", "done", "cancelled")
OUTCOMES = ("sent", "failed", "unreachable")
SEGMENT_KEYS = ("channel", "lang", "has_open_requests", "has_plan", "active_days")
# A broadcast text must fit every channel with the footer: WeChat's customer-service text is 2048 bytes.
MAX_TEXT_CHARS = 500
MAX_TEXT_BYTES = 1500
MAX_ATTEMPTS = 5
SCHEDULE_LIMIT = timedelta(days=90)


class BroadcastError(Exception):
    def __init__(self, code: str, detail: str = "") -> None:
        super().__init__(code if not detail else f"{code}: {detail}")
        self.code = code
        self.detail = detail


# --- what a transport gets and gives back ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Delivery:
    """One recipient's message, as a transport sends it: `address` is the platform id, opened from its seal."""

    recipient_id: int
    broadcast_id: int
    user_id: int
    channel: str
    address: str
    lang: str
    text: str
    attempts: int
    # The claim this send holds on its row: a transport that settles the row itself checks it.
    claim: str = ""


@dataclass(frozen=True, slots=True)
class Outcome:
    """sent | failed | unreachable | retry (later, with `retry_after` seconds) | settled (the transport wrote the
    row's outcome itself, in the transaction that delivered it); `inactive` marks the user so."""

    status: str
    reason: str = ""
    inactive: bool = False
    retry_after: float = 0.0


SENT = Outcome("sent")


class Transport(Protocol):
    channel: str
    # How many sends may be under way at once; claims never run further ahead than this.
    concurrency: int

    async def send(self, delivery: Delivery) -> Outcome: ...


# --- texts and segments ---------------------------------------------------------------------------------------


def clean_texts(raw: Any) -> dict[str, str]:
    """Both languages, trimmed, printable, short enough for every channel with the footer."""
    if not isinstance(raw, Mapping) or set(raw) - set(LANGS):
        raise BroadcastError("bad_texts", "texts must be an object with zh_CN and en")
    texts: dict[str, str] = {}
    for lang in LANGS:
        value = raw.get(lang)
        if not isinstance(value, str) or not value.strip():
            raise BroadcastError("bad_texts", f"{lang} is empty")
        value = unicodedata.normalize("NFC", value.replace("\r\n", "\n")).strip()
        if any(unicodedata.category(ch) in ("Cc", "Cs", "Co") and ch != "\n" for ch in value):
            raise BroadcastError("bad_texts", f"{lang} holds control characters")
        if len(value) > MAX_TEXT_CHARS or len(value.encode()) > MAX_TEXT_BYTES:
            raise BroadcastError("bad_texts", f"{lang} is longer than {MAX_TEXT_CHARS} characters")
        texts[lang] = value
    return texts


def clean_segment(raw: Any) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise BroadcastError("bad_segment", "segment must be an object")
    unknown = set(raw) - set(SEGMENT_KEYS)
    if unknown:
        raise BroadcastError("bad_segment", "unknown key " + sorted(unknown)[0])
    segment: dict[str, Any] = {}
    for key, value in raw.items():
        if value is None or value == "":
            continue
        if key == "channel" and value not in CHANNELS:
            raise BroadcastError("bad_segment", "channel must be one of " + ", ".join(CHANNELS))
        if key == "lang" and value not in LANGS:
            raise BroadcastError("bad_segment", "lang must be zh_CN or en")
        if key in ("has_open_requests", "has_plan") and not isinstance(value, bool):
            raise BroadcastError("bad_segment", f"{key} must be true or false")
        if key == "active_days" and (isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 3650):
            raise BroadcastError("bad_segment", "active_days must be a whole number of days from 1 to 3650")
        segment[key] = value
    return segment


def _segment_filters(segment: Mapping[str, Any], now: datetime, db: Database) -> tuple[str, dict[str, Any]]:
    """SQL conditions on `users u` for a clean segment, and their parameters."""
    where: list[str] = []
    params: dict[str, Any] = {}
    if "channel" in segment:
        where.append("u.channel = :channel")
        params["channel"] = segment["channel"]
    if "lang" in segment:
        where.append("u.lang = :lang")
        params["lang"] = segment["lang"]
    if "active_days" in segment:
        where.append("u.last_seen_at >= :since")
        params["since"] = _db_time(now - timedelta(days=int(segment["active_days"])), db)
    for key, exists in (
        ("has_open_requests", "SELECT 1 FROM unbind_requests r WHERE (r.person_id = u.person_id OR r.user_id = u.id) "
                              "AND r.status IN ('queued', 'submitted', 'processing')"),
        ("has_plan", "SELECT 1 FROM plans p WHERE (p.person_id = u.person_id OR p.user_id = u.id) "
                     "AND p.status = 'active'"),
    ):
        if key in segment:
            where.append(("EXISTS" if segment[key] else "NOT EXISTS") + f" ({exists})")
    return (" AND ".join(where) or "1 = 1"), params


def _chosen(filters: str) -> str:
    """The segment's users with reminders on, one per person (the channel they used last). `filters` is made
    only of the fixed phrases in `_segment_filters`; every value is a parameter."""
    return (
        "SELECT id, channel, active FROM (SELECT u.id, u.channel, u.active, ROW_NUMBER() OVER ("  # noqa: S608
        "PARTITION BY COALESCE(u.person_id, -u.id) ORDER BY u.last_seen_at DESC, u.id DESC) AS pick "
        f"FROM users u WHERE u.reminders_on = :yes AND {filters}) ranked WHERE pick = 1"
    )


def _db_time(moment: datetime, db: Database) -> Any:
    return sqlite_time(moment) if db.is_sqlite else moment


def _listing(sql: str, *names: str) -> TextClause:
    """A statement whose `IN :name` parameters take lists."""
    return text(sql).bindparams(*(bindparam(name, expanding=True) for name in names))


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat(timespec="seconds")


def _aware(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


# --- the service the console and the CLI use ------------------------------------------------------------------


class BroadcastService:
    def __init__(self, db: Database, vault: Vault, catalog: Catalog, settings: Settings, *,
                 clock: Callable[[], datetime] = utcnow) -> None:
        self.db = db
        self.vault = vault
        self.catalog = catalog
        self.settings = settings
        self.clock = clock
        # Set by setup_broadcasts: wakes this process's engine when a broadcast starts or resumes.
        self.on_change: Callable[[], None] = lambda: None
        # What WeChat allows right now (customer-service messages, template messages): the live sender's view
        # when this process runs the channel, else what the settings declare.
        self.wechat_ways: Callable[[], tuple[bool, bool]] = lambda: (
            settings.wechat_account != "unverified",
            bool(settings.wechat_template_id) and settings.wechat_account == "verified_service")

    def channels_on(self) -> set[str]:
        """The channels this deployment runs (the web chat always): their users can be reached at all."""
        on = {"web"}
        if self.settings.telegram_bot_token:
            on.add("telegram")
        if self.settings.wechat_token:
            on.add("wechat")
        return on

    # -- texts as they will arrive --

    def footer(self, lang: str) -> str:
        return self.catalog.messages.get(lang, {}).get("broadcast.footer", "")

    def message(self, texts: Mapping[str, str], lang: str) -> str:
        body = texts.get(lang) or texts.get("zh_CN") or ""
        footer = self.footer(lang)
        return f"{body}\n\n{footer}" if footer else body

    def preview(self, texts: Any) -> dict[str, dict[str, str]]:
        """Each channel's rendering of each language: Telegram and the web chat show the text as is; WeChat's
        customer-service text is cut to its byte limit, and a template shows only the first line, shortened."""
        from bot.channels.wechat_text import MAX_TEXT_BYTES as WECHAT_BYTES
        from bot.channels.wechat_text import clip

        cleaned = clean_texts(texts)
        out: dict[str, dict[str, str]] = {"telegram": {}, "wechat": {}, "wechat_template": {}, "web": {}}
        limit = self.settings.wechat_template_max_chars
        for lang in LANGS:
            full = self.message(cleaned, lang)
            out["telegram"][lang] = full
            out["web"][lang] = full
            out["wechat"][lang] = clip(full, WECHAT_BYTES, "…")
            first = cleaned[lang].splitlines()[0]
            out["wechat_template"][lang] = first if len(first) <= limit else first[: limit - 1] + "…"
        return out

    # -- compose --

    async def create(self, *, texts: Any, segment: Any = None, dry_run: bool = True,
                     scheduled_at: datetime | str | None = None, created_by: str = "") -> dict[str, Any]:
        cleaned = clean_texts(texts)
        seg = clean_segment(segment)
        when = self._schedule(scheduled_at)
        now = self.clock()
        filters, params = _segment_filters(seg, now, self.db)
        params["yes"] = True
        if dry_run:
            return await self._dry_run(seg, filters, params, now)
        async with self.db.engine.begin() as conn:
            row = (await conn.execute(text(
                "INSERT INTO broadcasts (texts, segment, status, created_by, recipients, by_channel, created_at, "
                "scheduled_at, rate, rate_mark_done) VALUES (:texts, :segment, 'draft', :by, 0, '{}', :now, :at, 0, 0)"
                " RETURNING id"), {
                "texts": json.dumps(cleaned, ensure_ascii=False), "segment": json.dumps(seg),
                "by": created_by[:64], "now": _db_time(now, self.db),
                "at": _db_time(when, self.db) if when else None})).scalar_one()
            broadcast_id = int(row)
            # Users who blocked the bot or unfollowed, and users of a channel this deployment does not run, are
            # unreachable from the start; nothing is sent to them.
            await conn.execute(_listing(
                "INSERT INTO broadcast_recipients (broadcast_id, user_id, channel, status, reason, attempts) "
                "SELECT :bid, id, channel, CASE WHEN active AND channel IN :on THEN 'pending' ELSE 'unreachable' END, "
                "CASE WHEN NOT active THEN 'inactive' WHEN channel IN :on THEN NULL ELSE 'channel_off' END, 0 "
                "FROM (" + _chosen(filters) + ") chosen ORDER BY id", "on"),
                {**params, "bid": broadcast_id, "on": sorted(self.channels_on())})
            by_channel = {channel: int(n) for channel, n in (await conn.execute(text(
                "SELECT channel, count(*) FROM broadcast_recipients WHERE broadcast_id = :bid GROUP BY channel"),
                {"bid": broadcast_id})).all()}
            await conn.execute(text(
                "INSERT INTO broadcast_counts (broadcast_id, channel, outcome, reason, count) "
                "SELECT :bid, channel, 'unreachable', reason, count(*) FROM broadcast_recipients "
                "WHERE broadcast_id = :bid AND status = 'unreachable' GROUP BY channel, reason"), {"bid": broadcast_id})
            await conn.execute(text("UPDATE broadcasts SET recipients = :n, by_channel = :by WHERE id = :bid"), {
                "n": sum(by_channel.values()), "by": json.dumps(by_channel), "bid": broadcast_id})
        log.info("broadcast created", extra={"broadcast_id": broadcast_id, "recipients": sum(by_channel.values())})
        return await self.status(broadcast_id)

    def _schedule(self, value: datetime | str | None) -> datetime | None:
        if value is None or value == "":
            return None
        if isinstance(value, str):
            try:
                value = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
            except ValueError:
                raise BroadcastError("bad_schedule", "use ISO 8601, e.g. 2026-12-01T09:00+08:00") from None
        if value.tzinfo is None:
            raise BroadcastError("bad_schedule", "give a time zone, e.g. +08:00")
        value = value.astimezone(UTC)
        now = self.clock()
        if value < now - timedelta(minutes=1) or value > now + SCHEDULE_LIMIT:
            raise BroadcastError("bad_schedule", "the time must be in the next 90 days")
        return value

    async def _dry_run(self, segment: Mapping[str, Any], filters: str, params: dict[str, Any],
                       now: datetime) -> dict[str, Any]:
        by_channel: dict[str, dict[str, int]] = {}
        async with self.db.engine.connect() as conn:
            rows = (await conn.execute(text(
                "SELECT channel, active, count(*) FROM (" + _chosen(filters) + ") chosen "  # noqa: S608
                "GROUP BY channel, active"),
                params)).all()
            opted_out = int((await conn.execute(text(
                f"SELECT count(*) FROM users u WHERE u.reminders_on = :no AND {filters}"),  # noqa: S608
                {**params, "no": False})).scalar_one())
            wechat_ids: list[int] = []
            if any(channel == "wechat" and active for channel, active, _n in rows):
                wechat_ids = [int(i) for (i,) in (await conn.execute(text(
                    "SELECT id FROM (" + _chosen(filters) + ") chosen "  # noqa: S608
                    "WHERE channel = 'wechat' AND active = :yes"),
                    params)).all()]
        on = self.channels_on()
        for channel, active, count in rows:
            entry = by_channel.setdefault(channel, {"recipients": 0})
            entry["recipients"] += int(count)
            if not active or channel not in on:
                entry["unreachable"] = entry.get("unreachable", 0) + int(count)
        if "wechat" in by_channel and "wechat" in on:
            customer_service, can_template = self.wechat_ways()
            window = await self._wechat_windows(wechat_ids, now) if customer_service else 0
            template = len(wechat_ids) - window
            entry = by_channel["wechat"]
            entry["window"] = window or 0
            entry["template"] = template if can_template else 0
            entry["unreachable"] = entry.get("unreachable", 0) + (0 if can_template else template)
        total = sum(entry["recipients"] for entry in by_channel.values())
        return {"id": None, "recipients": total, "by_channel": by_channel, "opted_out": opted_out,
                "segment": dict(segment)}

    async def _wechat_windows(self, user_ids: Sequence[int], now: datetime) -> int:
        """How many of these WeChat users a customer-service message reaches right now."""
        from bot.channels.wechat_sender import MESSAGE_WINDOW, aware, window_allowance

        open_now = 0
        since = now - MESSAGE_WINDOW[0]
        for start in range(0, len(user_ids), 500):
            params: dict[str, Any] = {"ids": list(user_ids[start:start + 500]), "since": _db_time(since, self.db)}
            async with self.db.engine.connect() as conn:
                openings = (await conn.execute(_listing(
                    "SELECT user_id, max(CASE WHEN dedupe_key LIKE 'm:%' THEN received_at END), "
                    "max(CASE WHEN dedupe_key LIKE 'c:%' THEN received_at END) FROM inbox "
                    "WHERE channel = 'wechat' AND received_at >= :since AND user_id IN :ids GROUP BY user_id", "ids"),
                    params)).all()
                sends = (await conn.execute(_listing(
                    "SELECT user_id, sent_at FROM wechat_cs_sends WHERE sent_at >= :since AND user_id IN :ids", "ids"),
                    params)).all()
            sent_by: dict[int, list[datetime]] = defaultdict(list)
            for uid, at in sends:
                moment = aware(_parse(at))
                if moment is not None:
                    sent_by[int(uid)].append(moment)
            for uid, last_message, last_click in openings:
                allowed = window_allowance(now, aware(_parse(last_message)), aware(_parse(last_click)),
                                           sent_by.get(int(uid), []))
                open_now += allowed > 0
        return open_now

    # -- run --

    async def start(self, broadcast_id: int) -> dict[str, Any]:
        row = await self._get(broadcast_id)
        if row.status != "draft":
            raise BroadcastError("bad_state", f"a {row.status} broadcast cannot start")
        now = self.clock()
        scheduled = _aware(row.scheduled_at)
        status = "scheduled" if scheduled is not None and scheduled > now else "running"
        await self._move(broadcast_id, ("draft",), status, started=status == "running")
        return await self.status(broadcast_id)

    async def pause(self, broadcast_id: int) -> dict[str, Any]:
        row = await self._get(broadcast_id)
        if row.status not in ("running", "scheduled"):
            raise BroadcastError("bad_state", f"a {row.status} broadcast cannot pause")
        await self._move(broadcast_id, ("running", "scheduled"), "paused")
        return await self.status(broadcast_id)

    async def resume(self, broadcast_id: int) -> dict[str, Any]:
        row = await self._get(broadcast_id)
        if row.status != "paused":
            raise BroadcastError("bad_state", f"a {row.status} broadcast cannot resume")
        scheduled = _aware(row.scheduled_at)
        status = "scheduled" if scheduled is not None and scheduled > self.clock() else "running"
        await self._move(broadcast_id, ("paused",), status, started=status == "running")
        return await self.status(broadcast_id)

    async def cancel(self, broadcast_id: int) -> dict[str, Any]:
        row = await self._get(broadcast_id)
        if row.status in ("done", "cancelled"):
            raise BroadcastError("bad_state", f"a {row.status} broadcast cannot be cancelled")
        await self._move(broadcast_id, ("draft", "scheduled", "running", "paused"), "cancelled", finished=True)
        return await self.status(broadcast_id)

    async def _move(self, broadcast_id: int, from_states: Iterable[str], to: str, *, started: bool = False,
                    finished: bool = False) -> None:
        now = _db_time(self.clock(), self.db)
        sets = ["status = :to"]
        if started:
            sets.append("started_at = COALESCE(started_at, :now)")
        if finished:
            sets.append("finished_at = :now")
        async with self.db.engine.begin() as conn:
            # `sets` are fixed phrases chosen above; every value is a parameter.
            moved = await conn.execute(_listing(
                f"UPDATE broadcasts SET {', '.join(sets)} WHERE id = :bid AND status IN :states",  # noqa: S608
                "states"), {"to": to, "now": now, "bid": broadcast_id, "states": list(from_states)})
        if moved.rowcount != 1:
            raise BroadcastError("bad_state", "the broadcast changed meanwhile")
        log.info("broadcast state", extra={"broadcast_id": broadcast_id, "status": to})
        if to == "running":
            self.on_change()

    async def _get(self, broadcast_id: int) -> Broadcast:
        async with self.db.session() as session:
            row = await session.get(Broadcast, broadcast_id)
        if row is None:
            raise BroadcastError("not_found", f"no broadcast {broadcast_id}")
        return row

    # -- watch --

    async def status(self, broadcast_id: int) -> dict[str, Any]:
        row = await self._get(broadcast_id)
        return await self._describe(row)

    async def recent(self, limit: int = 50) -> list[dict[str, Any]]:
        from sqlmodel import col, select

        async with self.db.session() as session:
            rows = (await session.exec(select(Broadcast).order_by(col(Broadcast.id).desc()).limit(limit))).all()
        return [await self._describe(row) for row in rows]

    async def _describe(self, row: Broadcast) -> dict[str, Any]:
        assert row.id is not None
        async with self.db.engine.connect() as conn:
            counts = (await conn.execute(text(
                "SELECT channel, outcome, sum(count) FROM broadcast_counts WHERE broadcast_id = :bid "
                "GROUP BY channel, outcome"), {"bid": row.id})).all()
        recipients_by = {k: int(v) for k, v in json.loads(row.by_channel or "{}").items()}
        by_channel: dict[str, dict[str, int]] = {
            channel: {"recipients": n, "sent": 0, "failed": 0, "unreachable": 0, "left": n}
            for channel, n in recipients_by.items()}
        totals = {outcome: 0 for outcome in OUTCOMES}
        for channel, outcome, count in counts:
            entry = by_channel.setdefault(channel, {"recipients": 0, "sent": 0, "failed": 0, "unreachable": 0,
                                                    "left": 0})
            entry[outcome] = entry.get(outcome, 0) + int(count)
            entry["left"] = max(0, entry["recipients"] - entry["sent"] - entry["failed"] - entry["unreachable"])
            totals[outcome] += int(count)
        done = sum(totals.values())
        left = max(0, row.recipients - done)
        rate = await self._rate(row, done) if row.status == "running" else 0.0
        eta = int(left / rate + 0.5) if rate > 0 and left else (0 if left == 0 else None)
        return {
            "id": row.id, "status": row.status, "recipients": row.recipients, **totals, "left": left,
            "rate": round(rate, 1), "eta_seconds": eta, "by_channel": by_channel,
            "texts": json.loads(row.texts), "segment": json.loads(row.segment or "{}"),
            "scheduled_at": _iso(row.scheduled_at), "created_at": _iso(row.created_at),
            "started_at": _iso(row.started_at), "finished_at": _iso(row.finished_at), "created_by": row.created_by,
        }

    async def _rate(self, row: Broadcast, done: int) -> float:
        """Messages settled per second since the last mark; the mark moves on every few seconds."""
        now = self.clock()
        mark = _aware(row.rate_mark_at)
        if mark is not None and (now - mark).total_seconds() < 3.0:
            return row.rate
        rate = row.rate
        if mark is not None:
            rate = max(0.0, (done - row.rate_mark_done) / max((now - mark).total_seconds(), 0.001))
        async with self.db.engine.begin() as conn:
            await conn.execute(text(
                "UPDATE broadcasts SET rate = :rate, rate_mark_at = :now, rate_mark_done = :done WHERE id = :bid"),
                {"rate": rate, "now": _db_time(now, self.db), "done": done, "bid": row.id})
        return rate

    async def report_csv(self, broadcast_id: int) -> str:
        row = await self._get(broadcast_id)
        async with self.db.engine.connect() as conn:
            counts = (await conn.execute(text(
                "SELECT channel, outcome, reason, count FROM broadcast_counts WHERE broadcast_id = :bid "
                "ORDER BY channel, outcome, reason"), {"bid": broadcast_id})).all()
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["channel", "outcome", "reason", "count"])
        settled: dict[str, int] = defaultdict(int)
        for channel, outcome, reason, count in counts:
            writer.writerow([channel, outcome, reason or "", int(count)])
            settled[channel] += int(count)
        for channel, n in sorted(json.loads(row.by_channel or "{}").items()):
            if int(n) > settled.get(channel, 0):
                writer.writerow([channel, "left", row.status, int(n) - settled.get(channel, 0)])
        return out.getvalue()


def _parse(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value))


async def settle_forgotten(conn: Any, user_id: int, now: datetime, *, sqlite: bool) -> int:
    """/forget (bot/people.py): the user's rows of broadcasts still going out are settled as unreachable
    (`forgotten`) and counted like any outcome, in the caller's transaction. No engine claims them after that, and
    one holding a claim on such a row finds it settled: its own settle skips the row (and recounts), the web
    chat's transport delivers nothing. A message already handed to Telegram or WeChat at that moment may still
    arrive, as with a send under way at a crash."""
    settled = (await conn.execute(text(
        "UPDATE broadcast_recipients SET status = 'unreachable', reason = 'forgotten', finished_at = :now, "
        "claim = NULL WHERE broadcast_id IN (SELECT id FROM broadcasts WHERE status NOT IN ('done', 'cancelled')) "
        # ^ (broadcast_id, user_id) is the unique index: a lookup per live broadcast, not a scan of every row kept
        "AND user_id = :uid AND status IN ('pending', 'sending') RETURNING broadcast_id, channel"),
        {"uid": user_id, "now": sqlite_time(now) if sqlite else now})).all()
    counts: dict[tuple[int, str], int] = defaultdict(int)
    for broadcast_id, channel in settled:
        counts[(int(broadcast_id), str(channel))] += 1
    for (broadcast_id, channel), n in sorted(counts.items()):
        await conn.execute(text(
            "INSERT INTO broadcast_counts (broadcast_id, channel, outcome, reason, count) "
            "VALUES (:bid, :channel, 'unreachable', 'forgotten', :n) ON CONFLICT (broadcast_id, channel, outcome, "
            "reason) DO UPDATE SET count = broadcast_counts.count + excluded.count"),
            {"bid": broadcast_id, "channel": channel, "n": n})
    return len(settled)


# --- the engine: every worker runs one ------------------------------------------------------------------------

_CLAIM = (
    "UPDATE broadcast_recipients SET status = 'sending', claim = :claim, claimed_at = :now, "
    "attempts = attempts + 1 WHERE id IN (SELECT id FROM broadcast_recipients WHERE broadcast_id = :bid "
    "AND channel = :channel AND status = 'pending' AND (not_before IS NULL OR not_before <= :now) "
    "AND EXISTS (SELECT 1 FROM broadcasts b WHERE b.id = :bid AND b.status = 'running') "
    "ORDER BY id LIMIT :n{lock}) RETURNING id, user_id, attempts"
)
_USERS = "SELECT id, channel, external_id, external_enc, lang, active, reminders_on FROM users WHERE id IN :ids"


# The engine's two hot transactions, written once against a synchronous connection: on SQLite they run whole in
# the engine's own thread (_SqliteWriter), on PostgreSQL through the async engine's run_sync.


def _claim_rows(conn: Connection, statement: str, params: dict[str, Any]) -> tuple[list[Any], dict[int, Any]]:
    """Claims up to `n` pending rows for this engine; returns them and their users."""
    claimed = list(conn.execute(text(statement), params).all())
    if not claimed:
        return [], {}
    users = {int(row[0]): row for row in conn.execute(
        _listing(_USERS, "ids"), {"ids": [int(r[1]) for r in claimed]}).all()}
    return claimed, users


def _settle_rows(conn: Connection, claim: str, now: Any, groups: Mapping[tuple[str, str], list[int]],
                 retries: Sequence[tuple[int, Any]], counts: dict[tuple[int, str, str, str], int],
                 inactive: set[int], batch_ids: Sequence[int]) -> dict[tuple[int, str, str, str], int]:
    """Writes settled outcomes (only rows still claimed by `claim`), sends to retry, the counts and users found
    inactive; returns the counts written."""
    settled = 0
    for (status, reason), ids in groups.items():
        for chunk in _chunks(ids, 500):
            result = conn.execute(_listing(
                "UPDATE broadcast_recipients SET status = :status, reason = :reason, finished_at = :now, "
                "claim = NULL WHERE id IN :ids AND status = 'sending' AND claim = :claim", "ids"),
                {"status": status, "reason": reason or None, "now": now, "claim": claim, "ids": list(chunk)})
            settled += result.rowcount
    for recipient_id, not_before in retries:
        conn.execute(text(
            "UPDATE broadcast_recipients SET status = 'pending', not_before = :at, claim = NULL "
            "WHERE id = :rid AND status = 'sending' AND claim = :claim"),
            {"at": not_before, "rid": recipient_id, "claim": claim})
    if settled != sum(len(ids) for ids in groups.values()):
        # Some rows were taken back after a lease ran out (this worker stalled), or settled by /forget: count what
        # we settled, from the rows themselves.
        counts = defaultdict(int)
        for chunk in _chunks(batch_ids, 500):
            rows = conn.execute(_listing(
                "SELECT broadcast_id, channel, status, reason FROM broadcast_recipients WHERE id IN :ids "
                "AND finished_at = :now AND claim IS NULL", "ids"), {"now": now, "ids": list(chunk)}).all()
            for bid, channel, status, reason in rows:
                counts[(int(bid), channel, status, reason or "")] += 1
    for (broadcast_id, channel, status, reason), n in counts.items():
        conn.execute(text(
            "INSERT INTO broadcast_counts (broadcast_id, channel, outcome, reason, count) "
            "VALUES (:bid, :channel, :outcome, :reason, :n) ON CONFLICT (broadcast_id, channel, "
            "outcome, reason) DO UPDATE SET count = broadcast_counts.count + excluded.count"),
            {"bid": broadcast_id, "channel": channel, "outcome": status, "reason": reason, "n": n})
    if inactive:
        conn.execute(_listing("UPDATE users SET active = :no WHERE id IN :ids", "ids"),
                     {"no": False, "ids": sorted(inactive)})
    return counts


class _SqliteWriter:
    """SQLite has one writer at a time, and a conversation step's commit (bot/step_store.py, its own thread and
    connection) waits, sleeping in steps of 1, 2, 5… ms, while anyone else holds the write lock. Through the
    async engine a claim or a settle held that lock across several event-loop round trips (a few ms, tens on a
    busy machine); here each runs whole, from its first write to its commit, in this one thread on a connection
    of its own: the lock is held for the statements alone (well under a millisecond), and the event loop that
    answers users does none of this work."""

    def __init__(self, url: str) -> None:
        from concurrent.futures import ThreadPoolExecutor

        from sqlalchemy import create_engine, event

        from bot.storage import apply_sqlite_pragmas

        self.engine = create_engine(url, pool_size=1, max_overflow=0,
                                    connect_args={"timeout": 30, "check_same_thread": False})
        event.listen(self.engine, "connect", apply_sqlite_pragmas)
        self.thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="broadcast-sqlite")

    @classmethod
    def for_db(cls, db: Database) -> _SqliteWriter | None:
        """The writer for a SQLite file; None for anything else (PostgreSQL, or a database in memory, which a
        second connection would not see)."""
        url = db.engine.url
        if not db.is_sqlite or not url.database or url.database == ":memory:" or "mode=memory" in str(url):
            return None
        return cls(url.set(drivername="sqlite").render_as_string(hide_password=False))

    def _run(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        with self.engine.begin() as conn:
            return fn(conn, *args)

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.thread, self._run, fn, args)

    def close(self) -> None:
        self.thread.shutdown(wait=True)
        self.engine.dispose()


class BroadcastEngine:
    """Claims pending recipients of running broadcasts in batches, sends them through the channels' transports,
    and settles outcomes in one transaction per round."""

    def __init__(self, service: BroadcastService, transports: Mapping[str, Transport], *,
                 lease_seconds: float = 120.0, poll_seconds: float = 1.0, round_seconds: float = 0.02,
                 settle_seconds: float = 0.2) -> None:
        self.service = service
        self.db = service.db
        self.vault = service.vault
        self.transports = dict(transports)
        self.lease = timedelta(seconds=lease_seconds)
        self.poll_seconds = poll_seconds
        self.round_seconds = round_seconds
        # Outcomes are written at least this often while sends go on (and at once when none are under way).
        self.settle_seconds = settle_seconds
        self._first_outcome = 0.0
        self._running_ids: list[int] = []
        self._running_at = 0.0
        self._empty: dict[tuple[int, str], float] = {}
        self.token = uuid.uuid4().hex[:16]
        self.inflight: dict[str, int] = dict.fromkeys(self.transports, 0)
        # Outcomes waiting to be settled: (recipient id, broadcast id, channel, user id, attempts, outcome).
        self.outcomes: list[tuple[Delivery, Outcome]] = []
        self.tasks: set[asyncio.Task[None]] = set()
        self.wake = asyncio.Event()
        self._texts: dict[int, dict[str, str]] = {}
        self._stopping = False
        self._writer = _SqliteWriter.for_db(self.db)
        # SQLite: True while a conversation step is under way in this process (setup_broadcasts wires the
        # runtime's per-user locks); a claim or settle waits for a gap between steps, up to `yield_seconds`.
        self.steps_busy: Callable[[], bool] | None = None
        self.yield_seconds = 0.05

    async def _transaction(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Runs one of the engine's hot transactions: on SQLite in its own thread, after the steps under way
        (never starting while a user's step holds or wants the write lock, unless that lasts `yield_seconds`);
        elsewhere on the async engine."""
        if self._writer is None:
            async with self.db.engine.begin() as conn:
                return await conn.run_sync(fn, *args)
        if self.steps_busy is not None:
            deadline = time.monotonic() + self.yield_seconds
            while self.steps_busy():
                if time.monotonic() >= deadline:
                    break
                await asyncio.sleep(0.002)
        return await self._writer.run(fn, *args)

    def add_transport(self, transport: Transport) -> None:
        self.transports[transport.channel] = transport
        self.inflight.setdefault(transport.channel, 0)

    async def run_forever(self) -> None:
        await self.reclaim(everything=self.db.is_sqlite)
        last_reclaim = time.monotonic()
        while not self._stopping:
            stop_requested()
            try:
                if time.monotonic() - last_reclaim > min(30.0, self.lease.total_seconds() / 2):
                    await self.reclaim(everything=False)
                    last_reclaim = time.monotonic()
                busy = await self.round()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("broadcast round failed")
                busy = False
            # Busy: the next round comes when a send finishes (or the settle interval passes), a little later
            # so that one round serves several. Idle: when a broadcast starts here, or at the next poll.
            self.wake.clear()
            try:
                await asyncio.wait_for(self.wake.wait(), self.settle_seconds if busy else self.poll_seconds)
            except TimeoutError:
                pass
            if busy and self.round_seconds:
                await asyncio.sleep(self.round_seconds)

    def refresh(self) -> None:
        """A broadcast started or resumed: look again now."""
        self._running_at = 0.0
        self.wake.set()

    async def round(self) -> bool:
        """Settles what finished, claims what there is room for; True while anything is under way."""
        if self.outcomes and (len(self.outcomes) >= 64 or not self.tasks
                              or time.monotonic() - self._first_outcome >= self.settle_seconds):
            await self.settle()
        running = await self._running()
        claimed = 0
        now = time.monotonic()
        for broadcast_id in running:
            for channel, transport in self.transports.items():
                room = transport.concurrency - self.inflight[channel]
                if room <= 0 or room < transport.concurrency // 4 or self._empty.get((broadcast_id, channel), 0) > now:
                    continue
                got = await self._claim_and_send(broadcast_id, channel, room)
                if got < room:
                    # Nothing more to claim for this channel right now (done, or waiting out retries).
                    self._empty[(broadcast_id, channel)] = now + self.poll_seconds
                claimed += got
        if not claimed and not self.tasks and not self.outcomes and running:
            await self._finish(running)
        return bool(claimed or self.tasks or self.outcomes)

    async def _running(self) -> list[int]:
        """The running broadcasts, read again at most once a poll interval (or when one starts here)."""
        if time.monotonic() - self._running_at < self.poll_seconds:
            return self._running_ids
        now = _db_time(self.service.clock(), self.db)
        async with self.db.engine.connect() as conn:
            rows = (await conn.execute(text(
                "SELECT id, texts, status FROM broadcasts WHERE status = 'running' "
                "OR (status = 'scheduled' AND scheduled_at <= :now) ORDER BY id"), {"now": now})).all()
        if any(status == "scheduled" for _id, _texts, status in rows):
            # A scheduled broadcast whose time has come starts now (whichever worker sees it first).
            async with self.db.engine.begin() as conn:
                await conn.execute(text(
                    "UPDATE broadcasts SET status = 'running', started_at = COALESCE(started_at, :now) "
                    "WHERE status = 'scheduled' AND scheduled_at <= :now"), {"now": now})
            log.info("scheduled broadcasts started")
        for broadcast_id, texts, _status in rows:
            if broadcast_id not in self._texts:
                loaded = json.loads(texts)
                self._texts[broadcast_id] = {lang: self.service.message(loaded, lang) for lang in LANGS}
        self._running_ids = [int(broadcast_id) for broadcast_id, _texts, _status in rows]
        self._running_at = time.monotonic()
        if not self._running_ids:
            self._empty.clear()
        return self._running_ids

    async def _claim_and_send(self, broadcast_id: int, channel: str, room: int) -> int:
        now = self.service.clock()
        statement = _CLAIM.format(lock="" if self.db.is_sqlite else " FOR UPDATE SKIP LOCKED")
        params = {"claim": self.token, "now": _db_time(now, self.db), "bid": broadcast_id, "channel": channel,
                  "n": room}
        claimed, users = await self._transaction(_claim_rows, statement, params)
        if not claimed:
            return 0
        texts = self._texts[broadcast_id]
        transport = self.transports[channel]
        for recipient_id, user_id, attempts in claimed:
            user = users.get(int(user_id))
            base = Delivery(int(recipient_id), broadcast_id, int(user_id), channel, "", "zh_CN", "", int(attempts))
            if user is None:
                self._record(base, Outcome("failed", "gone"))
                continue
            _uid, _channel, external_id, external_enc, lang, active, reminders_on = user
            if not reminders_on:
                self._record(base, Outcome("unreachable", "opted_out"))
                continue
            if not active:
                self._record(base, Outcome("unreachable", "inactive"))
                continue
            lang = lang if lang in LANGS else "zh_CN"
            address = identities.reveal(self.vault, _Identity(channel, external_id, external_enc))
            delivery = Delivery(int(recipient_id), broadcast_id, int(user_id), channel, address, lang, texts[lang],
                                int(attempts), self.token)
            self.inflight[channel] += 1
            task = asyncio.create_task(self._send(transport, delivery))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        return len(claimed)

    async def _send(self, transport: Transport, delivery: Delivery) -> None:
        try:
            outcome = await transport.send(delivery)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("broadcast send failed", extra={"broadcast_id": delivery.broadcast_id,
                                                          "channel": delivery.channel})
            outcome = Outcome("retry", type(exc).__name__[:32], retry_after=5.0)
        finally:
            self.inflight[delivery.channel] -= 1
        self._record(delivery, outcome)
        self.wake.set()

    def _record(self, delivery: Delivery, outcome: Outcome) -> None:
        if not self.outcomes:
            self._first_outcome = time.monotonic()
        self.outcomes.append((delivery, outcome))

    async def settle(self) -> int:
        """Writes the finished sends: their rows, the counts, users found inactive; one transaction."""
        if not self.outcomes:
            return 0
        batch, self.outcomes = self.outcomes, []
        now = self.service.clock()
        groups: dict[tuple[str, str], list[int]] = defaultdict(list)
        counts: dict[tuple[int, str, str, str], int] = defaultdict(int)
        retries: list[tuple[int, Any]] = []
        inactive: set[int] = set()
        for delivery, outcome in batch:
            status, reason = outcome.status, outcome.reason
            if status == "settled":
                continue
            if status == "retry" and delivery.attempts >= MAX_ATTEMPTS:
                status, reason = "failed", "gave_up"
            if status == "retry":
                retries.append((delivery.recipient_id,
                                _db_time(now + timedelta(seconds=max(outcome.retry_after, 1.0)), self.db)))
                continue
            groups[(status, reason)].append(delivery.recipient_id)
            counts[(delivery.broadcast_id, delivery.channel, status, reason)] += 1
            if outcome.inactive:
                inactive.add(delivery.user_id)
        try:
            counts = await self._transaction(_settle_rows, self.token, _db_time(now, self.db), groups, retries,
                                             counts, inactive, [d.recipient_id for d, _ in batch])
        except BaseException:
            # Not written: keep them for the next round (the rows stay claimed by us meanwhile).
            self.outcomes[:0] = batch
            raise
        for (_bid, channel, status, _reason), n in counts.items():
            metrics.BROADCAST_SENT.labels(channel, status).inc(n)
        return len(batch)

    async def _finish(self, running: Sequence[int]) -> None:
        """A running broadcast with nothing pending or claimed is done."""
        now = _db_time(self.service.clock(), self.db)
        async with self.db.engine.begin() as conn:
            for broadcast_id in running:
                left = (await conn.execute(text(
                    "SELECT 1 FROM broadcast_recipients WHERE broadcast_id = :bid AND status IN ('pending', 'sending') "
                    "LIMIT 1"), {"bid": broadcast_id})).first()
                if left is None:
                    await conn.execute(text(
                        "UPDATE broadcasts SET status = 'done', finished_at = :now WHERE id = :bid "
                        "AND status = 'running'"), {"now": now, "bid": broadcast_id})
                    self._texts.pop(broadcast_id, None)
                    log.info("broadcast done", extra={"broadcast_id": broadcast_id})

    async def reclaim(self, *, everything: bool) -> int:
        """Rows claimed by a worker that died go back to pending: on SQLite at start every claim is from an
        earlier life of this one process; otherwise only leases that ran out."""
        # Everything: a cutoff in the future covers every claim.
        cutoff = self.service.clock() + (timedelta(days=1) if everything else -self.lease)
        async with self.db.engine.begin() as conn:
            result = await conn.execute(text(
                "UPDATE broadcast_recipients SET status = 'pending', claim = NULL "
                "WHERE status = 'sending' AND claimed_at < :cutoff"), {"cutoff": _db_time(cutoff, self.db)})
        if result.rowcount:
            log.warning("broadcast sends taken back from a worker that stopped", extra={"rows": result.rowcount})
        return int(result.rowcount or 0)

    async def stop(self) -> None:
        """Stops claiming, lets sends under way finish (a few seconds at most), settles, and hands back the rest."""
        self._stopping = True
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=3.0)
        for task in list(self.tasks):
            task.cancel()
        try:
            await self.settle()
            async with self.db.engine.begin() as conn:
                await conn.execute(text(
                    "UPDATE broadcast_recipients SET status = 'pending', claim = NULL "
                    "WHERE status = 'sending' AND claim = :claim"), {"claim": self.token})
        finally:
            writer, self._writer = self._writer, None  # anything after this goes through the async engine
            if writer is not None:
                await asyncio.to_thread(writer.close)


@dataclass(frozen=True, slots=True)
class _Identity:
    channel: str
    external_id: str
    external_enc: str | None


def _chunks(items: Sequence[int], size: int) -> Iterable[Sequence[int]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


# --- the web chat's transport: the message waits in the user's chat ---------------------------------------------


class WebChatTransport:
    """A web chat user reads the broadcast in their chat the next time the page asks for messages. The message
    and the row's outcome are written in one transaction, so a replay after a crash never adds it twice."""

    channel = "web"
    concurrency = 64

    def __init__(self, db: Database) -> None:
        self.db = db

    async def send(self, delivery: Delivery) -> Outcome:
        from bot.step_store import RESERVE_PUSH_SEQ

        payload = {"text": delivery.text, "choices": [], "lang": delivery.lang, "broadcast": delivery.broadcast_id}
        now = _db_time(utcnow(), self.db)
        async with self.db.engine.begin() as conn:
            mine = await conn.execute(text(
                "UPDATE broadcast_recipients SET status = 'sent', finished_at = :now, claim = NULL "
                "WHERE id = :rid AND status = 'sending' AND claim = :claim"),
                {"now": now, "rid": delivery.recipient_id, "claim": delivery.claim})
            if mine.rowcount != 1:
                return Outcome("settled")  # taken back meanwhile: whoever holds it now delivers it
            seq = int((await conn.execute(text(RESERVE_PUSH_SEQ), {"count": 1, "user_id": delivery.user_id}))
                      .scalar_one()) - 1
            payload["seq"] = seq
            await conn.execute(text(
                "INSERT INTO outbox (user_id, channel, seq, kind, payload, status, attempts, created_at, sent_at) "
                "VALUES (:uid, 'web', :seq, 'push', :payload, 'sent', 0, :now, :now)"),
                {"uid": delivery.user_id, "seq": seq, "payload": jsoncodec.dumps_str(payload), "now": now})
            await conn.execute(text(
                "INSERT INTO broadcast_counts (broadcast_id, channel, outcome, reason, count) "
                "VALUES (:bid, 'web', 'sent', '', 1) ON CONFLICT (broadcast_id, channel, outcome, reason) "
                "DO UPDATE SET count = broadcast_counts.count + 1"), {"bid": delivery.broadcast_id})
        metrics.BROADCAST_SENT.labels("web", "sent").inc()
        return Outcome("settled")


# --- wiring ---------------------------------------------------------------------------------------------------

BROADCASTS: web.AppKey[BroadcastService] = web.AppKey("broadcasts", BroadcastService)
ENGINE: web.AppKey[BroadcastEngine] = web.AppKey("broadcast_engine", BroadcastEngine)


def setup_broadcasts(app: web.Application, rt: Runtime) -> BroadcastService:
    """Puts the service on the app and runs this worker's engine with the channels the app has."""
    settings = rt.settings
    service = BroadcastService(rt.db, rt.vault, rt.catalog, settings)
    engine = BroadcastEngine(service, {"web": WebChatTransport(rt.db)},
                             lease_seconds=settings.broadcast_lease_seconds)
    service.on_change = engine.refresh
    if rt.db.is_sqlite:
        # One process on SQLite: its claims and settles wait for a gap between the conversation steps, whose
        # commits need the same write lock (PostgreSQL locks rows, so there they never wait on each other).
        engine.steps_busy = lambda: len(rt.locks) > 0
    app[BROADCASTS] = service
    app[ENGINE] = engine

    async def startup(app: web.Application) -> None:
        # The channels are mounted by now: each contributes its transport (imported only when configured).
        if settings.telegram_bot_token:
            from bot.channels.telegram import TELEGRAM
            from bot.channels.telegram_broadcast import TelegramBroadcast

            telegram = app.get(TELEGRAM)
            if telegram is not None:
                engine.add_transport(TelegramBroadcast(telegram.sender, rt.budget,
                                                       settings.telegram_broadcast_per_second))
        if settings.wechat_token:
            from bot.channels.wechat import WECHAT
            from bot.channels.wechat_sender import WeChatBroadcast

            wechat = app.get(WECHAT)
            if wechat is not None:
                sender = wechat.sender
                engine.add_transport(WeChatBroadcast(sender, rt.budget, settings.wechat_broadcast_per_second))
                service.wechat_ways = lambda: (sender.caps.customer_service, bool(sender.template_id))
        rt.background.append(asyncio.create_task(engine.run_forever()))

    async def shutdown(_app: web.Application) -> None:
        try:
            await engine.stop()
        except Exception:
            log.exception("broadcast engine did not stop cleanly; its leases will run out instead")

    app.on_startup.append(startup)
    app.on_shutdown.append(shutdown)
    return service
