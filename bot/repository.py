"""The reads and writes the channel adapters need about users, their conversations, the outbox and staff topics,
in one place: an adapter verifies, normalises and renders, and asks this module for anything stored.

Identities come in as the platform's raw ids and are looked up by their keyed hash (bot/identities.py); this
module never logs an identity, and never writes a conversation (only the dispatcher steps one).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

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
