"""Two cycles of a small org through the real runner (offline provider): the second cycle's analytics name
the first as the previous cycle and carry the change; `org history` prints both."""

import json
from datetime import UTC, datetime

import sqlalchemy as sa
import yaml

from icp_pipeline.cli.main import main
from icp_pipeline.cli.runner import run_cycle
from icp_pipeline.db.models import AnalyticsSnapshot, Company
from icp_pipeline.db.session import session_scope
from icp_pipeline.visibility import analytics
from icp_pipeline.visibility.org_file import parse_org_text, upsert_org
from icp_pipeline.visibility.steps import previous_payload
from icp_pipeline_tests.support.pipeline import pipeline_defs

SMALL_ORG = {
    "id": "acme",
    "name": "Acme Analytics",
    "target": {"name": "Acme", "aliases": ["Acme Analytics"], "domains": ["acme.io"]},
    "competitors": [{"name": "Globex", "aliases": ["Globex Corp"], "domains": ["globex.com"]}],
    "models": [{"provider": "openai", "model": "gpt-4o-mini"}],
    "locations": ["US"],
    "questions": [
        "What is the best product analytics tool for a startup?",
        "Which analytics platform has the best pricing for small teams?",
    ],
    "min_runs": 3,
}


def test_two_cycles_compute_the_change_and_history_prints_them(sqlite_app: str, capsys) -> None:
    with session_scope(sqlite_app) as session:
        upsert_org(session, parse_org_text(yaml.safe_dump(SMALL_ORG)))
    defs = pipeline_defs(sqlite_app)
    first = run_cycle("acme", workers=2, progress=False, defs=defs)
    second = run_cycle("acme", workers=2, progress=False, defs=defs, new_cycle=True)
    assert (first.status, first.completed, second.status, second.completed) == (
        "succeeded",
        2,
        "succeeded",
        2,
    )
    assert second.cycle_id > first.cycle_id

    with session_scope(sqlite_app) as session:
        stored = {
            s.cycle_id: s.payload
            for s in session.scalars(sa.select(AnalyticsSnapshot).order_by(AnalyticsSnapshot.cycle_id))
        }
        previous = previous_payload(session, "acme", second.cycle_id)
        companies = [
            analytics.CompanyInfo(c.id, c.name, c.is_target)
            for c in session.scalars(sa.select(Company).where(Company.active).order_by(Company.id))
        ]
    assert list(stored) == [first.cycle_id, second.cycle_id]
    before, after = stored[first.cycle_id], stored[second.cycle_id]
    assert before["previous_cycle_id"] is None
    assert after["previous_cycle_id"] == first.cycle_id
    assert after["min_runs"] == 3
    for row_before, row in zip(before["companies"], after["companies"], strict=True):
        assert row_before["change"] is None
        assert row["runs"] == 2 and row["insufficient_data"] is True  # 2 runs < min_runs 3
        # The offline provider answers a question the same way each cycle: no change, p = 1.
        assert row["change"] == {
            "mention_rate": 0.0,
            "share_of_voice": 0.0,
            "p_value": 1.0,
            "significant": False,
        }
    assert sorted(after["by_question"]) == sorted(before["by_question"]) and len(after["by_question"]) == 2
    assert previous["cycle_id"] == first.cycle_id and previous["companies"] == before["companies"]

    # The next cycle's facts shaped directly, compared with the stored second cycle: the target named in
    # every one of 100 runs or in none, whichever is far from its stored rate, is a significant change; the same
    # count of mentions as stored is not.
    acme_id = companies[0].company_id
    stored_acme = next(r for r in after["companies"] if r["name"] == "Acme")

    def next_cycle(mentioned: int, runs: int) -> dict:
        facts = [
            analytics.RunFacts(i, "openai/gpt-4o-mini", "US", positions={acme_id: 1} if i < mentioned else {})
            for i in range(runs)
        ]
        payload = analytics.compute_analytics(
            org_id="acme",
            cycle_id=second.cycle_id + 1,
            generated_at=datetime.now(UTC),
            run_counts={},
            companies=companies,
            runs=facts,
            calls=[],
            synthetic=True,
            min_runs=3,
            previous=previous_payload_of(after, second.cycle_id),
        )
        assert payload["previous_cycle_id"] == second.cycle_id
        return next(row["change"] for row in payload["companies"] if row["name"] == "Acme")

    # 100 runs: against 2 stored runs even 0 of 100 after 1 of 2 gives p = 2/102 (Fisher).
    far = 0 if stored_acme["mention_rate"] >= 0.5 else 100
    significant = next_cycle(far, 100)
    assert significant["mention_rate"] == round(far / 100 - stored_acme["mention_rate"], 6)
    assert significant["p_value"] < 0.05 and significant["significant"] is True
    insignificant = next_cycle(stored_acme["mentioned_runs"], 2)
    assert insignificant["mention_rate"] == 0.0
    assert (insignificant["p_value"], insignificant["significant"]) == (1.0, False)

    assert main(["org", "history", "acme", "--json"]) == 0
    history = json.loads(capsys.readouterr().out)
    assert history["cycles"] == [first.cycle_id, second.cycle_id]
    assert [c["name"] for c in history["companies"]] == ["Acme", "Globex"]
    for company in history["companies"]:
        assert [p["cycle_id"] for p in company["cycles"]] == [first.cycle_id, second.cycle_id]
        assert all(p["runs"] == 2 for p in company["cycles"])
    assert main(["org", "history", "acme"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("Company") and len(table) == 1 + 2 * 2
    assert main(["org", "history", "nope"]) == 1


def previous_payload_of(payload: dict, cycle_id: int) -> dict:
    return {**payload, "cycle_id": cycle_id}
