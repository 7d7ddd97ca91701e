"""Pick the adapter for a model entry: the real SDK when its key is set, else the offline provider."""

from dataclasses import dataclass, field

from icp_pipeline.providers.base import ModelProvider, ModelRequest, ModelResponse, ProviderError
from icp_pipeline.providers.offline import OfflineProvider
from icp_pipeline.providers.pricing import Price, response_cost_usd

KEY_VARIABLES = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY", "gemini": "GEMINI_API_KEY"}
MODES = ("auto", "live", "offline")


@dataclass(frozen=True)
class ProviderSettings:
    # auto: a provider without a key falls back to the offline provider (synthetic, and says so);
    # live: a missing key fails the step; offline: never call a real provider.
    mode: str = "auto"
    api_keys: dict[str, str | None] = field(default_factory=dict)
    offline_latency_seconds: float = 0.0
    offline_fail_models: frozenset[str] = field(default_factory=frozenset)
    price_overrides: dict[str, Price] = field(default_factory=dict)


@dataclass(frozen=True)
class PricedProvider:
    """Puts the cost on every response: zero for synthetic answers, unknown without usage or a price."""

    inner: ModelProvider
    price_overrides: dict[str, Price]

    @property
    def name(self) -> str:
        return self.inner.name

    def complete(self, request: ModelRequest) -> ModelResponse:
        try:
            response = self.inner.complete(request)
        except ProviderError as error:
            if error.response is not None:  # answered but unusable: priced all the same
                error.response.cost_usd = response_cost_usd(
                    request.provider, request.model, error.response, self.price_overrides
                )
            raise
        response.cost_usd = response_cost_usd(request.provider, request.model, response, self.price_overrides)
        return response


def resolve_provider(settings: ProviderSettings, provider: str, model: str) -> ModelProvider:
    return PricedProvider(_unpriced_provider(settings, provider, model), settings.price_overrides)


def _unpriced_provider(settings: ProviderSettings, provider: str, model: str) -> ModelProvider:
    offline = OfflineProvider(settings.offline_latency_seconds, settings.offline_fail_models)
    if provider == "offline" or settings.mode == "offline":
        return offline
    if provider not in KEY_VARIABLES:
        raise ProviderError(provider, model, "unknown provider", retryable=False)
    # Keys read from secret files often end in a newline: the SDKs would send it as is.
    api_key = (settings.api_keys.get(provider) or "").strip()
    if not api_key:
        if settings.mode == "live":
            raise ProviderError(
                provider, model, f"no API key: set {KEY_VARIABLES[provider]}", retryable=False
            )
        return offline
    return _live_adapter(provider, api_key)


def _live_adapter(provider: str, api_key: str) -> ModelProvider:
    # Imported here so a run loads only the SDK it uses (openai + anthropic together cost ~2 s).
    if provider == "openai":
        from icp_pipeline.providers.openai_adapter import OpenAIAdapter

        return OpenAIAdapter(api_key)
    if provider == "anthropic":
        from icp_pipeline.providers.anthropic_adapter import AnthropicAdapter

        return AnthropicAdapter(api_key)
    from icp_pipeline.providers.gemini_adapter import GeminiAdapter

    return GeminiAdapter(api_key)


def location_in_prompt(provider: str, web_search: bool) -> bool:
    """OpenAI's and Anthropic's search tools take the user's location; everywhere else the prompt does."""
    return not (web_search and provider in ("openai", "anthropic"))
