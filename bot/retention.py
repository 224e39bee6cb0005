"""Deletes personal data once it is no longer needed, as the consent notice promises (PIPL Art. 19, 47)."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlmodel import col, delete, select

from bot.storage import Database, OtpChallenge, PendingRealName, Plan, PlanItem, Verification, utcnow

log = logging.getLogger(__name__)

VERIFICATION_DAYS = 30
# Codes are kept a little over a day: the per-number and per-user daily limits count them.
CHALLENGE_DAYS = 2
# A name stashed between the two real-name messages of an errand the user walked away from.
STASHED_NAME_DAYS = 1
# A finished plan's last reminder goes the day after its date; keep it a month for "what did I tick?".
FINISHED_PLAN_DAYS = 30


async def purge_expired(db: Database, now: datetime | None = None) -> int:
    now = now or utcnow()
    removed = 0
    async with db.session() as session:
        for table, days, column in ((Verification, VERIFICATION_DAYS, Verification.verified_at),
                                    (OtpChallenge, CHALLENGE_DAYS, OtpChallenge.created_at),
                                    (PendingRealName, STASHED_NAME_DAYS, PendingRealName.created_at)):
            result = await session.exec(delete(table).where(col(column) < now - timedelta(days=days)))
            removed += int(result.rowcount or 0)
        cutoff = (now - timedelta(days=FINISHED_PLAN_DAYS)).date().isoformat()
        done = (await session.exec(select(Plan.id).where(Plan.status == "finished",
                                                         col(Plan.target_date) < cutoff))).all()
        if done:
            await session.exec(delete(PlanItem).where(col(PlanItem.plan_id).in_(done)))
            await session.exec(delete(Plan).where(col(Plan.id).in_(done)))
            removed += len(done)
        await session.commit()
    if removed:
        log.info("expired personal data purged", extra={"rows": removed})
    return removed
