"""How many output tokens a model may spend on one answer.

Reasoning ("thinking") tokens count against the output limit on every provider, and a web-search
answer is long: real recorded answers of reasoning models with web search used 1,720-3,773 output
tokens including reasoning. A budget that is too small buys a truncated answer that cannot be used,
so the defaults are generous; an answer that stops early costs only what it used.

- REASONING_OR_SEARCH_ANSWER_TOKENS (8192): any answer with web search, and every answer of a model
  that reasons by default (OpenAI o-series and gpt-5, Gemini 2.5 and later, Claude with thinking).
- ANSWER_TOKENS (4096): a plain answer of any other model.
"""

ANSWER_TOKENS = 4096
REASONING_OR_SEARCH_ANSWER_TOKENS = 8192

# Model name prefixes of models that spend output tokens on reasoning before they answer.
REASONING_MODEL_PREFIXES: dict[str, tuple[str, ...]] = {
    "openai": ("o1", "o3", "o4", "gpt-5"),
    "gemini": ("gemini-2.5", "gemini-3"),
    "anthropic": ("claude-opus-4", "claude-sonnet-4", "claude-3-7"),
}


def is_reasoning_model(provider: str, model: str) -> bool:
    return model.startswith(REASONING_MODEL_PREFIXES.get(provider, ()))


def answer_token_budget(provider: str, model: str, web_search: bool) -> int:
    """max_output_tokens for an answer request (the org file may override it per model)."""
    if web_search or is_reasoning_model(provider, model):
        return REASONING_OR_SEARCH_ANSWER_TOKENS
    return ANSWER_TOKENS
