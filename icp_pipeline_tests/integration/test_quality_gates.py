"""Quality gates on the org roll-up and cycle budgets (issue 10, items 4 and 5), as real Dagster runs.

A two-item org keeps each cycle to a few seconds. Model replies come from the offline provider
(synthetic, free) or, where money matters, from a provider object at the provider boundary that
bills each reply.
"""

import hashlib
import hmac
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa

from icp_pipeline.alerts import deliver_gate_alert, record_gate_failure
from icp_pipeline.cli.main import EXIT_GATE_BLOCKED, _report_cycle
from icp_pipeline.cli.runner import push_latest, run_cycle
from icp_pipeline.db.models import (
    AnalyticsSnapshot,
    Cycle,
    CycleItem,
    ModelCall,
    Org,
    PushDelivery,
    QualityAlert,
    RunFailure,
)
from icp_pipeline.db.session import session_scope, upgrade
from icp_pipeline.defs.operations.sensors import run_failure_alert_sensor
from icp_pipeline.defs.resources import AppDatabase, ModelProviderResource, PushResource
from icp_pipeline.ledger import BudgetExhausted, cycle_spend_usd, purchase_subject
from icp_pipeline.providers.base import ModelRequest, ModelResponse
from icp_pipeline.visibility import steps
from icp_pipeline.visibility.cycles import open_cycle
from icp_pipeline.visibility.org_file import parse_org_file, upsert_org
from icp_pipeline.visibility.push import IDEMPOTENCY_HEADER, SIGNATURE_HEADER
from icp_pipeline_tests.conftest import load_example
from icp_pipeline_tests.support.pipeline import count, pipeline_defs
from icp_pipeline_tests.support.webhook import WebhookReceiver

SECRET = "whsec-gates-5d1e"
TINY = """id: tiny
name: Tiny
target: {{name: Acme, aliases: [Acme Analytics], domains: [acme.io]}}
competitors:
  - {{name: Globex, aliases: [Globex Corp], domains: [globex.com]}}
models:
{models}
locations: [US]
questions:
  - What is the best product analytics tool for a startup?
{extra}"""
TWO_MODELS = "  - {provider: openai, model: gpt-4o-mini}\n  - {provider: anthropic, model: claude-haiku-4-5}"


def _load_tiny(db_url: str, tmp_path: Path, models: str = TWO_MODELS, extra: str = "") -> None:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY.format(models=models, extra=extra))
    with session_scope(db_url) as session:
        upsert_org(session, parse_org_file(path))


def _defs(db_url: str, push_url: str, **kwargs: object) -> dg.Definitions:
    push = PushResource(webhook_url=push_url, webhook_secret=SECRET, backoff_seconds=0.01)
    return pipeline_defs(db_url, push=push, **kwargs)


def _rollup_checks(run_id: str) -> dict[str, tuple[bool, str]]:
    """check name -> (passed, severity) as the roll-up run recorded them."""
    events = dg.DagsterInstance.get().all_logs(run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION)
    return {
        e.dagster_event.event_specific_data.check_name: (
            e.dagster_event.event_specific_data.passed,
            e.dagster_event.event_specific_data.severity.value,
        )
        for e in events
    }


def _last_rollup(cycle_id: int) -> dg.DagsterRun:
    runs = dg.DagsterInstance.get().get_runs(
        dg.RunsFilter(job_name="org_rollup_job", tags={"icp/cycle_id": str(cycle_id)}), limit=1
    )
    return runs[0]


def _alerts(db_url: str) -> list[tuple[str, str, str, int]]:
    with session_scope(db_url) as session:
        rows = session.scalars(sa.select(QualityAlert).order_by(QualityAlert.id))
        return [(a.check_name, a.severity, a.status, a.attempts) for a in rows]


def _signed(request: object) -> bool:
    expected = "sha256=" + hmac.new(SECRET.encode(), request.body, hashlib.sha256).hexdigest()
    return request.headers[SIGNATURE_HEADER] == expected


def test_every_gate_passing_lets_the_push_through(sqlite_app: str, tmp_path: Path, monkeypatch) -> None:
    _load_tiny(sqlite_app, tmp_path, extra="budget_usd: 5\n")
    with WebhookReceiver() as push_hook, WebhookReceiver() as alert_hook:
        monkeypatch.setenv("ICP_ALERT_WEBHOOK_URL", alert_hook.url)
        outcome = run_cycle("tiny", workers=2, progress=False, defs=_defs(sqlite_app, push_hook.url))
        assert outcome.pushed and not outcome.blocked_by
        assert len(push_hook.requests) == 1 and alert_hook.requests == []
    assert _rollup_checks(_last_rollup(outcome.cycle_id).run_id) == {
        "completion": (True, "ERROR"),
        "no_synthetic_in_live": (True, "ERROR"),
        "within_budget": (True, "ERROR"),
        "no_significant_drop": (True, "WARN"),
    }
    assert (outcome.spent_usd, outcome.budget_usd) == (0.0, 5.0)
    assert _report_cycle(outcome) == 0


def test_completion_below_min_blocks_the_push_and_alerts_once_per_cycle_and_check(
    sqlite_app: str, tmp_path: Path, monkeypatch
) -> None:
    _load_tiny(sqlite_app, tmp_path)
    with WebhookReceiver() as push_hook, WebhookReceiver(fail_first=1) as alert_hook:
        monkeypatch.setenv("ICP_ALERT_WEBHOOK_URL", alert_hook.url)
        defs = _defs(sqlite_app, push_hook.url, fail_models=("claude-haiku-4-5",))
        outcome = run_cycle("tiny", workers=2, progress=False, defs=defs)
        assert (outcome.status, outcome.completed, outcome.failed) == ("succeeded", 1, 1)
        assert not outcome.pushed
        assert outcome.blocked_by == [
            "completion: cycle 1: 1 of 2 question runs completed (50.0%), below min_completion 80%"
        ]
        assert push_hook.requests == [] and count(sqlite_app, PushDelivery) == 0
        rollup = _last_rollup(outcome.cycle_id)
        assert rollup.status == dg.DagsterRunStatus.FAILURE
        assert _rollup_checks(rollup.run_id)["completion"] == (False, "ERROR")
        stats = {
            s.step_key: s.status.value for s in dg.DagsterInstance.get().get_run_step_stats(rollup.run_id)
        }
        assert stats["org_analytics_completion"] == "FAILURE"
        assert stats.get("analytics_push", "SKIPPED") == "SKIPPED", stats

        # The alert: the receiver's first 503 was retried; signed like the push, keyed by cycle and check.
        assert len(alert_hook.requests) == 2
        alert = alert_hook.requests[-1]
        assert _signed(alert)
        assert alert.headers[IDEMPOTENCY_HEADER] == "icp-tiny-cycle-1-gate-completion"
        assert alert.json == {
            "kind": "quality_gate",
            "org_id": "tiny",
            "cycle_id": 1,
            "check": "completion",
            "severity": "ERROR",
            "blocking": True,
            "description": outcome.blocked_by[0].removeprefix("completion: "),
            "detected_at": alert.json["detected_at"],
        }
        assert _alerts(sqlite_app) == [("completion", "ERROR", "sent", 2)]

        # `org push`, as a user runs it: the gates run again, still blocked, exit 4, no second alert.
        env = {**os.environ, "ICP_PUSH_WEBHOOK_URL": push_hook.url, "ICP_OFFLINE_FAIL_MODELS": ""}
        command = [sys.executable, "-m", "icp_pipeline.cli.main", "org", "push", "tiny"]
        again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        assert again.returncode == EXIT_GATE_BLOCKED, again.stderr[-2000:]
        assert (
            "error: the push of cycle 1 was blocked by 1 quality gate(s): completion: cycle 1" in again.stderr
        )
        assert "spent $0.0000 (cycle 1, from the ledger)" in again.stdout
        assert len(alert_hook.requests) == 2 and push_hook.requests == []

        # The failure sensor records the blocked roll-up but does not alert it a second time.
        instance = dg.DagsterInstance.get()
        rollup = _last_rollup(outcome.cycle_id)
        failure = instance.all_logs(rollup.run_id, of_type=dg.DagsterEventType.RUN_FAILURE)[0]
        run_failure_alert_sensor(
            dg.build_run_status_sensor_context(
                sensor_name=run_failure_alert_sensor.name,
                dagster_event=failure.dagster_event,
                dagster_instance=instance,
                dagster_run=rollup,
                resources={"app_db": AppDatabase(url=sqlite_app)},
            ).for_run_failure()
        )
        with session_scope(sqlite_app) as session:
            assert session.get(RunFailure, rollup.run_id).alert_status == "quality_gate"
        assert len(alert_hook.requests) == 2

        # The operator's override pushes without the blocking gates.
        forced = push_latest("tiny", defs=defs, ignore_gates=True)
        assert forced.pushed and not forced.blocked_by
        assert len(push_hook.requests) == 1 and len(alert_hook.requests) == 2


def test_a_synthetic_answer_in_live_mode_blocks_the_push(sqlite_app: str, tmp_path: Path) -> None:
    # The offline provider answers even in live mode: a model entry naming it yields synthetic answers.
    _load_tiny(
        sqlite_app,
        tmp_path,
        models="  - {provider: offline, model: echo}\n  - {provider: offline, model: echo-2}",
    )
    with WebhookReceiver() as push_hook:
        defs = _defs(sqlite_app, push_hook.url, models=ModelProviderResource(mode="live"))
        outcome = run_cycle("tiny", workers=2, progress=False, defs=defs)
        assert outcome.completed == 2 and not outcome.pushed
        assert [b.split(":")[0] for b in outcome.blocked_by] == ["no_synthetic_in_live"]
        assert "4 synthetic (offline) model calls" in outcome.blocked_by[0]
        assert push_hook.requests == []
        # The same cycle pushed in auto mode: synthetic answers are allowed there.
        assert push_latest("tiny", defs=_defs(sqlite_app, push_hook.url)).pushed
        assert len(push_hook.requests) == 1
    assert _alerts(sqlite_app) == [("no_synthetic_in_live", "ERROR", "off", 0)]


def test_a_significant_drop_warns_and_alerts_but_does_not_block(
    sqlite_app: str, tmp_path: Path, monkeypatch
) -> None:
    _load_tiny(sqlite_app, tmp_path)
    # An earlier cycle where the target was in every one of 400 answers, with a tight share of voice.
    previous = {
        "companies": [
            {
                "name": "Acme",
                "is_target": True,
                "runs": 400,
                "mentioned_runs": 400,
                "mention_rate": 1.0,
                "share_of_voice": 0.99,
                "share_of_voice_ci": [0.98, 1.0],
            },
        ]
    }
    with session_scope(sqlite_app) as session:
        earlier = Cycle(org_id="tiny", status="succeeded", total=400, completed=400)
        session.add(earlier)
        session.flush()
        session.add(
            AnalyticsSnapshot(org_id="tiny", cycle_id=earlier.id, payload=previous, analytics_version="t")
        )
        open_cycle(session, "tiny")
    with WebhookReceiver() as push_hook, WebhookReceiver() as alert_hook:
        monkeypatch.setenv("ICP_ALERT_WEBHOOK_URL", alert_hook.url)
        outcome = run_cycle("tiny", workers=2, progress=False, defs=_defs(sqlite_app, push_hook.url))
        assert outcome.pushed and not outcome.blocked_by
        assert len(push_hook.requests) == 1
        target = outcome.payload["companies"][0]
        assert target["mention_rate"] < 1.0 and target["change"]["significant"]
        assert _rollup_checks(_last_rollup(outcome.cycle_id).run_id)["no_significant_drop"] == (False, "WARN")
        assert [r.json["check"] for r in alert_hook.requests] == ["no_significant_drop"]
        assert alert_hook.requests[0].json["blocking"] is False
        assert "mention rate 100.0% ->" in alert_hook.requests[0].json["description"]
    assert _alerts(sqlite_app) == [("no_significant_drop", "WARN", "sent", 1)]


# --- budgets ---------------------------------------------------------------------------------------


class BilledProvider:
    """The offline provider's replies, billed: not synthetic, `usd` each. Counts what it is asked."""

    name = "billed"

    def __init__(self, usd: float) -> None:
        self.offline = ModelProviderResource(mode="offline").provider_for
        self.usd = usd
        self.requests: list[ModelRequest] = []

    def complete(self, request: ModelRequest) -> ModelResponse:
        self.requests.append(request)
        response = self.offline(request.provider, request.model).complete(request)
        return replace(response, synthetic=False, cost_usd=self.usd)


def test_the_budget_stops_purchases_once_spent_and_reuse_still_works(app_url: str) -> None:
    with session_scope(app_url) as session:
        session.get(Org, "acme").budget_usd = 0.025
        cycle, _ = open_cycle(session, "acme")
        cycle_id = cycle.id
        keys = list(dict.fromkeys(i.partition_key for i in cycle.items))[:5]
    provider = BilledProvider(usd=0.01)

    def answers(key: str) -> dict:
        return steps.buy_answers(app_url, key, lambda _p, _m: provider)

    for key in keys[:3]:  # spent 0, 0.01, 0.02: under the budget each time
        assert answers(key)["bought"] == 1
    for key in keys[3:]:
        with pytest.raises(
            BudgetExhausted, match="budget exhausted: the cycle spent \\$0.0300 of its \\$0.0250"
        ):
            answers(key)
    assert len(provider.requests) == 3
    with session_scope(app_url) as session:
        assert cycle_spend_usd(session, cycle_id) == 0.03
    assert count(app_url, ModelCall) == 3  # nothing recorded for the refused purchases
    # An answer already in the ledger is reused past the budget: it costs nothing.
    assert answers(keys[0])["reused"] == 1 and len(provider.requests) == 3


def test_a_cycle_over_budget_fails_the_rest_blocks_the_push_and_reuses_what_it_has(
    sqlite_app: str, tmp_path: Path, capsys
) -> None:
    _load_tiny(sqlite_app, tmp_path, extra="budget_usd: 0.01\nmin_completion: 0.5\n")
    with session_scope(sqlite_app) as session:
        cycle, _ = open_cycle(session, "tiny")
        first, second = cycle.items
        # An earlier attempt of this cycle bought the first item's answer and claims for $0.02.
        for purpose, text, usd in (
            ("answer", "Acme and Globex are both fine.", 0.02),
            ("claims", '{"claims": []}', 0.0),
        ):
            session.add(
                ModelCall(
                    cycle_item_id=first.id,
                    subject=purchase_subject(purpose, first.id),
                    call_uid=f"{purpose}-1",
                    purpose=purpose,
                    provider="openai",
                    requested_model="gpt-4o-mini",
                    prompt="p",
                    ok=True,
                    paid=True,
                    finish="complete",
                    output_text=text,
                    cost_usd=usd,
                    synthetic=False,
                )
            )
        first_id, second_id = first.id, second.id
    with WebhookReceiver() as push_hook:
        outcome = run_cycle("tiny", workers=2, progress=False, defs=_defs(sqlite_app, push_hook.url))
        assert (outcome.completed, outcome.failed) == (1, 1)
        assert push_hook.requests == []
    with session_scope(sqlite_app) as session:
        assert session.get(CycleItem, first_id).status == "succeeded"
        refused = session.get(CycleItem, second_id)
        assert refused.status == "failed" and refused.failed_step == "ai_answer"
        assert "budget exhausted" in refused.error
    assert count(sqlite_app, ModelCall) == 2  # nothing bought past the budget
    assert [b.split(":")[0] for b in outcome.blocked_by] == ["within_budget"]
    assert "1 items were not bought (budget exhausted)" in outcome.blocked_by[0]
    assert (outcome.spent_usd, outcome.budget_usd) == (0.02, 0.01)
    assert _report_cycle(outcome) == EXIT_GATE_BLOCKED
    assert "spent $0.0200 of its budget_usd $0.0100" in capsys.readouterr().out

    # Asked for, the next cycle opens: the blocked one stays unpushed rather than being re-rolled.
    announced: list[str] = []
    with WebhookReceiver() as push_hook:
        defs = _defs(sqlite_app, push_hook.url)
        following = run_cycle("tiny", progress=False, defs=defs, new_cycle=True, announce=announced.append)
        assert following.cycle_id == outcome.cycle_id + 1 and following.pushed
        assert len(push_hook.requests) == 1
    assert (
        announced[0]
        == "cycle 1 of tiny stays unpushed (a blocking quality gate failed); opening a new cycle as asked"
    )


# --- one alert per cycle and check, on both databases --------------------------------------------------


@pytest.fixture(params=["sqlite", "postgres"])
def app_url(request: pytest.FixtureRequest) -> str:
    if request.param == "sqlite":
        return request.getfixturevalue("sqlite_app")
    request.getfixturevalue("icp_env")
    url = request.getfixturevalue("postgres_databases")()
    upgrade(url)
    load_example(url)
    return url


def test_a_failed_gate_is_recorded_once_and_a_failed_delivery_is_retried_until_sent(app_url: str) -> None:
    with session_scope(app_url) as session:
        cycle_id = open_cycle(session, "acme")[0].id

    def record() -> int:
        with session_scope(app_url) as session:
            return record_gate_failure(session, "acme", cycle_id, "completion", "ERROR", "1 of 45").id

    first = record()
    assert deliver_gate_alert(app_url, first, None, SECRET) == "off"  # no webhook configured yet
    with WebhookReceiver(fail_first=5) as hook:
        # Down: three attempts, recorded failed without the URL's path.
        assert record() == first
        assert deliver_gate_alert(app_url, first, hook.url, SECRET, backoff_seconds=0.01) == "failed"
        assert len(hook.requests) == 3
        with session_scope(app_url) as session:
            alert = session.get(QualityAlert, first)
            assert (alert.attempts, alert.error) == (3, f"HTTP 503 from {hook.url.removesuffix('/hook')}")
    with WebhookReceiver() as hook:
        # The next roll-up of the cycle retries it; once sent, never again.
        assert record() == first
        assert deliver_gate_alert(app_url, first, hook.url, SECRET) == "sent"
        assert record() == first
        assert deliver_gate_alert(app_url, first, hook.url, SECRET) == "sent"
        assert len(hook.requests) == 1 and _signed(hook.requests[0])
    assert count(app_url, QualityAlert) == 1
    with session_scope(app_url) as session:
        alert = session.get(QualityAlert, first)
        assert (alert.status, alert.attempts, alert.error) == ("sent", 4, None)
        assert alert.sent_at is not None


def test_the_sensor_s_rollup_job_runs_every_gate_and_the_override_job_only_the_warning() -> None:
    defs = pipeline_defs("sqlite://")

    def steps_of(job: str) -> set[str]:
        return {node.name for node in defs.resolve_job_def(job).graph.nodes}

    # cycle_complete_sensor requests org_rollup_job; `org run` and `org push` execute it too.
    assert steps_of("org_rollup_job") == {
        "latest_runs",
        "org_analytics",
        "org_analytics_completion",
        "org_analytics_no_synthetic_in_live",
        "org_analytics_within_budget",
        "org_analytics_no_significant_drop",
        "analytics_push",
    }
    assert steps_of("org_rollup_ungated_job") == {
        "latest_runs",
        "org_analytics",
        "org_analytics_no_significant_drop",
        "analytics_push",
    }
