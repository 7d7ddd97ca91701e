"""`icp-pipeline org run` under faults, as a user's shell runs it: a killed worker, a killed command,
a database outage, two commands at once, a failed push, a repeated command. Each run is a real CLI
subprocess on a small org (1-2 questions x 2 models x 2 locations) with slow offline calls."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml
from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

from icp_pipeline.cli.instance import write_embedded_instance_yaml
from icp_pipeline.cli.runner import finish_cycle, run_cycle
from icp_pipeline.db.models import Cycle, CycleItem, ModelCall, PushDelivery
from icp_pipeline.db.session import session_scope, upgrade
from icp_pipeline.visibility.org_file import parse_org_file, upsert_org
from icp_pipeline_tests.support.pipeline import count, pipeline_defs

UNFINISHED = [DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTING, DagsterRunStatus.STARTED]


def small_org(tmp_path: Path, questions: int = 1) -> Path:
    path = tmp_path / "tiny.yaml"
    data = {
        "id": "tiny",
        "name": "Tiny Analytics",
        "target": {"name": "Acme", "aliases": [], "domains": ["acme.io"]},
        "competitors": [{"name": "Globex", "aliases": [], "domains": ["globex.com"]}],
        "models": [
            {"provider": "openai", "model": "gpt-4o-mini"},
            {"provider": "gemini", "model": "gemini-2.5-flash"},
        ],
        "locations": ["US", "DE"],
        "questions": [
            "What is the best product analytics tool for a startup?",
            "Which analytics platform has the best pricing for small teams?",
        ][:questions],
    }
    path.write_text(yaml.safe_dump(data))
    return path


def load(db_url: str, path: Path) -> None:
    upgrade(db_url)
    with session_scope(db_url) as session:
        upsert_org(session, parse_org_file(path))


def cli_env(home: Path, db_url: str, latency: float, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ICP_", "OPENAI", "ANTHROPIC", "GEMINI"))}
    env.update(
        ICP_HOME=str(home),
        DAGSTER_HOME=str(home / "dagster_home"),
        ICP_DATABASE_URL=db_url,
        ICP_OFFLINE_LATENCY_SECONDS=str(latency),
        **extra,
    )
    return env


def start(env: dict[str, str], *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "icp_pipeline.cli.main", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a shell job
    )


def finish(process: subprocess.Popen, timeout: float) -> tuple[int, str, str]:
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        pytest.fail(f"the command did not end within {timeout} s\n{err[-3000:]}")
    return process.returncode, out, err


def children(pid: int) -> set[int]:
    """Live (not zombie) child processes of pid, from /proc."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.add(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_for(condition: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


def started_runs(home: Path) -> list:
    with DagsterInstance.from_config(str(home / "dagster_home")) as instance:
        return list(instance.get_runs(RunsFilter(statuses=[DagsterRunStatus.STARTED])))


def answers_per_item(db_url: str) -> list[int]:
    with session_scope(db_url) as session:
        return list(
            session.scalars(
                sa.select(sa.func.count(ModelCall.id))
                .select_from(CycleItem)
                .outerjoin(
                    ModelCall,
                    sa.and_(
                        ModelCall.cycle_item_id == CycleItem.id, ModelCall.purpose == "answer", ModelCall.ok
                    ),
                )
                .group_by(CycleItem.id)
            )
        )


def assert_instance_clean(home: Path) -> None:
    """No run left unfinished and no `llm` slot or pending claim left behind."""
    with DagsterInstance.from_config(str(home / "dagster_home")) as instance:
        assert not instance.get_runs(RunsFilter(statuses=UNFINISHED))
        info = instance.event_log_storage.get_concurrency_info("llm")
        assert info.slot_count == 3
        assert info.claimed_slots == [] and info.pending_steps == []


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "icp"
    (path / "dagster_home").mkdir(parents=True)
    write_embedded_instance_yaml(path / "dagster_home")  # what the CLI writes on its first run
    # Create the instance's storages now: the test reads them while the CLI runs, and two processes
    # creating a SQLite storage at once can both stamp its schema version.
    with DagsterInstance.from_config(str(path / "dagster_home")):
        pass
    return path


def test_a_worker_killed_mid_call_is_recovered_and_the_cycle_rolls_up_once(home, tmp_path) -> None:
    db_url = f"sqlite:///{home / 'app.db'}"
    load(db_url, small_org(tmp_path))
    cli = start(cli_env(home, db_url, 1.0), "org", "run", "tiny", "--workers", "2", "--no-progress")
    workers: set[int] = set()

    def a_started_run():
        workers.update(children(cli.pid))
        return started_runs(home)

    wait_for(lambda: len(a_started_run()) >= 2, 60, "both workers' runs to start")
    time.sleep(0.4)  # inside their first model call (1 s)
    victim_pid = min(children(cli.pid))
    os.kill(victim_pid, signal.SIGKILL)
    deadline = time.monotonic() + 120
    while cli.poll() is None and time.monotonic() < deadline:
        workers.update(children(cli.pid))
        time.sleep(0.2)
    code, out, err = finish(cli, 120)

    assert code == 0, err[-3000:]
    assert "cycle 1 of tiny: succeeded; 4 completed, 0 failed of 4" in out
    assert "killed by SIGKILL" in err
    assert answers_per_item(db_url) == [1, 1, 1, 1]  # nothing bought twice
    assert count(db_url, PushDelivery, PushDelivery.ok) == 1  # rolled up and pushed once
    with DagsterInstance.from_config(str(home / "dagster_home")) as instance:
        (lost,) = [r for r in instance.get_runs() if f":{victim_pid}:" in r.tags.get("icp/worker", "")]
        assert lost.status == DagsterRunStatus.FAILURE
        retry = instance.get_runs(RunsFilter(tags={"icp/retry_of": lost.run_id}))
        assert [r.status for r in retry] == [DagsterRunStatus.SUCCESS]
        assert len(instance.get_runs(RunsFilter(job_name="org_rollup_job"))) == 1
    assert_instance_clean(home)
    assert workers and not [pid for pid in workers if alive(pid)]  # no orphan


def test_after_the_command_is_killed_the_next_run_frees_its_slots_and_finishes(home, tmp_path) -> None:
    db_url = f"sqlite:///{home / 'app.db'}"
    load(db_url, small_org(tmp_path, questions=2))  # 8 question runs
    env = cli_env(home, db_url, 1.0)
    first = start(env, "org", "run", "tiny", "--no-progress")
    wait_for(lambda: len(started_runs(home)) >= 3, 60, "three started runs")
    time.sleep(0.4)
    workers = children(first.pid)
    os.killpg(first.pid, signal.SIGKILL)  # the whole job, as a closed terminal or an OOM kill would
    first.communicate()
    wait_for(lambda: not [p for p in workers if alive(p)], 10, "the killed workers to go")
    with DagsterInstance.from_config(str(home / "dagster_home")) as instance:
        leaked = instance.event_log_storage.get_concurrency_info("llm").claimed_slots
    assert leaked  # the kill left slots claimed by dead runs: what the next command must free

    rerun_started = time.time()
    code, out, err = finish(start(env, "org", "run", "tiny", "--no-progress"), 180)
    assert code == 0, err[-3000:]
    assert "run(s) of an earlier command failed" in err
    assert "cycle 1 of tiny: succeeded; 8 completed, 0 failed of 8" in out
    assert answers_per_item(db_url) == [1] * 8
    assert_instance_clean(home)
    # The pool's three slots all serve the second command: three calls at once again.
    with session_scope(db_url) as session:
        intervals = session.execute(
            sa.select(ModelCall.started_at, ModelCall.finished_at).where(ModelCall.ok)
        ).all()
    utc = [(s.replace(tzinfo=s.tzinfo or UTC), f.replace(tzinfo=f.tzinfo or UTC)) for s, f in intervals]
    rerun = [(s.timestamp(), f.timestamp()) for s, f in utc if s.timestamp() >= rerun_started]
    events = sorted([(s, 1) for s, _ in rerun] + [(f, -1) for _, f in rerun])
    running = peak = 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    assert peak == 3


def test_workers_of_a_killed_command_end_after_their_current_run(home, tmp_path) -> None:
    db_url = f"sqlite:///{home / 'app.db'}"
    load(db_url, small_org(tmp_path))
    cli = start(cli_env(home, db_url, 1.0), "org", "run", "tiny", "--workers", "3", "--no-progress")
    wait_for(lambda: len(started_runs(home)) >= 3, 60, "three started runs")
    workers = children(cli.pid)
    assert len(workers) == 3
    os.kill(cli.pid, signal.SIGKILL)  # the command alone, not its workers
    cli.wait()
    try:
        wait_for(lambda: not [p for p in workers if alive(p)], 30, "the orphaned workers to exit")
    finally:
        for pid in workers:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        cli.communicate()
    with DagsterInstance.from_config(str(home / "dagster_home")) as instance:
        assert not instance.get_runs(RunsFilter(statuses=UNFINISHED))  # each finished its run


class CuttableProxy:
    """A TCP proxy on 127.0.0.1 in front of PostgreSQL that can cut every connection and refuse new
    ones (an outage of the database as the app sees it), then restore service."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.up = True
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.up:
                client.close()
                continue
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.sockets += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        for s in (source, sink):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        self.up = False
        with self.lock:
            for s in self.sockets:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
            self.sockets.clear()

    def restore(self) -> None:
        self.up = True

    def close(self) -> None:
        self.cut()
        self.listener.close()


@pytest.fixture
def proxied_postgres(postgres_databases):
    direct = postgres_databases()
    head, name = direct.rsplit("/", 1)
    host_port = head.rsplit("@", 1)[1]
    host, port = host_port.split(":")
    proxy = CuttableProxy((host, int(port)))
    yield direct, f"{head.rsplit('@', 1)[0]}@127.0.0.1:{proxy.port}/{name}", proxy
    proxy.close()


@pytest.mark.postgres
def test_a_20_second_database_outage_delays_the_cycle_but_loses_and_rebuys_nothing(
    home, tmp_path, proxied_postgres
) -> None:
    direct, through_proxy, proxy = proxied_postgres
    load(direct, small_org(tmp_path))
    cli = start(cli_env(home, through_proxy, 0.5), "org", "run", "tiny", "--workers", "2", "--no-progress")
    wait_for(lambda: count(direct, ModelCall) >= 1, 60, "the first paid answer")
    workers = children(cli.pid)
    proxy.cut()
    time.sleep(20)
    proxy.restore()
    code, out, err = finish(cli, 240)

    assert code == 0, err[-3000:]
    assert "cycle 1 of tiny: succeeded; 4 completed, 0 failed of 4" in out
    assert answers_per_item(direct) == [1, 1, 1, 1]
    assert count(direct, PushDelivery, PushDelivery.ok) == 1
    assert_instance_clean(home)
    assert not [pid for pid in workers if alive(pid)]


@pytest.mark.postgres
def test_a_lasting_database_outage_ends_the_command_with_a_clear_error_and_no_orphans(
    home, tmp_path, proxied_postgres
) -> None:
    direct, through_proxy, proxy = proxied_postgres
    load(direct, small_org(tmp_path, questions=2))
    env = cli_env(home, through_proxy, 0.5, ICP_DB_OUTAGE_SECONDS="20")
    cli = start(env, "org", "run", "tiny", "--workers", "2", "--no-progress")
    wait_for(lambda: count(direct, ModelCall) >= 1, 60, "the first paid answer")
    workers = children(cli.pid)
    cut_at = time.monotonic()
    proxy.cut()
    code, _out, err = finish(cli, 150)

    assert code == 1
    assert time.monotonic() - cut_at < 120
    assert "is unreachable" in err and "run the same command again" in err
    assert workers and not [pid for pid in workers if alive(pid)]
    assert not children(cli.pid)
    # Nothing was lost: the cycle is still open, and the next command resumes it and buys only the rest.
    proxy.restore()
    code, out, err = finish(start(env, "org", "run", "tiny", "--no-progress"), 180)
    assert code == 0, err[-3000:]
    assert "(resuming)" in out
    assert "cycle 1 of tiny: succeeded; 8 completed, 0 failed of 8" in out
    assert answers_per_item(direct) == [1] * 8
    assert_instance_clean(home)


def test_two_commands_at_once_share_the_cycle_and_both_report_success(home, tmp_path) -> None:
    db_url = f"sqlite:///{home / 'app.db'}"
    load(db_url, small_org(tmp_path))
    env = cli_env(home, db_url, 1.0)
    first = start(env, "org", "run", "tiny", "--no-progress")
    wait_for(lambda: started_runs(home), 60, "the first command's runs")  # the cycle is open
    second = start(env, "org", "run", "tiny", "--no-progress")
    results = [finish(first, 180), finish(second, 180)]

    assert [code for code, _, _ in results] == [0, 0], [err[-2000:] for _, _, err in results]
    assert count(db_url, Cycle) == 1
    assert answers_per_item(db_url) == [1, 1, 1, 1]
    assert count(db_url, PushDelivery, PushDelivery.ok) == 1
    outputs = "".join(out for _, out, _ in results)
    assert outputs.count("cycle 1 of tiny: succeeded; 4 completed, 0 failed of 4") == 2
    # The one that did not roll up says so: it waited for the other's roll-up, or found it done.
    assert (
        "rolled up and pushed by another process" in outputs or "was already rolled up and pushed" in outputs
    )
    assert_instance_clean(home)


def test_a_failed_push_is_retried_by_org_push_and_org_run_without_buying(home, tmp_path) -> None:
    db_url = f"sqlite:///{home / 'app.db'}"
    load(db_url, small_org(tmp_path))
    closed = socket.create_server(("127.0.0.1", 0))
    dead_hook = f"http://127.0.0.1:{closed.getsockname()[1]}/hook"
    closed.close()  # nothing listens there any more: every push attempt is refused
    code, out, err = finish(
        start(cli_env(home, db_url, 0.0, ICP_PUSH_WEBHOOK_URL=dead_hook), "org", "run", "tiny"), 180
    )
    assert code == 1
    assert "retry them with `icp-pipeline org push tiny`" in err
    bought = count(db_url, ModelCall)

    env = cli_env(home, db_url, 0.0)  # the outbox works
    code, out, err = finish(start(env, "org", "run", "tiny"), 120)
    assert code == 0, err[-3000:]
    assert "cycle 1 of tiny is complete but was not delivered" in out
    assert count(db_url, Cycle) == 1 and count(db_url, ModelCall) == bought
    assert (home / "outbox" / "tiny" / "cycle-1.json").exists()

    code, out, err = finish(start(env, "org", "push", "tiny"), 120)
    assert code == 0, err[-3000:]
    assert count(db_url, PushDelivery, PushDelivery.ok) == 2
    assert count(db_url, Cycle) == 1 and count(db_url, ModelCall) == bought


def test_org_run_says_what_it_buys_and_does_not_open_a_second_cycle_unasked(home, tmp_path) -> None:
    db_url = f"sqlite:///{home / 'app.db'}"
    load(db_url, small_org(tmp_path))
    env = cli_env(home, db_url, 0.0)
    code, out, err = finish(start(env, "org", "run", "tiny"), 120)
    assert code == 0, err[-3000:]
    assert (
        "cycle 1 of tiny (opened): 4 question runs to do; buying 8 model calls (4 answers + 4 claims), "
        "estimated cost $0.00 (offline provider" in out
    )
    assert "4/4" in err  # the progress bar

    code, out, err = finish(start(env, "org", "run", "tiny"), 120)
    assert code == 3
    assert "within ICP_MIN_CYCLE_INTERVAL (1h00m)" in err
    assert "`icp-pipeline org run tiny --new-cycle`" in err
    assert count(db_url, Cycle) == 1 and count(db_url, ModelCall) == 8

    code, out, err = finish(start(env, "org", "run", "tiny", "--new-cycle"), 120)
    assert code == 0, err[-3000:]
    assert "cycle 2 of tiny: succeeded" in out
    assert count(db_url, ModelCall) == 16


def test_a_roll_up_claimed_by_another_process_is_awaited_and_reported(icp_env, tmp_path, monkeypatch) -> None:
    db_url = f"sqlite:///{icp_env / 'app.db'}"
    monkeypatch.setenv("ICP_DATABASE_URL", db_url)
    write_embedded_instance_yaml(icp_env / "dagster_home")
    load(db_url, small_org(tmp_path))
    defs = pipeline_defs(db_url)
    first = run_cycle("tiny", workers=2, progress=False, defs=defs)
    assert first.pushed
    # The cycle completes again (as after a backfill of a failed run) and another process claims its
    # roll-up, which it runs two seconds later.
    with session_scope(db_url) as session:
        cycle = session.get(Cycle, first.cycle_id)
        cycle.completed_at = cycle.rollup_requested_at = datetime.now(UTC)

    def other_process() -> None:
        time.sleep(2)
        with DagsterInstance.get() as instance:
            defs.resolve_job_def("org_rollup_job").execute_in_process(
                partition_key="tiny", instance=instance, tags={"icp/cycle_id": str(first.cycle_id)}
            )

    other = threading.Thread(target=other_process)
    other.start()
    started = time.monotonic()
    outcome = finish_cycle("tiny", first.cycle_id, DagsterInstance.get(), defs)
    other.join()
    assert outcome.pushed
    assert outcome.message == "cycle 1 of tiny was rolled up and pushed by another process"
    assert 2 <= time.monotonic() - started < 15
    assert count(db_url, PushDelivery, PushDelivery.ok) == 2  # its push; none from this process
    with DagsterInstance.get() as instance:
        assert len(instance.get_runs(RunsFilter(job_name="org_rollup_job"))) == 2
