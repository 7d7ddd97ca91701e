"""Replayable extractors (issue 13, item 6): after a cycle, a changed extractor is applied to the whole
history by re-materializing its question-run assets over every partition of the cycle, as a backfill
would, with zero model calls; twice changes nothing. Earlier cycles' runs are recomputed only when
stale (their stamps), never by a normal cycle. And the payload's search_queries against an
independent count from the stored raw responses, on SQLite and PostgreSQL."""

from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa
import yaml
from dagster import DagsterInstance

from icp_pipeline.cli.runner import run_cycle
from icp_pipeline.db.models import (
    Citation,
    Claim,
    CompetitiveMetric,
    CycleItem,
    Mention,
    ModelCall,
    QuestionRun,
    SearchQuery,
    UntrackedMention,
)
from icp_pipeline.db.session import session_scope, upgrade
from icp_pipeline.defs.resources import AppDatabase, ModelProviderResource, PushResource
from icp_pipeline.defs.visibility import assets as va
from icp_pipeline.ledger import cycle_spend_usd
from icp_pipeline.visibility import search_fanout, search_queries, steps
from icp_pipeline.visibility.org_file import parse_org_text, upsert_org
from icp_pipeline_tests.conftest import example_org_data, write_instance_yaml
from icp_pipeline_tests.support.pipeline import count, pipeline_defs

# 2 questions x 3 models x 1 location, one sample: 6 question runs; two models search the web.
MODELS = [
    {"provider": "openai", "model": "gpt-4o-mini", "web_search": True},
    {"provider": "anthropic", "model": "claude-haiku-4-5"},
    {"provider": "gemini", "model": "gemini-2.5-flash", "web_search": True},
]
EXTRACTORS = [va.run_mentions, va.run_citations, va.run_claims, va.run_search_queries, va.competitive_metrics]
ROW_TABLES = (Mention, Citation, Claim, SearchQuery, CompetitiveMetric)


def _cycle(url: str, icp_env: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    monkeypatch.setenv("ICP_DATABASE_URL", url)
    write_instance_yaml(icp_env / "dagster_home")
    upgrade(url)
    spec = example_org_data()
    spec.update(models=MODELS, locations=["US"], questions=spec["questions"][:2])
    with session_scope(url) as session:
        upsert_org(session, parse_org_text(yaml.safe_dump(spec)))
    outcome = run_cycle("acme", workers=3, progress=False, defs=pipeline_defs(url))
    assert (outcome.status, outcome.completed, outcome.failed) == ("succeeded", 6, 0)
    return outcome.payload


def _raw_queries(provider: str, raw: dict[str, Any]) -> list[str]:
    """The offline provider's synthetic searches, read by hand from the stored raw response."""
    if provider == "openai":
        return [item["action"]["query"].lower() for item in raw.get("output", [])]
    if provider == "anthropic":
        return [block["input"]["query"].lower() for block in raw.get("content", [])]
    candidates = raw.get("candidates") or [{}]
    return [q.lower() for q in candidates[0].get("grounding_metadata", {}).get("web_search_queries", [])]


def _independent(url: str) -> dict[str, Any]:
    """search_queries counted in Python from the latest runs' raw responses (not from the table)."""
    with session_scope(url) as session:
        runs = session.execute(
            sa.select(
                QuestionRun.id, QuestionRun.provider, QuestionRun.requested_model, QuestionRun.raw_response
            )
            .where(QuestionRun.is_latest)
            .order_by(QuestionRun.id)
        ).all()
    groups: dict[str | None, list[tuple[int, list[str]]]] = defaultdict(list)
    for run_id, provider, model, raw in runs:
        queries = _raw_queries(provider, raw)
        groups[None].append((run_id, queries))
        groups[f"{provider}/{model}"].append((run_id, queries))

    def block(members: list[tuple[int, list[str]]], limit: int) -> dict[str, Any]:
        issued = Counter(q for _, queries in members for q in queries)
        runs_of = {q: sorted({r for r, queries in members if q in queries}) for q in issued}
        order = sorted(issued, key=lambda q: (-len(runs_of[q]), -issued[q], q))[:limit]
        return {
            "runs": len(members),
            "runs_with_searches": sum(1 for _, queries in members if queries),
            "queries": sum(issued.values()),
            "distinct_queries": len(issued),
            "top": [(q, len(runs_of[q]), issued[q], runs_of[q][:3]) for q in order],
        }

    return {
        **block(groups.pop(None), search_queries.TOP_QUERIES),
        "by_model": {m: block(groups[m], search_queries.TOP_QUERIES_PER_MODEL) for m in sorted(groups)},
    }


def _comparable(section: dict[str, Any]) -> dict[str, Any]:
    def block(b: dict[str, Any]) -> dict[str, Any]:
        keys = ("runs", "runs_with_searches", "queries", "distinct_queries")
        return {
            **{k: b[k] for k in keys},
            "top": [(t["query"], t["runs"], t["issued"], t["example_run_ids"]) for t in b["top"]],
        }

    return {**block(section), "by_model": {m: block(b) for m, b in section["by_model"].items()}}


def _check_payload(url: str, payload: dict[str, Any]) -> None:
    section = payload["search_queries"]
    assert _comparable(section) == _independent(url)
    # The demo's fan-out is there: both web-search models searched, the other did not.
    assert section["runs"] == 6 and section["runs_with_searches"] == 4
    assert section["by_model"]["anthropic/claude-haiku-4-5"]["runs_with_searches"] == 0
    assert section["top"][0]["runs"] >= 2  # one question's query, issued by both models
    # The reference computation from per-run facts gives the same section.
    with session_scope(url) as session:
        rows = session.execute(
            sa.select(QuestionRun.id, QuestionRun.provider, QuestionRun.requested_model, SearchQuery.query)
            .outerjoin(SearchQuery, SearchQuery.question_run_id == QuestionRun.id)
            .where(QuestionRun.is_latest)
            .order_by(QuestionRun.id, SearchQuery.position)
        ).all()
    facts: dict[int, tuple[int, str, list[str]]] = {}
    for run_id, provider, model, query in rows:
        facts.setdefault(run_id, (run_id, f"{provider}/{model}", []))[2].extend([query] if query else [])
    assert search_queries.search_query_stats(facts.values()) == section


def _ledger(url: str) -> tuple[int, int, int, float]:
    with session_scope(url) as session:
        cycle_id = session.scalar(sa.select(sa.func.max(CycleItem.cycle_id)))
        return (
            count(url, ModelCall),
            count(url, ModelCall, ModelCall.paid),
            session.scalar(sa.select(sa.func.max(ModelCall.id))),
            cycle_spend_usd(session, cycle_id),
        )


def _versions(url: str) -> dict[str, set[str]]:
    with session_scope(url) as session:
        found = {
            table.__tablename__: set(session.scalars(sa.select(table.extractor_version).distinct()))
            for table in (Mention, Citation, Claim, SearchQuery)
        }
        found["competitive_metrics"] = set(
            session.scalars(sa.select(CompetitiveMetric.metrics_version).distinct())
        )
    return found


def _rematerialize_history(url: str) -> None:
    """What a backfill of the extractor assets does: one materialization per partition of the cycle."""
    instance = DagsterInstance.get()
    resources = {"app_db": AppDatabase(url=url), "models": ModelProviderResource(), "push": PushResource()}
    with session_scope(url) as session:
        keys = sorted(set(session.scalars(sa.select(CycleItem.partition_key))))
    assert len(keys) == 6 and set(keys) <= set(instance.get_dynamic_partitions("question_runs"))
    for key in keys:
        result = dg.materialize(
            va.question_run_assets,
            selection=EXTRACTORS,
            partition_key=key,
            instance=instance,
            resources=resources,
        )
        assert result.success
        assert result.asset_materializations_for_node("run_claims")[0].metadata["model_calls"].value == 0
    rollup = dg.materialize(
        va.org_assets,
        selection=[va.latest_runs, va.org_analytics],
        partition_key="acme",
        instance=instance,
        resources=resources,
    )
    assert rollup.success


def test_a_changed_extractor_recomputes_the_history_with_no_model_call(
    icp_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{icp_env / 'app.db'}"
    payload = _cycle(url, icp_env, monkeypatch)
    _check_payload(url, payload)
    ledger_before = _ledger(url)
    rows_before = {table: count(url, table) for table in ROW_TABLES}
    assert all(rows_before.values()) and rows_before[SearchQuery] > 4  # some runs searched twice or more
    with session_scope(url) as session:
        first_queries = {
            run_id: query
            for run_id, query in session.execute(
                sa.select(SearchQuery.question_run_id, SearchQuery.query).where(SearchQuery.position == 0)
            )
        }

    # The extractors change: new versions, and the search rule keeps one query per run.
    monkeypatch.setattr(search_queries, "MAX_QUERIES_PER_RUN", 1)
    monkeypatch.setattr(search_fanout, "SEARCH_QUERIES_VERSION", "search-queries-replay")
    for name in ("MENTIONS_VERSION", "CITATIONS_VERSION", "CLAIMS_VERSION", "METRICS_VERSION"):
        monkeypatch.setattr(steps, name, f"{name.lower()}-replay")
    _rematerialize_history(url)

    assert _versions(url) == {
        "mentions": {"mentions_version-replay"},
        "citations": {"citations_version-replay"},
        "claims": {"claims_version-replay"},
        "search_queries": {"search-queries-replay"},
        "competitive_metrics": {"metrics_version-replay"},
    }
    with session_scope(url) as session:
        kept = dict(session.execute(sa.select(SearchQuery.question_run_id, SearchQuery.query)).all())
        payload = steps.latest_snapshot(session, "acme").payload
    assert kept == first_queries  # recomputed under the new rule: each run's first search only
    assert payload["search_queries"]["queries"] == payload["search_queries"]["runs_with_searches"] == 4
    assert {table: count(url, table) for table in ROW_TABLES} == {**rows_before, SearchQuery: 4}
    assert _ledger(url) == ledger_before  # no call, paid or not; the spend is what it was

    # Twice: the same rows, none added.
    rows_after = {table: count(url, table) for table in ROW_TABLES}
    _rematerialize_history(url)
    assert {table: count(url, table) for table in ROW_TABLES} == rows_after
    assert _ledger(url) == ledger_before


@pytest.mark.postgres
def test_the_payloads_search_queries_match_an_independent_count_on_postgres(
    icp_env: Path, monkeypatch: pytest.MonkeyPatch, postgres_databases: Callable[[], str]
) -> None:
    url = postgres_databases()
    payload = _cycle(url, icp_env, monkeypatch)
    _check_payload(url, payload)


# The deterministic steps that replay stale history, with their summaries' metadata.
REPLAYING = ("run_mentions", "run_citations", "competitive_metrics")
HISTORY_TABLES = (Mention, Citation, CompetitiveMetric, UntrackedMention)


def _history_ids(url: str) -> dict[str, list[int]]:
    """The row ids of the derived rows of runs before the newest cycle: a recomputed run's rows are
    replaced, with new ids."""
    with session_scope(url) as session:
        newest = session.scalar(sa.select(sa.func.max(QuestionRun.cycle_id)))
        return {
            table.__tablename__: list(
                session.scalars(
                    sa.select(table.id)
                    .join(QuestionRun, QuestionRun.id == table.question_run_id)
                    .where(QuestionRun.cycle_id < newest)
                    .order_by(table.id)
                )
            )
            for table in HISTORY_TABLES
        }


def _replay_steps(url: str) -> dict[str, list[int]]:
    """Re-materialize the deterministic steps of every partition: history_runs per step and partition."""
    instance = DagsterInstance.get()
    resources = {"app_db": AppDatabase(url=url), "models": ModelProviderResource(), "push": PushResource()}
    with session_scope(url) as session:
        keys = sorted(set(session.scalars(sa.select(CycleItem.partition_key))))
    recomputed: dict[str, list[int]] = {node: [] for node in REPLAYING}
    for key in keys:
        result = dg.materialize(
            va.question_run_assets,
            selection=[va.run_mentions, va.run_citations, va.competitive_metrics],
            partition_key=key,
            instance=instance,
            resources=resources,
        )
        assert result.success
        for node in REPLAYING:
            metadata = result.asset_materializations_for_node(node)[0].metadata
            recomputed[node].append(metadata["history_runs"].value)
    return recomputed


def _history_after_cycles(url: str, icp_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _cycle(url, icp_env, monkeypatch)
    for _ in range(2):  # three cycles: two earlier runs per partition
        outcome = run_cycle("acme", workers=3, progress=False, defs=pipeline_defs(url), new_cycle=True)
        assert (outcome.status, outcome.completed, outcome.failed) == ("succeeded", 6, 0)
    # The third cycle's own steps touched only its runs.
    instance = DagsterInstance.get()
    for node in REPLAYING:
        for key in instance.get_dynamic_partitions("question_runs"):
            records = instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=dg.AssetKey(node), asset_partitions=[key]), limit=1
            ).records
            assert records[0].asset_materialization.metadata["history_runs"].value == 0
    before = _history_ids(url)
    assert before["mentions"] and before["citations"] and before["competitive_metrics"]
    calls = count(url, ModelCall)

    # No version change: re-materializing recomputes no earlier run and leaves its rows alone.
    assert _replay_steps(url) == {node: [0] * 6 for node in REPLAYING}
    assert _history_ids(url) == before

    # New extractor versions: each earlier run recomputed once, under the new versions, then never.
    monkeypatch.setattr(steps, "MENTIONS_VERSION", "mentions-stale-test")
    monkeypatch.setattr(steps, "CITATIONS_VERSION", "citations-stale-test")
    monkeypatch.setattr(steps, "METRICS_VERSION", "metrics-stale-test")
    assert _replay_steps(url) == {node: [2] * 6 for node in REPLAYING}
    assert _versions(url)["mentions"] == {"mentions-stale-test"}
    assert _versions(url)["competitive_metrics"] == {"metrics-stale-test"}
    recomputed = _history_ids(url)
    assert {t: len(ids) for t, ids in recomputed.items()} == {t: len(ids) for t, ids in before.items()}
    assert all(set(recomputed[t]).isdisjoint(before[t]) for t in recomputed)  # replaced rows
    assert _replay_steps(url) == {node: [0] * 6 for node in REPLAYING}
    assert _history_ids(url) == recomputed

    # The org file's source categories change (loaded without `org load`'s recompute): the citations
    # replay their history, and the metrics, which read the replaced citations, follow.
    spec = example_org_data()
    spec.update(models=MODELS, locations=["US"], questions=spec["questions"][:2])
    spec["source_categories"] = {"review": ["example-reviews.com"]}
    with session_scope(url) as session:
        upsert_org(session, parse_org_text(yaml.safe_dump(spec)))
    assert _replay_steps(url) == {
        "run_mentions": [0] * 6,
        "run_citations": [2] * 6,
        "competitive_metrics": [2] * 6,
    }
    assert _replay_steps(url) == {node: [0] * 6 for node in REPLAYING}
    assert count(url, ModelCall) == calls  # never a model call


def test_earlier_cycles_are_recomputed_only_when_stale(
    icp_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _history_after_cycles(f"sqlite:///{icp_env / 'app.db'}", icp_env, monkeypatch)


@pytest.mark.postgres
def test_earlier_cycles_are_recomputed_only_when_stale_on_postgres(
    icp_env: Path, monkeypatch: pytest.MonkeyPatch, postgres_databases: Callable[[], str]
) -> None:
    _history_after_cycles(postgres_databases(), icp_env, monkeypatch)
