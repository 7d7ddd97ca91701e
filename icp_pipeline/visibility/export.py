"""Raw facts for BI: an org's runs, mentions, citations, claims, per-run company metrics, the published
per-cycle rates and the snapshots' evidence sections (visibility per ICP segment, citations by source
category, untracked companies, search fan-out) as tidy tables in Parquet or CSV, each with a documented
schema (TABLES; written next to the data as schema.json and, in Parquet, as field metadata).

- Rows are read as columns with SQL and streamed in batches (BATCH_ROWS), never as ORM objects.
- `company_rates` and the evidence tables are taken from each cycle's stored analytics snapshot, so
  they are exactly what was published; the other tables are the facts a BI tool rebuilds the rates from.
- Text from models and org files is data. Parquet keeps it exact. In CSV a text cell that starts with
  = + - @, a tab, a carriage return or ' gets one leading ' so no spreadsheet runs it as a formula
  (OWASP "CSV injection"); a reader recovers the exact text by removing that one quote.
- Every file is written to a temporary name in the output folder and renamed into place only after
  all of them were written, so a failed export leaves the previous files as they were.
"""

import csv
import json
import os
import secrets
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from icp_pipeline.db.models import (
    AnalyticsSnapshot,
    Citation,
    Claim,
    Company,
    CompetitiveMetric,
    Cycle,
    Mention,
    ModelCall,
    OrgLocation,
    OrgModel,
    Question,
    QuestionRun,
)
from icp_pipeline.visibility.analytics import SegmentLabel, segment_target
from icp_pipeline.visibility.cycles import require_org
from icp_pipeline.visibility.rollup import counted_in_analytics

EXPORT_FORMAT_VERSION = 1
FORMATS = ("parquet", "csv")
BATCH_ROWS = 2000
SCHEMA_FILE = "schema.json"
# Leading characters a spreadsheet may read as a formula (OWASP), and the escape quote itself, so the
# escape can always be undone.
FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r", "'")
SCOPES = ("overall", "by_model", "by_location", "by_question", "by_segment")


class ExportError(ValueError):
    """The export cannot be made as asked (no such cycle, output path not a folder, ...)."""


@dataclass(frozen=True)
class Column:
    name: str
    type: pa.DataType
    nullable: bool
    description: str


@dataclass(frozen=True)
class TableSpec:
    name: str
    description: str
    columns: tuple[Column, ...]

    def schema(self) -> pa.Schema:
        return pa.schema(
            [
                pa.field(c.name, c.type, nullable=c.nullable, metadata={"description": c.description})
                for c in self.columns
            ],
            metadata={"table": self.name, "description": self.description},
        )

    def document(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "columns": [
                {"name": c.name, "type": str(c.type), "nullable": c.nullable, "description": c.description}
                for c in self.columns
            ],
        }


INT, FLOAT, TEXT, BOOL = pa.int64(), pa.float64(), pa.string(), pa.bool_()
TIME = pa.timestamp("us", tz="UTC")


def _c(name: str, type_: pa.DataType, description: str, nullable: bool = False) -> Column:
    return Column(name, type_, nullable, description)


def _n(name: str, type_: pa.DataType, description: str) -> Column:
    return Column(name, type_, True, description)


CYCLES = TableSpec(
    "cycles",
    "One row per cycle of the org, with its item counts and the analytics snapshot published for it.",
    (
        _c("cycle_id", INT, "The cycle."),
        _c("org_id", TEXT, "The org."),
        _c("status", TEXT, "running | succeeded | failed."),
        _c("samples_per_item", INT, "Samples per question x model x location when the cycle opened."),
        _c("items_total", INT, "Cycle items (question x model x location x sample); payload runs.total."),
        _c("items_completed", INT, "Items that succeeded; payload runs.completed."),
        _c("items_failed", INT, "Items that failed; payload runs.failed."),
        _c("created_at", TIME, "When the cycle opened."),
        _n("completed_at", TIME, "When the cycle finished; null while running."),
        _c("has_analytics", BOOL, "A snapshot was published for this cycle (its rows are in company_rates)."),
        _n("analytics_generated_at", TIME, "When the snapshot was computed (its payload's generated_at)."),
        _n("analytics_version", TEXT, "The analytics code version of the snapshot."),
        _n("latest_runs", INT, "How many runs the snapshot's rates are over (payload latest_runs)."),
        _n("min_runs", INT, "Below this many runs a rate row is flagged insufficient_data."),
        _n("previous_cycle_id", INT, "The cycle the snapshot's change columns compare with."),
        _n("synthetic", BOOL, "The snapshot's runs came from the offline provider (not real answers)."),
    ),
)

COMPANIES = TableSpec(
    "companies",
    "One row per tracked company of the org (the target and its competitors), as configured now.",
    (
        _c("company_id", INT, "The company."),
        _c("org_id", TEXT, "The org."),
        _c("name", TEXT, "The name from the org file (untrusted text)."),
        _c("is_target", BOOL, "The org's own company."),
        _c("active", BOOL, "Still in the org file; analytics count active companies only."),
        _c("aliases", TEXT, "Other names matched in answers, as a JSON array of strings."),
        _c("domains", TEXT, "Web domains that count as citing the company, as a JSON array of strings."),
    ),
)

RUNS = TableSpec(
    "runs",
    "One row per question run (one sample of one question x model x location in one cycle): what was "
    "asked, which model answered, the answer and its cost. Several runs may share a partition key "
    "(samples); run_id is the key.",
    (
        _c("run_id", INT, "The question run."),
        _c("org_id", TEXT, "The org."),
        _c("cycle_id", INT, "The cycle the run belongs to."),
        _c("cycle_item_id", INT, "The cycle item (question x model x location x sample) it answers."),
        _c("partition_key", TEXT, "The Dagster partition that ran it."),
        _c("sample_index", INT, "Which sample of its question x model x location in the cycle (0-based)."),
        _c("question_id", INT, "The question."),
        _c("question_key", TEXT, "The question's key: the payload's by_question key."),
        _c("question_text", TEXT, "The question as configured (untrusted text)."),
        _c("question_active", BOOL, "The question is still in the org file."),
        _c("model_id", INT, "The org's model entry."),
        _c("model_key", TEXT, "provider/requested_model: the payload's by_model key."),
        _c("provider", TEXT, "openai | anthropic | gemini | offline."),
        _c("requested_model", TEXT, "The model asked for."),
        _n("response_model", TEXT, "The model the provider says answered."),
        _c("model_slug", TEXT, "The model entry's slug (used in partition keys)."),
        _c("model_active", BOOL, "The model is still in the org file."),
        _c("location_id", INT, "The org's location entry."),
        _c("location", TEXT, "ISO 3166 country code: the payload's by_location key."),
        _c("location_active", BOOL, "The location is still in the org file."),
        _c("web_search", BOOL, "The answer was allowed to search the web."),
        _n("location_mode", TEXT, "How the location reached the model (prompt, tool option, ...)."),
        _c("synthetic", BOOL, "Answered by the offline provider (not a real model)."),
        _c("status", TEXT, "stored | completed | failed; analytics use completed runs only."),
        _n("error", TEXT, "Why the run failed, if it did."),
        _c("is_latest", BOOL, "The newest completed run of its question x model x location (any cycle)."),
        _c(
            "in_latest_analytics",
            BOOL,
            "is_latest and question, model and location active: the runs the latest analytics counted "
            "(true as of the export; the org file may have changed since the snapshot).",
        ),
        _n("input_tokens", INT, "Input tokens of every paid call of the answer; null if unknown."),
        _n("output_tokens", INT, "Output tokens of every paid call of the answer; null if unknown."),
        _n("cost_usd", FLOAT, "Cost of the answer in USD; null = unknown, not zero."),
        _n("latency_ms", INT, "Latency of the answering call."),
        _n("answer_call_id", INT, "The ledger row (model call) of the answer."),
        _n("answer_finish", TEXT, "How the answering turn finished (complete | truncated | ...)."),
        _n("answer_finish_reason", TEXT, "The provider's finish reason."),
        _c("created_at", TIME, "When the run record was first stored."),
        _c("updated_at", TIME, "When the run record last changed."),
        _n("completed_at", TIME, "When the run completed."),
        _c("prompt", TEXT, "The prompt sent (untrusted text)."),
        _n("answer_text", TEXT, "The answer as stored (untrusted text)."),
    ),
)

MENTIONS = TableSpec(
    "mentions",
    "One row per run and company named in its answer.",
    (
        _c("mention_id", INT, "The mention."),
        _c("run_id", INT, "The run (runs.run_id)."),
        _c("cycle_id", INT, "The run's cycle."),
        _c("company_id", INT, "The company (companies.company_id)."),
        _c("company_name", TEXT, "The company's name now."),
        _c("position", INT, "Rank of the company's first mention among the companies named (1 = first)."),
        _c("first_offset", INT, "Character offset of the first mention in the answer."),
        _c("mention_count", INT, "How many times the answer names it."),
        _c("matched_text", TEXT, "The text that matched (untrusted text)."),
        _c("extractor_version", TEXT, "Version of the mention extractor."),
    ),
)

CITATIONS = TableSpec(
    "citations",
    "One row per run and URL the answer cited or the model retrieved.",
    (
        _c("citation_id", INT, "The citation."),
        _c("run_id", INT, "The run (runs.run_id)."),
        _c("cycle_id", INT, "The run's cycle."),
        _c("url", TEXT, "The URL (untrusted text)."),
        _c("host", TEXT, "Its host."),
        _c("domain", TEXT, "Its registrable domain: the payload's citations.domains key."),
        _n("title", TEXT, "Title given by the provider (untrusted text)."),
        _c("source", TEXT, "annotation (provider metadata) | answer_text (a link in the answer)."),
        _c("cited", BOOL, "True: cited in the answer; false: retrieved by a search but not cited."),
        _c("extractor_version", TEXT, "Version of the citation extractor."),
    ),
)

CLAIMS = TableSpec(
    "claims",
    "One row per claim the grader extracted from a run's answer about a company.",
    (
        _c("claim_id", INT, "The claim."),
        _c("run_id", INT, "The run (runs.run_id)."),
        _c("cycle_id", INT, "The run's cycle."),
        _n("company_id", INT, "The tracked company it is about; null if the name matched none."),
        _c("company_name", TEXT, "The company as the grader named it (untrusted text)."),
        _c("text", TEXT, "The claim (untrusted text)."),
        _c("sentiment", TEXT, "positive | neutral | negative."),
        _c("supporting_urls", TEXT, "Cited URLs supporting it, as a JSON array of strings."),
        _n("grader_call_id", INT, "The ledger row (model call) of the grading."),
        _n("grader_provider", TEXT, "The grader's provider."),
        _n("grader_model", TEXT, "The grader model asked for."),
        _n("grader_response_model", TEXT, "The model the provider says graded."),
        _c("extractor_version", TEXT, "Version of the claims step."),
    ),
)

RUN_COMPANY_METRICS = TableSpec(
    "run_company_metrics",
    "One row per run and active company (at the time the run completed): the per-run facts the analytics "
    "count. mentioned and cited here are the flags behind mentioned_runs and cited_runs.",
    (
        _c("run_id", INT, "The run (runs.run_id)."),
        _c("cycle_id", INT, "The run's cycle."),
        _c("company_id", INT, "The company (companies.company_id)."),
        _c("company_name", TEXT, "The company's name now."),
        _c("mentioned", BOOL, "The answer names the company."),
        _c("mention_count", INT, "How many times."),
        _n("position", INT, "Rank of its first mention; null when not mentioned."),
        _c("cited", BOOL, "A cited URL's host is one of the company's domains."),
        _c("citation_count", INT, "How many cited URLs are on its domains."),
        _c("positive_claims", INT, "Claims about it with positive sentiment."),
        _c("neutral_claims", INT, "Claims about it with neutral sentiment."),
        _c("negative_claims", INT, "Claims about it with negative sentiment."),
        _c("metrics_version", TEXT, "Version of the metrics step."),
    ),
)

COMPANY_RATES = TableSpec(
    "company_rates",
    "One row per cycle x scope x group x company, copied from the cycle's published analytics snapshot "
    "(no re-computation): the rates with their numerators, denominators and 95% intervals.",
    (
        _c("org_id", TEXT, "The org."),
        _c("cycle_id", INT, "The cycle whose snapshot this is."),
        _c("analytics_version", TEXT, "The analytics code version."),
        _n("generated_at", TIME, "When the snapshot was computed."),
        _c(
            "scope",
            TEXT,
            "overall | by_model | by_location | by_question | by_segment (the payload section).",
        ),
        _n(
            "scope_key",
            TEXT,
            "The group: runs.model_key, runs.location, runs.question_key or the segment id "
            "(segment_visibility.segment_id, as text); null for overall.",
        ),
        _n("company_id", INT, "The company with this name now; null if it was renamed or removed."),
        _c("company_name", TEXT, "The company as named in the snapshot (untrusted text)."),
        _c("is_target", BOOL, "The org's own company."),
        _c("runs", INT, "Denominator of mention_rate and cited_rate: runs counted in this group."),
        _c(
            "mentioned_runs", INT, "Numerator of mention_rate and share_of_voice: runs that name the company."
        ),
        _n("mention_rate", FLOAT, "mentioned_runs / runs, rounded to 6 decimals; null for 0 runs."),
        _n("mention_rate_ci_low", FLOAT, "Wilson 95% interval of mention_rate, lower bound."),
        _n("mention_rate_ci_high", FLOAT, "Wilson 95% interval of mention_rate, upper bound."),
        _c("cited_runs", INT, "Numerator of cited_rate: runs citing a URL on the company's domains."),
        _n("cited_rate", FLOAT, "cited_runs / runs, rounded to 6 decimals."),
        _n("cited_rate_ci_low", FLOAT, "Wilson 95% interval of cited_rate, lower bound."),
        _n("cited_rate_ci_high", FLOAT, "Wilson 95% interval of cited_rate, upper bound."),
        _c(
            "share_of_voice_denominator",
            INT,
            "Sum of mentioned_runs over the group's companies (derived from the snapshot's rows).",
        ),
        _n("share_of_voice", FLOAT, "mentioned_runs / share_of_voice_denominator, rounded to 6 decimals."),
        _n("share_of_voice_ci_low", FLOAT, "Bootstrap 95% interval of share_of_voice, lower bound."),
        _n("share_of_voice_ci_high", FLOAT, "Bootstrap 95% interval of share_of_voice, upper bound."),
        _n("average_position", FLOAT, "Mean position over the runs that name the company."),
        _n("average_position_ci_low", FLOAT, "Bootstrap 95% interval of average_position, lower bound."),
        _n("average_position_ci_high", FLOAT, "Bootstrap 95% interval of average_position, upper bound."),
        _n("insufficient_data", BOOL, "runs < min_runs: too few runs to read the rates."),
        _n("min_runs", INT, "The org's min_runs when the snapshot was computed."),
        _n("previous_cycle_id", INT, "overall rows: the cycle the change columns compare with."),
        _n("change_mention_rate", FLOAT, "overall rows: mention_rate minus the previous cycle's."),
        _n("change_share_of_voice", FLOAT, "overall rows: share_of_voice minus the previous cycle's."),
        _n("change_p_value", FLOAT, "overall rows: two-sided Fisher exact test of the mention counts."),
        _n("change_significant", BOOL, "overall rows: change_p_value < 0.05."),
        _n("stability_combinations", INT, "by_question rows: model x location combinations asked."),
        _n("stability_repeated_combinations", INT, "by_question rows: those with at least 2 samples."),
        _n(
            "stability_disagreeing_combinations",
            INT,
            "by_question rows: repeated ones whose samples disagree.",
        ),
        _n("stability_disagreement_rate", FLOAT, "by_question rows: disagreeing / repeated combinations."),
    ),
)

SEGMENT_VISIBILITY = TableSpec(
    "segment_visibility",
    "One row per cycle x ICP segment of the snapshot's by_segment: the target's rates over the latest runs "
    "of the questions generated from that segment, next to the segment's fit score (the gap view). The "
    "rates are the snapshot's; name, questions and fit score are the database's at export time.",
    (
        _c("org_id", TEXT, "The org."),
        _c("cycle_id", INT, "The cycle whose snapshot this is."),
        _c("segment_id", INT, "The segment (the payload's by_segment key; company_rates.scope_key)."),
        _n("segment_key", TEXT, "The segment's id in its site file; null if the segment was deleted."),
        _n("site_id", TEXT, "The segment's site; null if the segment was deleted."),
        _n("segment_name", TEXT, "The segment's name (untrusted text: from a site file or a model)."),
        _n("questions", INT, "The org's active questions generated from the segment at export time."),
        _c("runs", INT, "Runs of the segment's questions counted (denominator of mention_rate)."),
        _c("mentioned_runs", INT, "Of them, runs that name the target (numerator)."),
        _n("mention_rate", FLOAT, "The target's mentioned_runs / runs."),
        _n("mention_rate_ci_low", FLOAT, "Wilson 95% interval of mention_rate, lower bound."),
        _n("mention_rate_ci_high", FLOAT, "Wilson 95% interval of mention_rate, upper bound."),
        _n("share_of_voice", FLOAT, "The target's share of the segment's runs' mentions."),
        _n("share_of_voice_ci_low", FLOAT, "95% interval of share_of_voice, lower bound."),
        _n("share_of_voice_ci_high", FLOAT, "95% interval of share_of_voice, upper bound."),
        _n("fit_score", FLOAT, "The segment's ICP fit score (0..1) at export time; null without a build."),
        _n("gap", FLOAT, "fit_score - mention_rate: the site fits the segment, assistants do not name it."),
    ),
)

CITATION_CATEGORIES = TableSpec(
    "citation_categories",
    "One row per cycle x source category of the snapshot's citations.by_category: cited URLs and, apart "
    "from them, URLs the engine retrieved but did not cite.",
    (
        _c("org_id", TEXT, "The org."),
        _c("cycle_id", INT, "The cycle whose snapshot this is."),
        _n(
            "category",
            TEXT,
            "owned | competitor | review | ugc | reference | news_blog | other; null for citations stored "
            "before categories existed.",
        ),
        _c("citations", INT, "Cited URLs of the category in the latest runs."),
        _c("runs", INT, "Latest runs citing one."),
        _c("retrieved_citations", INT, "URLs of the category retrieved but not cited."),
        _c("retrieved_runs", INT, "Latest runs that retrieved one without citing it."),
    ),
)

UNTRACKED_COMPANIES = TableSpec(
    "untracked_companies",
    "One row per cycle x company the latest answers name that the org does not track (the snapshot's "
    "untracked_companies: the first 50 by runs, then mentions).",
    (
        _c("org_id", TEXT, "The org."),
        _c("cycle_id", INT, "The cycle whose snapshot this is."),
        _c("rank", INT, "1 = named by the most runs."),
        _c("name", TEXT, "The name as written in an answer or a claim (untrusted text: model output)."),
        _c("name_key", TEXT, "The normalised name the rows are grouped by."),
        _c("runs", INT, "Latest runs naming it."),
        _c("mentions", INT, "Times their answers name it."),
        _c("claims", INT, "Claims about it."),
        _c("sources", TEXT, "Where it was found (claim, text), as a JSON array of strings."),
        _c("example_runs", TEXT, "Partition keys of up to 3 of its runs, as a JSON array of strings."),
    ),
)

SEARCH_SUMMARY = TableSpec(
    "search_summary",
    "One row per cycle x scope of the snapshot's search_queries: how many latest runs searched the web and "
    "how many queries they issued, overall and per model.",
    (
        _c("org_id", TEXT, "The org."),
        _c("cycle_id", INT, "The cycle whose snapshot this is."),
        _c("scope", TEXT, "overall | by_model."),
        _n("model_key", TEXT, "by_model rows: provider/model (runs.model_key); null for overall."),
        _c("runs", INT, "Latest runs."),
        _c("runs_with_searches", INT, "Of them, runs that issued a web search."),
        _c("queries", INT, "Searches issued."),
        _c("distinct_queries", INT, "Distinct (normalised) queries."),
        _n("queries_per_searching_run", FLOAT, "queries / runs_with_searches; null when none searched."),
    ),
)

SEARCH_QUERIES = TableSpec(
    "search_queries",
    "One row per cycle x scope x top query of the snapshot's search_queries (top 20 overall, top 10 per "
    "model), most runs first.",
    (
        _c("org_id", TEXT, "The org."),
        _c("cycle_id", INT, "The cycle whose snapshot this is."),
        _c("scope", TEXT, "overall | by_model."),
        _n("model_key", TEXT, "by_model rows: provider/model (runs.model_key); null for overall."),
        _c("rank", INT, "1 = issued by the most runs."),
        _c("query", TEXT, "The query as the engine issued it, normalised (untrusted text: model output)."),
        _c("runs", INT, "Runs that issued it."),
        _c("issued", INT, "Times issued."),
        _c("example_run_ids", TEXT, "Up to 3 of those runs (runs.run_id), as a JSON array of integers."),
    ),
)

TABLES: tuple[TableSpec, ...] = (
    CYCLES,
    COMPANIES,
    RUNS,
    MENTIONS,
    CITATIONS,
    CLAIMS,
    RUN_COMPANY_METRICS,
    COMPANY_RATES,
    SEGMENT_VISIBILITY,
    CITATION_CATEGORIES,
    UNTRACKED_COMPANIES,
    SEARCH_SUMMARY,
    SEARCH_QUERIES,
)


# --- reading -----------------------------------------------------------------------------------


def _utc(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; every stored time is UTC."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _parse_time(value: str | None) -> datetime | None:
    return None if not value else _utc(datetime.fromisoformat(value))


def _stream(session: Session, statement: Select) -> Iterator[Any]:
    """Rows as plain tuples through Core (no ORM row processing), fetched BATCH_ROWS at a time (a
    server-side cursor on PostgreSQL). Naive times (SQLite) are UTC; the writers treat them so."""
    yield from session.connection().execute(statement, execution_options={"yield_per": BATCH_ROWS})


@dataclass
class _Scope:
    org_id: str
    cycle_ids: list[int]  # the cycles exported
    company_names: dict[int, str] = field(default_factory=dict)

    def runs_of(self, statement: Select) -> Select:
        """Restrict a statement that reads QuestionRun to the exported runs."""
        return statement.where(QuestionRun.org_id == self.org_id, QuestionRun.cycle_id.in_(self.cycle_ids))


def _cycle_rows(session: Session, scope: _Scope) -> Iterator[tuple]:
    statement = (
        select(
            Cycle.id,
            Cycle.org_id,
            Cycle.status,
            Cycle.samples_per_item,
            Cycle.total,
            Cycle.completed,
            Cycle.failed,
            Cycle.created_at,
            Cycle.completed_at,
            AnalyticsSnapshot.id,
            AnalyticsSnapshot.analytics_version,
        )
        .outerjoin(AnalyticsSnapshot, AnalyticsSnapshot.cycle_id == Cycle.id)
        .where(Cycle.org_id == scope.org_id, Cycle.id.in_(scope.cycle_ids))
        .order_by(Cycle.id)
    )
    for row in session.execute(statement).all():
        payload = (
            session.scalar(select(AnalyticsSnapshot.payload).where(AnalyticsSnapshot.id == row[9]))
            if row[9] is not None
            else {}
        )
        yield (
            *row[:7],
            _utc(row[7]),
            _utc(row[8]),
            row[9] is not None,
            _parse_time(payload.get("generated_at")),  # as published (company_rates.generated_at)
            row[10],
            payload.get("latest_runs"),
            payload.get("min_runs"),
            payload.get("previous_cycle_id"),
            payload.get("synthetic"),
        )


def _company_rows(session: Session, scope: _Scope) -> Iterator[tuple]:
    statement = (
        select(
            Company.id,
            Company.org_id,
            Company.name,
            Company.is_target,
            Company.active,
            Company.aliases,
            Company.domains,
        )
        .where(Company.org_id == scope.org_id)
        .order_by(Company.id)
    )
    for row in _stream(session, statement):
        yield (*row[:5], json.dumps(list(row[5] or []), ensure_ascii=False), json.dumps(list(row[6] or [])))


def _run_rows(session: Session, scope: _Scope) -> Iterator[tuple]:
    qr = QuestionRun
    statement = scope.runs_of(
        select(
            qr.id,
            qr.org_id,
            qr.cycle_id,
            qr.cycle_item_id,
            qr.partition_key,
            qr.sample_index,
            qr.question_id,
            Question.key,
            Question.text,
            Question.active,
            qr.model_id,
            # The keys and the run selection of steps.build_analytics, computed the same way.
            (qr.provider + "/" + qr.requested_model).label("model_key"),
            qr.provider,
            qr.requested_model,
            qr.response_model,
            OrgModel.slug,
            OrgModel.active,
            qr.location_id,
            OrgLocation.country_code,
            OrgLocation.active,
            qr.web_search,
            qr.location_mode,
            qr.synthetic,
            qr.status,
            qr.error,
            qr.is_latest,
            counted_in_analytics().label("in_analytics"),
            qr.input_tokens,
            qr.output_tokens,
            qr.cost_usd,
            qr.latency_ms,
            qr.answer_call_id,
            ModelCall.finish,
            ModelCall.finish_reason,
            qr.created_at,
            qr.updated_at,
            qr.completed_at,
            qr.prompt,
            qr.answer_text,
        )
        .join(Question, Question.id == qr.question_id)
        .join(OrgModel, OrgModel.id == qr.model_id)
        .join(OrgLocation, OrgLocation.id == qr.location_id)
        .outerjoin(ModelCall, ModelCall.id == qr.answer_call_id)
        .order_by(qr.id)
    )
    return _stream(session, statement)


def _mention_rows(session: Session, scope: _Scope) -> Iterator[tuple]:
    statement = scope.runs_of(
        select(
            Mention.id,
            Mention.question_run_id,
            QuestionRun.cycle_id,
            Mention.company_id,
            Company.name,
            Mention.position,
            Mention.first_offset,
            Mention.mention_count,
            Mention.matched_text,
            Mention.extractor_version,
        )
        .join(QuestionRun, QuestionRun.id == Mention.question_run_id)
        .join(Company, Company.id == Mention.company_id)
        .order_by(Mention.question_run_id, Mention.id)
    )
    return _stream(session, statement)


def _citation_rows(session: Session, scope: _Scope) -> Iterator[tuple]:
    statement = scope.runs_of(
        select(
            Citation.id,
            Citation.question_run_id,
            QuestionRun.cycle_id,
            Citation.url,
            Citation.host,
            Citation.domain,
            Citation.title,
            Citation.source,
            Citation.cited,
            Citation.extractor_version,
        )
        .join(QuestionRun, QuestionRun.id == Citation.question_run_id)
        .order_by(Citation.question_run_id, Citation.id)
    )
    return _stream(session, statement)


def _claim_rows(session: Session, scope: _Scope) -> Iterator[tuple]:
    statement = scope.runs_of(
        select(
            Claim.id,
            Claim.question_run_id,
            QuestionRun.cycle_id,
            Claim.company_id,
            Claim.company_name,
            Claim.text,
            Claim.sentiment,
            Claim.supporting_urls,
            Claim.model_call_id,
            ModelCall.provider,
            ModelCall.requested_model,
            ModelCall.response_model,
            Claim.extractor_version,
        )
        .join(QuestionRun, QuestionRun.id == Claim.question_run_id)
        .outerjoin(ModelCall, ModelCall.id == Claim.model_call_id)
        .order_by(Claim.question_run_id, Claim.id)
    )
    for r in _stream(session, statement):
        yield (*r[:7], json.dumps(list(r[7] or []), ensure_ascii=False), *r[8:])


def _metric_rows(session: Session, scope: _Scope) -> Iterator[tuple]:
    cm = CompetitiveMetric
    statement = scope.runs_of(
        select(
            cm.question_run_id,
            QuestionRun.cycle_id,
            cm.company_id,
            Company.name,
            cm.mentioned,
            cm.mention_count,
            cm.position,
            cm.cited,
            cm.citation_count,
            cm.positive_claims,
            cm.neutral_claims,
            cm.negative_claims,
            cm.metrics_version,
        )
        .join(QuestionRun, QuestionRun.id == cm.question_run_id)
        .join(Company, Company.id == cm.company_id)
        .order_by(cm.question_run_id, cm.company_id)
    )
    return _stream(session, statement)


def _interval(row: dict[str, Any], name: str) -> tuple[float | None, float | None]:
    interval = row.get(name)
    return (None, None) if interval is None else (interval[0], interval[1])


def rate_rows(
    org_id: str, cycle_id: int, payload: dict[str, Any], company_ids: dict[str, int]
) -> Iterator[tuple]:
    """The company_rates rows of one snapshot payload: every company row of every scope, flattened.
    Snapshots from before a field existed give null for it."""
    sections: list[tuple[str, str | None, list[dict[str, Any]]]] = [
        ("overall", None, payload.get("companies", []))
    ]
    for scope in SCOPES[1:]:
        sections += [(scope, key, rows) for key, rows in sorted(payload.get(scope, {}).items())]
    for scope, key, rows in sections:
        all_mentions = sum(row["mentioned_runs"] for row in rows)
        for row in rows:
            change = row.get("change") or {}
            stability = row.get("stability") or {}
            yield (
                org_id,
                cycle_id,
                payload.get("analytics_version") or "",
                _parse_time(payload.get("generated_at")),
                scope,
                key,
                company_ids.get(row["name"]),
                row["name"],
                row["is_target"],
                row["runs"],
                row["mentioned_runs"],
                row.get("mention_rate"),
                *_interval(row, "mention_rate_ci"),
                row["cited_runs"],
                row.get("cited_rate"),
                *_interval(row, "cited_rate_ci"),
                all_mentions,
                row.get("share_of_voice"),
                *_interval(row, "share_of_voice_ci"),
                row.get("average_position"),
                *_interval(row, "average_position_ci"),
                row.get("insufficient_data"),
                payload.get("min_runs"),
                payload.get("previous_cycle_id") if scope == "overall" else None,
                change.get("mention_rate"),
                change.get("share_of_voice"),
                change.get("p_value"),
                change.get("significant"),
                stability.get("combinations"),
                stability.get("repeated_combinations"),
                stability.get("disagreeing_combinations"),
                stability.get("disagreement_rate"),
            )


def _payloads(session: Session, scope: _Scope) -> Iterator[tuple[int, dict[str, Any]]]:
    """(cycle id, snapshot payload) of the exported cycles that have one, oldest first."""
    snapshot_ids = session.execute(
        select(AnalyticsSnapshot.id, AnalyticsSnapshot.cycle_id)
        .where(AnalyticsSnapshot.org_id == scope.org_id, AnalyticsSnapshot.cycle_id.in_(scope.cycle_ids))
        .order_by(AnalyticsSnapshot.cycle_id)
    ).all()
    for snapshot_id, cycle_id in snapshot_ids:  # one payload in memory at a time
        yield (
            cycle_id,
            session.scalar(select(AnalyticsSnapshot.payload).where(AnalyticsSnapshot.id == snapshot_id)),
        )


def _rate_rows(session: Session, scope: _Scope) -> Iterator[tuple]:
    company_ids = {name: company_id for company_id, name in scope.company_names.items()}
    for cycle_id, payload in _payloads(session, scope):
        yield from rate_rows(scope.org_id, cycle_id, payload, company_ids)


def segment_rows(
    org_id: str, cycle_id: int, payload: dict[str, Any], labels: dict[str, SegmentLabel]
) -> Iterator[tuple]:
    """The segment_visibility rows of one snapshot payload (segment id order)."""
    for key, companies in sorted(payload.get("by_segment", {}).items(), key=lambda item: int(item[0])):
        label = labels.get(key)
        fit = label.fit_score if label else None
        target, gap = segment_target(companies, fit)
        if target is None:
            continue
        yield (
            org_id,
            cycle_id,
            int(key),
            label.key if label else None,
            label.site_id if label else None,
            label.name if label else None,
            label.questions if label else None,
            target["runs"],
            target["mentioned_runs"],
            target.get("mention_rate"),
            *_interval(target, "mention_rate_ci"),
            target.get("share_of_voice"),
            *_interval(target, "share_of_voice_ci"),
            fit,
            gap,
        )


def _segment_rows(session: Session, scope: _Scope) -> Iterator[tuple]:
    # Imported here: the segments package imports the provider code, which the other tables do not need.
    from icp_pipeline.segments.report import org_segment_labels

    for cycle_id, payload in _payloads(session, scope):
        labels = org_segment_labels(session, scope.org_id, list(payload.get("by_segment", {})))
        yield from segment_rows(scope.org_id, cycle_id, payload, labels)


def _category_rows(session: Session, scope: _Scope) -> Iterator[tuple]:
    for cycle_id, payload in _payloads(session, scope):
        for row in (payload.get("citations") or {}).get("by_category", []):
            yield (
                scope.org_id,
                cycle_id,
                row["category"],
                row["citations"],
                row["runs"],
                row["retrieved_citations"],
                row["retrieved_runs"],
            )


def _untracked_rows(session: Session, scope: _Scope) -> Iterator[tuple]:
    for cycle_id, payload in _payloads(session, scope):
        for rank, row in enumerate(payload.get("untracked_companies", []), start=1):
            yield (
                scope.org_id,
                cycle_id,
                rank,
                row["name"],
                row["name_key"],
                row["runs"],
                row["mentions"],
                row["claims"],
                json.dumps(list(row["sources"])),
                json.dumps(list(row["example_runs"]), ensure_ascii=False),
            )


def _search_blocks(payload: dict[str, Any]) -> Iterator[tuple[str, str | None, dict[str, Any]]]:
    searches = payload.get("search_queries")
    if not searches:
        return
    yield "overall", None, searches
    for model, block in sorted(searches.get("by_model", {}).items()):
        yield "by_model", model, block


def _search_summary_rows(session: Session, scope: _Scope) -> Iterator[tuple]:
    for cycle_id, payload in _payloads(session, scope):
        for kind, model, block in _search_blocks(payload):
            yield (
                scope.org_id,
                cycle_id,
                kind,
                model,
                block["runs"],
                block["runs_with_searches"],
                block["queries"],
                block["distinct_queries"],
                block.get("queries_per_searching_run"),
            )


def _search_query_rows(session: Session, scope: _Scope) -> Iterator[tuple]:
    for cycle_id, payload in _payloads(session, scope):
        for kind, model, block in _search_blocks(payload):
            for rank, row in enumerate(block.get("top", []), start=1):
                yield (
                    scope.org_id,
                    cycle_id,
                    kind,
                    model,
                    rank,
                    row["query"],
                    row["runs"],
                    row["issued"],
                    json.dumps(list(row["example_run_ids"])),
                )


PRODUCERS: dict[str, Callable[[Session, _Scope], Iterator[tuple]]] = {
    "cycles": _cycle_rows,
    "companies": _company_rows,
    "runs": _run_rows,
    "mentions": _mention_rows,
    "citations": _citation_rows,
    "claims": _claim_rows,
    "run_company_metrics": _metric_rows,
    "company_rates": _rate_rows,
    "segment_visibility": _segment_rows,
    "citation_categories": _category_rows,
    "untracked_companies": _untracked_rows,
    "search_summary": _search_summary_rows,
    "search_queries": _search_query_rows,
}


# --- writing -----------------------------------------------------------------------------------


def _batches(rows: Iterable[tuple], size: int) -> Iterator[list[tuple]]:
    batch: list[tuple] = []
    for row in rows:
        batch.append(row)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _record_batch(spec: TableSpec, schema: pa.Schema, rows: list[tuple]) -> pa.RecordBatch:
    columns = list(zip(*rows, strict=True))
    arrays = []
    for column, values in zip(spec.columns, columns, strict=True):
        array = pa.array(values, type=column.type)
        if not column.nullable and array.null_count:
            raise ExportError(f"{spec.name}.{column.name}: null in a non-nullable column")
        arrays.append(array)
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def _write_parquet(spec: TableSpec, rows: Iterable[tuple], path: Path) -> int:
    schema = spec.schema()
    count = 0
    with pq.ParquetWriter(str(path), schema) as writer:
        for batch in _batches(rows, BATCH_ROWS):
            if len(batch[0]) != len(spec.columns):
                raise ExportError(f"{spec.name}: {len(batch[0])} values for {len(spec.columns)} columns")
            writer.write_batch(_record_batch(spec, schema, batch))
            count += len(batch)
    return count


def csv_safe(text: str) -> str:
    """A text cell a spreadsheet will not run: one leading ' before a formula trigger (or a quote)."""
    return "'" + text if text.startswith(FORMULA_TRIGGERS) else text


def csv_unescape(cell: str) -> str:
    """The exact text of a CSV text cell written by csv_safe."""
    return cell[1:] if cell.startswith("'") else cell


def _bool_cell(value: Any) -> str:
    return "true" if value else "false"


def _float_cell(value: Any) -> str:
    return repr(float(value))  # the shortest text that reads back as the same double


def _time_cell(value: Any) -> str:
    return _utc(value).isoformat()


def _text_cell(value: Any) -> str:
    return csv_safe(str(value))


def _csv_formatter(spec: TableSpec, column: Column) -> Callable[[Any], str]:
    """The cell writer of one column, chosen once per table (comparing Arrow types per cell is slow)."""
    kind = {str(BOOL): _bool_cell, str(FLOAT): _float_cell, str(TIME): _time_cell, str(TEXT): _text_cell}
    format_value = kind.get(str(column.type), str)

    def cell(value: Any) -> str:
        if value is not None:
            return format_value(value)
        if not column.nullable:
            raise ExportError(f"{spec.name}.{column.name}: null in a non-nullable column")
        return ""

    return cell


def _write_csv(spec: TableSpec, rows: Iterable[tuple], path: Path) -> int:
    formatters = [_csv_formatter(spec, c) for c in spec.columns]
    count = 0
    with path.open("w", encoding="utf-8", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow([c.name for c in spec.columns])
        for row in rows:
            if len(row) != len(formatters):
                raise ExportError(f"{spec.name}: {len(row)} values for {len(formatters)} columns")
            writer.writerow([format_cell(v) for format_cell, v in zip(formatters, row, strict=True)])
            count += 1
        stream.flush()
        os.fsync(stream.fileno())
    return count


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class WrittenFile:
    table: str
    path: Path
    rows: int


@dataclass(frozen=True)
class ExportResult:
    org_id: str
    format: str
    cycle_ids: list[int]
    files: list[WrittenFile]
    schema_path: Path


def _temp_path(out_dir: Path, final_name: str) -> Path:
    """A new hidden file next to the final one (the same file system, so the rename is atomic), with
    the permissions the umask gives any new file (mkstemp would make it private)."""
    while True:
        path = out_dir / f".{final_name}.{secrets.token_hex(6)}.tmp"
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return path


def export_org(
    session: Session, org_id: str, out_dir: Path, fmt: str, cycle_id: int | None = None
) -> ExportResult:
    """Write the org's tables (every cycle, or only `cycle_id`) to out_dir as `<table>.<fmt>` plus
    schema.json. Raises UnknownOrg, or ExportError for a bad format, cycle or output path."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    if session.get_bind().dialect.name == "postgresql" and not session.in_transaction():
        # Every table from one snapshot of the database, even while a cycle is writing.
        session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
    require_org(session, org_id)
    cycle_ids = list(session.scalars(select(Cycle.id).where(Cycle.org_id == org_id).order_by(Cycle.id)))
    if cycle_id is not None:
        if cycle_id not in cycle_ids:
            raise ExportError(f"org {org_id!r} has no cycle {cycle_id}")
        cycle_ids = [cycle_id]
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"{out_dir} exists and is not a folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    scope = _Scope(
        org_id,
        cycle_ids,
        dict(session.execute(select(Company.id, Company.name).where(Company.org_id == org_id)).all()),
    )
    write = _write_parquet if fmt == "parquet" else _write_csv
    staged: list[tuple[Path, Path]] = []  # (temporary, final)
    files: list[WrittenFile] = []
    try:
        for spec in TABLES:
            final = out_dir / f"{spec.name}.{fmt}"
            temporary = _temp_path(out_dir, final.name)
            staged.append((temporary, final))
            rows = write(spec, PRODUCERS[spec.name](session, scope), temporary)
            if fmt == "parquet":
                _fsync(temporary)
            files.append(WrittenFile(spec.name, final, rows))
        schema_path = out_dir / SCHEMA_FILE
        temporary = _temp_path(out_dir, SCHEMA_FILE)
        staged.append((temporary, schema_path))
        document = schema_document(org_id, fmt, cycle_ids, {f.table: (f.path.name, f.rows) for f in files})
        temporary.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        _fsync(temporary)
    except BaseException:
        for temporary, _final in staged:
            temporary.unlink(missing_ok=True)
        raise
    for temporary, final in staged:
        os.replace(temporary, final)
    return ExportResult(org_id, fmt, cycle_ids, files, schema_path)


def schema_document(
    org_id: str, fmt: str, cycle_ids: list[int], files: dict[str, tuple[str, int]] | None = None
) -> dict[str, Any]:
    """schema.json: what was exported and every table's columns (type, nullability, meaning)."""
    tables = []
    for spec in TABLES:
        entry = spec.document()
        if files is not None:
            entry["file"], entry["rows"] = files[spec.name]
        tables.append(entry)
    document: dict[str, Any] = {
        "export_format_version": EXPORT_FORMAT_VERSION,
        "org_id": org_id,
        "exported_at": datetime.now(UTC).isoformat(),
        "format": fmt,
        "cycle_ids": cycle_ids,
        "tables": tables,
    }
    if fmt == "csv":
        document["csv"] = {
            "encoding": "utf-8",
            "header": True,
            "null": "an empty cell (in text columns an empty cell is null or the empty string)",
            "booleans": "true | false",
            "timestamps": "ISO 8601 with +00:00",
            "floats": "shortest text that reads back as the same IEEE 754 double",
            "formula_escape": "a text cell starting with = + - @ TAB CR or ' has one ' prepended; "
            "remove one leading ' from a text cell to get the exact text",
        }
    return document


def schema_markdown() -> str:
    """Every table's columns as markdown, for the README."""
    parts = []
    for spec in TABLES:
        parts.append(f"#### `{spec.name}`\n\n{spec.description}\n")
        parts.append("| Column | Type | Null | Meaning |\n|---|---|---|---|")
        for c in spec.columns:
            meaning = c.description.replace("|", "\\|")  # "a | b" in a description is not a cell
            parts.append(f"| `{c.name}` | {c.type} | {'yes' if c.nullable else ''} | {meaning} |")
        parts.append("")
    return "\n".join(parts)
