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
    # A paused turn being continued: the `continuation` of the previous (paused) response, sent back
    # as the assistant's turn so far. None for a new turn.
    continuation: Any = None


@dataclass(frozen=True)
class SourceCitation:
    url: str
    title: str | None = None
    cited: bool = True  # False: retrieved by a search tool but not cited in the text


# How a turn finished. Only a "complete" turn is an answer; every other one is paid for, recorded in
# the ledger with its usage, and never stored or reused as an answer.
FINISH_COMPLETE = "complete"
FINISH_PAUSED = "paused"  # Anthropic pause_turn: continue it by sending `continuation` back
FINISH_TRUNCATED = "truncated"  # max_tokens / MAX_TOKENS / incomplete(max_output_tokens), text or not
FINISH_REFUSED = "refused"  # refusal, content filter, safety block
FINISH_EMPTY = "empty"  # no candidate / no content at all, for another reason
FINISHES = (FINISH_COMPLETE, FINISH_PAUSED, FINISH_TRUNCATED, FINISH_REFUSED, FINISH_EMPTY)


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
    finish: str = FINISH_COMPLETE  # one of FINISHES
    finish_reason: str | None = None  # the provider's own word for it: "max_tokens", "MAX_TOKENS", ...
    # Input tokens written to the provider's prompt cache (billed above the plain input rate).
    cache_write_tokens: int | None = None
    # The exact HTTP response body as received (None when the SDK does not expose it).
    raw_body: bytes | None = None
    # For a paused turn: what to send back as the assistant's content to continue it.
    continuation: Any = None

    @property
    def complete(self) -> bool:
        return self.finish == FINISH_COMPLETE


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
        response: "ModelResponse | None" = None,
    ) -> None:
        self.provider = provider
        # Set when the call was answered (and paid for) but the answer is unusable (unfinished,
        # refused): the ledger records it as a paid, failed call with its usage and raw body.
        self.response = response
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
