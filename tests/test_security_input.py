"""Hostile input and headers (issue 11): oversized integers and deep JSON get a 4xx, never a 500; no session
id reaches a log line; the chat page cannot be framed and runs no inline script."""

from __future__ import annotations

import io
import json

import aiohttp

from bot.server import RunningServer
from tests.conftest import Chat

DEEP = "[" * 30_000 + "]" * 30_000  # under the 64 KiB cap, far past the parser's recursion limit


async def test_oversized_after_and_deep_json_are_4xx(server: RunningServer, chat: Chat,
                                                     http: aiohttp.ClientSession) -> None:
    for after in ("99999999999999999999999", "-1", "1e9", "٣", "9" * 5000):
        async with http.get(chat.url, params={"after": after}) as r:
            assert r.status == 400, (after, r.status)
            assert "after" in (await r.json())["messages"][0]["text"]
    headers = {"Content-Type": "application/json"}
    for body in (DEEP, '{"id": "a", "text": ' + DEEP + "}", '{"id": ' + "9" * 5000 + ', "text": "hi"}'):
        async with http.post(chat.url, data=body, headers=headers) as r:
            assert r.status == 400, r.status
        async with http.post(server.url + "/chat/api/sessions", data=body, headers=headers) as r:
            assert r.status == 400, r.status
    # The conversation still works afterwards.
    assert await chat.say("/start")


async def test_no_session_id_in_any_log_line(server: RunningServer, http: aiohttp.ClientSession,
                                             log_capture: io.StringIO) -> None:
    chat = await Chat(http, server.url).open()
    await chat.say("/start")
    await chat.pushed(0)
    async with http.get(chat.url, params={"after": "99999999999999999999999"}) as r:
        assert r.status == 400
    async with http.post(chat.url, data=DEEP, headers={"Content-Type": "application/json"}) as r:
        assert r.status == 400
    async with http.delete(f"{server.url}/chat/api/sessions/{chat.session}") as r:
        assert r.status == 204
    async with http.get(chat.url) as r:
        assert r.status == 404
    lines = log_capture.getvalue()
    assert lines and chat.session not in lines


async def test_the_page_cannot_be_framed_and_runs_no_inline_script(server: RunningServer,
                                                                   http: aiohttp.ClientSession) -> None:
    async with http.get(server.url + "/") as r:
        csp = r.headers["Content-Security-Policy"]
        html = await r.text()
        assert r.headers["X-Frame-Options"] == "DENY"
    directives = {d.split()[0]: d.split()[1:] for d in csp.split(";") if d.strip()}
    assert directives["frame-ancestors"] == ["'none'"]
    assert "'unsafe-inline'" not in directives["script-src"] and "'unsafe-inline'" not in directives["style-src"]
    assert "<script>" not in html and "<script src=" in html and " on" not in html.split("<body", 1)[1].split(">")[0]
    # Every other answer refuses framing too.
    for path in ("/healthz", "/chat/api/sessions/nope/messages"):
        async with http.get(server.url + path) as r:
            assert r.headers["X-Frame-Options"] == "DENY"
            assert "frame-ancestors 'none'" in r.headers["Content-Security-Policy"]
    async with http.post(server.url + "/chat/api/sessions", json={}) as r:
        assert json.loads(await r.text())["session"]


async def test_an_unhandled_error_logs_the_route_not_the_session_id(log_capture: io.StringIO) -> None:
    from aiohttp import web

    from bot.server import error_middleware
    from bot.structured_logs import AccessLogger

    async def broken(request: web.Request) -> web.Response:
        raise RuntimeError("boom")

    app = web.Application(middlewares=[error_middleware])
    app.router.add_post("/chat/api/sessions/{session}/messages", broken)
    runner = web.AppRunner(app, access_log_class=AccessLogger)  # as bot.server serves
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    session_id = "S3cretSessionToken_abcdefghijklmnop"
    try:
        async with aiohttp.ClientSession() as http, \
                http.post(f"http://127.0.0.1:{runner.addresses[0][1]}/chat/api/sessions/{session_id}/messages",
                          json={}) as r:
            assert r.status == 500
    finally:
        await runner.cleanup()
    lines = log_capture.getvalue()
    assert "unhandled error" in lines and "/chat/api/sessions/{session}/messages" in lines
    assert session_id not in lines
