"""The sandbox registry's population and the bot's migrated (empty) database, each built once per test process
and copied into each test's data folder.

Building the population takes seconds and it is the same for every server started with the default seed, so a
copy makes a server fixture's set-up cheap; the copy holds exactly what a build would, and the registry still
checks its version and seed when it opens the file (rebuilding on any mismatch).

Likewise the schema: migrating a new SQLite file from the first revision was three quarters of an in-process
server's start (about 0.35 s of CPU, for some 300 servers a run). The copy is made by the bot's own
`Database.create_all()` from the revisions of this checkout, so it is what a first start would leave; the server
still runs the migrations on it at start, and finds them at head. A fresh data folder's full migration stays
covered where it is the point: tests/test_migrations.py, the real processes of tests/processes.py, and `make run`
in tests/test_readme.py.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import shutil
import sqlite3
import tempfile
import threading
from pathlib import Path

from integrations.sandbox_registry.population import ensure_population

SANDBOX_FILE = "sandbox-registry.sqlite3"
BOT_FILE = "haoqing.sqlite3"  # bot.config.Settings.resolved_database_url's SQLite file under DATA_DIR
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


@functools.cache
def built_schema() -> Path:
    """A SQLite database the bot migrated to head, in one file (no WAL beside it)."""
    from bot.storage import Database

    folder = Path(tempfile.mkdtemp(prefix="haoqing-schema-template-"))
    atexit.register(shutil.rmtree, folder, True)
    path = folder / BOT_FILE

    async def migrate() -> None:
        db = Database(f"sqlite+aiosqlite:///{path}")
        try:
            await db.create_all()
        finally:
            await db.close()  # the last connection's close checkpoints the WAL into the file

    failure: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(migrate())
        except BaseException as exc:  # re-raised in the caller's thread
            failure.append(exc)

    # Its own thread and event loop: callers may be inside a test's running loop.
    worker = threading.Thread(target=run)
    worker.start()
    worker.join()
    if failure:
        raise failure[0]
    return path


def provide_schema(data_dir: Path) -> None:
    """Puts the migrated database where the bot's default SQLite URL points, unless a database is there already."""
    target = Path(data_dir) / BOT_FILE
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(built_schema(), target)
