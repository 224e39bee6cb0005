"""The handoff journey in real browsers (Debian's Chromium driven by Playwright): a web chat user types 人工; a
staff member logs in, sees the ticket arrive live, claims it, sees the masked context and the transcript,
replies; the user sees the reply and answers; the staff member sees that live, closes, and the user is back
at the bot's menu. `SAVE_SCREENSHOTS=1` writes docs/staff-console.png and docs/staff-chat.png."""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from bot.server import RunningServer, start_server
from tests.conftest import ON_SESSION_LOOP, make_settings
from tests.test_browser import BROWSER_TIMEOUT_MS, DOCS, latest_code
from tests.test_staff import ALWAYS_OPEN, PASSWORD, add_staff

pytestmark = pytest.mark.browser


@pytest_asyncio.fixture(loop_scope="session")
async def desk(tmp_path: Path) -> AsyncIterator[RunningServer]:
    srv = await start_server(make_settings(tmp_path, **ALWAYS_OPEN))
    await add_staff(srv, "alice")
    yield srv
    await srv.stop()


@ON_SESSION_LOOP
async def test_handoff_journey_in_the_browser(browser: Any, desk: RunningServer) -> None:
    base = desk.url
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/sandbox/registry/numbers", params={"kind": "recycled"}) as r:
            demo = (await r.json())[0]
    masked = demo["phone"][:3] + "****" + demo["phone"][-4:]

    console_ctx = await browser.new_context(viewport={"width": 1280, "height": 800}, locale="zh-CN")
    console = await console_ctx.new_page()
    console_ctx.set_default_timeout(BROWSER_TIMEOUT_MS)
    chat_ctx = await browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2,
                                         locale="zh-CN")
    chat_ctx.set_default_timeout(BROWSER_TIMEOUT_MS)
    chat = await chat_ctx.new_page()

    # The staff member signs in; a wrong password first says so on the page.
    await console.goto(base + "/staff")
    await console.fill("#name", "alice")
    await console.fill("#password", "not the password")
    await console.click("#login")
    await console.get_by_text("账号或密码不对").wait_for()
    await console.fill("#name", "alice")
    await console.fill("#password", PASSWORD)
    await console.click("#login")
    await console.get_by_text("暂无工单").wait_for()

    # The user verifies their number, then asks for a person.
    await chat.goto(base + "/")
    await chat.get_by_role("button", name="查询号码绑定").last.click()
    await chat.get_by_role("button", name="同意并继续").last.click()
    await chat.fill("#text", demo["phone"])
    await chat.click("#send")
    await chat.get_by_text("请输入 6 位验证码").wait_for()
    await chat.fill("#text", await latest_code(base, demo["phone"]))
    await chat.click("#send")
    await chat.get_by_text("前任机主期间绑定").wait_for()
    await chat.fill("#text", "人工")
    await chat.click("#send")
    await chat.get_by_text("排在人工客服队列第 1 位").wait_for()

    # The ticket arrives live (no reload), with the masked number.
    ticket = console.locator("#queue li.ticket").first
    await ticket.wait_for(timeout=15_000)
    assert masked in await ticket.inner_text()
    await ticket.click()
    await console.click("#claim")
    await console.locator("#ticket-title", has_text="处理中").wait_for()
    await chat.get_by_text("客服 alice 已接入").wait_for(timeout=15_000)

    context = await console.inner_text("#context")
    assert masked in context and "已验证号码" in context and "handoff.with_staff" in context
    transcript = await console.inner_text("#transcript")
    assert "前任机主期间绑定" in transcript, "the bot's last words are in the transcript"

    # A canned reply fills the box; the staff member sends their own words.
    await console.get_by_role("button", name=re.compile("您好，我是号清客服")).click()
    assert "您好，我是号清客服" in await console.input_value("#reply")
    await console.fill("#reply", "您好，我是 alice，您的号码有 3 个前任绑定，我来帮您看看。")
    await console.click("#send")
    await chat.get_by_text("客服 alice：您好，我是 alice").wait_for(timeout=15_000)

    # The user answers; the console shows it live.
    await chat.fill("#text", "谢谢！微博那个能先解绑吗？")
    await chat.click("#send")
    await console.locator("#transcript li.user", has_text="微博那个能先解绑吗").wait_for(timeout=15_000)

    whole = await console.inner_text("body")
    assert demo["phone"] not in whole and demo["name"] not in whole and demo["id_number"] not in whole
    if os.environ.get("SAVE_SCREENSHOTS"):
        await console.screenshot(path=str(DOCS / "staff-console.png"))
        await chat.screenshot(path=str(DOCS / "staff-chat.png"))

    # Closing hands the user back to the bot, at the main menu.
    await console.click("#close")
    await console.locator("#ticket-title", has_text="已关闭").wait_for()
    await chat.get_by_text("客服已结束本次对话").wait_for(timeout=15_000)
    await chat.get_by_role("button", name="查询号码绑定").last.wait_for()
    await chat.get_by_role("button", name="设置").last.click()
    await chat.get_by_role("button", name="语言").last.wait_for()
    assert await chat.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    await console_ctx.close()
    await chat_ctx.close()


def test_the_console_takes_its_words_from_the_catalog() -> None:
    from tests.test_locales import CJK

    static = Path(__file__).resolve().parent.parent / "bot" / "staff" / "static"
    for name in ("console.html", "login.html"):
        html = (static / name).read_text()
        visible = re.sub(r"<script[^>]*>.*?</script>|<style>.*?</style>|\{\{[^}]+\}\}", "", html, flags=re.S)
        assert not CJK.search(visible), name
        assert not re.search(r">\s*[A-Za-z][A-Za-z ]{3,}\s*<", visible), f"hard-coded English in {name}"
    script = (static / "console.js").read_text()
    assert not CJK.search(script)


@ON_SESSION_LOOP
async def test_only_an_admin_sees_the_audit_log_in_the_console(browser: Any, desk: RunningServer) -> None:
    await add_staff(desk, "root", role="admin")
    context = await browser.new_context(viewport={"width": 1280, "height": 800}, locale="zh-CN")
    page = await context.new_page()
    context.set_default_timeout(BROWSER_TIMEOUT_MS)

    async def login(name: str) -> None:
        await page.goto(desk.url + "/staff")
        await page.fill("#name", name)
        await page.fill("#password", PASSWORD)
        await page.click("#login")
        await page.get_by_text("暂无工单").wait_for()

    await login("alice")
    assert await page.locator("#audit-toggle").is_hidden()
    await page.click("#logout")
    await page.locator("#login").wait_for()
    await login("root")
    await page.click("#audit-toggle")
    rows = page.locator("#audit-rows tr")
    await rows.first.wait_for()
    table = await page.inner_text("#audit-rows")
    assert "alice" in table and "登录" in table and "退出" in table and "root" in table
    await context.close()
