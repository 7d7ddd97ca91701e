import pytest

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
