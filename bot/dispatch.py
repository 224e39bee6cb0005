"""Inbox → per-user step → effects → outbox (storage: bot/step_store.py).

A delivery seen before gets its first answer again.

The inbox row commits before the step runs; the new state, the replies and the inbox answer commit
together, so a crash between the two replays the step instead of losing or doubling it.
"""

from __future__ import annotations

import json
import logging
import unicodedata
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import update
from sqlmodel import col

from bot.effects import EffectContext
from bot.step_store import Begin, UserRef
from bot.storage import OutboxMessage, User
from dialogs import machine
from dialogs.model import DEFAULT_LANG, LANGS, Event, Reply

if TYPE_CHECKING:
    from bot.runtime import Runtime

log = logging.getLogger(__name__)

MAX_EFFECT_ROUNDS = 6


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
    MAX_CACHED_USERS = 100_000

    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime
        # (channel, external id) -> user; user rows are never deleted (/forget keeps the bare row), so this
        # cache cannot go stale in a way that matters.
        self._users: dict[tuple[str, str], UserRef] = {}

    async def user_for(self, channel: str, external_id: str, lang_hint: str | None = None, *,
                       create: bool = True) -> UserRef | None:
        key = (channel, external_id)
        cached = self._users.get(key)
        if cached is not None:
            return cached
        user = await self.rt.steps.resolve_user(channel, external_id, pick_lang(lang_hint), create)
        if user is not None:
            if len(self._users) >= self.MAX_CACHED_USERS:
                self._users.clear()
            self._users[key] = user
        return user

    async def handle(self, incoming: Incoming) -> list[dict[str, Any]]:
        user = await self.user_for(incoming.channel, incoming.external_id, incoming.lang_hint)
        assert user is not None
        async with self.rt.locks.hold(user.id), self.rt.db.user_lock(user.id):
            begin = await self.rt.steps.begin(user.id, incoming.channel, incoming.dedupe_key, user.lang)
            if begin.answer is not None:
                return begin.answer
            return await self._step(user, incoming, begin)

    async def _step(self, user: UserRef, incoming: Incoming, begin: Begin) -> list[dict[str, Any]]:
        state, data = begin.state, json.loads(begin.data)
        event = self._as_choice(incoming.event, data)
        replies: list[Reply] = []
        for _round in range(MAX_EFFECT_ROUNDS):
            result = machine.step(state, data, event)
            state, data = result.state, dict(result.data)
            replies.extend(result.replies)
            follow: Event | None = None
            for effect in result.effects:
                effects_ctx = EffectContext(user_id=user.id, lang=str(data.get("lang", user.lang)), now=event.now)
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
        await self.rt.steps.commit(user.id, begin.version, state, json.dumps(data, ensure_ascii=False), payloads,
                                   begin.inbox_id, incoming.channel, lang, data.get("reminders", True) is not False)
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
        # Atomic, so a reminder and a reply for the same user can never take the same sequence number.
        connection = await session.connection()
        reserved = await connection.execute(update(User).where(col(User.id) == user_id)
                                           .values(next_seq=User.next_seq + len(payloads))
                                           .returning(col(User.next_seq)))
        seq = int(reserved.scalar_one()) - len(payloads)
        for offset, payload in enumerate(payloads):
            payload["seq"] = seq + offset
            # Web chat reads its rows directly; other channels' senders deliver `pending` rows.
            session.add(OutboxMessage(user_id=user_id, channel=channel, seq=seq + offset, kind="push",
                                      payload=json.dumps(payload, ensure_ascii=False),
                                      status="sent" if channel == "web" else "pending"))
        return payloads

