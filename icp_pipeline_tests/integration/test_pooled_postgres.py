"""The pooled dagster-postgres storages (icp_pipeline/instance/pooled_postgres.py): one connection per
process instead of one per statement, none inherited across a fork, schema facts asked once, and
tables still created on an empty database. Real PostgreSQL; every storage is the production class."""

import os
from collections.abc import Callable, Iterator

import dagster as dg
import pytest
import sqlalchemy as sa
from dagster._core.storage.dagster_run import RunsFilter

from icp_pipeline.instance import pooled_postgres
from icp_pipeline.instance.guarded_storage import GuardedPostgresEventLogStorage
from icp_pipeline.instance.pooled_postgres import PooledPostgresRunStorage, PooledPostgresScheduleStorage

pytestmark = pytest.mark.postgres


def counting(engine: sa.Engine) -> dict[str, int]:
    """Counts the engine's new DBAPI connections and its statements from now on."""
    counts = {"connects": 0, "statements": 0}
    sa.event.listen(engine, "connect", lambda *_: counts.__setitem__("connects", counts["connects"] + 1))
    sa.event.listen(
        engine, "before_cursor_execute", lambda *_: counts.__setitem__("statements", counts["statements"] + 1)
    )
    return counts


@pytest.fixture
def storage_url(postgres_databases: Callable[[], str]) -> str:
    return postgres_databases().replace("+psycopg2", "")


@pytest.fixture
def instance(storage_url: str) -> Iterator[dg.DagsterInstance]:
    storages = {
        "run_storage": {
            "module": "icp_pipeline.instance.pooled_postgres",
            "class": "PooledPostgresRunStorage",
            "config": {"postgres_url": storage_url},
        },
        "event_log_storage": {
            "module": "icp_pipeline.instance.guarded_storage",
            "class": "GuardedPostgresEventLogStorage",
            "config": {"postgres_url": storage_url},
        },
        "schedule_storage": {
            "module": "icp_pipeline.instance.pooled_postgres",
            "class": "PooledPostgresScheduleStorage",
            "config": {"postgres_url": storage_url},
        },
    }
    with dg.instance_for_test(overrides=storages) as instance:
        yield instance


@dg.asset
def pooled_probe() -> int:
    return 1


def test_an_empty_database_gets_its_tables_and_a_run_is_stored(instance: dg.DagsterInstance) -> None:
    result = dg.materialize([pooled_probe], instance=instance)
    assert result.success
    assert [r.status for r in instance.get_runs(RunsFilter(run_ids=[result.run_id]))] == [
        dg.DagsterRunStatus.SUCCESS
    ]
    assert instance.get_latest_materialization_event(dg.AssetKey("pooled_probe")) is not None
    assert type(instance.run_storage) is PooledPostgresRunStorage
    assert type(instance.event_log_storage) is GuardedPostgresEventLogStorage
    assert type(instance.schedule_storage) is PooledPostgresScheduleStorage


def test_a_whole_run_opens_one_connection_per_storage(instance: dg.DagsterInstance) -> None:
    """dagster-postgres opens a connection per statement (NullPool): a run here sends dozens."""
    dg.materialize([pooled_probe], instance=instance)  # warm: tables exist, schema facts known
    runs = counting(instance.run_storage._engine)  # type: ignore[attr-defined]
    events = counting(instance.event_log_storage._engine)  # type: ignore[attr-defined]
    assert dg.materialize([pooled_probe], instance=instance).success
    assert events["statements"] >= 10 and runs["statements"] >= 3  # the run really used them
    assert events["connects"] == 0 and runs["connects"] == 0  # the pooled connection was reused


def test_schema_facts_are_asked_once(storage_url: str) -> None:
    runs = PooledPostgresRunStorage(storage_url)
    events = GuardedPostgresEventLogStorage(storage_url)
    assert runs.has_run_stats_index_cols() and events.has_asset_key_index_cols()
    assert events.has_table("concurrency_slots")
    counts_runs, counts_events = counting(runs._engine), counting(events._engine)
    for _ in range(5):
        assert runs.has_run_stats_index_cols()
        assert events.has_asset_key_index_cols()
        assert events.has_table("concurrency_slots")
    assert counts_runs["statements"] == 0 and counts_events["statements"] == 0
    # A fact that is false is asked again (a migration may add it while the process lives).
    assert not events.has_table("no_such_table")
    assert not events.has_table("no_such_table")
    assert counts_events["statements"] == 2


def test_an_existing_database_is_not_reflected_at_start(storage_url: str) -> None:
    PooledPostgresRunStorage(storage_url)  # creates the tables
    reflected: list[str] = []

    def record(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        if "pg_catalog" in statement:  # SQLAlchemy's reflection reads the catalog
            reflected.append(statement)

    sa.event.listen(sa.Engine, "before_cursor_execute", record)
    try:
        storage = PooledPostgresRunStorage(storage_url)
    finally:
        sa.event.remove(sa.Engine, "before_cursor_execute", record)
    assert storage.get_runs() == []
    assert reflected == []


def test_a_forked_child_opens_its_own_connection(storage_url: str) -> None:
    """A pooled connection is never shared with a forked child (the project's fork rule)."""
    storage = PooledPostgresRunStorage(storage_url)

    def backend_pid() -> int:
        with storage._engine.connect() as conn:
            return conn.execute(sa.text("select pg_backend_pid()")).scalar_one()

    parent_backend = backend_pid()
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # the child: report its backend and leave without running any cleanup
        try:
            os.write(write, str(backend_pid()).encode())
        finally:
            os._exit(0)
    os.close(write)
    child_backend = int(os.read(read, 64).decode())
    os.waitpid(child, 0)
    assert child_backend != parent_backend
    assert backend_pid() == parent_backend  # the parent's connection survived the child's exit


def backends_of(storage_url: str) -> list[int]:
    admin = sa.create_engine(storage_url.rsplit("/", 1)[0] + "/postgres", poolclass=sa.pool.NullPool)
    try:
        with admin.connect() as conn:
            return list(
                conn.execute(
                    sa.text("select pid from pg_stat_activity where datname = :db"),
                    {"db": storage_url.rsplit("/", 1)[1]},
                ).scalars()
            )
    finally:
        admin.dispose()


def test_a_storage_not_used_after_start_holds_no_connection(storage_url: str) -> None:
    """A run worker never touches the schedule storage: its start-up check must not leave a
    connection open for the worker's lifetime (idle connections add up over concurrent runs)."""
    PooledPostgresRunStorage(storage_url)  # the tables exist
    storage = PooledPostgresScheduleStorage(storage_url)
    assert backends_of(storage_url) == []
    storage.all_instigator_state()
    assert len(backends_of(storage_url)) == 1  # now kept for the next statement


def test_an_idle_connection_killed_by_the_server_is_replaced(
    storage_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No ping before every statement (a round trip each); a connection idle for longer than
    IDLE_PING_SECONDS is pinged, and a dead one replaced instead of failing the statement."""
    monkeypatch.setattr(pooled_postgres, "IDLE_PING_SECONDS", 0.0)
    storage = PooledPostgresRunStorage(storage_url)
    assert storage.get_runs() == []
    (backend,) = backends_of(storage_url)
    admin = sa.create_engine(storage_url.rsplit("/", 1)[0] + "/postgres", poolclass=sa.pool.NullPool)
    with admin.connect() as conn:
        assert conn.execute(sa.text("select pg_terminate_backend(:pid)"), {"pid": backend}).scalar_one()
    admin.dispose()
    assert storage.get_runs() == []  # pinged, found dead, replaced
    assert backends_of(storage_url) != [backend]
