"""Engines, sessions and migrations for the app database (SQLite by default, PostgreSQL in production)."""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, inspect
from sqlalchemy.orm import Session, sessionmaker

from icp_pipeline.settings import database_url, redact_url

MIGRATIONS_DIR = Path(__file__).parent / "migrations"

# One engine per URL and process; worker processes reset this after fork.
_engines: dict[str, Engine] = {}


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
            engine = create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5)
        _engines[url] = engine
    return engine


def reset_engines_after_fork() -> None:
    """Drop inherited pools in a forked worker so it never shares a parent's connection."""
    for engine in _engines.values():
        engine.dispose(close=False)
    _engines.clear()


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
