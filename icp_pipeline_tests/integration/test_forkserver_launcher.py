"""The fork-server run launcher (icp_pipeline/instance/forkserver_launcher.py) with a real instance.

Runs of the tiny jobs in icp_pipeline_tests/support/launcher_jobs.py are launched through
`instance.launch_run` on a temporary SQLite instance whose `run_launcher` is the fork-server launcher,
and executed by real run workers. This also covers the private Dagster APIs the launcher uses, pinned
to dagster 1.13.27 (`_execute_run_command_body`, `get_instance_for_cli`, the interrupt helpers and
run monitoring's `monitor_started_run`). Launch latency against the DefaultRunLauncher is printed,
never asserted (speed is measured in bench/).
"""

import json
import logging
import os
import signal
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.code_pointer import CodePointer
from dagster._core.definitions.repository_definition.valid_definitions import SINGLETON_REPOSITORY_NAME
from dagster._core.errors import DagsterLaunchFailedError
from dagster._core.launcher import WorkerStatus
from dagster._core.origin import JobPythonOrigin, RepositoryPythonOrigin
from dagster._core.remote_origin import RemoteJobOrigin, RemoteRepositoryOrigin
from dagster._core.storage.dagster_run import DagsterRunStatus, RunsFilter
from dagster._core.storage.tags import RUN_FAILURE_REASON_TAG
from dagster._core.workspace.load import location_origin_from_module_name

from icp_pipeline.instance.forkserver_launcher import (
    STARTED_RUN_SLOT_ENV,
    WORKER_TAG,
    ForkServer,
    ForkserverRunLauncher,
    _process_state,
    worker_alive,
    worker_identity,
)
from icp_pipeline_tests.support import launcher_jobs
from icp_pipeline_tests.support.dagster_services import wait_until

JOBS = launcher_jobs.MODULE
# The production preload plus the test jobs' module: the fork server imports the project's code
# location too, so the state checks below cover what importing it leaves behind.
PRELOAD = ["dagster_postgres", "icp_pipeline.definitions", JOBS]


def launcher_config(preload: list[str]) -> dict:
    return {
        "module": "icp_pipeline.instance.forkserver_launcher",
        "class": "ForkserverRunLauncher",
        "config": {"preload_modules": preload},
    }


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    overrides = {
        "run_launcher": launcher_config(PRELOAD),
        # How often a worker polls for a termination it cannot receive as a signal (default 10 s).
        "run_monitoring": {"enabled": True, "cancellation_thread_poll_interval_seconds": 1},
    }
    with dg.instance_for_test(overrides=overrides) as instance:
        try:
            yield instance
        finally:
            kill_workers(instance)  # a failed test must not leave a sleeping worker behind


def kill_workers(instance: dg.DagsterInstance) -> None:
    for run in instance.get_runs(RunsFilter(statuses=[DagsterRunStatus.STARTING, DagsterRunStatus.STARTED])):
        if WORKER_TAG in run.tags and worker_alive(json.loads(run.tags[WORKER_TAG])):
            os.kill(json.loads(run.tags[WORKER_TAG])["pid"], signal.SIGKILL)


def create_run(instance: dg.DagsterInstance, job: dg.JobDefinition) -> str:
    """A run with the origins a code server would give it (module `launcher_jobs`, attribute defs)."""
    location = location_origin_from_module_name(JOBS, "defs", None, launcher_jobs.LOCATION)
    run = instance.create_run_for_job(
        job_def=job,
        remote_job_origin=RemoteJobOrigin(
            RemoteRepositoryOrigin(location, SINGLETON_REPOSITORY_NAME), job.name
        ),
        job_code_origin=JobPythonOrigin(
            job.name, RepositoryPythonOrigin(sys.executable, CodePointer.from_module(JOBS, "defs", None))
        ),
    )
    return run.run_id


def status_of(instance: dg.DagsterInstance, run_id: str) -> DagsterRunStatus:
    return instance.get_run_by_id(run_id).status  # type: ignore[union-attr]


def wait_for_status(instance: dg.DagsterInstance, run_id: str, *statuses: DagsterRunStatus) -> None:
    wait_until(
        lambda: status_of(instance, run_id) in statuses,
        timeout=120,
        interval=0.1,
        what=f"run {run_id} to reach {statuses} (it is {status_of(instance, run_id)})",
    )


def worker_of(instance: dg.DagsterInstance, run_id: str) -> dict:
    return json.loads(instance.get_run_by_id(run_id).tags[WORKER_TAG])  # type: ignore[union-attr]


def started_process_pid(instance: dg.DagsterInstance, run_id: str) -> int | None:
    for record in instance.all_logs(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT):
        if record.message.startswith("Started process for run (pid: "):
            return int(record.message.removeprefix("Started process for run (pid: ").rstrip(")."))
    return None


def wait_reaped(pid: int) -> None:
    """The worker's process entry is gone, not a zombie: its parent (the fork server) reaped it."""
    wait_until(lambda: _process_state(pid) is None, timeout=30, interval=0.1, what=f"pid {pid} to be reaped")


def running_step(instance: dg.DagsterInstance, run_id: str) -> bool:
    return bool(instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_START))


# ------------------------------------------------------------------ tests


def test_the_instance_loads_the_launcher_without_starting_a_fork_server(instance: dg.DagsterInstance) -> None:
    launcher = instance.run_launcher
    assert isinstance(launcher, ForkserverRunLauncher)
    assert launcher.supports_check_run_worker_health
    assert set(PRELOAD) <= set(launcher.preload_modules)
    # The webserver and CLI load the instance (and so the launcher) but never launch.
    assert launcher.fork_server.pid is None


def test_a_launched_run_succeeds_in_a_worker_forked_from_the_fork_server(
    instance: dg.DagsterInstance,
) -> None:
    run_id = create_run(instance, launcher_jobs.quick_job)
    instance.launch_run(run_id, None)  # type: ignore[arg-type] - this launcher needs no workspace
    wait_for_status(instance, run_id, DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE)

    assert status_of(instance, run_id) == DagsterRunStatus.SUCCESS
    worker = worker_of(instance, run_id)
    # Dagster's own "Started process" event names the worker the tag records, a child of the server.
    assert started_process_pid(instance, run_id) == worker["pid"]
    server_pid = instance.run_launcher.fork_server.pid
    assert server_pid not in (None, os.getpid(), worker["pid"])
    assert worker["start_ticks"] is not None
    wait_reaped(worker["pid"])
    run = instance.get_run_by_id(run_id)
    assert instance.run_launcher.check_run_worker_health(run).status == WorkerStatus.SUCCESS


def test_a_worker_killed_with_sigkill_is_failed_by_run_monitoring(instance: dg.DagsterInstance) -> None:
    from dagster._daemon.monitoring.run_monitoring import monitor_started_run

    run_id = create_run(instance, launcher_jobs.sleepy_job)
    instance.launch_run(run_id, None)  # type: ignore[arg-type]
    wait_for_status(instance, run_id, DagsterRunStatus.STARTED)
    wait_until(lambda: running_step(instance, run_id), timeout=60, interval=0.1, what="the step to start")
    run = instance.get_run_by_id(run_id)
    assert instance.run_launcher.check_run_worker_health(run).status == WorkerStatus.RUNNING

    pid = worker_of(instance, run_id)["pid"]
    os.kill(pid, signal.SIGKILL)
    wait_reaped(pid)

    health = instance.run_launcher.check_run_worker_health(run)
    assert health.status == WorkerStatus.FAILED, health
    assert str(pid) in (health.msg or "")
    assert status_of(instance, run_id) == DagsterRunStatus.STARTED  # nobody else noticed

    # What the monitoring daemon does each poll; run_retries then relaunches it (not a step failure).
    monitor_started_run(
        instance, None, instance.get_run_records(RunsFilter(run_ids=[run_id]))[0], logging.getLogger()
    )  # type: ignore[arg-type]
    assert status_of(instance, run_id) == DagsterRunStatus.FAILURE
    assert instance.get_run_by_id(run_id).tags.get(RUN_FAILURE_REASON_TAG) != "STEP_FAILURE"  # type: ignore[union-attr]


def test_a_recorded_pid_of_another_host_or_a_reused_pid_is_not_read_as_this_worker(
    instance: dg.DagsterInstance,
) -> None:
    run_id = create_run(instance, launcher_jobs.quick_job)
    launcher = instance.run_launcher
    here = worker_identity(os.getpid())  # this test's own process: certainly alive
    for recorded, expected in [
        (here, WorkerStatus.RUNNING),
        ({**here, "host": "another-host"}, WorkerStatus.UNKNOWN),
        ({**here, "boot_id": "an-earlier-boot"}, WorkerStatus.UNKNOWN),
        ({**here, "start_ticks": here["start_ticks"] - 1}, WorkerStatus.FAILED),  # same pid, other process
    ]:
        instance.add_run_tags(run_id, {WORKER_TAG: json.dumps(recorded)})
        assert launcher.check_run_worker_health(instance.get_run_by_id(run_id)).status == expected, recorded


def test_terminate_sends_sigterm_and_the_run_ends_canceled(instance: dg.DagsterInstance) -> None:
    run_id = create_run(instance, launcher_jobs.sleepy_job)
    instance.launch_run(run_id, None)  # type: ignore[arg-type]
    wait_for_status(instance, run_id, DagsterRunStatus.STARTED)
    wait_until(lambda: running_step(instance, run_id), timeout=60, interval=0.1, what="the step to start")
    pid = worker_of(instance, run_id)["pid"]

    assert instance.run_launcher.terminate(run_id) is True
    wait_for_status(
        instance, run_id, DagsterRunStatus.CANCELED, DagsterRunStatus.FAILURE, DagsterRunStatus.SUCCESS
    )
    assert status_of(instance, run_id) == DagsterRunStatus.CANCELED
    wait_reaped(pid)
    assert instance.run_launcher.terminate(run_id) is False  # already finished


def test_a_terminate_from_another_host_stops_the_worker_through_its_cancellation_poll(
    instance: dg.DagsterInstance,
) -> None:
    run_id = create_run(instance, launcher_jobs.sleepy_job)
    instance.launch_run(run_id, None)  # type: ignore[arg-type]
    wait_for_status(instance, run_id, DagsterRunStatus.STARTED)
    wait_until(lambda: running_step(instance, run_id), timeout=60, interval=0.1, what="the step to start")
    worker = worker_of(instance, run_id)
    # As the webserver in its own container sees it: a pid of another host, which it must not signal.
    instance.add_run_tags(run_id, {WORKER_TAG: json.dumps({**worker, "host": "webserver-container"})})

    assert instance.run_launcher.terminate(run_id) is True
    wait_for_status(
        instance, run_id, DagsterRunStatus.CANCELED, DagsterRunStatus.FAILURE, DagsterRunStatus.SUCCESS
    )
    assert status_of(instance, run_id) == DagsterRunStatus.CANCELED
    wait_reaped(worker["pid"])


def test_forked_workers_inherit_no_connection_client_or_thread(
    instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    # A run first: the fork server has served a launch, and must still be as clean as it started.
    run_id = create_run(instance, launcher_jobs.quick_job)
    instance.launch_run(run_id, None)  # type: ignore[arg-type]
    wait_for_status(instance, run_id, DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE)

    server = instance.run_launcher.fork_server
    out = tmp_path / "state.json"
    child = server.fork(f"{JOBS}:inherited_state", [str(out), PRELOAD])
    wait_until(out.exists, timeout=60, interval=0.1, what="the forked probe to report")
    wait_reaped(child)
    state = json.loads(out.read_text())

    assert state["preloaded"] == {name: True for name in PRELOAD}
    assert state["app_engines"] == 0  # icp_pipeline.db.session's engine cache
    assert state["provider_clients"] == 0
    assert state["inherited_provider_clients"] == 0  # nothing the at-fork hook had to drop
    assert state["sqlalchemy_engines"] == 0
    assert state["psycopg2_connections"] == 0
    assert state["httpx_clients"] == 0
    assert state["threads"] == 1
    # Native threads too (from /proc): OpenBLAS and pyarrow's jemalloc start some at import.
    assert state["fork_server_threads"] == 1
    # Nor any socket (a database or HTTP connection) open in the fork server itself.
    fds = Path(f"/proc/{server.pid}/fd")
    assert not [link for fd in fds.iterdir() if (link := os.readlink(fd)).startswith("socket:")]


def test_three_runs_launched_back_to_back_succeed_on_postgresql_storage(postgres_databases) -> None:
    """The production storages (dagster-postgres, the guarded event log): each worker opens its own
    connections; three run at once, as the pool `llm` allows."""
    url = postgres_databases().replace("+psycopg2", "")
    storages = {
        kind: {"module": module, "class": cls, "config": {"postgres_url": url}}
        for kind, module, cls in (
            ("run_storage", "icp_pipeline.instance.pooled_postgres", "PooledPostgresRunStorage"),
            ("event_log_storage", "icp_pipeline.instance.guarded_storage", "GuardedPostgresEventLogStorage"),
            ("schedule_storage", "icp_pipeline.instance.pooled_postgres", "PooledPostgresScheduleStorage"),
        )
    }
    with dg.instance_for_test(overrides={**storages, "run_launcher": launcher_config(PRELOAD)}) as instance:
        try:
            run_ids = [create_run(instance, launcher_jobs.quick_job) for _ in range(3)]
            for run_id in run_ids:
                instance.launch_run(run_id, None)  # type: ignore[arg-type]
            for run_id in run_ids:
                wait_for_status(instance, run_id, DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE)
            assert [status_of(instance, run_id) for run_id in run_ids] == [DagsterRunStatus.SUCCESS] * 3
            pids = [worker_of(instance, run_id)["pid"] for run_id in run_ids]
            assert [started_process_pid(instance, run_id) for run_id in run_ids] == pids
            assert len(set(pids)) == 3
        finally:
            kill_workers(instance)


def test_a_preload_that_fails_to_import_fails_the_launch() -> None:
    config = launcher_config(["icp_pipeline_tests.support.no_such_module"])
    with dg.instance_for_test(overrides={"run_launcher": config}) as instance:
        run_id = create_run(instance, launcher_jobs.quick_job)
        with pytest.raises(DagsterLaunchFailedError, match="no_such_module"):
            instance.launch_run(run_id, None)  # type: ignore[arg-type]
        assert status_of(instance, run_id) == DagsterRunStatus.FAILURE


def test_a_code_change_on_disk_starts_a_new_fork_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Edited project code is never run by a server that preloaded the old one (`dg dev`, a redeploy
    with the daemon kept): the next fork comes from a new server that imported the new code."""
    package = tmp_path / "stampedpkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    module = package / "code.py"
    module.write_text(
        "from pathlib import Path\nVERSION = 'old'\ndef write(path):\n    Path(path).write_text(VERSION)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    server = ForkServer(["stampedpkg.code"])
    try:
        out = tmp_path / "out"
        server.fork("stampedpkg.code:write", [str(out)])
        wait_until(lambda: out.exists() and out.read_text(), timeout=30, what="the first child's file")
        first_server = server.pid
        assert out.read_text() == "old"
        server.fork("stampedpkg.code:write", [str(out)])  # unchanged code: the same server
        assert server.pid == first_server
        sleeper = server.fork("time:sleep", [3])  # still running when the server is replaced
        module.write_text(module.read_text().replace("'old'", "'new'"))
        os.utime(module, ns=(time.time_ns(), time.time_ns() + 1_000_000_000))  # a coarse mtime clock
        out.unlink()
        server.fork("stampedpkg.code:write", [str(out)])
        wait_until(lambda: out.exists() and out.read_text(), timeout=30, what="the second child's file")
        assert out.read_text() == "new"
        assert server.pid != first_server
        # The replaced server stays its running worker's parent (reaps it, logs its exit), then exits.
        (retired,) = server._retired
        assert retired.poll() is None and Path(f"/proc/{sleeper}").exists()
        wait_until(lambda: retired.poll() is not None, timeout=30, what="the replaced server to exit")
        assert retired.returncode == 0
        assert not Path(f"/proc/{sleeper}").exists()  # reaped, not a zombie left to PID 1
    finally:
        server.stop()


def test_the_launcher_tells_the_queue_a_started_run_asks_for_its_slot_within_a_second(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The queue's pool check reads the allowance from the environment on every pass; the launcher
    sets it (default 1 s, configurable) unless the operator already did."""
    from dagster._core.op_concurrency_limits_counter import GlobalOpConcurrencyLimitsCounter

    monkeypatch.setenv(STARTED_RUN_SLOT_ENV, "")  # recorded, so the test's settings end with it
    monkeypatch.delenv(STARTED_RUN_SLOT_ENV)
    with dg.instance_for_test(overrides={"run_launcher": launcher_config([])}) as instance:
        assert isinstance(instance.run_launcher, ForkserverRunLauncher)
        assert os.environ[STARTED_RUN_SLOT_ENV] == "1"
        counter = GlobalOpConcurrencyLimitsCounter(instance, [], [], concurrency_keys=set(), pool_limits=[])
        assert counter._started_run_pools_allotted_seconds == 1  # what Dagster 1.13.27's queue uses
    monkeypatch.delenv(STARTED_RUN_SLOT_ENV)
    config = launcher_config([])
    config["config"]["started_run_holds_slot_seconds"] = 3
    with dg.instance_for_test(overrides={"run_launcher": config}) as instance:
        assert instance.run_launcher is not None
        assert os.environ[STARTED_RUN_SLOT_ENV] == "3"
    monkeypatch.setenv(STARTED_RUN_SLOT_ENV, "7")  # the operator's own setting wins
    with dg.instance_for_test(overrides={"run_launcher": launcher_config([])}) as instance:
        assert instance.run_launcher is not None
        assert os.environ[STARTED_RUN_SLOT_ENV] == "7"


# ------------------------------------------------------------------ latency, printed only


def launch_latency(instance: dg.DagsterInstance, workspace: object) -> tuple[float, float]:
    """Seconds `launch_run` blocked (the daemon launches one run at a time) and seconds from the
    launch to the worker's "Started process" event; waits for the run to end."""
    run_id = create_run(instance, launcher_jobs.quick_job)
    started = time.time()
    instance.launch_run(run_id, workspace)  # type: ignore[arg-type]
    blocked = time.time() - started
    wait_for_status(instance, run_id, DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE)
    assert status_of(instance, run_id) == DagsterRunStatus.SUCCESS
    for record in instance.all_logs(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT):
        if record.message.startswith("Started process for run"):
            return blocked, record.timestamp - started
    raise AssertionError(f"no 'Started process' event for run {run_id}")


def summary(name: str, measured: list[tuple[float, float]]) -> str:
    blocked = [round(b, 2) for b, _ in measured]
    started = [round(s, 2) for _, s in measured]
    return (
        f"\n  {name}: launch_run blocked median {statistics.median(blocked):.2f} {blocked}, "
        f"'Started process' after median {statistics.median(started):.2f} {started}"
    )


def test_launch_latency_compared_with_the_default_launcher(instance: dg.DagsterInstance) -> None:
    from dagster._core.workspace.context import WorkspaceProcessContext
    from dagster._core.workspace.load_target import ModuleTarget

    runs = 4
    first = launch_latency(instance, None)  # starts the fork server
    fork = [launch_latency(instance, None) for _ in range(runs)]
    load_fork = Path("/proc/loadavg").read_text().split()[:3]

    target = ModuleTarget(JOBS, "defs", None, launcher_jobs.LOCATION)
    with (
        dg.instance_for_test() as default_instance,
        WorkspaceProcessContext(default_instance, target) as process_context,
    ):
        workspace = process_context.create_request_context()
        spawn = [launch_latency(default_instance, workspace) for _ in range(runs)]
    load_spawn = Path("/proc/loadavg").read_text().split()[:3]

    print(
        f"\nlaunch latency (s), {runs} runs each after a first fork-server launch of "
        f"{first[0]:.2f} blocked / {first[1]:.2f} to 'Started process':"
        + summary(f"ForkserverRunLauncher (load {load_fork})", fork)
        + summary(f"DefaultRunLauncher    (load {load_spawn})", spawn)
    )
