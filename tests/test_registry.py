"""The sandbox binding registry and its client, over real HTTP on loopback.

The tenure rule gets property tests at two levels: the pure planner, and the whole server with
bindings dated at random around a random tenure start.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import shutil
import socket
import sqlite3
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import phonenumbers
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from phonenumbers import PhoneNumberType
from phonenumbers import carrier as pn_carrier

from integrations.registry import (
    SIGNATURE_HEADER,
    RegistryClient,
    RegistryError,
    RegistryUnavailable,
    UnbindRefused,
    parse_callback,
    sign_callback,
    verify_callback,
)
from integrations.sandbox_registry import DEMO_PHONE, MaskingAccessLogger, create_app
from integrations.sandbox_registry.platforms import PLATFORMS, UNBIND_SUPPORTED
from integrations.sandbox_registry.population import (
    NotASandboxDatabase,
    NumberRecord,
    ensure_population,
    generate,
    insert_records,
)
from integrations.sandbox_registry.rules import ActiveBinding, item_outcome, plan_unbind, tenure_cutoff
from integrations.sandbox_registry.store import CODE_ALPHABET
from tests import sandbox_template

SEED = 20211101
SECRET = "test-callback-secret"
START = datetime(2026, 11, 20, 9, 0, 0, tzinfo=UTC)
CAICT_SET = {"weibo", "taobao", "meituan", "dianping", "douyin", "toutiao", "xiaomi"}
CATEGORIES = {"social", "payment", "bank", "shopping", "travel", "cloud_drive", "mail", "education", "device_id",
              "local_services", "video", "news", "maps"}
PN_CARRIERS = {"China Mobile": "china_mobile", "China Unicom": "china_unicom", "China Telecom": "china_telecom",
               "China Broadnet": "china_broadnet"}
WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)


def id_is_valid(value: str) -> bool:
    """GB 11643, written independently of the generator so the test does not grade its own homework."""
    if not re.fullmatch(r"[0-9]{17}[0-9X]", value):
        return False
    try:
        born = date(int(value[6:10]), int(value[10:12]), int(value[12:14]))
    except ValueError:
        return False
    if not date(1900, 1, 1) <= born <= date(2026, 11, 1):
        return False
    return "10X98765432"[sum(int(d) * w for d, w in zip(value[:17], WEIGHTS, strict=True)) % 11] == value[17]


@dataclass
class Clock:
    now: datetime = START

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@dataclass(frozen=True)
class Template:
    path: Path
    build_seconds: float


@dataclass
class Env:
    base: str
    client: RegistryClient
    clock: Clock
    db_path: Path
    http: aiohttp.ClientSession

    async def raw(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        async with self.http.request(method, self.base + path, **kwargs) as response:
            return response.status, await response.json()

    def db(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.db_path, isolation_level=None)
        conn.row_factory = sqlite3.Row
        return conn


@pytest.fixture(scope="session")
def template(tmp_path_factory: pytest.TempPathFactory) -> Template:
    """One population build per run; each test gets its own copy of the file."""
    path = tmp_path_factory.mktemp("registry") / "template.sqlite3"
    started = time.perf_counter()
    if SEED == sandbox_template.DEFAULT_SEED:  # the servers' copy, built once per test process, is this one
        shutil.copyfile(sandbox_template.built_population(), path)
    else:
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        assert ensure_population(conn, SEED)
        conn.close()
    return Template(path, time.perf_counter() - started)


async def start_registry(template: Template, tmp_path: Path, **kwargs: Any) -> tuple[TestServer, Path]:
    db_path = tmp_path / f"registry-{len(list(tmp_path.iterdir()))}.sqlite3"
    shutil.copyfile(template.path, db_path)
    app = create_app(str(db_path), seed=SEED, callback_secret=SECRET, **kwargs)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server(access_log_class=MaskingAccessLogger)
    return server, db_path


@pytest.fixture
async def env(template: Template, tmp_path: Path) -> AsyncIterator[Env]:
    clock = Clock()
    server, db_path = await start_registry(template, tmp_path, clock=clock, tick_seconds=0.02)
    base = str(server.make_url("")).rstrip("/")
    client = RegistryClient(base, timeout=3.0)
    async with aiohttp.ClientSession() as http:
        yield Env(base, client, clock, db_path, http)
    await client.close()
    await server.close()


@dataclass
class Receiver:
    """A loopback endpoint that records status callbacks."""

    url: str
    calls: asyncio.Queue[tuple[str, bytes]] = field(default_factory=asyncio.Queue)
    statuses: list[int] = field(default_factory=list)

    async def next(self) -> tuple[str, bytes]:
        return await asyncio.wait_for(self.calls.get(), timeout=5)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    box = Receiver("")

    async def handle(request: web.Request) -> web.Response:
        await box.calls.put((request.headers.get(SIGNATURE_HEADER, ""), await request.read()))
        return web.Response(status=box.statuses.pop(0) if box.statuses else 204)

    app = web.Application()
    app.router.add_post("/hook", handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    box.url = str(server.make_url("/hook"))
    yield box
    await server.close()


def population_rows(template: Template) -> list[sqlite3.Row]:
    conn = sqlite3.connect(template.path)
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute("SELECT * FROM numbers ORDER BY phone").fetchall()
    finally:
        conn.close()


# --- population ----------------------------------------------------------------------------------


def test_population_is_large(template: Template) -> None:
    # How quickly it builds is bench/population.py's to say: no test asserts a wall-clock duration.
    rows = population_rows(template)
    assert len(rows) >= 10_000
    statuses = {r["status"] for r in rows}
    assert statuses == {"assigned", "frozen", "unassigned"}
    total = len(rows)
    assert 0.03 < sum(r["ported_at"] is not None for r in rows) / total < 0.08
    assert 0.03 < sum(r["tagged"] == 1 for r in rows) / total < 0.08
    assert 0.015 < sum(r["status"] != "assigned" for r in rows) / total < 0.05
    assert {r["previous_tenures"] for r in rows} == {0, 1, 2, 3}


def test_population_is_deterministic_for_a_seed(template: Template) -> None:
    stored = [(r["phone"], r["tenure_start"], r["holder_id"]) for r in population_rows(template)]
    again = sorted((r.phone, r.tenure_start and r.tenure_start.isoformat(), r.holder_id) for r in generate(SEED))
    assert again == stored
    other = {r.phone for r in generate(SEED + 1, size=500)}
    assert len(other & {p for p, _, _ in stored}) < 10


def test_every_number_is_a_valid_cn_mobile_with_its_prefix_carrier(template: Template) -> None:
    for row in population_rows(template):
        number = phonenumbers.parse(row["phone"], "CN")
        assert phonenumbers.is_valid_number(number), row["phone"]
        assert phonenumbers.number_type(number) == PhoneNumberType.MOBILE, row["phone"]
        named = pn_carrier.name_for_number(number, "en")
        if named:
            assert PN_CARRIERS[named] == row["original_carrier"], row["phone"]
        assert row["virtual_operator"] == (row["phone"][:3] in ("162", "165", "167", "170", "171"))
        if row["ported_at"] is not None:
            assert row["carrier"] != row["original_carrier"]
            assert row["ported_at"] > "2019-11-27" and row["status"] == "assigned"
            assert row["ported_at"] >= row["tenure_start"]
        else:
            assert row["carrier"] == row["original_carrier"]


def test_histories_respect_the_frozen_period() -> None:
    for record in generate(SEED, size=3000):
        if record.status == "assigned":
            assert record.tenure_start is not None and record.holder_id is not None
            assert id_is_valid(record.holder_id)
            if record.last_released is not None:
                assert (record.tenure_start - record.last_released).days >= 90
        else:
            assert record.tenure_start is None and record.holder_name is None
        if record.status == "frozen":
            assert record.last_released is not None
            assert (date(2026, 11, 1) - record.last_released).days < 90


def test_refuses_to_wipe_a_foreign_database(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "other.sqlite3", isolation_level=None)
    conn.execute("CREATE TABLE users (id INTEGER)")
    with pytest.raises(NotASandboxDatabase):
        ensure_population(conn, SEED)
    assert conn.execute("SELECT name FROM sqlite_master").fetchall() == [("users",)]
    conn.close()


# --- read endpoints ------------------------------------------------------------------------------


async def test_health_and_platforms(env: Env) -> None:
    assert await env.client.health()
    platforms = await env.client.platforms()
    assert len(platforms) >= 30
    assert {p.id for p in platforms if p.unbind_supported} == CAICT_SET
    assert {p.category for p in platforms} <= CATEGORIES
    assert next(p for p in platforms if p.id == "weibo").name_zh == "微博"
    env.client._base = "http://127.0.0.1:9"  # the cache must answer without the network
    assert await env.client.platforms() == platforms


async def test_demo_listings_per_kind(env: Env) -> None:
    for kind in ("recycled", "fresh", "ported", "tagged"):
        status, listed = await env.raw("GET", "/numbers", params={"kind": kind, "limit": "100"})
        assert status == 200 and listed, kind
        assert len(listed) <= 100 and all(item["kind"] == kind for item in listed)
        assert len({item["phone"] for item in listed}) == len(listed)
        for item in listed[:15]:
            assert id_is_valid(item["id_number"]), item["id_number"]
            assert re.fullmatch(r"[\u4e00-\u9fff]{2,3}", item["name"])
            info = await env.client.number_info(item["phone"])
            assert info is not None and info.status == "assigned"
            if kind == "fresh":
                assert info.previous_tenure_count == 0
            elif kind == "tagged":
                assert info.tagged
            elif kind == "ported":
                prefix_carrier = PN_CARRIERS[pn_carrier.name_for_number(phonenumbers.parse(item["phone"], "CN"), "en")]
                assert info.ported and info.ported_at is not None and info.ported_at > date(2019, 11, 27)
                assert info.original_carrier == prefix_carrier != info.carrier
            else:
                start, bindings = await env.client.bindings(item["phone"])
                assert info.previous_tenure_count >= 1 and start == info.tenure_start
                assert {b.tenure for b in bindings} == {"previous", "current"}
                assert any(b.platform in CAICT_SET for b in bindings if b.tenure == "previous")
    status, first = await env.raw("GET", "/numbers", params={"kind": "recycled"})
    assert status == 200 and len(first) == 10 and first[0]["phone"] == DEMO_PHONE
    assert (await env.raw("GET", "/numbers", params={"kind": "recycled"}))[1] == first
    assert (await env.raw("GET", "/numbers", params={"kind": "nope"}))[0] == 400
    assert (await env.raw("GET", "/numbers", params={"kind": "fresh", "limit": "101"}))[0] == 400
    assert (await env.raw("GET", "/numbers", params={"kind": "fresh", "limit": "0"}))[0] == 400


async def test_number_info(env: Env, template: Template) -> None:
    info = await env.client.number_info(DEMO_PHONE)
    assert info is not None
    assert (info.status, info.carrier, info.original_carrier) == ("assigned", "china_mobile", "china_mobile")
    assert info.tenure_start == date(2021, 10, 15)
    assert info.previous_tenure_count == 2 and info.last_released == date(2021, 6, 30)
    assert not info.ported and not info.virtual_operator
    assert DEMO_PHONE not in repr(info)
    assert await env.client.number_info("14400000000") is None
    assert await env.raw("GET", "/v1/numbers/1380013800") == (400, {"error": "bad_phone"})
    assert await env.raw("GET", "/v1/numbers/12345678901") == (400, {"error": "bad_phone"})
    assert await env.raw("GET", "/v1/numbers/14400000000") == (404, {"error": "unknown_number"})
    with pytest.raises(ValueError, match="11 digits") as caught:
        await env.client.number_info("+8613800138000")
    assert DEMO_PHONE not in str(caught.value)
    idle = next(r for r in population_rows(template) if r["status"] != "assigned")
    idle_info = await env.client.number_info(idle["phone"])
    assert idle_info is not None and idle_info.tenure_start is None and idle_info.status == idle["status"]


async def test_holder_check(env: Env, template: Template) -> None:
    status, listed = await env.raw("GET", "/numbers", params={"kind": "fresh", "limit": "100"})
    assert status == 200
    person = listed[0]
    phone, name, id_number = person["phone"], person["name"], person["id_number"]
    assert await env.client.holder_check(phone, name, id_number)
    assert await env.client.holder_check(phone, f" {name} ", id_number.lower())
    assert not await env.client.holder_check(phone, name + "明", id_number)
    assert not await env.client.holder_check(phone, name, id_number[:-1] + ("0" if id_number[-1] != "0" else "1"))
    assert not await env.client.holder_check(DEMO_PHONE, name, id_number)
    assert not await env.client.holder_check("14400000000", name, id_number)
    with_x = next((p for p in listed if p["id_number"].endswith("X")), None)
    if with_x is not None:
        assert await env.client.holder_check(with_x["phone"], with_x["name"], with_x["id_number"][:-1] + "x")
    idle = next(r for r in population_rows(template) if r["status"] == "frozen")
    assert not await env.client.holder_check(idle["phone"], "\0", "\0")
    assert (await env.raw("POST", f"/v1/numbers/{phone}/holder-check", json={"name": name}))[0] == 400
    assert (await env.raw("POST", f"/v1/numbers/{phone}/holder-check", data=b"{"))[0] == 400


async def test_bindings_split_by_tenure(env: Env) -> None:
    start, bindings = await env.client.bindings(DEMO_PHONE)
    assert start == date(2021, 10, 15)
    previous = [b for b in bindings if b.tenure == "previous"]
    current = [b for b in bindings if b.tenure == "current"]
    assert {b.platform for b in previous} >= {"weibo", "taobao", "wechat", "qq"}
    assert {b.platform for b in current} >= {"jd", "dianping"}
    assert all(b.bound_month <= "2021-10" for b in previous)
    assert all(b.bound_month >= "2021-10" for b in current)
    with pytest.raises(RegistryError) as caught:
        await env.client.bindings("14400000000")
    assert caught.value.status == 404 and caught.value.code == "unknown_number"


async def test_recycle_check(env: Env) -> None:
    check = await env.client.recycle_check(DEMO_PHONE)
    assert check.known and check.reissued and check.previous_bindings_remain
    assert check.released_days_ago == (START.date() - date(2021, 6, 30)).days
    env.clock.advance(86400 * 3)
    assert (await env.client.recycle_check(DEMO_PHONE)).released_days_ago == check.released_days_ago + 3
    fresh = (await env.raw("GET", "/numbers", params={"kind": "fresh"}))[1][0]["phone"]
    fresh_check = await env.client.recycle_check(fresh)
    assert fresh_check.known and not fresh_check.reissued and fresh_check.released_days_ago is None
    assert not fresh_check.previous_bindings_remain
    unknown = await env.client.recycle_check("14400000000")
    assert not unknown.known and unknown.released_days_ago is None


# --- failures and privacy ------------------------------------------------------------------------


async def test_unavailable_on_a_closed_port() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = RegistryClient(f"http://127.0.0.1:{port}", timeout=1.0)
    try:
        with pytest.raises(RegistryUnavailable) as caught:
            await client.number_info(DEMO_PHONE)
        assert DEMO_PHONE not in str(caught.value) and "138****8000" in str(caught.value)
        assert not await client.health()
    finally:
        await client.close()


async def test_server_errors_and_garbage() -> None:
    async def fail(request: web.Request) -> web.Response:
        return web.Response(status=503, text="down")

    async def garbage(request: web.Request) -> web.Response:
        return web.Response(status=200, text="<html>")

    async def wrong_shape(request: web.Request) -> web.Response:
        return web.json_response({"phone": DEMO_PHONE})

    async def not_ours(request: web.Request) -> web.Response:
        return web.json_response({"detail": "no such route"}, status=404)

    app = web.Application()
    app.router.add_get("/a/v1/numbers/{phone}", fail)
    app.router.add_get("/b/v1/numbers/{phone}", garbage)
    app.router.add_get("/c/v1/numbers/{phone}", wrong_shape)
    app.router.add_get("/d/v1/numbers/{phone}", not_ours)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    session = aiohttp.ClientSession()
    try:
        base = str(server.make_url("")).rstrip("/")
        with pytest.raises(RegistryUnavailable):
            await RegistryClient(base + "/a", session=session).number_info(DEMO_PHONE)
        # A wrong base URL must not look like "unknown number".
        for prefix in ("/b", "/c", "/d", "/nothing-here"):
            with pytest.raises(RegistryError) as caught:
                await RegistryClient(base + prefix, session=session).number_info(DEMO_PHONE)
            assert type(caught.value) is RegistryError
        shared = RegistryClient(base, session=session)
        await shared.close()
        assert not session.closed  # a session handed in belongs to the caller
    finally:
        await session.close()
        await server.close()


async def test_logs_never_carry_full_numbers_names_or_ids(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    person = (await env.raw("GET", "/numbers", params={"kind": "recycled"}))[1][1]
    await env.client.number_info(person["phone"])
    await env.client.holder_check(person["phone"], person["name"], person["id_number"])
    await env.client.bindings(person["phone"])
    await env.client.number_info("14400000000")
    request = await env.client.create_unbind_request(
        DEMO_PHONE, ["weibo"], date(2021, 10, 15), "privacy-1", None)
    with pytest.raises(RegistryError):
        await env.client.bindings("14400000000")
    env.clock.advance(400)
    await env.client.get_unbind_request(request.id)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "138****8000" in text  # the access log ran, masked
    for secret in (person["phone"], person["name"], person["id_number"], DEMO_PHONE, "14400000000"):
        assert secret not in text


# --- unbind requests -----------------------------------------------------------------------------


async def test_unbind_request_is_idempotent(env: Env) -> None:
    args = (DEMO_PHONE, ["weibo", "taobao", "wechat", "xiaomi", "dianping"], date(2021, 10, 15))
    first = await env.client.create_unbind_request(*args, idempotency_key="key-1", callback_url=None)
    assert first.id.startswith("UB-") and first.status == "submitted"
    assert [(i.platform, i.status) for i in first.items] == [("weibo", "submitted"), ("taobao", "submitted")]
    assert {(r.platform, r.reason) for r in first.refused} == {
        ("wechat", "unsupported"), ("xiaomi", "not_bound"), ("dianping", "current_tenure")}
    env.clock.advance(90)
    again = await env.client.create_unbind_request(*args, idempotency_key="key-1", callback_url=None)
    assert again == first
    body = {"phone": DEMO_PHONE, "platforms": args[1], "requester_tenure_start": "2021-10-15"}
    status, raw = await env.raw("POST", "/v1/unbind-requests", json=body, headers={"Idempotency-Key": "key-1"})
    assert status == 200 and raw["id"] == first.id and raw["status"] == "submitted"
    conn = env.db()
    assert conn.execute("SELECT COUNT(*) FROM unbind_requests").fetchone()[0] == 1
    conn.close()
    with pytest.raises(RegistryError) as caught:
        await env.client.create_unbind_request(DEMO_PHONE, ["weibo"], date(2021, 10, 15), "key-1", None)
    assert caught.value.status == 409 and caught.value.code == "idempotency_key_reused"
    assert (await env.raw("POST", "/v1/unbind-requests", json=body))[0] == 400
    bad = {**body, "requester_tenure_start": "2021-13-01"}
    assert (await env.raw("POST", "/v1/unbind-requests", json=bad, headers={"Idempotency-Key": "k2"}))[0] == 400
    assert (await env.raw("GET", "/v1/unbind-requests/UB-nope"))[0] == 404


async def test_unbind_refusals(env: Env, template: Template) -> None:
    with pytest.raises(UnbindRefused) as caught:
        await env.client.create_unbind_request(
            DEMO_PHONE, ["dianping", "wechat", "zhihu"], date(2021, 10, 15), "refuse-1", None)
    assert {(r.platform, r.reason) for r in caught.value.refused} == {
        ("dianping", "current_tenure"), ("wechat", "unsupported"), ("zhihu", "unsupported")}
    # Claiming a tenure that began years earlier only shrinks what can be touched.
    with pytest.raises(UnbindRefused) as caught:
        await env.client.create_unbind_request(DEMO_PHONE, ["weibo", "douyin"], date(2009, 1, 1), "refuse-2", None)
    assert {r.reason for r in caught.value.refused} == {"current_tenure"}
    # Claiming a later start than the registry knows must not expose the real current tenure.
    with pytest.raises(UnbindRefused):
        await env.client.create_unbind_request(DEMO_PHONE, ["dianping"], date(2026, 1, 1), "refuse-3", None)
    with pytest.raises(RegistryError) as unknown:
        await env.client.create_unbind_request("14400000000", ["weibo"], date(2021, 1, 1), "refuse-4", None)
    assert unknown.value.status == 404
    idle = next(r for r in population_rows(template) if r["status"] == "frozen")
    with pytest.raises(RegistryError) as frozen:
        await env.client.create_unbind_request(idle["phone"], ["weibo"], date(2021, 1, 1), "refuse-5", None)
    assert frozen.value.code == "not_assigned"


async def test_status_progresses_on_the_clock(env: Env) -> None:
    request = await env.client.create_unbind_request(
        DEMO_PHONE, ["weibo", "taobao", "meituan", "douyin"], date(2021, 10, 15), "progress-1", None)
    assert (await env.client.get_unbind_request(request.id)).status == "submitted"
    env.clock.advance(59)
    assert (await env.client.get_unbind_request(request.id)).status == "submitted"
    env.clock.advance(1)
    midway = await env.client.get_unbind_request(request.id)
    assert midway.status == "processing" and {i.status for i in midway.items} == {"processing"}
    _, before = await env.client.bindings(DEMO_PHONE)
    env.clock.advance(240)
    final = await env.client.get_unbind_request(request.id)
    assert final.finished and final.status in ("done", "rejected")
    for item in final.items:
        assert item.status in ("done", "rejected")
        assert (item.reason is not None) == (item.status == "rejected")
        assert item.reason == item_outcome(SEED, DEMO_PHONE, item.platform)
    _, after = await env.client.bindings(DEMO_PHONE)
    done = {i.platform for i in final.items if i.status == "done"}
    assert {b.platform for b in after} == {b.platform for b in before} - done
    assert [b for b in after if b.tenure == "current"] == [b for b in before if b.tenure == "current"]
    with pytest.raises(UnbindRefused) as again:
        await env.client.create_unbind_request(DEMO_PHONE, sorted(done), date(2021, 10, 15), "progress-2", None)
    assert {r.reason for r in again.value.refused} == {"not_bound"}


def test_rejections_are_about_one_in_ten() -> None:
    outcomes = [item_outcome(SEED, f"139{i:08d}", p.id) for i in range(200) for p in PLATFORMS[:10]]
    share = sum(o is not None for o in outcomes) / len(outcomes)
    assert 0.06 < share < 0.14
    assert {o for o in outcomes if o is not None} == {"account_already_closed", "identity_check_failed"}


async def test_signed_callbacks(env: Env, receiver: Receiver) -> None:
    request = await env.client.create_unbind_request(
        DEMO_PHONE, ["weibo"], date(2021, 10, 15), "callback-1", receiver.url)
    env.clock.advance(61)
    header, body = await receiver.next()
    now = env.clock.now.timestamp()
    assert verify_callback(SECRET, body, header, now)
    update = parse_callback(body)
    assert update.id == request.id and update.status == "processing"
    assert DEMO_PHONE not in body.decode()
    assert not verify_callback(SECRET, body.replace(b"processing", b"done"), header, now)
    assert not verify_callback("wrong-secret", body, header, now)
    assert not verify_callback(SECRET, body, header, now + 301)
    env.clock.advance(300)
    header, body = await receiver.next()
    assert verify_callback(SECRET, body, header, env.clock.now.timestamp())
    assert parse_callback(body).status in ("done", "rejected")


async def test_failed_callbacks_are_retried(env: Env, receiver: Receiver) -> None:
    receiver.statuses = [500]
    await env.client.create_unbind_request(DEMO_PHONE, ["taobao"], date(2021, 10, 15), "retry-1", receiver.url)
    env.clock.advance(61)
    await receiver.next()
    await asyncio.sleep(0.1)
    assert receiver.calls.empty()  # backoff runs on the registry clock
    env.clock.advance(6)
    header, body = await receiver.next()
    assert verify_callback(SECRET, body, header, env.clock.now.timestamp())
    assert parse_callback(body).status == "processing"


async def test_callback_hosts_can_be_restricted(template: Template, tmp_path: Path) -> None:
    server, _ = await start_registry(template, tmp_path, callback_hosts={"bot.example"})
    try:
        async with aiohttp.ClientSession() as http:
            body = {"phone": DEMO_PHONE, "platforms": ["weibo"], "requester_tenure_start": "2021-10-15",
                    "callback_url": "http://169.254.169.254/latest"}
            url = server.make_url("/v1/unbind-requests")
            async with http.post(url, json=body, headers={"Idempotency-Key": "ssrf"}) as response:
                assert response.status == 400 and (await response.json())["error"] == "bad_callback_url"
            body["callback_url"] = "https://bot.example/hooks/registry"
            async with http.post(url, json=body, headers={"Idempotency-Key": "ok"}) as response:
                assert response.status == 201
    finally:
        await server.close()


# --- the tenure rule -----------------------------------------------------------------------------

dates = st.dates(min_value=date(2003, 1, 1), max_value=date(2026, 10, 31))
platform_ids = st.sampled_from([p.id for p in PLATFORMS][:12])


@given(
    bindings=st.lists(st.tuples(platform_ids, dates), max_size=12),
    requested=st.lists(platform_ids, min_size=1, max_size=8),
    requester_start=dates,
    registry_start=dates,
)
def test_planner_never_covers_the_current_tenure(
    bindings: list[tuple[str, date]], requested: list[str], requester_start: date, registry_start: date
) -> None:
    cutoff = tenure_cutoff(requester_start, registry_start)
    assert cutoff <= requester_start and cutoff <= registry_start
    active = [ActiveBinding(i, p, d) for i, (p, d) in enumerate(bindings)]
    plan = plan_unbind(requested, active, cutoff, UNBIND_SUPPORTED)
    by_id = {b.id: b for b in active}
    for item in plan.items:
        assert item.platform in UNBIND_SUPPORTED and item.binding_ids
        for binding_id in item.binding_ids:
            assert by_id[binding_id].platform == item.platform
            assert by_id[binding_id].bound_on < requester_start
            assert by_id[binding_id].bound_on < registry_start
    answered = [i.platform for i in plan.items] + [r.platform for r in plan.refused]
    assert sorted(answered) == sorted(set(requested))
    for refusal in plan.refused:
        previous = [b for b in active if b.platform == refusal.platform and b.bound_on < cutoff]
        assert not previous or refusal.reason == "unsupported"


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    bindings=st.lists(st.tuples(st.sampled_from(sorted(CAICT_SET)), dates), min_size=1, max_size=8),
    registry_start=st.dates(min_value=date(2010, 1, 1), max_value=date(2026, 10, 1)),
    requester_start=dates,
)
async def test_server_never_unbinds_the_current_tenure(
    env: Env, bindings: list[tuple[str, date]], registry_start: date, requester_start: date
) -> None:
    conn = env.db()
    phone = f"144{conn.execute('SELECT COUNT(*) FROM numbers').fetchone()[0]:08d}"
    conn.execute("BEGIN")
    insert_records(conn, [NumberRecord(
        phone=phone, status="assigned", carrier="china_mobile", original_carrier="china_mobile",
        virtual_operator=False, ported_at=None, tenure_start=registry_start, previous_tenures=1,
        last_released=None, tagged=False, holder_name="测试", holder_id=None, demo_rank=0, bindings=bindings,
    )])
    conn.execute("COMMIT")
    cutoff = min(registry_start, requester_start)
    platforms = sorted({p for p, _ in bindings})
    try:
        request = await env.client.create_unbind_request(phone, platforms, requester_start, f"prop-{phone}", None)
    except UnbindRefused as refused:
        assert all(r.reason == "current_tenure" for r in refused.refused)
        assert all(d >= cutoff for _, d in bindings)
        conn.close()
        return
    for item in request.items:
        assert any(p == item.platform and d < cutoff for p, d in bindings)
    for refusal in request.refused:
        assert refusal.reason == "current_tenure"
        assert all(d >= cutoff for p, d in bindings if p == refusal.platform)
    env.clock.advance(301)
    final = await env.client.get_unbind_request(request.id)
    assert final.finished
    done = {i.platform for i in final.items if i.status == "done"}
    for row in conn.execute("SELECT platform, bound_on, unbound_at FROM bindings WHERE phone = ?", (phone,)):
        if row["bound_on"] >= cutoff.isoformat():
            assert row["unbound_at"] is None
        else:
            assert (row["unbound_at"] is not None) == (row["platform"] in done)
    conn.close()


# --- tags ----------------------------------------------------------------------------------------


async def test_tags(env: Env) -> None:
    tag = await env.client.create_tag(DEMO_PHONE, "new_holder", "2021-10")
    assert re.fullmatch(f"[{CODE_ALPHABET}]{{8}}", tag.code)
    assert tag.phone_masked == "138****8000" and tag.kind == "new_holder" and tag.since == "2021-10"
    looked_up = await env.client.get_tag(tag.code)
    assert looked_up == tag
    assert await env.client.get_tag(tag.code.lower()) == tag
    assert await env.client.get_tag("ZZZZZZZZ") is None
    assert await env.client.get_tag("../v1/health") is None
    with pytest.raises(RegistryError) as caught:
        await env.client.create_tag(DEMO_PHONE, "new_holder", "2021-09")
    assert caught.value.status == 422
    with pytest.raises(RegistryError):
        await env.client.create_tag(DEMO_PHONE, "new_holder", "2026-12")
    status, body = await env.raw("POST", f"/v1/numbers/{DEMO_PHONE}/tags", json={"kind": "spam", "since": "2022-01"})
    assert (status, body["error"]) == (400, "bad_kind")
    tagged = (await env.raw("GET", "/numbers", params={"kind": "tagged"}))[1][0]["phone"]
    info = await env.client.number_info(tagged)
    assert info is not None and info.tagged and info.tenure_start is not None
    await env.client.create_tag(tagged, "clear_harassment", info.tenure_start.strftime("%Y-%m"))
    cleared = await env.client.number_info(tagged)
    assert cleared is not None and not cleared.tagged


# --- signatures, mounting, docs ------------------------------------------------------------------


def test_callback_signature_functions() -> None:
    body = json.dumps({"id": "UB-1", "status": "done"}).encode()
    header = sign_callback("s3cret", body, 1_800_000_000)
    assert re.fullmatch(r"t=1800000000,v1=[0-9a-f]{64}", header)
    assert verify_callback("s3cret", body, header, 1_800_000_100)
    assert verify_callback("s3cret", body, header, 1_799_999_800)
    assert not verify_callback("s3cret", body, header, 1_800_000_301)
    assert not verify_callback("s3cret", body + b" ", header, 1_800_000_000)
    assert not verify_callback("other", body, header, 1_800_000_000)
    rotated = header.replace("t=1800000000,", "t=1800000000,v1=" + "0" * 64 + ",")
    assert verify_callback("s3cret", body, rotated, 1_800_000_000)
    for broken in ("", "v1=abc", "t=1800000000", "t=abc,v1=00", "t=1,t=2,v1=00", "garbage"):
        assert not verify_callback("s3cret", body, broken, 1_800_000_000)


async def test_mounts_as_a_sub_application(template: Template, tmp_path: Path) -> None:
    db_path = tmp_path / "mounted.sqlite3"
    shutil.copyfile(template.path, db_path)
    root = web.Application()
    root.add_subapp("/sandbox/registry", create_app(str(db_path), seed=SEED))
    server = TestServer(root, host="127.0.0.1")
    await server.start_server()
    client = RegistryClient(str(server.make_url("/sandbox/registry")))
    try:
        assert await client.health()
        assert await client.number_info(DEMO_PHONE) is not None
        async with aiohttp.ClientSession() as http:
            async with http.get(server.make_url("/sandbox/registry/numbers"), params={"kind": "ported"}) as r:
                assert r.status == 200 and len(await r.json()) == 10
            async with http.get(server.make_url("/sandbox/registry/v1/nope")) as r:
                assert r.status == 404
    finally:
        await client.close()
        await server.close()


def test_openapi_documents_every_route(template: Template, tmp_path: Path) -> None:
    spec = (Path(__file__).parent.parent / "docs" / "registry-api.yaml").read_text(encoding="utf-8")
    assert spec.startswith("openapi: 3.1")
    documented = set(re.findall(r"^  (/[^:\s]+):\s*$", spec, flags=re.MULTILINE))
    app = create_app(str(tmp_path / "unused.sqlite3"))
    served = {r.resource.canonical for r in app.router.routes() if r.resource is not None}
    assert served == documented
