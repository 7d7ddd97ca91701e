"""USD per million tokens. Unknown models or missing usage give an unknown cost (None), never zero."""

from dataclasses import dataclass


@dataclass(frozen=True)
class Price:
    input: float
    cached_input: float
    output: float


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


def cost_usd(
    provider: str,
    model: str,
    input_tokens: int | None,
    cached_input_tokens: int | None,
    output_tokens: int | None,
    overrides: dict[str, Price] | None = None,
) -> float | None:
    if provider == "offline":
        return 0.0  # synthetic answers cost nothing
    price = (overrides or {}).get(f"{provider}/{model}") or PRICES.get(f"{provider}/{model}")
    if price is None or input_tokens is None or output_tokens is None:
        return None
    cached = min(cached_input_tokens or 0, input_tokens)
    usd = (
        (input_tokens - cached) * price.input + cached * price.cached_input + output_tokens * price.output
    ) / 1e6
    return round(usd, 8)
