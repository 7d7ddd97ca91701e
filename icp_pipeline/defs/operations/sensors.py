"""Sensors that keep Dagster in step with the app database, and report failed runs."""

import json
import os
from contextlib import suppress

import dagster as dg
from dagster._utils.error import SerializableErrorInfo

from icp_pipeline.alerts import alert_payload, deliver_alert, record_run_failure
from icp_pipeline.db.models import Cycle
from icp_pipeline.db.session import session_scope
from icp_pipeline.defs.resources import AppDatabase
from icp_pipeline.defs.segments.assets import ICPBuildConfig
from icp_pipeline.defs.segments.jobs import segment_icp_job, site_summary_job
from icp_pipeline.defs.segments.partitions import segments_partitions, sites_partitions
from icp_pipeline.defs.visibility.assets import org_cycle
from icp_pipeline.defs.visibility.jobs import question_run_job
from icp_pipeline.defs.visibility.partitions import orgs_partitions, question_runs_partitions
from icp_pipeline.segments import steps as segment_steps
from icp_pipeline.segments.questions import segments_needing_questions
from icp_pipeline.segments.steps import desired_site_partitions, sites_ready_for_summary, unbuilt_segments
from icp_pipeline.visibility import steps
from icp_pipeline.visibility.cycles import (
    desired_org_partitions,
    join_new_combinations,
    open_cycle,
    orgs_without_cycle,
    pending_items,
)

# The sensor daemon of Dagster 1.13 evaluates sensors in a loop of at least 5 s
# (MIN_INTERVAL_LOOP_TIME) and skips a sensor whose last tick started less than its interval ago. An
# interval of exactly 5 s therefore aliased with the loop: a tick started 4.99 s before the next pass
# waited for the pass after, so sensors ticked every 5-10 s (a loaded org's first runs came 8.5 s
# after `org load`, bench/bench_daemon.py). Any interval under the loop ticks on every pass.
SENSOR_EVERY_PASS_SECONDS = 1


def partition_diff(
    instance: dg.DagsterInstance, definition: dg.DynamicPartitionsDefinition, desired: set[str]
) -> list[dg.AddDynamicPartitionsRequest | dg.DeleteDynamicPartitionsRequest]:
    """At most one add and one delete request: a set difference, cheap even with 100,000 keys."""
    existing = set(instance.get_dynamic_partitions(definition.name))
    requests: list = []
    if added := sorted(desired - existing):
        requests.append(definition.build_add_request(added))
    if removed := sorted(existing - desired):
        requests.append(definition.build_delete_request(removed))
    return requests


@dg.sensor(
    jobs=[question_run_job, segment_icp_job, site_summary_job],
    # A tick costs 0.03-0.06 s of CPU for the example org and 0.6 s with 100,000 question-run keys
    # (bench/bench_sync_sensor.py), so ticking on every pass costs little and a loaded org waits at
    # most 5 s for its first runs.
    minimum_interval_seconds=SENSOR_EVERY_PASS_SECONDS,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Keeps dynamic partitions equal to the app database, opens new orgs' first cycles and requests the first runs of new work.",
)
def partition_sync_sensor(context: dg.SensorEvaluationContext, app_db: AppDatabase) -> dg.SensorResult:
    with session_scope(app_db.resolved_url) as session:
        # A new org's first cycle is opened here, by the function the org_cycle asset calls, so its
        # question runs are requested in this same tick: a separate org_cycle run cost one more tick
        # and a process start (about 35 s of the 66 s from `org load` to the first question run).
        opened = {org: open_cycle(session, org)[0] for org in orgs_without_cycle(session)}
        session.flush()
        orgs, question_runs = desired_org_partitions(session)
        sites, segments = desired_site_partitions(session)
        for cycle_id, added in join_new_combinations(session).items():
            context.log.info(f"cycle {cycle_id}: {added} new question runs joined it")
        pending = pending_items(session)
        unbuilt = unbuilt_segments(session)
        # Segments built before an org named their site: the job reuses the ICP and adds the questions.
        questions = segments_needing_questions(session)
        summaries = sites_ready_for_summary(session)
        cycle_events = [org_cycle_materialization(org, cycle) for org, cycle in opened.items()]
    if opened:
        # The daemon stores a tick's asset events before its partition requests; the org partition
        # must exist before its org_cycle materialization is recorded (idempotent).
        context.instance.add_dynamic_partitions(orgs_partitions.name, sorted(opened))
    partition_requests = [
        *partition_diff(context.instance, orgs_partitions, orgs),
        *partition_diff(context.instance, question_runs_partitions, question_runs),
        *partition_diff(context.instance, sites_partitions, sites),
        *partition_diff(context.instance, segments_partitions, segments),
    ]
    # Run keys make each request once: Dagster skips a run key it has already launched.
    runs = [
        dg.RunRequest(
            job_name=question_run_job.name,
            partition_key=key,
            run_key=f"cycle-{cycle_id}-{key}",
            tags={"icp/cycle_id": str(cycle_id)},
        )
        for cycle_id, key in pending
        if key in question_runs
    ]
    runs += [
        dg.RunRequest(job_name=segment_icp_job.name, partition_key=key, run_key=f"first-build-{key}")
        for key in unbuilt
        if key in segments
    ]
    runs += [
        dg.RunRequest(job_name=segment_icp_job.name, partition_key=key, run_key=f"questions-{key}-{marker}")
        for key, marker in questions
        if key in segments and key not in unbuilt
    ]
    runs += [
        dg.RunRequest(job_name=site_summary_job.name, partition_key=site, run_key=f"summary-{site}-{marker}")
        for site, marker in summaries
    ]
    return dg.SensorResult(
        run_requests=runs, dynamic_partitions_requests=partition_requests, asset_events=cycle_events
    )


def org_cycle_materialization(org: str, cycle: Cycle) -> dg.AssetMaterialization:
    """The org_cycle partition the sensor opened, with the metadata an org_cycle run reports."""
    return dg.AssetMaterialization(
        asset_key=org_cycle.key,
        partition=org,
        metadata={"cycle_id": cycle.id, "created": True, "items": cycle.total, "status": cycle.status},
        description="opened by partition_sync_sensor",
    )


@dg.run_failure_sensor(
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Records every failed run, alerts ICP_ALERT_WEBHOOK_URL when set, and closes crashed runs.",
)
def run_failure_alert_sensor(context: dg.RunFailureSensorContext, app_db: AppDatabase) -> None:
    run = context.dagster_run
    # The run's own message only names the failed steps; the steps' errors say what went wrong.
    failed_steps = [
        (event.step_key, event.event_specific_data.error)
        for event in context.get_step_failure_events()
        if event.event_specific_data and event.event_specific_data.error
    ]
    step_errors = [f"{step_key}: {_error_chain(step_error)}" for step_key, step_error in failed_steps]
    # A roll-up stopped only by blocking quality gates: each failed gate was already posted by its
    # check (once per cycle and check); a run-level alert would say the same thing a second time.
    gated = bool(failed_steps) and all(e.cls_name == GATE_FAILED_ERROR for _key, e in failed_steps)
    error = "\n".join([context.failure_event.message or "run failed", *step_errors])
    with session_scope(app_db.resolved_url) as session:
        failure = record_run_failure(
            session, run.run_id, run.job_name, run.tags.get("dagster/partition"), error
        )
        context.log.error(f"run failed: {json.dumps(alert_payload(failure))}")
        if gated:
            failure.alert_status = "quality_gate"  # not posted: see quality_alerts
    if not gated:
        status = deliver_alert(app_db.resolved_url, run.run_id, os.environ.get("ICP_ALERT_WEBHOOK_URL"))
        if status == "failed":
            context.log.warning(f"alert for run {run.run_id} could not be delivered; see run_failures")
    close_crashed_run(context, app_db, run)


# The error Dagster raises in a check's step when a blocking check fails (dagster._core.errors).
GATE_FAILED_ERROR = "DagsterAssetCheckFailedError"


def _error_chain(error: SerializableErrorInfo | None) -> str:
    """An error's message and its causes' (Dagster wraps a step's own exception in its own error)."""
    messages = []
    while error is not None:
        messages.append(error.message.strip())
        error = error.cause
    return " <- ".join(messages)


def close_crashed_run(context: dg.RunFailureSensorContext, app_db: AppDatabase, run: dg.DagsterRun) -> None:
    """A question run or segment build whose worker died (killed, out of memory) never reached its own
    failure handling: the cycle item stays open, or the segment has no result, and the cycle or the site
    summary would wait forever. Once no run retry is coming, record the failure; a later backfill of the
    partition redoes it. What a step already recorded is left as it is."""
    partition = run.tags.get("dagster/partition")
    if run.job_name not in (question_run_job.name, segment_icp_job.name) or not partition:
        return
    # Dagster tags a failed run `dagster/will_retry` when run retries are on; re-read it, the tag is
    # written when the failure is stored.
    current = context.instance.get_run_by_id(run.run_id) or run
    if current.tags.get("dagster/will_retry") == "true":
        return
    message = f"run {run.run_id} failed: {context.failure_event.message}"
    if run.job_name == question_run_job.name:
        with suppress(LookupError):  # a partition with no cycle has no item to close
            steps.fail_partition(app_db.resolved_url, partition, "run", message)
    else:
        config = run.run_config.get("ops", {}).get("segment_icp", {}).get("config", {})
        segment_steps.close_unbuilt_segment(
            app_db.resolved_url, partition, message, ICPBuildConfig(**config).options()
        )
