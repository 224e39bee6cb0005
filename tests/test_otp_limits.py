"""OTP limits: per number, per client, the global budget, and the same wording for known and unknown numbers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from bot.server import RunningServer, start_server
from tests.conftest import Chat, make_settings


@pytest.fixture
async def no_wait(tmp_path: Path) -> AsyncIterator[RunningServer]:
    srv = await start_server(make_settings(tmp_path, otp_resend_seconds=0, otp_global_daily=11,
                                           trusted_proxies="127.0.0.1/32", otp_pow_after=100))
    yield srv
    await srv.stop()


async def at_phone_prompt(http: aiohttp.ClientSession, base: str) -> Chat:
    """A web chat client at the phone prompt; with a different `http` (its own X-Forwarded-For behind our
    trusted proxy) it is another client."""
    chat = await Chat(http, base).open()
    await chat.to_phone_prompt()
    return chat


async def test_five_codes_per_number_ten_per_user_and_a_global_budget(no_wait: RunningServer,
                                                                      http: aiohttp.ClientSession) -> None:
    async with http.get(no_wait.url + "/sandbox/registry/numbers", params={"kind": "fresh", "limit": "20"}) as r:
        phones = [d["phone"] for d in await r.json()]
    chat = await at_phone_prompt(http, no_wait.url)
    await chat.say(phones[0])
    for _ in range(4):
        await chat.pick("resend")
        assert "验证码已发送" in chat.text
    await chat.pick("resend")
    assert "这个号码今天接收验证码的次数已达上限" in chat.text
    assert len(no_wait.runtime.sandbox_sms.sent(phones[0])) == 5  # type: ignore[union-attr]
    for phone in phones[1:6]:
        await chat.pick("change")
        await chat.say(phone)
        assert "验证码已发送" in chat.text
    await chat.pick("change")
    await chat.say(phones[6])
    assert "您今天获取验证码的次数已达上限" in chat.text
    # The whole bot's budget (11 here) stops a second client too, whatever number they try.
    async with aiohttp.ClientSession(headers={"X-Forwarded-For": "198.51.100.20"}) as elsewhere:
        other = await at_phone_prompt(elsewhere, no_wait.url)
        await other.say(phones[7])
        assert "验证码已发送" in other.text
        await other.pick("change")
        await other.say(phones[8])
        assert "短信服务今天较繁忙" in other.text


async def test_same_wording_for_known_and_unknown_numbers(server: RunningServer, http: aiohttp.ClientSession) -> None:
    known = (await Chat(http, server.url).demo("recycled"))["phone"]
    unknown = "19999999999" if known != "19999999999" else "19999999998"
    answers = []
    for phone in (known, unknown):
        chat = await at_phone_prompt(http, server.url)
        await chat.say(phone)
        masked = phone[:3] + "****" + phone[-4:]
        answers.append(chat.text.replace(masked, "MASKED"))
    assert answers[0] == answers[1]
    assert server.runtime.sandbox_sms.sent(unknown)  # type: ignore[union-attr]


async def test_expired_code_is_refused(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    srv = await start_server(make_settings(tmp_path, otp_ttl_seconds=0))
    try:
        chat = await at_phone_prompt(http, srv.url)
        phone = (await chat.demo("fresh"))["phone"]
        await chat.say(phone)
        await chat.say(await chat.latest_code(phone))
        assert "验证码已过期" in chat.text
    finally:
        await srv.stop()


async def test_a_replayed_delivery_gets_its_first_code_and_no_second_sms(server: RunningServer) -> None:
    from datetime import UTC, datetime

    rt = server.runtime
    chat_user = await rt.dispatcher.user_for("web", "otp-replay-test", "zh_CN")
    assert chat_user is not None
    now = datetime.now(UTC)
    phone = "13912345678"

    def text(code: str, minutes: int) -> str:
        return f"code {code} ({minutes} min)"

    first = await rt.otp.send(chat_user.id, phone, text, now, client="web:203.0.113.5", delivery_key="web:7:0:0")
    again = await rt.otp.send(chat_user.id, phone, text, now, client="web:203.0.113.5", delivery_key="web:7:0:0")
    assert first.ok and again == first
    assert len(rt.sandbox_sms.sent(phone)) == 1  # type: ignore[union-attr]
    # Another delivery for the same number is a new send, and the number's resend wait answers it.
    other = await rt.otp.send(chat_user.id, phone, text, now, client="web:203.0.113.5", delivery_key="web:8:0:0")
    assert not other.ok and other.reason == "too_soon"
