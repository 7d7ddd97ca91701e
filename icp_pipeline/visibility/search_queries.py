"""Search fan-out: the web searches an engine ran for an answer, read from its stored raw responses.
Pure functions: no database, no Dagster.

Where each provider puts them (as the adapters store the parsed response, `model_dump(mode="json")`;
the raw HTTP body's camelCase Gemini keys are read too):

- OpenAI Responses: `output[]` items of type `web_search_call` whose `action.type` is `search`: the
  action's `queries` list and its `query` (one search, counted once when both hold it). Items with no
  `action` (the API sends some) carry no query and are counted apart (`without_query`); `open_page`
  and `find_in_page` (`find` in older responses) actions open or read a page, they search nothing.
- Anthropic Messages: `content[]` blocks of type `server_tool_use` named `web_search`, `input.query`.
  A paused turn (`pause_turn`) is stored as one ledger row per response: the caller passes every body
  of the turn, oldest first, so the searches before the pause count. `web_fetch` fetches a URL.
- Gemini: the answer's candidate (the first, as the adapter reads it):
  `groundingMetadata.webSearchQueries[]` (`grounding_metadata.web_search_queries` once parsed).

A query is provider output, so untrusted: it is stored as data, normalised (NFKC, control, format and
surrogate characters dropped, whitespace collapsed, casefolded, at most MAX_QUERY_CHARS characters)
and at most MAX_QUERIES_PER_RUN are kept per run. Normalising is what lets the payload count the same
search issued by different runs and models as one query.
"""

import re
import unicodedata
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

# search-queries-1: OpenAI search actions (query + queries), Anthropic web_search server_tool_use
# across a continued turn, Gemini webSearchQueries of the answer's candidate; normalised as above.
SEARCH_QUERIES_VERSION = "search-queries-1"
MAX_QUERIES_PER_RUN = 50
MAX_QUERY_CHARS = 500
# The payload's top lists: overall and per model.
TOP_QUERIES = 20
TOP_QUERIES_PER_MODEL = 10
EXAMPLE_RUNS = 3

# Characters that are not text: controls (NUL included), format characters (zero-width, bidi
# overrides), surrogates, private use and unassigned code points.
_NOT_TEXT = frozenset({"Cc", "Cf", "Cs", "Co", "Cn"})
_SPACES = re.compile(r"\s+")


@dataclass(frozen=True)
class ExtractedQueries:
    queries: list[str]  # normalised, in the order issued, at most MAX_QUERIES_PER_RUN
    without_query: int  # searches seen whose query is not in the response (OpenAI items with no action)
    dropped: int  # queries beyond MAX_QUERIES_PER_RUN, or empty once normalised


def normalise_query(value: Any) -> str | None:
    """The query as counted and stored, or None when it is not text or nothing is left of it."""
    if not isinstance(value, str):
        return None
    # Bounded work on hostile input: a query longer than this is cut anyway.
    text = unicodedata.normalize("NFKC", value[: MAX_QUERY_CHARS * 4])
    text = "".join(" " if unicodedata.category(ch) in _NOT_TEXT else ch for ch in text)
    text = _SPACES.sub(" ", text).strip().casefold()
    text = text[:MAX_QUERY_CHARS].rstrip()
    return text or None


def _get(mapping: Any, *keys: str) -> Any:
    """The first of `keys` present in a dict (snake_case as stored, camelCase as sent)."""
    if not isinstance(mapping, dict):
        return None
    for key in keys:
        if key in mapping:
            return mapping[key]
    return None


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _openai(body: Any) -> Iterator[list[Any] | None]:
    """One entry per search: its candidate query strings (None: a search without a query)."""
    for item in _list(_get(body, "output")):
        if _get(item, "type") != "web_search_call":
            continue
        action = _get(item, "action")
        if not isinstance(action, dict):
            yield None
            continue
        if action.get("type") != "search":
            continue  # open_page, find_in_page / find: reading a page, not a search
        found = [action.get("query"), *_list(action.get("queries"))]
        yield found if any(query is not None for query in found) else None


def _anthropic(body: Any) -> Iterator[list[Any] | None]:
    for block in _list(_get(body, "content")):
        if _get(block, "type") == "server_tool_use" and _get(block, "name") == "web_search":
            query = _get(_get(block, "input"), "query")
            yield [query] if query is not None else None


def _gemini(body: Any) -> Iterator[list[Any] | None]:
    candidates = _list(_get(body, "candidates"))
    grounding = _get(candidates[0], "grounding_metadata", "groundingMetadata") if candidates else None
    for query in _list(_get(grounding, "web_search_queries", "webSearchQueries")):
        yield [query]


_READERS = {"openai": _openai, "anthropic": _anthropic, "gemini": _gemini}


def extract_queries(provider: str, bodies: Iterable[Any]) -> ExtractedQueries:
    """The searches of one answer from its raw responses (oldest first; one unless a paused turn was
    continued). An unknown provider, or a body of another shape, has none."""
    reader = _READERS.get(provider)
    queries: list[str] = []
    without_query = dropped = 0
    for body in bodies if reader is not None else ():
        for candidates in reader(body):
            if candidates is None:
                without_query += 1
                continue
            # One search may name its query twice (OpenAI `query` and `queries`): once per search.
            distinct = list(dict.fromkeys(q for q in map(normalise_query, candidates) if q))
            if not distinct:
                dropped += 1
            for query in distinct:
                if len(queries) < MAX_QUERIES_PER_RUN:
                    queries.append(query)
                else:
                    dropped += 1
    return ExtractedQueries(queries, without_query, dropped)


# --- the payload section, from per-run facts (the reference for rollup's SQL) ----------------------


def _ratio(numerator: float, denominator: float) -> float | None:
    # The payload's rounding rule (analytics._ratio), repeated to keep this module import-free.
    return round(numerator / denominator, 6) if denominator else None


def _top(per_query: dict[str, set[int]], issued: dict[str, int], limit: int) -> list[dict[str, Any]]:
    ranked = sorted(per_query, key=lambda q: (-len(per_query[q]), -issued[q], q))[:limit]
    return [
        {
            "query": query,
            "runs": len(per_query[query]),
            "issued": issued[query],
            "example_run_ids": sorted(per_query[query])[:EXAMPLE_RUNS],
        }
        for query in ranked
    ]


def _block(runs: list[tuple[int, list[str]]], limit: int) -> dict[str, Any]:
    per_query: dict[str, set[int]] = defaultdict(set)
    issued: dict[str, int] = defaultdict(int)
    for run_id, queries in runs:
        for query in queries:
            per_query[query].add(run_id)
            issued[query] += 1
    searching = sum(1 for _, queries in runs if queries)
    total = sum(issued.values())
    return {
        "runs": len(runs),
        "runs_with_searches": searching,
        "queries": total,
        "distinct_queries": len(per_query),
        "queries_per_searching_run": _ratio(total, searching),
        "top": _top(per_query, issued, limit),
    }


def search_query_stats(runs: Iterable[tuple[int, str, list[str]]]) -> dict[str, Any]:
    """The payload's `search_queries` from (run id, provider/model, the run's queries) of the latest
    runs: how many runs searched and how many queries they issued, and the top queries, each with the
    runs that issued it (`runs`, and up to EXAMPLE_RUNS of their ids), overall and by model. Ties
    rank by times issued, then by the query's code points."""
    facts = list(runs)
    by_model: dict[str, list[tuple[int, list[str]]]] = defaultdict(list)
    for run_id, model, queries in facts:
        by_model[model].append((run_id, queries))
    return {
        **_block([(run_id, queries) for run_id, _, queries in facts], TOP_QUERIES),
        "by_model": {model: _block(by_model[model], TOP_QUERIES_PER_MODEL) for model in sorted(by_model)},
    }
