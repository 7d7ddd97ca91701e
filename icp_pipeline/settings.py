"""Environment-driven settings shared by the CLI, the Dagster resources and the domain code.

Nothing here imports Dagster: the CLI reads these before it decides what to import.
"""

import os
import unicodedata
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

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


def redact_url(url: str, *, origin_only: bool = False) -> str:
    """A URL safe for logs. A database URL keeps its path (the database name) without its password or
    query string. With `origin_only` (webhook and alert URLs, whose secret is often the path, as in
    Slack's /services/T000/B000/<token>), only scheme://host[:port] is left."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:  # e.g. a port that is not a number: show nothing of it
        return "(invalid URL)"
    if not parts.hostname:  # e.g. a SQLite file: nothing secret to hide
        return "(invalid URL)" if origin_only else url
    netloc = parts.hostname
    if parts.username and not origin_only:
        netloc = f"{parts.username}:***@{netloc}"
    if port:
        netloc = f"{netloc}:{port}"
    return urlunsplit((parts.scheme, netloc, "" if origin_only else parts.path, "", ""))


def url_origin(url: str) -> str:
    """How a webhook or alert URL is shown everywhere (logs, metadata, rows, errors): scheme://host[:port]."""
    return redact_url(url, origin_only=True)


# Variables whose whole value is secret, and URLs whose path, query or password may be.
SECRET_VARIABLES = ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY", "ICP_PUSH_WEBHOOK_SECRET")
SECRET_URL_VARIABLES = ("ICP_PUSH_WEBHOOK_URL", "ICP_ALERT_WEBHOOK_URL", "ICP_DATABASE_URL")


class SecretFormatError(ValueError):
    """A secret variable holds whitespace or control characters inside its value (never shown)."""


def clean_secret(variable: str, value: str | None) -> str | None:
    """The value without surrounding whitespace (secret files end in a newline), None when empty.
    Whitespace or control characters inside it are a mistake the provider would only report as a
    connection error: fail at once, naming the variable but not the value."""
    if value is None:
        return None
    stripped = value.strip()
    if any(ch.isspace() or unicodedata.category(ch) in ("Cc", "Cf") for ch in stripped):
        raise SecretFormatError(
            f"{variable} contains whitespace or control characters inside its value; "
            "set it to the key alone (surrounding whitespace is ignored)"
        )
    return stripped or None


def read_secret(variable: str) -> str | None:
    return clean_secret(variable, os.environ.get(variable))


def url_secrets(url: str | None) -> list[str]:
    """The parts of a URL that may be secret: the URL itself, its path and query, their longer
    segments, and its password."""
    if not url or not url.strip():
        return []
    url = url.strip()
    parts = urlsplit(url)
    found = [url, parts.password or ""]
    if len(parts.path) > 1:
        found.append(parts.path + (f"?{parts.query}" if parts.query else ""))
        found.append(parts.path)
    found += [s for s in parts.path.split("/") if len(s) >= 10]  # a token, not "services"
    found += [v for pair in parts.query.split("&") for v in pair.split("=")[1:] if len(v) >= 4]
    return [s for s in found if s]


def known_secrets() -> list[str]:
    """Every secret the environment holds, for `redaction.redact` wherever a message is built."""
    secrets = [os.environ.get(variable) or "" for variable in SECRET_VARIABLES]
    for variable in SECRET_URL_VARIABLES:
        value = os.environ.get(variable)
        if variable == "ICP_DATABASE_URL":  # the database name and host are no secret, its password is
            secrets.append(urlsplit(value).password or "" if value else "")
        else:
            secrets += url_secrets(value)
    return [s for s in secrets if s.strip()]
