"""Environment-driven settings shared by the CLI, the Dagster resources and the domain code.

Nothing here imports Dagster: the CLI reads these before it decides what to import.
"""

import os
from pathlib import Path

# Everything a newcomer's first run writes lives under one local folder.
DEFAULT_HOME = Path(".icp")


def icp_home() -> Path:
    return Path(os.environ.get("ICP_HOME", DEFAULT_HOME)).resolve()


def database_url() -> str:
    """`ICP_DATABASE_URL`, or a SQLite file under the local home (the embedded default)."""
    url = os.environ.get("ICP_DATABASE_URL")
    if url:
        return url
    return f"sqlite:///{icp_home() / 'app.db'}"


def dagster_home() -> Path:
    return Path(os.environ.get("DAGSTER_HOME", icp_home() / "dagster_home")).resolve()


def outbox_dir() -> Path:
    return Path(os.environ.get("ICP_OUTBOX_DIR", icp_home() / "outbox")).resolve()


def redact_url(url: str) -> str:
    """A database or webhook URL without its password or query string, safe for logs."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if not parts.hostname:  # e.g. a SQLite file: nothing secret to hide
        return url
    netloc = parts.hostname or ""
    if parts.username:
        netloc = f"{parts.username}:***@{netloc}"
    if parts.port:
        netloc = f"{netloc}:{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
