"""Alerts to ICP_ALERT_WEBHOOK_URL, retried and recorded: failed runs (one record per run) and failed
quality gates (one record per cycle and check, `quality_alerts`).

Nothing here imports Dagster: the failure sensor passes in what it knows about the run.
"""

import time
from datetime import UTC, datetime
from typing import Any

import httpx
from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from icp_pipeline.db.models import QualityAlert, RunFailure
from icp_pipeline.db.session import session_scope
from icp_pipeline.redaction import redact
from icp_pipeline.settings import known_secrets, url_origin, url_secrets
from icp_pipeline.visibility.push import (
    IDEMPOTENCY_HEADER,
    SIGNATURE_HEADER,
    AttemptTimedOut,
    canonical_body,
    post_with_deadline,
    retryable_status,
    sign,
)

ALERT_TIMEOUT_SECONDS = 10.0  # connect, and each read or write
ALERT_DEADLINE_SECONDS = 20.0  # the whole attempt: a trickling receiver must not hold the sensor
_INSERTS = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}


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
    error, attempts = post_alert(
        url,
        payload,
        max_attempts=max_attempts,
        backoff_seconds=backoff_seconds,
        deadline_seconds=deadline_seconds,
    )
    with session_scope(db_url) as session:
        failure = session.get(RunFailure, run_id)
        failure.alert_attempts += attempts
        failure.alert_status = "failed" if error else "sent"
        failure.alert_error = error or None
        return failure.alert_status


def post_alert(
    url: str,
    payload: dict[str, Any],
    *,
    secret: str | None = None,
    key: str | None = None,
    max_attempts: int = 3,
    backoff_seconds: float = 0.5,
    deadline_seconds: float = ALERT_DEADLINE_SECONDS,
) -> tuple[str, int]:
    """POST `payload` to `url`: 5xx, 408, 429 and connection errors are retried with exponential
    backoff. With `secret` the body is signed as the push is (X-ICP-Signature); `key` is sent as the
    Idempotency-Key. Returns (error, attempts); the error is "" once delivered and never holds a secret."""
    url = url.strip()
    destination = url_origin(url)
    body = canonical_body(payload)
    headers = {"Content-Type": "application/json"}
    if secret:
        headers[SIGNATURE_HEADER] = sign(body, secret)
    if key:
        headers[IDEMPOTENCY_HEADER] = key
    error, attempt = "", 0
    for attempt in range(1, max_attempts + 1):
        try:
            response = post_with_deadline(
                url,
                deadline_seconds=deadline_seconds,
                timeout_seconds=ALERT_TIMEOUT_SECONDS,
                content=body,
                headers=headers,
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
    return redact(error, [secret, *url_secrets(url), *known_secrets()]), attempt


# --- quality gates ------------------------------------------------------------------------------------


def record_gate_failure(
    session: Session, org_id: str, cycle_id: int, check_name: str, severity: str, description: str
) -> QualityAlert:
    """The failed gate's alert record, created once per cycle and check (a concurrent roll-up of the
    same cycle inserting it too changes nothing: unique (cycle_id, check_name))."""
    insert = _INSERTS[session.get_bind().dialect.name](QualityAlert)
    session.execute(
        insert.values(
            org_id=org_id,
            cycle_id=cycle_id,
            check_name=check_name,
            severity=severity,
            description=redact(description, known_secrets())[:2000],
            status="pending",
            attempts=0,
            created_at=datetime.now(UTC),
        ).on_conflict_do_nothing(index_elements=[QualityAlert.cycle_id, QualityAlert.check_name])
    )
    return session.scalars(
        select(QualityAlert).where(QualityAlert.cycle_id == cycle_id, QualityAlert.check_name == check_name)
    ).one()


def gate_alert_payload(alert: QualityAlert) -> dict[str, Any]:
    return {
        "kind": "quality_gate",
        "org_id": alert.org_id,
        "cycle_id": alert.cycle_id,
        "check": alert.check_name,
        "severity": alert.severity,
        "blocking": alert.severity == "ERROR",
        "description": alert.description,
        "detected_at": alert.created_at.isoformat(),
    }


def gate_alert_key(alert: QualityAlert) -> str:
    return f"icp-{alert.org_id}-cycle-{alert.cycle_id}-gate-{alert.check_name}"


def deliver_gate_alert(
    db_url: str,
    alert_id: int,
    url: str | None,
    secret: str | None,
    *,
    max_attempts: int = 3,
    backoff_seconds: float = 0.5,
) -> str:
    """POST a failed gate's alert unless it was sent already: once per cycle and check. A delivery that
    failed (or had no URL) is tried again the next time the gate fails for that cycle. Returns the status."""
    with session_scope(db_url) as session:
        alert = session.get(QualityAlert, alert_id)
        if alert.status == "sent":
            return "sent"
        if not url:
            alert.status = "off"
            return "off"
        payload, key = gate_alert_payload(alert), gate_alert_key(alert)
    error, attempts = post_alert(
        url, payload, secret=secret, key=key, max_attempts=max_attempts, backoff_seconds=backoff_seconds
    )
    with session_scope(db_url) as session:
        alert = session.get(QualityAlert, alert_id)
        alert.attempts += attempts
        alert.status = "failed" if error else "sent"
        alert.error = error or None
        alert.sent_at = None if error else datetime.now(UTC)
        return alert.status
