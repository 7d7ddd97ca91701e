"""Benchmark one tick of the partition-sync sensor with 100,000 question-run keys (not a test).

An org with 100 questions x 10 models x 100 countries is loaded into a fresh SQLite app database; the
instance already holds every key but 1,000 stale ones. Two ticks are timed: before the org's first
cycle (the sensor requests it) and with a running 100,000-item cycle whose items are all pending
(the sensor compares it with the org's combinations and requests 100,000 runs).
Usage: python bench/bench_sync_sensor.py
"""

import os
import sys
import tempfile
import time
from pathlib import Path

import yaml


def main() -> None:
    home = Path(tempfile.mkdtemp())
    os.environ["ICP_HOME"] = str(home)
    sys.path.insert(0, str(Path(__file__).parents[1]))
    import dagster as dg

    from icp_pipeline.db.session import session_scope, upgrade
    from icp_pipeline.defs.operations.sensors import partition_sync_sensor
    from icp_pipeline.defs.resources import AppDatabase
    from icp_pipeline.visibility.countries import ISO_COUNTRY_CODES
    from icp_pipeline.visibility.cycles import desired_org_partitions, open_cycle
    from icp_pipeline.visibility.org_file import parse_org_text, upsert_org

    url = f"sqlite:///{home / 'app.db'}"
    upgrade(url)
    spec = {
        "id": "big",
        "name": "Big",
        "target": {"name": "Big"},
        "models": [{"provider": "offline", "model": f"m{i}"} for i in range(10)],
        "locations": sorted(ISO_COUNTRY_CODES)[:100],
        "questions": [f"Question number {i} about analytics?" for i in range(100)],
    }
    with session_scope(url) as session:
        upsert_org(session, parse_org_text(yaml.safe_dump(spec)))
        _, keys = desired_org_partitions(session)
    print(f"keys in the app database: {len(keys)}")
    (home / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(home / "dagster")) as instance:
        started = time.monotonic()
        stale = [f"big|stale|{i}" for i in range(1000)]
        instance.add_dynamic_partitions("question_runs", sorted(keys)[1000:] + stale)
        print(f"seeding the instance: {time.monotonic() - started:.1f} s")
        for label in ("before the first cycle", "with a running 100,000-item cycle"):
            if label.startswith("with"):
                with session_scope(url) as session:
                    open_cycle(session, "big")
            context = dg.build_sensor_context(instance=instance, resources={"app_db": AppDatabase(url=url)})
            started = time.monotonic()
            result = partition_sync_sensor(context)
            tick = time.monotonic() - started
            sizes = [
                (type(r).__name__, len(r.partition_keys))
                for r in result.dynamic_partitions_requests
                if r.partitions_def_name == "question_runs"
            ]
            print(
                f"one sensor tick {label}: {tick:.2f} s; question_runs requests: {sizes}; "
                f"run requests: {len(result.run_requests)}"
            )


if __name__ == "__main__":
    main()
