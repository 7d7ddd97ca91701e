"""org min_runs: below it the analytics flag a company row as insufficient data

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29 19:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Plain ADD COLUMN, no batch: on SQLite a batch would copy orgs into a new table and drop the old
    # one, which every org-owned table references (foreign keys are on). Existing orgs get the default.
    op.add_column("orgs", sa.Column("min_runs", sa.Integer(), server_default="10", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("orgs", schema=None) as batch_op:
        batch_op.drop_column("min_runs")
