"""Verification records are deleted after 30 days, as the consent notice says."""

from __future__ import annotations

from datetime import timedelta

from sqlmodel import select

from bot.retention import purge_expired
from bot.server import RunningServer
from bot.storage import User, Verification, utcnow


async def test_old_verifications_are_purged(server: RunningServer) -> None:
    db = server.runtime.db
    async with db.session() as session:
        user = User(channel="web", external_id="retention")
        session.add(user)
        await session.commit()
        assert user.id is not None
        for age in (31, 29):
            session.add(Verification(user_id=user.id, phone_hash="h", phone_enc="e", phone_masked="138****0000",
                                     method="sms", verified_at=utcnow() - timedelta(days=age)))
        await session.commit()
    assert await purge_expired(db) == 1
    async with db.session() as session:
        left = (await session.exec(select(Verification))).all()
    assert [round((utcnow() - v.verified_at).days) for v in left] == [29]
