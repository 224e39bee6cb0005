"""The web chat: the page at `/` and its JSON API (the ARCHITECTURE.md contract).

A session id is a bearer secret: only its keyed hash is stored. Bodies over 64 KiB get 413.
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

from bot.dispatch import Incoming, pick_lang
from bot.runtime import Runtime
from bot.step_store import ConflictError, UserRef
from dialogs.model import Event, Msg

log = logging.getLogger(__name__)

MAX_BODY = 64 * 1024
STATIC = Path(__file__).resolve().parent / "static"
RUNTIME: web.AppKey[Runtime] = web.AppKey("runtime", Runtime)
_SESSION_RE = re.compile(r"[A-Za-z0-9_-]{16,64}")
_PAGE_TOKENS = re.compile(r"\{\{\s*([a-z_.]+)\s*\}\}")


def _dumps(value: object) -> str:
    return json.dumps(value, ensure_ascii=False)


def _session_ref(rt: Runtime, session_id: str) -> str:
    return hmac.new(rt.vault.session_key, session_id.encode(), hashlib.sha256).hexdigest()[:40]


def _lang_of(request: web.Request) -> str:
    return pick_lang(request.query.get("lang") or request.headers.get("Accept-Language"))


def _error(rt: Runtime, status: int, code: str, lang: str, **params: Any) -> web.Response:
    text = rt.catalog.render(Msg(f"web.error.{code}", params), lang)
    return web.json_response({"error": code, "messages": [{"text": text, "choices": [], "error": True}]},
                             status=status)


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
                        headers={"Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; "
                                 "script-src 'self' 'unsafe-inline'; img-src 'self' data:",
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
        return json.loads(raw.decode("utf-8")), None
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None, "malformed"


async def create_session(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    lang = _lang_of(request)
    body, problem = await _read_json(request) if request.can_read_body else ({}, None)
    if problem == "too_large":
        return _error(rt, 413, "too_large", lang, max_kib=MAX_BODY // 1024)
    if isinstance(body, dict) and body.get("lang") in ("zh_CN", "en"):
        lang = str(body["lang"])
    session_id = secrets.token_urlsafe(24)
    await rt.dispatcher.user_for("web", _session_ref(rt, session_id), lang)
    return web.json_response({"session": session_id}, status=201)


async def _session_user(request: web.Request) -> tuple[Runtime, str, UserRef | None]:
    rt = request.app[RUNTIME]
    session_id = request.match_info["session"]
    if not _SESSION_RE.fullmatch(session_id):
        return rt, "", None
    ref = _session_ref(rt, session_id)
    return rt, ref, await rt.dispatcher.user_for("web", ref, create=False)


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
    incoming = Incoming(channel="web", external_id=ref, event=event,
                        dedupe_key=f"{user.id}:{client_id}" if client_id is not None else None)
    try:
        messages = await rt.dispatcher.handle(incoming)
    except ConflictError:
        return _error(rt, 409, "busy", lang)
    return web.json_response({"messages": messages}, dumps=_dumps)


async def get_messages(request: web.Request) -> web.Response:
    rt, _ref, user = await _session_user(request)
    if user is None:
        return _error(rt, 404, "no_session", _lang_of(request))
    try:
        after = int(request.query.get("after", "0"))
    except ValueError:
        return _error(rt, 400, "bad_after", user.lang)
    rows = await rt.steps.messages_after(user.id, after, 200)
    # Payloads are stored as JSON text already: splice them instead of decoding and re-encoding.
    return web.Response(text='{"messages": [' + ",".join(rows) + "]}", content_type="application/json")


def routes(app: web.Application) -> None:
    app.router.add_get("/", page)
    app.router.add_get("/chat", page)
    app.router.add_post("/chat/api/sessions", create_session)
    app.router.add_post("/chat/api/sessions/{session}/messages", post_message)
    app.router.add_get("/chat/api/sessions/{session}/messages", get_messages)
