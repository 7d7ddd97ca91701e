"""Schedules: a daily org cycle and a weekly ICP refresh, in an explicit time zone.

Both start stopped: they spend money on model calls, so an operator turns them on (UI or
`dagster schedule start`). Cron strings and the time zone come from the environment.
"""

import os

import dagster as dg
from sqlalchemy import select

from icp_pipeline.db.models import Org, Site
from icp_pipeline.db.session import session_scope
from icp_pipeline.defs.resources import AppDatabase
from icp_pipeline.defs.segments.jobs import site_segments_job
from icp_pipeline.defs.visibility.jobs import org_cycle_job

TIMEZONE = os.environ.get("ICP_SCHEDULE_TIMEZONE", "UTC")


@dg.schedule(
    job=org_cycle_job,
    cron_schedule=os.environ.get("ICP_ORG_CYCLE_CRON", "0 6 * * *"),
    execution_timezone=TIMEZONE,
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Opens a new cycle for every org each day; the partition-sync sensor runs its question runs.",
)
def daily_org_cycle_schedule(
    context: dg.ScheduleEvaluationContext, app_db: AppDatabase
) -> list[dg.RunRequest]:
    with session_scope(app_db.resolved_url) as session:
        orgs = sorted(session.scalars(select(Org.id)))
    day = context.scheduled_execution_time.strftime("%Y-%m-%d")
    return [dg.RunRequest(partition_key=org, run_key=f"cycle-{org}-{day}") for org in orgs]


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
