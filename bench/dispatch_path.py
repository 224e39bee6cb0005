"""The Telegram update's path inside the bot, without HTTP: CPU per update of parse → handle_update (inbox row,
dialog step, outbox row and inbox answer on SQLite, rendering), with the send stubbed out.

bench/telegram_webhook.py measures the whole webhook against peers, but its load generator, the fake Bot API
and the server share the machine's cores, so one run's figures move by a fifth with whatever else the host
runs. This one runs in one process and counts CPU time (the main thread's and the whole process's, so the
SQLite writer thread is included), which makes a change to the path itself visible: `--base-tree` runs the
same load, in the same run and in alternating rounds, on another checkout (an earlier commit), and the
figures are medians of the rounds.

The load is bench/telegram_webhook.py's two-step flow: `/menu` from a new user, then a tap on "settings";
40 users at a time, as Telegram's default max_connections allows.

Usage: .venv/bin/python bench/dispatch_path.py [--updates 6000] [--rounds 5] [--base-tree PATH]
       (git worktree add /tmp/base <commit> gives PATH)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONCURRENT = 40


async def measure(updates: int) -> tuple[float, float, float]:
    """Runs in the tree under test (sys.path[0]): (µs of process CPU per update, µs of main-thread CPU per update,
    updates/s)."""
    from aiohttp import web

    from bot.channels.telegram import setup_telegram
    from bot.config import Settings
    from bot.server import create_app, tune_gc
    from bot.web.chat import RUNTIME

    sys.path.insert(0, str(Path(sys.path[0]) / "bench"))
    import telegram_webhook as flow

    settings = Settings(_env_file=None, host="127.0.0.1", port=0,  # type: ignore[call-arg]
                        data_dir=Path(tempfile.mkdtemp(prefix="dispatch-bench-")), secret_key="bench",
                        telegram_bot_token=flow.TOKEN, telegram_api_base_url="http://127.0.0.1:9/bot",
                        telegram_webhook_url="https://bench.invalid/telegram/webhook",
                        telegram_webhook_secret=flow.SECRET, log_level="WARNING")
    app = create_app(settings)
    channel = setup_telegram(app, app[RUNTIME])
    assert channel is not None

    async def delivered(_chat_id: int, messages: list[object], **_kw: object) -> list[None]:
        return [None for _ in messages]  # the send is measured in bench/telegram_webhook.py

    channel.sender.deliver = delivered  # type: ignore[method-assign, assignment]
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()  # runs the app's startup: migrations, the step store, the channel's tasks
    tune_gc()
    gate = asyncio.Semaphore(CONCURRENT)

    async def user(n: int) -> None:
        async with gate:
            for body in (flow.menu_update(10 * n, n), flow.click_update(10 * n + 1, n)):
                update = channel.parse(json.loads(body))
                assert update is not None
                await channel.handle_update(update, inline=True)

    await asyncio.gather(*(user(n) for n in range(1, 1 + 400)))  # warm-up
    first = 10_000
    cpu, main, wall = time.process_time(), time.thread_time(), time.perf_counter()
    await asyncio.gather(*(user(n) for n in range(first, first + updates // 2)))
    cpu, main, wall = time.process_time() - cpu, time.thread_time() - main, time.perf_counter() - wall
    await runner.cleanup()
    done = 2 * (updates // 2)
    return 1e6 * cpu / done, 1e6 * main / done, done / wall


def one_round(tree: Path, updates: int) -> tuple[float, float, float]:
    """A fresh process in `tree` (its own imports, its own SQLite file), so neither tree warms the other."""
    out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--measure", str(updates)], cwd=tree,
                         env={**os.environ, "PYTHONPATH": str(tree), "LOG_LEVEL": "WARNING"}, check=True,
                         capture_output=True, text=True).stdout
    cpu, main, rate = (float(x) for x in out.strip().splitlines()[-1].split())
    return cpu, main, rate


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--updates", type=int, default=6000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--base-tree", default="", help="another checkout, measured in alternating rounds")
    parser.add_argument("--measure", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        sys.path.insert(0, os.getcwd())
        # On the loop `make run` ships (EVENT_LOOP, bot/loops.py), as bench/telegram_webhook.py runs ours.
        from bot.config import Settings
        from bot.loops import run_until_done

        figures = run_until_done(Settings(_env_file=None), measure(args.measure))  # type: ignore[call-arg]
        print(*(f"{v:.1f}" for v in figures))
        return
    trees = {"ours": ROOT}
    if args.base_tree:
        trees["base"] = Path(args.base_tree).resolve()
    print(f"# dispatch path: {args.updates} updates a round, {CONCURRENT} users at a time, {args.rounds} rounds; "
          f"{os.cpu_count()} cores")
    figures: dict[str, list[tuple[float, float, float]]] = {name: [] for name in trees}
    for round_no in range(1, args.rounds + 1):
        for name, tree in trees.items():
            cpu, main_cpu, rate = one_round(tree, args.updates)
            figures[name].append((cpu, main_cpu, rate))
            print(f"{name:<5} round {round_no}: {cpu:6.0f} µs CPU/update (main thread {main_cpu:5.0f}), "
                  f"{rate:6.0f} updates/s", flush=True)
    medians = {name: tuple(statistics.median(f[i] for f in rows) for i in range(3)) for name, rows in figures.items()}
    print(f"medians of {args.rounds} rounds:")
    for name, (cpu, main_cpu, rate) in medians.items():
        print(f"{name:<5} {cpu:6.0f} µs CPU/update (main thread {main_cpu:5.0f}), {rate:6.0f} updates/s")
    if "base" in medians:
        ours, base = medians["ours"], medians["base"]
        print(f"ours / base: {base[0] / ours[0]:.2f}x updates per CPU second, {base[1] / ours[1]:.2f}x per main-thread "
              f"CPU second, {ours[2] / base[2]:.2f}x updates/s")


if __name__ == "__main__":
    main()
