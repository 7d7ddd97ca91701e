"""Org analytics over the latest completed run of each question x model x location. Pure functions."""

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

ANALYTICS_VERSION = "analytics-1"


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


@dataclass(frozen=True)
class CallCost:
    model: str
    input_tokens: int | None
    output_tokens: int | None
    usd: float | None


def _ratio(numerator: float, denominator: float) -> float | None:
    return round(numerator / denominator, 6) if denominator else None


def company_stats(companies: list[CompanyInfo], runs: list[RunFacts]) -> list[dict[str, Any]]:
    mentioned = {c.company_id: sum(1 for r in runs if c.company_id in r.positions) for c in companies}
    all_mentions = sum(mentioned.values())
    rows = []
    for company in companies:
        positions = [r.positions[company.company_id] for r in runs if company.company_id in r.positions]
        rows.append(
            {
                "name": company.name,
                "is_target": company.is_target,
                "runs": len(runs),
                "mentioned_runs": mentioned[company.company_id],
                "mention_rate": _ratio(mentioned[company.company_id], len(runs)),
                "share_of_voice": _ratio(mentioned[company.company_id], all_mentions),
                "average_position": _ratio(sum(positions), len(positions)),
                "cited_runs": sum(1 for r in runs if company.company_id in r.cited_companies),
            }
        )
    return rows


def _grouped(
    companies: list[CompanyInfo], runs: list[RunFacts], attribute: str
) -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list[RunFacts]] = defaultdict(list)
    for run in runs:
        groups[getattr(run, attribute)].append(run)
    return {key: company_stats(companies, groups[key]) for key in sorted(groups)}


def citation_stats(runs: list[RunFacts]) -> dict[str, Any]:
    per_domain: dict[str, dict[str, Any]] = defaultdict(lambda: {"citations": 0, "runs": set()})
    for run in runs:
        for _url, domain in run.cited_urls:
            per_domain[domain]["citations"] += 1
            per_domain[domain]["runs"].add(run.run_id)
    domains = [
        {"domain": domain, "citations": stats["citations"], "runs": len(stats["runs"])}
        for domain, stats in per_domain.items()
    ]
    domains.sort(key=lambda d: (-d["citations"], d["domain"]))
    return {"total": sum(len(r.cited_urls) for r in runs), "domains": domains}


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
) -> dict[str, Any]:
    return {
        "org_id": org_id,
        "cycle_id": cycle_id,
        "generated_at": generated_at.isoformat(),
        "analytics_version": ANALYTICS_VERSION,
        "synthetic": synthetic,
        "runs": run_counts,
        "latest_runs": len(runs),
        "companies": company_stats(companies, runs),
        "by_model": _grouped(companies, runs, "model"),
        "by_location": _grouped(companies, runs, "location"),
        "citations": citation_stats(runs),
        "sentiment": sentiment_stats(companies, runs),
        "cost": cost_stats(calls),
    }


def _fmt(value: Any, percent: bool = False) -> str:
    if value is None:
        return "–"
    if percent:
        return f"{value:.0%}"
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def analytics_markdown(payload: dict[str, Any]) -> str:
    """The companies table as markdown, for the Dagster UI and the CLI."""
    lines = [
        "| Company | Target | Runs | Mentioned | Mention rate | Share of voice | Avg position | Cited runs |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in payload["companies"]:
        lines.append(
            f"| {row['name']} | {'yes' if row['is_target'] else ''} | {row['runs']} | {row['mentioned_runs']} | "
            f"{_fmt(row['mention_rate'], True)} | {_fmt(row['share_of_voice'], True)} | "
            f"{_fmt(row['average_position'])} | {row['cited_runs']} |"
        )
    runs = payload["runs"]
    footer = f"\nRuns: {runs['completed']} completed, {runs['failed']} failed, {runs['total']} total."
    if payload.get("synthetic"):
        footer += " Synthetic data from the offline provider."
    return "\n".join(lines) + footer
