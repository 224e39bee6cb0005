"""Recipients for broadcast tests and benches: users as the bot stores them (channel ids as keyed hashes with a
sealed copy), written straight into a fresh data folder's database before the bot starts."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from bot import identities
from bot.broadcasts import BroadcastService
from bot.storage import Database, sqlite_time, utcnow
from bot.vault import Vault

DB_NAME = "haoqing.sqlite3"
TEXTS = {"zh_CN": "号清提醒：周六系统维护。", "en": "Haoqing: maintenance on Saturday."}


async def finished(service: BroadcastService, broadcast_id: int, *, polls: int = 400) -> dict[str, Any]:
    """The broadcast's status once it is done, polled every 50 ms at most `polls` times."""
    status: dict[str, Any] = {}
    for _ in range(polls):
        status = await service.status(broadcast_id)
        if status["status"] == "done":
            return status
        await asyncio.sleep(0.05)
    raise AssertionError(f"broadcast {broadcast_id} did not finish: {status}")


@dataclass(frozen=True)
class Recipient:
    channel: str
    address: str  # the chat id or openid; web chat users are addressed by their session id
    lang: str = "zh_CN"
    reminders_on: bool = True
    active: bool = True
    idle_days: int = 0


async def migrate(data_dir: Path) -> Path:
    """Brings a data folder's SQLite database to the newest schema, as the bot's start would."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / DB_NAME
    db = Database(f"sqlite+aiosqlite:///{path}")
    await db.create_all()
    await db.close()
    return path


def insert(path: Path, secret: str, recipients: Iterable[Recipient], *, batch: int = 20_000) -> int:
    """Adds the users; returns how many. Ids are sealed with the same secret the bot runs with."""
    vault = Vault(secret.encode())
    now = utcnow()
    total = 0
    with sqlite3.connect(path) as conn:
        rows: list[tuple[object, ...]] = []
        for r in recipients:
            seen = sqlite_time(now - timedelta(days=r.idle_days))
            rows.append((r.channel, identities.stored_id(vault, r.channel, r.address),
                         identities.sealed(vault, r.channel, r.address), r.lang, r.active, r.reminders_on, seen, seen))
            if len(rows) >= batch:
                total += _flush(conn, rows)
        total += _flush(conn, rows)
    return total


def _flush(conn: sqlite3.Connection, rows: list[tuple[object, ...]]) -> int:
    conn.executemany(
        "INSERT INTO users (channel, external_id, external_enc, lang, active, reminders_on, created_at, "
        "last_seen_at, next_seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 1)", rows)
    conn.commit()
    count = len(rows)
    rows.clear()
    return count


async def insert_into(db: Database, secret: str, recipients: Iterable[Recipient]) -> int:
    """The same users through the bot's own database connection: any dialect (PostgreSQL too)."""
    from sqlalchemy import text

    vault = Vault(secret.encode())
    now = utcnow()
    rows = [{"channel": r.channel, "external_id": identities.stored_id(vault, r.channel, r.address),
             "external_enc": identities.sealed(vault, r.channel, r.address), "lang": r.lang, "active": r.active,
             "reminders_on": r.reminders_on,
             "seen": sqlite_time(now - timedelta(days=r.idle_days)) if db.is_sqlite else now - timedelta(
                 days=r.idle_days)} for r in recipients]
    async with db.engine.begin() as conn:
        await conn.execute(text(
            "INSERT INTO users (channel, external_id, external_enc, lang, active, reminders_on, created_at, "
            "last_seen_at, next_seq) VALUES (:channel, :external_id, :external_enc, :lang, :active, :reminders_on, "
            ":seen, :seen, 1)"), rows)
    return len(rows)
