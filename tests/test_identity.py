"""The verified number is the person (invariant 7): requests, plans and tag statements follow whoever verifies
the number again, in a new web session or on Telegram, and never reach another number or a later holder."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from bot.server import start_server
from tests.conftest import Chat, make_settings
from tests.fakes.fake_bot_api import FakeBotApi
from tests.test_plan import plan_day
from tests.test_telegram import TOKEN, TgServer, TgUser, start_tg, texts


@pytest.fixture
async def fake() -> AsyncIterator[FakeBotApi]:
    api = await FakeBotApi(TOKEN).start()
    yield api
    await api.stop()


@pytest.fixture
async def tgsrv(tmp_path: Path, fake: FakeBotApi, http: aiohttp.ClientSession) -> AsyncIterator[TgServer]:
    # No resend wait: the same number is verified from several sessions within seconds here.
    server = await start_tg(tmp_path, fake, http, otp_resend_seconds=0)
    yield server
    await server.runner.cleanup()


async def file_everything(chat: Chat, demo: dict[str, str]) -> tuple[str, str, str]:
    """In one web session: an unbind request, a plan and a new-holder statement. Returns their markers."""
    await chat.unbind_ready(demo)
    await chat.pick("all")
    if any(c["id"] == "confirm" for m in chat.last for c in m.get("choices", [])):
        await chat.pick("confirm")
    reference = re.search(r"编号 (HQ\d{8}-[A-Z0-9]{6})", chat.text)
    assert reference, chat.text
    await chat.say("/menu")
    await chat.pick("tag")
    await chat.pick("new_holder")
    if any(c["id"] == "confirm" for m in chat.last for c in m.get("choices", [])):
        await chat.pick("confirm")  # issue 12: the statement is previewed before it is published
    code = re.search(r"核验码：(\w+)", chat.text)
    assert code, chat.text
    day = plan_day(40)
    await chat.say("/menu")
    await chat.pick("plan")
    await chat.say(day)
    assert day in chat.text or day.replace("-", "") in chat.text or "提醒" in chat.text, chat.text
    return reference.group(1), code.group(1), day


async def my_requests(chat: Chat) -> str:
    await chat.say("/menu")
    await chat.pick("requests")
    return chat.text


async def my_plan(chat: Chat) -> str:
    await chat.say("/menu")
    await chat.pick("plan")
    return chat.text


async def test_a_new_web_session_sees_the_requests_plan_and_tag_of_the_verified_number(
        tgsrv: TgServer, http: aiohttp.ClientSession) -> None:
    first = await Chat(http, tgsrv.url).open()
    demo = await first.demo("recycled")
    reference, code, day = await file_everything(first, demo)

    # 新对话: a new session has nobody to show requests for until it verifies; then the goal (我的申请) follows.
    second = await Chat(http, tgsrv.url).open()
    await second.verify(demo["phone"], flow="requests")
    assert "请先验证您的手机号" in "\n".join(m["text"] for m in second.transcript)
    assert reference in second.text and code in second.text, second.text
    assert day in await my_plan(second)

    # Telegram: the same number, verified with the user's own contact, is the same person.
    user = TgUser(tgsrv, chat_id=777001)
    await user.say("/start")
    await user.click("requests")
    assert reference not in texts(user.new())
    await user.click("agree")
    await user.share_contact("+86" + demo["phone"])
    # The list goes out through the channel's sender after the webhook answered.
    await user.fake.wait_for(lambda: code in texts(user.fake.sent(user.chat_id)))
    shown = texts(user.fake.sent(user.chat_id))
    assert reference in shown and code in shown, shown
    await user.say("/menu")
    await user.click("plan")
    await user.fake.wait_for(lambda: day in texts(user.fake.sent(user.chat_id)))


async def test_another_number_or_a_later_holder_never_sees_them(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    server = await start_server(make_settings(tmp_path, otp_resend_seconds=0))
    try:
        first = await Chat(http, server.url).open()
        demo = await first.demo("recycled")
        reference, code, day = await file_everything(first, demo)

        async with http.get(server.url + "/sandbox/registry/numbers", params={"kind": "recycled",
                                                                               "limit": "5"}) as r:
            other = next(d for d in await r.json() if d["phone"] != demo["phone"])
        stranger = await Chat(http, server.url).open()
        await stranger.verify(other["phone"], flow="requests")
        assert reference not in stranger.text and code not in stranger.text
        assert "还没有解绑申请" in stranger.text
        assert day not in await my_plan(stranger)

        # The number is cancelled and reissued: the registry now reports a later tenure start (开户时间).
        with sqlite3.connect(tmp_path / "sandbox-registry.sqlite3") as registry:
            registry.execute("UPDATE numbers SET tenure_start = ? WHERE phone = ?",
                             (plan_day(0), demo["phone"]))
        later = await Chat(http, server.url).open()
        await later.verify(demo["phone"], flow="requests")
        assert reference not in later.text and code not in later.text, later.text
        assert day not in await my_plan(later)
        # The earlier holder's own session still sees them: the link is to their tenure, kept until /forget.
        assert reference in await my_requests(first)
    finally:
        await server.stop()


async def test_forget_unlinks_every_channel_identity(tgsrv: TgServer, http: aiohttp.ClientSession) -> None:
    server = tgsrv
    first = await Chat(http, server.url).open()
    demo = await first.demo("recycled")
    reference, code, _day = await file_everything(first, demo)
    second = await Chat(http, server.url).open()
    await second.verify(demo["phone"], flow="requests")
    assert reference in second.text
    await second.say("/forget")
    await second.pick("confirm")
    assert "防滥用计数" in second.text
    # The first session was linked to the same person: it is unlinked too, and the tag record is gone.
    text = await my_requests(first)
    assert code not in text


async def test_verified_while_the_registry_was_down_links_once_it_is_back(tmp_path: Path,
                                                                          http: aiohttp.ClientSession) -> None:
    from aiohttp import web

    from integrations.sandbox_registry.app import create_app as create_sandbox

    registry_db = tmp_path / "registry.sqlite3"

    async def run_registry(port: int) -> web.AppRunner:
        runner = web.AppRunner(create_sandbox(str(registry_db), processing_after=600, done_after=1200))
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        return runner

    registry = await run_registry(0)
    port = registry.addresses[0][1]
    bot = await start_server(make_settings(tmp_path / "bot", registry_url=f"http://127.0.0.1:{port}",
                                           otp_resend_seconds=0, registry_timeout=1.0, unbind_poll_seconds=3600))
    try:
        first = await Chat(http, bot.url).open()
        async with http.get(f"http://127.0.0.1:{port}/numbers", params={"kind": "recycled"}) as r:
            demo = (await r.json())[0]
        await first.unbind_ready(demo)
        await first.pick("all")
        if any(c["id"] == "confirm" for m in first.last for c in m.get("choices", [])):
            await first.pick("confirm")
        reference = re.search(r"编号 (HQ\d{8}-[A-Z0-9]{6})", first.text)
        assert reference, first.text
        await registry.cleanup()  # the registry goes down; the code still verifies the number
        second = await Chat(http, bot.url).open()
        await second.verify(demo["phone"], flow="requests")
        assert reference.group(1) not in second.text
        registry = await run_registry(port)
        await second.pick("refresh")
        assert reference.group(1) in second.text, second.text
    finally:
        await bot.stop()
        await registry.cleanup()
