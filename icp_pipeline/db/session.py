"""Engines, sessions and migrations for the app database (SQLite by default, PostgreSQL in production)."""

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

from icp_pipeline.settings import database_url, redact_url

MIGRATIONS_DIR = Path(__file__).parent / "migrations"

# One engine per URL and process; worker processes reset this after fork.
_engines: dict[str, Engine] = {}

# A new connection to a server that is down is retried for this long (ICP_DB_RETRY_SECONDS), so a
# restart or failover of PostgreSQL of up to ~30 s delays steps instead of failing them. Connections
# time out after 5 s each and TCP keepalives notice a peer that vanished without closing.
DB_RETRY_SECONDS = 30.0
_PG_CONNECT_ARGS = {
    "connect_timeout": 5,
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
}


class DatabaseUnreachable(RuntimeError):
    """The app database could not be reached for longer than the configured outage budget."""


def db_retry_seconds() -> float:
    return float(os.environ.get("ICP_DB_RETRY_SECONDS", DB_RETRY_SECONDS))


def _retry_connect(engine: Engine) -> None:
    @event.listens_for(engine, "do_connect")
    def _connect(dialect, _record, cargs, cparams):  # noqa: ANN001, ANN202 - SQLAlchemy's hook
        deadline = time.monotonic() + db_retry_seconds()
        delay = 0.5
        while True:
            try:
                return dialect.loaded_dbapi.connect(*cargs, **cparams)
            except dialect.loaded_dbapi.OperationalError:
                if time.monotonic() + delay > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 4.0)


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:  # noqa: ANN001
        cursor = dbapi_connection.cursor()
        # WAL + a generous busy timeout: several run workers write to one file at once.
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()


def get_engine(url: str | None = None) -> Engine:
    url = url or database_url()
    engine = _engines.get(url)
    if engine is None:
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
            engine = create_engine(url, connect_args={"timeout": 30})
            _configure_sqlite(engine)
        else:
            engine = create_engine(
                url,
                pool_pre_ping=True,
                pool_size=5,
                max_overflow=5,
                connect_args=_PG_CONNECT_ARGS if url.startswith("postgresql") else {},
            )
            _retry_connect(engine)
        _engines[url] = engine
    return engine


def reset_engines_after_fork() -> None:
    """Drop inherited pools in a forked worker so it never shares a parent's connection."""
    for engine in _engines.values():
        engine.dispose(close=False)
    _engines.clear()


def database_reachable(url: str | None = None) -> bool:
    """One quick connection attempt, without the retries (a health check)."""
    url = url or database_url()
    if url.startswith("sqlite"):
        return True
    engine = create_engine(url, poolclass=NullPool, connect_args={"connect_timeout": 5})
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        return True
    except Exception:  # any failure to reach it counts as unreachable
        return False
    finally:
        engine.dispose()


@contextmanager
def session_scope(url: str | None = None) -> Iterator[Session]:
    """A transaction: commits on success, rolls back on any error."""
    session = sessionmaker(bind=get_engine(url), expire_on_commit=False)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def _alembic_config(url: str):  # noqa: ANN202 - alembic is imported lazily
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["database_url"] = url
    return config


def upgrade(url: str | None = None, revision: str = "head") -> None:
    from alembic import command

    command.upgrade(_alembic_config(url or database_url()), revision)


def downgrade(url: str | None, revision: str) -> None:
    from alembic import command

    command.downgrade(_alembic_config(url or database_url()), revision)


def current_revision(url: str | None = None) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with get_engine(url).connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


class SchemaNotReady(RuntimeError):
    pass


def ensure_schema(url: str | None = None) -> None:
    """Fail with the command to run when the schema has not been created by the migrations."""
    url = url or database_url()
    if "question_runs" not in inspect(get_engine(url)).get_table_names():
        raise SchemaNotReady(
            f"the app database at {redact_url(url)} has no schema; run `icp-pipeline db upgrade` "
            "(ICP_DATABASE_URL selects the database)"
        )
