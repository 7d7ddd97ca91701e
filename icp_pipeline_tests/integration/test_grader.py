"""The org's grader in the ledger and the analytics, and the metadata the UI shows: numbers as numbers,
tables as tables, model text and file-supplied names as inert data (never markdown)."""

from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa
import yaml

from icp_pipeline.db.models import Citation, Claim, Mention, ModelCall, Org, QuestionRun
from icp_pipeline.db.session import session_scope, upgrade
from icp_pipeline.defs.resources import AppDatabase, ModelProviderResource, PushResource
from icp_pipeline.defs.visibility import assets as va
from icp_pipeline.visibility import estimate, steps
from icp_pipeline.visibility.analytics import ANALYTICS_VERSION
from icp_pipeline.visibility.citations import CITATIONS_VERSION
from icp_pipeline.visibility.claims import CLAIMS_VERSION
from icp_pipeline.visibility.cycles import open_cycle
from icp_pipeline.visibility.mentions import MENTIONS_VERSION
from icp_pipeline.visibility.metrics import METRICS_VERSION
from icp_pipeline.visibility.org_file import parse_org_text, upsert_org
from icp_pipeline.visibility.search_queries import SEARCH_QUERIES_VERSION
from icp_pipeline.visibility.untracked import UNTRACKED_VERSION
from icp_pipeline_tests.conftest import example_org_data, load_example
from icp_pipeline_tests.support.pipeline import count

EVIL = "Pipe | Corp ![c](https://evil.example/company.png)"
SONNET = {"provider": "anthropic", "model": "claude-sonnet-4-5"}


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def app_url(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The app database with the example org, on SQLite and on PostgreSQL (the grader query is SQL)."""
    if request.param == "sqlite":
        return request.getfixturevalue("sqlite_app")
    request.getfixturevalue("icp_env")
    url = request.getfixturevalue("postgres_databases")()
    monkeypatch.setenv("ICP_DATABASE_URL", url)
    upgrade(url)
    load_example(url)
    return url


def load_org(db_url: str, grader: dict | None = None, models: int = 3, evil: bool = False) -> list[str]:
    """The example org cut to one question and one location (one run per model); its cycle's keys."""
    spec = example_org_data()
    spec["questions"], spec["locations"], spec["models"] = (
        spec["questions"][:1],
        ["US"],
        spec["models"][:models],
    )
    if grader:
        spec["grader"] = grader
    if evil:
        spec["competitors"].append({"name": EVIL, "aliases": [], "domains": ["pipe.example"]})
    with session_scope(db_url) as session:
        upsert_org(session, parse_org_text(yaml.safe_dump(spec)))
    with session_scope(db_url) as session:
        cycle, _ = open_cycle(session, "acme")
        return sorted({item.partition_key for item in cycle.items})


def set_grader(db_url: str, grader: dict | None) -> None:
    with session_scope(db_url) as session:
        org = session.get(Org, "acme")
        org.grader_provider, org.grader_model = (
            (grader["provider"], grader["model"]) if grader else (None, None)
        )


def answer_all(db_url: str, keys: list[str]) -> None:
    provider_for = ModelProviderResource().provider_for  # no keys: every provider falls back to offline
    for key in keys:
        steps.buy_answers(db_url, key, provider_for)
        steps.store_runs(db_url, key)
        steps.extract_mentions(db_url, key)
        steps.extract_run_citations(db_url, key)


def grade_all(db_url: str, keys: list[str]) -> dict[str, int]:
    provider_for = ModelProviderResource().provider_for
    totals = {"model_calls": 0, "reused_calls": 0}
    for key in keys:
        summary = steps.extract_claims(db_url, key, provider_for)
        steps.compute_metrics(db_url, key)
        totals["model_calls"] += summary["model_calls"]
        totals["reused_calls"] += summary["reused_calls"]
    return totals


def claims_calls(db_url: str) -> list[tuple[str, str, str, int]]:
    with session_scope(db_url) as session:
        return [
            tuple(row)
            for row in session.execute(
                sa.select(
                    ModelCall.provider, ModelCall.requested_model, ModelCall.subject, ModelCall.cycle_item_id
                )
                .where(ModelCall.purpose == "claims")
                .order_by(ModelCall.id)
            )
        ]


def test_the_grader_buys_the_claims_of_every_answering_model_once(app_url: str) -> None:
    keys = load_org(app_url, grader=SONNET)
    answer_all(app_url, keys)
    with session_scope(app_url) as session:
        answered_by = set(session.execute(sa.select(QuestionRun.provider, QuestionRun.requested_model)))
    assert answered_by == {
        ("openai", "gpt-4o-mini"),
        ("anthropic", "claude-haiku-4-5"),
        ("gemini", "gemini-2.5-flash"),
    }

    # What `org run` says it will buy: claims from the grader, at the grader's price.
    with session_scope(app_url) as session:
        cycle_id = session.scalar(sa.select(QuestionRun.cycle_id))
        still_open = estimate.open_item_calls(session, cycle_id)
        next_cycle = estimate.new_cycle_calls(session, "acme")
    assert [(c.purpose, c.provider, c.model) for c in still_open] == [("claims", *SONNET.values())] * 3
    assert (
        sorted((c.provider, c.model) for c in next_cycle if c.purpose == "claims")
        == [tuple(SONNET.values())] * 3
    )
    assert estimate.estimate(still_open, lambda *_: True).unpriced == set()

    assert grade_all(app_url, keys) == {"model_calls": 3, "reused_calls": 0}
    calls = claims_calls(app_url)
    # Bought from the grader (offline here: no API key, mode auto), one purchase per run, none under the
    # self-graded subject `claims:<item>`.
    assert {(provider, model) for provider, model, _, _ in calls} == {("anthropic", "claude-sonnet-4-5")}
    assert len({subject for _, _, subject, _ in calls}) == 3
    assert all(subject != f"claims:{item}" for _, _, subject, item in calls)
    with session_scope(app_url) as session:
        graders = set(
            session.execute(
                sa.select(ModelCall.requested_model).join(Claim, Claim.model_call_id == ModelCall.id)
            ).scalars()
        )
        assert session.scalar(sa.select(sa.func.count()).select_from(Claim)) > 0
    assert graders == {"claude-sonnet-4-5"}

    # Again: the ledger answers, nothing is bought.
    assert grade_all(app_url, keys) == {"model_calls": 0, "reused_calls": 3}
    assert claims_calls(app_url) == calls

    steps.mark_latest(app_url, "acme")
    payload = steps.build_analytics(app_url, "acme").payload
    assert payload["grader"] == SONNET
    assert [g["model"] for g in payload["graders"]] == ["anthropic/claude-sonnet-4-5"]
    assert payload["graders"][0]["synthetic"] is True and payload["mixed_graders"] is False


def test_changing_the_grader_buys_only_what_the_new_grader_has_not_made(app_url: str) -> None:
    keys = load_org(app_url)
    answer_all(app_url, keys)
    assert grade_all(app_url, keys)["model_calls"] == 3  # each answering model grades itself
    self_graded = claims_calls(app_url)
    assert all(subject == f"claims:{item}" for _, _, subject, item in self_graded)
    steps.mark_latest(app_url, "acme")
    mixed = steps.build_analytics(app_url, "acme").payload
    assert mixed["grader"] is None and mixed["mixed_graders"] is True

    # gpt-4o-mini grades everything: its own run's claims are already its own; two runs are bought.
    set_grader(app_url, {"provider": "openai", "model": "gpt-4o-mini"})
    assert grade_all(app_url, keys) == {"model_calls": 2, "reused_calls": 1}
    new = claims_calls(app_url)[3:]
    assert {(provider, model) for provider, model, _, _ in new} == {("openai", "gpt-4o-mini")}
    payload = steps.build_analytics(app_url, "acme").payload
    assert [g["model"] for g in payload["graders"]] == ["openai/gpt-4o-mini"]
    assert payload["mixed_graders"] is False

    # Back to no grader: the self-graded purchases are still in the ledger and reused.
    set_grader(app_url, None)
    assert grade_all(app_url, keys) == {"model_calls": 0, "reused_calls": 3}
    assert len(claims_calls(app_url)) == 5


def _resources(db_url: str) -> dict[str, Any]:
    return {"app_db": AppDatabase(url=db_url), "models": ModelProviderResource(), "push": PushResource()}


def _metadata(result: dg.ExecuteInProcessResult, node: str) -> dict[str, dg.MetadataValue]:
    return result.asset_materializations_for_node(node)[0].metadata


def test_the_ui_gets_numbers_tables_and_inert_text(sqlite_app: str) -> None:
    keys = load_org(sqlite_app, grader=SONNET, models=1, evil=True)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("question_runs", keys)
        instance.add_dynamic_partitions("orgs", ["acme"])
        runs = dg.materialize(
            va.question_run_assets, partition_key=keys[0], instance=instance, resources=_resources(sqlite_app)
        )
        rollup = dg.materialize(
            va.org_assets,
            partition_key="acme",
            instance=instance,
            resources=_resources(sqlite_app),
            selection=[va.latest_runs, va.org_analytics],
        )
    assert runs.success and rollup.success
    materialized = [
        (node, _metadata(result, node))
        for result, nodes in (
            (runs, [a.op.name for a in va.question_run_assets]),
            (rollup, ["latest_runs", "org_analytics"]),
        )
        for node in nodes
    ]
    # No markdown anywhere: Dagster would render its links and fetch its images.
    for node, metadata in materialized:
        for key, value in metadata.items():
            assert not isinstance(value, dg.MarkdownMetadataValue), (node, key)
    assert isinstance(_metadata(runs, "ai_answer")["answer_preview"], dg.TextMetadataValue)
    assert isinstance(_metadata(runs, "question_run")["answer_preview"], dg.TextMetadataValue)

    # Row counts of the three extraction steps: the rows they stored.
    expected = {
        "run_mentions": count(sqlite_app, Mention),
        "run_citations": count(sqlite_app, Citation),
        "run_claims": count(sqlite_app, Claim),
    }
    assert expected["run_claims"] > 0 and expected["run_mentions"] > 0
    for node, rows in expected.items():
        assert _metadata(runs, node)["dagster/row_count"] == dg.IntMetadataValue(rows), node
    assert _metadata(runs, "run_claims")["graders"].value == ["anthropic/claude-sonnet-4-5"]

    analytics = _metadata(rollup, "org_analytics")
    with session_scope(sqlite_app) as session:
        payload = steps.latest_snapshot(session, "acme").payload
    # Per company floats under keys built from ids, one set per company (the evil name included).
    for row in payload["companies"]:
        prefix = next(k.split("/")[0] for k in analytics if k.startswith(f"company_{row['company_id']}_"))
        assert analytics[f"{prefix}/mention_rate"] == dg.FloatMetadataValue(row["mention_rate"])
        assert analytics[f"{prefix}/mention_rate_ci_low"] == dg.FloatMetadataValue(row["mention_rate_ci"][0])
        assert analytics[f"{prefix}/mention_rate_ci_high"] == dg.FloatMetadataValue(row["mention_rate_ci"][1])
        assert analytics[f"{prefix}/share_of_voice"].value == row["share_of_voice"]
    assert all(key.isascii() and " " not in key and "|" not in key and "(" not in key for key in analytics)

    # The companies as a table with its schema; the evil name is one cell, verbatim.
    companies = analytics["companies"]
    assert isinstance(companies, dg.TableMetadataValue)
    assert [c.name for c in companies.schema.columns] == [name for name, _, _ in va.COMPANY_COLUMNS]
    assert {c.name: c.type for c in companies.schema.columns}["mention_rate"] == "float"
    records = {record.data["company"]: record.data for record in companies.records}
    assert set(records) == {"Acme", "Globex", "Initech", "Umbrella", EVIL}
    assert records[EVIL]["target"] is False and records["Acme"]["target"] is True
    assert records["Acme"]["mention_rate"] == payload["companies"][0]["mention_rate"]
    assert analytics["grader"] == dg.TextMetadataValue("anthropic/claude-sonnet-4-5")
    assert analytics["mixed_graders"].value is False


def test_versioned_logic_carries_its_code_version() -> None:
    versions = {
        va.run_mentions: MENTIONS_VERSION,
        va.run_citations: CITATIONS_VERSION,
        va.run_claims: CLAIMS_VERSION,
        va.run_search_queries: SEARCH_QUERIES_VERSION,
        va.competitive_metrics: f"{METRICS_VERSION}/{UNTRACKED_VERSION}",  # the step extracts untracked names too
        va.org_analytics: ANALYTICS_VERSION,
    }
    for asset, version in versions.items():
        assert set(asset.code_versions_by_key.values()) == {version}
