"""The structured output of the claims extraction, validated against the run's own citations."""

from typing import Annotated, Literal

from pydantic import BaseModel, Field, ValidationInfo, field_validator

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
