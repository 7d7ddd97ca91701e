from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from icp_pipeline.db.session import upgrade
from icp_pipeline_tests.support.dagster_services import postgres_env, write_production_instance

# Shorter polling than production so the tests spend their time running pipelines, not waiting.
SHORT_POLLING = {"run_monitoring": {"poll_interval_seconds": 2, "free_slots_after_run_end_seconds": 2}}


@dataclass
class ProductionStack:
    """A migrated app database and a DAGSTER_HOME with the production dagster.yaml, both on PostgreSQL."""

    app_url: str
    storage_url: str
    home: Path

    def service_env(self, **extra: str) -> dict[str, str]:
        """What the daemon and webserver need beyond their environment: the instance's and app's databases."""
        return {
            **postgres_env(self.storage_url),
            "ICP_DATABASE_URL": self.app_url,
            "ICP_OUTBOX_DIR": str(self.home.parent / "outbox"),
            **extra,
        }


@pytest.fixture
def production_stack(
    tmp_path: Path, postgres_databases: Callable[[], str], monkeypatch: pytest.MonkeyPatch
) -> ProductionStack:
    app_url, storage_url = postgres_databases(), postgres_databases()
    upgrade(app_url)
    home = tmp_path / "dagster_home"
    write_production_instance(home, SHORT_POLLING)
    # This process reads the same instance (DagsterInstance.from_config) through the same variables.
    for name, value in postgres_env(storage_url).items():
        monkeypatch.setenv(name, value)
    return ProductionStack(app_url, storage_url, home)
