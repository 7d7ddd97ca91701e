"""Anthropic through the official SDK's Messages API.

What the answer text is: with web search, a turn interleaves narration ("I'll search for ..."),
server tool blocks (server_tool_use, web_search_tool_result) and text. The answer is the text blocks
after the last server tool block, concatenated with no separator (the API splits one answer into
several text blocks around its citations). Narration before the last search stays only in the raw
response. Without tools, every text block. Mention positions are offsets into this text.

A paused turn (stop_reason "pause_turn") is continued by sending its content back as the assistant's
turn so far (`ModelRequest.continuation`); text and citations are then read over the whole turn.
"""

import json
import os
from typing import Any

from icp_pipeline.providers.base import (
    FINISH_COMPLETE,
    FINISH_EMPTY,
    FINISH_PAUSED,
    FINISH_REFUSED,
    FINISH_TRUNCATED,
    ModelRequest,
    ModelResponse,
    SourceCitation,
)
from icp_pipeline.providers.live import ClientCache, LiveAdapter, is_retryable_status
from icp_pipeline.providers.resilience import call_timeout
from icp_pipeline.providers.schema import strict_json_schema

# Blocks of a server-side tool call; text before the last of them is narration, not the answer.
TOOL_BLOCKS = frozenset(
    {"server_tool_use", "web_search_tool_result", "web_fetch_tool_result", "tool_use", "tool_result"}
)
STOP_REASON_FINISH = {
    "end_turn": FINISH_COMPLETE,
    "stop_sequence": FINISH_COMPLETE,
    "pause_turn": FINISH_PAUSED,
    "max_tokens": FINISH_TRUNCATED,
    "model_context_window_exceeded": FINISH_TRUNCATED,
    "refusal": FINISH_REFUSED,
}


def _build_client(api_key: str, base_url: str | None) -> Any:
    import anthropic

    # One attempt per call: Dagster retries, so every attempt shows in the UI.
    return anthropic.Anthropic(api_key=api_key, base_url=base_url, max_retries=0)


_CLIENTS = ClientCache(_build_client)


def answer_text(blocks: list[dict[str, Any]]) -> str:
    """The text blocks after the last server tool block, joined with "" (see the module docstring)."""
    return "".join(block.get("text") or "" for block in _answer_blocks(blocks))


def _answer_blocks(blocks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    last_tool = max((i for i, block in enumerate(blocks) if block.get("type") in TOOL_BLOCKS), default=-1)
    return [block for block in blocks[last_tool + 1 :] if block.get("type") == "text"]


def citations_of(blocks: list[dict[str, Any]]) -> list[SourceCitation]:
    """Cited: web_search_result_location citations in the answer. Retrieved: every other result."""
    cited: dict[str, SourceCitation] = {}
    retrieved: dict[str, SourceCitation] = {}
    for block in _answer_blocks(blocks):
        for citation in block.get("citations") or []:
            url = citation.get("url")
            if citation.get("type") == "web_search_result_location" and url:
                cited.setdefault(url, SourceCitation(url, citation.get("title"), True))
    for block in blocks:
        if block.get("type") == "web_search_tool_result" and isinstance(block.get("content"), list):
            for result in block["content"]:
                url = result.get("url") if isinstance(result, dict) else None
                if url:
                    retrieved.setdefault(url, SourceCitation(url, result.get("title"), False))
    return list(cited.values()) + [c for url, c in retrieved.items() if url not in cited]


def _content_blocks(body: bytes, message: Any) -> list[dict[str, Any]]:
    """This response's content blocks as sent (JSON-able dicts, fit to be sent back)."""
    try:
        content = json.loads(body).get("content")
    except (ValueError, AttributeError):
        content = None
    if isinstance(content, list):
        return content
    return [block.model_dump(mode="json", exclude_none=True) for block in message.content or []]


class AnthropicAdapter(LiveAdapter):
    name = "anthropic"
    key_variable = "ANTHROPIC_API_KEY"

    def _call(self, request: ModelRequest) -> ModelResponse:
        messages: list[dict[str, Any]] = [{"role": "user", "content": request.prompt}]
        if request.continuation:
            messages.append({"role": "assistant", "content": list(request.continuation)})
        params: dict[str, Any] = {
            "model": request.model,
            "max_tokens": request.max_output_tokens,
            "messages": messages,
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
        client = _CLIENTS.get(self.api_key, os.environ.get("ANTHROPIC_BASE_URL"))
        raw_response = client.messages.with_raw_response.create(**params)
        body = raw_response.read()
        try:
            message = raw_response.parse()
        except ValueError:  # not JSON, or not a message
            raise self._malformed(request, body) from None
        turn = list(request.continuation or []) + _content_blocks(body, message)
        text = answer_text(turn)
        finish = STOP_REASON_FINISH.get(message.stop_reason or "", FINISH_EMPTY)
        if finish == FINISH_COMPLETE and not text:
            finish = FINISH_EMPTY
        usage = message.usage
        cache_read = (getattr(usage, "cache_read_input_tokens", None) or 0) if usage else 0
        cache_write = (getattr(usage, "cache_creation_input_tokens", None) or 0) if usage else 0
        return ModelResponse(
            text=text,
            raw=message.model_dump(mode="json"),
            provider=self.name,
            requested_model=request.model,
            response_model=message.model,
            # Anthropic's input_tokens excludes cache reads and writes; the total is what was sent.
            input_tokens=(usage.input_tokens + cache_read + cache_write) if usage else None,
            output_tokens=usage.output_tokens if usage else None,
            cached_input_tokens=cache_read if usage else None,
            cache_write_tokens=cache_write if usage else None,
            citations=citations_of(turn),
            web_search=request.web_search,
            location_mode=("user_location" if request.web_search else "prompt")
            if request.country
            else "none",
            finish=finish,
            finish_reason=message.stop_reason,
            raw_body=body,
            continuation=turn if finish == FINISH_PAUSED else None,
        )

    def _classify(self, error: Exception) -> tuple[int | None, bool | None, Any]:
        import anthropic

        if isinstance(error, anthropic.APIStatusError):
            return error.status_code, is_retryable_status(error.status_code), error.response.headers
        if isinstance(error, anthropic.APITimeoutError | anthropic.APIConnectionError):
            return None, True, None
        return None, None, None
