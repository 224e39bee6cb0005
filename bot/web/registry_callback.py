"""The registry's signed status callback. Forged, stale or oversized callbacks are refused before parsing;
repeated or out-of-order ones change nothing (bot/unbind_requests.py keeps statuses monotone)."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime

from aiohttp import web

from bot.web.chat import RUNTIME
from integrations.registry import RegistryError, parse_callback, verify_callback

log = logging.getLogger(__name__)

MAX_CALLBACK = 64 * 1024


async def registry_callback(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    if (request.content_length or 0) > MAX_CALLBACK:
        return web.json_response({"error": "too_large"}, status=413)
    body = await request.content.read(MAX_CALLBACK + 1)
    if len(body) > MAX_CALLBACK:
        return web.json_response({"error": "too_large"}, status=413)
    header = request.headers.get("X-Registry-Signature", "")
    if not verify_callback(rt.settings.resolved_callback_secret(), body, header, time.time()):
        log.warning("registry callback refused: bad signature")
        return web.json_response({"error": "bad_signature"}, status=403)
    try:
        answer = parse_callback(body)
    except RegistryError:
        return web.json_response({"error": "malformed"}, status=400)
    # The signed time orders callbacks and, with the request and status, makes a repeated one a no-op.
    await rt.unbind.update_from_registry(answer, at=_signed_at(header))
    return web.Response(status=204)


def _signed_at(header: str) -> datetime | None:
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        if name == "t" and value.isdigit() and len(value) <= 12:
            return datetime.fromtimestamp(int(value), UTC)
    return None


def routes(app: web.Application) -> None:
    app.router.add_post("/registry/callback", registry_callback)
