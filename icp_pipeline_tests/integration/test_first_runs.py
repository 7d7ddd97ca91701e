"""The sync sensor gives new work its first run: a new org its first cycle, new questions their runs."""

import dagster as dg
import sqlalchemy as sa
import yaml

from icp_pipeline.db.models import Cycle, CycleItem
from icp_pipeline.db.session import session_scope
from icp_pipeline.visibility.cycles import open_cycle, set_item_status
from icp_pipeline.visibility.org_file import parse_org_text, upsert_org
from icp_pipeline_tests.conftest import example_org_data
from icp_pipeline_tests.integration.test_operations import _apply, _tick


def test_a_new_org_gets_its_first_cycle_once(sqlite_app: str) -> None:
    with dg.instance_for_test() as instance:
        first = _tick(instance, sqlite_app)
        cycle_runs = [r for r in first.run_requests if r.job_name == "org_cycle_job"]
        assert [(r.partition_key, r.run_key) for r in cycle_runs] == [("acme", "first-cycle-acme")]
        # No cycle yet, so no question run is requested before the cycle exists.
        assert not [r for r in first.run_requests if r.job_name == "question_run_job"]
        _apply(instance, first)

        with session_scope(sqlite_app) as session:
            cycle, _ = open_cycle(session, "acme")  # what the org_cycle run does
            cycle_id = cycle.id
        second = _tick(instance, sqlite_app)
        assert not [r for r in second.run_requests if r.job_name == "org_cycle_job"]
        question_runs = [r for r in second.run_requests if r.job_name == "question_run_job"]
        assert len(question_runs) == 45
        assert {r.tags["icp/cycle_id"] for r in question_runs} == {str(cycle_id)}


def test_a_question_added_after_the_cycle_joins_it_and_reopens_it(sqlite_app: str) -> None:
    with session_scope(sqlite_app) as session:
        cycle, _ = open_cycle(session, "acme")
        cycle_id = cycle.id
        for item in session.scalars(sa.select(CycleItem).where(CycleItem.cycle_id == cycle_id)):
            set_item_status(session, item, "succeeded")
        assert session.get(Cycle, cycle_id).status == "succeeded"

    spec = example_org_data()
    spec["questions"].append("Which analytics tool has the best privacy controls?")
    with session_scope(sqlite_app) as session:
        upsert_org(session, parse_org_text(yaml.safe_dump(spec)))

    with dg.instance_for_test() as instance:
        result = _tick(instance, sqlite_app)
        question_runs = [r for r in result.run_requests if r.job_name == "question_run_job"]
        # 1 new question x 3 models x 3 locations, and only those: the 45 others are done.
        assert len(question_runs) == 9
        assert all(r.run_key.startswith(f"cycle-{cycle_id}-") for r in question_runs)
        with session_scope(sqlite_app) as session:
            cycle = session.get(Cycle, cycle_id)
            assert (cycle.status, cycle.total, cycle.completed) == ("running", 54, 45)
            assert cycle.rollup_requested_at is None  # the roll-ups will run again when it completes
        _apply(instance, result)
        # The next tick adds nothing more: the cycle has every combination now.
        again = _tick(instance, sqlite_app)
        assert {r.run_key for r in again.run_requests if r.job_name == "question_run_job"} == {
            r.run_key for r in question_runs
        }
        with session_scope(sqlite_app) as session:
            assert session.scalar(sa.select(sa.func.count()).where(CycleItem.cycle_id == cycle_id)) == 54
