"""What a cycle is about to buy: model calls and an estimated cost from the price table.

Token assumptions (an estimate, not a quote): an answer costs its prompt (characters / 4) in and
ANSWER_OUTPUT_TOKENS out; a claims call carries the answer, so CLAIMS_INPUT_TOKENS in and
CLAIMS_OUTPUT_TOKENS out. Web-search fees and reasoning tokens beyond these are not included: real
answers of reasoning models with web search used 1,720-3,773 output tokens. Synthetic (offline)
answers cost nothing.
"""

from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from icp_pipeline.db.models import Cycle, CycleItem, ModelCall, Org
from icp_pipeline.providers.pricing import Price, cost_usd
from icp_pipeline.visibility.claims import claims_subject, grader_for, org_grader
from icp_pipeline.visibility.cycles import TERMINAL, combinations
from icp_pipeline.visibility.prompts import ANSWER_SYSTEM

ANSWER_OUTPUT_TOKENS = 1500
CLAIMS_INPUT_TOKENS = 2500
CLAIMS_OUTPUT_TOKENS = 500
_LOCATION_HINT_CHARS = 90  # the "(I am based in the country ...)" line


@dataclass(frozen=True)
class PlannedCall:
    purpose: str  # answer | claims
    provider: str
    model: str
    prompt_chars: int = 0


@dataclass
class PurchaseEstimate:
    answers: int = 0
    claims: int = 0
    usd: float = 0.0
    live_calls: int = 0
    unpriced: set[str] = field(default_factory=set)

    @property
    def calls(self) -> int:
        return self.answers + self.claims

    def describe(self) -> str:
        what = f"{self.calls} model calls ({self.answers} answers + {self.claims} claims)"
        if self.calls == 0:
            return "0 model calls (every answer and claims call is already in the ledger)"
        if self.live_calls == 0:
            return f"{what}, estimated cost $0.00 (offline provider: synthetic answers cost nothing)"
        usd = f"{self.usd:.2f}" if self.usd >= 0.01 or self.usd == 0 else f"{self.usd:.4f}"
        cost = f"estimated cost ${usd} at list prices"
        if self.unpriced:
            cost += f" plus the calls to {', '.join(sorted(self.unpriced))} (no price in the table)"
        return (
            f"{what}, {cost}; assumes {ANSWER_OUTPUT_TOKENS} output tokens per answer and "
            f"{CLAIMS_INPUT_TOKENS}/{CLAIMS_OUTPUT_TOKENS} tokens per claims call, web-search fees not included"
        )


def estimate(
    calls: list[PlannedCall],
    is_live: Callable[[str, str], bool],
    overrides: dict[str, Price] | None = None,
) -> PurchaseEstimate:
    result = PurchaseEstimate()
    for call in calls:
        if call.purpose == "answer":
            result.answers += 1
            tokens_in, tokens_out = max(1, call.prompt_chars // 4), ANSWER_OUTPUT_TOKENS
        else:
            result.claims += 1
            tokens_in, tokens_out = CLAIMS_INPUT_TOKENS, CLAIMS_OUTPUT_TOKENS
        if not is_live(call.provider, call.model):
            continue
        result.live_calls += 1
        usd = cost_usd(call.provider, call.model, tokens_in, 0, tokens_out, overrides)
        if usd is None:
            result.unpriced.add(f"{call.provider}/{call.model}")
        else:
            result.usd += usd
    return result


def answer_chars(question: str) -> int:
    return len(ANSWER_SYSTEM) + len(question) + _LOCATION_HINT_CHARS


def new_cycle_calls(session: Session, org_id: str) -> list[PlannedCall]:
    """An answer and a claims call (to the org's grader, else the answering model) per active
    question x model x location and sample."""
    org = session.get(Org, org_id)
    configured = org_grader(org.grader_provider, org.grader_model) if org else None
    calls = []
    for combination in combinations(session, org_id):
        provider, model = combination.model.provider, combination.model.model
        calls.append(PlannedCall("answer", provider, model, answer_chars(combination.question.text)))
        grader = grader_for(configured, provider, model)
        calls.append(PlannedCall("claims", grader.provider, grader.model))
    return calls


def open_item_calls(session: Session, cycle_id: int) -> list[PlannedCall]:
    """The calls an open cycle still needs: those of its unfinished items not yet in the ledger."""
    items = session.scalars(
        select(CycleItem).where(CycleItem.cycle_id == cycle_id, CycleItem.status.not_in(TERMINAL))
    ).all()
    paid = set(
        session.execute(
            select(ModelCall.cycle_item_id, ModelCall.purpose).where(
                ModelCall.cycle_item_id.in_([i.id for i in items]), ModelCall.ok
            )
        ).tuples()
    )
    # Claims are paid when the grader the org has now made them (another grader's do not count).
    paid_subjects = set(
        session.scalars(
            select(ModelCall.subject).where(
                ModelCall.cycle_item_id.in_([i.id for i in items]),
                ModelCall.ok,
                ModelCall.purpose == "claims",
            )
        )
    )
    org = session.get(Org, session.get(Cycle, cycle_id).org_id)
    configured = org_grader(org.grader_provider, org.grader_model)
    calls = []
    for item in items:
        provider, model = item.model.provider, item.model.model
        if (item.id, "answer") not in paid:
            calls.append(PlannedCall("answer", provider, model, answer_chars(item.question.text)))
        grader = grader_for(configured, provider, model)
        if claims_subject(item.id, grader, provider, model) not in paid_subjects:
            calls.append(PlannedCall("claims", grader.provider, grader.model))
    return calls
