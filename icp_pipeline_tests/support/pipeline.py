"""Helpers to run the real pipeline in tests with chosen resources, and to read what it stored."""

from datetime import datetime
from typing import Any

import sqlalchemy as sa

from icp_pipeline.db.models import ModelCall
from icp_pipeline.db.session import session_scope
from icp_pipeline.defs.resources import AppDatabase, ModelProviderResource, PushResource


def pipeline_defs(
    db_url: str,
    *,
    latency: float = 0.0,
    fail_models: tuple[str, ...] = (),
    push: PushResource | None = None,
    models: ModelProviderResource | None = None,
) -> Any:
    from icp_pipeline.definitions import build_defs

    return build_defs(
        {
            "app_db": AppDatabase(url=db_url),
            "models": models
            or ModelProviderResource(
                mode="auto", offline_latency_seconds=latency, offline_fail_models=list(fail_models)
            ),
            "push": push or PushResource(),
        }
    )


def count(db_url: str, table: type, *where: Any) -> int:
    with session_scope(db_url) as session:
        return session.scalar(sa.select(sa.func.count()).select_from(table).where(*where))


def max_concurrent_calls(db_url: str) -> int:
    """The most model calls whose [started_at, finished_at] intervals overlap at one instant."""
    with session_scope(db_url) as session:
        intervals = session.execute(
            sa.select(ModelCall.started_at, ModelCall.finished_at).where(ModelCall.ok)
        ).all()
    events: list[tuple[datetime, int]] = []
    for started, finished in intervals:
        events += [(started, 1), (finished, -1)]
    events.sort(key=lambda e: (e[0], e[1]))  # an end before a start at the same instant
    current = peak = 0
    for _, delta in events:
        current += delta
        peak = max(peak, current)
    return peak


def run_cycle_steps(db_url: str, org_id: str) -> list[str]:
    """One whole cycle of the org through the plain steps (no Dagster; the offline provider unless
    keys are set), every partition succeeded; its partition keys, sorted."""
    from icp_pipeline.visibility import steps
    from icp_pipeline.visibility.cycles import open_cycle, refresh_cycle

    with session_scope(db_url) as session:
        cycle, created = open_cycle(session, org_id)
        assert created, "the previous cycle is still open"
        cycle_id, keys = cycle.id, sorted({item.partition_key for item in cycle.items})
    provider_for = ModelProviderResource().provider_for
    for key in keys:
        steps.buy_answers(db_url, key, provider_for)
        steps.store_runs(db_url, key)
        steps.extract_mentions(db_url, key)
        steps.extract_run_citations(db_url, key)
        steps.extract_claims(db_url, key, provider_for)
        steps.compute_metrics(db_url, key)  # untracked companies, then metrics
    with session_scope(db_url) as session:
        assert refresh_cycle(session, cycle_id).status == "succeeded"
    return keys
