"""The micro-steps of a question run and the org roll-ups, as plain functions over the app database.

Each step reads what the previous one stored and replaces its own rows as a whole, so any step can be
re-run alone. Model calls happen outside database transactions and are written to the ledger the
moment they return, before anything else can fail.
"""

import hashlib
import json
import time
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, NamedTuple

from sqlalchemy import and_, delete, func, or_, select, text, tuple_, update
from sqlalchemy.orm import Session

from icp_pipeline.db.models import (
    AnalyticsSnapshot,
    Citation,
    Claim,
    Company,
    CompetitiveMetric,
    CycleItem,
    Mention,
    ModelCall,
    Org,
    OrgModel,
    QuestionRun,
    UntrackedMention,
)
from icp_pipeline.db.session import session_scope
from icp_pipeline.ledger import (
    Bought,
    PurchaseInProgress,
    buy_answer,
    buy_structured,
    latest_ok_call,
    new_claimant,
    purchase_subject,
    storable_text,
    total_cost,
)
from icp_pipeline.providers.base import ModelRequest, ProviderError, ProviderFor
from icp_pipeline.providers.budgets import answer_token_budget
from icp_pipeline.providers.factory import location_in_prompt
from icp_pipeline.providers.resilience import STEP_BUDGET_SECONDS
from icp_pipeline.visibility import analytics as analytics_lib
from icp_pipeline.visibility import rollup
from icp_pipeline.visibility.citations import CITATIONS_VERSION, extract_citations
from icp_pipeline.visibility.claims import (
    CLAIMS_VERSION,
    ClaimExtraction,
    claims_subject,
    grader_for,
    org_grader,
)
from icp_pipeline.visibility.cycles import items_for_partition, latest_cycle, require_org, set_item_status
from icp_pipeline.visibility.mentions import MENTIONS_VERSION, CompanyTerms, find_mentions
from icp_pipeline.visibility.metrics import METRICS_VERSION, compute_run_metrics
from icp_pipeline.visibility.prompts import ANSWER_SYSTEM, CLAIMS_SYSTEM, answer_prompt, claims_prompt
from icp_pipeline.visibility.source_categories import SourceClassifier
from icp_pipeline.visibility.untracked import UNTRACKED_VERSION, match_company, untracked_names


class StepError(RuntimeError):
    """A permanent failure of a step for a reason other than the provider (missing input, ...)."""


def _safe_text(text: str) -> str:
    return storable_text(text)[0]


def company_terms(session: Session, org_id: str) -> list[CompanyTerms]:
    companies = session.scalars(
        select(Company).where(Company.org_id == org_id, Company.active).order_by(Company.id)
    )
    return [CompanyTerms(c.id, c.name, tuple(c.aliases), tuple(c.domains)) for c in companies]


def _paid_usage(session: Session, subject: str) -> tuple[int | None, int | None, float | None]:
    """Tokens and cost of every paid call of a purchase: a continued turn's pauses count, and so do
    paid replies that were unusable."""
    calls = list(session.scalars(select(ModelCall).where(ModelCall.subject == subject, ModelCall.paid)))
    if not calls:
        return None, None, None
    inputs = [c.input_tokens for c in calls]
    outputs = [c.output_tokens for c in calls]
    return (
        None if None in inputs else sum(inputs),
        None if None in outputs else sum(outputs),
        total_cost(calls),
    )


def fail_partition(db_url: str, partition_key: str, step: str, error: str) -> None:
    """Mark the partition's open items failed with the step and error that stopped them."""
    with session_scope(db_url) as session:
        for item in items_for_partition(session, partition_key):
            if item.status not in ("succeeded", "failed"):
                set_item_status(session, item, "failed", step, error)
            run = session.scalars(select(QuestionRun).where(QuestionRun.cycle_item_id == item.id)).first()
            if run is not None and run.status != "completed":
                run.status, run.error = "failed", error


# --- question-run steps -------------------------------------------------------------------------


def answer_budget(model: OrgModel) -> int:
    """The org file's models[].max_output_tokens, else the provider layer's default for the model."""
    return model.max_output_tokens or answer_token_budget(model.provider, model.model, model.web_search)


def partition_facts(item: CycleItem) -> dict[str, Any]:
    """What a question-run partition stands for, for people reading it: its key carries the question's
    hash, not its text. The question text and model name come from the org file (untrusted)."""
    return {
        "org": item.cycle.org_id,
        "cycle_id": item.cycle_id,
        "question": item.question.text,
        "question_key": item.question.key,
        "provider": item.model.provider,
        "model": item.model.model,
        "web_search": item.model.web_search,
        "country": item.location.country_code,
        "sample": item.sample_index + 1,  # 1-based, as in the partition key
    }


def buy_answers(
    db_url: str, partition_key: str, provider_for: ProviderFor, claimant: str | None = None
) -> dict[str, Any]:
    """Ask the assistant once per item. An item whose answer is already in the ledger is never asked again.
    `claimant` names the caller's run group: its own retries may take over its claim."""
    claimant = claimant or new_claimant()
    with session_scope(db_url) as session:
        items = items_for_partition(session, partition_key)
        org_id = items[0].cycle.org_id
        hints = {
            "companies": [
                {"name": t.name, "domains": list(t.domains)} for t in company_terms(session, org_id)
            ]
        }
        plan: list[tuple[int, ModelRequest]] = []
        facts = partition_facts(items[0])  # one item per partition since samples have their own
        for item in items:
            answered = latest_ok_call(session, purchase_subject("answer", item.id)) is not None
            if item.status == "failed" and not answered:  # a retry of a failed partition re-opens it
                set_item_status(session, item, "pending")
            country = item.location.country_code
            plan.append(
                (
                    item.id,
                    ModelRequest(
                        provider=item.model.provider,
                        model=item.model.model,
                        prompt=answer_prompt(
                            item.question.text,
                            country
                            if location_in_prompt(item.model.provider, item.model.web_search)
                            else None,
                        ),
                        system=ANSWER_SYSTEM,
                        purpose="answer",
                        country=country,
                        web_search=item.model.web_search,
                        max_output_tokens=answer_budget(item.model),
                        # Real providers get the same prompt for every sample; the offline one varies
                        # its synthetic answer by sample, as a real assistant's answers vary.
                        offline_hints={**hints, "sample": item.sample_index},
                    ),
                )
            )
    purchases: list[Bought[ModelCall]] = []
    for item_id, request in plan:
        # The one purchase path: an answer in the ledger is reused; two runs of one partition (a CLI
        # run next to a daemon run, say) never both pay, the second waits (PurchaseInProgress).
        request = replace(request, deadline=time.monotonic() + STEP_BUDGET_SECONDS)
        purchase = buy_answer(
            db_url,
            purchase_subject("answer", item_id),
            request,
            provider_for,
            claimant,
            cycle_item_id=item_id,
        )
        purchases.append(purchase)
        with session_scope(db_url) as session:
            item = session.get(CycleItem, item_id)
            if item.status == "pending":
                set_item_status(session, item, "answered")
    calls = [p.value for p in purchases]
    bought = [p.value for p in purchases if not p.reused]
    return {
        **facts,
        "bought": len(bought),
        "reused": len(calls) - len(bought),
        "paid_calls": sum(p.bought for p in purchases),
        "input_tokens": sum(c.input_tokens or 0 for c in calls),
        "output_tokens": sum(c.output_tokens or 0 for c in calls),
        "cost_usd": total_cost(calls),
        "latency_ms": max((c.latency_ms or 0 for c in bought), default=0),
        "response_model": calls[0].response_model if calls else None,
        "synthetic": any(c.synthetic for c in calls),
        "answer_preview": (calls[0].output_text or "")[:300] if calls else "",
    }


def store_runs(db_url: str, partition_key: str) -> dict[str, Any]:
    """Build (or rebuild) the run record of each item from its answer in the ledger."""
    with session_scope(db_url) as session:
        runs = []
        items = items_for_partition(session, partition_key)
        facts = partition_facts(items[0])
        for item in items:
            call = latest_ok_call(session, purchase_subject("answer", item.id))
            if call is None:
                raise StepError(
                    f"{partition_key}: no stored answer for sample {item.sample_index}; materialize ai_answer first"
                )
            run = session.scalars(select(QuestionRun).where(QuestionRun.cycle_item_id == item.id)).first()
            if run is None:
                run = QuestionRun(cycle_item_id=item.id, status="stored")
            run.answer_call_id = call.id
            run.org_id = item.cycle.org_id
            run.cycle_id = item.cycle_id
            run.partition_key = item.partition_key
            run.question_id, run.model_id, run.location_id = item.question_id, item.model_id, item.location_id
            run.sample_index = item.sample_index
            run.prompt = call.prompt
            run.answer_text = call.output_text
            run.raw_response = call.raw_response
            run.provider, run.requested_model, run.response_model = (
                call.provider,
                call.requested_model,
                call.response_model,
            )
            run.web_search, run.location_mode, run.synthetic = (
                call.web_search,
                call.location_mode,
                call.synthetic,
            )
            run.input_tokens, run.output_tokens, run.cost_usd = _paid_usage(
                session, purchase_subject("answer", item.id)
            )
            run.latency_ms = call.latency_ms
            if run.status != "completed":
                run.status, run.error = "stored", None
            session.add(run)
            runs.append(run)
        session.flush()
        return {
            **facts,
            "runs": len(runs),
            "question_run_ids": [r.id for r in runs],
            "input_tokens": sum(r.input_tokens or 0 for r in runs),
            "output_tokens": sum(r.output_tokens or 0 for r in runs),
            "cost_usd": total_cost(runs),
            "latency_ms": max((r.latency_ms or 0 for r in runs), default=0),
            "synthetic": any(r.synthetic for r in runs),
            "answer_preview": (runs[0].answer_text or "")[:300] if runs else "",
        }


def _runs(session: Session, partition_key: str) -> list[QuestionRun]:
    runs = []
    for item in items_for_partition(session, partition_key):
        run = session.scalars(select(QuestionRun).where(QuestionRun.cycle_item_id == item.id)).first()
        if run is None:
            raise StepError(
                f"{partition_key}: no run record for sample {item.sample_index}; materialize question_run first"
            )
        runs.append(run)
    return runs


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def replay_stamps(session: Session, org_id: str) -> dict[str, str]:
    """What each deterministic step stamps on a run it computes now (question_runs.<step>_stamp): its
    extractor version and a digest of the org evidence it reads. Mentions and metrics (with untracked
    companies and claims' companies) read the companies; citations read them and the source categories."""
    companies, categories = evidence_fingerprint(session, org_id)
    return {
        "mentions": f"{MENTIONS_VERSION}#{_digest(companies)}",
        "citations": f"{CITATIONS_VERSION}#{_digest([companies, categories])}",
        "metrics": f"{METRICS_VERSION}/{UNTRACKED_VERSION}#{_digest(companies)}",
    }


_STAMP_COLUMNS = {
    "mentions": QuestionRun.mentions_stamp,
    "citations": QuestionRun.citations_stamp,
    "metrics": QuestionRun.metrics_stamp,
}


class Replay(NamedTuple):
    runs: list[QuestionRun]  # the newest cycle's
    stale: list[QuestionRun]  # earlier cycles' runs to recompute
    stamp: str  # what the step stamps on each run it computes


def replay_runs(session: Session, partition_key: str, step: str) -> Replay:
    """The partition's runs of its newest cycle (as _runs), and its completed runs of earlier cycles
    that are stale for `step`: stamped with another version or org evidence than now, or never
    (NULL: computed before the stamps existed, or invalidated). Re-materializing a step (or a backfill)
    after an extractor or org file change recomputes that history from the stored answers with no
    model call; a normal cycle finds none and touches only the newest runs. One SELECT, on the
    question_runs partition_key index."""
    runs = _runs(session, partition_key)
    stamp = replay_stamps(session, runs[0].org_id)[step]
    column = _STAMP_COLUMNS[step]
    stale = session.scalars(
        select(QuestionRun)
        .where(
            QuestionRun.partition_key == partition_key,
            QuestionRun.cycle_id < runs[0].cycle_id,
            QuestionRun.status == "completed",
            or_(column.is_(None), column != stamp),
        )
        .order_by(QuestionRun.id)
    )
    return Replay(runs, list(stale), stamp)


def _stamp(session: Session, runs: list[QuestionRun], **stamps: str | None) -> None:
    """Record what the step applied to the runs: one UPDATE for them all (a row per run would cost
    more than the replay itself). A step that rewrites rows the metrics read also clears metrics_stamp,
    so competitive_metrics recomputes those runs whichever step runs first."""
    session.execute(update(QuestionRun).where(QuestionRun.id.in_([r.id for r in runs])).values(**stamps))


def _store_mentions(session: Session, run: QuestionRun, terms: list[CompanyTerms]) -> list[int]:
    session.execute(delete(Mention).where(Mention.question_run_id == run.id))
    found_ids = []
    for found in find_mentions(run.answer_text or "", terms):
        session.add(
            Mention(
                question_run_id=run.id,
                company_id=found.company_id,
                first_offset=found.first_offset,
                mention_count=found.count,
                matched_text=found.matched_text[:200],
                position=found.position,
                extractor_version=MENTIONS_VERSION,
            )
        )
        found_ids.append(found.company_id)
    return found_ids


def extract_mentions(db_url: str, partition_key: str) -> dict[str, Any]:
    with session_scope(db_url) as session:
        runs, stale, stamp = replay_runs(session, partition_key, "mentions")
        terms = company_terms(session, runs[0].org_id)
        names = {t.company_id: t.name for t in terms}
        found_by_company: dict[str, int] = {}
        for run in stale:
            _store_mentions(session, run, terms)
        for run in runs:  # the summary is the newest cycle's
            for company_id in _store_mentions(session, run, terms):
                found_by_company[names[company_id]] = found_by_company.get(names[company_id], 0) + 1
        _stamp(session, [*stale, *runs], mentions_stamp=stamp, metrics_stamp=None)
        return {
            "runs": len(runs),
            "history_runs": len(stale),
            "mentions": sum(found_by_company.values()),
            "by_company": found_by_company,
        }


def source_classifier(session: Session, org_id: str) -> SourceClassifier:
    """The org's citation categories: the target's domains are owned, the active competitors' are
    competitor; the org file's `source_categories` extend the table (source_categories.py)."""
    owned: list[str] = []
    competitor: list[str] = []
    for is_target, domains in session.execute(
        select(Company.is_target, Company.domains).where(Company.org_id == org_id, Company.active)
    ):
        (owned if is_target else competitor).extend(domains or [])
    org = session.get(Org, org_id)
    return SourceClassifier(tuple(owned), tuple(competitor), org_source_categories(org))


def org_source_categories(org: Org | None) -> dict[str, list[str]]:
    """The org file's `source_categories` (orgs.source_categories)."""
    return dict(org.source_categories or {}) if org is not None else {}


def _store_citations(session: Session, run: QuestionRun, classifier: SourceClassifier) -> list[Citation]:
    call = session.get(ModelCall, run.answer_call_id) if run.answer_call_id else None
    annotations = [
        (c["url"], c.get("title"), c.get("cited", True)) for c in (call.source_citations if call else [])
    ]
    session.execute(delete(Citation).where(Citation.question_run_id == run.id))
    rows = [
        Citation(
            question_run_id=run.id,
            url=found.url,
            host=found.host,
            domain=found.domain,
            title=_safe_text(found.title) if found.title else found.title,
            source=found.source,
            cited=found.cited,
            category=classifier.category(found.host),
            extractor_version=CITATIONS_VERSION,
        )
        for found in extract_citations(run.answer_text or "", annotations)
    ]
    session.add_all(rows)
    return rows


def extract_run_citations(db_url: str, partition_key: str) -> dict[str, Any]:
    with session_scope(db_url) as session:
        runs, stale, stamp = replay_runs(session, partition_key, "citations")
        classifier = source_classifier(session, runs[0].org_id)
        total = retrieved = 0
        domains: set[str] = set()
        categories: dict[str, int] = {}
        for run in stale:
            _store_citations(session, run, classifier)
        for run in runs:  # the summary is the newest cycle's
            for row in _store_citations(session, run, classifier):
                total += row.cited
                retrieved += not row.cited
                domains.add(row.domain)
                categories[row.category] = categories.get(row.category, 0) + 1
        _stamp(session, [*stale, *runs], citations_stamp=stamp, metrics_stamp=None)
        return {
            "runs": len(runs),
            "history_runs": len(stale),
            "citations": total,
            "retrieved_not_cited": retrieved,
            "domains": sorted(domains),
            "categories": categories,
        }


def _match_company(name: str, terms: list[CompanyTerms]) -> int | None:
    return match_company(name, terms)


def extract_claims(
    db_url: str, partition_key: str, provider_for: ProviderFor, claimant: str | None = None
) -> dict[str, Any]:
    """One structured-output purchase per run, from the org's grader (else the answering model); a run
    whose claims that grader already made are in the ledger (and still fit its citations) is re-parsed,
    not re-bought. Two runs of one partition never both pay for them."""
    claimant = claimant or new_claimant()
    with session_scope(db_url) as session:
        runs = _runs(session, partition_key)
        terms = company_terms(session, runs[0].org_id)
        org = session.get(Org, runs[0].org_id)
        configured = org_grader(org.grader_provider, org.grader_model)
        plan = []
        for run in runs:
            cited = sorted(
                session.scalars(
                    select(Citation.url).where(Citation.question_run_id == run.id, Citation.cited)
                )
            )
            grader = grader_for(configured, run.provider, run.requested_model)
            subject = claims_subject(run.cycle_item_id, grader, run.provider, run.requested_model)
            plan.append((run.id, run.cycle_item_id, grader, subject, run.answer_text or "", cited))
    bought = reused = claims_total = 0
    sentiments: dict[str, int] = {"positive": 0, "neutral": 0, "negative": 0}
    names = [t.name for t in terms]
    for run_id, item_id, grader, subject, answer, cited in plan:
        request = ModelRequest(
            provider=grader.provider,
            model=grader.model,
            prompt=claims_prompt(answer, names, cited),
            system=CLAIMS_SYSTEM,
            purpose="claims",
            offline_hints={"answer": answer, "company_names": names, "citations": cited},
            deadline=time.monotonic() + STEP_BUDGET_SECONDS,
        )
        try:
            purchase = buy_structured(
                db_url,
                "claims",
                request,
                ClaimExtraction,
                provider_for,
                {"citations": set(cited)},
                subject=subject,
                claimant=claimant,
                cycle_item_id=item_id,
            )
        except PurchaseInProgress:  # nothing happened: another run is buying it; keep its result
            raise
        except ProviderError as error:
            with session_scope(db_url) as session:
                run = session.get(QuestionRun, run_id)
                run.error = _safe_text(str(error))
                if error.raw_text is not None:
                    run.raw_output_text = _safe_text(error.raw_text)  # invalid output is kept, never lost
            raise
        bought += purchase.bought
        reused += purchase.reused
        call_id = purchase.calls[-1].id
        with session_scope(db_url) as session:
            session.execute(delete(Claim).where(Claim.question_run_id == run_id))
            for claim in purchase.value.claims:
                session.add(
                    Claim(
                        question_run_id=run_id,
                        model_call_id=call_id,
                        company_id=_match_company(claim.company, terms),
                        company_name=_safe_text(claim.company[:200]),
                        text=_safe_text(claim.text),
                        sentiment=claim.sentiment,
                        supporting_urls=claim.supporting_urls,
                        extractor_version=CLAIMS_VERSION,
                    )
                )
                sentiments[claim.sentiment] += 1
                claims_total += 1
    return {
        "runs": len(plan),
        "claims": claims_total,
        "model_calls": bought,
        "reused_calls": reused,
        "graders": sorted({grader.label for _, _, grader, *_ in plan}),
        **sentiments,
    }


def rematch_claims(session: Session, run: QuestionRun, terms: list[CompanyTerms]) -> None:
    """Point the run's claims at the tracked company they name, as extract_claims does, for the
    companies tracked now: a company added to the org file gets its claims without a model call."""
    for claim in session.scalars(select(Claim).where(Claim.question_run_id == run.id)):
        company_id = _match_company(claim.company_name, terms)
        if claim.company_id != company_id:
            claim.company_id = company_id


def _store_untracked(session: Session, run: QuestionRun, terms: list[CompanyTerms]) -> int:
    rematch_claims(session, run, terms)
    session.flush()
    unmatched = session.scalars(
        select(Claim.company_name).where(Claim.question_run_id == run.id, Claim.company_id.is_(None))
    )
    session.execute(delete(UntrackedMention).where(UntrackedMention.question_run_id == run.id))
    names = untracked_names(run.answer_text or "", list(unmatched), terms)
    session.add_all(
        UntrackedMention(
            question_run_id=run.id,
            name=_safe_text(found.name)[:200],
            name_key=_safe_text(found.name_key)[:200],
            source=found.source,
            occurrences=found.occurrences,
            extractor_version=UNTRACKED_VERSION,
        )
        for found in names
    )
    return len(names)


def _store_metrics(session: Session, run: QuestionRun, terms: list[CompanyTerms]) -> list[Any]:
    mentions = {
        m.company_id: (m.position, m.mention_count)
        for m in session.scalars(select(Mention).where(Mention.question_run_id == run.id))
    }
    hosts = list(
        session.scalars(select(Citation.host).where(Citation.question_run_id == run.id, Citation.cited))
    )
    sentiments = list(
        session.execute(select(Claim.company_id, Claim.sentiment).where(Claim.question_run_id == run.id))
    )
    session.execute(delete(CompetitiveMetric).where(CompetitiveMetric.question_run_id == run.id))
    rows = compute_run_metrics(terms, mentions, hosts, sentiments)
    for row in rows:
        session.add(
            CompetitiveMetric(question_run_id=run.id, metrics_version=METRICS_VERSION, **row.__dict__)
        )
    return rows


def compute_metrics(db_url: str, partition_key: str) -> dict[str, Any]:
    """Per-company metrics of each run, after its untracked companies (which first point its claims
    at the companies tracked now); completes the newest cycle's run and its cycle item. The
    partition's earlier completed runs are recomputed too when stale (replay_runs; their status left
    as it is)."""
    with session_scope(db_url) as session:
        newest, stale, stamp = replay_runs(session, partition_key, "metrics")
        terms = company_terms(session, newest[0].org_id)
        names = {t.company_id: t.name for t in terms}
        summary: dict[str, Any] = {
            "runs": len(newest),
            "history_runs": len(stale),
            "mentioned": [],
            "cited": [],
            "positions": {},
            "untracked": 0,
        }
        for run in stale:
            _store_untracked(session, run, terms)
            session.flush()
            _store_metrics(session, run, terms)
        for run in newest:
            summary["untracked"] += _store_untracked(session, run, terms)
            session.flush()
            for row in _store_metrics(session, run, terms):
                if row.mentioned:
                    summary["mentioned"].append(names[row.company_id])
                    summary["positions"][names[row.company_id]] = row.position
                if row.cited:
                    summary["cited"].append(names[row.company_id])
            run.status, run.error, run.completed_at = "completed", None, run.completed_at or datetime.now(UTC)
            set_item_status(session, run.item, "succeeded")
        _stamp(session, [*stale, *newest], metrics_stamp=stamp)
        session.flush()
        summary["untracked_names"] = [
            {"name": n, "source": src, "occurrences": occ}
            for n, src, occ in session.execute(
                select(UntrackedMention.name, UntrackedMention.source, UntrackedMention.occurrences)
                .where(UntrackedMention.question_run_id.in_([r.id for r in newest]))
                .order_by(UntrackedMention.occurrences.desc(), UntrackedMention.name)
            )
        ]
        return summary


def evidence_fingerprint(session: Session, org_id: str) -> tuple[Any, ...]:
    """What the deterministic steps read from the org file: its active companies' names, aliases,
    domains and roles, and its source categories. When `org load` changes it, history is recomputed."""
    companies = session.execute(
        select(Company.name, Company.is_target, Company.aliases, Company.domains)
        .where(Company.org_id == org_id, Company.active)
        .order_by(Company.name)
    ).all()
    categories = org_source_categories(session.get(Org, org_id))
    return (
        tuple((n, t, tuple(a or ()), tuple(d or ())) for n, t, a, d in companies),
        tuple(sorted((k, tuple(v)) for k, v in categories.items())),
    )


def recompute_history(db_url: str, org_id: str, batch_size: int = 200) -> dict[str, Any]:
    """Recompute mentions, citations (categories), claims' companies, untracked companies and metrics
    of every completed run of the org from its stored answers, in batches of `batch_size` runs (one
    transaction each): what re-materializing run_mentions, run_citations and competitive_metrics for every partition
    does, without Dagster, and with no model call; it stamps them, so those steps then find no stale
    history. `org load` runs it when the companies change."""
    done = 0
    last_id = 0
    while True:
        with session_scope(db_url) as session:
            require_org(session, org_id)
            runs = list(
                session.scalars(
                    select(QuestionRun)
                    .where(
                        QuestionRun.org_id == org_id,
                        QuestionRun.status == "completed",
                        QuestionRun.id > last_id,
                    )
                    .order_by(QuestionRun.id)
                    .limit(batch_size)
                )
            )
            if not runs:
                break
            # Stamps first: an org load committed between these reads then costs one extra recompute,
            # never a run computed with the old companies but stamped with the new ones.
            stamps = replay_stamps(session, org_id)
            terms = company_terms(session, org_id)
            classifier = source_classifier(session, org_id)
            for run in runs:
                _store_mentions(session, run, terms)
                _store_citations(session, run, classifier)
                _store_untracked(session, run, terms)
                session.flush()
                _store_metrics(session, run, terms)
            _stamp(
                session,
                runs,
                mentions_stamp=stamps["mentions"],
                citations_stamp=stamps["citations"],
                metrics_stamp=stamps["metrics"],
            )
            done += len(runs)
            last_id = runs[-1].id
    return {"runs": done}


# --- org roll-ups ---------------------------------------------------------------------------------


def mark_latest(db_url: str, org_id: str) -> dict[str, Any]:
    """Flag, per question x model x location, the completed runs of the newest cycle that has one: every
    completed sample of that cycle, and none of an older cycle (samples lowered from 3 to 1 leave one).
    Two UPDATEs against a grouped subquery: no run ids travel to Python and back."""
    with session_scope(db_url) as session:
        require_org(session, org_id)
        qr = QuestionRun
        combination = tuple_(qr.question_id, qr.model_id, qr.location_id, qr.cycle_id)
        newest = (
            select(qr.question_id, qr.model_id, qr.location_id, func.max(qr.cycle_id))
            .where(qr.org_id == org_id, qr.status == "completed")
            .group_by(qr.question_id, qr.model_id, qr.location_id)
        )
        is_newest = and_(qr.status == "completed", combination.in_(newest))
        analyze = session.get_bind().dialect.name == "postgresql"
        if analyze:
            # Fresh statistics first: a table filled since autovacuum last looked (a first big cycle)
            # plans the UPDATE's semi-join as nested loops, quadratic in the runs.
            session.execute(text("ANALYZE question_runs"))
        session.execute(
            update(qr)
            .where(qr.org_id == org_id, qr.is_latest, ~is_newest)
            .values(is_latest=False)
            .execution_options(synchronize_session=False)
        )
        session.execute(
            update(qr)
            .where(qr.org_id == org_id, ~qr.is_latest, is_newest)
            .values(is_latest=True)
            .execution_options(synchronize_session=False)
        )
        if analyze:
            # The planner's statistics still see the old flags (before a first cycle: no latest run
            # at all) and would plan the roll-up's joins for one row: nested loops, minutes at scale.
            session.execute(text("ANALYZE question_runs"))
        per_cycle = session.execute(
            select(qr.cycle_id, func.count())
            .where(qr.org_id == org_id, qr.is_latest)
            .group_by(qr.cycle_id)
            .order_by(qr.cycle_id)
        ).all()
        return {"latest_runs": sum(n for _, n in per_cycle), "from_cycles": [c for c, _ in per_cycle]}


def build_analytics(db_url: str, org_id: str) -> AnalyticsSnapshot:
    """Compute the org's analytics for its newest cycle and store them as that cycle's snapshot.
    Counted in the database (rollup.org_analytics): memory and time grow with the org's combinations,
    not with its runs."""
    with session_scope(db_url) as session:
        org = require_org(session, org_id)
        cycle = latest_cycle(session, org_id)
        if cycle is None:
            raise StepError(f"org {org_id!r} has no cycle yet; run `icp-pipeline org run {org_id}`")
        companies = list(
            session.scalars(
                select(Company).where(Company.org_id == org_id, Company.active).order_by(Company.id)
            )
        )
        grader = org_grader(org.grader_provider, org.grader_model)
        payload = rollup.org_analytics(
            session,
            org_id=org_id,
            cycle_id=cycle.id,
            generated_at=datetime.now(UTC),
            run_counts={"total": cycle.total, "completed": cycle.completed, "failed": cycle.failed},
            companies=[analytics_lib.CompanyInfo(c.id, c.name, c.is_target) for c in companies],
            min_runs=org.min_runs,
            previous=previous_payload(session, org_id, cycle.id),
            grader=(grader.provider, grader.model) if grader else None,
        )
        snapshot = session.scalars(
            select(AnalyticsSnapshot).where(
                AnalyticsSnapshot.org_id == org_id, AnalyticsSnapshot.cycle_id == cycle.id
            )
        ).first()
        if snapshot is None:
            snapshot = AnalyticsSnapshot(org_id=org_id, cycle_id=cycle.id, payload={}, analytics_version="")
            session.add(snapshot)
        snapshot.payload = payload
        snapshot.analytics_version = analytics_lib.ANALYTICS_VERSION
        snapshot.generated_at = datetime.now(UTC)
        session.flush()
        return snapshot


def previous_payload(session: Session, org_id: str, cycle_id: int) -> dict[str, Any] | None:
    """The analytics of the latest earlier cycle that has them, with its cycle id, or None."""
    previous = session.scalars(
        select(AnalyticsSnapshot)
        .where(AnalyticsSnapshot.org_id == org_id, AnalyticsSnapshot.cycle_id < cycle_id)
        .order_by(AnalyticsSnapshot.cycle_id.desc())
        .limit(1)
    ).first()
    return None if previous is None else {**previous.payload, "cycle_id": previous.cycle_id}


def snapshots(session: Session, org_id: str) -> list[AnalyticsSnapshot]:
    """Every analytics snapshot of the org, oldest cycle first."""
    return list(
        session.scalars(
            select(AnalyticsSnapshot)
            .where(AnalyticsSnapshot.org_id == org_id)
            .order_by(AnalyticsSnapshot.cycle_id)
        )
    )


def latest_snapshot(session: Session, org_id: str) -> AnalyticsSnapshot | None:
    return session.scalars(
        select(AnalyticsSnapshot)
        .where(AnalyticsSnapshot.org_id == org_id)
        .order_by(AnalyticsSnapshot.cycle_id.desc())
        .limit(1)
    ).first()
