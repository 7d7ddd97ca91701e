"""Run one org cycle as real Dagster runs: one run per question-run partition, then the org roll-ups.

Execution path: forked worker processes (cli/workers.py), each executing whole runs in-process
against the instance at DAGSTER_HOME. Forking after Dagster and the definitions are imported avoids
paying the ~3 s import per run, and in-process execution avoids a process per step. The `llm` pool
still caps model steps at 3 across every worker, because each step claims its slot in the instance.

Nothing is bought by surprise: a command first finishes what an earlier one left (an open cycle is
resumed, a complete cycle that was never delivered is rolled up and pushed), says what it is about
to buy, and opens a new cycle within ICP_MIN_CYCLE_INTERVAL of the last one only when asked.
"""

import os
import re
import sys
import time
import uuid
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from icp_pipeline.cli.recovery import reap_dead_runs
from icp_pipeline.cli.workers import QUIET, execute_one, execute_partitions, with_quiet_logs
from icp_pipeline.db.session import session_scope
from icp_pipeline.ledger import cycle_spend_usd
from icp_pipeline.settings import database_url
from icp_pipeline.visibility import estimate, steps
from icp_pipeline.visibility.cycles import (
    claim_rollup,
    delivered,
    latest_cycle,
    refresh_cycle,
    require_org,
)
from icp_pipeline.visibility.quality import blocked_by_gate

__all__ = ["QUIET", "execute_one", "execute_partitions", "with_quiet_logs"]

DEFAULT_MIN_CYCLE_INTERVAL = timedelta(hours=1)
# How long `org run` waits for a roll-up that another process (the sensor, another `org run`) claimed.
ROLLUP_WAIT_SECONDS = 180.0
_CYCLE_JOB = "org_cycle_job"
_ROLLUP_JOB = "org_rollup_job"
# The roll-up without the blocking quality gates: `org push --ignore-gates` only.
_UNGATED_ROLLUP_JOB = "org_rollup_ungated_job"


@dataclass
class CycleOutcome:
    org_id: str
    cycle_id: int
    status: str  # running | succeeded | failed | refused (a new cycle was not opened)
    total: int
    completed: int
    failed: int
    rolled_up: bool
    pushed: bool
    payload: dict[str, Any] | None
    message: str
    # The blocking quality gates that stopped the push ("check: description"); empty otherwise.
    blocked_by: list[str] = field(default_factory=list)
    spent_usd: float | None = None  # the cycle's spend, from the ledger
    budget_usd: float | None = None  # the org's budget_usd per cycle, if any
    # Where the cycle's analytics were last delivered: ("webhook", its origin) or ("outbox", the file).
    delivered_to: tuple[str, str] | None = None


def load_instance_and_defs(defs: Any = None) -> tuple[Any, Any]:
    """The instance at DAGSTER_HOME (the embedded one by default) and the code location's definitions.
    Runs of an earlier CLI whose worker is dead are failed first and their pool slots freed."""
    from icp_pipeline.cli.instance import get_instance, prepare_dagster_home

    prepare_dagster_home()
    if defs is None:
        # Built for this command, with the resources its environment names now (the module's `defs`
        # read the environment when it was first imported, which in a long-lived process may differ).
        from icp_pipeline.definitions import build_defs
        from icp_pipeline.defs.resources import resources_from_env

        defs = build_defs(resources_from_env())
    instance = get_instance()
    reaped = reap_dead_runs(instance, database_url())
    if reaped:
        sys.stderr.write(
            f"note: marked {len(reaped)} run(s) of an earlier command failed: their worker is gone\n"
        )
    return instance, defs


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


def min_cycle_interval() -> timedelta:
    """ICP_MIN_CYCLE_INTERVAL: seconds, or a number with s, m, h or d (default 1h; 0 disables it)."""
    text = os.environ.get("ICP_MIN_CYCLE_INTERVAL", "").strip().lower()
    if not text:
        return DEFAULT_MIN_CYCLE_INTERVAL
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smhd]?)", text)
    if match is None:
        raise ValueError(f"ICP_MIN_CYCLE_INTERVAL={text!r}: expected e.g. 3600, 90m, 1h or 1d")
    unit = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
    return timedelta(seconds=float(match.group(1)) * unit)


def _human(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _is_live(defs: Any) -> tuple[Callable[[str, str], bool], dict]:
    """Which models would be called for real with these definitions (a key set, mode not offline),
    read from the models resource without creating any SDK client in this (forking) process."""
    from icp_pipeline.providers.pricing import Price

    models = defs.resources.get("models")
    if models is None:
        return (lambda _p, _m: False), {}
    keys = {
        "openai": models.openai_api_key,
        "anthropic": models.anthropic_api_key,
        "gemini": models.gemini_api_key,
    }

    def is_live(provider: str, _model: str) -> bool:
        return models.mode != "offline" and provider != "offline" and bool(keys.get(provider))

    return is_live, {name: Price(*prices) for name, prices in models.price_overrides.items()}


def _outcome(cycle: Any, message: str = "", status: str | None = None) -> CycleOutcome:
    return CycleOutcome(
        cycle.org_id,
        cycle.id,
        status or cycle.status,
        cycle.total,
        cycle.completed,
        cycle.failed,
        False,
        False,
        None,
        message,
    )


def run_cycle(
    org_id: str,
    workers: int = 3,
    progress: bool = True,
    defs: Any = None,
    new_cycle: bool = False,
    existing_only: bool = False,
    announce: Callable[[str], None] | None = None,
) -> CycleOutcome:
    """Resume the org's open cycle, deliver a complete one that was not delivered, or open a new one
    (refused within ICP_MIN_CYCLE_INTERVAL of the last unless `new_cycle`; never with
    `existing_only`, which reports the latest cycle instead). `defs` defaults to the code location's;
    tests pass their own resources through it. `announce` receives what is about to be bought."""
    if workers < 1:
        raise ValueError(f"workers must be at least 1, not {workers}")
    announce = announce or (lambda _message: None)
    db_url = database_url()
    instance, defs = load_instance_and_defs(defs)
    is_live, overrides = _is_live(defs)
    interval = min_cycle_interval()
    with session_scope(db_url) as session:
        budget = require_org(session, org_id).budget_usd
        last = latest_cycle(session, org_id)
        if last is not None and last.status != "running":
            undelivered = last.status == "succeeded" and not delivered(session, last)
            if undelivered and new_cycle and blocked_by_gate(session, last.id):
                # Re-rolling it would only be blocked again: the operator asked for the next cycle.
                announce(
                    f"cycle {last.id} of {org_id} stays unpushed (a blocking quality gate failed); "
                    "opening a new cycle as asked"
                )
            elif undelivered:
                announce(
                    f"cycle {last.id} of {org_id} is complete but was not delivered: rolling it up and "
                    "pushing it (nothing is bought)"
                )
                return finish_cycle(org_id, last.id, instance, defs)
            age = datetime.now(UTC) - _aware(last.created_at)
            if existing_only or (not new_cycle and age < interval):
                outcome = _outcome(last, status="refused")
                planned = estimate.estimate(estimate.new_cycle_calls(session, org_id), is_live, overrides)
                outcome.payload = _snapshot_payload(session, org_id, last.id)
                outcome.delivered_to = delivery(session, last.id)
                if existing_only:
                    outcome.message = f"cycle {last.id} of {org_id} already ran; showing its analytics"
                else:
                    outcome.message = (
                        f"cycle {last.id} of {org_id} was opened {_human(age)} ago, within "
                        f"ICP_MIN_CYCLE_INTERVAL ({_human(interval)}); a new cycle would buy "
                        f"{planned.describe()}. Run `icp-pipeline org run {org_id} --new-cycle` to buy "
                        f"it now, or see the latest analytics with `icp-pipeline org report {org_id}`"
                    )
                return outcome
        running = last.id if last is not None and last.status == "running" else None

    from icp_pipeline.defs.visibility.partitions import orgs_partitions, question_runs_partitions

    instance.add_dynamic_partitions(orgs_partitions.name, [org_id])
    if running is None:
        cycle_id, created = materialize_org_cycle(org_id, instance, defs)
    else:
        cycle_id, created = running, False
    with session_scope(db_url) as session:
        cycle = refresh_cycle(session, cycle_id)
        keys = sorted({i.partition_key for i in cycle.items if i.status not in ("succeeded", "failed")})
        done = (cycle.completed, cycle.failed, cycle.total)
        planned = estimate.estimate(estimate.open_item_calls(session, cycle_id), is_live, overrides)
        spent = cycle_spend_usd(session, cycle_id)
    verb = "opened" if created else "resuming"
    announce(
        f"cycle {cycle_id} of {org_id} ({verb}): {len(keys)} question runs to do; buying {planned.describe()}"
    )
    if budget is not None:
        over = planned.usd > budget - spent
        announce(
            f"budget_usd {_usd(budget)} per cycle, {_usd(spent)} spent so far: purchases stop with "
            '"budget exhausted" once the cycle\'s spend reaches it'
            + ("; the estimate is over what is left, so some runs may fail" if over else "")
        )

    instance.add_dynamic_partitions(question_runs_partitions.name, keys)

    bar = Progress(done[2], progress)
    completed, failed = done[0], done[1]
    bar.show(completed, failed)
    tags = {"icp/org": org_id, "icp/cycle_id": str(cycle_id), "icp/launched_by": "cli"}
    job = defs.resolve_job_def("question_run_job")
    with closing(execute_partitions(job, keys, workers, tags, instance=instance, db_url=db_url)) as results:
        for key, ok, error in results:
            if not ok:
                # The assets mark their item failed; this covers a run that died before they could.
                steps.fail_partition(db_url, key, "run", error)
            with session_scope(db_url) as session:
                cycle = refresh_cycle(session, cycle_id)
                completed, failed = cycle.completed, cycle.failed
            bar.show(completed, failed)
    bar.close()
    return finish_cycle(org_id, cycle_id, instance, defs)


def materialize_org_cycle(org_id: str, instance: Any, defs: Any) -> tuple[int, bool]:
    """Open the org's next cycle by materializing `org_cycle` for its partition, as the schedule and the
    sync sensor do; (cycle id, created). The asset opens it under the org row's lock: a command that
    finds a cycle already running (another `org run`, the schedule) shares that cycle."""
    from dagster import DagsterEventType

    tags = {"icp/org": org_id, "icp/launched_by": "cli"}
    run_id = str(uuid.uuid4())
    ok, error = execute_one(defs.resolve_job_def(_CYCLE_JOB), org_id, instance, tags, run_id=run_id)
    if not ok:
        raise ValueError(f"could not open a cycle of {org_id}: {error}")
    (record,) = instance.get_records_for_run(run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION).records
    metadata = record.event_log_entry.asset_materialization.metadata
    return int(metadata["cycle_id"].value), bool(metadata["created"].value)


def _usd(amount: float) -> str:
    return f"${amount:.2f}" if amount >= 0.01 or amount == 0 else f"${amount:.4f}"


def blocking_gate_failures(instance: Any, run_id: str) -> list[str]:
    """The blocking quality gates that failed in a roll-up run, as "check: description"."""
    from dagster import AssetCheckSeverity, DagsterEventType

    records = instance.get_records_for_run(run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION).records
    failed = []
    for record in records:
        evaluation = record.event_log_entry.dagster_event.event_specific_data
        if not evaluation.passed and evaluation.blocking and evaluation.severity == AssetCheckSeverity.ERROR:
            failed.append(f"{evaluation.check_name}: {evaluation.description or 'failed'}")
    return failed


def _snapshot_payload(session: Any, org_id: str, cycle_id: int) -> dict[str, Any] | None:
    snapshot = steps.latest_snapshot(session, org_id)
    return snapshot.payload if snapshot is not None and snapshot.cycle_id == cycle_id else None


def delivery(session: Any, cycle_id: int) -> tuple[str, str] | None:
    """The cycle's latest successful delivery as (target, destination): the webhook's origin (stored
    redacted, never its path) or the outbox file's path."""
    from sqlalchemy import select

    from icp_pipeline.db.models import PushDelivery

    row = session.execute(
        select(PushDelivery.target, PushDelivery.destination)
        .where(PushDelivery.cycle_id == cycle_id, PushDelivery.ok)
        .order_by(PushDelivery.id.desc())
        .limit(1)
    ).first()
    return None if row is None else (row.target, row.destination)


def _rollup_in_progress(instance: Any, cycle_id: int) -> bool:
    from dagster import DagsterRunStatus, RunsFilter

    live = [
        DagsterRunStatus.QUEUED,
        DagsterRunStatus.NOT_STARTED,
        DagsterRunStatus.STARTING,
        DagsterRunStatus.STARTED,
    ]
    runs = instance.get_runs(
        RunsFilter(job_name=_ROLLUP_JOB, statuses=live, tags={"icp/cycle_id": str(cycle_id)}), limit=1
    )
    return bool(runs)


def _wait_for_other_rollup(instance: Any, db_url: str, cycle_id: int, requested_at: datetime | None) -> bool:
    """Wait (bounded) while another process's roll-up of the cycle is under way; True once the cycle
    is delivered. False when nobody is rolling it up any more (it died or failed) or time ran out."""
    deadline = time.monotonic() + float(os.environ.get("ICP_ROLLUP_WAIT_SECONDS", ROLLUP_WAIT_SECONDS))
    # The claimant may not have created its run yet: give it 10 s from its claim.
    since_claim = (datetime.now(UTC) - _aware(requested_at)).total_seconds() if requested_at else 0.0
    grace_until = time.monotonic() + max(0.0, 10 - since_claim)
    last_reap = time.monotonic()
    while time.monotonic() < deadline:
        with session_scope(db_url) as session:
            cycle = refresh_cycle(session, cycle_id)
            if delivered(session, cycle):
                return True
        if time.monotonic() - last_reap > 10:
            reap_dead_runs(instance, db_url)
            last_reap = time.monotonic()
        if not _rollup_in_progress(instance, cycle_id) and time.monotonic() > grace_until:
            return False
        time.sleep(1)
    return False


def finish_cycle(
    org_id: str, cycle_id: int, instance: Any, defs: Any, force: bool = False, ignore_gates: bool = False
) -> CycleOutcome:
    """Roll up and push a complete cycle, once: if another process claimed the roll-up, wait for it and
    report; if that process is gone or failed, do it here (the push is idempotent by its key).
    `force` re-runs the roll-up even when the cycle was delivered (`org push`); `ignore_gates` runs it
    without the blocking quality gates (`org push --ignore-gates`)."""
    db_url = database_url()
    with session_scope(db_url) as session:
        cycle = refresh_cycle(session, cycle_id)
        outcome = _outcome(cycle)
        outcome.spent_usd = cycle_spend_usd(session, cycle_id)
        outcome.budget_usd = require_org(session, org_id).budget_usd
        if cycle.status == "running":
            outcome.message = (
                f"cycle {cycle_id} of {org_id} is still running ({cycle.completed + cycle.failed} of "
                f"{cycle.total} done); `icp-pipeline org run {org_id}` resumes it"
            )
            return outcome
        if cycle.status != "succeeded":
            outcome.message = f"cycle {cycle_id} of {org_id}: every one of {cycle.total} question runs failed; nothing pushed"
            return outcome
        was_delivered = delivered(session, cycle)
        requested_at = cycle.rollup_requested_at
        claimed = claim_rollup(session, cycle_id)
    if was_delivered and not force:
        outcome.rolled_up = outcome.pushed = True
        outcome.message = f"cycle {cycle_id} of {org_id} was already rolled up and pushed"
    elif not claimed and not force and _wait_for_other_rollup(instance, db_url, cycle_id, requested_at):
        outcome.rolled_up = outcome.pushed = True
        outcome.message = f"cycle {cycle_id} of {org_id} was rolled up and pushed by another process"
    else:
        tags = {"icp/org": org_id, "icp/cycle_id": str(cycle_id), "icp/launched_by": "cli"}
        job = defs.resolve_job_def(_UNGATED_ROLLUP_JOB if ignore_gates else _ROLLUP_JOB)
        run_id = str(uuid.uuid4())
        ok, error = execute_one(job, org_id, instance, tags, run_id=run_id)
        outcome.rolled_up = outcome.pushed = ok
        if not ok:
            outcome.blocked_by = blocking_gate_failures(instance, run_id)
        if outcome.blocked_by:
            outcome.message = (
                f"the push of cycle {cycle_id} was blocked by {len(outcome.blocked_by)} quality gate(s): "
                + "; ".join(outcome.blocked_by)
                + f". Nothing was pushed. Fix the cause and run `icp-pipeline org push {org_id}`, push "
                f"anyway with `icp-pipeline org push {org_id} --ignore-gates`, or leave this cycle "
                f"unpushed and open the next with `icp-pipeline org run {org_id} --new-cycle`"
            )
        elif not ok:
            outcome.message = (
                f"roll-ups of cycle {cycle_id} failed: {error}. Nothing needs to be bought again: "
                f"retry them with `icp-pipeline org push {org_id}`"
            )
    with session_scope(db_url) as session:
        outcome.payload = _snapshot_payload(session, org_id, cycle_id)
        outcome.delivered_to = delivery(session, cycle_id)
    return outcome


def push_latest(org_id: str, defs: Any = None, ignore_gates: bool = False) -> CycleOutcome | None:
    """`org push`: roll up and push the org's latest cycle again without buying anything; the quality
    gates run again and block it as `org run` does, unless `ignore_gates`. None when the org has no
    cycle yet."""
    instance, defs = load_instance_and_defs(defs)
    with session_scope(database_url()) as session:
        require_org(session, org_id)
        cycle = latest_cycle(session, org_id)
        if cycle is None:
            return None
        cycle_id = cycle.id
    return finish_cycle(org_id, cycle_id, instance, defs, force=True, ignore_gates=ignore_gates)
