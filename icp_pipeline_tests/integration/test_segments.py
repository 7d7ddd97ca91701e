"""ICP segments on a real Dagster instance: discovery, one build per segment partition, partial success."""

import json
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa
from dagster import DagsterInstance

from icp_pipeline.cli.runner import execute_one
from icp_pipeline.cli.site_build import build_site
from icp_pipeline.db.models import ModelCall, Segment, SegmentResult
from icp_pipeline.db.session import session_scope
from icp_pipeline.defs.resources import ModelProviderResource
from icp_pipeline.providers.base import ModelRequest, ModelResponse, ProviderError
from icp_pipeline.providers.resilience import PACER
from icp_pipeline.segments.site_file import parse_site_file, upsert_site
from icp_pipeline.segments.steps import BuildOptions, summarize_site
from icp_pipeline_tests.support.fake_providers import FakeOpenAI, status, text
from icp_pipeline_tests.support.pipeline import count, pipeline_defs

EXAMPLE_SITE = Path(__file__).parents[2] / "icp_pipeline" / "examples" / "acme_site.yaml"
KEY = "sk-segments-test-77aa"
OPENAI = BuildOptions(provider="openai", model="gpt-4o-mini")
OFFLINE = BuildOptions(provider="offline", model="synthetic")
GENERATED = ["Startups", "Agencies", "Retailers"]
# Build order: the imported segment first, then the generated ones in the order the model gave them.
KEYS = ["data-platform-teams", "startups", "agencies", "retailers"]


def segments_json() -> str:
    return json.dumps(
        {
            "segments": [
                {"name": n, "description": f"{n} buying analytics", "why_it_fits": "fits"} for n in GENERATED
            ]
        }
    )


def icp_json(name: str = "Startups", fit: float = 0.7, pains: tuple[str, ...] = ("p",)) -> str:
    profile = {
        "segment_name": name,
        "summary": "A profile",
        "firmographics": {
            "industries": ["Software"],
            "company_size": "1-50",
            "revenue_band": "<$5M",
            "regions": ["Europe"],
            "growth_stage": "seed",
        },
        "buying_committee": {
            "roles": [{"role": "CTO", "seniority": "exec", "decision_power": "high"}],
            "champion": "CTO",
            "economic_buyer": "CEO",
            "blocker": "none",
        },
        "pains": list(pains),
        "jobs_to_be_done": ["j"],
        "desired_outcomes": ["o"],
        "buying_triggers": ["t"],
        "objections": ["x"],
        "current_alternatives": ["a"],
        "research_channels": ["c"],
        "messaging_hooks": ["m"],
        "disqualifiers": ["d"],
        "fit_criteria": [{"criterion": "digital product", "weight": 0.7}],
        "vocabulary": ["funnel"],
        "confidence": 0.6,
    }
    analysis = {
        "fit_score": fit,
        "how_well_served": "partly",
        "strengths": ["s"],
        "gaps": ["g"],
        "recommended_changes": ["r"],
    }
    return json.dumps({"profile": profile, "analysis": analysis})


def summary_json(ids: list[str]) -> str:
    return json.dumps(
        {
            "summary": "compared",
            "ranking": [
                {"segment_id": i, "rank": n, "fit_score": 0.5, "reason": "r"}
                for n, i in enumerate(ids, start=1)
            ],
            "overlaps": [],
            "recommendations": ["do it"],
        }
    )


@pytest.fixture
def site(sqlite_app: str) -> str:
    with session_scope(sqlite_app) as session:
        upsert_site(session, parse_site_file(EXAMPLE_SITE))
    return sqlite_app


@pytest.fixture
def openai_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeOpenAI]:
    PACER.reset()
    with FakeOpenAI(api_key=KEY) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.url + "/v1")
        server.structured_text = icp_json()
        yield server
    PACER.reset()


def live_defs(db_url: str):
    return pipeline_defs(db_url, models=ModelProviderResource(mode="live", openai_api_key=KEY))


def test_segments_are_generated_registered_and_not_rebought(site: str) -> None:
    defs = pipeline_defs(site)
    outcome = build_site("acme", OPENAI, workers=3, progress=False, defs=defs)
    assert outcome.summary_ok and (outcome.succeeded, outcome.failed) == (5, 0)
    with session_scope(site) as session:
        keys = set(session.scalars(sa.select(Segment.partition_key).where(Segment.active)))
        sources = sorted(session.scalars(sa.select(Segment.source).where(Segment.active)))
    assert sources == ["generated"] * 4 + ["imported"]
    assert set(DagsterInstance.get().get_dynamic_partitions("segments")) == keys
    assert all(key.startswith("acme|") for key in keys)
    ranking = outcome.summary["ranking"]
    assert [r["rank"] for r in ranking] == list(range(1, 6))
    # The ranking agrees with the fit scores in the table printed above it (the demo's contradiction).
    fits = {row["segment_id"]: row["fit_score"] for row in outcome.table}
    assert [r["fit_score"] for r in ranking] == sorted(fits.values(), reverse=True)
    assert all(fits[r["segment_id"]] == r["fit_score"] for r in ranking)
    assert outcome.summary["warnings"] == [] and outcome.summary["narrative"] is True

    calls = count(site, ModelCall)
    again = build_site("acme", OPENAI, workers=3, progress=False, defs=defs)
    assert again.summary_ok
    assert again.summary == outcome.summary
    # Nothing asked again: segments, ICPs and the summary (same inputs, same purchase subject) reused.
    assert count(site, ModelCall) == calls
    assert count(site, ModelCall, ModelCall.purpose == "site_summary") == 1
    assert count(site, SegmentResult) == 5
    event = DagsterInstance.get().get_latest_materialization_event(dg.AssetKey("site_icp_summary"))
    metadata = event.asset_materialization.metadata
    assert metadata["reused"].value is True
    # Segment names and model text reach the UI as data and text, never markdown.
    assert not any(isinstance(value, dg.MarkdownMetadataValue) for value in metadata.values())
    assert isinstance(metadata["summary"], dg.TextMetadataValue)
    segments = metadata["segments"]
    assert isinstance(segments, dg.TableMetadataValue)
    assert {record.data["segment_id"] for record in segments.records} == {
        row["segment_id"] for row in outcome.table
    }
    assert {record.data["name"] for record in segments.records} == {row["name"] for row in outcome.table}

    # A rebuild asks again, even with unchanged inputs.
    build_site("acme", BuildOptions("openai", "gpt-4o-mini", rebuild=True), progress=False, defs=defs)
    assert count(site, ModelCall, ModelCall.purpose == "site_summary") == 2


def test_a_changed_segment_result_buys_the_summary_again(site: str) -> None:
    defs = pipeline_defs(site)
    instance_job = defs.resolve_job_def("site_summary_job")
    assert build_site("acme", OPENAI, progress=False, defs=defs).summary_ok
    with session_scope(site) as session:
        result = session.scalars(sa.select(SegmentResult)).first()
        result.analysis = {**result.analysis, "fit_score": 0.01}
    assert execute_one(instance_job, "acme", DagsterInstance.get(), {})[0]
    assert count(site, ModelCall, ModelCall.purpose == "site_summary") == 2
    assert execute_one(instance_job, "acme", DagsterInstance.get(), {})[0]
    assert count(site, ModelCall, ModelCall.purpose == "site_summary") == 2


def test_a_comparison_naming_segments_by_name_still_builds_the_site(site, openai_server) -> None:
    fits = {"data-platform-teams": 0.4, "startups": 0.9, "agencies": 0.6, "retailers": 0.6}
    names = {"data-platform-teams": "Data platform teams", "startups": "Startups"}
    names.update(agencies="Agencies", retailers="Retailers")
    by_name = json.dumps(
        {
            "summary": "compared by name",
            "ranking": [
                # The model ranks by name, in its own order, and invents a segment.
                {"segment_id": "data platform TEAMS", "rank": 1, "fit_score": 0.9, "reason": "warehouse"},
                {"segment_id": "Startups", "rank": 2, "fit_score": 0.5, "reason": "fast"},
                {"segment_id": "Agencies", "rank": 3, "fit_score": 0.5, "reason": "many clients"},
                {"segment_id": "Retailers", "rank": 4, "fit_score": 0.5, "reason": "funnels"},
                {"segment_id": "Enterprise data teams", "rank": 5, "fit_score": 0.5, "reason": "?"},
            ],
            "overlaps": [{"segment_ids": ["Startups", "Agencies"], "description": "both small teams"}],
            "recommendations": ["do it"],
        }
    )
    openai_server.script(
        text(segments_json()),
        *[text(icp_json(names[k], fit=fits[k], pains=("Slow answers", k))) for k in KEYS],
        text(by_name),
    )
    outcome = build_site("acme", OPENAI, workers=1, progress=False, defs=live_defs(site))
    assert outcome.summary_ok, outcome.message  # before: "ranks segments that were not built", exit 1
    assert (outcome.succeeded, outcome.failed) == (4, 0)
    ranking = outcome.summary["ranking"]
    # Fit first; agencies and retailers tie on fit and confidence, so the id decides.
    assert [r["segment_id"] for r in ranking] == ["startups", "agencies", "retailers", "data-platform-teams"]
    assert [r["reason"] for r in ranking] == ["fast", "many clients", "funnels", "warehouse"]
    assert outcome.summary["summary"] == "compared by name"
    assert any("'Enterprise data teams'" in w for w in outcome.summary["warnings"])
    assert any("'Enterprise data teams'" in n for n in outcome.notices)  # printed, not only stored
    overlap = next(o for o in outcome.summary["overlaps"] if o["segment_ids"] == ["agencies", "startups"])
    assert overlap["shared_pains"] == ["slow answers"] and overlap["description"] == "both small teams"
    assert count(site, ModelCall, ModelCall.purpose == "site_summary") == 1


def test_an_unusable_narrative_leaves_the_computed_comparison(site, openai_server) -> None:
    openai_server.script(text(segments_json()), *[text(icp_json())] * 4, text("Sure!"), text("{oops"))
    outcome = build_site("acme", OPENAI, workers=1, progress=False, defs=live_defs(site))
    assert outcome.summary_ok, outcome.message
    assert outcome.summary["narrative"] is False
    assert [r["segment_id"] for r in outcome.summary["ranking"]] == sorted(KEYS)  # a four-way tie: by id
    assert "invalid structured output" in outcome.summary["warnings"][0]
    assert count(site, ModelCall, ModelCall.purpose == "site_summary") == 2  # both paid replies recorded


def test_failed_discovery_goes_on_with_the_imported_segments(site, openai_server, capsys) -> None:
    openai_server.script(status(400), text(icp_json("Data platform teams")), text(summary_json(KEYS[:1])))
    outcome = build_site("acme", OPENAI, workers=1, progress=False, defs=live_defs(site))
    assert outcome.summary_ok, outcome.message  # before: "segment discovery failed", exit 1
    assert (outcome.succeeded, outcome.failed) == (1, 0)
    assert [r["segment_id"] for r in outcome.summary["ranking"]] == ["data-platform-teams"]
    assert (
        "segment discovery failed" in outcome.notices[0]
        and "going on with the 1 segment" in outcome.notices[0]
    )
    assert "segment discovery failed" in capsys.readouterr().err
    assert "acme|data-platform-teams" in DagsterInstance.get().get_dynamic_partitions("segments")


def test_failed_discovery_without_stored_segments_fails_the_build(site, openai_server) -> None:
    with session_scope(site) as session:
        for segment in session.scalars(sa.select(Segment)):
            segment.active = False
    openai_server.script(status(400))
    outcome = build_site("acme", OPENAI, workers=1, progress=False, defs=live_defs(site))
    assert not outcome.summary_ok
    assert outcome.message.startswith("segment discovery failed")


def test_one_failing_segment_is_listed_and_a_retry_of_that_partition_fixes_the_summary(
    site, openai_server
) -> None:
    openai_server.script(
        text(segments_json()),
        status(400),
        text(icp_json()),
        text(icp_json()),
        text(icp_json()),
        text(summary_json(KEYS[1:])),
    )
    defs = live_defs(site)
    outcome = build_site("acme", OPENAI, workers=1, progress=False, defs=defs)
    assert outcome.summary_ok
    assert (outcome.succeeded, outcome.failed) == (3, 1)
    failed = [row for row in outcome.table if not row["success"]]
    assert [row["segment_id"] for row in failed] == ["data-platform-teams"]
    assert "HTTP 400" in failed[0]["error"] and "openai/gpt-4o-mini" in failed[0]["error"]

    # Retry just that partition, then the summary: now every segment is in.
    instance = DagsterInstance.get()
    openai_server.script(text(icp_json()), text(summary_json(KEYS)))
    assert execute_one(defs.resolve_job_def("segment_icp_job"), "acme|data-platform-teams", instance, {})[0]
    assert execute_one(defs.resolve_job_def("site_summary_job"), "acme", instance, {})[0]
    with session_scope(site) as session:
        assert all(r.success for r in session.scalars(sa.select(SegmentResult)))


def test_every_segment_failing_fails_the_summary_with_the_errors(site, openai_server) -> None:
    openai_server.script(text(segments_json()), *[status(403)] * 4)
    outcome = build_site("acme", OPENAI, workers=2, progress=False, defs=live_defs(site))
    assert not outcome.summary_ok
    assert (outcome.succeeded, outcome.failed) == (0, 4)
    assert "no segment succeeded" in outcome.message
    for key in KEYS:
        assert key in outcome.message
    assert outcome.message.count("HTTP 403") == 4


def test_invalid_model_output_fails_that_segment_and_keeps_the_raw_text(site, openai_server) -> None:
    openai_server.script(text(segments_json()), text("Here is your ICP!"), text("{not json"))
    outcome = build_site(
        "acme", OPENAI, segment_ids=["data-platform-teams"], workers=1, progress=False, defs=live_defs(site)
    )
    assert (outcome.succeeded, outcome.failed) == (0, 1)
    with session_scope(site) as session:
        result = session.scalars(sa.select(SegmentResult)).one()
        assert not result.success
        assert result.raw_output_text == "{not json"
        assert "invalid structured output" in result.error


def test_pool_cap_holds_across_segment_runs(site, openai_server) -> None:
    many = ["Startups", "Agencies", "Retailers", "Banks", "Schools", "Hospitals", "Studios"]
    keys = ["data-platform-teams", *(n.lower() for n in many)]
    openai_server.script(
        text(json.dumps({"segments": [{"name": n, "description": "d", "why_it_fits": "w"} for n in many]})),
        *[text(icp_json())] * 8,
        text(summary_json(keys)),
    )
    openai_server.latency = 1.5  # long enough that three builds are surely in their model call at once
    outcome = build_site("acme", OPENAI, workers=6, progress=False, defs=live_defs(site))
    assert (outcome.succeeded, outcome.failed) == (8, 0)
    assert outcome.summary_ok, outcome.message
    assert openai_server.max_concurrent == 3


def test_pacing_spaces_segment_builds(site: str) -> None:
    import time

    started = time.monotonic()
    outcome = build_site(
        "acme",
        BuildOptions("offline", "synthetic", pacing_seconds=0.4),
        workers=3,
        progress=False,
        defs=pipeline_defs(site),
    )
    assert outcome.succeeded == 5
    # With pacing the five builds run one after another, each after its wait.
    assert time.monotonic() - started >= 5 * 0.4
    from datetime import datetime

    completed = sorted(datetime.fromisoformat(row["completed_at"]) for row in outcome.table)
    gaps = [(b - a).total_seconds() for a, b in zip(completed, completed[1:], strict=False)]
    assert min(gaps) >= 0.4, gaps  # consecutive builds are at least the pacing apart


class UnavailableProvider:
    """A provider whose every call fails the way a provider outage does (retryable, nothing paid)."""

    name = "unavailable"

    def complete(self, request: ModelRequest) -> ModelResponse:
        raise ProviderError(request.provider, request.model, "HTTP 503: overloaded", retryable=True)


def test_a_retryable_narrative_error_is_retried_and_the_last_attempt_keeps_the_ranking(site: str) -> None:
    assert build_site("acme", OFFLINE, progress=False, defs=pipeline_defs(site)).summary_ok
    again = BuildOptions("offline", "synthetic", rebuild=True)
    with pytest.raises(ProviderError, match="HTTP 503"):
        summarize_site(site, "acme", lambda *_: UnavailableProvider(), again, retry_narrative=True)
    last = summarize_site(site, "acme", lambda *_: UnavailableProvider(), again, retry_narrative=False)
    comparison = last["comparison"]
    assert comparison["narrative"] is False and "HTTP 503" in comparison["warnings"][0]
    assert [r["fit_score"] for r in comparison["ranking"]] == sorted(
        (row["fit_score"] for row in last["segments"]), reverse=True
    )
    # The stored comparison has no narrative, so the next build (no rebuild) asks for it again; the
    # ledger already holds the narrative bought for these very inputs by the first build: reused, not bought.
    calls = count(site, ModelCall, ModelCall.purpose == "site_summary")
    assert summarize_site(site, "acme", pipeline_defs(site).resources["models"].provider_for, OFFLINE)[
        "comparison"
    ]["narrative"]
    assert count(site, ModelCall, ModelCall.purpose == "site_summary") == calls
