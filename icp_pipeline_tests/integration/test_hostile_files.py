"""Hostile and oversized org and site files through the `icp-pipeline` command (issue 12).

Each rejection exits 2, names the field, prints no traceback and writes nothing. The commands run as
subprocesses under a time limit and an address-space limit, so a file that once ran for minutes at
gigabytes (a 1.1 KB YAML alias bomb, a 50 MB file) fails the test instead of the machine.
"""

import json
import os
import resource
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from icp_pipeline.cli.main import main
from icp_pipeline.db.models import (
    AnalyticsSnapshot,
    Company,
    Cycle,
    Org,
    OrgModel,
    Question,
    Segment,
    Site,
)
from icp_pipeline.db.session import session_scope, upgrade
from icp_pipeline.limits import MAX_PROMPT_CHARS
from icp_pipeline.segments.prompts import comparison_prompt, icp_prompt, segments_prompt
from icp_pipeline.segments.site_file import parse_site_text, upsert_site
from icp_pipeline.visibility.org_file import parse_org_text, upsert_org
from icp_pipeline_tests.conftest import EXAMPLE_ORG, example_org_data
from icp_pipeline_tests.support.pipeline import count
from icp_pipeline_tests.support.segment_rows import add_built_segment

ROOT = Path(__file__).parents[2]
EXAMPLE_SITE = ROOT / "icp_pipeline" / "examples" / "acme_site.yaml"
MEMORY_LIMIT = 512 * 2**20  # bytes of address space for the command
TIME_LIMIT = 60  # seconds; a rejection takes about 2 (mostly imports)


@pytest.fixture
def app_db(icp_env: Path) -> str:
    url = f"sqlite:///{icp_env / 'app.db'}"
    upgrade(url)
    return url


def _limited() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def _command(app_db: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ICP_DATABASE_URL": app_db, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "icp_pipeline.cli.main", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=TIME_LIMIT,
        preexec_fn=_limited,
    )


def _yaml_bomb(levels: int = 9) -> str:
    """1.1 KB that a naive reader expands to 9**9 (387 million) items."""
    lols = ", ".join(["lol"] * 9)
    nested = [f"&l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels)]
    return f"[&l0 [{lols}], {', '.join(nested)}]"


def _example() -> str:
    return EXAMPLE_ORG.read_text(encoding="utf-8")


def _line_of(text: str, prefix: str) -> int:
    return 1 + next(i for i, line in enumerate(text.splitlines()) if line.startswith(prefix))


# Files that once cost minutes and gigabytes: run as the command, under TIME_LIMIT and MEMORY_LIMIT.
COSTLY_ORG_FILES: dict[str, tuple[Callable[[], bytes], str]] = {
    "alias bomb in models[].provider": (
        lambda: _example().replace("{provider: openai,", "{provider: " + _yaml_bomb() + ",").encode(),
        "models[0].provider[1][0]: YAML aliases (*name) are not supported",
    ),
    "alias bomb in schedule": (
        lambda: (_example() + "schedule: " + _yaml_bomb() + "\n").encode(),
        "schedule[1][0]: YAML aliases (*name) are not supported",
    ),
    "50 MB file": (lambda: b"# padding\n" * 5_000_000, "(file): larger than the limit of 1,000,000 bytes"),
    "100,000 [": (lambda: b"id: " + b"[" * 100_000 + b"\n", "nested deeper than 20 levels"),
    "5,000-digit integer": (
        lambda: (_example() + "min_runs: " + "7" * 5000 + "\n").encode(),
        "min_runs: an integer of 5000 characters is too long",
    ),
}

# Files that ended in a traceback or loaded silently: run in-process (fast).
BAD_ORG_FILES: dict[str, tuple[Callable[[], bytes], str]] = {
    "Latin-1": (
        lambda: _example().replace("Acme Analytics", "Acmé Analytics").encode("latin-1"),
        "(file): not UTF-8 text (byte 0xe9",
    ),
    "UTF-16": (lambda: _example().encode("utf-16"), "(file): UTF-16 text; save the file as UTF-8"),
    "invalid bytes": (lambda: _example().encode() + b"# \xc3\x28\n", "(file): not UTF-8 text (byte 0xc3"),
    "second id": (
        lambda: (_example() + "id: other-org\n").encode(),
        f"id: duplicate key (lines {_line_of(_example(), 'id:')} and {len(_example().splitlines()) + 1})",
    ),
    "two questions keys": (
        lambda: (_example() + "questions: ['Only this?']\n").encode(),
        "questions: duplicate key",
    ),
    "terminal escapes in a name": (
        lambda: _example().replace("{name: Globex,", '{name: "Globex\\e]0;pwned\\a\\e[2J",').encode(),
        "competitors[0].name: contains U+001B",
    ),
    "right-to-left override in an alias": (
        lambda: _example().replace("[Initech Insights]", '["Initech \\u202eInsights"]').encode(),
        "competitors[1].aliases[0]: contains U+202E (RIGHT-TO-LEFT OVERRIDE)",
    ),
    "121-character model name": (
        lambda: _example().replace("model: gpt-4o-mini", "model: " + "m" * 121).encode(),
        "models[0].model: String should have at most 120 characters",
    ),
    "stop-word alias": (
        lambda: _example().replace("[Umbrella Metrics]", "[Umbrella Metrics, the]").encode(),
        "competitors[2].aliases[1]: 'the' is a common word",
    ),
    "alias shared with the target": (
        lambda: _example().replace("[Globex Corp]", "[Globex Corp, acme]").encode(),
        "competitors[0].aliases[1]: 'acme' is also a name or alias of target 'Acme'",
    ),
    "the target's domain": (
        lambda: _example().replace("[globex.com]", "[globex.com, acme.io]").encode(),
        "competitors[0].domains[1]: 'acme.io' is also a domain of target 'Acme'",
    ),
}


@pytest.mark.parametrize("case", list(COSTLY_ORG_FILES))
def test_costly_org_file_is_refused_in_bounded_time_and_memory(
    app_db: str, tmp_path: Path, case: str
) -> None:
    content, expected = COSTLY_ORG_FILES[case]
    path = tmp_path / "org.yaml"
    path.write_bytes(content())
    result = _command(app_db, "org", "load", str(path))
    assert result.returncode == 2, result.stderr[-2000:]
    assert expected in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert len(result.stderr) < 1000
    assert count(app_db, Org) == 0


def test_the_same_limits_load_the_example(app_db: str) -> None:
    """The limits above are not what makes the costly files fail."""
    result = _command(app_db, "org", "load", str(EXAMPLE_ORG))
    assert result.returncode == 0, result.stderr
    assert count(app_db, Org) == 1


@pytest.mark.parametrize("case", list(BAD_ORG_FILES))
def test_bad_org_file_is_refused_with_its_field(
    app_db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    content, expected = BAD_ORG_FILES[case]
    path = tmp_path / "org.yaml"
    path.write_bytes(content())
    assert main(["org", "load", str(path)]) == 2  # returned, not raised
    err = capsys.readouterr().err
    assert expected in err
    assert len(err) < 1000
    assert not any(ch in err for ch in "\x1b\x07\u202e")
    assert count(app_db, Org) == 0


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (lambda: b"# padding\n" * 5_000_000, "(file): larger than the limit of 1,000,000 bytes"),
        (
            lambda: yaml.safe_dump(
                {
                    **yaml.safe_load(EXAMPLE_SITE.read_text()),
                    "pages": [{"url": f"https://acme.io/{i}", "text": "Page text."} for i in range(1000)],
                }
            ).encode(),
            "pages: List should have at most 100 items",
        ),
        (lambda: EXAMPLE_SITE.read_bytes() + b"id: other\n", "id: duplicate key"),
        (
            lambda: (
                EXAMPLE_SITE.read_text().replace("name: Acme Analytics", 'name: "Acme\\e[2J"', 1).encode()
            ),
            "name: contains U+001B",
        ),
    ],
)
def test_bad_site_file_is_refused(
    app_db: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    content: Callable[[], bytes],
    expected: str,
) -> None:
    path = tmp_path / "site.yaml"
    path.write_bytes(content())
    assert main(["site", "load", str(path)]) == 2
    assert expected in capsys.readouterr().err
    assert count(app_db, Site) == 0


# --- A deliberately large cycle --------------------------------------------------------------------


def _large_org(tmp_path: Path) -> Path:
    data = example_org_data()  # one sample: 1,000 questions x 3 models x 10 locations
    data["questions"] = [f"Which analytics tool fits use case {i}?" for i in range(1000)]
    data["locations"] = ["US", "DE", "FR", "GB", "IT", "ES", "NL", "SE", "PL", "JP"]
    path = tmp_path / "large.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_a_cycle_over_the_limit_needs_allow_large_and_shows_its_cost(
    app_db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _large_org(tmp_path)
    assert main(["org", "load", str(path)]) == 2
    err = capsys.readouterr().err
    assert "questions x models x locations x samples: 30,000 question runs per cycle exceed the limit" in err
    assert "60000 model calls (30000 answers + 30000 claims), estimated cost $" in err
    assert "--allow-large" in err
    assert count(app_db, Org) == 0

    assert main(["org", "load", "--allow-large", str(path)]) == 0
    out = capsys.readouterr().out
    assert "(30000 question runs per cycle)" in out
    assert "a full cycle buys 60000 model calls" in out
    assert count(app_db, Question) == 1000


# --- Printing names ---------------------------------------------------------------------------------


def test_org_report_prints_names_inert(app_db: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A name stored before names were checked (or written by a model) cannot drive the terminal."""
    assert main(["org", "load", str(EXAMPLE_ORG)]) == 0
    hostile = "Acme\x1b]0;pwned\x07\x1b[2J\u202e\u200bX"
    with session_scope(app_db) as session:
        cycle = Cycle(org_id="acme", status="succeeded")
        session.add(cycle)
        session.flush()
        row = {
            "name": hostile,
            "is_target": True,
            "runs": 1,
            "mentioned_runs": 1,
            "mention_rate": 1.0,
            "share_of_voice": 1.0,
            "average_position": 1.0,
            "cited_runs": 0,
        }
        payload = {"companies": [row], "runs": {"completed": 1, "failed": 0, "total": 1}}
        session.add(
            AnalyticsSnapshot(org_id="acme", cycle_id=cycle.id, payload=payload, analytics_version="t")
        )
    capsys.readouterr()
    assert main(["org", "report", "acme"]) == 0
    out = capsys.readouterr().out
    assert "| AcmeX | yes |" in out
    assert not any(ch in out for ch in "\x1b\x07\u202e\u200b")
    assert "pwned" not in out


# Model output (or a name stored before names were checked): escapes, a bidi override, a newline,
# markdown (a link, an image, emphasis, a cell separator) and HTML.
HOSTILE_TEXT = "Evil\x1b]0;pwned\x07\x1b[2J\u202e|Co\n![x](http://evil.example/i.png) <img src=x> **b**"
HOSTILE_SHOWN = "Evil\\|Co !\\[x\\](http://evil.example/i.png) \\<img src=x\\> \\*\\*b\\*\\*"


def _company_row(name: str, is_target: bool, runs: int, mentioned: int) -> dict[str, object]:
    return {
        "name": name,
        "is_target": is_target,
        "runs": runs,
        "mentioned_runs": mentioned,
        "mention_rate": mentioned / runs,
        "mention_rate_ci": [0.1, 0.7],
        "share_of_voice": 0.25,
        "average_position": 1.0,
        "cited_runs": 0,
    }


def test_org_report_shows_the_evidence_sections_with_hostile_names_inert(
    app_db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """By segment (name and question count from the database, fit from the ICP build), citations by
    category, untracked companies and search queries: every model- or file-written text inert."""
    assert main(["org", "load", str(EXAMPLE_ORG)]) == 0
    with session_scope(app_db) as session:
        segment = add_built_segment(session, name=HOSTILE_TEXT, fit_score=0.9)
        for i, active in enumerate([True, True, False]):
            session.add(
                Question(
                    org_id="acme",
                    key=f"s-{i}",
                    text=f"generated {i}",
                    source="segment",
                    segment_id=segment.id,
                    active=active,
                    status="active" if active else "retired",
                )
            )
        cycle = Cycle(org_id="acme", status="succeeded")
        session.add(cycle)
        session.flush()
        categories = [
            {"category": c, "citations": 0, "runs": 0, "retrieved_citations": 0, "retrieved_runs": 0}
            for c in ("owned", "competitor", "ugc", "reference", "news_blog", "other")
        ]
        categories.insert(
            2,
            {"category": "review", "citations": 7, "runs": 4, "retrieved_citations": 3, "retrieved_runs": 2},
        )
        block = {
            "runs": 10,
            "runs_with_searches": 5,
            "queries": 8,
            "distinct_queries": 6,
            "queries_per_searching_run": 1.6,
            "top": [{"query": HOSTILE_TEXT, "runs": 4, "issued": 5, "example_run_ids": [1]}],
        }
        payload = {
            "org_id": "acme",
            "companies": [_company_row("Acme", True, 10, 4)],
            "runs": {"completed": 10, "failed": 0, "total": 10},
            "by_segment": {
                str(segment.id): [_company_row("Acme", True, 5, 2), _company_row("Globex", False, 5, 5)],
                "999999": [_company_row("Acme", True, 3, 0)],  # a segment since deleted
            },
            "citations": {"total": 7, "domains": [], "by_category": categories},
            "untracked_companies": [
                {
                    "name": HOSTILE_TEXT,
                    "name_key": "evil",
                    "runs": 6,
                    "mentions": 9,
                    "claims": 0,
                    "sources": ["text"],
                    "example_runs": ["k"],
                }
            ],
            "search_queries": {**block, "by_model": {"offline/synthetic": block}},
        }
        session.add(
            AnalyticsSnapshot(org_id="acme", cycle_id=cycle.id, payload=payload, analytics_version="t")
        )
    capsys.readouterr()
    assert main(["org", "report", "acme"]) == 0
    out = capsys.readouterr().out
    assert not any(ch in out for ch in "\x1b\x07\u202e") and "pwned" not in out
    lines = out.splitlines()
    # Segment name, 2 active questions (the retired one not counted), runs, rate [CI] (n/N), SoV, gap.
    assert f"| {HOSTILE_SHOWN} | 2 | 5 | 40% [10%, 70%] (2/5) | 25% | 0.50 |" in lines
    assert "| segment 999999 (removed) | – | 3 | 0% [10%, 70%] (0/3) | 25% | – |" in lines
    assert "| review | 7 | 4 | 3 | 2 |" in lines and "| owned | 0 | 0 | 0 | 0 |" in lines
    assert f"| {HOSTILE_SHOWN} | 6 | 9 |" in lines  # untracked: runs, mentions
    assert "5 of 10 runs searched the web: 8 queries, 6 distinct." in lines
    assert f"| {HOSTILE_SHOWN} | 4 | 5 |" in lines  # top query: runs, issued
    assert f"| offline/synthetic | 10 | 5 | 8 | {HOSTILE_SHOWN} (4) |" in lines
    # Every table row has exactly its columns: no name split a row or started a new one.
    for line in lines:
        if line.startswith("| "):
            assert line.replace("\\|", "").count("|") in {4, 6, 7, 9}, line
    # --json is the payload as stored, names exactly as written.
    assert main(["org", "report", "acme", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["untracked_companies"][0]["name"] == HOSTILE_TEXT


# --- Validation and columns agree (PostgreSQL) --------------------------------------------------------


def test_every_field_at_its_maximum_loads_on_postgresql(postgres_databases: Callable[[], str]) -> None:
    """Each string at the longest length validation allows fits its column (a 121-200 character model
    name used to pass validation and fail here with DataError)."""
    url = postgres_databases()
    upgrade(url)
    data = yaml.safe_load(_example())
    data["id"] = "o" * 64
    data["name"] = "N" * 200
    data["target"] = {"name": "T" * 200, "aliases": ["A" * 200], "domains": ["d" * 63 + ".io"]}
    data["competitors"] = [{"name": "C" * 200, "aliases": ["B" * 200], "domains": ["e" * 63 + ".com"]}]
    data["models"] = [{"provider": "anthropic", "model": "m" * 120, "samples": 10}]
    data["grader"] = {"provider": "anthropic", "model": "g" * 120}
    data["questions"] = [{"id": "q" * 48, "text": "W" * 1999 + "?"}, "X" * 2000]
    data["schedule"] = "0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19 * * * *"
    spec = parse_org_text(yaml.safe_dump(data))
    with session_scope(url) as session:
        upsert_org(session, spec)
    with session_scope(url) as session:
        assert session.get(Org, "o" * 64).grader_model == "g" * 120
        assert {c.name for c in session.query(Company)} == {"T" * 200, "C" * 200}
        assert session.query(OrgModel).one().slug == "anthropic-" + "m" * 120

    site = yaml.safe_load(EXAMPLE_SITE.read_text())
    site["id"] = "s" * 48
    site["name"] = "S" * 200
    site["segments"] = [{"id": "g" * 48, "name": "G" * 120, "description": "D" * 2000}]
    with session_scope(url) as session:
        upsert_site(session, parse_site_text(yaml.safe_dump(site)))
    with session_scope(url) as session:
        assert session.query(Segment).one().name == "G" * 120


# --- Prompts ---------------------------------------------------------------------------------------


def test_segment_prompts_stay_within_the_prompt_limit() -> None:
    """A site with 1,000 long pages (as stored; files allow 100) used to send a 4 MB prompt."""
    pages = [{"url": f"https://acme.io/{i}", "text": "word " * 10_000} for i in range(1000)]
    site = Site(id="acme", name="Acme", url="https://acme.io", description="D" * 5000, pages=pages)
    segments = [Segment(name="N" * 200, description="D" * 2000) for _ in range(56)]
    prompts = [
        segments_prompt(site, segments),
        icp_prompt(site, segments[0]),
        comparison_prompt(site, [(f"s{i}", "N" * 200, {"profile": "P" * 50_000}) for i in range(56)], []),
    ]
    for prompt in prompts:
        assert len(prompt) <= MAX_PROMPT_CHARS
        assert "Page https://acme.io/0:" in prompt
    assert "more pages left out: the prompt limit is reached" in prompts[0]
    assert prompts[1].endswith("what to change.")


def test_site_build_refuses_a_model_name_longer_than_its_column(
    app_db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["site", "build", "acme", "--model", "m" * 121])
    assert exit_info.value.code == 2
    assert "argument --model: must be 1 to 120 characters, not 121" in capsys.readouterr().err
