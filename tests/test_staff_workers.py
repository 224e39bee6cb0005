"""Two workers on one PostgreSQL database with Redis: a claim on one worker shows live on a console connected to
the other (a separate `python -m bot run` process). Under CI=true a missing PostgreSQL or Redis fails the test."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bot.server import start_server
from bot.staff.live import LiveHub
from tests.conftest import IN_CI, Chat, make_settings
from tests.processes import free_port, start_bot
from tests.test_postgres import pg_url as pg_url
from tests.test_staff import ALWAYS_OPEN, Staff, add_staff

# Several processes of their own each: the tests of one group run one after another on one pytest worker, so at
# most two such tests (one per group) load the machine's two cores at once.
pytestmark = pytest.mark.xdist_group("processes-b")


REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture
async def redis_url() -> AsyncIterator[str]:
    import redis.asyncio as redis

    client = redis.from_url(REDIS_URL)
    try:
        await asyncio.wait_for(client.ping(), 5)
    except Exception as exc:
        if IN_CI:
            pytest.fail(f"Redis is not reachable at {REDIS_URL}: {exc}")
        pytest.skip(f"Redis is not reachable: {exc}")
    finally:
        await client.aclose()
    yield REDIS_URL


async def events_of(member: Staff, url: str, into: asyncio.Queue[dict[str, Any]], ready: asyncio.Event) -> None:
    async with member.http.get(url + "/staff/api/events") as r:
        assert r.status == 200
        async for raw in r.content:
            line = raw.decode().strip()
            if line.startswith("event: ready"):
                ready.set()
            elif line.startswith("data: {"):
                event = json.loads(line[6:])
                if event.get("type") == "ticket":
                    await into.put(event)


async def next_event(queue: asyncio.Queue[dict[str, Any]], kind: str) -> dict[str, Any]:
    while True:
        event = await asyncio.wait_for(queue.get(), 15)
        if event["event"] == kind:
            return event


async def test_a_claim_on_one_worker_shows_on_a_console_of_the_other(
        tmp_path: Path, pg_url: str, redis_url: str) -> None:
    first = await start_server(make_settings(tmp_path / "a", database_url=pg_url, redis_url=redis_url,
                                             **ALWAYS_OPEN))
    port = free_port()
    second = await start_bot(port, {"DATABASE_URL": pg_url, "REDIS_URL": redis_url, "DATA_DIR": str(tmp_path / "b"),
                                    "SECRET_KEY": "test-secret-key", "STAFF_HOURS": "00:00-24:00",
                                    "STAFF_DAYS": "1-7"})
    other_url = f"http://127.0.0.1:{port}"
    alice, bob = Staff(first.url), Staff(other_url)
    listener: asyncio.Task[None] | None = None
    try:
        await add_staff(first, "alice")
        await add_staff(first, "bob")
        await alice.login("alice")
        await bob.login("bob")  # on the other worker: one database, so one set of accounts and sessions
        events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        ready = asyncio.Event()
        listener = asyncio.create_task(events_of(bob, other_url, events, ready))
        await asyncio.wait_for(ready.wait(), 15)

        async with aiohttp.ClientSession() as http:
            chat = await Chat(http, first.url).open()
            await chat.say("人工")
            new = await next_event(events, "new")
            await alice.post(f"/staff/api/tickets/{new['ticket']}/claim")
            claimed = await next_event(events, "claimed")
            assert claimed["ticket"] == new["ticket"] and claimed["by"] == "alice"
            [seen] = await bob.tickets("claimed")
            assert seen["claimed_by"] == "alice"
            answer = await bob.post(f"/staff/api/tickets/{new['ticket']}/claim", expect=409)
            assert answer["error"] == "already_claimed"
            await chat.say("您好")
            assert (await next_event(events, "message"))["ticket"] == new["ticket"]
    finally:
        if listener is not None:
            listener.cancel()
            await asyncio.gather(listener, return_exceptions=True)
        await alice.close()
        await bob.close()
        second.terminate()
        await second.wait()
        await first.stop()



async def test_with_redis_down_a_worker_still_tells_its_own_consoles() -> None:
    """Redis holds nothing that cannot be lost: unreachable, the hub starts anyway and delivers locally."""
    hub = LiveHub(f"redis://127.0.0.1:{free_port()}/0", scope="redis-down-test")
    await hub.start()
    try:
        async with hub.subscribe() as queue:
            await hub.publish({"type": "ticket", "event": "new", "ticket": 1})
            assert await asyncio.wait_for(queue.get(), 10) == {"type": "ticket", "event": "new", "ticket": 1}
    finally:
        await hub.close()


async def test_without_redis_workers_on_postgres_share_live_updates(tmp_path: Path, pg_url: str) -> None:
    """No REDIS_URL: the two workers' consoles still agree, through PostgreSQL's LISTEN/NOTIFY."""
    first = await start_server(make_settings(tmp_path / "a", database_url=pg_url, **ALWAYS_OPEN))
    second = await start_server(make_settings(tmp_path / "b", database_url=pg_url, **ALWAYS_OPEN))
    alice, bob = Staff(first.url), Staff(second.url)
    listener: asyncio.Task[None] | None = None
    try:
        await add_staff(first, "alice")
        await add_staff(first, "bob")
        await alice.login("alice")
        await bob.login("bob")
        events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        ready = asyncio.Event()
        listener = asyncio.create_task(events_of(bob, second.url, events, ready))
        await asyncio.wait_for(ready.wait(), 15)
        async with aiohttp.ClientSession() as http:
            chat = await Chat(http, first.url).open()
            await chat.say("人工")
            new = await next_event(events, "new")
            await alice.post(f"/staff/api/tickets/{new['ticket']}/claim")
            claimed = await next_event(events, "claimed")
            assert claimed["ticket"] == new["ticket"] and claimed["by"] == "alice"
    finally:
        if listener is not None:
            listener.cancel()
            await asyncio.gather(listener, return_exceptions=True)
        await alice.close()
        await bob.close()
        await second.stop()
        await first.stop()
