"""Command line: `python -m bot run` serves the bot; `python -m bot diagram` prints the dialog diagram;
`python -m bot migration "what changed"` writes a new Alembic revision from the models;
`python -m bot wechat-menu` creates the WeChat official account's custom menu."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from bot.config import Settings
from bot.structured_logs import configure


async def _run(settings: Settings) -> None:
    from bot.server import start_server

    server = await start_server(settings)
    print(f"Haoqing is serving on {server.url}/  (web chat)", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bot")
    parser.add_argument("command", choices=["run", "diagram", "migration", "wechat-menu"])
    parser.add_argument("message", nargs="?", default="", help="migration: what the new revision changes")
    args = parser.parse_args(argv)
    if args.command == "migration":
        return _new_migration(args.message or "schema change")
    if args.command == "diagram":
        from dialogs.machine import mermaid

        sys.stdout.write(mermaid())
        return 0
    settings = Settings()
    configure(settings.log_level, settings.log_file)
    if args.command == "wechat-menu":
        return _wechat_menu(settings)
    asyncio.run(_run(settings))
    return 0


def _wechat_menu(settings: Settings) -> int:
    """Creates the official account's custom menu (CLICK keys mapped to dialog choices)."""
    import json

    from bot.channels.wechat import create_menu
    from bot.channels.wechat_api import WeChatApiError, WeChatUnavailable

    try:
        result = asyncio.run(create_menu(settings))
    except (WeChatApiError, WeChatUnavailable) as exc:
        print(f"wechat-menu failed: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, ensure_ascii=False))
    return 0


def _new_migration(message: str) -> int:
    """Autogenerates a revision by diffing the models against a scratch database at the current head."""
    import tempfile

    from alembic import command
    from sqlalchemy import create_engine

    from bot.storage import _migrate, alembic_config

    with tempfile.TemporaryDirectory() as scratch:
        engine = create_engine(f"sqlite:///{scratch}/scratch.sqlite3")
        with engine.begin() as conn:
            _migrate(conn)
            command.revision(alembic_config(conn), message=message, autogenerate=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
