"""Unbind requests from filing to done: local row first (with its idempotency key), then the registry;
queued when the registry is down and submitted when it returns; status from signed callbacks and polling,
each change pushed to the user. Never sends one request twice: the key makes a resubmission a replay."""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any, Protocol

from sqlmodel import col, or_, select

from bot import escalation
from bot.people import person_for_user, recipient
from bot.storage import UnbindRequestRow, User, utcnow
from bot.working_days import add_working_days
from dialogs import results
from dialogs.escalation import REASONS
from dialogs.model import Lines, Localized, Msg, Reply
from domain import beijing
from integrations.registry import RegistryError, RegistryUnavailable, UnbindRefused, UnbindRequest

if TYPE_CHECKING:
    from bot.storage import Database
    from bot.vault import Vault
    from integrations.registry import RegistryClient

log = logging.getLogger(__name__)

FINAL = ("done", "rejected", "refused")
# How far along each status is: a callback may only move a request forward.
_RANK = {"queued": 0, "submitted": 1, "processing": 2, "done": 3, "rejected": 3, "refused": 3}
_REF_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"


def idempotency_key(delivery_key: str) -> str:
    """The registry's idempotency key for the request a delivery files: stable across replays of that delivery,
    and reveals nothing of our ids to the registry."""
    return hashlib.sha256(b"unbind-request:" + delivery_key.encode()).hexdigest()[:32]


def new_reference(moment: datetime) -> str:
    tail = "".join(secrets.choice(_REF_ALPHABET) for _ in range(6))
    return f"HQ{beijing.today(moment):%Y%m%d}-{tail}"


class Push(Protocol):
    """Queues messages the user did not ask for (bot/dispatch.py Pushes.push)."""

    async def __call__(self, user_id: int, replies: list[Reply], *, channel: str) -> Any: ...


class UnbindService:
    def __init__(self, *, db: Database, vault: Vault, registry: Callable[[], RegistryClient],
                 callback_url: Callable[[], str | None], push: Push,
                 schedule_rungs: Callable[[UnbindRequestRow, list[Mapping[str, Any]]], Awaitable[None]]) -> None:
        self.db, self.vault, self.push = db, vault, push
        # Both asked each time: they are known only once the server has bound its port (bot/server.py).
        self._registry, self._callback_url = registry, callback_url
        # The escalation ladder's reminders when a request ends rejected (bot/escalation.py schedule_rungs).
        self.schedule_rungs = schedule_rungs

    @property
    def registry(self) -> RegistryClient:
        return self._registry()

    @property
    def callback_url(self) -> str | None:
        return self._callback_url()

    async def create(self, user_id: int, phone: str, phone_masked: str, platforms: list[str], tenure_start: date,
                     now: datetime, delivery_key: str) -> results.UnbindFiled:
        """Files one request per delivery: a replay of the same delivery finds the row (and the registry finds
        the same idempotency key) and answers with the first outcome instead of filing again."""
        key = idempotency_key(delivery_key)
        async with self.db.session() as session:
            row = (await session.exec(select(UnbindRequestRow).where(
                UnbindRequestRow.idempotency_key == key))).first()
            if row is None:
                due = add_working_days(beijing.today(now), 5)
                row = UnbindRequestRow(
                    reference=new_reference(now), user_id=user_id, phone_hash=self.vault.keyed_hash(phone),
                    phone_enc=self.vault.seal(phone), phone_masked=phone_masked, platforms=json.dumps(platforms),
                    tenure_start=tenure_start.isoformat(), idempotency_key=key, status="queued",
                    items=json.dumps([{"platform": p, "status": "queued"} for p in platforms]),
                    due_date=due.due.isoformat(), due_estimated=due.estimated, created_at=now, updated_at=now,
                    person_id=await person_for_user(session, user_id),
                )
                session.add(row)
                await session.commit()
            else:
                log.info("unbind request replayed", extra={"reference": row.reference})
        submitted = await self.submit(row.id) if row.status == "queued" else True  # type: ignore[arg-type]
        async with self.db.session() as session:
            fresh = await session.get(UnbindRequestRow, row.id)
        assert fresh is not None
        if fresh.status == "refused":
            return {"ok": False, "reason": "nothing_eligible"}
        items = json.loads(fresh.items)
        return {"ok": True, "reference": fresh.reference, "due": fresh.due_date, "estimated": fresh.due_estimated,
                "queued": not submitted, "count": sum(1 for i in items if i["status"] != "refused"),
                "refused": sum(1 for i in items if i["status"] == "refused")}

    async def submit(self, row_id: int) -> bool:
        """Sends a queued request; True once the registry has it. Safe to repeat (idempotency key)."""
        async with self.db.session() as session:
            row = await session.get(UnbindRequestRow, row_id)
            if row is None or row.status != "queued" or row.phone_enc is None:
                return row is not None and row.status != "queued"
            row.attempts += 1
            session.add(row)
            await session.commit()
        # No database session is held across the registry call: a slow registry must not block other users.
        try:
            answer = await self.registry.create_unbind_request(
                self.vault.reveal(row.phone_enc), json.loads(row.platforms), date.fromisoformat(row.tenure_start),
                row.idempotency_key, self.callback_url)
        except UnbindRefused as refused:
            row.status = "refused"
            row.items = json.dumps([{"platform": r.platform, "status": "refused", "reason": r.reason}
                                    for r in refused.refused])
        except RegistryUnavailable:
            log.warning("registry down: unbind request kept for later", extra={"reference": row.reference})
            return False
        else:
            row.registry_id = answer.id
            self._apply(row, answer)
            log.info("unbind request submitted", extra={"reference": row.reference, "registry_id": answer.id})
        row.phone_enc = None  # the registry has it now; we keep only the hash and the masked form
        row.updated_at = utcnow()
        async with self.db.session() as session:
            session.add(row)
            await session.commit()
        return True

    def _apply(self, row: UnbindRequestRow, answer: UnbindRequest) -> bool:
        items = [{"platform": i.platform, "status": i.status, **({"reason": i.reason} if i.reason else {})}
                 for i in answer.items]
        items += [{"platform": r.platform, "status": "refused", "reason": r.reason} for r in answer.refused]
        encoded = json.dumps(items)
        changed = row.status != answer.status or row.items != encoded
        row.status, row.items, row.updated_at = answer.status, encoded, utcnow()
        return changed

    async def update_from_registry(self, answer: UnbindRequest, at: datetime | None = None) -> bool:
        """Applies a status from a callback (signed at `at`) or a poll; pushes a message when something changed.

        Monotone: a final status is final, a status behind the one we hold is ignored, and a callback repeating
        (request, status, time) is a duplicate, so a replayed or reordered callback never moves a request back
        or pushes its message twice."""
        async with self.db.session() as session:
            row = (await session.exec(select(UnbindRequestRow).where(
                UnbindRequestRow.registry_id == answer.id))).first()
            if row is None:
                return False
            before = row.status
            if before in FINAL or _RANK.get(answer.status, 0) < _RANK.get(before, 0):
                log.info("unbind status ignored: not newer", extra={"reference": row.reference, "held": before,
                                                                     "got": answer.status})
                return False
            seen = row.status_at if row.status_at is None or row.status_at.tzinfo else row.status_at.replace(tzinfo=UTC)
            if at is not None and seen is not None and (at < seen or (at == seen and answer.status == before)):
                return False
            if not self._apply(row, answer):
                return False
            row.status_at = at or utcnow()
            session.add(row)
            await session.commit()
        log.info("unbind request status", extra={"reference": row.reference, "from": before, "to": row.status})
        if row.user_id is not None or row.person_id is not None:
            await self._notify(row)
        return True

    async def _notify(self, row: UnbindRequestRow, *, submitted_late: bool = False) -> None:
        async with self.db.session() as session:
            # The person's most recent identity hears of it: they may have come back in another session or channel.
            target = await recipient(session, row.person_id, row.user_id)
            user = await session.get(User, target) if target is not None else None
        if user is None or not user.active:
            return
        names = await self._names()
        items = json.loads(row.items)
        lines = Lines(tuple(_status_line(names.get(i["platform"], Localized(i["platform"], i["platform"])), i)
                            for i in items))
        await self.schedule_rungs(row, items)
        key = "unbind.update.submitted_late" if submitted_late else f"unbind.update.{row.status}"
        if row.status == "done" and any(i["status"] == "rejected" for i in items):
            key = "unbind.update.done_partly"  # says where the ones that failed go next (issue 12)
        await self.push(user.id, [Reply(Msg(key, {"reference": row.reference, "lines": lines}))],  # type: ignore[arg-type]
                        channel=user.channel)

    async def _names(self) -> dict[str, Localized]:
        try:
            return {p.id: Localized(p.name_zh, p.name_en) for p in await self.registry.platforms()}
        except RegistryError:
            return {}

    async def list_for(self, user_id: int) -> list[dict[str, Any]]:
        """The requests of the person this identity verified as (any session or channel, this tenure only),
        plus any it filed itself."""
        async with self.db.session() as session:
            person_id = await person_for_user(session, user_id)
            owner = col(UnbindRequestRow.user_id) == user_id
            if person_id is not None:
                owner = or_(owner, col(UnbindRequestRow.person_id) == person_id)
            rows = (await session.exec(select(UnbindRequestRow).where(owner)
                                       .order_by(col(UnbindRequestRow.created_at).desc()))).all()
        names = await self._names()
        out = []
        for row in rows:
            platforms = []
            for item in json.loads(row.items):
                name = names.get(item["platform"], Localized(item["platform"], item["platform"]))
                reason = {"reason": item["reason"]} if item.get("reason") else {}
                platforms.append({"platform": item["platform"], "name_zh": name.zh_CN, "name_en": name.en,
                                  "status": item["status"], **reason})
            # The reason and the day it finished feed the escalation ladder (issue 12).
            out.append({"reference": row.reference, "status": row.status, "due": row.due_date,
                        "estimated": row.due_estimated, "platforms": platforms,
                        "finished_on": escalation.finished_on(row) if row.status in FINAL else ""})
        return out

    async def submit_queued(self) -> int:
        async with self.db.session() as session:
            ids = (await session.exec(select(UnbindRequestRow.id).where(UnbindRequestRow.status == "queued"))).all()
        sent = 0
        for row_id in ids:
            assert row_id is not None
            if await self.submit(row_id):
                sent += 1
                async with self.db.session() as session:
                    row = await session.get(UnbindRequestRow, row_id)
                if row is not None and (row.user_id is not None or row.person_id is not None):
                    await self._notify(row, submitted_late=True)
        return sent

    async def poll_open(self) -> int:
        async with self.db.session() as session:
            rows = (await session.exec(select(UnbindRequestRow).where(
                col(UnbindRequestRow.registry_id).is_not(None),
                col(UnbindRequestRow.status).not_in(FINAL)))).all()
        changed = 0
        for row in rows:
            assert row.registry_id is not None
            try:
                answer = await self.registry.get_unbind_request(row.registry_id)
            except RegistryError:
                log.warning("poll failed", extra={"reference": row.reference})
                continue
            if await self.update_from_registry(answer):
                changed += 1
        return changed


def _status_line(name: Localized, item: dict[str, Any]) -> Msg:
    """A platform's status, with the registry's reason when it said no (issue 12: a rejection is explained)."""
    status = Msg(f"requests.status.{item['status']}")
    if item.get("reason") and item["status"] in ("rejected", "refused"):
        reason = item["reason"] if item["reason"] in REASONS else "other"
        return Msg("requests.platform_line_reason", {"name": name, "status": status,
                                                     "reason": Msg(f"unbind.reason.{reason}")})
    return Msg("requests.platform_line", {"name": name, "status": status})
