"""The model-call ledger: every call is written the moment it returns, paid or failed."""

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel
from sqlalchemy import delete
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from icp_pipeline.db.models import ModelCall, PurchaseClaim
from icp_pipeline.db.session import session_scope
from icp_pipeline.providers.base import ModelRequest, ModelResponse, ProviderError, ProviderFor
from icp_pipeline.providers.resilience import STEP_BUDGET_SECONDS
from icp_pipeline.providers.structured import complete_structured

T = TypeVar("T", bound=BaseModel)


class _Costed(Protocol):
    cost_usd: float | None


def record_call(
    session: Session,
    purpose: str,
    request: ModelRequest,
    response: ModelResponse,
    started: datetime | None = None,
    *,
    cycle_item_id: int | None = None,
    site_id: str | None = None,
    segment_id: int | None = None,
) -> ModelCall:
    finished = datetime.now(UTC)
    call = ModelCall(
        cycle_item_id=cycle_item_id,
        site_id=site_id,
        segment_id=segment_id,
        purpose=purpose,
        provider=request.provider,
        requested_model=request.model,
        response_model=response.response_model,
        prompt=request.prompt,
        ok=True,
        output_text=response.text,
        raw_response=response.raw,
        source_citations=[{"url": c.url, "title": c.title, "cited": c.cited} for c in response.citations],
        input_tokens=response.input_tokens,
        cached_input_tokens=response.cached_input_tokens,
        output_tokens=response.output_tokens,
        cost_usd=response.cost_usd,
        latency_ms=response.latency_ms,
        web_search=response.web_search,
        location_mode=response.location_mode,
        synthetic=response.synthetic,
        started_at=started or finished - timedelta(milliseconds=response.latency_ms),
        finished_at=finished,
    )
    session.add(call)
    session.flush()
    return call


def record_failed_call(
    session: Session,
    purpose: str,
    request: ModelRequest,
    error: Exception,
    started: datetime,
    *,
    cycle_item_id: int | None = None,
    site_id: str | None = None,
    segment_id: int | None = None,
) -> None:
    session.add(
        ModelCall(
            cycle_item_id=cycle_item_id,
            site_id=site_id,
            segment_id=segment_id,
            purpose=purpose,
            provider=request.provider,
            requested_model=request.model,
            prompt=request.prompt,
            ok=False,
            error=str(error),
            output_text=getattr(error, "raw_text", None),
            started_at=started,
            finished_at=datetime.now(UTC),
        )
    )


def total_cost(rows: Iterable[_Costed]) -> float | None:
    """The summed cost of calls or runs; unknown (None) as soon as one of them is unknown."""
    costs = [row.cost_usd for row in rows]
    return None if any(cost is None for cost in costs) else round(sum(costs), 8)


def buy_structured(
    db_url: str,
    purpose: str,
    request: ModelRequest,
    schema: type[T],
    provider_for: ProviderFor,
    context: dict[str, Any] | None = None,
    **owner: Any,
) -> tuple[T, list[ModelCall]]:
    """One structured-output purchase (with its one repair). Every reply is in the ledger before it
    is validated; a failed call is recorded too. `owner` is cycle_item_id, site_id or segment_id."""
    calls: list[ModelCall] = []

    def record(response: ModelResponse) -> None:
        with session_scope(db_url) as session:
            calls.append(record_call(session, purpose, request, response, **owner))

    started = datetime.now(UTC)
    try:
        provider = provider_for(request.provider, request.model)
        return complete_structured(provider, request, schema, record, context), calls
    except ProviderError as error:
        if error.raw_text is None:  # the call failed; an invalid reply is already in the ledger
            with session_scope(db_url) as session:
                record_failed_call(session, purpose, request, error, started, **owner)
        raise


# A claim older than a step's whole budget belongs to a worker that died; it may be taken over.
CLAIM_TTL = timedelta(seconds=STEP_BUDGET_SECONDS + 30)
_INSERTS = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}


class PurchaseInProgress(ProviderError):
    """Another run is buying this answer right now: wait for it to reach the ledger, then reuse it.
    A retryable provider-side wait as far as the step is concerned; no call was made."""

    def __init__(self, request: ModelRequest, subject: str, wait_seconds: float) -> None:
        super().__init__(
            request.provider,
            request.model,
            f"another run is buying {subject}; retrying in {wait_seconds:.0f}s to reuse its answer",
            retryable=True,
            retry_after=wait_seconds,
        )


def claim_purchase(db_url: str, subject: str, claimant: str, request: ModelRequest) -> None:
    """Take the right to buy `subject` for `claimant`, or raise PurchaseInProgress while another live
    claimant holds it. One upsert decides, atomically on SQLite and PostgreSQL: a free subject, the
    claimant's own claim (a retry of the same run group) or an abandoned claim is taken."""
    now = datetime.now(UTC)
    with session_scope(db_url) as session:
        insert = _INSERTS[session.get_bind().dialect.name](PurchaseClaim)
        session.execute(
            insert.values(subject=subject, claimant=claimant, claimed_at=now).on_conflict_do_update(
                index_elements=[PurchaseClaim.subject],
                set_={"claimant": claimant, "claimed_at": now},
                where=(PurchaseClaim.claimant == claimant) | (PurchaseClaim.claimed_at < now - CLAIM_TTL),
            )
        )
        holder = session.get(PurchaseClaim, subject, populate_existing=True)
        if holder.claimant != claimant:
            claimed_at = (
                holder.claimed_at.replace(tzinfo=UTC)
                if holder.claimed_at.tzinfo is None
                else holder.claimed_at
            )
            left = (claimed_at + CLAIM_TTL - now).total_seconds()
            raise PurchaseInProgress(request, subject, min(max(left, 1.0), 30.0))


def release_purchase(db_url: str, subject: str, claimant: str) -> None:
    with session_scope(db_url) as session:
        session.execute(
            delete(PurchaseClaim).where(PurchaseClaim.subject == subject, PurchaseClaim.claimant == claimant)
        )
