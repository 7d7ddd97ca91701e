import json
from dataclasses import replace

import pytest

from icp_pipeline.providers.base import ModelRequest, ProviderError
from icp_pipeline.providers.offline import SYNTHETIC_NOTE, OfflineProvider
from icp_pipeline.visibility.citations import extract_citations
from icp_pipeline.visibility.claims import ClaimExtraction
from icp_pipeline.visibility.mentions import CompanyTerms, find_mentions

COMPANIES = [
    {"name": "Acme", "domains": ["acme.io"]},
    {"name": "Globex", "domains": ["globex.com"]},
    {"name": "Initech", "domains": ["initech.com"]},
    {"name": "Umbrella", "domains": ["umbrella.dev"]},
]
QUESTIONS = [
    "What is the best product analytics tool for a startup?",
    "Which analytics platform has the best pricing for small teams?",
    "What are the alternatives to Google Analytics for a SaaS product?",
    "Which product analytics tools integrate with a data warehouse?",
    "What is the easiest analytics tool to set up without engineers?",
    "Which analytics tool has the best dashboards?",
]


def _request(question: str, model: str = "gpt-4o-mini", country: str | None = "US", provider: str = "openai"):
    return ModelRequest(
        provider=provider,
        model=model,
        prompt=question,
        purpose="answer",
        country=country,
        offline_hints={"companies": COMPANIES},
    )


def _body(text: str) -> list[str]:
    """The answer without the line that names the country."""
    return [line for line in text.splitlines() if not line.startswith("Here are options")]


def test_answers_are_deterministic() -> None:
    provider = OfflineProvider()
    for question in QUESTIONS:
        first = provider.complete(_request(question))
        second = OfflineProvider().complete(_request(question))
        assert first.text == second.text
        assert first.citations == second.citations
        assert first.input_tokens == second.input_tokens
        assert first.output_tokens == second.output_tokens


def test_answers_differ_across_countries() -> None:
    provider = OfflineProvider()
    differing = [
        q
        for q in QUESTIONS
        if _body(provider.complete(_request(q, country="US")).text)
        != _body(provider.complete(_request(q, country="DE")).text)
    ]
    assert differing


def test_answers_differ_across_models() -> None:
    provider = OfflineProvider()
    differing = [
        q
        for q in QUESTIONS
        if provider.complete(_request(q, model="gpt-4o-mini")).text
        != provider.complete(_request(q, model="claude-haiku-4-5", provider="anthropic")).text
    ]
    assert differing


def test_samples_of_one_question_differ_and_each_is_deterministic() -> None:
    provider = OfflineProvider()
    terms = [CompanyTerms(i, c["name"], (), tuple(c["domains"])) for i, c in enumerate(COMPANIES)]

    def answer(question: str, sample: int) -> str:
        request = _request(question)
        hints = {**request.offline_hints, "sample": sample}
        return provider.complete(replace(request, offline_hints=hints)).text

    for question in QUESTIONS:
        # Sample 0 is the answer the provider always gave (no sample hint), so samples-1 orgs keep it.
        assert answer(question, 0) == provider.complete(_request(question)).text
        assert answer(question, 2) == answer(question, 2)
    # Across three samples, some company is named in one sample and not in another.
    named = {
        q: [frozenset(m.company_id for m in find_mentions(answer(q, s), terms)) for s in range(3)]
        for q in QUESTIONS
    }
    assert any(len(set(samples)) > 1 for samples in named.values())


def test_answers_differ_across_questions() -> None:
    provider = OfflineProvider()
    bodies = {tuple(_body(provider.complete(_request(q)).text)) for q in QUESTIONS}
    assert len(bodies) > 1


@pytest.mark.parametrize("country", ["US", "DE", None])
@pytest.mark.parametrize("model", ["gpt-4o-mini", "claude-haiku-4-5"])
def test_every_answer_is_marked_synthetic(country: str | None, model: str) -> None:
    provider = OfflineProvider()
    for question in QUESTIONS:
        response = provider.complete(_request(question, model=model, country=country))
        assert SYNTHETIC_NOTE in response.text
        assert response.synthetic is True
        assert response.raw["synthetic"] is True
        assert response.requested_model == model
        assert response.response_model == f"offline-synthetic/{model}"
        assert response.location_mode == ("prompt" if country else "none")
        assert (f" in {country}" in response.text) is bool(country)
        assert response.cached_input_tokens == 0
        assert response.input_tokens == max(1, len(question) // 4)
        assert response.output_tokens >= 1


def test_answers_name_only_hinted_companies_and_cite_http_urls() -> None:
    provider = OfflineProvider()
    terms = [CompanyTerms(i, c["name"]) for i, c in enumerate(COMPANIES)]
    mentioned_any = False
    for question in QUESTIONS:
        response = provider.complete(_request(question))
        mentioned_any |= bool(find_mentions(response.text, terms))
        for citation in response.citations:
            assert citation.url.startswith("https://")
            assert citation.url in response.text
    assert mentioned_any


def test_no_hints_still_answers() -> None:
    response = OfflineProvider().complete(ModelRequest("offline", "m", "Anything?", "answer"))
    assert SYNTHETIC_NOTE in response.text
    assert "It depends on your stack" in response.text


def test_fail_models_raise_non_retryable() -> None:
    provider = OfflineProvider(fail_models=frozenset({"gpt-4o-mini"}))
    with pytest.raises(ProviderError) as info:
        provider.complete(_request(QUESTIONS[0]))
    assert info.value.retryable is False
    assert info.value.provider == "openai"
    assert info.value.model == "gpt-4o-mini"
    assert "gpt-4o-mini" in str(info.value)
    other = provider.complete(_request(QUESTIONS[0], model="claude-haiku-4-5", provider="anthropic"))
    assert SYNTHETIC_NOTE in other.text


@pytest.mark.parametrize("question", QUESTIONS)
def test_claims_mode_returns_valid_claim_extraction(question: str) -> None:
    provider = OfflineProvider()
    answer = provider.complete(_request(question))
    citations = extract_citations(answer.text, [(c.url, c.title, c.cited) for c in answer.citations])
    urls = [c.url for c in citations]
    names = [c["name"] for c in COMPANIES]
    request = ModelRequest(
        provider="openai",
        model="gpt-4o-mini",
        prompt="Extract claims.",
        purpose="claims",
        output_schema=ClaimExtraction,
        offline_hints={"answer": answer.text, "company_names": names, "citations": urls},
    )
    response = provider.complete(request)
    assert response.citations == []
    assert response.synthetic is True
    json.loads(response.text)
    extraction = ClaimExtraction.model_validate_json(response.text, context={"citations": set(urls)})
    mentioned = {
        m.matched_text for m in find_mentions(answer.text, [CompanyTerms(i, n) for i, n in enumerate(names)])
    }
    assert {c.company for c in extraction.claims} == mentioned
    for claim in extraction.claims:
        assert claim.text in answer.text
        assert set(claim.supporting_urls) <= set(urls)
    assert provider.complete(request).text == response.text


def test_claims_sentiment_from_wording() -> None:
    answer = (
        "1. Acme: its free tier is generous.\n"
        "2. Globex: it can get expensive at scale.\n"
        "3. Initech: it exists ([pricing](https://www.initech.com/pricing?utm_source=assistant)).\n"
    )
    request = ModelRequest(
        provider="offline",
        model="m",
        prompt="Extract.",
        purpose="claims",
        output_schema=ClaimExtraction,
        offline_hints={
            "answer": answer,
            "company_names": ["Acme", "Globex", "Initech"],
            "citations": ["https://www.initech.com/pricing"],
        },
    )
    extraction = ClaimExtraction.model_validate_json(
        OfflineProvider().complete(request).text, context={"citations": {"https://www.initech.com/pricing"}}
    )
    assert [(c.company, c.sentiment, c.supporting_urls) for c in extraction.claims] == [
        ("Acme", "positive", []),
        ("Globex", "negative", []),
        ("Initech", "neutral", ["https://www.initech.com/pricing"]),
    ]


def test_claims_purpose_without_schema_gives_an_answer() -> None:
    request = replace(_request(QUESTIONS[0]), purpose="claims")
    assert SYNTHETIC_NOTE in OfflineProvider().complete(request).text
