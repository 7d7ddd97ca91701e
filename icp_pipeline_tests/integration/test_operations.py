"""Sensors and schedules evaluated against a real instance and the app database."""

import base64
import time
from datetime import datetime, timedelta
from urllib.parse import quote
from zoneinfo import ZoneInfo

import dagster as dg
import pytest
import sqlalchemy as sa
import yaml
from dagster._core.test_utils import create_run_for_test

from icp_pipeline.alerts import deliver_alert, record_run_failure
from icp_pipeline.db.models import CycleItem, Org, RunFailure, Segment, SegmentResult
from icp_pipeline.db.session import session_scope
from icp_pipeline.defs.operations.schedules import daily_org_cycle_schedule, weekly_icp_refresh_schedule
from icp_pipeline.defs.operations.sensors import partition_sync_sensor, run_failure_alert_sensor
from icp_pipeline.defs.resources import AppDatabase
from icp_pipeline.segments.site_file import parse_site_file, upsert_site
from icp_pipeline.segments.steps import sites_ready_for_summary, unbuilt_segments
from icp_pipeline.visibility.cycles import open_cycle, set_item_status
from icp_pipeline.visibility.org_file import parse_org_text, upsert_org
from icp_pipeline_tests.conftest import example_org_data
from icp_pipeline_tests.integration.test_segments import EXAMPLE_SITE
from icp_pipeline_tests.support.pipeline import pipeline_defs
from icp_pipeline_tests.support.webhook import WebhookReceiver


def _tick(instance: dg.DagsterInstance, db_url: str) -> dg.SensorResult:
    context = dg.build_sensor_context(
        instance=instance, definitions=pipeline_defs(db_url), resources={"app_db": AppDatabase(url=db_url)}
    )
    return partition_sync_sensor(context)


def _apply(instance: dg.DagsterInstance, result: dg.SensorResult) -> None:
    for request in result.dynamic_partitions_requests:
        if isinstance(request, dg.AddDynamicPartitionsRequest):
            instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
        else:
            for key in request.partition_keys:
                instance.delete_dynamic_partition(request.partitions_def_name, key)


def test_sync_sensor_mirrors_the_database_and_requests_first_runs(sqlite_app: str) -> None:
    with session_scope(sqlite_app) as session:
        upsert_site(session, parse_site_file(EXAMPLE_SITE))
        cycle, _ = open_cycle(session, "acme")
        cycle_id = cycle.id
    with dg.instance_for_test() as instance:
        first = _tick(instance, sqlite_app)
        added = {r.partitions_def_name: len(r.partition_keys) for r in first.dynamic_partitions_requests}
        assert added == {"orgs": 1, "question_runs": 45, "sites": 1, "segments": 1}
        jobs = sorted({r.job_name for r in first.run_requests})
        assert jobs == ["question_run_job", "segment_icp_job"]
        question_runs = [r for r in first.run_requests if r.job_name == "question_run_job"]
        assert len(question_runs) == 45
        assert all(r.run_key.startswith(f"cycle-{cycle_id}-") for r in question_runs)
        _apply(instance, first)

        # In step: nothing to add or remove; the same run keys (Dagster launches a run key once).
        second = _tick(instance, sqlite_app)
        assert second.dynamic_partitions_requests == []
        assert {r.run_key for r in second.run_requests} == {r.run_key for r in first.run_requests}

        # A question removed from the org file while the cycle runs: the cycle still finishes its 9
        # question runs (their runs are still requested), then their partitions go in one delete request.
        spec = example_org_data()
        spec["questions"] = spec["questions"][1:]
        with session_scope(sqlite_app) as session:
            upsert_org(session, parse_org_text(yaml.safe_dump(spec)))
        third = _tick(instance, sqlite_app)
        assert third.dynamic_partitions_requests == []
        assert {r.run_key for r in third.run_requests} == {r.run_key for r in first.run_requests}
        with session_scope(sqlite_app) as session:
            for item in session.scalars(sa.select(CycleItem).where(CycleItem.cycle_id == cycle_id)):
                set_item_status(session, item, "succeeded")
        fourth = _tick(instance, sqlite_app)
        assert [
            (type(r).__name__, r.partitions_def_name, len(r.partition_keys))
            for r in fourth.dynamic_partitions_requests
        ] == [("DeleteDynamicPartitionsRequest", "question_runs", 9)]


def test_schedules_request_one_run_per_org_and_site_with_explicit_time_zone(sqlite_app: str) -> None:
    with session_scope(sqlite_app) as session:
        upsert_site(session, parse_site_file(EXAMPLE_SITE))
    when = datetime(2026, 11, 23, 6, 0, tzinfo=ZoneInfo("UTC"))
    resources = {"app_db": AppDatabase(url=sqlite_app)}
    daily = daily_org_cycle_schedule(
        dg.build_schedule_context(scheduled_execution_time=when, resources=resources)
    )
    assert [(r.partition_key, r.run_key) for r in daily] == [("acme", "cycle-acme-2026-11-23T06:00")]
    later = daily_org_cycle_schedule(
        dg.build_schedule_context(scheduled_execution_time=when + timedelta(minutes=15), resources=resources)
    )
    assert later == []  # 06:00 is the previous tick's, not this one's
    weekly = weekly_icp_refresh_schedule(
        dg.build_schedule_context(scheduled_execution_time=when, resources=resources)
    )
    assert [(r.partition_key, r.run_key) for r in weekly] == [("acme", "refresh-acme-2026-W48")]
    assert weekly[0].run_config["ops"]["site_segments"]["config"]["rebuild"] is True
    assert daily_org_cycle_schedule.execution_timezone == "UTC"
    assert daily_org_cycle_schedule.default_status == dg.DefaultScheduleStatus.STOPPED
    assert daily_org_cycle_schedule.cron_schedule == "*/15 * * * *"
    assert daily_org_cycle_schedule.job_name == "org_cycle_job"
    assert daily_org_cycle_schedule.name == "daily_org_cycle_schedule"


def _daily(url: str, when: datetime) -> list[tuple[str, str]]:
    context = dg.build_schedule_context(
        scheduled_execution_time=when, resources={"app_db": AppDatabase(url=url)}
    )
    return [(r.partition_key, r.run_key) for r in daily_org_cycle_schedule(context)]


def test_daily_schedule_opens_each_orgs_cycle_when_its_own_cron_fires(sqlite_app: str) -> None:
    acme = example_org_data()
    acme["schedule"] = "30 9 * * 1-5"  # weekdays at 09:30
    globex = example_org_data()
    globex.update(id="globex", name="Globex")  # no schedule: the default 0 6 * * *
    with session_scope(sqlite_app) as session:
        upsert_org(session, parse_org_text(yaml.safe_dump(acme)))
        upsert_org(session, parse_org_text(yaml.safe_dump(globex)))

    monday = datetime(2026, 11, 23, tzinfo=ZoneInfo("UTC"))
    saturday = monday + timedelta(days=5)
    ticks = {
        monday + timedelta(hours=5, minutes=45): [],
        monday + timedelta(hours=6): [("globex", "cycle-globex-2026-11-23T06:00")],
        monday + timedelta(hours=6, minutes=15): [],
        monday + timedelta(hours=9, minutes=15): [],
        monday + timedelta(hours=9, minutes=30): [("acme", "cycle-acme-2026-11-23T09:30")],
        monday + timedelta(hours=9, minutes=45): [],
        saturday + timedelta(hours=6): [("globex", "cycle-globex-2026-11-28T06:00")],
        saturday + timedelta(hours=9, minutes=30): [],
    }
    for when, expected in ticks.items():
        assert _daily(sqlite_app, when) == expected, when
    # A tick evaluated again asks for the same run key, which Dagster launches once.
    assert _daily(sqlite_app, monday + timedelta(hours=9, minutes=30)) == [
        ("acme", "cycle-acme-2026-11-23T09:30")
    ]

    # Reloading acme's file without `schedule` puts it back on the default cron.
    del acme["schedule"]
    with session_scope(sqlite_app) as session:
        upsert_org(session, parse_org_text(yaml.safe_dump(acme)))
    assert _daily(sqlite_app, monday + timedelta(hours=6)) == [
        ("acme", "cycle-acme-2026-11-23T06:00"),
        ("globex", "cycle-globex-2026-11-23T06:00"),
    ]
    assert _daily(sqlite_app, monday + timedelta(hours=9, minutes=30)) == []

    # A stored cron that no longer parses skips that org only.
    with session_scope(sqlite_app) as session:
        session.get(Org, "acme").cycle_cron = "0 6 * * 8"
    assert _daily(sqlite_app, monday + timedelta(hours=6)) == [("globex", "cycle-globex-2026-11-23T06:00")]


def _failed_run_context(
    instance: dg.DagsterInstance, db_url: str, message: str = "model provider down"
) -> tuple[dg.RunFailureSensorContext, dg.DagsterRun]:
    """A real failed run of a job whose op raises `message`, and the failure sensor's context for it."""

    @dg.op
    def explode() -> None:
        raise RuntimeError(message)

    @dg.job
    def broken() -> None:
        explode()

    result = broken.execute_in_process(instance=instance, raise_on_error=False)
    assert not result.success
    return _failure_sensor_context(instance, result.dagster_run, db_url), result.dagster_run


def _failure_sensor_context(
    instance: dg.DagsterInstance, run: dg.DagsterRun, db_url: str
) -> dg.RunFailureSensorContext:
    """The failure sensor's context for a run whose failure is in the instance's event log."""
    failure = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.RUN_FAILURE)[0].dagster_event
    return dg.build_run_status_sensor_context(
        sensor_name=run_failure_alert_sensor.name,
        dagster_event=failure,
        dagster_instance=instance,
        dagster_run=run,
        resources={"app_db": AppDatabase(url=db_url)},
    ).for_run_failure()


def _crash(instance: dg.DagsterInstance, run: dg.DagsterRun, db_url: str) -> dg.DagsterRun:
    """What the code server reports for a dead run worker, then the failure sensor's evaluation."""
    instance.report_run_failed(run, "run worker exited with signal 9")
    run_failure_alert_sensor(_failure_sensor_context(instance, run, db_url))
    return instance.get_run_by_id(run.run_id)


def _failure_row(db_url: str, run_id: str) -> tuple[str, int, str | None]:
    with session_scope(db_url) as session:
        row = session.get(RunFailure, run_id)
        return row.alert_status, row.alert_attempts, row.alert_error


def test_run_failure_sensor_records_the_failure_and_alerts_once(
    sqlite_app: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with dg.instance_for_test() as instance, WebhookReceiver(fail_first=1) as hook:
        monkeypatch.setenv("ICP_ALERT_WEBHOOK_URL", hook.url)
        context, run = _failed_run_context(instance, sqlite_app)
        run_failure_alert_sensor(context)
        # The receiver's first 503 was retried; the record says so.
        assert len(hook.requests) == 2
        alert = hook.requests[-1].json
        assert alert["run_id"] == run.run_id and alert["job"] == "broken"
        assert "model provider down" in alert["error"]
        assert _failure_row(sqlite_app, run.run_id) == ("sent", 2, None)
        # Evaluated again for the same run (a daemon restart, say): no second row, no second alert.
        run_failure_alert_sensor(context)
        assert len(hook.requests) == 2
        with session_scope(sqlite_app) as session:
            assert session.scalar(sa.select(sa.func.count()).select_from(RunFailure)) == 1


def test_an_undeliverable_alert_is_recorded_without_the_urls_secret(
    sqlite_app: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with dg.instance_for_test() as instance:
        # Nothing listens on port 9 here; the token in the path (Slack-style) or in the query string
        # must not reach the record: the URL is shown as scheme://host only.
        url = "http://127.0.0.1:9/services/T000/B000/XyZtok3nAlertToken?token=s3cret-token"
        monkeypatch.setenv("ICP_ALERT_WEBHOOK_URL", url)
        context, run = _failed_run_context(instance, sqlite_app)
        run_failure_alert_sensor(context)
        status, attempts, error = _failure_row(sqlite_app, run.run_id)
        assert (status, attempts) == ("failed", 3)
        assert "http://127.0.0.1:9" in error
        assert not any(secret in error for secret in ("s3cret-token", "XyZtok3nAlertToken", "/services"))
        # Without a webhook the failure is still recorded, its alert marked off.
        monkeypatch.delenv("ICP_ALERT_WEBHOOK_URL")
        context, run = _failed_run_context(instance, sqlite_app)
        run_failure_alert_sensor(context)
        assert _failure_row(sqlite_app, run.run_id) == ("off", 0, None)


def test_a_failure_record_and_its_alert_hold_no_secret_in_any_form(
    sqlite_app: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = "gm-Secret/9f8e+7d6c5b_4a3"
    encoded = base64.b64encode(key.encode()).decode()
    monkeypatch.setenv("GEMINI_API_KEY", key + "\n")  # as read from a secret file
    with (
        dg.instance_for_test() as instance,
        WebhookReceiver(path="/services/T000/B000/XyZtok3nAlert") as hook,
    ):
        monkeypatch.setenv("ICP_ALERT_WEBHOOK_URL", hook.url)
        # A step error that quotes the key, URL-encoded and base64 too (as an SDK's error might).
        message = f"401 for key {key} ({quote(key, safe='')}, {encoded}) at {hook.url}"
        context, run = _failed_run_context(instance, sqlite_app, message)
        run_failure_alert_sensor(context)
        with session_scope(sqlite_app) as session:
            stored = session.get(RunFailure, run.run_id).error
        sent = hook.requests[-1].json["error"]
    for text in (stored, sent):
        assert "401 for key ***" in text
        assert not any(s in text for s in (key, quote(key, safe=""), encoded, "XyZtok3nAlert")), text


def test_an_alert_to_a_trickling_receiver_ends_at_its_deadline(sqlite_app: str) -> None:
    with session_scope(sqlite_app) as session:
        record_run_failure(session, "run-1", "question_run_job", None, "boom")
    with WebhookReceiver(trickle_seconds=0.5, trickle_bytes=40) as hook:
        started = time.monotonic()
        status = deliver_alert(
            sqlite_app, "run-1", hook.url, max_attempts=2, backoff_seconds=0.01, deadline_seconds=1.0
        )
        elapsed = time.monotonic() - started
        assert len(hook.requests) == 2
    assert status == "failed" and elapsed < 2 * 1.0 + 2.0
    alert_status, attempts, error = _failure_row(sqlite_app, "run-1")
    assert (alert_status, attempts) == ("failed", 2) and error.startswith("timeout")


def test_a_crashed_question_run_is_closed_once_no_run_retry_is_coming(sqlite_app: str) -> None:
    """A killed run worker never reaches the step's own failure handling; the failure sensor closes the
    item, but only when Dagster will not retry the run, so a retry can still complete it."""
    with session_scope(sqlite_app) as session:
        cycle, _ = open_cycle(session, "acme")
        key = cycle.items[0].partition_key
    retries = {"run_retries": {"enabled": True, "max_retries": 1, "retry_on_asset_or_op_failure": False}}
    with dg.instance_for_test(overrides=retries) as instance:

        def crash(parent: dg.DagsterRun | None = None) -> dg.DagsterRun:
            # A retry carries its parent's run-group tags, as the daemon's retries do: Dagster counts
            # retries by the size of the run group.
            lineage = (
                {"dagster/parent_run_id": parent.run_id, "dagster/root_run_id": parent.run_id}
                if parent
                else {}
            )
            run = create_run_for_test(
                instance,
                job_name="question_run_job",
                tags={"dagster/partition": key, **lineage},
                parent_run_id=parent.run_id if parent else None,
                root_run_id=parent.run_id if parent else None,
            )
            return _crash(instance, run, sqlite_app)

        def item_status() -> tuple[str, str | None]:
            with session_scope(sqlite_app) as session:
                item = session.scalars(sa.select(CycleItem).where(CycleItem.partition_key == key)).one()
                return item.status, item.failed_step

        first = crash()
        assert first.tags["dagster/will_retry"] == "true"
        assert item_status() == ("pending", None)  # the retry may still complete it

        last = crash(parent=first)
        assert last.tags["dagster/will_retry"] == "false"
        assert item_status() == ("failed", "run")


def test_a_crashed_segment_build_is_recorded_failed_so_the_site_summary_can_run(sqlite_app: str) -> None:
    with session_scope(sqlite_app) as session:
        upsert_site(session, parse_site_file(EXAMPLE_SITE))
        key = session.scalars(sa.select(Segment.partition_key)).one()
    # No run retries on this instance: the failed run is final.
    with dg.instance_for_test() as instance:
        run = create_run_for_test(instance, job_name="segment_icp_job", tags={"dagster/partition": key})
        _crash(instance, run, sqlite_app)
    with session_scope(sqlite_app) as session:
        result = session.scalars(sa.select(SegmentResult)).one()
        assert not result.success and run.run_id in result.error
        assert (result.provider, result.model) == ("openai", "gpt-4o-mini")  # the build's default options
        # The segment is no longer "never built", and the site summary is now due.
        assert unbuilt_segments(session) == []
        assert [site for site, _ in sites_ready_for_summary(session)] == ["acme"]
