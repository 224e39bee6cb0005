"""The first five minutes, timed: clone → healthy server with a cold and with a warm package cache, and
clone → `make test` done, each against a baseline measured in the same run.

Usage: python3 bench/setup.py [--repeat 3] [--test] [--pip] [--keep]

Each run clones this repository into a scratch folder (uncommitted changes are copied over, so a change can be
timed before it is committed), then runs `make run` on a free port and polls /healthz every 50 ms.
- cold: an empty cache home (XDG_CACHE_HOME), so uv itself is fetched from PyPI and every package downloaded;
- warm: a second clone on the cache the cold run filled (packages, and the byte-code the cold clone compiled in
  the background, waited for first), as on a developer's machine after the first clone;
- pip (--pip): cold, with HAOQING_INSTALLER=pip, the fallback when uv cannot be had;
- test (--test): a warm clone's `make test`, start to finish.
The baseline is the floor any server here pays: a bare aiohttp app from the warm clone's .venv, start to
answering. Figures are medians of --repeat runs (`make test` runs once): wall seconds, and the CPU seconds the
clone, set-up and server used, which other work on the two cores moves far less (the load average is printed).
Standard library only; run it with the Python that `make` would use.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import bytecode  # noqa: E402  (scripts/bytecode.py: the machine's byte-code store)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clone(dest: Path) -> None:
    """A clone of HEAD plus the working tree's uncommitted and untracked (not ignored) files."""
    subprocess.run(["git", "clone", "--quiet", "--no-hardlinks", str(ROOT), str(dest)], check=True)
    listed = subprocess.run(["git", "ls-files", "-z", "--modified", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    deleted = subprocess.run(["git", "ls-files", "-z", "--deleted"], cwd=ROOT, capture_output=True,
                             check=True).stdout.decode().split("\0")
    for name in filter(None, deleted):
        (dest / name).unlink(missing_ok=True)


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


def until_healthy(cmd: list[str], cwd: Path, env: dict[str, str], port: int, log: Path,
                  limit: float = 600) -> float:
    """Seconds from `started` (the caller's clock) until GET /healthz answers 200; the process is ended after."""
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + limit
            while time.monotonic() < deadline:
                if healthy(f"http://127.0.0.1:{port}/healthz"):
                    return time.monotonic()
                if proc.poll() is not None:
                    raise SystemExit(f"{' '.join(cmd)} exited with {proc.returncode}; see {log}")
                time.sleep(0.05)
            raise SystemExit(f"not healthy after {limit:.0f} s; see {log}")
        finally:
            os.killpg(proc.pid, 15)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def clone_to_healthy(scratch: Path, name: str, cache_home: Path, extra_env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds to healthy, CPU seconds the clone, set-up and server used, up to their exit just after)."""
    dest = scratch / name
    port = free_port()
    env = {**os.environ, "XDG_CACHE_HOME": str(cache_home), "PORT": str(port), **extra_env}
    for key in ("VIRTUAL_ENV", "DATABASE_URL", "REGISTRY_URL", "UV_CACHE_DIR"):
        env.pop(key, None)
    cpu = children_cpu()
    started = time.monotonic()
    clone(dest)
    ready = until_healthy(["make", "run"], dest, env, port, scratch / f"{name}.log")
    return ready - started, children_cpu() - cpu


def baseline(venv_python: Path, scratch: Path) -> float:
    port = free_port()
    app = ("from aiohttp import web\n"
           "app = web.Application()\n"
           "async def ok(_r): return web.json_response({'ok': True})\n"
           "app.router.add_get('/healthz', ok)\n"
           f"web.run_app(app, host='127.0.0.1', port={port}, print=None)\n")
    started = time.monotonic()
    ready = until_healthy([str(venv_python), "-c", app], scratch, dict(os.environ), port, scratch / "baseline.log")
    return ready - started


def load() -> str:
    return "load average " + " ".join(f"{v:.1f}" for v in os.getloadavg())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure (medians quoted)")
    parser.add_argument("--test", action="store_true", help="also time a warm clone's `make test`")
    parser.add_argument("--pip", action="store_true", help="also time the pip fallback, cold")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder (logs, clones)")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="haoqing-setup-bench-"))
    figures: dict[str, list[tuple[float, float]]] = {"cold": [], "warm": [], "pip (cold)": [], "baseline": []}

    def note(label: str, run: int, figure: tuple[float, float]) -> None:
        figures[label].append(figure)
        print(f"run {run + 1}: {label} {figure[0]:.2f} s wall, {figure[1]:.2f} s CPU ({load()})", flush=True)

    try:
        for run in range(args.repeat):
            cache = scratch / f"cache-{run}"
            note("cold", run, clone_to_healthy(scratch, f"cold-{run}", cache, {}))
            # The cold clone's set-up left the machine's byte-code store filling in the background
            # (scripts/bytecode.py); a second clone made minutes or days later finds it complete.
            waited = time.monotonic()
            bytecode.wait_for_fills(cache)
            print(f"run {run + 1}: byte-code store complete {time.monotonic() - waited:.1f} s after that",
                  flush=True)
            note("warm", run, clone_to_healthy(scratch, f"warm-{run}", cache, {}))
            cpu = children_cpu()
            wall = baseline(scratch / f"warm-{run}" / ".venv" / "bin" / "python", scratch)
            note("baseline", run, (wall, children_cpu() - cpu))
            if args.pip:
                note("pip (cold)", run, clone_to_healthy(scratch, f"pip-{run}", scratch / f"pip-cache-{run}",
                                                         {"HAOQING_INSTALLER": "pip"}))
            for leftover in (f"cold-{run}", f"pip-{run}", f"pip-cache-{run}"):
                if not args.keep:
                    shutil.rmtree(scratch / leftover, ignore_errors=True)
        base_wall = statistics.median(w for w, _ in figures["baseline"])
        base_cpu = statistics.median(c for _, c in figures["baseline"])
        print(f"\nclone → healthy, median of {args.repeat} ({load()} at the end):")
        print(f"  {'':<28} {'wall':>8} {'×base':>6}   {'CPU':>7} {'×base':>6}")
        for label in ("baseline", "cold", "warm", "pip (cold)"):
            if figures[label]:
                wall = statistics.median(w for w, _ in figures[label])
                cpu = statistics.median(c for _, c in figures[label])
                title = "baseline: bare aiohttp app" if label == "baseline" else label
                print(f"  {title:<28} {wall:6.2f} s {wall / base_wall:6.1f}   {cpu:5.2f} s {cpu / base_cpu:6.1f}")
        if args.test:
            dest = scratch / "test"
            started = time.monotonic()
            clone(dest)
            env = {**os.environ, "XDG_CACHE_HOME": str(scratch / "cache-0")}
            env.pop("VIRTUAL_ENV", None)
            with (scratch / "test.log").open("w") as out:
                done = subprocess.run(["make", "test"], cwd=dest, env=env, stdout=out, stderr=subprocess.STDOUT)
            took = time.monotonic() - started
            status = "passed" if done.returncode == 0 else f"FAILED ({done.returncode}; see {scratch / 'test.log'})"
            print(f"  {'clone → make test done':<28} {took:6.1f} s {took / base_wall:6.0f}   {status}  ({load()})")
    finally:
        if args.keep or (args.test and "done" in locals() and done.returncode != 0):
            print(f"scratch kept: {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
