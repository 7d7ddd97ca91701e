"""The pool guard as a PostgreSQL trigger (icp_pipeline/instance/pool_guard.py) keeps dagster-postgres's
own event log (the one the Helm chart writes) at the pool limit when claims race, and leaves
Dagster's other slot updates (free, resize) working.
"""

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from dagster_postgres.event_log import PostgresEventLogStorage

from icp_pipeline.instance.pool_guard import install_pool_guard, pool_guard_installed
from icp_pipeline_tests.integration.test_pool_claims import ROUNDS, _race

pytestmark = pytest.mark.postgres


@pytest.fixture
def stock_event_log(postgres_databases: Callable[[], str]) -> Iterator[tuple[PostgresEventLogStorage, str]]:
    url = postgres_databases().replace("+psycopg2", "")
    storage = PostgresEventLogStorage(postgres_url=url)  # creates Dagster's tables
    yield storage, url
    storage.dispose()


def _guard(url: str) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        install_pool_guard(connection)
        install_pool_guard(connection)  # idempotent: a second install keeps one trigger
        assert pool_guard_installed(connection)
        count = connection.execute(
            sa.text("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'concurrency_slots'::regclass")
        ).scalar()
    engine.dispose()
    assert count == 1


@pytest.mark.parametrize("limit", [1, 3])
def test_stock_event_log_with_the_trigger_never_exceeds_the_pool_limit(
    stock_event_log: tuple[PostgresEventLogStorage, str], limit: int
) -> None:
    storage, url = stock_event_log
    _guard(url)
    storage.set_concurrency_slots("llm", limit)
    claimed = [_race(storage, f"round{n}") for n in range(ROUNDS)]
    assert max(claimed) <= limit, f"claimants per round with {limit} slot(s): {claimed}"
    assert max(claimed) == limit  # the limit was reached, so the rounds really raced for it
    info = storage.get_concurrency_info("llm")
    assert info.slot_count == limit and info.active_slot_count == 0  # every slot freed again


def test_the_trigger_lets_dagster_free_resize_and_reclaim_slots(
    stock_event_log: tuple[PostgresEventLogStorage, str],
) -> None:
    storage, url = stock_event_log
    _guard(url)
    storage.set_concurrency_slots("llm", 2)
    assert storage.claim_concurrency_slot("llm", "run-a", "step").is_claimed
    assert storage.claim_concurrency_slot("llm", "run-b", "step").is_claimed
    assert not storage.claim_concurrency_slot("llm", "run-c", "step").is_claimed  # pool full
    # Shrinking the pool marks a held slot deleted (an update the trigger must let through) ...
    storage.set_concurrency_slots("llm", 1)
    assert storage.get_concurrency_info("llm").slot_count == 1
    # ... freeing clears the claim, and a waiting step then gets the remaining slot.
    storage.free_concurrency_slots_for_run("run-a")
    storage.free_concurrency_slots_for_run("run-b")
    assert storage.claim_concurrency_slot("llm", "run-c", "step").is_claimed
    info = storage.get_concurrency_info("llm")
    assert (info.slot_count, info.active_slot_count) == (1, 1)


def test_a_second_claim_of_a_held_slot_updates_no_row(
    stock_event_log: tuple[PostgresEventLogStorage, str],
) -> None:
    """What the racing claimant's UPDATE sees: 0 rows, which Dagster's claim turns into BLOCKED."""
    storage, url = stock_event_log
    _guard(url)
    storage.set_concurrency_slots("llm", 1)
    assert storage.claim_concurrency_slot("llm", "run-a", "step").is_claimed
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        stolen = connection.execute(
            sa.text(
                "UPDATE concurrency_slots SET run_id = 'run-b', step_key = 'step' WHERE concurrency_key = 'llm'"
            )
        ).rowcount
        holder = connection.execute(sa.text("SELECT run_id FROM concurrency_slots")).scalar()
    engine.dispose()
    assert (stolen, holder) == (0, "run-a")


def test_the_installer_uses_the_instance_at_dagster_home(
    postgres_databases: Callable[[], str], tmp_path: Path
) -> None:
    """`python -m icp_pipeline.instance.pool_guard` (the code server's init container) on a new
    database: it creates Dagster's tables through the instance and installs the trigger."""
    url = postgres_databases().replace("+psycopg2", "")
    (tmp_path / "dagster.yaml").write_text(
        "event_log_storage:\n  module: dagster_postgres.event_log\n  class: PostgresEventLogStorage\n"
        f"  config:\n    postgres_url: {url}\ntelemetry:\n  enabled: false\n"
    )
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", "icp_pipeline.instance.pool_guard"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "pool guard installed" in done.stdout
    assert "postgres@" not in done.stdout + done.stderr  # no connection string in its output
    engine = sa.create_engine(url)
    with engine.connect() as connection:
        assert pool_guard_installed(connection)
    engine.dispose()
