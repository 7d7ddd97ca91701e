"""Structured output: call, validate with pydantic, repair once, and never lose the raw text."""

from collections.abc import Callable
from dataclasses import replace
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from icp_pipeline.providers.base import ModelProvider, ModelRequest, ModelResponse, ProviderError

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


def _validate(schema: type[T], text: str, context: dict[str, Any] | None) -> T:
    cleaned = text.strip().removeprefix("```json").removeprefix("```").removesuffix("```").strip()
    return schema.model_validate_json(cleaned, context=context)


def complete_structured(
    provider: ModelProvider,
    request: ModelRequest,
    schema: type[T],
    record: Callable[[ModelResponse], None],
    context: dict[str, Any] | None = None,
) -> T:
    """`record` is called after every call (paid, so persisted at once), before validation."""
    request = replace(request, output_schema=schema)
    response = provider.complete(request)
    record(response)
    try:
        return _validate(schema, response.text, context)
    except ValidationError as first_error:
        detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in first_error.errors()[:5])
    repair = replace(
        request,
        prompt=f"{request.prompt}\n\nYour previous reply was not valid ({detail}). "
        "Reply again with only a JSON object that matches the schema.",
    )
    response = provider.complete(repair)
    record(response)
    try:
        return _validate(schema, response.text, context)
    except ValidationError as error:
        detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors()[:5])
        raise InvalidModelOutput(request, detail, response.text) from None
