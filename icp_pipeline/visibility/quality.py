"""Quality gates of an org's cycle, checked on its roll-up before the analytics are pushed.

Blocking (the push does not happen when one fails):
- `completion`: completed items / all items >= the org's `min_completion` (default 0.8);
- `no_synthetic_in_live`: with ICP_PROVIDER_MODE=live, no synthetic (offline) model call in the cycle;
- `within_budget`: the cycle's spend <= the org's `budget_usd` (no budget: passes).
Warning (reported and alerted, the push goes on):
- `no_significant_drop`: the target's mention rate or share of voice did not drop significantly
  since the previous cycle's analytics.

"Significant drop" means:
- mention rate: lower than the previous cycle's and the two-sided Fisher exact test on mentioned /
  not mentioned runs (the payload's `change.p_value`) is below 0.05;
- share of voice: the current cycle's 95% bootstrap interval lies entirely below the previous
  cycle's. Share of voice has no exact test of its own (a run can mention several companies, so the
  mentions are not independent draws); two non-overlapping 95% intervals is a conservative test
  (roughly p < 0.01 for a difference), so a drop flagged here is a real one, and a smaller real drop
  can go unflagged.

Plain functions over the app database and the analytics payloads; nothing here imports Dagster.
"""

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from icp_pipeline.db.models import Cycle, CycleItem, ModelCall, Org, QualityAlert
from icp_pipeline.ledger import cycle_spend_usd

COMPLETION = "completion"
NO_SYNTHETIC_IN_LIVE = "no_synthetic_in_live"
WITHIN_BUDGET = "within_budget"
NO_SIGNIFICANT_DROP = "no_significant_drop"
BLOCKING_GATES = (COMPLETION, NO_SYNTHETIC_IN_LIVE, WITHIN_BUDGET)
SIGNIFICANCE_LEVEL = 0.05
BUDGET_EXHAUSTED = "budget exhausted"  # in the error of every item the budget stopped


@dataclass(frozen=True)
class GateResult:
    name: str
    passed: bool
    blocking: bool
    description: str
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def severity(self) -> str:
        return "ERROR" if self.blocking else "WARN"


@dataclass(frozen=True)
class CycleFacts:
    """What the blocking gates read about one cycle, from SQL aggregates."""

    org_id: str
    cycle_id: int
    total: int
    completed: int
    failed: int
    min_completion: float
    budget_usd: float | None
    spent_usd: float
    unpriced_paid_calls: int  # paid calls of unknown cost: they count as zero in the spend
    synthetic_calls: int  # complete model calls (answers and claims) with a synthetic reply
    budget_stopped_items: int


def cycle_facts(session: Session, cycle_id: int) -> CycleFacts:
    cycle = session.get(Cycle, cycle_id)
    org = session.get(Org, cycle.org_id)
    statuses = dict(
        session.execute(
            select(CycleItem.status, func.count())
            .where(CycleItem.cycle_id == cycle_id)
            .group_by(CycleItem.status)
        ).all()
    )
    calls_of_cycle = (
        select(func.count())
        .select_from(ModelCall)
        .join(CycleItem, CycleItem.id == ModelCall.cycle_item_id)
        .where(CycleItem.cycle_id == cycle_id)
    )
    return CycleFacts(
        org_id=cycle.org_id,
        cycle_id=cycle_id,
        total=sum(statuses.values()),
        completed=statuses.get("succeeded", 0),
        failed=statuses.get("failed", 0),
        min_completion=org.min_completion,
        budget_usd=org.budget_usd,
        spent_usd=cycle_spend_usd(session, cycle_id),
        unpriced_paid_calls=session.scalar(
            calls_of_cycle.where(ModelCall.paid, ModelCall.cost_usd.is_(None))
        ),
        synthetic_calls=session.scalar(calls_of_cycle.where(ModelCall.ok, ModelCall.synthetic)),
        budget_stopped_items=session.scalar(
            select(func.count())
            .select_from(CycleItem)
            .where(
                CycleItem.cycle_id == cycle_id,
                CycleItem.status == "failed",
                CycleItem.error.contains(BUDGET_EXHAUSTED),
            )
        ),
    )


def blocked_by_gate(session: Session, cycle_id: int) -> bool:
    """A blocking gate failed for the cycle at some roll-up (its alert record says so)."""
    return (
        session.scalar(
            select(func.count())
            .select_from(QualityAlert)
            .where(QualityAlert.cycle_id == cycle_id, QualityAlert.severity == "ERROR")
        )
        > 0
    )


def completion_gate(facts: CycleFacts) -> GateResult:
    ratio = facts.completed / facts.total if facts.total else 0.0
    passed = facts.total > 0 and ratio >= facts.min_completion
    verdict = "at least" if passed else "below"
    return GateResult(
        COMPLETION,
        passed,
        True,
        f"cycle {facts.cycle_id}: {facts.completed} of {facts.total} question runs completed "
        f"({ratio:.1%}), {verdict} min_completion {facts.min_completion:.0%}",
        {
            "completion_ratio": round(ratio, 6),
            "min_completion": facts.min_completion,
            "completed": facts.completed,
            "failed": facts.failed,
            "total": facts.total,
        },
    )


def synthetic_gate(facts: CycleFacts, provider_mode: str) -> GateResult:
    live = provider_mode == "live"
    passed = not (live and facts.synthetic_calls)
    if not live:
        description = f"provider mode {provider_mode!r}: synthetic answers are allowed"
    elif passed:
        description = f"cycle {facts.cycle_id}: no synthetic model call in live mode"
    else:
        description = (
            f"cycle {facts.cycle_id}: {facts.synthetic_calls} synthetic (offline) model calls in a "
            "cycle run with ICP_PROVIDER_MODE=live"
        )
    return GateResult(
        NO_SYNTHETIC_IN_LIVE,
        passed,
        True,
        description,
        {"provider_mode": provider_mode, "synthetic_calls": facts.synthetic_calls},
    )


def budget_gate(facts: CycleFacts) -> GateResult:
    metadata: dict[str, Any] = {
        "spent_usd": facts.spent_usd,
        "unpriced_paid_calls": facts.unpriced_paid_calls,
        "items_stopped_by_budget": facts.budget_stopped_items,
    }
    if facts.budget_usd is None:
        return GateResult(
            WITHIN_BUDGET,
            True,
            True,
            f"cycle {facts.cycle_id}: no budget_usd set; spent ${facts.spent_usd:.4f}",
            metadata,
        )
    metadata["budget_usd"] = facts.budget_usd
    passed = facts.spent_usd <= facts.budget_usd
    description = (
        f"cycle {facts.cycle_id}: spent ${facts.spent_usd:.4f} of its ${facts.budget_usd:.4f} budget"
        if passed
        else f"cycle {facts.cycle_id}: spent ${facts.spent_usd:.4f}, over its ${facts.budget_usd:.4f} budget"
    )
    if facts.budget_stopped_items:
        description += f"; {facts.budget_stopped_items} items were not bought ({BUDGET_EXHAUSTED})"
    return GateResult(WITHIN_BUDGET, passed, True, description, metadata)


def _target(payload: dict[str, Any] | None) -> dict[str, Any] | None:
    if payload is None:
        return None
    return next((row for row in payload.get("companies", []) if row.get("is_target")), None)


def drop_gate(current: dict[str, Any], previous: dict[str, Any] | None) -> GateResult:
    """Warning: a significant drop of the target's mention rate or share of voice (see the module)."""
    now, before = _target(current), _target(previous)
    if now is None or before is None:
        return GateResult(
            NO_SIGNIFICANT_DROP, True, False, "no previous cycle's analytics of the target to compare with"
        )
    change = now.get("change") or {}
    rate_delta, p_value = change.get("mention_rate"), change.get("p_value")
    rate_dropped = (
        rate_delta is not None and rate_delta < 0 and p_value is not None and p_value < SIGNIFICANCE_LEVEL
    )
    now_ci, before_ci = now.get("share_of_voice_ci"), before.get("share_of_voice_ci")
    share_dropped = bool(now_ci and before_ci and now_ci[1] < before_ci[0])
    drops = []
    if rate_dropped:
        drops.append(
            f"mention rate {before.get('mention_rate'):.1%} -> {now.get('mention_rate'):.1%} "
            f"(Fisher exact p={p_value:.3g})"
        )
    if share_dropped:
        drops.append(
            f"share of voice {before.get('share_of_voice'):.1%} -> {now.get('share_of_voice'):.1%} "
            f"(95% intervals [{now_ci[0]:.1%}, {now_ci[1]:.1%}] below [{before_ci[0]:.1%}, {before_ci[1]:.1%}])"
        )
    previous_cycle = previous.get("cycle_id") if previous else None
    description = (
        f"the target's drop since cycle {previous_cycle}: " + "; ".join(drops)
        if drops
        else f"no significant drop of the target's mention rate or share of voice since cycle {previous_cycle}"
    )
    return GateResult(
        NO_SIGNIFICANT_DROP,
        not drops,
        False,
        description,
        {
            "previous_cycle_id": previous_cycle,
            "mention_rate": now.get("mention_rate"),
            "previous_mention_rate": before.get("mention_rate"),
            "mention_rate_p_value": p_value,
            "share_of_voice": now.get("share_of_voice"),
            "previous_share_of_voice": before.get("share_of_voice"),
            "mention_rate_dropped": rate_dropped,
            "share_of_voice_dropped": share_dropped,
        },
    )
