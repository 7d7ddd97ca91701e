"""Benchmark of the deterministic question-run steps against a partition's history: builds an org
with one question-run partition (the example org cut to one question, model and location) and runs
N + 1 cycles through the plain steps (offline provider, no Dagster), then times run_mentions,
run_citations and competitive_metrics (steps.extract_mentions, extract_run_citations,
compute_metrics) for that partition: the medians of --repeats passes (wall, and this process's CPU),
and the passes' history_runs.

    PYTHONPATH=. python bench/bench_replay.py                    # 50 earlier cycles, SQLite (a temp file)
    PYTHONPATH=. python bench/bench_replay.py --postgres         # a throwaway PostgreSQL database
    PYTHONPATH=/path/to/old/checkout python bench/bench_replay.py   # the same with older code

With code that stamps runs (migration 0011) a second figure is given: the first pass after the
stamps are cleared (median of --repeats, clearing them before each), which is what an
extractor-version or org-file change costs once.
"""

import argparse
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import yaml

from icp_pipeline.db.models import QuestionRun
from icp_pipeline.db.session import session_scope, upgrade
from icp_pipeline.visibility import steps
from icp_pipeline.visibility.org_file import parse_org_text, upsert_org
from icp_pipeline_tests.support.pipeline import run_cycle_steps

PG_ADMIN_URL = os.environ.get("ICP_TEST_PG_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")
EXAMPLE = Path(__file__).resolve().parent.parent / "icp_pipeline" / "examples" / "acme.yaml"
STEPS: dict[str, Callable[[str, str], dict[str, Any]]] = {
    "run_mentions": steps.extract_mentions,
    "run_citations": steps.extract_run_citations,
    "competitive_metrics": steps.compute_metrics,
}


def _cycle(url: str) -> str:
    """One whole cycle of the one-partition org through the plain steps."""
    (key,) = run_cycle_steps(url, "acme")
    return key


def _time_steps(url: str, key: str) -> tuple[float, float, dict[str, int]]:
    """Wall and CPU seconds of this process (on SQLite the database work is in it too)."""
    started, cpu = time.perf_counter(), time.process_time()
    history = {name: step(url, key).get("history_runs", -1) for name, step in STEPS.items()}
    return time.perf_counter() - started, time.process_time() - cpu, history


def _report(label: str, passes: list[tuple[float, float, dict[str, int]]]) -> None:
    wall = statistics.median(p[0] for p in passes) * 1000
    cpu = statistics.median(p[1] for p in passes) * 1000
    print(
        f"{label}: median {wall:.1f} ms wall, {cpu:.1f} ms CPU of {len(passes)} (history_runs {passes[-1][2]})"
    )


def _stamped() -> bool:
    return hasattr(QuestionRun, "metrics_stamp")


def bench(url: str, earlier: int, repeats: int) -> None:
    upgrade(url)
    data = yaml.safe_load(EXAMPLE.read_text())
    data.update(
        models=data["models"][:1], locations=data["locations"][:1], questions=data["questions"][:1], samples=1
    )
    with session_scope(url) as session:
        upsert_org(session, parse_org_text(yaml.safe_dump(data)))
    started = time.perf_counter()
    for _ in range(earlier + 1):
        key = _cycle(url)
    print(f"built {earlier + 1} cycles of {key} in {time.perf_counter() - started:.1f} s")
    _report(
        f"three deterministic steps, one partition, {earlier} earlier cycles",
        [_time_steps(url, key) for _ in range(repeats)],
    )
    if _stamped():
        stale = []
        for _ in range(repeats):
            with session_scope(url) as session:
                stamps = {"mentions_stamp": None, "citations_stamp": None, "metrics_stamp": None}
                session.execute(sa.update(QuestionRun).values(**stamps))
            stale.append(_time_steps(url, key))
        _report("  first pass after the stamps are cleared", stale)
    print(f"load average {os.getloadavg()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=50, help="earlier cycles before the newest")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--postgres", action="store_true")
    args = parser.parse_args()
    if not args.postgres:
        with tempfile.TemporaryDirectory() as tmp:
            bench(f"sqlite:///{Path(tmp) / 'app.db'}", args.cycles, args.repeats)
        return
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"icp_bench_{uuid.uuid4().hex[:10]}"
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        bench(PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}", args.cycles, args.repeats)
    finally:
        from icp_pipeline.db import session as db_session

        db_session.reset_engines_after_fork()
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


if __name__ == "__main__":
    main()
