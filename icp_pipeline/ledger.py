"""The model-call ledger: every call is written the moment it returns, paid or failed."""

from datetime import UTC, datetime, timedelta

from sqlalchemy.orm import Session

from icp_pipeline.db.models import ModelCall
from icp_pipeline.providers.base import ModelRequest, ModelResponse


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
