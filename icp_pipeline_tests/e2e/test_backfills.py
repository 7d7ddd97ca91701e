"""Backfills with the real daemon: from the CLI (`dagster job backfill`) and as the UI launches them
(the webserver's `launchPartitionBackfill` mutation), on a PostgreSQL instance.

Two models are down during the first cycle, so 6 of its 9 question runs fail. The provider recovers
(the daemon restarts without the fault); a CLI backfill of exactly the failed partitions buys only
their answers, one run per partition, never more than 3 model calls at once, and the cycle rolls up
and pushes again. UI-style backfills of every question-run and segment partition then launch one run
per partition and buy nothing, and two backfills of the same partitions never run a partition twice
at once.
"""

import subprocess

import dagster as dg
import pytest
import sqlalchemy as sa
import yaml
from dagster._core.execution.backfill import BulkActionStatus
from dagster._core.storage.dagster_run import RunsFilter

from icp_pipeline.db.models import Cycle, CycleItem, ModelCall
from icp_pipeline.db.session import session_scope
from icp_pipeline.segments.site_file import parse_site_text, upsert_site
from icp_pipeline.visibility.org_file import parse_org_text, upsert_org
from icp_pipeline_tests.conftest import example_org_data
from icp_pipeline_tests.e2e.conftest import ProductionStack
from icp_pipeline_tests.integration.test_segments import EXAMPLE_SITE
from icp_pipeline_tests.support.dagster_services import (
    BIN,
    REPO_ROOT,
    DagsterServices,
    dagster_services,
    wait_until,
)
from icp_pipeline_tests.support.pipeline import count, max_concurrent_calls
from icp_pipeline_tests.support.webhook import WebhookReceiver

pytestmark = pytest.mark.postgres

DOWN_MODELS = "claude-haiku-4-5,gemini-2.5-flash"
QUESTION_RUN_ASSETS = [
    "ai_answer",
    "question_run",
    "run_mentions",
    "run_citations",
    "run_claims",
    "competitive_metrics",
]
LAUNCH_BACKFILL = """
mutation Launch($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
  }
}"""
Status = dg.DagsterRunStatus


def _load_small_org_and_site(app_url: str) -> None:
    """3 questions x 3 models x 1 location = 9 question runs; a site with 4 imported segments."""
    org = example_org_data()
    org["questions"], org["locations"] = org["questions"][:3], ["US"]
    # The first cycle completes 3 of 9 runs and must still push (the completion gate's default is 0.8).
    org["min_completion"] = 0.3
    site = yaml.safe_load(EXAMPLE_SITE.read_text())
    site["segments"] = [
        {"id": f"segment-{n}", "name": f"Segment {n}", "description": f"Buyers of kind {n}."}
        for n in range(4)
    ]
    with session_scope(app_url) as session:
        upsert_org(session, parse_org_text(yaml.safe_dump(org)))
        upsert_site(session, parse_site_text(yaml.safe_dump(site)))


def _finished_backfill_runs(
    instance: dg.DagsterInstance, backfill_id: str, expected: int
) -> list[dg.DagsterRun]:
    backfill = instance.get_backfill(backfill_id)
    runs = list(instance.get_runs(RunsFilter(tags={"dagster/backfill": backfill_id})))
    done = backfill.status != BulkActionStatus.REQUESTED and len(runs) == expected
    return runs if done and all(r.is_finished for r in runs) else []


def _ui_backfill(services: DagsterServices, assets: list[str], partitions: list[str]) -> str:
    params = {
        "partitionNames": partitions,
        "assetSelection": [{"path": [a]} for a in assets],
        "fromFailure": False,
    }
    result = services.graphql(LAUNCH_BACKFILL, {"params": params})["launchPartitionBackfill"]
    assert result["__typename"] == "LaunchBackfillSuccess", result
    return result["backfillId"]


def _answer_calls(app_url: str) -> dict[int, list[int]]:
    """cycle item id -> ids of its paid answers."""
    with session_scope(app_url) as session:
        rows = session.execute(
            sa.select(ModelCall.cycle_item_id, ModelCall.id).where(
                ModelCall.purpose == "answer", ModelCall.ok
            )
        ).all()
    calls: dict[int, list[int]] = {}
    for item_id, call_id in rows:
        calls.setdefault(item_id, []).append(call_id)
    return calls


def test_backfills_from_the_cli_and_the_ui_launch_one_run_per_partition_and_rebuy_only_failures(
    production_stack: ProductionStack,
) -> None:
    app_url, home = production_stack.app_url, production_stack.home
    _load_small_org_and_site(app_url)
    with (
        WebhookReceiver() as push_hook,
        dagster_services(
            home,
            production_stack.service_env(
                ICP_PUSH_WEBHOOK_URL=push_hook.url,
                ICP_OFFLINE_LATENCY_SECONDS="1.0",
                ICP_OFFLINE_FAIL_MODELS=DOWN_MODELS,
            ),
        ) as services,
        dg.DagsterInstance.from_config(str(home)) as instance,
    ):

        def rolled_up(times: int) -> bool:
            rollups = instance.get_runs(RunsFilter(job_name="org_rollup_job", statuses=[Status.SUCCESS]))
            return len(rollups) == times and len(push_hook.requests) == times

        # First cycle, opened and run by the sensors: 3 answers bought, 6 runs failed on the down models.
        wait_until(
            lambda: rolled_up(1),
            timeout=420,
            interval=2,
            what="the first cycle's roll-up",
            logs=services.logs,
        )
        with session_scope(app_url) as session:
            failed = sorted(
                session.scalars(sa.select(CycleItem.partition_key).where(CycleItem.status == "failed"))
            )
        assert len(failed) == 6
        assert push_hook.requests[0].json["runs"] == {"total": 9, "completed": 3, "failed": 6}
        bought_before = _answer_calls(app_url)
        assert len(bought_before) == 3

        # The providers recover: restart the daemon (and its code server) without the fault.
        wait_until(
            lambda: (
                not instance.get_runs(RunsFilter(statuses=[Status.QUEUED, Status.STARTING, Status.STARTED]))
            ),
            timeout=120,
            what="no run in flight before the restart",
        )
        services.stop("daemon")
        services.env.pop("ICP_OFFLINE_FAIL_MODELS")
        # Slower calls, so the 6 backfill runs (each spawning its own worker process) overlap and reach the cap.
        services.env["ICP_OFFLINE_LATENCY_SECONDS"] = "3.0"
        services.start_daemon()

        # CLI backfill of exactly the failed partitions, as the README's operations section shows it.
        cli = subprocess.run(
            'dagster job backfill -w workspace.yaml -j question_run_job --noprompt '
            '--partitions "$(icp-pipeline org keys acme --failed | paste -sd, -)"',
            shell=True, executable="/bin/bash", cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
            env={**services.env, "PATH": f"{BIN}:{services.env['PATH']}"},
        )  # fmt: skip
        assert cli.returncode == 0, cli.stdout + cli.stderr
        (backfill,) = instance.get_backfills()
        runs = wait_until(
            lambda: _finished_backfill_runs(instance, backfill.backfill_id, 6),
            timeout=300,
            interval=2,
            what="the CLI backfill's 6 runs",
            logs=services.logs,
        )
        assert sorted(r.tags["dagster/partition"] for r in runs) == failed  # one run per partition
        assert all(r.status == Status.SUCCESS for r in runs)

        bought_after = _answer_calls(app_url)
        assert all(len(ids) == 1 for ids in bought_after.values())  # no answer bought twice
        assert len(bought_after) == 9
        assert {item: ids for item, ids in bought_after.items() if item in bought_before} == bought_before
        assert max_concurrent_calls(app_url) == 3  # 12 calls from 6 runs: the pool held them to 3

        # The re-opened cycle completed again: roll-ups ran again and pushed the changed analytics.
        wait_until(
            lambda: rolled_up(2), timeout=120, interval=2, what="the second roll-up", logs=services.logs
        )
        with session_scope(app_url) as session:
            cycle = session.scalars(sa.select(Cycle)).one()
            assert (cycle.status, cycle.completed, cycle.failed) == ("succeeded", 9, 0)
        assert push_hook.requests[1].json["runs"] == {"total": 9, "completed": 9, "failed": 0}
        keys = [r.headers["Idempotency-Key"] for r in push_hook.requests]
        assert keys[0] != keys[1]

        # UI-style backfills (the mutation the UI's partition dialog sends): every question-run
        # partition of the six question-run assets, and every segment of segment_icp.
        calls_before = count(app_url, ModelCall)
        all_keys = sorted(instance.get_dynamic_partitions("question_runs"))
        segment_keys = sorted(instance.get_dynamic_partitions("segments"))
        assert len(all_keys) == 9 and len(segment_keys) == 4
        # The same question-run partitions twice, as two operators clicking at once would: the queue's
        # per-partition limit (dagster.yaml) runs a partition's two runs one after the other.
        question_backfills = [_ui_backfill(services, QUESTION_RUN_ASSETS, all_keys) for _ in range(2)]
        segment_backfill = _ui_backfill(services, ["segment_icp"], segment_keys)
        launched = [(b, all_keys) for b in question_backfills] + [(segment_backfill, segment_keys)]
        run_ids = []
        for backfill_id, keys_expected in launched:
            runs = wait_until(
                lambda b=backfill_id, k=keys_expected: _finished_backfill_runs(instance, b, len(k)),
                timeout=300,
                interval=2,
                what=f"backfill {backfill_id}",
                logs=services.logs,
            )
            assert sorted(r.tags["dagster/partition"] for r in runs) == keys_expected
            assert all(r.status == Status.SUCCESS for r in runs)
            run_ids += [r.run_id for r in runs]
        # Every answer, claim and segment build was already stored: the backfills bought nothing.
        assert count(app_url, ModelCall) == calls_before

        # No partition ever had two runs in progress at once.
        spans: dict[str, list[tuple[float, float]]] = {}
        for record in instance.get_run_records(RunsFilter(run_ids=run_ids)):
            key = record.dagster_run.tags["dagster/partition"]
            spans.setdefault(key, []).append((record.start_time, record.end_time))
        for key, (first, second) in ((k, sorted(v)) for k, v in spans.items() if len(v) == 2):
            assert first[1] <= second[0], f"two runs of {key} overlapped: {first} and {second}"
        assert sum(len(v) == 2 for v in spans.values()) == 9

        # The site's summary ran once, after its 4 segments were first built by the sensor; the
        # backfill reused every build, so nothing asked for another summary.
        summaries = wait_until(
            lambda: instance.get_runs(RunsFilter(job_name="site_summary_job", statuses=[Status.SUCCESS])),
            timeout=120,
            interval=2,
            what="the site summary",
            logs=services.logs,
        )
        assert [r.tags["dagster/partition"] for r in summaries] == ["acme"]
        assert len(instance.get_runs(RunsFilter(job_name="site_summary_job"))) == 1
