"""The Alembic migrations build exactly the schema the models describe, on SQLite and PostgreSQL."""

from collections.abc import Callable
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from icp_pipeline.db.models import Base
from icp_pipeline.db.session import current_revision, get_engine, upgrade


def _diff(url: str) -> list:
    with get_engine(url).connect() as connection:
        return compare_metadata(MigrationContext.configure(connection), Base.metadata)


def test_sqlite_schema_matches_models(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'app.db'}"
    upgrade(url)
    assert current_revision(url) is not None
    assert _diff(url) == []
    upgrade(url)  # a second upgrade is a no-op


@pytest.mark.postgres
def test_postgres_schema_matches_models(postgres_databases: Callable[[], str]) -> None:
    url = postgres_databases()
    upgrade(url)
    assert _diff(url) == []


def test_calls_recorded_before_the_purchase_ledger_keep_being_reused(tmp_path: Path) -> None:
    """0006 gives existing answers and claims the subjects the purchase path looks up: an upgrade
    never makes a step buy again what it bought before."""
    import sqlite3

    import sqlalchemy as sa

    from icp_pipeline.db.models import ModelCall
    from icp_pipeline.db.session import session_scope

    url = f"sqlite:///{tmp_path / 'app.db'}"
    upgrade(url, "0005")
    with sqlite3.connect(tmp_path / "app.db") as raw:  # the 0005 schema, written without the models
        raw.execute(
            "INSERT INTO model_calls (cycle_item_id, purpose, provider, requested_model, prompt, ok, "
            "source_citations, web_search, synthetic, started_at, finished_at) VALUES "
            "(7, 'answer', 'openai', 'm', 'q', 1, '[]', 0, 0, '2026-01-01', '2026-01-01'), "
            "(7, 'claims', 'openai', 'm', 'q', 1, '[]', 0, 0, '2026-01-01', '2026-01-01'), "
            "(7, 'answer', 'openai', 'm', 'q', 0, '[]', 0, 0, '2026-01-01', '2026-01-01')"
        )
    upgrade(url)
    with session_scope(url) as session:
        rows = session.execute(
            sa.select(ModelCall.subject, ModelCall.ok, ModelCall.paid, ModelCall.finish).order_by(
                ModelCall.id
            )
        ).all()
    assert [tuple(r) for r in rows] == [
        ("answer:7", True, True, "complete"),
        ("claims:7", True, True, "complete"),
        ("answer:7", False, False, None),
    ]


def test_a_downgrade_and_upgrade_of_a_populated_sqlite_database_keep_every_row(tmp_path: Path) -> None:
    """SQLite alters a table by rebuilding it (copy, DROP, rename). With the app's foreign keys on,
    that DROP deleted every row and cascaded to the runs' evidence; the migrations turn them off and
    check them before committing."""
    import sqlalchemy as sa
    import yaml

    from icp_pipeline.db.models import Citation, CompetitiveMetric, CycleItem, Mention, QuestionRun
    from icp_pipeline.db.session import downgrade, session_scope
    from icp_pipeline.visibility.org_file import parse_org_text, upsert_org
    from icp_pipeline_tests.support.pipeline import run_cycle_steps

    url = f"sqlite:///{tmp_path / 'app.db'}"
    upgrade(url)
    example = Path(__file__).parents[2] / "icp_pipeline" / "examples" / "acme.yaml"
    data = yaml.safe_load(example.read_text())
    data.update(models=data["models"][:1], locations=data["locations"][:1], samples=1)
    with session_scope(url) as session:
        upsert_org(session, parse_org_text(yaml.safe_dump(data)))
    run_cycle_steps(url, "acme")

    tables = (CycleItem, QuestionRun, Mention, Citation, CompetitiveMetric)

    def counts() -> list[int]:
        with session_scope(url) as session:
            return [session.scalar(sa.select(sa.func.count()).select_from(t)) or 0 for t in tables]

    before = counts()
    assert all(before), before  # every table has rows to lose
    downgrade(url, "0008")  # rebuilds question_runs, questions, orgs and citations on the way
    upgrade(url)
    assert counts() == before
    assert _diff(url) == []
