"""Deliver an org's analytics: a signed webhook POST with an idempotency key, or a local outbox file.

Every webhook attempt is recorded in `push_deliveries`, a timed-out one too; an outbox delivery only once
its file is in place. The secret signs the body and is never stored or logged; the webhook URL is shown
as scheme://host only.
"""

import contextlib
import hashlib
import hmac
import json
import os
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
from sqlalchemy.orm import Session

from icp_pipeline.db.models import AnalyticsSnapshot, PushDelivery
from icp_pipeline.redaction import redact
from icp_pipeline.settings import known_secrets, url_origin, url_secrets

SIGNATURE_HEADER = "X-ICP-Signature"
IDEMPOTENCY_HEADER = "Idempotency-Key"


@dataclass(frozen=True)
class PushSettings:
    webhook_url: str | None
    webhook_secret: str | None
    outbox_dir: Path
    max_attempts: int = 5
    backoff_seconds: float = 0.5
    timeout_seconds: float = 10.0  # connect, and each read or write
    attempt_deadline_seconds: float = 30.0  # the whole attempt, however slowly the receiver answers


class PushFailed(RuntimeError):
    pass


class AttemptTimedOut(Exception):
    """No complete answer within the attempt's deadline."""


def post_with_deadline(
    url: str, *, deadline_seconds: float, timeout_seconds: float, **request: Any
) -> httpx.Response:
    """POST and read the whole answer within `deadline_seconds`, or raise AttemptTimedOut.

    httpx's timeouts bound each read, not the request: a receiver that trickles a byte every few
    seconds would hold a sync request open indefinitely. The async client can be cancelled mid-read,
    which closes the connection, so the request runs on its own event loop under `fail_after`."""

    async def post() -> httpx.Response:
        try:
            with anyio.fail_after(deadline_seconds):
                async with httpx.AsyncClient(timeout=timeout_seconds) as client:
                    return await client.post(url, **request)
        except TimeoutError as error:
            raise AttemptTimedOut(f"no complete answer within {deadline_seconds:g} s") from error

    return anyio.run(post)


def write_outbox_file(path: Path, body: bytes) -> None:
    """Write `body` to `path` atomically and durably: a reader sees the old file or the whole new one,
    and a failed write (disk full, read-only, path taken) leaves no temporary file behind."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=".tmp")
    except OSError as error:
        raise PushFailed(f"cannot write to the outbox {path.parent}: {error.strerror or error}") from error
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(body)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(error, OSError):
            raise PushFailed(f"cannot write the outbox file {path}: {error.strerror or error}") from error
        raise
    # The rename is durable only once the directory is synced; where directories cannot be opened
    # (some platforms), the file itself is already on disk.
    with contextlib.suppress(OSError):
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


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
        write_outbox_file(path, body)  # raises PushFailed before anything is recorded
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
    destination = url_origin(settings.webhook_url)
    secrets = [settings.webhook_secret, *url_secrets(settings.webhook_url), *known_secrets()]
    last_error = ""
    for attempt in range(1, settings.max_attempts + 1):
        started = time.monotonic()
        status_code = None
        try:
            response = post_with_deadline(
                settings.webhook_url,
                deadline_seconds=settings.attempt_deadline_seconds,
                timeout_seconds=settings.timeout_seconds,
                content=body,
                headers=headers,
            )
            status_code = response.status_code
            ok = 200 <= status_code < 300
            last_error = "" if ok else f"HTTP {status_code}"
            retry = not ok and retryable_status(status_code)
        except (AttemptTimedOut, httpx.TimeoutException) as exc:
            # Retried under the same idempotency key: a receiver that got the body applies it once.
            ok, retry, last_error = False, True, f"timeout: {exc or type(exc).__name__} from {destination}"
        except httpx.TransportError as exc:
            ok, retry, last_error = False, True, f"{type(exc).__name__}: connection to {destination} failed"
        except httpx.InvalidURL:  # its message would quote the whole URL
            ok, retry, last_error = False, False, f"invalid webhook URL for {destination}"
        last_error = redact(last_error, secrets)
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
