"""Broadcasts in a real browser (Debian's Chromium driven by Playwright, issue 14): an admin logs in to the staff
console, opens Broadcasts, composes both languages while the preview shows each channel's rendering, dry-runs the
counts, creates and starts, and watches the progress to the end; the report downloads as CSV; the web chat user
whose page is open sees the broadcast arrive in their chat. A scheduled one is paused, resumed and cancelled with
the page's buttons. `SAVE_SCREENSHOTS=1` writes docs/broadcast-console.png."""

from __future__ import annotations

import csv
import io
import os
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from bot.i18n import Catalog
from bot.server import RunningServer, start_server
from tests.broadcast_support import Recipient, insert, migrate
from tests.conftest import ON_SESSION_LOOP, Chat, make_settings
from tests.test_browser import BROWSER_TIMEOUT_MS, DOCS
from tests.test_staff import ALWAYS_OPEN, PASSWORD, add_staff

pytestmark = [pytest.mark.browser, ON_SESSION_LOOP]

TEXT_ZH = "号清提醒：12 月 1 日起，解绑申请的进度可以在「我的申请」里随时查看。"
TEXT_EN = "Haoqing: from 1 December you can follow your unbind requests under “My requests” at any time."


@pytest_asyncio.fixture(loop_scope="session")
async def desk(tmp_path: Path) -> AsyncIterator[RunningServer]:
    # Telegram and WeChat users as the bot stores them, who blocked the bot or unfollowed: counted, not sent to.
    # Written before the bot starts: a blocking write beside the running bot's own would wait on its lock.
    insert(await migrate(tmp_path), "test-secret-key", [
        Recipient("telegram", "2001", active=False), Recipient("telegram", "2002", active=False),
        Recipient("wechat", "o-gone-1", active=False), Recipient("wechat", "o-gone-2", active=False)])
    srv = await start_server(make_settings(tmp_path, **ALWAYS_OPEN))
    await add_staff(srv, "root", role="admin")
    yield srv
    await srv.stop()


async def test_admin_composes_dry_runs_starts_and_watches_a_broadcast(browser: Any,
                                                                      desk: RunningServer) -> None:
    base = desk.url
    async with aiohttp.ClientSession() as http:
        # Recipients, made as users make themselves: web chat sessions; one of them turns reminders off.
        api_users = []
        for lang in ("zh_CN", "zh_CN", "en", "en"):
            chat = await Chat(http, base).open(lang)
            await chat.say("/start")
            api_users.append(chat)
        quiet = await Chat(http, base).open("zh_CN")
        await quiet.say("/start")
        await quiet.pick("settings")
        await quiet.pick("reminders")

        # A user with the web chat open in a phone's browser.
        chat_ctx = await browser.new_context(viewport={"width": 390, "height": 844}, locale="zh-CN")
        chat_ctx.set_default_timeout(BROWSER_TIMEOUT_MS)
        chat_page = await chat_ctx.new_page()
        await chat_page.goto(base + "/")
        await chat_page.get_by_role("button", name="查询号码绑定").last.click()
        await chat_page.get_by_role("button", name="同意并继续").last.wait_for()

        ctx = await browser.new_context(viewport={"width": 1360, "height": 1000}, locale="zh-CN")
        ctx.set_default_timeout(BROWSER_TIMEOUT_MS)
        page = await ctx.new_page()
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))

        # The admin signs in and opens Broadcasts from the console's header.
        await page.goto(base + "/staff")
        await page.fill("#name", "root")
        await page.fill("#password", PASSWORD)
        await page.click("#login")
        await page.get_by_text("暂无工单").wait_for()
        await page.get_by_role("link", name="群发").click()
        await page.get_by_role("heading", name="撰写群发").wait_for()
        await page.get_by_text("还没有群发。").wait_for()

        # Composing: each channel's preview follows the texts as they are typed, with the footer.
        await page.fill("#text-zh_CN", TEXT_ZH)
        await page.fill("#text-en", TEXT_EN)
        for channel in ("telegram", "wechat", "web"):
            column = page.locator(f"#preview .channel-preview.{channel}")
            await column.locator(".bubble[data-lang=zh_CN]", has_text="12 月 1 日起").wait_for()
            await column.locator(".bubble[data-lang=en]", has_text="from 1 December").wait_for()
        footer = Catalog.load().text("broadcast.footer", "zh_CN")
        assert footer in await page.inner_text("#preview .channel-preview.web")
        await page.locator("#preview .channel-preview.wechat_template .bubble").first.wait_for()

        # Starting is offered only after a dry run of exactly these texts and recipients.
        await page.fill("#seg-days", "30")
        assert await page.is_disabled("#create-start")
        await page.click("#dry-run")
        await page.locator("#dry-total", has_text="共 9 人").wait_for()
        assert "另有 1 人已关闭提醒" in await page.inner_text("#dry-opted-out")
        web_row = page.locator("#dry-rows tr[data-channel=web]")
        assert (await web_row.locator("td").nth(1).inner_text()).strip() == "5"
        wechat_row = await page.inner_text("#dry-rows tr[data-channel=wechat]")
        assert "现在可发（客服消息窗口内）：0" in wechat_row and "只能用模板消息：0" in wechat_row
        assert "无法送达：2" in wechat_row
        assert "无法送达：2" in await page.inner_text("#dry-rows tr[data-channel=telegram]")
        assert await page.is_enabled("#create-start")
        await page.fill("#seg-days", "31")
        assert await page.is_disabled("#create-start"), "a change of recipients needs a new dry run"
        await page.fill("#seg-days", "30")
        await page.click("#dry-run")
        await page.locator("#dry-total", has_text="共 9 人").wait_for()

        # Create and start; the progress view follows it to the end.
        await page.click("#create-start")
        await page.locator("#progress-view[data-status=done]").wait_for()
        assert (await page.inner_text("#st-sent")).strip() == "5"
        assert (await page.inner_text("#st-unreachable")).strip() == "4"
        assert (await page.inner_text("#st-left")).strip() == "0"
        assert (await page.inner_text("#st-failed")).strip() == "0"
        assert "9 / 9" in await page.inner_text("#bc-line")
        assert await page.eval_on_selector("#bar", "bar => bar.value === bar.max")
        assert "已完成" in await page.inner_text("#bc-title")
        assert await page.is_hidden("#pause") and await page.is_hidden("#resume") and await page.is_hidden("#start")
        await page.locator("#recent-rows tr.pick", has_text="已完成").wait_for()
        for channel in ("telegram", "wechat", "web"):
            await page.locator(f"#channel-rows tr[data-channel={channel}]").wait_for()

        shot = await page.screenshot(path=str(DOCS / "broadcast-console.png") if os.environ.get("SAVE_SCREENSHOTS")
                                     else None, full_page=True)
        assert len(shot) > 10_000

        # The report downloads as CSV, per channel, outcome and reason.
        async with page.expect_download() as download_info:
            await page.click("#report")
        download = await download_info.value
        rows = list(csv.DictReader(io.StringIO(Path(await download.path()).read_text())))
        assert {"channel": "web", "outcome": "sent", "reason": "", "count": "5"} in rows, rows
        assert {"channel": "wechat", "outcome": "unreachable", "reason": "inactive", "count": "2"} in rows, rows

        # The user whose chat is open sees it arrive; the API users have it once each, the quiet one not at all.
        await chat_page.get_by_text("12 月 1 日起").wait_for()
        for chat in api_users:
            texts = [m["text"] for m in await chat.pushed(0)]
            assert sum(TEXT_ZH in t or TEXT_EN in t for t in texts) == 1, texts
        assert not any(TEXT_ZH in m["text"] for m in await quiet.pushed(0))

        # A scheduled broadcast: paused, resumed and cancelled with the page's buttons.
        tomorrow = (datetime.now() + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M")
        await page.fill("#schedule", tomorrow)
        await page.click("#dry-run")
        await page.locator("#dry").wait_for()
        await page.click("#create-start")
        await page.locator("#progress-view[data-status=scheduled]").wait_for()
        assert "定时" in await page.inner_text("#bc-schedule")
        await page.click("#pause")
        await page.locator("#progress-view[data-status=paused]").wait_for()
        await page.click("#resume")
        await page.locator("#progress-view[data-status=scheduled]").wait_for()
        page.once("dialog", lambda dialog: dialog.accept())
        await page.click("#cancel")
        await page.locator("#progress-view[data-status=cancelled]").wait_for()
        assert await page.locator("#recent-rows tr.pick").count() == 2

        # The earlier one is still there to look at.
        await page.locator("#recent-rows tr.pick", has_text="已完成").click()
        await page.locator("#progress-view[data-status=done]").wait_for()
        assert errors == [], errors
        await ctx.close()
        await chat_ctx.close()


async def test_a_staff_account_has_no_broadcasts_link(browser: Any, desk: RunningServer) -> None:
    await add_staff(desk, "alice")
    ctx = await browser.new_context(viewport={"width": 1280, "height": 800}, locale="zh-CN")
    ctx.set_default_timeout(BROWSER_TIMEOUT_MS)
    page = await ctx.new_page()
    await page.goto(desk.url + "/staff")
    await page.fill("#name", "alice")
    await page.fill("#password", PASSWORD)
    await page.click("#login")
    await page.get_by_text("暂无工单").wait_for()
    assert await page.locator("#broadcasts-link").is_hidden()
    answer = await page.goto(desk.url + "/staff/broadcasts")
    assert answer is not None and answer.status == 403
    await ctx.close()
