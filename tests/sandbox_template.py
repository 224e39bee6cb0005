"""The sandbox registry's population, built once per test process and copied into each test's data folder.

Building it takes seconds and it is the same for every server started with the default seed, so a copy makes
a server fixture's set-up cheap; the copy holds exactly what a build would, and the registry still checks its
version and seed when it opens the file (rebuilding on any mismatch).
"""

from __future__ import annotations

import atexit
import functools
import shutil
import sqlite3
import tempfile
from pathlib import Path

from integrations.sandbox_registry.population import ensure_population

SANDBOX_FILE = "sandbox-registry.sqlite3"
DEFAULT_SEED = 20211101  # integrations.sandbox_registry.app.create_app's default, which the bot uses


@functools.cache
def built_population() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="haoqing-sandbox-template-"))
    atexit.register(shutil.rmtree, folder, True)
    path = folder / SANDBOX_FILE
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    assert ensure_population(conn, DEFAULT_SEED)
    conn.close()  # the last connection's close checkpoints the WAL, so the one file is complete
    return path


def provide_sandbox_population(data_dir: Path) -> None:
    """Puts a built population where the bot's embedded sandbox will look, unless one is there already."""
    target = Path(data_dir) / SANDBOX_FILE
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(built_population(), target)
