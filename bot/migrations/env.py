"""Alembic environment: runs migrations on the connection Database.migrate() hands over (SQLite or Postgres)."""

from __future__ import annotations

from alembic import context
from sqlmodel import SQLModel

import bot.storage  # noqa: F401  (registers every table on SQLModel.metadata)

target_metadata = SQLModel.metadata
connection = context.config.attributes.get("connection")
if connection is None:
    raise SystemExit("run migrations through bot.storage.Database.migrate(), which passes a connection")
context.configure(connection=connection, target_metadata=target_metadata,
                  render_as_batch=connection.dialect.name == "sqlite")
with context.begin_transaction():
    context.run_migrations()
