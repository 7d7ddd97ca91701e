import pytest

from icp_pipeline.providers.base import ModelRequest, ModelResponse, ProviderError
from icp_pipeline.providers.budgets import (
    ANSWER_TOKENS,
    REASONING_OR_SEARCH_ANSWER_TOKENS,
    answer_token_budget,
)
from icp_pipeline.providers.factory import PricedProvider
from icp_pipeline.providers.pricing import PRICES, Price, cost_usd


def test_known_model_with_cached_tokens() -> None:
    # gpt-4o-mini: 0.15 input, 0.075 cached input, 0.60 output per 1M tokens.
    # (600 * 0.15 + 400 * 0.075 + 500 * 0.60) / 1e6 = 420 / 1e6
    assert cost_usd("openai", "gpt-4o-mini", 1000, 400, 500) == pytest.approx(0.00042)


def test_known_model_without_cached_tokens() -> None:
    # claude-sonnet-4-5: (2000 * 3.00 + 1000 * 15.00) / 1e6
    assert cost_usd("anthropic", "claude-sonnet-4-5", 2000, None, 1000) == pytest.approx(0.021)
    assert cost_usd("anthropic", "claude-sonnet-4-5", 2000, 0, 1000) == pytest.approx(0.021)


def test_cached_tokens_are_capped_at_input_tokens() -> None:
    # gemini-2.5-flash: all 100 input tokens cached: (100 * 0.075 + 10 * 2.50) / 1e6
    assert cost_usd("gemini", "gemini-2.5-flash", 100, 500, 10) == pytest.approx(32.5e-6)


def test_every_listed_price_is_used() -> None:
    for key, price in PRICES.items():
        provider, model = key.split("/", 1)
        assert cost_usd(provider, model, 1_000_000, 0, 1_000_000) == pytest.approx(price.input + price.output)


@pytest.mark.parametrize(
    ("provider", "model"),
    [("openai", "gpt-99"), ("anthropic", "gpt-4o-mini"), ("mystery", "model")],
)
def test_unknown_model_is_unknown_cost(provider: str, model: str) -> None:
    assert cost_usd(provider, model, 1000, 0, 1000) is None


@pytest.mark.parametrize(("input_tokens", "output_tokens"), [(None, 10), (10, None), (None, None)])
def test_missing_usage_is_unknown_cost(input_tokens: int | None, output_tokens: int | None) -> None:
    assert cost_usd("openai", "gpt-4o-mini", input_tokens, 0, output_tokens) is None


@pytest.mark.parametrize("tokens", [(1000, 0, 1000), (None, None, None)])
def test_offline_is_free(tokens: tuple) -> None:
    assert cost_usd("offline", "anything", *tokens) == 0.0


def test_overrides_win_and_add_models() -> None:
    overrides = {"openai/gpt-4o-mini": Price(1.0, 0.5, 2.0), "custom/m": Price(10.0, 1.0, 20.0)}
    assert cost_usd("openai", "gpt-4o-mini", 1000, 0, 1000, overrides) == pytest.approx(0.003)
    assert cost_usd("custom", "m", 100, 50, 10, overrides) == pytest.approx(
        (50 * 10 + 50 * 1 + 10 * 20) / 1e6
    )
    assert cost_usd("openai", "gpt-4o", 1000, 0, 0, overrides) == pytest.approx(0.0025)


def test_anthropic_cache_writes_cost_more_than_input() -> None:
    # claude-haiku-4-5: 1.00 input, 0.10 cached, 5.00 output. 10,000 sent: 2,000 read from the cache,
    # 3,000 written for 5 minutes (1.25x) and 1,000 for an hour (2x), 4,000 plain.
    usd = cost_usd(
        "anthropic",
        "claude-haiku-4-5",
        10_000,
        2_000,
        100,
        cache_write_tokens=4_000,
        cache_write_1h_tokens=1_000,
    )
    assert usd == pytest.approx(
        (4_000 * 1.00 + 2_000 * 0.10 + 3_000 * 1.25 + 1_000 * 2.00 + 100 * 5.00) / 1e6
    )


def test_openai_cache_writes_are_billed_as_input() -> None:
    plain = cost_usd("openai", "gpt-4o-mini", 1000, 400, 500)
    assert cost_usd("openai", "gpt-4o-mini", 1000, 400, 500, cache_write_tokens=300) == pytest.approx(plain)


def test_cache_writes_are_capped_at_the_uncached_input() -> None:
    # 100 sent, 80 cached: at most 20 can have been written.
    assert cost_usd("anthropic", "claude-haiku-4-5", 100, 80, 0, cache_write_tokens=500) == pytest.approx(
        (80 * 0.10 + 20 * 1.25) / 1e6
    )


def test_a_price_can_set_its_own_cache_write_rates() -> None:
    overrides = {"anthropic/m": Price(1.0, 0.1, 2.0, cache_write=3.0, cache_write_1h=4.0)}
    usd = cost_usd("anthropic", "m", 1000, 0, 0, overrides, cache_write_tokens=300, cache_write_1h_tokens=100)
    assert usd == pytest.approx((700 * 1.0 + 200 * 3.0 + 100 * 4.0) / 1e6)


def test_positional_arguments_keep_their_meaning() -> None:
    # Callers that estimate costs pass (provider, model, input, cached, output, overrides) positionally.
    overrides = {"x/y": Price(1.0, 0.5, 2.0)}
    assert cost_usd("x", "y", 1000, 200, 100, overrides) == pytest.approx((800 + 100 + 200) / 1e6)


@pytest.mark.parametrize(
    ("provider", "model", "web_search", "budget"),
    [
        ("openai", "gpt-4o-mini", False, ANSWER_TOKENS),
        ("openai", "gpt-4o-mini", True, REASONING_OR_SEARCH_ANSWER_TOKENS),
        ("openai", "o4-mini", False, REASONING_OR_SEARCH_ANSWER_TOKENS),
        ("openai", "gpt-5-mini", False, REASONING_OR_SEARCH_ANSWER_TOKENS),
        ("gemini", "gemini-2.5-flash", False, REASONING_OR_SEARCH_ANSWER_TOKENS),
        ("anthropic", "claude-haiku-4-5", False, ANSWER_TOKENS),
        ("anthropic", "claude-haiku-4-5", True, REASONING_OR_SEARCH_ANSWER_TOKENS),
        ("anthropic", "claude-sonnet-4-5", False, REASONING_OR_SEARCH_ANSWER_TOKENS),
        ("offline", "synthetic", False, ANSWER_TOKENS),
    ],
)
def test_answer_token_budget(provider: str, model: str, web_search: bool, budget: int) -> None:
    assert answer_token_budget(provider, model, web_search) == budget


def test_answer_budgets_hold_the_longest_recorded_reasoning_answer() -> None:
    # Real answers of reasoning models with web search used up to 3,773 output tokens.
    assert answer_token_budget("openai", "o4-mini", True) >= 2 * 3_773
    assert ANSWER_TOKENS > 1500  # the old fixed budget truncated such answers


class _AnsweredButUnusable:
    """A provider whose call was answered (with usage) but unusable: it raises with the response."""

    name = "openai"

    def complete(self, request: ModelRequest) -> ModelResponse:
        response = ModelResponse("", {}, "openai", request.model, None, 1000, 500)
        raise ProviderError("openai", request.model, "unusable", retryable=False, response=response)


def test_a_paid_response_carried_by_an_error_is_priced() -> None:
    priced = PricedProvider(_AnsweredButUnusable(), {})
    with pytest.raises(ProviderError) as raised:
        priced.complete(ModelRequest("openai", "gpt-4o-mini", "p", "answer"))
    assert raised.value.response.cost_usd == pytest.approx((1000 * 0.15 + 500 * 0.60) / 1e6)
