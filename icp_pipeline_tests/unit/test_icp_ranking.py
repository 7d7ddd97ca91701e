"""The site comparison computed from stored profiles: ranking, overlaps, and the model's references."""

import json

from icp_pipeline.segments.comparison import (
    RANKING_RULE,
    SegmentFacts,
    compare_segments,
    comparison_inputs_sha256,
    normalise_term,
    rank_segments,
    resolve_reference,
    segment_overlaps,
)
from icp_pipeline.segments.schemas import SiteComparison

STARTUPS = SegmentFacts(
    "startups",
    "Early-stage startups",
    fit_score=0.55,
    confidence=0.7,
    pains=["Slow answers to product questions", "No analyst on the team"],
    vocabulary=["activation", "Funnel"],
    recommended_changes=["Add a startup plan page"],
)
SAAS = SegmentFacts(
    "mid-market-saas",
    "Mid-market SaaS teams",
    fit_score=0.82,
    confidence=0.6,
    pains=["slow answers to product  questions.", "Data spread across tools"],
    vocabulary=["funnel", "retention", "NRR"],
    recommended_changes=["Show a SaaS case study"],
)
AGENCIES = SegmentFacts(
    "agencies",
    "Agencies",
    fit_score=0.55,
    confidence=0.9,
    pains=["Client reporting takes days"],
    vocabulary=["white label"],
)
DATA = SegmentFacts("data-platform-teams", "Data platform teams", fit_score=0.55, confidence=0.7)


def narrative(**fields) -> SiteComparison:
    return SiteComparison.model_validate({"summary": "model summary", **fields})


def test_ranking_follows_fit_then_confidence_then_id() -> None:
    ranked = rank_segments([STARTUPS, DATA, AGENCIES, SAAS])
    # 0.82 first; three at 0.55: agencies (confidence 0.9), then 0.7 twice by id a-z.
    assert [s.segment_id for s in ranked] == [
        "mid-market-saas",
        "agencies",
        "data-platform-teams",
        "startups",
    ]
    assert "fit score" in RANKING_RULE and "confidence" in RANKING_RULE and "id" in RANKING_RULE


def test_overlaps_are_jaccard_over_normalised_pains_and_vocabulary_with_shared_terms() -> None:
    assert normalise_term("  Slow answers to product  questions. ") == "slow answers to product questions"
    overlaps = segment_overlaps([STARTUPS, SAAS, AGENCIES])
    assert len(overlaps) == 1  # agencies share nothing with either
    overlap = overlaps[0]
    assert overlap["segment_ids"] == ["mid-market-saas", "startups"]
    assert overlap["shared_pains"] == ["slow answers to product questions"]
    assert overlap["shared_vocabulary"] == ["funnel"]
    assert overlap["shared_terms"] == ["funnel", "slow answers to product questions"]
    # startups 4 terms, saas 5 terms, 2 shared: 2 / 7
    assert overlap["jaccard"] == round(2 / 7, 3)


def test_references_match_id_or_name_ignoring_case_and_spacing() -> None:
    segments = [STARTUPS, SAAS, DATA]
    assert resolve_reference("mid-market-saas", segments) == "mid-market-saas"
    assert resolve_reference("  MID-MARKET-SAAS ", segments) == "mid-market-saas"
    assert resolve_reference("Mid-market SaaS teams", segments) == "mid-market-saas"
    assert resolve_reference("mid-market  saas   TEAMS", segments) == "mid-market-saas"
    assert resolve_reference("Data Platform Teams", segments) == "data-platform-teams"
    assert resolve_reference("Mid-market SaaS", segments) == "mid-market-saas"  # its slug is the id
    assert resolve_reference("Enterprise data teams", segments) is None


def test_a_name_shared_by_two_segments_is_ambiguous_but_an_id_is_not() -> None:
    twin = SegmentFacts("startups-2", "Early-stage startups", fit_score=0.5, confidence=0.5)
    assert resolve_reference("early-stage startups", [STARTUPS, twin]) is None
    assert resolve_reference("startups-2", [STARTUPS, twin]) == "startups-2"


def test_a_narrative_naming_segments_by_name_keeps_its_reasons_and_drops_unknowns_with_warnings() -> None:
    model = narrative(
        ranking=[
            # The model puts the lowest fit first and names segments by name; one was never built.
            {"segment_id": "Early-stage startups", "rank": 1, "fit_score": 0.99, "reason": "cheap to win"},
            {"segment_id": "Mid-market SaaS teams", "rank": 2, "fit_score": 0.1, "reason": "big budgets"},
            {"segment_id": "Enterprise data teams", "rank": 3, "fit_score": 0.5, "reason": "imagined"},
        ],
        overlaps=[
            {"segment_ids": ["Early-stage startups", "mid-market-saas"], "description": "both want speed"},
            {"segment_ids": ["Startups", "Hospitals"], "description": "nothing"},
        ],
        recommendations=["Lead with speed"],
    )
    result = compare_segments([STARTUPS, SAAS], model)
    assert [(r["rank"], r["segment_id"]) for r in result["ranking"]] == [
        (1, "mid-market-saas"),
        (2, "startups"),
    ]
    assert [r["reason"] for r in result["ranking"]] == ["big budgets", "cheap to win"]
    assert [r["fit_score"] for r in result["ranking"]] == [0.82, 0.55]  # the stored scores, not the model's
    assert result["overlaps"][0]["description"] == "both want speed"
    assert result["model_overlaps"] == []
    assert result["summary"] == "model summary" and result["recommendations"] == ["Lead with speed"]
    assert result["narrative"] is True
    warnings = "\n".join(result["warnings"])
    assert "'Enterprise data teams', which matches no single built segment" in warnings
    assert "'Hospitals'" in warnings
    assert "order differs from the fit scores" in warnings
    json.dumps(result)  # stored as JSON


def test_without_a_narrative_the_comparison_still_stands() -> None:
    result = compare_segments([STARTUPS, SAAS], None, "invalid structured output after one repair attempt")
    assert [r["segment_id"] for r in result["ranking"]] == ["mid-market-saas", "startups"]
    assert result["narrative"] is False
    assert "Mid-market SaaS teams fits best" in result["summary"]
    assert result["recommendations"] == ["Show a SaaS case study"]  # the top segment's own
    assert result["warnings"] == ["no model narrative: invalid structured output after one repair attempt"]


def test_the_model_schema_accepts_names_and_a_bare_summary() -> None:
    """Before: the schema itself rejected a ranking by name ("ranks segments that were not built")."""
    parsed = SiteComparison.model_validate_json(
        json.dumps(
            {
                "summary": "s",
                "ranking": [{"segment_id": "Agencies", "rank": 1, "fit_score": 1, "reason": "r"}],
            }
        ),
        context={"segment_ids": ["agencies"]},
    )
    assert parsed.ranking[0].segment_id == "Agencies"
    assert SiteComparison.model_validate({"summary": "only a summary"}).ranking == []


def test_inputs_hash_changes_with_any_input_and_not_with_key_order() -> None:
    base = {"site": "abc", "provider": "openai", "model": "m", "segments": [["a", "A", {"x": 1, "y": 2}]]}
    same = {"segments": [["a", "A", {"y": 2, "x": 1}]], "model": "m", "provider": "openai", "site": "abc"}
    assert comparison_inputs_sha256(base) == comparison_inputs_sha256(same)
    for changed in (
        {**base, "model": "other"},
        {**base, "site": "def"},
        {**base, "segments": [["a", "A", {"x": 1, "y": 3}]]},
    ):
        assert comparison_inputs_sha256(changed) != comparison_inputs_sha256(base)
