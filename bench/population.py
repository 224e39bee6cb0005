"""How long the sandbox registry's population takes to build: it is on the path of every first start (a fresh
clone's `make run`) and of the registry tests' session fixture.

Usage: .venv/bin/python bench/population.py [--repeat 5]
Prints medians: generating the records in memory, and the whole build into a fresh SQLite file, against a
baseline measured in the same run (the same number of one-column rows written to a fresh SQLite file: the floor
of any build of that size).
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from integrations.sandbox_registry.population import POPULATION_SIZE, ensure_population, generate

SEED = 20211101


def timed(fn: object) -> float:
    started = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - started


def baseline(folder: Path, run: int) -> None:
    conn = sqlite3.connect(folder / f"baseline-{run}.sqlite3", isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE numbers (phone TEXT PRIMARY KEY)")
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO numbers VALUES (?)", ((f"139{i:08d}",) for i in range(POPULATION_SIZE)))
    conn.execute("COMMIT")
    conn.close()


def build(folder: Path, run: int) -> None:
    conn = sqlite3.connect(folder / f"population-{run}.sqlite3", isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    assert ensure_population(conn, SEED)
    conn.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    figures: dict[str, list[float]] = {"baseline": [], "generate": [], "build": []}
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        for run in range(args.repeat):
            figures["baseline"].append(timed(lambda run=run: baseline(folder, run)))
            figures["generate"].append(timed(lambda: generate(SEED)))
            figures["build"].append(timed(lambda run=run: build(folder, run)))
    base = statistics.median(figures["baseline"])
    print(f"sandbox population of {POPULATION_SIZE:,} numbers, median of {args.repeat}:")
    print(f"  {'baseline: same rows, one column':<34} {base * 1000:8.0f} ms   1.0×")
    for label, title in (("generate", "generate() in memory"), ("build", "ensure_population() to a file")):
        value = statistics.median(figures[label])
        print(f"  {title:<34} {value * 1000:8.0f} ms  {value / base:5.1f}×")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
