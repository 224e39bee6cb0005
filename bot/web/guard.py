"""What keeps a deployed server safe from its own defaults and from slow or greedy clients: the sandbox opt-in
contract, security headers on every answer, header and body read deadlines, a connection cap per address,
and an accept-error log line that cannot flood the log. Never logs an address or a path with a token in it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from bot.config import Settings

log = logging.getLogger(__name__)


def is_loopback(host: str) -> bool:
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


def sandbox_allowed(settings: Settings) -> bool:
    """The sandbox opt-in contract: the sandbox registry and SMS gateway, and every /sandbox/* route, run only
    on a loopback HOST or with SANDBOX=1 set explicitly; they publish codes and synthetic holders."""
    return settings.sandbox or is_loopback(settings.host)


def deploy_problems(settings: Settings) -> list[str]:
    """Why this configuration must not start: a public HOST with no real registry or SMS gateway."""
    if sandbox_allowed(settings):
        return []
    found = []
    if settings.embedded_registry:
        found.append("REGISTRY_URL (the binding registry; the embedded sandbox runs only on a loopback HOST "
                     "or with SANDBOX=1)")
    if settings.sms_provider == "sandbox":
        found.append("SMS_PROVIDER=tencent with its TENCENT_* settings (the sandbox SMS gateway publishes "
                     "codes; it runs only on a loopback HOST or with SANDBOX=1)")
    return found


def refuse_unsafe_start(settings: Settings) -> None:
    problems = deploy_problems(settings)
    if problems:
        raise SystemExit(f"HOST={settings.host} is not loopback and SANDBOX is not set, so set: "
                         + "; ".join(problems) + ". For a demo on a public address only, set SANDBOX=1.")


# Every answer: never inside a foreign frame, no MIME sniffing, no referrer. The chat page sets its full CSP.
_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "frame-ancestors 'none'",
}


async def security_headers(request: web.Request, response: web.StreamResponse) -> None:
    for name, value in _HEADERS.items():
        response.headers.setdefault(name, value)


def body_deadline(seconds: float) -> Callable[..., Any]:
    """A request body must arrive within `seconds`: a client trickling one byte at a time is cut off
    instead of holding a handler (and its memory) for as long as it likes."""

    @web.middleware
    async def middleware(request: web.Request,
                         handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        # A body already in full (a Telegram update or WeChat message arrives with its headers) needs no timer.
        if seconds <= 0 or not request.body_exists or request.content.is_eof():
            return await handler(request)

        def expire() -> None:
            if not request.content.is_eof() and request.transport is not None:
                log.info("request body too slow: connection closed")
                request.transport.close()

        timer = asyncio.get_running_loop().call_later(seconds, expire)
        try:
            return await handler(request)
        finally:
            timer.cancel()

    return middleware


def cap_connections(server: Any, per_address: int, exempt: str = "") -> None:
    """At most `per_address` open connections from one peer address; past it a new one is closed at once.
    `exempt` (TRUSTED_PROXIES) is never capped: behind a proxy every connection comes from it, and the proxy
    caps its clients itself (docs/nginx.conf). Hooks the aiohttp Server's own connection bookkeeping (it is the
    manager of every RequestHandler)."""
    if per_address <= 0:
        return
    proxies = [ipaddress.ip_network(n.strip(), strict=False) for n in exempt.split(",") if n.strip()]

    def is_proxy(address: str) -> bool:
        try:
            parsed = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(parsed in network for network in proxies)

    counts: dict[str, int] = {}
    peers: dict[Any, str] = {}
    made, lost = server.connection_made, server.connection_lost

    def connection_made(handler: Any, transport: asyncio.Transport) -> None:
        made(handler, transport)
        peer = transport.get_extra_info("peername")
        address = str(peer[0]) if isinstance(peer, tuple) and peer else "unknown"
        if proxies and is_proxy(address):
            return
        counts[address] = counts.get(address, 0) + 1
        peers[handler] = address
        if counts[address] > per_address:
            handler.force_close()
            transport.abort()

    def connection_lost(handler: Any, exc: BaseException | None = None) -> None:
        address = peers.pop(handler, None)
        if address is not None:
            left = counts.get(address, 1) - 1
            if left > 0:
                counts[address] = left
            else:
                counts.pop(address, None)
        lost(handler, exc)

    server.connection_made = connection_made
    server.connection_lost = connection_lost


class ThrottledLog(logging.Filter):
    """Lets one record per message through every `seconds`; the rest are counted and reported with the next.
    At the file-descriptor limit asyncio logs a traceback for every failed accept, tens of thousands a
    second, and the log itself becomes the outage."""

    def __init__(self, seconds: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.seconds = seconds
        self.clock = clock
        self._last: dict[str, float] = {}
        self._dropped: dict[str, int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = str(record.msg)[:80]
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last < self.seconds:
            self._dropped[key] = self._dropped.get(key, 0) + 1
            return False
        self._last[key] = now
        dropped = self._dropped.pop(key, 0)
        if dropped:
            record.suppressed = dropped
        if len(self._last) > 1000:
            self._last.clear()
        return True


def throttle_asyncio_log(seconds: float = 10.0) -> None:
    logger = logging.getLogger("asyncio")
    if not any(isinstance(f, ThrottledLog) for f in logger.filters):
        logger.addFilter(ThrottledLog(seconds))
