"""Inbox → per-user step → effects → outbox (storage: bot/step_store.py).

A delivery seen before gets its first answer again.

A step with effects has its inbox row committed before it runs, and each effect keyed by that row; the new state,
the replies and the inbox answer commit together, so a crash between the two replays the step instead of losing or
doubling it. A step without effects (most of them: menus, prompts, typed answers checked) acts on nothing outside
the database, so its inbox row commits with the rest, in one transaction (one unit on SQLite).
"""

from __future__ import annotations

import logging
import os
import time
import unicodedata
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from sqlalchemy import text

from bot import identities, jsoncodec, metrics
from bot.effects import EffectContext, EffectRunner
from bot.step_store import RESERVE_PUSH_SEQ, Begin, PureStep, StepStore, UserRef
from bot.storage import Conversation, OutboxMessage, User, utcnow
from dialogs import machine
from dialogs.intents import IntentModel
from dialogs.model import DEFAULT_LANG, LANGS, Event, Msg, Reply

if TYPE_CHECKING:
    from bot.config import Settings
    from bot.i18n import Catalog
    from bot.locks import KeyedLocks
    from bot.storage import Database
    from bot.vault import Vault

log = logging.getLogger(__name__)

MAX_EFFECT_ROUNDS = 6
# Where a conversation's data keeps the menu on offer: [[choice id, label key], ...].
OFFERED = "_offered"


@dataclass(frozen=True)
class StepResult:
    """What one delivery produced, with everything an adapter needs to render it: adapters neither read the
    database for the user's language nor work out again which menu is on offer."""

    # The rendered replies (the web chat's wire form and the outbox's payloads), each with its `seq`.
    messages: tuple[dict[str, Any], ...]
    # The conversation's language after the step (the one picked with /language), for the adapter's own words
    # (a calendar's weekday labels, a contact button, a "menu expired" notice).
    lang: str
    # Choice ids of the menu on offer now: the last reply with choices, as `_offered` in the conversation.
    offered: tuple[str, ...]
    user_id: int
    # The delivery was handled before: these are its first answer, and nothing ran again.
    replayed: bool = False


def offered_ids(data: Mapping[str, Any]) -> tuple[str, ...]:
    """The choice ids a conversation's data says are on offer (what the dispatcher stored in `_offered`)."""
    offered = data.get(OFFERED)
    if not isinstance(offered, list):
        return ()
    return tuple(str(item[0]) for item in offered if isinstance(item, list | tuple) and item)


def _offered_in(payloads: Sequence[Mapping[str, Any]]) -> tuple[str, ...]:
    """The dispatcher's menu rule read off rendered replies: the last one with choices is what is on offer."""
    last = next((p["choices"] for p in reversed(payloads) if p.get("choices")), None)
    return tuple(str(c["id"]) for c in last) if last else ()


@dataclass(frozen=True)
class Incoming:
    channel: str
    external_id: str
    event: Event
    # The channel's delivery id (update_id, MsgId, web chat message id); None disables dedupe.
    dedupe_key: str | None = None
    lang_hint: str | None = None
    # Who the limits count (invariant 8): the web chat's address; empty means the channel's own user id.
    client: str = ""


def rendered(reply: Reply, lang: str, catalog: Any, *, no_push: bool = False) -> dict[str, Any]:
    msg = reply.msg
    if no_push and f"{msg.key}.no_push" in catalog.messages.get(lang, {}):
        # A channel that cannot push (an unverified WeChat account) must not be told "we will notify you".
        msg = Msg(f"{msg.key}.no_push", msg.params)
    out: dict[str, Any] = {
        "text": catalog.render(msg, lang),
        "choices": [{"id": c.id, "label": catalog.render(c.label, lang)} for c in reply.choices],
    }
    if reply.error:
        out["error"] = True
    if reply.request_contact:
        out["request_contact"] = True
    if reply.date_picker:
        out["date_picker"] = True
    if not reply.numbered:
        out["numbered"] = False
    if reply.expects:
        out["expects"] = reply.expects
    out["lang"] = lang  # the web chat's own words (header, placeholder) follow the conversation's language
    return out


def _remember_offer(data: dict[str, Any], replies: Sequence[Reply]) -> tuple[str, ...]:
    """The menu rule: the last reply with choices is what is on offer (typed labels and numbers answer it)."""
    offered = next((r for r in reversed(replies) if r.choices), None)
    if offered is None:
        data.pop(OFFERED, None)
        return ()
    data[OFFERED] = [[c.id, c.label.key] for c in offered.choices]
    return tuple(c.id for c in offered.choices)


def _die_for_fault_injection(kind: str) -> None:
    """Crash-injection for the exactly-once tests: the process dies after the effect ran and before the step
    commits, as a power cut would. Only ever set by tests (FAULT_AFTER_EFFECT)."""
    log.warning("fault injection: dying after effect", extra={"effect": kind})
    logging.shutdown()
    os._exit(70)


def pick_lang(hint: str | None) -> str:
    if hint and hint.lower().startswith("en"):
        return "en"
    return DEFAULT_LANG


class Pushes:
    """Messages the user did not ask for, rendered in their language and queued in the outbox. Apart from the
    dispatcher so that services which push (unbind status, plan reminders) need not hold the dispatcher."""

    def __init__(self, db: Database, catalog: Catalog) -> None:
        self.db, self.catalog = db, catalog

    async def push(self, user_id: int, replies: list[Reply], *, channel: str) -> list[dict[str, Any]]:
        """Queues messages the user did not ask for (reminders, status changes, staff replies)."""
        async with self.db.session() as session:
            payloads = await self.stage_push(session, user_id, replies, channel=channel)
            await session.commit()
        return payloads

    async def stage_push(self, session: Any, user_id: int, replies: list[Reply], *,
                         channel: str) -> list[dict[str, Any]]:
        """Adds pushed messages to `session` without committing, so they land atomically with other writes."""
        user = await session.get(User, user_id)
        assert user is not None
        payloads = [rendered(r, user.lang, self.catalog) for r in replies]
        # Atomic, so a reminder and a reply for the same user can never take the same sequence number.
        connection = await session.connection()
        reserved = await connection.execute(text(RESERVE_PUSH_SEQ), {"count": len(payloads), "user_id": user_id})
        seq = int(reserved.scalar_one()) - len(payloads)
        for offset, payload in enumerate(payloads):
            payload["seq"] = seq + offset
            # Web chat reads its rows directly; other channels' senders deliver `pending` rows.
            session.add(OutboxMessage(user_id=user_id, channel=channel, seq=seq + offset, kind="push",
                                      payload=jsoncodec.dumps_str(payload),
                                      status="sent" if channel == "web" else "pending"))
        return payloads


class Dispatcher:
    MAX_CACHED_USERS = 100_000

    def __init__(self, *, steps: StepStore, locks: KeyedLocks, db: Database, effects: EffectRunner,
                 catalog: Catalog, settings: Settings, vault: Vault, pushes: Pushes | None = None) -> None:
        # What a step needs, and nothing else: the dispatcher is testable without the whole server.
        self.steps, self.locks, self.db, self.effects = steps, locks, db, effects
        self.catalog, self.settings, self.vault = catalog, settings, vault
        self.pushes = pushes or Pushes(db, catalog)
        # (channel, external id) -> user; user rows are never deleted (/forget keeps the bare row), so this
        # cache cannot go stale in a way that matters.
        self._users: dict[tuple[str, str], UserRef] = {}
        # Channels that cannot send a message the user did not ask for; their replies use `.no_push` wording.
        self.no_push_channels: set[str] = set()
        # Typed intent: phrase lists from both catalogs, so a user can type either language in either setting.
        self.intents = IntentModel.from_catalog(catalog.messages)
        self._counters: dict[tuple[str, str], tuple[Any, Any]] = {}

    def stored_id(self, channel: str, external_id: str) -> str:
        """How `users.external_id` holds this identity (a keyed hash for Telegram and WeChat ids)."""
        return identities.stored_id(self.vault, channel, external_id)

    async def user_for(self, channel: str, external_id: str, lang_hint: str | None = None, *,
                       create: bool = True) -> UserRef | None:
        key = (channel, external_id)
        cached = self._users.get(key)
        if cached is not None:
            return cached
        user = await self.steps.resolve_user(channel, self.stored_id(channel, external_id), pick_lang(lang_hint),
                                             create, identities.sealed(self.vault, channel, external_id))
        if user is not None:
            if len(self._users) >= self.MAX_CACHED_USERS:
                self._users.clear()
            self._users[key] = user
        return user

    def forget_cached(self, channel: str, external_id: str) -> None:
        """Drops a cached identity whose row was revoked or purged (a web session ended, retention)."""
        self._users.pop((channel, external_id), None)

    async def handle(self, incoming: Incoming) -> StepResult:
        started = time.perf_counter()
        outcome = "error"
        try:
            user = await self.user_for(incoming.channel, incoming.external_id, incoming.lang_hint)
            assert user is not None
            async with self.locks.hold(user.id), self.steps.user_lock(user.id):
                # Most steps have no effect: those commit with their inbox row (one unit on SQLite). A step with
                # effects gets its inbox row committed first, then runs again below, effects and all.
                begin, done = await self.steps.begin_step(user.id, incoming.channel, incoming.dedupe_key, user.lang,
                                                          lambda begun: self._pure(user, incoming, begun))
                if begin.answer is not None:
                    outcome = "replayed"
                    return self._replayed(user, begin.answer)
                result = self._committed(done.outcome) if done is not None else await self._step(user, incoming,
                                                                                                  begin)
                outcome = "step"
                return result
        finally:
            # The labelled children, looked up once: `labels()` costs more than the count itself, on every step.
            key = (incoming.channel, outcome)
            counter = self._counters.get(key)
            if counter is None:
                counter = self._counters[key] = (metrics.UPDATES.labels(*key),
                                                 metrics.STEP_SECONDS.labels(incoming.channel))
            counter[0].inc()
            counter[1].observe(time.perf_counter() - started)

    @staticmethod
    def _replayed(user: UserRef, answer: list[dict[str, Any]]) -> StepResult:
        # Every rendered reply carries the language it was rendered in; an empty answer (a step that said
        # nothing, or one /forget emptied) falls back to the user's.
        lang = next((str(p["lang"]) for p in answer if p.get("lang") in LANGS), user.lang)
        return StepResult(tuple(answer), lang if lang in LANGS else DEFAULT_LANG, _offered_in(answer), user.id,
                          replayed=True)

    def _pure(self, user: UserRef, incoming: Incoming, begin: Begin) -> PureStep | None:
        """The step when it has no effect to run, ready to commit; None when it has one. Pure: the store may run it
        inside its transaction, and more than once."""
        state, data = begin.state, jsoncodec.loads(begin.data)
        event = self._as_choice(incoming.event, data)
        result = machine.step(state, data, event, self.intents)
        if result.effects:
            return None
        return self._outcome(user, incoming, result.state, dict(result.data), list(result.replies))

    def _outcome(self, user: UserRef, incoming: Incoming, state: str, data: dict[str, Any],
                 replies: list[Reply]) -> PureStep:
        """What a step's commit writes (state, data, replies as stored) and, passed through, what it answers."""
        lang = str(data["lang"]) if data.get("lang") in LANGS else DEFAULT_LANG
        offered = _remember_offer(data, replies)
        no_push = incoming.channel in self.no_push_channels
        payloads = [rendered(r, lang, self.catalog, no_push=no_push) for r in replies]
        # A reply with a `kept` form (the user's letter with their full number) is delivered as is but stored only
        # in that form: the outbox and the inbox answer never hold the full number.
        kept = payloads if not any(r.kept for r in replies) else [
            rendered(replace(r, msg=r.kept), lang, self.catalog, no_push=no_push) if r.kept else dict(p)
            for r, p in zip(replies, payloads, strict=True)]
        return PureStep(state, jsoncodec.dumps_str(data), kept, lang, data.get("reminders", True) is not False,
                        outcome=(payloads, kept, lang, offered, user.id))

    @staticmethod
    def _committed(outcome: tuple[list[dict[str, Any]], list[dict[str, Any]], str, tuple[str, ...], int]
                   ) -> StepResult:
        payloads, kept, lang, offered, user_id = outcome
        if kept is not payloads:
            for shown, stored in zip(payloads, kept, strict=True):
                shown["seq"] = stored["seq"]
        return StepResult(tuple(payloads), lang, offered, user_id)

    async def _step(self, user: UserRef, incoming: Incoming, begin: Begin) -> StepResult:
        """A step with effects: its inbox row is committed (`begin`), so each effect is keyed by this delivery."""
        state, data = begin.state, jsoncodec.loads(begin.data)
        event = self._as_choice(incoming.event, data)
        replies: list[Reply] = []
        # Whatever an effect creates is keyed by the delivery it serves, so a replay of this step (after a crash
        # between the effect and the commit below, or a channel's retry) gets the first outcome back instead of
        # acting again. Without an inbox row the delivery cannot come back, so a fresh key is as good.
        delivery = f"{incoming.channel}:{begin.inbox_id}" if begin.inbox_id is not None else uuid.uuid4().hex
        for round_no in range(MAX_EFFECT_ROUNDS):
            result = machine.step(state, data, event, self.intents)
            state, data = result.state, dict(result.data)
            replies.extend(result.replies)
            follow: Event | None = None
            for index, effect in enumerate(result.effects):
                effects_ctx = EffectContext(user_id=user.id, lang=str(data.get("lang", user.lang)), now=event.now,
                                            delivery_key=f"{delivery}:{round_no}:{index}",
                                            client=incoming.client or f"{incoming.channel}:{incoming.external_id}")
                outcome = await self.effects.run(effect, effects_ctx)
                if self.settings.fault_after_effect == effect.kind:
                    _die_for_fault_injection(effect.kind)
                if outcome is not None:
                    follow = outcome
            if follow is None:
                break
            event = follow
        done = self._outcome(user, incoming, state, data, replies)
        await self.steps.commit(user.id, begin.version, done.state, done.data, done.payloads, begin.inbox_id,
                                incoming.channel, done.lang, done.reminders)
        return self._committed(done.outcome)

    def _as_choice(self, event: Event, data: dict[str, Any]) -> Event:
        """Typed text that names an offered choice (its label in either language, or its number) is that choice."""
        offered = data.get(OFFERED)
        if event.kind != "text" or not isinstance(offered, list) or not offered:
            return event
        text = unicodedata.normalize("NFKC", event.text).strip().casefold()
        # Typed numbers are the machine's to read (dialogs/understand.py): only it knows what the user saw numbered.
        for choice_id, label_key in offered:
            for lang in LANGS:
                label = self.catalog.messages.get(lang, {}).get(str(label_key), "")
                if label and unicodedata.normalize("NFKC", label).strip().casefold() == text:
                    return Event("choice", choice=str(choice_id), now=event.now)
        return event

    async def push(self, user_id: int, replies: list[Reply], *, channel: str) -> list[dict[str, Any]]:
        """Queues messages the user did not ask for (reminders, status changes, staff replies)."""
        return await self.pushes.push(user_id, replies, channel=channel)

    async def stage_push(self, session: Any, user_id: int, replies: list[Reply], *,
                         channel: str) -> list[dict[str, Any]]:
        """Adds pushed messages to `session` without committing, so they land atomically with other writes."""
        return await self.pushes.stage_push(session, user_id, replies, channel=channel)

    # --- staff handoff (issue 13): events from outside the user's own messages ---
    async def nudge(self, user_id: int, event: Event, *, only_in: frozenset[str],
                    stage: Callable[[Any], Awaitable[bool]] | None = None) -> bool:
        """Runs `event` (a staff action) through the user's conversation, and commits the new state, the replies
        as pushed messages and whatever `stage` writes in one transaction, under the user's lock.

        Nothing happens, and False comes back, when the user is not in one of `only_in` or `stage` declines."""
        async with self.locks.hold(user_id), self.steps.user_lock(user_id):
            async with self.db.session() as session:
                conv = await session.get(Conversation, user_id)
                user = await session.get(User, user_id)
                if conv is None or user is None or conv.state not in only_in:
                    return False
                result = machine.step(conv.state, jsoncodec.loads(conv.data), event)
                data = dict(result.data)
                _remember_offer(data, result.replies)
                if stage is not None and not await stage(session):
                    await session.rollback()
                    return False
                conv.state, conv.data = result.state, jsoncodec.dumps_str(data)
                conv.version += 1
                conv.updated_at = utcnow()
                session.add(conv)
                await self.stage_push(session, user_id, list(result.replies), channel=user.channel)
                await session.commit()
        return True

