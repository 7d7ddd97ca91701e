"""The search fan-out extractor on each provider's stored raw shapes, hostile queries, and the
payload section's reference counts."""

import json

from icp_pipeline.visibility.search_queries import (
    EXAMPLE_RUNS,
    MAX_QUERIES_PER_RUN,
    MAX_QUERY_CHARS,
    extract_queries,
    normalise_query,
    search_query_stats,
)


def _search(query=None, queries=None, **action) -> dict:
    body = {"type": "search", **action}
    if query is not None:
        body["query"] = query
    if queries is not None:
        body["queries"] = queries
    return {"type": "web_search_call", "id": "ws_1", "status": "completed", "action": body}


def test_openai_search_actions_give_their_queries_once_per_search() -> None:
    raw = {
        "output": [
            {"type": "reasoning", "id": "rs_1", "summary": []},
            {"type": "web_search_call", "id": "ws_0", "status": "completed"},  # no action: no query
            _search("Best CRM", ["best crm"]),  # the same search named twice: one query
            _search(queries=["crm pricing", "CRM reviews 2026"]),  # several queries, no `query`
            _search("best crm"),  # issued again: kept, it is a second search
            {"type": "web_search_call", "action": {"type": "open_page", "url": "https://a.example"}},
            {"type": "web_search_call", "action": {"type": "find_in_page", "pattern": "x", "url": "u"}},
            {"type": "web_search_call", "action": {"type": "find", "pattern": "x", "url": "u"}},
            {"type": "web_search_call", "action": {"type": "search"}},  # a search with no query
            {"type": "message", "content": [{"type": "output_text", "text": "web_search_call query"}]},
        ]
    }
    found = extract_queries("openai", [raw])
    assert found.queries == ["best crm", "crm pricing", "crm reviews 2026", "best crm"]
    assert (found.without_query, found.dropped) == (2, 0)


def test_anthropic_web_search_blocks_across_a_continued_turn() -> None:
    paused = {
        "content": [
            {"type": "text", "text": "I'll search."},
            {"type": "server_tool_use", "id": "s1", "name": "web_search", "input": {"query": "Acme pricing"}},
            {"type": "web_search_tool_result", "tool_use_id": "s1", "content": []},
            {
                "type": "server_tool_use",
                "id": "s2",
                "name": "web_fetch",
                "input": {"url": "https://a.example"},
            },
        ],
        "stop_reason": "pause_turn",
    }
    final = {
        "content": [
            {
                "type": "server_tool_use",
                "id": "s3",
                "name": "web_search",
                "input": {"query": "acme vs globex"},
            },
            {"type": "tool_use", "id": "t1", "name": "web_search", "input": {"query": "client tool"}},
            {"type": "text", "text": "Acme."},
        ]
    }
    assert extract_queries("anthropic", [paused, final]).queries == ["acme pricing", "acme vs globex"]


def test_gemini_queries_of_the_answer_candidate_parsed_or_as_sent() -> None:
    parsed = {"candidates": [{"grounding_metadata": {"web_search_queries": ["Acme", "acme reviews"]}}]}
    sent = {
        "candidates": [
            {"groundingMetadata": {"webSearchQueries": ["acme pricing"]}},
            {"groundingMetadata": {"webSearchQueries": ["another candidate"]}},
        ]
    }
    assert extract_queries("gemini", [parsed]).queries == ["acme", "acme reviews"]
    assert extract_queries("gemini", [sent]).queries == ["acme pricing"]
    assert extract_queries("gemini", [{"candidates": []}]).queries == []


def test_other_providers_and_other_shapes_have_no_searches() -> None:
    openai_like = {"output": [_search("acme")]}
    assert extract_queries("offline", [openai_like]).queries == []
    assert extract_queries("anthropic", [openai_like]).queries == []
    for garbage in (None, [], "text", 3, {"output": "x"}, {"output": [None, 1, "a"]}, {"content": {"a": 1}}):
        for provider in ("openai", "anthropic", "gemini"):
            assert extract_queries(provider, [garbage]).queries == []
    bad = {"output": [_search(queries="not a list"), _search(7), _search({"q": 1})]}
    assert extract_queries("openai", [bad]).queries == []


def test_hostile_queries_are_bounded_inert_storable_text() -> None:
    assert normalise_query("  Best\u0000 CRM\ud800 \u202e2026\u200b\n\t ") == "best crm 2026"
    assert normalise_query("ＣＲＭ tools") == "crm tools"  # NFKC: full-width letters
    assert normalise_query("\u0000\ud800 \u200b") is None
    assert normalise_query(None) is None and normalise_query(12) is None
    long = normalise_query("a" * 100_000)
    assert long == "a" * MAX_QUERY_CHARS
    many = {"output": [_search(f"query {i}") for i in range(MAX_QUERIES_PER_RUN + 25)]}
    found = extract_queries("openai", [many])
    assert len(found.queries) == MAX_QUERIES_PER_RUN and found.dropped == 25
    assert found.queries[0] == "query 0"
    # What is stored encodes (no lone surrogate, no NUL) and is plain JSON text.
    for query in found.queries + [normalise_query("x\ud800\u0000y")]:
        query.encode("utf-8")
        assert "\x00" not in query and json.loads(json.dumps(query)) == query


def test_the_reference_counts_runs_and_times_issued_overall_and_by_model() -> None:
    runs = [
        (1, "openai/gpt", ["best crm", "crm pricing", "best crm"]),
        (2, "openai/gpt", ["best crm"]),
        (3, "gemini/flash", ["crm pricing", "best crm"]),
        (4, "gemini/flash", []),
        (5, "anthropic/claude", ["zeta", "alpha"]),
    ]
    stats = search_query_stats(runs)
    assert {k: stats[k] for k in ("runs", "runs_with_searches", "queries", "distinct_queries")} == {
        "runs": 5,
        "runs_with_searches": 4,
        "queries": 8,
        "distinct_queries": 4,
    }
    assert stats["queries_per_searching_run"] == 2.0
    assert stats["top"] == [
        {"query": "best crm", "runs": 3, "issued": 4, "example_run_ids": [1, 2, 3]},
        {"query": "crm pricing", "runs": 2, "issued": 2, "example_run_ids": [1, 3]},
        {"query": "alpha", "runs": 1, "issued": 1, "example_run_ids": [5]},  # ties: code points
        {"query": "zeta", "runs": 1, "issued": 1, "example_run_ids": [5]},
    ]
    assert list(stats["by_model"]) == ["anthropic/claude", "gemini/flash", "openai/gpt"]
    gemini = stats["by_model"]["gemini/flash"]
    assert (gemini["runs"], gemini["runs_with_searches"], gemini["queries"]) == (2, 1, 2)
    assert [row["query"] for row in gemini["top"]] == ["best crm", "crm pricing"]
    assert len(stats["by_model"]["openai/gpt"]["top"][0]["example_run_ids"]) <= EXAMPLE_RUNS
    empty = search_query_stats([])
    assert empty["runs"] == 0 and empty["top"] == [] and empty["queries_per_searching_run"] is None
