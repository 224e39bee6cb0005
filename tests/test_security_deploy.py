"""Safe as shipped (issue 11): the sandbox opt-in contract, the sandbox registry's token and callback URL, and
slow or greedy clients cut off (header and body deadlines, a connection cap per address, a throttled log)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from bot.server import create_app, start_server
from bot.structured_logs import AccessLogger
from bot.web.chat import RUNTIME
from bot.web.guard import ThrottledLog
from integrations.sandbox_registry.__main__ import main as sandbox_main
from integrations.sandbox_registry.app import create_app as create_sandbox
from tests.conftest import make_settings

TOKEN = "sandbox-token-for-tests"
TENCENT = {"sms_provider": "tencent", "tencent_secret_id": "id", "tencent_secret_key": "key",
           "tencent_sms_app_id": "1400000000", "tencent_sms_sign_name": "号清", "tencent_sms_template_id": "1"}


async def serve(app: web.Application) -> tuple[web.AppRunner, str]:
    """Serves `app` on loopback whatever HOST its settings name: tests never listen beyond loopback."""
    runner = web.AppRunner(app, access_log_class=AccessLogger)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


def test_a_public_host_without_real_integrations_refuses_to_start(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as refused:
        create_app(make_settings(tmp_path, host="0.0.0.0"))
    message = str(refused.value)
    assert "REGISTRY_URL" in message and "SMS_PROVIDER" in message and "SANDBOX=1" in message
    with pytest.raises(SystemExit) as refused:
        create_app(make_settings(tmp_path, host="0.0.0.0", registry_url="http://127.0.0.1:9"))
    assert "SMS_PROVIDER" in str(refused.value) and "REGISTRY_URL" not in str(refused.value)


@pytest.fixture
async def standalone_registry(tmp_path: Path) -> AsyncIterator[str]:
    runner, url = await serve(create_sandbox(str(tmp_path / "registry.sqlite3"), api_token=TOKEN))
    yield url
    await runner.cleanup()


async def test_a_public_host_serves_no_sandbox_route(tmp_path: Path, standalone_registry: str,
                                                     http: aiohttp.ClientSession) -> None:
    app = create_app(make_settings(tmp_path, host="0.0.0.0", registry_url=standalone_registry,
                                   registry_token=TOKEN, **TENCENT))
    runner, url = await serve(app)
    try:
        for path in ("/sandbox/sms?phone=13800138000", "/sandbox/registry/numbers?kind=recycled",
                     "/sandbox/registry/v1/numbers/13800138000"):
            async with http.get(url + path) as r:
                assert r.status == 404, path
        # The real (here: standalone) registry is reached with its token.
        assert await app[RUNTIME].registry.health()
        assert (await app[RUNTIME].registry.number_info("13800138000")) is not None
    finally:
        await runner.cleanup()


async def test_sandbox_opt_in_on_a_public_host(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    app = create_app(make_settings(tmp_path, host="0.0.0.0", sandbox=True))
    runner, url = await serve(app)
    try:
        async with http.get(url + "/sandbox/registry/numbers", params={"kind": "recycled"}) as r:
            assert r.status == 200
        # Published as a demo, its API is still the bot's alone: no token, no holder checks or bindings.
        async with http.get(url + "/sandbox/registry/v1/numbers/13800138000/bindings") as r:
            assert r.status == 401
    finally:
        await runner.cleanup()


async def test_standalone_sandbox_asks_for_a_token(standalone_registry: str, http: aiohttp.ClientSession) -> None:
    with pytest.raises(SystemExit) as refused:
        sandbox_main(["--port", "0"])
    assert "--token" in str(refused.value)
    async with http.get(standalone_registry + "/v1/numbers/13800138000") as r:
        assert r.status == 401
    async with http.get(standalone_registry + "/v1/health") as r:
        assert r.status == 200
    async with http.get(standalone_registry + "/v1/numbers/13800138000",
                        headers={"Authorization": f"Bearer {TOKEN}"}) as r:
        assert r.status == 200


async def test_embedded_sandbox_calls_back_only_the_bots_own_url(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    server = await start_server(make_settings(tmp_path))
    try:
        base = server.url + "/sandbox/registry/v1/unbind-requests"
        body: dict[str, Any] = {"phone": "13800138000", "platforms": ["weibo"], "requester_tenure_start": "2021-10-01"}
        for index, target in enumerate(("http://127.0.0.1:6379/", "http://localhost:22/x",
                                        server.url + "/registry/callback?x=1", "http://169.254.169.254/latest")):
            async with http.post(base, json={**body, "callback_url": target},
                                 headers={"Idempotency-Key": f"k{index}-evil-callback"}) as r:
                assert r.status == 400 and (await r.json())["error"] == "bad_callback_url", target
        async with http.post(base, json={**body, "callback_url": server.runtime.callback_url},
                             headers={"Idempotency-Key": "k-own-callback"}) as r:
            assert r.status in (201, 422), await r.text()
    finally:
        await server.stop()


async def test_slow_headers_and_slow_bodies_are_cut_off(tmp_path: Path) -> None:
    server = await start_server(make_settings(tmp_path, http_header_timeout=0.5, http_body_timeout=0.5))
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")  # never finishes its headers
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), 20) == b""
        writer.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"POST /chat/api/sessions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000\r\n\r\n{")  # promises a body and trickles nothing more
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), 20) == b""
        writer.close()
        async with aiohttp.ClientSession() as http, http.get(server.url + "/healthz") as r:
            assert r.status == 200  # and the server still serves everyone else
    finally:
        await server.stop()


async def test_connections_per_address_are_capped(tmp_path: Path) -> None:
    server = await start_server(make_settings(tmp_path, max_connections_per_address=5, http_header_timeout=30))
    held = []
    try:
        for _ in range(5):
            held.append(await asyncio.open_connection("127.0.0.1", server.port))
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 20)
        assert b"200" not in answer  # the sixth was closed unanswered
        writer.close()
        for _r, w in held:
            w.close()
        await asyncio.sleep(0.1)
        async with aiohttp.ClientSession() as http, http.get(server.url + "/healthz") as r:
            assert r.status == 200  # freed slots are usable again
    finally:
        await server.stop()


def test_a_flood_of_accept_errors_logs_one_line_per_window() -> None:
    clock = [0.0]
    throttle = ThrottledLog(10.0, clock=lambda: clock[0])
    records = [logging.LogRecord("asyncio", logging.ERROR, "", 0, "socket.accept() out of system resource",
                                 (), None) for _ in range(141_000)]
    passed = [r for r in records if throttle.filter(r)]
    assert len(passed) == 1
    clock[0] = 11.0
    later = logging.LogRecord("asyncio", logging.ERROR, "", 0, "socket.accept() out of system resource", (), None)
    assert throttle.filter(later) and later.suppressed == 140_999  # type: ignore[attr-defined]


async def test_a_trusted_proxy_is_not_capped(tmp_path: Path) -> None:
    # Behind a proxy every connection comes from it; the proxy caps its own clients (docs/nginx.conf).
    server = await start_server(make_settings(tmp_path, max_connections_per_address=2,
                                              trusted_proxies="127.0.0.1/32"))
    held = []
    try:
        for _ in range(4):
            held.append(await asyncio.open_connection("127.0.0.1", server.port))
        for reader, writer in held:
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            await writer.drain()
            assert b" 200 " in await asyncio.wait_for(reader.readuntil(b"\r\n"), 20)
    finally:
        for _r, writer in held:
            writer.close()
        await server.stop()
