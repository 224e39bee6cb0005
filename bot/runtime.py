"""Everything a request handler needs, built once from Settings and passed in (no globals)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from bot.abuse import Limits, counters_for
from bot.budgets import Budget, budget_for
from bot.config import Settings
from bot.dispatch import Dispatcher
from bot.effects import EffectRunner
from bot.i18n import Catalog
from bot.jobs import JobScheduler
from bot.locks import KeyedLocks
from bot.otp import OtpService
from bot.people import PeopleService
from bot.plans import PlanService
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
    # Channels' bot-wide send rates, shared by every worker (bot/budgets.py).
    budget: Budget = field(init=False)
    # Set by bot.staff.setup_staff when the app is built (staff handoff, issue 13).
    tickets: TicketService | None = None

    def __post_init__(self) -> None:
        self.limits = Limits(counters_for(self.db, self.settings.redis_url), self.vault)
        self.people = PeopleService(self)
        self.otp = OtpService(self.db, self.vault, self.sms, self.settings, self.limits)
        self.effects = EffectRunner(self)
        self.steps = step_store_for(self.db)
        self.dispatcher = Dispatcher(steps=self.steps, locks=self.locks, db=self.db, effects=self.effects,
                                     catalog=self.catalog, settings=self.settings, vault=self.vault)
        self.unbind = UnbindService(self)
        self.jobs = JobScheduler(self.db, lease_seconds=self.settings.job_lease_seconds)
        self.plans = PlanService(self)
        self.budget = budget_for(self.db, self.settings.redis_url)

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
