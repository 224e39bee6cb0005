"""Builds the aiohttp application and starts it; mounts the sandbox registry when no REGISTRY_URL is set."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from bot import identities, metrics
from bot.broadcasts import setup_broadcasts
from bot.config import Settings
from bot.i18n import Catalog
from bot.runtime import Runtime, build_sms
from bot.scheduled import register_jobs
from bot.staff import setup_staff
from bot.storage import Database, storage_unavailable, utcnow
from bot.structured_logs import AccessLogger
from bot.vault import Vault
from bot.web import chat, guard, ops, registry_callback
from bot.web.chat import MAX_BODY, RUNTIME
from dialogs.model import Msg
from integrations.registry import RegistryClient

log = logging.getLogger(__name__)

SANDBOX_REGISTRY_PATH = "/sandbox/registry"


@web.middleware
async def error_middleware(request: web.Request,
                           handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except Exception as exc:
        if storage_unavailable(exc):
            # Not our bug: the database is down or restarting. 503 makes Telegram and WeChat deliver again, and
            # the inbox makes that delivery count once.
            log.warning("storage unavailable", extra={"error": type(exc).__name__})
            rt = request.app.get(RUNTIME)
            text = rt.catalog.render(Msg("web.error.storage_down"), "zh_CN") if rt else "storage unavailable"
            return web.json_response({"error": "unavailable",
                                      "messages": [{"text": text, "choices": [], "error": True}]},
                                     status=503, headers={"Retry-After": "5"})
        # The route's pattern, never the path: a web chat path carries the session id, a bearer token.
        resource = request.match_info.route.resource
        log.exception("unhandled error", extra={"route": resource.canonical if resource is not None else "?"})
        rt = request.app.get(RUNTIME)
        text = rt.catalog.render(Msg("web.error.internal"), "zh_CN") if rt else "internal error"
        return web.json_response({"error": "internal", "messages": [{"text": text, "choices": [], "error": True}]},
                                 status=500)


def create_app(settings: Settings) -> web.Application:
    guard.refuse_unsafe_start(settings)  # the sandbox opt-in contract (bot/web/guard.py)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    db = Database(settings.resolved_database_url())
    registry_url = settings.registry_url or f"http://127.0.0.1:{settings.port}{SANDBOX_REGISTRY_PATH}"
    rt = Runtime(settings=settings, db=db, vault=Vault(settings.resolved_secret()), catalog=Catalog.load(),
                 sms=build_sms(settings), registry=RegistryClient(registry_url, timeout=settings.registry_timeout,
                                                                  token=settings.resolved_registry_token()))
    app = web.Application(client_max_size=MAX_BODY,
                          middlewares=[error_middleware, guard.body_deadline(settings.http_body_timeout)])
    app[RUNTIME] = rt
    app[chat.CODE_GATE] = chat.CodeGate()
    app.on_response_prepare.append(guard.security_headers)

    async def lifecycle(_app: web.Application) -> AsyncIterator[None]:
        # A cleanup context, not an on_startup/on_cleanup pair: when a later start step fails (a channel's setting
        # the platform refuses), aiohttp still runs the part after `yield`, so the scheduler does not outlive the
        # failed start (and the loop's close does not wait on it).
        await db.create_all()
        await identities.rekey(db, rt.vault)  # rows from before channel ids were sealed; a no-op after
        register_jobs(rt)
        await rt.jobs.schedule("retention.purge", "retention.purge", {}, utcnow())
        await rt.jobs.schedule("unbind.sweep", "unbind.sweep", {}, utcnow())
        rt.background.append(asyncio.create_task(rt.jobs.run_forever(settings.scheduler_poll_seconds)))
        yield
        for task in rt.background:
            task.cancel()
        await asyncio.gather(*rt.background, return_exceptions=True)
        try:
            await rt.jobs.hand_back()
        except Exception:
            log.exception("could not hand back claimed jobs; their leases will run out instead")
        await rt.close()

    app.cleanup_ctx.append(lifecycle)
    chat.routes(app)
    ops.routes(app, sandbox_sms_enabled=rt.sandbox_sms is not None)
    registry_callback.routes(app)
    metrics.routes(app, db, settings.metrics_token)
    setup_staff(app, rt)  # the staff console at /staff and the tickets behind the handoff dialog
    if settings.telegram_bot_token:
        from bot.channels.telegram import setup_telegram

        setup_telegram(app, rt)
    if settings.wechat_token:
        from bot.channels.wechat import setup_wechat

        setup_wechat(app, rt)
    # Broadcasts (issue 14): the service for the console and the engine that sends, through the channels above.
    setup_broadcasts(app, rt)
    if settings.embedded_registry:
        from integrations.sandbox_registry.app import create_app as create_sandbox

        app.add_subapp(SANDBOX_REGISTRY_PATH, create_sandbox(
            str(settings.data_dir / "sandbox-registry.sqlite3"), callback_secret=settings.resolved_callback_secret(),
            processing_after=settings.sandbox_processing_seconds, done_after=settings.sandbox_done_seconds,
            # Callbacks go to this bot's own callback URL and nowhere else (not any port on localhost).
            callback_url=lambda: rt.callback_url, api_token=settings.resolved_registry_token()))
    return app


def tune_gc() -> None:
    """Freezes what startup built (catalogs, modules, the directory) out of the collector and makes young
    collections rarer: collector pauses were the p99 spikes under load (bench/telegram_webhook.py)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 50, 100)


@dataclass
class RunningServer:
    app: web.Application
    runner: web.AppRunner
    port: int

    @property
    def runtime(self) -> Runtime:
        return self.app[RUNTIME]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def stop(self) -> None:
        await self.runner.cleanup()


async def start_server(settings: Settings) -> RunningServer:
    app = create_app(settings)
    # keepalive_timeout also closes a connection that has not finished its first request's headers in time
    # (aiohttp arms it at connection start): the slow-header guard.
    runner = web.AppRunner(app, access_log_class=AccessLogger, keepalive_timeout=settings.http_header_timeout)
    try:
        await runner.setup()
        assert runner.server is not None
        guard.cap_connections(runner.server, settings.max_connections_per_address, settings.trusted_proxies)
        guard.throttle_asyncio_log()
        site = web.TCPSite(runner, settings.host, settings.port)
        await site.start()
        port = int(runner.addresses[0][1])
        await serving(app, settings, port)
    except BaseException:
        # A start that fails half-way (a setting a platform refuses, a port in use) stops what the steps before it
        # started (the job scheduler, sessions, the database), and the failure is what the caller sees.
        try:
            await runner.cleanup()
        except Exception:
            log.exception("cleanup after a failed start")
        raise
    return RunningServer(app, runner, port)


async def serving(app: web.Application, settings: Settings, port: int) -> None:
    """What can be known only once the port is bound: the embedded registry's URL and our callback URL."""
    rt = app[RUNTIME]
    if settings.embedded_registry and port != settings.port:
        await rt.registry.close()
        rt.registry = RegistryClient(f"http://127.0.0.1:{port}{SANDBOX_REGISTRY_PATH}",
                                     timeout=settings.registry_timeout, token=settings.resolved_registry_token())
    tune_gc()
    rt.callback_url = (settings.public_base_url.rstrip("/") or f"http://127.0.0.1:{port}") + "/registry/callback"
    log.info("serving", extra={"host": settings.host, "port": port, "registry": "sandbox" if
                               settings.embedded_registry else "remote", "sms": rt.sms.name})
