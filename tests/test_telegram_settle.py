"""Issue 15: replies a webhook handed over to the outbox are settled even when the database refuses for a while.

The channel sends a step's replies itself and, past `inline_wait`, marks them `sending` (claimed) so a crash means
a resend. When it then cannot record how the send went, the rows used to stay claimed until the 600 s lease ran
out, and then went back to `pending` to be sent again although Telegram had them. Now the settle is retried with
backoff: the rows are marked `sent` once the database answers, and nothing is sent twice.
The database's refusal is real: the outbox table is renamed away from under the running server, then back.
"""

from __future__ import annotations

import asyncio
import io
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from tests.fakes import fake_bot_api as tg
from tests.fakes.fake_bot_api import FakeBotApi
from tests.test_telegram import TgUser, _wait_rows, fake, http, start_tg  # noqa: F401 (fixtures)

SETTLE_FAILED = "telegram reply rows not settled; retrying"


async def _alter(database: str, statement: str) -> None:
    """Runs a schema change on the bot's database from another thread: on the event loop's own thread it would wait
    for the in-process server's open transaction, which cannot end while the loop is blocked."""
    def run() -> None:
        with sqlite3.connect(database, timeout=30) as conn:
            conn.execute(statement)

    await asyncio.to_thread(run)


async def _started(srv: Any, chat_id: int, *, inline_wait: float) -> tuple[TgUser, list[Any], str]:
    """A user whose /start replies are all sent, settle retries quick, and the SQLite file to alter: (the user,
    their outbox rows so far, the database path)."""
    limits = srv.channel.limits
    limits.inline_wait = inline_wait
    limits.settle_retry_base, limits.settle_retry_cap = 0.05, 0.2
    user = TgUser(srv, chat_id)
    await user.say("/start")
    rows = await _wait_rows(srv, lambda rows: rows and all(r.status == "sent" for r in rows))
    return user, rows, srv.rt.settings.resolved_database_url().split("///", 1)[1]


async def until(predicate: Callable[[], Any], seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.02)


async def test_a_settle_the_database_refuses_is_retried_and_the_reply_is_not_sent_again(
        tmp_path: Path, fake: FakeBotApi, http: aiohttp.ClientSession, log_capture: io.StringIO) -> None:  # noqa: F811
    srv = await start_tg(tmp_path, fake, http)
    try:
        user, _before, database = await _started(srv, 7700, inline_wait=0.1)
        # The next replies wait out a 429 past inline_wait: the webhook hands them over as claimed rows.
        fake.fail("429", method="sendMessage", chat_id=user.chat_id, times=1, retry_after=2)
        sent_before = len(fake.sent(user.chat_id))
        assert await srv.post(tg.message(user.chat_id, text="/help")) == 200
        handed = await _wait_rows(srv, lambda rows: any(r.status == "sending" for r in rows))
        claimed = sorted(r.id for r in handed if r.status == "sending")
        await _alter(database, "ALTER TABLE outbox RENAME TO outbox_away")
        try:
            # Telegram gets the replies; recording that fails while the table is away.
            await until(lambda: len(fake.sent(user.chat_id)) > sent_before)
            await until(lambda: SETTLE_FAILED in log_capture.getvalue())
        finally:
            await _alter(database, "ALTER TABLE outbox_away RENAME TO outbox")
        rows = await _wait_rows(srv, lambda rows: all(r.status == "sent" for r in rows if r.id in claimed))
        assert [r.attempts for r in rows if r.id in claimed] == [0] * len(claimed), "never handed to the pump"
        delivered = len(fake.sent(user.chat_id))
        # The pump's own rounds (and a lease reclaim) find nothing of these to send again.
        await srv.channel.pump.reclaim(everything=False)
        assert await srv.channel.pump.pump_once() == 0
        await asyncio.sleep(0.3)
        assert len(fake.sent(user.chat_id)) == delivered == sent_before + len(claimed), "each reply exactly once"
        assert not srv.channel.pump.inflight
    finally:
        await srv.runner.cleanup()


async def test_replies_the_database_will_not_take_over_are_still_sent_once_and_the_update_not_redelivered(
        tmp_path: Path, fake: FakeBotApi, http: aiohttp.ClientSession) -> None:  # noqa: F811
    srv = await start_tg(tmp_path, fake, http)
    try:
        user, before, database = await _started(srv, 7800, inline_wait=1.0)
        fake.fail("429", method="sendMessage", chat_id=user.chat_id, times=1, retry_after=3)
        sent_before = len(fake.sent(user.chat_id))
        posted = asyncio.create_task(srv.post(tg.message(user.chat_id, text="/help")))
        # The step is committed and its first send refused for 3 s; the table goes away before inline_wait ends,
        # so marking the replies handed over fails.
        await until(lambda: fake.called("sendMessage", chat_id=user.chat_id, ok=False))
        await _alter(database, "ALTER TABLE outbox RENAME TO outbox_away")
        try:
            # 200, not 503: a redelivered update would have its replayed answer sent a second time.
            assert await posted == 200
        finally:
            await _alter(database, "ALTER TABLE outbox_away RENAME TO outbox")
        rows = await _wait_rows(srv, lambda rows: len(rows) > len(before) and all(r.status == "sent" for r in rows))
        replies = len(rows) - len(before)
        await until(lambda: len(fake.sent(user.chat_id)) >= sent_before + replies)
        await asyncio.sleep(0.3)
        assert len(fake.sent(user.chat_id)) == sent_before + replies, "each reply exactly once"
    finally:
        await srv.runner.cleanup()


class _FlakyOutbox:
    """An outbox whose settle fails with the given errors, in order, then works."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.calls = 0
        self.settled: list[tuple[list[int], str]] = []

    async def settle(self, ids: list[int], status: str) -> None:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        self.settled.append((list(ids), status))


def _pump(outbox: _FlakyOutbox) -> Any:
    from bot.channels.telegram_send import Limits, OutboxPump

    limits = Limits()
    limits.settle_retry_base, limits.settle_retry_cap = 0.001, 0.002
    pump = OutboxPump(outbox, None, None, limits)  # type: ignore[arg-type]
    pump.inflight.update({1, 2})
    return pump


async def test_a_settle_is_retried_while_the_database_is_away_and_only_then() -> None:
    from sqlalchemy.exc import OperationalError

    away = OperationalError("UPDATE outbox", {}, Exception("database is locked"))
    outbox = _FlakyOutbox(away, away)
    pump = _pump(outbox)
    await pump.settle_handed_over([1, 2], "sent")
    assert outbox.calls == 3 and outbox.settled == [([1, 2], "sent")] and not pump.inflight

    # Not an outage (a bug, bad data): retrying would repeat it forever; one try, logged, and the lease hands the
    # rows back.
    outbox = _FlakyOutbox(ValueError("bad row"))
    pump = _pump(outbox)
    await pump.settle_handed_over([1, 2], "sent")
    assert outbox.calls == 1 and outbox.settled == [] and not pump.inflight
