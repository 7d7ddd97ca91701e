"""Provider clients created before a fork are never used after it.

The CLI runner forks its workers after the parent has already called a provider (segment discovery),
so the parent's cached SDK client, with its kept-alive HTTP connection, exists in every child. Shared,
that one socket delivers responses to whichever process reads first: answers cross between requests.
"""

import json
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from icp_pipeline.providers.base import ModelRequest, ProviderError
from icp_pipeline.providers.factory import ProviderSettings, resolve_provider
from icp_pipeline.providers.resilience import PACER
from icp_pipeline_tests.support.fake_providers import (
    PROVIDER_CASES,
    FakeOpenAI,
    FakeProviderServer,
    ProviderCase,
    RecordedRequest,
    Step,
    status,
    text,
)

REPO_ROOT = Path(__file__).parents[2]
KEY = "sk-fork-test-4d1f"
FAILING = "token-3"
TOKENS = [f"token-{i}" for i in range(1, 9)]


Case = ProviderCase
CASES = PROVIDER_CASES


def echo_or_fail(server: FakeProviderServer):
    """Answer each request with the token in its prompt; fail every request about FAILING."""

    def respond(record: RecordedRequest) -> Step:
        found = re.search(r"token-\d+", server.prompt_of(record.json))
        if found is None:  # e.g. two requests interleaved on one shared socket
            return status(400)
        return status(400) if found.group(0) == FAILING else text(f"answer for {found.group(0)}")

    return respond


def ask(case: Case, token: str) -> str:
    provider = resolve_provider(
        ProviderSettings(mode="live", api_keys={case.provider: KEY}), case.provider, case.model
    )
    request = ModelRequest(
        case.provider,
        case.model,
        f"Tell me about {token}.",
        "answer",
        deadline=time.monotonic() + 10,
    )
    try:
        return provider.complete(request).text
    except ProviderError as error:
        return f"error {error.status_code}"


def _ask_in_child(args: tuple[Case, str]) -> tuple[str, str]:
    case, token = args
    return token, ask(case, token)


@pytest.fixture(params=CASES, ids=[c.provider for c in CASES])
def served(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple]:
    case: Case = request.param
    PACER.reset()
    with case.server(api_key=KEY, keep_alive=True) as server:
        monkeypatch.setenv(case.base_url_variable, server.url + case.base_url_suffix)
        server.respond_with = echo_or_fail(server)
        server.latency = 0.2  # the children's requests overlap
        yield case, server
    PACER.reset()


# The scenario runs in a fresh interpreter, as the CLI does: pytest's own process has, by this point of
# a full run, threads and libraries (gRPC, database pools) from earlier tests that a fork would copy
# mid-flight, which once hung a pool worker here. What is tested is the provider layer's fork safety.
FORK_SCENARIO = """
import json, multiprocessing, sys
from icp_pipeline_tests.integration.test_fork_safety import CASES, TOKENS, _ask_in_child, ask
case = next(c for c in CASES if c.provider == sys.argv[1])
# The parent calls first: its client and a kept-alive connection now exist, as in the CLI.
result = {"parent_before": ask(case, "token-0")}
with multiprocessing.get_context("fork").Pool(4) as pool:
    answers = pool.map_async(_ask_in_child, [(case, t) for t in TOKENS], chunksize=1).get(60)
result["children"] = dict(answers)
# The parent's own client still works after the children are gone.
result["parent_after"] = ask(case, "token-9")
print(json.dumps(result))
"""


def test_forked_children_each_get_the_answer_to_their_own_request(served) -> None:
    case, server = served
    process = subprocess.Popen(
        [sys.executable, "-c", FORK_SCENARIO, case.provider],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its pool workers too are killed if it overruns
    )
    try:
        out, err = process.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        pytest.fail(f"the fork scenario did not end in 120 s: {err[-2000:]}")
    assert process.returncode == 0, err[-2000:]
    result = json.loads(out.strip().splitlines()[-1])

    assert result["parent_before"] == "answer for token-0"
    expected = {t: ("error 400" if t == FAILING else f"answer for {t}") for t in TOKENS}
    assert result["children"] == expected
    assert result["parent_after"] == "answer for token-9"
    assert server.request_count == len(TOKENS) + 2


def _pacing_interval_in_child(provider: str) -> float:
    return PACER.interval(provider)


def test_a_forked_child_starts_with_fresh_pacing_state() -> None:
    PACER.reset()
    try:
        PACER.rate_limited("openai", 1.0)  # the parent saw a 429
        assert PACER.interval("openai") > 0
        with multiprocessing.get_context("fork").Pool(1) as pool:
            assert pool.apply_async(_pacing_interval_in_child, ("openai",)).get(30) == 0.0
        assert PACER.interval("openai") > 0  # the parent keeps its own
    finally:
        PACER.reset()


# ------------------------------------------------------------------ through the CLI's site build


@pytest.fixture
def site(sqlite_app: str) -> str:
    from icp_pipeline.db.session import session_scope
    from icp_pipeline.segments.site_file import parse_site_file, upsert_site
    from icp_pipeline_tests.integration.test_segments import EXAMPLE_SITE

    with session_scope(sqlite_app) as session:
        upsert_site(session, parse_site_file(EXAMPLE_SITE))
    return sqlite_app


def site_build_answers(record: RecordedRequest) -> Step:
    """Segment discovery, one ICP per segment (named after the segment in its prompt, failing for
    Agencies), and a summary ranking the segments its prompt lists."""
    from icp_pipeline_tests.integration.test_segments import icp_json, segments_json, summary_json

    prompt = FakeOpenAI.prompt_of(record.json)
    if "List the general audience segments" in prompt:
        return text(segments_json())
    if "Build the Ideal Customer Profile" in prompt:
        name = re.search(r"^Segment: (.+)$", prompt, re.MULTILINE)
        if name is None:
            return status(400)
        return status(400) if name.group(1) == "Agencies" else text(icp_json(name.group(1)))
    if "Compare these segment ICPs" in prompt:
        return text(summary_json(re.findall(r"^Segment (\S+) \(", prompt, re.MULTILINE)))
    return status(400)


def test_site_build_stores_each_segment_its_own_answer(site: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import sqlalchemy as sa

    from icp_pipeline.cli.site_build import build_site
    from icp_pipeline.db.models import Segment, SegmentResult
    from icp_pipeline.db.session import session_scope
    from icp_pipeline.defs.resources import ModelProviderResource
    from icp_pipeline.segments.steps import BuildOptions
    from icp_pipeline_tests.support.pipeline import pipeline_defs

    PACER.reset()
    with FakeOpenAI(api_key=KEY, keep_alive=True) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.url + "/v1")
        monkeypatch.setenv("OPENAI_API_KEY", KEY)
        server.respond_with = site_build_answers
        server.latency = 0.3  # the segment builds' requests overlap
        defs = pipeline_defs(site, models=ModelProviderResource(mode="live", openai_api_key=KEY))
        # Segment discovery runs in this process and creates the client; the builds run in forks.
        outcome = build_site(
            "acme", BuildOptions("openai", "gpt-4o-mini"), workers=3, progress=False, defs=defs
        )
    PACER.reset()

    assert (outcome.succeeded, outcome.failed) == (3, 1), outcome.table
    assert [row["segment_id"] for row in outcome.table if not row["success"]] == ["agencies"]
    with session_scope(site) as session:
        rows = session.execute(
            sa.select(Segment.name, SegmentResult.success, SegmentResult.profile).join(
                SegmentResult, SegmentResult.segment_id == Segment.id
            )
        ).all()
    built = {name: profile["segment_name"] for name, success, profile in rows if success}
    assert built and all(stored == name for name, stored in built.items()), built
