"""Build a site's ICPs as real Dagster runs: segments, then one run per segment, then the summary."""

import sys
from contextlib import closing
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select

from icp_pipeline.cli.runner import Progress, execute_one, execute_partitions, load_instance_and_defs
from icp_pipeline.db.models import Segment, SiteSummary
from icp_pipeline.db.session import session_scope
from icp_pipeline.segments.keys import segment_partition_key
from icp_pipeline.segments.report import UnknownSegment
from icp_pipeline.segments.steps import BuildOptions, active_segments, require_site, segment_table
from icp_pipeline.settings import database_url


@dataclass
class BuildOutcome:
    site_id: str
    succeeded: int
    failed: int
    summary_ok: bool
    table: list[dict[str, Any]]
    summary: dict[str, Any] | None
    message: str
    # What the build did differently from the plan (e.g. went on without segment discovery).
    notices: list[str] = field(default_factory=list)


def build_site(
    site_id: str,
    options: BuildOptions,
    segment_ids: list[str] | None = None,
    workers: int = 3,
    progress: bool = True,
    defs: Any = None,
) -> BuildOutcome:
    """Raises UnknownSite, or UnknownSegment (listing the valid ids) for a `segment_ids` entry the site
    does not have."""
    db_url = database_url()
    with session_scope(db_url) as session:
        require_site(session, site_id)
        # Checked before anything runs or is bought. A generated segment exists only once discovery
        # has run: a site without any yet says so.
        segments = active_segments(session, site_id)
        stored = [s.key for s in segments]
        discovered = any(s.source == "generated" for s in segments)
    if segment_ids and (unknown := [s for s in dict.fromkeys(segment_ids) if s not in stored]):
        hint = (
            ""
            if discovered
            else f" (run `icp-pipeline site build {site_id}` first to discover generated ones)"
        )
        raise UnknownSegment(site_id, unknown, stored, hint)
    instance, defs = load_instance_and_defs(defs)
    if not instance.has_dynamic_partition("sites", site_id):
        instance.add_dynamic_partitions("sites", [site_id])
    config = {
        "provider": options.provider,
        "model": options.model,
        "rebuild": options.rebuild,
        "pacing_seconds": options.pacing_seconds,
    }
    tags = {"icp/site": site_id, "icp/launched_by": "cli"}

    ok, error = execute_one(
        defs.resolve_job_def("site_segments_job"),
        site_id,
        instance,
        tags,
        {"ops": {"site_segments": {"config": config}}},
    )
    with session_scope(db_url) as session:
        keys = list(
            session.scalars(select(Segment.partition_key).where(Segment.site_id == site_id, Segment.active))
        )
    notices: list[str] = []
    if not ok:
        if not keys:
            return BuildOutcome(site_id, 0, 0, False, [], None, f"segment discovery failed: {error}")
        # The segments already stored (the imported ones, and any generated earlier) can still be built.
        notices.append(
            f"segment discovery failed ({error}); going on with the {len(keys)} segment(s) already stored"
        )
        sys.stderr.write(f"warning: {notices[-1]}\n")
        registered = set(instance.get_dynamic_partitions("segments"))
        if missing := [k for k in keys if k not in registered]:
            instance.add_dynamic_partitions("segments", missing)
    if segment_ids:
        wanted = {segment_partition_key(site_id, s): s for s in segment_ids}
        if unknown := [s for k, s in wanted.items() if k not in keys]:
            # A rebuild's discovery dropped a segment asked for.
            with session_scope(db_url) as session:
                valid = [s.key for s in active_segments(session, site_id)]
            raise UnknownSegment(site_id, unknown, valid)
        keys = [k for k in keys if k in wanted]

    bar = Progress(len(keys), progress)
    succeeded = failed = 0
    segment_config = {"ops": {"segment_icp": {"config": config}}}
    # Pacing spaces builds out, so it only means something when they run one after another.
    parallel = 1 if options.pacing_seconds else workers
    builds = execute_partitions(
        defs.resolve_job_def("segment_icp_job"), keys, parallel, tags, segment_config, instance, db_url
    )
    # closing: if this loop raises, the workers are stopped now, not when the generator is collected.
    with closing(builds):
        for _key, ok, _error in builds:
            succeeded, failed = succeeded + ok, failed + (not ok)
            bar.show(succeeded, failed)
    bar.close()

    summary_ok, summary_error = execute_one(
        defs.resolve_job_def("site_summary_job"),
        site_id,
        instance,
        tags,
        {"ops": {"site_icp_summary": {"config": config}}},
    )
    with session_scope(db_url) as session:
        table = segment_table(session, site_id)
        stored = session.scalars(select(SiteSummary).where(SiteSummary.site_id == site_id)).first()
        summary = stored.summary if stored is not None and stored.success else None
    if summary_ok and summary:
        # e.g. no model narrative, or a segment the model named that was not built: shown, never fatal.
        for warning in summary.get("warnings", []):
            notices.append(f"site summary: {warning}")
            sys.stderr.write(f"warning: {notices[-1]}\n")
    message = "" if summary_ok else f"site summary failed: {summary_error}"
    return BuildOutcome(site_id, succeeded, failed, summary_ok, table, summary, message, notices)
