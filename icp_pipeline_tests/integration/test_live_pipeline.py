"""A full cycle on the live adapters (real SDKs, local provider servers): retries show in Dagster,
nothing is bought twice, and the keys reach no log, metadata, row or file."""

from pathlib import Path

import pytest
import sqlalchemy as sa
from dagster import DagsterEventType, DagsterInstance, RunsFilter

from icp_pipeline.cli.runner import run_cycle
from icp_pipeline.db.models import Base, ModelCall, QuestionRun
from icp_pipeline.db.session import get_engine, session_scope
from icp_pipeline.definitions import build_defs
from icp_pipeline.defs.resources import resources_from_env
from icp_pipeline_tests.support.fake_providers import FakeAnthropic, FakeGemini, FakeOpenAI, status
from icp_pipeline_tests.support.pipeline import count

KEYS = {
    "OPENAI_API_KEY": "sk-openai-secret-8d7f6e5a4b",
    "ANTHROPIC_API_KEY": "sk-ant-secret-1a2b3c4d5e",
    "GEMINI_API_KEY": "gm-secret-9f8e7d6c5b",
}


def test_live_cycle_retries_429_and_never_leaks_keys(
    sqlite_app: str, icp_env: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture
) -> None:
    with (
        FakeOpenAI(api_key=KEYS["OPENAI_API_KEY"]) as openai_server,
        FakeAnthropic(api_key=KEYS["ANTHROPIC_API_KEY"]) as anthropic_server,
        FakeGemini(api_key=KEYS["GEMINI_API_KEY"]) as gemini_server,
    ):
        for name, value in KEYS.items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("ICP_PROVIDER_MODE", "live")
        monkeypatch.setenv("OPENAI_BASE_URL", openai_server.url + "/v1")
        monkeypatch.setenv("ANTHROPIC_BASE_URL", anthropic_server.url)
        monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", gemini_server.url)
        openai_server.script(status(429, retry_after=1))

        outcome = run_cycle("acme", workers=3, progress=False, defs=build_defs(resources_from_env()))

        assert (outcome.status, outcome.completed, outcome.failed) == ("succeeded", 45, 0)
        assert outcome.payload["synthetic"] is False
        # 15 answers + 15 claims per provider, plus the one 429 that OpenAI answered first.
        assert openai_server.request_count == 31
        assert anthropic_server.request_count == gemini_server.request_count == 30
        assert max(s.max_concurrent for s in (openai_server, anthropic_server, gemini_server)) <= 3

    # The 429 was retried by Dagster: one retry event, and the answer was bought once.
    instance = DagsterInstance.get()
    runs = instance.get_runs(RunsFilter(tags={"icp/cycle_id": str(outcome.cycle_id)}))
    logs = [event for run in runs for event in instance.all_logs(run.run_id)]
    retries = [
        e
        for e in logs
        if e.dagster_event and e.dagster_event.event_type == DagsterEventType.STEP_UP_FOR_RETRY
    ]
    assert len(retries) == 1
    assert count(sqlite_app, ModelCall, ModelCall.purpose == "answer", ModelCall.ok) == 45
    failed_calls = count(sqlite_app, ModelCall, ModelCall.ok.is_(False))
    assert failed_calls == 1

    with session_scope(sqlite_app) as session:
        run = session.scalars(sa.select(QuestionRun).where(QuestionRun.provider == "openai").limit(1)).one()
        assert run.response_model == "gpt-4o-mini-2024-07-18"
        assert (run.web_search, run.location_mode, run.synthetic) == (False, "prompt", False)
        assert run.cost_usd is not None and run.cost_usd > 0

    # No key anywhere: app database, Dagster event logs (metadata included), outbox, terminal output.
    haystacks = [str(event) for event in logs]
    with get_engine(sqlite_app).connect() as connection:
        for table in Base.metadata.sorted_tables:
            haystacks += [str(row) for row in connection.execute(table.select())]
    haystacks += [path.read_text() for path in (icp_env / "outbox").rglob("*.json")]
    captured = capfd.readouterr()
    haystacks += [captured.out, captured.err]
    for secret in KEYS.values():
        assert not any(secret in hay for hay in haystacks), f"a key leaked: {secret[:6]}..."
