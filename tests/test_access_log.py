"""The server's logs: a web chat session id is a bearer token, a number in a path is personal data, and a WeChat
callback's query carries the sender's openid; none reaches a log line. And what the logging set-up of
`python -m bot run` (LOG_LEVEL, LOG_FILE, ACCESS_LOG) writes: a JSON line per request, probes only when they fail."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pytest

from bot.server import RunningServer
from bot.structured_logs import AccessLogger, configure


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


@pytest.fixture
def production_logging(tmp_path: Path) -> Iterator[Callable[..., Path]]:
    """`configure` as `python -m bot run` calls it (LOG_LEVEL, LOG_FILE, ACCESS_LOG), with the process's logging put
    back after."""
    root = logging.getLogger()
    access = logging.getLogger("aiohttp.access")
    saved = (root.handlers[:], root.level, access.level)
    gathered = {name: getattr(logging, name) for name in ("_srcfile", "logThreads", "logProcesses",
                                                          "logMultiprocessing")}
    log_file = tmp_path / "bot.log"

    def start(level: str, access: bool = True) -> Path:
        configure(level, str(log_file), access=access)
        return log_file

    yield start
    for handler in root.handlers:
        if handler not in saved[0]:
            handler.close()
    root.handlers[:], root.level = saved[0], saved[1]
    access.setLevel(saved[2])
    for name, value in gathered.items():
        setattr(logging, name, value)


async def test_at_info_every_request_is_logged_without_query_values(
        server: RunningServer, production_logging: Callable[..., Path]) -> None:
    """What `make run` writes: a line per request. WeChat's callback URL carries the sender's openid and a
    signature in its query string; of a query only the parameter names are logged."""
    log_file = production_logging("INFO")
    async with aiohttp.ClientSession() as http:  # connections opened after configure, as in production
        async with http.post(server.url + "/chat/api/sessions", json={}) as r:
            session = (await r.json())["session"]
        async with http.get(f"{server.url}/chat/api/sessions/{session}/messages", params={"after": "0"}) as r:
            assert r.status == 200
        openid = "oSecretOpenid4Zq9xWv"
        async with http.post(server.url + "/wechat", params={"signature": "f00dcafe1234", "timestamp": "1790000000",
                                                              "nonce": "8675309", "openid": openid}, data=b"") as r:
            pass
        async with http.get(server.url + "/no-such-page/13800138000", params={"phone": "13900139000"}) as r:
            assert r.status == 404
        for probe in ("/healthz", "/readyz", "/metrics"):  # repeated every few seconds by supervisors and scrapers
            async with http.get(server.url + probe) as r:
                assert r.status == 200, probe
        async with http.post(server.url + "/healthz") as r:
            refused = r.status
    lines = [json.loads(line) for line in log_file.read_text(encoding="utf-8").splitlines()]
    access = [line["msg"] for line in lines if line["logger"] == "aiohttp.access"]
    assert any(" GET /chat/api/sessions/…/messages?after 200 " in msg for msg in access), access
    assert any(" POST /wechat?signature&timestamp&nonce&openid " in msg for msg in access), access
    assert any(" GET /no-such-page/138****8000?phone 404 " in msg for msg in access), access
    assert not [msg for msg in access if " 200 " in msg and (" /healthz " in msg or " /readyz " in msg
                                                             or " /metrics " in msg)], access
    assert refused >= 400 and any(f" POST /healthz {refused} " in msg for msg in access), "a failed probe is logged"
    logged = log_file.read_text(encoding="utf-8")
    for secret in (session, openid, "f00dcafe1234", "8675309", "13900139000", "13800138000"):
        assert secret not in logged, secret


@pytest.mark.parametrize(("level", "access"), [("WARNING", True), ("INFO", False)])
async def test_below_info_or_switched_off_no_request_is_timed_or_logged(
        server: RunningServer, production_logging: Callable[..., Path], level: str, access: bool) -> None:
    log_file = production_logging(level, access)
    async with aiohttp.ClientSession() as http, http.get(server.url + "/healthz") as r:
        assert r.status == 200
    logging.getLogger("bot").info("an INFO line still goes out")
    assert not AccessLogger(logging.getLogger("aiohttp.access"), "").enabled
    logged = log_file.read_text(encoding="utf-8")
    assert "aiohttp.access" not in logged
    assert ("an INFO line still goes out" in logged) == (level == "INFO")


def test_a_log_line_is_one_json_object_with_its_extras_masked(production_logging: Callable[..., Path]) -> None:
    """The production formatter (orjson, extras in name order, nothing gathered that no line prints) keeps every
    field a line carries, non-ASCII text as it is, and masks numbers wherever they appear."""
    log_file = production_logging("INFO")
    log = logging.getLogger("bot.test")
    try:
        raise ValueError("号码 13800138000 不可用")
    except ValueError:
        log.exception("提交失败 for %s", "13900139000", extra={"route": "/x", "attempt": 2,
                                                            "when": datetime(2026, 12, 1, tzinfo=UTC),
                                                            "phone": "13700137000"})
    [line] = [json.loads(text) for text in log_file.read_text(encoding="utf-8").splitlines()]
    assert line["level"] == "error" and line["logger"] == "bot.test"
    assert line["msg"] == "提交失败 for 139****9000"
    assert [key for key in line if key not in ("ts", "level", "logger", "msg", "exc")] == [
        "attempt", "phone", "route", "when"]
    assert line["attempt"] == 2 and line["phone"] == "137****7000" and line["when"].startswith("2026-12-01 00:00")
    assert "ValueError: 号码 138****8000 不可用" in line["exc"]
    assert "13800138000" not in log_file.read_text(encoding="utf-8")
