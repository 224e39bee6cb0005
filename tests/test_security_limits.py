"""Limits that hold against a hostile client (invariant 8), each reproducing an attack from issue 11: /forget
resetting SMS caps, sessions rotated to dodge per-session limits, spoofed X-Forwarded-For, a burst spending
the global budget, the real-name lockout reset by a new session, and the proof of work past a few codes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bot import pow as proof_of_work
from bot.abuse import DbCounters, Limits, Rule, client_address
from bot.server import RunningServer, start_server
from bot.storage import AbuseCounter, Database
from bot.vault import Vault
from bot.web.chat import CODE_GATE
from tests.conftest import Chat, make_settings


@pytest.fixture
async def strict(tmp_path: Path) -> AsyncIterator[RunningServer]:
    """Tight numbers so each limit is reached in a few steps; no resend wait unless a test wants one."""
    srv = await start_server(make_settings(tmp_path, otp_resend_seconds=0, otp_per_number_daily=2,
                                           otp_per_user_daily=6, otp_pow_after=100))
    yield srv
    await srv.stop()


def sms_count(server: RunningServer, phone: str) -> int:
    return len(server.runtime.sandbox_sms.sent(phone))  # type: ignore[union-attr]


async def fresh_numbers(http: aiohttp.ClientSession, base: str, count: int) -> list[str]:
    async with http.get(base + "/sandbox/registry/numbers", params={"kind": "fresh", "limit": str(count)}) as r:
        return [d["phone"] for d in await r.json()]


async def test_forget_does_not_reset_the_per_number_cap(strict: RunningServer, http: aiohttp.ClientSession) -> None:
    phone = (await fresh_numbers(http, strict.url, 1))[0]
    chat = await Chat(http, strict.url).open()
    for _ in range(4):
        await chat.to_phone_prompt()
        await chat.say(phone)
        await chat.say("/forget")
        await chat.pick("confirm")
    # The attack sent 5 codes to one number within seconds against a cap of 2; now the cap holds.
    assert sms_count(strict, phone) == 2
    await chat.to_phone_prompt()
    await chat.say(phone)
    assert "这个号码今天接收验证码的次数已达上限" in chat.text


async def test_new_sessions_share_the_resend_wait_of_a_number(server: RunningServer,
                                                              http: aiohttp.ClientSession) -> None:
    phone = (await fresh_numbers(http, server.url, 1))[0]
    answers = []
    for _ in range(3):
        chat = await Chat(http, server.url).open()
        await chat.to_phone_prompt()
        await chat.say(phone)
        answers.append(chat.text)
    # Three sessions within seconds: one code, and the others are told to wait.
    assert sms_count(server, phone) == 1
    assert "验证码已发送" in answers[0] and all("秒后" in a for a in answers[1:]), answers


async def test_one_client_rotating_1000_sessions_stays_within_the_per_address_limits(
        strict: RunningServer, http: aiohttp.ClientSession) -> None:
    sessions: list[str] = []
    refused, retry_after = 0, ""
    for _ in range(1000):
        async with http.post(strict.url + "/chat/api/sessions", json={}) as r:
            if r.status == 201:
                sessions.append((await r.json())["session"])
                continue
            assert r.status == 429
            refused += 1
            retry_after = r.headers.get("Retry-After", "")
            assert "操作太频繁" in (await r.json())["messages"][0]["text"]
    settings = strict.runtime.settings
    # The attack made 2,020 sessions a second; one address now gets its per-minute allowance.
    assert len(sessions) == settings.web_sessions_per_minute and refused == 1000 - len(sessions)
    assert retry_after.isdigit() and 0 < int(retry_after) <= 60
    # Rotating the sessions it got: codes and checks are one budget per address, not one per session.
    chats = [Chat(http, strict.url, session=s) for s in sessions]
    phones = await fresh_numbers(http, strict.url, 12)
    sent = 0
    for index, phone in enumerate(phones):
        chat = chats[index % len(chats)]
        await chat.to_phone_prompt()
        await chat.say(phone)
        sent += "验证码已发送" in chat.text
    assert sent == settings.otp_per_user_daily
    checks = 0
    for index, phone in enumerate(phones):
        chat = chats[index % len(chats)]
        await chat.say("/start")
        await chat.pick("recycle")
        await chat.say(phone)
        checks += "查询太频繁" not in chat.text
    assert checks == settings.recycle_checks_per_hour


async def test_a_spoofed_forwarded_for_is_not_a_new_client(strict: RunningServer,
                                                           http: aiohttp.ClientSession) -> None:
    for index in range(strict.runtime.settings.web_sessions_per_minute):
        async with http.post(strict.url + "/chat/api/sessions", json={},
                             headers={"X-Forwarded-For": f"203.0.113.{index}"}) as r:
            assert r.status == 201
    async with http.post(strict.url + "/chat/api/sessions", json={},
                         headers={"X-Forwarded-For": "198.51.100.7"}) as r:
        assert r.status == 429  # no TRUSTED_PROXIES: the header is the client's word, not ours


def test_client_address_believes_only_trusted_proxies() -> None:
    assert client_address("203.0.113.9", "198.51.100.1", []) == "203.0.113.9"
    assert client_address("10.0.0.2", "198.51.100.1, 10.0.0.3", ["10.0.0.0/8"]) == "198.51.100.1"
    # A client prepending its own "forwarded" address gets nowhere: we read from the proxy's end.
    assert client_address("10.0.0.2", "1.2.3.4, 198.51.100.1", ["10.0.0.0/8"]) == "198.51.100.1"
    assert client_address("10.0.0.2", "garbage", ["10.0.0.0/8"]) == "10.0.0.2"
    # IPv6 hosts get a /64 each, so one is one client however many addresses it rotates through.
    assert client_address("2001:db8:1:2::5", None, []) == client_address("2001:db8:1:2:ffff::9", None, [])
    assert client_address("::ffff:203.0.113.9", None, []) == "203.0.113.9"


async def test_trusted_proxy_forwarded_clients_and_the_global_per_minute_budget(
        tmp_path: Path, http: aiohttp.ClientSession) -> None:
    server = await start_server(make_settings(tmp_path, trusted_proxies="127.0.0.1/32", otp_global_per_minute=3,
                                              otp_resend_seconds=0, otp_pow_after=100))
    try:
        phones = await fresh_numbers(http, server.url, 5)
        answers = []
        for index, phone in enumerate(phones):
            # Five different clients behind our proxy: the per-client caps do not stop them, the budget does.
            headers = {"X-Forwarded-For": f"198.51.100.{index + 1}"}
            async with http.post(server.url + "/chat/api/sessions", json={}, headers=headers) as r:
                session = (await r.json())["session"]
            chat = Chat(http, server.url, session=session)
            chat.http = aiohttp.ClientSession(headers=headers)
            try:
                await chat.to_phone_prompt()
                await chat.say(phone)
                answers.append(chat.text)
            finally:
                await chat.http.close()
        assert sum("验证码已发送" in a for a in answers) == 3
        assert all("短信服务今天较繁忙" in a for a in answers[3:]), answers
    finally:
        await server.stop()


@pytest.fixture
async def roomy(tmp_path: Path) -> AsyncIterator[RunningServer]:
    """Codes flow freely, so a test can verify one number from many sessions."""
    srv = await start_server(make_settings(tmp_path, otp_resend_seconds=0, otp_per_number_daily=50,
                                           otp_per_user_daily=50, otp_pow_after=100))
    yield srv
    await srv.stop()


async def test_realname_lockout_is_the_numbers_not_the_sessions(roomy: RunningServer,
                                                                http: aiohttp.ClientSession) -> None:
    strict = roomy
    demo = await Chat(http, strict.url).demo("recycled")
    attempts = 0
    for _ in range(3):
        chat = await Chat(http, strict.url).open()
        await chat.verify(demo["phone"])
        await chat.pick("unbind")
        for _ in range(2):
            await chat.realname("张三", "11010519491231002X")
            attempts += 1
            if "核验失败次数过多" in chat.text:
                break
        if "核验失败次数过多" in chat.text:
            break
        await chat.say("/forget")
        await chat.pick("confirm")
    assert attempts == strict.runtime.settings.realname_attempts
    # Locked for the number: a new session with the right pair is refused too.
    chat = await Chat(http, strict.url).open()
    await chat.verify(demo["phone"])
    await chat.pick("unbind")
    await chat.realname(demo["name"], demo["id_number"])
    assert "核验失败次数过多" in chat.text
    # And the ID number is locked too: the same ID tried against another verified number is refused at once.
    async with http.get(strict.url + "/sandbox/registry/numbers", params={"kind": "recycled", "limit": "3"}) as r:
        other = next(d for d in await r.json() if d["phone"] != demo["phone"])
    chat = await Chat(http, strict.url).open()
    await chat.verify(other["phone"])
    await chat.pick("unbind")
    await chat.realname("李四", "11010519491231002X")
    assert "核验失败次数过多" in chat.text


async def test_proof_of_work_past_a_few_codes(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    server = await start_server(make_settings(tmp_path, otp_resend_seconds=0, otp_pow_after=2, pow_bits=8))
    try:
        phones = await fresh_numbers(http, server.url, 4)
        chat = await Chat(http, server.url).open()
        await chat.to_phone_prompt()
        await chat.say(phones[0])
        await chat.pick("change")
        await chat.say(phones[1])
        assert sms_count(server, phones[1]) == 1
        await chat.pick("change")
        body: dict[str, Any] = {"id": "third", "text": phones[2]}
        async with http.post(chat.url, json=body) as r:
            assert r.status == 429
            refused = await r.json()
        assert refused["error"] == "pow_required" and "计算核验" in refused["messages"][0]["text"]
        challenge, bits = refused["pow"]["challenge"], refused["pow"]["bits"]
        assert sms_count(server, phones[2]) == 0
        solved = {**body, "pow": {"challenge": challenge, "answer": proof_of_work.solve(challenge, bits)}}
        async with http.post(chat.url, json=solved) as r:
            assert r.status == 200, await r.text()
        assert sms_count(server, phones[2]) == 1
        # A solved challenge is spent: replaying it for another code is refused.
        replay = {"id": "fourth", "text": phones[3], "pow": solved["pow"]}
        await chat.send({"choice": "change"})  # the solved post answered outside `chat`
        async with http.post(chat.url, json=replay) as r:
            assert r.status == 429 and (await r.json())["error"] == "pow_invalid"
        assert sms_count(server, phones[3]) == 0
    finally:
        await server.stop()


async def test_a_burst_of_concurrent_numbers_cannot_slip_past_the_proof_of_work(tmp_path: Path,
                                                                               http: aiohttp.ClientSession) -> None:
    """Six sessions from one address type a number at the same moment. Messages still being handled count as
    codes sent, so two (OTP_POW_AFTER) pass and four are asked for a proof of work: a gate that only looked at
    the codes sent so far let the whole burst through before any code was counted. Numbers typed one after
    another where no code goes out (the recycled-number check) never meet the gate: tests/test_domain_flows.py."""
    server = await start_server(make_settings(tmp_path, otp_resend_seconds=0, otp_pow_after=2, pow_bits=8))
    try:
        phones = await fresh_numbers(http, server.url, 6)
        chats = [await Chat(http, server.url).open() for _ in phones]
        for chat in chats:
            await chat.to_phone_prompt()

        async def type_number(chat: Chat, phone: str) -> int:
            async with http.post(chat.url, json={"id": "burst", "text": phone}) as r:
                await r.read()
                return r.status

        statuses = await asyncio.gather(*(type_number(c, p) for c, p in zip(chats, phones, strict=True)))
        assert sorted(statuses) == [200, 200, 429, 429, 429, 429]
        assert sum(sms_count(server, p) for p in phones) == 2
        assert len(server.app[CODE_GATE]) == 0, "every message left the gate's count"
    finally:
        await server.stop()


async def test_counters_are_keyed_hashes_that_expire(tmp_path: Path) -> None:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'c.sqlite3'}")
    await db.create_all()
    limits = Limits(DbCounters(db), Vault(b"k" * 32))
    now = datetime(2026, 11, 30, 12, tzinfo=UTC)
    rule = Rule("test.window", 2, 60)
    who = limits.subject("client", "web:203.0.113.9")
    assert "203.0.113.9" not in who
    assert await limits.take([(rule, who)], now) is None
    assert await limits.take([(rule, who)], now + timedelta(seconds=10)) is None
    refusal = await limits.take([(rule, who)], now + timedelta(seconds=20))
    assert refusal is not None and refusal.retry_in == 40
    # The window opened at the first use; once it ends the client starts afresh.
    assert await limits.take([(rule, who)], now + timedelta(seconds=61)) is None
    assert await limits.counters.purge(now + timedelta(seconds=200)) == 1
    async with db.session() as session:
        assert await session.get(AbuseCounter, f"test.window:{who}") is None
    await db.close()


async def test_concurrent_hits_never_exceed_the_limit(tmp_path: Path) -> None:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'c.sqlite3'}")
    await db.create_all()
    limits = Limits(DbCounters(db), Vault(b"k" * 32))
    now = datetime(2026, 11, 30, 12, tzinfo=UTC)
    rule = Rule("test.burst", 5, 60)
    results = await asyncio.gather(*(limits.take([(rule, "all")], now) for _ in range(30)))
    assert sum(r is None for r in results) == 5
    await db.close()


async def test_redis_counters_hold_the_same_windows() -> None:
    import uuid

    import redis.asyncio as redis

    from bot.abuse import RedisCounters
    from tests.conftest import IN_CI

    probe = redis.from_url("redis://127.0.0.1:6379/0")
    try:
        await probe.ping()
    except Exception:
        if IN_CI:
            pytest.fail("Redis is not running on 127.0.0.1:6379")
        pytest.skip("Redis is not running on 127.0.0.1:6379")
    finally:
        await probe.aclose()
    prefix = f"test-haoqing-abuse-{uuid.uuid4().hex}:"
    counters = RedisCounters("redis://127.0.0.1:6379/0", prefix=prefix)
    limits = Limits(counters, Vault(b"k" * 32))
    now = datetime(2026, 11, 30, 12, tzinfo=UTC)
    rule = Rule("test.redis", 3, 60)
    try:
        results = await asyncio.gather(*(limits.take([(rule, "all")], now) for _ in range(20)))
        assert sum(r is None for r in results) == 3
        refused = [r for r in results if r is not None]
        assert all(0 < r.retry_in <= 60 for r in refused)
        assert await counters.peek(f"{rule.name}:all", now) == 20
        keys = [k async for k in counters.redis.scan_iter(prefix + "*")]
        ttls = [await counters.redis.ttl(k) for k in keys]
        assert ttls and all(0 < ttl <= 60 for ttl in ttls)  # they expire on their own
    finally:
        for key in [k async for k in counters.redis.scan_iter(prefix + "*")]:
            await counters.redis.delete(key)
        await counters.close()


async def test_limits_hold_through_a_redis_outage(tmp_path: Path) -> None:
    from bot.abuse import FallbackCounters, RedisCounters
    from tests.processes import free_port

    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'c.sqlite3'}")
    await db.create_all()
    ticks = [0.0]
    counters = FallbackCounters(RedisCounters(f"redis://127.0.0.1:{free_port()}/0"), DbCounters(db),
                                clock=lambda: ticks[0])
    limits = Limits(counters, Vault(b"k" * 32))
    now = datetime(2026, 11, 30, 12, tzinfo=UTC)
    rule = Rule("test.outage", 2, 60)
    # Nothing listens where Redis should be: the database counts instead, and the limit still refuses.
    assert await limits.take([(rule, "all")], now) is None
    assert await limits.take([(rule, "all")], now) is None
    assert await limits.take([(rule, "all")], now) is not None
    await counters.close()
    await db.close()
