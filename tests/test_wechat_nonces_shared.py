"""WeChat nonces across workers without Redis: two `python -m bot serve` deployments (two machines' worth) on one
PostgreSQL, no REDIS_URL. A replay (a seen nonce under another body) that lands on the other worker is refused
there, while WeChat's byte-identical retry landing there is still a retry and gets its answer.

Needs PostgreSQL on loopback; under CI=true a missing server fails the test instead of skipping it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from tests.fakes.fake_tencent_sms import FakeTencentSms
from tests.fakes.fake_wechat_api import FakeWeChatApi, WeChatUser
from tests.test_postgres import pg_url  # noqa: F401 - the fixture
from tests.test_workers import Topology

# Several processes of their own each: the tests of one group run one after another on one pytest worker, so at
# most two such tests (one per group) load the machine's two cores at once.
pytestmark = pytest.mark.xdist_group("processes-b")

TOKEN = "nonce-test-token"


@pytest.fixture
async def two_machines(tmp_path: Path, pg_url: str) -> AsyncIterator[tuple[Topology, Topology]]:  # noqa: F811
    sms = FakeTencentSms()
    await sms.start()
    api = FakeWeChatApi()
    await api.start()
    first = Topology(tmp_path / "a", pg_url, sms)
    second = Topology(tmp_path / "b", pg_url, sms, registry_port=first.registry_port)
    for top in (first, second):
        top.tmp_path.mkdir()
    wechat = {"WECHAT_TOKEN": TOKEN, "WECHAT_APP_ID": api.app_id, "WECHAT_APP_SECRET": api.app_secret,
              "WECHAT_API_BASE_URL": api.url, "WECHAT_ACCOUNT": api.account, "REDIS_URL": ""}
    try:
        await first.start_registry()
        await first.start_bot(1, **wechat)
        await second.start_bot(1, **wechat)
        yield first, second
    finally:
        await second.stop()
        await first.stop()
        await api.close()
        await sms.close()


async def test_a_replay_to_another_worker_is_refused_through_postgres(two_machines: tuple[Topology, Topology],
                                                                     pg_url: str) -> None:  # noqa: F811
    first, second = two_machines
    async with aiohttp.ClientSession() as http:
        user = WeChatUser(http, first.url, TOKEN, "oShared0000001")
        answer = await user.say("/start")
        assert answer.status == 200 and answer.text, answer
        assert user.last_request is not None
        params, payload, headers = user.last_request
        # WeChat's retry, byte for byte, reaching the other worker: a retry, answered as the first was.
        async with http.post(f"{second.url}/wechat", params=params, data=payload, headers=headers) as r:
            assert r.status == 200, "the identical retry is not a replay on another worker"
        # Another body under the same signed timestamp and nonce (the URL signature does not cover the body):
        # refused on the worker that has never seen this nonce itself.
        forged = payload.replace(b"/start", b"/menu")
        async with http.post(f"{second.url}/wechat", params=params, data=forged, headers=headers) as r:
            assert r.status == 403, "a replay to another worker is refused"
        async with http.post(f"{first.url}/wechat", params=params, data=forged, headers=headers) as r:
            assert r.status == 403, "and on the first worker too"
        # A fresh nonce still goes through on either.
        assert (await WeChatUser(http, second.url, TOKEN, "oShared0000002").say("/start")).status == 200
    db = await asyncpg.connect(pg_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        held = await db.fetchval("SELECT count(*) FROM wechat_nonces WHERE nonce_key = $1",
                                 f"{params['timestamp']}:{params['nonce']}")
    finally:
        await db.close()
    assert held == 1, "the nonce is kept where every worker sees it"
