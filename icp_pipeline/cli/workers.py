"""Forked workers that execute Dagster runs in-process, and notice when one dies.

Each worker is forked once (Dagster and the definitions are already imported: no ~3 s import per
run) and gets one partition at a time over its own pipe. The parent waits on the pipes and on each
process's sentinel, so a worker killed mid-run (an OOM kill, `kill -9`) is seen at once:
multiprocessing.Pool would wait forever for the result of a task its dead worker took with it.

A lost run is marked failed in the instance, its pool slots and purchase claims are freed, and its
partition is executed once more in a new run (answers already in the ledger are reused, never
bought again); a second loss fails the partition. While it waits, the parent checks the app database:
when it stays unreachable past the outage budget the workers are stopped and DatabaseUnreachable is
raised, rather than waiting on runs that cannot finish.
"""

import multiprocessing
import os
import signal
import sys
import time
import uuid
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

from icp_pipeline.cli.origins import execute_with_origin
from icp_pipeline.cli.recovery import (
    RETRY_OF_TAG,
    WORKER_TAG,
    claimant_of,
    fail_lost_run,
    process_identity,
    release_purchase_claims,
)
from icp_pipeline.db.session import DatabaseUnreachable, database_reachable, reset_engines_after_fork
from icp_pipeline.settings import database_url, redact_url

# Step events go to the instance (and the UI); the terminal shows only warnings and the progress bar.
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
HEALTH_CHECK_SECONDS = 5.0
# How long the app database may stay unreachable before a command gives up (ICP_DB_OUTAGE_SECONDS).
DB_OUTAGE_SECONDS = 90.0
# How long a stopped worker gets to end its run cleanly (Dagster turns SIGTERM into an interrupt).
STOP_GRACE_SECONDS = 10.0


def with_quiet_logs(run_config: dict[str, Any] | None) -> dict[str, Any]:
    return {**(run_config or {}), **QUIET}


def execute_one(
    job: Any,
    partition_key: str,
    instance: Any,
    tags: dict[str, str],
    run_config: dict[str, Any] | None = None,
    run_id: str | None = None,
) -> tuple[bool, str]:
    """Execute one partition of a job in this process, as a run of the workspace's code location (the
    UI lists it under its job and can re-execute it); (success, last step error)."""
    tags = {**tags, WORKER_TAG: process_identity()}
    try:
        result = execute_with_origin(job, partition_key, instance, tags, with_quiet_logs(run_config), run_id)
    except Exception as error:  # a crash outside the steps: the caller records it
        return False, f"{type(error).__name__}: {error}"
    if result.success:
        return True, ""
    failures = [_user_error(e.event_specific_data.error) for e in result.all_events if e.is_step_failure]
    return False, failures[-1] if failures else "run failed"


def _user_error(error: Any) -> str:
    """The step's own error ("ValueError: ..."), not Dagster's wrapper around it ("Error occurred while
    executing op ...")."""
    while error.cause is not None and error.cls_name == "DagsterExecutionStepExecutionError":
        error = error.cause
    return error.message.strip()


def _worker_main(conn: Connection, job: Any, parents_ends: list[Connection]) -> None:
    """Execute the runs the parent sends until it closes the pipe (or is gone)."""
    # The parent's ends of this and the other workers' pipes came with the fork: holding them would
    # keep a worker from seeing EOF when the parent dies, and it would wait forever as an orphan.
    for end in parents_ends:
        end.close()
    reset_engines_after_fork()
    from dagster import DagsterInstance

    instance = DagsterInstance.get()  # the parent already created the pool's slots
    try:
        while True:
            message = conn.recv()
            if message is None:
                return
            key, run_id, tags, run_config = message
            ok, error = execute_one(job, key, instance, tags, run_config, run_id)
            conn.send((run_id, ok, error))
    except (EOFError, OSError, KeyboardInterrupt):
        return  # the parent stopped us or died: never outlive it by more than the current run


@dataclass
class _Task:
    key: str
    run_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    attempt: int = 1
    retry_of: str | None = None


@dataclass
class _Worker:
    process: Any
    conn: Connection
    task: _Task | None = None


def _exit_description(process: Any) -> str:
    code = process.exitcode
    if code is not None and code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"


def _warn(message: str) -> None:
    sys.stderr.write(f"\nwarning: {message}\n")
    sys.stderr.flush()


def db_outage_seconds() -> float:
    return float(os.environ.get("ICP_DB_OUTAGE_SECONDS", DB_OUTAGE_SECONDS))


def execute_partitions(
    job: Any,
    keys: list[str],
    workers: int,
    tags: dict[str, str],
    run_config: dict[str, Any] | None = None,
    instance: Any = None,
    db_url: str | None = None,
) -> Iterator[tuple[str, bool, str]]:
    """One run per partition on forked workers; yields (key, success, error) as runs finish.
    `instance` (default: the one at DAGSTER_HOME) is where lost runs are marked failed."""
    if not keys:
        return
    if instance is None:
        from dagster import DagsterInstance

        instance = DagsterInstance.get()
    db_url = db_url or database_url()
    context = multiprocessing.get_context("fork")
    queue = deque(_Task(k) for k in keys)
    pool: list[_Worker] = []

    def start_worker() -> _Worker:
        parent_end, child_end = context.Pipe()
        parents_ends = [parent_end] + [w.conn for w in pool if not w.conn.closed]
        process = context.Process(target=_worker_main, args=(child_end, job, parents_ends), daemon=False)
        process.start()
        child_end.close()
        return _Worker(process, parent_end)

    def assign(worker: _Worker) -> None:
        task = queue.popleft()
        task_tags = {**tags, RETRY_OF_TAG: task.retry_of} if task.retry_of else tags
        try:
            worker.conn.send((task.key, task.run_id, task_tags, run_config))
        except OSError:  # it died idle: the task goes back, the worker is replaced
            queue.appendleft(task)
            return
        worker.task = task

    def lost(worker: _Worker) -> tuple[str, bool, str] | None:
        """The worker died with a task: fail its run, free what it held, and retry it once."""
        task, worker.task = worker.task, None
        worker.process.join(1)
        why = f"worker pid {worker.process.pid} {_exit_description(worker.process)}"
        run = fail_lost_run(instance, task.run_id, f"the run's worker process died ({why})")
        if run is not None:
            release_purchase_claims(db_url, [claimant_of(run)])
            if run.status.value == "SUCCESS":  # it died after the run ended: nothing was lost
                return task.key, True, ""
        if task.attempt >= 2:
            return task.key, False, f"lost its worker twice ({why})"
        _warn(f"{why} during run {task.run_id} of {task.key}; the run is marked failed and runs again")
        queue.appendleft(_Task(task.key, attempt=task.attempt + 1, retry_of=task.run_id))
        return None

    outage_since: float | None = None
    last_check = time.monotonic()
    size, started = max(1, min(workers, len(keys))), 0
    try:
        while queue or any(w.task for w in pool):
            for worker in [w for w in pool if w.task is None and not w.process.is_alive()]:
                worker.conn.close()
                pool.remove(worker)
            while queue and len(pool) < size:
                if started >= size + 2 * len(keys):  # each key may lose two workers, no more
                    raise RuntimeError("run workers keep dying as they start; see the errors above")
                pool.append(start_worker())
                started += 1
            for worker in pool:
                if queue and worker.task is None:
                    assign(worker)
            busy = [w for w in pool if w.task]
            ready = set(
                wait([w.conn for w in busy] + [w.process.sentinel for w in busy], HEALTH_CHECK_SECONDS)
            )
            for worker in busy:
                if worker.conn in ready:
                    try:
                        _run_id, ok, error = worker.conn.recv()
                    except (EOFError, OSError):  # it died; its sentinel says so too
                        result = lost(worker)
                    else:
                        result, worker.task = (worker.task.key, ok, error), None
                elif worker.process.sentinel in ready:
                    result = lost(worker)
                else:
                    continue
                if result is not None:
                    yield result
            now = time.monotonic()
            if now - last_check >= HEALTH_CHECK_SECONDS:
                last_check = now
                if database_reachable(db_url):
                    outage_since = None
                else:
                    outage_since = outage_since or now
                    if now - outage_since >= db_outage_seconds():
                        raise DatabaseUnreachable(
                            f"the app database at {redact_url(db_url)} has been unreachable for "
                            f"{now - outage_since:.0f} s; stopped the runs in progress"
                        )
    finally:
        _stop(pool, instance, db_url)


def _stop(pool: list[_Worker], instance: Any, db_url: str) -> None:
    """Close every pipe (an idle worker exits), interrupt busy workers, kill those that do not end
    in time, and clean up after the runs they were executing. Never leaves a worker behind."""
    for worker in pool:
        if worker.task is not None and worker.process.is_alive():
            os.kill(worker.process.pid, signal.SIGTERM)
        worker.conn.close()
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    for worker in pool:
        worker.process.join(max(0.0, deadline - time.monotonic()))
        if worker.process.is_alive():
            worker.process.kill()
            worker.process.join()
    claimants = []
    for worker in pool:
        if worker.task is None:
            continue
        try:
            run = fail_lost_run(instance, worker.task.run_id, "stopped by icp-pipeline before it ended")
            if run is not None:
                claimants.append(claimant_of(run))
        except Exception as error:  # the storage may be the thing that is down; reaped next start
            _warn(f"could not clean up run {worker.task.run_id}: {type(error).__name__}")
    # Without the database (an outage) the claims stay; the next command's reaper releases them.
    if claimants and database_reachable(db_url):
        release_purchase_claims(db_url, claimants)
