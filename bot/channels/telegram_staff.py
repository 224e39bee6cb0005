"""The optional Telegram staff group (TELEGRAM_STAFF_CHAT_ID, a forum supergroup): one topic per ticket mirrors
it, and a staff member answers from their phone by writing in the topic; `/close` there closes the ticket.

The web console and the topic stay in step because both go through the same ticket service. It posts only
masked context and scrubbed text, and takes messages only from staff accounts linked to their Telegram user id
(`python -m bot staff link NAME TELEGRAM_USER_ID`).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from telegram.error import RetryAfter, TelegramError

from bot.channels.telegram_inbound import UpdatePlan
from bot.channels.telegram_send import LeanBot, retry_after
from bot.staff.auth import StaffMember
from bot.staff.tickets import TicketError, TicketService
from dialogs.model import Msg

if TYPE_CHECKING:
    from bot.runtime import Runtime

log = logging.getLogger(__name__)

API_SECONDS = 10.0
TOPIC_NAME_MAX = 128


@dataclass
class StaffGroup:
    rt: Runtime
    bot: LeanBot
    chat_id: int
    tickets: TicketService
    # One call at a time: a group takes about 20 messages a minute, and topics must exist before their posts.
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # Mirroring runs behind the ticket action, in order, so a slow Bot API never holds up a user's step.
    _queue: asyncio.Queue[tuple[str, int, dict[str, Any]]] = field(default_factory=asyncio.Queue)
    _worker: asyncio.Task[None] | None = None

    def _t(self, key: str, **params: Any) -> str:
        return self.rt.catalog.render(Msg(key, params), "zh_CN")

    async def _call(self, method: str, data: dict[str, Any]) -> Any:
        async with self._lock:
            for attempt in range(2):
                try:
                    return await self.bot.send_raw(method, data, API_SECONDS)
                except RetryAfter as exc:
                    if attempt:
                        raise
                    await asyncio.sleep(min(retry_after(exc), 30.0))
        return None

    async def _post(self, thread: int, text: str) -> None:
        await self._call("sendMessage", {"chat_id": self.chat_id, "message_thread_id": thread, "text": text[:4000]})

    async def _thread(self, ticket_id: int) -> int | None:
        return await self.rt.repository.ticket_topic(ticket_id)

    # --- ticket → topic ------------------------------------------------------------------------------------
    async def mirror(self, event: str, ticket_id: int, details: dict[str, Any]) -> None:
        """Queues the event for the topic. Best effort: the console is the record, the topic a window on it."""
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._drain())
            self.rt.background.append(self._worker)
        self._queue.put_nowait((event, ticket_id, dict(details)))

    async def _drain(self) -> None:
        while True:
            event, ticket_id, details = await self._queue.get()
            try:
                await self._apply(event, ticket_id, details)
            except Exception:
                log.exception("staff group: mirroring failed", extra={"ticket": ticket_id, "event": event})

    async def _apply(self, event: str, ticket_id: int, details: dict[str, Any]) -> None:
        if event == "new":
            await self._open_topic(ticket_id)
            return
        thread = await self._thread(ticket_id)
        if thread is None:
            return
        if event == "user_message":
            await self._post(thread, self._t("staff.tg.user_says", text=details.get("text", "")))
        elif event == "staff_message" and details.get("via") != "telegram":
            await self._post(thread, self._t("staff.tg.staff_says", staff=details.get("by", ""),
                                             text=details.get("text", "")))
        elif event in ("claimed", "assigned"):
            await self._post(thread, self._t("staff.tg.claimed", staff=details.get("to") or details.get("by", "")))
        elif event == "closed":
            await self._post(thread, self._t(f"staff.tg.closed.{details.get('why', 'staff')}"))
            try:
                await self._call("closeForumTopic", {"chat_id": self.chat_id, "message_thread_id": thread})
            except TelegramError:
                log.warning("staff group: topic not closed", extra={"ticket": ticket_id})

    async def _open_topic(self, ticket_id: int) -> None:
        summary = await self.tickets.summary(ticket_id)
        context = summary["context"]
        masked = context.get("phone_masked") or self._t("staff.ctx.not_verified")
        name = f"#{ticket_id} · {self._t('staff.channel.' + summary['channel'])} · {masked}"[:TOPIC_NAME_MAX]
        topic = await self._call("createForumTopic", {"chat_id": self.chat_id, "name": name})
        thread = int(topic["message_thread_id"]) if isinstance(topic, dict) else None
        if thread is None:
            return
        await self.rt.repository.set_ticket_topic(ticket_id, thread)
        requests = "; ".join(f"{r['reference']} {r['status']}" for r in context.get("requests", [])) or "-"
        plan = context.get("plan")
        await self._post(thread, self._t(
            "staff.tg.opened", ticket=ticket_id, channel=self._t("staff.channel." + summary["channel"]),
            phone=masked, verified=self._t("staff.yes" if context.get("verified") else "staff.no"),
            state=context.get("state") or "-", requests=requests,
            plan=f"{plan['date']} {plan['done']}/{plan['items']}" if plan else "-",
            reason=self._t(f"staff.reason.{summary['reason']}")))

    # --- topic → ticket ------------------------------------------------------------------------------------
    def accepts(self, p: UpdatePlan) -> bool:
        return p.message is not None and p.chat_id == self.chat_id

    async def take(self, p: UpdatePlan) -> None:
        """A message in the staff group: in a ticket's topic, from a linked staff member, it is their answer."""
        message = p.message or {}
        sender = message.get("from")
        if not isinstance(sender, dict) or sender.get("is_bot") or not isinstance(sender.get("id"), int):
            return
        thread = message.get("message_thread_id") if message.get("is_topic_message") else None
        text = message.get("text")
        text = text.strip() if isinstance(text, str) else ""
        if not isinstance(thread, int) or not text:
            return
        sender_id = int(sender["id"])
        ticket, account = await self.rt.repository.topic_ticket(thread, sender_id)
        if ticket is None:
            return
        if account is None:
            await self._post(thread, self._t("staff.tg.unknown_staff"))
            return
        member = StaffMember(account.id, account.name, account.role)
        client = f"telegram:{sender_id}"
        try:
            if text.split("@", 1)[0] == "/close":
                await self.tickets.close(ticket.id, member, client)
                return
            if ticket.status == "open":
                await self.tickets.claim(ticket.id, member, client)
            await self.tickets.reply(ticket.id, member, text, client, via="telegram")
        except TicketError as exc:
            await self._post(thread, self.rt.catalog.render(Msg(f"staff.error.{exc.code}"), "zh_CN"))


def attach_staff_group(rt: Runtime, bot: LeanBot) -> StaffGroup | None:
    """The staff group when TELEGRAM_STAFF_CHAT_ID is set and the ticket service is mounted; else None."""
    raw = rt.settings.telegram_staff_chat_id.strip()
    if not raw or rt.tickets is None:
        return None
    try:
        chat_id = int(raw)
    except ValueError:
        raise SystemExit("TELEGRAM_STAFF_CHAT_ID must be the numeric id of a forum supergroup "
                         "(like -1001234567890)") from None
    group = StaffGroup(rt, bot, chat_id, rt.tickets)
    rt.tickets.mirrors.append(group.mirror)
    return group
