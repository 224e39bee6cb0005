"""The page meets the server's guards as a person would (issue 11): past a few codes from one address it solves
the proof of work by itself and the code is sent, and 新对话 ends the old session on the server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bot.server import start_server
from tests.conftest import ON_SESSION_LOOP, make_settings
from tests.test_browser import phone_page

pytestmark = [pytest.mark.browser, ON_SESSION_LOOP]


async def test_the_page_solves_the_proof_of_work_and_new_chat_ends_the_old_session(browser: Any,
                                                                                   tmp_path: Path) -> None:
    # Every code needs a proof of work here, at a difficulty a test can afford.
    server = await start_server(make_settings(tmp_path, otp_pow_after=0, pow_bits=10))
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{server.url}/sandbox/registry/numbers", params={"kind": "fresh"}) as r:
                phone = (await r.json())[0]["phone"]
            async with phone_page(browser) as page:
                await page.goto(server.url + "/")
                await page.get_by_role("button", name="查询号码绑定").last.click()
                await page.get_by_role("button", name="同意并继续").last.click()
                await page.fill("#text", phone)
                await page.click("#send")
                try:
                    await page.get_by_text("发送验证码前需要您的浏览器完成一次计算核验").wait_for()
                    await page.get_by_text("请输入 6 位验证码").wait_for()
                except Exception as exc:
                    raise AssertionError(await page.inner_text("#log")) from exc
                async with http.get(f"{server.url}/sandbox/sms", params={"phone": phone}) as r:
                    assert len(await r.json()) == 1, "one code, sent once the work was done"
                old = await page.evaluate("localStorage.getItem('haoqing.session')")
                await page.click("#new-chat")
                await page.get_by_text("请选择您要办理的事项").last.wait_for()
                new = await page.evaluate("localStorage.getItem('haoqing.session')")
                assert new and new != old
            async with http.get(f"{server.url}/chat/api/sessions/{old}/messages", params={"after": "0"}) as r:
                assert r.status == 404, "the session 新对话 left no longer answers"
    finally:
        await server.stop()
