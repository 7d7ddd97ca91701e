"""A step waiting for a pool slot sleeps between short, fixed retries (icp_pipeline/instance/pool_wait.py).

Dagster 1.13.27 alone retries a blocked claim after 1 s, growing to 15 s, and spins between retries.
"""

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.execution.plan import instance_concurrency_context
from dagster._core.execution.plan.instance_concurrency_context import InstanceConcurrencyContext

from icp_pipeline.cli.instance import write_embedded_instance_yaml
from icp_pipeline.instance import pool_wait
from icp_pipeline.instance.pool_wait import POOL_CLAIM_RETRY_SECONDS

HOLD_SECONDS = 1.5


@dg.op(pool="llm")
def pooled_step() -> int:
    return 1


@dg.job(executor_def=dg.in_process_executor)
def pooled_job() -> None:
    pooled_step()


@pytest.fixture(params=["guarded", "stock"])
def instance(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dg.DagsterInstance]:
    """The CLI's embedded instance (our guarded SQLite event log), and Dagster's stock SQLite event
    log (as on Kubernetes, where the chart configures dagster-postgres's own class)."""
    if request.param == "guarded":
        write_embedded_instance_yaml(tmp_path)
        context = dg.DagsterInstance.from_config(str(tmp_path))
    else:
        context = dg.instance_for_test(temp_dir=str(tmp_path))
    with context as instance:
        instance.event_log_storage.set_concurrency_slots("llm", 1)
        yield instance


def test_a_blocked_claim_is_told_to_retry_soon(tmp_path: Path) -> None:
    write_embedded_instance_yaml(tmp_path)
    instance = dg.DagsterInstance.from_config(str(tmp_path))
    storage = instance.event_log_storage
    storage.set_concurrency_slots("llm", 1)
    assert storage.claim_concurrency_slot("llm", "holder", "step").is_claimed
    blocked = storage.claim_concurrency_slot("llm", "waiter", "step")
    assert not blocked.is_claimed
    assert blocked.sleep_interval == POOL_CLAIM_RETRY_SECONDS
    instance.dispose()


def test_the_patch_targets_the_installed_dagster() -> None:
    assert dg.__version__ == pool_wait.PINNED_DAGSTER  # re-check the patch before changing the pin
    assert pool_wait.APPLIED


def test_without_an_interval_from_the_storage_a_claim_retries_after_the_short_one() -> None:
    import icp_pipeline.definitions  # noqa: F401 - the code location applies the patch

    assert instance_concurrency_context._calculate_timeout_interval(None, 25) == POOL_CLAIM_RETRY_SECONDS  # noqa: SLF001
    assert instance_concurrency_context._calculate_timeout_interval(0.5, 25) == 0.5  # noqa: SLF001


def test_a_waiting_step_sleeps_between_retries_and_starts_once_the_slot_is_free(
    instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = instance.event_log_storage
    assert storage.claim_concurrency_slot("llm", "holder", "step").is_claimed
    # Count the executor's claim attempts (Dagster's own method, wrapped, not replaced).
    attempts = 0
    claim = InstanceConcurrencyContext.claim

    def counted(self: InstanceConcurrencyContext, *args: object, **kwargs: object) -> bool:
        nonlocal attempts
        attempts += 1
        return claim(self, *args, **kwargs)

    monkeypatch.setattr(InstanceConcurrencyContext, "claim", counted)
    release = threading.Timer(HOLD_SECONDS, storage.free_concurrency_slots_for_run, args=("holder",))
    started = time.monotonic()
    release.start()
    try:
        result = pooled_job.execute_in_process(instance=instance)
    finally:
        release.cancel()
    waited = time.monotonic() - started
    assert result.success
    assert waited >= HOLD_SECONDS  # it really waited for the slot
    # Asleep between retries: about one attempt per POOL_CLAIM_RETRY_SECONDS of waiting (the wait
    # runs past HOLD_SECONDS on a loaded machine). A spinning executor makes tens of thousands.
    assert attempts <= 2 * waited / POOL_CLAIM_RETRY_SECONDS + 5, (attempts, waited)
    assert attempts >= 2  # it was blocked at least once, then claimed


def test_the_interval_to_the_next_check_is_the_time_until_the_earliest_retry(
    instance: dg.DagsterInstance,
) -> None:
    with InstanceConcurrencyContext(instance, instance.create_run_for_job(pooled_job)) as context:
        assert context.interval_to_next_pending_claim_check() == 0.0  # nothing pending
        storage = instance.event_log_storage
        assert storage.claim_concurrency_slot("llm", "holder", "step").is_claimed
        assert not context.claim("llm", "pooled_step")
        interval = context.interval_to_next_pending_claim_check()
        assert 0 < interval <= POOL_CLAIM_RETRY_SECONDS
