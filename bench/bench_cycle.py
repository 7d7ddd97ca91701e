"""Benchmark one 45-run cycle of the example org asked once (not a test; figures go in the README).
The example asks 3 samples (135 runs); the benchmark keeps 1 so its figures compare with earlier ones.

1. Orchestration overhead: zero-latency offline provider; wall time per question run.
2. Latency-bound: a simulated per-call latency; wall time divided by the ideal, which is the total
   model-busy time (sum of call latencies from the ledger) over the pool cap of 3.

Usage: python bench/bench_cycle.py [--latency 1.0] [--workers 3 4] [--repeat 1]
Each scenario runs in a fresh temporary home (SQLite app database, embedded Dagster instance).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

CHILD = r"""
import json, os, sys, time
from icp_pipeline.db.session import upgrade, session_scope
from icp_pipeline.visibility.org_file import parse_org_file, upsert_org
from icp_pipeline.cli.main import EXAMPLE_ORG
upgrade()
with session_scope() as s:
    upsert_org(s, parse_org_file(EXAMPLE_ORG).model_copy(update={"samples": 1}))
from icp_pipeline.cli.runner import run_cycle
import icp_pipeline.definitions  # import cost is paid once per process, not per run; keep it out
started = time.monotonic()
outcome = run_cycle("acme", workers=int(sys.argv[1]), progress=False)
wall = time.monotonic() - started
import sqlalchemy as sa
from icp_pipeline.db.models import ModelCall
with session_scope() as s:
    busy_ms = s.scalar(sa.select(sa.func.sum(ModelCall.latency_ms)).where(ModelCall.ok))
    calls = s.scalar(sa.select(sa.func.count()).select_from(ModelCall).where(ModelCall.ok))
print(json.dumps({"wall": wall, "completed": outcome.completed, "busy_s": busy_ms / 1000, "calls": calls}))
"""


def run(latency: float, workers: int) -> dict:
    with tempfile.TemporaryDirectory() as home:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ICP_", "DAGSTER_HOME"))}
        env.update(ICP_HOME=home, ICP_OFFLINE_LATENCY_SECONDS=str(latency))
        out = subprocess.run(
            [sys.executable, "-c", CHILD, str(workers)], env=env, capture_output=True, text=True, check=True
        )
        return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--latency", type=float, default=1.0)
    parser.add_argument("--workers", type=int, nargs="+", default=[3, 4])
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    print(f"{'scenario':<28}{'workers':>8}{'wall s':>9}{'per run s':>11}{'ideal s':>9}{'ratio':>7}")
    for workers in args.workers:
        for _ in range(args.repeat):
            r = run(0.0, workers)
            print(
                f"{'overhead (0 s latency)':<28}{workers:>8}{r['wall']:>9.1f}{r['wall'] / 45:>11.2f}{'':>9}{'':>7}"
            )
            r = run(args.latency, workers)
            ideal = r["busy_s"] / 3
            label = f"latency {args.latency:g} s/call"
            print(
                f"{label:<28}{workers:>8}{r['wall']:>9.1f}{r['wall'] / 45:>11.2f}{ideal:>9.1f}{r['wall'] / ideal:>7.2f}"
            )
    sys.stdout.flush()
    time.sleep(0)


if __name__ == "__main__":
    main()
