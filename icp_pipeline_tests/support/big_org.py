"""A synthetic org of any size, built with INSERT ... SELECT (the same SQL on SQLite and PostgreSQL):
questions x models x locations x samples question runs with competitive metrics, citations, claims
and paid model calls whose values follow fixed arithmetic patterns of the ids (deterministic, varied
across samples). Used by bench/bench_analytics.py and the analytics scale tests."""

from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa

from icp_pipeline.db.models import (
    Citation,
    Claim,
    Company,
    CompetitiveMetric,
    Cycle,
    CycleItem,
    ModelCall,
    Org,
    OrgLocation,
    OrgModel,
    Question,
    QuestionRun,
    UntrackedMention,
)
from icp_pipeline.db.session import session_scope


@dataclass(frozen=True)
class OrgShape:
    questions: int = 500
    models: int = 8
    locations: int = 10
    samples: int = 5
    companies: int = 6
    # An older cycle with one sample of every combination (mark_latest must drop it), a few failed
    # runs in the newest, and one inactive company, model and question whose rows must not count.
    history: bool = True

    @property
    def latest_runs(self) -> int:
        return self.questions * self.models * self.locations * self.samples


_CATEGORIES = ("owned", "competitor", "review", "ugc", "reference", "news_blog", "other")


def _country(index: int) -> str:
    return chr(65 + index // 26) + chr(65 + index % 26)


def _numbers(count: int) -> sa.CTE:
    """0 .. count-1 as a recursive CTE (portable; PostgreSQL's generate_series is not on SQLite)."""
    numbers = sa.select(sa.literal(0).label("i")).cte("numbers", recursive=True)
    return numbers.union_all(sa.select(numbers.c.i + 1).where(numbers.c.i < count - 1))


def build_org(url: str, org_id: str, shape: OrgShape) -> None:
    """The org with its cycles, runs and derived rows; the runs are not yet marked latest."""
    now = datetime.now(UTC)
    extra = 1 if shape.history else 0
    with session_scope(url) as session:
        session.add(
            Org(id=org_id, name=f"Org {org_id}", config_sha256="0" * 64, min_runs=10, samples=shape.samples)
        )
        session.flush()
        for i in range(shape.companies + extra):
            session.add(Company(org_id=org_id, name=f"Company {i}", is_target=i == 0, aliases=[], domains=[]))
        for i in range(shape.models + extra):
            session.add(
                OrgModel(org_id=org_id, provider=f"p{i % 3}", model=f"model-{i}", slug=f"p{i % 3}-model-{i}")
            )
        for i in range(shape.locations):
            session.add(OrgLocation(org_id=org_id, country_code=_country(i)))
        for i in range(shape.questions + extra):
            session.add(Question(org_id=org_id, key=f"q{i:05d}", text=f"Question {i}?", position=i))
        cycles = [Cycle(org_id=org_id, status="succeeded") for _ in range(1 + extra)]
        session.add_all(cycles)
        session.flush()
        for number, cycle in enumerate(cycles):
            samples = 1 if number < len(cycles) - 1 else shape.samples
            _runs(
                session, org_id, cycle.id, samples, now, fail_some=number == len(cycles) - 1 and shape.history
            )
        _derived(session, org_id, now)
        if shape.history:
            for model in (Company, OrgModel, Question):
                last = session.scalar(sa.select(sa.func.max(model.id)).where(model.org_id == org_id))
                session.execute(sa.update(model).where(model.id == last).values(active=False))
        for cycle in cycles:
            counts = session.execute(
                sa.select(
                    sa.func.count(), sa.func.sum(sa.case((QuestionRun.status == "completed", 1), else_=0))
                ).where(QuestionRun.cycle_id == cycle.id)
            ).one()
            cycle.total, cycle.completed = counts[0], int(counts[1])
            cycle.failed = cycle.total - cycle.completed


def _runs(
    session: sa.orm.Session, org_id: str, cycle_id: int, samples: int, now: datetime, fail_some: bool
) -> None:
    sample = _numbers(samples)
    stamp = sa.literal(now, sa.DateTime(timezone=True))
    key = (
        Question.key
        + "|"
        + OrgModel.slug
        + "|"
        + OrgLocation.country_code
        + "|s"
        + sa.cast(sample.c.i, sa.String)
    )
    session.execute(
        sa.insert(CycleItem).from_select(
            [
                "cycle_id",
                "partition_key",
                "question_id",
                "model_id",
                "location_id",
                "sample_index",
                "status",
                "updated_at",
            ],
            sa.select(
                sa.literal(cycle_id),
                key,
                Question.id,
                OrgModel.id,
                OrgLocation.id,
                sample.c.i,
                sa.literal("succeeded"),
                stamp,
            )
            .select_from(Question)
            .join(OrgModel, OrgModel.org_id == Question.org_id)
            .join(OrgLocation, OrgLocation.org_id == Question.org_id)
            .join(sample, sa.true())
            .where(Question.org_id == org_id),
        )
    )
    failed = (CycleItem.id % 97 == 0) if fail_some else sa.false()
    session.execute(
        sa.insert(QuestionRun).from_select(
            [
                "cycle_item_id",
                "org_id",
                "cycle_id",
                "partition_key",
                "question_id",
                "model_id",
                "location_id",
                "sample_index",
                "status",
                "prompt",
                "provider",
                "requested_model",
                "web_search",
                "synthetic",
                "is_latest",
                "created_at",
                "updated_at",
            ],
            sa.select(
                CycleItem.id,
                sa.literal(org_id),
                CycleItem.cycle_id,
                CycleItem.partition_key,
                CycleItem.question_id,
                CycleItem.model_id,
                CycleItem.location_id,
                CycleItem.sample_index,
                sa.case((failed, "failed"), else_="completed"),
                sa.literal(""),
                OrgModel.provider,
                OrgModel.model,
                sa.false(),
                sa.false(),
                sa.false(),
                stamp,
                stamp,
            )
            .join(OrgModel, OrgModel.id == CycleItem.model_id)
            .where(CycleItem.cycle_id == cycle_id),
        )
    )


def _derived(session: sa.orm.Session, org_id: str, now: datetime) -> None:
    """Metrics, citations, paid answer calls and claims of every completed run of the org."""
    run, company = QuestionRun, Company
    completed = sa.and_(run.org_id == org_id, run.status == "completed")
    # Company k is mentioned in (k % 5 + 1) of 7 runs, at position 1-3; cited in 1 of 5.
    mentioned = (run.id * 31 + company.id * 17 + run.sample_index * 3) % 7 < company.id % 5 + 1
    session.execute(
        sa.insert(CompetitiveMetric).from_select(
            [
                "question_run_id",
                "company_id",
                "mentioned",
                "mention_count",
                "position",
                "cited",
                "citation_count",
                "positive_claims",
                "neutral_claims",
                "negative_claims",
                "metrics_version",
            ],
            sa.select(
                run.id,
                company.id,
                mentioned,
                sa.case((mentioned, 1), else_=0),
                sa.case((mentioned, 1 + (run.id + company.id) % 3), else_=None),
                (run.id + 3 * company.id) % 5 == 0,
                sa.literal(0),
                sa.literal(0),
                sa.literal(0),
                sa.literal(0),
                sa.literal("bench"),
            )
            .join(company, company.org_id == run.org_id)
            .where(completed),
        )
    )
    slot = _numbers(2)
    site = sa.cast((run.id * 7 + slot.c.i) % 40, sa.String)
    session.execute(
        sa.insert(Citation).from_select(
            ["question_run_id", "url", "host", "domain", "source", "cited", "category", "extractor_version"],
            sa.select(
                run.id,
                "https://d"
                + site
                + ".example/"
                + sa.cast(run.id, sa.String)
                + "/"
                + sa.cast(slot.c.i, sa.String),
                "d" + site + ".example",
                "d" + site + ".example",
                sa.literal("answer_text"),
                (run.id + slot.c.i) % 4 != 0,
                # A category per site (and none for a few, as stored before categories existed).
                sa.case(
                    *[((run.id * 7 + slot.c.i) % 40 % 8 == k, name) for k, name in enumerate(_CATEGORIES)],
                    else_=None,
                ),
                sa.literal("bench"),
            )
            .join(slot, sa.true())
            .where(completed, (run.id + slot.c.i) % 3 != 0),
        )
    )
    stamp = sa.literal(now, sa.DateTime(timezone=True))
    empty_list = sa.cast(sa.literal_column("'[]'"), sa.JSON)
    session.execute(
        sa.insert(ModelCall).from_select(
            [
                "cycle_item_id",
                "purpose",
                "provider",
                "requested_model",
                "prompt",
                "ok",
                "paid",
                "source_citations",
                "input_tokens",
                "output_tokens",
                "cost_usd",
                "web_search",
                "synthetic",
                "started_at",
                "finished_at",
            ],
            sa.select(
                run.cycle_item_id,
                sa.literal("answer"),
                run.provider,
                run.requested_model,
                sa.literal(""),
                sa.true(),
                sa.true(),
                empty_list,
                100 + run.id % 50,
                300 + run.id % 200,
                sa.case((run.id % 10 == 0, None), else_=(300 + run.id % 200) * 0.000001),
                sa.false(),
                sa.false(),
                stamp,
                stamp,
            ).where(run.org_id == org_id),
        )
    )
    # Untracked companies: vendor k named by the text in some runs, by a claim in others, in both in a few.
    vendor = _numbers(6)
    for source, rule in (("text", (run.id + vendor.c.i) % 3 == 0), ("claim", (run.id * vendor.c.i) % 5 == 1)):
        session.execute(
            sa.insert(UntrackedMention).from_select(
                ["question_run_id", "name", "name_key", "source", "occurrences", "extractor_version"],
                sa.select(
                    run.id,
                    "Vendor " + sa.cast(vendor.c.i, sa.String),
                    "vendor " + sa.cast(vendor.c.i, sa.String),
                    sa.literal(source),
                    1 + (run.id + vendor.c.i) % 3,
                    sa.literal("bench"),
                )
                .join(vendor, sa.true())
                .where(completed, rule),
            )
        )
    sentiment = sa.case((run.id % 3 == 0, "positive"), (run.id % 3 == 1, "neutral"), else_="negative")
    session.execute(
        sa.insert(Claim).from_select(
            [
                "question_run_id",
                "model_call_id",
                "company_id",
                "company_name",
                "text",
                "sentiment",
                "supporting_urls",
                "extractor_version",
            ],
            sa.select(
                run.id,
                ModelCall.id,
                company.id,
                company.name,
                sa.literal("claim"),
                sentiment,
                empty_list,
                sa.literal("bench"),
            )
            .join(ModelCall, ModelCall.cycle_item_id == run.cycle_item_id)
            .join(company, company.org_id == run.org_id)
            .where(completed, (run.id + company.id) % 4 == 0),
        )
    )
