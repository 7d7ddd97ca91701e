"""The model-call ledger and the one purchase path every paid model call goes through.

A purchase has a subject ("answer:<item>", "claims:<item>", "segments:<site>:<inputs>", ...). Buying it:

1. replay any response of that subject spooled to local disk by an earlier attempt (below);
2. reuse a finished purchase of the subject from the ledger, if there is one;
3. claim the subject (`purchase_claims`): another live claimant makes us wait (PurchaseInProgress)
   and reuse its purchase afterwards;
4. a purchase for a cycle item is refused (BudgetExhausted) once the cycle spent its org's
   `budget_usd`; reuse above never is;
5. buy; every response (complete or not, paid or failed) is written to the ledger the moment it
   returns. A paused turn is continued by new calls (each its own row, same subject) within the step
   budget; a truncated, refused or empty one raises a non-retryable ProviderError.
6. A ledger write that fails is retried (with backoff, for LEDGER_WRITE_RETRY_SECONDS), never the
   purchase. If it still fails, the paid response is spooled to a local file, the claim is kept, and
   the next attempt writes the spool to the ledger before it decides to buy.
"""

import base64
import hashlib
import json
import logging
import os
import re
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from pydantic import BaseModel, ValidationError
from sqlalchemy import delete, exc, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from icp_pipeline.db.models import Cycle, CycleItem, ModelCall, Org, PurchaseClaim
from icp_pipeline.db.session import session_scope
from icp_pipeline.providers.base import (
    FINISH_COMPLETE,
    FINISH_PAUSED,
    ModelRequest,
    ModelResponse,
    ProviderError,
    ProviderFor,
)
from icp_pipeline.providers.resilience import STEP_BUDGET_SECONDS
from icp_pipeline.providers.structured import complete_structured, parse_structured, unfinished_turn_error
from icp_pipeline.settings import icp_home

log = logging.getLogger(__name__)

T = TypeVar("T", bound=BaseModel)
V = TypeVar("V")

# A failed ledger write is retried this long (outlasting a database restart or a short outage),
# never the purchase; after that the paid response goes to the local spool.
LEDGER_WRITE_RETRY_SECONDS = 35.0
# A paused turn is continued at most this many times within one attempt.
MAX_CONTINUATIONS = 5
# A claim older than a step's whole budget plus the ledger write retries belongs to a worker that
# died; it may be taken over.
CLAIM_TTL = timedelta(seconds=STEP_BUDGET_SECONDS + LEDGER_WRITE_RETRY_SECONDS + 30)
_INSERTS = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}


class _Costed(Protocol):
    cost_usd: float | None


def total_cost(rows: Iterable[_Costed]) -> float | None:
    """The summed cost of calls or runs; unknown (None) as soon as one of them is unknown."""
    costs = [row.cost_usd for row in rows]
    return None if any(cost is None for cost in costs) else round(sum(costs), 8)


# --- storing any text -------------------------------------------------------------------------------

# Neither SQLite's UTF-8 encoder nor PostgreSQL's text type accepts a lone surrogate; PostgreSQL also
# rejects NUL. A JSON answer can hold both ("\ud800", "\u0000").
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def storable_text(text: str | None) -> tuple[str | None, bytes | None]:
    """(text safe to store, exact bytes or None). Unstorable characters become \\uXXXX escapes; the
    exact text is then returned as UTF-8 with surrogates passed through, so nothing is lost."""
    if text is None or not _UNSTORABLE.search(text):
        return text, None
    escaped = _UNSTORABLE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
    return escaped, text.encode("utf-8", "surrogatepass")


def exact_output_text(call: ModelCall) -> str | None:
    """The output text exactly as the provider returned it."""
    if call.exact_text is not None:
        return call.exact_text.decode("utf-8", "surrogatepass")
    return call.output_text


def _safe(text: str | None) -> str | None:
    return storable_text(text)[0]


def _json_or_none(value: Any) -> Any:
    if value is None:
        return None
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return None
    return value


# --- purchases --------------------------------------------------------------------------------------


def purchase_subject(kind: str, owner: object, *inputs: object) -> str:
    """`kind:owner`, plus a digest of what is asked when the same owner can ask different things."""
    if not inputs:
        return f"{kind}:{owner}"
    digest = hashlib.sha256(json.dumps([str(i) for i in inputs]).encode("utf-8", "surrogatepass"))
    return f"{kind}:{owner}:{digest.hexdigest()[:24]}"[:200]


def new_claimant() -> str:
    """A claimant for a caller outside a Dagster run: unique, so it never shares a claim."""
    return f"call-{uuid.uuid4().hex}"


@dataclass(frozen=True)
class Purchase:
    db_url: str
    subject: str
    purpose: str
    claimant: str
    owner: dict[str, Any] = field(default_factory=dict)  # cycle_item_id, site_id, segment_id


@dataclass
class Bought(Generic[V]):
    value: V
    calls: list[ModelCall]  # this purchase's ledger rows: the ones bought now, or the reused one
    reused: bool

    @property
    def bought(self) -> int:
        """Paid calls made now (continuations and repairs included)."""
        return 0 if self.reused else sum(1 for c in self.calls if c.paid)


class PurchaseInProgress(ProviderError):
    """Another run is buying this subject right now: wait for it to reach the ledger, then reuse it.
    A retryable provider-side wait as far as the step is concerned; no call was made."""

    def __init__(self, request: ModelRequest, subject: str, wait_seconds: float) -> None:
        super().__init__(
            request.provider,
            request.model,
            f"another run is buying {subject}; retrying in {wait_seconds:.0f}s to reuse its answer",
            retryable=True,
            retry_after=wait_seconds,
        )


class BudgetExhausted(ProviderError):
    """The cycle's spend reached the org's `budget_usd`: this purchase is not made. Permanent (not
    retryable): the item fails with "budget exhausted" and the cycle completes without it."""

    def __init__(self, request: ModelRequest, subject: str, spent_usd: float, budget_usd: float) -> None:
        super().__init__(
            request.provider,
            request.model,
            f"budget exhausted: the cycle spent ${spent_usd:.4f} of its ${budget_usd:.4f} budget "
            f"(budget_usd); {subject} was not bought",
            retryable=False,
        )
        self.spent_usd, self.budget_usd = spent_usd, budget_usd


class LedgerWriteFailed(RuntimeError):
    """A paid response could not be written to the ledger, even after retries. It is kept in the local
    spool and the purchase claim is kept: the next attempt writes it to the ledger instead of buying."""


def claim_purchase(db_url: str, subject: str, claimant: str, request: ModelRequest) -> None:
    """Take the right to buy `subject` for `claimant`, or raise PurchaseInProgress while another live
    claimant holds it. One upsert decides, atomically on SQLite and PostgreSQL: a free subject, the
    claimant's own claim (a retry of the same run group) or an abandoned claim is taken."""
    now = datetime.now(UTC)
    with session_scope(db_url) as session:
        insert = _INSERTS[session.get_bind().dialect.name](PurchaseClaim)
        session.execute(
            insert.values(subject=subject, claimant=claimant, claimed_at=now).on_conflict_do_update(
                index_elements=[PurchaseClaim.subject],
                set_={"claimant": claimant, "claimed_at": now},
                where=(PurchaseClaim.claimant == claimant) | (PurchaseClaim.claimed_at < now - CLAIM_TTL),
            )
        )
        holder = session.get(PurchaseClaim, subject, populate_existing=True)
        if holder.claimant != claimant:
            claimed_at = (
                holder.claimed_at.replace(tzinfo=UTC)
                if holder.claimed_at.tzinfo is None
                else holder.claimed_at
            )
            left = (claimed_at + CLAIM_TTL - now).total_seconds()
            raise PurchaseInProgress(request, subject, min(max(left, 1.0), 30.0))


def release_purchase(db_url: str, subject: str, claimant: str) -> None:
    with session_scope(db_url) as session:
        session.execute(
            delete(PurchaseClaim).where(PurchaseClaim.subject == subject, PurchaseClaim.claimant == claimant)
        )


def _release_quietly(db_url: str, subject: str, claimant: str) -> None:
    # The purchase is in the ledger, which is checked before any claim: a claim left behind only
    # expires, it never causes a second purchase.
    try:
        release_purchase(db_url, subject, claimant)
    except exc.SQLAlchemyError as error:
        log.warning("could not release the purchase claim on %s: %s", subject, error)


def latest_ok_call(session: Session, subject: str) -> ModelCall | None:
    """The purchase's complete reply (the latest, after a repair); None while it is not bought."""
    return session.scalars(
        select(ModelCall)
        .where(ModelCall.subject == subject, ModelCall.ok)
        .order_by(ModelCall.id.desc())
        .limit(1)
    ).first()


def _latest_ok(db_url: str, subject: str) -> ModelCall | None:
    with session_scope(db_url) as session:
        return latest_ok_call(session, subject)


# --- budgets -----------------------------------------------------------------------------------------


def cycle_spend_usd(session: Session, cycle_id: int) -> float:
    """What a cycle has cost so far: the sum of its paid ledger rows (continuations, repairs and paid
    but unusable replies included). Calls of unknown cost (no usage or no price) count as zero."""
    spent = session.scalar(
        select(func.coalesce(func.sum(ModelCall.cost_usd), 0.0))
        .join(CycleItem, CycleItem.id == ModelCall.cycle_item_id)
        .where(CycleItem.cycle_id == cycle_id, ModelCall.paid)
    )
    return round(float(spent or 0.0), 8)


def check_cycle_budget(db_url: str, cycle_item_id: int, subject: str, request: ModelRequest) -> None:
    """Raise BudgetExhausted when the item's cycle has spent its org's `budget_usd` (no budget: no limit).

    Checked before each purchase, after reuse (a reused answer costs nothing). The check and the
    purchase are not one transaction: purchases already past the check go on, so a cycle can exceed
    its budget by at most the purchases in flight at that moment (the `llm` pool's limit, 3 by
    default, each with its continuations or repair). The `within_budget` quality gate reports it."""
    with session_scope(db_url) as session:
        row = session.execute(
            select(Cycle.id, Org.budget_usd)
            .join(CycleItem, CycleItem.cycle_id == Cycle.id)
            .join(Org, Org.id == Cycle.org_id)
            .where(CycleItem.id == cycle_item_id)
        ).first()
        if row is None or row.budget_usd is None:
            return
        spent = cycle_spend_usd(session, row.id)
    if spent >= row.budget_usd:
        raise BudgetExhausted(request, subject, spent, row.budget_usd)


def _purchase(
    purchase: Purchase,
    request: ModelRequest,
    reuse: Callable[[ModelCall], V | None],
    buy: Callable[["LedgerProvider"], V],
    provider_for: ProviderFor,
) -> Bought[V]:
    def reusable() -> Bought[V] | None:
        call = _latest_ok(purchase.db_url, purchase.subject)
        value = reuse(call) if call is not None else None
        return None if value is None else Bought(value, [call], reused=True)

    replay_spool(purchase.db_url, purchase.subject)
    if (found := reusable()) is not None:
        return found
    claim_purchase(purchase.db_url, purchase.subject, purchase.claimant, request)
    keep_claim = False
    try:
        if (found := reusable()) is not None:  # bought by another run while we waited for the claim
            return found
        if purchase.owner.get("cycle_item_id") is not None:
            check_cycle_budget(purchase.db_url, purchase.owner["cycle_item_id"], purchase.subject, request)
        ledger = LedgerProvider(purchase, provider_for)
        return Bought(buy(ledger), ledger.calls, reused=False)
    except LedgerWriteFailed:
        keep_claim = True
        raise
    finally:
        if not keep_claim:
            _release_quietly(purchase.db_url, purchase.subject, purchase.claimant)


def buy_answer(
    db_url: str,
    subject: str,
    request: ModelRequest,
    provider_for: ProviderFor,
    claimant: str | None = None,
    **owner: Any,
) -> Bought[ModelCall]:
    """One plain-text turn, bought at most once per subject. The value is its complete ledger row."""
    purchase = Purchase(db_url, subject, request.purpose, claimant or new_claimant(), owner)

    def buy(ledger: LedgerProvider) -> ModelCall:
        ledger.complete(request)
        return ledger.calls[-1]

    return _purchase(purchase, request, lambda call: call, buy, provider_for)


def buy_structured(
    db_url: str,
    purpose: str,
    request: ModelRequest,
    schema: type[T],
    provider_for: ProviderFor,
    context: dict[str, Any] | None = None,
    *,
    subject: str,
    claimant: str | None = None,
    **owner: Any,
) -> Bought[T]:
    """One structured-output purchase (with its one repair), bought at most once per subject: a stored
    reply that still validates (with `context`) is reused. Every reply is in the ledger before it is
    validated. `owner` is cycle_item_id, site_id and/or segment_id."""
    purchase = Purchase(db_url, subject, purpose, claimant or new_claimant(), owner)

    def reuse(call: ModelCall) -> T | None:
        try:
            return parse_structured(schema, call.output_text or "", context)
        except (ValidationError, ValueError):
            return None  # no longer valid (the context changed): buy it again

    def buy(ledger: LedgerProvider) -> T:
        return complete_structured(ledger, request, schema, lambda _response: None, context)

    return _purchase(purchase, request, reuse, buy, provider_for)


# --- the ledger-writing provider ---------------------------------------------------------------------


class LedgerProvider:
    """A provider that writes every call to the ledger as it returns and finishes paused turns.
    `complete` returns only a complete response; anything else has been recorded and raises."""

    def __init__(self, purchase: Purchase, provider_for: ProviderFor) -> None:
        self.purchase = purchase
        self.provider_for = provider_for
        self.name = "ledger"
        self.calls: list[ModelCall] = []

    def complete(self, request: ModelRequest) -> ModelResponse:
        continuation, earlier_citations = self._resume(request)
        continued = 0
        while True:
            ask = request if continuation is None else replace(request, continuation=continuation)
            response = self._call(ask, earlier_citations)
            if response.finish == FINISH_COMPLETE:
                return response
            if response.finish != FINISH_PAUSED:
                raise unfinished_turn_error(ask, response)
            continued += 1
            if response.continuation is None or continued > MAX_CONTINUATIONS:
                raise ProviderError(
                    request.provider,
                    request.model,
                    f"{request.purpose} turn still paused after {continued - 1} continuations "
                    f"(finish {response.finish_reason or response.finish})",
                    retryable=False,
                    response=response,
                )
            if request.deadline is not None and time.monotonic() >= request.deadline - 1:
                raise ProviderError(
                    request.provider,
                    request.model,
                    f"{request.purpose} turn paused and the step budget is spent; the next attempt "
                    "continues it from the ledger",
                    retryable=True,
                )
            continuation = response.continuation
            earlier_citations = self.calls[-1].source_citations

    def _resume(self, request: ModelRequest) -> tuple[Any, list[dict[str, Any]]]:
        """A turn an earlier attempt left paused (same subject and prompt) is continued, not re-bought:
        the subject's last paid call is a pause (a failed continuation after it was not paid)."""
        with session_scope(self.purchase.db_url) as session:
            last = session.scalars(
                select(ModelCall)
                .where(ModelCall.subject == self.purchase.subject, ModelCall.paid)
                .order_by(ModelCall.id.desc())
                .limit(1)
            ).first()
        if (
            last is not None
            and last.finish == FINISH_PAUSED
            and last.continuation is not None
            and last.prompt == _safe(request.prompt)
        ):
            return last.continuation, list(last.source_citations or [])
        return None, []

    def _call(self, request: ModelRequest, earlier_citations: list[dict[str, Any]]) -> ModelResponse:
        started = datetime.now(UTC)
        try:
            response = self.provider_for(request.provider, request.model).complete(request)
        except ProviderError as error:
            if error.response is not None:  # answered and paid for, but unusable
                self.calls.append(
                    _write_call(
                        self.purchase,
                        _call_fields(
                            self.purchase, request, started, error.response, error, earlier_citations
                        ),
                    )
                )
            else:
                _write_unpaid_failure(
                    self.purchase, _call_fields(self.purchase, request, started, None, error)
                )
            raise
        self.calls.append(
            _write_call(
                self.purchase,
                _call_fields(self.purchase, request, started, response, None, earlier_citations),
            )
        )
        return response


def _citations(response: ModelResponse) -> list[dict[str, Any]]:
    return [{"url": c.url, "title": c.title, "cited": c.cited} for c in response.citations]


def _merge_citations(*lists: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per URL; cited wins over retrieved-only."""
    merged: dict[str, dict[str, Any]] = {}
    for entries in lists:
        for entry in entries:
            seen = merged.get(entry["url"])
            if seen is None:
                merged[entry["url"]] = dict(entry)
            elif entry.get("cited") and not seen.get("cited"):
                seen["cited"] = True
    return list(merged.values())


def _call_fields(
    purchase: Purchase,
    request: ModelRequest,
    started: datetime,
    response: ModelResponse | None,
    error: Exception | None,
    earlier_citations: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The ledger row of one call, as plain values (so it can be spooled)."""
    finished = datetime.now(UTC)
    fields: dict[str, Any] = {
        **purchase.owner,
        "subject": purchase.subject,
        "call_uid": str(uuid.uuid4()),
        "purpose": purchase.purpose,
        "provider": request.provider,
        "requested_model": request.model,
        "prompt": _safe(request.prompt) or "",
        "error": _safe(str(error)) if error is not None else None,
        "started_at": started,
        "finished_at": finished,
    }
    if response is None:
        return {**fields, "ok": False, "paid": False, "output_text": _safe(getattr(error, "raw_text", None))}
    text, exact = storable_text(response.text)
    complete = response.finish == FINISH_COMPLETE and error is None
    return {
        **fields,
        "ok": complete,
        "paid": True,
        "finish": response.finish,
        "finish_reason": _safe(response.finish_reason)[:64] if response.finish_reason else None,
        "response_model": _safe(response.response_model),
        "output_text": text,
        "exact_text": exact,
        "raw_response": response.raw
        if _json_or_none(response.raw) is not None
        else {"repr": repr(response.raw)},
        "raw_body": response.raw_body,
        "continuation": _json_or_none(response.continuation) if response.finish == FINISH_PAUSED else None,
        # The rows of a continued turn carry its citations so far: the answer row has the whole turn's.
        "source_citations": _merge_citations(earlier_citations or [], _citations(response)),
        "input_tokens": response.input_tokens,
        "cached_input_tokens": response.cached_input_tokens,
        "cache_write_tokens": response.cache_write_tokens,
        "output_tokens": response.output_tokens,
        "cost_usd": response.cost_usd,
        "latency_ms": response.latency_ms,
        "web_search": response.web_search,
        "location_mode": response.location_mode,
        "synthetic": response.synthetic,
    }


# --- writing: retried, then spooled ------------------------------------------------------------------


def _transient(error: Exception) -> bool:
    """A database error that a later attempt can get past (connection lost, server restarting, locked)."""
    if isinstance(error, exc.OperationalError | exc.InterfaceError | exc.TimeoutError):
        return True
    return isinstance(error, exc.DBAPIError) and error.connection_invalidated


def _insert_once(db_url: str, fields: dict[str, Any]) -> ModelCall:
    with session_scope(db_url) as session:
        # A commit whose acknowledgement was lost must not make a second row.
        existing = session.scalars(select(ModelCall).where(ModelCall.call_uid == fields["call_uid"])).first()
        if existing is not None:
            return existing
        call = ModelCall(**fields)
        session.add(call)
        session.flush()
        return call


def _call_exists(db_url: str, call_uid: str) -> bool:
    with session_scope(db_url) as session:
        return session.scalar(select(ModelCall.id).where(ModelCall.call_uid == call_uid)) is not None


def _with_write_retries(db_url: str, fields: dict[str, Any]) -> ModelCall:
    deadline = time.monotonic() + LEDGER_WRITE_RETRY_SECONDS
    delay = 0.25
    while True:
        try:
            return _insert_once(db_url, fields)
        except exc.SQLAlchemyError as error:
            if not _transient(error) or time.monotonic() + delay > deadline:
                raise
            log.warning("ledger write failed (%s); retrying in %.1fs", type(error).__name__, delay)
            time.sleep(delay)
            delay = min(delay * 2, 8.0)


def _write_call(purchase: Purchase, fields: dict[str, Any]) -> ModelCall:
    """Write a paid call; on failure spool it and raise LedgerWriteFailed (the claim is then kept)."""
    try:
        return _with_write_retries(purchase.db_url, fields)
    except Exception as error:
        try:
            path = _spool(purchase, fields)
        except OSError as spool_error:  # disk full, read-only: nothing more can keep it
            raise LedgerWriteFailed(
                f"the paid {purchase.purpose} call for {purchase.subject} could not be written to the "
                f"ledger ({type(error).__name__}) nor spooled ({spool_error}); its claim is kept for "
                f"{CLAIM_TTL.total_seconds():.0f}s"
            ) from error
        raise LedgerWriteFailed(
            f"the paid {purchase.purpose} call for {purchase.subject} could not be written to the ledger "
            f"({type(error).__name__}); it is kept in {path} and the next attempt writes it there "
            "instead of buying it again"
        ) from error


def _write_unpaid_failure(purchase: Purchase, fields: dict[str, Any]) -> None:
    # Nothing was paid: losing this row loses no money, so the provider's error is what the caller sees.
    try:
        _with_write_retries(purchase.db_url, fields)
    except exc.SQLAlchemyError as error:
        log.warning("could not record a failed %s call for %s: %s", purchase.purpose, purchase.subject, error)


# --- the local spool ---------------------------------------------------------------------------------


def spool_dir(db_url: str) -> Path:
    """Per app database (by digest: the URL may hold a password), under ICP_HOME."""
    return icp_home() / "ledger-spool" / hashlib.sha256(db_url.encode()).hexdigest()[:16]


def _subject_prefix(subject: str) -> str:
    return hashlib.sha256(subject.encode()).hexdigest()[:24]


def _encode(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"$bytes": base64.b64encode(value).decode()}
    if isinstance(value, datetime):
        return {"$datetime": value.isoformat()}
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict) and len(value) == 1:
        if "$bytes" in value:
            return base64.b64decode(value["$bytes"])
        if "$datetime" in value:
            return datetime.fromisoformat(value["$datetime"])
    return value


def _spool(purchase: Purchase, fields: dict[str, Any]) -> Path:
    """Write the call atomically (temporary file, fsync, rename) so a crash leaves it whole or absent."""
    directory = spool_dir(purchase.db_url)
    directory.mkdir(parents=True, exist_ok=True)
    record = {
        "subject": purchase.subject,
        "claimant": purchase.claimant,
        "spooled_at": datetime.now(UTC).isoformat(),
        "fields": {k: _encode(v) for k, v in fields.items()},
    }
    # ensure_ascii: the spool is plain ASCII whatever the answer holds (surrogates become \ud800).
    data = json.dumps(record, ensure_ascii=True, default=repr).encode("ascii")
    path = directory / f"{_subject_prefix(purchase.subject)}.{time.time_ns()}.{fields['call_uid']}.json"
    temporary = path.with_suffix(".tmp")
    try:
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except OSError:
        temporary.unlink(missing_ok=True)
        raise
    return path


def spooled_calls(db_url: str, subject: str | None = None) -> list[Path]:
    directory = spool_dir(db_url)
    if not directory.is_dir():
        return []
    pattern = f"{_subject_prefix(subject)}.*.json" if subject else "*.json"
    return sorted(directory.glob(pattern), key=lambda p: p.name.split(".")[1])


def replay_spool(db_url: str, subject: str | None = None) -> int:
    """Write spooled calls (of one subject, or all) to the ledger, release the claims kept for them and
    delete the files. Idempotent (a call's uid is unique). Raises when the database is still down."""
    replayed = 0
    for path in spooled_calls(db_url, subject):
        record = json.loads(path.read_text("ascii"))
        fields = {k: _decode(v) for k, v in record["fields"].items()}
        try:
            _insert_once(db_url, fields)
        except exc.IntegrityError:
            if not _call_exists(db_url, fields["call_uid"]):  # not a replay written meanwhile: keep it
                raise
        spooled_at = datetime.fromisoformat(record["spooled_at"])
        with session_scope(db_url) as session:
            session.execute(
                delete(PurchaseClaim).where(
                    PurchaseClaim.subject == record["subject"],
                    PurchaseClaim.claimant == record["claimant"],
                    PurchaseClaim.claimed_at <= spooled_at,
                )
            )
        path.unlink(missing_ok=True)
        replayed += 1
        log.warning("wrote the spooled %s call for %s to the ledger", fields["purpose"], record["subject"])
    return replayed
