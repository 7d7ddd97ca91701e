"""USD per million tokens. Unknown models or missing usage give an unknown cost (None), never zero.

What is priced, per call:
- input tokens not read from or written to the prompt cache at the input rate;
- cache reads at the cached-input rate;
- cache writes (Anthropic: 5-minute at 1.25x and 1-hour at 2x the input rate; OpenAI reports cache
  writes inside input_tokens and bills them as input, 1.0x), unless a price sets its own write rates;
- output tokens, reasoning/thinking included, at the output rate.
Gemini's toolUsePromptTokenCount (the grounding prompt) is added to the input by the adapter.
"""

from dataclasses import dataclass
from typing import Any

from icp_pipeline.providers.base import ModelResponse


@dataclass(frozen=True)
class Price:
    input: float
    cached_input: float
    output: float
    # USD per 1M tokens written to the prompt cache; None: the provider's rule (CACHE_WRITE_MULTIPLIERS).
    cache_write: float | None = None
    cache_write_1h: float | None = None


# List prices, USD per 1M tokens; override per deployment with ModelProviderResource.price_overrides.
PRICES: dict[str, Price] = {
    "openai/gpt-4o-mini": Price(0.15, 0.075, 0.60),
    "openai/gpt-4o": Price(2.50, 1.25, 10.00),
    "openai/gpt-4.1-mini": Price(0.40, 0.10, 1.60),
    "openai/gpt-4.1": Price(2.00, 0.50, 8.00),
    "anthropic/claude-3-5-haiku-latest": Price(0.80, 0.08, 4.00),
    "anthropic/claude-haiku-4-5": Price(1.00, 0.10, 5.00),
    "anthropic/claude-sonnet-4-5": Price(3.00, 0.30, 15.00),
    "gemini/gemini-2.5-flash": Price(0.30, 0.075, 2.50),
    "gemini/gemini-2.5-flash-lite": Price(0.10, 0.025, 0.40),
    "gemini/gemini-2.5-pro": Price(1.25, 0.31, 10.00),
}

# Cache-write rate as a multiple of the input rate: (5-minute or default TTL, 1-hour TTL).
CACHE_WRITE_MULTIPLIERS: dict[str, tuple[float, float]] = {"anthropic": (1.25, 2.0)}
DEFAULT_CACHE_WRITE_MULTIPLIERS = (1.0, 1.0)


def price_for(provider: str, model: str, overrides: dict[str, Price] | None = None) -> Price | None:
    return (overrides or {}).get(f"{provider}/{model}") or PRICES.get(f"{provider}/{model}")


def cost_usd(
    provider: str,
    model: str,
    input_tokens: int | None,
    cached_input_tokens: int | None,
    output_tokens: int | None,
    overrides: dict[str, Price] | None = None,
    *,
    cache_write_tokens: int | None = None,
    cache_write_1h_tokens: int | None = None,
) -> float | None:
    """`input_tokens` is everything sent, cache reads and writes included; `cache_write_tokens` is
    every cache write, of which `cache_write_1h_tokens` were written with the 1-hour TTL."""
    if provider == "offline":
        return 0.0  # synthetic answers cost nothing
    price = price_for(provider, model, overrides)
    if price is None or input_tokens is None or output_tokens is None:
        return None
    cached = min(cached_input_tokens or 0, input_tokens)
    writes = min(cache_write_tokens or 0, input_tokens - cached)
    writes_1h = min(cache_write_1h_tokens or 0, writes)
    short, long = CACHE_WRITE_MULTIPLIERS.get(provider, DEFAULT_CACHE_WRITE_MULTIPLIERS)
    write_rate = price.cache_write if price.cache_write is not None else price.input * short
    write_1h_rate = price.cache_write_1h if price.cache_write_1h is not None else price.input * long
    usd = (
        (input_tokens - cached - writes) * price.input
        + cached * price.cached_input
        + (writes - writes_1h) * write_rate
        + writes_1h * write_1h_rate
        + output_tokens * price.output
    ) / 1e6
    return round(usd, 8)


def cache_write_1h_tokens(raw: dict[str, Any]) -> int | None:
    """Anthropic's 1-hour cache writes (usage.cache_creation.ephemeral_1h_input_tokens), if reported."""
    usage = raw.get("usage") if isinstance(raw, dict) else None
    creation = usage.get("cache_creation") if isinstance(usage, dict) else None
    value = creation.get("ephemeral_1h_input_tokens") if isinstance(creation, dict) else None
    return value if isinstance(value, int) else None


def response_cost_usd(
    provider: str, model: str, response: ModelResponse, overrides: dict[str, Price] | None = None
) -> float | None:
    """The cost of one answered call: zero for synthetic answers, None when usage or price is unknown."""
    if response.synthetic:
        return 0.0
    return cost_usd(
        provider,
        model,
        response.input_tokens,
        response.cached_input_tokens,
        response.output_tokens,
        overrides,
        cache_write_tokens=response.cache_write_tokens,
        cache_write_1h_tokens=cache_write_1h_tokens(response.raw),
    )
