"""Real `dagster-daemon` and `dagster-webserver` processes on 127.0.0.1, for end-to-end and browser tests.

The instance is the project's production `dagster.yaml` (PostgreSQL storage from `DAGSTER_PG_*`,
queued runs, pool `llm` = 3, run monitoring and retries) with a few polling intervals shortened, and
the code location is loaded from the project's `workspace.yaml`, as an operator would run it.
"""

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def postgres_env(url: str) -> dict[str, str]:
    """The production dagster.yaml's connection variables for a PostgreSQL URL."""
    parts = urlsplit(url)
    return {
        "DAGSTER_PG_USERNAME": parts.username or "postgres",
        "DAGSTER_PG_PASSWORD": parts.password or "",
        "DAGSTER_PG_HOST": parts.hostname or "127.0.0.1",
        "DAGSTER_PG_PORT": str(parts.port or 5432),
        "DAGSTER_PG_DB": parts.path.lstrip("/"),
    }


def write_production_instance(home: Path, overrides: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Copy the repository's dagster.yaml into `home`, merging `overrides` into its sections."""
    config = yaml.safe_load((REPO_ROOT / "dagster.yaml").read_text())
    for section, values in overrides.items():
        config[section] = {**config.get(section, {}), **values}
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return config


def wait_until(
    probe: Callable[[], T], *, timeout: float, what: str, interval: float = 0.5, logs: Path | None = None
) -> T:
    """Poll `probe` until it returns something truthy; on timeout fail with `what` and the log tails."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = probe()
        except Exception as error:  # a service still starting: keep polling, report the last error
            last_error = error
        else:
            if value:
                return value
        time.sleep(interval)
    detail = f" (last error: {last_error!r})" if last_error else ""
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}{detail}\n{log_tails(logs)}")


def log_tails(logs: Path | None, lines: int = 40) -> str:
    if logs is None or not logs.exists():
        return ""
    parts = []
    for path in sorted(logs.glob("*.log")):
        tail = path.read_text(errors="replace").splitlines()[-lines:]
        parts.append(f"--- {path.name} (last {len(tail)} lines)\n" + "\n".join(tail))
    return "\n".join(parts)


@dataclass
class DagsterServices:
    """A daemon and a webserver sharing one DAGSTER_HOME; `graphql` talks to the webserver."""

    home: Path
    env: dict[str, str]
    port: int = field(default_factory=free_port)
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def logs(self) -> Path:
        # Beside DAGSTER_HOME, not in it: Dagster clears $DAGSTER_HOME/logs when its services start.
        return self.home.parent / f"{self.home.name}-service-logs"

    def _start(self, name: str, command: list[str]) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        with (self.logs / f"{name}.log").open("ab") as log:
            # A session of its own, so stopping the service also stops its code server and run workers.
            self.processes[name] = subprocess.Popen(
                command,
                cwd=REPO_ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def start_webserver(self) -> None:
        workspace = str(REPO_ROOT / "workspace.yaml")
        self._start(
            "webserver",
            [str(BIN / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(self.port), "-w", workspace],
        )
        wait_until(
            self._location_loaded, timeout=120, what="the webserver to load the code location", logs=self.logs
        )

    def start_daemon(self) -> None:
        self._start("daemon", [str(BIN / "dagster-daemon"), "run", "-w", str(REPO_ROOT / "workspace.yaml")])
        wait_until(self._daemons_healthy, timeout=120, what="the daemon to report healthy", logs=self.logs)

    def stop(self, name: str, timeout: float = 30) -> None:
        process = self.processes.pop(name, None)
        if process is None or process.poll() is not None:
            return
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)

    def stop_all(self) -> None:
        for name in list(self.processes):
            self.stop(name)
        kill_strays(self.home)

    def graphql(self, query: str, variables: Mapping[str, Any] | None = None) -> dict[str, Any]:
        response = httpx.post(
            f"{self.url}/graphql", json={"query": query, "variables": dict(variables or {})}, timeout=60
        )
        response.raise_for_status()
        body = response.json()
        if body.get("errors"):
            raise AssertionError(f"GraphQL errors: {body['errors']}")
        return body["data"]

    def _location_loaded(self) -> bool:
        data = self.graphql(
            """{ workspaceOrError { ... on Workspace { locationEntries {
                 name loadStatus locationOrLoadError { __typename ... on PythonError { message } } } } } }"""
        )
        entries = data["workspaceOrError"]["locationEntries"]
        for entry in entries:
            loaded = entry["locationOrLoadError"]
            if loaded and loaded["__typename"] == "PythonError":
                raise AssertionError(f"code location {entry['name']} failed to load: {loaded['message']}")
        return bool(entries) and all(e["loadStatus"] == "LOADED" for e in entries)

    def _daemons_healthy(self) -> bool:
        data = self.graphql(
            "{ instance { daemonHealth { allDaemonStatuses { daemonType required healthy } } } }"
        )
        statuses = data["instance"]["daemonHealth"]["allDaemonStatuses"]
        wanted = {"SENSOR", "QUEUED_RUN_COORDINATOR", "BACKFILL", "MONITORING"}
        healthy = {s["daemonType"] for s in statuses if s["healthy"]}
        return wanted <= healthy


def kill_strays(home: Path) -> None:
    """SIGKILL any process still running with this DAGSTER_HOME (a run worker that outlived its parent)."""
    marker = f"DAGSTER_HOME={home}".encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if marker in (proc / "environ").read_bytes().split(b"\0"):
                os.kill(int(proc.name), signal.SIGKILL)
        except (OSError, ProcessLookupError):
            continue


def service_env(home: Path, extra: Mapping[str, str]) -> dict[str, str]:
    """The environment of the services: this one without any ICP_ setting or provider key, plus `extra`."""
    dropped = re.compile(r"^(ICP_|OPENAI_|ANTHROPIC_|GEMINI_|GOOGLE_)")
    env = {k: v for k, v in os.environ.items() if not dropped.match(k)}
    return {**env, "DAGSTER_HOME": str(home), "PYTHONUNBUFFERED": "1", **extra}


@contextmanager
def dagster_services(
    home: Path, extra_env: Mapping[str, str], *, daemon: bool = True
) -> Iterator[DagsterServices]:
    """Start the webserver (and the daemon) on `home`; stop both, and anything they left, afterwards."""
    services = DagsterServices(home=home, env=service_env(home, extra_env))
    try:
        services.start_webserver()
        if daemon:
            services.start_daemon()
        yield services
    finally:
        services.stop_all()
