"""Everything a request handler needs, built once from Settings and passed in (no globals)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from bot.abuse import Limits, counters_for
from bot.budgets import Budget, budget_for
from bot.config import Settings
from bot.dispatch import Dispatcher, Pushes
from bot.effects import EffectRunner, EscalationHooks
from bot.escalation import EscalationLadder
from bot.i18n import Catalog
from bot.jobs import JobScheduler
from bot.locks import KeyedLocks
from bot.otp import OtpService
from bot.people import PeopleService
from bot.plans import PlanService
from bot.repository import Repository
from bot.step_store import StepStore, step_store_for
from bot.storage import Database
from bot.unbind_requests import UnbindService
from bot.vault import Vault
from integrations.platform_directory import PlatformDirectory, load_directory
from integrations.registry import RegistryClient
from integrations.sms.base import SmsGateway
from integrations.sms.sandbox import SandboxSmsGateway

if TYPE_CHECKING:
    from bot.staff.tickets import TicketService


@dataclass
class Runtime:
    settings: Settings
    db: Database
    vault: Vault
    catalog: Catalog
    sms: SmsGateway
    registry: RegistryClient
    directory: PlatformDirectory = field(default_factory=load_directory)
    # Where the registry posts status callbacks; set once the server knows its port.
    callback_url: str | None = None
    locks: KeyedLocks = field(default_factory=KeyedLocks)
    background: list[asyncio.Task[None]] = field(default_factory=list)
    otp: OtpService = field(init=False)
    limits: Limits = field(init=False)
    people: PeopleService = field(init=False)
    effects: EffectRunner = field(init=False)
    dispatcher: Dispatcher = field(init=False)
    steps: StepStore = field(init=False)
    unbind: UnbindService = field(init=False)
    jobs: JobScheduler = field(init=False)
    plans: PlanService = field(init=False)
    # The escalation ladder's reminders and what the tracker shows of it (bot/escalation.py).
    escalation: EscalationLadder = field(init=False)
    # Messages the user did not ask for, queued in the outbox (status changes, reminders, staff replies).
    pushes: Pushes = field(init=False)
    # What the channel adapters read and write about users, the outbox and staff topics (bot/repository.py).
    repository: Repository = field(init=False)
    # Channels' bot-wide send rates, shared by every worker (bot/budgets.py).
    budget: Budget = field(init=False)
    # Set by bot.staff.setup_staff when the app is built (staff handoff, issue 13).
    tickets: TicketService | None = None

    def __post_init__(self) -> None:
        # Each service gets what it uses. The registry client is replaced once the port is bound (bot/server.py
        # `serving`) and the ticket service is mounted later (bot/staff), so those two are passed as providers.
        registry: Callable[[], RegistryClient] = lambda: self.registry  # noqa: E731
        settings, db, vault = self.settings, self.db, self.vault
        self.limits = Limits(counters_for(db, settings.redis_url), vault)
        self.jobs = JobScheduler(db, lease_seconds=settings.job_lease_seconds)
        self.pushes = Pushes(db, self.catalog)
        self.people = PeopleService(db, vault, self.jobs, registry)
        self.otp = OtpService(db, vault, self.sms, settings, self.limits)
        self.escalation = EscalationLadder(db=db, jobs=self.jobs, directory=self.directory, registry=registry,
                                           stage_push=self.pushes.stage_push)
        self.unbind = UnbindService(db=db, vault=vault, registry=registry, callback_url=lambda: self.callback_url,
                                    push=self.pushes.push, schedule_rungs=self.escalation.schedule_rungs)
        self.plans = PlanService(db=db, vault=vault, catalog=self.catalog, jobs=self.jobs, directory=self.directory,
                                 registry=registry, stage_push=self.pushes.stage_push,
                                 offsets_days=settings.reminder_offsets_days)
        self.effects = EffectRunner(
            db=db, vault=vault, catalog=self.catalog, settings=settings, limits=self.limits, registry=registry,
            directory=self.directory, otp=self.otp, people=self.people, unbind=self.unbind, plans=self.plans,
            escalation=EscalationHooks(with_appeals=self.escalation.with_appeals,
                                       carrier_of=self.escalation.carrier_of,
                                       schedule_overdue=self.escalation.schedule_overdue),
            tickets=lambda: self.tickets)
        self.steps = step_store_for(db)
        self.dispatcher = Dispatcher(steps=self.steps, locks=self.locks, db=db, effects=self.effects,
                                     catalog=self.catalog, settings=settings, vault=vault, pushes=self.pushes)
        self.budget = budget_for(db, settings.redis_url)
        self.repository = Repository(db, vault)

    @property
    def sandbox_sms(self) -> SandboxSmsGateway | None:
        return self.sms if isinstance(self.sms, SandboxSmsGateway) else None

    async def close(self) -> None:
        await self.steps.close()
        await self.limits.counters.close()
        await self.budget.close()
        await self.registry.close()
        await self.sms.close()
        await self.db.close()


def build_sms(settings: Settings) -> SmsGateway:
    if settings.sms_provider == "tencent":
        from integrations.sms.tencent import TencentSmsGateway

        missing = [name for name in ("tencent_secret_id", "tencent_secret_key", "tencent_sms_app_id",
                                     "tencent_sms_sign_name", "tencent_sms_template_id")
                   if not getattr(settings, name)]
        if missing:
            raise SystemExit("SMS_PROVIDER=tencent needs " + ", ".join(m.upper() for m in missing))
        return TencentSmsGateway(settings.tencent_secret_id, settings.tencent_secret_key,
                                 settings.tencent_sms_app_id, settings.tencent_sms_sign_name,
                                 settings.tencent_sms_template_id, endpoint=settings.tencent_sms_endpoint)
    return SandboxSmsGateway()
