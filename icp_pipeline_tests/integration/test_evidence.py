"""Citation categories and untracked companies on stored runs: the payload from crafted answers and
citations, re-materialization after an extractor change with no model call, `org suggest-competitors`,
and a suggested company added to the org file recomputing history."""

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa
import yaml

from icp_pipeline.cli.main import main
from icp_pipeline.db.models import (
    Citation,
    Claim,
    Company,
    Mention,
    ModelCall,
    Org,
    QuestionRun,
    UntrackedMention,
)
from icp_pipeline.db.session import session_scope, upgrade
from icp_pipeline.defs.resources import AppDatabase, ModelProviderResource, PushResource
from icp_pipeline.defs.visibility import assets as va
from icp_pipeline.visibility import steps
from icp_pipeline.visibility.citations import CITATIONS_VERSION
from icp_pipeline.visibility.org_file import parse_org_text, upsert_org
from icp_pipeline.visibility.untracked import UNTRACKED_VERSION
from icp_pipeline_tests.conftest import example_org_data
from icp_pipeline_tests.support.pipeline import count, run_cycle_steps


def small_org() -> dict[str, Any]:
    """The example org asked of one model in one country: 5 partitions."""
    data = example_org_data()
    data["models"] = data["models"][:1]
    data["locations"] = ["US"]
    return data


def load(url: str, data: dict[str, Any]) -> None:
    with session_scope(url) as session:
        upsert_org(session, parse_org_text(yaml.safe_dump(data)))


def run_cycle(url: str) -> list[str]:
    """One whole cycle through the plain steps (offline provider), rolled up."""
    keys = run_cycle_steps(url, "acme")
    steps.mark_latest(url, "acme")
    steps.build_analytics(url, "acme")
    return keys


CRAFTED = """Here are the tools I would compare:

1. **Mixpanel**: strong funnels ([docs](https://docs.mixpanel-example.net/funnels)).
2. PostHog - open source, see https://www.g2.com/products/posthog and https://reddit.com/r/analytics.
3. Globex: solid, per https://docs.globex.com/pricing and https://acme.io/compare.
- **Key Features**: autocapture
Mixpanel vs Amplitude Inc. is a common question (https://en.wikipedia.org/wiki/Web_analytics,
https://techcrunch.com/2024/analytics).
"""


def test_categories_and_untracked_companies_from_crafted_answers(tmp_path: Path) -> None:
    _crafted_answers_to_payload(f"sqlite:///{tmp_path / 'app.db'}")


def test_categories_and_untracked_companies_on_postgres(postgres_databases: Callable[[], str]) -> None:
    _crafted_answers_to_payload(postgres_databases())


def _crafted_answers_to_payload(url: str) -> None:
    upgrade(url)
    load(url, small_org())
    keys = run_cycle(url)
    with session_scope(url) as session:
        runs = session.scalars(sa.select(QuestionRun).order_by(QuestionRun.id)).all()
        crafted, claimed = runs[0], runs[1]
        for run in runs:  # every other answer names nobody and cites nothing
            run.answer_text = "It depends on your stack."
            session.get(ModelCall, run.answer_call_id).source_citations = []
        crafted.answer_text = CRAFTED
        # The engine also retrieved a review page it did not cite.
        session.get(ModelCall, crafted.answer_call_id).source_citations = [
            {"url": "https://www.capterra.com/p/1", "title": "Capterra", "cited": False}
        ]
        # A claim the grader made about a company nobody tracks, and one about an alias of the target.
        session.execute(sa.delete(Claim))
        call_id = session.scalar(sa.select(ModelCall.id).where(ModelCall.purpose == "claims"))
        for name in ("Pendo", "Pendo", "acme analytics"):
            session.add(
                Claim(
                    question_run_id=claimed.id,
                    model_call_id=call_id,
                    company_id=None,
                    company_name=name,
                    text=f"{name} is fine.",
                    sentiment="neutral",
                    supporting_urls=[],
                    extractor_version="claims-1",
                )
            )
        crafted_key, claimed_key = crafted.item.partition_key, claimed.item.partition_key
    calls = count(url, ModelCall)
    for key in keys:
        steps.extract_mentions(url, key)
        steps.extract_run_citations(url, key)
        steps.compute_metrics(url, key)
    payload = steps.build_analytics(url, "acme").payload
    assert count(url, ModelCall) == calls

    categories = {row["domain"]: row["category"] for row in payload["citations"]["domains"]}
    assert categories == {
        "acme.io": "owned",
        "docs.globex.com": "competitor",  # a subdomain of Globex's globex.com
        "g2.com": "review",
        "reddit.com": "ugc",
        "en.wikipedia.org": "reference",
        "techcrunch.com": "news_blog",
        "docs.mixpanel-example.net": "other",
    }
    by_category = {row["category"]: row for row in payload["citations"]["by_category"]}
    assert list(by_category) == ["owned", "competitor", "review", "ugc", "reference", "news_blog", "other"]
    assert by_category["review"] == {
        "category": "review",
        "citations": 1,
        "runs": 1,
        "retrieved_citations": 1,  # capterra, retrieved only: counted apart
        "retrieved_runs": 1,
    }
    assert [by_category[c]["citations"] for c in by_category] == [1, 1, 1, 1, 1, 1, 1]
    assert sum(row["retrieved_citations"] for row in by_category.values()) == 1

    untracked = {row["name"]: row for row in payload["untracked_companies"]}
    assert set(untracked) == {"Mixpanel", "PostHog", "Amplitude Inc", "Pendo"}  # not Globex, Acme
    assert untracked["Mixpanel"] == {
        "name": "Mixpanel",
        "name_key": "mixpanel",
        "runs": 1,
        "mentions": 2,  # the list item and "Mixpanel vs ..."
        "claims": 0,
        "sources": ["text"],
        "example_runs": [crafted_key],
    }
    assert untracked["Pendo"]["claims"] == 2 and untracked["Pendo"]["sources"] == ["claim"]
    assert untracked["Pendo"]["example_runs"] == [claimed_key]
    # The alias claim now points at the target (claims re-matched against the tracked companies).
    with session_scope(url) as session:
        acme = session.scalar(sa.select(Company.id).where(Company.name == "Acme"))
        assert (
            session.scalar(sa.select(Claim.company_id).where(Claim.company_name == "acme analytics")) == acme
        )
    assert payload["untracked_companies"][0]["runs"] >= payload["untracked_companies"][-1]["runs"]


def _resources(url: str) -> dict[str, Any]:
    return {"app_db": AppDatabase(url=url), "models": ModelProviderResource(), "push": PushResource()}


def test_rematerializing_after_an_extractor_change_recomputes_history_without_model_calls(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'app.db'}"
    upgrade(url)
    load(url, small_org())
    keys = run_cycle(url)
    assert run_cycle(url) == keys  # a second cycle: the first is history
    with session_scope(url) as session:
        for run in session.scalars(sa.select(QuestionRun)):
            run.answer_text = f"{run.answer_text}\n- **Mixpanel**: also good, https://www.g2.com/x"
            # Answers edited behind the steps' back: their stamps no longer say what the rows hold.
            run.citations_stamp = run.metrics_stamp = None
    for key in keys:  # what the current extractors store
        steps.extract_run_citations(url, key)
        steps.compute_metrics(url, key)

    def stored() -> tuple[list[Any], list[Any]]:
        with session_scope(url) as session:
            citations = session.execute(
                sa.select(
                    Citation.question_run_id, Citation.url, Citation.category, Citation.extractor_version
                ).order_by(Citation.question_run_id, Citation.url)
            ).all()
            untracked = session.execute(
                sa.select(
                    UntrackedMention.question_run_id,
                    UntrackedMention.name_key,
                    UntrackedMention.source,
                    UntrackedMention.occurrences,
                    UntrackedMention.extractor_version,
                ).order_by(UntrackedMention.question_run_id, UntrackedMention.name_key)
            ).all()
        return citations, untracked

    expected = stored()
    assert len({row[0] for row in expected[1]}) == 2 * len(keys)  # both cycles' runs name Mixpanel
    assert {row[2] for row in expected[0]} >= {"review"} and {row[3] for row in expected[0]} == {
        CITATIONS_VERSION
    }

    # As stored by the previous extractors, before runs had stamps (a database upgraded past 0011):
    # no category, an old version, no untracked rows, no stamp.
    with session_scope(url) as session:
        session.execute(sa.update(Citation).values(category=None, extractor_version="citations-1"))
        session.execute(sa.delete(UntrackedMention))
        session.execute(sa.update(QuestionRun).values(citations_stamp=None, metrics_stamp=None))
    calls = count(url, ModelCall)

    def rematerialize() -> list[tuple[int, int]]:
        """history_runs of run_citations and competitive_metrics, per partition."""
        recomputed = []
        for key in keys:
            result = dg.materialize(
                va.question_run_assets,
                partition_key=key,
                instance=instance,
                resources=_resources(url),
                selection=[va.run_citations, va.competitive_metrics],
            )
            assert result.success
            recomputed.append(
                tuple(
                    result.asset_materializations_for_node(node)[0].metadata["history_runs"].value
                    for node in ("run_citations", "competitive_metrics")
                )
            )
        return recomputed

    def history_rows() -> list[Any]:
        """The ids of the earlier cycle's citations and untracked rows: replaced rows get new ids."""
        with session_scope(url) as session:
            earlier = session.scalar(sa.select(sa.func.min(QuestionRun.cycle_id)))
            return session.execute(
                sa.select(Citation.id, UntrackedMention.id)
                .join(QuestionRun, QuestionRun.id == Citation.question_run_id)
                .join(UntrackedMention, UntrackedMention.question_run_id == QuestionRun.id)
                .where(QuestionRun.cycle_id == earlier)
                .order_by(Citation.id, UntrackedMention.id)
            ).all()

    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("question_runs", keys)
        assert rematerialize() == [(1, 1)] * len(keys)  # unknown: each earlier run recomputed once
        assert count(url, ModelCall) == calls
        assert stored() == expected
        before = history_rows()
        assert before
        # Stamped now: a second pass leaves the earlier cycle's rows alone (the same ids).
        assert rematerialize() == [(0, 0)] * len(keys)
        assert history_rows() == before
    assert stored() == expected
    assert {row[4] for row in expected[1]} == {UNTRACKED_VERSION}


def _cli(*argv: str, capsys: pytest.CaptureFixture[str]) -> str:
    assert main(list(argv)) == 0
    return capsys.readouterr().out


def test_suggest_competitors_and_adding_one_recomputes_history(
    icp_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{icp_env / 'app.db'}"
    monkeypatch.setenv("ICP_DATABASE_URL", url)
    upgrade(url)
    full, path = small_org(), icp_env / "acme.yaml"
    path.write_text(yaml.safe_dump(full))
    _cli("org", "load", str(path), capsys=capsys)
    run_cycle(url)
    keys = run_cycle(url)  # the first cycle's runs are history
    with session_scope(url) as session:
        original = steps.latest_snapshot(session, "acme").payload
    competitor = max(
        (row for row in original["companies"] if not row["is_target"]), key=lambda row: row["mentioned_runs"]
    )
    assert competitor["mentioned_runs"] > 0
    name = competitor["name"]
    calls = count(url, ModelCall)

    # The org stops tracking it: its mentions and claims in the stored answers become untracked.
    without = {**full, "competitors": [c for c in full["competitors"] if c["name"] != name]}
    path.write_text(yaml.safe_dump(without))
    out = _cli("org", "load", str(path), capsys=capsys)
    assert "companies changed: recomputed 10 stored runs without a model call" in out
    out = _cli("org", "suggest-competitors", "acme", capsys=capsys)
    line = next(line for line in out.splitlines() if f"  {name}  (" in line)
    runs, mentions, claims, sources = line.split()[:4]
    assert int(runs) == competitor["mentioned_runs"] and sources == "claim,text"
    rows = json.loads(_cli("org", "suggest-competitors", "acme", "--json", "--limit", "1", capsys=capsys))
    assert [row["name"] for row in rows] == [name] and len(rows[0]["example_runs"]) <= 3
    with session_scope(url) as session:
        tracked = session.scalar(sa.select(Company.id).where(Company.name == name))
        assert count(url, Mention, Mention.company_id == tracked) == 0

    # Added back (as a user adds a suggested company): history recomputed, the same rate, no model call.
    path.write_text(yaml.safe_dump(full))
    out = _cli("org", "load", str(path), capsys=capsys)
    assert "latest analytics rebuilt" in out
    with session_scope(url) as session:
        rebuilt = steps.latest_snapshot(session, "acme").payload
        mentioned_cycles = session.scalars(
            sa.select(sa.distinct(QuestionRun.cycle_id)).join(Mention).where(Mention.company_id == tracked)
        ).all()
    row = next(r for r in rebuilt["companies"] if r["name"] == name)
    assert (row["mentioned_runs"], row["mention_rate"]) == (
        competitor["mentioned_runs"],
        competitor["mention_rate"],
    )
    assert rebuilt["sentiment"] == original["sentiment"]  # its claims point at it again
    assert len(mentioned_cycles) == 2  # both cycles: the offline answers repeat across cycles
    assert count(url, ModelCall) == calls
    out = _cli("org", "suggest-competitors", "acme", capsys=capsys)
    assert f"  {name}  (" not in out
    # `org load` stamped what it recomputed: the steps find no stale earlier run.
    for key in keys:
        assert steps.extract_mentions(url, key)["history_runs"] == 0
        assert steps.extract_run_citations(url, key)["history_runs"] == 0
        assert steps.compute_metrics(url, key)["history_runs"] == 0


def test_the_org_files_source_categories_are_stored_and_applied(tmp_path: Path) -> None:
    """`source_categories` in the org file extends the domain table: stored on the org and used by the
    classifier the citations step builds; removing the block from the file undoes it."""
    url = f"sqlite:///{tmp_path / 'app.db'}"
    upgrade(url)
    data = small_org()
    data["source_categories"] = {"review": ["example-reviews.com"]}
    load(url, data)

    def category(host: str) -> str:
        with session_scope(url) as session:
            return steps.source_classifier(session, "acme").category(host)

    with session_scope(url) as session:
        assert steps.org_source_categories(session.get(Org, "acme")) == {"review": ["example-reviews.com"]}
    assert category("shop.example-reviews.com") == "review"
    assert category("www.g2.com") == "review"  # the table still applies
    del data["source_categories"]
    load(url, data)
    assert category("shop.example-reviews.com") == "other"


def test_companies_changed_without_recompute_are_replayed_by_the_next_steps(
    icp_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`org load --no-recompute` leaves the stored runs as they were; their stamps name the old
    companies, so each step recomputes a partition's earlier runs the next time it runs, once."""
    url = f"sqlite:///{icp_env / 'app.db'}"
    monkeypatch.setenv("ICP_DATABASE_URL", url)
    upgrade(url)
    data, path = small_org(), icp_env / "acme.yaml"
    path.write_text(yaml.safe_dump(data))
    _cli("org", "load", str(path), capsys=capsys)
    run_cycle(url)
    keys = run_cycle(url)
    data["competitors"][0]["aliases"] = [*data["competitors"][0].get("aliases", []), "Globex Analytics"]
    path.write_text(yaml.safe_dump(data))
    out = _cli("org", "load", str(path), "--no-recompute", capsys=capsys)
    assert "history not recomputed now (--no-recompute)" in out

    def history_runs() -> list[tuple[int, int, int]]:
        return [
            (
                steps.extract_mentions(url, key)["history_runs"],
                steps.extract_run_citations(url, key)["history_runs"],
                steps.compute_metrics(url, key)["history_runs"],
            )
            for key in keys
        ]

    assert history_runs() == [(1, 1, 1)] * len(keys)
    assert history_runs() == [(0, 0, 0)] * len(keys)
