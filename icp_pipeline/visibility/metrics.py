"""Competitive metrics of one run: per tracked company, mentioned, position, cited, claim sentiment."""

from collections import Counter
from dataclasses import dataclass

from icp_pipeline.visibility.citations import host_matches
from icp_pipeline.visibility.mentions import CompanyTerms

METRICS_VERSION = "metrics-1"


@dataclass(frozen=True)
class RunCompanyMetric:
    company_id: int
    mentioned: bool
    mention_count: int
    position: int | None
    cited: bool
    citation_count: int
    positive_claims: int
    neutral_claims: int
    negative_claims: int


def compute_run_metrics(
    companies: list[CompanyTerms],
    mentions: dict[int, tuple[int, int]],  # company_id -> (position, count)
    cited_hosts: list[str],  # one host per cited URL of the run
    claim_sentiments: list[tuple[int | None, str]],  # (company_id, sentiment)
) -> list[RunCompanyMetric]:
    sentiments = Counter(claim_sentiments)
    rows = []
    for company in companies:
        citation_count = sum(1 for host in cited_hosts if any(host_matches(host, d) for d in company.domains))
        position, count = mentions.get(company.company_id, (None, 0))
        rows.append(
            RunCompanyMetric(
                company_id=company.company_id,
                mentioned=company.company_id in mentions,
                mention_count=count,
                position=position,
                cited=citation_count > 0,
                citation_count=citation_count,
                positive_claims=sentiments[(company.company_id, "positive")],
                neutral_claims=sentiments[(company.company_id, "neutral")],
                negative_claims=sentiments[(company.company_id, "negative")],
            )
        )
    return rows
