"""ICP-segment visibility: an org's ICP site, questions generated per segment, citation categories,
search fan-out and untracked companies

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30 01:05:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Plain ADD COLUMN, no batch (see 0007): existing rows get today's behaviour.
    # The org file's `icp:` block: the site whose segments propose questions (no foreign key: the
    # site may be loaded after the org).
    op.add_column("orgs", sa.Column("icp_site_id", sa.String(length=64), nullable=True))
    op.add_column(
        "orgs", sa.Column("icp_questions_per_segment", sa.Integer(), server_default="5", nullable=False)
    )
    op.add_column(
        "orgs", sa.Column("icp_activate", sa.String(length=8), server_default="auto", nullable=False)
    )

    # Where a question came from: the org file, or a segment's ICP (with the ICP build it came from).
    # status: active (asked), proposed (awaiting `org questions --approve`), retired (kept for history).
    op.add_column(
        "questions", sa.Column("source", sa.String(length=16), server_default="file", nullable=False)
    )
    # A foreign key added to an existing table needs batch mode on SQLite (a table copy there).
    with op.batch_alter_table("questions") as batch:
        batch.add_column(sa.Column("segment_id", sa.Integer(), nullable=True))
        batch.create_foreign_key(
            "fk_questions_segment_id_segments", "segments", ["segment_id"], ["id"], ondelete="SET NULL"
        )
    op.add_column("questions", sa.Column("persona_role", sa.String(length=200), nullable=True))
    op.add_column(
        "questions", sa.Column("status", sa.String(length=16), server_default="active", nullable=False)
    )
    op.add_column("questions", sa.Column("icp_digest", sa.String(length=64), nullable=True))
    op.create_index("ix_questions_segment_id", "questions", ["segment_id"])

    # Each citation's source category (owned, competitor, review, ugc, reference, news_blog, other).
    op.add_column("citations", sa.Column("category", sa.String(length=16), nullable=True))

    # The web searches an engine ran for an answer (search fan-out), from the stored raw response.
    op.create_table(
        "search_queries",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("question_run_id", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("provider", sa.String(length=32), nullable=False),
        sa.Column("query", sa.Text(), nullable=False),
        sa.Column("extractor_version", sa.String(length=32), nullable=False),
        sa.ForeignKeyConstraint(["question_run_id"], ["question_runs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("question_run_id", "position"),
    )
    op.create_index("ix_search_queries_question_run_id", "search_queries", ["question_run_id"])

    # Companies an answer names that the org does not track: from the claims' unmatched companies and
    # from a deterministic candidate extractor over the answer text. name_key is the normalised name.
    op.create_table(
        "untracked_mentions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("question_run_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("name_key", sa.String(length=200), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("occurrences", sa.Integer(), nullable=False),
        sa.Column("extractor_version", sa.String(length=32), nullable=False),
        sa.ForeignKeyConstraint(["question_run_id"], ["question_runs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("question_run_id", "name_key", "source"),
    )
    op.create_index("ix_untracked_mentions_question_run_id", "untracked_mentions", ["question_run_id"])


def downgrade() -> None:
    op.drop_index("ix_untracked_mentions_question_run_id", table_name="untracked_mentions")
    op.drop_table("untracked_mentions")
    op.drop_index("ix_search_queries_question_run_id", table_name="search_queries")
    op.drop_table("search_queries")
    with op.batch_alter_table("citations") as batch:
        batch.drop_column("category")
    op.drop_index("ix_questions_segment_id", table_name="questions")
    with op.batch_alter_table("questions") as batch:
        batch.drop_constraint("fk_questions_segment_id_segments", type_="foreignkey")
        for column in ("icp_digest", "status", "persona_role", "segment_id", "source"):
            batch.drop_column(column)
    with op.batch_alter_table("orgs") as batch:
        for column in ("icp_activate", "icp_questions_per_segment", "icp_site_id"):
            batch.drop_column(column)
