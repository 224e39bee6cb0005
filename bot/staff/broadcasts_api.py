"""The staff console's broadcasts: the page at /staff/broadcasts and its JSON API (issue 14), admin only.

    POST /staff/api/broadcasts               {"texts", "segment", "dry_run", "scheduled_at"?} → 200 (dry run) / 201
    POST /staff/api/broadcasts/preview       {"texts"} → {channel: {lang: text as that channel renders it}}
    POST /staff/api/broadcasts/{id}/start    (and pause, resume, cancel) → the status
    GET  /staff/api/broadcasts               → the recent broadcasts, newest first
    GET  /staff/api/broadcasts/{id}          → the status: sent, failed, unreachable, left, rate, eta_seconds, ...
    GET  /staff/api/broadcasts/{id}/report.csv

`staff_gate` (bot/staff/console.py) has already checked the session, the CSRF header on every POST and the admin
role. Bad input is a 400 with a code, an unknown id a 404, an action the broadcast's state does not allow a 409.
Every create, dry run, start, pause, resume, cancel and report download goes into the staff audit log.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from bot.broadcasts import BROADCASTS, MAX_TEXT_CHARS, BroadcastError, BroadcastService
from bot.staff import audit
from bot.staff.console import AUTH, MAX_BODY, TICKETS, TOKEN, _error, _json, _render, client_of, member_of
from bot.web.chat import RUNTIME

LANGS = ("zh_CN", "en")
CHANNELS = ("telegram", "wechat", "web")
ACTIONS = ("start", "pause", "resume", "cancel")
# The codes the service raises, as HTTP statuses: bad input 400, unknown id 404, the wrong state 409.
STATUS_OF = {"not_found": 404, "bad_state": 409, "bad_texts": 400, "bad_segment": 400, "bad_schedule": 400}
# The words the broadcasts page's script needs (the page takes the rest through {{ tokens }}).
SCRIPT_KEYS = (
    "staff.error.generic", "staff.channel.web", "staff.channel.telegram", "staff.channel.wechat",
    "staff.bc.lang.zh_CN", "staff.bc.lang.en", "staff.bc.status.draft", "staff.bc.status.scheduled",
    "staff.bc.status.running", "staff.bc.status.paused", "staff.bc.status.done", "staff.bc.status.cancelled",
    "staff.bc.dry.total", "staff.bc.dry.opted_out", "staff.bc.dry.window", "staff.bc.dry.template",
    "staff.bc.dry.unreachable", "staff.bc.eta.unknown", "staff.bc.eta.seconds", "staff.bc.eta.minutes",
    "staff.bc.eta.hours", "staff.bc.rate_value", "staff.bc.progress_line", "staff.bc.empty_texts",
    "staff.bc.none_yet", "staff.bc.scheduled_for", "staff.bc.empty_preview", "staff.bc.cancel_confirm",
    "staff.bc.wechat_template",
)


class BadRequest(Exception):
    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code
        self.detail = ""


def service_of(request: web.Request) -> BroadcastService:
    return request.app[BROADCASTS]


def _broadcast_id(request: web.Request) -> int:
    raw = request.match_info["broadcast"]
    if not raw.isdigit() or len(raw) > 12:
        raise BroadcastError("not_found", "a broadcast id is a number")
    return int(raw)


async def _body(request: web.Request) -> dict[str, Any]:
    """The JSON object the page sends; texts, segment and schedule are checked by the service itself."""
    if (request.content_length or 0) > MAX_BODY:
        raise web.HTTPRequestEntityTooLarge(max_size=MAX_BODY, actual_size=request.content_length or 0)
    raw = await request.read()  # a chunked body is bounded by the app's client_max_size, and then here
    if len(raw) > MAX_BODY:
        raise web.HTTPRequestEntityTooLarge(max_size=MAX_BODY, actual_size=len(raw))
    try:
        body = json.loads(raw.decode("utf-8")) if raw.strip() else {}
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("bad_body") from None
    if not isinstance(body, dict):
        raise BadRequest("bad_body")
    return body


def _segment_words(segment: Any) -> str:
    if not isinstance(segment, dict):
        return ""
    return ", ".join(f"{k}={v}" for k, v in segment.items() if v is not None and v != "") or "everyone"


async def _audit(request: web.Request, action: str, detail: str) -> None:
    await audit.record_now(request.app[RUNTIME].db, member_of(request), action, detail, client_of(request),
                           request.app[TICKETS].clock())


def _failed(request: web.Request, exc: BroadcastError | BadRequest) -> web.Response:
    """The console's error answer (the code, and the message in the admin's language), with the service's own
    words on what exactly was wrong (English, never personal data)."""
    answer = _error(request, STATUS_OF.get(exc.code, 400), exc.code)
    if not exc.detail:
        return answer
    body = json.loads(answer.text or "{}")
    return _json({**body, "detail": exc.detail}, status=answer.status)


async def page(request: web.Request) -> web.Response:
    member = member_of(request)
    csrf = request.app[AUTH].csrf_for(request[TOKEN])
    return _render(request, "broadcasts.html", {"csrf": csrf, "me": member.name, "role": member.role,
                                                "max_text": str(MAX_TEXT_CHARS)}, strings=True, keys=SCRIPT_KEYS)


async def create(request: web.Request) -> web.Response:
    try:
        body = await _body(request)
        dry_run = body.get("dry_run", False)
        scheduled_at = body.get("scheduled_at")
        if not isinstance(dry_run, bool) or not (scheduled_at is None or isinstance(scheduled_at, str)):
            raise BadRequest("bad_body")
        made = await service_of(request).create(texts=body.get("texts"), segment=body.get("segment") or {},
                                                dry_run=dry_run, scheduled_at=scheduled_at or None,
                                                created_by=member_of(request).name)
    except (BroadcastError, BadRequest) as exc:
        return _failed(request, exc)
    words = f"segment {_segment_words(body.get('segment') or {})}; {made.get('recipients', 0)} recipients"
    if dry_run:
        await _audit(request, "broadcast_dry_run", words)
        return _json(made)
    when = f"; scheduled {made.get('scheduled_at')}" if made.get("scheduled_at") else ""
    await _audit(request, "broadcast_create", f"#{made.get('id')} {words}{when}")
    return _json(made, status=201)


async def preview(request: web.Request) -> web.Response:
    """Each channel's rendering, as the admin types: a language not written yet previews as empty."""
    try:
        body = await _body(request)
        raw = body.get("texts")
        if not isinstance(raw, dict) or set(raw) - set(LANGS) or not all(
                isinstance(raw.get(lang, ""), str) for lang in LANGS):
            raise BadRequest("bad_texts")
        written = {lang: str(raw.get(lang, "")) for lang in LANGS}
        missing = [lang for lang, value in written.items() if not value.strip()]
        rendered = service_of(request).preview({lang: value if value.strip() else "-"
                                                for lang, value in written.items()})
    except (BroadcastError, BadRequest) as exc:
        return _failed(request, exc)
    for per_lang in rendered.values():
        for lang in missing:
            per_lang[lang] = ""
    return _json(rendered)


async def act(request: web.Request) -> web.Response:
    action = request.match_info["action"]
    if action not in ACTIONS:
        raise web.HTTPNotFound()
    service = service_of(request)
    try:
        broadcast = _broadcast_id(request)
        state = await getattr(service, action)(broadcast)
    except BroadcastError as exc:
        return _failed(request, exc)
    await _audit(request, f"broadcast_{action}", f"#{broadcast} → {state.get('status', '')}")
    return _json(state)


async def status(request: web.Request) -> web.Response:
    try:
        return _json(await service_of(request).status(_broadcast_id(request)))
    except BroadcastError as exc:
        return _failed(request, exc)


async def recent(request: web.Request) -> web.Response:
    raw = request.query.get("limit", "50")
    limit = min(int(raw), 200) if raw.isdigit() and len(raw) <= 4 and int(raw) > 0 else 50
    return _json(await service_of(request).recent(limit))


async def report(request: web.Request) -> web.Response:
    try:
        broadcast = _broadcast_id(request)
        text = await service_of(request).report_csv(broadcast)
    except BroadcastError as exc:
        return _failed(request, exc)
    await _audit(request, "broadcast_report", f"#{broadcast}")
    return web.Response(text=text, content_type="text/csv", charset="utf-8",
                        headers={"Content-Disposition": f'attachment; filename="broadcast-{broadcast}.csv"',
                                 "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"})


def routes(app: web.Application) -> None:
    app.router.add_get("/staff/broadcasts", page)
    app.router.add_get("/staff/api/broadcasts", recent)
    app.router.add_post("/staff/api/broadcasts", create)
    app.router.add_post("/staff/api/broadcasts/preview", preview)
    app.router.add_get("/staff/api/broadcasts/{broadcast}", status)
    app.router.add_get("/staff/api/broadcasts/{broadcast}/report.csv", report)
    app.router.add_post("/staff/api/broadcasts/{broadcast}/{action}", act)
