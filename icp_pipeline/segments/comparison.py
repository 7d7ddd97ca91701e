"""The site comparison, computed from the stored profiles: ranking and overlaps are deterministic.

The model only adds a narrative (summary, a reason per segment, recommendations). Its references to
segments are matched by id or by name; one it names that was not built is dropped with a warning,
never a failure, so a model that writes "Mid-market SaaS teams" instead of `mid-market-saas-teams`
cannot sink the analysis.
"""

import hashlib
import json
import re
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

from icp_pipeline.segments.keys import slugify
from icp_pipeline.segments.schemas import SiteComparison

# Bump when the computed comparison changes shape or meaning: stored summaries are then bought again.
COMPARISON_VERSION = "comparison-2"
RANKING_RULE = "fit score (high first), then confidence (high first), then segment id (a to z)"
_NOT_WORD = re.compile(r"[^\w]+")


@dataclass(frozen=True)
class SegmentFacts:
    """What the comparison reads from one segment's successful build."""

    segment_id: str
    name: str
    fit_score: float
    confidence: float
    pains: list[str] = field(default_factory=list)
    vocabulary: list[str] = field(default_factory=list)
    recommended_changes: list[str] = field(default_factory=list)

    @classmethod
    def from_stored(
        cls, segment_id: str, name: str, profile: dict[str, Any], analysis: dict[str, Any]
    ) -> "SegmentFacts":
        return cls(
            segment_id=segment_id,
            name=name,
            fit_score=float(analysis.get("fit_score") or 0.0),
            confidence=float(profile.get("confidence") or 0.0),
            pains=list(profile.get("pains") or []),
            vocabulary=list(profile.get("vocabulary") or []),
            recommended_changes=list(analysis.get("recommended_changes") or []),
        )


def normalise_term(term: str) -> str:
    """Lower case, punctuation as spaces, single spaces: "Data-spread  across tools." == "data spread across tools"."""
    return " ".join(_NOT_WORD.sub(" ", term.casefold()).replace("_", " ").split())


def _terms(values: list[str]) -> set[str]:
    return {t for t in map(normalise_term, values) if t}


def rank_segments(segments: list[SegmentFacts]) -> list[SegmentFacts]:
    """Best fit first; ties broken by confidence, then by segment id (see RANKING_RULE)."""
    return sorted(segments, key=lambda s: (-s.fit_score, -s.confidence, s.segment_id))


def segment_overlaps(segments: list[SegmentFacts]) -> list[dict[str, Any]]:
    """Every pair that shares a normalised pain or vocabulary term, with the Jaccard index of their
    pain + vocabulary terms and the shared terms listed; most similar pair first, then by ids."""
    overlaps = []
    for a, b in combinations(sorted(segments, key=lambda s: s.segment_id), 2):
        terms_a = _terms(a.pains) | _terms(a.vocabulary)
        terms_b = _terms(b.pains) | _terms(b.vocabulary)
        shared = terms_a & terms_b
        if not shared:
            continue
        overlaps.append(
            {
                "segment_ids": [a.segment_id, b.segment_id],
                "names": [a.name, b.name],
                "jaccard": round(len(shared) / len(terms_a | terms_b), 3),
                "shared_pains": sorted(_terms(a.pains) & _terms(b.pains)),
                "shared_vocabulary": sorted(_terms(a.vocabulary) & _terms(b.vocabulary)),
                "shared_terms": sorted(shared),
                "description": None,
            }
        )
    return sorted(overlaps, key=lambda o: (-o["jaccard"], o["segment_ids"]))


def _reference_key(text: str) -> str:
    return " ".join(text.casefold().split())


def resolve_reference(reference: str, segments: list[SegmentFacts]) -> str | None:
    """The segment id a model's reference means: its id, or its name, ignoring case and spacing (or the
    name's slug, e.g. "Mid-market SaaS" for `mid-market-saas`). None when unknown or ambiguous."""
    wanted = _reference_key(reference)
    for matches in (
        [s for s in segments if _reference_key(s.segment_id) == wanted],
        [s for s in segments if _reference_key(s.name) == wanted],
        [s for s in segments if s.segment_id == slugify(reference)],
    ):
        ids = {s.segment_id for s in matches}
        if len(ids) == 1:
            return ids.pop()
        if len(ids) > 1:
            return None
    return None


def compare_segments(
    segments: list[SegmentFacts],
    narrative: SiteComparison | None = None,
    narrative_error: str | None = None,
) -> dict[str, Any]:
    """The stored comparison: the ranking and overlaps from the profiles, the model's narrative where
    it refers to segments that were built, and a warning for everything that was dropped."""
    if not segments:
        raise ValueError("nothing to compare: no segment succeeded")
    ranked = rank_segments(segments)
    by_id = {s.segment_id: s for s in segments}
    warnings: list[str] = []
    if narrative_error:
        warnings.append(f"no model narrative: {narrative_error}")
    reasons: dict[str, str] = {}
    model_order: list[str] = []
    for entry in narrative.ranking if narrative else []:
        segment_id = resolve_reference(entry.segment_id, segments)
        if segment_id is None:
            warnings.append(
                f"the model ranked {entry.segment_id!r}, which matches no single built segment; dropped"
            )
            continue
        reasons.setdefault(segment_id, entry.reason)
        model_order.append(segment_id)
    ranked_ids = [s.segment_id for s in ranked]
    if model_order and list(dict.fromkeys(model_order)) != [i for i in ranked_ids if i in model_order]:
        warnings.append(f"the model's order differs from the fit scores; the ranking follows {RANKING_RULE}")

    overlaps = segment_overlaps(segments)
    by_pair = {frozenset(o["segment_ids"]): o for o in overlaps}
    model_overlaps = []
    for overlap in narrative.overlaps if narrative else []:
        resolved = [resolve_reference(ref, segments) for ref in overlap.segment_ids]
        unknown = [
            ref for ref, segment_id in zip(overlap.segment_ids, resolved, strict=True) if not segment_id
        ]
        ids = sorted({i for i in resolved if i})
        if unknown or len(ids) < 2:
            named = ", ".join(repr(r) for r in unknown) or "fewer than two built segments"
            warnings.append(f"the model named an overlap of {named}; dropped")
            continue
        pair = by_pair.get(frozenset(ids))
        if pair is not None and pair["description"] is None:
            pair["description"] = overlap.description
        else:
            model_overlaps.append({"segment_ids": ids, "description": overlap.description})

    top = ranked[0]
    return {
        "summary": narrative.summary
        if narrative
        else (
            f"{top.name} fits best (fit score {top.fit_score:.2f}) of {len(ranked)} segment(s), "
            f"ranked by {RANKING_RULE}."
        ),
        "ranking": [
            {
                "rank": rank,
                "segment_id": s.segment_id,
                "name": s.name,
                "fit_score": s.fit_score,
                "confidence": s.confidence,
                "reason": reasons.get(s.segment_id)
                or f"fit score {s.fit_score:.2f}, confidence {s.confidence:.2f}",
            }
            for rank, s in enumerate(ranked, start=1)
        ],
        "ranking_rule": RANKING_RULE,
        "overlaps": overlaps,
        "model_overlaps": model_overlaps,
        "recommendations": list(narrative.recommendations)
        if narrative and narrative.recommendations
        else list(by_id[top.segment_id].recommended_changes),
        "narrative": narrative is not None,
        "warnings": warnings,
    }


def comparison_inputs_sha256(inputs: dict[str, Any]) -> str:
    """The key of a stored comparison: the same inputs never buy the narrative twice."""
    payload = json.dumps({"version": COMPARISON_VERSION, **inputs}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()
