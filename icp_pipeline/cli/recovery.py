"""Clean up after CLI run workers that died: fail their Dagster runs, free their pool slots and
release their purchase claims, so a killed worker or a killed CLI never blocks the next cycle.

Runs launched by the CLI carry the worker that executes them as a tag, `host:pid:start`, so a later
command can tell a dead worker from a live one (another `org run` at the same time) without guessing.
Without a daemon nothing else does this for the embedded instance: Dagster's run monitoring and its
slot reaper (`free_slots_after_run_end_seconds`) live in the daemon.
"""

import os
import socket
from typing import Any

from sqlalchemy import delete, select

from icp_pipeline.db.models import PurchaseClaim
from icp_pipeline.db.session import session_scope

LAUNCHED_BY_TAG = "icp/launched_by"
WORKER_TAG = "icp/worker"
RETRY_OF_TAG = "icp/retry_of"


def _start_ticks(pid: int) -> str | None:
    """The process's start time (clock ticks since boot), or None if it is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None
    if fields[0] in ("Z", "X"):  # killed but not reaped yet: dead for our purpose
        return None
    return fields[19]


def process_identity(pid: int | None = None) -> str:
    """`host:pid:start`: the start time tells a dead worker from a new process that reused its pid."""
    pid = pid or os.getpid()
    return f"{socket.gethostname()}:{pid}:{_start_ticks(pid) or '?'}"


def identity_alive(identity: str) -> bool | None:
    """True or False for a worker of this host; None when it ran elsewhere (we cannot know)."""
    host, _, rest = identity.partition(":")
    pid_text, _, started = rest.partition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return None
    pid = int(pid_text)
    if os.path.exists("/proc/self/stat"):
        ticks = _start_ticks(pid)
        return ticks is not None and (started in ("?", ticks))
    try:  # no /proc (macOS): a signal 0 tells whether the pid exists
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def release_purchase_claims(db_url: str, claimants: list[str]) -> int:
    """Drop the purchase claims of runs whose worker is dead: it can no longer buy, and its claim would
    make the re-execution wait out the claim's whole lifetime."""
    if not claimants:
        return 0
    with session_scope(db_url) as session:
        return session.execute(delete(PurchaseClaim).where(PurchaseClaim.claimant.in_(claimants))).rowcount


def claimant_of(run: Any) -> str:
    """Who a run's purchases are claimed for: its run group (as the purchase path names it)."""
    return run.tags.get("dagster/root_run_id", run.run_id)


def fail_lost_run(instance: Any, run_id: str, reason: str) -> Any:
    """Mark a run whose worker died as failed (unless it already ended) and free its pool slots.
    Returns the run as stored afterwards, or None if the worker died before creating it."""
    run = instance.get_run_by_id(run_id)
    if run is None:
        return None
    if not run.is_finished:
        instance.report_run_failed(run, message=reason)
    # Slots are freed for a finished run too: a worker killed mid-step never released its own.
    instance.event_log_storage.free_concurrency_slots_for_run(run_id)
    return instance.get_run_by_id(run_id)


def reap_dead_runs(instance: Any, db_url: str) -> list[str]:
    """Fail the CLI's unfinished runs whose worker on this host is dead, free their slots and claims,
    and free the slots still held by runs that have ended. Returns the ids of the runs failed."""
    from dagster import DagsterRunStatus, RunsFilter

    unfinished = [
        DagsterRunStatus.QUEUED,
        DagsterRunStatus.NOT_STARTED,
        DagsterRunStatus.STARTING,
        DagsterRunStatus.STARTED,
    ]
    reaped, claimants = [], []
    for run in instance.get_runs(RunsFilter(statuses=unfinished, tags={LAUNCHED_BY_TAG: "cli"})):
        identity = run.tags.get(WORKER_TAG)
        if identity is None or identity_alive(identity) is not False:
            continue
        fail_lost_run(
            instance,
            run.run_id,
            f"the worker process that executed this run ({identity}) is gone (killed or crashed); "
            "icp-pipeline marked the run failed and freed its pool slots",
        )
        reaped.append(run.run_id)
        claimants.append(claimant_of(run))
    storage = instance.event_log_storage
    if storage.supports_global_concurrency_limits:
        for run_id in storage.get_concurrency_run_ids():
            run = instance.get_run_by_id(run_id)
            if run is None or run.is_finished:
                storage.free_concurrency_slots_for_run(run_id)
    # A claim whose run has ended (failed while the database was down, say) protects nothing.
    with session_scope(db_url) as session:
        holders = set(session.scalars(select(PurchaseClaim.claimant).distinct()))
    for holder in holders:
        run = instance.get_run_by_id(holder)
        group_live = instance.get_runs(
            RunsFilter(statuses=unfinished, tags={"dagster/root_run_id": holder}), limit=1
        )
        if run is not None and run.is_finished and not group_live:  # a retry of the group still buys
            claimants.append(holder)
    release_purchase_claims(db_url, claimants)
    return reaped
