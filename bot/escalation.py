"""The escalation ladder's outside half: what the tracker needs to show it (the number's carrier, each platform's
appeal channel from the directory) and a durable reminder as each rung opens (dialogs/escalation.py has the rules).

Never pushes to anyone but the person the request belongs to, and only while their reminders are on.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from datetime import date, datetime, time, timedelta
from typing import Any

from sqlmodel import select

from bot.jobs import JobOutcome, JobScheduler
from bot.people import recipient
from bot.plans import StagePush
from bot.storage import Database, Job, UnbindRequestRow, User
from dialogs import escalation
from dialogs.model import Msg, Reply
from domain import beijing
from integrations.platform_directory import PlatformDirectory
from integrations.registry import RegistryClient, RegistryError

log = logging.getLogger(__name__)

JOB = "escalation.rung"
OVERDUE_JOB = "escalation.overdue"
OPEN = ("queued", "submitted", "processing")
REMIND_AT = time(10, 0)  # Beijing time, as the plan reminders


def finished_on(row: UnbindRequestRow) -> str:
    """The Beijing day the request reached its final status: the ladder's first rung opens then."""
    moment = row.status_at or row.updated_at
    return beijing.today(moment).isoformat()


def _rung_jobs(request_id: int, started: date, days: int) -> list[tuple[str, str, Mapping[str, Any], datetime]]:
    steps = escalation.ladder(started, days)
    return [(JOB, f"esc:{request_id}:{rung}", {"request_id": request_id, "rung": rung},
             beijing.moment(opens, REMIND_AT)) for rung, opens in ((2, steps.carrier_opens), (3, steps.miit_opens))]


class EscalationLadder:
    """Each service gets what it uses: the database and the job scheduler, the platform directory, the registry
    (a provider: the client is replaced once the server knows its port) and the staging of pushes."""

    def __init__(self, *, db: Database, jobs: JobScheduler, directory: PlatformDirectory,
                 registry: Callable[[], RegistryClient], stage_push: StagePush) -> None:
        self.db, self.jobs, self.directory = db, jobs, directory
        self._registry = registry
        # A rung's reminder is queued in the transaction that completes its job (bot/dispatch.py Pushes).
        self.stage_push = stage_push

    def with_appeals(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Adds each platform's appeal channel (rung 1) to the tracker's items."""
        for item in items:
            for platform in item.get("platforms", []):
                known = self.directory.get(platform["platform"])
                if known is not None:
                    platform.update(appeal_zh=known.appeal_zh, appeal_en=known.appeal_en,
                                    appeal_days=known.appeal_days)
        return items

    async def carrier_of(self, phone: str) -> str:
        """The number's real carrier (after porting): rung 2 is its complaint line. '' when the registry is down."""
        try:
            info = await self._registry().number_info(phone)
        except RegistryError:
            return ""
        return str(info.carrier) if info is not None else ""

    async def schedule_rungs(self, row: UnbindRequestRow, items: list[Mapping[str, Any]]) -> None:
        """When a request ends with a rejection, a reminder for the day each later rung opens."""
        if row.id is None or not any(i.get("status") == "rejected" for i in items):
            return
        days = max((known.appeal_days if (known := self.directory.get(str(i["platform"]))) is not None
                    else escalation.DEFAULT_APPEAL_DAYS)
                   for i in items if i.get("status") == "rejected")
        for kind, key, payload, due in _rung_jobs(row.id, date.fromisoformat(finished_on(row)), days):
            await self.jobs.schedule(kind, key, payload, due)

    async def schedule_overdue(self, reference: str, due: str) -> None:
        """A check the day after the due date: a request still open then is overdue, and its ladder starts."""
        day = date.fromisoformat(due) + timedelta(days=1)
        await self.jobs.schedule(OVERDUE_JOB, f"esc-due:{reference}", {"reference": reference},
                                 beijing.moment(day, REMIND_AT))

    def register_jobs(self, scheduler: JobScheduler) -> None:
        scheduler.register(JOB, self._rung_opens)
        scheduler.register(OVERDUE_JOB, self._overdue)

    async def _rung_opens(self, job: Job, now: datetime) -> JobOutcome | None:
        payload = json.loads(job.payload)
        async with self.db.session() as session:
            row = await session.get(UnbindRequestRow, int(payload["request_id"]))
            target = await recipient(session, row.person_id, row.user_id) if row else None
            user = await session.get(User, target) if target is not None else None
        # Deleted data, nothing left rejected, or reminders switched off: nothing to say.
        if row is None or user is None or not user.active or not user.reminders_on:
            return None
        if row.status not in OPEN and not any(i.get("status") == "rejected" for i in json.loads(row.items)):
            return None  # done after all
        rung = int(payload["rung"])
        message = Msg("escalation.rung_open", {"reference": row.reference, "n": rung,
                                               "what": Msg(f"escalation.rung.{escalation.RUNGS[rung - 1]}")})
        user_id, channel, reference = user.id, user.channel, row.reference
        assert user_id is not None
        stage_push = self.stage_push

        async def stage(session: Any) -> None:
            # Committed with the job's completion: a crash never sends it twice or loses it.
            await stage_push(session, user_id, [Reply(message)], channel=channel)

        log.info("escalation rung reminder", extra={"reference": reference, "rung": rung})
        return JobOutcome(stage=stage)

    async def _overdue(self, job: Job, now: datetime) -> JobOutcome | None:
        reference = str(json.loads(job.payload)["reference"])
        async with self.db.session() as session:
            row = (await session.exec(select(UnbindRequestRow).where(UnbindRequestRow.reference == reference))).first()
            target = await recipient(session, row.person_id, row.user_id) if row else None
            user = await session.get(User, target) if target is not None else None
        if row is None or row.id is None or row.status not in OPEN:
            return None
        follow = _rung_jobs(row.id, beijing.today(now), escalation.DEFAULT_APPEAL_DAYS)
        if user is None or not user.active or not user.reminders_on or user.id is None:
            return JobOutcome(follow_ups=follow)
        user_id, channel = user.id, user.channel
        message = Msg("escalation.overdue_push", {"reference": reference, "due": row.due_date})
        stage_push = self.stage_push

        async def stage(session: Any) -> None:
            await stage_push(session, user_id, [Reply(message)], channel=channel)

        return JobOutcome(stage=stage, follow_ups=follow)
