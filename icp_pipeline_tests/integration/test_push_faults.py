"""Pushing analytics under faults: a receiver that trickles its answer, an outbox that cannot be
written, and a cycle whose push failed being pushed again without buying anything."""

import time
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa
from dagster import DagsterInstance

from icp_pipeline.cli.runner import run_cycle
from icp_pipeline.db.models import AnalyticsSnapshot, ModelCall, PushDelivery
from icp_pipeline.db.session import session_scope
from icp_pipeline.defs.resources import AppDatabase, PushResource
from icp_pipeline.defs.visibility.assets import analytics_push
from icp_pipeline.visibility.cycles import open_cycle
from icp_pipeline.visibility.push import IDEMPOTENCY_HEADER, PushFailed, PushSettings, push_snapshot
from icp_pipeline_tests.support.pipeline import count, pipeline_defs
from icp_pipeline_tests.support.webhook import WebhookReceiver


def _snapshot(db_url: str) -> int:
    """A stored analytics snapshot of a new acme cycle (the push reads nothing else)."""
    with session_scope(db_url) as session:
        cycle, _ = open_cycle(session, "acme")
        snapshot = AnalyticsSnapshot(
            org_id="acme",
            cycle_id=cycle.id,
            payload={"org": "acme", "cycle_id": cycle.id, "runs": {"completed": 45}},
            analytics_version="test",
        )
        session.add(snapshot)
        session.flush()
        return snapshot.id


def _push(db_url: str, snapshot_id: int, settings: PushSettings) -> None:
    with session_scope(db_url) as session:
        push_snapshot(session, session.get(AnalyticsSnapshot, snapshot_id), settings)


def _deliveries(db_url: str) -> list[PushDelivery]:
    with session_scope(db_url) as session:
        rows = list(session.scalars(sa.select(PushDelivery).order_by(PushDelivery.id)))
        session.expunge_all()
        return rows


def test_a_trickling_receiver_times_out_each_attempt_and_every_attempt_is_recorded(
    sqlite_app: str, tmp_path: Path
) -> None:
    snapshot_id = _snapshot(sqlite_app)
    # One byte every 0.5 s: no single read ever waits the 10 s read timeout, the answer takes 20 s.
    with WebhookReceiver(trickle_seconds=0.5, trickle_bytes=40) as hook:
        settings = PushSettings(
            webhook_url=hook.url,
            webhook_secret="whsec-test",
            outbox_dir=tmp_path / "outbox",
            max_attempts=2,
            backoff_seconds=0.01,
            timeout_seconds=10.0,
            attempt_deadline_seconds=1.5,
        )
        started = time.monotonic()
        with pytest.raises(PushFailed, match="timeout"):
            _push(sqlite_app, snapshot_id, settings)
        elapsed = time.monotonic() - started
        assert len(hook.requests) == 2
    # Two attempts of at most 1.5 s each, plus the backoff and some slack for a slow machine.
    assert elapsed < 2 * 1.5 + 2.0, f"the push took {elapsed:.1f} s"
    rows = _deliveries(sqlite_app)
    assert [(d.attempt, d.ok, d.status_code) for d in rows] == [(1, False, None), (2, False, None)]
    assert all(d.error.startswith("timeout") for d in rows)
    assert all(1400 <= d.duration_ms < 4000 for d in rows)
    assert {d.destination for d in rows} == {hook.url.removesuffix("/hook")}


def test_an_outbox_write_that_fails_records_nothing_and_leaves_no_temporary_file(
    sqlite_app: str, tmp_path: Path
) -> None:
    snapshot_id = _snapshot(sqlite_app)
    with session_scope(sqlite_app) as session:
        cycle_id = session.get(AnalyticsSnapshot, snapshot_id).cycle_id
    outbox = tmp_path / "outbox"
    # The file's name is taken by a directory: the write succeeds, the rename fails. Unlike chmod,
    # this stops root too.
    (outbox / "acme" / f"cycle-{cycle_id}.json" / "something").mkdir(parents=True)
    settings = PushSettings(webhook_url=None, webhook_secret=None, outbox_dir=outbox)
    with pytest.raises(PushFailed, match="cannot write the outbox file"):
        _push(sqlite_app, snapshot_id, settings)
    assert not [p for p in outbox.rglob("*") if p.name.endswith(".tmp")]
    assert sorted(p.name for p in (outbox / "acme").iterdir()) == [f"cycle-{cycle_id}.json"]

    # An outbox under a regular file (as good as a read-only disk, for root too).
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    settings = PushSettings(webhook_url=None, webhook_secret=None, outbox_dir=blocker / "outbox")
    with pytest.raises(PushFailed, match="cannot write to the outbox"):
        _push(sqlite_app, snapshot_id, settings)
    assert _deliveries(sqlite_app) == []

    # Once the outbox is writable again the same push goes through, recorded once.
    settings = PushSettings(webhook_url=None, webhook_secret=None, outbox_dir=tmp_path / "fixed")
    _push(sqlite_app, snapshot_id, settings)
    assert [(d.target, d.ok) for d in _deliveries(sqlite_app)] == [("outbox", True)]
    assert [p.name for p in (tmp_path / "fixed" / "acme").iterdir()] == [f"cycle-{cycle_id}.json"]


def test_a_cycle_whose_push_failed_is_pushed_again_with_the_same_key_and_nothing_bought(
    sqlite_app: str,
) -> None:
    with WebhookReceiver(fail_first=2) as hook:
        push = PushResource(webhook_url=hook.url, max_attempts=2, backoff_seconds=0.01)
        defs = pipeline_defs(sqlite_app, push=push)
        outcome = run_cycle("acme", workers=3, progress=False, defs=defs)
        assert outcome.status == "succeeded" and not outcome.pushed
        assert "push to" in outcome.message and "/hook" not in outcome.message
        bought = count(sqlite_app, ModelCall)

        # The roll-up again (analytics recomputed, unchanged), then the push asset alone.
        instance = DagsterInstance.get()
        assert (
            defs.resolve_job_def("org_rollup_job")
            .execute_in_process(partition_key="acme", instance=instance)
            .success
        )
        resources = {"app_db": AppDatabase(url=sqlite_app), "push": push}
        assert dg.materialize(
            [analytics_push], partition_key="acme", instance=instance, resources=resources
        ).success

        keys = [r.headers[IDEMPOTENCY_HEADER] for r in hook.requests]
        assert len(keys) == 4 and len(set(keys)) == 1
    assert count(sqlite_app, ModelCall) == bought
    rows = _deliveries(sqlite_app)
    assert [(d.attempt, d.ok, d.status_code) for d in rows] == [
        (1, False, 503),
        (2, False, 503),
        (1, True, 200),
        (1, True, 200),
    ]
    assert {d.cycle_id for d in rows} == {outcome.cycle_id}
