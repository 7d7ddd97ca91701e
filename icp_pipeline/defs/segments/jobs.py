import dagster as dg

from icp_pipeline.defs.segments.assets import segment_icp, segment_questions, site_icp_summary, site_segments

site_segments_job = dg.define_asset_job(
    "site_segments_job", selection=[site_segments], description="General segments of one site."
)
segment_icp_job = dg.define_asset_job(
    "segment_icp_job",
    # The questions follow their ICP build (a step that buys nothing when no org links the site).
    selection=[segment_icp, segment_questions],
    description="The ICP build of one segment, then its buyer questions for the orgs linked to its site.",
)
site_summary_job = dg.define_asset_job(
    "site_summary_job", selection=[site_icp_summary], description="The combined analysis of one site."
)
