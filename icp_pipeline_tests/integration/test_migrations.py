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
