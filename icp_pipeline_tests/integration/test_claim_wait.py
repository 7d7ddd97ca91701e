"""The run worker's wait for a pool slot sleeps instead of spinning (icp_pipeline/instance/claim_wait.py)."""

import time

import dagster as dg
from dagster._core.execution.plan.instance_concurrency_context import InstanceConcurrencyContext

from icp_pipeline.instance import claim_wait


def test_the_patch_is_applied_to_the_pinned_dagster() -> None:
    # A dagster upgrade fails here: re-read instance_concurrency_context.py, then move the pin.
    assert dg.__version__ == claim_wait.PINNED_DAGSTER
    assert claim_wait.APPLIED
    assert InstanceConcurrencyContext.interval_to_next_pending_claim_check is (
        claim_wait.interval_to_next_pending_claim_check
    )


def test_a_step_blocked_on_the_pool_sleeps_until_its_next_check_and_then_gets_the_slot() -> None:
    with dg.instance_for_test() as instance:
        instance.event_log_storage.set_concurrency_slots("llm", 1)
        holder = instance.create_run_for_job(dg.GraphDefinition("holder").to_job())
        waiter = instance.create_run_for_job(dg.GraphDefinition("waiter").to_job())
        assert instance.event_log_storage.claim_concurrency_slot("llm", holder.run_id, "ai_answer").is_claimed

        with InstanceConcurrencyContext(instance, waiter) as context:
            assert context.claim("llm", "ai_answer") is False
            wait = context.interval_to_next_pending_claim_check()
            # Dagster 1.13.27 returned a non-positive wait here, so the run worker never slept.
            assert 0 < wait <= claim_wait.CLAIM_CHECK_SECONDS
            # Before the next check the claim is not retried; after it, it is, and the freed slot is taken.
            assert context.claim("llm", "ai_answer") is False
            instance.event_log_storage.free_concurrency_slot_for_step(holder.run_id, "ai_answer")
            time.sleep(wait + 0.05)
            assert context.interval_to_next_pending_claim_check() == 0
            assert context.claim("llm", "ai_answer") is True
            assert context.interval_to_next_pending_claim_check() == 0.0


def test_repeated_blocked_checks_do_not_back_off_past_the_check_interval() -> None:
    # Dagster's own back-off grows from 1 s to 15 s, leaving a freed slot idle for seconds.
    assert claim_wait.calculate_timeout_interval(None, 0) == claim_wait.CLAIM_CHECK_SECONDS
    assert claim_wait.calculate_timeout_interval(None, 40) == claim_wait.CLAIM_CHECK_SECONDS
    assert claim_wait.calculate_timeout_interval(3.0, 40) == 3.0
