"""Run one org cycle as real Dagster runs: one run per question-run partition, then the org roll-ups.

Execution path: a pool of forked worker processes, each executing whole runs in-process against the
instance at DAGSTER_HOME. Forking after Dagster and the definitions are imported avoids paying the
~3 s import per run, and in-process execution avoids a process per step. The `llm` pool still caps
model steps at 3 across every worker, because each step claims its slot in the instance.
"""

import multiprocessing
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from icp_pipeline.db.session import reset_engines_after_fork, session_scope
from icp_pipeline.settings import database_url
from icp_pipeline.visibility import steps
from icp_pipeline.visibility.cycles import claim_rollup, open_cycle, refresh_cycle

_job = None  # set in the parent before forking; each worker executes it
_instance = None
# Step events go to the instance (and the UI); the terminal shows only warnings and the progress bar.
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


@dataclass
class CycleOutcome:
    org_id: str
    cycle_id: int
    status: str
    total: int
    completed: int
    failed: int
    rolled_up: bool
    pushed: bool
    payload: dict[str, Any] | None
    message: str


def _init_worker() -> None:
    global _instance
    reset_engines_after_fork()
    from dagster import DagsterInstance

    _instance = DagsterInstance.get()  # the parent already created the pool's slots


def with_quiet_logs(run_config: dict[str, Any] | None) -> dict[str, Any]:
    return {**(run_config or {}), **QUIET}


def execute_one(
    job: Any,
    partition_key: str,
    instance: Any,
    tags: dict[str, str],
    run_config: dict[str, Any] | None = None,
) -> tuple[bool, str]:
    """Execute one partition of a job in this process; (success, last step error)."""
    try:
        result = job.execute_in_process(
            partition_key=partition_key,
            instance=instance,
            raise_on_error=False,
            tags=tags,
            run_config=with_quiet_logs(run_config),
        )
    except Exception as error:  # a crash outside the steps: the caller records it
        return False, f"{type(error).__name__}: {error}"
    if result.success:
        return True, ""
    failures = [e.event_specific_data.error.message.strip() for e in result.all_events if e.is_step_failure]
    return False, failures[-1] if failures else "run failed"


def _execute_partition(args: tuple[str, dict[str, str], dict[str, Any] | None]) -> tuple[str, bool, str]:
    partition_key, tags, run_config = args
    ok, error = execute_one(_job, partition_key, _instance, tags, run_config)
    return partition_key, ok, error


def load_instance_and_defs(defs: Any = None) -> tuple[Any, Any]:
    """The instance at DAGSTER_HOME (the embedded one by default) and the code location's definitions."""
    from icp_pipeline.cli.instance import get_instance, prepare_dagster_home

    prepare_dagster_home()
    if defs is None:
        from icp_pipeline.definitions import defs
    return get_instance(), defs


def execute_partitions(
    job: Any,
    keys: list[str],
    workers: int,
    tags: dict[str, str],
    run_config: dict[str, Any] | None = None,
) -> Iterator[tuple[str, bool, str]]:
    """One run per partition on a pool of forked workers; yields (key, success, error) as runs finish."""
    global _job
    _job = job
    context = multiprocessing.get_context("fork")
    pool = context.Pool(max(1, min(workers, len(keys) or 1)), initializer=_init_worker)
    try:
        yield from pool.imap_unordered(_execute_partition, [(k, tags, run_config) for k in keys])
        # close + join, not terminate: Dagster's interrupt handling in a worker can swallow SIGTERM.
        pool.close()
    except BaseException:
        pool.terminate()
        raise
    finally:
        pool.join()


class Progress:
    """A one-line bar on a terminal; in a log (CI) a line every 10% instead."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.enabled, self.started = total, enabled, time.monotonic()
        self.tty = sys.stderr.isatty()
        self.last_logged = -1

    def show(self, completed: int, failed: int) -> None:
        if not self.enabled:
            return
        done = completed + failed
        if not self.tty:
            step = done * 10 // max(self.total, 1)
            if step == self.last_logged:
                return
            self.last_logged = step
        width = 30
        filled = int(width * done / self.total) if self.total else width
        bar = "#" * filled + "-" * (width - filled)
        elapsed = time.monotonic() - self.started
        line = f"[{bar}] {done}/{self.total}  completed {completed}  failed {failed}  {elapsed:5.1f}s"
        sys.stderr.write("\r" + line if self.tty else line + "\n")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            sys.stderr.write("\n")


def run_cycle(org_id: str, workers: int = 3, progress: bool = True, defs: Any = None) -> CycleOutcome:
    """`defs` defaults to the code location's; tests pass their own resources through it."""
    db_url = database_url()
    with session_scope(db_url) as session:
        cycle, _created = open_cycle(session, org_id)
        cycle_id = cycle.id
        keys = sorted({i.partition_key for i in cycle.items if i.status not in ("succeeded", "failed")})
        done = (cycle.completed, cycle.failed, cycle.total)

    instance, defs = load_instance_and_defs(defs)
    from icp_pipeline.defs.visibility.partitions import orgs_partitions, question_runs_partitions

    instance.add_dynamic_partitions(question_runs_partitions.name, keys)
    instance.add_dynamic_partitions(orgs_partitions.name, [org_id])

    bar = Progress(done[2], progress)
    completed, failed = done[0], done[1]
    bar.show(completed, failed)
    tags = {"icp/org": org_id, "icp/cycle_id": str(cycle_id), "icp/launched_by": "cli"}
    for key, ok, error in execute_partitions(defs.resolve_job_def("question_run_job"), keys, workers, tags):
        if not ok:
            # The assets mark their item failed; this covers a run that died before they could.
            steps.fail_partition(db_url, key, "run", error)
        with session_scope(db_url) as session:
            cycle = refresh_cycle(session, cycle_id)
            completed, failed = cycle.completed, cycle.failed
        bar.show(completed, failed)
    bar.close()

    with session_scope(db_url) as session:
        cycle = refresh_cycle(session, cycle_id)
        status, total = cycle.status, cycle.total
        claimed = status == "succeeded" and claim_rollup(session, cycle_id)
    outcome = CycleOutcome(org_id, cycle_id, status, total, completed, failed, False, False, None, "")
    if status != "succeeded":
        outcome.message = (
            f"cycle {cycle_id} of {org_id}: every one of {total} question runs failed; nothing pushed"
        )
        return outcome
    if not claimed:
        outcome.message = f"cycle {cycle_id}: roll-ups were already requested by another process (sensor)"
        return outcome
    rolled_up, rollup_error = execute_one(defs.resolve_job_def("org_rollup_job"), org_id, instance, tags)
    outcome.rolled_up = True
    with session_scope(db_url) as session:
        snapshot = steps.latest_snapshot(session, org_id)
        outcome.payload = snapshot.payload if snapshot is not None and snapshot.cycle_id == cycle_id else None
    outcome.pushed = rolled_up
    if not rolled_up:
        outcome.message = f"roll-ups failed: {rollup_error}"
    return outcome
