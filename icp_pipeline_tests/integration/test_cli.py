"""The `icp-pipeline` console script, as a user runs it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from icp_pipeline.cli.main import main
from icp_pipeline.db.models import ModelCall, Org, Question
from icp_pipeline.db.session import upgrade
from icp_pipeline_tests.conftest import EXAMPLE_ORG
from icp_pipeline_tests.support.pipeline import count


@pytest.fixture
def migrated(icp_env: Path) -> str:
    url = f"sqlite:///{icp_env / 'app.db'}"
    upgrade(url)
    return url


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda d: d["models"][0].update(provider="openia"), "models[0].provider: unknown provider 'openia'"),
        (lambda d: d.update(locations=["US", "XX"]), "locations: Value error, item 1: 'XX' is not an ISO"),
        (
            lambda d: d["questions"].append(d["questions"][0].upper()),
            "questions: Value error, item 5: duplicate question",
        ),
        (lambda d: d.pop("target"), "target: missing required field"),
    ],
)
def test_bad_org_file_names_the_field_and_writes_nothing(
    migrated, tmp_path, capsys, change, expected
) -> None:
    data = yaml.safe_load(EXAMPLE_ORG.read_text())
    change(data)
    path = tmp_path / "org.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["org", "load", str(path)]) == 2
    assert expected.replace("Value error, ", "") in capsys.readouterr().err
    assert count(migrated, Org) == 0


def test_not_yaml_is_reported(migrated, tmp_path, capsys) -> None:
    path = tmp_path / "org.yaml"
    path.write_text("id: [unclosed\n")
    assert main(["org", "load", str(path)]) == 2
    assert "not valid YAML" in capsys.readouterr().err


def test_loading_twice_is_idempotent(migrated, capsys) -> None:
    assert main(["org", "load", str(EXAMPLE_ORG)]) == 0
    assert "16 created" in capsys.readouterr().out
    assert main(["org", "load", str(EXAMPLE_ORG)]) == 0
    assert "0 created, 0 updated, 0 deactivated" in capsys.readouterr().out
    assert count(migrated, Question) == 5


def test_run_before_migrating_says_what_to_do(icp_env, capsys) -> None:
    assert main(["org", "run", "acme"]) == 1
    assert "icp-pipeline db upgrade" in capsys.readouterr().err


def test_demo_runs_the_example_cycle_and_report_prints_json(icp_env: Path) -> None:
    """The README's main command, in a fresh home, as a subprocess."""
    env = {**os.environ, "ICP_HOME": str(icp_env)}
    env.pop("DAGSTER_HOME")  # the CLI creates the embedded instance under ICP_HOME
    demo = subprocess.run(
        [sys.executable, "-m", "icp_pipeline.cli.main", "demo"],
        env=env,
        capture_output=True,
        text=True,
        timeout=450,  # 135 question runs: the example asks 3 samples
    )
    assert demo.returncode == 0, demo.stderr[-2000:]
    # The example asks each question x model x location 3 times: 135 question runs.
    assert "cycle 1 of acme: succeeded; 135 completed, 0 failed of 135" in demo.stdout
    assert "| Acme | yes | 135 |" in demo.stdout
    assert "Synthetic data from the offline provider" in demo.stdout
    assert "135/135" in demo.stderr  # the progress bar
    assert (icp_env / "dagster_home" / "dagster.yaml").exists()
    assert (icp_env / "outbox" / "acme" / "cycle-1.json").exists()
    # Where the analytics went, and what to do next (printed once, after the site's ICPs).
    assert f"analytics of cycle 1 written to {icp_env / 'outbox' / 'acme' / 'cycle-1.json'}" in demo.stdout
    assert demo.stdout.count("next:") == 1
    assert demo.stdout.index("next:") > demo.stdout.index("site acme:")
    assert "icp-pipeline org report acme" in demo.stdout
    assert f"DAGSTER_HOME={icp_env / 'dagster_home'} ICP_HOME={icp_env} dg dev" in demo.stdout

    report = subprocess.run(
        [sys.executable, "-m", "icp_pipeline.cli.main", "org", "report", "acme", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert report.returncode == 0
    payload = json.loads(report.stdout)
    assert payload["runs"] == {"total": 135, "completed": 135, "failed": 0}
    assert payload == json.loads((icp_env / "outbox" / "acme" / "cycle-1.json").read_text())

    # A second demo reports the example cycle; it never buys a second one.
    again = subprocess.run(
        [sys.executable, "-m", "icp_pipeline.cli.main", "demo", "--no-progress"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 0, again.stderr[-2000:]
    assert "cycle 1 of acme already ran; showing its analytics" in again.stdout
    assert "analytics of cycle 1 written to" in again.stdout and "next:" in again.stdout
    assert "| Acme | yes | 135 |" in again.stdout
    assert not (icp_env / "outbox" / "acme" / "cycle-2.json").exists()
    db_url = f"sqlite:///{icp_env / 'app.db'}"
    assert count(db_url, ModelCall, ModelCall.purpose == "answer") == 135


def test_bad_site_file_names_the_field_and_writes_nothing(migrated, tmp_path, capsys) -> None:
    from icp_pipeline.db.models import Site

    data = yaml.safe_load((EXAMPLE_ORG.parent / "acme_site.yaml").read_text())
    data["url"] = "acme.io"
    data["segments"].append(dict(data["segments"][0]))
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["site", "load", str(path)]) == 2
    err = capsys.readouterr().err
    assert "invalid site file" in err and "url: String should match pattern" in err
    assert count(migrated, Site) == 0
    data["url"] = "https://acme.io"
    path.write_text(yaml.safe_dump(data))
    assert main(["site", "load", str(path)]) == 2
    assert "duplicate segment id 'data-platform-teams'" in capsys.readouterr().err


def test_org_keys_lists_partitions_and_survives_a_closed_pipe(migrated, icp_env: Path) -> None:
    assert main(["org", "load", str(EXAMPLE_ORG)]) == 0
    env = {**os.environ, "ICP_HOME": str(icp_env)}
    out = subprocess.run(
        f"set -o pipefail; {sys.executable} -m icp_pipeline.cli.main org keys acme | head -n 1",
        shell=True,
        executable="/bin/bash",
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("\n") == 1 and out.stdout.startswith("acme|q-")
    assert "BrokenPipe" not in out.stderr


def test_org_keys_failed_lists_the_failed_partitions_of_the_latest_cycle(migrated, capsys) -> None:
    from icp_pipeline.db.session import session_scope
    from icp_pipeline.visibility.cycles import open_cycle, set_item_status

    assert main(["org", "load", str(EXAMPLE_ORG)]) == 0
    capsys.readouterr()
    assert main(["org", "keys", "acme", "--failed"]) == 0
    assert capsys.readouterr().out == ""  # no cycle yet: nothing failed
    with session_scope(migrated) as session:
        cycle, _ = open_cycle(session, "acme")
        items = cycle.items
        for item in items[:2]:
            set_item_status(session, item, "failed", "ai_answer", "provider down")
        set_item_status(session, items[2], "succeeded")
        expected = sorted(item.partition_key for item in items[:2])
    assert main(["org", "keys", "acme", "--failed"]) == 0
    assert capsys.readouterr().out.split() == expected
    assert main(["org", "keys", "acme"]) == 0
    # Every sample's key: the example asks 3 times, KEY, KEY|s2 and KEY|s3.
    keys = capsys.readouterr().out.split()
    assert len(keys) == len(set(keys)) == 135
    assert sum(k.endswith("|s2") for k in keys) == sum(k.endswith("|s3") for k in keys) == 45
    assert {f"{k}|s2" for k in keys if k.count("|") == 3} == {k for k in keys if k.endswith("|s2")}
