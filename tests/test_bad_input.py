"""Hostile and odd input at every state: a clear answer and a usable conversation, never a 5xx."""

from __future__ import annotations

import aiohttp
import pytest

from bot.server import RunningServer
from tests.conftest import Chat

NASTY = [
    "x" * 10_000,
    "😀🙈🔥 号码？",
    "\x00\x01\x07\x1b[31m\u202eabc",
    "'; DROP TABLE users; --",
    "<script>alert(1)</script><img src=x onerror=alert(1)>",
    "{{7*7}} ${7*7} %s %(x)s {0}",
    "",
    "   ",
]


async def reach(chat: Chat, state: str, phone: str) -> None:
    await chat.say("/start")
    if state == "menu":
        return
    if state == "settings":
        await chat.pick("settings")
        return
    if state == "settings.language":
        await chat.pick("settings")
        await chat.pick("language")
        return
    if state == "settings.forget":
        await chat.pick("settings")
        await chat.pick("forget")
        return
    await chat.pick("lookup")
    if state == "verify.consent":
        return
    await chat.pick("agree")
    if state == "verify.phone":
        return
    await chat.say(phone)
    if state == "verify.code":
        return
    await chat.say(await chat.latest_code(phone))
    assert state == "lookup.done"


@pytest.mark.parametrize("state", ["menu", "verify.consent", "verify.phone", "verify.code", "lookup.done",
                                   "settings", "settings.language", "settings.forget"])
async def test_nasty_text_everywhere(state: str, server: RunningServer, http: aiohttp.ClientSession) -> None:
    chat = await Chat(http, server.url).open()
    phone = (await chat.demo("fresh" if state != "lookup.done" else "recycled"))["phone"]
    await reach(chat, state, phone)
    for text in NASTY:
        replies = await chat.say(text)
        assert replies and all(m["text"].strip() for m in replies), (state, text)
        assert any(m["choices"] for m in replies) or state in ("verify.phone",), (state, text, replies)
        joined = chat.text
        assert "<script>" not in joined and "DROP TABLE" not in joined
    for raw, status in ((b"", 400), (b"{not json", 400), (b"[1,2]", 400), (b'{"text": 5}', 400),
                        (b'{"id": {"a": 1}, "text": "hi"}', 400), (b"\xff\xfe", 400)):
        async with http.post(chat.url, data=raw, headers={"Content-Type": "application/json"}) as r:
            body = await r.json()
            assert r.status == status, (raw, r.status)
            assert body["messages"][0]["text"] and body["messages"][0]["error"]
    async with http.post(chat.url, data=b'{"text": "' + b"a" * (65 * 1024) + b'"}',
                         headers={"Content-Type": "application/json"}) as r:
        assert r.status == 413
        assert "KiB" in (await r.json())["messages"][0]["text"]
    # Still a working conversation afterwards.
    await chat.say("/menu")
    assert "请选择您要办理的事项" in chat.text


async def test_unknown_session_and_oversized_session_create(server: RunningServer, http: aiohttp.ClientSession) -> None:
    async with http.post(server.url + "/chat/api/sessions/nope-nope-nope-nope/messages", json={"text": "hi"}) as r:
        assert r.status == 404
        assert (await r.json())["messages"][0]["text"]
    async with http.post(server.url + "/chat/api/sessions", data=b"x" * (70 * 1024)) as r:
        assert r.status == 413
