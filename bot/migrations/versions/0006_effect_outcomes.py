"""effect outcomes kept under their delivery's key

Revision ID: 0006_effect_outcomes
Revises: 0005_send_budgets
Create Date: 2026-11-30 15:45:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision: str = "0006_effect_outcomes"
down_revision: str | None = "0005_send_budgets"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "effect_outcomes",
        sa.Column("delivery_key", sqlmodel.sql.sqltypes.AutoString(length=160), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=True),
        sa.Column("kind", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("result", sa.Text(), nullable=False),
        sa.Column("at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("delivery_key"),
    )
    op.create_index(op.f("ix_effect_outcomes_user_id"), "effect_outcomes", ["user_id"], unique=False)
    op.create_index(op.f("ix_effect_outcomes_at"), "effect_outcomes", ["at"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_effect_outcomes_at"), table_name="effect_outcomes")
    op.drop_index(op.f("ix_effect_outcomes_user_id"), table_name="effect_outcomes")
    op.drop_table("effect_outcomes")
