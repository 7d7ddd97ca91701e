"""The `dg` CLI finds the code location from pyproject.toml's [tool.dg] (what the README's dg commands need)."""

import json
import os
import subprocess
from pathlib import Path

from icp_pipeline.definitions import defs

REPO = Path(__file__).parents[2]


def test_dg_list_defs_lists_the_code_location_of_the_project(tmp_path: Path) -> None:
    (tmp_path / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    listed = subprocess.run(
        ["dg", "list", "defs", "--json"],
        cwd=REPO,
        env={**os.environ, "DAGSTER_HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    found = json.loads(listed.stdout)
    assets = {key.to_user_string() for key in defs.resolve_asset_graph().get_all_asset_keys()}
    assert {a["asset_key"] for a in found["assets"]} == assets
    assert {"ai_answer", "org_analytics", "analytics_push"} <= assets
    assert {j["name"] for j in found["jobs"]} == {j.name for j in defs.jobs}
    assert {s["name"] for s in found["sensors"]} == {s.name for s in defs.sensors}
    assert {s["name"] for s in found["schedules"]} == {s.name for s in defs.schedules}
