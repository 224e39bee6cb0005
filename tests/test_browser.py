"""A real browser (Debian's Chromium driven by Playwright) at phone width: /start → verify → lookup, the typed
unbind journey and a 16-item plan in both languages (issue 12), the page's own words, masking and reload."""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from bot.server import RunningServer
from tests.conftest import CHROMIUM, ON_SESSION_LOOP  # noqa: F401  (CHROMIUM: for other test modules)

DOCS = Path(__file__).resolve().parent.parent / "docs"

pytestmark = [pytest.mark.browser, ON_SESSION_LOOP]
BROWSER_TIMEOUT_MS = 120_000


@asynccontextmanager
async def phone_page(browser: Any, locale: str = "zh-CN") -> AsyncIterator[Any]:
    """A page at phone width in a new context of the worker's shared Chromium (the `browser` fixture)."""
    context = await browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2,
                                        locale=locale)
    # Patience, not speed, is under test: on 2 shared cores a step can wait behind another suite's load.
    context.set_default_timeout(BROWSER_TIMEOUT_MS)
    try:
        yield await context.new_page()
    finally:
        await context.close()


@pytest_asyncio.fixture(loop_scope="session")
async def server(session_loop_server: RunningServer) -> RunningServer:
    """The usual server, on the browser's event loop."""
    return session_loop_server


@pytest_asyncio.fixture(loop_scope="session")
async def page(browser: Any) -> AsyncIterator[Any]:
    async with phone_page(browser) as p:
        yield p


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
    await page.get_by_text("您好！我是号清").wait_for()  # typed intent: a greeting is greeted


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


# --- issue 12 -----------------------------------------------------------------------------------------------------

WORDS = {
    "zh": {"locale": "zh-CN", "phone": "请输入您要办理的 11 位手机号码", "intent": "我要解绑前任机主的账号",
           "agree": "同意并继续", "code": "请输入 6 位验证码", "name": "请输入机主姓名", "confirm": "信息无误，继续",
           "all": "提交：解绑以上全部", "filed": "编号", "send": "发送", "new_chat": "新对话", "plan": "注销前提醒",
           "list": "查看完整清单"},
    "en": {"locale": "en-US", "phone": "11-digit mobile number", "intent": "unbind the previous owner's accounts",
           "agree": "I agree", "code": "6-digit code", "name": "full name", "confirm": "That's right, continue",
           "all": "File: unbind all", "filed": "reference", "send": "Send", "new_chat": "New chat",
           "plan": "Pre-cancellation plan", "list": "Show the whole list"},
}


def shot(name: str) -> str | None:
    return str(DOCS / name) if os.environ.get("SAVE_SCREENSHOTS") else None


async def demos(base: str, kind: str) -> list[dict[str, Any]]:
    async with aiohttp.ClientSession() as http, http.get(f"{base}/sandbox/registry/numbers",
                                                         params={"kind": kind}) as r:
        return list(await r.json())


async def type_and_send(page: Any, text: str) -> None:
    await page.fill("#text", text)
    await page.click("#send")


async def last_button(page: Any, name: str) -> Any:
    button = page.locator(".choices button:not([disabled])", has_text=name).last
    await button.wait_for()
    return button


@pytest.mark.parametrize("lang", ["zh", "en"])
async def test_typed_unbind_journey_at_phone_width(browser: Any, server: RunningServer, lang: str) -> None:
    words = WORDS[lang]
    demo = (await demos(server.url, "recycled"))[0]
    async with phone_page(browser, words["locale"]) as page:
        actions = 0
        await page.goto(server.url + "/")
        # The page's own words follow the language (finding 7), and buttons use the bubbles' font.
        await page.locator(".choices button").first.wait_for()
        assert (await page.inner_text("#send")).strip() == words["send"]
        assert (await page.inner_text("#new-chat")).strip() == words["new_chat"]
        fonts = await page.evaluate("""[getComputedStyle(document.querySelector('.choices button')).fontFamily,
                                        getComputedStyle(document.querySelector('.msg')).fontFamily]""")
        assert fonts[0] == fonts[1]
        # Buttons show the numbers a typed number refers to (finding 1).
        assert (await page.locator(".choices button .n").first.inner_text()).strip() == "1"
        await type_and_send(page, words["intent"])
        actions += 1
        await (await last_button(page, words["agree"])).click()
        actions += 1
        await page.get_by_text(words["phone"]).last.wait_for()
        assert await page.get_attribute("#text", "inputmode") == "numeric"
        await type_and_send(page, demo["phone"])
        actions += 1
        await page.get_by_text(re.compile(words["code"])).last.wait_for()
        assert await page.get_attribute("#text", "inputmode") == "numeric"
        assert await page.get_attribute("#text", "autocomplete") == "one-time-code"
        await type_and_send(page, await latest_code(server.url, demo["phone"]))
        actions += 1
        await page.get_by_text(re.compile(words["name"])).last.wait_for()
        await type_and_send(page, f"{demo['name']} {demo['id_number']}")
        actions += 1
        await (await last_button(page, words["confirm"])).click()
        actions += 1
        await (await last_button(page, words["all"])).click()
        actions += 1
        await page.get_by_text(re.compile(r"HQ\d{8}-[A-Z0-9]{6}")).last.wait_for()
        assert actions <= 7
        # The user's own name and ID number are masked in their bubble once sent (finding 8).
        mine = "\n".join(await page.locator(".msg.me").all_inner_texts())
        assert demo["id_number"] not in mine and demo["name"] not in mine
        assert demo["id_number"][:4] + "*" * 10 + demo["id_number"][-4:] in mine
        assert await page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        await page.screenshot(path=shot(f"webchat-unbind-{lang}.png"))
        # Reload: both sides of the transcript come back, still masked.
        before_bot = len(await page.locator(".msg.bot").all())
        before_me = await page.locator(".msg.me").all_inner_texts()
        await page.reload()
        await page.get_by_text(re.compile(r"HQ\d{8}-[A-Z0-9]{6}")).last.wait_for()
        assert len(await page.locator(".msg.bot").all()) == before_bot
        after_me = await page.locator(".msg.me").all_inner_texts()
        assert len(after_me) == len(before_me)
        assert demo["name"] not in "\n".join(after_me) and demo["id_number"] not in "\n".join(after_me)
        stored = await page.evaluate("JSON.stringify(localStorage)")
        assert demo["phone"] not in stored and demo["id_number"] not in stored and demo["name"] not in stored


async def sixteen_item_demo(server: RunningServer) -> dict[str, Any]:
    from bot.plans import TASK_COVERS, TASKS

    directory = server.runtime.directory
    for kind in ("recycled", "fresh", "ported", "tagged"):
        for demo in await demos(server.url, kind):
            _start, bindings = await server.runtime.registry.bindings(demo["phone"])
            own = {b.platform for b in bindings if b.tenure == "current"}
            kept = [p for p in own if not ((known := directory.get(p)) and known.category in TASK_COVERS)]
            if len(kept) + len(TASKS) >= 16:
                return demo
    raise AssertionError("no demo number has a 16-item checklist")


@pytest.mark.parametrize("lang", ["zh", "en"])
async def test_a_sixteen_item_plan_at_phone_width(browser: Any, server: RunningServer, lang: str) -> None:
    words = WORDS[lang]
    demo = await sixteen_item_demo(server)
    async with phone_page(browser, words["locale"]) as page:
        await page.goto(server.url + "/")
        await (await last_button(page, words["plan"])).click()
        await (await last_button(page, words["agree"])).click()
        await type_and_send(page, demo["phone"])
        await page.get_by_text(re.compile(words["code"])).last.wait_for()
        await type_and_send(page, await latest_code(server.url, demo["phone"]))
        picker = page.locator("input.date-picker").last
        await picker.wait_for()
        target = await page.evaluate("new Date(Date.now() + 20 * 86400000).toISOString().slice(0, 10)")
        await picker.fill(target)
        progress = re.compile(r"已完成 0/(\d+) 项|0 of (\d+) done")
        await page.get_by_text(progress).last.wait_for()
        log = await page.inner_text("#log")
        found = progress.search(log)
        assert found
        total = int(found.group(1) or found.group(2))
        assert total >= 16
        # Buttons carry the list's own numbers and come a page at a time; item 13 is ticked by typing 13.
        labels = await page.locator(".msg.bot").last.locator(".choices button").all_inner_texts()
        assert labels[0].startswith("1. ") and any(label.startswith("8. ") for label in labels)
        assert not any(label.startswith("9. ") for label in labels)
        assert await page.locator(".msg.bot").last.locator(".choices button .n").count() == 0
        await page.screenshot(path=shot(f"webchat-plan-{lang}.png"), full_page=False)
        await type_and_send(page, "13")
        await page.get_by_text(re.compile(r"✅ .*13\. ")).last.wait_for()
        await (await last_button(page, words["list"])).click()
        await page.get_by_text(re.compile(r"1/\d+|1 of \d+ done")).last.wait_for()
        assert await page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")


async def test_the_page_switches_its_words_when_the_conversation_switches_language(browser: Any,
                                                                                  server: RunningServer) -> None:
    async with phone_page(browser, "zh-CN") as page:
        await page.goto(server.url + "/")
        await (await last_button(page, "设置")).click()
        await (await last_button(page, "切换语言")).click()
        await (await last_button(page, "English")).click()
        await page.locator("#send", has_text="Send").wait_for()
        assert (await page.inner_text("#new-chat")).strip() == "New chat"
        assert "中文" not in (await page.get_attribute("#text", "placeholder") or "")
        assert await page.evaluate("document.documentElement.lang") == "en"
        await page.context.set_offline(True)
        await type_and_send(page, "hello")
        alert = page.get_by_role("alert")
        await alert.wait_for()
        assert not re.search(r"[\u4e00-\u9fff]", await alert.inner_text())
