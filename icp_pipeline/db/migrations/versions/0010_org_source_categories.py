"""the org file's source_categories: its additions to the citation categories' domain table

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-30 02:10:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Plain ADD COLUMN (see 0007): existing orgs extend nothing.
    op.add_column("orgs", sa.Column("source_categories", sa.JSON(), server_default="{}", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("orgs") as batch:
        batch.drop_column("source_categories")
