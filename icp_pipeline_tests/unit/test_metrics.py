from icp_pipeline.visibility.mentions import CompanyTerms
from icp_pipeline.visibility.metrics import RunCompanyMetric, compute_run_metrics

COMPANIES = [
    CompanyTerms(1, "Acme", ("Acme Analytics",), ("acme.io", "acme.dev")),
    CompanyTerms(2, "Globex", (), ("globex.com",)),
    CompanyTerms(3, "Initech", (), ()),
]


def test_compute_run_metrics() -> None:
    rows = compute_run_metrics(
        COMPANIES,
        mentions={1: (2, 3), 2: (1, 1)},
        cited_hosts=["www.acme.io", "docs.acme.io", "acme.dev", "notacme.io", "globex.com", "g2.com"],
        claim_sentiments=[
            (1, "positive"),
            (1, "negative"),
            (1, "positive"),
            (None, "neutral"),
            (2, "neutral"),
        ],
    )
    assert rows == [
        RunCompanyMetric(1, True, 3, 2, True, 3, 2, 0, 1),
        RunCompanyMetric(2, True, 1, 1, True, 1, 0, 1, 0),
        RunCompanyMetric(3, False, 0, None, False, 0, 0, 0, 0),
    ]


def test_compute_run_metrics_cited_but_not_mentioned() -> None:
    (row,) = compute_run_metrics(
        COMPANIES[1:2], mentions={}, cited_hosts=["shop.globex.com"], claim_sentiments=[]
    )
    assert row.mentioned is False
    assert row.position is None
    assert row.mention_count == 0
    assert row.cited is True
    assert row.citation_count == 1


def test_compute_run_metrics_empty_run() -> None:
    rows = compute_run_metrics(COMPANIES, mentions={}, cited_hosts=[], claim_sentiments=[])
    assert [r.company_id for r in rows] == [1, 2, 3]
    assert not any(r.mentioned or r.cited for r in rows)
    assert all(r.positive_claims == r.neutral_claims == r.negative_claims == 0 for r in rows)


def test_compute_run_metrics_no_companies() -> None:
    assert compute_run_metrics([], {1: (1, 1)}, ["acme.io"], [(1, "positive")]) == []
