"""A broadcast message takes the bot-wide pace's slot only when it is free this instant and no reply or push waits
for a turn, so it never holds a slot a reply then has to wait out (issue 14: replies while a broadcast runs).
The joint reservation's `now_only` form, in memory, on PostgreSQL and in Redis, and the Telegram transport's use
of it."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from bot.budgets import DatabaseBudget, LocalBudget, RedisBudget, Slot
from bot.channels.telegram_broadcast import TelegramBroadcast
from bot.channels.telegram_send import BotPace, Limits, Sender
from bot.storage import Database
from tests.test_budgets import migrated, redis_url_or_skip
from tests.test_postgres import pg_url  # noqa: F401 - the fixture

BOT_RATE = 28.0


async def test_now_only_takes_a_free_slot_and_never_one_still_to_come() -> None:
    clock = [100.0]
    budget = LocalBudget(clock=lambda: clock[0])
    bot = Slot("tg", BOT_RATE)
    reply = Slot("tg", BOT_RATE, credit=1.0 / BOT_RATE)
    assert await budget.reserve_joint(Slot("tg:chat:1", 1.0), bot, bot.interval, now_only=True) == (True, 0.0)
    clock[0] = 100.01
    # The bot's next slot is 26 ms away: a broadcast takes nothing and learns when to look again.
    taken, wait = await budget.reserve_joint(Slot("tg:chat:2", 1.0), bot, bot.interval, now_only=True)
    assert not taken and wait == pytest.approx(1 / BOT_RATE - 0.01)
    assert budget.tat("tg") == pytest.approx(100 + 1 / BOT_RATE) and budget.tat("tg:chat:2") == 0.0
    # A reply arriving meanwhile goes at once (its credit), and the broadcast's next look moves past it.
    assert await budget.reserve_joint(Slot("tg:chat:3", 1.0, 3), reply, reply.interval) == (True, 0.0)
    taken, wait = await budget.reserve_joint(Slot("tg:chat:2", 1.0), bot, bot.interval, now_only=True)
    assert not taken and wait == pytest.approx(2 / BOT_RATE - 0.01)
    # A chat not ready yet: nothing is taken either way.
    clock[0] = 101.0
    taken, wait = await budget.reserve_joint(Slot("tg:chat:1", 1.0), bot, bot.interval, now_only=True)
    assert taken and wait == 0.0
    taken, wait = await budget.reserve_joint(Slot("tg:chat:1", 1.0), bot, bot.interval, now_only=True)
    assert not taken and wait == pytest.approx(1.0)


async def _now_only_shared(budget: Any) -> None:
    key = f"test:{uuid.uuid4().hex}"
    bot = Slot(key, 1.0)  # one a second: the checks below never race the clock
    assert await budget.reserve_joint(Slot(f"{key}:chat:1", 1.0), bot, bot.interval, now_only=True) == (True, 0.0)
    taken, wait = await budget.reserve_joint(Slot(f"{key}:chat:2", 1.0), bot, bot.interval, now_only=True)
    assert not taken and 0.5 < wait <= 1.0
    # Nothing was taken: an ordinary reservation gets the very next slot, not the one after.
    taken, wait = await budget.reserve_joint(Slot(f"{key}:chat:2", 1.0), bot, bot.interval)
    assert taken and 0.5 < wait <= 1.0


async def test_now_only_on_postgres(pg_url: str) -> None:  # noqa: F811
    await migrated(pg_url)
    db = Database(pg_url)
    try:
        await _now_only_shared(DatabaseBudget(db))
    finally:
        await db.close()


async def test_now_only_in_redis(tmp_path: Any) -> None:
    import redis.asyncio as redis_asyncio

    url = await redis_url_or_skip()
    budget = RedisBudget(redis_asyncio.from_url(url), LocalBudget())
    try:
        await _now_only_shared(budget)
    finally:
        await budget.close()


async def test_a_broadcast_message_waits_while_replies_wait_for_their_turns() -> None:
    sender = Sender(None, Limits(bot_per_second=BOT_RATE))  # type: ignore[arg-type]
    transport = TelegramBroadcast(sender, LocalBudget(), 20.0)
    waiting = [1]

    class Turns(BotPace):
        """The real pace, with as many turns waiting as the test says."""

        def __len__(self) -> int:
            return waiting[0]

    sender.pace = Turns(sender.pace.clock, None, sender.pace.key)
    slot = asyncio.create_task(transport.slot(700_000_001))
    await asyncio.sleep(0.2)
    assert not slot.done(), "a reply or push is waiting for its turn: the broadcast does not take the slot"
    assert sender.pace.local.tat(sender.pace.key) == 0.0
    waiting[0] = 0
    await asyncio.wait_for(slot, 5.0)
    assert sender.pace.local.tat(sender.pace.key) > 0.0
