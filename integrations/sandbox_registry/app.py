"""The sandbox binding registry as an aiohttp application: the reference implementation of docs/registry-api.yaml.

It never logs a full phone number, name or ID number, and never lets an unbind reach the current tenure.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import json
import logging
import re
import unicodedata
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime
from typing import Any, TypeVar
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from domain.masking import mask_phone
from integrations.registry import SIGNATURE_HEADER, sign_callback
from integrations.sandbox_registry.platforms import PLATFORMS
from integrations.sandbox_registry.store import DEMO_KINDS, CreateOutcome, DemoKind, DueCallback, RegistryStore

log = logging.getLogger(__name__)

T = TypeVar("T")

_PHONE_RE = re.compile(r"1[3-9][0-9]{9}")
_ANY_PHONE_RE = re.compile(r"(?<![0-9])(1[3-9][0-9])[0-9]{4}([0-9]{4})(?![0-9])")
_DATE_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_MONTH_RE = re.compile(r"[0-9]{4}-(0[1-9]|1[0-2])")
_KEY_RE = re.compile(r"[\x21-\x7e]{1,255}")
_MAX_PLATFORMS = 64
_MAX_TEXT = 64
_TAG_KINDS = ("new_holder", "clear_harassment")
_DEMO_KINDS: dict[str, DemoKind] = {k: k for k in DEMO_KINDS}
_dumps = functools.partial(json.dumps, ensure_ascii=False)


class SandboxRegistry:
    """Runtime state of one mounted sandbox: the store, its worker thread, the ticker and callback sender."""

    def __init__(
        self,
        db_path: str,
        *,
        seed: int,
        clock: Callable[[], datetime],
        callback_secret: str,
        processing_after: float,
        done_after: float,
        tick_seconds: float,
        callback_hosts: Collection[str] | None,
        callback_url: Callable[[], str | None] | None = None,
    ) -> None:
        if not 0 <= processing_after <= done_after:
            raise ValueError("need 0 <= processing_after <= done_after")
        self.store = RegistryStore(db_path, seed)
        self._clock = clock
        self.callback_secret = callback_secret
        self.processing_after = processing_after
        self.done_after = done_after
        self.tick_seconds = tick_seconds
        self.callback_hosts = None if callback_hosts is None else frozenset(h.lower() for h in callback_hosts)
        # When mounted inside the bot: the bot's own callback URL, the only place callbacks may go.
        self.callback_url = callback_url
        # One worker thread: SQLite work is serialised without locks, and the event loop never blocks on it.
        self._executor: ThreadPoolExecutor | None = None
        self._session: aiohttp.ClientSession | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    def now(self) -> datetime:
        value = self._clock()
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        if self._executor is None:
            raise RuntimeError("sandbox registry is not started")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    async def start(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sandbox-registry")
        try:
            await self.run(self.store.open)
        except BaseException:
            # cleanup_ctx skips the cleanup half when startup fails, so the thread must go here.
            self._executor.shutdown(wait=False)
            self._executor = None
            raise
        if self.store.built_in is not None:
            log.info("sandbox registry: built population (seed %d) in %.2f s", self.store.seed, self.store.built_in)
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
        self._ticker = asyncio.create_task(self._tick_loop(), name="sandbox-registry-ticker")

    async def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
            self._ticker = None
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._executor is not None:
            await self.run(self.store.close)
            self._executor.shutdown(wait=True)
            self._executor = None

    def wake(self) -> None:
        self._wake.set()

    async def _tick_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.tick_seconds)
            self._wake.clear()
            try:
                await self.tick()
            except Exception:
                # A bad tick must not stop later ones; the next tick retries the same work.
                log.exception("sandbox registry: tick failed")

    async def tick(self) -> None:
        """Advances every open request and sends the callbacks that are due."""
        await self.run(self.store.advance, self.now(), self.processing_after, self.done_after)
        for due in await self.run(self.store.due_callbacks, self.now()):
            await self._deliver(due)

    async def _deliver(self, due: DueCallback) -> None:
        assert self._session is not None
        body = _dumps(due.payload).encode("utf-8")
        now = self.now()
        header = sign_callback(self.callback_secret, body, int(now.timestamp()))
        delivered = False
        try:
            async with self._session.post(
                due.url, data=body, allow_redirects=False,
                headers={"Content-Type": "application/json", SIGNATURE_HEADER: header},
            ) as response:
                delivered = 200 <= response.status < 300
                outcome = str(response.status)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            outcome = type(exc).__name__
        keep_trying = await self.run(self.store.callback_result, due.request_id, due.status, delivered, now)
        if not delivered:
            log.warning("sandbox registry: callback for %s (%s) failed: %s%s", due.request_id, due.status, outcome,
                        "" if keep_trying else "; giving up")


REGISTRY_KEY = web.AppKey("sandbox_registry", SandboxRegistry)


class MaskingAccessLogger(AbstractAccessLogger):
    """Access log lines with every mobile number in the path masked; paths here carry numbers."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        path = _ANY_PHONE_RE.sub(r"\1****\2", request.path_qs)
        self.logger.info("%s %s %s %d %.3fs", request.remote, request.method, path, response.status, time)


def create_app(
    db_path: str,
    *,
    seed: int = 20211101,
    clock: Callable[[], datetime] | None = None,
    callback_secret: str = "sandbox-callback-secret",  # noqa: S107 - public sandbox default, by design
    processing_after: float = 60.0,
    done_after: float = 300.0,
    tick_seconds: float = 1.0,
    callback_hosts: Collection[str] | None = None,
    callback_url: Callable[[], str | None] | None = None,
    api_token: str = "",
) -> web.Application:
    """The sandbox registry; mount it anywhere (routes are relative) or serve it on its own.

    `callback_hosts`, when given, is the only set of hosts status callbacks may go to, and `callback_url`
    the only URL (mounted in the bot: its own callback route): without them anyone who reaches the sandbox can
    make this server POST to arbitrary URLs. `api_token`, when set, is required as `Authorization: Bearer` on
    every /v1 route except health (the standalone sandbox always sets one).
    """
    registry = SandboxRegistry(
        db_path,
        seed=seed,
        clock=clock or (lambda: datetime.now(UTC)),
        callback_secret=callback_secret,
        processing_after=processing_after,
        done_after=done_after,
        tick_seconds=tick_seconds,
        callback_hosts=callback_hosts,
        callback_url=callback_url,
    )
    app = web.Application(middlewares=[_json_errors, _bearer(api_token)])
    app[REGISTRY_KEY] = registry
    app.cleanup_ctx.append(_lifecycle)
    app.router.add_get("/v1/health", _health)
    app.router.add_get("/v1/platforms", _platforms)
    app.router.add_get("/v1/numbers/{phone}", _number)
    app.router.add_post("/v1/numbers/{phone}/holder-check", _holder_check)
    app.router.add_get("/v1/numbers/{phone}/bindings", _bindings)
    app.router.add_get("/v1/numbers/{phone}/recycle-check", _recycle_check)
    app.router.add_post("/v1/numbers/{phone}/tags", _create_tag)
    app.router.add_get("/v1/tags/{code}", _get_tag)
    app.router.add_post("/v1/unbind-requests", _create_unbind)
    app.router.add_get("/v1/unbind-requests/{request_id}", _get_unbind)
    app.router.add_get("/numbers", _demo_numbers)
    return app


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    registry = app[REGISTRY_KEY]
    await registry.start()
    try:
        yield
    finally:
        await registry.stop()


def _error(status: int, code: str, **extra: Any) -> web.Response:
    return web.json_response({"error": code, **extra}, status=status, dumps=_dumps)


def _ok(body: Any, status: int = 200) -> web.Response:
    return web.json_response(body, status=status, dumps=_dumps)


_HTTP_ERRORS = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}


@web.middleware
async def _json_errors(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                       ) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _error(exc.status, _HTTP_ERRORS.get(exc.status, "http_error"))
    except Exception:
        # The route pattern, not the path: the path holds the phone number.
        log.exception("sandbox registry: %s %s failed", request.method, request.match_info.route.resource)
        return _error(500, "internal")


def _bearer(token: str) -> Callable[..., Any]:
    """Refuses every /v1 call but health without the token; the demo listing (/numbers) stays open."""

    @web.middleware
    async def middleware(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                         ) -> web.StreamResponse:
        if token and "/v1/" in request.path and not request.path.endswith("/v1/health"):
            given = request.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                return _error(401, "unauthorized")
        return await handler(request)

    return middleware


def _registry(request: web.Request) -> SandboxRegistry:
    return request.app[REGISTRY_KEY]


def _phone(request: web.Request) -> str | None:
    phone = request.match_info["phone"]
    return phone if _PHONE_RE.fullmatch(phone) else None


async def _json_object(request: web.Request) -> dict[str, Any] | None:
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError):
        return None
    return body if isinstance(body, dict) else None


def _parse_date(value: Any) -> date | None:
    if not isinstance(value, str) or not _DATE_RE.fullmatch(value):
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        return None


def _normalise_name(value: str) -> str:
    return "".join(unicodedata.normalize("NFKC", value).split())


def _normalise_id(value: str) -> str:
    return "".join(unicodedata.normalize("NFKC", value).split()).upper()


async def _health(request: web.Request) -> web.Response:
    return _ok({"ok": True})


async def _platforms(request: web.Request) -> web.Response:
    return _ok({"platforms": [p.as_json() for p in PLATFORMS]})


async def _number(request: web.Request) -> web.Response:
    phone = _phone(request)
    if phone is None:
        return _error(400, "bad_phone")
    row = await _registry(request).run(_registry(request).store.number, phone)
    if row is None:
        return _error(404, "unknown_number")
    return _ok({
        "phone": row["phone"],
        "status": row["status"],
        "carrier": row["carrier"],
        "virtual_operator": bool(row["virtual_operator"]),
        "original_carrier": row["original_carrier"],
        "ported": row["ported_at"] is not None,
        "ported_at": row["ported_at"],
        "tenure_start": row["tenure_start"] if row["status"] == "assigned" else None,
        "previous_tenures": {"count": row["previous_tenures"], "last_released": row["last_released"]},
        "tagged": bool(row["tagged"]),
    })


async def _holder_check(request: web.Request) -> web.Response:
    phone = _phone(request)
    if phone is None:
        return _error(400, "bad_phone")
    body = await _json_object(request)
    name = body.get("name") if body else None
    id_number = body.get("id_number") if body else None
    if not isinstance(name, str) or not isinstance(id_number, str) or len(name) > _MAX_TEXT \
            or len(id_number) > _MAX_TEXT:
        return _error(400, "bad_request")
    registry = _registry(request)
    row = await registry.run(registry.store.number, phone)
    holder_name = row["holder_name"] if row is not None else None
    holder_id = row["holder_id"] if row is not None else None
    # Compare against a dummy when there is no holder so the answer takes the same path either way.
    name_ok = hmac.compare_digest(_normalise_name(name).encode(), _normalise_name(holder_name or "\0").encode())
    id_ok = hmac.compare_digest(_normalise_id(id_number).encode(), _normalise_id(holder_id or "\0").encode())
    return _ok({"match": bool(name_ok & id_ok) and holder_name is not None})


async def _bindings(request: web.Request) -> web.Response:
    phone = _phone(request)
    if phone is None:
        return _error(400, "bad_phone")
    registry = _registry(request)
    row = await registry.run(registry.store.number, phone)
    if row is None:
        return _error(404, "unknown_number")
    tenure_start = row["tenure_start"] if row["status"] == "assigned" else None
    start = date.fromisoformat(tenure_start) if tenure_start else None
    active = await registry.run(registry.store.active_bindings, phone)
    return _ok({
        "tenure_start": tenure_start,
        "bindings": [
            {
                "platform": b.platform,
                "bound_month": b.bound_on.strftime("%Y-%m"),
                "tenure": "previous" if start is None or b.bound_on < start else "current",
            }
            for b in active
        ],
    })


async def _recycle_check(request: web.Request) -> web.Response:
    phone = _phone(request)
    if phone is None:
        return _error(400, "bad_phone")
    registry = _registry(request)
    return _ok(await registry.run(registry.store.recycle_check, phone, registry.now().date()))


async def _demo_numbers(request: web.Request) -> web.Response:
    kind = _DEMO_KINDS.get(request.query.get("kind", ""))
    if kind is None:
        return _error(400, "bad_kind", kinds=list(DEMO_KINDS))
    raw_limit = request.query.get("limit", "10")
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= 100:
        return _error(400, "bad_limit")
    registry = _registry(request)
    return _ok(await registry.run(registry.store.demo_numbers, kind, int(raw_limit)))


def _callback_allowed(registry: SandboxRegistry, url: str) -> bool:
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return False
    if registry.callback_url is not None:
        own = registry.callback_url()
        return own is not None and url == own
    return registry.callback_hosts is None or parts.hostname.lower() in registry.callback_hosts


async def _create_unbind(request: web.Request) -> web.Response:
    key = request.headers.get("Idempotency-Key", "")
    if not _KEY_RE.fullmatch(key):
        return _error(400, "idempotency_key_required")
    body = await _json_object(request)
    if body is None:
        return _error(400, "bad_request")
    phone = body.get("phone")
    if not isinstance(phone, str) or not _PHONE_RE.fullmatch(phone):
        return _error(400, "bad_phone")
    platforms = body.get("platforms")
    if not isinstance(platforms, list) or not platforms or len(platforms) > _MAX_PLATFORMS \
            or not all(isinstance(p, str) and 0 < len(p) <= _MAX_TEXT for p in platforms):
        return _error(400, "bad_platforms")
    tenure_start = _parse_date(body.get("requester_tenure_start"))
    if tenure_start is None:
        return _error(400, "bad_tenure_start")
    callback_url = body.get("callback_url")
    registry = _registry(request)
    if callback_url is not None and (
        not isinstance(callback_url, str) or len(callback_url) > 2048 or not _callback_allowed(registry, callback_url)
    ):
        return _error(400, "bad_callback_url")
    outcome: CreateOutcome = await registry.run(
        registry.store.create_unbind,
        idempotency_key=key,
        phone=phone,
        platforms=platforms,
        requester_tenure_start=tenure_start,
        callback_url=callback_url,
        now=registry.now(),
    )
    if outcome.kind == "created":
        log.info("sandbox registry: unbind request %s for %s", (outcome.body or {}).get("id"), mask_phone(phone))
        return _ok(outcome.body, status=201)
    if outcome.kind == "replayed":
        return _ok(outcome.body)
    if outcome.kind == "refused":
        return _ok(outcome.body, status=422)
    if outcome.kind == "conflict":
        return _error(409, "idempotency_key_reused")
    if outcome.kind == "unknown":
        return _error(404, "unknown_number")
    return _error(409, "not_assigned")


async def _get_unbind(request: web.Request) -> web.Response:
    registry = _registry(request)
    request_id = request.match_info["request_id"]
    changed = await registry.run(
        registry.store.advance, registry.now(), registry.processing_after, registry.done_after, request_id
    )
    if changed:
        # The callback goes out from the ticker, so a slow receiver never delays this answer.
        registry.wake()
    view = await registry.run(registry.store.request_view, request_id)
    if view is None:
        return _error(404, "unknown_request")
    return _ok(view)


async def _create_tag(request: web.Request) -> web.Response:
    phone = _phone(request)
    if phone is None:
        return _error(400, "bad_phone")
    body = await _json_object(request)
    kind = body.get("kind") if body else None
    since = body.get("since") if body else None
    if kind not in _TAG_KINDS:
        return _error(400, "bad_kind", kinds=list(_TAG_KINDS))
    if not isinstance(since, str) or not _MONTH_RE.fullmatch(since):
        return _error(400, "bad_since")
    registry = _registry(request)
    row = await registry.run(registry.store.number, phone)
    if row is None:
        return _error(404, "unknown_number")
    if row["status"] != "assigned" or row["tenure_start"] is None:
        return _error(409, "not_assigned")
    now = registry.now()
    # A tag vouches for the current holder, so it cannot reach back before their tenure or into the future.
    if since < row["tenure_start"][:7] or since > now.strftime("%Y-%m"):
        return _error(422, "since_outside_tenure")
    key = request.headers.get("Idempotency-Key") or None
    if key is not None and not (len(key) <= 255 and key.isascii() and key.isprintable()):
        return _error(400, "bad_idempotency_key")
    created, tag = await registry.run(registry.store.create_tag, phone, str(kind), since, now, key)
    return _ok(tag, status=201 if created else 200)


async def _get_tag(request: web.Request) -> web.Response:
    code = request.match_info["code"].upper()
    registry = _registry(request)
    tag = await registry.run(registry.store.tag, code)
    if tag is None:
        return _error(404, "unknown_tag")
    return _ok(tag)
