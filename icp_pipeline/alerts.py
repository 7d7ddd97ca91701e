"""Failed runs: one record per run in the app database, and its alert to a webhook, retried and recorded.

Nothing here imports Dagster: the failure sensor passes in what it knows about the run.
"""

import time
from datetime import UTC, datetime
from typing import Any

import httpx
from sqlalchemy.orm import Session

from icp_pipeline.db.models import RunFailure
from icp_pipeline.db.session import session_scope
from icp_pipeline.redaction import redact
from icp_pipeline.settings import known_secrets, url_origin, url_secrets
from icp_pipeline.visibility.push import AttemptTimedOut, post_with_deadline, retryable_status

ALERT_TIMEOUT_SECONDS = 10.0  # connect, and each read or write
ALERT_DEADLINE_SECONDS = 20.0  # the whole attempt: a trickling receiver must not hold the sensor


def record_run_failure(
    session: Session, run_id: str, job_name: str, partition_key: str | None, error: str
) -> RunFailure:
    """The run's failure record, created once: a sensor evaluated again for the same run changes nothing.
    Every secret the environment holds is removed from the error before it is stored or alerted."""
    failure = session.get(RunFailure, run_id)
    if failure is None:
        failure = RunFailure(
            run_id=run_id,
            job_name=job_name,
            partition_key=partition_key,
            error=redact(error, known_secrets())[:2000],
            failed_at=datetime.now(UTC),
            alert_status="pending",
            alert_attempts=0,
        )
        session.add(failure)
        session.flush()
    return failure


def alert_payload(failure: RunFailure) -> dict[str, Any]:
    return {
        "run_id": failure.run_id,
        "job": failure.job_name,
        "partition": failure.partition_key,
        "error": failure.error,
        "failed_at": failure.failed_at.isoformat(),
    }


def deliver_alert(
    db_url: str,
    run_id: str,
    url: str | None,
    *,
    max_attempts: int = 3,
    backoff_seconds: float = 0.5,
    deadline_seconds: float = ALERT_DEADLINE_SECONDS,
) -> str:
    """POST the recorded failure to `url` unless it was already sent; 5xx, 408, 429 and connection errors
    are retried with exponential backoff. The outcome (sent, failed or off) and the attempts are stored.
    Returns the alert status."""
    with session_scope(db_url) as session:
        failure = session.get(RunFailure, run_id)
        if failure.alert_status == "sent":
            return "sent"
        if not url:
            failure.alert_status = "off"
            return "off"
        payload = alert_payload(failure)
    url = url.strip()
    destination = url_origin(url)
    error, attempt = "", 0
    for attempt in range(1, max_attempts + 1):
        try:
            response = post_with_deadline(
                url,
                deadline_seconds=deadline_seconds,
                timeout_seconds=ALERT_TIMEOUT_SECONDS,
                json=payload,
            )
        except (AttemptTimedOut, httpx.TimeoutException) as exc:
            error, retry = f"timeout: {exc or type(exc).__name__} from {destination}", True
        except httpx.TransportError as exc:
            error, retry = f"{type(exc).__name__}: connection to {destination} failed", True
        except httpx.InvalidURL:  # its message would quote the whole URL
            error, retry = f"invalid alert URL for {destination}", False
        else:
            if response.is_success:
                error = ""
                break
            error, retry = (
                f"HTTP {response.status_code} from {destination}",
                retryable_status(response.status_code),
            )
        if not retry or attempt == max_attempts:
            break
        time.sleep(backoff_seconds * 2 ** (attempt - 1))
    with session_scope(db_url) as session:
        failure = session.get(RunFailure, run_id)
        failure.alert_attempts += attempt
        failure.alert_status = "failed" if error else "sent"
        failure.alert_error = redact(error, [*url_secrets(url), *known_secrets()]) or None
        return failure.alert_status
