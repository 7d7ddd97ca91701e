"""Gemini through google-genai (never the retired google-generativeai)."""

import os
from typing import Any

from icp_pipeline.providers.base import ModelRequest, ModelResponse, ProviderError, SourceCitation
from icp_pipeline.providers.live import ClientCache, LiveAdapter, is_retryable_status
from icp_pipeline.providers.resilience import call_timeout


def _build_client(api_key: str, base_url: str | None) -> Any:
    from google import genai
    from google.genai import types

    # v1beta carries google_search grounding and response_json_schema. No SDK retries: Dagster's.
    options = (
        types.HttpOptions(api_version="v1beta", base_url=base_url)
        if base_url
        else types.HttpOptions(api_version="v1beta")
    )
    return genai.Client(api_key=api_key, http_options=options)


_CLIENTS = ClientCache(_build_client)


class GeminiAdapter(LiveAdapter):
    name = "gemini"
    key_variable = "GEMINI_API_KEY"

    def _call(self, request: ModelRequest) -> ModelResponse:
        from google.genai import types

        config: dict[str, Any] = {
            "max_output_tokens": request.max_output_tokens,
            # google-genai has no timeout unless given one, in milliseconds.
            "http_options": types.HttpOptions(timeout=int(call_timeout(request.deadline) * 1000)),
        }
        if request.system:
            config["system_instruction"] = request.system
        if request.web_search:
            config["tools"] = [types.Tool(google_search=types.GoogleSearch())]
        if request.output_schema is not None:
            config["response_mime_type"] = "application/json"
            config["response_json_schema"] = request.output_schema.model_json_schema()
        client = _CLIENTS.get(self.api_key, os.environ.get("GOOGLE_GEMINI_BASE_URL"))
        response = client.models.generate_content(
            model=request.model, contents=request.prompt, config=types.GenerateContentConfig(**config)
        )
        candidate = (response.candidates or [None])[0]
        finish = str(getattr(candidate, "finish_reason", "") or "")
        if any(reason in finish for reason in ("SAFETY", "PROHIBITED_CONTENT", "BLOCKLIST")):
            raise ProviderError(self.name, request.model, f"refused: {finish}", retryable=False)
        citations = []
        grounding = getattr(candidate, "grounding_metadata", None)
        if grounding is not None and grounding.grounding_chunks:
            supported = {
                i for s in grounding.grounding_supports or [] for i in (s.grounding_chunk_indices or [])
            }
            for index, chunk in enumerate(grounding.grounding_chunks):
                if chunk.web is not None and chunk.web.uri:
                    citations.append(SourceCitation(chunk.web.uri, chunk.web.title, index in supported))
        usage = response.usage_metadata
        return ModelResponse(
            text=response.text or "",
            raw=response.model_dump(mode="json", exclude_none=True),
            provider=self.name,
            requested_model=request.model,
            response_model=response.model_version,
            input_tokens=usage.prompt_token_count if usage else None,
            output_tokens=((usage.candidates_token_count or 0) + (usage.thoughts_token_count or 0))
            if usage
            else None,
            cached_input_tokens=usage.cached_content_token_count if usage else None,
            citations=citations,
            web_search=request.web_search,
            location_mode="prompt" if request.country else "none",  # grounding has no location field
        )

    def _classify(self, error: Exception) -> tuple[int | None, bool | None, Any]:
        from google.genai import errors

        if isinstance(error, errors.APIError):
            headers = getattr(getattr(error, "response", None), "headers", None)
            return error.code, is_retryable_status(error.code), headers
        name = type(error).__name__
        if "Timeout" in name or "ConnectError" in name or "RemoteProtocolError" in name:
            return None, True, None
        return None, None, None
