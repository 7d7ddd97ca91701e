"""The same pipeline on PostgreSQL: app database and Dagster storage (dagster-postgres) at 127.0.0.1:5432."""

from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa
from dagster import DagsterInstance, RunsFilter

from icp_pipeline.cli.runner import run_cycle
from icp_pipeline.db.models import CycleItem, ModelCall, Org, PushDelivery, QuestionRun
from icp_pipeline.db.session import session_scope, upgrade
from icp_pipeline_tests.conftest import load_example, write_instance_yaml
from icp_pipeline_tests.support.pipeline import count, max_concurrent_calls, pipeline_defs

pytestmark = pytest.mark.postgres


def test_cycle_on_postgres_with_a_failing_model(
    icp_env: Path, postgres_databases: Callable[[], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    app_db = postgres_databases()
    monkeypatch.setenv("ICP_DATABASE_URL", app_db)
    upgrade(app_db)
    load_example(app_db)
    # Dagster's own storage in a second database, as in production.
    write_instance_yaml(icp_env / "dagster_home", storage_url=postgres_databases())

    # 30 of 45 runs complete: below the completion gate's default (0.8), so the org accepts less.
    with session_scope(app_db) as session:
        session.get(Org, "acme").min_completion = 0.6
    defs = pipeline_defs(app_db, latency=0.2, fail_models=("gemini-2.5-flash",))
    outcome = run_cycle("acme", workers=5, progress=False, defs=defs)
    with session_scope(app_db) as session:
        errors = sorted({i.error[:300] for i in session.scalars(sa.select(CycleItem)) if i.error})
    assert (outcome.status, outcome.completed, outcome.failed) == ("succeeded", 30, 15), errors
    assert outcome.pushed
    assert max_concurrent_calls(app_db) <= 3

    instance = DagsterInstance.get()
    assert "postgres" in type(instance.run_storage).__name__.lower()
    runs = instance.get_runs(RunsFilter(tags={"icp/cycle_id": str(outcome.cycle_id)}))
    assert len(runs) == 46

    # Re-running the roll-ups and a question run changes no row counts and buys nothing.
    before = (count(app_db, ModelCall), count(app_db, QuestionRun), count(app_db, CycleItem))
    with session_scope(app_db) as session:
        key = session.scalar(
            sa.select(CycleItem.partition_key).where(CycleItem.status == "succeeded").limit(1)
        )
    assert (
        defs.resolve_job_def("question_run_job")
        .execute_in_process(partition_key=key, instance=instance)
        .success
    )
    assert (
        defs.resolve_job_def("org_rollup_job")
        .execute_in_process(partition_key="acme", instance=instance)
        .success
    )
    assert (count(app_db, ModelCall), count(app_db, QuestionRun), count(app_db, CycleItem)) == before
    assert count(app_db, PushDelivery, PushDelivery.ok) == 2  # the cycle's push and the manual re-push
    instance.dispose()


def test_production_dagster_yaml_loads_on_postgres_with_the_pool_cap(
    tmp_path: Path, postgres_databases: Callable[[], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    repo_yaml = Path(__file__).parents[2] / "dagster.yaml"
    (tmp_path / "dagster.yaml").write_text(repo_yaml.read_text())
    db_name = postgres_databases().rsplit("/", 1)[1]
    for name, value in {
        "DAGSTER_HOME": str(tmp_path),
        "DAGSTER_PG_USERNAME": "postgres",
        "DAGSTER_PG_PASSWORD": "",
        "DAGSTER_PG_HOST": "127.0.0.1",
        "DAGSTER_PG_DB": db_name,
        "DAGSTER_PG_PORT": "5432",
    }.items():
        monkeypatch.setenv(name, value)
    instance = DagsterInstance.get()
    try:
        assert type(instance.run_storage).__name__ == "PooledPostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "GuardedPostgresEventLogStorage"
        assert type(instance.schedule_storage).__name__ == "PooledPostgresScheduleStorage"
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        assert instance.event_log_storage.get_pool_config().default_pool_limit == 3
        limits = instance.get_concurrency_config().run_queue_config.tag_concurrency_limits
        assert limits == [
            {"key": "dagster/partition", "value": {"applyLimitPerUniqueValue": True}, "limit": 1}
        ]
        assert instance.run_monitoring_enabled
        assert instance.run_retries_enabled
        # Runs start ahead of free slots and the queue is polled every second (bench/bench_daemon.py).
        assert instance.get_concurrency_config().run_queue_config.op_concurrency_slot_buffer == 3
        assert instance.run_coordinator.dequeue_interval_seconds == 1
        # Compute logs without the tail mirror, in DAGSTER_HOME/storage as Dagster's default keeps them.
        assert type(instance.compute_log_manager).__name__ == "FileComputeLogManager"
        log_path = Path(
            instance.compute_log_manager.get_captured_local_path(["r", "compute_logs", "k"], "err")
        )
        assert log_path == tmp_path.resolve() / "storage" / "r" / "compute_logs" / "k.err"
    finally:
        instance.dispose()
