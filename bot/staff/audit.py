"""The staff audit log: who logged in, read which ticket, claimed, assigned, wrote what and closed.

Kept through a user's `/forget`: it is the record of who saw personal data and what was said in the bot's name.
Details hold scrubbed text only, never a full phone or ID number.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlmodel import col, select

from bot.storage import Database, StaffAudit
from domain.masking import scrub

if TYPE_CHECKING:
    from sqlmodel.ext.asyncio.session import AsyncSession

    from bot.staff.auth import StaffMember


async def record(session: AsyncSession, member: StaffMember | None, action: str, ticket_id: int | None,
                 detail: str, client: str, now: datetime, *, name: str = "") -> None:
    """Adds an entry to `session`, so it commits with the action it records."""
    session.add(StaffAudit(staff_id=member.id if member else None, staff_name=(member.name if member else name)[:64],
                           action=action[:32], ticket_id=ticket_id, detail=scrub(detail)[:4000],
                           client=client[:64], at=now))


async def record_now(db: Database, member: StaffMember | None, action: str, detail: str, client: str,
                     now: datetime, *, name: str = "") -> None:
    async with db.session() as session:
        await record(session, member, action, None, detail, client, now, name=name)
        await session.commit()


async def entries(db: Database, *, ticket_id: int | None = None, limit: int = 200) -> list[dict[str, Any]]:
    async with db.session() as session:
        query = select(StaffAudit).order_by(col(StaffAudit.id).desc()).limit(limit)
        if ticket_id is not None:
            query = query.where(StaffAudit.ticket_id == ticket_id)
        rows = (await session.exec(query)).all()
    return [{"id": row.id, "staff": row.staff_name, "action": row.action, "ticket": row.ticket_id,
             "detail": row.detail, "at": row.at.isoformat()} for row in rows]
