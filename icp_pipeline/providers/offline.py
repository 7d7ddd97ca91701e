"""Deterministic synthetic answers, so the whole pipeline runs with no API key.

Everything it returns is marked synthetic. Latency and failures can be injected for demos,
benchmarks and tests of the orchestration.
"""

import hashlib
import json
import random
import re
import time
from dataclasses import dataclass, field

from icp_pipeline.providers.base import ModelRequest, ModelResponse, ProviderError, SourceCitation

SYNTHETIC_NOTE = "[Synthetic answer from the offline provider: no AI assistant was asked.]"

_REASONS = [
    "it is quick to set up for a small team",
    "its pricing scales with usage",
    "it has strong dashboards out of the box",
    "its support is responsive",
    "it integrates with the common data warehouses",
    "its free tier is generous",
]
_CAVEATS = [
    "it can get expensive at scale",
    "its reporting is limited for advanced analysts",
    "some users find onboarding slow",
]
_THIRD_PARTY = [
    "https://www.g2.com/categories/product-analytics",
    "https://en.wikipedia.org/wiki/Web_analytics",
]
_POSITIVE = ("strong", "generous", "responsive", "quick", "scales", "integrates")
_NEGATIVE = ("expensive", "limited", "slow")


@dataclass
class OfflineProvider:
    latency_seconds: float = 0.0
    fail_models: frozenset[str] = field(default_factory=frozenset)
    name: str = "offline"

    def complete(self, request: ModelRequest) -> ModelResponse:
        started = time.monotonic()
        if self.latency_seconds:
            time.sleep(self.latency_seconds)
        if request.model in self.fail_models:
            raise ProviderError(
                request.provider,
                request.model,
                "the offline provider is configured to fail this model (fault injection)",
                retryable=False,
            )
        if request.output_schema is not None and request.purpose == "claims":
            text, citations = _synthetic_claims(request), []
        else:
            text, citations = _synthetic_answer(request)
        return ModelResponse(
            text=text,
            raw={"synthetic": True, "provider": "offline", "output_text": text},
            provider=request.provider,
            requested_model=request.model,
            response_model=f"offline-synthetic/{request.model}",
            input_tokens=max(1, len(request.prompt) // 4),
            output_tokens=max(1, len(text) // 4),
            cached_input_tokens=0,
            citations=citations,
            web_search=False,
            location_mode="prompt" if request.country else "none",
            synthetic=True,
            latency_ms=int((time.monotonic() - started) * 1000),
        )


def _rng(*parts: object) -> random.Random:
    seed = hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()
    return random.Random(int(seed[:16], 16))


def _synthetic_answer(request: ModelRequest) -> tuple[str, list[SourceCitation]]:
    companies: list[dict] = list(request.offline_hints.get("companies", []))
    rng = _rng(request.provider, request.model, request.country, request.prompt)
    rng.shuffle(companies)
    # Some answers name nobody we track; most name a varying subset in a varying order.
    chosen = [] if rng.random() < 0.1 else companies[: rng.randint(1, max(1, len(companies)))]
    lines = [SYNTHETIC_NOTE, ""]
    where = f" in {request.country}" if request.country else ""
    lines.append(f"Here are options{where} worth a look:")
    citations: list[SourceCitation] = []
    for index, company in enumerate(chosen, start=1):
        sentence = f"{index}. {company['name']}: {rng.choice(_REASONS)}"
        if rng.random() < 0.3:
            sentence += f", though {rng.choice(_CAVEATS)}"
        domains = company.get("domains") or []
        if domains and rng.random() < 0.6:
            url = f"https://www.{domains[0]}/pricing?utm_source=assistant"
            sentence += f" ([pricing]({url}))"
        lines.append(sentence + ".")
    if rng.random() < 0.5:
        url = rng.choice(_THIRD_PARTY)
        lines.append(f"Independent reviews: {url}.")
        citations.append(SourceCitation(url=url, title="Reviews", cited=True))
    if not chosen:
        lines.append("It depends on your stack; compare a few tools on a trial first.")
    return "\n".join(lines), citations


def _synthetic_claims(request: ModelRequest) -> str:
    answer: str = request.offline_hints.get("answer", "")
    names: list[str] = request.offline_hints.get("company_names", [])
    citations: set[str] = set(request.offline_hints.get("citations", []))
    claims = []
    for sentence in re.split(r"(?<=[.!?])\s+|\n", answer):
        for name in names:
            if re.search(rf"(?<!\w){re.escape(name)}(?!\w)", sentence, re.IGNORECASE):
                lowered = sentence.lower()
                if any(word in lowered for word in _NEGATIVE):
                    sentiment = "negative"
                elif any(word in lowered for word in _POSITIVE):
                    sentiment = "positive"
                else:
                    sentiment = "neutral"
                urls = sorted(url for url in citations if _same_site(url, sentence))
                claims.append(
                    {
                        "text": sentence.strip(),
                        "company": name,
                        "sentiment": sentiment,
                        "supporting_urls": urls,
                    }
                )
    return json.dumps({"claims": claims})


def _same_site(url: str, sentence: str) -> bool:
    host = re.sub(r"^https?://(www\.)?", "", url).split("/")[0]
    return host in sentence
