"""Recorded response shapes, through the real SDKs: every HTTP 200 answer comes back as a ModelResponse
that says how the turn finished, with its usage, cost, exact body and citations; none raises."""

import json
from collections.abc import Iterator

import pytest

from icp_pipeline.providers.base import (
    FINISH_COMPLETE,
    FINISH_EMPTY,
    FINISH_PAUSED,
    FINISH_REFUSED,
    FINISH_TRUNCATED,
    ModelRequest,
    ModelResponse,
    ProviderError,
)
from icp_pipeline.providers.factory import ProviderSettings, resolve_provider
from icp_pipeline.providers.offline import OfflineProvider
from icp_pipeline.providers.pricing import PRICES
from icp_pipeline.providers.resilience import PACER
from icp_pipeline_tests.support.fake_providers import (
    DEFAULT_ANSWER,
    NUL_TEXT,
    SURROGATE_TEXT,
    FakeAnthropic,
    FakeGemini,
    FakeOpenAI,
    FakeProviderServer,
    empty,
    malformed,
    pause_turn,
    prompt_blocked,
    refusal,
    refusal_part,
    text,
    truncated,
    truncated_empty,
)

KEY = "sk-shapes-test-9e8d"
MODELS = {"openai": "gpt-4o-mini", "anthropic": "claude-haiku-4-5", "gemini": "gemini-2.5-flash"}
SERVERS: dict[str, tuple[type[FakeProviderServer], str, str]] = {
    "openai": (FakeOpenAI, "OPENAI_BASE_URL", "/v1"),
    "anthropic": (FakeAnthropic, "ANTHROPIC_BASE_URL", ""),
    "gemini": (FakeGemini, "GOOGLE_GEMINI_BASE_URL", ""),
}
RETRIEVED = ("https://retrieved-only.example/page", "Retrieved only")


@pytest.fixture
def serve(monkeypatch: pytest.MonkeyPatch) -> Iterator:
    servers: list[FakeProviderServer] = []
    PACER.reset()

    def start(provider: str) -> FakeProviderServer:
        cls, variable, suffix = SERVERS[provider]
        server = cls(api_key=KEY).start()
        servers.append(server)
        monkeypatch.setenv(variable, server.url + suffix)
        return server

    yield start
    for server in servers:
        server.stop()
    PACER.reset()


def ask(provider: str, **changes) -> ModelResponse:
    values = {
        "provider": provider,
        "model": MODELS[provider],
        "prompt": "Best analytics tool?",
        "purpose": "answer",
        "max_output_tokens": 400,
    }
    request = ModelRequest(**{**values, **changes})
    adapter = resolve_provider(
        ProviderSettings(mode="live", api_keys={provider: KEY}), provider, request.model
    )
    return adapter.complete(request)


# ------------------------------------------------------------------------------------ every provider


@pytest.mark.parametrize("provider", list(MODELS))
def test_a_complete_answer_keeps_the_exact_body(serve, provider: str) -> None:
    server = serve(provider)
    response = ask(provider)
    assert response.finish == FINISH_COMPLETE and response.complete
    assert response.text == DEFAULT_ANSWER
    assert response.raw_body is not None and response.raw_body == server.last_request.response_body


@pytest.mark.parametrize("provider", list(MODELS))
@pytest.mark.parametrize("answer", [NUL_TEXT, SURROGATE_TEXT], ids=["nul", "lone-surrogate"])
def test_nul_and_lone_surrogate_arrive_as_sent_with_the_escaped_body(serve, provider: str, answer) -> None:
    server = serve(provider)
    server.script(text(answer))
    response = ask(provider)
    assert response.text == answer
    assert response.finish == FINISH_COMPLETE
    escaped = json.dumps(answer)[1:-1].encode()  # "\\u0000" / "\\ud800": the body is plain ASCII JSON
    assert escaped in response.raw_body
    assert response.raw_body == server.last_request.response_body


@pytest.mark.parametrize("provider", list(MODELS))
def test_truncated_with_partial_text_is_returned_as_truncated(serve, provider: str) -> None:
    server = serve(provider)
    server.script(truncated)
    response = ask(provider)
    assert response.finish == FINISH_TRUNCATED and not response.complete
    assert (
        response.finish_reason
        == {
            "openai": "max_output_tokens",
            "anthropic": "max_tokens",
            "gemini": "MAX_TOKENS",
        }[provider]
    )
    assert response.text and DEFAULT_ANSWER.startswith(response.text) and response.text != DEFAULT_ANSWER
    assert response.output_tokens and response.cost_usd and response.cost_usd > 0  # paid, and priced
    assert response.raw_body == server.last_request.response_body


@pytest.mark.parametrize("provider", list(MODELS))
def test_truncated_without_any_text_is_returned_as_truncated(serve, provider: str) -> None:
    server = serve(provider)
    server.script(truncated_empty)
    response = ask(provider)
    assert response.finish == FINISH_TRUNCATED
    assert response.text == ""
    assert response.output_tokens  # the budget was spent (on thinking, for Gemini)
    assert response.cost_usd and response.cost_usd > 0


@pytest.mark.parametrize("provider", list(MODELS))
@pytest.mark.parametrize("step", [refusal, refusal_part, prompt_blocked], ids=str)
def test_refusals_are_returned_as_refused(serve, provider: str, step) -> None:
    server = serve(provider)
    server.script(step)
    response = ask(provider)
    assert response.finish == FINISH_REFUSED
    assert response.finish_reason
    assert response.raw_body == server.last_request.response_body


@pytest.mark.parametrize("provider", list(MODELS))
def test_no_content_at_all_is_empty(serve, provider: str) -> None:
    server = serve(provider)
    server.script(empty)
    response = ask(provider)
    assert response.finish == FINISH_EMPTY
    assert response.text == ""


@pytest.mark.parametrize("provider", list(MODELS))
def test_a_malformed_200_body_fails_retryably_carrying_the_exact_bytes(serve, provider: str) -> None:
    server = serve(provider)
    server.script(malformed)
    with pytest.raises(ProviderError) as raised:
        ask(provider)
    assert raised.value.retryable and "malformed" in str(raised.value)
    answered = raised.value.response  # answered, perhaps billed: the ledger records it
    assert answered is not None and answered.raw_body == server.last_request.response_body
    assert answered.finish == FINISH_EMPTY and answered.finish_reason == "malformed"
    assert answered.input_tokens is None  # usage unknown, so the cost is unknown, not zero


@pytest.mark.parametrize("provider", list(MODELS))
def test_a_key_with_trailing_whitespace_is_stripped(serve, provider: str) -> None:
    server = serve(provider)
    adapter = resolve_provider(
        ProviderSettings(mode="live", api_keys={provider: f" {KEY}\n"}), provider, MODELS[provider]
    )
    response = adapter.complete(ModelRequest(provider, MODELS[provider], "Best tool?", "answer"))
    assert response.complete
    assert server.request_count == 1 and server.last_request.status == 200


def test_the_offline_provider_always_completes() -> None:
    response = OfflineProvider().complete(ModelRequest("offline", "synthetic", "Best tool?", "answer"))
    assert response.finish == FINISH_COMPLETE and response.complete


# ------------------------------------------------------------------------------------------- OpenAI


def test_openai_collects_searched_sources_as_retrieved_only(serve) -> None:
    server = serve("openai")
    server.retrieved_sources = [RETRIEVED]
    server.search_calls_without_action = 2  # some web_search_call items have no action
    response = ask("openai", web_search=True, country="DE")

    assert server.last_request.json["include"] == ["web_search_call.action.sources"]
    assert [(c.url, c.cited) for c in response.citations] == [
        ("https://acme.io/pricing", True),
        (RETRIEVED[0], False),
    ]


def test_openai_cache_writes_are_read(serve) -> None:
    server = serve("openai")
    server.cache_write_tokens = 60
    response = ask("openai")
    assert response.cache_write_tokens == 60
    assert response.cached_input_tokens == 20


# ---------------------------------------------------------------------------------------- Anthropic


def test_anthropic_paused_turn_is_continued_with_its_content(serve) -> None:
    server = serve("anthropic")
    server.retrieved_sources = [RETRIEVED]
    server.script(pause_turn)
    paused = ask("anthropic", web_search=True)

    assert paused.finish == FINISH_PAUSED and paused.finish_reason == "pause_turn"
    sent = server.last_request.response_json["content"]
    assert paused.continuation == sent  # the content as the API sent it, JSON-able
    assert [b["type"] for b in paused.continuation] == [
        "text",
        "server_tool_use",
        "web_search_tool_result",
        "text",
    ]
    json.dumps(paused.continuation)

    final = ask("anthropic", web_search=True, continuation=paused.continuation)
    messages = server.last_request.json["messages"]
    assert messages == [
        {"role": "user", "content": "Best analytics tool?"},
        {"role": "assistant", "content": paused.continuation},
    ]
    assert final.finish == FINISH_COMPLETE and final.continuation is None
    # The answer is the text after the last search of the whole turn; the narration is not in it.
    assert final.text == DEFAULT_ANSWER
    assert "continuing" not in final.text
    assert [(c.url, c.cited) for c in final.citations] == [
        ("https://acme.io/pricing", True),
        (RETRIEVED[0], False),
    ]


def test_anthropic_answer_is_the_text_after_the_last_search(serve) -> None:
    server = serve("anthropic")
    server.narration = "I'll search for the September 17 announcement."
    server.split_citations = True  # the answer comes as several text blocks around its citation
    response = ask("anthropic", web_search=True)

    blocks = [b["type"] for b in server.last_request.response_json["content"]]
    assert blocks == ["text", "server_tool_use", "web_search_tool_result", "text", "text", "text"]
    assert response.text == DEFAULT_ANSWER  # joined with "", narration left out
    assert server.narration in json.dumps(response.raw)  # kept in the raw response
    assert [c.url for c in response.citations if c.cited] == ["https://acme.io/pricing"]


def test_anthropic_without_tools_takes_every_text_block(serve) -> None:
    serve("anthropic")
    assert ask("anthropic").text == DEFAULT_ANSWER


def test_anthropic_cache_writes_are_priced_above_input(serve) -> None:
    server = serve("anthropic")
    server.cache_write_tokens = 1000  # 5-minute
    server.cache_write_1h_tokens = 400
    response = ask("anthropic")
    price = PRICES["anthropic/claude-haiku-4-5"]
    assert response.cache_write_tokens == 1400
    assert response.input_tokens == 120 + 20 + 1400
    expected = (
        120 * price.input
        + 20 * price.cached_input
        + 1000 * price.input * 1.25
        + 400 * price.input * 2
        + 45 * price.output
    ) / 1e6
    assert response.cost_usd == pytest.approx(expected)


# ------------------------------------------------------------------------------------------- Gemini


def test_gemini_grounding_prompt_tokens_are_billed_as_input(serve) -> None:
    server = serve("gemini")
    server.tool_use_prompt_tokens = 300
    server.reasoning_tokens = 50
    response = ask("gemini", web_search=True)
    price = PRICES["gemini/gemini-2.5-flash"]
    assert response.input_tokens == 120 + 300
    assert response.output_tokens == 45 + 50
    expected = ((420 - 20) * price.input + 20 * price.cached_input + 95 * price.output) / 1e6
    assert response.cost_usd == pytest.approx(expected)


def test_gemini_prompt_block_names_the_reason(serve) -> None:
    server = serve("gemini")
    server.script(prompt_blocked)
    response = ask("gemini")
    assert (response.finish, response.finish_reason) == (FINISH_REFUSED, "PROHIBITED_CONTENT")
