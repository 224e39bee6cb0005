"""Delivery to Telegram: per-chat ordered lanes, rate limits, 429/5xx handling, and the outbox sender.

Limits: every send (reply or push) takes a turn from one bot-wide pace of `bot_per_second`, where waiting
replies to a user's own message go before waiting pushes; per chat, `chat_per_second` sustained (groups
`group_per_minute`), replies bursting `interactive_burst` deep. A 429 blocks only its own chat for
`retry_after`. Outbox rows are delivered at least once and never again once marked `sent`; rows are claimed
(`sending`, lease in `sent_at`) so several workers never send one row twice while both are alive.

It must never log message text, phone numbers or the bot token, and never send to a blocked user's push.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from telegram import Bot, InlineKeyboardMarkup, TelegramObject
from telegram.error import BadRequest, ChatMigrated, Forbidden, NetworkError, RetryAfter, TelegramError, TimedOut

from bot import jsoncodec, metrics
from bot.budgets import Budget, LocalBudget, Slot, joint
from bot.channels.telegram_render import Outgoing, render_payload
from bot.channels.telegram_request import AiohttpRequest, raise_for_answer
from bot.i18n import Catalog
from bot.repository import Queued, Recipient
from bot.storage import storage_unavailable, utcnow

log = logging.getLogger(__name__)

CHANNEL = "telegram"


@dataclass
class Limits:
    # Telegram's bulk limit is "about 30 messages per second"; keep under it so network jitter cannot push a
    # second over.
    bot_per_second: float = 28.0
    chat_per_second: float = 1.0
    # Telegram allows 20 messages a minute in a group.
    group_per_minute: float = 19.0
    # Replies to a user's own message: Telegram tolerates a short burst in a private chat, then answers 429.
    interactive_burst: int = 3
    # How long a webhook call waits for its replies to go out before handing them to the outbox.
    inline_wait: float = 2.0
    max_attempts: int = 5
    # Seconds one Bot API call may take before it counts as failed (and is retried).
    api_timeout: float = 10.0
    backoff_base: float = 0.5
    backoff_cap: float = 30.0
    outbox_poll: float = 1.0
    # First wait after a failed getUpdates or start-up call; doubles up to a minute.
    retry_base: float = 1.0
    outbox_batch: int = 100
    # A claimed row whose worker died goes back to `pending` after this long.
    lease_seconds: float = 600.0
    # Settling replies the webhook handed over, while the database refuses: first wait, doubling to the cap.
    settle_retry_base: float = 0.5
    settle_retry_cap: float = 15.0


class Undeliverable(Exception):
    """The message cannot go out: blocked by the user, chat gone, bad request, or retries exhausted."""

    def __init__(self, reason: str, *, blocked: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.blocked = blocked


def _seconds(value: int | float | timedelta) -> float:
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


def retry_after(exc: RetryAfter) -> float:
    # PTB 22 keeps a timedelta and warns when `retry_after` is read as an int; read the timedelta.
    held = getattr(exc, "_retry_after", None)
    if isinstance(held, timedelta):
        return held.total_seconds()
    return _seconds(exc.retry_after)


def _telegram_object(value: Any) -> Any:
    """How a PTB object in a send's parameters goes into its JSON body (jsoncodec's `default`)."""
    if isinstance(value, TelegramObject):
        return value.to_dict()
    raise TypeError(type(value).__name__)


class LeanBot(Bot):
    """telegram.Bot plus `send_raw`: the send path posts the JSON itself over the aiohttp session and never
    builds a Message from the answer. PTB's `_post` (RequestData, parameter objects, a Message per send) cost
    about a fifth of an update's CPU; PTB stays for set-up, commands and types, and errors still come as PTB's
    exceptions (RetryAfter, Forbidden, BadRequest…), mapped the way PTB maps them."""

    async def send_raw(self, endpoint: str, data: dict[str, Any], seconds: float, *,
                       read_seconds: float | None = None) -> Any:
        request = self._request[0] if endpoint == "getUpdates" else self._request[1]
        if not isinstance(request, AiohttpRequest):
            return await self._post(endpoint, data, read_timeout=read_seconds or seconds, write_timeout=seconds,
                                    connect_timeout=seconds, pool_timeout=seconds)
        body = jsoncodec.dumps({key: value for key, value in data.items() if value is not None}, _telegram_object)
        status, raw = await request.post_json(f"{self.base_url}/{endpoint}", body, seconds, read_seconds or seconds)
        return raise_for_answer(status, raw)


# Turn ranks in the bot-wide queue: lower goes first.
REPLY, PUSH, BROADCAST = 0, 1, 2


class BotPace:
    """The bot-wide pace all sends share, and a queue that grants waiting replies before waiting pushes, and pushes
    before broadcasts.

    A reply is what a user waits for; a reminder or broadcast can come a second later. All count against the same
    Telegram limit, so all take their turn here. A turn for a chat reserves the chat's slot and the bot's slot
    together (bot.budgets.Budget.reserve_joint): the message goes out at the later of the two, and both paces count
    it there. When the chat's slot is the later one, nothing is taken: the turn waits aside until then and the
    bot's slots go to other chats meanwhile."""

    def __init__(self, clock: Callable[[], float], budget: Budget | None = None, key: str = "telegram") -> None:
        self.clock = clock
        # With several workers the limits are the deployment's, not this process's: each turn takes its slots of
        # the shared budget (Redis or PostgreSQL, bot/budgets.py). Without one, this process keeps them itself;
        # the same keeps them when the shared budget fails outright.
        self.budget = budget
        self.local = LocalBudget(clock)
        self.key = key
        self.rate = 30.0
        self._queue: list[tuple[int, int, asyncio.Future[None], Slot | None]] = []
        # Turns whose chat is not ready yet, back in the queue when it is.
        self._aside: set[tuple[int, int, asyncio.Future[None], Slot | None]] = set()
        self._order = itertools.count()
        self._granter: asyncio.Task[None] | None = None

    async def turn(self, rate: float, *, push: bool, broadcast: bool = False, chat: Slot | None = None) -> None:
        """Waits for a turn (for `chat`'s slot too, when given): replies first, then pushes, then broadcasts (which
        are never urgent)."""
        self.rate = rate
        idle = not self._queue and (self._granter is None or self._granter.done())
        if idle and self.budget is None:
            # Nobody waiting here and the slots free now: take them without queueing.
            if self._take_locally(chat, now_only=True, reply=not (push or broadcast)):
                return
        rank = BROADCAST if broadcast else PUSH if push else REPLY
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._push((rank, next(self._order), future, chat))
        await future

    def _push(self, entry: tuple[int, int, asyncio.Future[None], Slot | None]) -> None:
        heapq.heappush(self._queue, entry)
        if self._granter is None or self._granter.done():
            self._granter = asyncio.create_task(self._grant())

    def _bot(self, rank: int) -> Slot:
        """The bot's budget as a turn of `rank` sees it: a reply may take its slot one interval early."""
        return Slot(self.key, self.rate, credit=1.0 / self.rate if rank == REPLY else 0.0)

    def _take_locally(self, chat: Slot | None, *, now_only: bool = False, reply: bool = False) -> bool:
        """The in-memory reservation, synchronous: True when taken (and, with `now_only`, free this instant)."""
        bot = self._bot(REPLY if reply else PUSH)
        now = float(self.clock())
        if chat is None:
            tat = self.local.tat(self.key)
            if now_only and tat - bot.credit > now:
                return False
            self.local.put(self.key, max(tat, now) + bot.interval)
            return True
        taken, start, chat_tat, bot_tat = joint(now, chat, self.local.tat(chat.key), bot, self.local.tat(self.key),
                                                bot.interval)
        if not taken or (now_only and start > now):
            return False
        self.local.put(chat.key, chat_tat)
        self.local.put(self.key, bot_tat)
        return True

    async def reserve(self, chat: Slot | None, rank: int = PUSH, *, now_only: bool = False) -> tuple[bool, float]:
        """Reserves the bot's slot (and `chat`'s with it) on the shared budget, else this process's own: (taken,
        wait). With `now_only` (a chat given) nothing is taken unless both are free this instant."""
        budget: Budget = self.budget if self.budget is not None else self.local
        bot = self._bot(rank)
        try:
            if chat is None:
                return True, await budget.reserve(self.key, self.rate)
            return await budget.reserve_joint(chat, bot, bot.interval, now_only=now_only)
        except Exception:
            if budget is self.local:
                raise
            # The shared store failed outright (its own fallbacks too): keep the process's own pace.
            log.exception("telegram: shared send budget unavailable")
            if chat is None:
                return True, await self.local.reserve(self.key, self.rate)
            return await self.local.reserve_joint(chat, bot, bot.interval, now_only=now_only)

    async def _grant(self) -> None:
        """Grants queued turns one at a time, best rank first, each on slots reserved for it; a turn whose chat is
        not ready yet waits aside and comes back to the queue, in its place, when it is."""
        loop = asyncio.get_running_loop()
        while self._queue:
            entry = heapq.heappop(self._queue)
            future = entry[2]
            if future.done():
                continue
            taken, wait = await self.reserve(entry[3], entry[0])
            if not taken:
                self._aside.add(entry)
                loop.call_later(wait, self._back, entry)
                continue
            if wait > 0:
                await asyncio.sleep(wait)
            if not future.done():
                future.set_result(None)

    def _back(self, entry: tuple[int, int, asyncio.Future[None], Slot | None]) -> None:
        self._aside.discard(entry)
        if not entry[2].done():
            self._push(entry)

    def __len__(self) -> int:
        return sum(1 for *_, future, _chat in [*self._queue, *self._aside] if not future.done())


@dataclass
class Lane:
    """One chat's send queue: FIFO lock for order, and its 429 block (its pace is kept with the bot's, BotPace)."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    blocked_until: float = 0.0
    holders: int = 0


class Sender:
    """Sends rendered messages with pacing and retries; knows nothing of dialogs or updates."""

    def __init__(self, bot: LeanBot, limits: Limits, *, clock: Callable[[], float] = time.monotonic,
                 budget: Budget | None = None, budget_key: str = "telegram") -> None:
        self.bot = bot
        self.limits = limits
        self.clock = clock
        self._lanes: dict[int, Lane] = {}
        self.pace = BotPace(clock, budget, budget_key)
        self._sent_ok = metrics.SENDS.labels(CHANNEL, "ok")  # looked up once: labels() costs more than the count
        self.on_blocked: Callable[[int], Awaitable[None]] | None = None

    def lane(self, chat_id: int) -> Lane:
        lane = self._lanes.get(chat_id)
        if lane is None:
            lane = self._lanes[chat_id] = Lane()
        return lane

    def sweep(self) -> None:
        """Forgets idle chats whose pace no longer matters."""
        now = self.clock()
        for chat_id in [c for c, lane in self._lanes.items() if lane.holders == 0 and lane.blocked_until <= now]:
            del self._lanes[chat_id]
        self.pace.local.forget_idle(now)

    async def deliver(self, chat_id: int, messages: list[Outgoing], *, push: bool,
                      edit_message_id: int | None = None, broadcast: bool = False) -> list[Any]:
        """Sends `messages` in order, holding the chat's lane so no other batch interleaves.

        With `edit_message_id`, the first message replaces that message's text and keyboard instead. A
        `broadcast` waits behind every reply and push for its bot-wide turn.
        """
        lane = self.lane(chat_id)
        lane.holders += 1
        try:
            async with lane.lock:
                results: list[Any] = []
                for index, message in enumerate(messages):
                    if index == 0 and edit_message_id is not None:
                        edited = await self._edit(lane, chat_id, edit_message_id, message)
                        if edited is not None:
                            results.append(edited)
                            continue
                    results.append(await self._send(lane, chat_id, message, push=push or broadcast,
                                                    broadcast=broadcast))
                return results
        finally:
            lane.holders -= 1

    async def call(self, lane: Lane | None, make: Callable[[], Awaitable[Any]], *, push: bool,
                   paced: bool = True, chat_id: int = 0, broadcast: bool = False) -> Any:
        """One API call with pacing, 429 and transient-error retries; raises Undeliverable when hopeless."""
        attempt = 0
        while True:
            if lane is not None:
                await self._wait_turn(lane, push=push, paced=paced, chat_id=chat_id, broadcast=broadcast)
            try:
                answer = await make()
                self._sent_ok.inc()
                return answer
            except RetryAfter as exc:
                metrics.THROTTLED.labels(CHANNEL).inc()
                wait = retry_after(exc)
                if lane is not None:
                    lane.blocked_until = max(lane.blocked_until, self.clock() + wait)
                else:
                    await asyncio.sleep(wait)
                log.warning("telegram flood control", extra={"retry_after": wait, "push": push})
            except Forbidden as exc:
                raise Undeliverable("forbidden", blocked=True) from exc
            except ChatMigrated as exc:
                raise Undeliverable("chat_migrated") from exc
            except BadRequest as exc:
                raise Undeliverable("bad_request: " + _safe(exc)) from exc
            except (TimedOut, NetworkError) as exc:
                attempt += 1
                if attempt >= self.limits.max_attempts:
                    raise Undeliverable(f"gave up: {type(exc).__name__}") from None
                delay = min(self.limits.backoff_cap, self.limits.backoff_base * 2 ** (attempt - 1))
                await asyncio.sleep(delay * (0.5 + random.random() / 2))
            except TelegramError as exc:
                raise Undeliverable(f"telegram error: {type(exc).__name__}") from None

    def chat_rate(self, chat_id: int) -> float:
        return self.limits.group_per_minute / 60.0 if chat_id < 0 else self.limits.chat_per_second

    async def _wait_turn(self, lane: Lane, *, push: bool, paced: bool, chat_id: int = 0,
                         broadcast: bool = False) -> None:
        while True:
            wait = lane.blocked_until - self.clock()
            if wait > 0:
                await asyncio.sleep(wait)
            if not paced:
                return
            # Several workers answer the same chat (each update lands where it lands): the chat's pace is shared
            # like the bot's, and reserved with it. A 429's block stays with this process, which got it.
            burst = 1 if push or chat_id < 0 else self.limits.interactive_burst
            chat = Slot(f"{self.pace.key}:chat:{chat_id}", self.chat_rate(chat_id), burst)
            await self.pace.turn(self.limits.bot_per_second, push=push, broadcast=broadcast, chat=chat)
            if lane.blocked_until <= self.clock():
                return
            # A 429 for this chat came while the turn was queued: its slots are spent; wait the block out.

    async def _send(self, lane: Lane, chat_id: int, message: Outgoing, *, push: bool,
                    broadcast: bool = False) -> Any:
        data: dict[str, Any] = {"chat_id": chat_id, "text": message.text, "reply_markup": message.markup}
        return await self.call(lane, lambda: self.bot.send_raw("sendMessage", data, self.limits.api_timeout),
                               push=push, chat_id=chat_id, broadcast=broadcast)

    async def _edit(self, lane: Lane, chat_id: int, message_id: int, message: Outgoing) -> Any:
        """Edits in place; None means the edit is impossible and a new message should go instead."""
        markup = message.markup if isinstance(message.markup, InlineKeyboardMarkup) else None
        data: dict[str, Any] = {"chat_id": chat_id, "message_id": message_id, "text": message.text,
                                "reply_markup": markup}
        try:
            return await self.call(lane, lambda: self.bot.send_raw("editMessageText", data, self.limits.api_timeout),
                                   push=False, chat_id=chat_id)
        except Undeliverable as exc:
            if "not modified" in exc.reason:
                return True
            if exc.blocked:
                raise
            return None

    async def edit_markup(self, chat_id: int, message_id: int, markup: InlineKeyboardMarkup) -> None:
        """Redraws a keyboard where it is (the plan's calendar moving a month); failures leave the old one."""
        data: dict[str, Any] = {"chat_id": chat_id, "message_id": message_id, "reply_markup": markup}
        try:
            await self.call(self.lane(chat_id), lambda: self.bot.send_raw("editMessageReplyMarkup", data,
                                                                          self.limits.api_timeout), push=False,
                            chat_id=chat_id)
        except Undeliverable as exc:
            log.info("keyboard edit failed", extra={"reason": exc.reason})

    async def answer_callback(self, callback_id: str, text: str | None = None) -> None:
        """Stops the button's spinner. Not a chat message, so unpaced; failures only cost the spinner."""
        data: dict[str, Any] = {"callback_query_id": callback_id, "text": text}
        try:
            await self.call(None, lambda: self.bot.send_raw("answerCallbackQuery", data, self.limits.api_timeout),
                            push=False, paced=False)
        except Undeliverable as exc:
            log.info("callback answer failed", extra={"reason": exc.reason})


def _safe(exc: Exception) -> str:
    # Bot API descriptions are fixed phrases ("message is not modified", "chat not found"); cap them anyway.
    return str(getattr(exc, "message", exc))[:120].lower()


class OutboxStore(Protocol):
    """What the pump reads and writes of the outbox (bot/repository.py Repository)."""

    async def pending_with_recipients(self, channel: str, limit: int,
                                      skip: Collection[int] = ()) -> list[tuple[Queued, Recipient]]: ...

    async def claim_pending(self, row_id: int) -> bool: ...

    async def claim_replies(self, channel: str, user_id: int, seqs: Sequence[int]) -> list[int]: ...

    async def settle(self, ids: Collection[int], status: str, *, attempt: bool = False,
                     stamp: bool = True) -> None: ...

    async def reclaim(self, channel: str, *, claimed_before: datetime | None, keep: Collection[int] = ()) -> None: ...


class OutboxPump:
    """Delivers `pending` telegram outbox rows (pushes, and replies a webhook handed over) and marks them."""

    def __init__(self, outbox: OutboxStore, catalog: Catalog, sender: Sender, limits: Limits, *,
                 sqlite: bool = False) -> None:
        self.outbox = outbox
        self.catalog = catalog
        self.sender = sender
        self.limits = limits
        # One SQLite process: every claim found at start-up is from a previous life.
        self.sqlite = sqlite
        self.inflight: set[int] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.wakeup = asyncio.Event()

    async def run_forever(self) -> None:
        rounds = 0
        while True:
            try:
                if rounds % 60 == 0:
                    await self.reclaim(everything=rounds == 0 and self.sqlite)
                    self.sender.sweep()
                rounds += 1
                found = await self.pump_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("telegram outbox round failed")
                found = 0
            if found < self.limits.outbox_batch:
                self.wakeup.clear()
                try:
                    await asyncio.wait_for(self.wakeup.wait(), self.limits.outbox_poll)
                except TimeoutError:
                    pass

    async def reclaim(self, *, everything: bool) -> None:
        """Rows claimed by a worker that died go back to `pending`. With one SQLite process at start-up,
        every claim is from a previous life; with several workers only expired leases are."""
        cutoff = None if everything else utcnow() - timedelta(seconds=self.limits.lease_seconds)
        await self.outbox.reclaim(CHANNEL, claimed_before=cutoff, keep=set(self.inflight))

    async def pump_once(self) -> int:
        rows = await self.outbox.pending_with_recipients(CHANNEL, self.limits.outbox_batch, set(self.inflight))
        for row, user in rows:
            if not user.active or not user.address.lstrip("-").isdigit():
                await self.finish(row.id, "failed")
                continue
            if not await self.claim(row.id):
                continue
            self.inflight.add(row.id)
            task = asyncio.create_task(self._push(row, int(user.address), user.lang))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        return len(rows)

    async def claim(self, row_id: int) -> bool:
        return await self.outbox.claim_pending(row_id)

    async def finish(self, row_id: int, status: str) -> None:
        await self.outbox.settle([row_id], status)

    async def _push(self, row: Queued, chat_id: int, lang: str) -> None:
        try:
            if row.attempts >= self.limits.max_attempts:
                # Claimed this often without finishing: something kills the worker mid-send. Stop.
                await self.finish(row.id, "failed")
                return
            payload: dict[str, Any] = json.loads(row.payload)
            messages = render_payload(payload, self.catalog, lang)
            await self.sender.deliver(chat_id, messages, push=row.kind == "push")
            await self.finish(row.id, "sent")
        except Undeliverable as exc:
            log.warning("telegram outbox row undeliverable", extra={"outbox_id": row.id, "reason": exc.reason})
            await self.finish(row.id, "failed")
            if exc.blocked and self.sender.on_blocked is not None:
                await self.sender.on_blocked(chat_id)
        except asyncio.CancelledError:
            # Leave the row claimed: the lease (or the next SQLite start) hands it back.
            raise
        except Exception:
            log.exception("telegram outbox row failed", extra={"outbox_id": row.id})
        finally:
            self.inflight.discard(row.id)

    async def mark_handed_over(self, user_id: int, seqs: list[int]) -> list[int]:
        """Reply rows a webhook could not finish in time: claimed by us, so a crash resends them."""
        ids = await self.outbox.claim_replies(CHANNEL, user_id, seqs)
        self.inflight.update(ids)
        return ids

    async def settle(self, ids: list[int], status: str) -> None:
        try:
            await self.outbox.settle(ids, status)
        finally:
            self.inflight.difference_update(ids)

    async def settle_handed_over(self, ids: list[int], status: str) -> None:
        """Settles replies the channel sent itself (`status` says how that went), retrying with backoff while the
        database refuses: a reply that reached Telegram is marked sent, never handed back to be sent again, and
        one that failed is marked failed, within seconds of the database answering again rather than when the
        lease runs out. The rows stay in `inflight` meanwhile, so this process neither reclaims nor re-sends
        them. Only a settle that cannot land before the lease expires (a database away for `lease_seconds`) lets
        another worker send them again: at least once, as every claim."""
        delay = self.limits.settle_retry_base
        tries = 0
        try:
            while True:
                try:
                    await self.outbox.settle(ids, status)
                    if tries:
                        log.info("telegram reply rows settled after retrying", extra={"rows": len(ids),
                                                                                   "tries": tries + 1})
                    return
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    if not storage_unavailable(exc):
                        # A bug or bad data, not an outage: retrying would only repeat it. The lease hands the rows
                        # back (at least once, as every claim).
                        log.exception("telegram reply rows not settled", extra={"rows": len(ids), "status": status})
                        return
                    tries += 1
                    log.warning("telegram reply rows not settled; retrying",
                                extra={"rows": len(ids), "status": status, "retry_in": delay,
                                       "error": type(exc).__name__})
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self.limits.settle_retry_cap)
        finally:
            self.inflight.difference_update(ids)
