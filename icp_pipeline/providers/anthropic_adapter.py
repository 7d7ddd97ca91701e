"""Anthropic through the official SDK's Messages API."""

import os
from typing import Any

from icp_pipeline.providers.base import ModelRequest, ModelResponse, ProviderError, SourceCitation
from icp_pipeline.providers.live import ClientCache, LiveAdapter, is_retryable_status
from icp_pipeline.providers.resilience import call_timeout
from icp_pipeline.providers.schema import strict_json_schema


def _build_client(api_key: str, base_url: str | None) -> Any:
    import anthropic

    # One attempt per call: Dagster retries, so every attempt shows in the UI.
    return anthropic.Anthropic(api_key=api_key, base_url=base_url, max_retries=0)


_CLIENTS = ClientCache(_build_client)


class AnthropicAdapter(LiveAdapter):
    name = "anthropic"
    key_variable = "ANTHROPIC_API_KEY"

    def _call(self, request: ModelRequest) -> ModelResponse:
        params: dict[str, Any] = {
            "model": request.model,
            "max_tokens": request.max_output_tokens,
            "messages": [{"role": "user", "content": request.prompt}],
            "timeout": call_timeout(request.deadline),
        }
        if request.system:
            params["system"] = request.system
        if request.web_search:
            tool: dict[str, Any] = {"type": "web_search_20250305", "name": "web_search", "max_uses": 3}
            if request.country:
                tool["user_location"] = {"type": "approximate", "country": request.country}
            params["tools"] = [tool]
        if request.output_schema is not None:
            params["output_config"] = {
                "format": {"type": "json_schema", "schema": strict_json_schema(request.output_schema)}
            }
        message = _CLIENTS.get(self.api_key, os.environ.get("ANTHROPIC_BASE_URL")).messages.create(**params)
        if message.stop_reason == "refusal":
            raise ProviderError(self.name, request.model, "refused the request", retryable=False)
        texts: list[str] = []
        cited: dict[str, SourceCitation] = {}
        retrieved: dict[str, SourceCitation] = {}
        for block in message.content:
            kind = getattr(block, "type", None)
            if kind == "text":
                texts.append(block.text)
                for citation in getattr(block, "citations", None) or []:
                    if getattr(citation, "type", None) == "web_search_result_location":
                        cited.setdefault(citation.url, SourceCitation(citation.url, citation.title, True))
            elif kind == "web_search_tool_result" and isinstance(block.content, list):
                for result in block.content:
                    url = getattr(result, "url", None)
                    if url:
                        retrieved.setdefault(url, SourceCitation(url, getattr(result, "title", None), False))
        citations = list(cited.values()) + [c for url, c in retrieved.items() if url not in cited]
        usage = message.usage
        cache_read = getattr(usage, "cache_read_input_tokens", None) or 0
        cache_write = getattr(usage, "cache_creation_input_tokens", None) or 0
        return ModelResponse(
            text="".join(texts),
            raw=message.model_dump(mode="json"),
            provider=self.name,
            requested_model=request.model,
            response_model=message.model,
            # Anthropic's input_tokens excludes cache reads and writes; the total is what was sent.
            input_tokens=(usage.input_tokens + cache_read + cache_write) if usage else None,
            output_tokens=usage.output_tokens if usage else None,
            cached_input_tokens=cache_read if usage else None,
            citations=citations,
            web_search=request.web_search,
            location_mode=("user_location" if request.web_search else "prompt")
            if request.country
            else "none",
        )

    def _classify(self, error: Exception) -> tuple[int | None, bool | None, Any]:
        import anthropic

        if isinstance(error, anthropic.APIStatusError):
            return error.status_code, is_retryable_status(error.status_code), error.response.headers
        if isinstance(error, anthropic.APITimeoutError | anthropic.APIConnectionError):
            return None, True, None
        return None, None, None
