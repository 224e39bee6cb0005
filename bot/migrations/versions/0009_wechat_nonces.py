"""wechat nonces seen by any worker, when there is no Redis

Revision ID: 0009_wechat_nonces
Revises: 0008_broadcasts
Create Date: 2026-11-30 18:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision: str = "0009_wechat_nonces"
down_revision: str | None = "0008_broadcasts"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "wechat_nonces",
        sa.Column("nonce_key", sqlmodel.sql.sqltypes.AutoString(length=80), nullable=False),
        sa.Column("digest", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("ts", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("nonce_key"),
    )
    op.create_index(op.f("ix_wechat_nonces_ts"), "wechat_nonces", ["ts"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_wechat_nonces_ts"), table_name="wechat_nonces")
    op.drop_table("wechat_nonces")
