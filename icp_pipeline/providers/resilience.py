"""What the adapters share: time budgets, Retry-After parsing, backoff, adaptive pacing, key redaction."""

import email.utils
import os
import random
import threading
import time
from dataclasses import dataclass

from icp_pipeline.redaction import redact  # noqa: F401  (re-exported: the adapters import it from here)

# No step may run longer than 60 s: one call gets at most this, and a step's calls share a deadline.
STEP_BUDGET_SECONDS = 55.0
CALL_TIMEOUT_SECONDS = 45.0
RETRY_AFTER_CAP_SECONDS = 30.0
PACING_CAP_SECONDS = 8.0
RETRYABLE_STATUS = frozenset({408, 409, 429}) | frozenset(range(500, 600))


def call_timeout(deadline: float | None) -> float:
    """Seconds this call may take: the per-call limit, or what is left of the step's budget."""
    if deadline is None:
        return CALL_TIMEOUT_SECONDS
    return max(1.0, min(CALL_TIMEOUT_SECONDS, deadline - time.monotonic()))


def retry_after_seconds(headers: object) -> float | None:
    """`retry-after-ms` or `Retry-After` (seconds or an HTTP date), capped; None when absent."""
    if headers is None:
        return None
    get = getattr(headers, "get", None)
    if get is None:
        return None
    value: float | None = None
    if (ms := get("retry-after-ms")) is not None:
        try:
            value = float(ms) / 1000
        except ValueError:
            value = None
    if value is None and (raw := get("retry-after")) is not None:
        try:
            value = float(raw)
        except ValueError:
            parsed = email.utils.parsedate_to_datetime(raw) if raw else None
            value = parsed.timestamp() - time.time() if parsed else None
    if value is None:
        return None
    return min(max(value, 0.0), RETRY_AFTER_CAP_SECONDS)


def backoff_seconds(attempt: int, base: float = 1.0, cap: float = RETRY_AFTER_CAP_SECONDS) -> float:
    """Exponential backoff with ±25% jitter; attempt 0 is the first retry."""
    return min(cap, base * 2**attempt) * random.uniform(0.75, 1.25)


@dataclass
class _PaceState:
    interval: float = 0.0  # minimum seconds between calls, grown by 429s, shrunk by successes
    next_at: float = 0.0


class Pacer:
    """Per-provider pacing shared by every run in this process: a 429 slows later calls down."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._states: dict[str, _PaceState] = {}

    def wait(self, provider: str) -> float:
        with self._lock:
            state = self._states.setdefault(provider, _PaceState())
            now = time.monotonic()
            delay = min(max(0.0, state.next_at - now), PACING_CAP_SECONDS)
            state.next_at = max(now, state.next_at) + state.interval
        if delay:
            time.sleep(delay)
        return delay

    def rate_limited(self, provider: str, retry_after: float | None) -> None:
        with self._lock:
            state = self._states.setdefault(provider, _PaceState())
            state.interval = min(PACING_CAP_SECONDS, max(0.5, state.interval * 2))
            state.next_at = max(state.next_at, time.monotonic() + (retry_after or state.interval))

    def succeeded(self, provider: str) -> None:
        with self._lock:
            state = self._states.get(provider)
            if state is not None:
                state.interval = state.interval / 2 if state.interval > 0.05 else 0.0

    def reset(self) -> None:
        with self._lock:
            self._states.clear()

    def interval(self, provider: str) -> float:
        state = self._states.get(provider)
        return state.interval if state else 0.0


PACER = Pacer()
# Pacing state belongs to the process that saw the 429s, and its lock may have been held by another
# thread at a fork: a forked child re-initialises it whole (lock included) rather than reset() it.
os.register_at_fork(after_in_child=PACER.__init__)
