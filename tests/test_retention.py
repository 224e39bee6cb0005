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
        # Ages as seen 30 days from now, so the server's own hourly purge (running meanwhile) leaves both.
        later = utcnow() + timedelta(days=30)
        for age in (31, 29):
            session.add(Verification(user_id=user.id, phone_hash="h", phone_enc="e", phone_masked="138****0000",
                                     method="sms", verified_at=later - timedelta(days=age)))
        await session.commit()
    assert await purge_expired(db, later) == 1
    async with db.session() as session:
        left = (await session.exec(select(Verification))).all()
    assert [round((later - v.verified_at).days) for v in left] == [29]


async def test_stashed_names_and_old_finished_plans_are_purged(server: RunningServer) -> None:
    from bot.storage import PendingRealName, Plan, PlanItem

    db = server.runtime.db
    async with db.session() as session:
        user = User(channel="web", external_id="retention-plans")
        session.add(user)
        await session.commit()
        assert user.id is not None
        # Ages as seen 10 days from now, so the server's own hourly purge (running meanwhile) leaves them all.
        later = utcnow() + timedelta(days=10)
        session.add(PendingRealName(user_id=user.id, name_enc="sealed", created_at=later - timedelta(days=2)))
        old = later - timedelta(days=40)
        for status, target in (("finished", old), ("finished", later), ("active", old)):
            plan = Plan(user_id=user.id, phone_hash="h", phone_enc="e", phone_masked="138****0000",
                        target_date=target.date().isoformat(), status=status)
            session.add(plan)
            await session.flush()
            assert plan.id is not None
            session.add(PlanItem(plan_id=plan.id, position=0, task="contacts_backup"))
        await session.commit()
    assert await purge_expired(db, later) == 2
    async with db.session() as session:
        kept = sorted((p.status, p.target_date) for p in (await session.exec(select(Plan))).all())
        items = (await session.exec(select(PlanItem))).all()
        assert (await session.exec(select(PendingRealName))).all() == []
    assert [status for status, _ in kept] == ["active", "finished"] and len(items) == 2
