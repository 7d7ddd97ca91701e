"""The readable ICP profile: labelled fields from a stored build, whatever it holds."""

from icp_pipeline.segments.report import profile_fields, profile_text


def test_fields_are_labelled_and_lists_joined() -> None:
    profile = {
        "segment_name": "Startups",
        "summary": "Small teams",
        "pains": ["slow answers", "data spread"],
        "buying_committee": {"roles": [{"role": "CTO", "seniority": "exec", "decision_power": "high"}]},
        "fit_criteria": [{"criterion": "digital product", "weight": 0.7}],
        "confidence": 0.6,
    }
    fields = dict(profile_fields(profile, {"fit_score": 0.8, "gaps": []}))
    assert fields["Segment"] == "Startups"
    assert fields["Who they are"] == "Small teams"
    assert fields["Pains"] == "slow answers; data spread"
    assert fields["Buying committee"] == "CTO (exec, high decision power)"
    assert fields["Fit criteria"] == "digital product (0.70)"
    assert (fields["Confidence"], fields["Fit score"], fields["Gaps"]) == ("0.60", "0.80", "–")
    assert profile_text(profile, None).splitlines()[:2] == ["Segment: Startups", "Who they are: Small teams"]


def test_a_missing_build_gives_every_label_with_no_value() -> None:
    fields = profile_fields(None, None)
    assert len(fields) == 28 and {value for _, value in fields} == {"–"}
