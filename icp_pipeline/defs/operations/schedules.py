"""Schedules: org cycles on per-org crons and a weekly ICP refresh, in an explicit time zone.

Both start stopped: they spend money on model calls, so an operator turns them on (UI or
`dagster schedule start`). Cron strings and the time zone come from the environment; an org file's
`schedule` overrides the org cycle cron for that org.
"""

import os
from datetime import timedelta

import dagster as dg
from sqlalchemy import select

from icp_pipeline.db.models import Org, Site
from icp_pipeline.db.session import session_scope
from icp_pipeline.defs.resources import AppDatabase
from icp_pipeline.defs.segments.jobs import site_segments_job
from icp_pipeline.defs.visibility.jobs import org_cycle_job
from icp_pipeline.visibility.schedule import DEFAULT_CYCLE_CRON, CronError, due_cycles, parse_cron

TIMEZONE = os.environ.get("ICP_SCHEDULE_TIMEZONE", "UTC")
ORG_CYCLE_TICK = timedelta(minutes=15)


def _default_org_cycle_cron() -> str:
    expression = os.environ.get("ICP_ORG_CYCLE_CRON", DEFAULT_CYCLE_CRON)
    try:
        return parse_cron(expression).expression
    except CronError as error:
        # Fail the code location at load, as an invalid cron_schedule would, naming the variable.
        raise CronError(f"ICP_ORG_CYCLE_CRON: {error}") from None


ORG_CYCLE_CRON = _default_org_cycle_cron()


@dg.schedule(
    job=org_cycle_job,
    # Orgs have their own crons, so the schedule ticks often and opens the cycles that fell due.
    cron_schedule="*/15 * * * *",
    execution_timezone=TIMEZONE,
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description=(
        "Every 15 minutes, opens a new cycle for each org whose cron (its org file's schedule, else "
        "ICP_ORG_CYCLE_CRON) fired since the previous tick; the partition-sync sensor runs its question runs."
    ),
)
def daily_org_cycle_schedule(
    context: dg.ScheduleEvaluationContext, app_db: AppDatabase
) -> list[dg.RunRequest]:
    with session_scope(app_db.resolved_url) as session:
        orgs = list(session.execute(select(Org.id, Org.cycle_cron).order_by(Org.id)).tuples())
    end = context.scheduled_execution_time
    due, invalid = due_cycles(orgs, ORG_CYCLE_CRON, end - ORG_CYCLE_TICK, end, TIMEZONE)
    for org_id, error in invalid.items():
        context.log.error(f"org {org_id}: no cycle scheduled, its stored schedule is invalid: {error}")
    return [
        dg.RunRequest(
            partition_key=cycle.org_id,
            # One run key per fire time: Dagster launches it once, even if this tick is evaluated again.
            run_key=f"cycle-{cycle.org_id}-{cycle.fire_time.strftime('%Y-%m-%dT%H:%M')}",
        )
        for cycle in due
    ]


@dg.schedule(
    job=site_segments_job,
    cron_schedule=os.environ.get("ICP_ICP_REFRESH_CRON", "0 7 * * 1"),
    execution_timezone=TIMEZONE,
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Rediscovers every site's segments each week; the sync sensor then builds new segments.",
)
def weekly_icp_refresh_schedule(
    context: dg.ScheduleEvaluationContext, app_db: AppDatabase
) -> list[dg.RunRequest]:
    with session_scope(app_db.resolved_url) as session:
        sites = sorted(session.scalars(select(Site.id)))
    week = context.scheduled_execution_time.strftime("%G-W%V")
    config = {"ops": {"site_segments": {"config": {"rebuild": True}}}}
    return [
        dg.RunRequest(partition_key=site, run_key=f"refresh-{site}-{week}", run_config=config)
        for site in sites
    ]
