"""Issue 12, finding 3: a rejected request leads somewhere. The registry's reason is shown, the tracker says which
rung of the ladder the request is on, a reminder comes as each rung opens (durable jobs, an injected clock), and a
rejected platform is never offered again without saying so and why."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest
from sqlmodel import select

from bot.server import RunningServer, start_server
from bot.storage import Job, UnbindRequestRow
from domain import beijing
from integrations.registry import UnbindItem, UnbindRequest
from tests.conftest import Chat, make_settings


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[RunningServer]:
    """Months pass on the jobs' clock here: idle sessions must outlive them, or retention would end the chat."""
    srv = await start_server(make_settings(tmp_path, web_session_idle_hours=24 * 400, user_idle_days=400))
    yield srv
    await srv.stop()


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


async def filed(server: RunningServer, http: aiohttp.ClientSession) -> tuple[Chat, dict, UnbindRequestRow]:
    chat = await Chat(http, server.url).open()
    demo = await chat.demo("recycled")
    await chat.unbind_ready(demo)
    await chat.pick("all")
    assert re.search(r"编号 (HQ\d{8}-[A-Z0-9]{6})", chat.text), chat.text
    async with server.runtime.db.session() as session:
        row = (await session.exec(select(UnbindRequestRow))).one()
    return chat, demo, row


async def reject_first(server: RunningServer, row: UnbindRequestRow, reason: str) -> str:
    platforms = json.loads(row.platforms)
    items = (UnbindItem(platforms[0], "rejected", reason),
             *(UnbindItem(p, "done") for p in platforms[1:]))
    assert row.registry_id is not None
    answer = UnbindRequest(row.registry_id, "done" if len(platforms) > 1 else "rejected", datetime.now(UTC),
                           items, ())
    assert await server.runtime.unbind.update_from_registry(answer)
    return str(platforms[0])


async def test_a_rejection_shows_its_reason_the_ladder_and_reminds_as_rungs_open(
        server: RunningServer, http: aiohttp.ClientSession) -> None:
    chat, demo, row = await filed(server, http)
    seen = chat.last[-1]["seq"]
    rejected = await reject_first(server, row, "identity_check_failed")
    pushed = await chat.pushed(seen)
    assert len(pushed) == 1
    text = pushed[0]["text"]
    assert "原因：平台没能核实您是现任机主" in text and "的下一步" in text
    assert "无法远程解绑的平台" not in text  # the old dead end
    # The tracker: the reason, the rung, and a button to the ladder; no "we'll tell you" once all is final.
    await chat.say("/menu")
    await chat.pick("requests")
    assert "原因：平台没能核实您是现任机主" in chat.text
    assert "处理进度：第 1/3 步（向平台人工申诉）" in chat.text
    assert "状态有变化时我们会主动通知您" not in chat.text
    ladder = next(c["id"] for m in chat.last for c in m["choices"] if c["id"].startswith("esc:"))
    await chat.pick(ladder)
    detail = chat.text
    assert "第 1 步 · 现在：向平台人工申诉" in detail
    assert re.search(r"第 2 步 · \d{4}-\d{2}-\d{2} 起", detail) and "12300" in detail
    assert re.search(r"（100(86|10|00|99)）", detail), detail  # the number's own carrier's line
    assert "15 天内没有答复" in detail and "不受理互联网平台本身" in detail
    masked = demo["phone"][:3] + "****" + demo["phone"][-4:]
    assert masked in detail and demo["phone"] not in detail
    # A reminder on the day each later rung opens: rung 2, then 12300.
    async with server.runtime.db.session() as session:
        jobs = (await session.exec(select(Job).where(Job.kind == "escalation.rung"))).all()
    assert sorted(j.key.rsplit(":", 1)[1] for j in jobs) == ["2", "3"]
    seen = (await chat.pushed(0))[-1]["seq"]
    clock = Clock(min(j.due_at for j in jobs).replace(tzinfo=UTC) + timedelta(minutes=1))
    server.runtime.jobs.clock = clock
    await server.runtime.jobs.run_due()
    opened = await chat.pushed(seen)
    assert [m["text"] for m in opened if "第 2 步（向运营商投诉）从今天起可以进行了" in m["text"]], opened
    await server.runtime.jobs.run_due()  # nothing twice
    assert len(await chat.pushed(seen)) == len(opened)
    # Unbinding again: the rejected platform is listed with its reason, never filed by "all", re-filed only
    # after a confirmation that says why it failed.
    await chat.say("/menu")
    await chat.pick("unbind")
    assert "上次被拒的平台不会自动再申请" in chat.text and "平台没能核实您是现任机主" in chat.text
    choices = {c["id"]: c["label"] for m in chat.last for c in m["choices"]}
    assert f"re:{rejected}" in choices and f"p:{rejected}" not in choices
    # (The sandbox still lists the others: this test said "done" without the registry unbinding them.)
    fresh = [i for i in choices if i.startswith("p:")]
    assert "all" not in choices or f"全部 {len(fresh)} 个" in choices["all"]
    await chat.pick(f"re:{rejected}")
    assert "上次被拒，原因：平台没能核实您是现任机主" in chat.text and "仍要为" in chat.text
    await chat.pick("back")
    assert "re:" + rejected in [c["id"] for m in chat.last for c in m["choices"]]


async def test_the_ladder_dates_follow_the_rules(server: RunningServer) -> None:
    from dialogs import escalation

    started = beijing.today(datetime(2026, 12, 1, 4, tzinfo=UTC))
    steps = escalation.ladder(started, 7)
    assert (steps.carrier_opens - started).days == 7
    assert (steps.miit_opens - steps.carrier_opens).days == 15  # the operator's 15 days (电信用户申诉处理办法)
    assert [steps.rung(started + timedelta(days=d)) for d in (0, 6, 7, 21, 22, 100)] == [1, 1, 2, 2, 3, 3]
    overdue = {"status": "processing", "due": "2026-12-08", "platforms": [{"status": "processing"}]}
    assert escalation.needs_ladder(overdue, beijing.today(datetime(2026, 12, 8, 4, tzinfo=UTC))) is None
    assert escalation.needs_ladder(overdue, beijing.today(datetime(2026, 12, 9, 4, tzinfo=UTC))) is not None


async def test_an_overdue_request_starts_the_ladder_the_day_after_its_due_date(
        server: RunningServer, http: aiohttp.ClientSession) -> None:
    chat, _demo, row = await filed(server, http)
    seen = chat.last[-1]["seq"]
    due = datetime.fromisoformat(row.due_date).date()
    clock = Clock(beijing.moment(due, datetime.min.time().replace(hour=10)) + timedelta(minutes=1))
    server.runtime.jobs.clock = clock
    await server.runtime.jobs.run_due()
    assert not [m for m in await chat.pushed(seen) if "已超过预计办结日期" in m["text"]]  # not on the due date
    clock.now += timedelta(days=1)
    await server.runtime.jobs.run_due()
    pushed = [m["text"] for m in await chat.pushed(seen) if "已超过预计办结日期" in m["text"]]
    assert len(pushed) == 1 and row.reference in pushed[0]
    async with server.runtime.db.session() as session:
        rungs = (await session.exec(select(Job).where(Job.kind == "escalation.rung"))).all()
    assert sorted(j.key for j in rungs) == [f"esc:{row.id}:2", f"esc:{row.id}:3"]
