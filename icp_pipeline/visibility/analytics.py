"""Org analytics over the latest completed run of each question x model x location. Pure functions.

Every company row carries its sample size and 95% intervals (see stats.py for the methods); the
overall rows also carry the change since the previous cycle's snapshot.
"""

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from icp_pipeline.terminal import inert, markdown_cell
from icp_pipeline.visibility import evidence, search_queries, stats

# analytics-3: company rows carry company_id; grader, graders and mixed_graders.
# analytics-4: computed in the database (rollup.py); orgs above stats.BOOTSTRAP_MAX_RUNS latest runs
# get delta-method share-of-voice and position intervals instead of the bootstrap (same below it).
ANALYTICS_VERSION = "analytics-4"
DEFAULT_MIN_RUNS = 10
SIGNIFICANCE_LEVEL = 0.05


@dataclass(frozen=True)
class CompanyInfo:
    company_id: int
    name: str
    is_target: bool


@dataclass
class RunFacts:
    run_id: int
    model: str  # provider/model
    location: str
    positions: dict[int, int] = field(default_factory=dict)  # company_id -> position, mentioned only
    cited_companies: set[int] = field(default_factory=set)
    cited_urls: list[tuple[str, str]] = field(default_factory=list)  # (url, domain), once per URL
    claim_sentiments: list[tuple[int | None, str]] = field(default_factory=list)
    question: str = ""  # the question's key
    sample_index: int = 0
    partition_key: str = ""
    # Every citation of the run, cited or retrieved only: (domain, category, cited), once per URL.
    citations: list[tuple[str, str | None, bool]] = field(default_factory=list)
    # The run's untracked companies: (name_key, name, source, occurrences).
    untracked: list[tuple[str, str, str, int]] = field(default_factory=list)
    search_queries: list[str] = field(default_factory=list)  # normalised, in the order issued
    segment: str | None = None  # the id (as a string) of the segment whose ICP proposed the question


@dataclass(frozen=True)
class GraderUsage:
    """A model whose claims are in the analytics: on how many runs, how many claims, and whether any
    came from the offline provider (synthetic)."""

    model: str  # provider/model
    runs: int
    claims: int
    synthetic: bool


@dataclass(frozen=True)
class SegmentLabel:
    """What the report shows of a `by_segment` key besides the payload's rows: read from the database
    when the report is printed (segments/report.py, org_segment_labels)."""

    name: str
    questions: int  # the org's active questions generated from the segment, now
    fit_score: float | None  # the segment's ICP fit score; None when it has no successful build
    key: str = ""  # the segment's id in its site file
    site_id: str = ""


@dataclass(frozen=True)
class CallCost:
    model: str
    input_tokens: int | None
    output_tokens: int | None
    usd: float | None


def _ratio(numerator: float, denominator: float) -> float | None:
    return round(numerator / denominator, 6) if denominator else None


def bootstrap_intervals(
    companies: list[CompanyInfo], runs: list[RunFacts], rows: list[dict[str, Any]]
) -> None:
    """Adds share_of_voice_ci and average_position_ci to rows: one percentile bootstrap over the runs,
    whose resamples every company shares (stats.bootstrap_resamples, fixed seed)."""
    # Per company, a 0/1 mention flag and the position (0 when not mentioned) of each run; a resample's
    # sums are then C-level map/sum over its indices rather than a Python loop per run.
    flags = {c.company_id: [int(c.company_id in r.positions) for r in runs] for c in companies}
    places = {c.company_id: [r.positions.get(c.company_id, 0) for r in runs] for c in companies}
    share_values: dict[int, list[float | None]] = {c.company_id: [] for c in companies}
    position_values: dict[int, list[float | None]] = {c.company_id: [] for c in companies}
    for sample in stats.bootstrap_resamples(len(runs)):
        mentions = {c.company_id: sum(map(flags[c.company_id].__getitem__, sample)) for c in companies}
        total = sum(mentions.values())
        for company in companies:
            count = mentions[company.company_id]
            share_values[company.company_id].append(count / total if total else None)
            position_values[company.company_id].append(
                sum(map(places[company.company_id].__getitem__, sample)) / count if count else None
            )
    for company, row in zip(companies, rows, strict=True):
        row["share_of_voice_ci"] = stats.percentile_interval(
            share_values[company.company_id], row["share_of_voice"]
        )
        row["average_position_ci"] = stats.percentile_interval(
            position_values[company.company_id], row["average_position"]
        )


def company_stats(
    companies: list[CompanyInfo], runs: list[RunFacts], min_runs: int = DEFAULT_MIN_RUNS
) -> list[dict[str, Any]]:
    mentioned = {c.company_id: sum(1 for r in runs if c.company_id in r.positions) for c in companies}
    all_mentions = sum(mentioned.values())
    rows = []
    for company in companies:
        positions = [r.positions[company.company_id] for r in runs if company.company_id in r.positions]
        cited = sum(1 for r in runs if company.company_id in r.cited_companies)
        rows.append(
            {
                "company_id": company.company_id,
                "name": company.name,
                "is_target": company.is_target,
                "runs": len(runs),
                "mentioned_runs": mentioned[company.company_id],
                "mention_rate": _ratio(mentioned[company.company_id], len(runs)),
                "share_of_voice": _ratio(mentioned[company.company_id], all_mentions),
                "average_position": _ratio(sum(positions), len(positions)),
                "cited_runs": cited,
                "mention_rate_ci": stats.wilson_interval(mentioned[company.company_id], len(runs)),
                "cited_rate": _ratio(cited, len(runs)),
                "cited_rate_ci": stats.wilson_interval(cited, len(runs)),
                "insufficient_data": len(runs) < min_runs,
            }
        )
    bootstrap_intervals(companies, runs, rows)
    return rows


def _grouped(
    companies: list[CompanyInfo], runs: list[RunFacts], attribute: str, min_runs: int = DEFAULT_MIN_RUNS
) -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list[RunFacts]] = defaultdict(list)
    for run in runs:
        groups[getattr(run, attribute)].append(run)
    return {key: company_stats(companies, groups[key], min_runs) for key in sorted(groups)}


def stability(company_id: int, runs: list[RunFacts]) -> dict[str, Any]:
    """How often the samples of one model x location disagree about a company (some mention it, some
    do not), over the combinations with at least two samples. With one sample per combination nothing
    can disagree: repeated_combinations is 0 and disagreement_rate is null (0 of 0), not 0."""
    samples: dict[tuple[str, str], list[bool]] = defaultdict(list)
    for run in runs:
        samples[(run.model, run.location)].append(company_id in run.positions)
    repeated = [mentions for mentions in samples.values() if len(mentions) >= 2]
    disagreeing = sum(1 for mentions in repeated if len(set(mentions)) == 2)
    return {
        "combinations": len(samples),
        "repeated_combinations": len(repeated),
        "disagreeing_combinations": disagreeing,
        "disagreement_rate": _ratio(disagreeing, len(repeated)),
    }


def question_stats(
    companies: list[CompanyInfo], runs: list[RunFacts], min_runs: int = DEFAULT_MIN_RUNS
) -> dict[str, list[dict[str, Any]]]:
    """The company rows per question key, each with its stability across samples."""
    by_question = _grouped(companies, runs, "question", min_runs)
    for key, rows in by_question.items():
        question_runs = [r for r in runs if r.question == key]
        for company, row in zip(companies, rows, strict=True):
            row["stability"] = stability(company.company_id, question_runs)
    return by_question


def segment_stats(
    companies: list[CompanyInfo], runs: list[RunFacts], min_runs: int = DEFAULT_MIN_RUNS
) -> dict[str, list[dict[str, Any]]]:
    """`by_segment`: the company rows per segment over the runs of its questions (file questions'
    runs have no segment and are left out)."""
    return _grouped(companies, [r for r in runs if r.segment is not None], "segment", min_runs)


def change_since(current: dict[str, Any], previous: dict[str, Any] | None) -> dict[str, Any] | None:
    """The change of one overall company row since the same company's row of the previous cycle:
    deltas (current minus previous) and the two-sided Fisher exact test on mentioned / not mentioned
    runs. None when there is no previous row to compare with."""
    if previous is None or "mentioned_runs" not in previous or "runs" not in previous:
        return None

    def delta(name: str) -> float | None:
        now, before = current.get(name), previous.get(name)
        return None if now is None or before is None else round(now - before, 6)

    mentioned, runs = current["mentioned_runs"], current["runs"]
    before_mentioned, before_runs = previous["mentioned_runs"], previous["runs"]
    # Ten significant digits (not decimals), so a tiny p-value does not print as 0.
    exact = stats.fisher_exact_two_sided(
        mentioned, runs - mentioned, before_mentioned, before_runs - before_mentioned
    )
    p_value = float(f"{exact:.10g}")
    return {
        "mention_rate": delta("mention_rate"),
        "share_of_voice": delta("share_of_voice"),
        "p_value": p_value,
        "significant": p_value < SIGNIFICANCE_LEVEL,
    }


def citation_stats(runs: list[RunFacts]) -> dict[str, Any]:
    per_domain: dict[str, dict[str, Any]] = defaultdict(lambda: {"citations": 0, "runs": set()})
    for run in runs:
        for _url, domain in run.cited_urls:
            per_domain[domain]["citations"] += 1
            per_domain[domain]["runs"].add(run.run_id)
    categories = evidence.reference_domain_categories(runs)
    domains = [
        {
            "domain": domain,
            "citations": stats["citations"],
            "runs": len(stats["runs"]),
            "category": categories.get(domain),
        }
        for domain, stats in per_domain.items()
    ]
    domains.sort(key=lambda d: (-d["citations"], d["domain"]))
    return {
        "total": sum(len(r.cited_urls) for r in runs),
        "domains": domains,
        "by_category": evidence.reference_category_stats(runs),
    }


def sentiment_stats(companies: list[CompanyInfo], runs: list[RunFacts]) -> list[dict[str, Any]]:
    rows = []
    for company in companies:
        counts = {"positive": 0, "neutral": 0, "negative": 0}
        for run in runs:
            for company_id, sentiment in run.claim_sentiments:
                if company_id == company.company_id:
                    counts[sentiment] += 1
        total = sum(counts.values())
        rows.append(
            {
                "name": company.name,
                "claims": total,
                **counts,
                "net": _ratio(counts["positive"] - counts["negative"], total),
            }
        )
    return rows


def _cost_block(calls: list[CallCost]) -> dict[str, Any]:
    unknown = sum(1 for c in calls if c.usd is None)
    return {
        "calls": len(calls),
        "input_tokens": sum(c.input_tokens or 0 for c in calls),
        "output_tokens": sum(c.output_tokens or 0 for c in calls),
        "usd": round(sum(c.usd for c in calls if c.usd is not None), 8),
        "calls_with_unknown_cost": unknown,
    }


def cost_stats(calls: list[CallCost]) -> dict[str, Any]:
    models = sorted({c.model for c in calls})
    return {
        "total": _cost_block(calls),
        "by_model": {m: _cost_block([c for c in calls if c.model == m]) for m in models},
    }


def compute_analytics(
    *,
    org_id: str,
    cycle_id: int | None,
    generated_at: datetime,
    run_counts: dict[str, int],
    companies: list[CompanyInfo],
    runs: list[RunFacts],
    calls: list[CallCost],
    synthetic: bool,
    min_runs: int = DEFAULT_MIN_RUNS,
    previous: dict[str, Any] | None = None,
    grader: tuple[str, str] | None = None,
    graders: list[GraderUsage] | None = None,
) -> dict[str, Any]:
    """The analytics payload. `previous` is the previous cycle's payload (the latest earlier cycle with
    analytics), or None; each overall company row gets its `change` since it. `grader` is the org's
    configured grader (provider, model), None when each answering model grades its own answers;
    `graders` are the models whose claims the sentiment figures count."""
    companies_rows = company_stats(companies, runs, min_runs)
    previous_rows = {row["name"]: row for row in (previous or {}).get("companies", [])}
    for row in companies_rows:
        row["change"] = change_since(row, previous_rows.get(row["name"]))
    return {
        "org_id": org_id,
        "cycle_id": cycle_id,
        "generated_at": generated_at.isoformat(),
        "analytics_version": ANALYTICS_VERSION,
        "synthetic": synthetic,
        "runs": run_counts,
        "latest_runs": len(runs),
        "companies": companies_rows,
        "by_model": _grouped(companies, runs, "model", min_runs),
        "by_location": _grouped(companies, runs, "location", min_runs),
        "by_question": question_stats(companies, runs, min_runs),
        "by_segment": segment_stats(companies, runs, min_runs),
        "min_runs": min_runs,
        "previous_cycle_id": None if previous is None else previous.get("cycle_id"),
        "citations": citation_stats(runs),
        "untracked_companies": evidence.reference_untracked_companies(runs),
        "sentiment": sentiment_stats(companies, runs),
        "cost": cost_stats(calls),
        "grader": None if grader is None else {"provider": grader[0], "model": grader[1]},
        "graders": [
            {"model": g.model, "runs": g.runs, "claims": g.claims, "synthetic": g.synthetic}
            for g in sorted(graders or [], key=lambda g: g.model)
        ],
        # More than one model judged the claims: sentiment compared across answering models then mixes
        # answer bias with grader bias.
        "mixed_graders": len(graders or []) > 1,
        "search_queries": search_queries.search_query_stats(
            (r.run_id, r.model, r.search_queries) for r in runs
        ),
    }


def _fmt(value: Any, percent: bool = False) -> str:
    if value is None:
        return "–"
    if percent:
        return f"{value:.0%}"
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def format_interval(interval: list[float] | None, percent: bool = True) -> str:
    if interval is None:
        return "–"
    return f"[{_fmt(interval[0], percent)}, {_fmt(interval[1], percent)}]"


def _interval_suffix(row: dict[str, Any]) -> str:
    # Snapshots from before the intervals have none; their rows print as they did.
    interval = row.get("mention_rate_ci")
    return "" if interval is None else f" {format_interval(interval)}"


def analytics_markdown(payload: dict[str, Any], segments: dict[str, SegmentLabel] | None = None) -> str:
    """The companies table as markdown, then the evidence sections (evidence_markdown), for the CLI.
    Every name is model output or from an org file: each cell goes through markdown_cell."""
    lines = [
        "| Company | Target | Runs | Mentioned | Mention rate [95% CI] | Share of voice | Avg position | Cited runs |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in payload["companies"]:
        lines.append(
            f"| {markdown_cell(row['name'])} | {'yes' if row['is_target'] else ''} | {row['runs']} | "
            f"{row['mentioned_runs']} | {_fmt(row['mention_rate'], True)}{_interval_suffix(row)} | "
            f"{_fmt(row['share_of_voice'], True)} | "
            f"{_fmt(row['average_position'])} | {row['cited_runs']} |"
        )
    runs = payload["runs"]
    # A blank line ends the table: a line right after it would render as one more row.
    footer = f"\n\nRuns: {runs['completed']} completed, {runs['failed']} failed, {runs['total']} total."
    if payload.get("synthetic"):
        footer += " Synthetic data from the offline provider."
    footer += grader_line(payload)
    return "\n".join(lines) + footer + evidence_markdown(payload, segments or {})


def segment_target(
    companies: list[dict[str, Any]], fit_score: float | None
) -> tuple[dict[str, Any] | None, float | None]:
    """The target's row among one `by_segment` key's company rows (None if it has none), and the gap:
    the segment's fit score - the target's mention rate, rounded to 6 places (None when either is
    unknown). A large gap: the site fits the segment, assistants do not recommend it."""
    target = next((row for row in companies if row.get("is_target")), None)
    rate = target.get("mention_rate") if target else None
    gap = round(fit_score - rate, 6) if fit_score is not None and rate is not None else None
    return target, gap


# Rows of the untracked companies and of the search queries the report shows (the payload has more).
REPORT_TOP = 10


def _segment_section(
    by_segment: dict[str, list[dict[str, Any]]], labels: dict[str, SegmentLabel]
) -> list[str]:
    rows = []
    for key, companies in by_segment.items():
        label = labels.get(key)
        target, gap = segment_target(companies, label.fit_score if label else None)
        rows.append((key, label, target, gap))
    # Largest gap first, as in `site report`: where the site fits and assistants do not recommend it.
    rows.sort(key=lambda r: (r[3] is None, -(r[3] or 0), r[1].name if r[1] else "", r[0]))
    lines = [
        "",
        "## Visibility per ICP segment (the target; gap = fit score - mention rate)",
        "",
        "| Segment | Questions | Runs | Mention rate [95% CI] (n/N) | Share of voice | Gap |",
        "|---|---|---|---|---|---|",
    ]
    for key, label, target, gap in rows:
        name = markdown_cell(label.name) if label else f"segment {markdown_cell(key)} (removed)"
        questions = str(label.questions) if label else "–"
        if target is None:
            lines.append(f"| {name} | {questions} | 0 | – | – | {_fmt(gap)} |")
            continue
        lines.append(
            f"| {name} | {questions} | {target['runs']} | {_fmt(target.get('mention_rate'), True)}"
            f"{_interval_suffix(target)} ({target['mentioned_runs']}/{target['runs']}) | "
            f"{_fmt(target.get('share_of_voice'), True)} | {_fmt(gap)} |"
        )
    return lines


def _category_section(categories: list[dict[str, Any]]) -> list[str]:
    lines = [
        "",
        "## Citations by source category",
        "",
        "| Category | Cited URLs | Runs citing | Retrieved-only URLs | Runs retrieving only |",
        "|---|---|---|---|---|",
    ]
    for row in categories:
        category = markdown_cell(row["category"]) if row["category"] is not None else "(uncategorised)"
        lines.append(
            f"| {category} | {row['citations']} | {row['runs']} | {row['retrieved_citations']} | "
            f"{row['retrieved_runs']} |"
        )
    return lines


def _untracked_section(untracked: list[dict[str, Any]]) -> list[str]:
    lines = [
        "",
        f"## Top untracked companies (named in answers, not in the org file; first {REPORT_TOP})",
        "",
    ]
    if not untracked:
        return [*lines, "None in the latest runs."]
    lines += ["| Company | Runs | Mentions |", "|---|---|---|"]
    lines += [
        f"| {markdown_cell(r['name'])} | {r['runs']} | {r['mentions']} |" for r in untracked[:REPORT_TOP]
    ]
    lines += ["", "`icp-pipeline org suggest-competitors ORG` lists them all with example runs."]
    return lines


def _search_section(searches: dict[str, Any]) -> list[str]:
    lines = [
        "",
        f"## Top search queries (first {REPORT_TOP})",
        "",
        f"{searches['runs_with_searches']} of {searches['runs']} runs searched the web: {searches['queries']} "
        f"queries, {searches['distinct_queries']} distinct.",
    ]
    if searches["top"]:
        lines += ["", "| Query | Runs | Issued |", "|---|---|---|"]
        lines += [
            f"| {markdown_cell(r['query'])} | {r['runs']} | {r['issued']} |"
            for r in searches["top"][:REPORT_TOP]
        ]
    if searches.get("by_model"):
        lines += [
            "",
            "| Model | Runs | Runs searching | Queries | Top query (runs) |",
            "|---|---|---|---|---|",
        ]
        for model, block in searches["by_model"].items():
            top = block["top"][0] if block["top"] else None
            first = f"{markdown_cell(top['query'])} ({top['runs']})" if top else "–"
            lines.append(
                f"| {markdown_cell(model)} | {block['runs']} | {block['runs_with_searches']} | "
                f"{block['queries']} | {first} |"
            )
    return lines


def evidence_markdown(payload: dict[str, Any], segments: dict[str, SegmentLabel]) -> str:
    """The payload's evidence sections as markdown, each after a blank line: visibility per ICP segment
    (names and question counts from `segments`), citations by source category, the top untracked
    companies and the top search queries. A section whose key the payload lacks (a snapshot from
    before it existed) or an org without segment runs prints nothing."""
    lines: list[str] = []
    if payload.get("by_segment"):
        lines += _segment_section(payload["by_segment"], segments)
    categories = (payload.get("citations") or {}).get("by_category")
    if categories is not None:
        lines += _category_section(categories)
    if "untracked_companies" in payload:
        lines += _untracked_section(payload["untracked_companies"])
    if payload.get("search_queries"):
        lines += _search_section(payload["search_queries"])
    return "\n" + "\n".join(lines) if lines else ""


def grader_line(payload: dict[str, Any]) -> str:
    """Which model judged the claims and sentiment; empty for snapshots from before graders."""
    if "graders" not in payload:
        return ""
    used = ", ".join(markdown_cell(g["model"]) for g in payload["graders"]) or "none (no claims)"
    how = "the org's grader" if payload.get("grader") else "each answering model graded its own answers"
    return f"\nClaims and sentiment graded by: {used} ({how})."


def analytics_history(org_id: str, snapshots: list[tuple[int, dict[str, Any]]]) -> dict[str, Any]:
    """Each company's per-cycle series of rates with their intervals, from (cycle_id, payload) pairs
    oldest first. Snapshots from before the intervals existed get the mention rate's Wilson interval
    from their counts; their share-of-voice interval stays null (it needs the runs)."""
    series: dict[str, dict[str, Any]] = {}
    for cycle_id, payload in snapshots:
        for row in payload.get("companies", []):
            name = inert(row["name"])
            company = series.setdefault(name, {"name": name, "is_target": row["is_target"], "cycles": []})
            mention_ci = row.get("mention_rate_ci", stats.wilson_interval(row["mentioned_runs"], row["runs"]))
            company["cycles"].append(
                {
                    "cycle_id": cycle_id,
                    "generated_at": payload.get("generated_at"),
                    "analytics_version": payload.get("analytics_version"),
                    "runs": row["runs"],
                    "mentioned_runs": row["mentioned_runs"],
                    "mention_rate": row["mention_rate"],
                    "mention_rate_ci": mention_ci,
                    "share_of_voice": row["share_of_voice"],
                    "share_of_voice_ci": row.get("share_of_voice_ci"),
                    "insufficient_data": row.get("insufficient_data"),
                    "change": row.get("change"),
                }
            )
    return {
        "org_id": org_id,
        "cycles": [cycle_id for cycle_id, _ in snapshots],
        "companies": list(series.values()),
    }


def history_table(history: dict[str, Any]) -> str:
    """analytics_history as a plain-text table, one line per company and cycle."""
    header = ("Company", "Cycle", "Generated", "Runs", "Mention rate [95% CI]", "Share of voice [95% CI]", "")
    lines: list[tuple[str, ...]] = [header]
    for company in history["companies"]:
        name = company["name"] + (" (target)" if company["is_target"] else "")
        for point in company["cycles"]:
            change = point["change"] or {}
            lines.append(
                (
                    name,
                    str(point["cycle_id"]),
                    inert(point["generated_at"] or "")[:16].replace("T", " "),
                    str(point["runs"]),
                    f"{_fmt(point['mention_rate'], True)} {format_interval(point['mention_rate_ci'])}",
                    f"{_fmt(point['share_of_voice'], True)} {format_interval(point['share_of_voice_ci'])}",
                    " ".join(
                        note
                        for note in (
                            "significant change" if change.get("significant") else "",
                            "insufficient data" if point["insufficient_data"] else "",
                        )
                        if note
                    ),
                )
            )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() for line in lines
    )
