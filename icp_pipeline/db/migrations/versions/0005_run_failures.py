"""run failures

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23 11:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "run_failures",
        sa.Column("run_id", sa.String(length=64), nullable=False),
        sa.Column("job_name", sa.String(length=200), nullable=False),
        sa.Column("partition_key", sa.String(length=400), nullable=True),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("failed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("alert_status", sa.String(length=16), nullable=False),
        sa.Column("alert_attempts", sa.Integer(), nullable=False),
        sa.Column("alert_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("run_id"),
    )
    with op.batch_alter_table("run_failures", schema=None) as batch_op:
        batch_op.create_index("ix_run_failures_partition_key", ["partition_key"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("run_failures", schema=None) as batch_op:
        batch_op.drop_index("ix_run_failures_partition_key")
    op.drop_table("run_failures")
