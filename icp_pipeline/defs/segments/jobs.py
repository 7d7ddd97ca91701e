import dagster as dg

from icp_pipeline.defs.segments.assets import segment_icp, site_icp_summary, site_segments

site_segments_job = dg.define_asset_job(
    "site_segments_job", selection=[site_segments], description="General segments of one site."
)
segment_icp_job = dg.define_asset_job(
    "segment_icp_job", selection=[segment_icp], description="The ICP build of one segment."
)
site_summary_job = dg.define_asset_job(
    "site_summary_job", selection=[site_icp_summary], description="The combined analysis of one site."
)
