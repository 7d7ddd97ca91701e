"""Pick the adapter for a model entry: the real SDK when its key is set, else the offline provider."""

from dataclasses import dataclass, field

from icp_pipeline.providers.base import ModelProvider, ProviderError
from icp_pipeline.providers.offline import OfflineProvider

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


def resolve_provider(settings: ProviderSettings, provider: str, model: str) -> ModelProvider:
    offline = OfflineProvider(settings.offline_latency_seconds, settings.offline_fail_models)
    if provider == "offline" or settings.mode == "offline":
        return offline
    if provider not in KEY_VARIABLES:
        raise ProviderError(provider, model, "unknown provider", retryable=False)
    if not settings.api_keys.get(provider):
        if settings.mode == "live":
            raise ProviderError(
                provider, model, f"no API key: set {KEY_VARIABLES[provider]}", retryable=False
            )
        return offline
    raise ProviderError(
        provider,
        model,
        "the live adapter for this provider is not installed in this version",
        retryable=False,
    )
