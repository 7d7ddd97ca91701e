"""The payload's evidence sections: citations by source category and the untracked companies, each
computed in the database (GROUP BY over rollup.latest_runs) and, for the reference computation from
per-run facts (analytics.compute_analytics), from RunFacts. Both give the same result."""

from collections import defaultdict
from typing import Any, Protocol

from sqlalchemy import Subquery, and_, case, func, select, union_all
from sqlalchemy.orm import Session

from icp_pipeline.db.models import Citation, CycleItem, UntrackedMention
from icp_pipeline.visibility.source_categories import CATEGORIES, category_order

# The payload's untracked companies: the first ones by runs then mentions, each with a few runs.
UNTRACKED_LIMIT = 50
EXAMPLE_RUNS = 3


class _EvidenceFacts(Protocol):
    """What analytics.RunFacts carries for these sections."""

    run_id: int
    partition_key: str
    citations: list[tuple[str, str | None, bool]]  # (domain, category, cited), one per URL
    untracked: list[tuple[str, str, str, int]]  # (name_key, name, source, occurrences)


# --- source categories ----------------------------------------------------------------------------


def _category_rows(counts: dict[str | None, dict[str, Any]]) -> list[dict[str, Any]]:
    """Every category in payload order (zeros included, so charts keep their axes), then citations
    stored before categories existed (category None) when there are any."""
    keys = [*CATEGORIES, *([None] if None in counts else [])]
    rows = []
    for category in sorted(keys, key=category_order):
        tally = counts.get(category, {})
        rows.append(
            {
                "category": category,
                "citations": tally.get("citations", 0),
                "runs": tally.get("runs", 0),
                "retrieved_citations": tally.get("retrieved_citations", 0),
                "retrieved_runs": tally.get("retrieved_runs", 0),
            }
        )
    return rows


def category_stats(session: Session, latest: Subquery) -> list[dict[str, Any]]:
    """`citations.by_category`: per category, the cited URLs and the runs citing one (`citations`,
    `runs`), and apart from them the URLs the engine retrieved but did not cite (`retrieved_*`)."""
    counts: dict[str | None, dict[str, Any]] = {}
    for category, cited, citations, runs in session.execute(
        select(
            Citation.category,
            Citation.cited,
            func.count(),
            func.count(func.distinct(Citation.question_run_id)),
        )
        .join(latest, latest.c.run_id == Citation.question_run_id)
        .group_by(Citation.category, Citation.cited)
    ):
        prefix = "" if cited else "retrieved_"
        tally = counts.setdefault(category, {})
        tally[f"{prefix}citations"] = citations
        tally[f"{prefix}runs"] = runs
    return _category_rows(counts)


def reference_category_stats(runs: list[_EvidenceFacts]) -> list[dict[str, Any]]:
    counts: dict[str | None, dict[str, Any]] = {}
    run_sets: dict[tuple[str | None, bool], set[int]] = defaultdict(set)
    for run in runs:
        for _domain, category, cited in run.citations:
            prefix = "" if cited else "retrieved_"
            tally = counts.setdefault(category, {})
            tally[f"{prefix}citations"] = tally.get(f"{prefix}citations", 0) + 1
            run_sets[(category, cited)].add(run.run_id)
    for (category, cited), members in run_sets.items():
        counts[category]["runs" if cited else "retrieved_runs"] = len(members)
    return _category_rows(counts)


def reference_domain_categories(runs: list[_EvidenceFacts]) -> dict[str, str | None]:
    """Each cited domain's category: the greatest stored one (as SQL max), None when none is."""
    found: dict[str, str | None] = {}
    for run in runs:
        for domain, category, cited in run.citations:
            if cited:
                current = found.get(domain)
                found[domain] = category if current is None else max(current, category or current)
    return found


# --- untracked companies --------------------------------------------------------------------------


def _ranked(totals: dict[str, dict[str, Any]], examples: dict[str, list[str]], limit: int) -> list[dict]:
    # Sorted in Python: the database's collation would order ties differently from the reference.
    order = sorted(totals, key=lambda key: (-totals[key]["runs"], -totals[key]["mentions"], key))
    return [{**totals[key], "example_runs": examples.get(key, [])} for key in order[:limit]]


def untracked_companies(session: Session, latest: Subquery, limit: int = UNTRACKED_LIMIT) -> list[dict]:
    """`untracked_companies`: per normalised name, the latest runs naming it (`runs`), the times
    their answers name it (`mentions`), the claims about it (`claims`), where it was found
    (`sources`: text, claim) and the partition keys of its first runs (`example_runs`)."""
    mu = UntrackedMention
    # One statement of hash aggregates, no sort of the mentions (sorting ~550,000 (name, run) rows cost
    # more than all the rest): the mentions grouped per name and run (a run has at most one text and
    # one claim row per name), stored once (a CTE used several times), then per name the totals and
    # the first run; the second and third runs are the smallest above the previous one.
    per_run = (
        select(
            mu.name_key,
            mu.question_run_id.label("run_id"),
            func.min(mu.name).label("name"),
            func.sum(case((mu.source == "text", mu.occurrences), else_=0)).label("mentions"),
            func.sum(case((mu.source == "claim", mu.occurrences), else_=0)).label("claims"),
            func.max(case((mu.source == "text", 1), else_=0)).label("in_text"),
            func.max(case((mu.source == "claim", 1), else_=0)).label("in_claims"),
        )
        .join(latest, latest.c.run_id == mu.question_run_id)
        .group_by(mu.name_key, mu.question_run_id)
        .cte("per_run")
    )
    named = (
        select(
            per_run.c.name_key,
            func.min(per_run.c.name).label("name"),
            func.count().label("runs"),
            func.sum(per_run.c.mentions).label("mentions"),
            func.sum(per_run.c.claims).label("claims"),
            func.max(per_run.c.in_text).label("in_text"),
            func.max(per_run.c.in_claims).label("in_claims"),
            func.min(per_run.c.run_id).label("run_id"),
        )
        .group_by(per_run.c.name_key)
        .cte("named")
    )
    picks = [select(named.c.name_key, named.c.run_id).cte("pick_1")]
    for number in range(2, EXAMPLE_RUNS + 1):
        before = picks[-1]
        picks.append(
            select(per_run.c.name_key, func.min(per_run.c.run_id).label("run_id"))
            .join(before, and_(before.c.name_key == per_run.c.name_key, per_run.c.run_id > before.c.run_id))
            .group_by(per_run.c.name_key)
            .cte(f"pick_{number}")
        )
    examples_runs = union_all(*(select(pick.c.name_key, pick.c.run_id) for pick in picks)).subquery(
        "examples"
    )
    totals: dict[str, dict[str, Any]] = {}
    examples: dict[str, list[str]] = defaultdict(list)
    for key, name, runs, mentions, claims, in_text, in_claims, partition_key in session.execute(
        select(
            named.c.name_key,
            named.c.name,
            named.c.runs,
            named.c.mentions,
            named.c.claims,
            named.c.in_text,
            named.c.in_claims,
            CycleItem.partition_key,
        )
        .join(examples_runs, examples_runs.c.name_key == named.c.name_key)
        .join(latest, latest.c.run_id == examples_runs.c.run_id)
        .join(CycleItem, CycleItem.id == latest.c.cycle_item_id)
        .order_by(named.c.name_key, examples_runs.c.run_id)
    ):
        totals[key] = {
            "name": name,
            "name_key": key,
            "runs": runs,
            "mentions": int(mentions or 0),
            "claims": int(claims or 0),
            "sources": [s for s, present in (("claim", in_claims), ("text", in_text)) if present],
        }
        examples[key].append(partition_key)
    return _ranked(totals, examples, limit)


def reference_untracked_companies(runs: list[_EvidenceFacts], limit: int = UNTRACKED_LIMIT) -> list[dict]:
    totals: dict[str, dict[str, Any]] = {}
    examples: dict[str, list[str]] = defaultdict(list)
    for run in sorted(runs, key=lambda r: r.run_id):
        for key in dict.fromkeys(k for k, *_ in run.untracked):
            if len(examples[key]) < EXAMPLE_RUNS:
                examples[key].append(run.partition_key)
        for key, name, source, occurrences in run.untracked:
            row = totals.setdefault(
                key,
                {"name": name, "name_key": key, "runs": set(), "mentions": 0, "claims": 0, "sources": set()},
            )
            row["name"] = min(row["name"], name)
            row["runs"].add(run.run_id)
            row["mentions" if source == "text" else "claims"] += occurrences
            row["sources"].add(source)
    for row in totals.values():
        row["runs"] = len(row["runs"])
        row["sources"] = sorted(row["sources"])
    return _ranked(totals, examples, limit)
