"""What every provider adapter takes and returns."""

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import BaseModel


@dataclass(frozen=True)
class ModelRequest:
    provider: str
    model: str
    prompt: str
    purpose: str  # answer | claims | ...
    system: str | None = None
    country: str | None = None
    web_search: bool = False
    output_schema: type[BaseModel] | None = None
    max_output_tokens: int = 1500
    # time.monotonic() by which the whole step must be done; adapters size their timeouts to it.
    deadline: float | None = None
    # Context only the offline provider reads, to make plausible synthetic output.
    offline_hints: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SourceCitation:
    url: str
    title: str | None = None
    cited: bool = True  # False: retrieved by a search tool but not cited in the text


@dataclass
class ModelResponse:
    text: str
    raw: dict[str, Any]
    provider: str
    requested_model: str
    response_model: str | None
    input_tokens: int | None
    output_tokens: int | None
    cached_input_tokens: int | None = None
    citations: list[SourceCitation] = field(default_factory=list)
    web_search: bool = False
    location_mode: str | None = None  # prompt | user_location | none
    synthetic: bool = False
    latency_ms: int = 0
    cost_usd: float | None = None  # set by the provider layer from the price table; None = unknown


class ProviderError(Exception):
    """A failed model call. `retryable` tells the asset whether its RetryPolicy should try again."""

    def __init__(
        self,
        provider: str,
        model: str,
        message: str,
        *,
        retryable: bool,
        status_code: int | None = None,
        raw_text: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.provider = provider
        self.retry_after = retry_after
        self.model = model
        self.retryable = retryable
        self.status_code = status_code
        self.raw_text = raw_text
        super().__init__(f"{provider}/{model}: {message}")


class ModelProvider(Protocol):
    name: str

    def complete(self, request: ModelRequest) -> ModelResponse: ...


ProviderFor = Callable[[str, str], ModelProvider]  # (provider, model) -> adapter
