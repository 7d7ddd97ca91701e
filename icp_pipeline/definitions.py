"""The code location: every domain under icp_pipeline/defs/ merged into one Definitions."""

import dagster as dg
from sqlalchemy.orm import configure_mappers

# Steps waiting for a pool slot retry every 0.1 s and sleep in between, whatever the event log
# (imported for its effect; see the module).
import icp_pipeline.instance.pool_wait  # noqa: F401
from icp_pipeline.defs.operations.schedules import daily_org_cycle_schedule, weekly_icp_refresh_schedule
from icp_pipeline.defs.operations.sensors import partition_sync_sensor, run_failure_alert_sensor
from icp_pipeline.defs.resources import resources_from_env
from icp_pipeline.defs.segments.assets import segment_assets
from icp_pipeline.defs.segments.jobs import segment_icp_job, site_segments_job, site_summary_job
from icp_pipeline.defs.visibility import assets as visibility_assets
from icp_pipeline.defs.visibility.checks import org_checks
from icp_pipeline.defs.visibility.jobs import (
    org_cycle_job,
    org_rollup_job,
    org_rollup_ungated_job,
    question_run_job,
)
from icp_pipeline.defs.visibility.sensors import cycle_complete_sensor


def build_defs(resources: dict[str, dg.ConfigurableResource]) -> dg.Definitions:
    return dg.Definitions(
        assets=[
            *visibility_assets.cycle_assets,
            *visibility_assets.question_run_assets,
            *visibility_assets.org_assets,
            *segment_assets,
        ],
        asset_checks=org_checks,
        jobs=[
            question_run_job,
            org_cycle_job,
            org_rollup_job,
            org_rollup_ungated_job,
            site_segments_job,
            segment_icp_job,
            site_summary_job,
        ],
        sensors=[cycle_complete_sensor, partition_sync_sensor, run_failure_alert_sensor],
        schedules=[daily_org_cycle_schedule, weekly_icp_refresh_schedule],
        resources=resources,
        # A run's steps are a short chain of light steps; spawning a process per step costs seconds
        # here, so runs execute in one process and parallelism comes from running many runs at once.
        executor=dg.in_process_executor,
    )


defs = build_defs(resources_from_env())

# SQLAlchemy configures the ORM mappers on the first query of each process (0.2-1 s here). Done at
# import instead, so run workers forked from the fork server (icp_pipeline/instance/
# forkserver_launcher.py), which imports this module, inherit them configured: py-spy showed the
# first query of every question run spending ~15 % of the worker's CPU there.
configure_mappers()
