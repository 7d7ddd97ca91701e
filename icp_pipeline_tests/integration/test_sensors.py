"""The roll-up sensor requests an org's roll-ups once, when every item of its cycle is terminal."""

import dagster as dg
import sqlalchemy as sa

from icp_pipeline.db.models import CycleItem
from icp_pipeline.db.session import session_scope
from icp_pipeline.defs.resources import AppDatabase
from icp_pipeline.defs.visibility.sensors import cycle_complete_sensor
from icp_pipeline.visibility.cycles import open_cycle, set_item_status
from icp_pipeline_tests.support.pipeline import pipeline_defs


def test_rollups_are_requested_once_when_the_cycle_is_complete(sqlite_app: str) -> None:
    defs = pipeline_defs(sqlite_app)
    with dg.instance_for_test() as instance:
        with session_scope(sqlite_app) as session:
            cycle, _ = open_cycle(session, "acme")
            cycle_id = cycle.id
            items = list(session.scalars(sa.select(CycleItem).where(CycleItem.cycle_id == cycle_id)))
            for item in items[:-1]:
                set_item_status(session, item, "succeeded")

        def tick() -> dg.SensorResult:
            context = dg.build_sensor_context(
                instance=instance, definitions=defs, resources={"app_db": AppDatabase(url=sqlite_app)}
            )
            return cycle_complete_sensor(context)

        assert tick().run_requests == []  # one item is still pending

        with session_scope(sqlite_app) as session:
            set_item_status(session, session.get(CycleItem, items[-1].id), "failed", "ai_answer", "boom")
        first = tick()
        assert [r.partition_key for r in first.run_requests] == ["acme"]
        assert first.run_requests[0].run_key.startswith(f"rollup-cycle-{cycle_id}-")
        assert first.dynamic_partitions_requests[0].partition_keys == ["acme"]
        assert tick().run_requests == []  # claimed: never requested twice

        # A backfill re-opens the failed item and completes it: the cycle rolls up again, under a new
        # run key (Dagster would skip the first one as already launched).
        with session_scope(sqlite_app) as session:
            item = session.get(CycleItem, items[-1].id)
            set_item_status(session, item, "pending")
        assert tick().run_requests == []
        with session_scope(sqlite_app) as session:
            set_item_status(session, session.get(CycleItem, items[-1].id), "succeeded")
        again = tick()
        assert [r.partition_key for r in again.run_requests] == ["acme"]
        assert again.run_requests[0].run_key != first.run_requests[0].run_key
        assert tick().run_requests == []
