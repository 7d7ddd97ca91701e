"""purchase ledger: every purchase has a subject; every call keeps how it finished and its raw body

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29 18:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Plain ADD COLUMN / CREATE INDEX, no batch: on SQLite a batch would copy model_calls into a new
    # table and drop the old one, which question_runs and claims reference (foreign keys are on).
    for column in (
        sa.Column("subject", sa.String(length=200), nullable=True),
        sa.Column("call_uid", sa.String(length=36), nullable=True),
        sa.Column("paid", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("finish", sa.String(length=16), nullable=True),
        sa.Column("finish_reason", sa.String(length=64), nullable=True),
        sa.Column("exact_text", sa.LargeBinary(), nullable=True),
        sa.Column("raw_body", sa.LargeBinary(), nullable=True),
        sa.Column("continuation", sa.JSON(), nullable=True),
        sa.Column("cache_write_tokens", sa.Integer(), nullable=True),
    ):
        op.add_column("model_calls", column)
    op.create_index("ix_model_calls_subject", "model_calls", ["subject"], unique=False)
    op.create_index("ux_model_calls_call_uid", "model_calls", ["call_uid"], unique=True)
    op.add_column("org_models", sa.Column("max_output_tokens", sa.Integer(), nullable=True))
    # Calls recorded before this revision: every ok row was a paid, complete reply. Answers and claims
    # get the subjects the purchase path looks up, so what they bought is reused, never bought again.
    op.execute("UPDATE model_calls SET paid = ok, finish = CASE WHEN ok THEN 'complete' END")
    op.execute(
        "UPDATE model_calls SET subject = purpose || ':' || CAST(cycle_item_id AS VARCHAR) "
        "WHERE purpose IN ('answer', 'claims') AND cycle_item_id IS NOT NULL"
    )


def downgrade() -> None:
    with op.batch_alter_table("org_models", schema=None) as batch_op:
        batch_op.drop_column("max_output_tokens")
    with op.batch_alter_table("model_calls", schema=None) as batch_op:
        batch_op.drop_index("ux_model_calls_call_uid")
        batch_op.drop_index("ix_model_calls_subject")
        for column in (
            "cache_write_tokens",
            "continuation",
            "raw_body",
            "exact_text",
            "finish_reason",
            "finish",
            "paid",
            "call_uid",
            "subject",
        ):
            batch_op.drop_column(column)
