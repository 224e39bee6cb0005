"""Web chat steps/s and p50/p99 latency through the HTTP API, on SQLite, against a baseline measured
in the same run (GET /healthz on the same server: the cost of aiohttp alone).

Usage: .venv/bin/python bench/webchat.py [--rates 100,200,400] [--seconds 5] [--users 200]
The server runs in its own process, so the load generator does not share its event loop.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import sys
import tempfile
from pathlib import Path

import aiohttp

# Run as `python bench/webchat.py`, so bench/ is on sys.path.
from loadgen import closed_loop, free_port, open_loop

ROOT = Path(__file__).resolve().parent.parent


async def start_server(data_dir: str, port: int) -> asyncio.subprocess.Process:
    env = {**os.environ, "PORT": str(port), "DATA_DIR": data_dir, "SECRET_KEY": "bench", "LOG_LEVEL": "WARNING",
           # One load generator on loopback stands for many users: lift the per-address limits.
           "WEB_SESSIONS_PER_MINUTE": "1000000", "WEB_SESSIONS_PER_HOUR": "1000000",
           "MAX_CONNECTIONS_PER_ADDRESS": "100000"}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "bot", "run", cwd=ROOT, env=env,
                                                stdout=asyncio.subprocess.DEVNULL)
    async with aiohttp.ClientSession() as http:
        for _ in range(300):
            try:
                async with http.get(f"http://127.0.0.1:{port}/readyz") as r:
                    if r.status == 200:
                        return proc
            except aiohttp.ClientError:
                await asyncio.sleep(0.1)
    raise SystemExit("server did not start")


def sender(http: aiohttp.ClientSession, make_request):
    async def send(i: int) -> bool:
        method, url, body = make_request(i)
        try:
            async with http.request(method, url, json=body) as r:
                await r.read()
                return r.status < 400
        except aiohttp.ClientError:
            return False

    return send


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rates", default="100,200,400")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    port = free_port()
    with tempfile.TemporaryDirectory() as data_dir:
        proc = await start_server(data_dir, port)
        base = f"http://127.0.0.1:{port}"
        try:
            connector = aiohttp.TCPConnector(limit=256)
            async with aiohttp.ClientSession(connector=connector) as http:
                sessions = []
                for _ in range(args.users):
                    async with http.post(f"{base}/chat/api/sessions", json={}) as r:
                        sessions.append((await r.json())["session"])
                counter = iter(range(10**9))

                def step(i: int):
                    # A real step: inbox insert, state load, machine step, state + outbox + inbox commit.
                    s = sessions[i % len(sessions)]
                    return "POST", f"{base}/chat/api/sessions/{s}/messages", {"id": f"b{next(counter)}",
                                                                                "text": "/menu"}

                def health(i: int):
                    return "GET", f"{base}/healthz", None

                print(f"# web chat bench: {args.users} users, {args.seconds:.0f}s per point, "
                      f"median of {args.repeats} runs, server pid {proc.pid}")
                print(f"{'target':<10}{'offered/s':>10}{'achieved/s':>12}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}")
                for rate in [int(r) for r in args.rates.split(",")]:
                    for name, make in (("healthz", health), ("step", step)):
                        runs = [await open_loop(rate, args.seconds, sender(http, make)) for _ in range(args.repeats)]
                        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
                        print(f"{name:<10}{rate:>10}{med['achieved']:>12.0f}{med['p50']:>9.1f}{med['p99']:>9.1f}"
                              f"{med['errors']:>8.0f}")
                peaks = {}
                for name, make in (("healthz", health), ("step", step)):
                    peaks[name] = statistics.median([await closed_loop(32, args.seconds, sender(http, make))
                                                     for _ in range(args.repeats)])
                print(f"closed loop, 32 in flight: healthz {peaks['healthz']:.0f}/s, step {peaks['step']:.0f}/s, "
                      f"step/healthz = {peaks['step'] / peaks['healthz']:.2f}")
        finally:
            proc.send_signal(signal.SIGTERM)
            await proc.wait()


if __name__ == "__main__":
    asyncio.run(main())
