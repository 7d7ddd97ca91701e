"""A full ProcessOrg cycle as real Dagster runs on a real instance (SQLite storage, pool llm = 3)."""

import hashlib
import hmac
import json

import sqlalchemy as sa
from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

from icp_pipeline.cli.runner import run_cycle
from icp_pipeline.db.models import (
    Citation,
    Claim,
    CompetitiveMetric,
    Cycle,
    CycleItem,
    Mention,
    ModelCall,
    Org,
    PushDelivery,
    QuestionRun,
)
from icp_pipeline.db.session import session_scope
from icp_pipeline.defs.resources import PushResource
from icp_pipeline.visibility.push import IDEMPOTENCY_HEADER, SIGNATURE_HEADER, idempotency_key
from icp_pipeline_tests.support.pipeline import count, max_concurrent_calls, pipeline_defs
from icp_pipeline_tests.support.webhook import WebhookReceiver

SECRET = "whsec-test-7f3a9c"


def test_full_cycle_runs_45_question_runs_and_pushes_signed_analytics(sqlite_app: str) -> None:
    with WebhookReceiver() as hook:
        defs = pipeline_defs(
            sqlite_app, push=PushResource(webhook_url=hook.url, webhook_secret=SECRET, backoff_seconds=0.01)
        )
        outcome = run_cycle("acme", workers=3, progress=False, defs=defs)

        assert (outcome.status, outcome.total, outcome.completed, outcome.failed) == ("succeeded", 45, 45, 0)
        assert outcome.pushed and outcome.rolled_up
        assert count(sqlite_app, QuestionRun, QuestionRun.status == "completed") == 45
        assert count(sqlite_app, QuestionRun, QuestionRun.is_latest) == 45
        assert count(sqlite_app, ModelCall, ModelCall.purpose == "answer") == 45
        assert count(sqlite_app, ModelCall, ModelCall.purpose == "claims") == 45
        assert count(sqlite_app, CompetitiveMetric) == 45 * 4

        # Real Dagster runs, recorded in the instance at DAGSTER_HOME: 45 question runs + 1 roll-up.
        instance = DagsterInstance.get()
        runs = instance.get_runs(RunsFilter(tags={"icp/cycle_id": str(outcome.cycle_id)}))
        assert len(runs) == 46
        assert all(r.status == DagsterRunStatus.SUCCESS for r in runs)
        assert len(instance.get_dynamic_partitions("question_runs")) == 45

        assert len(hook.requests) == 1
        request = hook.requests[0]
        expected = "sha256=" + hmac.new(SECRET.encode(), request.body, hashlib.sha256).hexdigest()
        assert request.headers[SIGNATURE_HEADER] == expected
        assert request.headers[IDEMPOTENCY_HEADER] == idempotency_key("acme", outcome.cycle_id, request.json)
        assert request.headers[IDEMPOTENCY_HEADER].startswith(f"icp-acme-cycle-{outcome.cycle_id}-")
        payload = request.json
        assert payload["runs"] == {"total": 45, "completed": 45, "failed": 0}
        assert payload["synthetic"] is True
        assert [c["name"] for c in payload["companies"]] == ["Acme", "Globex", "Initech", "Umbrella"]
        assert sorted(payload["by_location"]) == ["DE", "FR", "US"]
        assert len(payload["by_model"]) == 3
        assert payload == outcome.payload

        # The secret signs, but is never stored in the app database nor in the Dagster event log.
        with session_scope(sqlite_app) as session:
            dump = json.dumps([row.__dict__ for row in session.scalars(sa.select(PushDelivery))], default=str)
        assert SECRET not in dump
        logs = instance.all_logs(runs[0].run_id)
        assert all(SECRET not in str(event) for event in logs)

        # Materializing the push again for the same cycle re-sends with the same idempotency key.
        rollup = defs.resolve_job_def("org_rollup_job").execute_in_process(
            partition_key="acme", instance=instance
        )
        assert rollup.success
        assert len(hook.requests) == 2
        assert hook.requests[1].headers[IDEMPOTENCY_HEADER] == request.headers[IDEMPOTENCY_HEADER]


def test_rerunning_partitions_never_rebuys_or_duplicates(sqlite_app: str) -> None:
    defs = pipeline_defs(sqlite_app)
    outcome = run_cycle("acme", workers=3, progress=False, defs=defs)
    assert outcome.completed == 45
    before = {
        table.__name__: count(sqlite_app, table)
        for table in (ModelCall, QuestionRun, Mention, Citation, Claim, CompetitiveMetric, CycleItem)
    }
    instance = DagsterInstance.get()
    job = defs.resolve_job_def("question_run_job")
    with session_scope(sqlite_app) as session:
        keys = list(session.scalars(sa.select(CycleItem.partition_key).order_by(CycleItem.id).limit(3)))
    for key in keys:
        assert job.execute_in_process(partition_key=key, instance=instance).success
    after = {
        name: count(sqlite_app, table)
        for name, table in [
            (t.__name__, t)
            for t in (ModelCall, QuestionRun, Mention, Citation, Claim, CompetitiveMetric, CycleItem)
        ]
    }
    assert after == before
    with session_scope(sqlite_app) as session:
        cycle = session.get(Cycle, outcome.cycle_id)
        assert (cycle.status, cycle.completed, cycle.failed) == ("succeeded", 45, 0)


def test_pool_caps_model_calls_at_three_across_runs(sqlite_app: str) -> None:
    # Six workers and slow calls: the pool, not the worker count, is what holds the line at 3.
    defs = pipeline_defs(sqlite_app, latency=0.5)
    outcome = run_cycle("acme", workers=6, progress=False, defs=defs)
    assert outcome.completed == 45
    assert max_concurrent_calls(sqlite_app) == 3
    assert DagsterInstance.get().event_log_storage.get_concurrency_info("llm").slot_count == 3


def test_one_failing_model_does_not_stop_the_cycle(sqlite_app: str) -> None:
    # 30 of 45 runs complete: below the completion gate's default (0.8), so the org accepts less.
    with session_scope(sqlite_app) as session:
        session.get(Org, "acme").min_completion = 0.6
    with WebhookReceiver(fail_first=1) as hook:
        defs = pipeline_defs(
            sqlite_app,
            fail_models=("claude-haiku-4-5",),
            push=PushResource(webhook_url=hook.url, webhook_secret=SECRET, backoff_seconds=0.01),
        )
        outcome = run_cycle("acme", workers=3, progress=False, defs=defs)

        assert (outcome.status, outcome.completed, outcome.failed) == ("succeeded", 30, 15)
        assert outcome.pushed
        with session_scope(sqlite_app) as session:
            failed = list(session.scalars(sa.select(CycleItem).where(CycleItem.status == "failed")))
            assert len(failed) == 15
            assert {item.model.model for item in failed} == {"claude-haiku-4-5"}
            assert {item.failed_step for item in failed} == {"ai_answer"}
            assert all("anthropic/claude-haiku-4-5" in item.error for item in failed)
        payload = hook.requests[-1].json
        assert payload["runs"] == {"total": 45, "completed": 30, "failed": 15}
        assert payload["companies"][0]["runs"] == 30
        assert sorted(payload["by_model"]) == ["gemini/gemini-2.5-flash", "openai/gpt-4o-mini"]
        # The first delivery got a 503 and was retried; both attempts are recorded.
        assert len(hook.requests) == 2
        attempts = [(d.attempt, d.ok, d.status_code) for d in _deliveries(sqlite_app)]
        assert attempts == [(1, False, 503), (2, True, 200)]


def test_every_run_failing_fails_the_cycle_and_pushes_nothing(sqlite_app: str) -> None:
    defs = pipeline_defs(sqlite_app, fail_models=("gpt-4o-mini", "claude-haiku-4-5", "gemini-2.5-flash"))
    outcome = run_cycle("acme", workers=3, progress=False, defs=defs)
    assert (outcome.status, outcome.completed, outcome.failed) == ("failed", 0, 45)
    assert not outcome.pushed
    assert "every one of 45" in outcome.message
    assert _deliveries(sqlite_app) == []


def _deliveries(db_url: str) -> list[PushDelivery]:
    with session_scope(db_url) as session:
        return list(session.scalars(sa.select(PushDelivery).order_by(PushDelivery.id)))
