"""Event-log storages whose pool slots cannot be claimed twice, for SQLite and PostgreSQL.

Dagster 1.13's SQL event log claims a pool slot by selecting a free slot `FOR UPDATE SKIP LOCKED` and
then updating it by id. Neither storage keeps that row lock until the update: SQLite ignores
`FOR UPDATE`, and dagster-postgres runs its event-log connections in AUTOCOMMIT, so the lock ends with
the SELECT. Two run workers can then select the same free slot and both "claim" it: we measured 4 and 5
model calls at once under a cap of 3 on SQLite, 4 on PostgreSQL, and 2 claimants of a 1-slot pool in
a stress test (icp_pipeline_tests/integration/test_pool_claims.py). Guarding the update with
"still free" makes the second claimant update 0 rows and wait, which is what the pool promises.

Both classes override a private Dagster method, so they are tied to the pinned dagster 1.13.27.
"""

from collections.abc import Mapping
from typing import Any

from dagster._core.storage.event_log.schema import ConcurrencySlotsTable
from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage
from dagster._serdes import ConfigurableClassData
from dagster._utils.concurrency import ConcurrencySlotStatus
from dagster_postgres.event_log import PostgresEventLogStorage
from dagster_postgres.utils import get_token_provider_from_config, pg_url_from_config
from sqlalchemy import and_, select

# Every process that opens the instance (each run worker) loads this storage: the slot-wait fix
# travels with it (see claim_wait.py).
from icp_pipeline.instance import claim_wait  # noqa: F401


class GuardedSlotClaim:
    """Claims a pool slot only if it is still free when the claim is written."""

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
    """The embedded instance's event log (a newcomer's first run)."""

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData | None, config_value: Mapping[str, Any]
    ) -> "GuardedSqliteEventLogStorage":
        return cls(inst_data=inst_data, **config_value)


class GuardedPostgresEventLogStorage(GuardedSlotClaim, PostgresEventLogStorage):
    """The production event log (dagster.yaml); same configuration as dagster-postgres's."""

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData | None, config_value: Mapping[str, Any]
    ) -> "GuardedPostgresEventLogStorage":
        return cls(
            inst_data=inst_data,
            postgres_url=pg_url_from_config(config_value),
            should_autocreate_tables=config_value.get("should_autocreate_tables", True),
            token_provider=get_token_provider_from_config(config_value),
        )
