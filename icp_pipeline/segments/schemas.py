"""What the models must return for segments, ICP builds and the site summary (validated with pydantic)."""

from typing import Annotated, Literal

from pydantic import BaseModel, Field

Text = Annotated[str, Field(min_length=1, max_length=2000)]
Unit = Annotated[float, Field(ge=0, le=1)]

ICP_VERSION = "icp-1"


class GeneratedSegment(BaseModel):
    name: Annotated[str, Field(min_length=2, max_length=120)]
    description: Text
    why_it_fits: Text


class SegmentList(BaseModel):
    segments: Annotated[list[GeneratedSegment], Field(min_length=1, max_length=8)]


class Firmographics(BaseModel):
    industries: list[str]
    company_size: str
    revenue_band: str
    regions: list[str]
    growth_stage: str


class CommitteeMember(BaseModel):
    role: str
    seniority: str
    decision_power: Literal["low", "medium", "high"]


class BuyingCommittee(BaseModel):
    roles: Annotated[list[CommitteeMember], Field(min_length=1)]
    champion: str
    economic_buyer: str
    blocker: str


class FitCriterion(BaseModel):
    criterion: str
    weight: Unit


class ICPProfile(BaseModel):
    segment_name: str
    summary: Text
    firmographics: Firmographics
    buying_committee: BuyingCommittee
    pains: list[str]
    jobs_to_be_done: list[str]
    desired_outcomes: list[str]
    buying_triggers: list[str]
    objections: list[str]
    current_alternatives: list[str]
    research_channels: list[str]
    messaging_hooks: list[str]
    disqualifiers: list[str]
    fit_criteria: Annotated[list[FitCriterion], Field(min_length=1)]
    vocabulary: list[str]
    confidence: Unit


class SiteFitAnalysis(BaseModel):
    fit_score: Unit
    how_well_served: Text
    strengths: list[str]
    gaps: list[str]
    recommended_changes: list[str]


class SegmentICP(BaseModel):
    profile: ICPProfile
    analysis: SiteFitAnalysis


class RankedSegment(BaseModel):
    """The model's word on one segment. `segment_id` may hold the id or the name; rank and score are
    advisory: the stored ranking is computed from the profiles (segments/comparison.py)."""

    segment_id: str
    rank: int
    fit_score: float
    reason: Text


class SegmentOverlap(BaseModel):
    segment_ids: list[str]
    description: Text


class SiteComparison(BaseModel):
    """The model's narrative of the site comparison. Only the summary is required; references to
    segments that were not built are dropped with a warning when it is combined with the profiles."""

    summary: Text
    ranking: list[RankedSegment] = []
    overlaps: list[SegmentOverlap] = []
    recommendations: list[str] = []


class GeneratedQuestion(BaseModel):
    """A buyer question in a segment's own words, and the buying-committee role who would ask it."""

    text: Annotated[str, Field(min_length=3, max_length=500)]
    persona_role: Annotated[str, Field(max_length=200)] | None = None


class SegmentQuestions(BaseModel):
    questions: Annotated[list[GeneratedQuestion], Field(min_length=1, max_length=20)]
