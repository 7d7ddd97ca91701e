"""What `org run` says it is about to buy."""

import pytest

from icp_pipeline.visibility.estimate import (
    ANSWER_OUTPUT_TOKENS,
    CLAIMS_INPUT_TOKENS,
    CLAIMS_OUTPUT_TOKENS,
    PlannedCall,
    estimate,
)

CALLS = [
    PlannedCall("answer", "openai", "gpt-4o-mini", 400),
    PlannedCall("claims", "openai", "gpt-4o-mini"),
    PlannedCall("answer", "anthropic", "claude-unknown-9", 400),
    PlannedCall("claims", "anthropic", "claude-unknown-9"),
]


def test_live_calls_are_priced_from_the_table_with_the_documented_token_assumptions() -> None:
    result = estimate(CALLS, lambda provider, _model: True)
    # gpt-4o-mini: $0.15 in, $0.60 out per million tokens; the prompt's 400 characters are 100 tokens.
    expected = (
        100 * 0.15 + ANSWER_OUTPUT_TOKENS * 0.60 + CLAIMS_INPUT_TOKENS * 0.15 + CLAIMS_OUTPUT_TOKENS * 0.60
    ) / 1e6
    assert result.usd == pytest.approx(expected)
    assert (result.answers, result.claims, result.calls) == (2, 2, 4)
    assert result.unpriced == {"anthropic/claude-unknown-9"}
    text = result.describe()
    assert text.startswith("4 model calls (2 answers + 2 claims), estimated cost $0.0016 at list prices plus")
    assert "anthropic/claude-unknown-9 (no price in the table)" in text


def test_offline_calls_cost_nothing_and_say_so() -> None:
    result = estimate(CALLS, lambda _provider, _model: False)
    assert result.usd == 0 and not result.unpriced
    assert "estimated cost $0.00 (offline provider" in result.describe()
    assert estimate([], lambda *_: True).describe().startswith("0 model calls")
