"""ProcessOrg assets. Per question run: answer -> run record -> mentions, citations, claims -> metrics.
Per org: latest flags -> analytics -> push. State passes through the app database, never pickles."""

from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

import dagster as dg

from icp_pipeline.db.session import session_scope
from icp_pipeline.defs.metadata import ROW_COUNT, company_key, known, table, text
from icp_pipeline.defs.resources import LLM_POOL, AppDatabase, ModelProviderResource, PushResource
from icp_pipeline.defs.retries import (
    DB_RETRY,
    MODEL_RETRY,
    is_last_attempt,
    purchase_claimant,
    retry_provider_error,
)
from icp_pipeline.defs.visibility.partitions import orgs_partitions, question_runs_partitions
from icp_pipeline.providers.base import ProviderError
from icp_pipeline.redaction import redact
from icp_pipeline.settings import SecretFormatError, known_secrets
from icp_pipeline.visibility import steps
from icp_pipeline.visibility.analytics import ANALYTICS_VERSION
from icp_pipeline.visibility.citations import CITATIONS_VERSION
from icp_pipeline.visibility.claims import CLAIMS_VERSION
from icp_pipeline.visibility.cycles import UnknownOrg, open_cycle
from icp_pipeline.visibility.mentions import MENTIONS_VERSION
from icp_pipeline.visibility.metrics import METRICS_VERSION
from icp_pipeline.visibility.push import PushFailed, push_snapshot
from icp_pipeline.visibility.search_fanout import extract_run_search_queries
from icp_pipeline.visibility.search_queries import SEARCH_QUERIES_VERSION
from icp_pipeline.visibility.untracked import UNTRACKED_VERSION

QUESTION_RUNS_GROUP = "question_runs"
ORG_GROUP = "org_rollups"


@contextmanager
def question_run_step(
    context: dg.AssetExecutionContext, app_db: AppDatabase, step: str, policy: dg.RetryPolicy
) -> Iterator[None]:
    """Translate a step's error for Dagster. Transient errors are retried (a provider's Retry-After
    sets the wait); on the last attempt, or for a permanent error, the partition's cycle item is
    marked failed so the cycle can still complete."""
    try:
        yield
    except Exception as error:
        if isinstance(error, ProviderError):
            retryable = error.retryable
        else:
            retryable = not isinstance(error, steps.StepError | LookupError)
        if not retryable or is_last_attempt(context, policy):
            # The message reaches the app database and the event log: no secret in any form.
            message = redact(str(error), known_secrets())
            with suppress(LookupError):  # a partition with no cycle has no item to mark
                steps.fail_partition(app_db.resolved_url, context.partition_key, step, message)
            raise dg.Failure(
                description=f"{step} failed for {context.partition_key}: {message}", allow_retries=False
            ) from None
        if isinstance(error, ProviderError):
            retry_provider_error(context, error, policy)
        raise


def partition_metadata(summary: dict[str, Any]) -> dict[str, dg.MetadataValue]:
    """What the partition stands for (its key carries the question's hash): the question, provider,
    model and country as inert text (they come from the org file), the cycle and sample as ints."""
    return {
        "question": text(summary["question"]),
        "question_key": text(summary["question_key"]),
        "provider": text(summary["provider"]),
        "model": text(summary["model"]),
        "web_search": dg.MetadataValue.bool(summary["web_search"]),
        "country": text(summary["country"]),
        "org": text(summary["org"]),
        "cycle_id": dg.MetadataValue.int(summary["cycle_id"]),
        "sample": dg.MetadataValue.int(summary["sample"]),
    }


def _question_run_asset(**kwargs: Any) -> Callable:
    return dg.asset(partitions_def=question_runs_partitions, group_name=QUESTION_RUNS_GROUP, **kwargs)


@_question_run_asset(
    description="Asks the assistant the question (once per cycle and sample) and records the answer in the ledger.",
    kinds={"python", "llm"},
    pool=LLM_POOL,
    retry_policy=MODEL_RETRY,
)
def ai_answer(
    context: dg.AssetExecutionContext, app_db: AppDatabase, models: ModelProviderResource
) -> dg.MaterializeResult:
    with question_run_step(context, app_db, "ai_answer", MODEL_RETRY):
        summary = steps.buy_answers(
            app_db.resolved_url, context.partition_key, models.provider_for, purchase_claimant(context)
        )
    return dg.MaterializeResult(
        metadata=known(
            {
                **partition_metadata(summary),
                "answers_bought": summary["bought"],
                "answers_reused": summary["reused"],
                "input_tokens": summary["input_tokens"],
                "output_tokens": summary["output_tokens"],
                "cost_usd": summary["cost_usd"],
                "latency_ms": summary["latency_ms"],
                "response_model": summary["response_model"],
                "synthetic": summary["synthetic"],
                "answer_preview": text(summary["answer_preview"]),
            }
        )
    )


@_question_run_asset(
    description="Stores the run record (answer, raw response, tokens, cost, latency, provenance) from the ledger.",
    kinds={"python", "sql"},
    deps=[ai_answer],
    retry_policy=DB_RETRY,
)
def question_run(context: dg.AssetExecutionContext, app_db: AppDatabase) -> dg.MaterializeResult:
    with question_run_step(context, app_db, "question_run", DB_RETRY):
        summary = steps.store_runs(app_db.resolved_url, context.partition_key)
    return dg.MaterializeResult(
        metadata=known(
            {
                **partition_metadata(summary),
                "question_run_ids": dg.MetadataValue.json(summary["question_run_ids"]),
                "input_tokens": summary["input_tokens"],
                "output_tokens": summary["output_tokens"],
                "cost_usd": summary["cost_usd"],
                "latency_ms": summary["latency_ms"],
                "synthetic": summary["synthetic"],
                "answer_preview": text(summary["answer_preview"]),
            }
        )
    )


@_question_run_asset(
    description="Finds whole-word mentions of the target and competitors and their order in the answer.",
    kinds={"python", "sql"},
    deps=[question_run],
    retry_policy=DB_RETRY,
    code_version=MENTIONS_VERSION,
)
def run_mentions(context: dg.AssetExecutionContext, app_db: AppDatabase) -> dg.MaterializeResult:
    with question_run_step(context, app_db, "run_mentions", DB_RETRY):
        summary = steps.extract_mentions(app_db.resolved_url, context.partition_key)
    return dg.MaterializeResult(
        metadata={
            ROW_COUNT: summary["mentions"],
            "mentions": summary["mentions"],
            "companies_mentioned": len(summary["by_company"]),
            "mentions_by_company": dg.MetadataValue.json(summary["by_company"]),
            "history_runs": summary["history_runs"],
        }
    )


@_question_run_asset(
    description="Collects cited URLs from provider annotations and the answer text, with their source category.",
    kinds={"python", "sql"},
    deps=[question_run],
    retry_policy=DB_RETRY,
    code_version=CITATIONS_VERSION,
)
def run_citations(context: dg.AssetExecutionContext, app_db: AppDatabase) -> dg.MaterializeResult:
    with question_run_step(context, app_db, "run_citations", DB_RETRY):
        summary = steps.extract_run_citations(app_db.resolved_url, context.partition_key)
    return dg.MaterializeResult(
        metadata={
            ROW_COUNT: summary["citations"] + summary["retrieved_not_cited"],
            "citations": summary["citations"],
            "retrieved_not_cited": summary["retrieved_not_cited"],
            "domains": dg.MetadataValue.json(summary["domains"]),
            "categories": dg.MetadataValue.json(summary["categories"]),
            "history_runs": summary["history_runs"],
        }
    )


@_question_run_asset(
    description="Stores the web searches the assistant ran for the answer, read from its raw responses.",
    kinds={"python", "sql"},
    deps=[question_run],
    retry_policy=DB_RETRY,
    code_version=SEARCH_QUERIES_VERSION,
)
def run_search_queries(context: dg.AssetExecutionContext, app_db: AppDatabase) -> dg.MaterializeResult:
    with question_run_step(context, app_db, "run_search_queries", DB_RETRY):
        summary = extract_run_search_queries(app_db.resolved_url, context.partition_key)
    return dg.MaterializeResult(
        metadata={
            ROW_COUNT: summary["queries"],
            "queries": summary["queries"],
            "searches_without_query": summary["without_query"],
            "queries_dropped": summary["dropped"],
            # Provider output: data in a JSON list, never markdown.
            "example_queries": dg.MetadataValue.json(summary["examples"]),
        }
    )


@_question_run_asset(
    description="Extracts claims about companies with one structured-output call per run to the org's grader.",
    kinds={"python", "llm"},
    deps=[question_run, run_citations],
    pool=LLM_POOL,
    retry_policy=MODEL_RETRY,
    code_version=CLAIMS_VERSION,
)
def run_claims(
    context: dg.AssetExecutionContext, app_db: AppDatabase, models: ModelProviderResource
) -> dg.MaterializeResult:
    with question_run_step(context, app_db, "run_claims", MODEL_RETRY):
        summary = steps.extract_claims(
            app_db.resolved_url, context.partition_key, models.provider_for, purchase_claimant(context)
        )
    return dg.MaterializeResult(
        metadata={
            ROW_COUNT: summary["claims"],
            "claims": summary["claims"],
            "model_calls": summary["model_calls"],
            "reused_calls": summary["reused_calls"],
            "graders": dg.MetadataValue.json(summary["graders"]),
            "positive": summary["positive"],
            "neutral": summary["neutral"],
            "negative": summary["negative"],
        }
    )


UNTRACKED_COLUMNS = [
    ("name", "string", "As the answer or the claim wrote it (model output, plain text)"),
    ("source", "string", "text: the answer names it; claim: a claim is about it"),
    ("occurrences", "int", "Times the answer names it, or claims about it"),
]


@_question_run_asset(
    description="Computes per-company metrics and untracked companies of the run and completes its cycle item.",
    kinds={"python", "sql"},
    # run_search_queries too: this step completes the cycle item, and the roll-up must find its rows.
    deps=[run_mentions, run_citations, run_claims, run_search_queries],
    retry_policy=DB_RETRY,
    # The untracked-company extractor runs in this step (see steps.compute_metrics): its version is
    # part of the code version, so a change to either shows the asset as changed.
    code_version=f"{METRICS_VERSION}/{UNTRACKED_VERSION}",
)
def competitive_metrics(context: dg.AssetExecutionContext, app_db: AppDatabase) -> dg.MaterializeResult:
    with question_run_step(context, app_db, "competitive_metrics", DB_RETRY):
        summary = steps.compute_metrics(app_db.resolved_url, context.partition_key)
    return dg.MaterializeResult(
        metadata={
            "mentioned": dg.MetadataValue.json(summary["mentioned"]),
            "mentioned_count": len(summary["mentioned"]),
            "cited": dg.MetadataValue.json(summary["cited"]),
            "positions": dg.MetadataValue.json(summary["positions"]),
            "history_runs": summary["history_runs"],
            "untracked": summary["untracked"],
            "untracked_companies": table(UNTRACKED_COLUMNS, summary["untracked_names"]),
        }
    )


@dg.asset(
    partitions_def=orgs_partitions,
    group_name=ORG_GROUP,
    description="Opens the org's next cycle (one item per question x model x location x sample), or reports the open one.",
    kinds={"python", "sql"},
)
def org_cycle(context: dg.AssetExecutionContext, app_db: AppDatabase) -> dg.MaterializeResult:
    with session_scope(app_db.resolved_url) as session:
        try:
            cycle, created = open_cycle(session, context.partition_key)
        except UnknownOrg as error:
            raise dg.Failure(str(error), allow_retries=False) from error
        metadata = {"cycle_id": cycle.id, "created": created, "items": cycle.total, "status": cycle.status}
    # The partition-sync sensor registers the cycle's question-run partitions and requests their runs.
    return dg.MaterializeResult(metadata=metadata)


# Org roll-ups read every question run of their org from the database; the mapping tells Dagster
# that one org partition depends on many question-run partitions.
_ALL_QUESTION_RUNS = dg.AllPartitionMapping()


@dg.asset(
    partitions_def=orgs_partitions,
    group_name=ORG_GROUP,
    description="Flags each question x model x location's completed samples of its newest cycle.",
    kinds={"python", "sql"},
    deps=[dg.AssetDep(competitive_metrics, partition_mapping=_ALL_QUESTION_RUNS)],
    retry_policy=DB_RETRY,
)
def latest_runs(context: dg.AssetExecutionContext, app_db: AppDatabase) -> dg.MaterializeResult:
    summary = steps.mark_latest(app_db.resolved_url, context.partition_key)
    return dg.MaterializeResult(
        metadata={
            "latest_runs": summary["latest_runs"],
            "from_cycles": dg.MetadataValue.json(summary["from_cycles"]),
        }
    )


@dg.asset(
    partitions_def=orgs_partitions,
    group_name=ORG_GROUP,
    description="Computes the org's analytics (mention rate, share of voice, position, citations, sentiment, cost).",
    kinds={"python", "sql"},
    deps=[latest_runs],
    retry_policy=DB_RETRY,
    code_version=ANALYTICS_VERSION,
)
def org_analytics(context: dg.AssetExecutionContext, app_db: AppDatabase) -> dg.MaterializeResult:
    snapshot = steps.build_analytics(app_db.resolved_url, context.partition_key)
    payload = snapshot.payload
    target = next((c for c in payload["companies"] if c["is_target"]), None)
    grader = payload["grader"]
    return dg.MaterializeResult(
        metadata=known(
            {
                **company_numbers(payload["companies"]),
                "cycle_id": payload["cycle_id"],
                "runs_completed": payload["runs"]["completed"],
                "runs_failed": payload["runs"]["failed"],
                "latest_runs": payload["latest_runs"],
                "target_mention_rate": target["mention_rate"] if target else None,
                "target_share_of_voice": target["share_of_voice"] if target else None,
                "cost_usd": payload["cost"]["total"]["usd"],
                "synthetic": payload["synthetic"],
                "companies": companies_table(payload),
                # File-supplied model names: text, never markdown.
                "grader": text(
                    f"{grader['provider']}/{grader['model']}"
                    if grader
                    else "each answering model graded its own answers"
                ),
                "graders": dg.MetadataValue.json(payload["graders"]),
                "mixed_graders": payload["mixed_graders"],
            }
        )
    )


def _bound(interval: list[float] | None, index: int) -> float | None:
    return None if interval is None else interval[index]


def company_numbers(rows: list[dict[str, Any]]) -> dict[str, dg.MetadataValue]:
    """Per company floats, so the UI plots each over the cycles: `<company key>/mention_rate`, its
    95% interval bounds and share of voice. Keys come from company ids (see company_key), never from
    bare names. An unknown value (no runs) is left out rather than shown as 0."""
    numbers = {}
    for row in rows:
        key = company_key(row["company_id"], row["name"])
        values = {
            "mention_rate": row["mention_rate"],
            "mention_rate_ci_low": _bound(row["mention_rate_ci"], 0),
            "mention_rate_ci_high": _bound(row["mention_rate_ci"], 1),
            "share_of_voice": row["share_of_voice"],
        }
        numbers.update(
            {f"{key}/{name}": dg.MetadataValue.float(float(v)) for name, v in values.items() if v is not None}
        )
    return numbers


COMPANY_COLUMNS = [
    ("company_id", "int", "The company's id in the app database"),
    ("company", "string", "The name from the org file, as given"),
    ("target", "bool", "The org's own company"),
    ("runs", "int", "Latest runs counted"),
    ("mentioned_runs", "int", "Runs whose answer mentions the company"),
    ("mention_rate", "float", "mentioned_runs / runs"),
    ("mention_rate_ci_low", "float", "95% Wilson interval, lower bound"),
    ("mention_rate_ci_high", "float", "95% Wilson interval, upper bound"),
    ("share_of_voice", "float", "The company's share of all company mentions"),
    ("share_of_voice_ci_low", "float", "95% bootstrap interval, lower bound"),
    ("share_of_voice_ci_high", "float", "95% bootstrap interval, upper bound"),
    ("average_position", "float", "Mean order of first mention, 1 = first"),
    ("cited_runs", "int", "Runs citing one of the company's domains"),
    ("insufficient_data", "bool", "Fewer runs than the org's min_runs"),
    ("claims", "int", "Claims about the company (see grader)"),
    ("positive", "int", "Positive claims"),
    ("neutral", "int", "Neutral claims"),
    ("negative", "int", "Negative claims"),
    ("net_sentiment", "float", "(positive - negative) / claims"),
]


def companies_table(payload: dict[str, Any]) -> dg.TableMetadataValue:
    """The companies as table data: a name with markup or pipes stays one cell, shown as it is."""
    sentiment = {row["name"]: row for row in payload["sentiment"]}
    rows = []
    for row in payload["companies"]:
        feeling = sentiment.get(row["name"], {})
        rows.append(
            {
                **row,
                "company": row["name"],
                "target": row["is_target"],
                "mention_rate_ci_low": _bound(row["mention_rate_ci"], 0),
                "mention_rate_ci_high": _bound(row["mention_rate_ci"], 1),
                "share_of_voice_ci_low": _bound(row["share_of_voice_ci"], 0),
                "share_of_voice_ci_high": _bound(row["share_of_voice_ci"], 1),
                "claims": feeling.get("claims"),
                "positive": feeling.get("positive"),
                "neutral": feeling.get("neutral"),
                "negative": feeling.get("negative"),
                "net_sentiment": feeling.get("net"),
            }
        )
    return table(COMPANY_COLUMNS, rows)


@dg.asset(
    partitions_def=orgs_partitions,
    group_name=ORG_GROUP,
    description="Pushes the org's latest analytics to the webhook (signed, idempotent) or the local outbox.",
    kinds={"python", "webhook"},
    deps=[org_analytics],
)
def analytics_push(
    context: dg.AssetExecutionContext, app_db: AppDatabase, push: PushResource
) -> dg.MaterializeResult:
    with session_scope(app_db.resolved_url) as session:
        snapshot = steps.latest_snapshot(session, context.partition_key)
        if snapshot is None:
            raise dg.Failure(
                f"org {context.partition_key!r} has no analytics yet; materialize org_analytics first",
                allow_retries=False,
            )
        try:
            result = push_snapshot(session, snapshot, push.push_settings())
        except (PushFailed, SecretFormatError) as error:
            # Not retried by Dagster: the push already retried, and materializing analytics_push again
            # re-sends the same analytics under the same idempotency key without buying anything.
            raise dg.Failure(str(error), allow_retries=False) from error
    return dg.MaterializeResult(
        metadata=known(
            {
                "target": result["target"],
                "destination": result["destination"],
                "attempts": result["attempts"],
                "idempotency_key": result["idempotency_key"],
                "status_code": result.get("status_code"),
                "cycle_id": snapshot.cycle_id,
            }
        )
    )


question_run_assets = [
    ai_answer,
    question_run,
    run_mentions,
    run_citations,
    run_claims,
    run_search_queries,
    competitive_metrics,
]
org_assets = [latest_runs, org_analytics, analytics_push]
cycle_assets = [org_cycle]
