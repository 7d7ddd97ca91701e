"""`samples`: each question x model x location is asked N times per cycle, each sample its own question
run (partition, ledger entry, status), through the real runner with the offline provider."""

from collections import defaultdict

import dagster as dg
import sqlalchemy as sa
import yaml
from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

from icp_pipeline.cli.runner import run_cycle
from icp_pipeline.db.models import CycleItem, Mention, ModelCall, QuestionRun
from icp_pipeline.db.session import session_scope
from icp_pipeline.visibility.cycles import desired_org_partitions, open_cycle, set_item_status
from icp_pipeline.visibility.estimate import new_cycle_calls
from icp_pipeline.visibility.keys import question_key, question_run_key
from icp_pipeline.visibility.org_file import parse_org_text, upsert_org
from icp_pipeline_tests.integration.test_operations import _apply, _tick
from icp_pipeline_tests.support.pipeline import count, max_concurrent_calls, pipeline_defs

QUESTIONS = ["What is the best product analytics tool for a startup?"]
# 1 question x 1 location x (3 samples of openai + 2 of anthropic, its own override) = 5 question runs.
SAMPLED_ORG = {
    "id": "acme",
    "name": "Acme Analytics",
    "samples": 3,
    "target": {"name": "Acme", "aliases": ["Acme Analytics"], "domains": ["acme.io"]},
    "competitors": [
        {"name": "Globex", "domains": ["globex.com"]},
        {"name": "Initech", "domains": ["initech.com"]},
        {"name": "Umbrella", "domains": ["umbrella.dev"]},
    ],
    "models": [
        {"provider": "openai", "model": "gpt-4o-mini"},
        {"provider": "anthropic", "model": "claude-haiku-4-5", "samples": 2},
    ],
    "locations": ["US"],
    "questions": QUESTIONS,
    "min_runs": 3,
}


def _load(db_url: str, spec: dict) -> None:
    with session_scope(db_url) as session:
        upsert_org(session, parse_org_text(yaml.safe_dump(spec)))


def _base_key(question: str, slug: str) -> str:
    return question_run_key("acme", question_key(question), slug, "US")


def test_samples_are_separate_question_runs_and_only_the_newest_cycles_count(sqlite_app: str) -> None:
    _load(sqlite_app, SAMPLED_ORG)
    defs = pipeline_defs(sqlite_app, latency=0.05)
    instance = DagsterInstance.get()

    # One sample alone, before the cycle runs: it is its own partition with its own status.
    with session_scope(sqlite_app) as session:
        cycle, _ = open_cycle(session, "acme")
        first_cycle = cycle.id
        assert (cycle.total, cycle.samples_per_item) == (5, 3)
    first_sample = _base_key(QUESTIONS[0], "openai-gpt-4o-mini")
    second_sample, third_sample = f"{first_sample}|s2", f"{first_sample}|s3"
    instance.add_dynamic_partitions("question_runs", [second_sample])
    job = defs.resolve_job_def("question_run_job")
    alone = job.execute_in_process(partition_key=second_sample, instance=instance)
    assert alone.success
    assert alone.asset_materializations_for_node("ai_answer")[0].metadata["sample"].value == 2
    with session_scope(sqlite_app) as session:
        statuses = dict(
            session.execute(
                sa.select(CycleItem.partition_key, CycleItem.status).where(CycleItem.cycle_id == first_cycle)
            ).all()
        )
    assert statuses[second_sample] == "succeeded"
    assert statuses[first_sample] == statuses[third_sample] == "pending"
    assert count(sqlite_app, ModelCall, ModelCall.purpose == "answer") == 1

    outcome = run_cycle("acme", workers=3, progress=False, defs=defs)
    assert (outcome.cycle_id, outcome.status, outcome.total, outcome.completed) == (
        first_cycle,
        "succeeded",
        5,
        5,
    )
    assert max_concurrent_calls(sqlite_app) <= 3

    with session_scope(sqlite_app) as session:
        items = list(session.scalars(sa.select(CycleItem).where(CycleItem.cycle_id == first_cycle)))
        samples = defaultdict(list)
        for item in items:
            samples[(item.question.key, item.model.slug)].append((item.sample_index, item.partition_key))
        # Each sample its own partition: KEY, KEY|s2, KEY|s3 (the anthropic override asks twice).
        for question in QUESTIONS:
            for slug, asked in (("openai-gpt-4o-mini", 3), ("anthropic-claude-haiku-4-5", 2)):
                base = _base_key(question, slug)
                expected = [(0, base)] + [(i, f"{base}|s{i + 1}") for i in range(1, asked)]
                assert sorted(samples[(question_key(question), slug)]) == expected
        assert {item.status for item in items} == {"succeeded"}
        # Its own ledger entries: one answer and one claims purchase per sample, under its item.
        ledger = defaultdict(list)
        for call in session.scalars(sa.select(ModelCall).where(ModelCall.ok).order_by(ModelCall.id)):
            ledger[call.cycle_item_id].append((call.purpose, call.subject))
        assert ledger == {
            item.id: [("answer", f"answer:{item.id}"), ("claims", f"claims:{item.id}")] for item in items
        }
        runs = list(session.scalars(sa.select(QuestionRun).where(QuestionRun.cycle_id == first_cycle)))
        assert sorted((r.partition_key, r.sample_index, r.status) for r in runs) == sorted(
            (i.partition_key, i.sample_index, "completed") for i in items
        )
        # The offline provider answers each sample differently: some company is named in one sample
        # of a combination and not in another.
        answers, named = defaultdict(set), defaultdict(set)
        for run in runs:
            answers[(run.question_id, run.model_id)].add(run.answer_text)
            mentioned = frozenset(
                session.scalars(sa.select(Mention.company_id).where(Mention.question_run_id == run.id))
            )
            named[(run.question_id, run.model_id)].add(mentioned)
        assert any(len(texts) > 1 for texts in answers.values())
        assert any(len(sets) > 1 for sets in named.values())

    # Real Dagster runs: one per sample, plus the roll-up.
    runs_of_cycle = instance.get_runs(RunsFilter(tags={"icp/cycle_id": str(first_cycle)}))
    assert all(r.status == DagsterRunStatus.SUCCESS for r in runs_of_cycle)
    partitions = [r.tags.get("dagster/partition") for r in runs_of_cycle if r.job_name == "question_run_job"]
    assert sorted(partitions) == sorted(i.partition_key for i in items if i.partition_key != second_sample)

    # The analytics use every completed sample, and see the samples disagree.
    payload = outcome.payload
    assert payload["runs"] == {"total": 5, "completed": 5, "failed": 0}
    assert payload["latest_runs"] == 5
    assert {row["runs"] for row in payload["companies"]} == {5}
    stability = [row["stability"] for rows in payload["by_question"].values() for row in rows]
    assert {s["repeated_combinations"] for s in stability} == {2}  # each model asks the question 2+ times
    assert any(s["disagreeing_combinations"] > 0 for s in stability)

    # Running the cycle's partitions again buys nothing.
    calls = count(sqlite_app, ModelCall)
    assert job.execute_in_process(partition_key=third_sample, instance=instance).success
    assert count(sqlite_app, ModelCall) == calls

    # Samples lowered to 1: the next cycle asks once, and only its runs are latest (no stale samples).
    _load(
        sqlite_app,
        {**SAMPLED_ORG, "samples": 1, "models": [m | {"samples": 1} for m in SAMPLED_ORG["models"]]},
    )
    second = run_cycle("acme", workers=3, progress=False, defs=defs, new_cycle=True)
    assert (second.status, second.total, second.completed) == ("succeeded", 2, 2)
    assert count(sqlite_app, ModelCall, ModelCall.purpose == "answer") == 7
    with session_scope(sqlite_app) as session:
        latest = session.execute(
            sa.select(QuestionRun.cycle_id, QuestionRun.sample_index).where(QuestionRun.is_latest)
        ).all()
        assert sorted(latest) == [(second.cycle_id, 0)] * 2
        assert count(sqlite_app, QuestionRun, QuestionRun.cycle_id == first_cycle) == 5  # history stays
    assert second.payload["latest_runs"] == 2
    assert {row["runs"] for row in second.payload["companies"]} == {2}
    stability = [row["stability"] for rows in second.payload["by_question"].values() for row in rows]
    assert {s["repeated_combinations"] for s in stability} == {0}


def test_raising_and_lowering_samples_mid_cycle_keeps_the_partitions_in_step(sqlite_app: str) -> None:
    one_sample = {**SAMPLED_ORG, "samples": 1, "models": SAMPLED_ORG["models"][:1]}
    _load(sqlite_app, one_sample)
    with session_scope(sqlite_app) as session:
        cycle, _ = open_cycle(session, "acme")
        cycle_id = cycle.id
        base_keys = {i.partition_key for i in cycle.items}
    assert len(base_keys) == 1 and all(k.count("|") == 3 for k in base_keys)

    with dg.instance_for_test() as instance:
        _apply(instance, _tick(instance, sqlite_app))
        # Raised to 3: the running cycle gets samples 2 and 3 of each question, their partitions and runs.
        _load(sqlite_app, {**one_sample, "samples": 3})
        with session_scope(sqlite_app) as session:  # a new cycle's estimate counts every sample
            planned = [(c.purpose, c.model) for c in new_cycle_calls(session, "acme")]
        assert sorted(planned) == [("answer", "gpt-4o-mini")] * 3 + [("claims", "gpt-4o-mini")] * 3
        raised = _tick(instance, sqlite_app)
        sample_keys = {f"{k}|s{i}" for k in base_keys for i in (2, 3)}
        added = [r for r in raised.dynamic_partitions_requests if r.partitions_def_name == "question_runs"]
        assert [set(r.partition_keys) for r in added] == [sample_keys]
        requested = {r.partition_key for r in raised.run_requests if r.job_name == "question_run_job"}
        assert requested == base_keys | sample_keys
        _apply(instance, raised)

        # Lowered back to 1 before they ran: the running cycle still finishes them (nothing stranded).
        _load(sqlite_app, one_sample)
        lowered = _tick(instance, sqlite_app)
        assert lowered.dynamic_partitions_requests == []
        assert {
            r.partition_key for r in lowered.run_requests if r.job_name == "question_run_job"
        } == requested

        # Once the cycle is done, the extra sample partitions go; the cycle's items stay.
        with session_scope(sqlite_app) as session:
            for item in session.scalars(sa.select(CycleItem).where(CycleItem.cycle_id == cycle_id)):
                set_item_status(session, item, "succeeded")
            assert desired_org_partitions(session)[1] == base_keys
        done = _tick(instance, sqlite_app)
        removed = [
            r for r in done.dynamic_partitions_requests if isinstance(r, dg.DeleteDynamicPartitionsRequest)
        ]
        assert [set(r.partition_keys) for r in removed] == [sample_keys]
        _apply(instance, done)
        assert set(instance.get_dynamic_partitions("question_runs")) == base_keys
        assert count(sqlite_app, CycleItem, CycleItem.cycle_id == cycle_id) == 3
