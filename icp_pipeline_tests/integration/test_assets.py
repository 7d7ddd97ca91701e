"""Single micro-step assets on a real instance (`instance_for_test`, which enforces pools)."""

from dataclasses import dataclass, replace

import dagster as dg
import pytest
import sqlalchemy as sa
import yaml

from icp_pipeline.db.models import Company, CycleItem, Mention, ModelCall, QuestionRun
from icp_pipeline.db.session import session_scope
from icp_pipeline.defs.resources import AppDatabase, ModelProviderResource, PushResource
from icp_pipeline.defs.visibility import assets as va
from icp_pipeline.providers.base import ModelProvider, ModelRequest, ModelResponse
from icp_pipeline.visibility.cycles import open_cycle
from icp_pipeline.visibility.org_file import parse_org_text, upsert_org
from icp_pipeline_tests.conftest import example_org_data
from icp_pipeline_tests.support.pipeline import count

QUESTION_RUN_ASSETS = va.question_run_assets
ALL_ASSETS = [*va.question_run_assets, *va.org_assets]


@pytest.fixture
def instance():
    with dg.instance_for_test() as instance:
        yield instance


@pytest.fixture
def cycle_key(sqlite_app: str, instance: dg.DagsterInstance) -> str:
    with session_scope(sqlite_app) as session:
        cycle, _ = open_cycle(session, "acme")
        keys = sorted({i.partition_key for i in cycle.items})
    instance.add_dynamic_partitions("question_runs", keys)
    instance.add_dynamic_partitions("orgs", ["acme"])
    return keys[0]


def _resources(db_url: str, models: ModelProviderResource | None = None) -> dict:
    return {
        "app_db": AppDatabase(url=db_url),
        "models": models or ModelProviderResource(),
        "push": PushResource(),
    }


def _materialize(assets, key, instance, db_url, models=None, selection=None) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        assets,
        partition_key=key,
        instance=instance,
        resources=_resources(db_url, models),
        selection=selection,
        raise_on_error=False,
    )


def test_keys_are_readable(cycle_key: str) -> None:
    org, question, model, country = cycle_key.split("|")
    assert (org, model, country) == ("acme", "anthropic-claude-haiku-4-5", "DE")
    assert question.startswith("q-")


def test_later_steps_and_rematerialization_never_rebuy_the_answer(sqlite_app, instance, cycle_key) -> None:
    result = _materialize(QUESTION_RUN_ASSETS, cycle_key, instance, sqlite_app)
    assert result.success
    assert count(sqlite_app, ModelCall, ModelCall.purpose == "answer") == 1
    materialization = result.asset_materializations_for_node("ai_answer")[0]
    assert materialization.metadata["answers_bought"].value == 1
    assert "Synthetic" in materialization.metadata["answer_preview"].value

    # Re-materialize everything, then just the later steps: the ledger answers, nothing is bought.
    again = _materialize(QUESTION_RUN_ASSETS, cycle_key, instance, sqlite_app)
    assert again.asset_materializations_for_node("ai_answer")[0].metadata["answers_reused"].value == 1
    assert _materialize(
        QUESTION_RUN_ASSETS,
        cycle_key,
        instance,
        sqlite_app,
        selection=[va.question_run, va.run_mentions, va.run_claims],
    ).success
    assert count(sqlite_app, ModelCall, ModelCall.purpose == "answer") == 1
    assert count(sqlite_app, ModelCall, ModelCall.purpose == "claims") == 1
    assert count(sqlite_app, QuestionRun) == 1


def test_alias_change_is_recomputed_from_stored_answers_without_model_calls(
    sqlite_app, instance, cycle_key
) -> None:
    assert _materialize(QUESTION_RUN_ASSETS, cycle_key, instance, sqlite_app).success
    calls_before = count(sqlite_app, ModelCall)
    with session_scope(sqlite_app) as session:
        answer = session.scalar(sa.select(QuestionRun.answer_text))
    assert "options" in answer  # every offline answer says "Here are options ... worth a look"

    # A new competitor whose alias appears in the stored answer.
    spec = example_org_data()
    spec["competitors"].append({"name": "Optionly", "aliases": ["options"], "domains": ["optionly.com"]})
    with session_scope(sqlite_app) as session:
        upsert_org(session, parse_org_text(yaml.safe_dump(spec)))

    recompute = [va.run_mentions, va.run_citations, va.competitive_metrics]
    assert _materialize(QUESTION_RUN_ASSETS, cycle_key, instance, sqlite_app, selection=recompute).success
    rollup = dg.materialize(
        va.org_assets,
        partition_key="acme",
        instance=instance,
        resources=_resources(sqlite_app),
        selection=[va.latest_runs, va.org_analytics],
    )
    assert rollup.success
    assert count(sqlite_app, ModelCall) == calls_before
    with session_scope(sqlite_app) as session:
        mentioned = {m.company_id for m in session.scalars(sa.select(Mention))}
        optionly = session.scalar(sa.select(Company.id).where(Company.name == "Optionly"))
    assert optionly in mentioned
    companies = rollup.asset_materializations_for_node("org_analytics")[0].metadata["companies"]
    assert "Optionly" in [record.data["company"] for record in companies.records]


@dataclass
class GarbageClaimsProvider:
    """A fake provider that answers normally but replies to every extraction with prose, not JSON."""

    inner: ModelProvider
    name: str = "fake"

    def complete(self, request: ModelRequest) -> ModelResponse:
        response = self.inner.complete(request)
        if request.purpose == "claims":
            return replace(response, text="Sure! Acme is great. (no JSON, sorry)")
        return response


class GarbageClaimsModels(ModelProviderResource):
    def provider_for(self, provider: str, model: str) -> ModelProvider:
        return GarbageClaimsProvider(super().provider_for(provider, model))


def test_invalid_structured_output_fails_the_step_and_keeps_the_raw_text(
    sqlite_app, instance, cycle_key
) -> None:
    result = _materialize(QUESTION_RUN_ASSETS, cycle_key, instance, sqlite_app, models=GarbageClaimsModels())
    assert not result.success
    failures = [e for e in result.all_events if e.is_step_failure]
    assert [e.step_key for e in failures] == ["run_claims"]
    assert "invalid structured output" in failures[0].event_specific_data.error.message
    with session_scope(sqlite_app) as session:
        run = session.scalars(sa.select(QuestionRun)).one()
        assert run.raw_output_text == "Sure! Acme is great. (no JSON, sorry)"
        item = session.scalars(sa.select(CycleItem).where(CycleItem.partition_key == cycle_key)).one()
        assert (item.status, item.failed_step) == ("failed", "run_claims")
        # The first reply and the one repair attempt were both paid for and are both in the ledger.
        claims_calls = list(session.scalars(sa.select(ModelCall).where(ModelCall.purpose == "claims")))
        assert len(claims_calls) == 2
        assert all(c.output_text.startswith("Sure!") for c in claims_calls)


def test_every_asset_declares_group_kinds_description_and_pools(sqlite_app: str) -> None:
    from icp_pipeline_tests.support.pipeline import pipeline_defs

    assets = list(pipeline_defs(sqlite_app).assets)
    assert len(assets) == 15
    for asset in assets:
        spec = next(iter(asset.specs))
        assert spec.group_name in ("question_runs", "org_rollups", "icp_segments")
        assert spec.kinds and spec.description
    pools = {next(iter(a.specs)).key.path[-1]: a.op.pool for a in assets}
    # Exactly the assets that call a model are in the pool.
    assert {name for name, pool in pools.items() if pool == "llm"} == {
        "ai_answer",
        "run_claims",
        "site_segments",
        "segment_icp",
        "segment_questions",
        "site_icp_summary",
    }


def test_a_partition_without_a_cycle_fails_with_what_to_do(sqlite_app, instance) -> None:
    key = "acme|q-000000|openai-gpt-4o-mini|US"
    instance.add_dynamic_partitions("question_runs", [key])
    result = _materialize(QUESTION_RUN_ASSETS, key, instance, sqlite_app)
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert failure.step_key == "ai_answer"
    assert "icp-pipeline org run ORG" in failure.event_specific_data.error.message
    assert count(sqlite_app, ModelCall) == 0


def test_question_run_metadata_says_what_the_partition_asks(sqlite_app, instance, cycle_key) -> None:
    """The key carries the question's hash: the metadata shows its text, the model, country, cycle and
    sample, the org file's text as inert text and the numbers as ints."""
    with session_scope(sqlite_app) as session:
        item = session.scalars(sa.select(CycleItem).where(CycleItem.partition_key == cycle_key)).one()
        question, cycle_id = item.question.text, item.cycle_id
    result = _materialize(QUESTION_RUN_ASSETS, cycle_key, instance, sqlite_app)
    assert result.success
    for node in ("ai_answer", "question_run"):
        metadata = result.asset_materializations_for_node(node)[0].metadata
        for name, value in {
            "question": question,
            "provider": "anthropic",
            "model": "claude-haiku-4-5",
            "country": "DE",
            "org": "acme",
            "question_key": cycle_key.split("|")[1],
        }.items():
            assert isinstance(metadata[name], dg.TextMetadataValue), (node, name)
            assert metadata[name].value == value, (node, name)
        assert isinstance(metadata["cycle_id"], dg.IntMetadataValue)
        assert metadata["cycle_id"].value == cycle_id
        assert isinstance(metadata["sample"], dg.IntMetadataValue)
        assert metadata["sample"].value == 1
        assert isinstance(metadata["web_search"], dg.BoolMetadataValue)
