"""The reads and writes the channel adapters need about users, their conversations, the outbox and staff topics,
in one place: an adapter verifies, normalises and renders, and asks this module for anything stored. The outbox
senders (bot/channels/telegram_send.py, wechat_sender.py) claim and settle their rows here; only the channels'
protocol records (WeChat's access token, nonces and customer-service sends) stay with them.

Identities come in as the platform's raw ids and are looked up by their keyed hash (bot/identities.py); this
module never logs an identity, and never writes a conversation (only the dispatcher steps one).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, or_
from sqlalchemy import update as sql_update
from sqlmodel import col, select, update

from bot import identities
from bot.dispatch import offered_ids
from bot.storage import Conversation, Database, InboxItem, OutboxMessage, StaffAccount, Ticket, User, utcnow
from bot.vault import Vault


@dataclass(frozen=True)
class Offer:
    """The menu a user was last shown (choice ids) and their language; both empty for an unknown user."""

    choices: tuple[str, ...] = ()
    lang: str | None = None


@dataclass(frozen=True)
class Queued:
    """An outbox row a channel's sender delivers: the message (its rendered payload as stored) and its place."""

    id: int
    user_id: int
    seq: int
    kind: str  # reply | push
    payload: str
    attempts: int
    inbox_id: int | None


@dataclass(frozen=True)
class Recipient:
    """Whom a sender delivers to: the platform's own id for the user (revealed from the vault; never logged),
    whether they can be reached, and their language."""

    id: int
    address: str = field(repr=False)
    active: bool
    lang: str


def aware(value: datetime | None) -> datetime | None:
    """SQLite hands datetimes back naive; they were written as UTC."""
    if value is None:
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _queued(row: OutboxMessage) -> Queued:
    assert row.id is not None
    return Queued(row.id, row.user_id, row.seq, row.kind, row.payload, row.attempts, row.inbox_id)


@dataclass(frozen=True)
class TopicTicket:
    """A ticket as the staff group sees it: which one, and whether a staff member holds it yet."""

    id: int
    status: str


@dataclass(frozen=True)
class LinkedStaff:
    id: int
    name: str
    role: str


class Repository:
    def __init__(self, db: Database, vault: Vault) -> None:
        self.db, self.vault = db, vault

    def stored_id(self, channel: str, external_id: str) -> str:
        return identities.stored_id(self.vault, channel, external_id)

    # --- users ----------------------------------------------------------------------------------------
    async def set_active(self, channel: str, external_id: str, active: bool) -> None:
        """Whether the user can be reached (a block or an unfollow, undone by coming back)."""
        async with self.db.session() as session:
            await session.exec(update(User).where(col(User.channel) == channel,
                                                  col(User.external_id) == self.stored_id(channel, external_id))
                               .values(active=active))
            await session.commit()

    async def user_lang(self, channel: str, external_id: str) -> str | None:
        """The language the user's conversation speaks, or None for someone never seen."""
        async with self.db.session() as session:
            lang = (await session.exec(select(User.lang).where(
                User.channel == channel, User.external_id == self.stored_id(channel, external_id)))).first()
        return str(lang) if lang else None

    async def offer(self, channel: str, external_id: str) -> Offer:
        """The menu on offer in the user's conversation now (what the dispatcher stored), and their language."""
        async with self.db.session() as session:
            row = (await session.exec(
                select(User.lang, Conversation.data)
                .join(Conversation, col(Conversation.user_id) == col(User.id), isouter=True)
                .where(User.channel == channel, User.external_id == self.stored_id(channel, external_id)))).first()
        if row is None:
            return Offer()
        lang, data = row
        try:
            parsed = json.loads(data) if data else {}
        except ValueError:
            parsed = {}
        return Offer(offered_ids(parsed) if isinstance(parsed, dict) else (), str(lang) if lang else None)

    async def end_web_session(self, ref: str) -> None:
        """Ends a web chat session: its row no longer answers to the token (retention purges it once idle)."""
        async with self.db.session() as session:
            await session.exec(update(User).where(col(User.channel) == "web", col(User.external_id) == ref)
                               .values(external_id="ended:" + secrets.token_hex(16), active=False))
            await session.commit()

    # --- the outbox: replies a channel hands over or collects later -------------------------------------
    async def collect_pending_replies(self, user_id: int, channel: str) -> list[dict[str, Any]]:
        """Claims (marks sent) the user's step replies still waiting for delivery, oldest first: for a channel
        that answers them as the reply to the user's next message instead."""
        async with self.db.session() as session:
            result = await session.exec(
                update(OutboxMessage).where(col(OutboxMessage.user_id) == user_id,
                                            col(OutboxMessage.channel) == channel,
                                            col(OutboxMessage.kind) == "reply",
                                            col(OutboxMessage.status) == "pending")
                .values(status="sent", sent_at=utcnow())
                .returning(col(OutboxMessage.seq), col(OutboxMessage.payload)))
            held = sorted((int(seq), payload) for seq, payload in result.all())
            await session.commit()
        return [json.loads(payload) for _seq, payload in held]

    async def hand_back(self, channel: str, dedupe_key: str, seqs: Sequence[int] | None = None) -> bool:
        """Turns a delivery's answered, never-tried replies (all, or those numbered `seqs`) back to pending, so
        the channel's sender delivers them. False when the delivery has no inbox row."""
        async with self.db.session() as session:
            inbox_id = (await session.exec(select(InboxItem.id).where(
                InboxItem.channel == channel, InboxItem.dedupe_key == dedupe_key))).first()
            if inbox_id is None:
                return False
            query = update(OutboxMessage).where(col(OutboxMessage.inbox_id) == inbox_id,
                                                col(OutboxMessage.status) == "sent",
                                                col(OutboxMessage.attempts) == 0)
            if seqs is not None:
                query = query.where(col(OutboxMessage.seq).in_(list(seqs)))
            await session.exec(query.values(status="pending", sent_at=None))
            await session.commit()
        return True

    async def claim_pending_of(self, channel: str, dedupe_key: str) -> set[int]:
        """Claims the delivery's replies the sender has not delivered yet; their sequence numbers."""
        async with self.db.session() as session:
            inbox_id = (await session.exec(select(InboxItem.id).where(
                InboxItem.channel == channel, InboxItem.dedupe_key == dedupe_key))).first()
            result = await session.exec(
                update(OutboxMessage).where(col(OutboxMessage.inbox_id) == inbox_id,
                                            col(OutboxMessage.status) == "pending")
                .values(status="sent", sent_at=utcnow()).returning(col(OutboxMessage.seq)))
            claimed = {int(seq) for seq in result.scalars().all()}
            await session.commit()
        return claimed

    # --- the outbox, as the channels' senders claim and settle it ----------------------------------------
    # A row goes pending -> sending (claimed: `sent_at` holds when, the lease) -> sent | failed | unreachable, or
    # back to pending. Every claim is a conditional UPDATE, so two workers never both hold one row.
    async def recipient(self, user_id: int) -> Recipient | None:
        async with self.db.session() as session:
            user = await session.get(User, user_id)
        if user is None or user.id is None:
            return None
        return Recipient(user.id, identities.reveal(self.vault, user), user.active, user.lang)

    async def pending_with_recipients(self, channel: str, limit: int,
                                      skip: Collection[int] = ()) -> list[tuple[Queued, Recipient]]:
        """The channel's pending rows, oldest first (so each user's in seq order), with their users; not those
        numbered in `skip` (this process has them in hand)."""
        query = (select(OutboxMessage, User).join(User, col(User.id) == col(OutboxMessage.user_id))
                 .where(col(OutboxMessage.channel) == channel, col(OutboxMessage.status) == "pending")
                 .order_by(col(OutboxMessage.id)).limit(limit))
        if skip:
            query = query.where(col(OutboxMessage.id).not_in(list(skip)))
        async with self.db.session() as session:
            rows = (await session.exec(query)).all()
        return [(_queued(row), Recipient(row.user_id, identities.reveal(self.vault, user), user.active, user.lang))
                for row, user in rows]

    async def claim_pending(self, row_id: int) -> bool:
        """pending -> sending, counting the attempt; False when another sender has it (or it is settled)."""
        async with self.db.session() as session:
            result = await session.exec(
                update(OutboxMessage).where(col(OutboxMessage.id) == row_id, col(OutboxMessage.status) == "pending")
                .values(status="sending", sent_at=utcnow(), attempts=OutboxMessage.attempts + 1))
            await session.commit()
            return bool(result.rowcount == 1)

    async def claim_replies(self, channel: str, user_id: int, seqs: Sequence[int]) -> list[int]:
        """A step's reply rows (numbered `seqs`) that the channel is still sending itself: marked `sending` now,
        so a crash before they are settled means a resend (at least once) rather than a loss. Their ids."""
        async with self.db.session() as session:
            ids = [int(i) for i in (await session.exec(select(OutboxMessage.id).where(
                col(OutboxMessage.user_id) == user_id, col(OutboxMessage.seq).in_(list(seqs)),
                col(OutboxMessage.channel) == channel))).all() if i is not None]
            if ids:
                await session.exec(update(OutboxMessage).where(col(OutboxMessage.id).in_(ids))
                                   .values(status="sending", sent_at=utcnow()))
                await session.commit()
        return ids

    async def settle(self, ids: Collection[int], status: str, *, attempt: bool = False,
                     stamp: bool = True) -> None:
        """Rows end (sent, failed, unreachable) or go back to pending. `attempt` counts one more try; without
        `stamp`, `sent_at` is cleared unless the rows were sent."""
        if not ids:
            return
        values: dict[str, Any] = {"status": status,
                                  "sent_at": utcnow() if stamp or status == "sent" else None}
        if attempt:
            values["attempts"] = col(OutboxMessage.attempts) + 1
        async with self.db.session() as session:
            await session.exec(update(OutboxMessage).where(col(OutboxMessage.id).in_(list(ids))).values(**values))
            await session.commit()

    async def reclaim(self, channel: str, *, claimed_before: datetime | None, keep: Collection[int] = ()) -> None:
        """Claims of a sender that died go back to pending: those older than `claimed_before` (every claim when
        None), except the rows numbered in `keep` (this process is still sending them)."""
        stmt = update(OutboxMessage).where(col(OutboxMessage.channel) == channel,
                                           col(OutboxMessage.status) == "sending")
        if claimed_before is not None:
            stmt = stmt.where(col(OutboxMessage.sent_at) < claimed_before)
        if keep:
            stmt = stmt.where(col(OutboxMessage.id).not_in(list(keep)))
        async with self.db.session() as session:
            await session.exec(stmt.values(status="pending"))
            await session.commit()

    # A sender that holds a claim longer than `ttl` is taken for dead: the row may be claimed again.
    @staticmethod
    def _claimable(now: datetime, ttl: timedelta) -> Any:
        return or_(col(OutboxMessage.status) == "pending",
                   and_(col(OutboxMessage.status) == "sending", col(OutboxMessage.sent_at) < now - ttl))

    async def users_with_claimable(self, channel: str, ttl: timedelta, limit: int = 10_000) -> list[int]:
        """Users with rows pending, or claimed longer than `ttl` ago."""
        async with self.db.session() as session:
            return [int(u) for u in (await session.exec(
                select(OutboxMessage.user_id).where(OutboxMessage.channel == channel,
                                                    self._claimable(utcnow(), ttl))
                .distinct().limit(limit))).all()]

    async def claimable_of(self, channel: str, user_id: int, ttl: timedelta, limit: int = 50) -> list[Queued]:
        """One user's claimable rows in their seq order."""
        async with self.db.session() as session:
            rows = (await session.exec(
                select(OutboxMessage).where(OutboxMessage.channel == channel, OutboxMessage.user_id == user_id,
                                            self._claimable(utcnow(), ttl))
                .order_by(col(OutboxMessage.seq)).limit(limit))).all()
        return [_queued(row) for row in rows]

    async def claim_all(self, ids: Collection[int], ttl: timedelta) -> bool:
        """Claims every row numbered in `ids`, or none of them (False) when any is held elsewhere or settled."""
        now = utcnow()
        async with self.db.session() as session:
            result = await session.exec(update(OutboxMessage).where(col(OutboxMessage.id).in_(list(ids)),
                                                                    self._claimable(now, ttl))
                                        .values(status="sending", sent_at=now))
            if result.rowcount != len(ids):
                await session.rollback()
                return False
            await session.commit()
        return True

    async def pushes_unreachable(self, channel: str) -> int:
        """Every pending push of the channel can never arrive (no way to push): marked so; how many."""
        async with self.db.session() as session:
            result = await session.exec(update(OutboxMessage).where(
                col(OutboxMessage.channel) == channel, col(OutboxMessage.kind) == "push",
                col(OutboxMessage.status) == "pending").values(status="unreachable", sent_at=utcnow()))
            await session.commit()
        return int(result.rowcount or 0)

    async def set_inactive(self, user_id: int) -> None:
        async with self.db.session() as session:
            await session.exec(update(User).where(col(User.id) == user_id).values(active=False))
            await session.commit()

    # --- the inbox, as the WeChat sender reads it ------------------------------------------------------------
    async def last_inbound(self, channel: str, user_id: int, prefixes: tuple[str, str]
                           ) -> tuple[datetime | None, datetime | None]:
        """When the user's latest delivery of each kind (by dedupe-key prefix, e.g. `m:` messages, `c:` clicks)
        arrived; None where there was none."""
        first, second = prefixes
        async with self.db.session() as session:
            result = (await session.exec(
                select(func.max(col(InboxItem.received_at)).filter(col(InboxItem.dedupe_key).startswith(first)),
                       func.max(col(InboxItem.received_at)).filter(col(InboxItem.dedupe_key).startswith(second)))
                .where(InboxItem.channel == channel, InboxItem.user_id == user_id))).one()
        return aware(result[0]), aware(result[1])

    # --- staff topics (bot/channels/telegram_staff.py) ----------------------------------------------------
    async def ticket_topic(self, ticket_id: int) -> int | None:
        async with self.db.session() as session:
            ticket = await session.get(Ticket, ticket_id)
        return ticket.staff_topic_id if ticket is not None else None

    async def set_ticket_topic(self, ticket_id: int, thread: int) -> None:
        async with self.db.session() as session:
            await session.exec(sql_update(Ticket).where(col(Ticket.id) == ticket_id).values(staff_topic_id=thread))
            await session.commit()

    async def topic_ticket(self, thread: int, telegram_user_id: int) -> tuple[TopicTicket | None,
                                                                                  LinkedStaff | None]:
        """The ticket a staff topic mirrors, and the active staff account linked to this Telegram user."""
        async with self.db.session() as session:
            ticket = (await session.exec(select(Ticket).where(Ticket.staff_topic_id == thread))).first()
            account = (await session.exec(select(StaffAccount).where(
                StaffAccount.telegram_user_id == telegram_user_id, col(StaffAccount.active).is_(True)))).first()
        found = TopicTicket(ticket.id, ticket.status) if ticket is not None and ticket.id is not None else None
        staff = LinkedStaff(account.id, account.name, account.role) \
            if account is not None and account.id is not None else None
        return found, staff
