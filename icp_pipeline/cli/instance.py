"""The Dagster instance the CLI records its runs in (imports Dagster only when called)."""

import os
from pathlib import Path

from icp_pipeline import settings
from icp_pipeline.defs.resources import LLM_POOL

POOL_LIMIT = 3
EMBEDDED_INSTANCE_YAML = Path(__file__).parent.parent / "instance" / "dagster.yaml"


def prepare_dagster_home() -> Path:
    """Use DAGSTER_HOME, or create the embedded one under .icp/ with the pool cap configured."""
    home = settings.dagster_home()
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "dagster.yaml").exists() and "DAGSTER_HOME" not in os.environ:
        write_embedded_instance_yaml(home)
    os.environ["DAGSTER_HOME"] = str(home)
    return home


def write_embedded_instance_yaml(home: Path) -> None:
    text = EMBEDDED_INSTANCE_YAML.read_text().replace("{DAGSTER_HOME}", str(home.resolve()))
    (home / "dagster.yaml").write_text(text)


def get_instance():  # noqa: ANN201 - DagsterInstance, imported lazily
    from dagster import DagsterInstance

    instance = DagsterInstance.get()
    ensure_pool(instance)
    return instance


def ensure_pool(instance) -> None:  # noqa: ANN001 - DagsterInstance, imported lazily
    """Create the `llm` pool's slots once, before any worker starts. Left to the first steps, several
    workers initialize it at the same moment and can create its slots twice (seen: 5 calls at once)."""
    storage = instance.event_log_storage
    if LLM_POOL in storage.get_concurrency_keys():
        return
    if storage.get_pool_config().default_pool_limit is None:
        # Never run model steps unbounded: an instance configured without any limit gets the cap of 3.
        storage.set_concurrency_slots(LLM_POOL, POOL_LIMIT)
    else:
        storage.initialize_concurrency_limit_to_default(LLM_POOL)
