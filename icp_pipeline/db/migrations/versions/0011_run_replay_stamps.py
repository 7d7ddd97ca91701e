"""question runs' replay stamps: the extractor version and org evidence each deterministic step last
applied to the run, so the steps recompute an earlier cycle's run only when it is stale

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-30 04:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

STAMPS = ("mentions_stamp", "citations_stamp", "metrics_stamp")


def upgrade() -> None:
    # Plain ADD COLUMN (see 0007). Existing runs get NULL: unknown, so each step recomputes them once.
    for name in STAMPS:
        op.add_column("question_runs", sa.Column(name, sa.String(length=120), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("question_runs") as batch:
        for name in STAMPS:
            batch.drop_column(name)
