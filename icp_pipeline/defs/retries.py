"""How a model step's errors become Dagster retries or failures, the same in every domain."""

import dagster as dg

from icp_pipeline.providers.base import ProviderError
from icp_pipeline.providers.resilience import backoff_seconds

# Transient provider and database errors are retried; permanent ones raise Failure(allow_retries=False).
MODEL_RETRY = dg.RetryPolicy(
    max_retries=3, delay=1, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS
)
# Waits of 2, 4, 8 and 16 s: a step outlasts a 30 s database outage on top of the connection retries
# (db/session.py), so a PostgreSQL restart or failover delays a cycle instead of failing its items.
DB_RETRY = dg.RetryPolicy(max_retries=4, delay=2, backoff=dg.Backoff.EXPONENTIAL)


def is_last_attempt(context: dg.AssetExecutionContext, policy: dg.RetryPolicy) -> bool:
    return context.retry_number >= policy.max_retries


def retry_provider_error(
    context: dg.AssetExecutionContext, error: ProviderError, policy: dg.RetryPolicy
) -> None:
    """Raise RetryRequested for a transient provider error, waiting its Retry-After (capped) or an
    exponential backoff with jitter, so every attempt shows in the UI."""
    wait = error.retry_after if error.retry_after is not None else backoff_seconds(context.retry_number)
    context.log.warning(f"{error}; retrying in {wait:.1f}s")
    raise dg.RetryRequested(max_retries=policy.max_retries, seconds_to_wait=wait) from error


def purchase_claimant(context: dg.AssetExecutionContext) -> str:
    """Who holds a purchase claim: the run group. A run, its step retries and a crashed run's
    re-execution share the root run id, so a retry takes over its own claim instead of waiting it out."""
    return context.run.tags.get("dagster/root_run_id", context.run.run_id)
