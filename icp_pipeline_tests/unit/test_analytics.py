from datetime import UTC, datetime

import pytest

from icp_pipeline.visibility.analytics import (
    ANALYTICS_VERSION,
    CallCost,
    CompanyInfo,
    RunFacts,
    analytics_history,
    analytics_markdown,
    citation_stats,
    company_stats,
    compute_analytics,
    cost_stats,
    history_table,
    sentiment_stats,
)

COMPANIES = [
    CompanyInfo(1, "Acme", True),
    CompanyInfo(2, "Globex", False),
    CompanyInfo(3, "Initech", False),
]


def _runs() -> list[RunFacts]:
    return [
        RunFacts(
            run_id=1,
            model="openai/gpt",
            location="US",
            positions={1: 1, 2: 2},
            cited_companies={1},
            cited_urls=[
                ("https://acme.io/a", "acme.io"),
                ("https://g2.com/x", "g2.com"),
                ("https://g2.com/z", "g2.com"),
            ],
            claim_sentiments=[(1, "positive"), (2, "negative")],
        ),
        RunFacts(
            run_id=2,
            model="openai/gpt",
            location="DE",
            positions={2: 1},
            cited_urls=[("https://g2.com/y", "g2.com"), ("https://zeta.com/", "zeta.com")],
            claim_sentiments=[(2, "neutral")],
        ),
        RunFacts(
            run_id=3,
            model="anthropic/claude",
            location="US",
            positions={1: 2, 2: 1},
            cited_companies={1, 2},
            cited_urls=[
                ("https://acme.io/b", "acme.io"),
                ("https://globex.com/", "globex.com"),
                ("https://g2.com/x", "g2.com"),
            ],
            claim_sentiments=[(1, "positive"), (1, "negative"), (None, "neutral")],
        ),
        RunFacts(run_id=4, model="anthropic/claude", location="DE"),
    ]


CALLS = [
    CallCost("openai/gpt", 100, 50, 0.001),
    CallCost("openai/gpt", 200, None, None),
    CallCost("anthropic/claude", None, 30, 0.0025),
    CallCost("anthropic/claude", 10, 10, None),
]


def _by_name(rows: list[dict]) -> dict[str, dict]:
    return {row["name"]: row for row in rows}


# The fields of analytics-1; consumers depend on them, so they stay as they are.
ORIGINAL_FIELDS = (
    "name",
    "is_target",
    "runs",
    "mentioned_runs",
    "mention_rate",
    "share_of_voice",
    "average_position",
    "cited_runs",
)


def _original_fields(row: dict) -> dict:
    return {name: row[name] for name in ORIGINAL_FIELDS}


def test_company_stats_formulas() -> None:
    rows = company_stats(COMPANIES, _runs())
    assert [r["name"] for r in rows] == ["Acme", "Globex", "Initech"]
    assert _original_fields(rows[0]) == {
        "name": "Acme",
        "is_target": True,
        "runs": 4,
        "mentioned_runs": 2,
        "mention_rate": 0.5,
        "share_of_voice": 0.4,  # 2 / (2 + 3 + 0)
        "average_position": 1.5,  # (1 + 2) / 2
        "cited_runs": 2,
    }
    assert _original_fields(rows[1]) == {
        "name": "Globex",
        "is_target": False,
        "runs": 4,
        "mentioned_runs": 3,
        "mention_rate": 0.75,
        "share_of_voice": 0.6,
        "average_position": pytest.approx(4 / 3, abs=1e-6),  # (2 + 1 + 1) / 3
        "cited_runs": 1,
    }
    assert _original_fields(rows[2]) == {
        "name": "Initech",
        "is_target": False,
        "runs": 4,
        "mentioned_runs": 0,
        "mention_rate": 0.0,
        "share_of_voice": 0.0,
        "average_position": None,
        "cited_runs": 0,
    }


def test_company_stats_share_of_voice_sums_to_one() -> None:
    rows = company_stats(COMPANIES, _runs())
    assert sum(r["share_of_voice"] for r in rows) == pytest.approx(1.0)


def test_company_stats_no_runs() -> None:
    rows = company_stats(COMPANIES, [])
    for row in rows:
        assert row["runs"] == 0
        assert row["mentioned_runs"] == 0
        assert row["mention_rate"] is None
        assert row["share_of_voice"] is None
        assert row["average_position"] is None
        assert row["cited_runs"] == 0


def test_company_stats_runs_without_mentions() -> None:
    runs = [RunFacts(1, "m", "US"), RunFacts(2, "m", "US")]
    rows = company_stats(COMPANIES, runs)
    assert [r["mention_rate"] for r in rows] == [0.0, 0.0, 0.0]
    assert [r["share_of_voice"] for r in rows] == [None, None, None]
    assert [r["runs"] for r in rows] == [2, 2, 2]


def test_citation_stats() -> None:
    stats = citation_stats(_runs())
    assert stats["total"] == 8
    # RunFacts without per-citation categories (citations stored before categories existed): None.
    assert stats["domains"] == [
        {"domain": "g2.com", "citations": 4, "runs": 3, "category": None},
        {"domain": "acme.io", "citations": 2, "runs": 2, "category": None},
        {"domain": "globex.com", "citations": 1, "runs": 1, "category": None},  # ties sorted by domain
        {"domain": "zeta.com", "citations": 1, "runs": 1, "category": None},
    ]


def test_citation_stats_empty() -> None:
    stats = citation_stats([])
    assert (stats["total"], stats["domains"]) == (0, [])
    assert [row["category"] for row in stats["by_category"]] == [
        "owned",
        "competitor",
        "review",
        "ugc",
        "reference",
        "news_blog",
        "other",
    ]
    assert all(row["citations"] == row["retrieved_citations"] == 0 for row in stats["by_category"])


def test_citation_stats_by_category_counts_cited_and_retrieved_apart() -> None:
    runs = [
        RunFacts(1, "m", "US", citations=[("g2.com", "review", True), ("capterra.com", "review", False)]),
        RunFacts(2, "m", "US", citations=[("g2.com", "review", True), ("reddit.com", "ugc", False)]),
        RunFacts(3, "m", "US", citations=[("capterra.com", "review", False)]),
    ]
    for run in runs:
        run.cited_urls = [(f"https://{d}/", d) for d, _, cited in run.citations if cited]
    stats = citation_stats(runs)
    rows = {row["category"]: row for row in stats["by_category"]}
    assert rows["review"] == {
        "category": "review",
        "citations": 2,
        "runs": 2,
        "retrieved_citations": 2,
        "retrieved_runs": 2,
    }
    assert (rows["ugc"]["citations"], rows["ugc"]["retrieved_citations"], rows["ugc"]["retrieved_runs"]) == (
        0,
        1,
        1,
    )
    assert stats["domains"] == [{"domain": "g2.com", "citations": 2, "runs": 2, "category": "review"}]


def test_sentiment_stats() -> None:
    rows = _by_name(sentiment_stats(COMPANIES, _runs()))
    assert rows["Acme"] == {
        "name": "Acme",
        "claims": 3,
        "positive": 2,
        "neutral": 0,
        "negative": 1,
        "net": pytest.approx(1 / 3, abs=1e-6),
    }
    assert rows["Globex"] == {
        "name": "Globex",
        "claims": 2,
        "positive": 0,
        "neutral": 1,
        "negative": 1,
        "net": -0.5,
    }
    assert rows["Initech"] == {
        "name": "Initech",
        "claims": 0,
        "positive": 0,
        "neutral": 0,
        "negative": 0,
        "net": None,
    }


def test_cost_stats() -> None:
    stats = cost_stats(CALLS)
    assert stats["total"] == {
        "calls": 4,
        "input_tokens": 310,
        "output_tokens": 90,
        "usd": pytest.approx(0.0035),
        "calls_with_unknown_cost": 2,
    }
    assert list(stats["by_model"]) == ["anthropic/claude", "openai/gpt"]
    assert stats["by_model"]["anthropic/claude"] == {
        "calls": 2,
        "input_tokens": 10,
        "output_tokens": 40,
        "usd": pytest.approx(0.0025),
        "calls_with_unknown_cost": 1,
    }
    assert stats["by_model"]["openai/gpt"] == {
        "calls": 2,
        "input_tokens": 300,
        "output_tokens": 50,
        "usd": pytest.approx(0.001),
        "calls_with_unknown_cost": 1,
    }


def test_cost_stats_all_unknown_and_empty() -> None:
    unknown = cost_stats([CallCost("x/y", None, None, None)])
    assert unknown["total"]["usd"] == 0
    assert unknown["total"]["calls_with_unknown_cost"] == 1
    assert cost_stats([]) == {
        "total": {"calls": 0, "input_tokens": 0, "output_tokens": 0, "usd": 0, "calls_with_unknown_cost": 0},
        "by_model": {},
    }


def _payload(synthetic: bool = False) -> dict:
    return compute_analytics(
        org_id="acme",
        cycle_id=7,
        generated_at=datetime(2024, 5, 1, 12, 0, tzinfo=UTC),
        run_counts={"completed": 4, "failed": 1, "total": 5},
        companies=COMPANIES,
        runs=_runs(),
        calls=CALLS,
        synthetic=synthetic,
    )


def test_compute_analytics_top_level() -> None:
    payload = _payload(synthetic=True)
    assert payload["org_id"] == "acme"
    assert payload["cycle_id"] == 7
    assert payload["generated_at"] == "2024-05-01T12:00:00+00:00"
    assert payload["analytics_version"] == ANALYTICS_VERSION
    assert payload["synthetic"] is True
    assert payload["runs"] == {"completed": 4, "failed": 1, "total": 5}
    assert payload["latest_runs"] == 4
    assert [{k: v for k, v in row.items() if k != "change"} for row in payload["companies"]] == company_stats(
        COMPANIES, _runs()
    )
    assert payload["previous_cycle_id"] is None
    assert [row["change"] for row in payload["companies"]] == [None, None, None]
    assert payload["citations"] == citation_stats(_runs())
    assert payload["sentiment"] == sentiment_stats(COMPANIES, _runs())
    assert payload["cost"] == cost_stats(CALLS)


def test_compute_analytics_by_model() -> None:
    by_model = _payload()["by_model"]
    assert list(by_model) == ["anthropic/claude", "openai/gpt"]
    openai = _by_name(by_model["openai/gpt"])
    assert openai["Acme"]["runs"] == 2
    assert openai["Acme"]["mentioned_runs"] == 1
    assert openai["Acme"]["mention_rate"] == 0.5
    assert openai["Acme"]["share_of_voice"] == pytest.approx(1 / 3, abs=1e-6)
    assert openai["Acme"]["average_position"] == 1.0
    assert openai["Acme"]["cited_runs"] == 1
    assert openai["Globex"]["mention_rate"] == 1.0
    assert openai["Globex"]["share_of_voice"] == pytest.approx(2 / 3, abs=1e-6)
    assert openai["Globex"]["average_position"] == 1.5
    assert openai["Globex"]["cited_runs"] == 0
    anthropic = _by_name(by_model["anthropic/claude"])
    assert anthropic["Acme"]["average_position"] == 2.0
    assert anthropic["Acme"]["share_of_voice"] == 0.5
    assert anthropic["Globex"]["average_position"] == 1.0
    assert anthropic["Globex"]["cited_runs"] == 1
    assert anthropic["Initech"]["mention_rate"] == 0.0


def test_compute_analytics_by_location() -> None:
    by_location = _payload()["by_location"]
    assert list(by_location) == ["DE", "US"]
    de = _by_name(by_location["DE"])
    assert de["Acme"]["runs"] == 2
    assert de["Acme"]["mentioned_runs"] == 0
    assert de["Acme"]["mention_rate"] == 0.0
    assert de["Acme"]["share_of_voice"] == 0.0
    assert de["Acme"]["average_position"] is None
    assert de["Globex"]["mention_rate"] == 0.5
    assert de["Globex"]["share_of_voice"] == 1.0
    us = _by_name(by_location["US"])
    assert us["Acme"]["mention_rate"] == 1.0
    assert us["Acme"]["share_of_voice"] == 0.5
    assert us["Acme"]["average_position"] == 1.5
    assert us["Acme"]["cited_runs"] == 2
    assert us["Globex"]["average_position"] == 1.5
    assert us["Globex"]["cited_runs"] == 1


def test_compute_analytics_no_runs() -> None:
    payload = compute_analytics(
        org_id="acme",
        cycle_id=None,
        generated_at=datetime(2024, 1, 1),
        run_counts={},
        companies=COMPANIES,
        runs=[],
        calls=[],
        synthetic=False,
    )
    assert payload["cycle_id"] is None
    assert payload["latest_runs"] == 0
    assert payload["by_model"] == {}
    assert payload["by_location"] == {}
    assert (payload["citations"]["total"], payload["citations"]["domains"]) == (0, [])
    assert payload["untracked_companies"] == []
    assert all(row["mention_rate"] is None for row in payload["companies"])


def test_analytics_markdown_rows() -> None:
    markdown = analytics_markdown(_payload())
    lines = markdown.splitlines()
    assert lines[0].startswith("| Company | Target |")
    assert "| Acme | yes | 4 | 2 | 50% [15%, 85%] | 40% | 1.50 | 2 |" in lines
    assert "| Globex |  | 4 | 3 | 75% [30%, 95%] | 60% | 1.33 | 1 |" in lines
    assert "| Initech |  | 4 | 0 | 0% [0%, 49%] | 0% | – | 0 |" in lines
    table = lines[: lines.index("")]  # the companies table; the evidence sections follow the footer
    assert sum(1 for line in table if line.startswith("| ") and "---" not in line) == 1 + len(COMPANIES)
    assert "Runs: 4 completed, 1 failed, 5 total." in markdown
    assert "Synthetic" not in markdown


def test_analytics_markdown_synthetic() -> None:
    markdown = analytics_markdown(_payload(synthetic=True))
    assert "Synthetic" in markdown
    assert "| Acme | yes |" in markdown


def test_analytics_markdown_unknown_values() -> None:
    payload = compute_analytics(
        org_id="acme",
        cycle_id=None,
        generated_at=datetime(2024, 1, 1),
        run_counts={"completed": 0, "failed": 0, "total": 0},
        companies=COMPANIES[:1],
        runs=[],
        calls=[],
        synthetic=False,
    )
    assert "| Acme | yes | 0 | 0 | – | – | – | 0 |" in analytics_markdown(payload).splitlines()


def test_rows_carry_intervals_containing_their_estimates() -> None:
    payload = _payload()
    blocks = [payload["companies"], *payload["by_model"].values(), *payload["by_location"].values()]
    blocks += list(payload["by_question"].values())
    for rows in blocks:
        for row in rows:
            for rate, interval in (
                ("mention_rate", "mention_rate_ci"),
                ("cited_rate", "cited_rate_ci"),
                ("share_of_voice", "share_of_voice_ci"),
                ("average_position", "average_position_ci"),
            ):
                if row[rate] is None:
                    assert row[interval] is None
                else:
                    assert row[interval][0] <= row[rate] <= row[interval][1], (rate, row)
    acme = _by_name(payload["companies"])["Acme"]
    assert acme["mention_rate_ci"] == pytest.approx([0.150038, 0.849962])  # Wilson, 2 of 4
    assert acme["cited_rate"] == 0.5
    assert acme["share_of_voice_ci"][0] < 0.4 < acme["share_of_voice_ci"][1]
    assert _by_name(payload["companies"])["Initech"]["average_position_ci"] is None
    assert _payload() == {**payload, "generated_at": payload["generated_at"]}  # re-computation: same numbers


def test_no_runs_gives_null_intervals() -> None:
    for row in company_stats(COMPANIES, []):
        assert row["mention_rate_ci"] is None
        assert row["cited_rate"] is None and row["cited_rate_ci"] is None
        assert row["share_of_voice_ci"] is None and row["average_position_ci"] is None
        assert row["insufficient_data"] is True


def test_insufficient_data_follows_min_runs() -> None:
    assert all(row["insufficient_data"] for row in company_stats(COMPANIES, _runs()))  # 4 < 10
    assert not any(row["insufficient_data"] for row in company_stats(COMPANIES, _runs(), min_runs=4))
    payload = compute_analytics(
        org_id="acme",
        cycle_id=1,
        generated_at=datetime(2024, 1, 1),
        run_counts={},
        companies=COMPANIES,
        runs=_runs(),
        calls=[],
        synthetic=False,
        min_runs=3,
    )
    assert payload["min_runs"] == 3
    assert not any(row["insufficient_data"] for row in payload["companies"])
    assert all(row["insufficient_data"] for rows in payload["by_model"].values() for row in rows)  # 2 < 3


def _question_runs() -> list[RunFacts]:
    # q1: two samples per model x location; in US the samples disagree about Acme, in DE they agree.
    # q2: one sample per combination, so nothing can disagree.
    return [
        RunFacts(1, "openai/gpt", "US", positions={1: 1}, question="q1", sample_index=0),
        RunFacts(2, "openai/gpt", "US", positions={2: 1}, question="q1", sample_index=1),
        RunFacts(3, "openai/gpt", "DE", positions={1: 1, 2: 2}, question="q1", sample_index=0),
        RunFacts(4, "openai/gpt", "DE", positions={1: 2, 2: 1}, question="q1", sample_index=1),
        RunFacts(5, "openai/gpt", "US", positions={1: 1}, question="q2"),
        RunFacts(6, "openai/gpt", "DE", question="q2"),
    ]


def test_by_question_and_stability() -> None:
    payload = compute_analytics(
        org_id="acme",
        cycle_id=1,
        generated_at=datetime(2024, 1, 1),
        run_counts={},
        companies=COMPANIES,
        runs=_question_runs(),
        calls=[],
        synthetic=False,
    )
    assert list(payload["by_question"]) == ["q1", "q2"]
    q1 = _by_name(payload["by_question"]["q1"])
    assert q1["Acme"]["runs"] == 4 and q1["Acme"]["mentioned_runs"] == 3
    assert q1["Acme"]["stability"] == {
        "combinations": 2,
        "repeated_combinations": 2,
        "disagreeing_combinations": 1,
        "disagreement_rate": 0.5,
    }
    assert q1["Globex"]["stability"]["disagreeing_combinations"] == 1
    assert q1["Initech"]["stability"]["disagreement_rate"] == 0.0  # never mentioned: always agree
    q2 = _by_name(payload["by_question"]["q2"])
    assert q2["Acme"]["mention_rate"] == 0.5
    assert q2["Acme"]["stability"] == {
        "combinations": 2,
        "repeated_combinations": 0,
        "disagreeing_combinations": 0,
        "disagreement_rate": None,
    }


def _facts(mentioned: int, runs: int) -> list[RunFacts]:
    return [
        RunFacts(i, "openai/gpt", "US", positions={1: 1} if i < mentioned else {2: 1}) for i in range(runs)
    ]


def _cycle(cycle_id: int, runs: list[RunFacts], previous: dict | None) -> dict:
    return compute_analytics(
        org_id="acme",
        cycle_id=cycle_id,
        generated_at=datetime(2024, 1, cycle_id),
        run_counts={},
        companies=COMPANIES[:2],
        runs=runs,
        calls=[],
        synthetic=False,
        previous=previous,
    )


def test_change_since_previous_cycle_significant_and_not() -> None:
    first = _cycle(1, _facts(2, 20), None)
    assert first["previous_cycle_id"] is None
    assert _by_name(first["companies"])["Acme"]["change"] is None

    significant = _by_name(_cycle(2, _facts(15, 20), first)["companies"])
    acme = significant["Acme"]["change"]
    assert acme["mention_rate"] == pytest.approx(0.65)  # 0.75 - 0.10
    assert acme["share_of_voice"] == pytest.approx(0.65)
    assert acme["p_value"] == pytest.approx(6.8606e-05, abs=1e-9)  # Fisher [[15, 5], [2, 18]] (scipy agrees)
    assert acme["significant"] is True
    assert significant["Globex"]["change"]["mention_rate"] == pytest.approx(-0.65)

    insignificant = _cycle(2, _facts(4, 20), first)
    assert insignificant["previous_cycle_id"] == 1
    acme = _by_name(insignificant["companies"])["Acme"]["change"]
    assert acme["mention_rate"] == pytest.approx(0.1)
    assert acme["p_value"] == pytest.approx(0.6614, abs=5e-5)  # Fisher [[4, 16], [2, 18]] (scipy agrees)
    assert acme["significant"] is False


def test_change_with_a_company_new_since_the_previous_cycle() -> None:
    first = _cycle(1, _facts(2, 20), None)
    first["companies"] = [row for row in first["companies"] if row["name"] != "Globex"]
    rows = _by_name(_cycle(2, _facts(2, 20), first)["companies"])
    assert rows["Globex"]["change"] is None
    assert rows["Acme"]["change"] == {
        "mention_rate": 0.0,
        "share_of_voice": 0.0,
        "p_value": 1.0,
        "significant": False,
    }


def test_history_series_and_table_print_names_as_inert_text() -> None:
    evil = [CompanyInfo(1, "Acme\x1b[2J\u202e", True), CompanyInfo(2, "Globex", False)]
    first = compute_analytics(
        org_id="acme",
        cycle_id=1,
        generated_at=datetime(2024, 1, 1),
        run_counts={},
        companies=evil,
        runs=_facts(2, 20),
        calls=[],
        synthetic=False,
    )
    second = compute_analytics(
        org_id="acme",
        cycle_id=2,
        generated_at=datetime(2024, 1, 2),
        run_counts={},
        companies=evil,
        runs=_facts(15, 20),
        calls=[],
        synthetic=False,
        previous=first,
    )
    # A snapshot from analytics-1 has counts but no intervals.
    old = {"companies": [_original_fields(row) for row in first["companies"]], "generated_at": "2023-12-01"}
    history = analytics_history("acme", [(0, old), (1, first), (2, second)])
    assert history["cycles"] == [0, 1, 2]
    acme, globex = history["companies"]
    assert acme["name"] == "Acme" and acme["is_target"] is True  # the whole escape sequence is removed
    assert [p["cycle_id"] for p in acme["cycles"]] == [0, 1, 2]
    assert [p["mention_rate"] for p in acme["cycles"]] == [0.1, 0.1, 0.75]
    assert acme["cycles"][0]["mention_rate_ci"] == acme["cycles"][1]["mention_rate_ci"]  # from the counts
    assert acme["cycles"][0]["share_of_voice_ci"] is None
    assert acme["cycles"][2]["change"]["significant"] is True
    assert globex["cycles"][2]["share_of_voice_ci"] == second["companies"][1]["share_of_voice_ci"]

    table = history_table(history)
    assert "\x1b" not in table and "\u202e" not in table
    lines = table.splitlines()
    assert lines[0].split()[:2] == ["Company", "Cycle"]
    assert len(lines) == 1 + 2 * 3
    assert any(
        line.startswith("Acme (target)") and "75% [53%, 89%]" in line and "significant change" in line
        for line in lines
    )
    assert "insufficient data" not in table  # 20 runs, min_runs 10


def test_analytics_markdown_prints_names_as_inert_text() -> None:
    payload = _payload()
    payload["companies"][0]["name"] = "Acme\x1b]8;;http://x\x07\u202e"
    markdown = analytics_markdown(payload)
    assert "\x1b" not in markdown and "\x07" not in markdown and "\u202e" not in markdown
    assert "| Acme | yes | 4 |" in markdown


def test_a_tiny_p_value_keeps_its_digits() -> None:
    first = _cycle(1, _facts(0, 40), None)
    change = _by_name(_cycle(2, _facts(40, 40), first)["companies"])["Acme"]["change"]
    assert 0 < change["p_value"] < 1e-20  # 2 / C(80, 40)
    assert change["p_value"] == pytest.approx(2 / 107507208733336176461620, rel=1e-9)
