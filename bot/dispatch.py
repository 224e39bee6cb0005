"""Inbox → per-user step → effects → outbox. A delivery seen before gets its first answer again.

The inbox row commits before the step runs; the new state, the replies and the inbox answer commit
together, so a crash between the two replays the step instead of losing or doubling it.
"""

from __future__ import annotations

import json
import logging
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select, update

from bot.effects import EffectContext
from bot.storage import Conversation, InboxItem, OutboxMessage, User, utcnow
from dialogs import machine
from dialogs.model import DEFAULT_LANG, LANGS, Event, Reply

if TYPE_CHECKING:
    from bot.runtime import Runtime

log = logging.getLogger(__name__)

MAX_EFFECT_ROUNDS = 6


class ConflictError(RuntimeError):
    """Another worker changed this conversation meanwhile; the delivery is retried."""


@dataclass(frozen=True)
class Incoming:
    channel: str
    external_id: str
    event: Event
    # The channel's delivery id (update_id, MsgId, web chat message id); None disables dedupe.
    dedupe_key: str | None = None
    lang_hint: str | None = None


def rendered(reply: Reply, lang: str, catalog: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "text": catalog.render(reply.msg, lang),
        "choices": [{"id": c.id, "label": catalog.render(c.label, lang)} for c in reply.choices],
    }
    if reply.error:
        out["error"] = True
    if reply.request_contact:
        out["request_contact"] = True
    if reply.date_picker:
        out["date_picker"] = True
    return out


def pick_lang(hint: str | None) -> str:
    if hint and hint.lower().startswith("en"):
        return "en"
    return DEFAULT_LANG


class Dispatcher:
    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime

    async def user_for(self, channel: str, external_id: str, lang_hint: str | None = None) -> User:
        async with self.rt.db.session() as session:
            user = (await session.exec(
                select(User).where(User.channel == channel, User.external_id == external_id)
            )).first()
            if user is not None:
                return user
            user = User(channel=channel, external_id=external_id, lang=pick_lang(lang_hint))
            session.add(user)
            try:
                await session.commit()
            except IntegrityError:
                await session.rollback()
                return (await session.exec(
                    select(User).where(User.channel == channel, User.external_id == external_id)
                )).one()
            return user

    async def handle(self, incoming: Incoming) -> list[dict[str, Any]]:
        user = await self.user_for(incoming.channel, incoming.external_id, incoming.lang_hint)
        assert user.id is not None
        inbox_id: int | None = None
        if incoming.dedupe_key is not None:
            inbox_id, answer = await self._record_delivery(user.id, incoming)
            if answer is not None:
                return answer
        async with self.rt.locks.hold(user.id), self.rt.db.user_lock(user.id):
            if inbox_id is not None:
                async with self.rt.db.session() as session:
                    item = await session.get(InboxItem, inbox_id)
                    if item is not None and item.status == "done":
                        replayed: list[dict[str, Any]] = json.loads(item.response or "[]")
                        return replayed
            return await self._step(user, incoming, inbox_id)

    async def _record_delivery(self, user_id: int, incoming: Incoming) -> tuple[int | None, list[Any] | None]:
        assert incoming.dedupe_key is not None
        async with self.rt.db.session() as session:
            item = InboxItem(channel=incoming.channel, dedupe_key=incoming.dedupe_key, user_id=user_id)
            session.add(item)
            try:
                await session.commit()
                return item.id, None
            except IntegrityError:
                await session.rollback()
            existing = (await session.exec(select(InboxItem).where(
                InboxItem.channel == incoming.channel, InboxItem.dedupe_key == incoming.dedupe_key))).one()
            if existing.user_id != user_id:
                # Another user's delivery id: never replay their answer.
                return None, None
            if existing.status == "done":
                return existing.id, json.loads(existing.response or "[]")
            return existing.id, None

    async def _step(self, user: User, incoming: Incoming, inbox_id: int | None) -> list[dict[str, Any]]:
        assert user.id is not None
        async with self.rt.db.session() as session:
            conv = await session.get(Conversation, user.id)
        if conv is None:
            conv = Conversation(user_id=user.id, state="", data=json.dumps({"lang": user.lang}), version=0)
            is_new = True
        else:
            is_new = False
        state, data = conv.state, json.loads(conv.data)
        event = self._as_choice(incoming.event, data)
        replies: list[Reply] = []
        effects_ctx = EffectContext(user=user, lang=str(data.get("lang", user.lang)), now=event.now)
        for _round in range(MAX_EFFECT_ROUNDS):
            result = machine.step(state, data, event)
            state, data = result.state, dict(result.data)
            replies.extend(result.replies)
            follow: Event | None = None
            for effect in result.effects:
                effects_ctx = EffectContext(user=user, lang=str(data.get("lang", user.lang)), now=event.now)
                outcome = await self.rt.effects.run(effect, effects_ctx)
                if outcome is not None:
                    follow = outcome
            if follow is None:
                break
            event = follow
        lang = data.get("lang") if data.get("lang") in LANGS else DEFAULT_LANG
        offered = next((r for r in reversed(replies) if r.choices), None)
        if offered is not None:
            data["_offered"] = [[c.id, c.label.key] for c in offered.choices]
        else:
            data.pop("_offered", None)
        payloads = [rendered(r, lang, self.rt.catalog) for r in replies]
        await self._commit(user, conv, is_new, state, data, payloads, inbox_id, incoming.channel)
        return payloads

    def _as_choice(self, event: Event, data: dict[str, Any]) -> Event:
        """Typed text that names an offered choice (its label in either language, or its number) is that choice."""
        offered = data.get("_offered")
        if event.kind != "text" or not isinstance(offered, list) or not offered:
            return event
        text = unicodedata.normalize("NFKC", event.text).strip().casefold()
        if text.isdigit() and len(text) <= 2 and 1 <= int(text) <= len(offered):
            return Event("choice", choice=str(offered[int(text) - 1][0]), now=event.now)
        for choice_id, label_key in offered:
            for lang in LANGS:
                label = self.rt.catalog.messages.get(lang, {}).get(str(label_key), "")
                if label and unicodedata.normalize("NFKC", label).strip().casefold() == text:
                    return Event("choice", choice=str(choice_id), now=event.now)
        return event

    async def _commit(self, user: User, conv: Conversation, is_new: bool, state: str, data: dict[str, Any],
                      payloads: list[dict[str, Any]], inbox_id: int | None, channel: str) -> None:
        assert user.id is not None
        now = utcnow()
        async with self.rt.db.session() as session:
            if is_new:
                session.add(Conversation(user_id=user.id, state=state, data=json.dumps(data, ensure_ascii=False),
                                         version=1, updated_at=now))
            else:
                changed = await session.exec(
                    update(Conversation)
                    .where(col(Conversation.user_id) == user.id, col(Conversation.version) == conv.version)
                    .values(state=state, data=json.dumps(data, ensure_ascii=False), version=conv.version + 1,
                            updated_at=now)
                )
                if changed.rowcount != 1:
                    await session.rollback()
                    raise ConflictError(f"conversation of user {user.id} changed meanwhile")
            seq = await self._reserve_seq(session, user.id, len(payloads), lang=data.get("lang"),
                                          reminders=data.get("reminders", True) is not False)
            for offset, payload in enumerate(payloads):
                payload["seq"] = seq + offset
                session.add(OutboxMessage(user_id=user.id, channel=channel, seq=seq + offset, inbox_id=inbox_id,
                                          kind="reply", payload=json.dumps(payload, ensure_ascii=False),
                                          status="sent", sent_at=now))
            if inbox_id is not None:
                await session.exec(
                    update(InboxItem).where(col(InboxItem.id) == inbox_id)
                    .values(status="done", done_at=now, response=json.dumps(payloads, ensure_ascii=False))
                )
            await session.commit()

    async def _reserve_seq(self, session: Any, user_id: int, count: int, *, lang: Any, reminders: bool) -> int:
        user = await session.get(User, user_id)
        seq = int(user.next_seq)
        user.next_seq = seq + count
        user.last_seen_at = utcnow()
        if lang in LANGS:
            user.lang = lang
        user.reminders_on = reminders
        session.add(user)
        return seq

    async def push(self, user_id: int, replies: list[Reply], *, channel: str) -> list[dict[str, Any]]:
        """Queues messages the user did not ask for (reminders, status changes, staff replies)."""
        async with self.rt.db.session() as session:
            payloads = await self.stage_push(session, user_id, replies, channel=channel)
            await session.commit()
        return payloads

    async def stage_push(self, session: Any, user_id: int, replies: list[Reply], *,
                         channel: str) -> list[dict[str, Any]]:
        """Adds pushed messages to `session` without committing, so they land atomically with other writes."""
        user = await session.get(User, user_id)
        assert user is not None
        payloads = [rendered(r, user.lang, self.rt.catalog) for r in replies]
        seq = int(user.next_seq)
        user.next_seq = seq + len(payloads)
        session.add(user)
        for offset, payload in enumerate(payloads):
            payload["seq"] = seq + offset
            # Web chat reads its rows directly; other channels' senders deliver `pending` rows.
            session.add(OutboxMessage(user_id=user_id, channel=channel, seq=seq + offset, kind="push",
                                      payload=json.dumps(payload, ensure_ascii=False),
                                      status="sent" if channel == "web" else "pending"))
        return payloads


def now_utc() -> datetime:
    return datetime.now(UTC)
