"""Structured output: call, validate with pydantic, repair once, and never lose the raw text."""

from collections.abc import Callable
from dataclasses import replace
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from icp_pipeline.providers.base import (
    FINISH_EMPTY,
    FINISH_PAUSED,
    FINISH_REFUSED,
    FINISH_TRUNCATED,
    ModelProvider,
    ModelRequest,
    ModelResponse,
    ProviderError,
)

T = TypeVar("T", bound=BaseModel)


class InvalidModelOutput(ProviderError):
    def __init__(self, request: ModelRequest, detail: str, raw_text: str) -> None:
        super().__init__(
            request.provider,
            request.model,
            f"invalid structured output after one repair attempt: {detail}",
            retryable=False,
            raw_text=raw_text,
        )


def unfinished_turn_error(request: ModelRequest, response: ModelResponse) -> ProviderError:
    """The permanent error of a paid turn that did not complete. Asking the same request again would
    buy the same failure, so it is not retryable as is; the message says what to change."""
    reason = f"finish {response.finish_reason or response.finish}"
    what = "answer" if request.purpose == "answer" else f"{request.purpose} reply"
    if response.finish == FINISH_TRUNCATED:
        hint = "; raise models[].max_output_tokens in the org file" if request.purpose == "answer" else ""
        message = f"{what} truncated at max_output_tokens={request.max_output_tokens} ({reason}){hint}"
    elif response.finish == FINISH_REFUSED:
        message = f"{what} refused by the model ({reason})"
    elif response.finish == FINISH_EMPTY:
        message = f"{what} empty: the model returned no content ({reason})"
    elif response.finish == FINISH_PAUSED:
        message = f"{what} paused by the provider and not continued ({reason})"
    else:
        message = f"{what} did not complete ({reason})"
    return ProviderError(request.provider, request.model, message, retryable=False, response=response)


def parse_structured(schema: type[T], text: str, context: dict[str, Any] | None = None) -> T:
    """The reply as `schema`, code fences stripped; raises pydantic's ValidationError."""
    cleaned = text.strip().removeprefix("```json").removeprefix("```").removesuffix("```").strip()
    return schema.model_validate_json(cleaned, context=context)


def complete_structured(
    provider: ModelProvider,
    request: ModelRequest,
    schema: type[T],
    record: Callable[[ModelResponse], None],
    context: dict[str, Any] | None = None,
) -> T:
    """`record` is called after every call (paid, so persisted at once), before validation. A turn that
    did not complete (truncated, refused, ...) raises from `provider.complete` (the ledger's purchase
    path does that) and is never repaired: asking again as is would buy the same failure."""
    request = replace(request, output_schema=schema)
    response = provider.complete(request)
    record(response)
    if not response.complete:
        raise unfinished_turn_error(request, response)
    try:
        return parse_structured(schema, response.text, context)
    except ValidationError as first_error:
        detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in first_error.errors()[:5])
    repair = replace(
        request,
        prompt=f"{request.prompt}\n\nYour previous reply was not valid ({detail}). "
        "Reply again with only a JSON object that matches the schema.",
    )
    response = provider.complete(repair)
    record(response)
    if not response.complete:
        raise unfinished_turn_error(repair, response)
    try:
        return parse_structured(schema, response.text, context)
    except ValidationError as error:
        detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors()[:5])
        raise InvalidModelOutput(request, detail, response.text) from None
