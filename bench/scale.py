"""Past one process: web chat steps/s with 1 and 2 gunicorn workers on PostgreSQL (`python -m bot serve`), and
the same single process on PostgreSQL against SQLite, all in one run on this machine.

Usage: .venv/bin/python bench/scale.py [--seconds 6] [--repeats 3] [--inflight 64] [--users 300] [--compare DIR]
`--compare DIR` (repeatable) also measures another source tree (say a worktree of the previous commit) in the
same run, each configuration for every tree in turn, so before and after share the machine's mood.
Needs PostgreSQL on 127.0.0.1:5432 (trust auth). Each configuration gets a fresh database; the registry is the
standalone sandbox in every configuration, so only the worker count and the database differ. The closed-loop
figure is the median of the repeats; the ratios are what matter on a shared 2-core machine.

Each line also says where the CPU went per step (Linux /proc): the bot's processes, the PostgreSQL backends
serving this configuration's database, and this load generator. On one machine all three share the cores, so
with w, p and g those costs, 2 workers can reach at most min(2, 2w / (w + p + g)) times 1 worker's
throughput when 1 worker fills a core: the printed bound says how much of a shortfall is the topology's.
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


CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat(pid: str) -> tuple[int, float] | None:
    """(parent pid, CPU seconds) of a process, or None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def cpu_snapshot(root: int, database: str | None) -> tuple[dict[int, float], dict[int, float]]:
    """CPU seconds so far, by process: of `root` and its descendants, and of the PostgreSQL backends serving
    `database`."""
    if not Path("/proc/self/stat").exists():
        return {}, {}
    parents: dict[int, tuple[int, float]] = {}
    backends: dict[int, float] = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        stat = _stat(pid)
        if stat is None:
            continue
        parents[int(pid)] = stat
        if database:
            try:
                title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if title.startswith("postgres:") and f" {database} " in f" {title} ":
                backends[int(pid)] = stat[1]
    tree, grew = {root}, True
    while grew:
        grew = False
        for child, (parent, _cpu) in parents.items():
            if parent in tree and child not in tree:
                tree.add(child)
                grew = True
    return {member: parents[member][1] for member in tree if member in parents}, backends


def spent(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds spent between two snapshots (a process that ended meanwhile counts up to the first)."""
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())


def own_cpu() -> float:
    times = os.times()
    return times.user + times.system


async def measure(label: str, command: list[str], env: dict[str, str], args: argparse.Namespace,
                  database: str | None = None, root: Path = ROOT) -> tuple[float, tuple[float, float, float]]:
    port = free_port()
    full_env = {**os.environ, **env, "PORT": str(port), "HOST": "127.0.0.1", "LOG_LEVEL": "WARNING"}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "bot", *command, cwd=root, env=full_env,
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
            runs = []
            bot_before, db_before = cpu_snapshot(proc.pid, database)
            mine_before = own_cpu()
            for _ in range(args.repeats):
                runs.append(await closed_loop(args.inflight, args.seconds, send))
            bot_after, db_after = cpu_snapshot(proc.pid, database)
            mine_after = own_cpu()
    finally:
        proc.terminate()
        await proc.wait()
    median = statistics.median(runs)
    steps = sum(runs) * args.seconds
    per_step = tuple(1000 * seconds / steps for seconds in (spent(bot_before, bot_after), spent(db_before, db_after),
                                                             mine_after - mine_before))
    print(f"{label:<44} {median:8.0f} steps/s   runs: {', '.join(f'{r:.0f}' for r in runs):<16}"
          f"  CPU ms/step: bot {per_step[0]:.2f}, PostgreSQL {per_step[1]:.2f}, load generator {per_step[2]:.2f}",
          flush=True)
    return median, (per_step[0], per_step[1], per_step[2])


CONFIGURATIONS = (
    ("SQLite, 1 process (run)", ["run"], "sqlite"),
    ("PostgreSQL, 1 process (run)", ["run"], "pg"),
    ("PostgreSQL, 1 worker (serve)", ["serve", "--workers", "1"], "pg"),
    ("PostgreSQL, 2 workers (serve)", ["serve", "--workers", "2"], "pg"),
)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--inflight", type=int, default=64)
    parser.add_argument("--users", type=int, default=300)
    parser.add_argument("--compare", type=Path, action="append", default=[],
                        help="another source tree to measure in the same run")
    args = parser.parse_args()
    trees = [ROOT, *(tree.resolve() for tree in args.compare)]
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
        figures: dict[tuple[Path, str], float] = {}
        costs: dict[tuple[Path, str], tuple[float, float, float]] = {}
        databases = []
        try:
            for (label, command, database), root in ((config, tree) for config in CONFIGURATIONS for tree in trees):
                data_dir = tempfile.mkdtemp(dir=tmp)
                env = {**common, "DATA_DIR": data_dir}
                name = None
                if database == "pg":
                    name = f"haoqing_bench_{uuid.uuid4().hex[:8]}"
                    await admin.execute(f'CREATE DATABASE "{name}"')
                    databases.append(name)
                    env["DATABASE_URL"] = ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://",
                                                                               "postgresql+asyncpg://") + "/" + name
                shown = label if len(trees) == 1 else f"{label} [{root.name}]"
                figures[root, label], costs[root, label] = await measure(shown, command, env, args, name, root)
        finally:
            registry.terminate()
            await registry.wait()
            for name in databases:
                await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await admin.close()
    for root in trees:
        one, two = figures[root, "PostgreSQL, 1 worker (serve)"], figures[root, "PostgreSQL, 2 workers (serve)"]
        w, p, g = costs[root, "PostgreSQL, 1 worker (serve)"]
        bound = min(2.0, 2 * w / (w + p + g)) if w + p + g > 0 else 2.0
        print(f"\n{root.name}:\n2 workers / 1 worker on PostgreSQL: x{two / one:.2f}   (target >= 1.7; this machine's "
              f"bound with PostgreSQL and the load generator on the same {os.cpu_count()} cores: x{bound:.2f})")
        pg, sqlite = figures[root, "PostgreSQL, 1 process (run)"], figures[root, "SQLite, 1 process (run)"]
        print(f"PostgreSQL / SQLite, one process:   x{pg / sqlite:.2f}")


if __name__ == "__main__":
    asyncio.run(main())
