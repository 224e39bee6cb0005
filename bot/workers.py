"""`python -m bot serve --workers N`: N identical worker processes on one port, under gunicorn with aiohttp's
worker class. No home-made process manager: gunicorn forks, restarts a dead worker and drains on SIGTERM.

Workers share nothing in memory. What must be shared lives in PostgreSQL (state, jobs, per-user advisory locks,
the WeChat access token, and WeChat nonces without Redis) and, when REDIS_URL is set, Redis (WeChat nonces, live
staff updates, counters).
A configuration that only works in one process (SQLite, long polling, the embedded sandbox) is refused with a
message that names the setting to change.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from aiohttp import web

from bot.config import Settings
from bot.loops import uses_uvloop

log = logging.getLogger(__name__)

GRACEFUL_SECONDS = 10


def problems(settings: Settings, workers: int) -> list[str]:
    """What stops `workers` processes from sharing this configuration; empty when they can."""
    if workers <= 1:
        return []
    found = []
    if not settings.resolved_database_url().startswith("postgresql"):
        found.append("DATABASE_URL: several workers need PostgreSQL (postgresql+asyncpg://…); SQLite serves one "
                     "process (use `python -m bot run`).")
    if settings.embedded_registry:
        found.append("REGISTRY_URL: several workers need one registry; run the sandbox on its own "
                     "(`python -m integrations.sandbox_registry`) or point REGISTRY_URL at the real one.")
    if settings.telegram_bot_token and not settings.telegram_webhook_url:
        found.append("TELEGRAM_WEBHOOK_URL: long polling allows one poller per bot; set a webhook for several "
                     "workers.")
    return found


def prepare_metrics_dir(settings: Settings) -> str:
    """A fresh folder for this run's multiprocess metrics; samples of dead processes must not linger."""
    directory = Path(os.environ.get("PROMETHEUS_MULTIPROC_DIR") or settings.data_dir / "metrics")
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    return str(directory)


async def migrate(settings: Settings) -> None:
    """Runs the migrations once, before any worker starts, so N workers never race to create tables."""
    from bot.storage import Database

    db = Database(settings.resolved_database_url())
    try:
        await db.create_all()
    finally:
        await db.close()


async def worker_app() -> web.AppRunner:
    """The gunicorn worker's application: the same app `python -m bot run` serves."""
    from bot.server import create_app, serving
    from bot.structured_logs import AccessLogger

    settings = Settings()
    app = create_app(settings)
    share_wechat_nonces(app)

    async def bound(_app: web.Application) -> None:
        await serving(app, settings, settings.port)

    app.on_startup.append(bound)
    # Drain in-flight requests for most of the graceful window, leaving time to hand back claimed jobs.
    return web.AppRunner(app, access_log_class=AccessLogger, shutdown_timeout=GRACEFUL_SECONDS * 0.6)


def share_wechat_nonces(app: web.Application) -> None:
    """A replayed WeChat request may reach any worker: without Redis, the nonces seen go to the shared database
    (bot/channels/wechat_crypto.py SharedNonces), not only to this process's memory."""
    from bot.channels.wechat import WECHAT
    from bot.web.chat import RUNTIME

    channel = app.get(WECHAT)
    if channel is not None:
        channel.nonces.share_through(app[RUNTIME].db)


def serve(settings: Settings, workers: int) -> int:
    from gunicorn.app.base import BaseApplication

    found = problems(settings, workers)
    if found:
        for line in found:
            print(f"cannot start {workers} workers: {line}", file=sys.stderr)
        return 2
    metrics_dir = prepare_metrics_dir(settings)
    asyncio.run(migrate(settings))
    level = settings.log_level

    def post_fork(_server: Any, _worker: Any) -> None:
        from bot.structured_logs import configure

        configure(level, settings.log_file, access=settings.access_log)

    def child_exit(_server: Any, worker: Any) -> None:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid, metrics_dir)  # type: ignore[no-untyped-call]

    options = {
        "bind": f"{settings.host}:{settings.port}",
        "workers": workers,
        # The loop EVENT_LOOP names, as `run` uses (bot/loops.py).
        "worker_class": "aiohttp.GunicornUVLoopWebWorker" if uses_uvloop(settings) else "aiohttp.GunicornWebWorker",
        "graceful_timeout": GRACEFUL_SECONDS,
        "timeout": 30,
        "keepalive": 5,
        "accesslog": None,
        "errorlog": "-",
        "loglevel": "warning",
        "post_fork": post_fork,
        "child_exit": child_exit,
        "proc_name": "haoqing",
    }

    class Workers(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            for key, value in options.items():
                self.cfg.set(key, value)

        def load(self) -> Any:
            return worker_app

    print(f"Haoqing: {workers} workers on http://{settings.host}:{settings.port}/", flush=True)
    Workers().run()
    return 0
