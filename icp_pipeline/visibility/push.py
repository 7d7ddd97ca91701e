"""Deliver an org's analytics: a signed webhook POST with an idempotency key, or a local outbox file.

Every attempt is recorded in `push_deliveries`. The secret signs the body and is never stored or logged.
"""

import hashlib
import hmac
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy.orm import Session

from icp_pipeline.db.models import AnalyticsSnapshot, PushDelivery
from icp_pipeline.settings import redact_url

SIGNATURE_HEADER = "X-ICP-Signature"
IDEMPOTENCY_HEADER = "Idempotency-Key"


@dataclass(frozen=True)
class PushSettings:
    webhook_url: str | None
    webhook_secret: str | None
    outbox_dir: Path
    max_attempts: int = 5
    backoff_seconds: float = 0.5
    timeout_seconds: float = 10.0


class PushFailed(RuntimeError):
    pass


def idempotency_key(org_id: str, cycle_id: int, payload: dict[str, Any]) -> str:
    """The same analytics of a cycle always get the same key, so a receiver applies them once; analytics
    that changed (a backfill completed failed runs) get a new key, so they are not dropped as a repeat.
    `generated_at` is left out: recomputing unchanged analytics is not a new delivery."""
    content = {k: v for k, v in payload.items() if k != "generated_at"}
    return f"icp-{org_id}-cycle-{cycle_id}-{hashlib.sha256(canonical_body(content)).hexdigest()[:16]}"


def canonical_body(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()


def sign(body: bytes, secret: str) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def retryable_status(status_code: int) -> bool:
    """A webhook answer worth another attempt: a server error, a timeout or a rate limit."""
    return status_code >= 500 or status_code in (408, 429)


def push_snapshot(session: Session, snapshot: AnalyticsSnapshot, settings: PushSettings) -> dict[str, Any]:
    """Deliver one snapshot; retries 5xx, 408, 429 and connection errors with exponential backoff."""
    body = canonical_body(snapshot.payload)
    digest = hashlib.sha256(body).hexdigest()
    key = idempotency_key(snapshot.org_id, snapshot.cycle_id, snapshot.payload)

    def record(**values: Any) -> PushDelivery:
        delivery = PushDelivery(
            org_id=snapshot.org_id,
            cycle_id=snapshot.cycle_id,
            snapshot_id=snapshot.id,
            idempotency_key=key,
            payload_sha256=digest,
            **values,
        )
        session.add(delivery)
        session.flush()
        return delivery

    if not settings.webhook_url:
        path = settings.outbox_dir / snapshot.org_id / f"cycle-{snapshot.cycle_id}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(body)
        tmp.replace(path)  # atomic: a reader never sees half a file
        record(target="outbox", destination=str(path), attempt=1, ok=True)
        return {
            "target": "outbox",
            "destination": str(path),
            "attempts": 1,
            "idempotency_key": key,
            "ok": True,
        }

    headers = {"Content-Type": "application/json", IDEMPOTENCY_HEADER: key}
    if settings.webhook_secret:
        headers[SIGNATURE_HEADER] = sign(body, settings.webhook_secret)
    destination = redact_url(settings.webhook_url)
    last_error = ""
    with httpx.Client(timeout=settings.timeout_seconds) as client:
        for attempt in range(1, settings.max_attempts + 1):
            started = time.monotonic()
            status_code = None
            try:
                response = client.post(settings.webhook_url, content=body, headers=headers)
                status_code = response.status_code
                ok = 200 <= status_code < 300
                last_error = "" if ok else f"HTTP {status_code}"
                retry = not ok and retryable_status(status_code)
            except httpx.TransportError as exc:
                ok, retry, last_error = (
                    False,
                    True,
                    f"{type(exc).__name__}: connection to {destination} failed",
                )
            record(
                target="webhook",
                destination=destination,
                attempt=attempt,
                ok=ok,
                status_code=status_code,
                error=last_error or None,
                duration_ms=int((time.monotonic() - started) * 1000),
            )
            if ok:
                return {
                    "target": "webhook",
                    "destination": destination,
                    "attempts": attempt,
                    "idempotency_key": key,
                    "status_code": status_code,
                    "ok": True,
                }
            if not retry or attempt == settings.max_attempts:
                break
            time.sleep(settings.backoff_seconds * 2 ** (attempt - 1) * random.uniform(0.8, 1.2))
    session.commit()  # keep the record of every failed attempt even though the step fails
    raise PushFailed(f"push to {destination} failed after {attempt} attempt(s): {last_error}")
