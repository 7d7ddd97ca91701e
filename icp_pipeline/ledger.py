"""The model-call ledger: every call is written the moment it returns, paid or failed."""

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel
from sqlalchemy.orm import Session

from icp_pipeline.db.models import ModelCall
from icp_pipeline.db.session import session_scope
from icp_pipeline.providers.base import ModelRequest, ModelResponse, ProviderError, ProviderFor
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
