"""Tickets: a user waiting for or talking with staff, its transcript, and the masked case staff see.

Staff never get a full phone number, name or ID number from here: the context is built from masked columns
only, and user text is scrubbed of phone and ID numbers before it is stored. Every staff action is audited.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, func, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select

from bot.jobs import JobOutcome
from bot.staff.audit import record
from bot.staff.auth import StaffMember
from bot.staff.hours import BusinessHours
from bot.staff.live import LiveHub
from bot.storage import (
    Conversation,
    Job,
    OutboxMessage,
    Plan,
    PlanItem,
    RealNameCheck,
    StaffAccount,
    Ticket,
    TicketMessage,
    UnbindRequestRow,
    User,
    Verification,
    utcnow,
)
from dialogs import handoff
from dialogs.model import Event, Msg, Reply
from dialogs.results import TicketOpened
from domain.masking import scrub

if TYPE_CHECKING:
    from sqlmodel.ext.asyncio.session import AsyncSession

    from bot.config import Settings
    from bot.dispatch import Dispatcher
    from bot.jobs import JobScheduler
    from bot.storage import Database

log = logging.getLogger(__name__)

ACTIVE = ("open", "claimed")
STATUSES = ("open", "claimed", "closed")
TIMEOUT_JOB = "handoff.timeout"
MAX_STAFF_TEXT = 2000
# How many of the bot's last messages before the ticket staff see, to know where the user got stuck.
BOT_CONTEXT_MESSAGES = 6
VERIFIED_FRESH = timedelta(minutes=30)
OPEN_REQUEST = ("queued", "submitted", "processing")


class TicketError(Exception):
    """A staff action that does not fit the ticket's state; `code` is the API's error code."""

    def __init__(self, code: str, status: int = 409) -> None:
        super().__init__(code)
        self.code = code
        self.status = status


def aware(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _iso(value: datetime | None) -> str | None:
    moment = aware(value)
    return moment.isoformat() if moment else None


# What a mirror (the Telegram staff group) hears, on the worker where it happened: (event, ticket id, details).
Mirror = Callable[[str, int, dict[str, Any]], Awaitable[None]]


@dataclass
class TicketService:
    """Each service gets what it uses: the settings (timeouts, minutes per ticket), the database, the job
    scheduler (ticket timeouts), and the dispatcher that steps the user's conversation when staff act."""

    settings: Settings
    db: Database
    jobs: JobScheduler
    dispatcher: Dispatcher
    live: LiveHub
    hours: BusinessHours
    clock: Callable[[], datetime] = utcnow
    mirrors: list[Mirror] = field(default_factory=list)

    async def _mirror(self, event: str, ticket_id: int, **details: Any) -> None:
        """Tells the mirrors; a mirror that fails never undoes or blocks what already happened."""
        for mirror in self.mirrors:
            try:
                await mirror(event, ticket_id, details)
            except Exception:
                log.exception("ticket mirror failed", extra={"ticket": ticket_id, "event": event})

    # --- the user's side (effects) -----------------------------------------------------------------------
    async def _active(self, session: AsyncSession, user_id: int) -> Ticket | None:
        return (await session.exec(select(Ticket).where(Ticket.user_id == user_id, col(Ticket.status).in_(ACTIVE))
                                   .order_by(col(Ticket.id).desc()))).first()

    async def open(self, user_id: int, reason: str) -> TicketOpened:
        """The user's open ticket, or a new one; with the place in the queue or when staff are next in."""
        now = self.clock()
        settings = self.settings
        created = False
        async with self.db.session() as session:
            ticket = await self._active(session, user_id)
            if ticket is None:
                user = await session.get(User, user_id)
                assert user is not None
                ticket = Ticket(user_id=user_id, channel=user.channel, reason=reason[:16], created_at=now)
                session.add(ticket)
                await session.flush()
                due = self.hours.add_business_minutes(now, settings.staff_ticket_timeout_minutes)
                await self.jobs.schedule(TIMEOUT_JOB, f"ticket:{ticket.id}:timeout", {"ticket": ticket.id}, due,
                                            session=session)
                created = True
            await session.commit()
            assert ticket.id is not None
            position = await self._position(session, ticket)
            staff = await self._staff_name(session, ticket.claimed_by)
        if created:
            log.info("ticket opened", extra={"ticket": ticket.id, "reason": reason})
            await self.live.publish({"type": "ticket", "event": "new", "ticket": ticket.id, "status": "open"})
            await self._mirror("new", ticket.id)
        return {"ok": True, "ticket": ticket.id, "status": ticket.status, "staff": staff, "position": position,
                "wait_minutes": max(1, position * settings.staff_minutes_per_ticket),
                "in_hours": self.hours.is_open(now), "hours": self.hours.label,
                "opens_at": self.hours.describe_next(now)}

    async def _position(self, session: AsyncSession, ticket: Ticket) -> int:
        ahead = (await session.exec(select(func.count()).select_from(Ticket).where(
            Ticket.status == "open", col(Ticket.id) <= ticket.id))).one()
        return max(1, int(ahead))

    async def user_message(self, user_id: int, text: str, delivery_key: str) -> None:
        async with self.db.session() as session:
            ticket = await self._active(session, user_id)
            if ticket is None or ticket.id is None:
                return
            session.add(TicketMessage(ticket_id=ticket.id, author="user", text=scrub(text)[:MAX_STAFF_TEXT],
                                      delivery_key=delivery_key or None, at=self.clock()))
            try:
                await session.commit()
            except IntegrityError:
                return  # this delivery's message is in already (a replayed step)
            ticket_id = ticket.id
        await self.live.publish({"type": "ticket", "event": "message", "ticket": ticket_id})
        await self._mirror("user_message", ticket_id, text=scrub(text)[:MAX_STAFF_TEXT])

    async def user_left(self, user_id: int) -> None:
        async with self.db.session() as session:
            ticket = await self._active(session, user_id)
            if ticket is None or ticket.id is None:
                return
            ticket_id = ticket.id
            await self._close_row(session, ticket_id, "user")
            await session.commit()
        await self.live.publish({"type": "ticket", "event": "closed", "ticket": ticket_id, "status": "closed"})
        await self._mirror("closed", ticket_id, why="user")

    async def forget(self, user_id: int) -> None:
        """`/forget`: the user's transcripts go and open tickets close; the audit log stays (see README)."""
        async with self.db.session() as session:
            ids = [i for i in (await session.exec(select(Ticket.id).where(Ticket.user_id == user_id))).all()
                   if i is not None]
            if not ids:
                return
            await session.exec(delete(TicketMessage).where(
                col(TicketMessage.ticket_id).in_(ids)))
            closed = [ticket_id for ticket_id in ids if await self._close_row(session, ticket_id, "forget")]
            await session.commit()
        for ticket_id in closed:
            await self.live.publish({"type": "ticket", "event": "closed", "ticket": ticket_id, "status": "closed"})

    async def _close_row(self, session: AsyncSession, ticket_id: int, why: str) -> bool:
        done = await session.exec(update(Ticket).where(col(Ticket.id) == ticket_id,
                                                       col(Ticket.status).in_(ACTIVE))
                                  .values(status="closed", closed_at=self.clock(), close_reason=why))
        await self.jobs.cancel(f"ticket:{ticket_id}:", session)
        return bool(done.rowcount)

    # --- staff reading ---------------------------------------------------------------------------------------
    async def listing(self, status: str, member: StaffMember) -> list[dict[str, Any]]:
        async with self.db.session() as session:
            query = select(Ticket).where(Ticket.status == status)
            query = query.order_by(col(Ticket.id).desc() if status == "closed" else col(Ticket.id)).limit(200)
            tickets = list((await session.exec(query)).all())
            return [await self._summary(session, ticket) for ticket in tickets]

    async def detail(self, ticket_id: int, member: StaffMember, client: str) -> dict[str, Any]:
        async with self.db.session() as session:
            ticket = await session.get(Ticket, ticket_id)
            if ticket is None:
                raise TicketError("not_found", 404)
            out = await self._summary(session, ticket)
            out["transcript"] = await self._transcript(session, ticket)
            await record(session, member, "view", ticket_id, "", client, self.clock())
            await session.commit()
        return out

    async def summary(self, ticket_id: int) -> dict[str, Any]:
        """The ticket and its masked context, for a mirror (no transcript, so no audit entry)."""
        async with self.db.session() as session:
            ticket = await session.get(Ticket, ticket_id)
            if ticket is None:
                raise TicketError("not_found", 404)
            return await self._summary(session, ticket)

    async def _staff_name(self, session: AsyncSession, staff_id: int | None) -> str | None:
        if staff_id is None:
            return None
        account = await session.get(StaffAccount, staff_id)
        return account.name if account else None

    async def _summary(self, session: AsyncSession, ticket: Ticket) -> dict[str, Any]:
        assert ticket.id is not None
        return {"id": ticket.id, "status": ticket.status, "channel": ticket.channel,
                "waiting_since": _iso(ticket.created_at), "reason": ticket.reason,
                "claimed_by": await self._staff_name(session, ticket.claimed_by),
                "claimed_at": _iso(ticket.claimed_at), "closed_at": _iso(ticket.closed_at),
                "close_reason": ticket.close_reason,
                "position": await self._position(session, ticket) if ticket.status == "open" else None,
                "context": await self._context(session, ticket)}

    async def _context(self, session: AsyncSession, ticket: Ticket) -> dict[str, Any]:
        """The person's case across channels, masked: verification, requests, plan."""
        user = await session.get(User, ticket.user_id)
        conv = await session.get(Conversation, ticket.user_id)
        now = self.clock()
        verification = (await session.exec(select(Verification).where(Verification.user_id == ticket.user_id)
                                           .order_by(col(Verification.verified_at).desc()))).first()
        context: dict[str, Any] = {
            "channel": ticket.channel, "lang": user.lang if user else None,
            "state": conv.state if conv else "", "verified": False, "phone_masked": None, "verified_at": None,
            "verification_method": None, "realname_checked": False, "channels": [ticket.channel],
            "requests": [], "plan": None,
        }
        if verification is None:
            return context
        verified_at = aware(verification.verified_at)
        context.update(verified=bool(verified_at and now - verified_at < VERIFIED_FRESH),
                       phone_masked=verification.phone_masked, verified_at=_iso(verified_at),
                       verification_method=verification.method)
        checked = (await session.exec(select(RealNameCheck.id).where(
            RealNameCheck.verification_id == verification.id, col(RealNameCheck.matched).is_(True)))).first()
        context["realname_checked"] = checked is not None
        # Invariant 7: the case belongs to the verified number, so other channels' sessions count too.
        phone_hash = verification.phone_hash
        channels = (await session.exec(
            select(User.channel).join(Verification, col(Verification.user_id) == col(User.id))
            .where(Verification.phone_hash == phone_hash).distinct())).all()
        context["channels"] = sorted({ticket.channel, *channels})
        requests = (await session.exec(select(UnbindRequestRow).where(UnbindRequestRow.phone_hash == phone_hash)
                                       .order_by(col(UnbindRequestRow.created_at).desc()).limit(20))).all()
        context["requests"] = [{
            "reference": row.reference, "status": row.status, "open": row.status in OPEN_REQUEST,
            "due": row.due_date, "estimated": row.due_estimated,
            "platforms": [{"platform": item.get("platform"), "status": item.get("status")}
                          for item in json.loads(row.items or "[]")] or
                         [{"platform": p, "status": row.status} for p in json.loads(row.platforms or "[]")],
        } for row in requests]
        plan = (await session.exec(select(Plan).where(Plan.phone_hash == phone_hash, Plan.status == "active")
                                   .order_by(col(Plan.id).desc()))).first()
        if plan is not None:
            items = (await session.exec(select(PlanItem).where(PlanItem.plan_id == plan.id))).all()
            context["plan"] = {"date": plan.target_date, "status": plan.status, "items": len(items),
                               "done": sum(1 for item in items if item.done_at is not None)}
        return context

    async def _transcript(self, session: AsyncSession, ticket: Ticket) -> list[dict[str, Any]]:
        earlier = (await session.exec(select(OutboxMessage).where(
            OutboxMessage.user_id == ticket.user_id, col(OutboxMessage.created_at) <= ticket.created_at)
            .order_by(col(OutboxMessage.seq).desc()).limit(BOT_CONTEXT_MESSAGES))).all()
        lines: list[dict[str, Any]] = []
        for row in reversed(earlier):
            try:
                text = str(json.loads(row.payload).get("text", ""))
            except ValueError:
                continue
            lines.append({"author": "bot", "staff": None, "text": scrub(text), "at": _iso(row.created_at)})
        names: dict[int, str] = {}
        rows = (await session.exec(select(TicketMessage).where(TicketMessage.ticket_id == ticket.id)
                                   .order_by(col(TicketMessage.id)))).all()
        for message in rows:
            name = None
            if message.staff_id is not None:
                if message.staff_id not in names:
                    names[message.staff_id] = await self._staff_name(session, message.staff_id) or ""
                name = names[message.staff_id]
            lines.append({"author": message.author, "staff": name, "text": message.text, "at": _iso(message.at)})
        return lines

    # --- staff acting ------------------------------------------------------------------------------------------
    async def _ticket(self, ticket_id: int) -> Ticket:
        async with self.db.session() as session:
            ticket = await session.get(Ticket, ticket_id)
        if ticket is None:
            raise TicketError("not_found", 404)
        return ticket

    async def claim(self, ticket_id: int, member: StaffMember, client: str) -> dict[str, Any]:
        ticket = await self._ticket(ticket_id)
        if ticket.status != "open":
            raise TicketError("already_claimed" if ticket.status == "claimed" else "closed")
        now = self.clock()

        async def stage(session: AsyncSession) -> bool:
            done = await session.exec(update(Ticket).where(
                col(Ticket.id) == ticket_id, col(Ticket.status) == "open")
                .values(status="claimed", claimed_by=member.id, claimed_at=now))
            if not done.rowcount:
                return False
            await self.jobs.cancel(f"ticket:{ticket_id}:", session)
            await record(session, member, "claim", ticket_id, "", client, now)
            return True

        event = Event("result", effect="handoff.claimed", result={"staff": member.name}, now=now)
        if not await self.dispatcher.nudge(ticket.user_id, event, only_in=handoff.STATES, stage=stage):
            fresh = await self._ticket(ticket_id)
            if fresh.status == "open":
                # The user is no longer waiting (their conversation moved on): the ticket is stale.
                await self._close_stale(ticket_id)
                raise TicketError("closed")
            raise TicketError("already_claimed" if fresh.status == "claimed" else "closed")
        await self.live.publish({"type": "ticket", "event": "claimed", "ticket": ticket_id, "status": "claimed",
                                 "by": member.name})
        await self._mirror("claimed", ticket_id, by=member.name)
        return await self._brief(ticket_id)

    async def _close_stale(self, ticket_id: int) -> None:
        async with self.db.session() as session:
            await self._close_row(session, ticket_id, "user")
            await session.commit()
        await self.live.publish({"type": "ticket", "event": "closed", "ticket": ticket_id, "status": "closed"})

    async def assign(self, ticket_id: int, member: StaffMember, colleague: str, client: str) -> dict[str, Any]:
        ticket = await self._ticket(ticket_id)
        if ticket.status == "closed":
            raise TicketError("closed")
        if ticket.status == "claimed" and ticket.claimed_by != member.id and not member.is_admin:
            raise TicketError("not_yours", 403)
        async with self.db.session() as session:
            target = (await session.exec(select(StaffAccount).where(StaffAccount.name == colleague,
                                                                    col(StaffAccount.active).is_(True)))).first()
        if target is None or target.id is None:
            raise TicketError("no_such_colleague", 400)
        now = self.clock()
        target_id, target_name = target.id, target.name

        async def stage(session: AsyncSession) -> bool:
            done = await session.exec(update(Ticket).where(
                col(Ticket.id) == ticket_id, col(Ticket.status).in_(ACTIVE))
                .values(status="claimed", claimed_by=target_id, claimed_at=now))
            if not done.rowcount:
                return False
            await self.jobs.cancel(f"ticket:{ticket_id}:", session)
            await record(session, member, "assign", ticket_id, target_name, client, now)
            return True

        event = Event("result", effect="handoff.claimed", result={"staff": target_name}, now=now)
        if not await self.dispatcher.nudge(ticket.user_id, event, only_in=handoff.STATES, stage=stage):
            raise TicketError("closed")
        await self.live.publish({"type": "ticket", "event": "assigned", "ticket": ticket_id, "status": "claimed",
                                 "by": member.name, "to": target_name})
        await self._mirror("assigned", ticket_id, by=member.name, to=target_name)
        return await self._brief(ticket_id)

    async def reply(self, ticket_id: int, member: StaffMember, text: str, client: str, *,
                    via: str = "console") -> dict[str, Any]:
        text = text.strip()
        if not text:
            raise TicketError("empty", 400)
        if len(text) > MAX_STAFF_TEXT:
            raise TicketError("too_long", 400)
        ticket = await self._ticket(ticket_id)
        if ticket.status == "closed":
            raise TicketError("closed")
        if ticket.status != "claimed" or ticket.claimed_by != member.id:
            raise TicketError("claim_first")
        now = self.clock()
        async with self.db.session() as session:
            user = await session.get(User, ticket.user_id)
            assert user is not None
            # Staff can paste a number by mistake: it never reaches the transcript or the user unmasked.
            clean = scrub(text)
            session.add(TicketMessage(ticket_id=ticket_id, author="staff", staff_id=member.id, text=clean, at=now))
            await record(session, member, "reply", ticket_id, clean, client, now)
            await self.dispatcher.stage_push(
                session, ticket.user_id, [Reply(Msg("handoff.staff_says", {"staff": member.name, "text": clean}))],
                channel=user.channel)
            await session.commit()
        await self.live.publish({"type": "ticket", "event": "message", "ticket": ticket_id, "by": member.name})
        await self._mirror("staff_message", ticket_id, by=member.name, text=scrub(text), via=via)
        return await self._brief(ticket_id)

    async def close(self, ticket_id: int, member: StaffMember, client: str) -> dict[str, Any]:
        ticket = await self._ticket(ticket_id)
        if ticket.status == "closed":
            raise TicketError("closed")
        if ticket.status == "claimed" and ticket.claimed_by != member.id and not member.is_admin:
            raise TicketError("not_yours", 403)
        now = self.clock()

        async def stage(session: AsyncSession) -> bool:
            if not await self._close_row(session, ticket_id, "staff"):
                return False
            await record(session, member, "close", ticket_id, "", client, now)
            return True

        event = Event("result", effect="handoff.closed", now=now)
        if not await self.dispatcher.nudge(ticket.user_id, event, only_in=handoff.STATES, stage=stage):
            async with self.db.session() as session:
                closed = await stage(session)
                await session.commit()
            if not closed:
                raise TicketError("closed")
        await self.live.publish({"type": "ticket", "event": "closed", "ticket": ticket_id, "status": "closed",
                                 "by": member.name})
        await self._mirror("closed", ticket_id, why="staff", by=member.name)
        return await self._brief(ticket_id)

    async def _brief(self, ticket_id: int) -> dict[str, Any]:
        async with self.db.session() as session:
            ticket = await session.get(Ticket, ticket_id)
            assert ticket is not None
            return {"id": ticket_id, "status": ticket.status,
                    "claimed_by": await self._staff_name(session, ticket.claimed_by)}

    # --- the timeout job -----------------------------------------------------------------------------------
    async def timeout_job(self, job: Job, now: datetime) -> JobOutcome | None:
        ticket_id = int(json.loads(job.payload).get("ticket", 0))
        ticket = await self._ticket_or_none(ticket_id)
        if ticket is None or ticket.status != "open":
            return None

        async def stage(session: AsyncSession) -> bool:
            done = await session.exec(update(Ticket).where(
                col(Ticket.id) == ticket_id, col(Ticket.status) == "open")
                .values(status="closed", closed_at=now, close_reason="timeout"))
            return bool(done.rowcount)

        event = Event("result", effect="handoff.timeout", now=now)
        if not await self.dispatcher.nudge(ticket.user_id, event, only_in=handoff.STATES, stage=stage):
            async with self.db.session() as session:
                await stage(session)
                await session.commit()
        log.info("ticket timed out", extra={"ticket": ticket_id})
        await self.live.publish({"type": "ticket", "event": "timeout", "ticket": ticket_id, "status": "closed"})
        await self._mirror("closed", ticket_id, why="timeout")
        return None

    async def _ticket_or_none(self, ticket_id: int) -> Ticket | None:
        async with self.db.session() as session:
            return await session.get(Ticket, ticket_id)

    async def colleagues(self) -> list[dict[str, Any]]:
        async with self.db.session() as session:
            rows = (await session.exec(select(StaffAccount).where(col(StaffAccount.active).is_(True))
                                       .order_by(col(StaffAccount.name)))).all()
        return [{"name": row.name, "role": row.role} for row in rows]
