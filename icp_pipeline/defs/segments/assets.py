"""ICP segment assets: site -> general segments -> one ICP build per segment partition -> site summary."""

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import dagster as dg

from icp_pipeline.defs.metadata import known, table, text
from icp_pipeline.defs.resources import LLM_POOL, AppDatabase, ModelProviderResource
from icp_pipeline.defs.retries import MODEL_RETRY, is_last_attempt, purchase_claimant, retry_provider_error
from icp_pipeline.defs.segments.partitions import segments_partitions, sites_partitions
from icp_pipeline.providers.base import ProviderError
from icp_pipeline.segments import steps
from icp_pipeline.segments.comparison import COMPARISON_VERSION
from icp_pipeline.segments.questions import QUESTIONS_VERSION, generate_segment_questions
from icp_pipeline.segments.report import profile_fields, profile_text, site_visibility
from icp_pipeline.segments.schemas import ICP_VERSION
from icp_pipeline.segments.steps import BuildOptions

GROUP = "icp_segments"


class ICPBuildConfig(dg.Config):
    """Per-build options; the CLI's --provider/--model/--pacing map onto these."""

    provider: str = os.environ.get("ICP_DEFAULT_PROVIDER", "openai")
    model: str = os.environ.get("ICP_DEFAULT_MODEL", "gpt-4o-mini")
    rebuild: bool = False
    pacing_seconds: float = 0.0

    def options(self) -> BuildOptions:
        return BuildOptions(self.provider, self.model, self.rebuild, self.pacing_seconds)


@contextmanager
def segment_step(context: dg.AssetExecutionContext) -> Iterator[None]:
    """Transient provider errors are retried; the rest fail the step at once with their message
    (the result, with its error and any raw output, is already stored)."""
    try:
        yield
    except ProviderError as error:
        if error.retryable and not is_last_attempt(context, MODEL_RETRY):
            retry_provider_error(context, error, MODEL_RETRY)
        raise dg.Failure(description=str(error), allow_retries=False) from error
    except (LookupError, steps.SummaryFailed) as error:
        raise dg.Failure(description=str(error), allow_retries=False) from error


def _icp_asset(partitions_def: dg.DynamicPartitionsDefinition, description: str, **kwargs: Any) -> Callable:
    """Every ICP asset calls a model: pool `llm`, model retries, the same group and kinds."""
    return dg.asset(
        partitions_def=partitions_def,
        group_name=GROUP,
        kinds={"python", "llm"},
        pool=LLM_POOL,
        retry_policy=MODEL_RETRY,
        description=description,
        **kwargs,
    )


@_icp_asset(
    sites_partitions,
    "Asks the model for the site's general audience segments, keeps imported ones, registers one partition each.",
)
def site_segments(
    context: dg.AssetExecutionContext,
    config: ICPBuildConfig,
    app_db: AppDatabase,
    models: ModelProviderResource,
) -> dg.MaterializeResult:
    with segment_step(context):
        summary = steps.discover_segments(
            app_db.resolved_url,
            context.partition_key,
            models.provider_for,
            config.options(),
            claimant=purchase_claimant(context),
        )
    registered = set(context.instance.get_dynamic_partitions(segments_partitions.name))
    new_keys = [k for k in summary["partition_keys"] if k not in registered]
    if new_keys:
        context.instance.add_dynamic_partitions(segments_partitions.name, new_keys)
    return dg.MaterializeResult(
        metadata={
            "segments": len(summary["segments"]),
            "generated": sum(1 for s in summary["segments"] if s["source"] == "generated"),
            "imported": sum(1 for s in summary["segments"] if s["source"] == "imported"),
            "new_partitions": dg.MetadataValue.json(new_keys),
            "model_calls": summary["model_calls"],
            "segment_names": dg.MetadataValue.json([s["name"] for s in summary["segments"]]),
        }
    )


@_icp_asset(
    segments_partitions,
    "Builds one segment's Ideal Customer Profile and how well the site serves it (structured output).",
    # Lineage only: a segment comes from its site's discovery. Dagster has no mapping from one dynamic
    # partition set to another (`acme|x` -> `acme`), so every site partition is upstream; nothing
    # waits on it (no automation conditions; sensors, the CLI and backfills launch segment runs).
    deps=[dg.AssetDep(site_segments, partition_mapping=dg.AllPartitionMapping())],
    code_version=ICP_VERSION,
)
def segment_icp(
    context: dg.AssetExecutionContext,
    config: ICPBuildConfig,
    app_db: AppDatabase,
    models: ModelProviderResource,
) -> dg.MaterializeResult:
    with segment_step(context):
        summary = steps.build_segment(
            app_db.resolved_url,
            context.partition_key,
            models.provider_for,
            config.options(),
            claimant=purchase_claimant(context),
        )
    metadata = {
        "segment": text(summary["segment"]),
        "reused": summary["reused"],
        "execution_ms": summary["execution_ms"],
        "confidence": summary["confidence"],
        "fit_score": summary["fit_score"],
        "cost_usd": summary["cost_usd"],
        "input_tokens": summary.get("input_tokens"),
        "output_tokens": summary.get("output_tokens"),
        "synthetic": summary.get("synthetic"),
        # Model text: labelled plain-text lines and table cells, never markdown.
        "profile": text(profile_text(summary["profile"], summary["analysis"])),
        "profile_fields": table(
            PROFILE_COLUMNS,
            [{"field": f, "value": v} for f, v in profile_fields(summary["profile"], summary["analysis"])],
        ),
    }
    return dg.MaterializeResult(metadata=known(metadata))


PROFILE_COLUMNS = [
    ("field", "string", "A field of the ICP profile or of the site-fit analysis"),
    ("value", "string", "The model's answer (list items joined by '; ')"),
]


@_icp_asset(
    sites_partitions,
    "Compares the segments that succeeded: ranking and overlaps from the stored profiles, the model's "
    "narrative on top; reused while its inputs are unchanged. Succeeds when at least one segment did.",
    deps=[site_segments, dg.AssetDep(segment_icp, partition_mapping=dg.AllPartitionMapping())],
    code_version=COMPARISON_VERSION,
)
def site_icp_summary(
    context: dg.AssetExecutionContext,
    config: ICPBuildConfig,
    app_db: AppDatabase,
    models: ModelProviderResource,
) -> dg.MaterializeResult:
    with segment_step(context):
        summary = steps.summarize_site(
            app_db.resolved_url,
            context.partition_key,
            models.provider_for,
            config.options(),
            # The last attempt keeps the computed comparison without a narrative instead of failing.
            retry_narrative=not is_last_attempt(context, MODEL_RETRY),
            claimant=purchase_claimant(context),
        )
    comparison = summary["comparison"]
    for warning in comparison.get("warnings", []):
        context.log.warning(warning)
    ranking = comparison["ranking"]
    metadata = {
        "reused": summary["reused"],
        "segments_succeeded": summary["succeeded"],
        "segments_failed": summary["failed"],
        "top_segment": ranking[0]["segment_id"] if ranking else None,
        "ranking": dg.MetadataValue.json(
            [{"rank": r["rank"], "segment_id": r["segment_id"], "fit_score": r["fit_score"]} for r in ranking]
        ),
        "narrative": comparison.get("narrative"),  # whether the model's narrative is in
        # Model text: inert text, never markdown.
        "summary": text(comparison.get("summary")),
        "warnings": dg.MetadataValue.json(comparison.get("warnings", [])),
        "inputs_sha256": comparison.get("inputs_sha256"),
        "cost_usd": summary["cost_usd"],
        "synthetic": summary["synthetic"],
        "segments": table(SEGMENT_COLUMNS, summary["segments"]),
        # The gap view: where the site fits a segment but assistants do not recommend the target.
        "visibility": table(VISIBILITY_COLUMNS, site_visibility(app_db.resolved_url, context.partition_key)),
    }
    return dg.MaterializeResult(metadata=known(metadata))


VISIBILITY_COLUMNS = [
    ("org_id", "string", "An org whose `icp:` names this site"),
    ("segment_id", "string", "The segment's key"),
    ("name", "string", "The segment's name"),
    ("fit_score", "float", "How well the site serves the segment"),
    ("runs", "int", "Latest runs of the segment's questions in the org's latest analytics"),
    ("mention_rate", "float", "Share of those runs that mention the org's target"),
    ("share_of_voice", "float", "The target's share of the mentions in those runs"),
    ("gap", "float", "fit_score - mention_rate: fits, but assistants do not recommend it"),
]


# Segment names (model text or the site file's) and errors are cells of data, shown as they are.
SEGMENT_COLUMNS = [
    ("segment_id", "string", "The segment's key"),
    ("name", "string", "The segment's name"),
    ("source", "string", "generated by the model or imported from the site file"),
    ("success", "bool", "The segment's ICP build succeeded"),
    ("fit_score", "float", "How well the site serves the segment"),
    ("execution_ms", "int", "Time of the build"),
    ("completed_at", "string", "When the build finished (UTC)"),
    ("error", "string", "Why the build failed"),
]


@_icp_asset(
    segments_partitions,
    "Turns the segment's ICP into buyer questions of every org whose `icp:` names the site; bought once per ICP.",
    deps=[segment_icp],
    code_version=QUESTIONS_VERSION,
)
def segment_questions(
    context: dg.AssetExecutionContext, app_db: AppDatabase, models: ModelProviderResource
) -> dg.MaterializeResult:
    with segment_step(context):
        outcome = generate_segment_questions(
            app_db.resolved_url,
            context.partition_key,
            models.provider_for,
            claimant=purchase_claimant(context),
        )
    orgs = outcome["orgs"]
    if outcome.get("skipped"):
        context.log.info(f"no questions generated: {outcome['skipped']}")
    metadata = {
        "segment": text(outcome["segment"]),
        "skipped": outcome.get("skipped"),
        "model_calls": outcome["model_calls"],
        "reused_purchases": outcome["reused"],
        "orgs": len(orgs),
        "added": sum(o.added for o in orgs),
        "kept": sum(o.kept + o.revived for o in orgs),
        "retired": sum(o.retired for o in orgs),
        "duplicates": sum(o.duplicates for o in orgs),
        "by_org": table(
            QUESTION_COLUMNS,
            [
                {
                    "org_id": o.org_id,
                    "status": o.status,
                    "added": o.added,
                    "kept": o.kept + o.revived,
                    "retired": o.retired,
                    "duplicates": o.duplicates,
                    "over_limit": o.over_limit,
                }
                for o in orgs
            ],
        ),
    }
    return dg.MaterializeResult(metadata=known(metadata))


QUESTION_COLUMNS = [
    ("org_id", "string", "An org whose `icp:` names the segment's site"),
    ("status", "string", "What new questions got: active (auto) or proposed (review)"),
    ("added", "int", "New questions"),
    ("kept", "int", "Questions of this segment proposed again"),
    ("retired", "int", "Questions of this segment no longer proposed (inactive, history kept)"),
    ("duplicates", "int", "Proposals equal (normalised) to another question of the org"),
    ("over_limit", "int", "Left proposed: activating them would pass the runs-per-cycle limit"),
]


segment_assets = [site_segments, segment_icp, segment_questions, site_icp_summary]
