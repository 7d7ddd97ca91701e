"""Gemini through google-genai (never the retired google-generativeai)."""

import os
import threading
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

REFUSED_REASONS = frozenset(
    {"SAFETY", "PROHIBITED_CONTENT", "BLOCKLIST", "RECITATION", "SPII", "IMAGE_SAFETY", "LANGUAGE"}
)
COMPLETE_REASONS = frozenset({"STOP", "FINISH_REASON_UNSPECIFIED", ""})

# google-genai keeps only the parsed body: the exact bytes are caught by an httpx response hook,
# per thread (each call runs its hook in the calling thread).
_last_body = threading.local()


def _keep_body(response: Any) -> None:
    response.read()
    _last_body.value = response.content


def _build_client(api_key: str, base_url: str | None) -> Any:
    from google import genai
    from google.genai import types

    # v1beta carries google_search grounding and response_json_schema. No SDK retries: Dagster's.
    options: dict[str, Any] = {
        "api_version": "v1beta",
        "client_args": {"event_hooks": {"response": [_keep_body]}},
    }
    if base_url:
        options["base_url"] = base_url
    return genai.Client(api_key=api_key, http_options=types.HttpOptions(**options))


_CLIENTS = ClientCache(_build_client)


def _reason_name(value: Any) -> str:
    return str(getattr(value, "value", value) or "")


def finish_of(response: Any) -> tuple[str, str | None]:
    """(finish, provider's reason) of a generateContent response answered with HTTP 200."""
    candidate = (response.candidates or [None])[0]
    if candidate is None:
        blocked = _reason_name(getattr(response.prompt_feedback, "block_reason", None))
        if blocked:
            return FINISH_REFUSED, blocked
        return FINISH_EMPTY, None
    reason = _reason_name(getattr(candidate, "finish_reason", None))
    if reason == "MAX_TOKENS":
        return FINISH_TRUNCATED, reason  # with partial text, or with no parts at all
    if reason in REFUSED_REASONS:
        return FINISH_REFUSED, reason
    if reason not in COMPLETE_REASONS:
        return FINISH_EMPTY, reason  # MALFORMED_FUNCTION_CALL, OTHER, ...: no usable answer
    if not _text(candidate):
        return FINISH_EMPTY, reason or None
    return FINISH_COMPLETE, reason or None


def _text(candidate: Any) -> str:
    """The candidate's answer text: its text parts, without thought parts."""
    parts = getattr(getattr(candidate, "content", None), "parts", None) or []
    return "".join(p.text for p in parts if isinstance(p.text, str) and not getattr(p, "thought", False))


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
        _last_body.value = None
        try:
            response = client.models.generate_content(
                model=request.model, contents=request.prompt, config=types.GenerateContentConfig(**config)
            )
        except ValueError:
            if _last_body.value is None:  # failed before any answer
                raise
            raise self._malformed(request, _last_body.value) from None
        body = _last_body.value
        candidate = (response.candidates or [None])[0]
        finish, reason = finish_of(response)
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
            text=_text(candidate) if candidate is not None else "",
            raw=response.model_dump(mode="json", exclude_none=True),
            provider=self.name,
            requested_model=request.model,
            response_model=response.model_version,
            # Grounding's own prompt (the search results) is billed as input; thinking as output.
            input_tokens=(usage.prompt_token_count + (usage.tool_use_prompt_token_count or 0))
            if usage and usage.prompt_token_count is not None
            else None,
            output_tokens=((usage.candidates_token_count or 0) + (usage.thoughts_token_count or 0))
            if usage
            else None,
            cached_input_tokens=usage.cached_content_token_count if usage else None,
            citations=citations,
            web_search=request.web_search,
            location_mode="prompt" if request.country else "none",  # grounding has no location field
            finish=finish,
            finish_reason=reason,
            raw_body=body,
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
