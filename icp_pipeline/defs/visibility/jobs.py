import dagster as dg

from icp_pipeline.defs.visibility.assets import org_assets, question_run_assets
from icp_pipeline.defs.visibility.partitions import orgs_partitions, question_runs_partitions

question_run_job = dg.define_asset_job(
    "question_run_job",
    selection=dg.AssetSelection.assets(*question_run_assets),
    partitions_def=question_runs_partitions,
    description="All micro-steps of one question run.",
)

org_rollup_job = dg.define_asset_job(
    "org_rollup_job",
    selection=dg.AssetSelection.assets(*org_assets),
    partitions_def=orgs_partitions,
    description="Latest flags, analytics and push for one org, once its cycle is complete.",
)
