"""org samples, min_completion, budget_usd and grader; per-model samples; quality alerts

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-29 21:20:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Plain ADD COLUMN, no batch (see 0007): existing orgs get the defaults, which are today's behaviour.
    op.add_column("orgs", sa.Column("samples", sa.Integer(), server_default="1", nullable=False))
    op.add_column("orgs", sa.Column("min_completion", sa.Float(), server_default="0.8", nullable=False))
    op.add_column("orgs", sa.Column("budget_usd", sa.Float(), nullable=True))
    op.add_column("orgs", sa.Column("grader_provider", sa.String(length=32), nullable=True))
    op.add_column("orgs", sa.Column("grader_model", sa.String(length=120), nullable=True))
    op.add_column("org_models", sa.Column("samples", sa.Integer(), nullable=True))
    op.create_table(
        "quality_alerts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("org_id", sa.String(length=64), nullable=False),
        sa.Column("cycle_id", sa.Integer(), nullable=False),
        sa.Column("check_name", sa.String(length=64), nullable=False),
        sa.Column("severity", sa.String(length=8), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["org_id"], ["orgs.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["cycle_id"], ["cycles.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("cycle_id", "check_name"),
    )
    op.create_index("ix_quality_alerts_org_id", "quality_alerts", ["org_id"])


def downgrade() -> None:
    op.drop_index("ix_quality_alerts_org_id", table_name="quality_alerts")
    op.drop_table("quality_alerts")
    with op.batch_alter_table("org_models", schema=None) as batch_op:
        batch_op.drop_column("samples")
    with op.batch_alter_table("orgs", schema=None) as batch_op:
        for column in ("grader_model", "grader_provider", "budget_usd", "min_completion", "samples"):
            batch_op.drop_column(column)
