"""A run worker's wait for a pool slot: sleep until the next claim check, and check often.

Dagster 1.13.27's `InstanceConcurrencyContext.interval_to_next_pending_claim_check` returns
`min([0, *waits])`, which is never positive, so `ActiveExecution.sleep_til_ready` never sleeps and a
step blocked on the `llm` pool spins a core between its claim checks (on 2 cores, 1-3 such workers
took CPU from the steps that held the slots). Its claim checks also back off from 1 s up to 15 s
(`_calculate_timeout_interval`), so a slot freed after a long wait stayed idle for seconds while a
step waited for its next check; the pool's cap of 3 calls is the pipeline's bottleneck, so idle slot
time is wall time.

The patch: the interval is the time to the earliest pending check, never negative (the worker
sleeps), and a blocked claim is re-checked every `CLAIM_CHECK_SECONDS` (one indexed UPDATE on the
event-log storage per waiting step). It is applied by importing this module, which the project's
event-log storages do (icp_pipeline/instance/guarded_storage.py): every run worker opens the
instance, so every run worker gets it. Tied to the pinned dagster version: a different version
leaves Dagster's code alone and says so (the test fails, so the pin is re-checked on upgrade).
"""

import time
import warnings

import dagster
from dagster._core.execution.plan import instance_concurrency_context as _icc
from dagster._core.execution.plan.instance_concurrency_context import InstanceConcurrencyContext

PINNED_DAGSTER = "1.13.27"
# A freed slot waits at most this long for a blocked step; 3 slots and a few dozen waiting steps
# make a few dozen cheap queries a second at most.
CLAIM_CHECK_SECONDS = 0.2


def interval_to_next_pending_claim_check(self: InstanceConcurrencyContext) -> float:
    if not self._pending_claims:
        return 0.0
    now = time.time()
    return max(0.0, min([ready_at - now for ready_at in self._pending_timeouts.values()], default=0.0))


def calculate_timeout_interval(sleep_interval: float | None, pending_claim_count: int) -> float:
    # A storage's own hint (none of Dagster's SQL storages gives one) still wins.
    return sleep_interval if sleep_interval is not None else CLAIM_CHECK_SECONDS


def apply() -> bool:
    """Patch Dagster's slot wait if it is the pinned version; True when patched."""
    if dagster.__version__ != PINNED_DAGSTER:
        warnings.warn(
            f"icp_pipeline.instance.claim_wait targets dagster {PINNED_DAGSTER}, found {dagster.__version__}: "
            "not applied; re-check InstanceConcurrencyContext.interval_to_next_pending_claim_check",
            stacklevel=2,
        )
        return False
    InstanceConcurrencyContext.interval_to_next_pending_claim_check = interval_to_next_pending_claim_check  # type: ignore[method-assign]
    _icc._calculate_timeout_interval = calculate_timeout_interval  # noqa: SLF001
    return True


APPLIED = apply()
