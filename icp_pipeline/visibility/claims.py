"""The structured output of the claims extraction, validated against the run's own citations, and
the choice of the model that extracts it (the grader)."""

from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import BaseModel, Field, ValidationInfo, field_validator

from icp_pipeline.ledger import purchase_subject
from icp_pipeline.visibility.citations import normalize_url

CLAIMS_VERSION = "claims-1"


class ExtractedClaim(BaseModel):
    text: Annotated[str, Field(min_length=1, max_length=4000)]
    company: Annotated[str, Field(min_length=1, max_length=200)]
    sentiment: Literal["positive", "neutral", "negative"]
    supporting_urls: list[str] = []

    @field_validator("supporting_urls")
    @classmethod
    def _among_citations(cls, urls: list[str], info: ValidationInfo) -> list[str]:
        allowed = (info.context or {}).get("citations")
        normalized = [normalize_url(url) or url for url in urls]
        if allowed is not None:
            unknown = [url for url in normalized if url not in allowed]
            if unknown:
                raise ValueError(f"not among the run's citations: {', '.join(unknown)}")
        return list(dict.fromkeys(normalized))


class ClaimExtraction(BaseModel):
    claims: list[ExtractedClaim]


@dataclass(frozen=True)
class Grader:
    """The model that extracts a run's claims and judges their sentiment."""

    provider: str
    model: str

    @property
    def label(self) -> str:
        return f"{self.provider}/{self.model}"


def org_grader(provider: str | None, model: str | None) -> Grader | None:
    """The org file's `grader` as stored on the org; None when unset."""
    return Grader(provider, model) if provider and model else None


def grader_for(configured: Grader | None, answer_provider: str, answer_model: str) -> Grader:
    """The org's grader when it has one, the same for every answering model (so comparisons across
    models do not mix in grader bias); without one, the model that answered grades its own answer."""
    return configured or Grader(answer_provider, answer_model)


def claims_subject(item_id: int, grader: Grader, answer_provider: str, answer_model: str) -> str:
    """The ledger subject of one run's claims purchase. Graded by its own answering model it stays
    `claims:<item>`, the subject of every purchase made before graders existed, so those are still
    reused. Any other grader has a subject of its own: claims bought from one model are never taken
    for another model's, and one grader buys a run's claims at most once."""
    if grader == Grader(answer_provider, answer_model):
        return purchase_subject("claims", item_id)
    return purchase_subject("claims", item_id, "grader", grader.provider, grader.model)
