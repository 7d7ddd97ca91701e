"""SQLite event-log storage whose pool slots cannot be claimed twice.

Dagster 1.13's SQL storage claims a pool slot by selecting a free slot `FOR UPDATE SKIP LOCKED` and
then updating it by id. PostgreSQL honours the row lock; SQLite ignores it, so two run workers can
select the same free slot and both "claim" it — we measured 4 and 5 model calls at once under a cap
of 3. Guarding the update with "still free" makes the second claimant see 0 rows and wait, which is
what the pool promises. PostgreSQL instances (production dagster.yaml) do not need this class.
"""

from dagster._core.storage.event_log.schema import ConcurrencySlotsTable
from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage
from dagster._utils.concurrency import ConcurrencySlotStatus
from sqlalchemy import and_, select


class GuardedSqliteEventLogStorage(SqliteEventLogStorage):
    @classmethod
    def from_config_value(cls, inst_data, config_value):  # noqa: ANN001, ANN206 - Dagster's signature
        return cls(inst_data=inst_data, **config_value)

    def _claim_concurrency_slot(
        self, concurrency_key: str, run_id: str, step_key: str
    ) -> ConcurrencySlotStatus:
        free = and_(
            ConcurrencySlotsTable.c.concurrency_key == concurrency_key,
            ConcurrencySlotsTable.c.step_key.is_(None),
            ConcurrencySlotsTable.c.deleted.is_(False),
        )
        with self.index_connection() as conn:
            slot_id = conn.execute(select(ConcurrencySlotsTable.c.id).where(free).limit(1)).scalar()
            if slot_id is None:
                return ConcurrencySlotStatus.BLOCKED
            claimed = conn.execute(
                ConcurrencySlotsTable.update()
                .values(run_id=run_id, step_key=step_key)
                .where(and_(ConcurrencySlotsTable.c.id == slot_id, free))
            ).rowcount
            return ConcurrencySlotStatus.CLAIMED if claimed else ConcurrencySlotStatus.BLOCKED
