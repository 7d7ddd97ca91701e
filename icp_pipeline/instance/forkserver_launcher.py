"""A run launcher whose run workers are forked from a preloaded fork server instead of spawned.

Why: Dagster's DefaultRunLauncher asks the code server (gRPC StartRun) to start every run in a fresh
interpreter (`multiprocessing.get_context("spawn")`, hard-coded in `dagster/_grpc/server.py`), and the
daemon launches runs one at a time, waiting for that interpreter to `import dagster`. On our 2 cores
that is 1.2 s per run (2.4-5.9 s under load) on the critical path of every question run (field notes,
"The production path, measured"). Upstream has no hook for it (dagster-io/dagster#8638, open).

How: on the first launch this process starts a fork server: a fresh interpreter (`python -c`, started
with fork+exec by `subprocess`, so the multi-threaded daemon itself is never forked) that imports the
configured modules (Dagster's run-worker code, the storage plugin, the code location) and then forks
one child per run on request. It opens no database connection, creates no provider client and has
no thread (the native threads OpenBLAS and pyarrow start at import are switched off in it, see
SERVER_ENV_DEFAULTS), so no client, connection or pacing state can survive into a worker (the project's fork rule;
tested in icp_pipeline_tests/integration/test_forkserver_launcher.py). A module that fails to import
stops the fork server with its traceback and fails the launch, rather than being skipped. Each child
runs exactly what `dagster api execute_run` runs (the run worker of Dagster's Docker and Kubernetes
launchers): open the instance from its ref, reconstruct the job from the run's `job_code_origin`,
report "Started process for run (pid: N)." and execute it with `core_execute_run`, which reports
failures and turns SIGINT/SIGTERM into an interrupt that cancels the run. (`multiprocessing`'s own
"forkserver" context was tried first: each child re-imports the parent's `__main__` script, which
re-ran an unguarded script's launch, and a preload that fails to import is silently skipped.)

Worker identity (host, boot id, pid, process start time) is recorded in the run tag `icp/worker`, so
run monitoring can tell a live worker from one killed with SIGKILL (`check_run_worker_health`) without
misreading a reused pid or another machine's pid, and `terminate` can signal it from any process on
this host (elsewhere, the worker's cancellation poll stops it).
The fork server reaps its children; the daemon never waits on them.

Code changes: before each launch the launcher compares the project code the server preloaded (a hash
of the path, size and mtime of the .py files of each preloaded package outside site-packages, about
2 ms; code_stamp) with what is on disk, and starts a new fork server when it changed, so edited code is never run by a
stale server (running workers finish on their own code). An upgraded library (site-packages)
still needs a daemon restart, as with any deployment. The workers run on the daemon's host.

Private Dagster APIs used, pinned by dagster==1.13.27 (the project's pin) and exercised by the test
module above (each test launches real runs through them): `dagster._cli.api._execute_run_command_body`
(the body of `dagster api execute_run`: there is no public function that executes a run by id in the
current process), `dagster._cli.utils.get_instance_for_cli` (opens the instance from a ref and loads a
local .env as the CLI does), `dagster._utils.interrupts` (SIGTERM -> interrupt, as in the CLI),
`dagster._core.execution.run_cancellation_thread.start_run_cancellation_thread` (cancellation by
polling, see `watch_for_cancel`), and `WorkerStatus` / `CheckRunHealthResult` from
`dagster._core.launcher.base` (the types `check_run_worker_health` must return).
"""

import importlib
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO, Self

from dagster import Field
from dagster import _check as check
from dagster._config.config_schema import UserConfigSchema
from dagster._core.errors import DagsterLaunchFailedError
from dagster._core.launcher.base import CheckRunHealthResult, LaunchRunContext, RunLauncher, WorkerStatus
from dagster._core.storage.dagster_run import DagsterRun
from dagster._serdes import ConfigurableClass, ConfigurableClassData, serialize_value

WORKER_TAG = "icp/worker"

# Dagster 1.13.27's queue (GlobalOpConcurrencyLimitsCounter, read on each dequeue pass) admits a run
# only while its first step's pool has slots - pending steps - runs started less than this many
# seconds ago (default 5) + op_granularity_run_buffer. The allowance covers a run that started but
# has not yet asked for its slot. A forked worker asks within about 0.5 s, while the 5 s count a
# started run twice (as started, and by the slot it then holds or waits for): at 1 s per model call
# that throttled admission below the pool's pace (the pool was full for 35-38 % of the cycle).
# Dagster builds the launcher on first use (the daemon's first launch or health check), so the dequeue
# passes before that use the 5 s default; set the variable in the daemon's environment to have it
# from the first pass.
STARTED_RUN_SLOT_ENV = "DAGSTER_OP_CONCURRENCY_KEYS_ALLOTTED_FOR_STARTED_RUN_SECONDS"
RUN_WORKER = f"{__name__}:run_worker"

# Native libraries the code location imports start threads at load: OpenBLAS (numpy, via pandas) its
# thread pool, pyarrow (via pandas) a jemalloc background purging thread. The fork server must have no
# thread when it forks, so it starts with these off unless the environment sets them. Its workers
# inherit them: single-threaded BLAS suits 3 concurrent runs on 2 cores, and jemalloc is not even
# pyarrow's default pool (mimalloc is).
SERVER_ENV_DEFAULTS = {"OPENBLAS_NUM_THREADS": "1", "JE_ARROW_MALLOC_CONF": "background_thread:false"}

# Always preloaded: the run-worker code path, this module (the workers' entry point) and the local
# file system of `upath`, which every worker imports when it opens the instance (its defs-state
# storage): 2.6-4 % of a worker's CPU when left to the worker (py-spy over a daemon cycle).
BASE_PRELOAD = (
    "dagster._cli.api",
    "dagster._cli.utils",
    "upath.core",
    "upath.implementations.local",
    "fsspec.implementations.local",
    __name__,
)


# ------------------------------------------------------------------ worker identity (/proc, Linux)


def _boot_id() -> str:
    """Changes at every boot: a pid recorded before a reboot is not this boot's pid."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _process_state(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks since boot) of a pid, None if there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its closing one.
    fields = stat[stat.rindex(")") + 2 :].split()
    return fields[0], int(fields[19])


def worker_identity(pid: int) -> dict[str, Any]:
    """What the `icp/worker` tag records about a worker started on this host."""
    state = _process_state(pid)
    return {
        "host": socket.gethostname(),
        "boot_id": _boot_id(),
        "pid": pid,
        "start_ticks": state[1] if state else None,
    }


def worker_alive(identity: Mapping[str, Any]) -> bool:
    """The recorded worker still runs here (not exited, not a zombie, its pid not reused)."""
    state = _process_state(int(identity["pid"]))
    return state is not None and state[0] not in "ZX" and state[1] == identity.get("start_ticks")


# ------------------------------------------------------------------ the worker


def run_worker(run_id: str, serialized_instance_ref: str, watch_for_cancel: bool = True) -> None:
    """Runs in a child of the fork server; does what `dagster api execute_run` does
    (`execute_run_command` in dagster/_cli/api.py, 1.13.27)."""
    from dagster._cli.api import _execute_run_command_body
    from dagster._cli.utils import get_instance_for_cli
    from dagster._core.execution.run_cancellation_thread import start_run_cancellation_thread
    from dagster._core.instance.ref import InstanceRef
    from dagster._serdes import deserialize_value
    from dagster._utils.interrupts import capture_interrupts, setup_interrupt_handlers

    setup_interrupt_handlers()  # SIGTERM acts as SIGINT, as in the `dagster` CLI
    with capture_interrupts():
        instance_ref = deserialize_value(serialized_instance_ref, InstanceRef)
        with get_instance_for_cli(instance_ref=instance_ref) as instance:
            # Recorded by the worker too, before its run can be STARTED: run monitoring then always
            # finds it, however late the launcher's own write (after the fork) lands.
            instance.add_run_tags(run_id, {WORKER_TAG: json.dumps(worker_identity(os.getpid()))})
            # A terminate from another host (the webserver in its own container) cannot signal this
            # process: Dagster's cancellation thread (the one `dagster api execute_run` starts on
            # Dagster+) polls the run's status and interrupts the run when it is CANCELING.
            watcher = None
            if watch_for_cancel and not instance.should_start_background_run_thread:
                watcher = start_run_cancellation_thread(instance, run_id)
            try:
                _execute_run_command_body(
                    run_id, instance, lambda _event: None, set_exit_code_on_failure=False
                )
            finally:
                if watcher is not None:
                    watcher[1].set()
                    watcher[0].join()


# ------------------------------------------------------------------ the fork server process


def _resolve(target: str) -> Any:
    module, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module), attribute)


def _report_exit(pid: int, status: int) -> None:
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
        os.write(2, f"icp forkserver: worker {pid} ended with {how}\n".encode())


def _reap(_signum: int, _frame: Any) -> None:
    """SIGCHLD: collect every ended child (no zombies); say on stderr which ones did not exit 0."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        _report_exit(pid, status)


def _reap_until_no_children() -> None:
    """After the last request: stay the workers' parent until each has ended, so none is left to a
    PID 1 that may not reap (a container whose PID 1 is the daemon) and each exit is still logged."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            return
        except InterruptedError:
            continue
        _report_exit(pid, status)


def _child(request: Mapping[str, Any], closing: Sequence[int]) -> None:
    """In a freshly forked child: drop the server's plumbing, run the target, exit."""
    code = 1
    try:
        for fd in closing:
            os.close(fd)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        _resolve(request["target"])(*request["args"])
        code = 0
    except SystemExit as error:
        code = error.code if isinstance(error.code, int) else 1
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)  # never return into the server's loop


def serve(request_fd: int, reply_fd: int, preload_json: str) -> None:
    """The fork server's main: import the modules, then fork one child per request line.

    A request is a JSON line {"target": "module:function", "args": [...]}; the reply is the child's pid.
    When the launcher's end of the request pipe closes (its process ended, or it replaced this server
    after a code change) the server takes no more requests and exits once its running children have.
    """
    setup = json.loads(preload_json)
    sys.path[:] = setup["sys_path"]  # the launcher's, as the code server's workers would have
    for name in setup["modules"]:
        importlib.import_module(name)  # an error ends the server with its traceback on stderr
    signal.signal(signal.SIGCHLD, _reap)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in the daemon's terminal: the daemon decides
    requests: BinaryIO = os.fdopen(request_fd, "rb", buffering=0)
    replies: BinaryIO = os.fdopen(reply_fd, "wb", buffering=0)
    replies.write(f"ready {os.getpid()}\n".encode())
    while line := _read_line(requests):
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _child(request, (request_fd, reply_fd))
        try:
            replies.write(f"{pid}\n".encode())
        except BrokenPipeError:  # the launcher's process ended
            break
    _reap_until_no_children()


def _read_line(stream: BinaryIO) -> bytes:
    """One line from an unbuffered pipe (a buffered reader could swallow the next request)."""
    data = bytearray()
    while (byte := stream.read(1)) not in (b"", b"\n"):
        data += byte
    return bytes(data)


def _source_files(package: str) -> list[Path]:
    """The .py files of a preloaded module's top-level package, unless it is an installed library
    (site-packages changes with a deployment, which restarts the daemon anyway)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return []
    if spec is None:
        return []
    roots = [Path(p) for p in (spec.submodule_search_locations or [])] or (
        [Path(spec.origin)] if spec.origin and spec.origin.endswith(".py") else []
    )
    files: list[Path] = []
    for root in roots:
        if "site-packages" in root.parts or "dist-packages" in root.parts:
            continue
        files.extend(root.rglob("*.py") if root.is_dir() else [root])
    return files


def code_stamp(modules: Sequence[str]) -> int:
    """A hash of (path, size, modification time) of every .py file of the project code the fork
    server preloads: a new stamp means the server holds stale code, including a rollback that
    restores older modification times (rsync, `cp -p`). About 2 ms for this project's 130 files."""
    files = []
    for name in dict.fromkeys(m.partition(".")[0] for m in modules):
        for path in _source_files(name):
            try:
                stat = path.stat()
            except OSError:
                continue
            files.append((str(path), stat.st_size, stat.st_mtime_ns))
    return hash(tuple(sorted(files)))


class ForkServer:
    """The launcher's handle on its fork server process; started on first use, restarted if it died
    or if the project code it preloaded changed on disk (so `dg dev` and a redeploy that keeps the
    daemon running do not launch runs of old code; running workers finish on the code they have)."""

    def __init__(self, modules: Sequence[str]) -> None:
        self._modules = list(modules)
        self._lock = threading.Lock()
        self._process: subprocess.Popen | None = None
        self._requests: BinaryIO | None = None
        self._replies: BinaryIO | None = None
        self._stamp: int | None = None
        self._retired: list[subprocess.Popen] = []  # replaced servers, still parents of running workers
        self.pid: int | None = None

    def _start(self) -> None:
        self._stamp = code_stamp(self._modules)  # before the imports: a change during them restarts
        request_r, request_w = os.pipe()
        reply_r, reply_w = os.pipe()
        setup = json.dumps({"modules": self._modules, "sys_path": sys.path})
        try:
            self._process = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    f"from {__name__} import serve; serve({request_r}, {reply_w}, {setup!r})",
                ],
                pass_fds=(request_r, reply_w),
                stdin=subprocess.DEVNULL,
                env={**SERVER_ENV_DEFAULTS, **os.environ},
            )
        finally:
            os.close(request_r)
            os.close(reply_w)
        self._requests = os.fdopen(request_w, "wb", buffering=0)
        self._replies = os.fdopen(reply_r, "rb", buffering=0)
        ready = _read_line(self._replies).decode()
        if not ready.startswith("ready "):
            code = self._process.wait(30)
            self._process = None
            self._requests.close()
            self._replies.close()
            raise DagsterLaunchFailedError(
                f"The run fork server exited with code {code} while importing {self._modules} "
                "(its traceback is in the daemon's log)."
            )
        self.pid = int(ready.split()[1])

    def fork(self, target: str, args: Sequence[Any]) -> int:
        """Fork a child of the server that runs `target(*args)`; its pid."""
        line = (json.dumps({"target": target, "args": list(args)}) + "\n").encode()
        with self._lock:
            self._retired = [p for p in self._retired if p.poll() is None]  # reaped once they exit
            if self._process is not None and code_stamp(self._modules) != self._stamp:
                self._stop(wait=False)
            if self._process is None or self._process.poll() is not None:
                self._start()
            assert self._requests is not None and self._replies is not None
            try:
                self._requests.write(line)
                reply = _read_line(self._replies)
            except BrokenPipeError:
                reply = b""
            if not reply:
                self._process = None  # restarted on the next launch
                raise DagsterLaunchFailedError("The run fork server ended before forking the run worker.")
            return int(reply)

    def stop(self) -> None:
        with self._lock:
            self._stop(wait=True)

    def _stop(self, wait: bool) -> None:
        """End of input: the server takes no more requests and exits when its running workers have.
        `wait` (the launcher's disposal): give it 10 s, then kill it (its workers go on, orphaned);
        otherwise (replaced after a code change) leave it to finish and reap it later."""
        if self._process is None:
            return
        assert self._requests is not None and self._replies is not None
        self._requests.close()
        self._replies.close()
        if wait:
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(10)
        else:
            self._retired.append(self._process)
        self._process = None


# ------------------------------------------------------------------ the run launcher


class ForkserverRunLauncher(RunLauncher, ConfigurableClass):
    """Launches each run in a process forked from a fork server that preloaded the code.

    Config: `preload_modules`, modules the fork server imports once (e.g. `dagster_postgres` and the
    code location's module); they must not connect, start threads or create clients at import.
    `watch_for_cancel` (default true): each worker polls its run's status (every
    `run_monitoring.cancellation_thread_poll_interval_seconds`, 10 s) so a terminate issued where
    its pid cannot be signalled (another host or container) still stops it.
    `started_run_holds_slot_seconds` (default 1): how long the queue counts a just-started run as
    holding a slot of its first step's pool (see STARTED_RUN_SLOT_ENV).
    """

    def __init__(
        self,
        preload_modules: Sequence[str] = (),
        watch_for_cancel: bool = True,
        started_run_holds_slot_seconds: int = 1,
        inst_data: ConfigurableClassData | None = None,
    ):
        self._inst_data = inst_data
        # Read by the queue's pool check in the daemon, the process that builds this launcher to
        # launch. An operator's own setting of the variable wins.
        os.environ.setdefault(STARTED_RUN_SLOT_ENV, str(started_run_holds_slot_seconds))
        self._watch_for_cancel = watch_for_cancel
        self._preload = tuple(dict.fromkeys([*BASE_PRELOAD, *preload_modules]))
        # Created on the first launch only: the webserver and CLI load this launcher with the instance
        # but never launch, so they never start a fork server.
        self._server = ForkServer(self._preload)
        self._run_ids: set[str] = set()
        super().__init__()

    @property
    def inst_data(self) -> ConfigurableClassData | None:
        return self._inst_data

    @classmethod
    def config_type(cls) -> UserConfigSchema:
        return {
            "preload_modules": Field([str], is_required=False, default_value=[]),
            "watch_for_cancel": Field(bool, is_required=False, default_value=True),
            "started_run_holds_slot_seconds": Field(int, is_required=False, default_value=1),
        }

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData, config_value: Mapping[str, Any]) -> Self:
        return cls(
            preload_modules=config_value.get("preload_modules", ()),
            watch_for_cancel=config_value.get("watch_for_cancel", True),
            started_run_holds_slot_seconds=config_value.get("started_run_holds_slot_seconds", 1),
            inst_data=inst_data,
        )

    @property
    def preload_modules(self) -> tuple[str, ...]:
        return self._preload

    @property
    def fork_server(self) -> ForkServer:
        return self._server

    def launch_run(self, context: LaunchRunContext) -> None:
        run = context.dagster_run
        check.inst_param(run, "run", DagsterRun)
        check.invariant(run.job_code_origin is not None, f"Run {run.run_id} has no job_code_origin.")
        ref = serialize_value(self._instance.get_ref())
        pid = self._server.fork(RUN_WORKER, (run.run_id, ref, self._watch_for_cancel))
        self._run_ids.add(run.run_id)
        self._instance.add_run_tags(run.run_id, {WORKER_TAG: json.dumps(worker_identity(pid))})

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        raw = run.tags.get(WORKER_TAG)
        if not raw:
            return CheckRunHealthResult(WorkerStatus.NOT_FOUND, f"the run has no {WORKER_TAG} tag")
        worker = json.loads(raw)
        pid = str(worker["pid"])
        here = socket.gethostname()
        if worker.get("host") != here or worker.get("boot_id") != _boot_id():
            # Another machine's (or an earlier boot's) pid says nothing about this one's processes.
            return CheckRunHealthResult(
                WorkerStatus.UNKNOWN,
                f"run worker {pid} was started on {worker.get('host')} (boot {worker.get('boot_id')}), "
                f"this is {here} (boot {_boot_id()})",
                run_worker_id=pid,
            )
        if worker_alive(worker):
            return CheckRunHealthResult(WorkerStatus.RUNNING, run_worker_id=pid)
        if run.is_finished:
            return CheckRunHealthResult(WorkerStatus.SUCCESS, run_worker_id=pid)
        return CheckRunHealthResult(
            WorkerStatus.FAILED, f"run worker process {pid} is gone (killed or crashed)", run_worker_id=pid
        )

    def terminate(self, run_id: str) -> bool:
        check.str_param(run_id, "run_id")
        run = self._instance.get_run_by_id(run_id)
        if not run or run.is_finished:
            return False
        self._instance.report_run_canceling(run)
        health = self.check_run_worker_health(run)
        if health.status == WorkerStatus.UNKNOWN and self._watch_for_cancel:
            self._instance.report_engine_event(
                f"The run worker stops at its next cancellation poll ({health.msg}).", run, cls=self.__class__
            )
            return True
        if health.status != WorkerStatus.RUNNING:
            # Run monitoring marks it canceled after its cancel timeout.
            self._instance.report_engine_event(
                f"No run worker to send the termination request to: {health.msg}", run, cls=self.__class__
            )
            return False
        # The worker turns SIGTERM into an interrupt: the run ends CANCELED, as with Dagster's launchers.
        try:
            os.kill(int(json.loads(run.tags[WORKER_TAG])["pid"]), signal.SIGTERM)
        except ProcessLookupError:  # it ended since the check
            return False
        return True

    def join(self, timeout: int = 30) -> None:
        """Wait for the runs this process launched to finish (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        while True:
            active = [
                run_id
                for run_id in list(self._run_ids)
                if (run := self._instance.get_run_by_id(run_id)) is not None and not run.is_finished
            ]
            if not active:
                return
            if time.monotonic() > deadline:
                raise Exception(f"Timed out waiting for these runs to finish: {active!r}")
            time.sleep(0.1)

    def dispose(self) -> None:
        # The server stops; running workers are not stopped: like the code server's, they finish their runs.
        self._server.stop()
