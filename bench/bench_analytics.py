"""Benchmark of the org roll-ups at scale: builds an org with N latest runs directly with SQL
(INSERT ... SELECT, see icp_pipeline_tests/support/big_org.py), then times mark_latest and
build_analytics in a fresh child process and reports its peak RSS and the load average.

    PYTHONPATH=. python bench/bench_analytics.py                 # PostgreSQL, 500 x 8 x 10 x 5 = 200,000
    PYTHONPATH=. python bench/bench_analytics.py --sqlite        # the same on SQLite (a temp file)
    PYTHONPATH=. python bench/bench_analytics.py --questions 50  # 20,000 latest runs
    PYTHONPATH=. python bench/bench_analytics.py --baseline /path/to/old/checkout   # old vs new, same db

On PostgreSQL a throwaway database is created at --pg-admin-url's server and dropped afterwards.
When the server runs on this machine, the CPU time of its backends serving the child is read from
/proc (parallel query workers are not counted: --serial turns them off for a full count).
With --baseline, the same measurement runs with that checkout's code first (its latest flags reset
the same way), and the report gives both and the ratios old/new: wall times inflate with the load
of a shared machine, ratios measured minutes apart on the same database much less.
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


class _ServerCpu:
    """CPU seconds of the PostgreSQL backends this process connected to, from /proc (None when the
    server is elsewhere or the database is SQLite, which runs inside the client)."""

    def __init__(self, url: str) -> None:
        from sqlalchemy import event
        from sqlalchemy.engine import Engine

        self.pids: set[int] = set()
        self.enabled = not url.startswith("sqlite")

        @event.listens_for(Engine, "connect")
        def _connected(dbapi_connection, _record) -> None:  # noqa: ANN001
            if type(dbapi_connection).__module__.startswith("psycopg2"):
                cursor = dbapi_connection.cursor()
                cursor.execute("SELECT pg_backend_pid()")
                self.pids.add(cursor.fetchone()[0])
                cursor.close()

    def seconds(self) -> float | None:
        if not self.enabled:
            return None
        total = 0.0  # before the first connection: nothing spent yet
        for pid in self.pids:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                return None
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return total


def _spent(after: float | None, before: float | None) -> float | None:
    return None if after is None or before is None else round(after - before, 2)


def measure(url: str, org_id: str, repeats: int) -> dict:
    """In the child: the steps alone, so the peak RSS is theirs (plus the interpreter and imports)."""
    from icp_pipeline.visibility import steps

    server = _ServerCpu(url)
    baseline = _peak_rss_mb()
    started, cpu_started, server_started = time.perf_counter(), time.process_time(), server.seconds()
    marked = steps.mark_latest(url, org_id)
    mark_seconds = time.perf_counter() - started
    mark_client = time.process_time() - cpu_started
    mark_server = _spent(server.seconds(), server_started)
    analytics_seconds, client_cpu_seconds, server_cpu_seconds = [], [], []
    payload = {}
    for _ in range(repeats):
        started, cpu_started, server_started = time.perf_counter(), time.process_time(), server.seconds()
        payload = steps.build_analytics(url, org_id).payload
        analytics_seconds.append(time.perf_counter() - started)
        # CPU of this process alone (Python, pandas) and of its database backends: less sensitive to
        # the machine's load than wall time.
        client_cpu_seconds.append(time.process_time() - cpu_started)
        server_cpu_seconds.append(_spent(server.seconds(), server_started))
    return {
        "latest_runs": marked["latest_runs"],
        "payload_latest_runs": payload["latest_runs"],
        "payload_bytes": len(json.dumps(payload)),
        "mark_latest_s": round(mark_seconds, 2),
        "mark_latest_client_cpu_s": round(mark_client, 2),
        "mark_latest_server_cpu_s": mark_server,
        "build_analytics_s": [round(s, 2) for s in analytics_seconds],
        "build_analytics_client_cpu_s": [round(s, 2) for s in client_cpu_seconds],
        "build_analytics_server_cpu_s": server_cpu_seconds,
        "rss_after_imports_mb": round(baseline, 1),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
    }


def _reset_latest(url: str) -> None:
    """No run flagged latest (as before a first cycle), then fresh planner statistics on PostgreSQL,
    as autovacuum would have them on a live database."""
    with sa.create_engine(url).begin() as connection:
        connection.execute(sa.text("UPDATE question_runs SET is_latest = false WHERE is_latest"))
    if not url.startswith("sqlite"):
        with sa.create_engine(url, isolation_level="AUTOCOMMIT").connect() as connection:
            connection.execute(sa.text("VACUUM ANALYZE"))


def _child(url: str, args: argparse.Namespace, checkout: str | None) -> dict:
    """The measurement in a fresh process (this script's measure), importing this code or a checkout's
    (PYTHONPATH first on the path, before the editable install)."""
    env = dict(os.environ)
    if checkout is not None:
        env["PYTHONPATH"] = checkout
    if args.serial:
        env["PGOPTIONS"] = f"{env.get('PGOPTIONS', '')} -c max_parallel_workers_per_gather=0".strip()
    load_before = [round(x, 2) for x in os.getloadavg()]
    child = subprocess.run(
        [sys.executable, str(Path(__file__)), "--repeats", str(args.repeats), "--measure", url, args.org],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    return {**json.loads(child.stdout.strip().splitlines()[-1]), "load_average_before": load_before}


def _ratios(old: dict, new: dict) -> dict:
    def ratio(key: str) -> float | None:
        a, b = old.get(key), new.get(key)
        if isinstance(a, list):
            a, b = min(a) if None not in a else None, min(b) if b and None not in b else None
        return None if not a or not b else round(a / b, 2)

    keys = (
        "mark_latest_s",
        "build_analytics_s",
        "build_analytics_client_cpu_s",
        "build_analytics_server_cpu_s",
    )
    return {key: ratio(key) for key in keys} | {"mark_latest_server_cpu_s": ratio("mark_latest_server_cpu_s")}


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
    parser.add_argument(
        "--baseline", metavar="CHECKOUT", help="also measure this checkout's code (e.g. the old commit)"
    )
    parser.add_argument(
        "--serial", action="store_true", help="no parallel query workers (their CPU is not counted)"
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
        if not args.reuse:
            upgrade(url)
            build_org(url, args.org, shape)
        build_seconds = time.perf_counter() - started
        runs = {}
        for label, checkout in (("baseline", args.baseline), ("this", None)):
            if label == "baseline" and checkout is None:
                continue
            _reset_latest(url)
            runs[label] = _child(url, args, checkout)
        result = runs["this"]
        report = {
            "database": "sqlite" if args.sqlite else "postgresql",
            "shape": f"{shape.questions} questions x {shape.models} models x {shape.locations} locations x "
            f"{shape.samples} samples, {shape.companies} companies (+ an older cycle, inactive rows)",
            "expected_latest_runs_active": shape.latest_runs,
            "build_org_s": round(build_seconds, 1),
            **result,
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
            "cpus": os.cpu_count(),
        }
        if "baseline" in runs:
            report["baseline"] = {"checkout": args.baseline, **runs["baseline"]}
            report["ratio_baseline_over_this"] = _ratios(runs["baseline"], result)
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
