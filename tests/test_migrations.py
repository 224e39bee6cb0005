"""The migrations build exactly the schema the models describe, on SQLite and on PostgreSQL."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlmodel import SQLModel

from bot.storage import Database
from tests.test_postgres import pg_url  # noqa: F401  (fixture)


async def _drift(db: Database) -> list[object]:
    async with db.engine.connect() as conn:
        return await conn.run_sync(
            lambda sync: compare_metadata(MigrationContext.configure(sync), SQLModel.metadata))


async def test_sqlite_migrates_to_the_models(tmp_path: Path) -> None:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'm.sqlite3'}")
    await db.create_all()
    await db.create_all()  # idempotent on restart
    assert await _drift(db) == []
    async with db.engine.connect() as conn:
        version = (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalar_one()
    assert version == _head(), "a single chain of revisions, upgraded to its newest"
    await db.close()


def _head() -> str:
    from alembic.script import ScriptDirectory

    from bot.storage import alembic_config

    heads = ScriptDirectory.from_config(alembic_config(None)).get_heads()
    assert len(heads) == 1, f"the revisions have several heads: {heads}"
    return str(heads[0])


async def test_a_database_made_before_migrations_is_adopted(tmp_path: Path) -> None:
    from alembic import command

    from bot.storage import alembic_config

    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'old.sqlite3'}")
    async with db.engine.begin() as conn:
        # The baseline schema as create_all made it before migrations existed: no alembic_version table.
        await conn.run_sync(lambda sync: command.upgrade(alembic_config(sync), "0001"))
        await conn.execute(text("DROP TABLE alembic_version"))
    await db.create_all()
    assert await _drift(db) == []
    async with db.engine.connect() as conn:
        tables = await conn.run_sync(lambda sync: set(inspect(sync).get_table_names()))
    assert "alembic_version" in tables
    await db.close()


async def test_postgres_migrates_to_the_models(pg_url: str) -> None:  # noqa: F811
    db = Database(pg_url)
    await db.create_all()
    assert await _drift(db) == []
    await db.close()
