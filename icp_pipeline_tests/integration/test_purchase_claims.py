"""Two runs of one partition never both pay for its answer: the purchase claim, on SQLite and PostgreSQL."""

import threading
from collections.abc import Callable
from datetime import timedelta

import pytest
import sqlalchemy as sa

from icp_pipeline.db.models import ModelCall, PurchaseClaim
from icp_pipeline.db.session import session_scope, upgrade
from icp_pipeline.defs.resources import ModelProviderResource
from icp_pipeline.ledger import CLAIM_TTL, PurchaseInProgress, claim_purchase, release_purchase
from icp_pipeline.providers.base import ModelRequest
from icp_pipeline.visibility import steps
from icp_pipeline.visibility.cycles import open_cycle
from icp_pipeline_tests.conftest import load_example
from icp_pipeline_tests.support.pipeline import count

REQUEST = ModelRequest(provider="openai", model="gpt-4o-mini", prompt="q", system="s", purpose="answer")


@pytest.fixture(params=["sqlite", "postgres"])
def app_url(request: pytest.FixtureRequest) -> str:
    if request.param == "sqlite":
        return request.getfixturevalue("sqlite_app")
    url = request.getfixturevalue("postgres_databases")()
    upgrade(url)
    load_example(url)
    return url


def test_a_claim_is_held_until_released_and_its_owner_may_take_it_back(app_url: str) -> None:
    claim_purchase(app_url, "answer:1", "run-a", REQUEST)
    with pytest.raises(PurchaseInProgress) as waiting:
        claim_purchase(app_url, "answer:1", "run-b", REQUEST)
    assert waiting.value.retryable and 1 <= waiting.value.retry_after <= 30
    claim_purchase(app_url, "answer:1", "run-a", REQUEST)  # a retry of the same run group
    release_purchase(app_url, "answer:1", "run-b")  # not its claim: nothing happens
    with pytest.raises(PurchaseInProgress):
        claim_purchase(app_url, "answer:1", "run-b", REQUEST)
    release_purchase(app_url, "answer:1", "run-a")
    claim_purchase(app_url, "answer:1", "run-b", REQUEST)
    assert count(app_url, PurchaseClaim) == 1


def test_an_abandoned_claim_is_taken_over(app_url: str) -> None:
    claim_purchase(app_url, "answer:2", "dead-run", REQUEST)
    with session_scope(app_url) as session:
        claim = session.get(PurchaseClaim, "answer:2")
        claim.claimed_at = claim.claimed_at - CLAIM_TTL - timedelta(seconds=1)
    claim_purchase(app_url, "answer:2", "run-b", REQUEST)
    with session_scope(app_url) as session:
        assert session.get(PurchaseClaim, "answer:2").claimant == "run-b"


def _race(app_url: str, subject: str, claimants: int) -> list[str]:
    """Every claimant claims `subject` at the same moment; the ones that got it."""
    start = threading.Barrier(claimants)
    winners: list[str] = []

    def claim(claimant: str) -> None:
        start.wait()
        try:
            claim_purchase(app_url, subject, claimant, REQUEST)
        except PurchaseInProgress:
            return
        winners.append(claimant)

    threads = [threading.Thread(target=claim, args=(f"run-{i}",)) for i in range(claimants)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return winners


def test_racing_claimants_get_one_claim(app_url: str) -> None:
    winners = [_race(app_url, f"answer:race-{n}", 6) for n in range(10)]
    assert all(len(w) == 1 for w in winners), winners


def test_two_runs_of_one_partition_buy_its_answer_once(app_url: str) -> None:
    with session_scope(app_url) as session:
        cycle, _ = open_cycle(session, "acme")
        key = cycle.items[0].partition_key
    # Slow calls, so the second run arrives while the first one is still buying.
    provider_for: Callable = ModelProviderResource(offline_latency_seconds=1.5).provider_for
    outcomes: dict[str, object] = {}

    def run(claimant: str) -> None:
        try:
            outcomes[claimant] = steps.buy_answers(app_url, key, provider_for, claimant)
        except PurchaseInProgress as error:
            outcomes[claimant] = error

    first = threading.Thread(target=run, args=("run-a",))
    first.start()
    for _ in range(200):  # wait until run-a holds the claim (a fresh transaction each look)
        if count(app_url, PurchaseClaim, PurchaseClaim.claimant == "run-a"):
            break
        threading.Event().wait(0.02)
    run("run-b")
    first.join()
    assert outcomes["run-a"]["bought"] == 1
    assert isinstance(outcomes["run-b"], PurchaseInProgress)
    # run-b's retry, once run-a is done, reuses the answer instead of buying it again.
    assert steps.buy_answers(app_url, key, provider_for, "run-b")["reused"] == 1
    with session_scope(app_url) as session:
        answers = session.scalar(
            sa.select(sa.func.count())
            .select_from(ModelCall)
            .where(ModelCall.purpose == "answer", ModelCall.ok)
        )
    assert answers == 1
    assert count(app_url, PurchaseClaim) == 0  # released after the purchase
