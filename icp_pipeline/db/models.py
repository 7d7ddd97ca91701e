"""The app database: org configuration, cycle manifests, the model-call ledger and everything derived.

Design notes:
- `model_calls` is the purchase ledger. Every purchase (an answer, claims, segments, an ICP, a
  summary) has a subject and is bought once; every later step reads the ledger, so retries and
  re-materializations never pay twice.
- A cycle item is one (question, model, location, sample) of a cycle. `sample_index` lets a later
  feature take several samples of a combination in one cycle without a schema rewrite.
- Derived rows (mentions, citations, claims, metrics) carry the version of the code that produced
  them and are replaced as a whole per run, so re-materializing never duplicates them.
"""

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.sql import false


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON, datetime: DateTime(timezone=True)}


class Org(Base):
    __tablename__ = "orgs"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    config_sha256: Mapped[str] = mapped_column(String(64))
    # The org file's `schedule`: this org's cycle cron; null means the default (ICP_ORG_CYCLE_CRON).
    cycle_cron: Mapped[str | None] = mapped_column(String(200), nullable=True)
    # The org file's `min_runs`: below it a company row is flagged insufficient_data.
    min_runs: Mapped[int] = mapped_column(Integer, default=10, server_default="10")
    # The org file's `samples`: how many times a cycle asks each question x model x location.
    samples: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    # The org file's `min_completion`: the share of a cycle's items that must succeed before a push.
    min_completion: Mapped[float] = mapped_column(Float, default=0.8, server_default="0.8")
    # The org file's `budget_usd`: a cycle's spending limit; null means no limit.
    budget_usd: Mapped[float | None] = mapped_column(Float, nullable=True)
    # The org file's `grader`: the one model that extracts claims and sentiment for every answer;
    # null means each answer's own model grades it.
    grader_provider: Mapped[str | None] = mapped_column(String(32), nullable=True)
    grader_model: Mapped[str | None] = mapped_column(String(120), nullable=True)
    # The org file's `icp:` block: the site whose segments propose questions, how many per segment,
    # and whether they are asked at once (auto) or wait for `org questions --approve` (review).
    icp_site_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    icp_questions_per_segment: Mapped[int] = mapped_column(Integer, default=5, server_default="5")
    icp_activate: Mapped[str] = mapped_column(String(8), default="auto", server_default="auto")
    # The org file's `source_categories`: its additions to the citation categories' domain table.
    source_categories: Mapped[dict[str, Any]] = mapped_column(default=dict, server_default="{}")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    companies: Mapped[list["Company"]] = relationship(back_populates="org", order_by="Company.id")
    models: Mapped[list["OrgModel"]] = relationship(order_by="OrgModel.id")
    locations: Mapped[list["OrgLocation"]] = relationship(order_by="OrgLocation.id")
    questions: Mapped[list["Question"]] = relationship(order_by="Question.position")


class Company(Base):
    __tablename__ = "companies"
    __table_args__ = (UniqueConstraint("org_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("orgs.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    is_target: Mapped[bool] = mapped_column(Boolean, default=False)
    aliases: Mapped[list[Any]] = mapped_column(default=list)
    domains: Mapped[list[Any]] = mapped_column(default=list)
    active: Mapped[bool] = mapped_column(Boolean, default=True)

    org: Mapped[Org] = relationship(back_populates="companies")


class OrgModel(Base):
    __tablename__ = "org_models"
    __table_args__ = (UniqueConstraint("org_id", "slug"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("orgs.id", ondelete="CASCADE"), index=True)
    provider: Mapped[str] = mapped_column(String(32))
    model: Mapped[str] = mapped_column(String(120))
    slug: Mapped[str] = mapped_column(String(160))
    web_search: Mapped[bool] = mapped_column(Boolean, default=False)
    # The org file's models[].max_output_tokens: this model's answer budget; null = the default.
    max_output_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # The org file's models[].samples: this model's samples per combination; null = the org's.
    samples: Mapped[int | None] = mapped_column(Integer, nullable=True)
    active: Mapped[bool] = mapped_column(Boolean, default=True)


class OrgLocation(Base):
    __tablename__ = "org_locations"
    __table_args__ = (UniqueConstraint("org_id", "country_code"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("orgs.id", ondelete="CASCADE"), index=True)
    country_code: Mapped[str] = mapped_column(String(2))
    active: Mapped[bool] = mapped_column(Boolean, default=True)


class Question(Base):
    __tablename__ = "questions"
    __table_args__ = (UniqueConstraint("org_id", "key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("orgs.id", ondelete="CASCADE"), index=True)
    key: Mapped[str] = mapped_column(String(64))
    text: Mapped[str] = mapped_column(Text)
    position: Mapped[int] = mapped_column(Integer, default=0)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    # file (the org file) | segment (generated from a segment's ICP).
    source: Mapped[str] = mapped_column(String(16), default="file", server_default="file")
    segment_id: Mapped[int | None] = mapped_column(
        ForeignKey("segments.id", ondelete="SET NULL"), nullable=True, index=True
    )
    persona_role: Mapped[str | None] = mapped_column(String(200), nullable=True)
    # active (asked) | proposed (awaiting approval) | retired (no longer proposed; history kept).
    status: Mapped[str] = mapped_column(String(16), default="active", server_default="active")
    # The ICP build a generated question came from (a digest of its profile).
    icp_digest: Mapped[str | None] = mapped_column(String(64), nullable=True)


class Cycle(Base):
    """The processing manifest of one cycle of an org."""

    __tablename__ = "cycles"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("orgs.id", ondelete="CASCADE"), index=True)
    status: Mapped[str] = mapped_column(String(16), default="running")  # running | succeeded | failed
    samples_per_item: Mapped[int] = mapped_column(Integer, default=1)
    total: Mapped[int] = mapped_column(Integer, default=0)
    completed: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    completed_at: Mapped[datetime | None] = mapped_column(nullable=True)
    # Set once by whoever first requests the org roll-ups, so they run once per cycle.
    rollup_requested_at: Mapped[datetime | None] = mapped_column(nullable=True)

    items: Mapped[list["CycleItem"]] = relationship(back_populates="cycle", order_by="CycleItem.id")


class CycleItem(Base):
    __tablename__ = "cycle_items"
    __table_args__ = (
        UniqueConstraint("cycle_id", "partition_key", "sample_index"),
        Index("ix_cycle_items_partition_key", "partition_key"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    cycle_id: Mapped[int] = mapped_column(ForeignKey("cycles.id", ondelete="CASCADE"), index=True)
    partition_key: Mapped[str] = mapped_column(String(400))
    question_id: Mapped[int] = mapped_column(ForeignKey("questions.id"))
    model_id: Mapped[int] = mapped_column(ForeignKey("org_models.id"))
    location_id: Mapped[int] = mapped_column(ForeignKey("org_locations.id"))
    sample_index: Mapped[int] = mapped_column(Integer, default=0)
    # pending | answered | succeeded | failed
    status: Mapped[str] = mapped_column(String(16), default="pending")
    failed_step: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    cycle: Mapped[Cycle] = relationship(back_populates="items")
    question: Mapped[Question] = relationship()
    model: Mapped[OrgModel] = relationship()
    location: Mapped[OrgLocation] = relationship()


class PurchaseClaim(Base):
    """Who is buying a purchase subject right now. Two runs (a backfill and a CLI run, say) must not both
    pay for it: the first takes the claim, the other waits for the ledger."""

    __tablename__ = "purchase_claims"

    # e.g. "answer:<cycle item id>", "claims:<cycle item id>", "icp:<segment id>:<inputs digest>"
    subject: Mapped[str] = mapped_column(String(200), primary_key=True)
    claimant: Mapped[str] = mapped_column(String(120))  # the Dagster run group (root run id)
    claimed_at: Mapped[datetime] = mapped_column()


class ModelCall(Base):
    """Ledger of every model call, written the moment it returns: paid or not, finished or not.

    A purchase is one `subject` (see PurchaseClaim); its rows are the calls made for it (a paused turn
    and its continuations, a structured reply and its repair). Only a row with `ok` (a complete turn)
    is an answer and can be reused; every row with `paid` was billed and counts in the costs.
    """

    __tablename__ = "model_calls"
    __table_args__ = (
        Index("ix_model_calls_item_purpose", "cycle_item_id", "purpose"),
        Index("ix_model_calls_subject", "subject"),
        # Idempotency key of one returned call: a write retried after an unacknowledged commit, or a
        # spooled call replayed twice, never makes a second row.
        Index("ux_model_calls_call_uid", "call_uid", unique=True),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    cycle_item_id: Mapped[int | None] = mapped_column(
        ForeignKey("cycle_items.id", ondelete="CASCADE"), nullable=True
    )
    # ICP calls belong to a site and, for a segment's build, to that segment.
    site_id: Mapped[str | None] = mapped_column(ForeignKey("sites.id", ondelete="CASCADE"), nullable=True)
    segment_id: Mapped[int | None] = mapped_column(
        ForeignKey("segments.id", ondelete="CASCADE"), nullable=True
    )
    subject: Mapped[str | None] = mapped_column(String(200), nullable=True)  # the purchase it belongs to
    call_uid: Mapped[str | None] = mapped_column(String(36), nullable=True)
    purpose: Mapped[str] = mapped_column(String(32))  # answer | claims | ...
    provider: Mapped[str] = mapped_column(String(32))
    requested_model: Mapped[str] = mapped_column(String(120))
    response_model: Mapped[str | None] = mapped_column(String(160), nullable=True)
    prompt: Mapped[str] = mapped_column(Text, default="")
    ok: Mapped[bool] = mapped_column(Boolean, default=True)  # a complete turn: the only reusable rows
    paid: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())  # a reply was billed
    # How the turn finished (complete | paused | truncated | refused | empty) and the provider's word.
    finish: Mapped[str | None] = mapped_column(String(16), nullable=True)
    finish_reason: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # Text as stored: lone surrogates and NUL (rejected by SQLite's UTF-8 encoder or PostgreSQL's text)
    # are written as \uXXXX escapes; `exact_text` then holds the exact text (UTF-8, surrogatepass).
    output_text: Mapped[str | None] = mapped_column(Text, nullable=True)
    exact_text: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    # The parsed response, in a json column (jsonb rejects \u0000 and lone surrogates).
    raw_response: Mapped[dict[str, Any] | None] = mapped_column(nullable=True)
    raw_body: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)  # the exact HTTP body
    # A paused turn's `continuation`, so a later attempt continues it instead of buying it again.
    continuation: Mapped[Any | None] = mapped_column(JSON, nullable=True)
    # Provider citation annotations: [{url, title, cited}]
    source_citations: Mapped[list[Any]] = mapped_column(default=list)
    input_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    cached_input_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    cache_write_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    output_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    cost_usd: Mapped[float | None] = mapped_column(Float, nullable=True)  # None = unknown, not zero
    latency_ms: Mapped[int | None] = mapped_column(Integer, nullable=True)
    web_search: Mapped[bool] = mapped_column(Boolean, default=False)
    location_mode: Mapped[str | None] = mapped_column(String(32), nullable=True)
    synthetic: Mapped[bool] = mapped_column(Boolean, default=False)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime] = mapped_column(default=utcnow)


class QuestionRun(Base):
    """The stored run record of one cycle item, built from its answer in the ledger."""

    __tablename__ = "question_runs"
    __table_args__ = (Index("ix_question_runs_org_latest", "org_id", "is_latest"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    cycle_item_id: Mapped[int] = mapped_column(ForeignKey("cycle_items.id", ondelete="CASCADE"), unique=True)
    answer_call_id: Mapped[int | None] = mapped_column(ForeignKey("model_calls.id"), nullable=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("orgs.id", ondelete="CASCADE"))
    cycle_id: Mapped[int] = mapped_column(ForeignKey("cycles.id", ondelete="CASCADE"), index=True)
    partition_key: Mapped[str] = mapped_column(String(400), index=True)
    question_id: Mapped[int] = mapped_column(ForeignKey("questions.id"))
    model_id: Mapped[int] = mapped_column(ForeignKey("org_models.id"))
    location_id: Mapped[int] = mapped_column(ForeignKey("org_locations.id"))
    sample_index: Mapped[int] = mapped_column(Integer, default=0)
    status: Mapped[str] = mapped_column(String(16), default="stored")  # stored | completed | failed
    prompt: Mapped[str] = mapped_column(Text, default="")
    answer_text: Mapped[str | None] = mapped_column(Text, nullable=True)
    raw_response: Mapped[dict[str, Any] | None] = mapped_column(nullable=True)
    provider: Mapped[str] = mapped_column(String(32))
    requested_model: Mapped[str] = mapped_column(String(120))
    response_model: Mapped[str | None] = mapped_column(String(160), nullable=True)
    web_search: Mapped[bool] = mapped_column(Boolean, default=False)
    location_mode: Mapped[str | None] = mapped_column(String(32), nullable=True)
    synthetic: Mapped[bool] = mapped_column(Boolean, default=False)
    input_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    output_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    cost_usd: Mapped[float | None] = mapped_column(Float, nullable=True)
    latency_ms: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    raw_output_text: Mapped[str | None] = mapped_column(Text, nullable=True)
    is_latest: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    completed_at: Mapped[datetime | None] = mapped_column(nullable=True)
    # What each deterministic step last applied to the run: its extractor version and a hash of the
    # org evidence it read (steps.replay_stamps). NULL = unknown (before 0011, or invalidated).
    mentions_stamp: Mapped[str | None] = mapped_column(String(120), nullable=True)
    citations_stamp: Mapped[str | None] = mapped_column(String(120), nullable=True)
    metrics_stamp: Mapped[str | None] = mapped_column(String(120), nullable=True)

    item: Mapped[CycleItem] = relationship()
    model: Mapped[OrgModel] = relationship()
    location: Mapped[OrgLocation] = relationship()
    question: Mapped[Question] = relationship()


class Mention(Base):
    __tablename__ = "mentions"
    __table_args__ = (UniqueConstraint("question_run_id", "company_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    question_run_id: Mapped[int] = mapped_column(
        ForeignKey("question_runs.id", ondelete="CASCADE"), index=True
    )
    company_id: Mapped[int] = mapped_column(ForeignKey("companies.id", ondelete="CASCADE"))
    first_offset: Mapped[int] = mapped_column(Integer)
    mention_count: Mapped[int] = mapped_column(Integer)
    matched_text: Mapped[str] = mapped_column(String(200))
    position: Mapped[int] = mapped_column(Integer)
    extractor_version: Mapped[str] = mapped_column(String(32))


class Citation(Base):
    __tablename__ = "citations"
    __table_args__ = (UniqueConstraint("question_run_id", "url"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    question_run_id: Mapped[int] = mapped_column(
        ForeignKey("question_runs.id", ondelete="CASCADE"), index=True
    )
    url: Mapped[str] = mapped_column(Text)
    host: Mapped[str] = mapped_column(String(255))
    domain: Mapped[str] = mapped_column(String(255))
    title: Mapped[str | None] = mapped_column(Text, nullable=True)
    source: Mapped[str] = mapped_column(String(16))  # annotation | answer_text
    cited: Mapped[bool] = mapped_column(Boolean, default=True)  # False: retrieved, not cited
    extractor_version: Mapped[str] = mapped_column(String(32))
    # owned | competitor | review | ugc | reference | news_blog | other (visibility/citations.py).
    category: Mapped[str | None] = mapped_column(String(16), nullable=True)


class SearchQuery(Base):
    """A web search an engine ran for an answer (search fan-out), read from the stored raw response."""

    __tablename__ = "search_queries"
    __table_args__ = (UniqueConstraint("question_run_id", "position"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    question_run_id: Mapped[int] = mapped_column(
        ForeignKey("question_runs.id", ondelete="CASCADE"), index=True
    )
    position: Mapped[int] = mapped_column(Integer)
    provider: Mapped[str] = mapped_column(String(32))
    query: Mapped[str] = mapped_column(Text)
    extractor_version: Mapped[str] = mapped_column(String(32))


class UntrackedMention(Base):
    """A company an answer names that the org does not track (source: claim | text)."""

    __tablename__ = "untracked_mentions"
    __table_args__ = (UniqueConstraint("question_run_id", "name_key", "source"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    question_run_id: Mapped[int] = mapped_column(
        ForeignKey("question_runs.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(200))
    name_key: Mapped[str] = mapped_column(String(200))  # normalised: casefolded, legal suffixes dropped
    source: Mapped[str] = mapped_column(String(16))
    occurrences: Mapped[int] = mapped_column(Integer)
    extractor_version: Mapped[str] = mapped_column(String(32))


class Claim(Base):
    __tablename__ = "claims"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    question_run_id: Mapped[int] = mapped_column(
        ForeignKey("question_runs.id", ondelete="CASCADE"), index=True
    )
    model_call_id: Mapped[int | None] = mapped_column(ForeignKey("model_calls.id"), nullable=True)
    company_id: Mapped[int | None] = mapped_column(
        ForeignKey("companies.id", ondelete="SET NULL"), nullable=True
    )
    company_name: Mapped[str] = mapped_column(String(200))
    text: Mapped[str] = mapped_column(Text)
    sentiment: Mapped[str] = mapped_column(String(16))
    supporting_urls: Mapped[list[Any]] = mapped_column(default=list)
    extractor_version: Mapped[str] = mapped_column(String(32))


class CompetitiveMetric(Base):
    __tablename__ = "competitive_metrics"
    __table_args__ = (UniqueConstraint("question_run_id", "company_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    question_run_id: Mapped[int] = mapped_column(
        ForeignKey("question_runs.id", ondelete="CASCADE"), index=True
    )
    company_id: Mapped[int] = mapped_column(ForeignKey("companies.id", ondelete="CASCADE"))
    mentioned: Mapped[bool] = mapped_column(Boolean)
    mention_count: Mapped[int] = mapped_column(Integer, default=0)
    position: Mapped[int | None] = mapped_column(Integer, nullable=True)
    cited: Mapped[bool] = mapped_column(Boolean)
    citation_count: Mapped[int] = mapped_column(Integer, default=0)
    positive_claims: Mapped[int] = mapped_column(Integer, default=0)
    neutral_claims: Mapped[int] = mapped_column(Integer, default=0)
    negative_claims: Mapped[int] = mapped_column(Integer, default=0)
    metrics_version: Mapped[str] = mapped_column(String(32))


class AnalyticsSnapshot(Base):
    __tablename__ = "analytics_snapshots"
    __table_args__ = (UniqueConstraint("org_id", "cycle_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("orgs.id", ondelete="CASCADE"), index=True)
    cycle_id: Mapped[int] = mapped_column(ForeignKey("cycles.id", ondelete="CASCADE"))
    payload: Mapped[dict[str, Any]] = mapped_column()
    analytics_version: Mapped[str] = mapped_column(String(32))
    generated_at: Mapped[datetime] = mapped_column(default=utcnow)


class PushDelivery(Base):
    """One delivery attempt of an org's analytics; every attempt is kept."""

    __tablename__ = "push_deliveries"
    __table_args__ = (Index("ix_push_deliveries_key", "idempotency_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("orgs.id", ondelete="CASCADE"), index=True)
    cycle_id: Mapped[int] = mapped_column(ForeignKey("cycles.id", ondelete="CASCADE"))
    snapshot_id: Mapped[int] = mapped_column(ForeignKey("analytics_snapshots.id", ondelete="CASCADE"))
    idempotency_key: Mapped[str] = mapped_column(String(200))
    target: Mapped[str] = mapped_column(String(16))  # webhook | outbox
    destination: Mapped[str] = mapped_column(Text)  # redacted URL or outbox file path
    attempt: Mapped[int] = mapped_column(Integer)
    ok: Mapped[bool] = mapped_column(Boolean)
    status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    payload_sha256: Mapped[str] = mapped_column(String(64))
    duration_ms: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class RunFailure(Base):
    """A failed Dagster run, recorded once by the failure sensor, with how its alert went."""

    __tablename__ = "run_failures"

    run_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    job_name: Mapped[str] = mapped_column(String(200))
    partition_key: Mapped[str | None] = mapped_column(String(400), nullable=True, index=True)
    error: Mapped[str] = mapped_column(Text)
    failed_at: Mapped[datetime] = mapped_column(default=utcnow)
    # pending | sent | failed | off | quality_gate (a roll-up stopped only by gates, which alerted themselves)
    alert_status: Mapped[str] = mapped_column(String(16), default="pending")
    alert_attempts: Mapped[int] = mapped_column(Integer, default=0)
    alert_error: Mapped[str | None] = mapped_column(Text, nullable=True)


class QualityAlert(Base):
    """A failed quality gate of a cycle, posted to the alert webhook once per cycle and check."""

    __tablename__ = "quality_alerts"
    __table_args__ = (UniqueConstraint("cycle_id", "check_name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("orgs.id", ondelete="CASCADE"), index=True)
    cycle_id: Mapped[int] = mapped_column(ForeignKey("cycles.id", ondelete="CASCADE"))
    check_name: Mapped[str] = mapped_column(String(64))
    severity: Mapped[str] = mapped_column(String(8))  # ERROR (blocking) | WARN
    description: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending | sent | failed | off
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(nullable=True)


# --- ICP segments ---------------------------------------------------------------------------------


class Site(Base):
    __tablename__ = "sites"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    url: Mapped[str] = mapped_column(Text)
    description: Mapped[str] = mapped_column(Text)
    pages: Mapped[list[Any]] = mapped_column(default=list)  # [{url, text}]
    config_sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Segment(Base):
    __tablename__ = "segments"
    __table_args__ = (UniqueConstraint("site_id", "key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    site_id: Mapped[str] = mapped_column(ForeignKey("sites.id", ondelete="CASCADE"), index=True)
    key: Mapped[str] = mapped_column(String(64))
    partition_key: Mapped[str] = mapped_column(String(200), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text)
    rationale: Mapped[str | None] = mapped_column(Text, nullable=True)
    source: Mapped[str] = mapped_column(String(16))  # generated | imported
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class SegmentResult(Base):
    """The latest ICP build of a segment: replaced in place, so a rebuild never duplicates it."""

    __tablename__ = "segment_results"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    segment_id: Mapped[int] = mapped_column(ForeignKey("segments.id", ondelete="CASCADE"), unique=True)
    success: Mapped[bool] = mapped_column(Boolean)
    profile: Mapped[dict[str, Any] | None] = mapped_column(nullable=True)
    analysis: Mapped[dict[str, Any] | None] = mapped_column(nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    raw_output_text: Mapped[str | None] = mapped_column(Text, nullable=True)
    provider: Mapped[str] = mapped_column(String(32))
    model: Mapped[str] = mapped_column(String(120))
    response_model: Mapped[str | None] = mapped_column(String(160), nullable=True)
    synthetic: Mapped[bool] = mapped_column(Boolean, default=False)
    input_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    output_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    cost_usd: Mapped[float | None] = mapped_column(Float, nullable=True)
    execution_ms: Mapped[int] = mapped_column(Integer, default=0)
    completed_at: Mapped[datetime] = mapped_column(default=utcnow)


class SiteSummary(Base):
    __tablename__ = "site_summaries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    site_id: Mapped[str] = mapped_column(ForeignKey("sites.id", ondelete="CASCADE"), unique=True)
    success: Mapped[bool] = mapped_column(Boolean)
    summary: Mapped[dict[str, Any] | None] = mapped_column(nullable=True)
    segments: Mapped[list[Any]] = mapped_column(default=list)  # per-segment table
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    provider: Mapped[str | None] = mapped_column(String(32), nullable=True)
    model: Mapped[str | None] = mapped_column(String(120), nullable=True)
    synthetic: Mapped[bool] = mapped_column(Boolean, default=False)
    cost_usd: Mapped[float | None] = mapped_column(Float, nullable=True)
    generated_at: Mapped[datetime] = mapped_column(default=utcnow)
