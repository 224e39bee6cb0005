"""Staff handoff: tickets, the staff console at /staff, live updates and the staff CLI.

`setup_staff` mounts it all on the bot's app. Nothing here ever shows staff a full phone number, name or
ID number, or logs one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from bot.runtime import Runtime


def setup_staff(app: web.Application, rt: Runtime) -> None:
    from bot.staff import console
    from bot.staff.hours import BusinessHours
    from bot.staff.live import LiveHub
    from bot.staff.tickets import TIMEOUT_JOB, TicketService

    settings = rt.settings
    live = LiveHub(settings.redis_url, scope=settings.resolved_database_url())
    tickets = TicketService(settings, rt.db, rt.jobs, rt.dispatcher, live,
                            BusinessHours.parse(settings.staff_hours, settings.staff_days))
    rt.tickets = tickets
    rt.jobs.register(TIMEOUT_JOB, tickets.timeout_job)
    console.setup(app, rt, tickets, live)

    async def listening(_app: web.Application) -> AsyncIterator[None]:
        # A cleanup context: its listener stops even when a later start step fails (bot/server.py, lifecycle).
        await live.start()
        yield
        await live.close()

    app.cleanup_ctx.append(listening)
