"""Benchmark of the org roll-ups at scale: builds an org with N latest runs directly with SQL
(INSERT ... SELECT, see icp_pipeline_tests/support/big_org.py), then times mark_latest and
build_analytics in a fresh child process and reports its peak RSS and the load average.

    PYTHONPATH=. python bench/bench_analytics.py                 # PostgreSQL, 500 x 8 x 10 x 5 = 200,000
    PYTHONPATH=. python bench/bench_analytics.py --sqlite        # the same on SQLite (a temp file)
    PYTHONPATH=. python bench/bench_analytics.py --questions 50  # 20,000 latest runs

On PostgreSQL a throwaway database is created at --pg-admin-url's server and dropped afterwards.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import sqlalchemy as sa

PG_ADMIN_URL = os.environ.get("ICP_TEST_PG_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")


def _peak_rss_mb() -> float:
    # ru_maxrss is in kilobytes on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(url: str, org_id: str, repeats: int) -> dict:
    """In the child: the steps alone, so the peak RSS is theirs (plus the interpreter and imports)."""
    from icp_pipeline.visibility import steps

    baseline = _peak_rss_mb()
    started = time.perf_counter()
    marked = steps.mark_latest(url, org_id)
    mark_seconds = time.perf_counter() - started
    analytics_seconds, client_cpu_seconds = [], []
    payload = {}
    for _ in range(repeats):
        started, cpu_started = time.perf_counter(), time.process_time()
        payload = steps.build_analytics(url, org_id).payload
        analytics_seconds.append(time.perf_counter() - started)
        # CPU of this process alone (Python, pandas): less sensitive to the machine's load than wall time.
        client_cpu_seconds.append(time.process_time() - cpu_started)
    return {
        "latest_runs": marked["latest_runs"],
        "payload_latest_runs": payload["latest_runs"],
        "payload_bytes": len(json.dumps(payload)),
        "mark_latest_s": round(mark_seconds, 2),
        "build_analytics_s": [round(s, 2) for s in analytics_seconds],
        "build_analytics_client_cpu_s": [round(s, 2) for s in client_cpu_seconds],
        "rss_after_imports_mb": round(baseline, 1),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--questions", type=int, default=500)
    parser.add_argument("--models", type=int, default=8)
    parser.add_argument("--locations", type=int, default=10)
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--companies", type=int, default=6)
    parser.add_argument(
        "--repeats", type=int, default=2, help="build_analytics runs (the first may be colder)"
    )
    parser.add_argument(
        "--sqlite", action="store_true", help="SQLite in a temporary file instead of PostgreSQL"
    )
    parser.add_argument("--pg-admin-url", default=PG_ADMIN_URL)
    parser.add_argument("--org", default="bench", help="the org id to build or reuse")
    parser.add_argument(
        "--reuse", metavar="URL", help="measure --org already built at URL (its latest flags are reset first)"
    )
    parser.add_argument("--measure", nargs=2, metavar=("URL", "ORG"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure[0], args.measure[1], args.repeats)))
        return

    from icp_pipeline.db.session import upgrade
    from icp_pipeline_tests.support.big_org import OrgShape, build_org

    shape = OrgShape(args.questions, args.models, args.locations, args.samples, args.companies)
    admin = None
    workdir = tempfile.TemporaryDirectory(prefix="icp-bench-")
    if args.reuse:
        url = args.reuse
    elif args.sqlite:
        url = f"sqlite:///{Path(workdir.name) / 'bench.db'}"
    else:
        name = f"icp_bench_{uuid.uuid4().hex[:10]}"
        admin = sa.create_engine(args.pg_admin_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
        url = admin.url.set(database=name).render_as_string(hide_password=False)
    try:
        started = time.perf_counter()
        if args.reuse:
            with sa.create_engine(url).begin() as connection:
                connection.execute(sa.text("UPDATE question_runs SET is_latest = false"))
        else:
            upgrade(url)
            build_org(url, args.org, shape)
        build_seconds = time.perf_counter() - started
        if not url.startswith("sqlite"):
            # Fresh planner statistics, as autovacuum would have them on a live database.
            with sa.create_engine(url, isolation_level="AUTOCOMMIT").connect() as connection:
                connection.execute(sa.text("ANALYZE"))
        load_before = os.getloadavg()
        child = subprocess.run(
            [sys.executable, __file__, "--repeats", str(args.repeats), "--measure", url, args.org],
            capture_output=True,
            text=True,
            check=True,
        )
        result = json.loads(child.stdout.strip().splitlines()[-1])
        report = {
            "database": "sqlite" if args.sqlite else "postgresql",
            "shape": f"{shape.questions} questions x {shape.models} models x {shape.locations} locations x "
            f"{shape.samples} samples, {shape.companies} companies (+ an older cycle, inactive rows)",
            "expected_latest_runs_active": shape.latest_runs,
            "build_org_s": round(build_seconds, 1),
            **result,
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
            "cpus": os.cpu_count(),
        }
        print(json.dumps(report, indent=2))
    finally:
        from icp_pipeline.db.session import get_engine

        get_engine(url).dispose()
        if admin is not None:
            with admin.connect() as connection:
                connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        workdir.cleanup()


if __name__ == "__main__":
    main()
