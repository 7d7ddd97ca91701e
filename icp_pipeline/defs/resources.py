"""Resources shared by every domain: the app database, model access and analytics delivery."""

import os
from functools import cached_property
from pathlib import Path

import dagster as dg

from icp_pipeline import settings
from icp_pipeline.providers.base import ModelProvider, ProviderError
from icp_pipeline.providers.factory import KEY_VARIABLES, ProviderSettings, resolve_provider
from icp_pipeline.providers.pricing import Price
from icp_pipeline.visibility.push import PushSettings

# Assets that call a model run in this pool; dagster.yaml caps it at 3 concurrent steps.
LLM_POOL = "llm"


def optional_env(name: str) -> dg.EnvVar | None:
    """An EnvVar when the variable is set (Dagster resolves it late and never shows its value), else None."""
    return dg.EnvVar(name) if os.environ.get(name) else None


class AppDatabase(dg.ConfigurableResource):
    """The app database; `ICP_DATABASE_URL`, or a SQLite file under `.icp/` by default."""

    url: str | None = None

    @property
    def resolved_url(self) -> str:
        return self.url or settings.database_url()


class ModelProviderResource(dg.ConfigurableResource):
    """Model access for every provider. Without a key, a provider falls back to the offline one (mode auto)."""

    mode: str = "auto"
    openai_api_key: str | None = None
    anthropic_api_key: str | None = None
    gemini_api_key: str | None = None
    offline_latency_seconds: float = 0.0
    offline_fail_models: list[str] = []
    # "provider/model" -> [input, cached input, output] USD per million tokens; wins over the built-in table.
    price_overrides: dict[str, list[float]] = {}

    @cached_property
    def _keys(self) -> tuple[dict[str, str | None], dict[str, str]]:
        """Each provider's key, stripped (keys read from secret files end in a newline, which the SDKs
        send or strip unpredictably), and the error of each key that cannot be used as it is."""
        keys: dict[str, str | None] = {}
        errors: dict[str, str] = {}
        given = {
            "openai": self.openai_api_key,
            "anthropic": self.anthropic_api_key,
            "gemini": self.gemini_api_key,
        }
        for provider, value in given.items():
            try:
                keys[provider] = settings.clean_secret(KEY_VARIABLES[provider], value)
            except settings.SecretFormatError as error:
                keys[provider], errors[provider] = None, str(error)
        return keys, errors

    @cached_property
    def _settings(self) -> ProviderSettings:
        return ProviderSettings(
            mode=self.mode,
            api_keys=self._keys[0],
            offline_latency_seconds=self.offline_latency_seconds,
            offline_fail_models=frozenset(self.offline_fail_models),
            price_overrides={name: Price(*prices) for name, prices in self.price_overrides.items()},
        )

    def provider_for(self, provider: str, model: str) -> ModelProvider:
        if error := self._keys[1].get(provider):  # never fall back to offline for a mistyped key
            raise ProviderError(provider, model, error, retryable=False)
        return resolve_provider(self._settings, provider, model)


class PushResource(dg.ConfigurableResource):
    """Where analytics go: `ICP_PUSH_WEBHOOK_URL` (signed with `ICP_PUSH_WEBHOOK_SECRET`) or a local outbox."""

    webhook_url: str | None = None
    webhook_secret: str | None = None
    outbox_dir: str | None = None
    max_attempts: int = 5
    backoff_seconds: float = 0.5

    def push_settings(self) -> PushSettings:
        return PushSettings(
            webhook_url=settings.clean_secret("ICP_PUSH_WEBHOOK_URL", self.webhook_url),
            webhook_secret=settings.clean_secret("ICP_PUSH_WEBHOOK_SECRET", self.webhook_secret),
            outbox_dir=Path(self.outbox_dir) if self.outbox_dir else settings.outbox_dir(),
            max_attempts=self.max_attempts,
            backoff_seconds=self.backoff_seconds,
        )


def resources_from_env() -> dict[str, dg.ConfigurableResource]:
    """The resources, reading secrets from the environment late (Dagster never shows an EnvVar's value).
    A secret with whitespace or control characters inside it fails here, before anything is bought."""
    for variable in (*settings.SECRET_VARIABLES, "ICP_PUSH_WEBHOOK_URL", "ICP_ALERT_WEBHOOK_URL"):
        settings.read_secret(variable)
    fail_models = [m.strip() for m in os.environ.get("ICP_OFFLINE_FAIL_MODELS", "").split(",") if m.strip()]
    return {
        "app_db": AppDatabase(url=optional_env("ICP_DATABASE_URL")),
        "models": ModelProviderResource(
            mode=os.environ.get("ICP_PROVIDER_MODE", "auto"),
            openai_api_key=optional_env("OPENAI_API_KEY"),
            anthropic_api_key=optional_env("ANTHROPIC_API_KEY"),
            gemini_api_key=optional_env("GEMINI_API_KEY"),
            offline_latency_seconds=float(os.environ.get("ICP_OFFLINE_LATENCY_SECONDS", "0")),
            offline_fail_models=fail_models,
        ),
        "push": PushResource(
            webhook_url=optional_env("ICP_PUSH_WEBHOOK_URL"),
            webhook_secret=optional_env("ICP_PUSH_WEBHOOK_SECRET"),
            outbox_dir=optional_env("ICP_OUTBOX_DIR"),
        ),
    }
