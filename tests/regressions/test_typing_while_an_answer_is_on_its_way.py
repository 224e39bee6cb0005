"""Regression: a message typed while the page still waited for the previous answer was silently dropped (the
input was cleared, nothing was sent). Under load the consent step's answer came late, the number typed right
after it vanished, and the page sat at the number prompt. The page now queues it and sends it in turn."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bot.server import start_server
from tests.conftest import ON_SESSION_LOOP, make_settings
from tests.test_browser import phone_page

pytestmark = [pytest.mark.browser, ON_SESSION_LOOP]


async def test_a_number_typed_before_the_consent_answer_arrives_is_sent(browser: Any, tmp_path: Path) -> None:
    server = await start_server(make_settings(tmp_path))
    try:
        async with aiohttp.ClientSession() as http, \
                http.get(f"{server.url}/sandbox/registry/numbers", params={"kind": "fresh"}) as r:
            phone = (await r.json())[0]["phone"]
        async with phone_page(browser) as page:
            await page.goto(server.url + "/")
            await page.get_by_role("button", name="查询号码绑定").last.click()
            await page.get_by_text("同意并继续").last.wait_for()
            held = asyncio.Event()
            release = asyncio.Event()

            async def slow(route: Any) -> None:
                # The consent's answer takes a while, as on a loaded server; later messages go straight through.
                if route.request.method == "POST" and not held.is_set():
                    held.set()
                    await release.wait()
                await route.continue_()

            await page.route("**/chat/api/sessions/*/messages*", slow)
            await page.get_by_role("button", name="同意并继续").last.click()
            await asyncio.wait_for(held.wait(), 60)
            await page.fill("#text", phone)
            await page.click("#send")
            await asyncio.sleep(0.3)
            release.set()
            # The number is sent once the consent's answer is in, and answered: a code is on its way.
            await page.get_by_text("请输入 6 位验证码").last.wait_for()
            log = await page.inner_text("#log")
            assert log.index("请输入您要办理的 11 位手机号码") < log.index(phone) < log.index("请输入 6 位验证码")
    finally:
        await server.stop()
