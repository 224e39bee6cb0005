"""What /forget, session expiry and retention leave behind (issue 11): the transcript goes, channel ids are
unlinked, an ended or idle session stops working, and a replayed or reordered registry callback changes
nothing."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest
from sqlalchemy import update
from sqlmodel import col, select

from bot.retention import purge_idle_users
from bot.server import RunningServer, start_server
from bot.storage import AbuseCounter, InboxItem, OutboxMessage, UnbindRequestRow, User, Verification
from integrations.registry import sign_callback
from tests.conftest import Chat, first_retention_round, make_settings


@pytest.fixture
async def slow_registry(tmp_path: Path) -> AsyncIterator[RunningServer]:
    """The sandbox registry takes its time, so the test's own callbacks decide the status."""
    srv = await start_server(make_settings(tmp_path, sandbox_processing_seconds=600, sandbox_done_seconds=1200,
                                           unbind_poll_seconds=3600))
    yield srv
    await srv.stop()


async def test_forget_removes_the_transcript_and_the_stored_answers(server: RunningServer, chat: Chat,
                                                                    http: aiohttp.ClientSession) -> None:
    demo = await chat.demo("recycled")
    await chat.verify(demo["phone"])
    masked = demo["phone"][:3] + "****" + demo["phone"][-4:]
    before = json.dumps(await chat.pushed(0), ensure_ascii=False)
    assert masked in before and "开户时间" in before
    await chat.say("/forget")
    await chat.pick("confirm")
    after = json.dumps(await chat.pushed(0), ensure_ascii=False)
    assert masked not in after and "开户时间" not in after and "个人数据已删除" in after
    # A replayed old delivery gets no stored answer back.
    async with http.post(chat.url, json={"id": "m3", "text": "x"}) as r:
        assert masked not in await r.text()
    rt = server.runtime
    async with rt.db.session() as session:
        user = (await session.exec(select(User).where(User.channel == "web"))).first()
        assert user is not None and user.person_id is None
        answers = (await session.exec(select(InboxItem.response).where(InboxItem.user_id == user.id))).all()
        outbox = (await session.exec(select(OutboxMessage.payload).where(OutboxMessage.user_id == user.id))).all()
        assert not (await session.exec(select(Verification))).all()
        # The abuse counters are kept: /forget is not a way round the limits.
        assert (await session.exec(select(AbuseCounter))).all()
    assert all(masked not in (a or "") for a in answers) and all(masked not in p for p in outbox)


async def test_new_chat_ends_the_old_session(server: RunningServer, http: aiohttp.ClientSession) -> None:
    old = await Chat(http, server.url).open()
    await old.say("/start")
    async with http.post(server.url + "/chat/api/sessions", json={"replaces": old.session}) as r:
        assert r.status == 201
        new = Chat(http, server.url, session=(await r.json())["session"])
    async with http.get(old.url, params={"after": "0"}) as r:
        assert r.status == 404 and "新对话" in (await r.json())["messages"][0]["text"]
    await new.send({"text": "/start"})
    async with http.delete(f"{server.url}/chat/api/sessions/{new.session}") as r:
        assert r.status == 204
    async with http.post(new.url, json={"id": "x", "text": "hi"}) as r:
        assert r.status == 404


async def test_an_idle_session_expires_and_retention_purges_it(server: RunningServer, chat: Chat,
                                                               http: aiohttp.ClientSession) -> None:
    await chat.say("/start")
    await first_retention_round(server)
    rt = server.runtime
    idle = timedelta(hours=rt.settings.web_session_idle_hours + 1)
    async with rt.db.session() as session:
        await session.exec(update(User).where(col(User.channel) == "web")
                           .values(last_seen_at=datetime.now(UTC) - idle))
        await session.commit()
    async with http.get(chat.url, params={"after": "0"}) as r:
        assert r.status == 404
    assert await purge_idle_users(rt.db, web_idle_hours=rt.settings.web_session_idle_hours) == 1
    async with rt.db.session() as session:
        assert not (await session.exec(select(User).where(User.channel == "web"))).all()
        assert not (await session.exec(select(OutboxMessage))).all()


async def _filed_request(server: RunningServer, http: aiohttp.ClientSession) -> tuple[Chat, UnbindRequestRow]:
    chat = await Chat(http, server.url).open()
    await chat.unbind_ready(await chat.demo("recycled"))
    await chat.pick("all")
    if any(c["id"] == "confirm" for m in chat.last for c in m.get("choices", [])):
        await chat.pick("confirm")
    async with server.runtime.db.session() as session:
        row = (await session.exec(select(UnbindRequestRow))).one()
    assert row.registry_id is not None
    return chat, row


async def _callback(server: RunningServer, http: aiohttp.ClientSession, row: UnbindRequestRow, status: str,
                    at: int) -> int:
    items = [{"platform": p, "status": status} for p in json.loads(row.platforms)]
    body = json.dumps({"id": row.registry_id, "status": status, "created_at": row.created_at.isoformat(),
                       "items": items}).encode()
    header = sign_callback(server.runtime.settings.resolved_callback_secret(), body, at)
    async with http.post(server.url + "/registry/callback", data=body,
                         headers={"X-Registry-Signature": header}) as r:
        return r.status


async def _pushes(server: RunningServer) -> list[str]:
    async with server.runtime.db.session() as session:
        return list((await session.exec(select(OutboxMessage.payload).where(OutboxMessage.kind == "push"))).all())


async def test_callbacks_are_deduplicated_and_never_move_a_request_back(slow_registry: RunningServer,
                                                                        http: aiohttp.ClientSession) -> None:
    server = slow_registry
    _chat, row = await _filed_request(server, http)
    now = int(time.time())
    assert await _callback(server, http, row, "done", now) == 204
    pushed = await _pushes(server)
    assert sum("已办结" in p for p in pushed) == 1
    # The same signed callback again, then an older "processing": accepted (204) and ignored.
    assert await _callback(server, http, row, "done", now) == 204
    assert await _callback(server, http, row, "processing", now + 5) == 204
    assert await _pushes(server) == pushed
    async with server.runtime.db.session() as session:
        fresh = await session.get(UnbindRequestRow, row.id)
    assert fresh is not None and fresh.status == "done"


async def test_an_older_status_is_ignored_before_a_newer_one(slow_registry: RunningServer,
                                                             http: aiohttp.ClientSession) -> None:
    server = slow_registry
    _chat, row = await _filed_request(server, http)
    now = int(time.time())
    assert await _callback(server, http, row, "processing", now) == 204
    count = len(await _pushes(server))
    # Delivered late: a "submitted" signed earlier than the "processing" we hold.
    assert await _callback(server, http, row, "submitted", now - 30) == 204
    assert len(await _pushes(server)) == count
    async with server.runtime.db.session() as session:
        fresh = await session.get(UnbindRequestRow, row.id)
    assert fresh is not None and fresh.status == "processing"


async def test_retention_purges_silent_channel_users_and_orphan_people(server: RunningServer) -> None:
    from bot.storage import Conversation, Person

    rt = server.runtime
    # Rows seen just now, purged on a clock a year and two days ahead: the server's own scheduler (real clock)
    # can run at any moment during the test and must find nothing to purge, or it would take our rows first.
    seen = datetime.now(UTC)
    later = seen + timedelta(days=rt.settings.user_idle_days + 2)
    async with rt.db.session() as session:
        person = Person(phone_hash="h" * 64, tenure_start="2020-01-01", last_seen_at=seen)
        session.add(person)
        silent = User(channel="telegram", external_id="424242", last_seen_at=seen)
        session.add(silent)
        await session.commit()
        assert silent.id is not None
        session.add(Conversation(user_id=silent.id, state="menu", data='{"lang": "zh_CN"}'))
        session.add(OutboxMessage(user_id=silent.id, channel="telegram", seq=1, payload='{"text": "138****8000"}',
                                  status="sent"))
        await session.commit()
    assert await purge_idle_users(rt.db, later, idle_days=rt.settings.user_idle_days) == 2
    async with rt.db.session() as session:
        assert await session.get(User, silent.id) is not None  # the bare row: their next message finds them
        assert await session.get(Conversation, silent.id) is None
        assert not (await session.exec(select(OutboxMessage).where(OutboxMessage.user_id == silent.id))).all()
        assert not (await session.exec(select(Person))).all()
