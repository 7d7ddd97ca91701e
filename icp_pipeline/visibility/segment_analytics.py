"""The payload's `by_segment`: per segment, the `by_model` company rows over the runs of the questions
generated from that segment's ICP. Runs of file questions have no segment and are not in it.

Counted in the database like rollup.py: two GROUP BY queries over rollup.latest_runs (runs, and per
company the sums rollup._company_rows takes); the bootstrap intervals of a small org load its segment
runs (at most stats.BOOTSTRAP_MAX_RUNS of them, as rollup does), in run id order as the reference
(analytics.compute_analytics) has them.
"""

from collections import defaultdict
from typing import Any

from sqlalchemy import BigInteger, Subquery, and_, case, cast, func, select
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from icp_pipeline.db.models import Company, CompetitiveMetric, Question, QuestionRun
from icp_pipeline.visibility import analytics as analytics_lib
from icp_pipeline.visibility import rollup


def _sum(value: ColumnElement[Any]) -> ColumnElement[int]:
    return cast(func.sum(value), BigInteger)


def _mentioned() -> ColumnElement[bool]:
    # As rollup: mentioned in a run when the metric says so and gives a position.
    return and_(CompetitiveMetric.mentioned, CompetitiveMetric.position.is_not(None))


def _per_run_mentions(org_id: str) -> Subquery:
    """Per latest run, how many active companies it mentions (share of voice's denominator)."""
    return (
        select(CompetitiveMetric.question_run_id.label("run_id"), func.count().label("mentions"))
        .join(QuestionRun, QuestionRun.id == CompetitiveMetric.question_run_id)
        .join(
            Company,
            and_(Company.id == CompetitiveMetric.company_id, Company.org_id == org_id, Company.active),
        )
        .where(QuestionRun.org_id == org_id, QuestionRun.is_latest, _mentioned())
        .group_by(CompetitiveMetric.question_run_id)
        .subquery("segment_per_run")
    )


def segment_breakdown(
    session: Session,
    org_id: str,
    latest: Subquery,
    companies: list[analytics_lib.CompanyInfo],
    min_runs: int,
    intervals: str,
) -> dict[str, list[dict[str, Any]]]:
    """{segment id as a string: company rows}, sorted by key as the other breakdowns are."""
    per_run = _per_run_mentions(org_id)
    mentions = func.coalesce(per_run.c.mentions, 0)
    segment = Question.segment_id
    base = (
        select()
        .select_from(latest)
        .join(Question, Question.id == latest.c.question_id)
        .outerjoin(per_run, per_run.c.run_id == latest.c.run_id)
        .where(segment.is_not(None))
    )
    runs = {
        str(segment_id): (int(count), int(squares or 0))
        for segment_id, count, squares in session.execute(
            base.add_columns(segment, func.count(), _sum(mentions * mentions)).group_by(segment)
        ).all()
    }
    if not runs:
        return {}
    mentioned = _mentioned()
    active = {c.company_id for c in companies}
    by_company: dict[str, dict[int, dict[str, int]]] = defaultdict(dict)
    for row in session.execute(
        base.join(CompetitiveMetric, CompetitiveMetric.question_run_id == latest.c.run_id)
        .add_columns(
            segment,
            CompetitiveMetric.company_id,
            _sum(case((mentioned, 1), else_=0)),
            _sum(case((mentioned, CompetitiveMetric.position), else_=0)),
            _sum(case((mentioned, CompetitiveMetric.position * CompetitiveMetric.position), else_=0)),
            _sum(case((CompetitiveMetric.cited, 1), else_=0)),
            _sum(case((mentioned, mentions), else_=0)),
        )
        .group_by(segment, CompetitiveMetric.company_id)
    ).all():
        segment_id, company_id, *sums = row
        if company_id in active:
            by_company[str(segment_id)][company_id] = {
                name: int(value or 0)
                for name, value in zip(rollup._COMPANY_SUMS, sums, strict=True)  # noqa: SLF001
            }
    result = {
        key: rollup._company_rows(  # noqa: SLF001 - the one rule for rows from sums
            companies,
            rollup._Counts(count, squares, by_company.get(key, {})),
            min_runs,
            intervals,  # noqa: SLF001
        )
        for key, (count, squares) in sorted(runs.items())
    }
    if intervals == "bootstrap":
        _bootstrap(session, org_id, latest, companies, result)
    return result


def _bootstrap(
    session: Session,
    org_id: str,
    latest: Subquery,
    companies: list[analytics_lib.CompanyInfo],
    result: dict[str, list[dict[str, Any]]],
) -> None:
    metrics = (
        select(CompetitiveMetric.question_run_id, CompetitiveMetric.company_id, CompetitiveMetric.position)
        .join(
            Company,
            and_(Company.id == CompetitiveMetric.company_id, Company.org_id == org_id, Company.active),
        )
        .where(_mentioned())
        .subquery("segment_metric")
    )
    rows = session.execute(
        select(latest.c.run_id, Question.segment_id, metrics.c.company_id, metrics.c.position)
        .select_from(latest)
        .join(Question, Question.id == latest.c.question_id)
        .outerjoin(metrics, metrics.c.question_run_id == latest.c.run_id)
        .where(Question.segment_id.is_not(None))
        .order_by(latest.c.run_id)
    ).all()
    facts: dict[int, analytics_lib.RunFacts] = {}
    for run_id, segment_id, company_id, position in rows:
        run = facts.setdefault(run_id, analytics_lib.RunFacts(run_id, "", "", segment=str(segment_id)))
        if company_id is not None:
            run.positions[company_id] = position
    members: dict[str, list[analytics_lib.RunFacts]] = defaultdict(list)
    for run in facts.values():
        members[run.segment].append(run)
    for key, company_rows in result.items():
        analytics_lib.bootstrap_intervals(companies, members[key], company_rows)
