"""Delivers pending WeChat outbox rows by customer-service message, inside WeChat's windows.

A user message opens 5 messages within 48 h; a menu click, a follow or a QR scan opens 3 within 1 minute.
Window openings come from the inbox (dedupe keys `m:` for messages, `c:` for clicks/follows/scans), so they
survive restarts. What cannot go out waits for the user's next message, or goes as a template message when one
is configured and the row is a push. On an account without the customer-service API (WECHAT_ACCOUNT=unverified,
or one WeChat answered 48001/40164 for) replies wait for the user's next message, which the channel answers with
them, and pushes are marked `unreachable`. Rows are claimed (`sending`) before the call, so a passive retry answer
and this sender never deliver the same row twice.
It must never send out of a user's seq order, never send to someone who unfollowed, and never log message text.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlmodel import col, select

from bot import metrics
from bot.channels.wechat_account import Capabilities
from bot.channels.wechat_api import (
    BAD_RECIPIENT,
    OUT_OF_WINDOW,
    UNFOLLOWED,
    WeChatApi,
    WeChatApiError,
    WeChatUnavailable,
)
from bot.channels.wechat_text import (
    MAX_TEXT_BYTES,
    clip,
    join_texts,
    numbered_index,
    paginate,
    payload_text,
    split_fitting,
    template_data,
    text_of,
)
from bot.repository import Queued, Recipient
from bot.repository import aware as aware  # also bot/broadcasts.py's, from here
from bot.storage import WeChatCsSend, utcnow
from domain.beijing import TZ

if TYPE_CHECKING:
    from bot.config import Settings
    from bot.i18n import Catalog
    from bot.repository import Repository
    from bot.storage import Database

log = logging.getLogger(__name__)

CHANNEL = "wechat"
MESSAGE_WINDOW = (timedelta(hours=48), 5)
# The advisory lock space (bot.storage.Database.user_lock) that serialises one user's customer-service sends.
CS_LOCK_SPACE = 1
CLICK_WINDOW = (timedelta(minutes=1), 3)
# A claim older than this belongs to a worker that died mid-send; the row is retried (at least once).
CLAIM_TTL = timedelta(seconds=60)
MAX_ATTEMPTS = 8
PARK_SECONDS = 300.0


def window_allowance(now: datetime, last_message: datetime | None, last_click: datetime | None,
                     sends: Sequence[datetime]) -> int:
    """Customer-service messages still allowed now: the more generous of the open windows."""
    allowed = 0
    for opened, (length, limit) in ((last_message, MESSAGE_WINDOW), (last_click, CLICK_WINDOW)):
        if opened is None or now - opened >= length:
            continue
        used = sum(1 for sent in sends if sent >= opened)
        allowed = max(allowed, limit - used)
    return max(0, allowed)


@dataclass
class _Unit:
    """What goes out as one message: one step's rows (its replies), or one push."""

    rows: list[Queued]
    text: str
    push: bool
    # A text over WeChat's size goes as several messages rather than cut.
    pages: list[str] = field(default_factory=list)


class CustomerServiceSender:
    def __init__(self, *, settings: Settings, db: Database, repository: Repository, catalog: Catalog,
                 no_push_channels: set[str], api: WeChatApi, caps: Capabilities | None = None) -> None:
        """What it uses and nothing else: `db` for its protocol records and the user's send lock, `catalog` for
        its own words, `no_push_channels` (the dispatcher's) to tell the dialog when customer service is refused."""
        self.db, self.catalog, self.no_push_channels = db, catalog, no_push_channels
        # The outbox, the inbox's window openings and the user rows (bot/repository.py); this module keeps only
        # its protocol records (`wechat_cs_sends`, the window counts).
        self.outbox = repository
        self.api = api
        self.caps = caps or Capabilities.declared(settings)
        self.poll_seconds = settings.wechat_sender_poll_seconds
        self.template_id = settings.wechat_template_id if self.caps.templates else ""
        self.template_max_chars = settings.wechat_template_max_chars
        # Configuration errors already reported: logged once, loudly, not once per message.
        self.reported: set[int] = set()
        self.template_url = settings.wechat_template_url
        # WeChat said "out of window" at this time: wait for a newer opening.
        self.closed_at: dict[int, datetime] = {}
        self.backoff_until: dict[int, float] = {}
        # Users whose rows wait for a window (openid -> user id, and since when): skipped by each round until
        # their next inbound message, or PARK_SECONDS later in case it reached another worker.
        self.backlog: dict[str, int] = {}
        self.parked: dict[int, float] = {}
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()

    def wake(self) -> None:
        self._wake.set()

    def wake_for(self, openid: str) -> None:
        """An inbound message from `openid` may have opened a window for what waits."""
        user_id = self.backlog.pop(openid, None)
        if user_id is not None:
            self.parked.pop(user_id, None)
            self._wake.set()

    def _park(self, user: Recipient) -> None:
        self.backlog[user.address] = user.id
        self.parked[user.id] = time.monotonic()

    def _is_parked(self, user_id: int) -> bool:
        since = self.parked.get(user_id)
        if since is None:
            return False
        if time.monotonic() - since < PARK_SECONDS:
            return True
        del self.parked[user_id]
        return False

    async def run_forever(self) -> None:
        try:
            while True:
                try:
                    await self.flush()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("wechat sender round failed")
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=self.poll_seconds)
                    await asyncio.sleep(0.05)  # gather a burst of wake-ups into one round
                except TimeoutError:
                    pass
                self._wake.clear()
        finally:
            await self.api.close()

    async def flush(self) -> int:
        """One round over every user with something to deliver; returns how many messages went out."""
        async with self._lock:
            if not self.caps.customer_service and not (self.caps.templates and self.template_id):
                await self._unreachable_pushes()
            sent = 0
            for user_id in await self.outbox.users_with_claimable(CHANNEL, CLAIM_TTL):
                if self._is_parked(user_id) or self.backoff_until.get(user_id, 0.0) > time.monotonic():
                    continue
                rows = await self.outbox.claimable_of(CHANNEL, user_id, CLAIM_TTL)
                sent += await self._deliver(user_id, rows)
            return sent

    async def _unreachable_pushes(self) -> None:
        """Without any way to push, a push (reminder, status change, broadcast) can never arrive: say so now
        rather than let it wait for ever. Replies stay pending: the user's next message collects them."""
        rows = await self.outbox.pushes_unreachable(CHANNEL)
        if rows:
            log.info("wechat pushes unreachable: the account cannot send customer-service or template messages",
                     extra={"rows": rows})

    async def _deliver(self, user_id: int, rows: list[Queued]) -> int:
        # One worker at a time counts and spends this user's window, so N workers never send more than WeChat
        # allows (its own lock space: a user's steps are not held up by a push going out).
        async with self.db.user_lock(user_id, space=CS_LOCK_SPACE):
            return await self._deliver_locked(user_id, rows)

    async def _recent_sends(self, user_id: int, now: datetime) -> deque[datetime]:
        """This user's customer-service sends within the longest window, from every worker, oldest first."""
        async with self.db.session() as session:
            moments = (await session.exec(
                select(WeChatCsSend.sent_at).where(WeChatCsSend.user_id == user_id,
                                                   col(WeChatCsSend.sent_at) > now - MESSAGE_WINDOW[0])
                .order_by(col(WeChatCsSend.sent_at)))).all()
        return deque(moment for moment in (aware(m) for m in moments) if moment is not None)

    async def _send_template(self, openid: str, text: str) -> None:
        """The configured template message, its one line from `text`, stamped with the time in Beijing."""
        when = utcnow().astimezone(TZ).strftime("%Y-%m-%d %H:%M")
        await self.api.send_template(openid, self.template_id, template_data(
            text, self.caps.template_fields, when, self.template_max_chars), self.template_url)

    async def _record_send(self, user_id: int) -> None:
        async with self.db.session() as session:
            session.add(WeChatCsSend(user_id=user_id, sent_at=utcnow()))
            await session.commit()

    async def _deliver_locked(self, user_id: int, rows: list[Queued]) -> int:
        user = await self.outbox.recipient(user_id)
        if user is None or not rows:
            return 0
        if not user.active:
            self._park(user)
            return 0
        allowance = await self._allowance(user_id)
        sent = 0
        for unit in self._units(rows, user.lang):
            if allowance > 0:
                outcome = await self._send(user, unit, template=False)
                if outcome == "sent":
                    allowance -= 1
                    sent += 1
                    await self._record_send(user_id)
                    continue
                if outcome == "failed":
                    continue
                if outcome == "unfollowed":
                    self._park(user)
                    return sent
                if outcome not in ("closed", "disabled"):
                    return sent
                allowance = 0
            if self.template_id and unit.push:
                outcome = await self._send(user, unit, template=True)
                if outcome in ("sent", "failed"):
                    sent += outcome == "sent"
                    continue
                if outcome == "unfollowed":
                    self._park(user)
                return sent
            self._park(user)
            return sent
        return sent

    async def _allowance(self, user_id: int) -> int:
        """Customer-service messages this user may still get now, every worker's sends counted; 0 after WeChat
        said the window was closed, until the user opens a new one. Call under the user's CS lock."""
        if not self.caps.customer_service:
            return 0
        now = utcnow()
        last_message, last_click = await self._openings(user_id)
        closed = self.closed_at.get(user_id)
        if closed is not None and not any(o is not None and o > closed for o in (last_message, last_click)):
            return 0
        self.closed_at.pop(user_id, None)
        return window_allowance(now, last_message, last_click, await self._recent_sends(user_id, now))

    async def _openings(self, user_id: int) -> tuple[datetime | None, datetime | None]:
        """When the user last opened each window: a message (inbox key `m:`), a click, follow or scan (`c:`)."""
        return await self.outbox.last_inbound(CHANNEL, user_id, ("m:", "c:"))

    def _units(self, rows: list[Queued], lang: str) -> list[_Unit]:
        hint = text_of(self.catalog, "wechat.choose_hint", lang)
        marker = text_of(self.catalog, "wechat.truncated", lang)
        groups: list[list[Queued]] = []
        for row in rows:
            if groups and row.kind == "reply" and row.inbox_id is not None and groups[-1][-1].inbox_id == row.inbox_id:
                groups[-1].append(row)
            else:
                groups.append([row])
        units: list[_Unit] = []
        for group in groups:
            payloads = [json.loads(row.payload) for row in group]
            numbered = numbered_index(payloads)
            texts = [payload_text(p, numbered=i == numbered, hint=hint) for i, p in enumerate(payloads)]
            while group:
                fit = split_fitting(texts)
                joined = join_texts(texts[:fit])
                units.append(_Unit(group[:fit], clip(joined, MAX_TEXT_BYTES, marker),
                                   push=all(r.kind == "push" for r in group[:fit]),
                                   pages=paginate(joined, MAX_TEXT_BYTES)))
                group, texts = group[fit:], texts[fit:]
        return units

    async def _send(self, user: Recipient, unit: _Unit, *, template: bool) -> str:
        """Claims, sends, and settles one unit: sent | failed (given up) | closed (no window) | unfollowed |
        retry (later) | lost (claimed elsewhere)."""
        ids = [row.id for row in unit.rows]
        if not await self._claim(ids):
            return "lost"
        try:
            if template:
                await self._send_template(user.address, unit.text)
            else:
                # Pages of one unit go together; a failure part-way resends the unit (at least once).
                for page in unit.pages or [unit.text]:
                    await self.api.send_text(user.address, page)
                    metrics.SENDS.labels(CHANNEL, "ok").inc()
        except WeChatApiError as exc:
            if exc.config_hint is not None:
                await self._settle(ids, "pending", attempt=False)
                self._configuration_error(exc, template=template)
                return "disabled"
            if exc.errcode in OUT_OF_WINDOW and not template:
                await self._settle(ids, "pending", attempt=False)
                self.closed_at[user.id] = utcnow()
                log.info("wechat window closed", extra={"user_id": user.id, "errcode": exc.errcode})
                return "closed"
            if exc.errcode == UNFOLLOWED:
                # We missed the unsubscribe event: the rows wait for a re-follow, like those of any unfollower.
                await self._settle(ids, "pending", attempt=False)
                await self._mark_inactive(user.id)
                log.info("wechat recipient unfollowed", extra={"user_id": user.id})
                return "unfollowed"
            if exc.errcode in BAD_RECIPIENT:
                await self._settle(ids, "failed", attempt=True)
                log.warning("wechat recipient unknown", extra={"user_id": user.id, "errcode": exc.errcode})
                return "failed"
            return await self._retry_later(user.id, unit, ids, f"errcode {exc.errcode}")
        except WeChatUnavailable as exc:
            return await self._retry_later(user.id, unit, ids, str(exc))
        except asyncio.CancelledError:
            await asyncio.shield(self._settle(ids, "pending", attempt=False))
            raise
        await self._settle(ids, "sent", attempt=True)
        log.info("wechat message sent", extra={"user_id": user.id, "rows": len(ids),
                                               "via": "template" if template else "customer_service"})
        return "sent"

    def _configuration_error(self, exc: WeChatApiError, *, template: bool) -> None:
        """No retry can fix it: stop using what WeChat refused, for this process, and tell the operator once."""
        if template:
            self.caps.templates = False
            self.template_id = ""
        else:
            self.caps.customer_service = False
            self.no_push_channels.add(CHANNEL)
        if exc.errcode not in self.reported:
            self.reported.add(exc.errcode)
            log.critical("wechat configuration error: %s", exc.config_hint,
                         extra={"errcode": exc.errcode, "via": "template" if template else "customer_service"})

    async def _retry_later(self, user_id: int, unit: _Unit, ids: list[int], why: str) -> str:
        attempts = max(row.attempts for row in unit.rows) + 1
        give_up = attempts >= MAX_ATTEMPTS
        await self._settle(ids, "failed" if give_up else "pending", attempt=True)
        self.backoff_until[user_id] = time.monotonic() + min(300.0, 2.0 ** attempts)
        log.warning("wechat send failed", extra={"user_id": user_id, "reason": why, "attempts": attempts,
                                                 "gave_up": give_up})
        return "failed" if give_up else "retry"

    async def _mark_inactive(self, user_id: int) -> None:
        await self.outbox.set_inactive(user_id)

    async def _claim(self, ids: list[int]) -> bool:
        return await self.outbox.claim_all(ids, CLAIM_TTL)

    async def _settle(self, ids: list[int], status: str, *, attempt: bool) -> None:
        # `sent_at` is the claim's lease while `sending`, and when it went once sent; cleared otherwise.
        await self.outbox.settle(ids, status, attempt=attempt, stamp=False)

    async def send_now(self, openid: str, text: str) -> bool:
        """A message outside the outbox (the apology when a deferred step failed): sent if a window is open."""
        if not self.caps.customer_service:
            return False
        try:
            await self.api.send_text(openid, text)
        except (WeChatApiError, WeChatUnavailable) as exc:
            log.warning("wechat direct send failed", extra={"reason": type(exc).__name__})
            return False
        return True



class WeChatBroadcast:
    """Broadcast messages to WeChat: a customer-service message while the user's window is open (counted with
    every other send to them, under their lock), else a template message where one is configured and allowed,
    else unreachable, never sent in breach of the rules."""

    channel = CHANNEL

    def __init__(self, sender: CustomerServiceSender, budget: Any, rate: float) -> None:
        self.sender = sender
        self.budget = budget
        self.rate = max(rate, 0.1)
        self.concurrency = max(8, min(256, int(self.rate * 2)))

    async def send(self, delivery: Any) -> Any:
        from bot.broadcasts import Outcome
        from bot.budgets import pace

        sender = self.sender
        user_id, openid = delivery.user_id, delivery.address
        async with sender.db.user_lock(user_id, space=CS_LOCK_SPACE):
            if await sender._allowance(user_id) > 0:
                await pace(self.budget, "wechat:broadcast", self.rate)
                try:
                    await sender.api.send_text(openid, clip(delivery.text, MAX_TEXT_BYTES, "…"))
                except WeChatApiError as exc:
                    outcome = self._refused(exc, user_id, template=False)
                    if outcome is not None:
                        return outcome
                except WeChatUnavailable:
                    return Outcome("retry", "unavailable", retry_after=30.0)
                else:
                    await sender._record_send(user_id)
                    metrics.SENDS.labels(CHANNEL, "ok").inc()
                    return Outcome("sent")
            if sender.template_id:
                await pace(self.budget, "wechat:broadcast", self.rate)
                try:
                    await sender._send_template(openid, delivery.text)
                except WeChatApiError as exc:
                    outcome = self._refused(exc, user_id, template=True)
                    if outcome is not None:
                        return outcome
                except WeChatUnavailable:
                    return Outcome("retry", "unavailable", retry_after=30.0)
                else:
                    metrics.SENDS.labels(CHANNEL, "ok").inc()
                    return Outcome("sent", "template")
        return Outcome("unreachable", "no_window")

    def _refused(self, exc: WeChatApiError, user_id: int, *, template: bool) -> Any:
        """What WeChat's refusal means for this recipient; None: try the next way (a closed window)."""
        from bot.broadcasts import Outcome

        if exc.config_hint is not None:
            self.sender._configuration_error(exc, template=template)
            return None
        if exc.errcode in OUT_OF_WINDOW and not template:
            self.sender.closed_at[user_id] = utcnow()
            return None
        if exc.errcode == UNFOLLOWED:
            return Outcome("failed", "unfollowed", inactive=True)
        if exc.errcode in BAD_RECIPIENT:
            return Outcome("failed", "bad_recipient")
        return Outcome("retry", f"errcode_{exc.errcode}", retry_after=30.0)
