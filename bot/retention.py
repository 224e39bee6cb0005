"""Deletes personal data once it is no longer needed, as the consent notice promises (PIPL Art. 19, 47): old
verifications and codes, stashed names, finished plans, expired abuse counters, and users gone idle (a web
session past its idle limit, a Telegram or WeChat user silent for USER_IDLE_DAYS). Never deletes an open
request or an active plan: those belong to the person and run to completion."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, delete, or_, select

from bot.storage import (
    AbuseCounter,
    Broadcast,
    BroadcastRecipient,
    ConsentRecord,
    Conversation,
    Database,
    EffectOutcome,
    InboxItem,
    OtpChallenge,
    OutboxMessage,
    PendingRealName,
    Person,
    Plan,
    PlanItem,
    RealNameCheck,
    TagStatement,
    UnbindRequestRow,
    UsageEvent,
    User,
    Verification,
    WeChatCsSend,
    utcnow,
)

log = logging.getLogger(__name__)

VERIFICATION_DAYS = 30
# Codes are kept a little over a day: the per-number and per-user daily limits count them.
CHALLENGE_DAYS = 2
# A name stashed between the two real-name messages of an errand the user walked away from.
STASHED_NAME_DAYS = 1
# A finished plan's last reminder goes the day after its date; keep it a month for "what did I tick?".
FINISHED_PLAN_DAYS = 30
# An effect's first outcome answers a replay of its delivery; channels give up redelivering within a day.
EFFECT_OUTCOME_DAYS = 1
# WeChat's longest customer-service window is 48 h; older sends count for nothing.
CS_SEND_DAYS = 2
# Who got a broadcast (a row per recipient) is kept a month after it ends; its counts and report stay.
BROADCAST_RECIPIENT_DAYS = 30


async def purge_expired(db: Database, now: datetime | None = None) -> int:
    now = now or utcnow()
    removed = 0
    async with db.session() as session:
        for table, days, column in ((Verification, VERIFICATION_DAYS, Verification.verified_at),
                                    (OtpChallenge, CHALLENGE_DAYS, OtpChallenge.created_at),
                                    (PendingRealName, STASHED_NAME_DAYS, PendingRealName.created_at),
                                    (EffectOutcome, EFFECT_OUTCOME_DAYS, EffectOutcome.at),
                                    (WeChatCsSend, CS_SEND_DAYS, WeChatCsSend.sent_at)):
            result = await session.exec(delete(table).where(col(column) < now - timedelta(days=days)))
            removed += int(result.rowcount or 0)
        # Abuse counters whose window ended (Redis expires its own).
        result = await session.exec(delete(AbuseCounter).where(col(AbuseCounter.expires_at) <= now))
        removed += int(result.rowcount or 0)
        cutoff = (now - timedelta(days=FINISHED_PLAN_DAYS)).date().isoformat()
        done = (await session.exec(select(Plan.id).where(Plan.status == "finished",
                                                         col(Plan.target_date) < cutoff))).all()
        if done:
            await session.exec(delete(PlanItem).where(col(PlanItem.plan_id).in_(done)))
            await session.exec(delete(Plan).where(col(Plan.id).in_(done)))
            removed += len(done)
        ended = select(Broadcast.id).where(col(Broadcast.status).in_(("done", "cancelled")),
                                           col(Broadcast.finished_at) < now - timedelta(days=BROADCAST_RECIPIENT_DAYS))
        result = await session.exec(delete(BroadcastRecipient).where(col(BroadcastRecipient.broadcast_id).in_(ended)))
        removed += int(result.rowcount or 0)
        await session.commit()
    if removed:
        log.info("expired personal data purged", extra={"rows": removed})
    return removed


_PER_USER = (OutboxMessage, InboxItem, Verification, OtpChallenge, ConsentRecord, RealNameCheck, PendingRealName,
             UsageEvent, EffectOutcome, Conversation)


async def purge_idle_users(db: Database, now: datetime | None = None, *, web_idle_hours: float = 168.0,
                           idle_days: int = 365) -> int:
    """Web sessions idle past their limit (or ended by 新对话) lose everything and, unless a plan or another
    record still points at them, their row; Telegram and WeChat users silent for `idle_days` lose their
    transcript and conversation (the bare row stays: it is how their next message finds them). Requests and
    plans stay with the person; a person left with nothing and nobody goes too."""
    now = now or utcnow()
    web_cutoff = now - timedelta(hours=web_idle_hours)
    other_cutoff = now - timedelta(days=idle_days)
    async with db.session() as session:
        idle = (await session.exec(select(User.id, User.channel).where(or_(
            (col(User.channel) == "web") & ((col(User.last_seen_at) < web_cutoff) | col(User.active).is_(False)),
            (col(User.channel) != "web") & (col(User.last_seen_at) < other_cutoff),
        )).limit(5000))).all()
    purged = 0
    for user_id, channel in idle:
        async with db.session() as session:
            if channel != "web":
                has_data = (await session.exec(select(Conversation.user_id).where(
                    Conversation.user_id == user_id))).first()
                if has_data is None:
                    continue
            for table in _PER_USER:
                await session.exec(delete(table).where(table.user_id == user_id))  # type: ignore[arg-type]
            await session.exec(update(UnbindRequestRow).where(col(UnbindRequestRow.user_id) == user_id)
                               .values(user_id=None))
            if channel == "web":
                owns_plan = (await session.exec(select(Plan.id).where(Plan.user_id == user_id))).first()
                if owns_plan is None:
                    try:
                        async with session.begin_nested():
                            await session.exec(delete(User).where(col(User.id) == user_id))
                    except IntegrityError:
                        pass  # another record (a ticket) still names this session: keep the bare row
            await session.commit()
        purged += 1
    async with db.session() as session:
        # A person nobody is linked to and nothing belongs to any more is just a number's hash: drop it (a day
        # old at least, so a link being made right now is never cut).
        orphans = select(Person.id).where(
            col(Person.last_seen_at) < now - timedelta(days=1),
            col(Person.id).not_in(select(User.person_id).where(col(User.person_id).is_not(None))),
            col(Person.id).not_in(select(UnbindRequestRow.person_id).where(col(UnbindRequestRow.person_id).is_not(None))),
            col(Person.id).not_in(select(Plan.person_id).where(col(Plan.person_id).is_not(None))),
            col(Person.id).not_in(select(TagStatement.person_id)))
        result = await session.exec(delete(Person).where(col(Person.id).in_(orphans)))
        await session.commit()
        purged += int(result.rowcount or 0)
    if purged:
        log.info("idle users purged", extra={"users": purged})
    return purged
