"""Prompts for segment discovery, ICP builds and the site comparison."""

import json

from icp_pipeline.db.models import Segment, Site
from icp_pipeline.segments.comparison import RANKING_RULE, SegmentFacts

SYSTEM = "You are a B2B go-to-market strategist. Be concrete and specific. Reply with JSON only."


def _site_context(site: Site, page_chars: int = 4000) -> str:
    pages = "\n\n".join(f"Page {p['url']}:\n{p['text'][:page_chars]}" for p in site.pages or [])
    return f"Website: {site.name} ({site.url})\nDescription: {site.description}\n\n{pages}".strip()


def segments_prompt(site: Site, imported: list[Segment]) -> str:
    known = "\n".join(f"- {s.name}: {s.description}" for s in imported) or "- (none)"
    return (
        f"{_site_context(site)}\n\nList the general audience segments this website serves or could serve "
        "(3 to 6), each with `name`, `description` and `why_it_fits`. Do not repeat these segments we "
        f"already track:\n{known}\n"
        'Reply with JSON: {"segments": [{"name": ..., "description": ..., "why_it_fits": ...}]}'
    )


def icp_prompt(site: Site, segment: Segment) -> str:
    return (
        f"{_site_context(site)}\n\nBuild the Ideal Customer Profile of this segment for the website above.\n"
        f"Segment: {segment.name}\nDescription: {segment.description}\n\n"
        "`profile`: segment name, summary, firmographics (industries, company size, revenue band, regions, "
        "growth stage), buying committee (roles with seniority and decision power, champion, economic buyer, "
        "blocker), pains, jobs to be done, desired outcomes, buying triggers, objections, current alternatives, "
        "research channels, messaging hooks, disqualifiers, weighted fit criteria (weights 0-1), the "
        "vocabulary they use, and your confidence (0-1). `analysis`: how well the website serves this segment "
        "today (fit score 0-1, strengths, gaps) and what to change."
    )


def comparison_prompt(site: Site, results: list[tuple[str, str, dict]], ranked: list[SegmentFacts]) -> str:
    """The ranking is fixed (computed from the fit scores); the model is asked for the narrative only."""
    profiles = "\n\n".join(
        f"Segment {segment_id} ({name}):\n{json.dumps(result, sort_keys=True)[:6000]}"
        for segment_id, name, result in results
    )
    ranking = "\n".join(
        f"{rank}. {s.segment_id} ({s.name}): fit score {s.fit_score:.2f}, confidence {s.confidence:.2f}"
        for rank, s in enumerate(ranked, start=1)
    )
    return (
        f"{_site_context(site, page_chars=1000)}\n\nCompare these segment ICPs for the website. The ranking "
        f"by fit is already decided ({RANKING_RULE}):\n{ranking}\n\n"
        "Write `summary` (a short comparison), `ranking` (one entry per segment in that order, using the "
        "segment ids given, with the reason for its place), `overlaps` between segments (segment ids and "
        "what they share), and `recommendations`: what the website should do first.\n\n"
        f"{profiles}"
    )
