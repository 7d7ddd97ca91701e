"""What a site's ICP build bought, readable: each segment's profile, analysis, fit, error and the ranking.

Read by `icp-pipeline site report` and by the `segment_icp` asset's metadata. Profiles are model text:
the CLI prints them through `terminal.inert`, the asset shows them as plain text or table cells.
"""

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from icp_pipeline.db.models import AnalyticsSnapshot, Org, Question, Segment, SegmentResult, SiteSummary
from icp_pipeline.segments.steps import active_segments, require_site
from icp_pipeline.visibility.analytics import SegmentLabel, segment_target


class UnknownSegment(LookupError):
    """A segment id the site does not have; the message lists the valid ids."""

    def __init__(self, site_id: str, unknown: list[str], valid: list[str], hint: str = "") -> None:
        names = ", ".join(repr(s) for s in unknown)
        listed = ", ".join(valid) or "none yet"
        plural = "s" if len(unknown) > 1 else ""
        super().__init__(f"unknown segment{plural} {names} of site {site_id!r}; valid ids: {listed}{hint}")
        self.unknown, self.valid = unknown, valid


def _join(values: Any) -> str:
    if not values:
        return "–"
    if isinstance(values, list):
        return "; ".join(str(v) for v in values)
    return str(values)


def _score(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, int | float) else "–"


def profile_fields(profile: dict[str, Any] | None, analysis: dict[str, Any] | None) -> list[tuple[str, str]]:
    """(label, value) pairs of a stored ICP build, in reading order; list fields joined by "; "."""
    profile, analysis = profile or {}, analysis or {}
    firmographics = profile.get("firmographics") or {}
    committee = profile.get("buying_committee") or {}
    roles = [
        f"{r.get('role')} ({r.get('seniority')}, {r.get('decision_power')} decision power)"
        for r in committee.get("roles") or []
    ]
    criteria = [
        f"{c.get('criterion')} ({_score(c.get('weight'))})" for c in profile.get("fit_criteria") or []
    ]
    return [
        ("Segment", _join(profile.get("segment_name"))),
        ("Who they are", _join(profile.get("summary"))),
        ("Industries", _join(firmographics.get("industries"))),
        ("Company size", _join(firmographics.get("company_size"))),
        ("Revenue band", _join(firmographics.get("revenue_band"))),
        ("Regions", _join(firmographics.get("regions"))),
        ("Growth stage", _join(firmographics.get("growth_stage"))),
        ("Buying committee", _join(roles)),
        ("Champion", _join(committee.get("champion"))),
        ("Economic buyer", _join(committee.get("economic_buyer"))),
        ("Blocker", _join(committee.get("blocker"))),
        ("Pains", _join(profile.get("pains"))),
        ("Jobs to be done", _join(profile.get("jobs_to_be_done"))),
        ("Desired outcomes", _join(profile.get("desired_outcomes"))),
        ("Buying triggers", _join(profile.get("buying_triggers"))),
        ("Objections", _join(profile.get("objections"))),
        ("Current alternatives", _join(profile.get("current_alternatives"))),
        ("Research channels", _join(profile.get("research_channels"))),
        ("Messaging hooks", _join(profile.get("messaging_hooks"))),
        ("Disqualifiers", _join(profile.get("disqualifiers"))),
        ("Fit criteria", _join(criteria)),
        ("Vocabulary", _join(profile.get("vocabulary"))),
        ("Confidence", _score(profile.get("confidence"))),
        ("Fit score", _score(analysis.get("fit_score"))),
        ("How well served", _join(analysis.get("how_well_served"))),
        ("Strengths", _join(analysis.get("strengths"))),
        ("Gaps", _join(analysis.get("gaps"))),
        ("Recommended changes", _join(analysis.get("recommended_changes"))),
    ]


def profile_text(profile: dict[str, Any] | None, analysis: dict[str, Any] | None) -> str:
    """The build as labelled lines ("Pains: a; b"), for plain-text display."""
    return "\n".join(f"{label}: {value}" for label, value in profile_fields(profile, analysis))


def _segment_entry(segment: Segment, result: SegmentResult | None) -> dict[str, Any]:
    ok = result is not None and result.success
    status = "not built" if result is None else "success" if ok else "error"
    return {
        "segment_id": segment.key,
        "name": segment.name,
        "source": segment.source,
        "description": segment.description,
        "status": status,
        "error": result.error if result is not None and not result.success else None,
        "fit_score": (result.analysis or {}).get("fit_score") if ok else None,
        "confidence": (result.profile or {}).get("confidence") if ok else None,
        "provider": result.provider if result else None,
        "model": result.model if result else None,
        "synthetic": result.synthetic if result else None,
        "cost_usd": result.cost_usd if result else None,
        "execution_ms": result.execution_ms if result else None,
        "completed_at": result.completed_at.isoformat() if result else None,
        "profile": result.profile if ok else None,
        "analysis": result.analysis if ok else None,
    }


def segment_visibility(session: Session, site_id: str, segments: list[Segment]) -> list[dict[str, Any]]:
    """The gap view: per org whose `icp:` names the site and per segment, the target's mention rate and
    share of voice over the runs of that segment's questions (`by_segment` of the org's latest
    analytics) next to the segment's fit score. `gap` = fit score - mention rate: the site fits the
    segment but assistants do not recommend it. Rows sorted by gap, largest first (unknown last)."""
    fits = {
        r.segment_id: (r.analysis or {}).get("fit_score")
        for r in session.scalars(
            select(SegmentResult).where(
                SegmentResult.segment_id.in_([s.id for s in segments]), SegmentResult.success
            )
        )
    }
    rows = []
    for org_id in session.scalars(select(Org.id).where(Org.icp_site_id == site_id).order_by(Org.id)):
        snapshot = session.scalars(
            select(AnalyticsSnapshot)
            .where(AnalyticsSnapshot.org_id == org_id)
            .order_by(AnalyticsSnapshot.cycle_id.desc())
            .limit(1)
        ).first()
        by_segment = (snapshot.payload if snapshot else {}).get("by_segment") or {}
        for segment in segments:
            fit = fits.get(segment.id)
            target, gap = segment_target(by_segment.get(str(segment.id), []), fit)
            rows.append(
                {
                    "org_id": org_id,
                    "segment_id": segment.key,
                    "name": segment.name,
                    "fit_score": fit,
                    "cycle_id": snapshot.cycle_id if snapshot else None,
                    "runs": target.get("runs", 0) if target else 0,
                    "mention_rate": target.get("mention_rate") if target else None,
                    "mention_rate_ci": target.get("mention_rate_ci") if target else None,
                    "share_of_voice": target.get("share_of_voice") if target else None,
                    "share_of_voice_ci": target.get("share_of_voice_ci") if target else None,
                    "gap": gap,
                }
            )
    rows.sort(key=lambda r: (r["gap"] is None, -(r["gap"] or 0), r["org_id"], r["segment_id"]))
    return rows


def org_segment_labels(session: Session, org_id: str, segment_ids: list[str]) -> dict[str, SegmentLabel]:
    """Per `by_segment` key (a segment id as a string): the segment's name, the org's active questions
    generated from it and its fit score, as stored now. Keys of deleted segments are left out."""
    ids = [int(key) for key in segment_ids if key.isdigit()]
    if not ids:
        return {}
    questions = dict(
        session.execute(
            select(Question.segment_id, func.count())
            .where(Question.org_id == org_id, Question.source == "segment", Question.active)
            .where(Question.segment_id.in_(ids))
            .group_by(Question.segment_id)
        )
        .tuples()
        .all()
    )
    labels = {}
    for segment, result in session.execute(
        select(Segment, SegmentResult)
        .outerjoin(SegmentResult, SegmentResult.segment_id == Segment.id)
        .where(Segment.id.in_(ids))
    ).tuples():
        fit = (result.analysis or {}).get("fit_score") if result is not None and result.success else None
        labels[str(segment.id)] = SegmentLabel(
            name=segment.name,
            questions=int(questions.get(segment.id, 0)),
            fit_score=float(fit) if isinstance(fit, int | float) else None,
            key=segment.key,
            site_id=segment.site_id,
        )
    return labels


def site_visibility(db_url: str, site_id: str) -> list[dict[str, Any]]:
    """segment_visibility over the site's active segments, in its own transaction."""
    from icp_pipeline.db.session import session_scope

    with session_scope(db_url) as session:
        return segment_visibility(session, site_id, active_segments(session, site_id))


def _percent(value: Any) -> str:
    return f"{value:.0%}" if isinstance(value, int | float) else "–"


def _interval(interval: Any) -> str:
    return f" [{_percent(interval[0])}, {_percent(interval[1])}]" if interval else ""


def visibility_lines(rows: list[dict[str, Any]]) -> list[str]:
    """The gap view as lines for a terminal."""
    if not rows:
        return ["No org names this site in its `icp:` block: no visibility per segment yet."]
    lines = []
    for row in rows:
        if not row["runs"]:
            seen = "no runs of its questions yet" if row["cycle_id"] else "no analytics yet"
            lines.append(
                f"{row['org_id']} / {row['name']} [{row['segment_id']}]: fit {_score(row['fit_score'])}, {seen}"
            )
            continue
        lines.append(
            f"{row['org_id']} / {row['name']} [{row['segment_id']}]: fit {_score(row['fit_score'])}, "
            f"mention rate {_percent(row['mention_rate'])}{_interval(row['mention_rate_ci'])}, "
            f"share of voice {_percent(row['share_of_voice'])}{_interval(row['share_of_voice_ci'])} "
            f"over {row['runs']} runs; gap {_score(row['gap'])}"
        )
    return lines


def site_report(session: Session, site_id: str, segment_ids: list[str] | None = None) -> dict[str, Any]:
    """The site's active segments with their latest build, and the stored site summary.
    Raises UnknownSite, or UnknownSegment for an id in `segment_ids` the site does not have."""
    site = require_site(session, site_id)
    segments = active_segments(session, site_id)
    if segment_ids:
        valid = [s.key for s in segments]
        unknown = [s for s in dict.fromkeys(segment_ids) if s not in valid]
        if unknown:
            raise UnknownSegment(site_id, unknown, valid)
        segments = [s for s in segments if s.key in segment_ids]
    results = {
        r.segment_id: r
        for r in session.scalars(
            select(SegmentResult).where(SegmentResult.segment_id.in_([s.id for s in segments]))
        )
    }
    stored = session.scalars(select(SiteSummary).where(SiteSummary.site_id == site_id)).first()
    summary = None
    if stored is not None:
        comparison = stored.summary or {}
        summary = {
            "status": "success" if stored.success else "error",
            "error": stored.error,
            "generated_at": stored.generated_at.isoformat(),
            "provider": stored.provider,
            "model": stored.model,
            "synthetic": stored.synthetic,
            "summary": comparison.get("summary"),
            "ranking": comparison.get("ranking", []),
            "ranking_rule": comparison.get("ranking_rule"),
            "overlaps": comparison.get("overlaps", []),
            "recommendations": comparison.get("recommendations", []),
            "warnings": comparison.get("warnings", []),
        }
    return {
        "site": {"id": site.id, "name": site.name, "url": site.url},
        "segments": [_segment_entry(s, results.get(s.id)) for s in segments],
        "summary": summary,
        "visibility": segment_visibility(session, site_id, segments),
    }


def report_text(report: dict[str, Any]) -> str:
    """The report for a terminal (print it through `terminal.inert`: names and profiles are untrusted)."""
    site = report["site"]
    lines = [f"Site {site['id']}: {site['name']} ({site['url']})"]
    if not report["segments"]:
        lines.append("\nNo segments yet: run `icp-pipeline site build " + site["id"] + "`.")
    for entry in report["segments"]:
        lines.append(f"\n## {entry['name']} [{entry['segment_id']}, {entry['source']}]")
        if entry["status"] == "success":
            how = f"{entry['provider']}/{entry['model']}" + (", synthetic" if entry["synthetic"] else "")
            lines.append(
                f"Status: success (fit score {_score(entry['fit_score'])}, {how}, built {entry['completed_at']})"
            )
            lines += [
                f"{label}: {value}" for label, value in profile_fields(entry["profile"], entry["analysis"])
            ]
        elif entry["status"] == "error":
            lines.append(f"Status: error: {entry['error']}")
        else:
            lines.append("Status: not built yet")
    summary = report["summary"]
    lines.append("\n## Ranking")
    if summary is None:
        lines.append("No site summary yet.")
    elif summary["status"] == "error":
        lines.append(f"The site summary failed: {summary['error']}")
    else:
        for entry in summary["ranking"]:
            lines.append(
                f"{entry['rank']}. {entry['name']} [{entry['segment_id']}]: fit {_score(entry['fit_score'])}, "
                f"confidence {_score(entry['confidence'])}: {entry['reason']}"
            )
        if summary.get("ranking_rule"):
            lines.append(f"(ranked by {summary['ranking_rule']})")
        lines.append(f"\nSummary: {summary['summary']}")
        if summary["recommendations"]:
            lines.append("Recommendations: " + _join(summary["recommendations"]))
        for warning in summary["warnings"]:
            lines.append(f"Warning: {warning}")
    if "visibility" in report:
        lines.append("\n## Visibility per segment (gap = fit score - the target's mention rate)")
        lines += visibility_lines(report["visibility"])
    return "\n".join(lines)
