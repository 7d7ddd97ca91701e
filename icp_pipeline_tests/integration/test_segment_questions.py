"""Questions from the ICPs (issue 13, items 1, 2 and 6): a site and an org linked through `icp:` on the
offline provider, real Dagster runs on the CLI's instance, the app database on SQLite (and PostgreSQL)."""

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa
import yaml
from dagster import DagsterInstance

from icp_pipeline.cli.main import main
from icp_pipeline.cli.runner import execute_one, run_cycle
from icp_pipeline.db.models import (
    Company,
    CompetitiveMetric,
    CycleItem,
    ModelCall,
    Question,
    QuestionRun,
    Segment,
    SegmentResult,
)
from icp_pipeline.db.session import session_scope, upgrade
from icp_pipeline.defs.operations.sensors import partition_sync_sensor
from icp_pipeline.defs.resources import AppDatabase
from icp_pipeline.providers.base import ModelRequest
from icp_pipeline.providers.offline import OfflineProvider
from icp_pipeline.segments.questions import normalise_question, questions_prompt
from icp_pipeline.segments.schemas import SegmentQuestions
from icp_pipeline.segments.site_file import parse_site_text, upsert_site
from icp_pipeline.visibility.cycles import latest_cycle
from icp_pipeline.visibility.org_file import parse_org_text, upsert_org
from icp_pipeline.visibility.steps import latest_snapshot
from icp_pipeline_tests.conftest import write_instance_yaml
from icp_pipeline_tests.integration.test_analytics_scale import reference_payload
from icp_pipeline_tests.support.pipeline import count, pipeline_defs

SITE = {
    "id": "shop",
    "name": "Shop Analytics",
    "url": "https://shop.example",
    "description": "Analytics for online shops.",
    "segments": [
        {"id": "merchants", "name": "Independent merchants", "description": "Small online shops."},
        {"id": "agencies", "name": "Commerce agencies", "description": "Agencies running many shops."},
    ],
}
KEYS = ["shop|merchants", "shop|agencies"]
OFFLINE = {"ops": {"segment_icp": {"config": {"provider": "offline", "model": "synthetic"}}}}
PER_SEGMENT = 3


def org_data(org_id: str = "shopco", questions: list[str] | None = None, **icp: Any) -> dict[str, Any]:
    return {
        "id": org_id,
        "name": "Shop Co",
        "target": {"name": "Shopmetrics", "domains": ["shopmetrics.io"]},
        "competitors": [{"name": "Globex", "domains": ["globex.com"]}],
        "models": [{"provider": "offline", "model": "synthetic"}],
        "locations": ["US"],
        "questions": questions or ["Which analytics tool suits a small online shop?"],
        "icp": {"site": "shop", "questions_per_segment": PER_SEGMENT, **icp},
    }


def load_org(url: str, data: dict[str, Any]) -> None:
    with session_scope(url) as session:
        upsert_org(session, parse_org_text(yaml.safe_dump(data), "org.yaml"))


def load_site(url: str, data: dict[str, Any]) -> None:
    with session_scope(url) as session:
        upsert_site(session, parse_site_text(yaml.safe_dump(data), "site.yaml"))


def build_segment(defs: Any, key: str, config: dict[str, Any] = OFFLINE) -> dg.RunRecord:
    """segment_icp_job for one segment: its ICP build, then its questions."""
    instance = DagsterInstance.get()
    ok, error = execute_one(defs.resolve_job_def("segment_icp_job"), key, instance, {}, config)
    assert ok, error
    event = instance.get_latest_materialization_event(dg.AssetKey("segment_questions"))
    return event.asset_materialization.metadata


def segment_rows(url: str, org_id: str = "shopco") -> list[Question]:
    with session_scope(url) as session:
        return list(
            session.scalars(
                sa.select(Question)
                .where(Question.org_id == org_id, Question.source == "segment")
                .order_by(Question.id)
            )
        )


def question_calls(url: str) -> int:
    return count(url, ModelCall, ModelCall.purpose == "segment_questions")


def offline_questions(url: str, key: str) -> list[str]:
    """What the offline provider will propose for the segment's stored ICP (to craft a duplicate)."""
    with session_scope(url) as session:
        segment = session.scalars(sa.select(Segment).where(Segment.partition_key == key)).one()
        profile = session.scalars(
            sa.select(SegmentResult.profile).where(SegmentResult.segment_id == segment.id)
        ).one()
        name = segment.name
    request = ModelRequest(
        provider="offline",
        model="synthetic",
        prompt=questions_prompt(name, profile, PER_SEGMENT),
        purpose="segment_questions",
        output_schema=SegmentQuestions,
        offline_hints={"segment": name, "profile": profile, "count": PER_SEGMENT},
    )
    reply = SegmentQuestions.model_validate_json(OfflineProvider().complete(request).text)
    return [q.text for q in reply.questions]


def independent_counts(url: str, org_id: str) -> dict[str, tuple[int, int]]:
    """Per segment id: (latest runs of its active questions, of them the runs mentioning the target),
    counted straight from the rows."""
    with session_scope(url) as session:
        target = session.scalars(
            sa.select(Company.id).where(Company.org_id == org_id, Company.is_target)
        ).one()
        runs = session.execute(
            sa.select(Question.segment_id, sa.func.count())
            .join(QuestionRun, QuestionRun.question_id == Question.id)
            .where(QuestionRun.org_id == org_id, QuestionRun.is_latest, Question.active)
            .where(Question.segment_id.is_not(None))
            .group_by(Question.segment_id)
        ).all()
        mentioned = dict(
            session.execute(
                sa.select(Question.segment_id, sa.func.count())
                .join(QuestionRun, QuestionRun.question_id == Question.id)
                .join(CompetitiveMetric, CompetitiveMetric.question_run_id == QuestionRun.id)
                .where(QuestionRun.org_id == org_id, QuestionRun.is_latest, Question.active)
                .where(CompetitiveMetric.company_id == target, CompetitiveMetric.mentioned)
                .where(CompetitiveMetric.position.is_not(None), Question.segment_id.is_not(None))
                .group_by(Question.segment_id)
            ).all()
        )
    return {str(segment): (n, mentioned.get(segment, 0)) for segment, n in runs}


def check_by_segment(url: str, org_id: str) -> dict[str, Any]:
    with session_scope(url) as session:
        payload = latest_snapshot(session, org_id).payload
    expected = independent_counts(url, org_id)
    assert set(payload["by_segment"]) == set(expected) and expected
    for segment, (runs, mentioned) in expected.items():
        target = next(row for row in payload["by_segment"][segment] if row["is_target"])
        assert (target["runs"], target["mentioned_runs"]) == (runs, mentioned)
        assert target["mention_rate_ci"] is not None and "share_of_voice_ci" in target
    # File questions' runs have no segment: the segments' runs are a strict part of the whole.
    assert sum(r for r, _ in expected.values()) < payload["latest_runs"]
    # The database roll-up equals the per-run reference computation, by_segment included.
    reference = reference_payload(url, org_id)
    assert payload["by_segment"] == reference["by_segment"]
    return payload


@pytest.fixture
def app(icp_env: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    url = f"sqlite:///{icp_env / 'app.db'}"
    monkeypatch.setenv("ICP_DATABASE_URL", url)
    monkeypatch.setenv("ICP_MIN_CYCLE_INTERVAL", "0")
    write_instance_yaml(icp_env / "dagster_home")
    return url


def scenario(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    upgrade(url)
    load_site(url, SITE)
    defs = pipeline_defs(url)
    instance = DagsterInstance.get()
    instance.add_dynamic_partitions("segments", KEYS)

    # No org names the site yet: the ICPs are built, the questions step buys nothing and says why.
    for key in KEYS:
        metadata = build_segment(defs, key)
        assert metadata["model_calls"].value == 0 and "no org names site" in metadata["skipped"].value
    assert question_calls(url) == 0 and count(url, ModelCall, ModelCall.purpose == "icp") == 2

    # The org's file asks one question that equals (normalised) one the merchants' ICP will propose.
    proposed = offline_questions(url, KEYS[0])
    crafted = "  " + proposed[1].upper().replace("?", " ?!").replace(" ", "   ") + "  "
    assert crafted != proposed[1] and normalise_question(crafted) == normalise_question(proposed[1])
    load_org(url, org_data(questions=["Which analytics tool suits a small online shop?", crafted]))
    for key in KEYS:
        metadata = build_segment(defs, key)
        assert metadata["model_calls"].value == 1
    assert question_calls(url) == 2
    rows = segment_rows(url)
    with session_scope(url) as session:
        segment_ids = dict(session.execute(sa.select(Segment.partition_key, Segment.id)).all())
    by_segment = {key: [q for q in rows if q.segment_id == segment_ids[key]] for key in KEYS}
    # Tagged with their segment and a persona role; the duplicate of the file question was dropped.
    assert [len(by_segment[k]) for k in KEYS] == [PER_SEGMENT - 1, PER_SEGMENT]
    assert all(q.status == "active" and q.active and q.persona_role and q.key.startswith("s-") for q in rows)
    assert all(q.icp_digest and len(q.icp_digest) == 64 for q in rows)
    texts = {normalise_question(q.text) for q in rows}
    assert normalise_question(proposed[1]) not in texts and len(texts) == len(rows)
    # Each segment's questions are in its own words (its name), not another's.
    assert all("independent merchants" in q.text.lower() for q in by_segment[KEYS[0]])
    assert all("commerce agencies" in q.text.lower() for q in by_segment[KEYS[1]])

    # Re-materializing with unchanged ICPs buys nothing: no model call of any kind.
    calls = count(url, ModelCall)
    for key in KEYS:
        assert build_segment(defs, key)["model_calls"].value == 0
    assert count(url, ModelCall) == calls
    assert len(segment_rows(url)) == len(rows)

    # `org run` asks the new questions like the file's: 2 file + 5 segment questions x 1 model x US.
    outcome = run_cycle("shopco", workers=2, progress=False, defs=defs)
    assert outcome.status == "succeeded" and outcome.pushed, outcome.message
    assert outcome.total == 2 + len(rows)
    payload = check_by_segment(url, "shopco")
    assert set(payload["by_segment"]) == {str(segment_ids[k]) for k in KEYS}
    # `org report` shows them per segment: name, active questions, runs and the target's n/N.
    capsys.readouterr()
    assert main(["org", "report", "shopco"]) == 0
    report = capsys.readouterr().out.splitlines()
    for key, name in zip(KEYS, ["Independent merchants", "Commerce agencies"], strict=True):
        target = next(r for r in payload["by_segment"][str(segment_ids[key])] if r["is_target"])
        row = next(line for line in report if line.startswith(f"| {name} |"))
        assert row.startswith(f"| {name} | {len(by_segment[key])} | {target['runs']} | ")
        assert f"({target['mentioned_runs']}/{target['runs']})" in row
    assert "## Citations by source category" in report and "## Top search queries (first 10)" in report

    # The gap view: per segment the target's mention rate and share of voice next to the fit score,
    # in `site report` and in the site summary's metadata.
    capsys.readouterr()
    assert main(["site", "report", "shop", "--json"]) == 0
    visibility = json.loads(capsys.readouterr().out)["visibility"]
    assert {(v["org_id"], v["segment_id"]) for v in visibility} == {
        ("shopco", "merchants"),
        ("shopco", "agencies"),
    }
    for row in visibility:
        target = next(
            r for r in payload["by_segment"][str(segment_ids["shop|" + row["segment_id"]])] if r["is_target"]
        )
        assert (row["runs"], row["mention_rate"]) == (target["runs"], target["mention_rate"])
        assert row["share_of_voice"] == target["share_of_voice"] and isinstance(row["fit_score"], float)
        assert row["gap"] == round(row["fit_score"] - row["mention_rate"], 6)
    assert [r["gap"] for r in visibility] == sorted((r["gap"] for r in visibility), reverse=True)
    assert main(["site", "report", "shop"]) == 0
    text = capsys.readouterr().out
    assert "Visibility per segment" in text and "shopco / Independent merchants [merchants]: fit" in text
    instance.add_dynamic_partitions("sites", ["shop"])
    summary_config = {"ops": {"site_icp_summary": {"config": {"provider": "offline", "model": "synthetic"}}}}
    assert execute_one(defs.resolve_job_def("site_summary_job"), "shop", instance, {}, summary_config)[0]
    event = instance.get_latest_materialization_event(dg.AssetKey("site_icp_summary"))
    records = event.asset_materialization.metadata["visibility"].records
    assert {(r.data["segment_id"], r.data["runs"]) for r in records} == {
        (v["segment_id"], v["runs"]) for v in visibility
    }

    # The agencies segment is renamed and its ICP rebuilt: its questions change (its own words), the
    # old ones are retired, never deleted, and keep their runs.
    old = {q.key for q in by_segment[KEYS[1]]}
    SITE_CHANGED = {
        **SITE,
        "segments": [SITE["segments"][0], {**SITE["segments"][1], "name": "Retail agencies"}],
    }
    load_site(url, SITE_CHANGED)
    rebuild = {
        "ops": {"segment_icp": {"config": {"provider": "offline", "model": "synthetic", "rebuild": True}}}
    }
    metadata = build_segment(defs, KEYS[1], rebuild)
    assert metadata["model_calls"].value == 1 and metadata["retired"].value == PER_SEGMENT
    assert metadata["added"].value == PER_SEGMENT
    after = segment_rows(url)
    retired = [q for q in after if q.key in old]
    assert len(retired) == PER_SEGMENT and all(q.status == "retired" and not q.active for q in retired)
    assert count(url, QuestionRun, QuestionRun.question_id.in_([q.id for q in retired])) == PER_SEGMENT
    new = [q for q in after if q.segment_id == segment_ids[KEYS[1]] and q.active]
    assert len(new) == PER_SEGMENT and all("retail agencies" in q.text.lower() for q in new)

    # The sync sensor joins the new questions to the latest cycle and requests their runs.
    with dg.instance_for_test() as sensor_instance:
        context = dg.build_sensor_context(
            instance=sensor_instance, definitions=defs, resources={"app_db": AppDatabase(url=url)}
        )
        result = partition_sync_sensor(context)
    requested = {r.partition_key for r in result.run_requests if r.job_name == "question_run_job"}
    assert requested == {f"shopco|{q.key}|offline-synthetic|US" for q in new}
    # Every built segment's questions are current: no segment job is requested.
    assert not [r for r in result.run_requests if r.job_name == "segment_icp_job"]
    with session_scope(url) as session:
        cycle = latest_cycle(session, "shopco")
        assert cycle.total == 2 + len(rows) + PER_SEGMENT and cycle.status == "running"
    outcome = run_cycle("shopco", workers=2, progress=False, defs=defs)
    assert outcome.status == "succeeded" and outcome.pushed, outcome.message
    check_by_segment(url, "shopco")

    # A second org in review mode with the same count reuses the same purchases (no model call);
    # its questions wait, unasked, until approved.
    calls = count(url, ModelCall)
    load_org(url, org_data("reviewco", activate="review"))

    def segment_requests() -> list[dg.RunRequest]:
        with dg.instance_for_test() as sensor_instance:
            context = dg.build_sensor_context(
                instance=sensor_instance, definitions=defs, resources={"app_db": AppDatabase(url=url)}
            )
            return [r for r in partition_sync_sensor(context).run_requests if r.job_name == "segment_icp_job"]

    # The segments were built before this org named the site: the sensor requests their jobs once.
    requested = segment_requests()
    assert sorted(r.partition_key for r in requested) == sorted(KEYS)
    assert all(r.run_key.startswith(f"questions-{r.partition_key}-") for r in requested)
    for key in KEYS:
        build_segment(defs, key)
    assert count(url, ModelCall) == calls
    assert segment_requests() == []
    proposed_rows = segment_rows(url, "reviewco")
    assert len(proposed_rows) == 2 * PER_SEGMENT
    assert all(q.status == "proposed" and not q.active for q in proposed_rows)
    capsys.readouterr()
    assert main(["org", "questions", "reviewco", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert {(r["source"], r["status"]) for r in listing} == {("file", "active"), ("segment", "proposed")}
    assert all(r["partition_keys"] == [] for r in listing if r["status"] == "proposed")
    assert {r["segment"] for r in listing if r["source"] == "segment"} == set(KEYS)
    chosen = proposed_rows[0].key
    assert main(["org", "questions", "reviewco", "--approve", chosen]) == 0
    out = capsys.readouterr().out
    assert f"approved 1 question(s): {chosen}" in out and f"reviewco|{chosen}|offline-synthetic|US" in out
    assert main(["org", "questions", "reviewco", "--approve", chosen]) == 1  # no longer proposed
    assert "is active, not proposed" in capsys.readouterr().err
    with session_scope(url) as session:
        approved = session.scalars(
            sa.select(Question).where(Question.key == chosen, Question.org_id == "reviewco")
        ).one()
        assert approved.active and approved.status == "active"
    # Evaluating the sync sensor above opened reviewco's first cycle (a new org's first cycle opens in
    # the tick that requests its runs), before the approval: that cycle holds the file question only.
    first = run_cycle("reviewco", workers=2, progress=False, defs=defs)
    assert first.total == 1
    outcome = run_cycle("reviewco", workers=2, progress=False, defs=defs, new_cycle=True)
    assert outcome.cycle_id != first.cycle_id
    assert outcome.total == 1 + 1  # its file question and the one approved
    assert count(url, CycleItem, CycleItem.partition_key == f"reviewco|{chosen}|offline-synthetic|US") == 1

    # The org file manages its own questions only: reloading it never touches the segments'.
    load_org(url, org_data(questions=["Which analytics tool suits a small online shop?"]))
    assert [(q.key, q.status, q.active) for q in segment_rows(url)] == [
        (q.key, q.status, q.active) for q in after
    ]


def test_questions_from_the_icps_on_sqlite(app: str, capsys: pytest.CaptureFixture[str]) -> None:
    scenario(app, capsys)


def test_questions_from_the_icps_on_postgres(
    app: str,
    postgres_databases: Callable[[], str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = postgres_databases()
    monkeypatch.setenv("ICP_DATABASE_URL", url)
    scenario(url, capsys)


def test_store_questions_dedups_across_segments_retires_and_revives(tmp_path: Path) -> None:
    """The storing rules on their own: another segment's question is a duplicate; a question no longer
    proposed is retired and comes back when proposed again; storing the same proposal twice changes
    nothing."""
    from icp_pipeline.segments.questions import LinkedOrg, store_questions

    url = f"sqlite:///{tmp_path / 'app.db'}"
    upgrade(url)
    load_site(url, SITE)
    load_org(url, org_data())
    with session_scope(url) as session:
        ids = [session.scalars(sa.select(Segment.id).where(Segment.partition_key == k)).one() for k in KEYS]

    def store(segment: int, texts: list[str]) -> Any:
        proposal = SegmentQuestions(questions=[{"text": t, "persona_role": "CTO"} for t in texts])
        with session_scope(url) as session:
            return store_questions(session, LinkedOrg("shopco", 3, "auto"), segment, proposal, "d" * 64, 3)

    first = store(ids[0], ["Which BI tool for shops?", "How to track SKU velocity?"])
    assert (first.added, first.duplicates) == (2, 0)
    other = store(ids[1], ["which bi tool, for shops", "Who sells analytics to agencies?"])
    assert (other.added, other.duplicates) == (1, 1)
    assert store(ids[1], ["which bi tool, for shops", "Who sells analytics to agencies?"]).added == 0
    changed = store(ids[0], ["Which BI tool for shops?", "What dashboards do shop owners use?"])
    assert (changed.kept, changed.added, changed.retired) == (1, 1, 1)
    back = store(ids[0], ["How to track SKU velocity?"])
    assert (back.revived, back.retired) == (1, 2)
    statuses = {(q.text, q.status, q.active) for q in segment_rows(url) if q.segment_id == ids[0]}
    assert statuses == {
        ("Which BI tool for shops?", "retired", False),
        ("How to track SKU velocity?", "active", True),
        ("What dashboards do shop owners use?", "retired", False),
    }


OTHER_SITE = {
    "id": "other",
    "name": "Other",
    "url": "https://other.example",
    "description": "Another site.",
    "segments": [{"id": "banks", "name": "Banks", "description": "Retail banks."}],
}


def test_org_load_retires_the_questions_of_a_site_the_org_no_longer_names(
    app: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`icp.site` changed or removed: the questions generated from the old site's segments (active or
    proposed) are retired on `org load`, never deleted, their runs kept; the load says so, and counts
    and prices only the generated questions that stay active."""
    from icp_pipeline.segments.questions import (
        LinkedOrg,
        profile_digest,
        segments_needing_questions,
        store_questions,
    )
    from icp_pipeline.visibility.cycles import open_cycle

    upgrade(app)
    load_site(app, SITE)
    load_site(app, OTHER_SITE)
    profile = {"segment_name": "any"}
    digest = profile_digest(profile, PER_SEGMENT, "offline", "synthetic")  # the built ICPs' questions
    with session_scope(app) as session:
        ids = dict(session.execute(sa.select(Segment.partition_key, Segment.id)).tuples().all())
        for segment_id in ids.values():
            session.add(
                SegmentResult(
                    segment_id=segment_id,
                    success=True,
                    profile=profile,
                    provider="offline",
                    model="synthetic",
                )
            )

    def needing() -> dict[str, str]:
        with session_scope(app) as session:
            return dict(segments_needing_questions(session))

    def load(data: dict[str, Any]) -> str:
        path = tmp_path / "org.yaml"
        path.write_text(yaml.safe_dump(data))
        capsys.readouterr()
        assert main(["org", "load", str(path)]) == 0
        return capsys.readouterr().out

    def store(segment: int, texts: list[str], activate: str = "auto") -> None:
        proposal = SegmentQuestions(questions=[{"text": t, "persona_role": "CTO"} for t in texts])
        with session_scope(app) as session:
            store_questions(session, LinkedOrg("shopco", 3, activate), segment, proposal, digest, 3)

    def statuses() -> dict[str, tuple[str, bool]]:
        return {q.text: (q.status, q.active) for q in segment_rows(app)}

    load(org_data())
    first_markers = needing()
    assert set(first_markers) == {"shop|merchants", "shop|agencies"}
    store(ids["shop|merchants"], ["Which BI tool for shops?", "How to track SKU velocity?"])
    store(ids["shop|agencies"], ["Who sells analytics to agencies?"], activate="review")  # proposed
    # One generated question was asked: its run must survive the retirement.
    with session_scope(app) as session:
        cycle, _ = open_cycle(session, "shopco")
        item = next(i for i in cycle.items if i.question.text == "Which BI tool for shops?")
        session.add(
            QuestionRun(
                cycle_item_id=item.id,
                org_id="shopco",
                cycle_id=cycle.id,
                partition_key=item.partition_key,
                question_id=item.question_id,
                model_id=item.model_id,
                location_id=item.location_id,
                provider="offline",
                requested_model="synthetic",
            )
        )
    # Reloading with the same site keeps them, and counts and prices the 2 active ones with the file's.
    out = load(org_data())
    assert "1 questions + 2 from segment ICPs (3 question runs per cycle)" in out
    assert "a full cycle buys 6 model calls (3 answers + 3 claims)" in out and "retired" not in out

    # The org now names another site: all 3 of the shop's questions retire (the proposed one too).
    out = load(org_data(site="other"))
    assert (
        "retired 3 question(s) generated from segments of site 'shop' (its icp: names site 'other' now): "
        "no longer asked, their runs kept"
    ) in out
    assert "1 questions (1 question runs per cycle)" in out and "a full cycle buys 2 model calls" in out
    assert set(statuses().values()) == {("retired", False)} and len(statuses()) == 3
    assert count(app, QuestionRun) == 1  # the run stays, with its (retired) question
    assert "retired" not in load(org_data(site="other"))  # nothing left to retire: idempotent

    # The other site's questions are kept while the org names it; removing `icp:` retires them.
    store(ids["other|banks"], ["Which analytics suit a retail bank?"])
    out = load(org_data(site="other"))
    assert "+ 1 from segment ICPs" in out and "retired" not in out
    data = org_data(site="other")
    del data["icp"]
    out = load(data)
    assert (
        "retired 1 question(s) generated from segments of site 'other' (the org file has no icp: block): "
        "no longer asked, their runs kept"
    ) in out
    assert statuses()["Which analytics suit a retail bank?"] == ("retired", False)
    assert len(segment_rows(app)) == 4  # never deleted
    assert needing() == {}  # no org names a site

    # Naming the shop again: its segments need their questions again, in a new state (the sensor's run
    # key differs from the first link's), and the questions step revives the retired ones.
    load(org_data())
    markers = needing()
    assert set(markers) == {"shop|merchants", "shop|agencies"}
    assert all(markers[key] != first_markers[key] for key in markers)
    store(ids["shop|merchants"], ["Which BI tool for shops?", "How to track SKU velocity?"])
    assert statuses()["Which BI tool for shops?"] == ("active", True)
    assert set(needing()) == {"shop|agencies"}
