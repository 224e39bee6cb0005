"""The Telegram channel: webhook or long polling in, dialog steps through the Dispatcher, replies out.

Job: turn every Telegram update into at most one dialog step (deduped by update_id in the inbox), render the
replies (inline keyboards, a contact button, edits in place), deliver them and pending outbox rows within
Telegram's limits, and keep `users.active` in step with blocks.

It must never: run a dialog step for a group, channel or edited message; echo anything a user typed into a
group; trust a shared contact that is not the sender's own; answer a webhook 2xx for a dialog update before
it is in the inbox (a forged secret gets 403 before anything runs); leave a button's spinner running (every
callback query is answered, on every path); retry a configuration error (a refused token, webhook URL or secret)
as if it were bad luck; or log message text, names, phone or ID numbers, or the bot token.
"""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import logging
import re
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Literal
from urllib.parse import urlsplit

from aiohttp import web
from telegram import InlineKeyboardButton, InlineKeyboardMarkup
from telegram.error import BadRequest, Conflict, InvalidToken, NetworkError, RetryAfter, TelegramError, TimedOut
from telegram.request import BaseRequest

from bot import jsoncodec
from bot.budgets import LocalBudget
from bot.channels.telegram_inbound import Press, UpdatePlan, addressed_to_bot, plan
from bot.channels.telegram_render import (
    DATE_PREFIX,
    MONTH_PREFIX,
    NOOP,
    Outgoing,
    bot_commands,
    calendar_keyboard,
    render_batch,
    resolve_choice,
    say,
)
from bot.channels.telegram_request import AiohttpRequest
from bot.channels.telegram_send import CHANNEL, LeanBot, Limits, OutboxPump, Sender, Undeliverable, retry_after
from bot.config import ConfigurationError, Settings
from bot.dispatch import Incoming, StepResult, pick_lang
from bot.runtime import Runtime
from bot.step_store import ConflictError
from bot.storage import storage_unavailable
from dialogs.model import Event
from domain import beijing

log = logging.getLogger(__name__)

WEBHOOK_PATH = "/telegram/webhook"
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"  # noqa: S105 (a header name)
MAX_UPDATE_BYTES = 1024 * 1024
ALLOWED_UPDATES = ("message", "edited_message", "callback_query", "my_chat_member")
DEFAULT_API_BASE = "https://api.telegram.org/bot"
GROUP_NOTICE_EVERY = 60.0
POLL_TIMEOUT = 25
# A webhook update that keeps failing is answered 200 after this many tries, so it cannot wedge the queue.
MAX_UPDATE_FAILURES = 3
# What setWebhook accepts: an HTTPS URL on one of these ports, and a secret_token of these characters.
WEBHOOK_PORTS = (443, 80, 88, 8443)
_WEBHOOK_SECRET = re.compile(r"[A-Za-z0-9_-]{1,256}")

def base_url(configured: str) -> str:
    """PTB wants the URL that the token is appended to: `http://host:port/bot`."""
    value = (configured or DEFAULT_API_BASE).rstrip("/")
    if "{token}" in value or value.endswith("/bot"):
        return value
    return value + "/bot"


def check_webhook_settings(settings: Settings) -> None:
    """Refuses, before anything starts, what setWebhook would refuse with a 400 on every retry."""
    url = settings.telegram_webhook_url
    if not url:
        return
    try:
        parts = urlsplit(url)
        port = parts.port or 443
    except ValueError:
        raise ConfigurationError("TELEGRAM_WEBHOOK_URL is not a URL") from None
    if parts.scheme != "https" or not parts.hostname:
        raise ConfigurationError("TELEGRAM_WEBHOOK_URL must be an https:// URL: Telegram delivers webhooks over "
                                 "HTTPS only")
    if port not in WEBHOOK_PORTS:
        raise ConfigurationError(f"TELEGRAM_WEBHOOK_URL uses port {port}; Telegram delivers webhooks only to ports "
                                 "443, 80, 88 or 8443")
    secret = settings.telegram_webhook_secret
    if secret and not _WEBHOOK_SECRET.fullmatch(secret):
        raise ConfigurationError("TELEGRAM_WEBHOOK_SECRET must be 1 to 256 characters of A-Z, a-z, 0-9, _ and - "
                                 "(Telegram's rule for secret_token)")


def webhook_secret(rt: Runtime) -> str:
    if rt.settings.telegram_webhook_secret:
        return rt.settings.telegram_webhook_secret
    # Telegram allows [A-Za-z0-9_-]{1,256}; derived so a restart keeps the registered secret valid.
    return hashlib.sha256(b"telegram-webhook:" + rt.settings.resolved_secret()).hexdigest()


class _Turn:
    __slots__ = ("_chat_id", "_order", "_turns")

    def __init__(self, turns: ChatTurns, chat_id: int, order: int) -> None:
        self._turns = turns
        self._chat_id = chat_id
        self._order = order

    async def __aenter__(self) -> None:
        await self._turns._take(self._chat_id, self._order)

    async def __aexit__(self, *exc: object) -> None:
        self._turns._release(self._chat_id)


class ChatTurns:
    """One update per chat at a time, lowest update_id first among those waiting.

    Telegram may deliver webhook updates over parallel connections; ordering by update_id keeps a user's
    messages in the order they were sent whatever order they arrive in.
    """

    def __init__(self) -> None:
        self._busy: set[int] = set()
        self._waiting: dict[int, list[tuple[int, int, asyncio.Future[None]]]] = {}
        self._counter = 0

    def turn(self, chat_id: int, order: int) -> _Turn:
        """`async with turns.turn(chat_id, update_id):` holds the chat's turn (a plain class rather than an
        @asynccontextmanager: it is entered on every update)."""
        return _Turn(self, chat_id, order)

    async def _take(self, chat_id: int, order: int) -> None:
        if chat_id not in self._busy:
            self._busy.add(chat_id)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._counter += 1
        heapq.heappush(self._waiting.setdefault(chat_id, []), (order, self._counter, future))
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self._release(chat_id)  # the turn was handed to us as we were cancelled
            raise

    def _release(self, chat_id: int) -> None:
        queue = self._waiting.get(chat_id)
        while queue:
            _order, _n, future = heapq.heappop(queue)
            if not future.done():
                future.set_result(None)
                return
        self._waiting.pop(chat_id, None)
        self._busy.discard(chat_id)

    def __len__(self) -> int:
        return len(self._busy)

    def waiting(self, chat_id: int) -> int:
        return sum(1 for *_, future in self._waiting.get(chat_id, ()) if not future.done())


@dataclass
class TelegramChannel:
    rt: Runtime
    bot: LeanBot
    mode: Literal["webhook", "polling"]
    secret: str
    limits: Limits = field(default_factory=Limits)
    turns: ChatTurns = field(default_factory=ChatTurns)
    sender: Sender = field(init=False)
    pump: OutboxPump = field(init=False)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    _recent: OrderedDict[int, None] = field(default_factory=OrderedDict)
    _failures: dict[int, int] = field(default_factory=dict)
    _contact_keyboard: set[int] = field(default_factory=set)
    # chat id -> encoded buttons of the last menu this process showed; mirrors the conversation's `_offered`.
    _menus: OrderedDict[int, tuple[str, ...]] = field(default_factory=OrderedDict)
    _group_notice_at: dict[int, float] = field(default_factory=dict)
    _tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    _loops: list[asyncio.Task[Any]] = field(default_factory=list)
    requests: list[BaseRequest] = field(default_factory=list)
    # The optional staff group (bot/channels/telegram_staff.py): its messages are staff answers, not users'.
    staff_group: Any = None

    def __post_init__(self) -> None:
        # The bot-wide limit is Telegram's for the bot, so workers share it (through Redis or PostgreSQL).
        shared = self.rt.budget if not isinstance(self.rt.budget, LocalBudget) else None
        self.sender = Sender(self.bot, self.limits, budget=shared,
                             budget_key=f"telegram:{self.rt.settings.telegram_bot_token.split(':')[0]}")
        self.sender.on_blocked = self.mark_blocked
        self.pump = OutboxPump(self.rt.repository, self.rt.catalog, self.sender, self.limits,
                               sqlite=self.rt.db.is_sqlite)

    # ---- lifecycle -------------------------------------------------------------------------------

    async def register(self) -> None:
        """One attempt at getMe and setWebhook (or deleteWebhook). What no retry can fix raises
        ConfigurationError naming the setting; anything else raises the TelegramError, worth a retry."""
        try:
            await self.bot.initialize()
            if self.mode == "webhook":
                await self.bot.set_webhook(self.rt.settings.telegram_webhook_url, secret_token=self.secret,
                                           allowed_updates=list(ALLOWED_UPDATES), max_connections=40)
            else:
                await self.bot.delete_webhook(drop_pending_updates=False)
        except InvalidToken:
            # PTB's message quotes the token; say only what happened.
            raise ConfigurationError("TELEGRAM_BOT_TOKEN was refused by the Bot API (401 Unauthorized): copy "
                                     "the token from @BotFather again") from None
        except BadRequest as exc:
            if self.mode != "webhook":
                raise
            raise ConfigurationError("setWebhook refused TELEGRAM_WEBHOOK_URL or TELEGRAM_WEBHOOK_SECRET: "
                                     + str(exc.message)[:200]) from None

    async def bootstrap(self, registered: bool = False) -> None:
        """Registers with Telegram (retrying while the API is unreachable), then polls in polling mode."""
        delay = self.limits.retry_base
        while not registered:
            try:
                await self.register()
                registered = True
            except ConfigurationError as exc:
                log.critical("telegram configuration error; the Telegram channel is off: %s", exc)
                return
            except TelegramError as exc:
                log.warning("telegram start-up failed, retrying", extra={"error": type(exc).__name__,
                                                                         "retry_in": delay})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 60.0)
        try:
            for code, lang in ((None, "zh_CN"), ("zh", "zh_CN"), ("en", "en")):
                await self.bot.set_my_commands(bot_commands(self.rt.catalog, lang), language_code=code)
        except TelegramError as exc:
            # Only the command menu in the client is missing; the bot works without it.
            log.warning("telegram set_my_commands failed", extra={"error": type(exc).__name__})
        self.ready.set()
        log.info("telegram channel ready", extra={"mode": self.mode})
        if self.mode == "polling":
            await self.poll_forever()

    async def poll_forever(self) -> None:
        offset: int | None = None
        delay = self.limits.retry_base
        while True:
            try:
                # Raw, then parsed one by one: PTB's get_updates fails the whole batch (for ever, as the offset
                # cannot move) on one update it cannot parse, and logs the raw batch, text and all.
                raw = await self.bot.send_raw("getUpdates", {
                    "offset": offset, "timeout": POLL_TIMEOUT, "allowed_updates": list(ALLOWED_UPDATES)},
                    self.limits.api_timeout, read_seconds=POLL_TIMEOUT + self.limits.api_timeout)
                delay = self.limits.retry_base
            except TimedOut:
                continue
            except RetryAfter as exc:
                await asyncio.sleep(retry_after(exc))
                continue
            except Conflict:
                # Another poller or a webhook holds the bot; back off instead of fighting over updates.
                log.warning("telegram getUpdates conflict: another instance is polling or a webhook is set",
                            extra={"retry_in": delay})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 60.0)
                continue
            except InvalidToken:
                log.critical("telegram configuration error; polling stops: TELEGRAM_BOT_TOKEN was refused by "
                             "the Bot API (401 Unauthorized)")
                return
            except (NetworkError, TelegramError) as exc:
                log.warning("telegram getUpdates failed", extra={"error": type(exc).__name__, "retry_in": delay})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 60.0)
                continue
            if not isinstance(raw, list) or not raw:
                continue
            updates = [u for u in (self.parse(item) for item in raw) if u is not None]
            # Chats run side by side; one chat's updates keep their order through ChatTurns. The offset that
            # acknowledges this batch is sent only once every update is in the inbox (or given up on).
            await asyncio.gather(*(self._handle_polled(u) for u in updates))
            offset = max(int(item.get("update_id", 0)) for item in raw if isinstance(item, dict)) + 1

    def parse(self, data: Any) -> UpdatePlan | None:
        """The update's plan, read straight from its JSON; None (logged, skipped) when it is not understood."""
        planned = plan(data) if isinstance(data, dict) else None
        if planned is None:
            # Unparseable even though Telegram sent it: skip it (its offset is still acknowledged), say so.
            update_id = data.get("update_id") if isinstance(data, dict) else None
            log.warning("telegram update not understood", extra={"update_id": update_id})
        return planned

    async def _handle_polled(self, p: UpdatePlan) -> None:
        for attempt in range(1, MAX_UPDATE_FAILURES + 1):
            try:
                await self.handle_update(p)
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("telegram update failed", extra={"update_id": p.update_id, "attempt": attempt})
                await asyncio.sleep(0.2 * attempt)
        await self.give_up(p)

    def start(self, registered: bool = False) -> list[asyncio.Task[Any]]:
        self._loops = [asyncio.create_task(self.bootstrap(registered)),
                       asyncio.create_task(self.pump.run_forever())]
        return list(self._loops)

    async def shutdown(self) -> None:
        tasks = [*self._loops, *self._tasks, *self.pump.tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.bot.shutdown()
        # Bot.shutdown skips requests it did not initialise itself; ours open lazily, so close them here.
        for request in self.requests:
            await request.shutdown()

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ---- updates ---------------------------------------------------------------------------------

    def seen(self, update_id: int) -> bool:
        return update_id in self._recent

    def remember(self, update_id: int) -> None:
        self._recent[update_id] = None
        while len(self._recent) > 20000:
            self._recent.popitem(last=False)
        self._failures.pop(update_id, None)

    async def handle_update(self, p: UpdatePlan, *, inline: bool = False) -> dict[str, Any] | None:
        """Processes one update to the end: the step is committed and its replies sent or handed over.

        With `inline` (a webhook call), a button's answerCallbackQuery comes back as the webhook response's
        method instead of an API call: it is no chat message, so Telegram running it unseen loses nothing."""
        if self.staff_group is not None and self.staff_group.accepts(p):
            await self.staff_group.take(p)
            return None
        if p.route == "ignore":
            return None
        if p.route == "member":
            assert p.member is not None
            await self._member(p)
            return None
        if p.route == "callback_elsewhere":
            assert p.press is not None
            return await self._answer(p.press.id, None, inline)
        async with self.turns.turn(p.chat_id, p.update_id):
            if self.seen(p.update_id):
                # Telegram re-sends an update whose webhook answer it lost: the spinner is still turning.
                return await self._answer(p.press.id, None, inline) if p.press is not None else None
            answer: dict[str, Any] | None = None
            if p.route == "group":
                await self._group(p)
            elif p.route == "edited":
                await self._notice(p.chat_id, "tg.edited", await self._user_lang(p.chat_id, p.lang_hint))
            else:
                answer = await self._dispatch(p, inline)
            self.remember(p.update_id)
            return answer

    async def _answer(self, callback_id: str, text: str | None, inline: bool) -> dict[str, Any] | None:
        if inline:
            return _inline_answer(callback_id, text)
        await self.sender.answer_callback(callback_id, text)
        return None

    async def _calendar_move(self, cq: Press, p: UpdatePlan, inline: bool) -> dict[str, Any] | None:
        """A calendar's ‹ › or blank key: redraw that month where it is; no conversation step runs."""
        data = str(cq.data)
        if data.startswith(MONTH_PREFIX) and cq.message_id is not None:
            try:
                month = date.fromisoformat(data[len(MONTH_PREFIX):] + "-01")
            except ValueError:
                month = None
            if month is not None:
                lang = await self._user_lang(p.chat_id, p.lang_hint)
                rows = [[InlineKeyboardButton(text, callback_data=cb) for text, cb in row] for row in cq.extra_rows]
                markup = calendar_keyboard(month, beijing.today(), self.rt.catalog, lang, rows)
                self._spawn(self.sender.edit_markup(p.chat_id, cq.message_id, markup))
        return await self._answer(cq.id, None, inline)

    async def _dispatch(self, p: UpdatePlan, inline: bool) -> dict[str, Any] | None:
        expired = False
        edit_id: int | None = None
        answer: asyncio.Task[dict[str, Any] | None] | None = None
        event = p.event
        cq = p.press
        lang: str | None = None
        # A webhook call answers the button in its response (no task, no API call); polling answers it now, in a
        # task, so the spinner stops while the step (maybe a registry round trip) runs.
        method: dict[str, Any] | None = None
        if cq is not None and cq.data and (cq.data == NOOP or cq.data.startswith(MONTH_PREFIX)):
            return await self._calendar_move(cq, p, inline)
        if cq is not None and cq.data and cq.data.startswith(DATE_PREFIX):
            # A day picked on the plan's calendar is the date typed; the dialog validates it like any text.
            event = Event("text", text=cq.data[len(DATE_PREFIX):])
            if inline:
                method = _inline_answer(cq.id, None)
            else:
                answer = asyncio.create_task(self._answer(cq.id, None, inline))
            cq = None
        if cq is not None:
            choice, lang = await self._resolve_callback(p.chat_id, cq.data)
            if choice is None:
                expired = True
                lang = lang or pick_lang(p.lang_hint)
                event = Event("text", text="/menu")
            else:
                event = Event("choice", choice=choice)
            notice = say(self.rt.catalog, "tg.menu_expired", lang) if expired and lang else None
            if inline:
                method = _inline_answer(cq.id, notice)
            else:
                answer = asyncio.create_task(self._answer(cq.id, notice, inline))
        assert event is not None
        incoming = Incoming(CHANNEL, str(p.chat_id), event, dedupe_key=str(p.update_id), lang_hint=p.lang_hint)
        try:
            result = await self._handle_with_retry(incoming)
        finally:
            if answer is not None:
                method = await answer
        self._remember_menu(p.chat_id, result.offered)
        # The conversation's language (the one picked with /language), not the client's: the calendar's
        # weekdays, the contact button and the notice below are our words in the user's language.
        messages, shown = render_batch(result.messages, self.rt.catalog, result.lang,
                                       keyboard_shown=p.chat_id in self._contact_keyboard)
        if expired:
            messages.insert(0, Outgoing(say(self.rt.catalog, "tg.menu_expired", result.lang)))
        elif cq is not None and cq.message_id is not None and len(messages) == 1 and messages[0].buttons:
            if cq.buttons == messages[0].buttons:
                edit_id = cq.message_id  # the same menu again: redraw it where it is
        if shown:
            self._contact_keyboard.add(p.chat_id)
        else:
            self._contact_keyboard.discard(p.chat_id)
        await self.deliver_reply(p.chat_id, messages, edit_id, user_id=result.user_id)
        return method

    def _remember_menu(self, chat_id: int, offered: tuple[str, ...]) -> None:
        """Keeps the menu the step left on offer (StepResult.offered), so most clicks resolve without a read."""
        if not offered:
            self._menus.pop(chat_id, None)
            return
        self._menus[chat_id] = offered
        self._menus.move_to_end(chat_id)
        while len(self._menus) > 50000:
            self._menus.popitem(last=False)

    async def _resolve_callback(self, chat_id: int, data: str | None) -> tuple[str | None, str | None]:
        """The choice a button names if it belongs to the menu on offer now, else None; plus the language
        when it had to be read. The in-memory mirror answers most clicks; the database has the last word,
        so a menu another worker drew is never called expired by mistake."""
        cached = self._menus.get(chat_id)
        if cached is not None:
            choice = resolve_choice(data, cached)
            if choice is not None:
                return choice, None
        offer = await self.rt.repository.offer(CHANNEL, str(chat_id))
        return resolve_choice(data, offer.choices), offer.lang

    async def _handle_with_retry(self, incoming: Incoming) -> StepResult:
        for attempt in range(3):
            try:
                return await self.rt.dispatcher.handle(incoming)
            except ConflictError:
                # Another worker stepped this user meanwhile; the inbox row makes the rerun safe.
                if attempt == 2:
                    raise
                await asyncio.sleep(0.05 * (attempt + 1))
        raise AssertionError("unreachable")

    async def deliver_reply(self, chat_id: int, messages: list[Outgoing], edit_id: int | None = None, *,
                            user_id: int | None = None) -> None:
        """Sends a step's replies, waiting up to `inline_wait`; what is still queued then goes to the outbox
        as claimed rows, so a crash before it is sent means a resend rather than a loss."""
        if not messages:
            return
        task = self._spawn(self.sender.deliver(chat_id, messages, push=False, edit_message_id=edit_id))
        if await _done_within(task, self.limits.inline_wait):
            self._log_undeliverable(task, chat_id)
            return
        seqs = sorted({m.seq for m in messages if m.seq is not None})
        ids: list[int] = []
        if user_id is not None and seqs:
            try:
                ids = await self.pump.mark_handed_over(user_id, seqs)
            except Exception as exc:
                if not storage_unavailable(exc):
                    raise
                # The rows stay as the step committed them (sent), and the send under way goes on. A 503 here would
                # have Telegram deliver the update again, and its replayed answer would go out twice; what this
                # costs is the resend after a crash before the send is done.
                log.warning("telegram replies not handed over: storage unavailable", extra={"rows": len(seqs)})
        self._spawn(self._settle_later(task, chat_id, ids))

    async def _settle_later(self, task: asyncio.Task[Any], chat_id: int, ids: list[int]) -> None:
        """Marks the handed-over rows once the send is done: sent or failed as it went, retried while the database
        refuses (OutboxPump.settle_handed_over), so they are neither held until the lease runs out nor sent
        twice."""
        try:
            await asyncio.wait({task})
            failed = self._log_undeliverable(task, chat_id)
            await self.pump.settle_handed_over(ids, "failed" if failed else "sent")
        except asyncio.CancelledError:
            self.pump.inflight.difference_update(ids)
            raise

    def _log_undeliverable(self, task: asyncio.Task[Any], chat_id: int) -> bool:
        if task.cancelled():
            return True
        exc = task.exception()
        if exc is None:
            return False
        if isinstance(exc, Undeliverable):
            log.warning("telegram reply undeliverable", extra={"reason": exc.reason})
            if exc.blocked:
                self._spawn(self.mark_blocked(chat_id))
        else:
            log.error("telegram reply failed", exc_info=exc)
        return True

    async def give_up(self, p: UpdatePlan, *, inline: bool = False) -> dict[str, Any] | None:
        """An update that failed every try: apologise in a private chat, stop a button's spinner, move on."""
        self.remember(p.update_id)
        if p.route in ("dispatch", "edited") and p.chat_id:
            try:
                await self._notice(p.chat_id, "web.error.internal", pick_lang(p.lang_hint))
            except Exception:
                log.exception("telegram apology failed")
        if p.press is None:
            return None
        return await self._answer(p.press.id, None, inline)

    def count_failure(self, update_id: int) -> int:
        count = self._failures.get(update_id, 0) + 1
        self._failures[update_id] = count
        if len(self._failures) > 10000:
            self._failures.pop(next(iter(self._failures)))
        return count

    async def _notice(self, chat_id: int, key: str, lang: str,
                      markup: InlineKeyboardMarkup | None = None) -> None:
        """An adapter message outside the dialog (no step, no outbox row)."""
        await self.deliver_reply(chat_id, [Outgoing(say(self.rt.catalog, key, lang), markup)])

    async def _group(self, p: UpdatePlan) -> None:
        try:
            username: str | None = self.bot.username
            bot_id: int | None = self.bot.id
        except RuntimeError:
            username, bot_id = None, None
        if not addressed_to_bot(p, username, bot_id):
            return
        await self._group_notice(p.chat_id, pick_lang(p.lang_hint), username)

    async def _group_notice(self, chat_id: int, lang: str, username: str | None) -> None:
        now = time.monotonic()
        if now - self._group_notice_at.get(chat_id, -GROUP_NOTICE_EVERY) < GROUP_NOTICE_EVERY:
            return  # groups allow 20 messages a minute; one refusal a minute is plenty
        self._group_notice_at[chat_id] = now
        if len(self._group_notice_at) > 10000:
            self._group_notice_at.pop(next(iter(self._group_notice_at)))
        markup = None
        if username:
            markup = InlineKeyboardMarkup([[InlineKeyboardButton(say(self.rt.catalog, "tg.open_private", lang),
                                                                 url=f"https://t.me/{username}?start=group")]])
        await self._notice(chat_id, "tg.group_refused", lang, markup)

    async def _member(self, p: UpdatePlan) -> None:
        member = p.member
        assert member is not None
        status = member.new_status
        if member.chat_type == "private":
            if status == "kicked":
                await self.set_active(p.chat_id, False)
            elif status == "member":
                await self.set_active(p.chat_id, True)
            return
        if member.chat_type in ("group", "supergroup") and status in ("member", "administrator") and \
                member.old_status in ("left", "kicked"):
            try:
                username: str | None = self.bot.username
            except RuntimeError:
                username = None
            async with self.turns.turn(p.chat_id, 0):
                await self._group_notice(p.chat_id, pick_lang(p.lang_hint), username)

    # ---- users -----------------------------------------------------------------------------------

    async def set_active(self, chat_id: int, active: bool) -> None:
        await self.rt.repository.set_active(CHANNEL, str(chat_id), active)
        log.info("telegram user %s", "unblocked the bot" if active else "blocked the bot")

    async def mark_blocked(self, chat_id: int) -> None:
        await self.set_active(chat_id, False)

    async def _user_lang(self, chat_id: int, hint: str | None) -> str:
        """The language of an adapter notice outside a step: the conversation's, else the client's."""
        return await self.rt.repository.user_lang(CHANNEL, str(chat_id)) or pick_lang(hint)


TELEGRAM: web.AppKey[TelegramChannel] = web.AppKey("telegram", TelegramChannel)


async def _done_within(task: asyncio.Task[Any], seconds: float) -> bool:
    """Whether `task` finished within `seconds`; it goes on either way. asyncio.wait for one task, without the sets
    and the per-future bookkeeping: it runs on every reply."""
    if task.done():
        return True
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[None] = loop.create_future()

    def wake(_: object = None) -> None:
        if not waiter.done():
            waiter.set_result(None)

    timer = loop.call_later(seconds, wake)
    task.add_done_callback(wake)
    try:
        await waiter
    finally:
        timer.cancel()
        task.remove_done_callback(wake)
    return task.done()


def _inline_answer(callback_id: str, text: str | None) -> dict[str, Any]:
    """answerCallbackQuery as a webhook response's method: Telegram runs it when it reads the response."""
    method: dict[str, Any] = {"method": "answerCallbackQuery", "callback_query_id": callback_id}
    if text:
        method["text"] = text
    return method


async def _read_body(request: web.Request) -> bytes | None:
    if (request.content_length or 0) > MAX_UPDATE_BYTES:
        return None
    chunks: list[bytes] = []
    size = 0
    while chunk := await request.content.read(65536):
        size += len(chunk)
        if size > MAX_UPDATE_BYTES:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


async def webhook(request: web.Request) -> web.Response:
    channel = request.app[TELEGRAM]
    offered = request.headers.get(SECRET_HEADER, "")
    if not secrets.compare_digest(offered.encode(), channel.secret.encode()):
        return web.Response(status=403)
    raw = await _read_body(request)
    if raw is None:
        return web.Response(status=413)
    try:
        data = jsoncodec.loads(raw)
    except (UnicodeDecodeError, ValueError):
        return web.Response(status=400)
    if not isinstance(data, dict) or not isinstance(data.get("update_id"), int):
        return web.Response(status=400)
    update = channel.parse(data)
    if update is None:
        # The secret proved it came from Telegram, so a retry would fail the same way; a button still gets its
        # spinner stopped.
        press = data.get("callback_query")
        if isinstance(press, dict) and isinstance(press.get("id"), str):
            return web.json_response({"method": "answerCallbackQuery", "callback_query_id": press["id"]})
        return web.Response(status=200)
    try:
        method = await channel.handle_update(update, inline=True)
    except ConflictError:
        return web.Response(status=503)  # Telegram retries; the inbox makes the retry safe
    except Exception as exc:
        if storage_unavailable(exc):
            # The database is down or restarting: not this update's fault, so it never counts towards giving up.
            # Telegram keeps retrying, and the inbox makes the delivery count once when the database is back.
            log.warning("telegram update deferred: storage unavailable", extra={"update_id": update.update_id})
            return web.Response(status=503, headers={"Retry-After": "5"})
        failures = channel.count_failure(update.update_id)
        log.exception("telegram update failed", extra={"update_id": update.update_id, "attempt": failures})
        if failures < MAX_UPDATE_FAILURES:
            return web.Response(status=500)
        answer = await channel.give_up(update, inline=True)
        return web.json_response(answer) if answer is not None else web.Response(status=200)
    if method is not None:
        return web.Response(body=jsoncodec.dumps(method), content_type="application/json")
    return web.Response(status=200)


def build_bot(rt: Runtime) -> tuple[LeanBot, list[BaseRequest]]:
    settings = rt.settings
    # getUpdates gets its own connection so a long poll never holds one a send is waiting for.
    requests: list[BaseRequest] = [AiohttpRequest(), AiohttpRequest(connection_pool_size=1, read_timeout=10.0)]
    bot = LeanBot(settings.telegram_bot_token, base_url=base_url(settings.telegram_api_base_url),
              request=requests[0], get_updates_request=requests[1])
    return bot, requests


def setup_telegram(app: web.Application, rt: Runtime, *, bot: LeanBot | None = None,
                   limits: Limits | None = None) -> TelegramChannel | None:
    """Mounts the Telegram channel on `app`; a second call on the same app does nothing."""
    if TELEGRAM in app:
        return app[TELEGRAM]
    settings = rt.settings
    if not settings.telegram_bot_token:
        return None
    check_webhook_settings(settings)
    # PTB logs request parameters and raw updates at DEBUG; those carry what users type.
    ptb_log = logging.getLogger("telegram")
    if ptb_log.getEffectiveLevel() < logging.INFO or ptb_log.level == logging.NOTSET:
        ptb_log.setLevel(logging.INFO)
    mode: Literal["webhook", "polling"] = "webhook" if settings.telegram_webhook_url else "polling"
    requests: list[BaseRequest] = []
    if bot is None:
        bot, requests = build_bot(rt)
    channel = TelegramChannel(rt=rt, bot=bot, mode=mode, secret=webhook_secret(rt),
                              limits=limits or Limits(bot_per_second=settings.telegram_bot_per_second),
                              requests=requests)
    app[TELEGRAM] = channel
    from bot.channels.telegram_staff import attach_staff_group

    channel.staff_group = attach_staff_group(rt, bot)
    if mode == "webhook":
        app.router.add_post(WEBHOOK_PATH, webhook)

    async def startup(_app: web.Application) -> None:
        # The first registration is awaited: a refused token, URL or secret stops the start, naming the
        # setting. An API that does not answer only delays registration, which goes on in the background.
        registered = False
        try:
            await asyncio.wait_for(channel.register(), channel.limits.api_timeout)
            registered = True
        except ConfigurationError as exc:
            log.critical("telegram configuration error: %s", exc)
            raise
        except (TelegramError, TimeoutError) as exc:
            log.warning("telegram not registered at start; retrying in the background",
                        extra={"error": type(exc).__name__})
        rt.background.extend(channel.start(registered))

    async def shutdown(_app: web.Application) -> None:
        await channel.shutdown()

    app.on_startup.append(startup)
    app.on_shutdown.append(shutdown)
    return channel
