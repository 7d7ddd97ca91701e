"""Self-check of the fake provider servers: the real SDK clients must parse every scripted scenario."""

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import anthropic
import openai
import pytest
from anthropic.types import Message
from google import genai
from google.genai import errors as genai_errors
from google.genai import types as genai_types
from openai.types.responses import Response

from icp_pipeline_tests.support.fake_providers import (
    FakeAnthropic,
    FakeGemini,
    FakeOpenAI,
    empty,
    hang,
    malformed,
    no_usage,
    ok,
    pause_turn,
    prompt_blocked,
    refusal,
    refusal_part,
    status,
    text,
    truncated,
    truncated_empty,
)

KEY = "sk-test"
PROMPT = "Which vendor should a small team pick?"
WEB_TOOL_OPENAI = {"type": "web_search", "user_location": {"type": "approximate", "country": "DE"}}
WEB_TOOL_ANTHROPIC = {
    "type": "web_search_20250305",
    "name": "web_search",
    "max_uses": 3,
    "user_location": {"type": "approximate", "country": "DE"},
}
SCHEMA = {
    "type": "object",
    "properties": {"vendor": {"type": "string"}},
    "required": ["vendor"],
    "additionalProperties": False,
}


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture
def oa() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(api_key=KEY) as server:
        yield server


@pytest.fixture
def an() -> Iterator[FakeAnthropic]:
    with FakeAnthropic(api_key=KEY) as server:
        yield server


@pytest.fixture
def ge() -> Iterator[FakeGemini]:
    with FakeGemini(api_key=KEY) as server:
        yield server


def openai_client(server: FakeOpenAI, key: str = KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0)


def anthropic_client(server: FakeAnthropic, key: str = KEY) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.url, api_key=key, max_retries=0)


def gemini_client(server: FakeGemini, key: str = KEY) -> genai.Client:
    return genai.Client(
        api_key=key, http_options=genai_types.HttpOptions(base_url=server.url, api_version="v1beta")
    )


def ask_openai(server: FakeOpenAI, **params: object) -> Response:
    return openai_client(server).responses.create(model="gpt-4o-mini", input=PROMPT, **params)


def ask_anthropic(server: FakeAnthropic, **params: object) -> Message:
    return anthropic_client(server).messages.create(
        model="claude-haiku-4-5", max_tokens=200, messages=[{"role": "user", "content": PROMPT}], **params
    )


def ask_gemini(server: FakeGemini, **config: object) -> genai_types.GenerateContentResponse:
    # Keep the Client referenced: once it is garbage-collected it closes its HTTP client, and a call
    # through a bare `genai.Client(...).models` fails with "the client has been closed".
    client = gemini_client(server)
    return client.models.generate_content(
        model="gemini-2.5-flash", contents=PROMPT, config=genai_types.GenerateContentConfig(**config)
    )


# ------------------------------------------------------------------------------------------- OpenAI


def test_openai_plain_answer_parses_with_usage_and_dated_model(oa: FakeOpenAI) -> None:
    response = ask_openai(oa, instructions="Be brief.", max_output_tokens=300)

    assert response.output_text == oa.answer_text
    assert response.model == "gpt-4o-mini-2024-07-18"
    assert response.status == "completed"
    assert response.usage is not None
    assert (response.usage.input_tokens, response.usage.output_tokens) == (120, 45)
    assert response.usage.input_tokens_details.cached_tokens == 20
    assert response.usage.total_tokens == 165
    assert [item.type for item in response.output] == ["message"]
    # Every field the SDK's model declares as required is present (strict pydantic validation).
    Response.model_validate_json(oa.last_request.response_body)


def test_openai_web_search_citations_and_request_shape(oa: FakeOpenAI) -> None:
    text_format = {"format": {"type": "json_schema", "name": "Pick", "schema": SCHEMA, "strict": True}}
    oa.structured_text = oa.answer_text  # keep the cited URL in the text so the annotation indices hold
    response = ask_openai(oa, tools=[WEB_TOOL_OPENAI], text=text_format)

    assert [item.type for item in response.output] == ["web_search_call", "message"]
    assert response.output[0].status == "completed"
    notes = response.output[1].content[0].annotations
    assert [(n.type, n.url, n.title) for n in notes] == [
        ("url_citation", "https://acme.io/pricing", "Acme pricing")
    ]
    assert response.output_text[notes[0].start_index : notes[0].end_index] == "https://acme.io/pricing"
    Response.model_validate_json(oa.last_request.response_body)

    request = oa.last_request
    assert (request.method, request.path) == ("POST", "/v1/responses")
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["x-stainless-retry-count"] == "0"
    assert request.json["model"] == "gpt-4o-mini"
    assert request.json["input"] == PROMPT
    assert request.json["tools"][0]["user_location"]["country"] == "DE"
    assert request.json["text"]["format"]["schema"] == SCHEMA
    assert request.json["text"]["format"]["strict"] is True


def test_openai_scripted_429_is_rate_limit_error_with_retry_headers(oa: FakeOpenAI) -> None:
    oa.script(status(429, retry_after=7, retry_after_ms=6500))
    with pytest.raises(openai.RateLimitError) as caught:
        ask_openai(oa)
    assert caught.value.status_code == 429
    assert caught.value.response.headers["retry-after"] == "7"
    assert caught.value.response.headers["retry-after-ms"] == "6500"
    assert caught.value.code == "rate_limit_exceeded"
    assert oa.request_count == 1  # max_retries=0: a single attempt
    # The queue is empty again: the next call is a normal answer.
    assert ask_openai(oa).output_text == oa.answer_text


def test_openai_wrong_key_is_authentication_error(oa: FakeOpenAI) -> None:
    with pytest.raises(openai.AuthenticationError) as caught:
        openai_client(oa, key="sk-wrong").responses.create(model="gpt-4o-mini", input=PROMPT)
    assert caught.value.status_code == 401
    assert caught.value.body["type"] == "invalid_request_error"
    assert oa.last_request.headers["authorization"] == "Bearer sk-wrong"


def test_openai_no_usage_malformed_hang_refusal_and_text(oa: FakeOpenAI) -> None:
    oa.script(no_usage, malformed, text('{"vendor": "Acme"}'), refusal)
    response = ask_openai(oa)
    assert response.usage is None
    assert response.output_text == oa.answer_text
    with pytest.raises(json.JSONDecodeError):  # the SDK does not wrap an unparsable JSON body
        ask_openai(oa)
    assert json.loads(ask_openai(oa).output_text) == {"vendor": "Acme"}
    refused = ask_openai(oa)
    assert refused.incomplete_details is not None
    assert refused.incomplete_details.reason == "content_filter"
    assert refused.output_text == ""

    oa.script(hang(5))
    started = time.monotonic()
    with pytest.raises(openai.APITimeoutError):
        ask_openai(oa, timeout=0.5)
    assert time.monotonic() - started < 3
    assert oa.last_request.status is None  # still hanging when the client gave up


def test_openai_unknown_path_is_not_found(oa: FakeOpenAI) -> None:
    client = openai.OpenAI(base_url=oa.url, api_key=KEY, max_retries=0)  # forgot the /v1
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="gpt-4o-mini", input=PROMPT)
    assert oa.last_request.path == "/responses"


# ---------------------------------------------------------------------------------------- Anthropic


def test_anthropic_plain_answer_parses_with_usage_and_dated_model(an: FakeAnthropic) -> None:
    message = ask_anthropic(an, system="Be brief.")

    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text == an.answer_text
    assert message.model == "claude-haiku-4-5-20251001"
    assert message.stop_reason == "end_turn"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (120, 45)
    assert message.usage.cache_read_input_tokens == 20
    assert message.usage.cache_creation_input_tokens == 0
    Message.model_validate_json(an.last_request.response_body)


def test_anthropic_web_search_citations_and_request_shape(an: FakeAnthropic) -> None:
    output_config = {"format": {"type": "json_schema", "schema": SCHEMA}}
    an.structured_text = an.answer_text
    message = ask_anthropic(an, tools=[WEB_TOOL_ANTHROPIC], output_config=output_config)

    assert [b.type for b in message.content] == ["server_tool_use", "web_search_tool_result", "text"]
    tool_use, results, answer = message.content
    assert tool_use.name == "web_search"
    assert results.tool_use_id == tool_use.id
    assert [(r.type, r.url) for r in results.content] == [
        ("web_search_result", "https://acme.io/pricing"),
        ("web_search_result", "https://retrieved-only.example/page"),
    ]
    assert answer.text == an.answer_text
    assert [(c.type, c.url, c.title) for c in answer.citations] == [
        ("web_search_result_location", "https://acme.io/pricing", "Acme pricing")
    ]
    assert message.usage.server_tool_use is not None
    assert message.usage.server_tool_use.web_search_requests == 1
    Message.model_validate_json(an.last_request.response_body)

    request = an.last_request
    assert (request.method, request.path) == ("POST", "/v1/messages")
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert "x-api-key" not in request.headers  # anthropic 2.x authenticates with a bearer token
    assert request.headers["anthropic-version"]
    assert request.json["output_config"] == output_config
    assert request.json["tools"][0]["type"] == "web_search_20250305"
    assert request.json["tools"][0]["user_location"]["country"] == "DE"
    assert request.json["max_tokens"] == 200


def test_anthropic_scripted_429_is_rate_limit_error_with_retry_headers(an: FakeAnthropic) -> None:
    an.script(status(429, retry_after=7, retry_after_ms=6500))
    with pytest.raises(anthropic.RateLimitError) as caught:
        ask_anthropic(an)
    assert caught.value.status_code == 429
    assert caught.value.response.headers["retry-after"] == "7"
    assert caught.value.response.headers["retry-after-ms"] == "6500"
    assert caught.value.body["error"]["type"] == "rate_limit_error"
    assert an.request_count == 1
    assert ask_anthropic(an).content[0].text == an.answer_text


def test_anthropic_wrong_key_is_authentication_error(an: FakeAnthropic) -> None:
    with pytest.raises(anthropic.AuthenticationError) as caught:
        anthropic_client(an, key="sk-wrong").messages.create(
            model="claude-haiku-4-5", max_tokens=10, messages=[{"role": "user", "content": PROMPT}]
        )
    assert caught.value.status_code == 401
    assert caught.value.body["error"]["type"] == "authentication_error"


def test_anthropic_no_usage_malformed_hang_refusal_and_text(an: FakeAnthropic) -> None:
    an.script(no_usage, malformed, text("not json {"), refusal)
    message = ask_anthropic(an)
    assert message.usage is None
    assert message.content[0].text == an.answer_text
    with pytest.raises(json.JSONDecodeError):
        ask_anthropic(an)
    assert ask_anthropic(an).content[0].text == "not json {"
    refused = ask_anthropic(an)
    assert refused.stop_reason == "refusal"
    assert refused.content == []

    an.script(hang(5))
    started = time.monotonic()
    with pytest.raises(anthropic.APITimeoutError):
        ask_anthropic(an, timeout=0.5)
    assert time.monotonic() - started < 3


# ------------------------------------------------------------------------------------------- Gemini


def test_gemini_plain_answer_parses_with_usage_and_model_version(ge: FakeGemini) -> None:
    response = ask_gemini(ge, max_output_tokens=300)

    assert response.text == ge.answer_text
    assert response.model_version == "gemini-2.5-flash-001"
    assert response.candidates[0].finish_reason == genai_types.FinishReason.STOP
    assert response.candidates[0].grounding_metadata is None
    usage = response.usage_metadata
    assert usage is not None
    assert (usage.prompt_token_count, usage.candidates_token_count) == (120, 45)
    assert usage.cached_content_token_count == 20
    assert usage.total_token_count == 165


def test_gemini_grounding_citations_and_request_shape(ge: FakeGemini) -> None:
    ge.structured_text = ge.answer_text
    response = ask_gemini(
        ge,
        tools=[genai_types.Tool(google_search=genai_types.GoogleSearch())],
        response_mime_type="application/json",
        response_json_schema=SCHEMA,
        system_instruction="Be brief.",
    )

    grounding = response.candidates[0].grounding_metadata
    assert grounding is not None
    assert grounding.web_search_queries == [PROMPT]
    assert len(grounding.grounding_chunks) == 1
    web = grounding.grounding_chunks[0].web
    assert web.uri.startswith("https://vertexaisearch.cloud.google.com/grounding-api-redirect/")
    assert web.title == "acme.io"
    assert grounding.grounding_supports[0].grounding_chunk_indices == [0]
    assert grounding.grounding_supports[0].segment.end_index == len(ge.answer_text.encode())

    request = ge.last_request
    assert (request.method, request.path) == ("POST", "/v1beta/models/gemini-2.5-flash:generateContent")
    assert request.headers["x-goog-api-key"] == KEY
    assert "key" not in request.query and "authorization" not in request.headers
    assert request.json["tools"] == [{"googleSearch": {}}]
    assert request.json["generationConfig"]["responseJsonSchema"] == SCHEMA
    assert request.json["generationConfig"]["responseMimeType"] == "application/json"
    assert request.json["systemInstruction"]["parts"] == [{"text": "Be brief."}]
    assert request.json["contents"] == [{"role": "user", "parts": [{"text": PROMPT}]}]


def test_gemini_retrieved_only_chunk_is_not_supported(ge: FakeGemini) -> None:
    ge.retrieved_sources = [("https://retrieved-only.example/page", "Retrieved only")]
    response = ask_gemini(ge, tools=[genai_types.Tool(google_search=genai_types.GoogleSearch())])
    grounding = response.candidates[0].grounding_metadata
    assert [c.web.title for c in grounding.grounding_chunks] == ["acme.io", "retrieved-only.example"]
    assert grounding.grounding_supports[0].grounding_chunk_indices == [0]


def test_gemini_scripted_429_is_client_error_without_sdk_retries(ge: FakeGemini) -> None:
    ge.script(status(429, retry_after=7))
    with pytest.raises(genai_errors.ClientError) as caught:
        ask_gemini(ge)
    assert caught.value.code == 429
    assert caught.value.status == "RESOURCE_EXHAUSTED"
    assert caught.value.response.headers["retry-after"] == "7"
    assert ge.request_count == 1  # google-genai makes one attempt unless given HttpRetryOptions
    assert ask_gemini(ge).text == ge.answer_text


def test_gemini_wrong_key_is_client_error_401(ge: FakeGemini) -> None:
    client = gemini_client(ge, key="sk-wrong")
    with pytest.raises(genai_errors.ClientError) as caught:
        client.models.generate_content(model="gemini-2.5-flash", contents=PROMPT)
    assert caught.value.code == 401
    assert caught.value.status == "UNAUTHENTICATED"


def test_gemini_no_usage_malformed_hang_refusal_and_text(ge: FakeGemini) -> None:
    ge.script(no_usage, malformed, text('{"vendor": "Acme"}'), text("not json {"), refusal)
    response = ask_gemini(ge)
    assert response.usage_metadata is None
    assert response.text == ge.answer_text
    with pytest.raises(json.JSONDecodeError):
        ask_gemini(ge)
    structured = ask_gemini(ge, response_mime_type="application/json", response_json_schema=SCHEMA)
    assert structured.parsed == {"vendor": "Acme"}
    broken = ask_gemini(ge, response_mime_type="application/json", response_json_schema=SCHEMA)
    assert broken.text == "not json {"
    assert broken.parsed is None  # google-genai swallows the JSON error
    refused = ask_gemini(ge)
    assert refused.candidates[0].finish_reason == genai_types.FinishReason.SAFETY
    assert refused.text is None

    ge.script(hang(5))
    started = time.monotonic()
    with pytest.raises(Exception) as caught:
        ask_gemini(ge, http_options=genai_types.HttpOptions(timeout=500))  # milliseconds
    assert time.monotonic() - started < 3
    # google-genai lets the transport's own exception through (httpx2.ReadTimeout), not an APIError.
    assert type(caught.value).__name__ == "ReadTimeout"
    assert not isinstance(caught.value, genai_errors.APIError)


# ------------------------------------------------------------------------------------- shared parts


def _post(url: str, body: dict, headers: dict[str, str]) -> tuple[int, dict]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json", **headers}
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_alternative_key_locations_are_accepted(an: FakeAnthropic, ge: FakeGemini) -> None:
    body = {"model": "claude-haiku-4-5", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}
    assert _post(f"{an.url}/v1/messages", body, {"x-api-key": KEY})[0] == 200
    code, error = _post(f"{an.url}/v1/messages", body, {"x-api-key": "nope"})
    assert code == 401 and error["type"] == "error"

    body = {"contents": [{"role": "user", "parts": [{"text": "x"}]}]}
    assert _post(f"{ge.url}/v1/models/gemini-2.5-flash:generateContent?key={KEY}", body, {})[0] == 200
    code, error = _post(f"{ge.url}/v1/models/gemini-2.5-flash:generateContent?key=nope", body, {})
    assert code == 401 and error["error"]["status"] == "UNAUTHENTICATED"


def test_rejected_requests_do_not_consume_script_steps(oa: FakeOpenAI) -> None:
    oa.script(status(503), ok)
    with pytest.raises(openai.AuthenticationError):
        openai_client(oa, key="sk-wrong").responses.create(model="gpt-4o-mini", input=PROMPT)
    assert oa.pending_steps == [status(503), ok]
    with pytest.raises(openai.InternalServerError):
        ask_openai(oa)
    assert [r.status for r in oa.requests] == [401, 503]
    assert oa.requests[1].step == status(503)


def test_error_body_override_and_server_error_shapes(an: FakeAnthropic, ge: FakeGemini) -> None:
    an.script(status(529), status(400, body={"type": "error", "error": {"type": "custom", "message": "m"}}))
    with pytest.raises(anthropic.OverloadedError):
        ask_anthropic(an)
    with pytest.raises(anthropic.BadRequestError) as caught:
        ask_anthropic(an)
    assert caught.value.body["error"]["type"] == "custom"

    ge.script(status(503))
    with pytest.raises(genai_errors.ServerError) as server_error:
        ask_gemini(ge)
    assert (server_error.value.code, server_error.value.status) == (503, "UNAVAILABLE")


def test_latency_and_max_concurrent(oa: FakeOpenAI) -> None:
    oa.latency = 0.3
    client = openai_client(oa)
    results: list[str] = []

    def call() -> None:
        results.append(client.responses.create(model="gpt-4o-mini", input=PROMPT).output_text)

    started = time.monotonic()
    threads = [threading.Thread(target=call) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    elapsed = time.monotonic() - started
    assert results == [oa.answer_text] * 4
    assert oa.request_count == 4
    assert oa.max_concurrent == 4
    assert 0.3 <= elapsed < 1.2  # served in parallel, each after the configured latency
    # The server counts a request done just after the client has its answer: give it a moment.
    deadline = time.monotonic() + 2
    while oa.in_flight and time.monotonic() < deadline:
        time.sleep(0.01)
    assert oa.in_flight == 0


# ------------------------------------------------------------------------- recorded unfinished shapes


def test_openai_unfinished_shapes_validate_against_the_sdk_model(oa: FakeOpenAI) -> None:
    oa.script(truncated, truncated_empty, refusal_part, empty)
    cut = ask_openai(oa, max_output_tokens=64)
    assert (cut.status, cut.incomplete_details.reason) == ("incomplete", "max_output_tokens")
    assert cut.output_text and oa.answer_text.startswith(cut.output_text)
    assert cut.usage.output_tokens == 64
    nothing = ask_openai(oa, max_output_tokens=64)
    assert nothing.status == "incomplete" and nothing.output_text == ""
    assert [item.type for item in nothing.output] == ["reasoning"]
    refused = ask_openai(oa)
    assert refused.status == "completed" and refused.output[0].content[0].type == "refusal"
    blank = ask_openai(oa)
    assert blank.status == "completed" and blank.output == []
    for request in oa.requests:
        Response.model_validate_json(request.response_body)


def test_openai_search_sources_only_when_included_and_items_without_action(oa: FakeOpenAI) -> None:
    oa.search_calls_without_action = 1
    plain = ask_openai(oa, tools=[WEB_TOOL_OPENAI])
    assert [getattr(item, "action", None) is None for item in plain.output] == [True, False, True]
    assert plain.output[1].action.sources is None
    # The SDK's model declares `action` required, but recorded responses have items without it: the
    # client parses them leniently, so only the shape with every action validates strictly.
    oa.search_calls_without_action = 0
    included = ask_openai(oa, tools=[WEB_TOOL_OPENAI], include=["web_search_call.action.sources"])
    assert [s.url for s in included.output[0].action.sources] == ["https://acme.io/pricing"]
    Response.model_validate_json(oa.last_request.response_body)


def test_openai_cache_writes_and_reasoning_in_usage(oa: FakeOpenAI) -> None:
    oa.cache_write_tokens, oa.reasoning_tokens = 30, 200
    usage = ask_openai(oa).usage
    assert usage.input_tokens_details.cache_write_tokens == 30
    assert usage.output_tokens_details.reasoning_tokens == 200
    assert usage.output_tokens == 245


def test_anthropic_pause_turn_then_continuation(an: FakeAnthropic) -> None:
    an.script(pause_turn)
    paused = ask_anthropic(an, tools=[WEB_TOOL_ANTHROPIC])
    assert paused.stop_reason == "pause_turn"
    assert [b.type for b in paused.content] == ["text", "server_tool_use", "web_search_tool_result", "text"]
    assert paused.content[-1].text == "Now continuing with the remaining searches."
    Message.model_validate_json(an.last_request.response_body)

    turn = an.last_request.response_json["content"]
    final = anthropic_client(an).messages.create(
        model="claude-haiku-4-5",
        max_tokens=200,
        tools=[WEB_TOOL_ANTHROPIC],
        messages=[{"role": "user", "content": PROMPT}, {"role": "assistant", "content": turn}],
    )
    assert final.stop_reason == "end_turn"
    assert an.last_request.json["messages"][1] == {"role": "assistant", "content": turn}
    assert FakeAnthropic.prompt_of(an.last_request.json) == PROMPT


def test_anthropic_truncation_narration_split_citations_and_cache_writes(an: FakeAnthropic) -> None:
    an.script(truncated, truncated_empty)
    cut = ask_anthropic(an)
    assert cut.stop_reason == "max_tokens" and cut.usage.output_tokens == 200
    assert an.answer_text.startswith(cut.content[0].text)
    assert ask_anthropic(an).content == []

    an.narration, an.split_citations = "Let me search.", True
    an.cache_write_tokens, an.cache_write_1h_tokens = 100, 40
    message = ask_anthropic(an, tools=[WEB_TOOL_ANTHROPIC])
    texts = [b.text for b in message.content if b.type == "text"]
    assert texts[0] == "Let me search." and "".join(texts[1:]) == an.answer_text
    assert [c.url for c in message.content[-2].citations] == ["https://acme.io/pricing"]
    assert message.usage.cache_creation_input_tokens == 140
    assert message.usage.cache_creation.ephemeral_5m_input_tokens == 100
    assert message.usage.cache_creation.ephemeral_1h_input_tokens == 40
    Message.model_validate_json(an.last_request.response_body)


def test_gemini_max_tokens_blocked_and_empty_shapes(ge: FakeGemini) -> None:
    ge.script(truncated, truncated_empty, prompt_blocked, empty)
    cut = ask_gemini(ge, max_output_tokens=64)
    assert cut.candidates[0].finish_reason == genai_types.FinishReason.MAX_TOKENS
    assert cut.text and ge.answer_text.startswith(cut.text)
    nothing = ask_gemini(ge, max_output_tokens=64)
    assert nothing.candidates[0].finish_reason == genai_types.FinishReason.MAX_TOKENS
    assert nothing.candidates[0].content.parts is None and nothing.text is None
    assert nothing.usage_metadata.thoughts_token_count == 64
    blocked = ask_gemini(ge)
    assert blocked.candidates is None
    assert blocked.prompt_feedback.block_reason == genai_types.BlockedReason.PROHIBITED_CONTENT
    assert ask_gemini(ge).candidates is None


def test_gemini_grounding_prompt_and_thought_tokens(ge: FakeGemini) -> None:
    ge.tool_use_prompt_tokens, ge.reasoning_tokens = 300, 80
    usage = ask_gemini(ge, tools=[genai_types.Tool(google_search=genai_types.GoogleSearch())]).usage_metadata
    assert usage.tool_use_prompt_token_count == 300
    assert usage.thoughts_token_count == 80
    assert usage.total_token_count == 120 + 45 + 300 + 80


@pytest.mark.parametrize(("keep_alive", "connections"), [(True, 1), (False, 3)])
def test_keep_alive_serves_several_requests_on_one_connection(keep_alive: bool, connections: int) -> None:
    with FakeOpenAI(api_key=KEY, keep_alive=keep_alive) as server:
        client = openai_client(server)
        for _ in range(3):
            assert client.responses.create(model="gpt-4o-mini", input=PROMPT).output_text
    assert server.request_count == 3
    assert len({r.client_port for r in server.requests}) == connections


def test_respond_with_chooses_the_step_per_request(oa: FakeOpenAI) -> None:
    oa.script(status(503))
    oa.respond_with = lambda record: text("echo") if "echo" in FakeOpenAI.prompt_of(record.json) else None
    assert openai_client(oa).responses.create(model="gpt-4o-mini", input="echo me").output_text == "echo"
    assert oa.pending_steps == [status(503)]  # a chosen step consumes no scripted one
    with pytest.raises(openai.InternalServerError):
        ask_openai(oa)
