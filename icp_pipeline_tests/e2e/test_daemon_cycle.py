"""End to end with the real processes: dagster-daemon and dagster-webserver on a PostgreSQL instance.

The test only loads an org into the app database. Everything after that is the daemon's work: the
sync sensor registers the partitions and opens the first cycle, the queue launches the 45 question
runs, the pool caps model calls at 3, the roll-up sensor requests the org roll-ups once, and the
analytics reach a webhook receiver. One run worker is killed with SIGKILL in the middle of its model
call; the code server fails that run, run retries relaunch it, and the cycle still completes without
a duplicate row or an answer bought twice.
"""

import hashlib
import hmac
import os
import re
import signal
import time

import dagster as dg
import pytest
import sqlalchemy as sa
import yaml
from dagster._core.storage.dagster_run import RunsFilter

from icp_pipeline.db.models import Cycle, CycleItem, ModelCall, PushDelivery, QuestionRun
from icp_pipeline.db.session import session_scope
from icp_pipeline.visibility.push import idempotency_key
from icp_pipeline_tests.conftest import load_example
from icp_pipeline_tests.e2e.conftest import ProductionStack
from icp_pipeline_tests.support.dagster_services import dagster_services, wait_until
from icp_pipeline_tests.support.pipeline import count, max_concurrent_calls
from icp_pipeline_tests.support.webhook import WebhookReceiver

pytestmark = pytest.mark.postgres

SECRET = "e2e-push-secret"
Status = dg.DagsterRunStatus

# Dagster 1.13's sensor daemon evaluates the sensors once per pass of at least 5 s.
SENSOR_DAEMON_LOOP_SECONDS = 5


def _runs(instance: dg.DagsterInstance, job: str) -> list[dg.DagsterRun]:
    return list(instance.get_runs(RunsFilter(job_name=job)))


def _worker_mid_model_call(instance: dg.DagsterInstance) -> tuple[dg.DagsterRun, int] | None:
    """A question run whose `ai_answer` step has started (it holds a pool slot and waits on the model)
    and not finished, with the pid of its run worker."""
    for run in instance.get_runs(RunsFilter(job_name="question_run_job", statuses=[Status.STARTED])):
        events = instance.all_logs(run.run_id)
        steps = {(e.dagster_event.event_type, e.step_key) for e in events if e.is_dagster_event}
        started = (dg.DagsterEventType.STEP_START, "ai_answer") in steps
        finished = (dg.DagsterEventType.STEP_SUCCESS, "ai_answer") in steps
        pids = [
            re.search(r"pid: (\d+)", e.message or "")
            for e in events
            if "Started process for run" in (e.message or "")
        ]
        if started and not finished and pids and pids[0]:
            return run, int(pids[0].group(1))
    return None


def test_daemon_runs_a_cycle_and_recovers_a_killed_run_worker(production_stack: ProductionStack) -> None:
    app_url, home = production_stack.app_url, production_stack.home
    load_example(app_url)
    config = yaml.safe_load((home / "dagster.yaml").read_text())
    assert config["run_coordinator"]["class"] == "QueuedRunCoordinator"

    with (
        WebhookReceiver() as push_hook,
        WebhookReceiver() as alert_hook,
        dagster_services(
            home,
            production_stack.service_env(
                ICP_PUSH_WEBHOOK_URL=push_hook.url,
                ICP_PUSH_WEBHOOK_SECRET=SECRET,
                ICP_ALERT_WEBHOOK_URL=alert_hook.url,
                # Each model call takes 3 s, so calls of runs launched seconds apart still overlap and the
                # pool cap is what limits them (at 1 s, one run of the e2e suite peaked at 2).
                ICP_OFFLINE_LATENCY_SECONDS="3.0",
            ),
        ) as services,
        dg.DagsterInstance.from_config(str(home)) as instance,
    ):
        # A run status sensor only reports failures after its first tick; the cycle's first runs now
        # start within seconds of the daemon, so kill a worker only once the failure sensor has ticked.
        wait_until(
            lambda: any(
                "run_failure_alert_sensor" in path.read_text(errors="replace")
                for path in services.logs.glob("*.log")
            ),
            timeout=120,
            interval=0.5,
            what="the failure sensor's first tick",
            logs=services.logs,
        )
        victim, pid = wait_until(
            lambda: _worker_mid_model_call(instance),
            timeout=300,
            interval=0.2,
            what="a question run in the middle of its model call",
            logs=services.logs,
        )
        os.kill(pid, signal.SIGKILL)

        def cycle_pushed() -> bool:
            with session_scope(app_url) as session:
                cycle = session.scalars(sa.select(Cycle)).first()
                done = cycle is not None and cycle.status != "running"
            rollups = _runs(instance, "org_rollup_job")
            return done and bool(push_hook.requests) and any(r.status == Status.SUCCESS for r in rollups)

        wait_until(
            cycle_pushed, timeout=600, interval=2, what="the cycle to complete and push", logs=services.logs
        )
        # Let every sensor tick at least once more: nothing new may run.
        time.sleep(SENSOR_DAEMON_LOOP_SECONDS + 10)
        in_flight = instance.get_runs(RunsFilter(statuses=[Status.QUEUED, Status.STARTING, Status.STARTED]))
        assert in_flight == []

        # Partitions were registered by the sensor, not by the test.
        assert instance.get_dynamic_partitions("orgs") == ["acme"]
        keys = set(instance.get_dynamic_partitions("question_runs"))
        assert len(keys) == 45

        # The killed run failed as a crash, was retried once from the failure, and the retry succeeded.
        victim = instance.get_run_by_id(victim.run_id)
        assert victim.status == Status.FAILURE
        retries = [
            r
            for r in _runs(instance, "question_run_job")
            if r.tags.get("dagster/parent_run_id") == victim.run_id
        ]
        assert [r.status for r in retries] == [Status.SUCCESS]
        assert retries[0].tags["dagster/partition"] == victim.tags["dagster/partition"]

        # 45 partitions, each succeeded once; the only failed run is the killed one.
        question_runs = _runs(instance, "question_run_job")
        succeeded = [r.tags["dagster/partition"] for r in question_runs if r.status == Status.SUCCESS]
        assert sorted(succeeded) == sorted(keys)
        assert [r.run_id for r in question_runs if r.status == Status.FAILURE] == [victim.run_id]

        # Roll-ups ran once and pushed once, signed, with the idempotency key of the cycle.
        rollups = _runs(instance, "org_rollup_job")
        assert [r.status for r in rollups] == [Status.SUCCESS]
        assert len(push_hook.requests) == 1
        delivery = push_hook.requests[0]
        expected = hmac.new(SECRET.encode(), delivery.body, hashlib.sha256).hexdigest()
        assert delivery.headers["X-ICP-Signature"] == f"sha256={expected}"
        assert delivery.json["runs"]["completed"] == 45

        # The failure sensor reported the killed run, and only it. It ticks on its own interval (30 s),
        # and the cycle can now finish before its next tick: wait for the alert rather than race it.
        wait_until(
            lambda: alert_hook.requests,
            timeout=120,
            interval=2,
            what="the killed run's alert",
            logs=services.logs,
        )
        time.sleep(2 * SENSOR_DAEMON_LOOP_SECONDS)  # room for a wrong second alert to show up
        assert [a.json["run_id"] for a in alert_hook.requests] == [victim.run_id]

        # The pool kept its 3 slots: the killed step's slot was freed after its run ended.
        pool = instance.event_log_storage.get_concurrency_info("llm")
        assert pool.slot_count == 3 and pool.claimed_slots == []

    with session_scope(app_url) as session:
        cycle = session.scalars(sa.select(Cycle)).one()
        assert (cycle.status, cycle.total, cycle.completed, cycle.failed) == ("succeeded", 45, 45, 0)
        assert delivery.headers["Idempotency-Key"] == idempotency_key("acme", cycle.id, delivery.json)
    # No duplicate rows, and no answer bought twice (the killed call never returned, so it was never paid).
    assert count(app_url, CycleItem) == 45
    assert count(app_url, QuestionRun) == 45
    answers = count(app_url, ModelCall, ModelCall.purpose == "answer", ModelCall.ok)
    with session_scope(app_url) as session:
        answered_items = session.scalar(
            sa.select(sa.func.count(sa.distinct(ModelCall.cycle_item_id))).where(
                ModelCall.purpose == "answer", ModelCall.ok
            )
        )
    assert answers == answered_items == 45
    assert count(app_url, PushDelivery, PushDelivery.status_code == 200) == 1
    # Never more than 3 model calls at once, and the cap was reached (the pool, not chance, bounded it).
    assert max_concurrent_calls(app_url) == 3
