"""Event-log storages whose pool slots cannot be claimed twice, for SQLite and PostgreSQL.

Dagster 1.13's SQL event log claims a pool slot by selecting a free slot `FOR UPDATE SKIP LOCKED` and
then updating it by id. Neither storage keeps that row lock until the update: SQLite ignores
`FOR UPDATE`, and dagster-postgres runs its event-log connections in AUTOCOMMIT, so the lock ends with
the SELECT. Two run workers can then select the same free slot and both "claim" it: we measured 4 and 5
model calls at once under a cap of 3 on SQLite, 4 on PostgreSQL, and 2 claimants of a 1-slot pool in
a stress test (icp_pipeline_tests/integration/test_pool_claims.py). Guarding the update with
"still free" makes the second claimant update 0 rows and wait, which is what the pool promises.

They also answer a blocked claim with a short retry interval, and importing this module makes a
waiting step sleep instead of spin (pool_wait.py).

Both classes override private Dagster methods, so they are tied to the pinned dagster 1.13.27.
"""

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from functools import cached_property
from typing import Any

from dagster._core.storage.event_log.schema import (
    AssetKeyTable,
    ConcurrencyLimitsTable,
    ConcurrencySlotsTable,
)
from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage
from dagster._core.storage.sqlite import SQLITE_BUSY_TIMEOUT_SECONDS
from dagster._serdes import ConfigurableClassData
from dagster._utils.concurrency import ConcurrencyClaimStatus, ConcurrencySlotStatus
from dagster_postgres.event_log import PostgresEventLogStorage
from sqlalchemy import Connection, Engine, and_, create_engine, select
from sqlalchemy.pool import NullPool

from icp_pipeline.instance.pool_wait import POOL_CLAIM_RETRY_SECONDS
from icp_pipeline.instance.pooled_postgres import (
    PooledPostgresEngine,
    column_exists,
)


class GuardedSlotClaim:
    """Claims a pool slot only if it is still free when the claim is written; a blocked claimant is
    told to retry after POOL_CLAIM_RETRY_SECONDS."""

    def claim_concurrency_slot(
        self, concurrency_key: str, run_id: str, step_key: str, priority: int | None = None
    ) -> ConcurrencyClaimStatus:
        status = super().claim_concurrency_slot(concurrency_key, run_id, step_key, priority)  # type: ignore[misc]
        return status if status.is_claimed else status.with_sleep_interval(POOL_CLAIM_RETRY_SECONDS)

    def _claim_concurrency_slot(
        self, concurrency_key: str, run_id: str, step_key: str
    ) -> ConcurrencySlotStatus:
        free = and_(
            ConcurrencySlotsTable.c.concurrency_key == concurrency_key,
            ConcurrencySlotsTable.c.step_key.is_(None),
            ConcurrencySlotsTable.c.deleted.is_(False),
        )
        with self.index_connection() as conn:  # type: ignore[attr-defined]  # from the storage class
            slot_id = conn.execute(select(ConcurrencySlotsTable.c.id).where(free).limit(1)).scalar()
            if slot_id is None:
                return ConcurrencySlotStatus.BLOCKED
            claimed = conn.execute(
                ConcurrencySlotsTable.update()
                .values(run_id=run_id, step_key=step_key)
                .where(and_(ConcurrencySlotsTable.c.id == slot_id, free))
            ).rowcount
            return ConcurrencySlotStatus.CLAIMED if claimed else ConcurrencySlotStatus.BLOCKED


class GuardedSqliteEventLogStorage(GuardedSlotClaim, SqliteEventLogStorage):
    """The embedded instance's event log (a newcomer's first run).

    Dagster 1.13.27's SQLite event log builds a new SQLAlchemy engine for every connection (about 30
    per step: 0.25 s of CPU per question run, a third of it). The engines are kept here, one per
    shard file; they still use NullPool, so no connection outlives its use and nothing open is
    inherited across a fork. Overrides the private `_connect`; pinned by dagster==1.13.27."""

    def _connect(self, shard: str) -> Iterator[Connection]:
        return self._connect_with_cached_engine(shard)

    @contextmanager
    def _connect_with_cached_engine(self, shard: str) -> Iterator[Connection]:
        with self._db_lock:
            engines: dict[str, Engine] = self.__dict__.setdefault("_icp_engines", {})
            engine = engines.get(shard)
            if engine is None:
                engine = create_engine(
                    self.conn_string_for_shard(shard),
                    poolclass=NullPool,
                    connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS},
                )
                engines[shard] = engine
            if shard not in self._initialized_dbs:
                self._initdb(engine)
                self._initialized_dbs.add(shard)
            with engine.connect() as conn, conn.begin():
                yield conn

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData | None, config_value: Mapping[str, Any]
    ) -> "GuardedSqliteEventLogStorage":
        return cls(inst_data=inst_data, **config_value)


class GuardedPostgresEventLogStorage(GuardedSlotClaim, PooledPostgresEngine, PostgresEventLogStorage):
    """The production event log (dagster.yaml); same configuration as dagster-postgres's. Like the
    other storages in dagster.yaml it keeps one pooled connection per process (pooled_postgres.py)."""

    REQUIRED_TABLES = ("event_logs",)

    def has_table(self, table_name: str) -> bool:
        parent = super()
        return self._remember_true(f"table:{table_name}", lambda: parent.has_table(table_name))

    # The parent's has_asset_key_col opens a connection and asks this: one place for the fact.
    def _has_asset_key_col_on_connection(self, conn: Connection, column_name: str) -> bool:
        return self._remember_true(
            f"asset_keys:{column_name}", lambda: column_exists(conn, AssetKeyTable.name, column_name)
        )

    @cached_property
    def has_default_pool_limit_col(self) -> bool:
        # As the parent (a column a later migration added), with one catalog query.
        if not self.has_table(ConcurrencyLimitsTable.name):
            return False
        with self.index_connection() as conn:
            return column_exists(
                conn, ConcurrencyLimitsTable.name, ConcurrencyLimitsTable.c.using_default_limit.name
            )
