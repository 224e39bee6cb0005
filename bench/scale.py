"""Past one process: web chat steps/s with 1 and 2 gunicorn workers on PostgreSQL (`python -m bot serve`), and
the same single process on PostgreSQL against SQLite, all in one run on this machine.

Usage: .venv/bin/python bench/scale.py [--seconds 6] [--repeats 3] [--inflight 64] [--users 300]
Needs PostgreSQL on 127.0.0.1:5432 (trust auth). Each configuration gets a fresh database; the registry is the
standalone sandbox in every configuration, so only the worker count and the database differ. The closed-loop
figure is the median of the repeats; the ratios are what matter on a shared 2-core machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import uuid
from pathlib import Path

import aiohttp
import asyncpg
from loadgen import closed_loop, free_port, wait_ready

ROOT = Path(__file__).resolve().parent.parent
ADMIN_DSN = os.environ.get("TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
TOKEN = "bench-scale-registry-token"


async def measure(label: str, command: list[str], env: dict[str, str], args: argparse.Namespace) -> float:
    port = free_port()
    full_env = {**os.environ, **env, "PORT": str(port), "HOST": "127.0.0.1", "LOG_LEVEL": "WARNING"}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "bot", *command, cwd=ROOT, env=full_env,
                                                stdout=asyncio.subprocess.DEVNULL,
                                                stderr=asyncio.subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        await wait_ready(base + "/readyz", proc)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=args.inflight * 2)) as http:
            sessions = []
            for _ in range(args.users):
                async with http.post(f"{base}/chat/api/sessions", json={}) as r:
                    sessions.append((await r.json())["session"])
            counter = iter(range(10**9))

            async def send(i: int) -> bool:
                session = sessions[i % len(sessions)]
                body = {"id": f"s{next(counter)}", "text": "/menu"}
                try:
                    async with http.post(f"{base}/chat/api/sessions/{session}/messages", json=body) as r:
                        await r.read()
                        return r.status == 200
                except aiohttp.ClientError:
                    return False

            await closed_loop(args.inflight, 1.0, send)  # warm-up: connections, caches, JIT-free Python paths
            runs = [await closed_loop(args.inflight, args.seconds, send) for _ in range(args.repeats)]
    finally:
        proc.terminate()
        await proc.wait()
    median = statistics.median(runs)
    print(f"{label:<34} {median:8.0f} steps/s   runs: {', '.join(f'{r:.0f}' for r in runs)}", flush=True)
    return median


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--inflight", type=int, default=64)
    parser.add_argument("--users", type=int, default=300)
    args = parser.parse_args()
    admin = await asyncpg.connect(ADMIN_DSN)
    registry_port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        registry = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "integrations.sandbox_registry", "--port", str(registry_port),
            "--db", f"{tmp}/registry.sqlite3", cwd=ROOT, env={**os.environ, "SANDBOX_REGISTRY_TOKEN": TOKEN},
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        await wait_ready(f"http://127.0.0.1:{registry_port}/v1/health", registry)
        common = {"REGISTRY_URL": f"http://127.0.0.1:{registry_port}", "REGISTRY_TOKEN": TOKEN,
                  "SECRET_KEY": "bench-scale",
                  # One load generator on loopback stands for many users: lift the per-address limits.
                  "WEB_SESSIONS_PER_MINUTE": "1000000", "WEB_SESSIONS_PER_HOUR": "1000000",
                  "MAX_CONNECTIONS_PER_ADDRESS": "100000"}
        figures: dict[str, float] = {}
        databases = []
        try:
            for label, command, database in (
                ("SQLite, 1 process (run)", ["run"], "sqlite"),
                ("PostgreSQL, 1 process (run)", ["run"], "pg"),
                ("PostgreSQL, 1 worker (serve)", ["serve", "--workers", "1"], "pg"),
                ("PostgreSQL, 2 workers (serve)", ["serve", "--workers", "2"], "pg"),
            ):
                data_dir = tempfile.mkdtemp(dir=tmp)
                env = {**common, "DATA_DIR": data_dir}
                if database == "pg":
                    name = f"haoqing_bench_{uuid.uuid4().hex[:8]}"
                    await admin.execute(f'CREATE DATABASE "{name}"')
                    databases.append(name)
                    env["DATABASE_URL"] = ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://",
                                                                               "postgresql+asyncpg://") + "/" + name
                figures[label] = await measure(label, command, env, args)
        finally:
            registry.terminate()
            await registry.wait()
            for name in databases:
                await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await admin.close()
    one, two = figures["PostgreSQL, 1 worker (serve)"], figures["PostgreSQL, 2 workers (serve)"]
    print(f"\n2 workers / 1 worker on PostgreSQL: x{two / one:.2f}   (target >= 1.7)")
    pg, sqlite = figures["PostgreSQL, 1 process (run)"], figures["SQLite, 1 process (run)"]
    print(f"PostgreSQL / SQLite, one process:   x{pg / sqlite:.2f}")


if __name__ == "__main__":
    asyncio.run(main())
