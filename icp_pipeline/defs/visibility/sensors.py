import dagster as dg

from icp_pipeline.db.session import session_scope
from icp_pipeline.defs.operations.sensors import SENSOR_EVERY_PASS_SECONDS
from icp_pipeline.defs.resources import AppDatabase
from icp_pipeline.defs.visibility.jobs import org_rollup_job
from icp_pipeline.defs.visibility.partitions import orgs_partitions
from icp_pipeline.visibility.cycles import claim_rollup, cycles_ready_for_rollup


@dg.sensor(
    job=org_rollup_job,
    # Every pass of the sensor daemon (it loops every 5 s in Dagster 1.13): the check is one indexed
    # query. See SENSOR_EVERY_PASS_SECONDS for why the interval is below the loop's.
    minimum_interval_seconds=SENSOR_EVERY_PASS_SECONDS,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Requests an org's roll-ups once, when every item of its cycle is terminal.",
)
def cycle_complete_sensor(context: dg.SensorEvaluationContext, app_db: AppDatabase) -> dg.SensorResult:
    requests = []
    with session_scope(app_db.resolved_url) as session:
        for cycle in cycles_ready_for_rollup(session):
            # The claim makes the roll-up run once even when the CLI or another tick got there first.
            # The run key names this completion: a cycle re-opened by a backfill of its failed runs
            # completes again and must roll up again (Dagster skips a run key it has seen).
            if claim_rollup(session, cycle.id):
                requests.append(
                    dg.RunRequest(
                        partition_key=cycle.org_id,
                        run_key=f"rollup-cycle-{cycle.id}-{cycle.completed_at:%Y%m%dT%H%M%S%f}",
                        tags={"icp/cycle_id": str(cycle.id)},
                    )
                )
    orgs = sorted({r.partition_key for r in requests})
    new_orgs = [o for o in orgs if not context.instance.has_dynamic_partition(orgs_partitions.name, o)]
    return dg.SensorResult(
        run_requests=requests,
        dynamic_partitions_requests=[orgs_partitions.build_add_request(new_orgs)] if new_orgs else [],
    )
