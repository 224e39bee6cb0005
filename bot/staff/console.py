"""The staff console over HTTP: login, the console page, the tickets API and live updates (SSE).

One gate (`staff_gate`) guards every path under /staff: a session for all but the login and the page, the
CSRF header on every POST, and the admin role for admin-only areas (broadcasts, the audit log). It must never
put a password, a session token or a full phone number, name or ID number into a response or a log line.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from bot.dispatch import pick_lang
from bot.runtime import Runtime
from bot.staff import audit
from bot.staff.auth import StaffAuth, StaffMember
from bot.staff.live import LiveHub
from bot.staff.tickets import STATUSES, TicketError, TicketService
from bot.web.chat import RUNTIME
from bot.web.chat import client_of as web_client_of

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
COOKIE = "hq_staff"
PREFIX = "/staff"
# Admin-only areas: a staff-role account gets 403 here, whether or not a handler exists yet.
ADMIN_PREFIXES = ("/staff/api/broadcasts", "/staff/broadcasts", "/staff/api/audit")
OPEN_PATHS = {("GET", "/staff"), ("POST", "/staff/login"), ("GET", "/staff/login")}
MAX_BODY = 64 * 1024
KEEPALIVE_SECONDS = 15.0
_PAGE_TOKENS = re.compile(r"\{\{\s*([A-Za-z_.]+)\s*\}\}")
_STATIC_FILES = {"common.js": "application/javascript", "console.js": "application/javascript",
                 "console.css": "text/css", "broadcasts.js": "application/javascript"}
AUDIT_ACTIONS = ("login", "login_failed", "logout", "view", "claim", "assign", "reply", "close",
                 # bot/staff/broadcasts_api.py
                 "broadcast_dry_run", "broadcast_create", "broadcast_start", "broadcast_pause", "broadcast_resume",
                 "broadcast_cancel", "broadcast_report")
# Strings the console script needs, by catalog key (the page itself takes the rest through {{ tokens }}).
SCRIPT_KEYS = (
    "staff.status.open", "staff.status.claimed", "staff.status.closed", "staff.claim", "staff.close",
    "staff.assign", "staff.assign_to", "staff.send", "staff.empty_queue", "staff.pick_ticket",
    "staff.ctx.channel", "staff.ctx.channels", "staff.ctx.state", "staff.ctx.verified", "staff.ctx.not_verified",
    "staff.ctx.verified_stale", "staff.ctx.phone", "staff.ctx.realname", "staff.ctx.requests",
    "staff.ctx.no_requests", "staff.ctx.plan", "staff.ctx.no_plan", "staff.ctx.plan_line", "staff.ctx.lang",
    "staff.author.user", "staff.author.staff", "staff.author.bot", "staff.waiting", "staff.claimed_by",
    "staff.reason.stuck", "staff.reason.asked", "staff.error.already_claimed", "staff.error.closed",
    "staff.error.claim_first", "staff.error.not_yours", "staff.error.generic", "staff.error.empty",
    "staff.error.too_long", "staff.live.off", "staff.yes", "staff.no", "staff.canned", "staff.closed_note",
    "staff.channel.web", "staff.channel.telegram", "staff.channel.wechat",
    *(f"staff.audit.action.{a}" for a in AUDIT_ACTIONS),
    *(f"staff.canned.{n}" for n in range(1, 6)),
)
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
                               "connect-src 'self'; frame-ancestors 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}

AUTH: web.AppKey[StaffAuth] = web.AppKey("staff_auth", StaffAuth)
TICKETS: web.AppKey[TicketService] = web.AppKey("staff_tickets", TicketService)
LIVE: web.AppKey[LiveHub] = web.AppKey("staff_live", LiveHub)


class OpenStreams:
    """The live-update streams this worker serves, so shutdown can end them instead of waiting on them."""

    def __init__(self) -> None:
        self.stops: set[asyncio.Event] = set()


STREAMS: web.AppKey[OpenStreams] = web.AppKey("staff_streams", OpenStreams)
MEMBER: web.RequestKey[StaffMember] = web.RequestKey("staff_member", StaffMember)
TOKEN: web.RequestKey[str] = web.RequestKey("staff_token", str)


def client_of(request: web.Request) -> str:
    """The address the login limit counts: behind TRUSTED_PROXIES the forwarded one, as on the web chat."""
    return web_client_of(request)[:64]


def _lang(request: web.Request) -> str:
    return pick_lang(request.query.get("lang") or request.cookies.get("hq_staff_lang")
                     or request.headers.get("Accept-Language"))


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def _error(request: web.Request, status: int, code: str) -> web.Response:
    rt = request.app[RUNTIME]
    key = f"staff.error.{code}"
    lang = _lang(request)
    text = rt.catalog.text(key, lang) if key in rt.catalog.messages.get(lang, {}) else code
    return web.json_response({"error": code, "message": text}, status=status, headers={"Cache-Control": "no-store"})


def member_of(request: web.Request) -> StaffMember:
    return request[MEMBER]  # staff_gate lets no request through without one


def _wants_json(request: web.Request) -> bool:
    return "application/json" in request.headers.get("Accept", "") or request.path.startswith("/staff/api/")


@web.middleware
async def staff_gate(request: web.Request,
                     handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    path = request.path
    if path != PREFIX and not path.startswith(PREFIX + "/"):
        return await handler(request)
    if (request.method, path) in OPEN_PATHS or (request.method == "GET" and path.startswith("/staff/static/")):
        return await handler(request)
    auth = request.app[AUTH]
    token = request.cookies.get(COOKIE, "")
    member = await auth.member_for(token, request.app[TICKETS].clock())
    if member is None:
        if request.method == "GET" and not _wants_json(request):
            raise web.HTTPSeeOther(PREFIX)
        return _error(request, 401, "login_required")
    if any(path == p or path.startswith(p + "/") for p in ADMIN_PREFIXES) and not member.is_admin:
        return _error(request, 403, "admin_only")
    if request.method not in ("GET", "HEAD", "OPTIONS") and not auth.csrf_ok(
            token, request.headers.get("X-CSRF-Token", "")):
        return _error(request, 403, "csrf")
    request[MEMBER] = member
    request[TOKEN] = token
    return await handler(request)


def _render(request: web.Request, name: str, extra: dict[str, str] | None = None, status: int = 200, *,
            strings: bool = False, keys: tuple[str, ...] = SCRIPT_KEYS) -> web.Response:
    rt = request.app[RUNTIME]
    lang = _lang(request)
    html = (STATIC / name).read_text(encoding="utf-8")
    if strings:
        # JSON for the script, not HTML-escaped, and placed before any value could carry the marker itself.
        html = html.replace("__STRINGS__", _strings(request, keys))
    values = extra or {}

    def token(match: re.Match[str]) -> str:
        key = match.group(1)
        if key == "lang":
            return "zh-CN" if lang == "zh_CN" else "en"
        if key in values:
            return _escape(values[key])
        return _escape(rt.catalog.text(key, lang))

    return web.Response(text=_PAGE_TOKENS.sub(token, html), content_type="text/html", status=status,
                        headers=SECURITY_HEADERS)


def _strings(request: web.Request, keys: tuple[str, ...] = SCRIPT_KEYS) -> str:
    rt = request.app[RUNTIME]
    lang = _lang(request)
    strings = {key: rt.catalog.text(key, lang) for key in keys}
    # Inside a JSON data block: escape what could end the element early.
    return json.dumps(strings, ensure_ascii=False).replace("<", "\\u003c").replace(">", "\\u003e")


async def console_page(request: web.Request) -> web.Response:
    auth = request.app[AUTH]
    token = request.cookies.get(COOKIE, "")
    member = await auth.member_for(token, request.app[TICKETS].clock())
    if member is None:
        return _render(request, "login.html", {"error": ""})
    return _console(request, member, auth.csrf_for(token))


def _console(request: web.Request, member: StaffMember, csrf: str) -> web.Response:
    return _render(request, "console.html", {"csrf": csrf, "me": member.name, "role": member.role}, strings=True)


async def _form(request: web.Request) -> dict[str, str]:
    if (request.content_length or 0) > MAX_BODY:
        raise web.HTTPRequestEntityTooLarge(max_size=MAX_BODY, actual_size=request.content_length or 0)
    if request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        form = await request.post()
        return {k: v for k, v in form.items() if isinstance(v, str)}
    # JSON, whatever the client called it: the API's bodies are small JSON objects.
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        return {}
    return {k: v for k, v in body.items() if isinstance(v, str)} if isinstance(body, dict) else {}


async def login(request: web.Request) -> web.Response:
    auth = request.app[AUTH]
    tickets = request.app[TICKETS]
    rt = request.app[RUNTIME]
    lang = _lang(request)
    form = await _form(request)
    name, password = form.get("name", "").strip(), form.get("password", "")
    client = client_of(request)
    now = tickets.clock()
    wants_json = "application/json" in request.headers.get("Accept", "")
    origin = request.headers.get("Origin")
    if origin and origin != "null" and urlsplit(origin).netloc != request.host:
        # Another site posting our login form (login CSRF): its cookie would sign the victim in as someone else.
        return _error(request, 403, "csrf")
    if await auth.throttled(name, client, now):
        log.warning("staff login throttled")
        if wants_json:
            refused = _error(request, 429, "throttled")
        else:
            refused = _render(request, "login.html", {"error": rt.catalog.text("staff.error.throttled", lang)},
                              status=429)
        refused.headers["Retry-After"] = "900"
        return refused
    outcome = await auth.login(name[:64], password[:1024], client, now) if name and password else None
    if outcome is None:
        await audit.record_now(rt.db, None, "login_failed", "", client, now, name=name[:64])
        log.info("staff login failed")
        if wants_json:
            return _error(request, 401, "bad_login")
        return _render(request, "login.html", {"error": rt.catalog.text("staff.error.bad_login", lang)}, status=401)
    member, token = outcome
    await audit.record_now(rt.db, member, "login", "", client, now)
    log.info("staff login", extra={"staff": member.id})
    csrf = auth.csrf_for(token)
    response: web.Response
    if wants_json:
        response = web.json_response({"csrf": csrf, "name": member.name, "role": member.role},
                                     headers={"Cache-Control": "no-store"})
    else:
        response = web.Response(status=303, headers={"Location": PREFIX, "Cache-Control": "no-store"})
    secure = request.secure or rt.settings.public_base_url.startswith("https://")
    response.set_cookie(COOKIE, token, httponly=True, samesite="Strict", path=PREFIX, secure=secure,
                        max_age=int(auth.session_ttl.total_seconds()))
    return response


async def logout(request: web.Request) -> web.Response:
    auth = request.app[AUTH]
    member = member_of(request)
    await auth.logout(request[TOKEN])
    await audit.record_now(request.app[RUNTIME].db, member, "logout", "", client_of(request),
                           request.app[TICKETS].clock())
    response = web.json_response({"ok": True})
    response.del_cookie(COOKIE, path=PREFIX)
    return response


async def me(request: web.Request) -> web.Response:
    member = member_of(request)
    return web.json_response({"name": member.name, "role": member.role,
                              "csrf": request.app[AUTH].csrf_for(request[TOKEN])},
                             headers={"Cache-Control": "no-store"})


def _ticket_id(request: web.Request) -> int:
    raw = request.match_info["ticket"]
    if not raw.isdigit() or len(raw) > 12:
        raise web.HTTPNotFound()
    return int(raw)


def _json(value: Any, status: int = 200) -> web.Response:
    return web.json_response(value, status=status, dumps=lambda v: json.dumps(v, ensure_ascii=False),
                             headers={"Cache-Control": "no-store"})


async def list_tickets(request: web.Request) -> web.Response:
    status = request.query.get("status", "open")
    if status not in STATUSES:
        return _error(request, 400, "bad_status")
    return _json(await request.app[TICKETS].listing(status, member_of(request)))


async def get_ticket(request: web.Request) -> web.Response:
    try:
        return _json(await request.app[TICKETS].detail(_ticket_id(request), member_of(request), client_of(request)))
    except TicketError as exc:
        return _error(request, exc.status, exc.code)


async def _act(request: web.Request, action: Callable[[TicketService, int, StaffMember, dict[str, str]],
                                                      Awaitable[dict[str, Any]]]) -> web.Response:
    tickets = request.app[TICKETS]
    ticket_id = _ticket_id(request)
    body = await _form(request) if request.can_read_body else {}
    try:
        return _json(await action(tickets, ticket_id, member_of(request), body))
    except TicketError as exc:
        return _error(request, exc.status, exc.code)


async def claim(request: web.Request) -> web.Response:
    client = client_of(request)
    return await _act(request, lambda t, i, m, _b: t.claim(i, m, client))


async def assign(request: web.Request) -> web.Response:
    client = client_of(request)
    return await _act(request, lambda t, i, m, b: t.assign(i, m, b.get("to", ""), client))


async def send_message(request: web.Request) -> web.Response:
    client = client_of(request)
    return await _act(request, lambda t, i, m, b: t.reply(i, m, b.get("text", ""), client))


async def close(request: web.Request) -> web.Response:
    client = client_of(request)
    return await _act(request, lambda t, i, m, _b: t.close(i, m, client))


async def colleagues(request: web.Request) -> web.Response:
    return _json(await request.app[TICKETS].colleagues())


async def audit_log(request: web.Request) -> web.Response:
    raw = request.query.get("ticket", "")
    ticket_id = int(raw) if raw.isdigit() else None
    return _json(await audit.entries(request.app[RUNTIME].db, ticket_id=ticket_id))


async def events(request: web.Request) -> web.StreamResponse:
    """Server-sent events: ticket ids and statuses as they change, on any worker."""
    live = request.app[LIVE]
    auth = request.app[AUTH]
    token = request[TOKEN]
    stop = asyncio.Event()
    request.app[STREAMS].stops.add(stop)
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store",
                                           "X-Accel-Buffering": "no"})
    try:
        async with live.subscribe() as queue:
            await response.prepare(request)
            await response.write(b"retry: 2000\nevent: ready\ndata: {}\n\n")
            while not stop.is_set():
                getter = asyncio.ensure_future(queue.get())
                stopper = asyncio.ensure_future(stop.wait())
                done, _pending = await asyncio.wait({getter, stopper}, timeout=KEEPALIVE_SECONDS,
                                                    return_when=asyncio.FIRST_COMPLETED)
                for task in (getter, stopper):
                    if task not in done:
                        task.cancel()
                if getter in done:
                    await response.write(f"data: {json.dumps(getter.result())}\n\n".encode())
                elif not done:
                    # A logged-out or disabled account stops hearing anything at the next keepalive.
                    if await auth.member_for(token, request.app[TICKETS].clock()) is None:
                        break
                    await response.write(b": keepalive\n\n")
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    finally:
        request.app[STREAMS].stops.discard(stop)
    with contextlib.suppress(ConnectionResetError, RuntimeError):
        await response.write_eof()
    return response


async def static_file(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    content_type = _STATIC_FILES.get(name)
    if content_type is None:
        raise web.HTTPNotFound()
    return web.Response(body=(STATIC / name).read_bytes(), content_type=content_type,
                        headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"})


def routes(app: web.Application) -> None:
    app.router.add_get("/staff", console_page)
    app.router.add_get("/staff/login", console_page)
    app.router.add_post("/staff/login", login)
    app.router.add_post("/staff/logout", logout)
    app.router.add_get("/staff/static/{name}", static_file)
    app.router.add_get("/staff/api/me", me)
    app.router.add_get("/staff/api/tickets", list_tickets)
    app.router.add_get("/staff/api/tickets/{ticket}", get_ticket)
    app.router.add_post("/staff/api/tickets/{ticket}/claim", claim)
    app.router.add_post("/staff/api/tickets/{ticket}/assign", assign)
    app.router.add_post("/staff/api/tickets/{ticket}/messages", send_message)
    app.router.add_post("/staff/api/tickets/{ticket}/close", close)
    app.router.add_get("/staff/api/staff", colleagues)
    app.router.add_get("/staff/api/audit", audit_log)
    app.router.add_get("/staff/api/events", events)


def setup(app: web.Application, rt: Runtime, tickets: TicketService, live: LiveHub) -> None:
    app[AUTH] = StaffAuth(rt.db, rt.vault.session_key, session_hours=rt.settings.staff_session_hours,
                          max_failures=rt.settings.staff_login_max_failures)
    app[TICKETS] = tickets
    app[LIVE] = live
    app[STREAMS] = OpenStreams()
    app.middlewares.append(staff_gate)
    routes(app)
    # Broadcasts (issue 14): the page and API for admins; the service is put on the app by bot.broadcasts.
    from bot.staff import broadcasts_api

    broadcasts_api.routes(app)

    async def end_streams(_app: web.Application) -> None:
        for stop in list(app[STREAMS].stops):
            stop.set()

    app.on_shutdown.append(end_streams)
