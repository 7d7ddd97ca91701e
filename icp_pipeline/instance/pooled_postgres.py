"""dagster-postgres storages that keep one connection per process and remember their schema.

Why: dagster-postgres 1.13.27 builds its engines with `NullPool` ("to prevent accumulating
connections per DagsterInstance"), so every statement a run worker sends opens a new PostgreSQL
connection: a TCP handshake, authentication and a forked backend on the server. A question run
writes about 150 events and reads its pools, runs and data versions about as often. Profiled with
py-spy across the run workers of a daemon cycle (bench/bench_daemon.py, fork-server launcher), 28 %
of the workers' CPU was spent opening connections, and another 11 % in SQLAlchemy reflection: the
storages ask the database on every call whether a column or table added by an old migration exists
(`has_asset_key_col`, `has_table`, `has_run_stats_index_cols`; uncached in 1.13.27).

What: the same storages with
- a `QueuePool` of one connection (`pool_size=1`; more threads get overflow connections that are
  closed when returned, as with NullPool); a connection idle for more than 10 s is pinged before use,
  so a restarted server costs one reconnect, not an error; recycled hourly. A process holds at most one idle connection per
  storage, which is what dagster-webserver already does (`optimize_for_webserver`).
- no connection inherited across a fork: a forked child drops its parent's pooled connections
  without closing them (`os.register_at_fork`), so the child opens its own (the project's fork rule;
  the fork-server launcher forks before any connection exists, this guards every other fork).
- the schema facts cached once they are true (a column or table that exists stays; a missing one is
  asked again, so a migration run while the process lives is still seen).
- the table check at start-up as one `to_regclass` query instead of reflecting every table name.

Private Dagster attributes used (`_engine`, `_token_provider`, the `has_*` methods; the parent's
`__init__` is called twice on an empty database), pinned by
dagster==1.13.27 and exercised by icp_pipeline_tests/integration/test_pooled_postgres.py.
"""

import os
import time
import weakref
from collections.abc import Callable, Mapping
from typing import Any, Self

from dagster._serdes import ConfigurableClassData
from dagster_postgres.run_storage import PostgresRunStorage
from dagster_postgres.schedule_storage import PostgresScheduleStorage
from dagster_postgres.utils import (
    create_pg_engine,
    get_token_provider_from_config,
    pg_url_from_config,
    retry_pg_connection_fn,
)
from sqlalchemy import Connection, Engine, event, exc, text

POOL_SIZE = 1
MAX_OVERFLOW = 20  # the daemon's threads; overflow connections close when returned
POOL_RECYCLE_SECONDS = 3600
IDLE_PING_SECONDS = 10.0

_pooled_engines: "weakref.WeakSet[Engine]" = weakref.WeakSet()


def _drop_inherited_connections() -> None:
    for engine in list(_pooled_engines):
        engine.dispose(close=False)  # the parent still owns those sockets: forget them, do not close


os.register_at_fork(after_in_child=_drop_inherited_connections)


def pooled_engine(postgres_url: str, token_provider: Any) -> Engine:
    engine = create_pg_engine(
        postgres_url,
        token_provider,
        isolation_level="AUTOCOMMIT",
        pool_size=POOL_SIZE,
        max_overflow=MAX_OVERFLOW,
        pool_recycle=POOL_RECYCLE_SECONDS,
    )
    event.listen(engine, "checkin", _stamp_checkin)
    event.listen(engine, "checkout", _ping_if_idle)
    _pooled_engines.add(engine)
    return engine


def _stamp_checkin(_dbapi_connection: Any, record: Any) -> None:
    record.info["icp_checked_in"] = time.monotonic()


def _ping_if_idle(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
    """A connection idle for IDLE_PING_SECONDS is pinged before use; a dead one is replaced (the pool
    retries on DisconnectionError). A busy run worker sends statements back to back and never pays
    the round trip that `pool_pre_ping` would add to each of them (11 % of a worker's CPU)."""
    checked_in = record.info.get("icp_checked_in")
    if checked_in is None or time.monotonic() - checked_in < IDLE_PING_SECONDS:
        return
    try:
        cursor = dbapi_connection.cursor()
        cursor.execute("select 1")
        cursor.close()
    except Exception as error:
        raise exc.DisconnectionError() from error


def table_exists(engine: Engine, table_name: str) -> bool:
    with engine.connect() as conn:
        return conn.execute(text("select to_regclass(:name) is not null"), {"name": table_name}).scalar_one()


def column_exists(conn: Connection, table_name: str, column_name: str) -> bool:
    """One catalog query; SQLAlchemy's Inspector reflects every column of the table with its type."""
    found = conn.execute(
        text(
            "select count(*) from information_schema.columns where table_schema = current_schema()"
            " and table_name = :table and column_name = :column"
        ),
        {"table": table_name, "column": column_name},
    ).scalar_one()
    return found > 0


class PooledPostgresEngine:
    """Mixin for a dagster-postgres storage: swaps its NullPool engine for `pooled_engine` and caches
    the schema facts that the storage would otherwise reflect on every call.

    Start-up: the parent's `__init__` reflects every table name to decide whether to create its
    tables. The storage is first built without that; one `to_regclass` query per table then says
    whether they exist (the usual case), and only on a database without them does the parent's own
    start-up run (create, stamp, migrate), exactly as dagster-postgres does it."""

    _engine: Engine
    postgres_url: str
    _token_provider: Any
    should_autocreate_tables: bool
    REQUIRED_TABLES: tuple[str, ...] = ()

    def __init__(
        self,
        postgres_url: str,
        should_autocreate_tables: bool = True,
        inst_data: ConfigurableClassData | None = None,
        token_provider: Any = None,
    ) -> None:
        # The dagster-postgres storage this mixin precedes in the class's bases.
        parent_init = super().__init__  # type: ignore[misc]
        kwargs = {"postgres_url": postgres_url, "inst_data": inst_data, "token_provider": token_provider}
        parent_init(should_autocreate_tables=False, **kwargs)
        # Asked on the parent's NullPool engine, so a storage the process never uses again (the
        # schedule storage in a run worker) keeps no connection open.
        if should_autocreate_tables and not all(
            retry_pg_connection_fn(lambda name=name: table_exists(self._engine, name))
            for name in self.REQUIRED_TABLES
        ):
            parent_init(should_autocreate_tables=True, **kwargs)
        self.should_autocreate_tables = should_autocreate_tables
        self._use_pooled_engine()

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData | None, config_value: Mapping[str, Any]
    ) -> Self:
        """dagster-postgres's config, read as its own from_config_value reads it."""
        return cls(
            inst_data=inst_data,
            postgres_url=pg_url_from_config(config_value),
            should_autocreate_tables=config_value.get("should_autocreate_tables", True),
            token_provider=get_token_provider_from_config(config_value),
        )

    def _use_pooled_engine(self) -> None:
        nullpool_engine = self._engine
        self._engine = pooled_engine(self.postgres_url, self._token_provider)
        nullpool_engine.dispose()

    def _remember_true(self, name: str, ask: Callable[[], bool]) -> bool:
        facts: dict[str, bool] = self.__dict__.setdefault("_icp_schema_facts", {})
        if not facts.get(name):
            facts[name] = bool(ask())
        return facts[name]


class PooledPostgresRunStorage(PooledPostgresEngine, PostgresRunStorage):
    """dagster-postgres's run storage with one pooled connection per process (see the module)."""

    REQUIRED_TABLES = ("runs", "instance_info")

    def has_run_stats_index_cols(self) -> bool:
        def ask() -> bool:
            with self.connect() as conn:
                return column_exists(conn, "runs", "start_time") and column_exists(conn, "runs", "end_time")

        return self._remember_true("run_stats_index_cols", ask)

    def has_bulk_actions_selector_cols(self) -> bool:
        return self._remember_true("bulk_actions_selector_cols", super().has_bulk_actions_selector_cols)

    def has_backfill_id_column(self) -> bool:
        return self._remember_true("backfill_id_column", super().has_backfill_id_column)

    def has_bulk_action_job_name_column(self) -> bool:
        return self._remember_true("bulk_action_job_name_column", super().has_bulk_action_job_name_column)

    def has_backfill_tags_table(self) -> bool:
        return self._remember_true("backfill_tags_table", super().has_backfill_tags_table)


class PooledPostgresScheduleStorage(PooledPostgresEngine, PostgresScheduleStorage):
    """dagster-postgres's schedule storage with one pooled connection per process (see the module)."""

    REQUIRED_TABLES = ("jobs",)
