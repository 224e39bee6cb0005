"""Shared fixtures: a real server on a loopback port, and a web chat client that speaks the JSON contract."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import re
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import hypothesis
import pytest
import pytest_asyncio

from bot.config import Settings
from bot.server import RunningServer, start_server
from bot.structured_logs import JsonFormatter
from tests.sandbox_template import provide_sandbox_population, provide_schema

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
# Property tests on a loaded machine: no per-example deadline (200 ms by default, which a busy core can exceed
# with no bug at all) and no "too slow to generate" health check; a failure prints how to reproduce it.
hypothesis.settings.register_profile("haoqing", deadline=None, print_blob=True,
                                     suppress_health_check=[hypothesis.HealthCheck.too_slow])
hypothesis.settings.load_profile("haoqing")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
# The browser tests share one Chromium per pytest worker (`browser`), which lives on the session's event loop: they
# and the async fixtures they use run on that loop.
ON_SESSION_LOOP = pytest.mark.asyncio(loop_scope="session")


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"host": "127.0.0.1", "port": 0, "data_dir": tmp_path, "secret_key": "test-secret-key"}
    values.update(overrides)
    settings = Settings(_env_file=None, **values)  # type: ignore[call-arg]
    if settings.embedded_registry:
        provide_sandbox_population(settings.data_dir)
    if not settings.database_url:  # SQLite under DATA_DIR: start from the migrated copy (tests/sandbox_template.py)
        provide_schema(settings.data_dir)
    return settings


@pytest.fixture
def log_capture() -> Any:
    """Every log line of the test, formatted exactly as production formats it."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield stream
    root.removeHandler(handler)
    root.setLevel(old_level)


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[RunningServer]:
    srv = await start_server(make_settings(tmp_path))
    yield srv
    await srv.stop()


async def first_retention_round(server: RunningServer) -> None:
    """Waits until the server's scheduler has run its first retention purge (due at start, then hourly), so a test
    that backdates rows and purges them itself is not raced by the scheduler's own first round on a loaded machine."""
    from sqlmodel import select

    from bot.storage import Job

    for _ in range(1000):
        async with server.runtime.db.session() as session:
            job = (await session.exec(select(Job).where(Job.key == "retention.purge"))).first()
        if job is not None and job.status == "pending" \
                and job.due_at.replace(tzinfo=None) > datetime.now(UTC).replace(tzinfo=None) + timedelta(minutes=30):
            return  # rescheduled an hour on: the first round is over
        await asyncio.sleep(0.02)
    raise AssertionError("the scheduler never ran its first retention purge")


@dataclass
class Chat:
    """A web chat user driving the public API, as the page does."""

    http: aiohttp.ClientSession
    base: str
    session: str = ""
    transcript: list[dict[str, Any]] = field(default_factory=list)
    last: list[dict[str, Any]] = field(default_factory=list)
    counter: int = 0

    async def open(self, lang: str = "zh_CN") -> Chat:
        async with self.http.post(f"{self.base}/chat/api/sessions", json={"lang": lang}) as r:
            assert r.status == 201, await r.text()
            self.session = (await r.json())["session"]
        return self

    @property
    def url(self) -> str:
        return f"{self.base}/chat/api/sessions/{self.session}/messages"

    async def send(self, body: dict[str, Any], expect: int = 200) -> list[dict[str, Any]]:
        if "id" not in body:
            self.counter += 1
            body = {"id": f"m{self.counter}", **body}
        async with self.http.post(self.url, json=body) as r:
            payload = await r.json()
            assert r.status == expect, payload
        self.last = payload.get("messages", [])
        self.transcript.extend(self.last)
        return self.last

    async def say(self, text: str) -> list[dict[str, Any]]:
        return await self.send({"text": text})

    async def pick(self, choice: str) -> list[dict[str, Any]]:
        offered = [c["id"] for m in self.last for c in m.get("choices", [])]
        assert choice in offered, f"{choice!r} not offered; offered {offered}: {self.text}"
        return await self.send({"choice": choice})

    async def file_every_unbind(self) -> None:
        """From the list of eligible platforms: 一键 when there are several, the one platform otherwise, then the
        confirmation when one is asked for."""
        offered = [c["id"] for m in self.last for c in m.get("choices", [])]
        one = next((c for c in offered if c.startswith("p:")), None)
        await self.pick("all" if "all" in offered or one is None else one)
        await self.pick_if_offered("confirm")

    async def pick_if_offered(self, *choices: str) -> None:
        """Presses the first of `choices` on offer, if any (screens that a shorter journey may have merged)."""
        for choice in choices:
            if any(c["id"] == choice for m in self.last for c in m.get("choices", [])):
                await self.pick(choice)
                return

    @property
    def text(self) -> str:
        return "\n".join(m["text"] for m in self.last)

    async def latest_code(self, phone: str) -> str:
        async with self.http.get(f"{self.base}/sandbox/sms", params={"phone": phone}) as r:
            texts = await r.json()
        match = re.search(r"\b(\d{6})\b", texts[-1]["text"])
        assert match, texts[-1]
        return match.group(1)

    async def demo(self, kind: str) -> dict[str, Any]:
        async with self.http.get(f"{self.base}/sandbox/registry/numbers", params={"kind": kind}) as r:
            assert r.status == 200, await r.text()
            return (await r.json())[0]

    async def to_phone_prompt(self, flow: str = "lookup") -> None:
        """Menu → `flow` → consent (when asked), ending where the bot asks for the phone number."""
        await self.say("/start")
        await self.pick(flow)
        if any(c["id"] == "agree" for m in self.last for c in m.get("choices", [])):
            await self.pick("agree")

    async def verify(self, phone: str, flow: str = "lookup") -> None:
        """Menu → `flow` → consent → phone → code, ending on whatever the flow shows next."""
        await self.to_phone_prompt(flow)
        await self.say(phone)
        await self.say(await self.latest_code(phone))

    async def realname(self, name: str, id_number: str) -> None:
        await self.say(name)
        await self.say(id_number)

    async def unbind_ready(self, demo: dict[str, Any]) -> None:
        """Verified, real-name checked and confirmed: ends on the list of eligible platforms."""
        await self.verify(demo["phone"])
        await self.pick("unbind")
        await self.realname(demo["name"], demo["id_number"])
        await self.pick("confirm")

    async def pushed(self, after: int) -> list[dict[str, Any]]:
        async with self.http.get(self.url, params={"after": str(after)}) as r:
            return list((await r.json())["messages"])


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def chromium() -> AsyncIterator[Any]:
    """Debian's Chromium driven by Playwright, launched once per pytest worker (about 1 s of CPU a launch)."""
    if CHROMIUM is None:
        if IN_CI:
            pytest.fail("Chromium is missing: .ci/run should have installed Debian's chromium package")
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        launched = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        await launched.close()


@pytest_asyncio.fixture(loop_scope="session")
async def browser(chromium: Any) -> AsyncIterator[Any]:
    """The worker's Chromium for one test (mark the test ON_SESSION_LOOP). A test opens its own contexts, which
    share nothing (cookies, storage, cache) with another test's; whatever it leaves open is closed after it."""
    yield chromium
    for context in list(chromium.contexts):
        await context.close()


@pytest_asyncio.fixture(loop_scope="session")
async def session_loop_server(tmp_path: Path) -> AsyncIterator[RunningServer]:
    """`server` on the session's event loop, for the browser tests."""
    srv = await start_server(make_settings(tmp_path))
    yield srv
    await srv.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def chat(server: RunningServer, http: aiohttp.ClientSession) -> Chat:
    return await Chat(http, server.url).open()


def dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`xdist_group` marks for `--dist loadgroup`. pytest-xdist 3.8 tells its scheduler an item's group by renaming
    the item (`_nodeid` + "@group"), which pytest 9.2's structured node ids no longer read: every group was silently
    spread over the workers (pytest-xdist issue 1386). Until a fixed release, the rename is made the new way; with
    an xdist that already did it, nothing changes."""
    if not getattr(config.option, "loadgroup", False):
        return
    from _pytest.nodeid import NodeId

    for item in items:
        names = {str(mark.args[0] if mark.args else mark.kwargs.get("name", "default"))
                 for mark in item.iter_markers("xdist_group")}
        if names and "@" not in item.nodeid.rpartition("]")[2] and hasattr(item, "_id"):
            item._id = NodeId.parse(f"{item.nodeid}@{'_'.join(sorted(names))}")
