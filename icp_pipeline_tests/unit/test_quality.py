"""The quality gates' rules (visibility/quality.py), each passing and failing, without Dagster."""

from dataclasses import replace
from typing import Any

from icp_pipeline.visibility import quality
from icp_pipeline.visibility.analytics import change_since
from icp_pipeline.visibility.quality import CycleFacts

FACTS = CycleFacts(
    org_id="acme",
    cycle_id=7,
    total=10,
    completed=8,
    failed=2,
    min_completion=0.8,
    budget_usd=None,
    spent_usd=0.5,
    unpriced_paid_calls=0,
    synthetic_calls=0,
    budget_stopped_items=0,
)


def test_completion_passes_at_min_completion_and_fails_below_it() -> None:
    passed = quality.completion_gate(FACTS)
    assert passed.passed and passed.blocking and passed.severity == "ERROR"
    assert passed.metadata["completion_ratio"] == 0.8
    failed = quality.completion_gate(replace(FACTS, completed=7, failed=3))
    assert not failed.passed
    assert "7 of 10 question runs completed (70.0%), below min_completion 80%" in failed.description
    # An org that asks for every run: one failure blocks.
    assert not quality.completion_gate(replace(FACTS, min_completion=1.0)).passed
    assert quality.completion_gate(replace(FACTS, min_completion=0.0, completed=0, failed=10)).passed


def test_synthetic_calls_fail_only_in_live_mode() -> None:
    synthetic = replace(FACTS, synthetic_calls=3)
    failed = quality.synthetic_gate(synthetic, "live")
    assert not failed.passed and failed.blocking
    assert "3 synthetic (offline) model calls" in failed.description
    assert quality.synthetic_gate(synthetic, "auto").passed
    assert quality.synthetic_gate(synthetic, "offline").passed
    assert quality.synthetic_gate(FACTS, "live").passed


def test_budget_passes_within_and_fails_over_it() -> None:
    assert quality.budget_gate(FACTS).passed  # no budget: no limit
    within = quality.budget_gate(replace(FACTS, budget_usd=0.5))
    assert within.passed and within.metadata["budget_usd"] == 0.5
    over = quality.budget_gate(replace(FACTS, budget_usd=0.4, budget_stopped_items=2))
    assert not over.passed and over.blocking
    assert "spent $0.5000, over its $0.4000 budget" in over.description
    assert "2 items were not bought (budget exhausted)" in over.description


def _row(runs: int, mentioned: int, share: float, share_ci: list[float]) -> dict[str, Any]:
    return {
        "name": "Acme",
        "is_target": True,
        "runs": runs,
        "mentioned_runs": mentioned,
        "mention_rate": mentioned / runs,
        "share_of_voice": share,
        "share_of_voice_ci": share_ci,
    }


def _payloads(now: dict[str, Any], before: dict[str, Any]) -> tuple[dict, dict]:
    now = {**now, "change": change_since(now, before)}
    return {"companies": [now]}, {"cycle_id": 3, "companies": [before]}


def test_a_significant_mention_rate_drop_warns() -> None:
    current, previous = _payloads(_row(40, 10, 0.3, [0.2, 0.45]), _row(40, 30, 0.4, [0.3, 0.5]))
    result = quality.drop_gate(current, previous)
    assert not result.passed and not result.blocking and result.severity == "WARN"
    assert result.metadata["mention_rate_dropped"] and not result.metadata["share_of_voice_dropped"]
    assert "mention rate 75.0% -> 25.0%" in result.description and "since cycle 3" in result.description


def test_a_share_of_voice_drop_warns_only_when_the_intervals_part() -> None:
    # Same mention rate (no Fisher signal), share of voice intervals apart.
    current, previous = _payloads(_row(40, 20, 0.2, [0.1, 0.29]), _row(40, 20, 0.5, [0.4, 0.6]))
    result = quality.drop_gate(current, previous)
    assert not result.passed and result.metadata["share_of_voice_dropped"]
    assert "share of voice 50.0% -> 20.0%" in result.description
    # Overlapping intervals: not significant, however large the point change.
    current, previous = _payloads(_row(40, 20, 0.3, [0.1, 0.45]), _row(40, 20, 0.5, [0.4, 0.6]))
    assert quality.drop_gate(current, previous).passed


def test_no_drop_a_rise_or_no_previous_cycle_passes() -> None:
    steady, before = _payloads(_row(40, 29, 0.4, [0.3, 0.5]), _row(40, 30, 0.4, [0.3, 0.5]))
    assert quality.drop_gate(steady, before).passed
    # A significant rise is not a drop.
    rise, before = _payloads(_row(40, 30, 0.6, [0.5, 0.7]), _row(40, 10, 0.2, [0.1, 0.3]))
    assert rise["companies"][0]["change"]["significant"]
    assert quality.drop_gate(rise, before).passed
    first = quality.drop_gate({"companies": [_row(40, 10, 0.3, [0.2, 0.4])]}, None)
    assert first.passed and "no previous cycle" in first.description
