"""Unbinding end to end on the web chat: real-name check, confirmation, request, status pushed to the user."""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from bot.server import RunningServer, start_server
from dialogs import machine
from dialogs.model import Event
from integrations.registry import sign_callback
from integrations.sandbox_registry.app import create_app as create_sandbox
from tests.conftest import Chat, make_settings


@pytest.fixture
async def fast(tmp_path: Path) -> AsyncIterator[RunningServer]:
    """The sandbox registry moves requests on in seconds, and the bot polls every half second."""
    srv = await start_server(make_settings(tmp_path, sandbox_processing_seconds=0.5, sandbox_done_seconds=1.0,
                                           unbind_poll_seconds=0.5))
    yield srv
    await srv.stop()


async def wait_for_push(chat: Chat, after: int, needle: str, seconds: float = 15) -> list[dict]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        pushed = await chat.pushed(after)
        if any(needle in m["text"] for m in pushed):
            return pushed
        await asyncio.sleep(0.2)
    raise AssertionError(f"no pushed message with {needle!r}: {await chat.pushed(after)}")


async def test_unbind_all_eligible_tracked_to_done(fast: RunningServer, http: aiohttp.ClientSession) -> None:
    chat = await Chat(http, fast.url).open()
    demo = await chat.demo("recycled")
    await chat.verify(demo["phone"])
    await chat.pick("unbind")
    assert "核验机主实名信息" in chat.text
    await chat.realname(demo["name"], demo["id_number"])
    masked = demo["phone"][:3] + "****" + demo["phone"][-4:]
    assert f"号码：{masked}" in chat.text and re.search(r"开户时间：\d{4}-\d{2}-\d{2}", chat.text)
    tenure_month = re.search(r"开户时间：(\d{4}-\d{2})", chat.text).group(1)  # type: ignore[union-attr]
    await chat.pick("confirm")
    listed = re.findall(r"· (.+?)（(\d{4}-\d{2})）", chat.text)
    assert listed and all(month < tenure_month for _, month in listed), (tenure_month, listed)
    # The list above the button is the explicit list of what is filed (issue 12 merged the two screens).
    assert re.search(rf"解绑以上全部 {len(listed)} 个", str(chat.last)), chat.last
    await chat.pick("all")
    reference = re.search(r"编号 (HQ\d{8}-[A-Z0-9]{6})", chat.text)
    assert reference and "5 个工作日" in chat.text, chat.text
    after = chat.last[-1]["seq"]
    pushed = await wait_for_push(chat, after, "已办结")
    assert all(reference.group(1) in m["text"] for m in pushed)
    await chat.say("/menu")
    await chat.pick("requests")
    assert reference.group(1) in chat.text and ("已解绑" in chat.text or "未能解绑" in chat.text)


async def test_per_platform_request_and_forged_choice(chat: Chat) -> None:
    demo = await chat.demo("recycled")
    await chat.unbind_ready(demo)
    offered = [c["id"] for m in chat.last for c in m["choices"] if c["id"].startswith("p:")]
    assert offered
    # A platform that is not offered (for example one bound in the current tenure) cannot be chosen.
    await chat.send({"choice": "p:jd"})
    assert "没看懂" in chat.text
    await chat.pick(offered[0])
    assert len(re.findall(r"^· ", chat.text, flags=re.M)) == 1
    await chat.pick("confirm")
    assert "共 1 个平台" in chat.text


async def test_id_number_checks(chat: Chat) -> None:
    demo = await chat.demo("recycled")
    await chat.verify(demo["phone"])
    await chat.pick("unbind")
    await chat.say(demo["name"])
    await chat.say("340524198001010013")
    assert "校验位不正确" in chat.text
    await chat.say("110105491231002")
    assert "15 位" in chat.text
    await chat.say("11010519491231002x")  # valid format, but not this number's holder
    assert "不一致" in chat.text and "还可以再试 2 次" in chat.text
    await chat.realname(demo["name"], "11010519491231002X")
    assert "还可以再试 1 次" in chat.text
    await chat.realname(demo["name"], "11010519491231002X")
    assert "核验失败次数过多" in chat.text
    # Locked for this verification, even with the right pair.
    await chat.pick("unbind")
    await chat.realname(demo["name"], demo["id_number"])
    assert "核验失败次数过多" in chat.text


async def test_fresh_number_has_nothing_to_unbind_and_guidance_works(chat: Chat) -> None:
    demo = await chat.demo("fresh")
    await chat.unbind_ready(demo)
    assert "没有可以远程解绑的前任绑定" in chat.text
    await chat.say("/menu")
    await chat.pick("guide")
    await chat.pick("c:railway")
    await chat.pick(chat.last[-1]["choices"][0]["id"])
    assert "难度" in chat.text
    await chat.pick("letter")
    # Issue 12: the letter carries the verified holder's own full number (stored only masked).
    assert "个人信息保护法》第四十七条" in chat.text and f"本人是手机号码 {demo['phone']} 的现任机主" in chat.text
    assert demo["phone"] not in str(await chat.pushed(0))


async def test_a_user_never_sees_another_users_requests(fast: RunningServer, http: aiohttp.ClientSession) -> None:
    alice = await Chat(http, fast.url).open()
    await alice.unbind_ready(await alice.demo("recycled"))
    await alice.pick("all")
    reference = re.search(r"编号 (HQ\d{8}-\w{6})", alice.text).group(1)  # type: ignore[union-attr]
    after = alice.last[-1]["seq"]
    bob = await Chat(http, fast.url).open()
    await bob.say("/start")
    await bob.pick("requests")
    # Requests belong to the verified number: an unverified chat is asked to verify and shown nothing.
    assert "请先验证您的手机号" in bob.text and reference not in bob.text
    # Every status push of the request has gone out once alice has the last one (done): none went to bob.
    await wait_for_push(alice, after, "已办结")
    assert reference not in json.dumps(await bob.pushed(0), ensure_ascii=False)


async def test_registry_callbacks_are_signed(fast: RunningServer, http: aiohttp.ClientSession) -> None:
    body = json.dumps({"id": "UB-forged", "status": "done", "created_at": datetime.now(UTC).isoformat(),
                       "items": [], "refused": []}).encode()
    url = fast.url + "/registry/callback"
    for header in ("", f"t={int(time.time())},v1={'0' * 64}", sign_callback("wrong-secret", body, int(time.time()))):
        async with http.post(url, data=body, headers={"X-Registry-Signature": header}) as r:
            assert r.status == 403
    stale = sign_callback(fast.runtime.settings.resolved_callback_secret(), body, int(time.time()) - 3600)
    async with http.post(url, data=body, headers={"X-Registry-Signature": stale}) as r:
        assert r.status == 403
    good = sign_callback(fast.runtime.settings.resolved_callback_secret(), body, int(time.time()))
    async with http.post(url, data=body, headers={"X-Registry-Signature": good}) as r:
        assert r.status == 204
    async with http.post(url, data=b"x" * (70 * 1024), headers={"X-Registry-Signature": good}) as r:
        assert r.status == 413


async def test_registry_outage_keeps_the_request_and_sends_it_once(tmp_path: Path,
                                                                   http: aiohttp.ClientSession) -> None:
    registry_db = tmp_path / "registry.sqlite3"

    async def run_registry(port: int) -> web.AppRunner:
        runner = web.AppRunner(create_sandbox(str(registry_db), processing_after=60, done_after=120))
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        return runner

    registry = await run_registry(0)
    port = registry.addresses[0][1]
    bot = await start_server(make_settings(tmp_path / "bot", registry_url=f"http://127.0.0.1:{port}",
                                           unbind_poll_seconds=0.3, registry_timeout=1.0))
    try:
        chat = await Chat(http, bot.url).open()
        async with http.get(f"http://127.0.0.1:{port}/numbers", params={"kind": "recycled"}) as r:
            demo = (await r.json())[0]
        await chat.unbind_ready(demo)
        await registry.cleanup()  # the registry goes down between the list and the request
        await chat.pick("all")
        assert "暂时无法访问" in chat.text and "不会重复提交" in chat.text, chat.text
        after = chat.last[-1]["seq"]
        await asyncio.sleep(1.0)  # a few failed resubmissions while it is down
        registry = await run_registry(port)
        await wait_for_push(chat, after, "已自动提交")
        await bot.runtime.unbind.submit_queued()  # one more round changes nothing
        with sqlite3.connect(registry_db) as conn:
            assert conn.execute("SELECT COUNT(*) FROM unbind_requests").fetchone()[0] == 1
    finally:
        await bot.stop()
        await registry.cleanup()


async def test_due_date_for_a_request_filed_on_2026_12_28(server: RunningServer) -> None:
    rt = server.runtime
    from sqlmodel import select

    from bot.storage import UnbindRequestRow, User

    async with rt.db.session() as session:
        user = User(channel="web", external_id="due-date")
        session.add(user)
        await session.commit()
    async with aiohttp.ClientSession() as http:
        async with http.get(server.url + "/sandbox/registry/numbers", params={"kind": "recycled"}) as r:
            demo = (await r.json())[1]
    filed = datetime(2026, 12, 28, 2, 0, tzinfo=UTC)  # 10:00 in Beijing
    assert user.id is not None
    await rt.unbind.create(user.id, demo["phone"], "masked", ["weibo"], datetime(2030, 1, 1).date(), filed,
                           "test:1:0:0")
    async with rt.db.session() as session:
        row = (await session.exec(select(UnbindRequestRow))).one()
    assert (row.due_date, row.due_estimated) == ("2027-01-05", True)
    assert row.reference.startswith("HQ20261228-")
    result = {"ok": True, "reference": row.reference, "due": row.due_date, "estimated": row.due_estimated,
              "count": 1, "queued": False}
    step = machine.step("unbind.confirm", {}, Event("result", effect="unbind.create", result=result))
    from bot.i18n import Catalog

    text = Catalog.load().render(step.replies[0].msg, "zh_CN")
    assert "2027-01-05" in text and "估算" in text
