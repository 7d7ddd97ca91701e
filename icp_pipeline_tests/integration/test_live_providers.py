"""The live adapters, through the real SDKs, against local servers that speak each provider's protocol."""

import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from icp_pipeline.providers.base import ModelRequest, ProviderError
from icp_pipeline.providers.factory import ProviderSettings, resolve_provider
from icp_pipeline.providers.resilience import PACER
from icp_pipeline.providers.structured import complete_structured
from icp_pipeline.visibility.claims import ClaimExtraction
from icp_pipeline_tests.support.fake_providers import (
    PROVIDER_CASES,
    FakeOpenAI,
    ProviderCase,
    hang,
    malformed,
    no_usage,
    status,
    text,
)

KEY = "sk-live-test-5c2e1b0d9a"


Case = ProviderCase
CASES = PROVIDER_CASES


@pytest.fixture(params=CASES, ids=[c.provider for c in CASES])
def live(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Case, object]]:
    case: Case = request.param
    PACER.reset()
    with case.server(api_key=KEY) as server:
        monkeypatch.setenv(case.base_url_variable, server.url + case.base_url_suffix)
        yield case, server
    PACER.reset()


def _provider(case: Case, key: str = KEY):
    return resolve_provider(
        ProviderSettings(mode="live", api_keys={case.provider: key}), case.provider, case.model
    )


def _request(case: Case, **changes) -> ModelRequest:
    values = {
        "provider": case.provider,
        "model": case.model,
        "prompt": "Best analytics tool?",
        "purpose": "answer",
        "country": "DE",
    }
    return ModelRequest(**{**values, **changes})


def test_plain_answer_with_usage_cost_and_model_version(live) -> None:
    case, server = live
    response = _provider(case).complete(_request(case))
    assert "Acme" in response.text
    assert response.input_tokens and response.output_tokens
    assert response.response_model != case.model and response.response_model.startswith(case.model)
    assert response.cost_usd is not None and response.cost_usd > 0
    assert not response.synthetic
    assert response.location_mode == "prompt"
    assert server.request_count == 1


def test_structured_output_sends_the_schema_and_validates(live) -> None:
    case, server = live
    server.script(
        text(
            '{"claims": [{"text": "Acme is strong", "company": "Acme", "sentiment": "positive", '
            '"supporting_urls": []}]}'
        )
    )
    recorded = []
    result = complete_structured(
        _provider(case), _request(case, purpose="claims"), ClaimExtraction, recorded.append
    )
    assert [c.company for c in result.claims] == ["Acme"]
    assert len(recorded) == 1
    body = server.requests[-1].json
    if case.provider == "openai":
        assert body["text"]["format"]["type"] == "json_schema" and body["text"]["format"]["strict"] is True
        assert body["text"]["format"]["schema"]["additionalProperties"] is False
    elif case.provider == "anthropic":
        assert body["output_config"]["format"]["type"] == "json_schema"
    else:
        assert body["generationConfig"]["responseMimeType"] == "application/json"
        assert "claims" in body["generationConfig"]["responseJsonSchema"]["properties"]


def test_invalid_structured_output_is_repaired_once_then_fails_with_raw_text(live) -> None:
    case, server = live
    server.script(text("not json"), text("still not json"))
    recorded = []
    with pytest.raises(ProviderError) as raised:
        complete_structured(
            _provider(case), _request(case, purpose="claims"), ClaimExtraction, recorded.append
        )
    assert raised.value.raw_text == "still not json"
    assert [r.text for r in recorded] == ["not json", "still not json"]
    assert "previous reply was not valid" in str(server.requests[-1].json)


def test_web_search_citations_and_location(live) -> None:
    case, server = live
    response = _provider(case).complete(_request(case, web_search=True))
    body = server.requests[-1].json
    cited = [c for c in response.citations if c.cited]
    assert cited, response.citations
    if case.provider == "openai":
        assert body["tools"][0] == {
            "type": "web_search",
            "user_location": {"type": "approximate", "country": "DE"},
        }
        assert response.location_mode == "user_location"
    elif case.provider == "anthropic":
        assert body["tools"][0]["user_location"]["country"] == "DE"
        assert response.location_mode == "user_location"
        assert [c.url for c in response.citations if not c.cited] == ["https://retrieved-only.example/page"]
    else:
        assert "googleSearch" in body["tools"][0]
        assert response.location_mode == "prompt"
    assert response.web_search


def test_429_with_retry_after_is_retryable_and_slows_later_calls(live) -> None:
    case, server = live
    server.script(status(429, retry_after=2))
    with pytest.raises(ProviderError) as raised:
        _provider(case).complete(_request(case))
    assert raised.value.retryable and raised.value.status_code == 429
    assert raised.value.retry_after == pytest.approx(2, abs=0.01)
    assert PACER.interval(case.provider) > 0
    started = time.monotonic()
    assert _provider(case).complete(_request(case)).text  # the next call waits out the Retry-After
    assert time.monotonic() - started >= 1.5


def test_500_then_success(live) -> None:
    case, server = live
    server.script(status(500))
    with pytest.raises(ProviderError) as raised:
        _provider(case).complete(_request(case))
    assert raised.value.retryable and raised.value.status_code == 500
    assert _provider(case).complete(_request(case)).text


def test_a_hang_past_the_deadline_times_out_as_retryable(live) -> None:
    case, server = live
    server.script(hang(10))
    started = time.monotonic()
    with pytest.raises(ProviderError) as raised:
        _provider(case).complete(_request(case, deadline=time.monotonic() + 1.0))
    assert raised.value.retryable
    assert time.monotonic() - started < 5


def test_malformed_json_is_retryable(live) -> None:
    case, server = live
    server.script(malformed)
    with pytest.raises(ProviderError) as raised:
        _provider(case).complete(_request(case))
    assert raised.value.retryable and "malformed" in str(raised.value)


def test_no_usage_gives_unknown_cost_not_zero(live) -> None:
    case, server = live
    server.script(no_usage)
    response = _provider(case).complete(_request(case))
    assert response.input_tokens is None and response.output_tokens is None
    assert response.cost_usd is None


def test_invalid_key_fails_at_once_naming_the_variable_without_the_key(live) -> None:
    case, _server = live
    wrong = "sk-wrong-key-0000111122223333"
    with pytest.raises(ProviderError) as raised:
        _provider(case, key=wrong).complete(_request(case))
    error = raised.value
    assert not error.retryable and error.status_code == 401
    assert f"{case.provider}/{case.model}" in str(error)
    assert {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY", "gemini": "GEMINI_API_KEY"}[
        case.provider
    ] in str(error)
    assert wrong not in str(error)


@pytest.mark.parametrize("provider", ["openai", "anthropic", "gemini"])
def test_missing_key_in_live_mode_names_the_variable(provider: str) -> None:
    with pytest.raises(ProviderError) as raised:
        resolve_provider(ProviderSettings(mode="live"), provider, "m")
    assert not raised.value.retryable
    assert f"{provider.upper()}_API_KEY" in str(raised.value)


def test_a_run_imports_only_the_sdk_it_uses() -> None:
    with FakeOpenAI(api_key=KEY) as server:
        code = (
            "import sys\n"
            "from icp_pipeline.providers.factory import ProviderSettings, resolve_provider\n"
            "from icp_pipeline.providers.base import ModelRequest\n"
            f"p = resolve_provider(ProviderSettings(mode='live', api_keys={{'openai': '{KEY}'}}), 'openai', 'gpt-4o-mini')\n"
            "p.complete(ModelRequest('openai', 'gpt-4o-mini', 'hi', 'answer'))\n"
            "print(sorted(m for m in ('openai', 'anthropic', 'google.genai') if m in sys.modules))\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=60,
            env={"OPENAI_BASE_URL": server.url + "/v1", "PATH": "/usr/bin:/bin"},
        )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['openai']"
