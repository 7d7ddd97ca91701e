"""The one purchase path (issue 9, items 2, 6 and 14), on SQLite and PostgreSQL.

Providers here are plain objects with `name` and `complete(request)`: the provider boundary, behind
which the real adapters sit. Storage faults are real driver errors raised inside SQLAlchemy's
execution of the ledger's INSERT (on PostgreSQL the connection's backend is terminated).
"""

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from icp_pipeline import ledger
from icp_pipeline.db.models import CycleItem, Mention, ModelCall, OrgModel, PurchaseClaim, SegmentResult
from icp_pipeline.db.session import get_engine, session_scope, upgrade
from icp_pipeline.defs.resources import ModelProviderResource
from icp_pipeline.providers.base import ModelRequest, ModelResponse, ProviderError, SourceCitation
from icp_pipeline.providers.budgets import answer_token_budget
from icp_pipeline.providers.resilience import PACER
from icp_pipeline.segments import steps as segment_steps
from icp_pipeline.segments.site_file import parse_site_file, upsert_site
from icp_pipeline.segments.steps import BuildOptions
from icp_pipeline.visibility import steps
from icp_pipeline.visibility.cycles import open_cycle
from icp_pipeline_tests.conftest import load_example
from icp_pipeline_tests.support.fake_providers import FakeOpenAI, text
from icp_pipeline_tests.support.pipeline import count

EXAMPLE_SITE = Path(__file__).parents[2] / "icp_pipeline" / "examples" / "acme_site.yaml"
CLAIMS_JSON = (
    '{"claims": [{"text": "Acme is great.", "company": "Acme", "sentiment": "positive", '
    '"supporting_urls": []}]}'
)


@pytest.fixture(params=["sqlite", "postgres"])
def app_url(request: pytest.FixtureRequest) -> str:
    if request.param == "sqlite":
        return request.getfixturevalue("sqlite_app")
    request.getfixturevalue("icp_env")  # its own ICP_HOME, so the ledger spool is the test's own
    url = request.getfixturevalue("postgres_databases")()
    upgrade(url)
    load_example(url)
    return url


def _partition(url: str) -> tuple[str, int]:
    """The first question-run partition of a new cycle of the example org, and its item id."""
    with session_scope(url) as session:
        cycle, _ = open_cycle(session, "acme")
        return cycle.items[0].partition_key, cycle.items[0].id


class ScriptedProvider:
    """Answers each purpose with the next scripted response (or the offline provider's), counting calls."""

    name = "scripted"

    def __init__(
        self, latency: float = 0.0, **scripts: list[Callable[[ModelRequest], ModelResponse]]
    ) -> None:
        self.offline = ModelProviderResource(offline_latency_seconds=latency).provider_for
        self.scripts = {purpose: list(replies) for purpose, replies in scripts.items()}
        self.requests: list[ModelRequest] = []
        self.lock = threading.Lock()

    def calls(self, purpose: str) -> int:
        return Counter(r.purpose for r in self.requests)[purpose]

    def complete(self, request: ModelRequest) -> ModelResponse:
        with self.lock:
            self.requests.append(request)
            script = self.scripts.get(request.purpose)
            reply = script.pop(0) if script else None
        if reply is None:
            return self.offline(request.provider, request.model).complete(request)
        return reply(request)

    def provider_for(self, _provider: str, _model: str) -> "ScriptedProvider":
        return self


def reply(text: str, finish: str = "complete", **extra: Any) -> Callable[[ModelRequest], ModelResponse]:
    def make(request: ModelRequest) -> ModelResponse:
        return ModelResponse(
            text=text,
            raw={"output_text": text, "finish": finish},
            provider=request.provider,
            requested_model=request.model,
            response_model=f"{request.model}-2026",
            input_tokens=11,
            output_tokens=7,
            cost_usd=0.001,
            finish=finish,
            **extra,
        )

    return make


def like_dagster(step: Callable[[], Any], attempts: int = 4) -> Any:
    """Run a step as its RetryPolicy would: again after each error, up to `attempts` times."""
    for attempt in range(attempts):
        try:
            return step()
        except Exception:
            if attempt == attempts - 1:
                raise
            time.sleep(0.05)


@contextmanager
def failing_ledger_inserts(url: str, times: int | None) -> Iterator[dict[str, int]]:
    """The next `times` INSERTs into model_calls (every one while `times` is None) fail in the
    database: on PostgreSQL the connection's server process is terminated under it; on SQLite the
    connection is made read-only (`PRAGMA query_only`) just before, so SQLite itself refuses the write."""
    engine = get_engine(url)
    state = {"left": times if times is not None else 10**9, "failed": 0}
    admin = sa.create_engine(url, poolclass=sa.pool.NullPool) if engine.dialect.name == "postgresql" else None
    read_only: set[int] = set()

    def before(connection, cursor, statement, _params, _context, _many) -> None:  # noqa: ANN001
        dbapi = connection.connection.dbapi_connection
        if admin is None and id(dbapi) in read_only:
            cursor.execute("PRAGMA query_only=OFF")
            read_only.discard(id(dbapi))
        if not statement.lstrip().upper().startswith("INSERT INTO MODEL_CALLS") or state["left"] <= 0:
            return
        state["left"] -= 1
        state["failed"] += 1
        if admin is not None:
            with admin.connect() as other:
                other.execute(
                    sa.text("SELECT pg_terminate_backend(:pid, 5000)"), {"pid": dbapi.get_backend_pid()}
                )
        else:
            cursor.execute("PRAGMA query_only=ON")
            read_only.add(id(dbapi))

    sa.event.listen(engine, "before_cursor_execute", before)
    try:
        yield state
    finally:
        sa.event.remove(engine, "before_cursor_execute", before)
        if admin is not None:
            admin.dispose()
        else:
            engine.dispose()  # no pooled connection stays read-only


def _answers(url: str, item_id: int) -> list[ModelCall]:
    with session_scope(url) as session:
        return list(
            session.scalars(
                sa.select(ModelCall).where(ModelCall.cycle_item_id == item_id, ModelCall.purpose == "answer")
            )
        )


# --- item 14: bought once, under concurrency and storage faults ----------------------------------------


def test_two_runs_extracting_claims_at_once_pay_once(app_url: str) -> None:
    key, item_id = _partition(app_url)
    provider = ScriptedProvider(latency=1.0)
    steps.buy_answers(app_url, key, provider.provider_for, "run-1")
    steps.store_runs(app_url, key)
    steps.extract_run_citations(app_url, key)
    outcomes: dict[str, Any] = {}

    def run(name: str) -> None:
        try:
            outcomes[name] = steps.extract_claims(app_url, key, provider.provider_for)
        except ProviderError as error:
            outcomes[name] = error

    threads = [threading.Thread(target=run, args=(name,)) for name in ("cli", "daemon")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert provider.calls("claims") == 1, outcomes
    waited = [o for o in outcomes.values() if isinstance(o, ProviderError)]
    assert len(waited) == 1 and waited[0].retryable  # the other run waits, then reuses
    again = steps.extract_claims(app_url, key, provider.provider_for)
    assert (again["model_calls"], again["reused_calls"]) == (0, 1)
    assert provider.calls("claims") == 1
    assert count(app_url, ModelCall, ModelCall.purpose == "claims") == 1
    assert count(app_url, PurchaseClaim) == 0


def test_two_builds_of_one_segment_at_once_pay_once_and_keep_the_result(app_url: str) -> None:
    with session_scope(app_url) as session:
        upsert_site(session, parse_site_file(EXAMPLE_SITE))
    provider = ScriptedProvider(latency=1.0)
    options = BuildOptions(provider="offline", model="offline-icp")
    key = segment_steps.discover_segments(app_url, "acme", provider.provider_for, options)["partition_keys"][
        0
    ]
    outcomes: dict[str, Any] = {}

    def build(name: str) -> None:
        try:
            outcomes[name] = segment_steps.build_segment(app_url, key, provider.provider_for, options)
        except ProviderError as error:
            outcomes[name] = error

    threads = [threading.Thread(target=build, args=(name,)) for name in ("cli", "daemon")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert provider.calls("icp") == 1, outcomes
    assert sum(isinstance(o, ProviderError) and o.retryable for o in outcomes.values()) == 1
    assert segment_steps.build_segment(app_url, key, provider.provider_for, options)["reused"]
    assert provider.calls("icp") == 1
    with session_scope(app_url) as session:
        assert session.scalars(sa.select(SegmentResult.success)).all() == [True]
    assert count(app_url, PurchaseClaim) == 0


def test_a_ledger_write_that_fails_after_payment_is_retried_not_the_purchase(app_url: str) -> None:
    key, item_id = _partition(app_url)
    provider = ScriptedProvider()
    with failing_ledger_inserts(app_url, times=3) as fault:
        summary = like_dagster(lambda: steps.buy_answers(app_url, key, provider.provider_for, "run-1"))
    assert fault["failed"] == 3
    assert provider.calls("answer") == 1
    assert summary["bought"] == 1
    answers = _answers(app_url, item_id)
    assert len(answers) == 1 and answers[0].ok and answers[0].paid
    assert count(app_url, PurchaseClaim) == 0


def test_a_long_outage_spools_the_paid_reply_and_the_next_attempt_writes_it(
    app_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ledger, "LEDGER_WRITE_RETRY_SECONDS", 1.0)  # a shorter outage than 35 s suffices
    key, item_id = _partition(app_url)
    provider = ScriptedProvider()
    with failing_ledger_inserts(app_url, times=None), pytest.raises(ledger.LedgerWriteFailed) as failed:
        steps.buy_answers(app_url, key, provider.provider_for, "run-1")
    assert "next attempt" in str(failed.value)
    spooled = ledger.spooled_calls(app_url)
    assert len(spooled) == 1 and spooled[0].read_bytes().isascii()
    assert not list(spooled[0].parent.glob("*.tmp"))
    assert _answers(app_url, item_id) == []
    with session_scope(app_url) as session:  # the claim is kept: nobody else buys it meanwhile
        assert session.get(PurchaseClaim, f"answer:{item_id}").claimant == "run-1"
    with pytest.raises(ledger.PurchaseInProgress):
        ledger.claim_purchase(app_url, f"answer:{item_id}", "run-2", provider.requests[0])

    # The database is back: another run's attempt writes the spooled reply and reuses it.
    summary = like_dagster(lambda: steps.buy_answers(app_url, key, provider.provider_for, "run-2"))
    assert (summary["bought"], summary["reused"]) == (0, 1)
    assert provider.calls("answer") == 1
    answers = _answers(app_url, item_id)
    assert len(answers) == 1 and answers[0].ok and answers[0].subject == f"answer:{item_id}"
    assert ledger.spooled_calls(app_url) == []
    assert count(app_url, PurchaseClaim) == 0
    assert ledger.replay_spool(app_url) == 0


# --- item 6: any bytes a paid answer holds reach the ledger --------------------------------------------


@pytest.mark.parametrize("answer", ["Acme \ud800 is great", "Acme \x00 is great"], ids=["surrogate", "nul"])
def test_an_answer_no_text_column_accepts_is_stored_losslessly_and_bought_once(
    app_url: str, answer: str
) -> None:
    key, item_id = _partition(app_url)
    body = (
        '{"output_text": "' + answer.encode("unicode_escape").decode().replace("\\x00", "\\u0000") + '"}'
    ).encode()
    provider = ScriptedProvider(answer=[reply(answer, raw_body=body)], claims=[reply(CLAIMS_JSON)])
    for step in (
        lambda: steps.buy_answers(app_url, key, provider.provider_for, "run-1"),
        lambda: steps.store_runs(app_url, key),
        lambda: steps.extract_mentions(app_url, key),
        lambda: steps.extract_run_citations(app_url, key),
        lambda: steps.extract_claims(app_url, key, provider.provider_for),
        lambda: steps.compute_metrics(app_url, key),
    ):
        like_dagster(step)
    assert provider.calls("answer") == 1
    answers = _answers(app_url, item_id)
    assert len(answers) == 1 and answers[0].ok
    call = answers[0]
    assert ledger.exact_output_text(call) == answer
    assert call.output_text == answer.replace("\ud800", "\\ud800").replace("\x00", "\\u0000")
    assert call.raw_body == body
    assert call.raw_response["output_text"] == answer  # the JSON column keeps it exactly
    with session_scope(app_url) as session:
        assert session.get(CycleItem, item_id).status == "succeeded"
        assert session.scalar(sa.select(sa.func.count()).select_from(Mention)) == 1  # Acme, still found


@pytest.mark.parametrize("answer", ["Acme \ud800 is great", "Acme \x00 is great"], ids=["surrogate", "nul"])
def test_the_same_answer_through_the_real_openai_sdk_is_bought_once(
    app_url: str, answer: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    key, item_id = _partition(app_url)
    assert "|openai-" in key
    PACER.reset()
    with FakeOpenAI(api_key="sk-ledger-test") as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.url + "/v1")
        server.script(text(answer))
        provider_for = ModelProviderResource(mode="live", openai_api_key="sk-ledger-test").provider_for
        like_dagster(lambda: steps.buy_answers(app_url, key, provider_for, "run-1"))
        assert server.request_count == 1
    PACER.reset()
    [call] = _answers(app_url, item_id)
    assert call.ok and ledger.exact_output_text(call) == answer


# --- item 2: how a turn finished decides what is stored ------------------------------------------------


def test_a_paused_turn_is_continued_and_each_part_is_in_the_ledger(app_url: str) -> None:
    key, item_id = _partition(app_url)
    continuation = [{"type": "server_tool_use", "name": "web_search", "input": {"query": "acme"}}]
    provider = ScriptedProvider(
        answer=[
            reply(
                "Now continuing with the remaining searches",
                "paused",
                continuation=continuation,
                citations=[SourceCitation("https://retrieved.example/", cited=False)],
            ),
            reply("Acme is the best choice.", citations=[SourceCitation("https://acme.io/pricing")]),
        ]
    )
    summary = steps.buy_answers(app_url, key, provider.provider_for, "run-1")
    assert summary["bought"] == 1 and summary["paid_calls"] == 2
    assert provider.requests[0].continuation is None
    assert provider.requests[1].continuation == continuation
    answers = sorted(_answers(app_url, item_id), key=lambda c: c.id)
    assert [(c.finish, c.ok, c.paid) for c in answers] == [("paused", False, True), ("complete", True, True)]
    assert {c.subject for c in answers} == {f"answer:{item_id}"}
    assert answers[1].source_citations == [  # the answer has the whole turn's sources
        {"url": "https://retrieved.example/", "title": None, "cited": False},
        {"url": "https://acme.io/pricing", "title": None, "cited": True},
    ]
    runs = steps.store_runs(app_url, key)
    assert runs["answer_preview"] == "Acme is the best choice."
    assert runs["output_tokens"] == 14  # both parts were paid for


def test_a_paused_turn_cut_short_by_a_failure_is_continued_by_the_next_attempt_not_rebought(
    app_url: str,
) -> None:
    key, item_id = _partition(app_url)
    continuation = [{"type": "text", "text": "Searching..."}]

    def unavailable(request: ModelRequest) -> ModelResponse:
        raise ProviderError(request.provider, request.model, "HTTP 503", retryable=True, status_code=503)

    provider = ScriptedProvider(
        answer=[reply("Searching...", "paused", continuation=continuation), unavailable, reply("Acme wins.")]
    )
    summary = like_dagster(lambda: steps.buy_answers(app_url, key, provider.provider_for, "run-1"))
    assert summary["bought"] == 1
    assert [r.continuation for r in provider.requests] == [None, continuation, continuation]
    answers = sorted(_answers(app_url, item_id), key=lambda c: c.id)
    assert [(c.finish, c.paid) for c in answers] == [("paused", True), (None, False), ("complete", True)]
    assert steps.store_runs(app_url, key)["answer_preview"] == "Acme wins."


def test_a_paused_turn_stops_at_the_step_budget_and_the_next_attempt_continues_it(
    app_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(steps, "STEP_BUDGET_SECONDS", 1.5)
    key, item_id = _partition(app_url)
    continuation = [{"type": "text", "text": "Searching..."}]
    slow_pause = reply("Searching...", "paused", continuation=continuation)

    def paused_after_the_budget(request: ModelRequest) -> ModelResponse:
        time.sleep(1.0)  # with the 1 s margin the budget is spent
        return slow_pause(request)

    provider = ScriptedProvider(answer=[paused_after_the_budget, reply("Acme wins.")])
    with pytest.raises(ProviderError) as raised:
        steps.buy_answers(app_url, key, provider.provider_for, "run-1")
    assert raised.value.retryable and "step budget" in str(raised.value)
    assert len(provider.requests) == 1
    summary = steps.buy_answers(app_url, key, provider.provider_for, "run-1")  # the retry
    assert summary["bought"] == 1
    assert [r.continuation for r in provider.requests] == [None, continuation]
    assert [c.finish for c in sorted(_answers(app_url, item_id), key=lambda c: c.id)] == [
        "paused",
        "complete",
    ]


@pytest.mark.parametrize(
    ("finish", "reason", "expected"),
    [
        (
            "truncated",
            "MAX_TOKENS",
            "answer truncated at max_output_tokens=4096 (finish MAX_TOKENS); raise models[]",
        ),
        ("refused", "refusal", "refused"),
        ("empty", "STOP", "empty"),
    ],
)
def test_an_unfinished_answer_is_recorded_paid_and_never_stored_as_an_answer(
    app_url: str, finish: str, reason: str, expected: str
) -> None:
    key, item_id = _partition(app_url)
    provider = ScriptedProvider(answer=[reply("The capital of France is", finish, finish_reason=reason)])
    with pytest.raises(ProviderError) as raised:
        steps.buy_answers(app_url, key, provider.provider_for, "run-1")
    assert raised.value.retryable is False
    assert expected in str(raised.value)
    [call] = _answers(app_url, item_id)
    assert (call.ok, call.paid, call.finish, call.finish_reason) == (False, True, finish, reason)
    assert (call.input_tokens, call.output_tokens, call.cost_usd) == (11, 7, 0.001)
    with pytest.raises(steps.StepError):  # no answer to build a run from
        steps.store_runs(app_url, key)


def test_a_provider_error_carrying_a_paid_response_is_a_paid_failed_call(app_url: str) -> None:
    key, item_id = _partition(app_url)

    def paid_but_unusable(request: ModelRequest) -> ModelResponse:
        response = reply("partial", "truncated", finish_reason="length")(request)
        raise ProviderError(request.provider, request.model, "unusable", retryable=False, response=response)

    provider = ScriptedProvider(answer=[paid_but_unusable])
    with pytest.raises(ProviderError):
        steps.buy_answers(app_url, key, provider.provider_for, "run-1")
    [call] = _answers(app_url, item_id)
    assert (call.ok, call.paid, call.output_text, call.output_tokens) == (False, True, "partial", 7)
    assert "unusable" in call.error


def test_the_answer_budget_comes_from_the_org_file_or_the_default(app_url: str) -> None:
    key, item_id = _partition(app_url)
    with session_scope(app_url) as session:
        item = session.get(CycleItem, item_id)
        model = session.get(OrgModel, item.model_id)
        model.max_output_tokens = 12_000
    provider = ScriptedProvider()
    steps.buy_answers(app_url, key, provider.provider_for, "run-1")
    assert provider.requests[-1].max_output_tokens == 12_000
    with session_scope(app_url) as session:
        session.get(OrgModel, session.get(CycleItem, item_id).model_id).max_output_tokens = None
        session.get(CycleItem, item_id).status = "pending"
        session.execute(sa.delete(ModelCall).where(ModelCall.cycle_item_id == item_id))
    steps.buy_answers(app_url, key, provider.provider_for, "run-2")
    # Without an org-file budget: the provider layer's default for that model (no web search here).
    assert provider.requests[-1].max_output_tokens == answer_token_budget(
        provider.requests[-1].provider, provider.requests[-1].model, provider.requests[-1].web_search
    )
