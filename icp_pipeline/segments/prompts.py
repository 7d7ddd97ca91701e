"""Prompts for segment discovery, ICP builds and the site comparison."""

import json

from icp_pipeline.db.models import Segment, Site
from icp_pipeline.limits import MAX_PROMPT_CHARS
from icp_pipeline.segments.comparison import RANKING_RULE, SegmentFacts

# Every prompt below stays within MAX_PROMPT_CHARS: the site's pages fill what the rest leaves.
_NOTE_CHARS = 100  # the "(N more pages left out ...)" line

SYSTEM = "You are a B2B go-to-market strategist. Be concrete and specific. Reply with JSON only."


def _site_context(site: Site, budget: int, page_chars: int = 4000) -> str:
    """The site and as many of its pages (each cut at `page_chars`) as fit in `budget` characters;
    the pages left out are counted, so the model knows the list is partial."""
    text = f"Website: {site.name} ({site.url})\nDescription: {site.description}"
    pages = site.pages or []
    for index, page in enumerate(pages):
        block = f"\n\nPage {page['url']}:\n{page['text'][:page_chars]}"
        if len(text) + len(block) > budget - _NOTE_CHARS:
            return text + f"\n\n({len(pages) - index} more pages left out: the prompt limit is reached)"
        text += block
    return text.strip()


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: max(0, limit - 3)] + "..."


def segments_prompt(site: Site, imported: list[Segment]) -> str:
    known = "\n".join(f"- {s.name}: {s.description}" for s in imported) or "- (none)"
    known = _cut(known, MAX_PROMPT_CHARS // 4)
    ask = (
        "\n\nList the general audience segments this website serves or could serve "
        "(3 to 6), each with `name`, `description` and `why_it_fits`. Do not repeat these segments we "
        f"already track:\n{known}\n"
        'Reply with JSON: {"segments": [{"name": ..., "description": ..., "why_it_fits": ...}]}'
    )
    return _site_context(site, MAX_PROMPT_CHARS - len(ask)) + ask


def icp_prompt(site: Site, segment: Segment) -> str:
    ask = (
        "\n\nBuild the Ideal Customer Profile of this segment for the website above.\n"
        f"Segment: {_cut(segment.name, 200)}\nDescription: {_cut(segment.description, 5000)}\n\n"
        "`profile`: segment name, summary, firmographics (industries, company size, revenue band, regions, "
        "growth stage), buying committee (roles with seniority and decision power, champion, economic buyer, "
        "blocker), pains, jobs to be done, desired outcomes, buying triggers, objections, current alternatives, "
        "research channels, messaging hooks, disqualifiers, weighted fit criteria (weights 0-1), the "
        "vocabulary they use, and your confidence (0-1). `analysis`: how well the website serves this segment "
        "today (fit score 0-1, strengths, gaps) and what to change."
    )
    return _site_context(site, MAX_PROMPT_CHARS - len(ask)) + ask


def comparison_prompt(site: Site, results: list[tuple[str, str, dict]], ranked: list[SegmentFacts]) -> str:
    """The ranking is fixed (computed from the fit scores); the model is asked for the narrative only.
    Each profile gets an equal share of what the site (at most a quarter) and the ranking leave."""
    ranking = "\n".join(
        f"{rank}. {s.segment_id} ({_cut(s.name, 200)}): fit score {s.fit_score:.2f}, "
        f"confidence {s.confidence:.2f}"
        for rank, s in enumerate(ranked, start=1)
    )
    ask = (
        "\n\nCompare these segment ICPs for the website. The ranking "
        f"by fit is already decided ({RANKING_RULE}):\n{ranking}\n\n"
        "Write `summary` (a short comparison), `ranking` (one entry per segment in that order, using the "
        "segment ids given, with the reason for its place), `overlaps` between segments (segment ids and "
        "what they share), and `recommendations`: what the website should do first.\n\n"
    )
    context = _site_context(site, MAX_PROMPT_CHARS // 4, page_chars=1000)
    headers = [f"Segment {segment_id} ({_cut(name, 200)}):\n" for segment_id, name, _ in results]
    room = MAX_PROMPT_CHARS - len(context) - len(ask) - sum(len(h) + 2 for h in headers)
    share = max(0, min(6000, room // max(1, len(results))))
    profiles = "\n\n".join(
        header + json.dumps(result, sort_keys=True)[:share]
        for header, (_, _, result) in zip(headers, results, strict=True)
    )
    return context + ask + profiles
