"""The org analytics computed in the database: counts by GROUP BY over the latest runs, so an org of
any size costs a few queries and memory in proportion to its combinations, never to its runs.

The payload is the one analytics.compute_analytics makes from per-run facts (its reference): the
counts come from one GROUP BY per question x model x location (cell) and company, in one pass over
the metric rows (per-run mentions by window function), and every breakdown (overall, by model, by
location, by question, by segment, stability) adds cells up. The latest runs are
computed once per build into a temporary table that each query joins (materialized_latest): no list
of run ids is ever sent (SQLite refuses more than 32,766 variables, and such lists cost memory in
proportion to the runs).

Intervals of share of voice and average position: the percentile bootstrap over runs
(stats.bootstrap_resamples) for orgs with at most stats.BOOTSTRAP_MAX_RUNS latest runs, whose runs
are then loaded (a bounded number); above it, the delta-method normal interval from the same sums
(stats.ratio_interval), which needs no per-run data.
"""

from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Integer,
    MetaData,
    Select,
    String,
    Subquery,
    Table,
    and_,
    case,
    cast,
    func,
    insert,
    select,
    text,
)
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from icp_pipeline.db.models import (
    Citation,
    Claim,
    Company,
    CompetitiveMetric,
    CycleItem,
    ModelCall,
    OrgLocation,
    OrgModel,
    Question,
    QuestionRun,
)
from icp_pipeline.visibility import analytics as analytics_lib
from icp_pipeline.visibility import evidence, search_fanout, stats

CELL = ["question", "model", "location"]
# The breakdowns of the payload, each a column of the cells (None: the org as a whole).
# "segment" is the question's (its id as a string; runs of file questions have none and are left out).
DIMENSIONS: tuple[str | None, ...] = (None, "model", "location", "question", "segment")
_COMPANY_SUMS = ["mentioned", "position_sum", "position_squares", "cited", "mentions_with"]


def counted_in_analytics() -> ColumnElement[bool]:
    """Whether a question run (joined to its question, model and location) is one the analytics count:
    latest, and its question, model and location still active. The export labels its runs with it."""
    return and_(QuestionRun.is_latest, Question.active, OrgModel.active, OrgLocation.active)


def latest_runs(org_id: str) -> Subquery:
    """The runs the analytics count: latest, of an active question, model and location. Integer keys:
    grouping by them is cheap; the labels (question key, provider/model, country) are mapped after."""
    return (
        select(
            QuestionRun.id.label("run_id"),
            QuestionRun.question_id,
            QuestionRun.model_id,
            QuestionRun.location_id,
            QuestionRun.cycle_item_id,
            QuestionRun.provider,
            QuestionRun.requested_model,
            QuestionRun.synthetic,
        )
        .join(Question, Question.id == QuestionRun.question_id)
        .join(OrgModel, OrgModel.id == QuestionRun.model_id)
        .join(OrgLocation, OrgLocation.id == QuestionRun.location_id)
        .where(QuestionRun.org_id == org_id, counted_in_analytics())
        .subquery("latest")
    )


# The latest runs of one build, materialized once: every section joins this table instead of
# recomputing the latest-runs subquery (a scan of question_runs and three joins, ~0.2 s of server
# CPU at 200,000 runs, once per section). Temporary: private to the connection, dropped at commit
# on PostgreSQL and after the build on both.
_LATEST_TABLE = Table(
    "analytics_latest",
    MetaData(),
    Column("run_id", Integer, primary_key=True),
    Column("question_id", Integer, nullable=False),
    Column("model_id", Integer, nullable=False),
    Column("location_id", Integer, nullable=False),
    Column("cycle_item_id", Integer, nullable=False),
    Column("provider", String(32), nullable=False),
    Column("requested_model", String(120), nullable=False),
    Column("synthetic", Boolean, nullable=False),
    prefixes=["TEMPORARY"],
    postgresql_on_commit="DROP",
)


@contextmanager
def materialized_latest(session: Session, org_id: str) -> Iterator[Subquery]:
    """latest_runs(org_id) stored once in a temporary table, as a subquery with the same columns."""
    connection = session.connection()
    # Qualified, so a real table of that name could never be dropped instead of the temporary one.
    temp_name = f"{'pg_temp' if connection.dialect.name == 'postgresql' else 'temp'}.{_LATEST_TABLE.name}"
    # A build that failed on SQLite may have left it on this pooled connection.
    connection.execute(text(f"DROP TABLE IF EXISTS {temp_name}"))
    _LATEST_TABLE.create(connection)
    latest = latest_runs(org_id)
    connection.execute(
        insert(_LATEST_TABLE).from_select([c.name for c in _LATEST_TABLE.columns], select(latest))
    )
    if connection.dialect.name == "postgresql":
        # Autovacuum never sees temporary tables: without statistics the planner guesses their size.
        connection.execute(text(f"ANALYZE {temp_name}"))
    # Not in a `finally`: after an error PostgreSQL's aborted transaction refuses the DROP (and its
    # rollback removes the table anyway); SQLite's leftover is dropped by the next build, above.
    yield select(_LATEST_TABLE).subquery("latest")
    connection.execute(text(f"DROP TABLE {temp_name}"))


def _mentioned() -> ColumnElement[bool]:
    # A company counts as mentioned in a run when its metric says so and gives a position.
    return and_(CompetitiveMetric.mentioned, CompetitiveMetric.position.is_not(None))


def _active_company(org_id: str) -> ColumnElement[bool]:
    return and_(Company.id == CompetitiveMetric.company_id, Company.org_id == org_id, Company.active)


_IDS = ["question_id", "model_id", "location_id"]


def _sum(value: ColumnElement[Any]) -> ColumnElement[int]:
    # PostgreSQL sums bigints as numeric (Decimal in Python, slow to convert): keep them bigint.
    return cast(func.sum(value), BigInteger)


def _frame(rows: list[Any], columns: list[str]) -> pd.DataFrame:
    """A frame built column by column (pandas inspects every row object when given rows)."""
    data = list(zip(*rows, strict=True)) if rows else [() for _ in columns]
    return pd.DataFrame(dict(zip(columns, data, strict=True)))


_METRIC_VALUES = ("mentioned", "position", "cited")


def _per_metric(company_ids: list[int], latest: Subquery, labelled: bool) -> Subquery:
    """One row per latest run and active company with a metric (one row with no company for a run
    without any): the company's mentioned (0/1), position (0 unless mentioned) and cited (0/1), and
    per run, by window, its mentions of active companies and a row number (1 on one row of each run,
    which carries the run's own sums). One pass over the metric rows: no per-run subquery joined back."""
    mentioned = _mentioned()
    metric = (
        select(
            CompetitiveMetric.question_run_id.label("run_id"),
            CompetitiveMetric.company_id,
            case((mentioned, 1), else_=0).label("mentioned"),
            case((mentioned, CompetitiveMetric.position), else_=0).label("position"),
            case((CompetitiveMetric.cited, 1), else_=0).label("cited"),
        )
        # The org's active company ids (a few, bound), not a join to companies: the metric rows then
        # come straight from the index in run order for the window, where a join needed a nested
        # loop and a materialized copy of them (~0.3 s of 1.6 s at 200,000 runs on PostgreSQL).
        .where(CompetitiveMetric.company_id.in_(company_ids))
        .subquery("metric")
    )
    per_run = {"partition_by": latest.c.run_id}
    return (
        select(
            *(latest.c[name] for name in (*_IDS, *(["provider", "requested_model"] if labelled else []))),
            # A run without metrics: company 0 (ids start at 1) and zeros, so every column stays integer.
            *(func.coalesce(metric.c[name], 0).label(name) for name in ("company_id", *_METRIC_VALUES)),
            # Integer, not bigint: PostgreSQL sums bigints through numeric, several times slower.
            cast(func.coalesce(func.sum(metric.c.mentioned).over(**per_run), 0), Integer).label("mentions"),
            func.row_number().over(**per_run).label("nth"),
        )
        .select_from(latest)
        .outerjoin(metric, metric.c.run_id == latest.c.run_id)
        .subquery("per_metric")
    )


def _integer_frame(session: Session, statement: Select[Any], columns: list[str]) -> pd.DataFrame:
    """The rows of an all-integer statement as a frame of int64 columns. The DBAPI cursor's tuples go
    straight to numpy: per-row Row objects cost ~10x more at a few hundred thousand rows."""
    result = session.connection().execute(statement)
    try:
        rows = result.cursor.fetchall()
    finally:
        result.close()
    values = np.array(rows, dtype=np.int64).reshape(len(rows), len(columns))
    return pd.DataFrame(values, columns=columns)


def _model_labels(session: Session, latest: Subquery) -> pd.DataFrame:
    """Per model id, the labels of its latest runs (provider/requested_model, as the reference labels
    runs) and whether any of them is synthetic: a few rows, joined to the cells after the GROUP BY."""
    rows = session.execute(
        select(
            latest.c.model_id,
            latest.c.provider,
            latest.c.requested_model,
            func.max(case((latest.c.synthetic, 1), else_=0)),
        ).group_by(latest.c.model_id, latest.c.provider, latest.c.requested_model)
    ).all()
    return _frame(rows, ["model_id", "provider", "requested_model", "synthetic"])


def _cells(
    session: Session, org_id: str, company_ids: list[int], latest: Subquery
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Two frames keyed by the cell labels (question key, provider/model, country): per cell its runs,
    the sum of squared mentions per run and whether any run of its model label is synthetic; per cell
    and company its mentioned runs, sums of positions and squared positions, cited runs, and the sum of
    the runs' mentions over the runs that mention it. One GROUP BY per cell of ids and company (the
    run's own sums ride on its first row), then per label in pandas."""
    labels = _model_labels(session, latest)
    # A model id with two labels among its latest runs (renamed between cycles): its labels are keys
    # too (rare; strings, so the rows then take the slower generic path).
    ambiguous = bool(labels.duplicated("model_id").any())
    rows = _per_metric(company_ids, latest, labelled=ambiguous)
    id_keys = [*_IDS, "provider", "requested_model"] if ambiguous else _IDS
    keys = [*(rows.c[name] for name in id_keys), rows.c.company_id]
    first = rows.c.nth == 1
    statement = select(
        *keys,
        _sum(case((first, 1), else_=0)).label("runs"),
        _sum(case((first, rows.c.mentions * rows.c.mentions), else_=0)).label("mention_squares"),
        _sum(rows.c.mentioned),
        _sum(rows.c.position),
        _sum(rows.c.position * rows.c.position),
        _sum(rows.c.cited),
        _sum(rows.c.mentioned * rows.c.mentions),
    ).group_by(*keys)
    columns = [*id_keys, "company_id", "runs", "mention_squares", *_COMPANY_SUMS]
    if ambiguous:
        frame = _frame(session.execute(statement).all(), columns)
    else:
        frame = _integer_frame(session, statement, columns)
    question_rows = session.execute(
        select(Question.id, Question.key, Question.segment_id).where(Question.org_id == org_id)
    ).all()
    questions = {question_id: key for question_id, key, _ in question_rows}
    segments = {key: None if segment is None else str(segment) for _, key, segment in question_rows}
    locations = dict(
        session.execute(select(OrgLocation.id, OrgLocation.country_code).where(OrgLocation.org_id == org_id))
        .tuples()
        .all()
    )
    labels["model"] = labels["provider"] + "/" + labels["requested_model"]
    model_keys = ["model_id", "provider", "requested_model"] if ambiguous else ["model_id"]
    frame = frame.merge(labels[[*model_keys, "model", "synthetic"]], on=model_keys)
    frame["question"] = frame["question_id"].map(questions)
    frame["location"] = frame["location_id"].map(locations)
    # Two model ids may share a label (one model with and without web search): one cell, as in the
    # reference, which groups runs by their labels.
    cell_frame = frame.groupby(CELL, as_index=False, sort=False).agg(
        runs=("runs", "sum"), mention_squares=("mention_squares", "sum"), synthetic=("synthetic", "max")
    )
    company_frame = (
        frame[frame["company_id"] != 0]
        .groupby([*CELL, "company_id"], as_index=False, sort=False)[_COMPANY_SUMS]
        .sum()
    )
    # Dimensions derived from the question are columns mapped on the cells (group keys of None drop).
    for cell_columns in (cell_frame, company_frame):
        cell_columns["segment"] = cell_columns["question"].map(segments)
    return cell_frame, company_frame


@dataclass(frozen=True)
class _Counts:
    runs: int
    mention_squares: int
    by_company: dict[int, dict[str, int]]  # company_id -> the _COMPANY_SUMS


def _group_counts(
    cells: pd.DataFrame, company_cells: pd.DataFrame, dimension: str | None
) -> dict[Any, _Counts]:
    """The sums of each group of the dimension (one group, key None, for the org as a whole)."""
    if dimension is None:
        run_sums = {None: (int(cells["runs"].sum()), int(cells["mention_squares"].sum()))}
    else:
        runs = cells.groupby(dimension)[["runs", "mention_squares"]].sum()
        run_sums = dict(
            zip(
                runs.index,
                zip(runs["runs"].tolist(), runs["mention_squares"].tolist(), strict=True),
                strict=True,
            )
        )
    keys = ["company_id"] if dimension is None else [dimension, "company_id"]
    sums = company_cells.groupby(keys)[_COMPANY_SUMS].sum().reset_index()
    # Columns to Python lists once: iterating a frame's rows builds a Series per row (slow).
    groups = [None] * len(sums) if dimension is None else sums[dimension].tolist()
    by_company: dict[Any, dict[int, dict[str, int]]] = defaultdict(dict)
    for key, company_id, *values in zip(
        groups, sums["company_id"].tolist(), *(sums[name].tolist() for name in _COMPANY_SUMS), strict=True
    ):
        by_company[key][int(company_id)] = dict(zip(_COMPANY_SUMS, values, strict=True))
    return {
        key: _Counts(runs, squares, by_company.get(key, {}))
        for key, (runs, squares) in run_sums.items()
        if runs > 0
    }


def _company_rows(
    companies: list[analytics_lib.CompanyInfo], counts: _Counts, min_runs: int, intervals: str
) -> list[dict[str, Any]]:
    """analytics.company_stats from sums; the bootstrap intervals are added later when used."""
    ratio = analytics_lib._ratio  # noqa: SLF001 - the payload's one rounding rule
    empty = dict.fromkeys(_COMPANY_SUMS, 0)
    all_mentions = sum(counts.by_company.get(c.company_id, empty)["mentioned"] for c in companies)
    rows = []
    for company in companies:
        sums = counts.by_company.get(company.company_id, empty)
        mentioned, cited = sums["mentioned"], sums["cited"]
        share = ratio(mentioned, all_mentions)
        position = ratio(sums["position_sum"], mentioned)
        row: dict[str, Any] = {
            "company_id": company.company_id,
            "name": company.name,
            "is_target": company.is_target,
            "runs": counts.runs,
            "mentioned_runs": mentioned,
            "mention_rate": ratio(mentioned, counts.runs),
            "share_of_voice": share,
            "average_position": position,
            "cited_runs": cited,
            "mention_rate_ci": stats.wilson_interval(mentioned, counts.runs),
            "cited_rate": ratio(cited, counts.runs),
            "cited_rate_ci": stats.wilson_interval(cited, counts.runs),
            "insufficient_data": counts.runs < min_runs,
        }
        if intervals == "delta":
            # share = mentioned / all mentions, a ratio of per-run sums: m (0/1) over M (mentions).
            row["share_of_voice_ci"] = stats.ratio_interval(
                numerator=mentioned,
                denominator=all_mentions,
                numerator_squares=mentioned,
                cross_products=sums["mentions_with"],
                denominator_squares=counts.mention_squares,
                estimate=share,
                bounds=(0.0, 1.0),
            )
            # position = sum of positions / mentioned runs: p over m (0/1), so m*p = p and m*m = m.
            row["average_position_ci"] = stats.ratio_interval(
                numerator=sums["position_sum"],
                denominator=mentioned,
                numerator_squares=sums["position_squares"],
                cross_products=sums["position_sum"],
                denominator_squares=mentioned,
                estimate=position,
                bounds=(1.0, None),
            )
        rows.append(row)
    return rows


def _stability(
    cells: pd.DataFrame, company_cells: pd.DataFrame, companies: list[analytics_lib.CompanyInfo]
) -> dict[str, dict[int, dict[str, Any]]]:
    """analytics.stability per question and company, from the cells: a cell is one model x location,
    repeated when it has two samples or more, disagreeing when some but not all samples mention."""
    ratio = analytics_lib._ratio  # noqa: SLF001
    per_question = (
        cells.assign(repeated=cells["runs"] >= 2)
        .groupby("question")
        .agg(combinations=("runs", "size"), repeated=("repeated", "sum"))
    )
    joined = company_cells.merge(cells[[*CELL, "runs"]], on=CELL)
    joined["disagreeing"] = (
        (joined["runs"] >= 2) & (joined["mentioned"] > 0) & (joined["mentioned"] < joined["runs"])
    )
    disagreeing = joined.groupby(["question", "company_id"])["disagreeing"].sum()
    result: dict[str, dict[int, dict[str, Any]]] = {}
    for question, row in per_question.iterrows():
        repeated = int(row["repeated"])
        result[str(question)] = {}
        for company in companies:
            count = int(disagreeing.get((question, company.company_id), 0))
            result[str(question)][company.company_id] = {
                "combinations": int(row["combinations"]),
                "repeated_combinations": repeated,
                "disagreeing_combinations": count,
                "disagreement_rate": ratio(count, repeated),
            }
    return result


def _bootstrap(
    session: Session,
    org_id: str,
    latest: Subquery,
    companies: list[analytics_lib.CompanyInfo],
    breakdowns: dict[str | None, dict[Any, list[dict[str, Any]]]],
) -> None:
    """The bootstrap intervals of a small org (at most stats.BOOTSTRAP_MAX_RUNS runs): its runs with
    their mentioned companies' positions, in run id order as analytics.compute_analytics has them."""
    metrics = (
        select(CompetitiveMetric.question_run_id, CompetitiveMetric.company_id, CompetitiveMetric.position)
        .join(Company, _active_company(org_id))
        .where(_mentioned())
        .subquery("metric")
    )
    rows = session.execute(
        select(
            latest.c.run_id,
            Question.key,
            Question.segment_id,
            latest.c.provider + "/" + latest.c.requested_model,
            OrgLocation.country_code,
            metrics.c.company_id,
            metrics.c.position,
        )
        .select_from(latest)
        .join(Question, Question.id == latest.c.question_id)
        .join(OrgLocation, OrgLocation.id == latest.c.location_id)
        .outerjoin(metrics, metrics.c.question_run_id == latest.c.run_id)
        .order_by(latest.c.run_id)
    ).all()
    facts: dict[int, analytics_lib.RunFacts] = {}
    for run_id, question, segment, model, location, company_id, position in rows:
        run = facts.setdefault(
            run_id,
            analytics_lib.RunFacts(
                run_id, model, location, question=question, segment=None if segment is None else str(segment)
            ),
        )
        if company_id is not None:
            run.positions[company_id] = position
    runs = list(facts.values())
    for dimension, groups in breakdowns.items():
        members: dict[Any, list[analytics_lib.RunFacts]] = defaultdict(list)
        for run in runs:
            members[None if dimension is None else getattr(run, dimension)].append(run)
        for key, company_rows in groups.items():
            analytics_lib.bootstrap_intervals(companies, members[key], company_rows)


def citation_stats(session: Session, latest: Subquery) -> dict[str, Any]:
    rows = session.execute(
        select(
            Citation.domain,
            func.count(),
            func.count(func.distinct(Citation.question_run_id)),
            func.max(Citation.category),
        )
        .join(latest, latest.c.run_id == Citation.question_run_id)
        .where(Citation.cited)
        .group_by(Citation.domain)
    ).all()
    domains = [
        {"domain": domain, "citations": citations, "runs": runs, "category": category}
        for domain, citations, runs, category in rows
    ]
    domains.sort(key=lambda d: (-d["citations"], d["domain"]))
    return {
        "total": sum(d["citations"] for d in domains),
        "domains": domains,
        "by_category": evidence.category_stats(session, latest),
    }


def sentiment_stats(
    session: Session, latest: Subquery, companies: list[analytics_lib.CompanyInfo]
) -> list[dict[str, Any]]:
    counts: dict[int | None, dict[str, int]] = defaultdict(
        lambda: {"positive": 0, "neutral": 0, "negative": 0}
    )
    for company_id, sentiment, claims in session.execute(
        select(Claim.company_id, Claim.sentiment, func.count())
        .join(latest, latest.c.run_id == Claim.question_run_id)
        .group_by(Claim.company_id, Claim.sentiment)
    ):
        counts[company_id][sentiment] += claims
    rows = []
    for company in companies:
        tally = counts[company.company_id]
        total = sum(tally.values())
        ratio = analytics_lib._ratio  # noqa: SLF001
        rows.append(
            {
                "name": company.name,
                "claims": total,
                **tally,
                "net": ratio(tally["positive"] - tally["negative"], total),
            }
        )
    return rows


def grader_usage(session: Session, latest: Subquery) -> list[analytics_lib.GraderUsage]:
    """The models that made the claims of these runs (each claim names its model call), per model:
    runs, claims, and whether any was synthetic. Runs without claims have no sentiment to attribute."""
    rows = session.execute(
        select(
            ModelCall.provider,
            ModelCall.requested_model,
            ModelCall.synthetic,
            func.count(func.distinct(Claim.question_run_id)),
            func.count(Claim.id),
        )
        .join(ModelCall, ModelCall.id == Claim.model_call_id)
        .join(latest, latest.c.run_id == Claim.question_run_id)
        .group_by(ModelCall.provider, ModelCall.requested_model, ModelCall.synthetic)
    ).all()
    usage: dict[str, analytics_lib.GraderUsage] = {}
    for provider, model, synthetic, runs, claims in rows:
        label = f"{provider}/{model}"
        seen = usage.get(label)
        usage[label] = analytics_lib.GraderUsage(
            label,
            runs + (seen.runs if seen else 0),
            claims + (seen.claims if seen else 0),
            bool(synthetic) or (seen.synthetic if seen else False),
        )
    return list(usage.values())


def cost_stats(session: Session, cycle_id: int) -> dict[str, Any]:
    """analytics.cost_stats over the cycle's paid model calls, summed per model in SQL."""
    blocks: dict[str, dict[str, Any]] = {}
    for provider, model, calls, input_tokens, output_tokens, usd, unknown in session.execute(
        select(
            ModelCall.provider,
            ModelCall.requested_model,
            func.count(),
            func.sum(func.coalesce(ModelCall.input_tokens, 0)),
            func.sum(func.coalesce(ModelCall.output_tokens, 0)),
            func.sum(ModelCall.cost_usd),
            func.sum(case((ModelCall.cost_usd.is_(None), 1), else_=0)),
        )
        .join(CycleItem, CycleItem.id == ModelCall.cycle_item_id)
        .where(CycleItem.cycle_id == cycle_id, ModelCall.paid)
        .group_by(ModelCall.provider, ModelCall.requested_model)
    ):
        block = blocks.setdefault(
            f"{provider}/{model}",
            {"calls": 0, "input_tokens": 0, "output_tokens": 0, "usd": 0.0, "calls_with_unknown_cost": 0},
        )
        block["calls"] += calls
        block["input_tokens"] += int(input_tokens or 0)
        block["output_tokens"] += int(output_tokens or 0)
        block["usd"] += float(usd or 0.0)
        block["calls_with_unknown_cost"] += int(unknown or 0)
    total = {
        name: sum(block[name] for block in blocks.values())
        for name in ("calls", "input_tokens", "output_tokens", "calls_with_unknown_cost")
    }
    total["usd"] = sum(block["usd"] for block in blocks.values())

    def rounded(block: dict[str, Any]) -> dict[str, Any]:
        return {
            "calls": block["calls"],
            "input_tokens": block["input_tokens"],
            "output_tokens": block["output_tokens"],
            "usd": round(block["usd"], 8),
            "calls_with_unknown_cost": block["calls_with_unknown_cost"],
        }

    return {"total": rounded(total), "by_model": {m: rounded(blocks[m]) for m in sorted(blocks)}}


def org_analytics(
    session: Session,
    *,
    org_id: str,
    cycle_id: int,
    generated_at: datetime,
    run_counts: dict[str, int],
    companies: list[analytics_lib.CompanyInfo],
    min_runs: int,
    previous: dict[str, Any] | None,
    grader: tuple[str, str] | None,
) -> dict[str, Any]:
    """The analytics payload of analytics.compute_analytics, computed in the database."""
    if session.get_bind().dialect.name == "postgresql":
        # The roll-up's hash aggregates (a row per cell and company) spill to disk at the default 4 MB.
        session.execute(text("SET LOCAL work_mem = '64MB'"))
    with materialized_latest(session, org_id) as latest:
        # `companies` are the org's active companies (build_analytics reads them): their ids filter the
        # metric rows.
        cells, company_cells = _cells(session, org_id, [c.company_id for c in companies], latest)
        latest_count = int(cells["runs"].sum())
        intervals = "bootstrap" if latest_count <= stats.BOOTSTRAP_MAX_RUNS else "delta"
        breakdowns: dict[str | None, dict[Any, list[dict[str, Any]]]] = {}
        for dimension in DIMENSIONS:
            groups = _group_counts(cells, company_cells, dimension)
            breakdowns[dimension] = {
                key: _company_rows(companies, groups[key], min_runs, intervals)
                for key in sorted(groups, key=_sort_key)
            }
        if intervals == "bootstrap":
            _bootstrap(session, org_id, latest, companies, breakdowns)
        stability = _stability(cells, company_cells, companies)
        for question, rows in breakdowns["question"].items():
            for row in rows:
                row["stability"] = stability[question][row["company_id"]]
        overall = breakdowns[None].get(None) or _company_rows(
            companies, _Counts(0, 0, {}), min_runs, intervals
        )
        if not breakdowns[None]:
            # No latest run: the reference's bootstrap over no runs leaves both intervals undefined.
            for row in overall:
                row["share_of_voice_ci"] = row["average_position_ci"] = None
        previous_rows = {row["name"]: row for row in (previous or {}).get("companies", [])}
        for row in overall:
            row["change"] = analytics_lib.change_since(row, previous_rows.get(row["name"]))
        graders = grader_usage(session, latest)
        return {
            "org_id": org_id,
            "cycle_id": cycle_id,
            "generated_at": generated_at.isoformat(),
            "analytics_version": analytics_lib.ANALYTICS_VERSION,
            "synthetic": bool(cells["synthetic"].max()) if latest_count else False,
            "runs": run_counts,
            "latest_runs": latest_count,
            "companies": overall,
            "by_model": breakdowns["model"],
            "by_location": breakdowns["location"],
            "by_question": breakdowns["question"],
            "by_segment": breakdowns["segment"],
            "min_runs": min_runs,
            "previous_cycle_id": None if previous is None else previous.get("cycle_id"),
            "citations": citation_stats(session, latest),
            "untracked_companies": evidence.untracked_companies(session, latest),
            "sentiment": sentiment_stats(session, latest, companies),
            "cost": cost_stats(session, cycle_id),
            "grader": None if grader is None else {"provider": grader[0], "model": grader[1]},
            "graders": [
                {"model": g.model, "runs": g.runs, "claims": g.claims, "synthetic": g.synthetic}
                for g in sorted(graders, key=lambda g: g.model)
            ],
            "mixed_graders": len(graders) > 1,
            "search_queries": search_fanout.search_query_stats(session, latest),
        }


def _sort_key(key: Any) -> Any:
    # Group keys sort as Python sorts the strings (not by the database's collation); None is alone.
    return "" if key is None else key
