"""The sync sensor gives new work its first run: a new org its first cycle and its runs, new questions their runs."""

import dagster as dg
import sqlalchemy as sa
import yaml

from icp_pipeline.db.models import Cycle, CycleItem
from icp_pipeline.db.session import session_scope
from icp_pipeline.visibility.cycles import open_cycle, set_item_status
from icp_pipeline.visibility.org_file import parse_org_text, upsert_org
from icp_pipeline_tests.conftest import example_org_data
from icp_pipeline_tests.integration.test_operations import _apply, _tick


def test_a_new_org_gets_its_first_cycle_and_its_runs_in_one_tick(sqlite_app: str) -> None:
    with dg.instance_for_test() as instance:
        first = _tick(instance, sqlite_app)
        with session_scope(sqlite_app) as session:
            (cycle,) = session.scalars(sa.select(Cycle).where(Cycle.org_id == "acme")).all()
            cycle_id, total = cycle.id, cycle.total
        assert total == 45
        # The cycle's question runs are requested in the same tick that opened it; no org_cycle run.
        assert not [r for r in first.run_requests if r.job_name == "org_cycle_job"]
        question_runs = [r for r in first.run_requests if r.job_name == "question_run_job"]
        assert len(question_runs) == 45
        assert {r.tags["icp/cycle_id"] for r in question_runs} == {str(cycle_id)}
        # org_cycle stays materialized: the tick reports it for the org's partition, which exists
        # before the daemon records the event.
        (event,) = first.asset_events
        assert (event.asset_key, event.partition) == (dg.AssetKey("org_cycle"), "acme")
        assert event.metadata["cycle_id"].value == cycle_id and event.metadata["items"].value == 45
        assert instance.has_dynamic_partition("orgs", "acme")
        _apply(instance, first)

        # The next tick opens nothing more and reports nothing; the runs keep their run keys.
        second = _tick(instance, sqlite_app)
        assert second.asset_events == []
        with session_scope(sqlite_app) as session:
            assert session.scalar(sa.select(sa.func.count()).select_from(Cycle)) == 1
        assert {r.run_key for r in second.run_requests if r.job_name == "question_run_job"} == {
            r.run_key for r in question_runs
        }


def test_the_daemon_records_the_sensor_opened_cycle_as_an_org_cycle_materialization(sqlite_app: str) -> None:
    """What the sensor daemon does with the tick's asset events (report_runless_asset_event)."""
    with dg.instance_for_test() as instance:
        result = _tick(instance, sqlite_app)
        for event in result.asset_events:
            instance.report_runless_asset_event(event)
        record = instance.get_latest_materialization_event(dg.AssetKey("org_cycle"))
        assert record is not None and record.asset_materialization.partition == "acme"
        assert instance.get_materialized_partitions(dg.AssetKey("org_cycle")) == {"acme"}


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
