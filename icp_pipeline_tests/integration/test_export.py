"""`icp-pipeline org export`: one cycle of a small org on the offline provider, exported as Parquet and
CSV; the published rates are rebuilt from the exported rows alone and match the payload exactly."""

import csv
import json
import os
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
import yaml

from icp_pipeline.cli.main import main
from icp_pipeline.cli.runner import run_cycle
from icp_pipeline.db.models import AnalyticsSnapshot, Org, QuestionRun
from icp_pipeline.db.session import session_scope, upgrade
from icp_pipeline.visibility import export, stats
from icp_pipeline.visibility.cycles import open_cycle
from icp_pipeline.visibility.org_file import parse_org_text, upsert_org
from icp_pipeline_tests.support.pipeline import pipeline_defs
from icp_pipeline_tests.support.segment_rows import add_built_segment

FORMULA_QUESTION = '=HYPERLINK("http://evil.example","click") which analytics tool is best?'
BI_ORG = {
    "id": "bi",
    "name": "BI Test",
    "target": {"name": "Acme", "aliases": ["Acme Analytics"], "domains": ["acme.io"]},
    "competitors": [
        {"name": "Globex", "aliases": ["Globex Corp"], "domains": ["globex.com"]},
        {"name": "@Initech", "aliases": ["Initech"], "domains": ["initech.com"]},
    ],
    "models": [
        {"provider": "openai", "model": "gpt-4o-mini"},
        {"provider": "anthropic", "model": "claude-haiku-4-5"},
    ],
    "locations": ["US"],
    "questions": [
        "What is the best product analytics tool for a startup?",
        "Which analytics platform has the best pricing for small teams?",
        FORMULA_QUESTION,
    ],
    "min_runs": 3,
}


@pytest.fixture
def exported(sqlite_app: str, tmp_path: Path) -> dict[str, Any]:
    """One cycle of BI_ORG (2 models x 3 questions x 1 location = 6 runs); where to export it."""
    with session_scope(sqlite_app) as session:
        upsert_org(session, parse_org_text(yaml.safe_dump(BI_ORG)))
    outcome = run_cycle("bi", workers=3, progress=False, defs=pipeline_defs(sqlite_app))
    assert (outcome.status, outcome.completed, outcome.failed) == ("succeeded", 6, 0)
    with session_scope(sqlite_app) as session:
        payload = session.scalars(
            sa.select(AnalyticsSnapshot.payload).where(AnalyticsSnapshot.org_id == "bi")
        ).one()
    return {
        "db": sqlite_app,
        "cycle_id": outcome.cycle_id,
        "payload": payload,
        "parquet": tmp_path / "parquet",
        "csv": tmp_path / "csv",
    }


def parquet_rows(folder: Path, table: str) -> list[dict[str, Any]]:
    return pq.read_table(folder / f"{table}.parquet").to_pylist()


def csv_rows(folder: Path, table: str) -> list[dict[str, Any]]:
    """The CSV rows typed by schema.json alone, text cells with the formula escape undone."""
    document = json.loads((folder / "schema.json").read_text(encoding="utf-8"))
    types = {c["name"]: c["type"] for t in document["tables"] if t["name"] == table for c in t["columns"]}

    def typed(name: str, cell: str) -> Any:
        kind = types[name]
        if kind == "string":
            return cell[1:] if cell.startswith("'") else cell
        if cell == "":
            return None
        if kind == "int64":
            return int(cell)
        if kind == "double":
            return float(cell)
        if kind == "bool":
            return {"true": True, "false": False}[cell]
        assert kind.startswith("timestamp"), kind
        return datetime.fromisoformat(cell)

    with (folder / f"{table}.csv").open(encoding="utf-8", newline="") as stream:
        reader = csv.DictReader(stream)
        assert reader.fieldnames == list(types)
        return [{name: typed(name, cell) for name, cell in row.items()} for row in reader]


def rebuilt_rates(runs: list[dict], metrics: list[dict], companies: list[dict], scope: str) -> dict:
    """The payload's company rows recomputed from exported rows alone: the analytics count the runs with
    in_latest_analytics, the active companies in company_id order, and a run's per-company flags."""
    counted = [r for r in runs if r["in_latest_analytics"] and r["status"] == "completed"]
    counted_ids = {r["run_id"] for r in counted}
    key_of = {r["run_id"]: (None if scope == "overall" else r[scope]) for r in counted}
    active = sorted((c for c in companies if c["active"]), key=lambda c: c["company_id"])
    mentioned: dict[tuple, int] = defaultdict(int)
    cited: dict[tuple, int] = defaultdict(int)
    for m in metrics:
        if m["run_id"] not in counted_ids:
            continue
        group = key_of[m["run_id"]]
        mentioned[(group, m["company_id"])] += bool(m["mentioned"] and m["position"] is not None)
        cited[(group, m["company_id"])] += bool(m["cited"])
    runs_in: dict[Any, int] = defaultdict(int)
    for run_id in counted_ids:
        runs_in[key_of[run_id]] += 1
    rebuilt = {}
    for group, n in runs_in.items():
        total = sum(mentioned[(group, c["company_id"])] for c in active)
        rows = []
        for c in active:
            m, k = mentioned[(group, c["company_id"])], cited[(group, c["company_id"])]
            rows.append(
                {
                    "name": c["name"],
                    "runs": n,
                    "mentioned_runs": m,
                    "mention_rate": round(m / n, 6),
                    "mention_rate_ci": stats.wilson_interval(m, n),
                    "cited_runs": k,
                    "cited_rate": round(k / n, 6),
                    "cited_rate_ci": stats.wilson_interval(k, n),
                    "share_of_voice": round(m / total, 6) if total else None,
                }
            )
        rebuilt[group] = rows
    return rebuilt


FIELDS = (
    "name",
    "runs",
    "mentioned_runs",
    "mention_rate",
    "mention_rate_ci",
    "cited_runs",
    "cited_rate",
    "cited_rate_ci",
    "share_of_voice",
)


def test_export_rebuilds_the_published_rates_in_both_formats(exported, capsys, monkeypatch) -> None:
    payload, cycle_id = exported["payload"], exported["cycle_id"]
    monkeypatch.setattr(export, "BATCH_ROWS", 4)  # 6 runs: streamed and written in two batches
    for fmt in ("parquet", "csv"):
        code = main(["org", "export", "bi", "--format", fmt, "--out", str(exported[fmt])])
        out = capsys.readouterr().out
        assert code == 0
        assert f"org bi: exported cycles {cycle_id} as {fmt}" in out
        assert f"runs.{fmt}: 6 rows" in out
        assert not list(exported[fmt].glob(".*.tmp"))  # every temporary file was renamed into place
        umask = os.umask(0)
        os.umask(umask)
        assert (exported[fmt] / f"runs.{fmt}").stat().st_mode & 0o777 == 0o666 & ~umask

    folder = exported["parquet"]
    runs = parquet_rows(folder, "runs")
    metrics = parquet_rows(folder, "run_company_metrics")
    companies = parquet_rows(folder, "companies")
    mentions = parquet_rows(folder, "mentions")
    rates = parquet_rows(folder, "company_rates")

    assert len(runs) == 6 and len({r["run_id"] for r in runs}) == 6
    assert {r["org_id"] for r in runs} == {"bi"}  # the example org loaded next to it stays out
    assert all(r["in_latest_analytics"] for r in runs)
    # The mentions table and the per-run flags agree on who was named where.
    assert {(m["run_id"], m["company_id"]) for m in mentions} == {
        (m["run_id"], m["company_id"]) for m in metrics if m["mentioned"]
    }
    assert mentions, "the offline answers name some companies"

    # The rates rebuilt from the rows equal the payload's, overall and per model, exactly.
    overall = rebuilt_rates(runs, metrics, companies, "overall")[None]
    assert [{f: row[f] for f in FIELDS} for row in payload["companies"]] == overall
    by_model = rebuilt_rates(runs, metrics, companies, "model_key")
    assert (
        sorted(by_model)
        == sorted(payload["by_model"])
        == [
            "anthropic/claude-haiku-4-5",
            "openai/gpt-4o-mini",
        ]
    )
    for key, rows in payload["by_model"].items():
        assert [{f: row[f] for f in FIELDS} for row in rows] == by_model[key]
    # Not a trivial payload: rates strictly between 0 and 1, and companies that differ, so a row given
    # to the wrong company or model would show.
    assert any(0 < row["mention_rate"] < 1 for rows in payload["by_model"].values() for row in rows)
    assert len({(row["mentioned_runs"], row["cited_runs"]) for row in payload["companies"]}) > 1

    # company_rates is the payload flattened, with the share-of-voice denominator alongside.
    overall_rates = [r for r in rates if r["scope"] == "overall"]
    assert [r["company_name"] for r in overall_rates] == [row["name"] for row in payload["companies"]]
    for rate, row in zip(overall_rates, payload["companies"], strict=True):
        assert rate["cycle_id"] == cycle_id and rate["scope_key"] is None
        assert (rate["runs"], rate["mentioned_runs"], rate["cited_runs"]) == (
            row["runs"],
            row["mentioned_runs"],
            row["cited_runs"],
        )
        assert [rate["mention_rate_ci_low"], rate["mention_rate_ci_high"]] == row["mention_rate_ci"]
        assert [rate["share_of_voice_ci_low"], rate["share_of_voice_ci_high"]] == row["share_of_voice_ci"]
        assert round(rate["mentioned_runs"] / rate["share_of_voice_denominator"], 6) == row["share_of_voice"]
    assert {r["scope"] for r in rates} == {"overall", "by_model", "by_location", "by_question"}
    by_question = [r for r in rates if r["scope"] == "by_question"]
    assert len(by_question) == 3 * 3 and all(r["stability_combinations"] == 2 for r in by_question)

    # The evidence sections are the payload's, flattened (BI_ORG has no `icp:`, so no segment rows).
    assert parquet_rows(folder, "segment_visibility") == []
    assert [
        (
            r["cycle_id"],
            r["category"],
            r["citations"],
            r["runs"],
            r["retrieved_citations"],
            r["retrieved_runs"],
        )
        for r in parquet_rows(folder, "citation_categories")
    ] == [
        (cycle_id, c["category"], c["citations"], c["runs"], c["retrieved_citations"], c["retrieved_runs"])
        for c in payload["citations"]["by_category"]
    ]
    assert len(payload["citations"]["by_category"]) >= 7
    assert [
        (r["rank"], r["name"], r["name_key"], r["runs"], r["mentions"], json.loads(r["example_runs"]))
        for r in parquet_rows(folder, "untracked_companies")
    ] == [
        (i, u["name"], u["name_key"], u["runs"], u["mentions"], u["example_runs"])
        for i, u in enumerate(payload["untracked_companies"], start=1)
    ]
    searches = payload["search_queries"]
    blocks = [
        ("overall", None, searches),
        *(("by_model", m, b) for m, b in sorted(searches["by_model"].items())),
    ]
    assert [
        (r["scope"], r["model_key"], r["runs"], r["runs_with_searches"], r["queries"])
        for r in parquet_rows(folder, "search_summary")
    ] == [(s, m, b["runs"], b["runs_with_searches"], b["queries"]) for s, m, b in blocks]
    assert [
        (r["scope"], r["model_key"], r["rank"], r["query"], r["runs"], r["issued"])
        for r in parquet_rows(folder, "search_queries")
    ] == [
        (s, m, i, q["query"], q["runs"], q["issued"])
        for s, m, b in blocks
        for i, q in enumerate(b["top"], start=1)
    ]

    # Both formats hold the same rows, value for value (CSV typed by schema.json).
    document = json.loads((exported["csv"] / "schema.json").read_text(encoding="utf-8"))
    assert document["csv"]["formula_escape"].startswith("a text cell starting with =")
    for table in document["tables"]:
        expected = parquet_rows(folder, table["name"])
        text_columns = [c["name"] for c in table["columns"] if c["type"] == "string"]
        for row in expected:  # CSV cannot tell a null text cell from an empty one
            row.update({name: "" for name in text_columns if row[name] is None})
        assert csv_rows(exported["csv"], table["name"]) == expected, table["name"]
        assert table["rows"] == len(expected)

    # --cycle exports that cycle only; a second export replaces the files in place.
    one = exported["csv"].parent / "one"
    for _ in range(2):
        args = ["org", "export", "bi", "--cycle", str(cycle_id), "--format", "csv", "--out", str(one)]
        assert main(args) == 0
    assert len(list(one.iterdir())) == len(export.TABLES) + 1 == 14  # and schema.json, no temporary file
    assert json.loads((one / "schema.json").read_text())["cycle_ids"] == [cycle_id]
    assert csv_rows(one, "runs") == csv_rows(exported["csv"], "runs")

    # Untrusted text: the formula question and the '@' company are quoted in CSV, exact in Parquet.
    assert FORMULA_QUESTION in {r["question_text"] for r in runs}
    assert "@Initech" in {c["name"] for c in companies}
    with (exported["csv"] / "runs.csv").open(encoding="utf-8", newline="") as stream:
        raw_questions = {row["question_text"] for row in csv.DictReader(stream)}
    assert "'" + FORMULA_QUESTION in raw_questions and FORMULA_QUESTION not in raw_questions
    with (exported["csv"] / "companies.csv").open(encoding="utf-8", newline="") as stream:
        raw_names = [row["name"] for row in csv.DictReader(stream)]
    assert "'@Initech" in raw_names
    for path in exported["csv"].glob("*.csv"):
        with path.open(encoding="utf-8", newline="") as stream:
            for row in csv.reader(stream):
                assert not any(cell.startswith(("=", "+", "@", "\t", "\r")) for cell in row), path.name


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def app_db(request, icp_env: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A migrated app database, SQLite or PostgreSQL (where the export reads in one REPEATABLE READ
    transaction through server-side cursors)."""
    if request.param == "sqlite":
        url = f"sqlite:///{icp_env / 'app.db'}"
    else:
        url = request.getfixturevalue("postgres_databases")()
    monkeypatch.setenv("ICP_DATABASE_URL", url)
    upgrade(url)
    return url


def test_export_errors_name_the_problem_and_an_org_without_cycles_exports_empty_tables(
    app_db: str, capsys, tmp_path: Path
) -> None:
    with session_scope(app_db) as session:
        upsert_org(session, parse_org_text(yaml.safe_dump(BI_ORG)))
    assert main(["org", "export", "nope", "--out", str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err
    assert "unknown org 'nope'" in err and "Traceback" not in err
    assert main(["org", "export", "bi", "--cycle", "999", "--out", str(tmp_path / "x")]) == 1
    assert "org 'bi' has no cycle 999" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()

    a_file = tmp_path / "file"
    a_file.write_text("keep")
    assert main(["org", "export", "bi", "--out", str(a_file)]) == 1
    assert "is not a folder" in capsys.readouterr().err
    assert a_file.read_text() == "keep"

    for fmt in ("parquet", "csv"):
        out = tmp_path / fmt
        assert main(["org", "export", "bi", "--format", fmt, "--out", str(out)]) == 0
        assert "exported cycles none yet" in capsys.readouterr().out
        assert parquet_rows(out, "runs") == [] if fmt == "parquet" else csv_rows(out, "runs") == []
        companies = parquet_rows(out, "companies") if fmt == "parquet" else csv_rows(out, "companies")
        assert [c["name"] for c in companies] == ["Acme", "Globex", "@Initech"]

    # Two samples of one combination are two runs, each with its own partition key; a cycle without
    # analytics has no rates yet.
    with session_scope(app_db) as session:
        session.get(Org, "bi").samples = 2
        cycle, _created = open_cycle(session, "bi")
        first = cycle.items[0]
        samples = [
            i
            for i in cycle.items
            if (i.question_id, i.model_id, i.location_id)
            == (first.question_id, first.model_id, first.location_id)
        ]
        keys = [i.partition_key for i in sorted(samples, key=lambda i: i.sample_index)]
        for item in samples:
            session.add(
                QuestionRun(
                    cycle_item_id=item.id,
                    org_id="bi",
                    cycle_id=cycle.id,
                    partition_key=item.partition_key,
                    question_id=item.question_id,
                    model_id=item.model_id,
                    location_id=item.location_id,
                    sample_index=item.sample_index,
                    provider="openai",
                    requested_model="gpt-4o-mini",
                    answer_text="-1 +1 =2 answers stay data",
                )
            )
        cycle_id = cycle.id
    out = tmp_path / "samples"
    assert main(["org", "export", "bi", "--format", "csv", "--out", str(out)]) == 0
    assert f"exported cycles {cycle_id} as csv" in capsys.readouterr().out
    runs = csv_rows(out, "runs")
    assert keys[1] == f"{keys[0]}|s2"
    assert [(r["partition_key"], r["sample_index"]) for r in runs] == [(keys[0], 0), (keys[1], 1)]
    assert {r["answer_text"] for r in runs} == {"-1 +1 =2 answers stay data"}
    assert not any(r["in_latest_analytics"] for r in runs)
    assert [(c["cycle_id"], c["has_analytics"], c["items_total"]) for c in csv_rows(out, "cycles")] == [
        (cycle_id, False, 12)
    ]
    assert csv_rows(out, "company_rates") == []


# A segment name (site file or model), an untracked company and a search query (model output) that
# would run as a spreadsheet formula, drive a terminal or render as markup: exported as data.
HOSTILE = '=HYPERLINK("http://evil.example")|\x1b[2J <img src=x>\n**b**'


def test_export_writes_the_evidence_sections_with_hostile_text_as_data(app_db: str, tmp_path: Path) -> None:
    from icp_pipeline.db.models import Cycle, Question

    with session_scope(app_db) as session:
        upsert_org(session, parse_org_text(yaml.safe_dump(BI_ORG)))
        segment = add_built_segment(session, name=HOSTILE, fit_score=0.75)
        for i, status in enumerate(["active", "active", "retired"]):
            session.add(
                Question(
                    org_id="bi",
                    key=f"s-{i}",
                    text=f"generated {i}",
                    source="segment",
                    segment_id=segment.id,
                    active=status == "active",
                    status=status,
                )
            )
        cycle = Cycle(org_id="bi", status="succeeded")
        session.add(cycle)
        session.flush()
        target = {
            "name": "Acme",
            "is_target": True,
            "runs": 4,
            "mentioned_runs": 1,
            "mention_rate": 0.25,
            "mention_rate_ci": [0.05, 0.7],
            "share_of_voice": 0.5,
            "share_of_voice_ci": [0.0, 1.0],
            "cited_runs": 0,
        }
        block = {
            "runs": 4,
            "runs_with_searches": 2,
            "queries": 3,
            "distinct_queries": 2,
            "queries_per_searching_run": 1.5,
            "top": [{"query": HOSTILE, "runs": 2, "issued": 2, "example_run_ids": [7, 9]}],
        }
        payload = {
            "org_id": "bi",
            "companies": [target],
            "by_segment": {str(segment.id): [target]},
            "citations": {
                "total": 0,
                "domains": [],
                "by_category": [
                    {
                        "category": None,
                        "citations": 1,
                        "runs": 1,
                        "retrieved_citations": 2,
                        "retrieved_runs": 1,
                    }
                ],
            },
            "untracked_companies": [
                {
                    "name": HOSTILE,
                    "name_key": "evil",
                    "runs": 3,
                    "mentions": 5,
                    "claims": 1,
                    "sources": ["claim", "text"],
                    "example_runs": ["bi|q|m|US"],
                }
            ],
            "search_queries": {**block, "by_model": {"openai/gpt-4o-mini": block}},
        }
        session.add(AnalyticsSnapshot(org_id="bi", cycle_id=cycle.id, payload=payload, analytics_version="t"))
        segment_id, cycle_id = segment.id, cycle.id
    for fmt in ("parquet", "csv"):
        assert main(["org", "export", "bi", "--format", fmt, "--out", str(tmp_path / fmt)]) == 0
    for fmt, read in (("parquet", parquet_rows), ("csv", csv_rows)):
        folder = tmp_path / fmt
        assert read(folder, "segment_visibility") == [
            {
                "org_id": "bi",
                "cycle_id": cycle_id,
                "segment_id": segment_id,
                "segment_key": "evil",
                "site_id": "shop",
                "segment_name": HOSTILE,
                "questions": 2,
                "runs": 4,
                "mentioned_runs": 1,
                "mention_rate": 0.25,
                "mention_rate_ci_low": 0.05,
                "mention_rate_ci_high": 0.7,
                "share_of_voice": 0.5,
                "share_of_voice_ci_low": 0.0,
                "share_of_voice_ci_high": 1.0,
                "fit_score": 0.75,
                "gap": 0.5,
            }
        ]
        rates = [r for r in read(folder, "company_rates") if r["scope"] == "by_segment"]
        assert [(r["scope_key"], r["company_name"], r["runs"]) for r in rates] == [
            (str(segment_id), "Acme", 4)
        ]
        assert [(r["category"], r["retrieved_citations"]) for r in read(folder, "citation_categories")] == [
            (None if fmt == "parquet" else "", 2)  # CSV cannot tell null text from empty
        ]
        untracked = read(folder, "untracked_companies")
        assert [(u["name"], u["runs"], u["mentions"], json.loads(u["sources"])) for u in untracked] == [
            (HOSTILE, 3, 5, ["claim", "text"])
        ]
        queries = read(folder, "search_queries")
        assert [
            (q["scope"], q["model_key"] or None, q["query"], json.loads(q["example_run_ids"]))
            for q in queries
        ] == [
            ("overall", None, HOSTILE, [7, 9]),
            ("by_model", "openai/gpt-4o-mini", HOSTILE, [7, 9]),
        ]
    # In the CSV files themselves the formula is quoted: no cell a spreadsheet would run.
    for table in ("segment_visibility", "untracked_companies", "search_queries"):
        with (tmp_path / "csv" / f"{table}.csv").open(encoding="utf-8", newline="") as stream:
            cells = [cell for row in csv.reader(stream) for cell in row]
        assert "'" + HOSTILE in cells and HOSTILE not in cells, table
