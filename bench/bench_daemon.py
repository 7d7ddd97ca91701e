"""Benchmark the production path (not a test; figures go in the README): a real `dagster-daemon` on
PostgreSQL, from `icp-pipeline org load` of the example org (1 sample: 45 question runs, 90 model
calls) to its pushed analytics.

Each scenario gets two throwaway PostgreSQL databases (app + Dagster storage, dropped afterwards), a
temporary DAGSTER_HOME holding the repository's dagster.yaml unchanged, and the daemon started with
the repository's workspace.yaml. The offline provider's `ICP_OFFLINE_LATENCY_SECONDS` sets the
latency. Ideal = model-busy time (sum of call latencies in the ledger) / 3 (the pool cap).
Timeline medians come from Dagster's run records and event log.

Usage:
  PYTHONPATH=. python bench/bench_daemon.py --latency 0 1 4 [--repeat 2]
  PYTHONPATH=. python bench/bench_daemon.py --scale          # 10 orgs at once (450 runs), 1 s per call
  PYTHONPATH=. python bench/bench_daemon.py --cli            # also the CLI path (bench/bench_cycle.py)
"""

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC
from pathlib import Path

import sqlalchemy as sa
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from icp_pipeline_tests.support.dagster_services import (  # noqa: E402
    BIN,
    REPO_ROOT,
    DagsterServices,
    kill_strays,
    postgres_env,
    service_env,
    wait_until,
    write_production_instance,
)

PG_ADMIN_URL = os.environ.get("ICP_TEST_PG_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")
EXAMPLE_ORG = REPO_ROOT / "icp_pipeline" / "examples" / "acme.yaml"
POOL = 3


@contextmanager
def throwaway_databases(count: int) -> Iterator[list[str]]:
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    names = [f"icp_bench_{uuid.uuid4().hex[:10]}" for _ in range(count)]
    try:
        with admin.connect() as connection:
            for name in names:
                connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
        yield [PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}" for name in names]
    finally:
        with admin.connect() as connection:
            for name in names:
                connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


class Sampler(threading.Thread):
    """Every 0.5 s: peak connections to the scenario's two databases, and the CPU time of every
    process running with this DAGSTER_HOME (daemon, code server, run workers; the last sample of
    each process counts, so up to 0.5 s of a process's last CPU is missed)."""

    def __init__(self, databases: list[str], home: Path) -> None:
        super().__init__(daemon=True)
        self.databases = databases
        self.marker = f"DAGSTER_HOME={home}".encode()
        self.peak = 0
        self.cpu: dict[int, float] = {}
        self.pg_cpu: dict[int, float] = {}
        self.pg_base: dict[int, float] | None = None  # backends alive at the start: their CPU before it
        self.processes_seen = 0
        self.stopped = threading.Event()
        self.ticks = os.sysconf("SC_CLK_TCK")

    def sample_cpu(self) -> None:
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                if self.marker not in (proc / "environ").read_bytes().split(b"\0"):
                    continue
                fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            self.cpu[int(proc.name)] = (int(fields[11]) + int(fields[12])) / self.ticks

    def sample_pg_cpu(self, pids: list[int]) -> None:
        """PostgreSQL's backends for the two databases: the storage's side of every event write."""
        for pid in pids:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            self.pg_cpu[pid] = (int(fields[11]) + int(fields[12])) / self.ticks
        if self.pg_base is None:
            self.pg_base = dict(self.pg_cpu)

    @property
    def cpu_seconds(self) -> float:
        return sum(self.cpu.values())

    @property
    def pg_cpu_seconds(self) -> float:
        return sum(self.pg_cpu.values()) - sum((self.pg_base or {}).values())

    def run(self) -> None:
        engine = sa.create_engine(PG_ADMIN_URL, poolclass=sa.pool.NullPool)
        query = sa.text("select pid from pg_stat_activity where datname = any(:names)")
        while not self.stopped.is_set():
            with engine.connect() as connection:
                pids = list(connection.execute(query, {"names": self.databases}).scalars())
            self.peak = max(self.peak, len(pids))
            self.sample_pg_cpu(pids)
            self.sample_cpu()
            self.stopped.wait(0.5)
        engine.dispose()


def org_files(directory: Path, orgs: int) -> list[Path]:
    data = yaml.safe_load(EXAMPLE_ORG.read_text())
    data["samples"] = 1
    paths = []
    for index in range(orgs):
        copy = dict(data, id=data["id"] if orgs == 1 else f"{data['id']}{index}")
        path = directory / f"{copy['id']}.yaml"
        path.write_text(yaml.safe_dump(copy, sort_keys=False))
        paths.append(path)
    return paths


def machine_busy_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat (every core)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    ticks = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields) - idle) / ticks, sum(fields) / ticks


def cpu_seconds_of_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def timeline(instance, t0: float) -> dict[str, float]:  # noqa: ANN001 (dagster imported late)
    import dagster as dg
    from dagster._core.storage.dagster_run import RunsFilter

    kinds = dg.DagsterEventType
    phases: dict[str, list[float]] = {k: [] for k in ("queue", "spawn", "plan", "steps", "model_steps")}
    created, ended = [], []
    busy: list[tuple[float, float]] = []  # model steps (start, end): the pool's slots in use
    for record in instance.get_run_records(RunsFilter(job_name="question_run_job")):
        run = record.dagster_run
        stamp = record.create_timestamp
        created_at = (stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)).timestamp()
        created.append(created_at)
        at: dict[str, float] = {}
        model_steps: dict[str, float] = {}
        for event in instance.all_logs(run.run_id):
            if not event.is_dagster_event:
                continue
            kind = event.dagster_event.event_type
            if kind == kinds.RUN_STARTING:
                at["starting"] = event.timestamp
            elif kind == kinds.ENGINE_EVENT and "Started process" in (event.message or ""):
                at["process"] = event.timestamp
            elif kind == kinds.RUN_START:
                at["start"] = event.timestamp
            elif kind in (kinds.RUN_SUCCESS, kinds.RUN_FAILURE):
                at["end"] = event.timestamp
            elif kind == kinds.STEP_START and event.step_key in ("ai_answer", "run_claims"):
                model_steps[event.step_key] = event.timestamp
            elif kind == kinds.STEP_SUCCESS and event.step_key in model_steps:
                phases["model_steps"].append(event.timestamp - model_steps[event.step_key])
                busy.append((model_steps[event.step_key], event.timestamp))
        if {"starting", "process", "start", "end"} <= at.keys():
            phases["queue"].append(at["starting"] - created_at)
            phases["spawn"].append(at["process"] - at["starting"])
            phases["plan"].append(at["start"] - at["process"])
            phases["steps"].append(at["end"] - at["start"])
            ended.append(at["end"])
    rollup_end = max(
        (
            e.timestamp
            for r in instance.get_runs(RunsFilter(job_name="org_rollup_job"))
            for e in instance.all_logs(r.run_id, of_type=kinds.RUN_SUCCESS)
        ),
        default=float("nan"),
    )
    tick_start, tick_end = first_requesting_tick(instance)
    return {
        "tick_wait": tick_start - t0,
        "tick_to_first_run": min(created) - tick_start if created else float("nan"),
        "tick_length": tick_end - tick_start,
        "pool_full": pool_full_share(busy, min(created), max(ended)) if created and ended else float("nan"),
        "first_run": min(created) - t0 if created else float("nan"),
        **{name: median(values) for name, values in phases.items()},
        "rollup": rollup_end - max(ended) if ended else float("nan"),
        "runs": len(created),
    }


def first_requesting_tick(instance) -> tuple[float, float]:  # noqa: ANN001
    """(start, end) timestamps of the first sync-sensor tick that requested runs."""
    for state in instance.all_instigator_state():
        if state.name != "partition_sync_sensor":
            continue
        ticks = instance.get_ticks(state.instigator_origin_id, state.selector_id, limit=200)
        requesting = [t for t in ticks if t.run_ids]
        if requesting:
            first = min(requesting, key=lambda t: t.timestamp)
            return first.timestamp, first.end_timestamp or float("nan")
    return float("nan"), float("nan")


def pool_full_share(busy: list[tuple[float, float]], start: float, end: float) -> float:
    """Share of the question runs' span (first created -> last ended) with all POOL slots in model
    steps (a step's span includes its own Dagster overhead, so this is an upper bound)."""
    edges = sorted([(t, 1) for t, _ in busy] + [(t, -1) for _, t in busy])
    full, level, last = 0.0, 0, start
    for at, change in edges:
        if level >= POOL:
            full += at - last
        level, last = level + change, at
    return full / (end - start) if end > start else float("nan")


def leftovers(instance) -> str:  # noqa: ANN001
    import dagster as dg
    from dagster._core.storage.dagster_run import RunsFilter

    status = dg.DagsterRunStatus
    open_runs = instance.get_runs(RunsFilter(statuses=[status.QUEUED, status.STARTING, status.STARTED]))
    failed = instance.get_runs(RunsFilter(statuses=[status.FAILURE]))
    pool = instance.event_log_storage.get_concurrency_info("llm")
    return (
        f"open runs {len(open_runs)}, failed runs {len(failed)}, "
        f"slots claimed {len(pool.claimed_slots)}, pending steps {len(pool.pending_steps)}"
    )


def scenario(latency: float, orgs: int, overrides: dict, label: str) -> dict:
    from icp_pipeline.db.models import ModelCall, PushDelivery
    from icp_pipeline.db.session import session_scope, upgrade

    with tempfile.TemporaryDirectory() as tmp, throwaway_databases(2) as (app_url, storage_url):
        upgrade(app_url)
        home = Path(tmp) / "dagster_home"
        write_production_instance(home, overrides)
        env = service_env(
            home,
            {
                **postgres_env(storage_url),
                "ICP_DATABASE_URL": app_url,
                "ICP_OUTBOX_DIR": str(Path(tmp) / "outbox"),
                "ICP_OFFLINE_LATENCY_SECONDS": str(latency),
            },
        )
        os.environ.update(postgres_env(storage_url))
        import dagster as dg

        services = DagsterServices(home=home, env=env)
        sampler = Sampler([app_url.rsplit("/", 1)[1], storage_url.rsplit("/", 1)[1]], home)
        cpu_before = cpu_seconds_of_children()
        try:
            services._start(
                "daemon", [str(BIN / "dagster-daemon"), "run", "-w", str(REPO_ROOT / "workspace.yaml")]
            )
            with dg.DagsterInstance.from_config(str(home)) as instance:
                # Warm: the code location is loaded and the sync sensor has ticked once.
                wait_until(
                    lambda: sync_sensor_ticked(instance),
                    timeout=300,
                    what="the first sync-sensor tick",
                    logs=services.logs,
                )
                sampler.sample_cpu()
                cpu_at_load = sampler.cpu_seconds
                busy_at_load = machine_busy_seconds()
                sampler.start()
                load_avg = Path("/proc/loadavg").read_text().split()[0]
                cpu_warm = cpu_seconds_of_children()
                files = org_files(Path(tmp), orgs)
                load_started = time.time()
                t0 = 0.0
                # `org load` takes one file: the orgs are loaded one after another, and the clock runs
                # from the end of the first load (for one org: from its load, as before).
                for index, path in enumerate(files):
                    subprocess.run(
                        [str(BIN / "icp-pipeline"), "org", "load", str(path)],
                        env=env,
                        check=True,
                        capture_output=True,
                    )
                    if index == 0:
                        t0 = time.time()

                def pushed() -> bool:
                    with session_scope(app_url) as session:
                        done = session.scalar(
                            sa.select(sa.func.count(sa.distinct(PushDelivery.org_id))).where(PushDelivery.ok)
                        )
                    return done == orgs

                wait_until(
                    pushed, timeout=3600, interval=0.25, what="the pushed analytics", logs=services.logs
                )
                wall = time.time() - t0
                with session_scope(app_url) as session:
                    busy_ms = (
                        session.scalar(sa.select(sa.func.sum(ModelCall.latency_ms)).where(ModelCall.ok)) or 0
                    )
                    calls = session.scalar(
                        sa.select(sa.func.count()).select_from(ModelCall).where(ModelCall.ok)
                    )
                # Leftovers after everything settled: slots are freed when runs end.
                time.sleep(3)
                cpu_path = sampler.cpu_seconds - cpu_at_load
                busy_now = machine_busy_seconds()
                machine_busy = (busy_now[0] - busy_at_load[0]) / max(busy_now[1] - busy_at_load[1], 1e-9)
                result = {
                    "label": label,
                    "latency": latency,
                    "orgs": orgs,
                    "wall": wall,
                    "load_cmd": t0 - load_started,  # the first org's load
                    "ideal": busy_ms / 1000 / POOL,
                    "calls": calls,
                    "load_avg": load_avg,
                    **timeline(instance, t0),
                    "leftovers": leftovers(instance),
                    "cpu_path": cpu_path,
                    "pg_cpu": sampler.pg_cpu_seconds,
                    "machine_busy": machine_busy,
                }
        finally:
            sampler.stopped.set()
            services.stop_all()
            kill_strays(home)
        result["peak_connections"] = sampler.peak
        # CPU of the daemon, its code server and the run workers it reaped, from the warm point on
        # (approximate: workers not reaped by their parent are not counted).
        result["cpu"] = cpu_seconds_of_children() - cpu_warm
        result["cpu_startup"] = cpu_warm - cpu_before
        return result


def sync_sensor_ticked(instance) -> bool:  # noqa: ANN001
    states = [s for s in instance.all_instigator_state() if s.name == "partition_sync_sensor"]
    return any(instance.get_ticks(s.instigator_origin_id, s.selector_id, limit=1) for s in states)


def print_result(r: dict) -> None:
    ratio = r["wall"] / r["ideal"] if r["ideal"] >= 1 else float("nan")
    per_run = (r["wall"] - r["ideal"]) / max(r["runs"], 1)
    print(
        f"{r['label']:<14}{r['latency']:>5g}{r['orgs']:>5}{r['runs']:>6}{r['wall']:>8.1f}{r['ideal']:>7.1f}"
        f"{ratio:>7.2f}{per_run:>9.2f}{r['first_run']:>9.1f}{r['queue']:>8.1f}{r['spawn']:>8.2f}"
        f"{r['plan']:>7.2f}{r['steps']:>7.2f}{r['model_steps']:>7.2f}{r['rollup']:>8.1f}"
        f"{r['cpu_path'] / max(r['runs'], 1):>8.2f}{r['peak_connections']:>6}{r['load_avg']:>7}"
    )
    if r["orgs"] > 1:
        print(f"  runs/min {r['runs'] / r['wall'] * 60:.0f}")
    print(
        f"  sync tick: started {r['tick_wait']:.1f} s after the load, first run created "
        f"{r['tick_to_first_run']:.1f} s into it, tick length {r['tick_length']:.1f} s\n"
        f"  pool full {r['pool_full']:.0%} of the runs' span; load cmd {r['load_cmd']:.1f} s; {r['leftovers']}; cpu from load to push {r['cpu_path']:.0f} s (/proc), "
        f"after warm-up {r['cpu']:.0f} s (rusage); PostgreSQL backends {r['pg_cpu']:.0f} s; "
        f"machine busy {r['machine_busy']:.0%} of its cores (every process, other work included)",
        flush=True,
    )


HEADER = (
    f"{'scenario':<14}{'lat':>5}{'orgs':>5}{'runs':>6}{'wall':>8}{'ideal':>7}{'ratio':>7}{'ovh/run':>9}"
    f"{'->1st':>9}{'queue':>8}{'spawn':>8}{'plan':>7}{'steps':>7}{'model':>7}{'rollup':>8}"
    f"{'cpu/run':>8}{'pgcon':>6}{'load':>7}"
)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--latency", type=float, nargs="+", default=[0.0, 1.0, 4.0])
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--scale", action="store_true", help="10 orgs at once (450 runs) at 1 s per call")
    parser.add_argument("--cli", action="store_true", help="also the CLI path (bench/bench_cycle.py)")
    parser.add_argument("--label", default="repo config")
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        help="dagster.yaml override as YAML, e.g. 'run_coordinator: {...}'",
    )
    args = parser.parse_args()
    overrides: dict = {}
    for text in args.override:
        overrides.update(yaml.safe_load(text))
    print("medians in s: ->1st = org load -> first question run created; queue = created -> STARTING;")
    print("spawn = STARTING -> process started; plan = process -> RUN_START; steps = RUN_START -> end;")
    print("model = one model step; rollup = last question run done -> roll-up done; cpu/run in s")
    print(HEADER, flush=True)
    for _ in range(args.repeat):
        if args.scale:
            print_result(scenario(1.0, 10, overrides, args.label))
            continue
        for latency in args.latency:
            print_result(scenario(latency, 1, overrides, args.label))
    if args.cli:
        subprocess.run(
            [sys.executable, str(REPO_ROOT / "bench" / "bench_cycle.py"), "--workers", "3"], check=True
        )


if __name__ == "__main__":
    main()
