"""Cycle manifests: open a cycle, track each item's status, and decide when a cycle is complete."""

from datetime import UTC, datetime
from typing import NamedTuple

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from icp_pipeline.db.models import (
    AnalyticsSnapshot,
    Cycle,
    CycleItem,
    Org,
    OrgLocation,
    OrgModel,
    PushDelivery,
    Question,
)
from icp_pipeline.visibility.keys import question_run_key

TERMINAL = ("succeeded", "failed")


class UnknownOrg(LookupError):
    pass


# How many loaded org ids an "unknown org" message lists.
_ORGS_LISTED = 10


def require_org(session: Session, org_id: str) -> Org:
    """The org, or UnknownOrg naming the orgs that are loaded (every command says the same)."""
    org = session.get(Org, org_id)
    if org is None:
        ids = list(session.scalars(select(Org.id).order_by(Org.id).limit(_ORGS_LISTED + 1)))
        if not ids:
            loaded = "no org is loaded yet"
        else:
            more = ", ..." if len(ids) > _ORGS_LISTED else ""
            loaded = f"loaded orgs: {', '.join(ids[:_ORGS_LISTED])}{more}"
        raise UnknownOrg(f"unknown org {org_id!r}; {loaded}; load one with `icp-pipeline org load FILE`")
    return org


class Combination(NamedTuple):
    """One question run of a cycle: a question x model x location and one of its samples."""

    key: str  # the question-run partition key
    question: Question
    model: OrgModel
    location: OrgLocation
    sample_index: int  # 0-based


def model_samples(org: Org, model: OrgModel) -> int:
    """How many times a cycle asks each question of this model: its own `samples`, else the org's."""
    return model.samples or org.samples or 1


def combinations(session: Session, org_id: str) -> list[Combination]:
    """Every active question x model x location of the org, once per sample of its model."""
    org = require_org(session, org_id)
    questions = session.scalars(
        select(Question).where(Question.org_id == org_id, Question.active).order_by(Question.position)
    )
    models = list(
        session.scalars(
            select(OrgModel).where(OrgModel.org_id == org_id, OrgModel.active).order_by(OrgModel.id)
        )
    )
    locations = list(
        session.scalars(
            select(OrgLocation)
            .where(OrgLocation.org_id == org_id, OrgLocation.active)
            .order_by(OrgLocation.id)
        )
    )
    return [
        Combination(question_run_key(org_id, q.key, m.slug, loc.country_code, sample), q, m, loc, sample)
        for q in questions
        for m in models
        for loc in locations
        for sample in range(model_samples(org, m))
    ]


def latest_cycle(session: Session, org_id: str) -> Cycle | None:
    return session.scalars(
        select(Cycle).where(Cycle.org_id == org_id).order_by(Cycle.id.desc()).limit(1)
    ).first()


def open_cycle(session: Session, org_id: str) -> tuple[Cycle, bool]:
    """The org's running cycle, or a new one with one item per combination and sample.
    Returns (cycle, created)."""
    org = require_org(session, org_id)
    # Take the org row's write lock first (a row lock on PostgreSQL, the database's on SQLite), so two
    # commands opening a cycle at once share one instead of opening two and buying both.
    session.execute(update(Org).where(Org.id == org_id).values(updated_at=Org.updated_at))
    running = session.scalars(select(Cycle).where(Cycle.org_id == org_id, Cycle.status == "running")).first()
    if running is not None:
        return running, False
    # The org's samples at opening, for the record; a model's own `samples` may differ (see the items).
    cycle = Cycle(org_id=org_id, samples_per_item=org.samples)
    session.add(cycle)
    session.flush()
    items = _items(cycle, combinations(session, org_id))
    if not items:
        raise ValueError(f"org {org_id!r} has no active question x model x location combination")
    session.add_all(items)
    cycle.total = len(items)
    session.flush()
    return cycle, True


def _items(cycle: Cycle, combos: list[Combination]) -> list[CycleItem]:
    """One pending item per combination and sample: each sample is its own question-run partition."""
    return [
        CycleItem(
            cycle_id=cycle.id,
            partition_key=c.key,
            question_id=c.question.id,
            model_id=c.model.id,
            location_id=c.location.id,
            sample_index=c.sample_index,
        )
        for c in combos
    ]


def orgs_without_cycle(session: Session) -> list[str]:
    """Orgs that never had a cycle: a newly loaded org gets its first cycle from the sync sensor."""
    has_cycle = select(Cycle.id).where(Cycle.org_id == Org.id).exists()
    return list(session.scalars(select(Org.id).where(~has_cycle).order_by(Org.id)))


def join_new_combinations(session: Session) -> dict[int, int]:
    """Add to each org's latest cycle the active combinations it lacks (a question, model or location
    added to the org file since it opened, or the samples of a raised `samples`), so new question runs
    get their first run now rather than next cycle. A complete cycle re-opens and its roll-ups run again
    once the new items are done. Only the latest cycle is compared, so the cost stays bounded by one
    cycle's size. Returns {cycle id: items added}."""
    added: dict[int, int] = {}
    for org_id in list(session.scalars(select(Org.id).order_by(Org.id))):  # read out before writing
        cycle = latest_cycle(session, org_id)
        if cycle is None:
            continue
        present = set(
            session.scalars(select(CycleItem.partition_key).where(CycleItem.cycle_id == cycle.id).distinct())
        )
        combos = [c for c in combinations(session, org_id) if c.key not in present]
        if combos:
            session.add_all(_items(cycle, combos))
            session.flush()
            refresh_cycle(session, cycle.id)
            added[cycle.id] = len(combos)
    return added


def items_for_partition(session: Session, partition_key: str) -> list[CycleItem]:
    """The items of a question-run partition in the latest cycle that has it: one since each sample has
    its own partition (cycles opened before that may hold several samples under one key)."""
    cycle_id = session.scalar(
        select(func.max(CycleItem.cycle_id)).where(CycleItem.partition_key == partition_key)
    )
    if cycle_id is None:
        raise LookupError(
            f"no cycle has question run {partition_key!r}; start one with `icp-pipeline org run ORG` "
            "or materialize the org's `org_cycle` asset"
        )
    return list(
        session.scalars(
            select(CycleItem)
            .where(CycleItem.cycle_id == cycle_id, CycleItem.partition_key == partition_key)
            .order_by(CycleItem.sample_index)
        )
    )


def set_item_status(
    session: Session, item: CycleItem, status: str, step: str | None = None, error: str | None = None
) -> None:
    item.status = status
    item.failed_step = step if status == "failed" else None
    item.error = error if status == "failed" else None
    session.flush()
    refresh_cycle(session, item.cycle_id)


def failed_partitions(session: Session, org_id: str) -> list[str]:
    """Partition keys whose item failed in the org's latest cycle: what a backfill should re-run."""
    cycle = latest_cycle(session, org_id)
    if cycle is None:
        return []
    return list(
        session.scalars(
            select(CycleItem.partition_key)
            .where(CycleItem.cycle_id == cycle.id, CycleItem.status == "failed")
            .distinct()
            .order_by(CycleItem.partition_key)
        )
    )


def refresh_cycle(session: Session, cycle_id: int) -> Cycle:
    """Recount the manifest from its items and close the cycle once every item is terminal.
    A cycle succeeds when at least one item did."""
    cycle = session.get(Cycle, cycle_id, populate_existing=True)
    counts = dict(
        session.execute(
            select(CycleItem.status, func.count())
            .where(CycleItem.cycle_id == cycle_id)
            .group_by(CycleItem.status)
        ).all()
    )
    cycle.completed = counts.get("succeeded", 0)
    cycle.failed = counts.get("failed", 0)
    cycle.total = sum(counts.values())
    if cycle.completed + cycle.failed == cycle.total:
        if cycle.status == "running":
            cycle.status = "succeeded" if cycle.completed else "failed"
            cycle.completed_at = datetime.now(UTC)
    elif cycle.status != "running":  # an item was re-opened by a retry: roll up again when done
        cycle.status, cycle.completed_at, cycle.rollup_requested_at = "running", None, None
    session.flush()
    return cycle


def claim_rollup(session: Session, cycle_id: int) -> bool:
    """Atomically claim the right to request a complete cycle's roll-ups; True for the one winner."""
    result = session.execute(
        update(Cycle)
        .where(Cycle.id == cycle_id, Cycle.rollup_requested_at.is_(None), Cycle.status != "running")
        .values(rollup_requested_at=datetime.now(UTC))
    )
    return result.rowcount == 1


def delivered(session: Session, cycle: Cycle) -> bool:
    """The complete cycle's analytics were computed and pushed since it last completed."""
    if cycle.status == "running" or cycle.completed_at is None:
        return False
    has_snapshot = session.scalar(
        select(func.count()).select_from(AnalyticsSnapshot).where(AnalyticsSnapshot.cycle_id == cycle.id)
    )
    pushed = session.scalar(
        select(func.count())
        .select_from(PushDelivery)
        .where(
            PushDelivery.cycle_id == cycle.id,
            PushDelivery.ok,
            PushDelivery.created_at >= cycle.completed_at,
        )
    )
    return bool(has_snapshot and pushed)


def cycles_ready_for_rollup(session: Session) -> list[Cycle]:
    return list(
        session.scalars(select(Cycle).where(Cycle.status != "running", Cycle.rollup_requested_at.is_(None)))
    )


def desired_org_partitions(session: Session) -> tuple[set[str], set[str]]:
    """(org ids, question-run keys) as the app database has them: the key of every active combination
    and sample, and of every unfinished item of a running cycle. A running cycle finishes what it opened
    with (lowering `samples` or removing a question mid-cycle must not strand its items); the extra keys
    go once it is done, and their runs and history stay in the database."""
    orgs = set(session.scalars(select(Org.id)))
    keys: set[str] = set()
    for org_id in orgs:
        keys.update(c.key for c in combinations(session, org_id))
    keys.update(
        session.scalars(
            select(CycleItem.partition_key)
            .join(Cycle, Cycle.id == CycleItem.cycle_id)
            .where(Cycle.status == "running", CycleItem.status.not_in(TERMINAL))
            .distinct()
        )
    )
    return orgs, keys


def pending_items(session: Session) -> list[tuple[int, str]]:
    """(cycle id, partition key) of every item of a running cycle that has not started yet."""
    return list(
        session.execute(
            select(CycleItem.cycle_id, CycleItem.partition_key)
            .join(Cycle, Cycle.id == CycleItem.cycle_id)
            .where(Cycle.status == "running", CycleItem.status == "pending")
            .distinct()
        ).tuples()
    )
