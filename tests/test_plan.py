"""The pre-cancellation plan through the web chat, and its durable reminders on an injectable clock."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from bot.plans import reminder_moment as beijing_moment
from bot.server import RunningServer, start_server
from domain.beijing import today as beijing_today
from integrations.sandbox_registry.app import create_app as create_sandbox
from tests.conftest import Chat, make_settings
from tests.processes import free_port, start_bot


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def plan_day(days: int = 20) -> str:
    return (beijing_today(datetime.now(UTC)) + timedelta(days=days)).isoformat()


@pytest.fixture
async def quiet(tmp_path: Path) -> AsyncIterator[RunningServer]:
    """The background scheduler stays asleep: tests drive the clock and the scheduler themselves."""
    srv = await start_server(make_settings(tmp_path, scheduler_poll_seconds=3600))
    yield srv
    await srv.stop()


async def make_plan(chat: Chat, day: str) -> None:
    demo = await chat.demo("recycled")
    await chat.verify(demo["phone"], flow="plan")
    assert "注销或换号前" in "\n".join(m["text"] for m in chat.transcript)
    assert "您打算哪天注销" in chat.text and any(m.get("date_picker") for m in chat.last)
    await chat.say(day)


async def test_plan_made_ticked_and_snoozed(chat: Chat) -> None:
    await make_plan(chat, "2020-01-01")
    assert "这个日期已经过去了" in chat.text
    await chat.say("2099-01-01")
    assert "一年以内" in chat.text
    await chat.say(plan_day())
    view = chat.text
    total = int(re.search(r"已完成 0/(\d+) 项", view).group(1))  # type: ignore[union-attr]
    items = re.findall(r"⬜ \d+\. (.+)", view)
    assert len(items) == total and total >= 8
    order = [items.index(name) for name in ("银行卡预留手机号、U 盾和短信提醒", "备份通讯录", "注销后销毁旧 SIM 卡")]
    assert order == sorted(order), "money first, the SIM last"
    first = next(c for m in chat.last for c in m["choices"] if c["id"].startswith("i:"))
    assert first["label"] == f"1. {items[0]}"  # the button carries the number the list shows
    await chat.pick(first["id"])
    await chat.pick("done")
    # One line per tick, not the whole list again (issue 12, finding 2).
    assert chat.text == f"✅ 已完成：{first['label']}。还剩 {total - 1} 项。"
    await chat.pick("list")
    assert f"已完成 1/{total} 项" in chat.text and f"✅ {first['label']}" in chat.text
    second = next(c for m in chat.last for c in m["choices"] if c["id"].startswith("i:"))
    await chat.pick(second["id"])
    await chat.pick("snooze")
    assert re.search(rf"⏰ {re.escape(second['label'])}：\d{{4}}-\d{{2}}-\d{{2}} 再提醒您", chat.text), chat.text
    await chat.say(str(total))  # typed: the last item on the list, by its number
    assert f"{total}. 注销后销毁旧 SIM 卡" in chat.text and "还剩" in chat.text
    await chat.pick("date")
    await chat.say("下周五")
    assert "注销计划：" in chat.text
    await chat.pick("cancel")
    assert "确定要取消" in chat.text and "注销计划已取消" not in chat.text
    await chat.pick("confirm")
    assert "注销计划已取消" in chat.text


async def test_reminders_fire_at_their_times_listing_only_open_items(quiet: RunningServer,
                                                                     http: aiohttp.ClientSession) -> None:
    chat = await Chat(http, quiet.url).open()
    day = plan_day()
    await make_plan(chat, day)
    first = next(c for m in chat.last for c in m["choices"] if c["id"].startswith("i:"))
    await chat.pick(first["id"])
    await chat.pick("done")
    seen = chat.last[-1]["seq"]
    clock = Clock(beijing_moment(datetime.fromisoformat(day).date() - timedelta(days=7)) - timedelta(minutes=1))
    quiet.runtime.jobs.clock = clock
    await quiet.runtime.jobs.run_due()  # only housekeeping is due a minute before T-7
    assert await chat.pushed(seen) == []
    texts = []
    for label, delta in (("还有 7 天", 7), ("还有 1 天", 1), ("就是今天", 0)):
        clock.now = beijing_moment(datetime.fromisoformat(day).date() - timedelta(days=delta))
        await quiet.runtime.jobs.run_due()
        pushed = await chat.pushed(seen)
        assert len(pushed) == 1 and label in pushed[0]["text"], pushed
        assert first["label"] not in pushed[0]["text"]  # ticked: not listed
        seen = pushed[0]["seq"]
        texts.append(pushed[0]["text"])
    clock.now = beijing_moment(datetime.fromisoformat(day).date() + timedelta(days=1))
    await quiet.runtime.jobs.run_due()
    after = await chat.pushed(seen)
    assert len(after) == 1 and "冻结约 90 天" in after[0]["text"] and "保号" in after[0]["text"]
    clock.now += timedelta(days=30)
    await quiet.runtime.jobs.run_due()
    assert len(await chat.pushed(seen)) == 1, "each reminder went exactly once"


async def test_stop_silences_everything(quiet: RunningServer, http: aiohttp.ClientSession) -> None:
    chat = await Chat(http, quiet.url).open()
    day = plan_day()
    await make_plan(chat, day)
    await chat.say("退订")
    assert "已退订" in chat.text
    seen = chat.last[-1]["seq"]
    quiet.runtime.jobs.clock = Clock(beijing_moment(datetime.fromisoformat(day).date() + timedelta(days=2)))
    await quiet.runtime.jobs.run_due()
    assert await chat.pushed(seen) == []


async def test_a_reminder_due_while_down_is_sent_once_after_restart(tmp_path: Path,
                                                                    http: aiohttp.ClientSession) -> None:
    settings = make_settings(tmp_path, scheduler_poll_seconds=3600)
    first = await start_server(settings)
    chat = await Chat(http, first.url).open()
    day = plan_day(3)
    await make_plan(chat, day)
    seen = chat.last[-1]["seq"]
    await first.stop()
    second = await start_server(settings)  # days later: T-1 passed while we were down
    try:
        chat.base = second.url
        second.runtime.jobs.clock = Clock(beijing_moment(datetime.fromisoformat(day).date()) - timedelta(hours=2))
        await second.runtime.jobs.run_due()
        await second.runtime.jobs.run_due()
        pushed = await chat.pushed(seen)
        assert len(pushed) == 1 and "还有 1 天" in pushed[0]["text"], pushed
    finally:
        await second.stop()


async def test_kill_9_during_a_reminder_then_it_runs_exactly_once(tmp_path: Path) -> None:
    stall = asyncio.Event()
    stall.set()

    @web.middleware
    async def maybe_stall(request: web.Request, handler):  # type: ignore[no-untyped-def]
        if not stall.is_set() and request.path.endswith("/bindings"):
            await stall.wait()  # released once the bot has been killed
        return await handler(request)

    outer = web.Application(middlewares=[maybe_stall])
    outer.add_subapp("/reg", create_sandbox(str(tmp_path / "registry.sqlite3")))
    registry = web.AppRunner(outer)
    await registry.setup()
    await web.TCPSite(registry, "127.0.0.1", 0).start()
    registry_url = f"http://127.0.0.1:{registry.addresses[0][1]}/reg"
    port = free_port()
    env = {"DATA_DIR": str(tmp_path / "bot"), "SECRET_KEY": "kill-test", "REGISTRY_URL": registry_url,
           "SCHEDULER_POLL_SECONDS": "0.2", "JOB_LEASE_SECONDS": "2", "REGISTRY_TIMEOUT": "60"}

    async def start() -> asyncio.subprocess.Process:
        return await start_bot(port, env, probe="/healthz")

    db_path = tmp_path / "bot" / "haoqing.sqlite3"

    def query(sql: str, *args: object) -> list[tuple]:
        with sqlite3.connect(db_path, timeout=10) as conn:
            return conn.execute(sql, args).fetchall()

    proc = await start()
    try:
        async with aiohttp.ClientSession() as http:
            chat = Chat(http, f"http://127.0.0.1:{port}")
            await chat.open()
            async with http.get(f"{registry_url}/numbers", params={"kind": "recycled"}) as r:
                demo = (await r.json())[0]
            await chat.say("/start")
            await chat.pick("plan")
            await chat.pick("agree")
            await chat.say(demo["phone"])
            async with http.get(f"{chat.base}/sandbox/sms", params={"phone": demo["phone"]}) as r:
                code = re.search(r"\d{6}", (await r.json())[-1]["text"]).group(0)  # type: ignore[union-attr]
            await chat.say(code)
            await chat.say(plan_day(10))
            seen = chat.last[-1]["seq"]
            stall.clear()
            query("UPDATE jobs SET due_at = ? WHERE key LIKE 'plan:%:T-7'",
                  (datetime.now(UTC) - timedelta(seconds=1)).replace(tzinfo=None).isoformat(sep=" "))
            for _ in range(100):
                if query("SELECT status FROM jobs WHERE key LIKE 'plan:%:T-7'") == [("running",)]:
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("the reminder never started")
            await asyncio.sleep(0.3)
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
            stall.set()
            proc = await start()
            for _ in range(100):
                if query("SELECT status FROM jobs WHERE key LIKE 'plan:%:T-7'") == [("done",)]:
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError(query("SELECT status, attempts FROM jobs WHERE key LIKE 'plan:%:T-7'"))
            pushed = await chat.pushed(seen)
            assert len([m for m in pushed if "还有 7 天" in m["text"]]) == 1, json.dumps(pushed, ensure_ascii=False)
            assert query("SELECT attempts FROM jobs WHERE key LIKE 'plan:%:T-7'") == [(2,)]
    finally:
        if proc.returncode is None:
            proc.terminate()
            await proc.wait()
        await registry.cleanup()


async def test_the_checklist_merges_a_bound_platform_into_the_task_that_names_it(server: RunningServer) -> None:
    """Issue 12, finding 2: not "支付宝" and "支付宝等支付 App 的绑定手机号" side by side."""
    names = [item.name_zh for item in server.runtime.plans._checklist(["alipay", "icbc", "apple_id", "weibo",
                                                                        "kuaishou"])]
    assert "支付宝" not in names and "工商银行" not in names
    assert "支付宝等支付 App 的绑定手机号" in names and "微博" in names
    assert len(names) == len(set(names))


async def test_a_tick_answer_names_the_item_it_changed(server: RunningServer, chat: Chat) -> None:
    """`plan.mark` answers with the item it changed (dialogs/results.py PlanMarked), and the plan flow names that
    item from the answer alone. The runner used to leave `item_id` out while the flow read it; only the flow's
    fallback to the conversation's `plan_item` kept the one-line answer right."""
    from sqlmodel import col, select

    from bot.effects import EffectContext
    from bot.storage import Plan, PlanItem
    from dialogs import cancel_plan, machine
    from dialogs.model import Effect

    await make_plan(chat, plan_day())
    rt = server.runtime
    async with rt.db.session() as session:
        plan = (await session.exec(select(Plan))).one()
        items = (await session.exec(select(PlanItem).where(PlanItem.plan_id == plan.id)
                                    .order_by(col(PlanItem.position)))).all()
    third = items[2]
    assert third.id is not None
    now = datetime.now(UTC)
    event = await rt.effects.run(Effect("plan.mark", {"item_id": third.id, "action": "done"}),
                                 EffectContext(user_id=plan.user_id, lang="zh_CN", now=now))
    assert event is not None and event.result["ok"] is True
    assert event.result["item_id"] == third.id
    before = await rt.plans.load(plan.user_id, now)
    step = machine.step(cancel_plan.VIEW, {"plan": before, "plan_item": None}, event)
    assert step.state == cancel_plan.VIEW
    assert [r.msg.key for r in step.replies] == ["plan.ticked"]
    assert step.replies[0].msg.params["n"] == 3
