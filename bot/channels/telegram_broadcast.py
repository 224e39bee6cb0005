"""Broadcast messages to Telegram: the broadcast's own rate (shared by all workers), then the chat's lane and
the bot-wide pace, where every reply and push goes first. A 429 holds only its own chat for `retry_after`; a
403 (blocked, deactivated) marks the user inactive. Never logs the text or the chat id."""

from __future__ import annotations

from bot.broadcasts import SENT, Delivery, Outcome
from bot.budgets import Budget, pace
from bot.channels.telegram_render import Outgoing
from bot.channels.telegram_send import Sender, Undeliverable


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

    async def send(self, delivery: Delivery) -> Outcome:
        if not delivery.address.lstrip("-").isdigit():
            return Outcome("failed", "bad_address")
        await pace(self.budget, self.key, self.rate)
        try:
            await self.sender.deliver(int(delivery.address), [Outgoing(delivery.text)], push=True, broadcast=True)
        except Undeliverable as exc:
            if exc.blocked:
                return Outcome("failed", "blocked", inactive=True)
            return Outcome("failed", exc.reason.split(":")[0].replace(" ", "_")[:32])
        return SENT
