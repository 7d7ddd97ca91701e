"""OpenAI through the official SDK's Responses API."""

import os
from typing import Any

from icp_pipeline.providers.base import (
    FINISH_COMPLETE,
    FINISH_EMPTY,
    FINISH_REFUSED,
    FINISH_TRUNCATED,
    ModelRequest,
    ModelResponse,
    SourceCitation,
)
from icp_pipeline.providers.live import ClientCache, LiveAdapter, is_retryable_status
from icp_pipeline.providers.resilience import call_timeout
from icp_pipeline.providers.schema import strict_json_schema

# Without it the API returns no searched sources, only the cited ones.
INCLUDE_SEARCH_SOURCES = "web_search_call.action.sources"


def _build_client(api_key: str, base_url: str | None) -> Any:
    import openai

    # Retries are Dagster's (each attempt shows in the UI), so the SDK makes one attempt.
    return openai.OpenAI(api_key=api_key, base_url=base_url, max_retries=0)


_CLIENTS = ClientCache(_build_client)


def finish_of(response: Any) -> tuple[str, str | None]:
    """(finish, provider's reason) of a Responses API response answered with HTTP 200."""
    status = getattr(response, "status", None)
    refused = any(
        getattr(part, "type", None) == "refusal"
        for item in response.output or []
        for part in getattr(item, "content", None) or []
    )
    if status == "incomplete":
        reason = getattr(getattr(response, "incomplete_details", None), "reason", None)
        if reason == "content_filter":
            return FINISH_REFUSED, reason
        return FINISH_TRUNCATED, reason or status  # max_output_tokens, or another cut-off
    if refused:
        return FINISH_REFUSED, "refusal"
    if status not in (None, "completed"):
        return FINISH_EMPTY, status  # failed, cancelled, in_progress: no finished answer
    if not (response.output_text or ""):
        return FINISH_EMPTY, status
    return FINISH_COMPLETE, status


def citations_of(response: Any) -> list[SourceCitation]:
    """Cited: url_citation annotations. Retrieved only: web_search_call sources not cited."""
    cited: dict[str, SourceCitation] = {}
    retrieved: dict[str, SourceCitation] = {}
    for item in response.output or []:
        for part in getattr(item, "content", None) or []:
            for note in getattr(part, "annotations", None) or []:
                if getattr(note, "type", None) == "url_citation" and note.url:
                    cited.setdefault(note.url, SourceCitation(note.url, getattr(note, "title", None), True))
        if getattr(item, "type", None) != "web_search_call":
            continue
        action = getattr(item, "action", None)  # some web_search_call items have none
        urls = [getattr(source, "url", None) for source in getattr(action, "sources", None) or []]
        if getattr(action, "type", None) in ("open_page", "find_in_page"):
            urls.append(getattr(action, "url", None))
        for url in urls:
            if url:
                retrieved.setdefault(url, SourceCitation(url, None, False))
    return list(cited.values()) + [c for url, c in retrieved.items() if url not in cited]


class OpenAIAdapter(LiveAdapter):
    name = "openai"
    key_variable = "OPENAI_API_KEY"

    def _call(self, request: ModelRequest) -> ModelResponse:
        params: dict[str, Any] = {
            "model": request.model,
            "input": request.prompt,
            "max_output_tokens": request.max_output_tokens,
            "timeout": call_timeout(request.deadline),
        }
        if request.system:
            params["instructions"] = request.system
        if request.web_search:
            tool: dict[str, Any] = {"type": "web_search"}
            if request.country:
                tool["user_location"] = {"type": "approximate", "country": request.country}
            params["tools"] = [tool]
            params["include"] = [INCLUDE_SEARCH_SOURCES]
        if request.output_schema is not None:
            params["text"] = {
                "format": {
                    "type": "json_schema",
                    "name": request.output_schema.__name__,
                    "schema": strict_json_schema(request.output_schema),
                    "strict": True,
                }
            }
        client = _CLIENTS.get(self.api_key, os.environ.get("OPENAI_BASE_URL"))
        raw_response = client.responses.with_raw_response.create(**params)
        try:
            response = raw_response.parse()
        except ValueError:  # not JSON, or not a response object
            raise self._malformed(request, raw_response.content) from None
        finish, reason = finish_of(response)
        usage = response.usage
        details = getattr(usage, "input_tokens_details", None) if usage else None
        return ModelResponse(
            text=response.output_text or "",
            raw=response.model_dump(mode="json"),
            provider=self.name,
            requested_model=request.model,
            response_model=response.model,
            # input_tokens includes the cached and the cache-written ones.
            input_tokens=usage.input_tokens if usage else None,
            output_tokens=usage.output_tokens if usage else None,
            cached_input_tokens=getattr(details, "cached_tokens", None) if details else None,
            cache_write_tokens=getattr(details, "cache_write_tokens", None) if details else None,
            citations=citations_of(response),
            web_search=request.web_search,
            location_mode=("user_location" if request.web_search else "prompt")
            if request.country
            else "none",
            finish=finish,
            finish_reason=reason,
            raw_body=raw_response.content,
        )

    def _classify(self, error: Exception) -> tuple[int | None, bool | None, Any]:
        import openai

        if isinstance(error, openai.APIStatusError):
            return error.status_code, is_retryable_status(error.status_code), error.response.headers
        if isinstance(error, openai.APITimeoutError | openai.APIConnectionError):
            return None, True, None
        return None, None, None
