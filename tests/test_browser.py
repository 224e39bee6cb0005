"""A real browser (Debian's Chromium driven by Playwright) at phone width: /start → verify → lookup."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import aiohttp
import pytest

from bot.server import RunningServer
from tests.conftest import IN_CI

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DOCS = Path(__file__).resolve().parent.parent / "docs"

pytestmark = pytest.mark.browser


@pytest.fixture
async def page():
    if CHROMIUM is None:
        if IN_CI:
            pytest.fail("Chromium is missing: .ci/run should have installed Debian's chromium package")
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run", "--disable-quic"],
        )
        context = await browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2,
                                            locale="zh-CN")
        yield await context.new_page()
        await browser.close()


async def latest_code(base: str, phone: str) -> str:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/sandbox/sms", params={"phone": phone}) as r:
            return re.search(r"\b(\d{6})\b", (await r.json())[-1]["text"]).group(1)  # type: ignore[union-attr]


async def test_verify_and_lookup_in_the_browser(page, server: RunningServer) -> None:
    base = server.url
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/sandbox/registry/numbers", params={"kind": "recycled"}) as r:
            demo = (await r.json())[0]
    await page.goto(base + "/")
    await page.get_by_role("button", name="查询号码绑定").last.click()
    await page.get_by_role("button", name="同意并继续").last.click()
    await page.fill("#text", "+86 " + demo["phone"])
    await page.click("#send")
    await page.get_by_text("请输入 6 位验证码").wait_for()
    # Bad input shows inline, and the conversation goes on.
    await page.fill("#text", "12ab")
    await page.click("#send")
    await page.get_by_text("验证码是 6 位数字").wait_for()
    await page.fill("#text", await latest_code(base, demo["phone"]))
    await page.click("#send")
    await page.get_by_text("前任机主期间绑定").wait_for()
    body = await page.inner_text("#log")
    previous = re.search(r"前任机主期间绑定：(\d+) 个平台", body)
    current = re.search(r"您持有期间绑定：(\d+) 个平台", body)
    assert previous and int(previous.group(1)) > 0 and current and int(current.group(1)) > 0
    assert demo["phone"][:3] + "****" + demo["phone"][-4:] in body
    assert demo["name"] not in body and demo["id_number"] not in body
    # The phone itself appears only in the user's own bubble, never in a bot message.
    bot_text = "\n".join(await page.locator(".msg.bot").all_inner_texts())
    assert demo["phone"] not in bot_text
    # Phone width: nothing overflows sideways.
    assert await page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    target = DOCS / "webchat.png" if os.environ.get("SAVE_SCREENSHOTS") else None
    shot = await page.screenshot(path=str(target) if target else None, full_page=False)
    assert len(shot) > 10_000


async def test_network_error_shows_inline_with_retry(page, server: RunningServer) -> None:
    await page.goto(server.url + "/")
    await page.get_by_role("button", name="查询号码绑定").last.wait_for()
    await page.context.set_offline(True)
    await page.fill("#text", "你好")
    await page.click("#send")
    alert = page.get_by_role("alert")
    await alert.wait_for()
    assert "网络连接失败" in await alert.inner_text()
    await page.context.set_offline(False)
    await alert.get_by_role("button", name="重试").click()
    await page.get_by_text("没看懂这条消息").wait_for()


async def test_plan_date_picker(page, server: RunningServer) -> None:
    base = server.url
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/sandbox/registry/numbers", params={"kind": "fresh"}) as r:
            demo = (await r.json())[0]
    await page.goto(base + "/")
    await page.get_by_role("button", name="注销前提醒").last.click()
    await page.get_by_role("button", name="同意并继续").last.click()
    await page.fill("#text", demo["phone"])
    await page.click("#send")
    await page.get_by_text("请输入 6 位验证码").wait_for()
    await page.fill("#text", await latest_code(base, demo["phone"]))
    await page.click("#send")
    picker = page.locator("input.date-picker").last
    await picker.wait_for()
    target = await page.evaluate("new Date(Date.now() + 20 * 86400000).toISOString().slice(0, 10)")
    await picker.fill(target)
    await page.get_by_text(f"注销计划：{target}").wait_for()
    assert "已完成 0/" in await page.inner_text("#log")
