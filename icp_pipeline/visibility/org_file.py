"""The org file: a YAML description of an org, validated with pydantic and upserted idempotently."""

import hashlib
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from sqlalchemy import select
from sqlalchemy.orm import Session

from icp_pipeline.config_files import ConfigFileError, parse_yaml_model, read_text
from icp_pipeline.db.models import Company, Org, OrgLocation, OrgModel, Question
from icp_pipeline.visibility.countries import ISO_COUNTRY_CODES
from icp_pipeline.visibility.keys import model_slug, question_key
from icp_pipeline.visibility.schedule import parse_cron

PROVIDERS = ("openai", "anthropic", "gemini", "offline")
_ORG_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_DOMAIN = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")

NonEmpty = Annotated[str, Field(min_length=1, max_length=200)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class CompanySpec(_Strict):
    name: NonEmpty
    aliases: list[NonEmpty] = []
    domains: list[str] = []

    @field_validator("domains")
    @classmethod
    def _domains(cls, domains: list[str]) -> list[str]:
        cleaned = []
        for domain in domains:
            value = domain.strip().lower().removeprefix("www.")
            if not _DOMAIN.match(value):
                raise ValueError(f"{domain!r} is not a bare domain such as acme.io")
            cleaned.append(value)
        return cleaned


# An answer's output-token budget (reasoning included) set per model in the org file.
MIN_ANSWER_TOKENS = 256
MAX_ANSWER_TOKENS = 128_000


# How many times a cycle may ask one question x model x location (`samples`, org-wide or per model).
MAX_SAMPLES = 10
Samples = Annotated[int, Field(ge=1, le=MAX_SAMPLES, strict=True)]
ModelName = Annotated[str, Field(min_length=1, max_length=120)]  # org_models.model is String(120)


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
    text: Annotated[str, Field(min_length=3, max_length=2000)]


class OrgSpec(_Strict):
    id: str
    name: NonEmpty
    target: CompanySpec
    competitors: list[CompanySpec] = []
    models: Annotated[list[ModelSpec], Field(min_length=1)]
    locations: Annotated[list[str], Field(min_length=1)]
    questions: Annotated[list[QuestionSpec | str], Field(min_length=1)]
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
                raise ValueError(f"item {index}: {code!r} is not an ISO 3166-1 alpha-2 country code")
            if upper in codes:
                raise ValueError(f"item {index}: duplicate country {upper}")
            codes.append(upper)
        return codes

    @field_validator("questions")
    @classmethod
    def _questions(cls, questions: list[QuestionSpec | str]) -> list[QuestionSpec]:
        specs = [QuestionSpec(text=q) if isinstance(q, str) else q for q in questions]
        seen_text: dict[str, int] = {}
        seen_ids: dict[str, int] = {}
        for index, spec in enumerate(specs):
            normalized = " ".join(spec.text.lower().split())
            if normalized in seen_text:
                raise ValueError(f"item {index}: duplicate question (same as item {seen_text[normalized]})")
            seen_text[normalized] = index
            key = spec.id or question_key(spec.text)
            if key in seen_ids:
                raise ValueError(f"item {index}: duplicate question id {key!r}")
            seen_ids[key] = index
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

    def question_specs(self) -> list[QuestionSpec]:
        return [q for q in self.questions if isinstance(q, QuestionSpec)]


class OrgFileError(ConfigFileError):
    kind = "org file"


def _describe(error: dict[str, Any]) -> str | None:
    if error["type"] == "literal_error" and error["loc"][-1] == "provider":
        return f"unknown provider {error['input']!r}; expected one of {', '.join(PROVIDERS)}"
    if error["type"] == "string_type" and error["loc"] == ("schedule",):
        return f'{error["input"]!r} is not a cron string; quote it, e.g. "30 9 * * 1-5"'
    return None


def parse_org_text(text: str, source: str = "<org file>") -> OrgSpec:
    expected = "id, name, target, models, locations, questions"
    return parse_yaml_model(text, source, OrgSpec, OrgFileError, expected, _describe)


def parse_org_file(path: Path) -> OrgSpec:
    return parse_org_text(read_text(path, OrgFileError), str(path))


def config_sha256(spec: OrgSpec) -> str:
    return hashlib.sha256(json.dumps(spec.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()


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

    def sync(model: type, existing_key: str, wanted: dict[str, dict[str, Any]]) -> None:
        rows = {
            getattr(row, existing_key): row
            for row in session.scalars(select(model).where(model.org_id == spec.id))
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
    sync(
        Question,
        "key",
        {
            (q.id or question_key(q.text)): {"text": q.text, "position": position}
            for position, q in enumerate(spec.question_specs())
        },
    )
    session.flush()
    return changes
