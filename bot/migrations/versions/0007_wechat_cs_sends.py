"""wechat customer-service sends counted for every worker

Revision ID: 0007_wechat_cs_sends
Revises: 0006_effect_outcomes
Create Date: 2026-11-30 16:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision: str = "0007_wechat_cs_sends"
down_revision: str | None = "0006_effect_outcomes"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "wechat_cs_sends",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("sent_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_wechat_cs_sends_user_id"), "wechat_cs_sends", ["user_id"], unique=False)
    op.create_index(op.f("ix_wechat_cs_sends_sent_at"), "wechat_cs_sends", ["sent_at"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_wechat_cs_sends_sent_at"), table_name="wechat_cs_sends")
    op.drop_index(op.f("ix_wechat_cs_sends_user_id"), table_name="wechat_cs_sends")
    op.drop_table("wechat_cs_sends")
