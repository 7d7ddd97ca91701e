import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml

from icp_pipeline.cli.instance import write_embedded_instance_yaml
from icp_pipeline.db import session as db_session
from icp_pipeline.db.session import session_scope, upgrade
from icp_pipeline.visibility.org_file import parse_org_text, upsert_org

EXAMPLE_ORG = Path(__file__).parent.parent / "icp_pipeline" / "examples" / "acme.yaml"

# The test tiers, in the order they run: unit (seconds, no services), integration (PostgreSQL, CLI
# subprocesses, fake provider servers), e2e (dagster-daemon, dagster-webserver, a browser; minutes).
TESTS_DIR = Path(__file__).parent
TIERS = ("unit", "integration", "e2e")


def tier_of(item: pytest.Item) -> int:
    """The tier of a collected test from its folder; a test outside the three folders counts as integration."""
    folder = item.path.relative_to(TESTS_DIR).parts[0] if item.path.is_relative_to(TESTS_DIR) else ""
    return TIERS.index(folder) if folder in TIERS else TIERS.index("integration")


@pytest.hookimpl(tryfirst=True)  # before pytest's own -m selection, which reads the marker added here
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test under e2e/ `e2e` (`pytest -m "not e2e"` leaves them out) and run the tiers in
    order, so a broken unit test fails in seconds, not after the daemon tests' minutes."""
    for item in items:
        if tier_of(item) == TIERS.index("e2e"):
            item.add_marker(pytest.mark.e2e)
    items.sort(key=tier_of)  # stable: within a tier, pytest's own order


def example_org_data(samples: int = 1) -> dict:
    """The example org file as data, asking each question x model x location `samples` times.
    The example itself asks 3 times (135 question runs); tests that are not about samples use one
    (45 runs), a third of the work, and keep the counts they always had."""
    data = yaml.safe_load(EXAMPLE_ORG.read_text())
    data["samples"] = samples
    return data


def write_example_org(path: Path, samples: int = 1) -> Path:
    """The example org file with `samples` written to `path`, for `icp-pipeline org load`."""
    path.write_text(yaml.safe_dump(example_org_data(samples), sort_keys=False))
    return path


PG_ADMIN_URL = os.environ.get("ICP_TEST_PG_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")


@pytest.fixture
def icp_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A clean local home: its own app database, DAGSTER_HOME and outbox; no provider keys."""
    home = tmp_path / "icp"
    monkeypatch.setenv("ICP_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster_home"))
    (home / "dagster_home").mkdir(parents=True)
    for name in (
        "ICP_DATABASE_URL",
        "ICP_PUSH_WEBHOOK_URL",
        "ICP_PUSH_WEBHOOK_SECRET",
        "ICP_OUTBOX_DIR",
        "OPENAI_API_KEY",
        "ANTHROPIC_API_KEY",
        "GEMINI_API_KEY",
        "ICP_PROVIDER_MODE",
    ):
        monkeypatch.delenv(name, raising=False)
    yield home
    db_session.reset_engines_after_fork()


def write_instance_yaml(dagster_home: Path, storage_url: str | None = None) -> None:
    """The CLI's embedded instance config, or the same pools on PostgreSQL storage."""
    write_embedded_instance_yaml(dagster_home)
    if storage_url:
        # The production storages (dagster.yaml): dagster-postgres, pooled, with the guarded event log.
        storages = "".join(
            f"{kind}:\n  module: {module}\n  class: {cls}\n  config:\n    postgres_url: {storage_url}\n"
            for kind, module, cls in (
                ("run_storage", "icp_pipeline.instance.pooled_postgres", "PooledPostgresRunStorage"),
                (
                    "event_log_storage",
                    "icp_pipeline.instance.guarded_storage",
                    "GuardedPostgresEventLogStorage",
                ),
                (
                    "schedule_storage",
                    "icp_pipeline.instance.pooled_postgres",
                    "PooledPostgresScheduleStorage",
                ),
            )
        )
        pools = "concurrency:\n  pools:\n    default_limit: 3\n    granularity: op\n"
        compute_logs = (
            "compute_logs:\n  module: icp_pipeline.instance.compute_logs\n  class: FileComputeLogManager\n"
        )
        (dagster_home / "dagster.yaml").write_text(storages + pools + compute_logs)


@pytest.fixture
def sqlite_app(icp_env: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """App database on SQLite, migrated, with the example org loaded (one sample: 45 question runs);
    Dagster on SQLite with pool llm=3."""
    url = f"sqlite:///{icp_env / 'app.db'}"
    monkeypatch.setenv("ICP_DATABASE_URL", url)
    write_instance_yaml(icp_env / "dagster_home")
    upgrade(url)
    load_example(url)
    return url


def load_example(url: str, samples: int = 1) -> None:
    """The example org, with one sample per combination unless asked for more (see example_org_data)."""
    with session_scope(url) as session:
        upsert_org(session, parse_org_text(yaml.safe_dump(example_org_data(samples)), str(EXAMPLE_ORG)))


@pytest.fixture
def postgres_databases() -> Iterator[Callable[[], str]]:
    """Creates fresh PostgreSQL databases and drops them afterwards. PostgreSQL is part of every
    dev and CI machine: if it is down, the test fails (never skips)."""
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    created: list[str] = []

    def create() -> str:
        name = f"icp_test_{uuid.uuid4().hex[:10]}"
        try:
            with admin.connect() as connection:
                connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
        except sa.exc.OperationalError as error:
            pytest.fail(
                f"PostgreSQL is required at 127.0.0.1:5432 ({error.orig}); start it with "
                "`pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`"
            )
        created.append(name)
        return PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"

    yield create
    db_session.reset_engines_after_fork()
    with admin.connect() as connection:
        for name in created:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()
