"""Pool slots are never claimed twice, even when claims race (SQLite and PostgreSQL event logs).

Dagster 1.13's stock storages let two racing claimants take one slot (see guarded_storage.py; with
dagster-postgres's own class this stress gave 2 claimants of a 1-slot pool). The project's guarded
storages must keep every round at the limit.
"""

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from dagster._core.storage.event_log.sql_event_log import SqlEventLogStorage

from icp_pipeline.instance.guarded_storage import GuardedPostgresEventLogStorage, GuardedSqliteEventLogStorage

CLAIMANTS = 8
ROUNDS = 25


@pytest.fixture(params=["sqlite", "postgres"])
def event_log(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SqlEventLogStorage]:
    if request.param == "sqlite":
        storage: SqlEventLogStorage = GuardedSqliteEventLogStorage(base_dir=str(tmp_path))
    else:
        create: Callable[[], str] = request.getfixturevalue("postgres_databases")
        storage = GuardedPostgresEventLogStorage(postgres_url=create().replace("+psycopg2", ""))
    yield storage
    storage.dispose()


def _race(event_log: SqlEventLogStorage, run_prefix: str) -> int:
    """CLAIMANTS threads claim a slot at the same moment; how many got one."""
    start = threading.Barrier(CLAIMANTS)
    claimed: list[int] = []

    def claim(i: int) -> None:
        start.wait()
        if event_log.claim_concurrency_slot("llm", f"{run_prefix}-{i}", "ai_answer").is_claimed:
            claimed.append(i)

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(CLAIMANTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for i in range(CLAIMANTS):
        event_log.free_concurrency_slots_for_run(f"{run_prefix}-{i}")
    return len(claimed)


@pytest.mark.parametrize("limit", [1, 3])
def test_racing_claims_never_exceed_the_pool_limit(event_log: SqlEventLogStorage, limit: int) -> None:
    event_log.set_concurrency_slots("llm", limit)
    claimed = [_race(event_log, f"round{n}") for n in range(ROUNDS)]
    assert max(claimed) <= limit, f"claimants per round with {limit} slot(s): {claimed}"
    assert max(claimed) == limit  # the limit was reached, so the rounds really raced for it
    assert event_log.get_concurrency_info("llm").slot_count == limit
