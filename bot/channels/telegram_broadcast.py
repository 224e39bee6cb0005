"""Broadcast messages to Telegram: the broadcast's own rate (shared by all workers), then the chat's lane and the
bot-wide pace, where every reply and push goes first. A 429 holds only its own chat for `retry_after`; a 403
(blocked, deactivated) marks the user inactive. Never logs the text or the chat id.

A broadcast message never queues in the bot-wide pace's turns (telegram_send.BotPace) and never holds a slot
ahead of time: it takes the bot's and the chat's slots together only when both are free this instant and no
reply or push is waiting for a turn, else it waits until they are free and looks again. So a reply never waits
behind a broadcast message's slot (it would have, up to one bot interval, ~36 ms, when the pace's granter slept
until a broadcast slot it had reserved), and the broadcast takes what the replies leave. One exception: a reply
to the very chat a broadcast message is being sent to waits for that one message (it holds the chat's lane).
Only one broadcast send per process looks for a slot at a time: each look is a transaction on the shared budget
(on PostgreSQL a pooled connection and the bot's row lock), and many sends looking at once would crowd out the
replies' own reservations.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from bot.broadcasts import SENT, Delivery, Outcome
from bot.budgets import Budget, Slot, pace
from bot.channels.telegram_send import BROADCAST, Sender, Undeliverable

log = logging.getLogger(__name__)

# The shortest wait between two looks at the bot's pace (a slot freed by a moment's rounding).
MIN_WAIT = 0.001


class TelegramBroadcast:
    channel = "telegram"

    def __init__(self, sender: Sender, budget: Budget, rate: float) -> None:
        self.sender = sender
        self.budget = budget
        self.rate = max(rate, 0.1)
        self.key = f"{sender.pace.key}:broadcast"
        # About a second of sends under way, plus room for a few chats waiting out a 429, and no more: what is
        # claimed and not yet sent when a worker dies waits for its lease.
        self.concurrency = max(16, min(512, int(self.rate) + 16))
        self._looking = asyncio.Lock()

    async def send(self, delivery: Delivery) -> Outcome:
        if not delivery.address.lstrip("-").isdigit():
            return Outcome("failed", "bad_address")
        chat_id = int(delivery.address)
        await pace(self.budget, self.key, self.rate)
        data: dict[str, Any] = {"chat_id": chat_id, "text": delivery.text}
        sender = self.sender
        lane = sender.lane(chat_id)
        lane.holders += 1

        async def attempt() -> Any:
            # Every try (after a 429 or a network error too) takes its own slot.
            await self.slot(chat_id)
            return await sender.bot.send_raw("sendMessage", data, sender.limits.api_timeout)

        try:
            async with lane.lock:
                # Unpaced for Sender.call: `attempt` keeps the pace; call keeps the lane's 429 block and retries.
                await sender.call(lane, attempt, push=True, paced=False, chat_id=chat_id, broadcast=True)
        except Undeliverable as exc:
            if exc.blocked:
                return Outcome("failed", "blocked", inactive=True)
            return Outcome("failed", exc.reason.split(":")[0].replace(" ", "_")[:32])
        finally:
            lane.holders -= 1
        return SENT

    async def slot(self, chat_id: int) -> None:
        """Waits until the bot's and the chat's slots are both free with no reply or push waiting, and takes
        them."""
        turns = self.sender.pace
        turns.rate = self.sender.limits.bot_per_second
        chat = Slot(f"{turns.key}:chat:{chat_id}", self.sender.chat_rate(chat_id))
        async with self._looking:
            while True:
                if len(turns):
                    wait = 1.0 / turns.rate  # replies or pushes are waiting for their turns: they go first
                else:
                    taken, wait = await turns.reserve(chat, BROADCAST, now_only=True)
                    if taken:
                        return
                await asyncio.sleep(max(wait, MIN_WAIT))
