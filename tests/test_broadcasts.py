"""Broadcasts end to end on the embedded default (SQLite, web chat): who is included, what each recipient gets,
and the rules a broadcast keeps (reminders off, one message per person, schedules, states, bad input)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest

from bot.broadcasts import BROADCASTS, BroadcastError
from bot.server import RunningServer
from bot.storage import Person, Plan, UnbindRequestRow, User, utcnow
from tests.broadcast_support import TEXTS, finished
from tests.conftest import Chat


async def _user_of(server: RunningServer, chat: Chat) -> User:
    from sqlmodel import select

    from bot.web.chat import _session_ref

    async with server.runtime.db.session() as session:
        user = (await session.exec(select(User).where(
            User.channel == "web", User.external_id == _session_ref(server.runtime, chat.session)))).one()
    return user


async def test_web_chat_users_get_it_in_their_language_and_opted_out_get_nothing(
        server: RunningServer, http: aiohttp.ClientSession) -> None:
    zh, en, quiet = [await Chat(http, server.url).open(lang) for lang in ("zh_CN", "en", "zh_CN")]
    for chat in (zh, en, quiet):
        await chat.say("/start")
    await quiet.say("设置")
    await quiet.pick("reminders")
    assert "提醒已关闭" in quiet.text
    service = server.app[BROADCASTS]

    planned = await service.create(texts=TEXTS, segment={}, dry_run=True)
    assert (planned["id"], planned["recipients"], planned["opted_out"]) == (None, 2, 1)
    assert planned["by_channel"] == {"web": {"recipients": 2}}
    assert (await service.create(texts=TEXTS, segment={"lang": "en"}, dry_run=True))["recipients"] == 1

    created = await service.create(texts=TEXTS, segment={}, dry_run=False, created_by="ops")
    assert created["status"] == "draft" and created["recipients"] == 2 and created["left"] == 2
    started = await service.start(created["id"])
    assert started["status"] in ("running", "done")
    status = await finished(service, created["id"])
    assert (status["sent"], status["failed"], status["unreachable"], status["left"]) == (2, 0, 0, 0)

    [zh_got] = [m["text"] for m in await zh.pushed(0) if m["text"].startswith("号清提醒")]
    [en_got] = [m["text"] for m in await en.pushed(0) if m["text"].startswith("Haoqing:")]
    assert zh_got.endswith(service.footer("zh_CN")) and en_got.endswith(service.footer("en"))
    assert not [m for m in await quiet.pushed(0) if "周六系统维护" in m["text"]]
    assert await service.report_csv(created["id"]) == "channel,outcome,reason,count\nweb,sent,,2\n"

    # The footer's promise holds: "设置" opens the settings, where reminders go off.
    await zh.say("设置")
    await zh.pick("reminders")
    assert (await service.create(texts=TEXTS, segment={}, dry_run=True))["recipients"] == 1


async def test_segments_count_people_once_and_follow_requests_plans_and_activity(
        server: RunningServer, http: aiohttp.ClientSession) -> None:
    talkers = [await Chat(http, server.url).open() for _ in range(5)]
    for chat in talkers:
        await chat.say("/start")
    users = [await _user_of(server, chat) for chat in talkers]
    now = utcnow()
    async with server.runtime.db.session() as session:
        person = Person(phone_hash="p" * 64, tenure_start="2025-01-01")
        session.add(person)
        await session.flush()
        # users[0] and users[1] verified the same number: one person, reached once, where they were last seen.
        for user, seen in ((users[0], now - timedelta(hours=2)), (users[1], now - timedelta(minutes=5))):
            db_user = await session.get(User, user.id)
            assert db_user is not None
            db_user.person_id, db_user.last_seen_at = person.id, seen
            session.add(db_user)
        session.add(UnbindRequestRow(reference="HQ-SEG-1", user_id=users[0].id, phone_hash="p" * 64,
                                     phone_masked="138****0000", platforms="[]", tenure_start="2025-01-01",
                                     idempotency_key="seg-1", due_date="2026-12-08", status="submitted",
                                     person_id=person.id))
        session.add(Plan(user_id=users[2].id, phone_hash="q" * 64, phone_enc="x", phone_masked="139****0000",
                         target_date="2027-01-01"))
        session.add(Plan(user_id=users[3].id, phone_hash="r" * 64, phone_enc="x", phone_masked="137****0000",
                         target_date="2027-01-01", status="cancelled"))
        idle = await session.get(User, users[4].id)
        assert idle is not None
        idle.last_seen_at = now - timedelta(days=40)
        session.add(idle)
        await session.commit()
    service = server.app[BROADCASTS]

    async def count(segment: dict[str, Any]) -> int:
        return int((await service.create(texts=TEXTS, segment=segment, dry_run=True))["recipients"])

    assert await count({}) == 4, "five chats, four people"
    assert await count({"has_open_requests": True}) == 1
    assert await count({"has_open_requests": False}) == 3
    assert await count({"has_plan": True}) == 1
    assert await count({"active_days": 30}) == 3
    assert await count({"channel": "telegram"}) == 0
    assert await count({"channel": "web", "has_plan": False, "active_days": 30}) == 2

    created = await service.create(texts=TEXTS, segment={"has_open_requests": True}, dry_run=False)
    await service.start(created["id"])
    await finished(service, created["id"])
    got = [any(m["text"].startswith("号清提醒") for m in await chat.pushed(0)) for chat in talkers]
    assert got == [False, True, False, False, False], "the person's most recent chat, and only that one"


async def test_bad_input_and_wrong_states_are_refused_with_a_reason(server: RunningServer) -> None:
    service = server.app[BROADCASTS]
    for texts, segment in (
            ({"zh_CN": "只有中文"}, {}),
            ({"zh_CN": " ", "en": "x"}, {}),
            ({"zh_CN": "x" * 501, "en": "x"}, {}),
            ({"zh_CN": "控制\x07字符", "en": "x"}, {}),
            ("text", {}),
            (TEXTS, {"country": "cn"}),
            (TEXTS, {"channel": "sms"}),
            (TEXTS, {"active_days": 0}),
            (TEXTS, {"active_days": True}),
            (TEXTS, {"has_plan": "yes"}),
            (TEXTS, ["channel"]),
    ):
        with pytest.raises(BroadcastError) as caught:
            await service.create(texts=texts, segment=segment, dry_run=True)
        assert caught.value.code in ("bad_texts", "bad_segment"), (texts, segment)
    for when in ("tomorrow", "2026-12-01T09:00", (datetime.now(UTC) + timedelta(days=400)).isoformat()):
        with pytest.raises(BroadcastError) as caught:
            await service.create(texts=TEXTS, dry_run=False, scheduled_at=when)
        assert caught.value.code == "bad_schedule"
    with pytest.raises(BroadcastError) as caught:
        await service.status(999)
    assert caught.value.code == "not_found"

    created = await service.create(texts=TEXTS, dry_run=False)
    for action in (service.pause, service.resume):
        with pytest.raises(BroadcastError) as caught:
            await action(created["id"])
        assert caught.value.code == "bad_state"
    await service.start(created["id"])
    with pytest.raises(BroadcastError) as caught:
        await service.start(created["id"])
    assert caught.value.code == "bad_state"
    # With no recipients the engine may finish it at any moment, before or during the cancel.
    try:
        cancelled = await service.cancel(created["id"])
    except BroadcastError as exc:
        assert exc.code == "bad_state" and (await service.status(created["id"]))["status"] == "done"
    else:
        assert cancelled["status"] == "cancelled"


async def test_a_scheduled_broadcast_waits_for_its_time(server: RunningServer, http: aiohttp.ClientSession) -> None:
    chat = await Chat(http, server.url).open()
    await chat.say("/start")
    service = server.app[BROADCASTS]
    when = datetime.now(UTC) + timedelta(hours=3)
    created = await service.create(texts=TEXTS, dry_run=False, scheduled_at=when.isoformat())
    assert (await service.start(created["id"]))["status"] == "scheduled"
    engine_round = server.app[BROADCASTS]
    await asyncio.sleep(0.3)
    assert (await service.status(created["id"]))["sent"] == 0
    assert not [m for m in await chat.pushed(0) if m["text"].startswith("号清提醒")]
    # Three hours on, on the service's (and so the engine's) clock.
    service.clock = lambda: utcnow() + timedelta(hours=3, minutes=1)
    server.app[BROADCASTS].on_change()
    status = await finished(engine_round, created["id"])
    assert status["sent"] == 1 and status["started_at"] is not None
    assert [m for m in await chat.pushed(0) if m["text"].startswith("号清提醒")]


async def test_who_got_it_is_forgotten_a_month_after_the_end_but_the_report_stays(
        server: RunningServer, http: aiohttp.ClientSession) -> None:
    from sqlalchemy import text

    from bot.retention import purge_expired

    chat = await Chat(http, server.url).open()
    await chat.say("/start")
    service = server.app[BROADCASTS]
    created = await service.create(texts=TEXTS, dry_run=False)
    await service.start(created["id"])
    await finished(service, created["id"])
    db = server.runtime.db

    async def rows() -> int:
        async with db.engine.connect() as conn:
            return int((await conn.execute(text("SELECT count(*) FROM broadcast_recipients"))).scalar_one())

    await purge_expired(db)
    assert await rows() == 1, "kept while recent"
    await purge_expired(db, utcnow() + timedelta(days=31))
    assert await rows() == 0
    assert (await service.status(created["id"]))["sent"] == 1
    assert "web,sent,,1" in await service.report_csv(created["id"])


async def test_users_of_a_channel_not_running_here_are_unreachable_and_the_broadcast_ends(
        server: RunningServer, http: aiohttp.ClientSession) -> None:
    from tests.broadcast_support import Recipient, insert_into

    chat = await Chat(http, server.url).open()
    await chat.say("/start")
    # Telegram users from when the bot had a token; it runs without one now.
    await insert_into(server.runtime.db, "test-secret-key", [Recipient("telegram", "700000001"),
                                                             Recipient("telegram", "700000002", active=False)])
    service = server.app[BROADCASTS]
    planned = await service.create(texts=TEXTS, dry_run=True)
    assert planned["by_channel"] == {"web": {"recipients": 1}, "telegram": {"recipients": 2, "unreachable": 2}}
    created = await service.create(texts=TEXTS, dry_run=False)
    await service.start(created["id"])
    status = await finished(service, created["id"])
    assert (status["sent"], status["unreachable"], status["left"]) == (1, 2, 0)
    report = await service.report_csv(created["id"])
    assert "telegram,unreachable,channel_off,1\n" in report and "telegram,unreachable,inactive,1\n" in report
