"""Tiny jobs for the run-launcher tests, loadable by module name (a code location of their own).

Kept apart from the project's definitions so a launcher test needs neither the app database nor a
model provider: what is tested is how the run worker starts, ends and is stopped.
"""

import json
import sys
import threading
import time
from pathlib import Path

import dagster as dg

MODULE = __name__
LOCATION = "launcher_jobs"


@dg.op
def quick() -> int:
    return 1


@dg.op
def sleepy() -> None:
    # Interruptible: SIGTERM reaches the worker as an interrupt between two sleeps.
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        time.sleep(0.1)


# In-process, as the project's question-run job: the run worker executes the steps itself.
@dg.job(executor_def=dg.in_process_executor)
def quick_job() -> None:
    quick()


@dg.job(executor_def=dg.in_process_executor)
def sleepy_job() -> None:
    sleepy()


defs = dg.Definitions(jobs=[quick_job, sleepy_job])


def inherited_state(out: str, preload: list[str]) -> None:
    """Run in a process forked from the fork server: what it inherited, written to `out` as JSON."""
    import gc

    # Looked up before anything here imports them: preloaded means the fork server imported them.
    preloaded = {name: name in sys.modules for name in preload}

    import httpx
    import sqlalchemy

    from icp_pipeline.db import session
    from icp_pipeline.providers import live

    def count(kind: type) -> int:
        return sum(1 for obj in gc.get_objects() if isinstance(obj, kind))

    try:
        import psycopg2.extensions

        pg_connections = count(psycopg2.extensions.connection)
    except ImportError:
        pg_connections = 0
    parent = Path(f"/proc/{__import__('os').getppid()}/status").read_text()
    threads_line = next(line for line in parent.splitlines() if line.startswith("Threads:"))
    Path(out).write_text(
        json.dumps(
            {
                "preloaded": preloaded,
                "app_engines": len(session._engines),
                "provider_clients": sum(len(cache._clients) for cache in live._CACHES),
                "inherited_provider_clients": sum(len(clients) for clients in live._INHERITED),
                "sqlalchemy_engines": count(sqlalchemy.engine.Engine),
                "psycopg2_connections": pg_connections,
                "httpx_clients": count(httpx.Client),
                "threads": threading.active_count(),
                "fork_server_threads": int(threads_line.split()[1]),
            }
        )
    )
