"""Pre-cancellation plans (注销前提醒): the checklist for the user's own number and its durable reminders.

Reminders go only to users who still want them, list only what is still open (re-checked against the
registry), and commit together with their job's completion so a restart never sends one twice.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import date, datetime, time, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from sqlmodel import col, delete, or_, select

from bot.jobs import JobOutcome, JobScheduler
from bot.people import person_for_user, recipient
from bot.storage import Job, Plan, PlanItem, User, Verification
from dialogs.model import Lines, Localized, Msg, Reply
from domain import beijing
from integrations.registry import RegistryError

if TYPE_CHECKING:
    from bot.i18n import Catalog
    from bot.storage import Database
    from bot.vault import Vault
    from integrations.platform_directory import PlatformDirectory
    from integrations.registry import RegistryClient



class StagePush(Protocol):
    """Adds pushed messages to a session without committing (bot/dispatch.py Pushes.stage_push)."""

    async def __call__(self, session: Any, user_id: int, replies: list[Reply], *, channel: str) -> Any: ...

log = logging.getLogger(__name__)

REMIND_AT = time(10, 0)  # Beijing time: late enough not to wake anyone, early enough to act that day
SNOOZE = timedelta(days=2)

# The police checklist (seed 001), money first. Platform items bound to the number slot in by category.
CATEGORY_RANK = {"bank": 0, "payment": 1, "securities": 2, "social": 3, "mail": 4, "cloud_drive": 5, "railway": 6,
                 "shopping": 7, "local_services": 7, "travel": 7, "video": 8, "news": 8, "education": 9,
                 "device_id": 10}
# Categories a task already names ("支付宝等支付 App 的绑定手机号"): their platforms merge into that task.
TASK_COVERS = frozenset({"bank", "payment", "securities", "device_id"})
TASKS = (("bank_cards", 0), ("payment_apps", 1), ("securities", 2), ("memberships", 7), ("chsi", 9),
         ("device_ids", 10), ("contacts_backup", 11), ("destroy_sim", 12))


def reminder_moment(day: date) -> datetime:
    """When a reminder for `day` goes out: REMIND_AT, Beijing time."""
    return beijing.moment(day, REMIND_AT)


async def _owned_by(session: Any, user_id: int) -> Any:
    """Plans belong to the person (invariant 7): any identity that verified the same number in this tenure."""
    person_id = await person_for_user(session, user_id)
    mine = col(Plan.user_id) == user_id
    return or_(mine, col(Plan.person_id) == person_id) if person_id is not None else mine


async def _owns(session: Any, user_id: int, plan: Plan) -> bool:
    if plan.user_id == user_id:
        return True
    return plan.person_id is not None and plan.person_id == await person_for_user(session, user_id)


class PlanService:
    def __init__(self, *, db: Database, vault: Vault, catalog: Catalog, jobs: JobScheduler,
                 directory: PlatformDirectory, registry: Callable[[], RegistryClient], stage_push: StagePush,
                 offsets_days: str) -> None:
        self.db, self.vault, self.catalog, self.jobs, self.directory = db, vault, catalog, jobs, directory
        # Asked each time: the client is replaced once the server knows its port (bot/server.py).
        self._registry = registry
        # Reminders are queued in the transaction that completes their job (bot/dispatch.py Pushes.stage_push).
        self.stage_push = stage_push
        self.offsets_days = offsets_days

    def register_jobs(self, scheduler: JobScheduler) -> None:
        scheduler.register("plan.reminder", self._reminder)

    def offsets(self) -> list[int]:
        return sorted({int(v) for v in self.offsets_days.split(",") if v.strip()}, reverse=True)

    async def _bound_own(self, phone: str) -> list[str] | None:
        try:
            _start, bindings = await self._registry().bindings(phone)
        except RegistryError:
            return None
        return [b.platform for b in bindings if b.tenure == "current"]

    async def load(self, user_id: int, now: datetime) -> dict[str, Any] | None:
        async with self.db.session() as session:
            plan = (await session.exec(select(Plan).where(await _owned_by(session, user_id), Plan.status == "active")
                                       .order_by(col(Plan.id).desc()))).first()
            if plan is None:
                return None
            items = (await session.exec(select(PlanItem).where(PlanItem.plan_id == plan.id)
                                        .order_by(col(PlanItem.position)))).all()
        return self._view(plan, list(items), now)

    def _view(self, plan: Plan, items: list[PlanItem], now: datetime) -> dict[str, Any]:
        target = date.fromisoformat(plan.target_date)
        return {
            "id": plan.id, "date": plan.target_date, "days_left": (target - beijing.today(now)).days,
            "done": sum(1 for i in items if i.done_at), "total": len(items),
            "items": [{"id": i.id, "name_zh": i.name_zh, "name_en": i.name_en, "done": i.done_at is not None,
                       "snoozed_until": beijing.today(i.snoozed_until).isoformat()
                       if i.snoozed_until and i.snoozed_until > now and not i.done_at else None}
                      for i in items],
        }

    async def save(self, user_id: int, verification_id: int, target: date, now: datetime) -> dict[str, Any]:
        """Creates the plan, or moves an active plan to a new date; (re)schedules its reminders."""
        async with self.db.session() as session:
            verification = await session.get(Verification, verification_id)
            if verification is None or verification.user_id != user_id:
                raise PermissionError("not this user's verification")
            plan = (await session.exec(select(Plan).where(await _owned_by(session, user_id),
                                                          Plan.status == "active"))).first()
            person_id = await person_for_user(session, user_id)
        if plan is None:
            phone = self.vault.reveal(verification.phone_enc)
            bound = await self._bound_own(phone) or []
            plan = Plan(user_id=user_id, phone_hash=verification.phone_hash, phone_enc=verification.phone_enc,
                        phone_masked=verification.phone_masked, target_date=target.isoformat(), created_at=now,
                        person_id=person_id)
            items = self._checklist(bound)
            async with self.db.session() as session:
                session.add(plan)
                await session.flush()
                assert plan.id is not None
                for position, item in enumerate(items):
                    item.plan_id, item.position = plan.id, position
                    session.add(item)
                await self._schedule(session, plan.id, target, now)
                await session.commit()
        else:
            async with self.db.session() as session:
                assert plan.id is not None
                await self.jobs.cancel(f"plan:{plan.id}:", session)
                plan.target_date = target.isoformat()
                session.add(plan)
                await self._schedule(session, plan.id, target, now)
                await session.commit()
        log.info("plan saved", extra={"plan": plan.id, "phone": plan.phone_masked})
        view = await self.load(user_id, now)
        assert view is not None
        return view

    def _checklist(self, bound: list[str]) -> list[PlanItem]:
        ranked: list[tuple[int, int, PlanItem]] = []
        names = {p.id: p for p in self.directory.all()}
        for order, platform in enumerate(dict.fromkeys(bound)):
            known = names.get(platform)
            if known and known.category in TASK_COVERS:
                continue  # one item, not "支付宝" and "支付宝等支付 App" side by side (issue 12)
            rank = CATEGORY_RANK.get(known.category if known else "", 8)
            ranked.append((rank, order, PlanItem(plan_id=0, position=0, platform=platform,
                                                 name_zh=known.name_zh if known else platform,
                                                 name_en=known.name_en if known else platform)))
        for order, (task, rank) in enumerate(TASKS):
            ranked.append((rank, 100 + order, PlanItem(plan_id=0, position=0, task=task,
                                                       name_zh=self.catalog.text(f"plan.task.{task}", "zh_CN"),
                                                       name_en=self.catalog.text(f"plan.task.{task}", "en"))))
        return [item for _, _, item in sorted(ranked, key=lambda r: (r[0], r[1]))]

    async def _schedule(self, session: Any, plan_id: int, target: date, now: datetime) -> None:
        moments = [(f"T-{offset}", reminder_moment(target - timedelta(days=offset))) for offset in self.offsets()]
        moments.append(("after", reminder_moment(target + timedelta(days=1))))
        for label, due in moments:
            if due <= now and label != "after":
                continue
            key = f"plan:{plan_id}:{target.isoformat()}:{label}"
            if not await self.jobs.schedule("plan.reminder", key, {"plan_id": plan_id, "label": label}, due,
                                               session=session):
                await self.jobs.reschedule(key, due, session)

    async def mark(self, user_id: int, item_id: int, action: str, now: datetime) -> dict[str, Any] | None:
        async with self.db.session() as session:
            item = await session.get(PlanItem, item_id)
            plan = await session.get(Plan, item.plan_id) if item else None
            if item is None or plan is None or not await _owns(session, user_id, plan) or plan.status != "active":
                return None
            if action == "done":
                item.done_at = now
            elif action == "snooze":
                item.snoozed_until = now + SNOOZE
            elif action == "undo":
                item.done_at = None
            session.add(item)
            await session.commit()
        return await self.load(user_id, now)

    async def cancel(self, user_id: int, now: datetime) -> bool:
        async with self.db.session() as session:
            plan = (await session.exec(select(Plan).where(await _owned_by(session, user_id),
                                                          Plan.status == "active"))).first()
            if plan is None:
                return False
            # A cancelled plan is no longer needed, and it holds the sealed number: delete it outright.
            await self.jobs.cancel(f"plan:{plan.id}:", session)
            await session.exec(delete(PlanItem).where(col(PlanItem.plan_id) == plan.id))
            await session.delete(plan)
            await session.commit()
        return True

    async def _reminder(self, job: Job, now: datetime) -> JobOutcome | None:
        payload = json.loads(job.payload)
        async with self.db.session() as session:
            plan = await session.get(Plan, int(payload["plan_id"]))
            # The person's most recent identity: they may have come back in another session or channel.
            target = await recipient(session, plan.person_id, plan.user_id) if plan else None
            user = await session.get(User, target) if target is not None else None
            if plan is None or user is None or plan.status != "active":
                return None
            # Reminders switched off (/stop, 退订, settings) or the bot blocked: nothing is sent.
            if not user.reminders_on or not user.active:
                return None
            items = list((await session.exec(select(PlanItem).where(PlanItem.plan_id == plan.id)
                                             .order_by(col(PlanItem.position)))).all())
        still_bound = await self._bound_own(self.vault.reveal(plan.phone_enc))
        label = str(payload["label"])
        user_id, channel, plan_id = user.id, user.channel, plan.id

        async def stage(session: Any) -> None:
            for item in items:
                if item.platform and not item.done_at and still_bound is not None and item.platform not in still_bound:
                    item.done_at = now  # the registry says it is no longer bound: done
                    session.add(item)
            open_items = [i for i in items if not i.done_at and not (i.snoozed_until and i.snoozed_until > now)]
            lines = Lines(tuple(Msg("plan.line_open", {"name": Localized(i.name_zh, i.name_en)})
                                for i in open_items))
            if label == "after":
                replies = [Reply(Msg("plan.after", {"count": len(open_items), "lines": lines}))]
                finished = await session.get(Plan, plan_id)
                finished.status = "finished"
                session.add(finished)
            else:
                days = int(label.split("-")[1])
                when = Msg("plan.when_today") if days == 0 else Msg("plan.when_days", {"days": days})
                key = "plan.reminder" if open_items else "plan.reminder_all_done"
                replies = [Reply(Msg(key, {"when": when, "date": plan.target_date, "count": len(open_items),
                                           "lines": lines}))]
            await self.stage_push(session, user_id, replies, channel=channel)  # type: ignore[arg-type]

        return JobOutcome(stage=stage)
