import dagster as dg

from icp_pipeline.defs.visibility.assets import org_assets, org_cycle, question_run_assets

question_run_job = dg.define_asset_job(
    "question_run_job",
    selection=dg.AssetSelection.assets(*question_run_assets),
    description="All micro-steps of one question run.",
)

org_rollup_job = dg.define_asset_job(
    "org_rollup_job",
    selection=dg.AssetSelection.assets(*org_assets),
    description="Latest flags, analytics and push for one org, once its cycle is complete.",
)

org_cycle_job = dg.define_asset_job(
    "org_cycle_job", selection=[org_cycle], description="Opens an org's next cycle; the sync sensor runs it."
)
