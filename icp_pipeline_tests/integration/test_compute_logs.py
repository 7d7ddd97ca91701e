"""FileComputeLogManager on a real instance: a run's stdout and stderr reach the files the UI reads
(its GraphQL `capturedLogs` and the `/logs` download), no `tail` or `watch_orphans.py` subprocess is
started, and Python's writes to stderr still reach the process's own stderr (the CLI's terminal)."""

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster import DagsterInstance
from dagster._core.storage.local_compute_log_manager import LocalComputeLogManager
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._core.workspace.load_target import EmptyWorkspaceTarget
from dagster_webserver.app import create_app_from_workspace_process_context
from starlette.testclient import TestClient

from icp_pipeline.cli.instance import write_embedded_instance_yaml
from icp_pipeline.instance.compute_logs import FileComputeLogManager

REPO_YAML = Path(__file__).parents[2] / "dagster.yaml"


def children_commands() -> list[str]:
    """The command lines of this process's live children, from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except OSError:
            continue
        if int(fields[1]) == os.getpid() and fields[0] != "Z":
            found.append(command)
    return found


seen_children: list[str] = []


@dg.asset
def chatty(context: dg.AssetExecutionContext) -> int:
    """Writes to stdout and stderr from Python, from the descriptors and from a subprocess, then
    looks at this process's children while the capture is on (the mirror's run for the whole run)."""
    print("stdout from print")
    print("stderr from print", file=sys.stderr)
    sys.stdout.flush()
    os.write(1, b"stdout from the descriptor\n")
    os.write(2, b"stderr from the descriptor\n")
    subprocess.run(
        ["sh", "-c", "echo stdout from a subprocess; echo stderr from a subprocess >&2"], check=True
    )
    context.log.warning("a warning from the step")
    time.sleep(0.3)  # the mirror's processes are started before the step: they would be up by now
    seen_children[:] = children_commands()
    return 1


def materialize(instance: DagsterInstance) -> tuple[list[str], dg.ExecuteInProcessResult]:
    seen_children.clear()
    # sys.stdout and sys.stderr on descriptors 1 and 2, as in a CLI or run worker: pytest's capture
    # gives them other descriptors (which the redirect would follow); it still captures 1 and 2.
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
    try:
        result = dg.materialize([chatty], instance=instance)
    finally:
        sys.stdout, sys.stderr = saved
    assert result.success
    (captured,) = [e for e in result.all_events if e.event_type_value == "LOGS_CAPTURED"]
    log_key = instance.compute_log_manager.build_log_key_for_run(
        result.run_id, captured.logs_captured_data.file_key
    )
    return log_key, result


def write_instance(home: Path, compute_logs: dict[str, object] | None = None) -> Path:
    """The embedded instance config as the CLI writes it, its compute_logs section replaced if given."""
    home.mkdir()
    write_embedded_instance_yaml(home)
    if compute_logs is not None:
        config = yaml.safe_load((home / "dagster.yaml").read_text())
        (home / "dagster.yaml").write_text(yaml.safe_dump({**config, "compute_logs": compute_logs}))
    return home


@pytest.fixture
def instance(tmp_path: Path) -> Iterator[DagsterInstance]:
    """The embedded instance exactly as the CLI writes it."""
    with DagsterInstance.from_config(str(write_instance(tmp_path / "dagster_home"))) as instance:
        yield instance


def test_the_instance_configs_use_it_with_dagsters_file_layout(
    instance: DagsterInstance, tmp_path: Path
) -> None:
    manager = instance.compute_log_manager
    assert type(manager) is FileComputeLogManager
    # Where Dagster's default LocalComputeLogManager keeps them: DAGSTER_HOME/storage.
    assert Path(manager.get_captured_local_path(["run", "compute_logs", "abc"], "out")) == (
        tmp_path / "dagster_home" / "storage" / "run" / "compute_logs" / "abc.out"
    )
    production = yaml.safe_load(REPO_YAML.read_text())["compute_logs"]
    assert production == {"module": "icp_pipeline.instance.compute_logs", "class": "FileComputeLogManager"}


def test_a_runs_output_is_captured_and_readable_where_the_ui_reads_it(
    instance: DagsterInstance, capfd: pytest.CaptureFixture[str]
) -> None:
    log_key, result = materialize(instance)
    manager = instance.compute_log_manager
    assert manager.is_capture_complete(log_key)
    data = manager.get_log_data(log_key)
    stdout, stderr = data.stdout.decode(), data.stderr.decode()
    for line in ("stdout from print", "stdout from the descriptor", "stdout from a subprocess"):
        assert line in stdout
    for line in ("stderr from print", "stderr from the descriptor", "stderr from a subprocess"):
        assert line in stderr
    assert "a warning from the step" in stderr and "STEP_SUCCESS" in stderr  # Dagster's console logger
    assert "stderr" not in stdout and "stdout" not in stderr

    # Python's writes to stderr also reached this process's stderr (the CLI's terminal), and only once
    # each; the descriptor's and the subprocess's writes and all of stdout stayed in the files.
    terminal = capfd.readouterr()
    assert terminal.err.count("stderr from print") == 1
    assert terminal.err.count("a warning from the step") == 1
    assert "from the descriptor" not in terminal.err and "subprocess" not in terminal.err
    assert "from print" not in terminal.out and "from the descriptor" not in terminal.out

    # The UI: the run page's stdout/stderr panes (GraphQL capturedLogs) and the download links.
    with WorkspaceProcessContext(instance, EmptyWorkspaceTarget()) as context:
        client = TestClient(create_app_from_workspace_process_context(context))
        query = "query($key: [String!]!) { capturedLogs(logKey: $key) { stdout stderr } }"
        response = client.post("/graphql", json={"query": query, "variables": {"key": log_key}})
        logs = response.json()["data"]["capturedLogs"]
        assert "stdout from a subprocess" in logs["stdout"] and "stderr from print" in logs["stderr"]
        metadata = manager.get_log_metadata(log_key)
        download = client.get(metadata.stdout_download_url)
        assert download.status_code == 200 and "stdout from print" in download.text
        assert "stderr from the descriptor" in client.get(metadata.stderr_download_url).text
    assert result.run_id in log_key


def test_no_mirror_subprocess_is_started(instance: DagsterInstance) -> None:
    materialize(instance)
    assert seen_children == []  # the step's own `sh` had ended; nothing else runs beside it


def test_dagsters_default_manager_does_start_the_mirror(tmp_path: Path) -> None:
    """The check above can fail: with Dagster's manager the same run has tail and its watchers up."""
    dagsters = {
        "module": "dagster._core.storage.local_compute_log_manager",
        "class": "LocalComputeLogManager",
        "config": {"base_dir": str(tmp_path / "dagster_home" / "storage")},
    }
    with DagsterInstance.from_config(str(write_instance(tmp_path / "dagster_home", dagsters))) as instance:
        assert type(instance.compute_log_manager) is LocalComputeLogManager
        materialize(instance)
    assert len([c for c in seen_children if c.startswith("tail -F")]) == 2  # stdout and stderr
    assert len([c for c in seen_children if "watch_orphans" in c]) == 2


def test_without_echo_python_stderr_stays_in_the_file(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    ours = {
        "module": "icp_pipeline.instance.compute_logs",
        "class": "FileComputeLogManager",
        "config": {"echo_stderr": False},
    }
    with DagsterInstance.from_config(str(write_instance(tmp_path / "dagster_home", ours))) as instance:
        log_key, _ = materialize(instance)
        assert "stderr from print" in instance.compute_log_manager.get_log_data(log_key).stderr.decode()
    assert "stderr from print" not in capfd.readouterr().err
