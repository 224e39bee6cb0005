"""Builds the aiohttp application and starts it; mounts the sandbox registry when no REGISTRY_URL is set."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from bot.config import Settings
from bot.i18n import Catalog
from bot.runtime import Runtime, build_sms
from bot.scheduled import register_jobs
from bot.storage import Database, utcnow
from bot.vault import Vault
from bot.web import chat, ops, registry_callback
from bot.web.chat import MAX_BODY, RUNTIME
from dialogs.model import Msg
from integrations.registry import RegistryClient
from integrations.sandbox_registry.app import MaskingAccessLogger

log = logging.getLogger(__name__)

SANDBOX_REGISTRY_PATH = "/sandbox/registry"


@web.middleware
async def error_middleware(request: web.Request,
                           handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except Exception:
        # The path may hold a session id but never personal data; the log formatter masks numbers anyway.
        log.exception("unhandled error", extra={"path": request.path})
        rt = request.app.get(RUNTIME)
        text = rt.catalog.render(Msg("web.error.internal"), "zh_CN") if rt else "internal error"
        return web.json_response({"error": "internal", "messages": [{"text": text, "choices": [], "error": True}]},
                                 status=500)


def create_app(settings: Settings) -> web.Application:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    db = Database(settings.resolved_database_url())
    registry_url = settings.registry_url or f"http://127.0.0.1:{settings.port}{SANDBOX_REGISTRY_PATH}"
    rt = Runtime(settings=settings, db=db, vault=Vault(settings.resolved_secret()), catalog=Catalog.load(),
                 sms=build_sms(settings), registry=RegistryClient(registry_url, timeout=settings.registry_timeout))
    app = web.Application(client_max_size=MAX_BODY, middlewares=[error_middleware])
    app[RUNTIME] = rt

    async def startup(_app: web.Application) -> None:
        await db.create_all()
        register_jobs(rt)
        await rt.jobs.schedule("retention.purge", "retention.purge", {}, utcnow())
        await rt.jobs.schedule("unbind.sweep", "unbind.sweep", {}, utcnow())
        rt.background.append(asyncio.create_task(rt.jobs.run_forever(settings.scheduler_poll_seconds)))

    async def cleanup(_app: web.Application) -> None:
        for task in rt.background:
            task.cancel()
        await asyncio.gather(*rt.background, return_exceptions=True)
        await rt.close()

    app.on_startup.append(startup)
    app.on_cleanup.append(cleanup)
    chat.routes(app)
    ops.routes(app, sandbox_sms_enabled=rt.sandbox_sms is not None)
    registry_callback.routes(app)
    if settings.telegram_bot_token:
        from bot.channels.telegram import setup_telegram

        setup_telegram(app, rt)
    if settings.wechat_token:
        from bot.channels.wechat import setup_wechat

        setup_wechat(app, rt)
    if settings.embedded_registry:
        from integrations.sandbox_registry.app import create_app as create_sandbox

        app.add_subapp(SANDBOX_REGISTRY_PATH, create_sandbox(
            str(settings.data_dir / "sandbox-registry.sqlite3"), callback_secret=settings.resolved_callback_secret(),
            processing_after=settings.sandbox_processing_seconds, done_after=settings.sandbox_done_seconds,
            callback_hosts={"127.0.0.1", "localhost"}))
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
    runner = web.AppRunner(app, access_log_class=MaskingAccessLogger)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port)
    await site.start()
    port = int(runner.addresses[0][1])
    rt = app[RUNTIME]
    if settings.embedded_registry and port != settings.port:
        await rt.registry.close()
        rt.registry = RegistryClient(f"http://127.0.0.1:{port}{SANDBOX_REGISTRY_PATH}",
                                     timeout=settings.registry_timeout)
    tune_gc()
    rt.callback_url = (settings.public_base_url.rstrip("/") or f"http://127.0.0.1:{port}") + "/registry/callback"
    log.info("serving", extra={"host": settings.host, "port": port, "registry": "sandbox" if
                               settings.embedded_registry else "remote", "sms": rt.sms.name})
    return RunningServer(app, runner, port)
