import json

import pytest
from pydantic import BaseModel

from icp_pipeline.providers.base import ModelRequest, ModelResponse, ProviderError
from icp_pipeline.providers.structured import InvalidModelOutput, complete_structured
from icp_pipeline.visibility.claims import ClaimExtraction

VALID = json.dumps(
    {
        "claims": [
            {
                "text": "Acme is fast.",
                "company": "Acme",
                "sentiment": "positive",
                "supporting_urls": ["https://acme.io/?utm_source=x"],
            }
        ]
    }
)
INVALID = '{"claims": [{"text": "Acme is fast."'
BAD_SENTIMENT = json.dumps({"claims": [{"text": "t", "company": "Acme", "sentiment": "meh"}]})
CONTEXT = {"citations": {"https://acme.io/"}}


class ScriptedProvider:
    """A test double for the provider interface: replies with the given texts in order."""

    name = "scripted"

    def __init__(self, *replies: str) -> None:
        self.replies = list(replies)
        self.requests: list[ModelRequest] = []

    def complete(self, request: ModelRequest) -> ModelResponse:
        self.requests.append(request)
        text = self.replies.pop(0)
        return ModelResponse(
            text=text,
            raw={"text": text},
            provider=request.provider,
            requested_model=request.model,
            response_model=request.model,
            input_tokens=10,
            output_tokens=5,
        )


def _request() -> ModelRequest:
    return ModelRequest(
        provider="openai", model="gpt-4o-mini", prompt="Extract the claims.", purpose="claims"
    )


def test_valid_first_reply() -> None:
    provider = ScriptedProvider(VALID)
    recorded: list[ModelResponse] = []
    result = complete_structured(provider, _request(), ClaimExtraction, recorded.append, CONTEXT)
    assert isinstance(result, ClaimExtraction)
    assert result.claims[0].supporting_urls == ["https://acme.io/"]
    assert len(provider.requests) == 1
    assert provider.requests[0].output_schema is ClaimExtraction
    assert provider.requests[0].prompt == "Extract the claims."
    assert [r.text for r in recorded] == [VALID]


@pytest.mark.parametrize("first", [INVALID, BAD_SENTIMENT, "", "Sure! Here you go."])
def test_one_repair_then_success(first: str) -> None:
    provider = ScriptedProvider(first, VALID)
    recorded: list[ModelResponse] = []
    result = complete_structured(provider, _request(), ClaimExtraction, recorded.append, CONTEXT)
    assert result.claims[0].company == "Acme"
    assert len(provider.requests) == 2
    assert [r.text for r in recorded] == [first, VALID]
    repair = provider.requests[1]
    assert repair.output_schema is ClaimExtraction
    assert repair.prompt.startswith("Extract the claims.")
    assert "not valid" in repair.prompt
    assert repair.prompt != provider.requests[0].prompt
    assert (repair.provider, repair.model, repair.purpose) == ("openai", "gpt-4o-mini", "claims")


def test_unknown_citation_triggers_repair() -> None:
    unknown = VALID.replace("https://acme.io/?utm_source=x", "https://elsewhere.com/")
    provider = ScriptedProvider(unknown, VALID)
    recorded: list[ModelResponse] = []
    complete_structured(provider, _request(), ClaimExtraction, recorded.append, CONTEXT)
    assert len(recorded) == 2
    assert "supporting_urls" in provider.requests[1].prompt


def test_invalid_twice_raises_with_last_raw_text() -> None:
    provider = ScriptedProvider(INVALID, BAD_SENTIMENT)
    recorded: list[ModelResponse] = []
    with pytest.raises(InvalidModelOutput) as info:
        complete_structured(provider, _request(), ClaimExtraction, recorded.append, CONTEXT)
    error = info.value
    assert isinstance(error, ProviderError)
    assert error.raw_text == BAD_SENTIMENT
    assert error.retryable is False
    assert error.provider == "openai"
    assert error.model == "gpt-4o-mini"
    assert "sentiment" in str(error)
    assert [r.text for r in recorded] == [INVALID, BAD_SENTIMENT]
    assert len(provider.requests) == 2


def test_code_fences_are_stripped() -> None:
    provider = ScriptedProvider(f"```json\n{VALID}\n```")
    recorded: list[ModelResponse] = []
    result = complete_structured(provider, _request(), ClaimExtraction, recorded.append, CONTEXT)
    assert result.claims[0].text == "Acme is fast."
    assert len(recorded) == 1


class _Simple(BaseModel):
    value: int


def test_any_schema_and_no_context() -> None:
    provider = ScriptedProvider('{"value": "x"}', '{"value": 3}')
    recorded: list[ModelResponse] = []
    assert complete_structured(provider, _request(), _Simple, recorded.append).value == 3
    assert provider.requests[0].output_schema is _Simple
    assert len(recorded) == 2


def test_provider_error_propagates_without_record() -> None:
    class FailingProvider:
        name = "failing"

        def complete(self, request: ModelRequest) -> ModelResponse:
            raise ProviderError(request.provider, request.model, "boom", retryable=True)

    recorded: list[ModelResponse] = []
    with pytest.raises(ProviderError) as info:
        complete_structured(FailingProvider(), _request(), ClaimExtraction, recorded.append)
    assert info.value.retryable is True
    assert not isinstance(info.value, InvalidModelOutput)
    assert recorded == []
