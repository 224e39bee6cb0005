"""Deletes personal data once it is no longer needed, as the consent notice promises (PIPL Art. 19, 47)."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlmodel import col, delete

from bot.storage import Database, OtpChallenge, Verification, utcnow

log = logging.getLogger(__name__)

VERIFICATION_DAYS = 30
# Codes are kept a little over a day: the per-number and per-user daily limits count them.
CHALLENGE_DAYS = 2


async def purge_expired(db: Database, now: datetime | None = None) -> int:
    now = now or utcnow()
    removed = 0
    async with db.session() as session:
        for table, days, column in ((Verification, VERIFICATION_DAYS, Verification.verified_at),
                                    (OtpChallenge, CHALLENGE_DAYS, OtpChallenge.created_at)):
            result = await session.exec(delete(table).where(col(column) < now - timedelta(days=days)))
            removed += int(result.rowcount or 0)
        await session.commit()
    if removed:
        log.info("expired personal data purged", extra={"rows": removed})
    return removed
