"""Deterministic synthetic answers, so the whole pipeline runs with no API key.

An answer depends on the provider, model, country, prompt and sample (`offline_hints["sample"]`):
the samples of one question differ, as a real assistant's answers do, and re-asking gives the same.

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
        structured = _STRUCTURED.get(request.purpose) if request.output_schema is not None else None
        raw = {"synthetic": True, "provider": "offline"}
        if structured is not None:
            text, citations = structured(request), []
        else:
            text, citations = _synthetic_answer(request)
            if request.web_search:
                raw.update(_synthetic_searches(request))
        return ModelResponse(
            text=text,
            raw={**raw, "output_text": text},
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
    # Each sample of a question gets its own answer; sample 0 keeps the seed it always had.
    sample = int(request.offline_hints.get("sample", 0))
    rng = _rng(
        request.provider, request.model, request.country, request.prompt, *([sample] if sample else [])
    )
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


_QUESTION_OPENING = re.compile(
    r"^(what|which|who|how)\s+(is|are|do|does|can|should)?\s*(the\s+)?(some\s+)?", re.IGNORECASE
)


def _synthetic_searches(request: ModelRequest) -> dict:
    """The web searches of a web-search answer, in the raw shape of the request's provider (what
    search_queries reads), so the fan-out shows offline. Their own random stream: the answer is the
    same with or without them. Related questions share their first query across models."""
    question = request.prompt.split("\n", 1)[0].strip().rstrip("?").strip()
    core = _QUESTION_OPENING.sub("", question) or question
    rng = _rng(
        "searches",
        request.provider,
        request.model,
        request.country,
        request.prompt,
        request.offline_hints.get("sample", 0),
    )
    more = [f"{core} reviews", f"{core} pricing comparison", f"{core} alternatives"]
    if request.country:
        more.append(f"{core} {request.country}")
    queries = [core, *rng.sample(more, rng.randint(0, 2))]
    if request.provider == "anthropic":
        return {
            "content": [
                {
                    "type": "server_tool_use",
                    "id": f"srvtoolu_offline_{i}",
                    "name": "web_search",
                    "input": {"query": query},
                }
                for i, query in enumerate(queries)
            ]
        }
    if request.provider == "gemini":  # as the adapter stores it (parsed, snake_case)
        return {"candidates": [{"grounding_metadata": {"web_search_queries": queries}}]}
    return {
        "output": [
            {
                "type": "web_search_call",
                "id": f"ws_offline_{i}",
                "status": "completed",
                "action": {"type": "search", "query": query, "queries": [query]},
            }
            for i, query in enumerate(queries)
        ]
    }


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


_ARCHETYPES = [
    ("Early-stage startups", "Founders and first hires choosing their first tools"),
    ("Mid-market SaaS teams", "Product and growth teams at 50-500 person software companies"),
    ("Enterprise data teams", "Central analytics teams with governance and scale needs"),
    ("Agencies and consultancies", "Service firms running analytics for many clients"),
    ("E-commerce brands", "Online retailers optimising funnels and retention"),
    ("Product-led growth teams", "Teams whose product drives acquisition and expansion"),
]


def _synthetic_segments(request: ModelRequest) -> str:
    rng = _rng("segments", request.model, request.prompt)
    chosen = rng.sample(_ARCHETYPES, 4)
    site = request.offline_hints.get("site", "the site")
    return json.dumps(
        {
            "segments": [
                {
                    "name": name,
                    "description": f"{description} (synthetic).",
                    "why_it_fits": f"{site} addresses their core workflow (synthetic).",
                }
                for name, description in chosen
            ]
        }
    )


def _synthetic_icp(request: ModelRequest) -> str:
    rng = _rng("icp", request.model, request.prompt)
    segment = request.offline_hints.get("segment", "Segment")
    fit = round(rng.uniform(0.4, 0.9), 2)
    profile = {
        "segment_name": segment,
        "summary": f"Synthetic ICP for {segment}: teams that need answers from product data fast.",
        "firmographics": {
            "industries": rng.sample(["Software", "Retail", "Fintech", "Media", "Healthcare"], 2),
            "company_size": rng.choice(["1-50", "50-500", "500-5000"]),
            "revenue_band": rng.choice(["<$5M", "$5M-$50M", "$50M-$500M"]),
            "regions": rng.sample(["North America", "Europe", "APAC"], 2),
            "growth_stage": rng.choice(["seed", "growth", "mature"]),
        },
        "buying_committee": {
            "roles": [
                {"role": "Head of Product", "seniority": "director", "decision_power": "high"},
                {"role": "Data Analyst", "seniority": "individual contributor", "decision_power": "medium"},
            ],
            "champion": "Head of Product",
            "economic_buyer": "VP Engineering",
            "blocker": "Security lead",
        },
        "pains": ["Slow answers to product questions", "Data spread across tools"],
        "jobs_to_be_done": ["Understand feature adoption", "Find drop-off in the funnel"],
        "desired_outcomes": ["Weekly decisions backed by data"],
        "buying_triggers": ["New funding round", "Launch of a self-serve plan"],
        "objections": ["Implementation effort", "Price at scale"],
        "current_alternatives": ["Spreadsheets", "Google Analytics"],
        "research_channels": ["Peer communities", "Review sites"],
        "messaging_hooks": ["Answers in minutes, not sprints"],
        "disqualifiers": ["No product usage data"],
        "fit_criteria": [
            {"criterion": "Has a digital product", "weight": 0.6},
            {"criterion": "Team owns analytics", "weight": 0.4},
        ],
        "vocabulary": ["activation", "retention", "funnel"],
        "confidence": round(rng.uniform(0.5, 0.8), 2),
    }
    analysis = {
        "fit_score": fit,
        "how_well_served": f"Synthetic assessment: the site serves {segment} {'well' if fit > 0.65 else 'partly'}.",
        "strengths": ["Clear product positioning"],
        "gaps": [f"No page speaks to {segment} directly"],
        "recommended_changes": [f"Add a landing page for {segment}"],
    }
    return json.dumps({"profile": profile, "analysis": analysis})


def _synthetic_comparison(request: ModelRequest) -> str:
    """A narrative that follows the ranking the pipeline computed (passed in the hints, best first).
    It names segments by name, as real models often do; the pipeline matches names to ids."""
    segments: list[dict] = list(request.offline_hints.get("segments", []))
    if not segments:  # an older caller: ids only
        segments = [
            {"id": i, "name": i, "fit_score": None} for i in request.offline_hints.get("segment_ids", [])
        ]

    def score(segment: dict) -> str:
        return f" (fit {segment['fit_score']:.2f})" if segment.get("fit_score") is not None else ""

    top = segments[0] if segments else None
    return json.dumps(
        {
            "summary": f"Synthetic comparison from the offline provider: {top['name']}{score(top)} fits best "
            f"of {len(segments)} segment(s)."
            if top
            else "Synthetic comparison from the offline provider.",
            "ranking": [
                {
                    "segment_id": segment["name"],
                    "rank": rank,
                    "fit_score": segment.get("fit_score") or 0.0,
                    "reason": f"Synthetic: ranked {rank} by its fit score{score(segment)}.",
                }
                for rank, segment in enumerate(segments, start=1)
            ],
            "overlaps": [],
            "recommendations": [f"Focus messaging on {top['name']} first (synthetic)."] if top else [],
        }
    )


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:] if text[:1].isupper() and not text[1:2].isupper() else text


def _synthetic_segment_questions(request: ModelRequest) -> str:
    """Buyer questions in the segment's own words: its pains, jobs, triggers, vocabulary and channels
    (from the profile in the hints), each asked by a role of its buying committee."""
    profile: dict = request.offline_hints.get("profile") or {}
    segment = str(request.offline_hints.get("segment") or profile.get("segment_name") or "our team")
    count = int(request.offline_hints.get("count", 5))
    rng = _rng("segment_questions", request.model, request.prompt)

    def pick(name: str, fallback: str) -> str:
        values = [str(v) for v in profile.get(name) or [] if str(v).strip()]
        return _lower_first(rng.choice(values)) if values else fallback

    roles = [r.get("role") for r in (profile.get("buying_committee") or {}).get("roles", []) if r.get("role")]
    who = _lower_first(segment)
    templates = [
        lambda: (
            f"What is the best tool for {who} to {_lower_first(pick('jobs_to_be_done', 'get answers from data'))}?"
        ),
        lambda: (
            f"We keep running into {pick('pains', 'slow reporting')}: which {pick('vocabulary', 'analytics')} "
            f"tool do {who} recommend?"
        ),
        lambda: (
            f"After {pick('buying_triggers', 'a new funding round')}, which {pick('vocabulary', 'analytics')} "
            f"platform should {who} evaluate first?"
        ),
        lambda: (
            f"Which products for {pick('vocabulary', 'analytics')} get recommended in "
            f"{pick('research_channels', 'peer communities')} for {who}?"
        ),
        lambda: (
            f"How do {who} fix {pick('pains', 'data spread across tools')} without "
            f"{pick('objections', 'a long implementation')}?"
        ),
        lambda: (
            f"Which alternatives to {pick('current_alternatives', 'spreadsheets')} do {who} use for "
            f"{pick('vocabulary', 'analytics')}?"
        ),
    ]
    questions: list[dict] = []
    seen: set[str] = set()
    for attempt in range(count * 10):
        text = templates[attempt % len(templates)]()
        if text.lower() in seen:
            continue
        seen.add(text.lower())
        questions.append({"text": text, "persona_role": rng.choice(roles) if roles else None})
        if len(questions) == count:
            break
    return json.dumps({"questions": questions})


_STRUCTURED = {
    "claims": _synthetic_claims,
    "segments": _synthetic_segments,
    "icp": _synthetic_icp,
    "site_summary": _synthetic_comparison,
    "segment_questions": _synthetic_segment_questions,
}
