"""Quality gates as asset checks on org_analytics (the logic is in visibility/quality.py).

The blocking ones (`blocking=True`, severity ERROR when they fail) stop analytics_push in the same run:
Dagster makes the push step wait for them and raises DagsterAssetCheckFailedError in the check's
step when one fails, so the push is skipped and the roll-up run fails. A failed gate, blocking or not,
is also posted once per cycle and check to ICP_ALERT_WEBHOOK_URL (signed like the push).
"""

import os
from collections.abc import Callable

import dagster as dg

from icp_pipeline.alerts import deliver_gate_alert, record_gate_failure
from icp_pipeline.db.session import session_scope
from icp_pipeline.defs.metadata import known
from icp_pipeline.defs.resources import AppDatabase, ModelProviderResource, PushResource
from icp_pipeline.defs.visibility.assets import org_analytics
from icp_pipeline.visibility import quality, steps


def _gated_cycle(app_db: AppDatabase, org_id: str) -> tuple[int, quality.CycleFacts]:
    """The cycle of the analytics org_analytics just stored, and its facts."""
    with session_scope(app_db.resolved_url) as session:
        snapshot = steps.latest_snapshot(session, org_id)
        if snapshot is None:
            raise dg.Failure(f"org {org_id!r} has no analytics to check", allow_retries=False)
        return snapshot.cycle_id, quality.cycle_facts(session, snapshot.cycle_id)


def _report(
    context: dg.AssetCheckExecutionContext,
    app_db: AppDatabase,
    push: PushResource,
    org_id: str,
    cycle_id: int,
    result: quality.GateResult,
) -> dg.AssetCheckResult:
    metadata = {**result.metadata, "cycle_id": cycle_id}
    if not result.passed:
        with session_scope(app_db.resolved_url) as session:
            alert_id = record_gate_failure(
                session, org_id, cycle_id, result.name, result.severity, result.description
            ).id
        status = deliver_gate_alert(
            app_db.resolved_url,
            alert_id,
            os.environ.get("ICP_ALERT_WEBHOOK_URL"),
            push.push_settings().webhook_secret,
        )
        if status == "failed":
            context.log.warning(f"alert for gate {result.name} could not be delivered; see quality_alerts")
        metadata["alert_status"] = status
    return dg.AssetCheckResult(
        passed=result.passed,
        severity=dg.AssetCheckSeverity.ERROR if result.blocking else dg.AssetCheckSeverity.WARN,
        description=result.description,
        metadata=known(metadata),
    )


# The checks declare no partitions_def (a preview feature in Dagster 1.13 that warns on every import):
# they run in the org-partitioned roll-up run and read its partition key, the org.
def _blocking_gate(name: str, description: str) -> Callable:
    return dg.asset_check(
        asset=org_analytics,
        name=name,
        description=description,
        blocking=True,
    )


@_blocking_gate(
    quality.COMPLETION,
    "Blocks the push unless the cycle's completed share is at least the org's min_completion.",
)
def completion_gate(
    context: dg.AssetCheckExecutionContext, app_db: AppDatabase, push: PushResource
) -> dg.AssetCheckResult:
    org_id = context.partition_key
    cycle_id, facts = _gated_cycle(app_db, org_id)
    return _report(context, app_db, push, org_id, cycle_id, quality.completion_gate(facts))


@_blocking_gate(
    quality.NO_SYNTHETIC_IN_LIVE,
    "Blocks the push when a cycle run with ICP_PROVIDER_MODE=live has a synthetic answer.",
)
def no_synthetic_in_live_gate(
    context: dg.AssetCheckExecutionContext,
    app_db: AppDatabase,
    models: ModelProviderResource,
    push: PushResource,
) -> dg.AssetCheckResult:
    org_id = context.partition_key
    cycle_id, facts = _gated_cycle(app_db, org_id)
    return _report(context, app_db, push, org_id, cycle_id, quality.synthetic_gate(facts, models.mode))


@_blocking_gate(quality.WITHIN_BUDGET, "Blocks the push when the cycle's spend is over the org's budget_usd.")
def within_budget_gate(
    context: dg.AssetCheckExecutionContext, app_db: AppDatabase, push: PushResource
) -> dg.AssetCheckResult:
    org_id = context.partition_key
    cycle_id, facts = _gated_cycle(app_db, org_id)
    return _report(context, app_db, push, org_id, cycle_id, quality.budget_gate(facts))


@dg.asset_check(
    asset=org_analytics,
    name=quality.NO_SIGNIFICANT_DROP,
    description="Warns when the target's mention rate or share of voice dropped significantly since the previous cycle.",
)
def no_significant_drop_gate(
    context: dg.AssetCheckExecutionContext, app_db: AppDatabase, push: PushResource
) -> dg.AssetCheckResult:
    org_id = context.partition_key
    with session_scope(app_db.resolved_url) as session:
        snapshot = steps.latest_snapshot(session, org_id)
        if snapshot is None:
            raise dg.Failure(f"org {org_id!r} has no analytics to check", allow_retries=False)
        cycle_id, payload = snapshot.cycle_id, snapshot.payload
        previous = steps.previous_payload(session, org_id, cycle_id)
    return _report(context, app_db, push, org_id, cycle_id, quality.drop_gate(payload, previous))


org_checks = [completion_gate, no_synthetic_in_live_gate, within_budget_gate, no_significant_drop_gate]
