"""Gives a new data folder the sandbox registry's demo population from a per-machine cache, so a fresh clone's
first `make run` does not spend seconds building the same deterministic numbers again.

The cache is keyed by the population's version and seed and built once per machine. The registry checks both
when it opens the file and rebuilds on any mismatch, so a stale copy could cost time, never correctness. Nothing
happens when REGISTRY_URL points at another registry or the data folder has a population already.
With --then-run it goes on to serve, as `python -m bot run` would.
"""

from __future__ import annotations

import inspect
import os
import shutil
import sqlite3
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bot.config import Settings
from integrations.sandbox_registry.app import create_app
from integrations.sandbox_registry.population import POPULATION_VERSION, ensure_population

SANDBOX_FILE = "sandbox-registry.sqlite3"  # where bot/server.py mounts the embedded sandbox's store


def main() -> int:
    settings = Settings()
    target = settings.data_dir / SANDBOX_FILE
    if not settings.embedded_registry or target.exists():
        return 0
    seed = inspect.signature(create_app).parameters["seed"].default
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "haoqing"
    cached = cache / f"sandbox-population-v{POPULATION_VERSION}-seed{seed}.sqlite3"
    if not cached.exists():
        print("[run] sandbox demo numbers: building them once for this machine …", flush=True)
        cache.mkdir(parents=True, exist_ok=True)
        scratch = cached.with_name(f"{cached.name}.partial-{os.getpid()}")
        conn = sqlite3.connect(scratch, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            ensure_population(conn, seed)
        finally:
            conn.close()  # the last close checkpoints the WAL into the one file
        os.replace(scratch, cached)
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = target.with_name(f"{target.name}.partial-{os.getpid()}")
    shutil.copyfile(cached, scratch)
    os.replace(scratch, target)
    return 0


if __name__ == "__main__":
    status = main()
    if status or sys.argv[1:2] != ["--then-run"]:
        raise SystemExit(status)
    # The server in this same process: what this script imported, it imports anyway, and a second interpreter
    # start with those imports costs a new clone's first `make run` most of a second.
    from bot.__main__ import main as bot_main

    raise SystemExit(bot_main(["run"]))
