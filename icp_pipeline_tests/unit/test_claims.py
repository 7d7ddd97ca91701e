import json

import pytest
from pydantic import ValidationError

from icp_pipeline.visibility.claims import ClaimExtraction

CITATIONS = {"https://www.acme.io/pricing", "https://g2.com/reviews"}


def _payload(*claims: dict) -> str:
    return json.dumps({"claims": list(claims)})


def _claim(**overrides: object) -> dict:
    claim = {"text": "Acme is cheap.", "company": "Acme", "sentiment": "positive", "supporting_urls": []}
    claim.update(overrides)
    return claim


def test_valid_claims_with_cited_urls() -> None:
    text = _payload(
        _claim(supporting_urls=["https://www.acme.io/pricing"]),
        _claim(text="Globex is slow.", company="Globex", sentiment="negative"),
    )
    result = ClaimExtraction.model_validate_json(text, context={"citations": CITATIONS})
    assert [c.company for c in result.claims] == ["Acme", "Globex"]
    assert result.claims[0].supporting_urls == ["https://www.acme.io/pricing"]
    assert result.claims[1].supporting_urls == []
    assert result.claims[1].sentiment == "negative"


def test_utm_and_case_variants_are_accepted_and_normalised() -> None:
    text = _payload(
        _claim(
            supporting_urls=[
                "https://WWW.ACME.IO/pricing?utm_source=chatgpt#plans",
                "https://www.acme.io:443/pricing",
                "https://g2.com/reviews?UTM_medium=x",
            ]
        )
    )
    result = ClaimExtraction.model_validate_json(text, context={"citations": CITATIONS})
    assert result.claims[0].supporting_urls == ["https://www.acme.io/pricing", "https://g2.com/reviews"]


@pytest.mark.parametrize(
    "url",
    ["https://www.acme.io/about", "https://acme.io/pricing", "https://www.acme.io/Pricing", "not a url"],
)
def test_unknown_url_raises(url: str) -> None:
    text = _payload(_claim(supporting_urls=["https://www.acme.io/pricing", url]))
    with pytest.raises(ValidationError) as info:
        ClaimExtraction.model_validate_json(text, context={"citations": CITATIONS})
    assert "not among the run's citations" in str(info.value)
    assert url in str(info.value)


def test_no_citations_in_context_rejects_every_url() -> None:
    text = _payload(_claim(supporting_urls=["https://www.acme.io/pricing"]))
    with pytest.raises(ValidationError):
        ClaimExtraction.model_validate_json(text, context={"citations": set()})


def test_without_context_urls_are_only_normalised() -> None:
    text = _payload(_claim(supporting_urls=["https://Example.com/x?utm_term=a", "https://example.com/x"]))
    result = ClaimExtraction.model_validate_json(text)
    assert result.claims[0].supporting_urls == ["https://example.com/x"]


@pytest.mark.parametrize(
    "claim",
    [
        _claim(sentiment="great"),
        _claim(sentiment="Positive"),
        _claim(text=""),
        _claim(company=""),
        {"text": "Acme is cheap.", "company": "Acme"},
    ],
)
def test_bad_claims_raise(claim: dict) -> None:
    with pytest.raises(ValidationError):
        ClaimExtraction.model_validate_json(_payload(claim), context={"citations": CITATIONS})


@pytest.mark.parametrize("text", ["not json", "{}", '{"claims": {}}', "[]"])
def test_bad_documents_raise(text: str) -> None:
    with pytest.raises(ValidationError):
        ClaimExtraction.model_validate_json(text, context={"citations": CITATIONS})


def test_empty_claims_list_is_valid() -> None:
    assert (
        ClaimExtraction.model_validate_json('{"claims": []}', context={"citations": CITATIONS}).claims == []
    )
