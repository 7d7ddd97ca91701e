"""Search fan-out from the providers' recorded response shapes, through the real SDKs (fake servers on
127.0.0.1) and the ledger: each engine's searches land in search_queries, a paused Anthropic turn's
included, hostile queries stay storable on PostgreSQL, and re-extracting buys nothing."""

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml

from icp_pipeline.db.models import CycleItem, ModelCall, QuestionRun, SearchQuery
from icp_pipeline.db.session import session_scope, upgrade
from icp_pipeline.defs.resources import ModelProviderResource
from icp_pipeline.ledger import cycle_spend_usd
from icp_pipeline.providers.resilience import PACER
from icp_pipeline.visibility import rollup, search_fanout, steps
from icp_pipeline.visibility.cycles import open_cycle
from icp_pipeline.visibility.org_file import parse_org_text, upsert_org
from icp_pipeline.visibility.search_fanout import extract_run_search_queries
from icp_pipeline.visibility.search_queries import MAX_QUERY_CHARS, extract_queries, search_query_stats
from icp_pipeline_tests.conftest import example_org_data
from icp_pipeline_tests.support.fake_providers import PROVIDER_CASES, FakeProviderServer, pause_turn

KEY = "sk-fanout-test-4b1c"
QUESTION = "What is the best product analytics tool for a startup?"


def _load_org(url: str, provider: str, model: str) -> list[str]:
    """One question, one location, the model with web search: one partition; its key."""
    spec = example_org_data()
    spec["models"] = [{"provider": provider, "model": model, "web_search": True}]
    spec["locations"] = ["US"]
    spec["questions"] = [QUESTION]
    upgrade(url)
    with session_scope(url) as session:
        upsert_org(session, parse_org_text(yaml.safe_dump(spec)))
        cycle, _ = open_cycle(session, "acme")
        return sorted({item.partition_key for item in cycle.items})


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], FakeProviderServer]]:
    servers: list[FakeProviderServer] = []
    PACER.reset()

    def start(provider: str) -> FakeProviderServer:
        case = next(c for c in PROVIDER_CASES if c.provider == provider)
        server = case.server(api_key=KEY).start()
        servers.append(server)
        monkeypatch.setenv(case.base_url_variable, server.url + case.base_url_suffix)
        return server

    yield start
    for server in servers:
        server.stop()
    PACER.reset()


def _sent_queries(provider: str, body: dict) -> list[str]:
    """The queries in a response body as the fake server sent it, read by hand (not by the extractor)."""
    if provider == "openai":
        return [
            item["action"]["query"]
            for item in body["output"]
            if item["type"] == "web_search_call" and "action" in item
        ]
    if provider == "anthropic":
        return [b["input"]["query"] for b in body["content"] if b["type"] == "server_tool_use"]
    return list(body["candidates"][0]["groundingMetadata"]["webSearchQueries"])


def _run_partition(url: str, key: str, provider: str) -> None:
    provider_for = ModelProviderResource(mode="live", **{f"{provider}_api_key": KEY}).provider_for
    steps.buy_answers(url, key, provider_for)
    steps.store_runs(url, key)


def _stored(url: str) -> list[tuple[int, str, str, str]]:
    with session_scope(url) as session:
        return [
            tuple(row)
            for row in session.execute(
                sa.select(
                    SearchQuery.position,
                    SearchQuery.provider,
                    SearchQuery.query,
                    SearchQuery.extractor_version,
                ).order_by(SearchQuery.question_run_id, SearchQuery.position)
            )
        ]


@pytest.mark.parametrize("case", PROVIDER_CASES, ids=lambda c: c.provider)
def test_each_providers_searches_are_stored_from_the_answer_the_sdk_returned(
    tmp_path: Path, served, case
) -> None:
    url = f"sqlite:///{tmp_path / 'app.db'}"
    [key] = _load_org(url, case.provider, case.model)
    server = served(case.provider)
    if case.provider == "openai":
        server.search_calls_without_action = 2  # real responses have some: no query to store
    _run_partition(url, key, case.provider)

    sent = _sent_queries(case.provider, server.last_request.response_json)
    assert sent and all(isinstance(q, str) and q for q in sent)
    summary = extract_run_search_queries(url, key)
    expected = [" ".join(q.split()).casefold() for q in sent]
    assert [(p, prov, q) for p, prov, q, _ in _stored(url)] == [
        (i, case.provider, q) for i, q in enumerate(expected)
    ]
    assert summary["queries"] == len(expected)
    assert summary["without_query"] == (2 if case.provider == "openai" else 0)
    # The stored raw response (parsed, snake_case for Gemini) and the exact body read alike.
    with session_scope(url) as session:
        call = session.scalars(sa.select(ModelCall).where(ModelCall.ok)).one()
        assert extract_queries(case.provider, [call.raw_response]).queries == expected
        assert extract_queries(case.provider, [json.loads(call.raw_body)]).queries == expected


def test_a_paused_anthropic_turn_counts_the_searches_before_the_pause(tmp_path: Path, served) -> None:
    url = f"sqlite:///{tmp_path / 'app.db'}"
    [key] = _load_org(url, "anthropic", "claude-haiku-4-5")
    server = served("anthropic")
    server.script(pause_turn)  # paused after one search; the continuation searches again and answers
    _run_partition(url, key, "anthropic")
    assert server.request_count == 2
    with session_scope(url) as session:
        finishes = list(session.scalars(sa.select(ModelCall.finish).order_by(ModelCall.id)))
        run = session.scalars(sa.select(QuestionRun)).one()
        final_only = extract_queries("anthropic", [run.raw_response]).queries
    assert finishes == ["paused", "complete"]
    assert final_only == ["acme pricing"]  # the run keeps the last response only
    extract_run_search_queries(url, key)
    assert [q for _, _, q, _ in _stored(url)] == ["acme pricing", "acme pricing"]


@pytest.mark.postgres
def test_hostile_queries_are_stored_as_bounded_text_on_postgres_and_replaced_not_added(
    postgres_databases: Callable[[], str], served
) -> None:
    url = postgres_databases()
    [key] = _load_org(url, "openai", "gpt-4o-mini")
    server = served("openai")
    _run_partition(url, key, "openai")
    hostile = [
        "acme\u0000 pricing",
        "acme \ud800 reviews",
        "<script>alert(1)</script> **bold** [x](https://evil.example)",
        "x" * 100_000,
        "\u202eacme\u200b",
        "Émile analytics",
        "zeta analytics",
    ] + [f"filler {i}" for i in range(200)]
    with session_scope(url) as session:
        call = session.scalars(sa.select(ModelCall).where(ModelCall.ok)).one()
        raw = dict(call.raw_response)
        raw["output"] = [
            {
                "type": "web_search_call",
                "id": f"ws_{i}",
                "status": "completed",
                "action": {"type": "search", "query": q},
            }
            for i, q in enumerate(hostile)
        ]
        call.raw_response = raw  # a json column: PostgreSQL keeps \u0000 and \ud800 escapes in it
    calls_before = server.request_count
    first = extract_run_search_queries(url, key)
    again = extract_run_search_queries(url, key)
    assert first == again and server.request_count == calls_before
    stored = [q for _, _, q, _ in _stored(url)]
    assert len(stored) == 50 and first["dropped"] == len(hostile) - 50
    assert "émile analytics" in stored and "zeta analytics" in stored
    assert stored[:5] == [
        "acme pricing",
        "acme reviews",
        "<script>alert(1)</script> **bold** [x](https://evil.example)",  # data, kept as written
        "x" * MAX_QUERY_CHARS,
        "acme",
    ]
    with session_scope(url) as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(SearchQuery)) == 50
        assert session.scalar(sa.select(sa.func.count()).select_from(CycleItem)) == 1
        assert cycle_spend_usd(session, session.scalar(sa.select(CycleItem.cycle_id))) > 0

        # The payload section on these rows: every query ties (one run, issued once), so the top 20 is
        # the code-point order of Python's reference, whatever the database's collation.
        run = session.scalars(sa.select(QuestionRun)).one()
        run.status, run.is_latest = "completed", True
        session.flush()
        section = search_fanout.search_query_stats(session, rollup.latest_runs("acme"))
    label = "openai/gpt-4o-mini"
    assert section == search_query_stats([(run.id, label, stored)])
    assert [t["query"] for t in section["top"]][:3] == [
        "<script>alert(1)</script> **bold** [x](https://evil.example)",
        "acme",
        "acme pricing",
    ]
    assert "émile analytics" not in [t["query"] for t in section["top"]]  # after every ASCII query
