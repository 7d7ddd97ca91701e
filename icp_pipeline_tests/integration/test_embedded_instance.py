"""The embedded instance the CLI writes for a newcomer behaves like production in the UI."""

from pathlib import Path

import pytest
import yaml
from dagster import DagsterInstance

from icp_pipeline.cli.instance import prepare_dagster_home

PRODUCTION_YAML = Path(__file__).parents[2] / "dagster.yaml"


def test_the_cli_writes_an_embedded_instance_with_the_production_queue_limits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ICP_HOME", str(tmp_path / "icp"))
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    home = prepare_dagster_home()
    assert home == (tmp_path / "icp" / "dagster_home").resolve()
    production = yaml.safe_load(PRODUCTION_YAML.read_text())["concurrency"]
    instance = DagsterInstance.from_config(str(home))
    try:
        assert type(instance.event_log_storage).__name__ == "GuardedSqliteEventLogStorage"
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        config = instance.get_concurrency_config()
        assert config.pool_config.default_pool_limit == production["pools"]["default_limit"] == 3
        # One run per partition at a time, as in production: a UI launch and a sensor request of the
        # same partition queue behind each other under `dg dev` too.
        limits = config.run_queue_config.tag_concurrency_limits
        assert limits == production["runs"]["tag_concurrency_limits"]
        assert limits == [
            {"key": "dagster/partition", "value": {"applyLimitPerUniqueValue": True}, "limit": 1}
        ]
        assert not instance.telemetry_enabled
    finally:
        instance.dispose()
