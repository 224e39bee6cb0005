"""The server's access log: a web chat session id is a bearer token and a number in a path is personal data;
neither reaches a log line."""

from __future__ import annotations

import aiohttp

from bot.server import RunningServer


async def test_access_log_hides_session_ids_and_numbers(server: RunningServer, http: aiohttp.ClientSession,
                                                        log_capture: object) -> None:
    async with http.post(server.url + "/chat/api/sessions", json={}) as r:
        session = (await r.json())["session"]
    async with http.get(f"{server.url}/chat/api/sessions/{session}/messages", params={"after": "0"}) as r:
        assert r.status == 200
    async with http.get(server.url + "/no-such-page/13800138000") as r:
        assert r.status == 404
    lines = [line for line in log_capture.getvalue().splitlines() if "aiohttp.access" in line]  # type: ignore[attr-defined]
    assert any("/chat/api/sessions/…/messages" in line for line in lines), lines
    assert any("138****8000" in line for line in lines), lines
    logged = "\n".join(lines)
    assert session not in logged and "13800138000" not in logged
