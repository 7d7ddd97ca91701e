"""OpenAI through the official SDK's Responses API."""

import os
from typing import Any

from icp_pipeline.providers.base import ModelRequest, ModelResponse, ProviderError, SourceCitation
from icp_pipeline.providers.live import ClientCache, LiveAdapter, is_retryable_status
from icp_pipeline.providers.resilience import call_timeout
from icp_pipeline.providers.schema import strict_json_schema


def _build_client(api_key: str, base_url: str | None) -> Any:
    import openai

    # Retries are Dagster's (each attempt shows in the UI), so the SDK makes one attempt.
    return openai.OpenAI(api_key=api_key, base_url=base_url, max_retries=0)


_CLIENTS = ClientCache(_build_client)


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
        if request.output_schema is not None:
            params["text"] = {
                "format": {
                    "type": "json_schema",
                    "name": request.output_schema.__name__,
                    "schema": strict_json_schema(request.output_schema),
                    "strict": True,
                }
            }
        response = _CLIENTS.get(self.api_key, os.environ.get("OPENAI_BASE_URL")).responses.create(**params)
        incomplete = getattr(response, "incomplete_details", None)
        if incomplete is not None and getattr(incomplete, "reason", None) == "content_filter":
            raise ProviderError(self.name, request.model, "refused: content filter", retryable=False)
        citations = []
        for item in response.output or []:
            for part in getattr(item, "content", None) or []:
                for note in getattr(part, "annotations", None) or []:
                    if getattr(note, "type", None) == "url_citation":
                        citations.append(
                            SourceCitation(url=note.url, title=getattr(note, "title", None), cited=True)
                        )
        usage = response.usage
        details = getattr(usage, "input_tokens_details", None) if usage else None
        return ModelResponse(
            text=response.output_text or "",
            raw=response.model_dump(mode="json"),
            provider=self.name,
            requested_model=request.model,
            response_model=response.model,
            input_tokens=usage.input_tokens if usage else None,
            output_tokens=usage.output_tokens if usage else None,
            cached_input_tokens=getattr(details, "cached_tokens", None) if details else None,
            citations=citations,
            web_search=request.web_search,
            location_mode=("user_location" if request.web_search else "prompt")
            if request.country
            else "none",
        )

    def _classify(self, error: Exception) -> tuple[int | None, bool | None, Any]:
        import openai

        if isinstance(error, openai.APIStatusError):
            return error.status_code, is_retryable_status(error.status_code), error.response.headers
        if isinstance(error, openai.APITimeoutError | openai.APIConnectionError):
            return None, True, None
        return None, None, None
