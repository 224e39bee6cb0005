"""Every timed thing the bot does, as durable jobs: unbind status sweeps, retention purges, plan reminders."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from bot.jobs import JobOutcome
from bot.retention import purge_expired, purge_idle_users
from bot.storage import Job

if TYPE_CHECKING:
    from bot.runtime import Runtime


def register_jobs(rt: Runtime) -> None:
    async def unbind_sweep(job: Job, now: datetime) -> JobOutcome:
        # Submit what waited out a registry outage, and poll what is open in case a callback was lost.
        await rt.unbind.submit_queued()
        await rt.unbind.poll_open()
        return JobOutcome(reschedule_at=now + timedelta(seconds=rt.settings.unbind_poll_seconds))

    async def retention_purge(job: Job, now: datetime) -> JobOutcome:
        await purge_expired(rt.db, now)
        await purge_idle_users(rt.db, now, web_idle_hours=rt.settings.web_session_idle_hours,
                               idle_days=rt.settings.user_idle_days)
        return JobOutcome(reschedule_at=now + timedelta(hours=1))

    rt.jobs.register("unbind.sweep", unbind_sweep)
    rt.jobs.register("retention.purge", retention_purge)
    rt.plans.register_jobs(rt.jobs)
    rt.escalation.register_jobs(rt.jobs)
