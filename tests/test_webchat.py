"""The web chat driven through its public JSON API, on the embedded sandbox registry and SMS gateway."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import aiohttp

from bot.server import RunningServer
from dialogs.model import Msg, Reply
from tests.conftest import Chat

# Platform name and month only; issue 12 adds whether it can be unbound remotely (about the platform, not the holder).
PLATFORM_LINE = re.compile(r"^· [^()（）]+（\d{4}-\d{2}）(· 不能远程解绑，需手动处理)?$")


async def test_page_and_probes(server: RunningServer, http: aiohttp.ClientSession) -> None:
    async with http.get(server.url + "/") as r:
        assert r.status == 200
        html = await r.text()
    assert "号清" in html and "{{" not in html
    async with http.get(server.url + "/", headers={"Accept-Language": "en-GB,en;q=0.9"}) as r:
        assert "Send" in await r.text()
    async with http.get(server.url + "/healthz") as r:
        assert r.status == 200
    async with http.get(server.url + "/readyz") as r:
        assert r.status == 200
        assert (await r.json())["checks"] == {"database": True, "registry": True}


async def test_verify_then_lookup_on_a_recycled_number(chat: Chat) -> None:
    demo = await chat.demo("recycled")
    await chat.verify(demo["phone"])
    text = chat.text
    masked = demo["phone"][:3] + "****" + demo["phone"][-4:]
    assert f"号码：{masked}" in text and "开户时间：" in text
    previous = re.search(r"前任机主期间绑定：(\d+) 个平台\n((?:· .*\n?)*)", text)
    current = re.search(r"您持有期间绑定：(\d+) 个平台\n((?:· .*\n?)*)", text)
    assert previous and current, text
    prev_lines = [line for line in previous.group(2).splitlines() if line]
    assert int(previous.group(1)) == len(prev_lines) > 0
    assert int(current.group(1)) > 0
    # Nothing about the previous holder beyond platform names and months.
    assert all(PLATFORM_LINE.match(line) for line in prev_lines), prev_lines
    assert demo["phone"] not in str(chat.transcript) and demo["id_number"] not in str(chat.transcript)


async def test_lookup_on_fresh_and_ported_numbers(server: RunningServer, http: aiohttp.ClientSession) -> None:
    fresh = await Chat(http, server.url).open()
    fresh_phone = (await fresh.demo("fresh"))["phone"]
    await fresh.verify(fresh_phone)
    assert "前任机主期间绑定：0 个平台" in fresh.text
    ported = await Chat(http, server.url).open()
    async with http.get(server.url + "/sandbox/registry/numbers", params={"kind": "ported"}) as r:
        # A fresh number may be a ported one too; a second code to it within a minute would be refused.
        ported_phone = next(n["phone"] for n in await r.json() if n["phone"] != fresh_phone)
    await ported.verify(ported_phone)
    assert "已携号转网" in ported.text and "携号转网号码不在部分运营商服务" in ported.text


async def test_english_session_speaks_english(server: RunningServer, http: aiohttp.ClientSession) -> None:
    chat = await Chat(http, server.url).open(lang="en")
    await chat.say("/start")
    assert "What would you like to do?" in chat.text
    await chat.pick("settings")
    await chat.pick("language")
    await chat.pick("zh_CN")
    assert "已切换为中文" in chat.text


async def test_same_message_id_twice_changes_state_once(chat: Chat, server: RunningServer) -> None:
    phone = (await chat.demo("fresh"))["phone"]
    await chat.to_phone_prompt()
    first = await chat.send({"id": "same-1", "text": phone})
    again = await chat.send({"id": "same-1", "text": phone})
    assert first == again
    assert len(server.runtime.sandbox_sms.sent(phone)) == 1  # type: ignore[union-attr]
    code = await chat.latest_code(phone)
    await chat.say(code)
    assert "验证成功" in chat.text


async def test_pushed_messages_arrive_after_n(chat: Chat, server: RunningServer, http: aiohttp.ClientSession) -> None:
    replies = await chat.say("/start")
    last_seq = replies[-1]["seq"]
    async with server.runtime.db.session() as session:
        from sqlmodel import select

        from bot.storage import User

        user = (await session.exec(select(User).where(User.channel == "web"))).first()
    assert user is not None and user.id is not None
    await server.runtime.dispatcher.push(user.id, [Reply(Msg("settings.reminders_now_on"))], channel="web")
    async with http.get(chat.url, params={"after": str(last_seq)}) as r:
        pushed = (await r.json())["messages"]
    assert [m["text"] for m in pushed] == ["提醒已开启。"] and pushed[0]["seq"] == last_seq + 1
    async with http.get(chat.url, params={"after": "x"}) as r:
        assert r.status == 400


async def test_wrong_codes_lock_the_challenge_even_for_the_right_code(chat: Chat) -> None:
    phone = (await chat.demo("recycled"))["phone"]
    await chat.to_phone_prompt()
    await chat.say(phone)
    code = await chat.latest_code(phone)
    wrong = f"{(int(code) + 1) % 1_000_000:06d}"
    for remaining in (4, 3, 2, 1):
        await chat.say(wrong)
        assert f"还可以再试 {remaining} 次" in chat.text
    await chat.say(wrong)
    assert "验证码已作废" in chat.text
    await chat.say(code)
    assert "验证成功" not in chat.text and "验证码已作废" in chat.text


async def test_resend_waits_sixty_seconds(chat: Chat) -> None:
    phone = (await chat.demo("fresh"))["phone"]
    await chat.to_phone_prompt()
    await chat.say(phone)
    await chat.pick("resend")
    assert re.search(r"请 \d+ 秒后再试", chat.text)


async def test_two_concurrent_submissions_of_one_code_verify_once(server: RunningServer,
                                                                   http: aiohttp.ClientSession) -> None:
    chat = await Chat(http, server.url).open()
    phone = (await chat.demo("fresh"))["phone"]
    await chat.to_phone_prompt()
    await chat.say(phone)
    code = await chat.latest_code(phone)
    a, b = await asyncio.gather(chat.send({"id": "c1", "text": code}), chat.send({"id": "c2", "text": code}))
    texts = "\n".join(m["text"] for m in a + b)
    assert texts.count("验证成功") == 1


async def test_unmasked_values_never_reach_logs_or_the_database(chat: Chat, server: RunningServer,
                                                               log_capture, tmp_path: Path) -> None:
    demo = await chat.demo("recycled")
    await chat.verify(demo["phone"])
    assert "前任机主期间绑定" in chat.text
    await chat.pick("menu")
    logs = log_capture.getvalue()
    assert "otp sent" in logs and demo["phone"][:3] + "****" + demo["phone"][-4:] in logs
    assert demo["phone"] not in logs
    await server.runtime.db.close()
    for path in tmp_path.glob("haoqing.sqlite3*"):
        assert demo["phone"].encode() not in path.read_bytes(), path


async def test_delete_my_data(chat: Chat, server: RunningServer) -> None:
    await chat.verify((await chat.demo("fresh"))["phone"])
    await chat.say("/forget")
    await chat.pick("confirm")
    assert "个人数据已删除" in chat.text
    from sqlmodel import select

    from bot.storage import ConsentRecord, OtpChallenge, Verification

    async with server.runtime.db.session() as session:
        for table in (Verification, OtpChallenge, ConsentRecord):
            assert (await session.exec(select(table))).all() == []
    await chat.pick("lookup")
    assert any(c["id"] == "agree" for m in chat.last for c in m["choices"]), "consent is asked again"
