"""`icp-pipeline site report`, `site build` input errors, the ICP metadata and lineage, as a user sees them."""

import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from icp_pipeline.cli.main import main
from icp_pipeline.db.models import ModelCall, SegmentResult
from icp_pipeline.db.session import upgrade
from icp_pipeline_tests.conftest import write_instance_yaml
from icp_pipeline_tests.support.pipeline import count

EXAMPLE_SITE = Path(__file__).parents[2] / "icp_pipeline" / "examples" / "acme_site.yaml"
IMPORTED = "data-platform-teams"
OFFLINE = ["--provider", "offline", "--model", "synthetic", "--no-progress"]


@pytest.fixture
def loaded_site(icp_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> str:
    url = f"sqlite:///{icp_env / 'app.db'}"
    monkeypatch.setenv("ICP_DATABASE_URL", url)
    write_instance_yaml(icp_env / "dagster_home")
    upgrade(url)
    assert main(["site", "load", str(EXAMPLE_SITE)]) == 0
    capsys.readouterr()
    return url


def _error_line(capsys: pytest.CaptureFixture) -> str:
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err  # one line, no traceback
    return lines[0]


def test_unknown_segment_fails_before_anything_runs(loaded_site, capsys) -> None:
    assert main(["site", "build", "acme", "--segment", "bad", *OFFLINE]) == 1
    line = _error_line(capsys)
    assert line.startswith("error: unknown segment 'bad' of site 'acme'; valid ids: data-platform-teams")
    assert "acme|" not in line  # user-facing ids, not partition keys
    assert "segments succeeded" not in line
    assert count(loaded_site, ModelCall) == 0  # discovery did not run

    assert main(["site", "report", "nope"]) == 1
    assert _error_line(capsys) == (
        "error: unknown site 'nope'; valid ids: acme; load a site with `icp-pipeline site load FILE`"
    )


def test_build_help_shows_the_defaults(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["site", "build", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    for default in ("(default: openai)", "(default: gpt-4o-mini)", "(default: 3)", "(default: 0.0)"):
        assert default in shown


def test_report_shows_errors_then_profiles_ranking_and_metadata(loaded_site, monkeypatch, capsys) -> None:
    # A failing model: discovery fails, the imported segment's build fails, no summary.
    # As a command of its own: the fault is read from the environment when the definitions load, and
    # this process may have loaded them already.
    build = subprocess.run(
        [sys.executable, "-m", "icp_pipeline.cli.main", "site", "build", "acme", "--segment", IMPORTED]
        + [*OFFLINE[:2], "--model", "broken", "--no-progress"],
        env={**os.environ, "ICP_OFFLINE_FAIL_MODELS": "broken"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 1, build.stdout + build.stderr
    assert main(["site", "report", "acme"]) == 0
    out = capsys.readouterr().out
    assert f"## Data platform teams [{IMPORTED}, imported]" in out
    assert "Status: error: offline/broken: the offline provider is configured to fail this model" in out
    assert "The site summary failed: no segment succeeded" in out

    assert main(["site", "build", "acme", *OFFLINE]) == 0
    capsys.readouterr()

    assert main(["site", "report", "acme", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["site"] == {"id": "acme", "name": "Acme Analytics", "url": "https://acme.io"}
    ids = [s["segment_id"] for s in report["segments"]]
    assert ids[0] == IMPORTED and len(ids) == 5  # the imported one, then the 4 the offline model made
    assert {s["source"] for s in report["segments"][1:]} == {"generated"}
    assert {s["status"] for s in report["segments"]} == {"success"}
    first = report["segments"][0]
    assert (first["source"], first["error"], first["model"]) == ("imported", None, "synthetic")
    assert first["profile"]["segment_name"] == "Data platform teams"
    assert first["fit_score"] == first["analysis"]["fit_score"]
    ranking = report["summary"]["ranking"]
    assert report["summary"]["status"] == "success"
    assert sorted(r["segment_id"] for r in ranking) == sorted(ids)
    assert [r["fit_score"] for r in ranking] == sorted((r["fit_score"] for r in ranking), reverse=True)

    second = report["segments"][1]
    assert main(["site", "report", "acme", "--segment", second["segment_id"]]) == 0
    out = capsys.readouterr().out
    assert f"## {second['name']} [{second['segment_id']}, generated]" in out
    assert "## Data platform teams" not in out  # only the segment asked for ...
    assert "Pains: " in out and "Buying triggers: " in out and "Research channels: " in out
    assert f"1. {ranking[0]['name']} [{ranking[0]['segment_id']}]" in out  # ... and the whole ranking

    assert main(["site", "report", "acme", "--segment", "bad"]) == 1
    line = _error_line(capsys)
    assert line == f"error: unknown segment 'bad' of site 'acme'; valid ids: {', '.join(ids)}"

    # The asset's metadata: the readable profile as plain text and as a table of fields.
    instance = dg.DagsterInstance.get()
    event = instance.get_latest_materialization_event(dg.AssetKey("segment_icp"))
    assert event is not None
    metadata = event.asset_materialization.metadata
    assert isinstance(metadata["profile"], dg.TextMetadataValue)
    profile = metadata["profile"].value
    assert profile.startswith("Segment: ") and "\nPains: " in profile and "\nFit score: 0." in profile
    assert isinstance(metadata["profile_fields"], dg.TableMetadataValue)
    fields = {r.data["field"]: r.data["value"] for r in metadata["profile_fields"].records}
    assert fields["Segment"] == profile.splitlines()[0].removeprefix("Segment: ")
    assert count(loaded_site, SegmentResult, SegmentResult.success) == 5


def test_segment_icp_depends_on_site_segments(sqlite_app) -> None:
    from icp_pipeline_tests.support.pipeline import pipeline_defs

    graph = pipeline_defs(sqlite_app).resolve_asset_graph()
    parents = graph.get(dg.AssetKey("segment_icp")).parent_keys
    assert parents == {dg.AssetKey("site_segments")}
    assert dg.AssetKey("segment_icp") in graph.get(dg.AssetKey("site_icp_summary")).parent_keys
