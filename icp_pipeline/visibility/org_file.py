"""The org file: a YAML description of an org, validated with pydantic and upserted idempotently."""

import hashlib
import json
import re
import unicodedata
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from sqlalchemy import select
from sqlalchemy.orm import Session

from icp_pipeline.config_files import ConfigFileError, parse_yaml_model, read_text, visible
from icp_pipeline.db.models import Company, Org, OrgLocation, OrgModel, Question
from icp_pipeline.limits import (
    MAX_COMPETITORS,
    MAX_MODELS,
    MAX_QUESTIONS,
    MAX_RUNS_PER_CYCLE,
    MAX_TERMS_PER_COMPANY,
)
from icp_pipeline.terminal import shown
from icp_pipeline.visibility import estimate
from icp_pipeline.visibility.countries import ISO_COUNTRY_CODES
from icp_pipeline.visibility.keys import model_slug, question_key
from icp_pipeline.visibility.schedule import parse_cron

PROVIDERS = ("openai", "anthropic", "gemini", "offline")
_ORG_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_WORDS = re.compile(r"\w+")
_DOMAIN = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")


# A printable one-line name (company names and aliases are String(200) columns / Mention.matched_text).
NonEmpty = Annotated[str, Field(min_length=1, max_length=200), visible("")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


def _bare_domains(domains: list[str]) -> list[str]:
    cleaned = []
    for domain in domains:
        value = domain.strip().lower().removeprefix("www.")
        if not _DOMAIN.match(value):
            raise ValueError(f"{shown(domain)} is not a bare domain such as acme.io")
        cleaned.append(value)
    return cleaned


class CompanySpec(_Strict):
    name: NonEmpty
    aliases: Annotated[list[NonEmpty], Field(max_length=MAX_TERMS_PER_COMPANY)] = []
    domains: Annotated[list[str], Field(max_length=MAX_TERMS_PER_COMPANY)] = []

    @field_validator("domains")
    @classmethod
    def _domains(cls, domains: list[str]) -> list[str]:
        return _bare_domains(domains)


# The org file's additions to the citation categories' domain table (source_categories.py).
MAX_CATEGORY_DOMAINS = 200


class SourceCategoriesSpec(_Strict):
    """`source_categories: {review: [domain, ...], ...}`: owned and competitor come from the companies'
    domains; `other` takes a domain out of the built-in table."""

    review: Annotated[list[str], Field(max_length=MAX_CATEGORY_DOMAINS)] = []
    ugc: Annotated[list[str], Field(max_length=MAX_CATEGORY_DOMAINS)] = []
    reference: Annotated[list[str], Field(max_length=MAX_CATEGORY_DOMAINS)] = []
    news_blog: Annotated[list[str], Field(max_length=MAX_CATEGORY_DOMAINS)] = []
    other: Annotated[list[str], Field(max_length=MAX_CATEGORY_DOMAINS)] = []

    @field_validator("review", "ugc", "reference", "news_blog", "other")
    @classmethod
    def _domains(cls, domains: list[str]) -> list[str]:
        return _bare_domains(domains)

    @model_validator(mode="after")
    def _once(self) -> "SourceCategoriesSpec":
        seen: dict[str, str] = {}
        for category, domains in self.mapping().items():
            for domain in domains:
                if domain in seen:
                    raise ValueError(f"{domain} is listed under both {seen[domain]} and {category}")
                seen[domain] = category
        return self

    def mapping(self) -> dict[str, list[str]]:
        """The categories that list a domain, as stored and given to source_categories.SourceClassifier."""
        return {name: list(domains) for name, domains in self.model_dump().items() if domains}


# An answer's output-token budget (reasoning included) set per model in the org file.
MIN_ANSWER_TOKENS = 256
MAX_ANSWER_TOKENS = 128_000


# How many times a cycle may ask one question x model x location (`samples`, org-wide or per model).
MAX_SAMPLES = 10
Samples = Annotated[int, Field(ge=1, le=MAX_SAMPLES, strict=True)]
ModelName = Annotated[str, Field(min_length=1, max_length=120), visible("")]  # org_models.model: String(120)


class ModelSpec(_Strict):
    provider: Literal["openai", "anthropic", "gemini", "offline"]
    model: ModelName
    web_search: bool = False
    # Unset: the org's `samples`.
    samples: Samples | None = None
    # Unset: the provider layer's default for the model (larger with web search).
    max_output_tokens: (
        Annotated[int, Field(ge=MIN_ANSWER_TOKENS, le=MAX_ANSWER_TOKENS, strict=True)] | None
    ) = None


class GraderSpec(_Strict):
    """The one model that extracts claims and sentiment from every answer, whichever model answered."""

    provider: Literal["openai", "anthropic", "gemini", "offline"]
    model: ModelName


class QuestionSpec(_Strict):
    id: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,48}$")] | None = None
    text: Annotated[str, Field(min_length=3, max_length=2000), visible("\n\t")]


# Questions a segment's ICP may propose (org file `icp.questions_per_segment`).
MAX_QUESTIONS_PER_SEGMENT = 20
SITE_ID = r"^[a-z0-9][a-z0-9_-]{0,63}$"


class IcpSpec(_Strict):
    """`icp:`: the site whose segment ICPs propose buyer questions for this org."""

    site: Annotated[str, Field(pattern=SITE_ID)]
    questions_per_segment: Annotated[int, Field(ge=1, le=MAX_QUESTIONS_PER_SEGMENT, strict=True)] = 5
    # auto: asked from the next cycle on; review: proposed until `org questions ORG --approve ID`.
    activate: Literal["auto", "review"] = "auto"


class OrgSpec(_Strict):
    id: str
    name: NonEmpty
    target: CompanySpec
    competitors: Annotated[list[CompanySpec], Field(max_length=MAX_COMPETITORS)] = []
    models: Annotated[list[ModelSpec], Field(min_length=1, max_length=MAX_MODELS)]
    locations: Annotated[list[str], Field(min_length=1)]
    questions: Annotated[list[QuestionSpec], Field(min_length=1, max_length=MAX_QUESTIONS)]
    schedule: Annotated[str, Field(max_length=200)] | None = None  # the org's cycle cron
    # A company row on fewer runs than this is flagged `insufficient_data` in the analytics.
    min_runs: Annotated[int, Field(ge=1, strict=True)] = 10
    # Each question x model x location is asked this many times per cycle, each sample its own run.
    samples: Samples = 1
    # The quality gate: the share of a cycle's items that must succeed before its analytics are pushed.
    min_completion: Annotated[float, Field(ge=0, le=1)] = 0.8
    # A cycle's spending limit in USD; past it the remaining purchases fail with "budget exhausted".
    budget_usd: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = None
    # Unset: each answer's own model extracts its claims (the behaviour before graders existed).
    grader: GraderSpec | None = None
    # Domains the org files under a citation category, before the built-in table.
    source_categories: SourceCategoriesSpec = SourceCategoriesSpec()
    # Unset: no questions come from segment ICPs.
    icp: IcpSpec | None = None

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        if not _ORG_ID.match(value):
            raise ValueError("must be lowercase letters, digits, '-' or '_' (at most 64), e.g. acme")
        return value

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, schedule: str | None) -> str | None:
        # Checked here so a bad cron fails `org load`, not a schedule tick days later.
        return None if schedule is None else parse_cron(schedule).expression

    @field_validator("locations", mode="before")
    @classmethod
    def _yaml_booleans(cls, locations: Any) -> Any:
        if isinstance(locations, list):
            for index, code in enumerate(locations):
                if isinstance(code, bool):  # YAML 1.1 reads an unquoted NO (Norway) as false
                    raise ValueError(
                        f"item {index}: {code!r} is a YAML boolean; quote country codes such as 'NO'"
                    )
        return locations

    @field_validator("locations")
    @classmethod
    def _locations(cls, locations: list[str]) -> list[str]:
        codes = []
        for index, code in enumerate(locations):
            upper = str(code).strip().upper()
            if upper not in ISO_COUNTRY_CODES:
                raise ValueError(f"item {index}: {shown(code)} is not an ISO 3166-1 alpha-2 country code")
            if upper in codes:
                raise ValueError(f"item {index}: duplicate country {upper}")
            codes.append(upper)
        return codes

    @field_validator("questions", mode="before")
    @classmethod
    def _plain_questions(cls, questions: Any) -> Any:
        # A plain string is a question's text: validated as one, so its errors name questions[i].text.
        if isinstance(questions, list):
            return [{"text": q} if isinstance(q, str) else q for q in questions]
        return questions

    @field_validator("questions")
    @classmethod
    def _questions(cls, specs: list[QuestionSpec]) -> list[QuestionSpec]:
        seen_text: dict[str, int] = {}
        seen_ids: dict[str, int] = {}
        for index, spec in enumerate(specs):
            normalized = normalized_question(spec.text)
            if normalized in seen_text:
                raise ValueError(f"item {index}: duplicate question (same as item {seen_text[normalized]})")
            seen_text[normalized] = index
            # Only explicit ids: computed keys are made unique when they are assigned (question_keys).
            if spec.id is not None:
                if spec.id in seen_ids:
                    raise ValueError(f"item {index}: duplicate question id {spec.id!r}")
                seen_ids[spec.id] = index
        return specs

    @model_validator(mode="after")
    def _unique_companies_and_models(self) -> "OrgSpec":
        names: set[str] = set()
        for company in [self.target, *self.competitors]:
            if company.name.lower() in names:
                raise ValueError(f"competitors: duplicate company name {company.name!r}")
            names.add(company.name.lower())
        slugs: set[str] = set()
        for model in self.models:
            slug = model_slug(model.provider, model.model)
            if slug in slugs:
                raise ValueError(f"models: duplicate model {model.provider}/{model.model}")
            slugs.add(slug)
        return self

    def samples_of(self, model: ModelSpec) -> int:
        """How many times a cycle asks each question of this model: its own `samples`, else the org's."""
        return model.samples or self.samples

    def question_specs(self) -> list[QuestionSpec]:
        return [q for q in self.questions if isinstance(q, QuestionSpec)]


class OrgFileError(ConfigFileError):
    kind = "org file"


def _describe(error: dict[str, Any]) -> str | None:
    if error["type"] == "literal_error" and error["loc"][-1] == "provider":
        return f"unknown provider {shown(error['input'])}; expected one of {', '.join(PROVIDERS)}"
    if error["type"] == "extra_forbidden" and error["loc"][:1] == ("source_categories",):
        return (
            f"unknown category {shown(error['loc'][-1])}; expected one of review, ugc, reference, "
            "news_blog, other (owned and competitor come from the companies' domains)"
        )
    if error["type"] == "string_type" and error["loc"] == ("schedule",):
        return f'{shown(error["input"])} is not a cron string; quote it, e.g. "30 9 * * 1-5"'
    return None


def parse_org_text(text: str, source: str = "<org file>") -> OrgSpec:
    expected = "id, name, target, models, locations, questions"
    spec = parse_yaml_model(text, source, OrgSpec, OrgFileError, expected, _describe)
    problems, _warnings = term_checks(spec)
    if problems:
        raise OrgFileError(source, problems)
    return spec


# --- Company terms: what mentions and citations match --------------------------------------------

# Words that never name a company on their own: a term made only of them would match ordinary prose
# ("Use the best tool" would count as a mention).
STOP_WORDS = frozenset(
    [
        "a",
        "an",
        "the",
        "and",
        "or",
        "nor",
        "but",
        "of",
        "to",
        "in",
        "on",
        "at",
        "by",
        "for",
        "from",
        "with",
        "without",
        "into",
        "onto",
        "over",
        "under",
        "about",
        "as",
        "is",
        "are",
        "was",
        "were",
        "be",
        "been",
        "being",
        "it",
        "its",
        "this",
        "that",
        "these",
        "those",
        "there",
        "here",
        "i",
        "me",
        "my",
        "we",
        "us",
        "our",
        "you",
        "your",
        "he",
        "him",
        "his",
        "she",
        "her",
        "they",
        "them",
        "their",
        "not",
        "no",
        "yes",
        "so",
        "if",
        "then",
        "than",
        "too",
        "very",
        "can",
        "could",
        "will",
        "would",
        "shall",
        "should",
        "may",
        "might",
        "must",
        "do",
        "does",
        "did",
        "done",
        "has",
        "have",
        "had",
        "all",
        "any",
        "some",
        "each",
        "every",
        "other",
        "such",
        "what",
        "which",
        "who",
        "whom",
        "whose",
        "when",
        "where",
        "why",
        "how",
    ]
)
# Common words that may be a company's name but also occur in answers about anything: warned, not refused.
COMMON_WORDS = frozenset(
    [
        "best",
        "top",
        "tool",
        "tools",
        "app",
        "apps",
        "data",
        "cloud",
        "analytics",
        "software",
        "platform",
        "free",
        "pro",
        "one",
        "go",
        "use",
        "new",
        "open",
        "good",
        "great",
        "better",
        "simple",
        "easy",
        "fast",
        "smart",
        "next",
        "first",
        "plus",
        "max",
        "ai",
        "api",
        "web",
        "online",
        "digital",
    ]
)


def _term(text: str) -> str:
    """A name or alias as mentions.py compares it: NFC, case-insensitive, whitespace collapsed."""
    return " ".join(unicodedata.normalize("NFC", text).casefold().split())


def _company_fields(spec: OrgSpec) -> list[tuple[str, CompanySpec]]:
    return [("target", spec.target)] + [(f"competitors[{i}]", c) for i, c in enumerate(spec.competitors)]


def _label(where: str, company: CompanySpec) -> str:
    return f"{'target' if where.startswith('target') else 'competitor'} {shown(company.name, 40)}"


def term_checks(spec: OrgSpec) -> tuple[list[str], list[str]]:
    """(problems, warnings) about the companies' names, aliases and domains. Refused: a term or domain
    shared by two companies, and a term that is only stop words or has no letter or digit, since a
    mention could not be attributed. Warned: a term containing another company's term as a whole
    word, a domain under another company's domain, and very short or common-word terms."""
    problems: list[str] = []
    warnings: list[str] = []
    terms: dict[str, tuple[str, CompanySpec]] = {}  # normalized term -> (field path, company)
    domains: dict[str, tuple[str, CompanySpec]] = {}
    for where, company in _company_fields(spec):
        entries = [(f"{where}.name", company.name)] + [
            (f"{where}.aliases[{i}]", alias) for i, alias in enumerate(company.aliases)
        ]
        for field, text in entries:
            term = _term(text)
            if not any(ch.isalnum() for ch in term):
                problems.append(f"{field}: {shown(text)} has no letter or digit, so it matches punctuation")
                continue
            if all(word in STOP_WORDS for word in term.split()):
                problems.append(
                    f"{field}: {shown(text)} is a common word ('the', 'a', ...) that any answer contains; "
                    "it cannot identify a company"
                )
                continue
            owner = terms.get(term)
            if owner is not None and owner[1] is not company:
                problems.append(
                    f"{field}: {shown(text)} is also a name or alias of {_label(*owner)} "
                    f"({owner[0]}); a mention could not tell them apart"
                )
                continue
            terms.setdefault(term, (field, company))
            if len(term) <= 2:
                warnings.append(f"{field}: {shown(text)} is very short; it may match unrelated words")
            elif term in COMMON_WORDS:
                warnings.append(f"{field}: {shown(text)} is a common word; it may match ordinary prose")
        for i, domain in enumerate(company.domains):
            field = f"{where}.domains[{i}]"
            owner = domains.get(domain)
            if owner is not None and owner[1] is not company:
                problems.append(f"{field}: {domain!r} is also a domain of {_label(*owner)} ({owner[0]})")
                continue
            domains.setdefault(domain, (field, company))
    for term, (field, company) in terms.items():
        for other in _inner_terms(term):
            other_field, other_company = terms.get(other, (field, company))
            if other_company is not company:
                warnings.append(
                    f"{field}: contains {shown(other, 40)} ({other_field}); an answer naming it also "
                    f"counts as a mention of {_label(other_field, other_company)}"
                )
    for domain, (field, company) in domains.items():
        for other, (other_field, other_company) in domains.items():
            if other_company is not company and domain.endswith("." + other):
                warnings.append(
                    f"{field}: {domain!r} is under {other!r} ({other_field}); a citation of it also "
                    f"counts for {_label(other_field, other_company)}"
                )
    return problems, warnings


def _inner_terms(term: str) -> set[str]:
    """Every run of whole words inside `term`, shorter than it: what mentions.py would also match there."""
    words = [(match.start(), match.end()) for match in _WORDS.finditer(term)]
    return {
        term[start:end]
        for i, (start, _) in enumerate(words)
        for _, end in words[i:]
        if end - start < len(term)
    }


def org_warnings(spec: OrgSpec) -> list[str]:
    """What `org load` warns about but accepts (see term_checks)."""
    return term_checks(spec)[1]


# --- Cycle size --------------------------------------------------------------------------------------


def runs_per_cycle(spec: OrgSpec, segment_questions: Sequence[str] = ()) -> int:
    """Question runs a cycle of this org opens: questions x locations x each model's samples. The
    questions are the file's plus `segment_questions` (the texts of the active questions generated
    from segment ICPs, which the database holds, not the file)."""
    samples = sum(map(spec.samples_of, spec.models))
    return (len(spec.question_specs()) + len(segment_questions)) * len(spec.locations) * samples


def cycle_estimate(spec: OrgSpec, segment_questions: Sequence[str] = ()) -> estimate.PurchaseEstimate:
    """What a full cycle would buy at list prices if every non-offline model is called for real: the
    file's questions and `segment_questions` (as runs_per_cycle counts them), each asked per model,
    location and sample."""
    texts = [question.text for question in spec.question_specs()] + list(segment_questions)
    total = estimate.PurchaseEstimate()
    for model in spec.models:
        grader = spec.grader or model
        calls = []
        for text in texts:
            chars = estimate.answer_chars(text)
            calls.append(estimate.PlannedCall("answer", model.provider, model.model, chars))
            calls.append(estimate.PlannedCall("claims", grader.provider, grader.model))
        part = estimate.estimate(calls, lambda provider, _model: provider != "offline")
        times = len(spec.locations) * spec.samples_of(model)
        total.answers += part.answers * times
        total.claims += part.claims * times
        total.live_calls += part.live_calls * times
        total.usd += part.usd * times
        total.unpriced |= part.unpriced
    return total


def large_cycle_problem(spec: OrgSpec, segment_questions: Sequence[str] = ()) -> str | None:
    """Why a cycle of this org is larger than MAX_RUNS_PER_CYCLE, with its estimated cost; None if not."""
    runs = runs_per_cycle(spec, segment_questions)
    if runs <= MAX_RUNS_PER_CYCLE:
        return None
    return (
        f"questions x models x locations x samples: {runs:,} question runs per cycle exceed the limit of "
        f"{MAX_RUNS_PER_CYCLE:,}; every cycle would buy {cycle_estimate(spec, segment_questions).describe()}. "
        "If that is deliberate, load it with `icp-pipeline org load --allow-large FILE`"
    )


def parse_org_file(path: Path) -> OrgSpec:
    return parse_org_text(read_text(path, OrgFileError), str(path))


def normalized_question(text: str) -> str:
    """Questions that differ only in case and whitespace are the same question."""
    return " ".join(text.lower().split())


def question_keys(questions: list[QuestionSpec], existing: Any) -> list[str]:
    """Each question's key. `existing` holds the org's stored (key, text, active) rows.

    A question keeps the key stored for its text (keys from before 12-hex keys included), so past runs
    stay its own; an explicit `id` is its key; a new text gets question_key(text). A key already stored
    for a different text, or taken in this file, is never reused: `-2`, `-3`, ... is appended, so a
    changed text never inherits another question's history."""
    stored_text = {key: normalized_question(text) for key, text, _active in existing}
    stored_key: dict[str, str] = {}
    for key, text, _active in sorted(existing, key=lambda row: row[2]):  # an active row wins
        stored_key[normalized_question(text)] = key
    used = {q.id for q in questions if q.id is not None}
    keys = []
    for question in questions:
        if question.id is not None:
            keys.append(question.id)
            continue
        text = normalized_question(question.text)
        key = stored_key.get(text)
        if key is None or key in used:
            base = key = question_key(question.text)
            suffix = 1
            while key in used or stored_text.get(key, text) != text:
                suffix += 1
                key = f"{base}-{suffix}"
        used.add(key)
        keys.append(key)
    return keys


def config_sha256(spec: OrgSpec) -> str:
    data = spec.model_dump(mode="json")
    if not spec.source_categories.mapping():
        del data["source_categories"]  # files without it keep the digest they had before it existed
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def upsert_org(session: Session, spec: OrgSpec) -> dict[str, int]:
    """Make the database match the org file. Removed entries are deactivated, never deleted,
    so past runs keep their references. Returns counts of what changed."""
    changes = {"created": 0, "updated": 0, "deactivated": 0}
    org = session.get(Org, spec.id)
    if org is None:
        org = Org(id=spec.id, name=spec.name, config_sha256="")
        session.add(org)
        changes["created"] += 1
    # Before the digest check: files loaded before orgs.cycle_cron existed already hashed their schedule.
    if org.cycle_cron != spec.schedule:
        changes["updated"] += int(not changes["created"])
        org.cycle_cron = spec.schedule
    # Before the digest check, like the schedule: plain org settings that files loaded before their
    # column existed may already carry.
    settings = {
        "min_runs": spec.min_runs,
        "samples": spec.samples,
        "min_completion": spec.min_completion,
        "budget_usd": spec.budget_usd,
        "grader_provider": spec.grader.provider if spec.grader else None,
        "grader_model": spec.grader.model if spec.grader else None,
        "icp_site_id": spec.icp.site if spec.icp else None,
        "icp_questions_per_segment": spec.icp.questions_per_segment if spec.icp else 5,
        "icp_activate": spec.icp.activate if spec.icp else "auto",
        "source_categories": spec.source_categories.mapping(),
    }
    for name, value in settings.items():
        if getattr(org, name) != value:
            changes["updated"] += int(not changes["created"])
            setattr(org, name, value)
    digest = config_sha256(spec)
    if org.config_sha256 == digest:
        return changes
    org.name = spec.name
    org.config_sha256 = digest

    def sync(model: type, existing_key: str, wanted: dict[str, dict[str, Any]], *where: Any) -> None:
        rows = {
            getattr(row, existing_key): row
            for row in session.scalars(select(model).where(model.org_id == spec.id, *where))
        }
        for key, values in wanted.items():
            row = rows.get(key)
            if row is None:
                session.add(model(org_id=spec.id, **{existing_key: key}, **values, active=True))
                changes["created"] += 1
                continue
            dirty = not row.active or any(getattr(row, k) != v for k, v in values.items())
            for name, value in values.items():
                setattr(row, name, value)
            row.active = True
            changes["updated"] += int(dirty)
        for key, row in rows.items():
            if key not in wanted and row.active:
                row.active = False
                if model is Question:
                    row.status = "retired"
                changes["deactivated"] += 1

    companies = {
        spec.target.name: {"is_target": True, "aliases": spec.target.aliases, "domains": spec.target.domains}
    }
    for competitor in spec.competitors:
        companies[competitor.name] = {
            "is_target": False,
            "aliases": competitor.aliases,
            "domains": competitor.domains,
        }
    sync(Company, "name", companies)
    sync(
        OrgModel,
        "slug",
        {
            model_slug(m.provider, m.model): {
                "provider": m.provider,
                "model": m.model,
                "web_search": m.web_search,
                "max_output_tokens": m.max_output_tokens,
                "samples": m.samples,
            }
            for m in spec.models
        },
    )
    sync(OrgLocation, "country_code", {code: {} for code in spec.locations})
    # The file manages its own questions only: questions generated from segment ICPs (keys `s-...`,
    # never `q-...`) are kept, retired or approved by segment_questions and `org questions`.
    from_file = Question.source == "file"
    existing = session.execute(
        select(Question.key, Question.text, Question.active).where(Question.org_id == spec.id, from_file)
    ).all()
    questions = spec.question_specs()
    sync(
        Question,
        "key",
        {
            key: {"text": q.text, "position": position, "status": "active"}
            for position, (key, q) in enumerate(
                zip(question_keys(questions, existing), questions, strict=True)
            )
        },
        from_file,
    )
    session.flush()
    return changes
