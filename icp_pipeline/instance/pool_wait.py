"""How a step waits for a pool slot: a short, fixed retry interval, asleep between checks.

Two behaviours of Dagster 1.13.27's op-granularity pools idle the `llm` pool and burn a core:

1. A blocked claim is retried after 1 s, then 1.1 s, 1.21 s ... up to 15 s
   (`instance_concurrency_context._calculate_timeout_interval`), unless the storage's claim status
   carries its own `sleep_interval`. A slot freed just after a check then sits idle until the next
   one: at 1 s per model call that is about a third of the pool. Patched below to
   POOL_CLAIM_RETRY_SECONDS whatever the storage (our guarded storages also answer a blocked claim
   with it; dagster-postgres's own, which the Helm chart configures, does not).
2. While a claim is pending, the in-process executor asks
   `InstanceConcurrencyContext.interval_to_next_pending_claim_check` how long to sleep, and it returns
   `min([0, *time_until_each_retry])`, never a positive number, so the executor spins in a tight loop
   between retries (one core per waiting run). Patched below to return the time until the next retry.

Both touch private Dagster code, pinned by dagster==1.13.27 and covered by
icp_pipeline_tests/integration/test_pool_wait.py. The patch is applied when this module is imported,
which guarded_storage.py and the code location (definitions.py) do: every process that opens an
instance with our storages, or loads our definitions (run workers here and in Kubernetes Jobs, the
CLI's workers), waits the same way.
"""

import time
import warnings

import dagster
from dagster._core.execution.plan import instance_concurrency_context
from dagster._core.execution.plan.instance_concurrency_context import InstanceConcurrencyContext

# How soon a step blocked on a full pool checks again. Each check is a few indexed queries on the
# event log; 10 checks a second per waiting step keep a freed slot idle for at most 0.1 s. Measured
# against 0.2 s (bench/bench_cycle.py, 1 s per call, alternating): the CLI cycle 1.17-1.19x against
# 1.22-1.25x the ideal; the daemon path unchanged (45.1 s), 0.05 s more CPU per question run.
POOL_CLAIM_RETRY_SECONDS = 0.1


def _interval_to_next_pending_claim_check(self: InstanceConcurrencyContext) -> float:
    """Seconds until the earliest pending claim may be retried (0 when one is due now)."""
    pending = self._pending_claims  # noqa: SLF001 - the patched method's own state
    if not pending:
        return 0.0
    timeouts = self._pending_timeouts  # noqa: SLF001
    if any(step_key not in timeouts for step_key in pending):
        return 0.0  # a claim with no retry time yet is due now
    return max(0.0, min(timeouts[step_key] for step_key in pending) - time.time())


def _retry_interval(sleep_interval: float | None, _pending_claim_count: int) -> float:
    """The storage's interval when it gives one, else POOL_CLAIM_RETRY_SECONDS (not Dagster's growing one)."""
    return POOL_CLAIM_RETRY_SECONDS if sleep_interval is None else sleep_interval


PINNED_DAGSTER = "1.13.27"


def apply() -> bool:
    """Patch Dagster's slot wait if it is the pinned version (True when patched). Another version is
    left alone with a warning, and test_pool_wait.py fails until the patch is re-checked."""
    if dagster.__version__ != PINNED_DAGSTER:
        warnings.warn(
            f"icp_pipeline.instance.pool_wait targets dagster {PINNED_DAGSTER}, found {dagster.__version__}: "
            "not applied; re-check InstanceConcurrencyContext's pool waits",
            stacklevel=2,
        )
        return False
    InstanceConcurrencyContext.interval_to_next_pending_claim_check = _interval_to_next_pending_claim_check  # type: ignore[method-assign]
    instance_concurrency_context._calculate_timeout_interval = _retry_interval  # noqa: SLF001
    return True


APPLIED = apply()
