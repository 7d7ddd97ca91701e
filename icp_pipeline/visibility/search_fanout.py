"""Search fan-out in the app database: the question-run step that stores each run's searches
(search_queries rows, replaced as a whole), and the payload's `search_queries` section counted by
GROUP BY over the latest runs (the reference is search_queries.search_query_stats)."""

from collections import defaultdict
from typing import Any

from sqlalchemy import Subquery, and_, delete, func, select
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from icp_pipeline.db.models import ModelCall, QuestionRun, SearchQuery
from icp_pipeline.db.session import session_scope
from icp_pipeline.ledger import MAX_CONTINUATIONS
from icp_pipeline.providers.base import FINISH_PAUSED
from icp_pipeline.visibility.search_queries import (
    EXAMPLE_RUNS,
    SEARCH_QUERIES_VERSION,
    TOP_QUERIES,
    TOP_QUERIES_PER_MODEL,
    _ratio,
    extract_queries,
)


def turn_bodies(session: Session, run: QuestionRun) -> list[Any]:
    """The raw responses of the run's answer, oldest first: the answer's own, after those of the
    paused turns it continued (Anthropic pause_turn: each response is its own ledger row, and the
    searches before a pause are only in the earlier rows)."""
    call = session.get(ModelCall, run.answer_call_id) if run.answer_call_id else None
    if call is None:
        return [run.raw_response]
    earlier = session.execute(
        select(ModelCall.finish, ModelCall.raw_response)
        .where(ModelCall.subject == call.subject, ModelCall.paid, ModelCall.id < call.id)
        .order_by(ModelCall.id.desc())
        .limit(MAX_CONTINUATIONS + 2)
    ).all()
    paused = []
    for finish, raw in earlier:
        if finish != FINISH_PAUSED:  # a fresh turn started after this row: not part of the answer
            break
        paused.append(raw)
    return [*reversed(paused), call.raw_response]


def extract_run_search_queries(db_url: str, partition_key: str) -> dict[str, Any]:
    """Replace each run's search_queries rows with the searches of its stored raw responses."""
    # Imported here: steps imports rollup, which imports this module for the payload section.
    from icp_pipeline.visibility import steps

    with session_scope(db_url) as session:
        runs = steps._runs(session, partition_key)  # noqa: SLF001 - the steps' one rule for a partition's runs
        stored = without_query = dropped = 0
        examples: list[str] = []
        for run in runs:
            found = extract_queries(run.provider, turn_bodies(session, run))
            session.execute(delete(SearchQuery).where(SearchQuery.question_run_id == run.id))
            session.add_all(
                SearchQuery(
                    question_run_id=run.id,
                    position=position,
                    provider=run.provider[:32],
                    query=query,
                    extractor_version=SEARCH_QUERIES_VERSION,
                )
                for position, query in enumerate(found.queries)
            )
            stored += len(found.queries)
            without_query += found.without_query
            dropped += found.dropped
            examples.extend(found.queries[: 5 - len(examples)])
        return {
            "runs": len(runs),
            "queries": stored,
            "without_query": without_query,
            "dropped": dropped,
            "examples": examples,
        }


# --- the payload section ---------------------------------------------------------------------------


def _code_point_order(column: ColumnElement[str], session: Session) -> ColumnElement[str]:
    """Ties sort by the query's code points, as Python sorts strings: PostgreSQL's "C" collation
    compares UTF-8 bytes (the same order); SQLite's default (BINARY) already does."""
    return column.collate("C") if session.get_bind().dialect.name == "postgresql" else column


def _top_queries(
    session: Session, latest: Subquery, by_model: bool, limit: int
) -> dict[str | None, list[dict[str, Any]]]:
    """The top `limit` queries (by runs, times issued, code points) overall or per model label, each
    with its runs, times issued and up to EXAMPLE_RUNS run ids (the smallest)."""
    keys = [latest.c.provider, latest.c.requested_model] if by_model else []
    runs = func.count(func.distinct(SearchQuery.question_run_id))
    issued = func.count(SearchQuery.id)
    counted = (
        select(*keys, SearchQuery.query, runs.label("runs"), issued.label("issued"))
        .join(latest, latest.c.run_id == SearchQuery.question_run_id)
        .group_by(*keys, SearchQuery.query)
        .subquery("counted")
    )
    counted_keys = [counted.c.provider, counted.c.requested_model] if by_model else []
    rank = (
        func.row_number()
        .over(
            partition_by=counted_keys or None,
            order_by=[
                counted.c.runs.desc(),
                counted.c.issued.desc(),
                _code_point_order(counted.c.query, session),
            ],
        )
        .label("rank")
    )
    ranked = select(*counted_keys, counted.c.query, counted.c.runs, counted.c.issued, rank).subquery("ranked")
    top = select(ranked).where(ranked.c.rank <= limit).subquery("top")
    top_keys = [top.c.provider, top.c.requested_model] if by_model else []
    # The example runs of the top queries only: distinct (query, run) pairs, the first few per query.
    pairs = (
        select(*keys, SearchQuery.query, SearchQuery.question_run_id.label("run_id"))
        .join(latest, latest.c.run_id == SearchQuery.question_run_id)
        .distinct()
        .subquery("pairs")
    )
    pair_keys = [pairs.c.provider, pairs.c.requested_model] if by_model else []
    joined = [k == t for k, t in zip(pair_keys, top_keys, strict=True)]
    example_rank = (
        func.row_number()
        .over(partition_by=[*pair_keys, pairs.c.query], order_by=pairs.c.run_id)
        .label("example_rank")
    )
    examples_ranked = (
        select(*pair_keys, pairs.c.query, pairs.c.run_id, example_rank)
        .join(top, and_(pairs.c.query == top.c.query, *joined))
        .subquery("examples")
    )
    example_keys = [examples_ranked.c.provider, examples_ranked.c.requested_model] if by_model else []
    examples: dict[tuple[Any, ...], list[int]] = defaultdict(list)
    for *key, query, run_id in session.execute(
        select(*example_keys, examples_ranked.c.query, examples_ranked.c.run_id)
        .where(examples_ranked.c.example_rank <= EXAMPLE_RUNS)
        .order_by(examples_ranked.c.run_id)
    ):
        examples[(*key, query)].append(run_id)
    result: dict[str | None, list[dict[str, Any]]] = defaultdict(list)
    for *key, query, query_runs, times, _rank in session.execute(
        select(*top_keys, top.c.query, top.c.runs, top.c.issued, top.c.rank).order_by(*top_keys, top.c.rank)
    ):
        label = f"{key[0]}/{key[1]}" if by_model else None
        result[label].append(
            {
                "query": query,
                "runs": query_runs,
                "issued": times,
                "example_run_ids": examples[(*key, query)],
            }
        )
    return result


def _block(
    runs: int, searching: int, queries: int, distinct: int, top: list[dict[str, Any]]
) -> dict[str, Any]:
    return {
        "runs": runs,
        "runs_with_searches": searching,
        "queries": queries,
        "distinct_queries": distinct,
        "queries_per_searching_run": _ratio(queries, searching),
        "top": top,
    }


def search_query_stats(session: Session, latest: Subquery) -> dict[str, Any]:
    """The payload's `search_queries` (see search_queries.search_query_stats) for rollup.org_analytics."""
    searched = session.execute(
        select(SearchQuery.id).join(latest, latest.c.run_id == SearchQuery.question_run_id).limit(1)
    ).first()
    if searched is None:
        # No run searched (no web search): only the runs per model label, without the count(DISTINCT)
        # joins over every latest run; the rest are zeros and empty lists, as they would count.
        runs_per_label = session.execute(
            select(func.count(), latest.c.provider, latest.c.requested_model).group_by(
                latest.c.provider, latest.c.requested_model
            )
        ).all()
        labels = {f"{provider}/{model}": runs for runs, provider, model in runs_per_label}
        return {
            **_block(sum(labels.values()), 0, 0, 0, []),
            "by_model": {label: _block(labels[label], 0, 0, 0, []) for label in sorted(labels)},
        }
    counts = [
        func.count(func.distinct(latest.c.run_id)),
        func.count(func.distinct(SearchQuery.question_run_id)),
        func.count(SearchQuery.id),
        func.count(func.distinct(SearchQuery.query)),
    ]
    joined = (
        select(*counts)
        .select_from(latest)
        .outerjoin(SearchQuery, SearchQuery.question_run_id == latest.c.run_id)
    )
    overall = session.execute(joined).one()
    per_model = session.execute(
        joined.add_columns(latest.c.provider, latest.c.requested_model).group_by(
            latest.c.provider, latest.c.requested_model
        )
    ).all()
    top = _top_queries(session, latest, by_model=False, limit=TOP_QUERIES)
    top_by_model = _top_queries(session, latest, by_model=True, limit=TOP_QUERIES_PER_MODEL)
    models: dict[str, list[int]] = {}
    for runs, searching, queries, distinct, provider, model in per_model:
        # Two model ids may share a label: the label is the model, as in the rest of the payload.
        models[f"{provider}/{model}"] = [runs, searching, queries, distinct]
    return {
        **_block(*overall, top.get(None, [])),
        "by_model": {label: _block(*models[label], top_by_model.get(label, [])) for label in sorted(models)},
    }
