"""Health and readiness probes, and the sandbox SMS outbox (only while the sandbox gateway is active)."""

from __future__ import annotations

import logging

from aiohttp import web

from bot.web.chat import RUNTIME, STATIC
from dialogs.phones import parse_mainland_mobile

log = logging.getLogger(__name__)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


async def readyz(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    checks: dict[str, bool] = {}
    try:
        checks["database"] = await rt.db.ping()
    except Exception:
        log.exception("readiness: database")
        checks["database"] = False
    try:
        checks["registry"] = await rt.registry.health()
    except Exception:
        log.warning("readiness: registry unreachable")
        checks["registry"] = False
    ok = all(checks.values())
    return web.json_response({"ok": ok, "checks": checks}, status=200 if ok else 503)


async def sandbox_sms(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    gateway = rt.sandbox_sms
    if gateway is None:
        raise web.HTTPNotFound()
    parsed = parse_mainland_mobile(request.query.get("phone", ""))
    if parsed.problem != "ok":
        return web.json_response({"error": "bad_phone"}, status=400)
    return web.json_response(gateway.sent(parsed.national))


async def favicon(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(STATIC / "favicon.ico", headers={"Content-Type": "image/x-icon",
                                                             "Cache-Control": "public, max-age=86400"})


def routes(app: web.Application, *, sandbox_sms_enabled: bool) -> None:
    app.router.add_get("/favicon.ico", favicon)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    if sandbox_sms_enabled:
        app.router.add_get("/sandbox/sms", sandbox_sms)
