import dagster as dg

from icp_pipeline.defs.visibility.assets import org_assets, org_cycle, question_run_assets
from icp_pipeline.defs.visibility.checks import no_significant_drop_gate

question_run_job = dg.define_asset_job(
    "question_run_job",
    selection=dg.AssetSelection.assets(*question_run_assets),
    description="All micro-steps of one question run.",
)

org_rollup_job = dg.define_asset_job(
    "org_rollup_job",
    selection=dg.AssetSelection.assets(*org_assets),
    description="Latest flags, analytics, quality gates and push for one org, once its cycle is complete.",
)

# `icp-pipeline org push --ignore-gates`: the roll-up with the warning gate only, never the blocking ones.
org_rollup_ungated_job = dg.define_asset_job(
    "org_rollup_ungated_job",
    selection=dg.AssetSelection.assets(*org_assets).without_checks()
    | dg.AssetSelection.checks(no_significant_drop_gate),
    description="Org roll-ups pushed without the blocking quality gates (an explicit operator override).",
)

org_cycle_job = dg.define_asset_job(
    "org_cycle_job",
    selection=[org_cycle],
    description="Opens an org's next cycle (the schedule and the CLI run it; the sync sensor opens a first cycle itself).",
)
