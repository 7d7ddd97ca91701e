"""The ICP build as plain functions over the app database: segments, one build per segment, the summary.

Model calls happen outside transactions and go to the ledger as soon as they return. A segment whose
successful build is stored is not built again unless a rebuild is asked for.
"""

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from icp_pipeline.db.models import ModelCall, Segment, SegmentResult, Site, SiteSummary
from icp_pipeline.db.session import session_scope
from icp_pipeline.ledger import PurchaseInProgress, buy_structured, new_claimant, purchase_subject, total_cost
from icp_pipeline.providers.base import ModelRequest, ProviderError, ProviderFor
from icp_pipeline.providers.resilience import STEP_BUDGET_SECONDS
from icp_pipeline.segments.comparison import (
    SegmentFacts,
    compare_segments,
    comparison_inputs_sha256,
    rank_segments,
)
from icp_pipeline.segments.keys import segment_partition_key, slugify
from icp_pipeline.segments.prompts import SYSTEM, comparison_prompt, icp_prompt, segments_prompt
from icp_pipeline.segments.schemas import SegmentICP, SegmentList, SiteComparison
from icp_pipeline.terminal import inert


@dataclass(frozen=True)
class BuildOptions:
    provider: str = "openai"
    model: str = "gpt-4o-mini"
    rebuild: bool = False
    pacing_seconds: float = 0.0


class UnknownSite(LookupError):
    pass


class SummaryFailed(RuntimeError):
    pass


def require_site(session: Session, site_id: str) -> Site:
    site = session.get(Site, site_id)
    if site is None:
        valid = ", ".join(session.scalars(select(Site.id).order_by(Site.id))) or "none yet"
        raise UnknownSite(
            f"unknown site {site_id!r}; valid ids: {valid}; load a site with `icp-pipeline site load FILE`"
        )
    return site


def active_segments(session: Session, site_id: str) -> list[Segment]:
    return list(
        session.scalars(
            select(Segment).where(Segment.site_id == site_id, Segment.active).order_by(Segment.id)
        )
    )


def _request(options: BuildOptions, purpose: str, prompt: str, hints: dict[str, Any]) -> ModelRequest:
    return ModelRequest(
        provider=options.provider,
        model=options.model,
        prompt=prompt,
        purpose=purpose,
        system=SYSTEM,
        max_output_tokens=4000,
        offline_hints=hints,
        deadline=time.monotonic() + STEP_BUDGET_SECONDS,
    )


def _inputs(request: ModelRequest, options: BuildOptions, claimant: str) -> tuple[str, ...]:
    """What a purchase subject's digest covers: the question asked and, for a rebuild, the run group
    asking (a rebuild buys anew once per run; its retries reuse it)."""
    return (
        request.provider,
        request.model,
        request.system or "",
        request.prompt,
        claimant if options.rebuild else "",
    )


def discover_segments(
    db_url: str,
    site_id: str,
    provider_for: ProviderFor,
    options: BuildOptions,
    claimant: str | None = None,
) -> dict[str, Any]:
    """Ask once for general segments (reused on later builds unless rebuilding); keep imported ones.
    Returns every active segment's partition key."""
    claimant = claimant or new_claimant()
    with session_scope(db_url) as session:
        site = require_site(session, site_id)
        segments = active_segments(session, site_id)
        generated = [s for s in segments if s.source == "generated"]
        imported = [s for s in segments if s.source == "imported"]
        request = None
        if options.rebuild or not generated:
            request = _request(options, "segments", segments_prompt(site, imported), {"site": site.name})
    bought = 0
    if request is not None:
        purchase = buy_structured(
            db_url,
            "segments",
            request,
            SegmentList,
            provider_for,
            subject=purchase_subject("segments", site_id, *_inputs(request, options, claimant)),
            claimant=claimant,
            site_id=site_id,
        )
        result, bought = purchase.value, purchase.bought
        with session_scope(db_url) as session:
            existing = {s.key: s for s in session.scalars(select(Segment).where(Segment.site_id == site_id))}
            taken = {k for k, s in existing.items() if s.source == "imported"}
            kept: set[str] = set()
            for found in result.segments:
                key = slugify(found.name)
                while key in taken or key in kept:
                    key = f"{key}-2"
                kept.add(key)
                row = existing.get(key)
                if row is None:
                    row = Segment(
                        site_id=site_id,
                        key=key,
                        partition_key=segment_partition_key(site_id, key),
                        source="generated",
                    )
                    session.add(row)
                row.name, row.description, row.rationale, row.active = (
                    found.name,
                    found.description,
                    found.why_it_fits,
                    True,
                )
            for key, row in existing.items():
                if row.source == "generated" and key not in kept:
                    row.active = False
    with session_scope(db_url) as session:
        segments = active_segments(session, site_id)
        return {
            "segments": [{"key": s.key, "name": s.name, "source": s.source} for s in segments],
            "partition_keys": [s.partition_key for s in segments],
            "model_calls": bought,
            "reused": request is None,
        }


def segment_of_partition(session: Session, partition_key: str) -> Segment:
    """The segment a `segments` partition key names; LookupError (with what to do) when unknown."""
    segment = session.scalars(select(Segment).where(Segment.partition_key == partition_key)).first()
    if segment is None:
        raise LookupError(f"unknown segment {partition_key!r}; materialize site_segments for its site first")
    return segment


def build_segment(
    db_url: str,
    partition_key: str,
    provider_for: ProviderFor,
    options: BuildOptions,
    claimant: str | None = None,
) -> dict[str, Any]:
    """Build one segment's ICP; the result row is replaced in place. Failures are stored, then raised."""
    claimant = claimant or new_claimant()
    with session_scope(db_url) as session:
        segment = segment_of_partition(session, partition_key)
        stored = session.scalars(select(SegmentResult).where(SegmentResult.segment_id == segment.id)).first()
        if stored is not None and stored.success and not options.rebuild:
            return {
                "reused": True,
                "success": True,
                "execution_ms": stored.execution_ms,
                "cost_usd": stored.cost_usd,
                "segment": segment.name,
                "confidence": (stored.profile or {}).get("confidence"),
                "fit_score": (stored.analysis or {}).get("fit_score"),
                "profile": stored.profile,
                "analysis": stored.analysis,
            }
        site = require_site(session, segment.site_id)
        segment_id, site_id, name = segment.id, segment.site_id, segment.name
        request = _request(options, "icp", icp_prompt(site, segment), {"segment": name, "site": site.name})
    if options.pacing_seconds:
        time.sleep(options.pacing_seconds)  # spares the provider between segment builds
    started = time.monotonic()
    try:
        purchase = buy_structured(
            db_url,
            "icp",
            request,
            SegmentICP,
            provider_for,
            subject=purchase_subject("icp", segment_id, *_inputs(request, options, claimant)),
            claimant=claimant,
            site_id=site_id,
            segment_id=segment_id,
        )
        result, calls = purchase.value, purchase.calls
    except PurchaseInProgress:  # nothing happened: another run is buying it; keep its result
        raise
    except ProviderError as error:
        _store_result(db_url, segment_id, options, started, error=str(error), raw_text=error.raw_text)
        raise
    _store_result(db_url, segment_id, options, started, result=result, calls=calls)
    return {
        "reused": False,
        "success": True,
        "execution_ms": int((time.monotonic() - started) * 1000),
        "cost_usd": total_cost(calls),
        "segment": name,
        "confidence": result.profile.confidence,
        "fit_score": result.analysis.fit_score,
        "profile": result.profile.model_dump(mode="json"),
        "analysis": result.analysis.model_dump(mode="json"),
        # A repair attempt is paid too: tokens are summed as in the stored result.
        "input_tokens": sum(c.input_tokens or 0 for c in calls),
        "output_tokens": sum(c.output_tokens or 0 for c in calls),
        "synthetic": any(c.synthetic for c in calls),
    }


def close_unbuilt_segment(db_url: str, partition_key: str, error: str, options: BuildOptions) -> bool:
    """A build whose worker died stored nothing, so the site summary would wait for it forever: record
    it failed. A segment that already has a result (an earlier build) keeps it. True when recorded."""
    with session_scope(db_url) as session:
        segment = session.scalars(select(Segment).where(Segment.partition_key == partition_key)).first()
        if segment is None:
            return False
        if session.scalars(select(SegmentResult.id).where(SegmentResult.segment_id == segment.id)).first():
            return False
        segment_id = segment.id
    _store_result(db_url, segment_id, options, time.monotonic(), error=error)
    return True


def _store_result(
    db_url: str,
    segment_id: int,
    options: BuildOptions,
    started: float,
    *,
    result: SegmentICP | None = None,
    calls: list[ModelCall] = (),
    error: str | None = None,
    raw_text: str | None = None,
) -> None:
    with session_scope(db_url) as session:
        row = session.scalars(select(SegmentResult).where(SegmentResult.segment_id == segment_id)).first()
        if row is None:
            row = SegmentResult(segment_id=segment_id)
        row.success = result is not None
        row.profile = result.profile.model_dump(mode="json") if result else None
        row.analysis = result.analysis.model_dump(mode="json") if result else None
        row.error, row.raw_output_text = error, raw_text
        row.provider, row.model = options.provider, options.model
        row.response_model = calls[-1].response_model if calls else None
        row.synthetic = any(c.synthetic for c in calls)
        row.input_tokens = sum(c.input_tokens or 0 for c in calls) if calls else None
        row.output_tokens = sum(c.output_tokens or 0 for c in calls) if calls else None
        row.cost_usd = total_cost(calls) if calls else None
        row.execution_ms = int((time.monotonic() - started) * 1000)
        row.completed_at = datetime.now(UTC)
        session.add(row)


def segment_table(session: Session, site_id: str) -> list[dict[str, Any]]:
    rows = []
    for segment in active_segments(session, site_id):
        result = session.scalars(select(SegmentResult).where(SegmentResult.segment_id == segment.id)).first()
        rows.append(
            {
                "segment_id": segment.key,
                "name": segment.name,
                "source": segment.source,
                "success": bool(result and result.success),
                "error": (result.error if result else "not built yet"),
                "execution_ms": result.execution_ms if result else None,
                "completed_at": result.completed_at.isoformat() if result else None,
                "fit_score": (result.analysis or {}).get("fit_score") if result and result.success else None,
            }
        )
    return rows


def summarize_site(
    db_url: str,
    site_id: str,
    provider_for: ProviderFor,
    options: BuildOptions,
    *,
    retry_narrative: bool = False,
    claimant: str | None = None,
) -> dict[str, Any]:
    """Compare the segments that succeeded; fails, listing every error, when none did.

    The ranking and overlaps are computed from the stored profiles; one model call adds the narrative.
    The stored comparison is keyed by a hash of its inputs (the succeeded segments' profiles and
    analyses, the site, provider and model): unchanged inputs reuse it and buy nothing, unless
    `rebuild`. A narrative that could not be bought leaves the comparison without one (a warning), so
    the next build asks again; with `retry_narrative` a retryable error is raised after storing it."""
    claimant = claimant or new_claimant()
    with session_scope(db_url) as session:
        site = require_site(session, site_id)
        table = segment_table(session, site_id)
        succeeded = []
        for segment in active_segments(session, site_id):
            result = session.scalars(
                select(SegmentResult).where(SegmentResult.segment_id == segment.id)
            ).first()
            if result is not None and result.success:
                succeeded.append(
                    (segment.key, segment.name, {"profile": result.profile, "analysis": result.analysis})
                )
        facts = [SegmentFacts.from_stored(k, n, r["profile"], r["analysis"]) for k, n, r in succeeded]
        ranked = rank_segments(facts)
        inputs_sha256 = comparison_inputs_sha256(
            {
                "site": site.config_sha256,
                "provider": options.provider,
                "model": options.model,
                "segments": succeeded,
            }
        )
        stored = session.scalars(select(SiteSummary).where(SiteSummary.site_id == site_id)).first()
        reusable = (
            not options.rebuild
            and stored is not None
            and stored.success
            and (stored.summary or {}).get("inputs_sha256") == inputs_sha256
            and (stored.summary or {}).get("narrative") is True
        )
        if reusable:
            comparison, reused_synthetic = dict(stored.summary), stored.synthetic
            # Only the table (errors, times of failed segments) can have changed: nothing is bought.
            stored.segments = table
        request = (
            _request(
                options,
                "site_summary",
                comparison_prompt(site, succeeded, ranked),
                {
                    "segment_ids": [s[0] for s in succeeded],
                    "segments": [
                        {"id": f.segment_id, "name": f.name, "fit_score": f.fit_score} for f in ranked
                    ],
                },
            )
            if succeeded and not reusable
            else None
        )
    if not succeeded:
        errors = (
            "; ".join(f"{row['segment_id']}: {row['error']}" for row in table) or "the site has no segments"
        )
        _store_summary(db_url, site_id, table, options, error=f"no segment succeeded ({errors})")
        raise SummaryFailed(f"site {site_id}: no segment succeeded: {errors}")
    if reusable:
        return {
            **_summary_outcome(table, comparison, len(succeeded), [], reused=True),
            "synthetic": reused_synthetic,
        }
    calls: list[ModelCall] = []
    narrative_error: ProviderError | None = None
    try:
        purchase = buy_structured(
            db_url,
            "site_summary",
            request,
            SiteComparison,
            provider_for,
            {"segment_ids": [s[0] for s in succeeded]},
            subject=purchase_subject("summary", site_id, *_inputs(request, options, claimant)),
            claimant=claimant,
            site_id=site_id,
        )
        comparison, calls = purchase.value, purchase.calls
    except PurchaseInProgress:  # nothing happened: another run is buying it; keep its result
        raise
    except ProviderError as error:
        comparison, narrative_error = None, error
    result = {
        **compare_segments(facts, comparison, str(narrative_error) if narrative_error else None),
        "inputs_sha256": inputs_sha256,
    }
    _store_summary(db_url, site_id, table, options, comparison=result, calls=calls)
    if narrative_error is not None and narrative_error.retryable and retry_narrative:
        raise narrative_error
    return _summary_outcome(table, result, len(succeeded), calls, reused=False)


def _summary_outcome(
    table: list[dict[str, Any]],
    comparison: dict[str, Any],
    succeeded: int,
    calls: list[ModelCall],
    *,
    reused: bool,
) -> dict[str, Any]:
    return {
        "segments": table,
        "comparison": comparison,
        "succeeded": succeeded,
        "failed": len(table) - succeeded,
        "reused": reused,
        "synthetic": any(c.synthetic for c in calls),
        "cost_usd": 0.0 if reused else total_cost(calls),
    }


def _store_summary(
    db_url: str,
    site_id: str,
    table: list[dict[str, Any]],
    options: BuildOptions,
    *,
    comparison: dict[str, Any] | None = None,
    calls: list[ModelCall] = (),
    error: str | None = None,
) -> None:
    with session_scope(db_url) as session:
        row = session.scalars(
            select(SiteSummary).where(SiteSummary.site_id == site_id)
        ).first() or SiteSummary(site_id=site_id)
        row.success = comparison is not None
        row.summary = comparison
        row.segments, row.error = table, error
        row.provider, row.model = options.provider, options.model
        row.synthetic = any(c.synthetic for c in calls)
        row.cost_usd = total_cost(calls) if calls else None
        row.generated_at = datetime.now(UTC)
        session.add(row)


def summary_markdown(table: list[dict[str, Any]]) -> str:
    lines = [
        "| Segment | Source | Success | Fit | Time (s) | Completed | Error |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in table:
        seconds = f"{row['execution_ms'] / 1000:.1f}" if row["execution_ms"] is not None else "–"
        fit = f"{row['fit_score']:.2f}" if row["fit_score"] is not None else "–"
        # For the terminal: model text without control characters (escape sequences, bidi overrides).
        error = inert(row["error"] or "").replace("|", "/")[:120]
        lines.append(
            f"| {inert(row['name'])} | {row['source']} | {'yes' if row['success'] else 'no'} | {fit} | {seconds} | "
            f"{row['completed_at'] or '–'} | {error} |"
        )
    return "\n".join(lines)


def desired_site_partitions(session: Session) -> tuple[set[str], set[str]]:
    """(site ids, partition keys of every active segment)."""
    sites = set(session.scalars(select(Site.id)))
    segments = set(session.scalars(select(Segment.partition_key).where(Segment.active)))
    return sites, segments


def unbuilt_segments(session: Session) -> list[str]:
    """Active segments that have never been built: they get their first run."""
    built = select(SegmentResult.segment_id)
    return list(
        session.scalars(select(Segment.partition_key).where(Segment.active, Segment.id.not_in(built)))
    )


def sites_ready_for_summary(session: Session) -> list[tuple[str, str]]:
    """(site id, marker) for sites whose every active segment has a result newer than their summary.
    The marker (the newest result time) makes one summary request per state of the segments."""
    ready = []
    for site_id in session.scalars(select(Site.id)):
        segments = active_segments(session, site_id)
        if not segments:
            continue
        results = {
            r.segment_id: r
            for r in session.scalars(
                select(SegmentResult).where(SegmentResult.segment_id.in_([s.id for s in segments]))
            )
        }
        if len(results) < len(segments):
            continue
        newest = max(r.completed_at for r in results.values())
        summary = session.scalars(select(SiteSummary).where(SiteSummary.site_id == site_id)).first()
        if summary is None or summary.generated_at.replace(tzinfo=None) < newest.replace(tzinfo=None):
            ready.append((site_id, newest.isoformat()))
    return ready
