"""The analytics computed in the database (rollup.py) against the reference computation from per-run
facts (analytics.compute_analytics, loaded as build_analytics did before), on SQLite and PostgreSQL;
and an org with more latest runs than SQLite allows bound variables in one statement."""

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from icp_pipeline.db.models import (
    Citation,
    Claim,
    Company,
    CompetitiveMetric,
    CycleItem,
    ModelCall,
    Org,
    OrgLocation,
    OrgModel,
    Question,
    QuestionRun,
    UntrackedMention,
)
from icp_pipeline.db.session import session_scope, upgrade
from icp_pipeline.visibility import analytics, rollup, stats, steps
from icp_pipeline.visibility.claims import org_grader
from icp_pipeline.visibility.cycles import latest_cycle
from icp_pipeline_tests.support.big_org import OrgShape, build_org

# 6 questions x 3 models x 2 locations x 3 samples, plus an older cycle, failed runs and inactive rows.
SMALL = OrgShape(questions=6, models=3, locations=2, samples=3, companies=4)


def reference_payload(url: str, org_id: str) -> dict[str, Any]:
    """The payload as build_analytics computed it before the rewrite: every latest run loaded into
    RunFacts, then analytics.compute_analytics (fine for a small org)."""
    with session_scope(url) as session:
        org = session.get(Org, org_id)
        cycle = latest_cycle(session, org_id)
        companies = session.scalars(
            sa.select(Company).where(Company.org_id == org_id, Company.active).order_by(Company.id)
        ).all()
        runs = session.execute(
            sa.select(
                QuestionRun.id,
                QuestionRun.provider,
                QuestionRun.requested_model,
                OrgLocation.country_code,
                Question.key,
                QuestionRun.sample_index,
                QuestionRun.synthetic,
                CycleItem.partition_key,
                Question.segment_id,
            )
            .join(Question, Question.id == QuestionRun.question_id)
            .join(CycleItem, CycleItem.id == QuestionRun.cycle_item_id)
            .join(OrgModel, OrgModel.id == QuestionRun.model_id)
            .join(OrgLocation, OrgLocation.id == QuestionRun.location_id)
            .where(
                QuestionRun.org_id == org_id,
                QuestionRun.is_latest,
                Question.active,
                OrgModel.active,
                OrgLocation.active,
            )
            .order_by(QuestionRun.id)
        ).all()
        facts = {
            r.id: analytics.RunFacts(
                r.id,
                f"{r.provider}/{r.requested_model}",
                r.country_code,
                question=r.key,
                sample_index=r.sample_index,
                partition_key=r.partition_key,
                segment=None if r.segment_id is None else str(r.segment_id),
            )
            for r in runs
        }
        for metric in session.scalars(
            sa.select(CompetitiveMetric).where(CompetitiveMetric.question_run_id.in_(facts))
        ):
            if metric.mentioned and metric.position is not None:
                facts[metric.question_run_id].positions[metric.company_id] = metric.position
            if metric.cited:
                facts[metric.question_run_id].cited_companies.add(metric.company_id)
        for run_id, url_, domain in session.execute(
            sa.select(Citation.question_run_id, Citation.url, Citation.domain).where(
                Citation.question_run_id.in_(facts), Citation.cited
            )
        ):
            facts[run_id].cited_urls.append((url_, domain))
        for run_id, domain, category, cited in session.execute(
            sa.select(Citation.question_run_id, Citation.domain, Citation.category, Citation.cited).where(
                Citation.question_run_id.in_(facts)
            )
        ):
            facts[run_id].citations.append((domain, category, cited))
        for row in session.scalars(
            sa.select(UntrackedMention).where(UntrackedMention.question_run_id.in_(facts))
        ):
            facts[row.question_run_id].untracked.append((row.name_key, row.name, row.source, row.occurrences))
        usage: dict[str, list[Any]] = {}
        for claim, call in session.execute(
            sa.select(Claim, ModelCall)
            .outerjoin(ModelCall, ModelCall.id == Claim.model_call_id)
            .where(Claim.question_run_id.in_(facts))
        ):
            facts[claim.question_run_id].claim_sentiments.append((claim.company_id, claim.sentiment))
            if call is not None:
                entry = usage.setdefault(f"{call.provider}/{call.requested_model}", [set(), 0, False])
                entry[0].add(claim.question_run_id)
                entry[1] += 1
                entry[2] = entry[2] or call.synthetic
        calls = [
            analytics.CallCost(
                f"{c.provider}/{c.requested_model}", c.input_tokens, c.output_tokens, c.cost_usd
            )
            for c in session.scalars(
                sa.select(ModelCall)
                .join(CycleItem, CycleItem.id == ModelCall.cycle_item_id)
                .where(CycleItem.cycle_id == cycle.id, ModelCall.paid)
            )
        ]
        grader = org_grader(org.grader_provider, org.grader_model)
        return analytics.compute_analytics(
            org_id=org_id,
            cycle_id=cycle.id,
            generated_at=datetime.now(UTC),
            run_counts={"total": cycle.total, "completed": cycle.completed, "failed": cycle.failed},
            companies=[analytics.CompanyInfo(c.id, c.name, c.is_target) for c in companies],
            runs=list(facts.values()),
            calls=calls,
            synthetic=any(r.synthetic for r in runs),
            min_runs=org.min_runs,
            previous=steps.previous_payload(session, org_id, cycle.id),
            grader=(grader.provider, grader.model) if grader else None,
            graders=[analytics.GraderUsage(m, len(e[0]), e[1], bool(e[2])) for m, e in usage.items()],
        )


def _without_time(payload: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in payload.items() if key != "generated_at"}


def _interval_fields(rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [
        (r["share_of_voice"], r["share_of_voice_ci"], r["average_position"], r["average_position_ci"])
        for r in rows
    ]


def _check_equivalence(url: str) -> None:
    upgrade(url)
    build_org(url, "small", SMALL)
    marked = steps.mark_latest(url, "small")
    # Cycle 2 asks every combination 3 times; items with id % 97 == 0 failed, and cycle 1 is dropped.
    with session_scope(url) as session:
        newest = session.scalar(sa.select(sa.func.max(QuestionRun.cycle_id)))
        expected = session.scalar(
            sa.select(sa.func.count()).where(
                QuestionRun.cycle_id == newest, QuestionRun.status == "completed"
            )
        )
    assert marked == {"latest_runs": expected, "from_cycles": [newest]}
    first = steps.build_analytics(url, "small").payload
    assert first["latest_runs"] > 90
    assert _without_time(first) == _without_time(reference_payload(url, "small"))
    # Sanity of the fixture: every part of the payload has something to compare.
    assert first["citations"]["total"] > 0 and first["sentiment"][0]["claims"] > 0
    by_category = first["citations"]["by_category"]
    assert sum(1 for row in by_category if row["citations"]) >= 5
    assert sum(row["retrieved_citations"] for row in by_category) > 0
    assert by_category[-1]["category"] is None  # citations stored before categories existed
    assert len(first["untracked_companies"]) == 6
    # Vendor 0 is named by the text only ((run * 0) % 5 is never 1), the others by both.
    assert {tuple(row["sources"]) for row in first["untracked_companies"]} == {("claim", "text"), ("text",)}
    assert first["cost"]["total"]["calls_with_unknown_cost"] > 0 and first["graders"]
    assert any(
        r["stability"]["disagreeing_combinations"] for rows in first["by_question"].values() for r in rows
    )
    assert len(first["companies"]) == SMALL.companies and len(first["by_model"]) == SMALL.models

    # A second build of the same cycle (its change against no earlier snapshot) stays equal too.
    again = steps.build_analytics(url, "small").payload
    assert _without_time(again) == _without_time(first)


def test_database_analytics_equal_the_reference_on_sqlite(tmp_path: Path) -> None:
    _check_equivalence(f"sqlite:///{tmp_path / 'app.db'}")


def test_database_analytics_equal_the_reference_on_postgres(postgres_databases: Callable[[], str]) -> None:
    _check_equivalence(postgres_databases())


def _check_model_labels(url: str) -> None:
    """A model renamed between cycles (one model id, two labels among its latest runs) and two model
    ids with one label (a model with and without web search): cells follow the runs' labels, as the
    reference groups them, on the roll-up's generic path (labels as keys) and its integer one."""
    upgrade(url)
    build_org(url, "small", SMALL)
    steps.mark_latest(url, "small")
    with session_scope(url) as session:
        first, second, third = session.scalars(
            sa.select(OrgModel.id).where(OrgModel.org_id == "small").order_by(OrgModel.id).limit(3)
        ).all()
        session.execute(
            sa.update(QuestionRun)
            .where(QuestionRun.model_id == first, QuestionRun.id % 2 == 0)
            .values(requested_model="renamed")
        )
        session.execute(
            sa.update(QuestionRun)
            .where(QuestionRun.model_id == third)
            .values(provider="p1", requested_model="model-1")
        )
    renamed = steps.build_analytics(url, "small").payload
    assert {"p0/model-0", "p0/renamed", "p1/model-1"} <= set(renamed["by_model"])
    assert _without_time(renamed) == _without_time(reference_payload(url, "small"))
    with session_scope(url) as session:
        session.execute(
            sa.update(QuestionRun).where(QuestionRun.model_id == first).values(requested_model="model-0")
        )
    shared = steps.build_analytics(url, "small").payload
    assert "p0/renamed" not in shared["by_model"] and len(shared["by_model"]) == SMALL.models - 1
    assert _without_time(shared) == _without_time(reference_payload(url, "small"))


def test_model_labels_follow_the_runs_on_sqlite(tmp_path: Path) -> None:
    _check_model_labels(f"sqlite:///{tmp_path / 'app.db'}")


def test_model_labels_follow_the_runs_on_postgres(postgres_databases: Callable[[], str]) -> None:
    _check_model_labels(postgres_databases())


def test_delta_intervals_above_the_bootstrap_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Above stats.BOOTSTRAP_MAX_RUNS the counts and rates are the same and the two intervals come
    from the delta method: each contains its estimate and is close to the bootstrap's."""
    url = f"sqlite:///{tmp_path / 'app.db'}"
    upgrade(url)
    build_org(url, "small", SMALL)
    steps.mark_latest(url, "small")
    bootstrap = steps.build_analytics(url, "small").payload
    monkeypatch.setattr(stats, "BOOTSTRAP_MAX_RUNS", 10)
    delta = steps.build_analytics(url, "small").payload
    interval_keys = {"share_of_voice_ci", "average_position_ci"}

    def counts(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{k: v for k, v in row.items() if k not in interval_keys} for row in rows]

    assert counts(delta["companies"]) == counts(bootstrap["companies"])
    for key in ("by_model", "by_location", "by_question"):
        assert {k: counts(v) for k, v in delta[key].items()} == {
            k: counts(v) for k, v in bootstrap[key].items()
        }
    assert _interval_fields(delta["companies"]) != _interval_fields(bootstrap["companies"])
    for rows in [delta["companies"], *delta["by_model"].values(), *delta["by_question"].values()]:
        for row in rows:
            for estimate, interval in (
                (row["share_of_voice"], row["share_of_voice_ci"]),
                (row["average_position"], row["average_position_ci"]),
            ):
                if estimate is None:
                    assert interval is None
                else:
                    assert interval[0] <= estimate <= interval[1]
    for d, b in zip(delta["companies"], bootstrap["companies"], strict=True):
        assert d["share_of_voice_ci"] == pytest.approx(b["share_of_voice_ci"], abs=0.02)
        assert d["average_position_ci"] == pytest.approx(b["average_position_ci"], abs=0.1)


def test_sqlite_counts_more_latest_runs_than_its_variable_limit(tmp_path: Path) -> None:
    """36,000 latest runs: more than SQLite's 32,766 bound variables, which a list of run ids hit."""
    url = f"sqlite:///{tmp_path / 'app.db'}"
    upgrade(url)
    shape = OrgShape(questions=100, models=4, locations=10, samples=9, companies=3, history=False)
    build_org(url, "big", shape)
    assert steps.mark_latest(url, "big")["latest_runs"] == shape.latest_runs == 36_000
    payload = steps.build_analytics(url, "big").payload
    assert payload["latest_runs"] == 36_000
    with session_scope(url) as session:
        mentioned = dict(
            session.execute(
                sa.select(CompetitiveMetric.company_id, sa.func.count())
                .where(CompetitiveMetric.mentioned)
                .group_by(CompetitiveMetric.company_id)
            ).all()
        )
    assert {row["company_id"]: row["mentioned_runs"] for row in payload["companies"]} == mentioned
    assert sum(r["runs"] for rows in [payload["by_model"]] for r in [v[0] for v in rows.values()]) == 36_000
    assert len(payload["by_question"]) == 100
    assert payload["cost"]["total"]["calls"] == 36_000


def _check_two_roll_ups_in_one_transaction(url: str) -> None:
    """The latest runs are a temporary table private to one roll-up: two roll-ups in the same
    transaction (same connection) each create and drop it, give the same payload, and leave no table
    behind."""
    upgrade(url)
    build_org(url, "small", SMALL)
    steps.mark_latest(url, "small")
    with session_scope(url) as session:
        cycle = latest_cycle(session, "small")
        assert cycle is not None
        companies = session.scalars(
            sa.select(Company).where(Company.org_id == "small", Company.active).order_by(Company.id)
        ).all()
        arguments: dict[str, Any] = {
            "org_id": "small",
            "cycle_id": cycle.id,
            "generated_at": datetime(2026, 11, 30, tzinfo=UTC),
            "run_counts": {"total": cycle.total, "completed": cycle.completed, "failed": cycle.failed},
            "companies": [analytics.CompanyInfo(c.id, c.name, c.is_target) for c in companies],
            "min_runs": 10,
            "previous": None,
            "grader": None,
        }
        first = rollup.org_analytics(session, **arguments)
        second = rollup.org_analytics(session, **arguments)
        assert first == second and first["latest_runs"] > 0
        assert not sa.inspect(session.connection()).has_table("analytics_latest")
    assert _without_time(first) == _without_time(reference_payload(url, "small"))


def test_two_roll_ups_in_one_transaction_on_sqlite(tmp_path: Path) -> None:
    _check_two_roll_ups_in_one_transaction(f"sqlite:///{tmp_path / 'app.db'}")


def test_two_roll_ups_in_one_transaction_on_postgres(postgres_databases: Callable[[], str]) -> None:
    _check_two_roll_ups_in_one_transaction(postgres_databases())
