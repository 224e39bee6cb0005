"""Command line: `python -m bot run` serves the bot; `python -m bot diagram` prints the dialog diagram;
`python -m bot migration "what changed"` writes a new Alembic revision from the models;
`python -m bot wechat-menu` creates the WeChat official account's custom menu;
`python -m bot staff add NAME --role staff|admin` (and list, disable, enable, passwd, link) manages staff accounts;
`python -m bot serve --workers N` runs N workers under gunicorn (PostgreSQL);
`python -m bot broadcast create|start|pause|resume|status|report` manages broadcasts."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from bot.config import ConfigurationError, Settings
from bot.structured_logs import configure


async def _run(settings: Settings) -> None:
    from bot.server import start_server

    if settings.embedded_registry and not (settings.data_dir / "sandbox-registry.sqlite3").exists():
        print("[run] first start in this data folder: building the sandbox registry's demo numbers …", flush=True)
    server = await start_server(settings)
    print(await _ready_message(server.url, settings), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop()


async def _ready_message(url: str, settings: Settings) -> str:
    """What to do next: where to open the chat and, with the sandbox, a number to try and where its codes go."""
    lines = [f"Haoqing is ready: open {url}/ (web chat). Ctrl+C stops it."]
    if settings.embedded_registry:
        import aiohttp

        demo = ""
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3)) as session, \
                    session.get(f"{url}/sandbox/registry/numbers", params={"kind": "recycled"}) as answer:
                numbers = await answer.json() if answer.status == 200 else []
            demo = str(numbers[0]["phone"]) if numbers else ""
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError):
            pass  # the hint is a courtesy; the server itself is up either way
        if demo:
            lines.append(f"  Try the demo number {demo}: in the chat, choose the number lookup, agree, enter it.")
            lines.append(f"  The codes the sandbox SMS gateway \"sent\": {url}/sandbox/sms?phone={demo}")
        lines.append(f"  More demo numbers and their synthetic holders: {url}/sandbox/registry/numbers?kind=recycled")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["staff"]:
        # Staff console accounts (issue 13): add, list, disable, enable, passwd, link (bot/staff/cli.py).
        from bot.staff.cli import main as staff_main

        return staff_main(argv[1:])
    if argv[:1] == ["broadcast"]:
        # Broadcasts (issue 14): create, start, pause, resume, status, report (bot/broadcast_cli.py).
        from bot.broadcast_cli import main as broadcast_main

        return broadcast_main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m bot")
    # `staff` and `broadcast` are handled above (its own sub-commands); listed here so --help shows it.
    parser.add_argument("command", choices=["run", "serve", "diagram", "migration", "wechat-menu", "staff",
                                            "broadcast"])
    parser.add_argument("message", nargs="?", default="", help="migration: what the new revision changes")
    parser.add_argument("--workers", type=int, default=2, help="serve: worker processes (PostgreSQL needed past 1)")
    args = parser.parse_args(argv)
    if args.command == "migration":
        return _new_migration(args.message or "schema change")
    if args.command == "diagram":
        from dialogs.machine import mermaid

        sys.stdout.write(mermaid())
        return 0
    settings = Settings()
    configure(settings.log_level, settings.log_file, access=settings.access_log)
    # Alembic announces every plugin and revision at INFO on each start; only its warnings say anything.
    logging.getLogger("alembic").setLevel(max(logging.WARNING, logging.getLogger().level))
    if args.command == "wechat-menu":
        return _wechat_menu(settings)
    if args.command == "serve":
        from bot.workers import serve

        return serve(settings, args.workers)
    from bot.loops import run_until_done

    try:
        run_until_done(settings, _run(settings))
    except ConfigurationError as exc:
        # A setting that cannot work: say which, without a traceback, and fail the start.
        print(f"Haoqing cannot start: {exc}", file=sys.stderr)
        return 2
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
