"""The web chat: the page at `/` and its JSON API (the ARCHITECTURE.md contract).

A session id is a bearer secret: only its keyed hash is stored and it never reaches a log line. Sessions are
limited per client address (behind TRUSTED_PROXIES, the forwarded one), expire after inactivity and end when
the page starts a new chat. Bodies over 64 KiB get 413; malformed, deep or huge input gets a 4xx, never a 5xx.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import secrets
from pathlib import Path
from typing import Any

from aiohttp import web

from bot import jsoncodec
from bot import pow as proof_of_work
from bot.abuse import Rule, client_address
from bot.dispatch import Incoming, pick_lang
from bot.runtime import Runtime
from bot.step_store import ConflictError, UserRef
from bot.storage import utcnow
from dialogs.intents import phone_in
from dialogs.model import Event, Msg
from dialogs.phones import parse_mainland_mobile

log = logging.getLogger(__name__)

MAX_BODY = 64 * 1024
STATIC = Path(__file__).resolve().parent / "static"
RUNTIME: web.AppKey[Runtime] = web.AppKey("runtime", Runtime)


class CodeGate:
    """The proof-of-work gate's count of messages that may send a code and are still being handled, per client.

    The gate adds them to the client's codes sent this hour: a code is counted only when it is sent, inside the
    step, so a burst of concurrent messages would otherwise all pass while the count still read zero. The place
    is taken before anything is awaited, so on one event loop no two of them can read the same count. Each worker
    keeps its own: across W workers a burst can get up to W × OTP_POW_AFTER codes past the gate before they are
    counted, and the per-client daily limit (otp.client, counted atomically at the send) still bounds it."""

    def __init__(self) -> None:
        self._in_flight: dict[str, int] = {}

    def enter(self, client: str) -> int:
        """Takes a place; returns how many of the client's messages were already in flight."""
        ahead = self._in_flight.get(client, 0)
        self._in_flight[client] = ahead + 1
        return ahead

    def leave(self, client: str) -> None:
        left = self._in_flight.get(client, 1) - 1
        if left > 0:
            self._in_flight[client] = left
        else:
            self._in_flight.pop(client, None)

    def __len__(self) -> int:
        return len(self._in_flight)


CODE_GATE: web.AppKey[CodeGate] = web.AppKey("code_gate", CodeGate)
_SESSION_RE = re.compile(r"[A-Za-z0-9_-]{16,64}")
# Sequence numbers are per user and small; anything past this is not a position, just an attack on int().
MAX_SEQ = 2**53
# The page's policy: its own script and style only (no inline script), and never inside anyone's frame.
PAGE_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
            "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
_PAGE_TOKENS = re.compile(r"\{\{\s*([a-z_.]+)\s*\}\}")


def _dumps(value: object) -> str:
    return jsoncodec.dumps_str(value)  # the step's answer, on every message: the hot path's JSON


def _session_ref(rt: Runtime, session_id: str) -> str:
    return hmac.new(rt.vault.session_key, session_id.encode(), hashlib.sha256).hexdigest()[:40]


def _lang_of(request: web.Request) -> str:
    return pick_lang(request.query.get("lang") or request.headers.get("Accept-Language"))


def _error_body(rt: Runtime, code: str, lang: str, **params: Any) -> dict[str, Any]:
    text = rt.catalog.render(Msg(f"web.error.{code}", params), lang)
    return {"error": code, "messages": [{"text": text, "choices": [], "error": True}]}


def _error(rt: Runtime, status: int, code: str, lang: str, **params: Any) -> web.Response:
    return web.json_response(_error_body(rt, code, lang, **params), status=status, dumps=_dumps)


async def page(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    lang = _lang_of(request)
    html = (STATIC / "chat.html").read_text(encoding="utf-8")

    def token(match: re.Match[str]) -> str:
        key = match.group(1)
        if key == "lang":
            return "zh-CN" if lang == "zh_CN" else "en"
        text = rt.catalog.text(f"web.{key}", lang)
        return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")

    return web.Response(text=_PAGE_TOKENS.sub(token, html), content_type="text/html",
                        headers={"Content-Security-Policy": PAGE_CSP, "X-Frame-Options": "DENY",
                                 "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"})


async def _read_json(request: web.Request) -> tuple[Any, str | None]:
    if (request.content_length or 0) > MAX_BODY:
        return None, "too_large"
    chunks: list[bytes] = []
    size = 0
    while chunk := await request.content.read(16384):
        size += len(chunk)
        if size > MAX_BODY:
            return None, "too_large"
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        return None, "empty"
    try:
        # RecursionError: JSON nested thousands deep; ValueError: integers past Python's digit limit.
        return json.loads(raw.decode("utf-8")), None
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None, "malformed"


def client_of(request: web.Request) -> str:
    """The client the limits count on the web chat (invariant 8): its address, or behind a trusted proxy
    the forwarded one."""
    trusted = request.app[RUNTIME].settings.trusted_proxies
    forwarded = request.headers.get("X-Forwarded-For") if trusted else None
    return "web:" + client_address(request.remote, forwarded, trusted.split(",") if trusted else [])


def session_rules(rt: Runtime) -> list[Rule]:
    s = rt.settings
    return [Rule("session.minute", s.web_sessions_per_minute, 60), Rule("session.hour", s.web_sessions_per_hour, 3600)]


async def create_session(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    lang = _lang_of(request)
    body, problem = await _read_json(request) if request.can_read_body else ({}, None)
    if problem == "too_large":
        return _error(rt, 413, "too_large", lang, max_kib=MAX_BODY // 1024)
    if problem == "malformed":
        return _error(rt, 400, "malformed", lang)
    if isinstance(body, dict) and body.get("lang") in ("zh_CN", "en"):
        lang = str(body["lang"])
    who = rt.limits.subject("client", client_of(request))
    refusal = await rt.limits.take([(rule, who) for rule in session_rules(rt)], utcnow())
    if refusal is not None:
        response = _error(rt, 429, "rate_limited", lang, seconds=refusal.retry_in)
        response.headers["Retry-After"] = str(refusal.retry_in)
        return response
    # 新对话: the page names the session it leaves, which ends now rather than lingering as a bearer token.
    replaces = body.get("replaces") if isinstance(body, dict) else None
    if isinstance(replaces, str) and _SESSION_RE.fullmatch(replaces):
        await _revoke(rt, _session_ref(rt, replaces))
    session_id = secrets.token_urlsafe(24)
    await rt.dispatcher.user_for("web", _session_ref(rt, session_id), lang)
    return web.json_response({"session": session_id}, status=201)


async def _revoke(rt: Runtime, ref: str) -> None:
    """Ends a session: its row no longer answers to the token (retention purges it once idle)."""
    await rt.repository.end_web_session(ref)
    rt.dispatcher.forget_cached("web", ref)


async def end_session(request: web.Request) -> web.Response:
    rt, ref, user = await _session_user(request)
    if user is None:
        return _error(rt, 404, "no_session", _lang_of(request))
    await _revoke(rt, ref)
    return web.Response(status=204)


async def _session_user(request: web.Request) -> tuple[Runtime, str, UserRef | None]:
    rt = request.app[RUNTIME]
    session_id = request.match_info["session"]
    if not _SESSION_RE.fullmatch(session_id):
        return rt, "", None
    ref = _session_ref(rt, session_id)
    # Read every time rather than cached: an ended session must stop working on every worker at once, and an
    # idle one past WEB_SESSION_IDLE_HOURS is expired.
    row = await rt.steps.last_seen("web", ref)
    if row is None:
        rt.dispatcher.forget_cached("web", ref)
        return rt, ref, None
    seen = row[1]
    if (utcnow() - seen).total_seconds() > rt.settings.web_session_idle_hours * 3600:
        await _revoke(rt, ref)
        return rt, ref, None
    return rt, ref, await rt.dispatcher.user_for("web", ref, create=False)


def _sends_code(event: Event) -> bool:
    """A message that may send a code: a typed number (at any prompt: the dialog keeps a number typed early and
    sends it once verification starts, so gating the number itself gates that path too) or 重发."""
    if event.kind == "choice":
        return event.choice == "resend"
    # Also a number inside a sentence ("帮我解绑 138…"): typed intent keeps it sealed and sends the code (issue 12).
    return event.kind == "text" and (parse_mainland_mobile(event.text).problem == "ok"
                                     or bool(phone_in(event.text[:2000])))


async def _needs_pow(rt: Runtime, client: str, ahead: int, body: dict[str, Any],
                     lang: str) -> web.Response | None:
    """Past OTP_POW_AFTER codes in an hour, a message that may send another needs a solved proof of work. The
    client's messages that may send one and are still being handled (`ahead`) count as codes already sent."""
    now = utcnow()
    if await rt.otp.sent_recently(client, now) + ahead < rt.settings.otp_pow_after:
        return None
    solved = body.get("pow")
    key = rt.vault.session_key
    if isinstance(solved, dict) and isinstance(solved.get("challenge"), str) and isinstance(solved.get("answer"), str):
        if await proof_of_work.verify(key, rt.limits, client, solved["challenge"], solved["answer"],
                                      rt.settings.pow_bits, now):
            return None
        code = "pow_invalid"
    else:
        code = "pow_required"
    payload = _error_body(rt, code, lang)
    payload["pow"] = {"challenge": proof_of_work.challenge(key, client, now), "bits": rt.settings.pow_bits}
    return web.json_response(payload, status=429, dumps=_dumps)


async def post_message(request: web.Request) -> web.Response:
    rt, ref, user = await _session_user(request)
    lang = user.lang if user else _lang_of(request)
    if user is None:
        return _error(rt, 404, "no_session", lang)
    body, problem = await _read_json(request)
    if problem is not None:
        status = 413 if problem == "too_large" else 400
        return _error(rt, status, problem, lang, max_kib=MAX_BODY // 1024)
    if not isinstance(body, dict):
        return _error(rt, 400, "malformed", lang)
    client_id = body.get("id")
    if client_id is not None and (not isinstance(client_id, str | int) or len(str(client_id)) > 100):
        return _error(rt, 400, "bad_id", lang)
    text, choice = body.get("text"), body.get("choice")
    if isinstance(choice, str) and choice:
        event = Event("choice", choice=choice[:64])
    elif isinstance(text, str):
        event = Event("text", text=text)
    else:
        return _error(rt, 400, "no_text", lang)
    client = client_of(request)
    gate = request.app[CODE_GATE] if _sends_code(event) else None
    ahead = gate.enter(client) if gate is not None else 0  # before any await (see CodeGate)
    try:
        if gate is not None:
            challenged = await _needs_pow(rt, client, ahead, body, lang)
            if challenged is not None:
                return challenged
        incoming = Incoming(channel="web", external_id=ref, event=event,
                            dedupe_key=f"{user.id}:{client_id}" if client_id is not None else None, client=client)
        try:
            result = await rt.dispatcher.handle(incoming)
        except ConflictError:
            return _error(rt, 409, "busy", lang)
    finally:
        if gate is not None:
            gate.leave(client)
    return web.json_response({"messages": result.messages}, dumps=_dumps)


async def get_messages(request: web.Request) -> web.Response:
    rt, _ref, user = await _session_user(request)
    if user is None:
        return _error(rt, 404, "no_session", _lang_of(request))
    raw_after = request.query.get("after", "0")
    if not (raw_after.isascii() and raw_after.isdigit() and len(raw_after) <= 16) or int(raw_after) > MAX_SEQ:
        return _error(rt, 400, "bad_after", user.lang)
    after = int(raw_after)
    rows = await rt.steps.messages_after(user.id, after, 200)
    # Payloads are stored as JSON text already: splice them instead of decoding and re-encoding.
    return web.Response(text='{"messages": [' + ",".join(rows) + "]}", content_type="application/json")


_STATIC_FILES = {"chat.js": "text/javascript", "chat.css": "text/css"}


async def static_file(request: web.Request) -> web.StreamResponse:
    # Only named files: the folder also holds the page template, which must go through page().
    name = request.match_info["name"]
    if name not in _STATIC_FILES:
        raise web.HTTPNotFound()
    return web.FileResponse(STATIC / name, headers={"Content-Type": _STATIC_FILES[name] + "; charset=utf-8",
                                                    "Cache-Control": "no-cache",
                                                    "X-Content-Type-Options": "nosniff"})


def routes(app: web.Application) -> None:
    app.router.add_get("/", page)
    app.router.add_get("/static/{name}", static_file)
    app.router.add_get("/chat", page)
    app.router.add_post("/chat/api/sessions", create_session)
    app.router.add_post("/chat/api/sessions/{session}/messages", post_message)
    app.router.add_delete("/chat/api/sessions/{session}", end_session)
    app.router.add_get("/chat/api/sessions/{session}/messages", get_messages)
