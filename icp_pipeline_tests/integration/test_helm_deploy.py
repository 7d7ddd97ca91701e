"""The Kubernetes deployment (deploy/helm): values for the official Dagster Helm chart, the instance
config the chart builds from them, and a run's Kubernetes Job, all checked without a cluster.

What is proven here: deploy/helm/instance.rendered.yaml (the chart's instance template applied to
values.yaml by hand, see its header) agrees with values.yaml and keeps every guarantee of the
repository's dagster.yaml; it loads into Dagster's instance schema with dagster-k8s installed; an
instance built from it on PostgreSQL, with the pool guard installed by the init container's command,
keeps racing claims at the pool limit; and the K8sRunLauncher it configures builds a run Job that
validates against the Kubernetes API schema. Not proven: the chart's own rendering (no helm binary or
chart source offline), and anything a cluster does.
"""

import copy
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import kubernetes
import kubernetes_validate
import pytest
import yaml
from dagster import DagsterInstance
from dagster._config import process_config
from dagster._core.code_pointer import ModuleCodePointer
from dagster._core.instance.config import dagster_instance_config_schema
from dagster._core.launcher import LaunchRunContext
from dagster._core.origin import JobPythonOrigin, RepositoryPythonOrigin
from dagster._core.storage.dagster_run import DagsterRun
from dagster_k8s import K8sRunLauncher
from dagster_postgres.event_log import PostgresEventLogStorage

from icp_pipeline.definitions import question_run_job
from icp_pipeline_tests.integration.test_pool_claims import _race

REPO = Path(__file__).resolve().parents[2]
VALUES = REPO / "deploy" / "helm" / "values.yaml"
RENDERED = REPO / "deploy" / "helm" / "instance.rendered.yaml"
PRODUCTION = REPO / "dagster.yaml"
K8S_VERSION = "1.33.0"  # a current Kubernetes API version shipped with kubernetes-validate
IMAGE = "registry.example.com/icp-pipeline:0.1.0"

# What the chart's daemon and webserver pods have in their environment (configmap-env-daemon and the
# release's secret), which the K8sRunLauncher config reads.
CHART_ENV = {
    "DAGSTER_HOME": "/opt/dagster/dagster_home",
    "DAGSTER_K8S_INSTANCE_CONFIG_MAP": "dagster-instance",
    "DAGSTER_K8S_PG_PASSWORD_SECRET": "dagster-postgresql-secret",
    "DAGSTER_K8S_PIPELINE_RUN_ENV_CONFIGMAP": "dagster-pipeline-env",
    "DAGSTER_PG_PASSWORD": "unused-trust-auth",
}


def _load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


@pytest.fixture
def values() -> dict[str, Any]:
    return _load(VALUES)


@pytest.fixture
def rendered() -> dict[str, Any]:
    return _load(RENDERED)


@pytest.fixture
def chart_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in CHART_ENV.items():
        monkeypatch.setenv(name, value)


def _snake(name: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name)


def _deployment(values: Mapping[str, Any]) -> dict[str, Any]:
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    return deployment


def test_the_rendered_instance_follows_the_values(values: dict[str, Any], rendered: dict[str, Any]) -> None:
    pg = values["postgresql"]
    assert pg["enabled"] is False  # external PostgreSQL
    for storage in ("run_storage", "event_log_storage", "schedule_storage"):
        db = rendered[storage]["config"]["postgres_db"]
        assert (db["hostname"], db["db_name"], db["username"], db["port"]) == (
            pg["postgresqlHost"],
            pg["postgresqlDatabase"],
            pg["postgresqlUsername"],
            pg["service"]["port"],
        )
        assert db["password"] == {"env": "DAGSTER_PG_PASSWORD"}  # from the secret, never a literal
    # The chart writes dagster-postgres's event log itself; the guard is the database trigger.
    assert rendered["event_log_storage"]["module"] == "dagster_postgres.event_log"

    launcher = values["runLauncher"]["config"]["k8sRunLauncher"]
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    assert (rendered["run_launcher"]["module"], rendered["run_launcher"]["class"]) == (
        "dagster_k8s",
        "K8sRunLauncher",
    )
    config = rendered["run_launcher"]["config"]
    assert config["job_namespace"] == launcher["jobNamespace"]
    assert config["load_incluster_config"] == launcher["loadInclusterConfig"]
    assert config["image_pull_policy"] == launcher["imagePullPolicy"]
    assert config["service_account_name"] == values["fullnameOverride"]

    daemon = values["dagsterDaemon"]
    assert rendered["run_coordinator"]["class"] == daemon["runCoordinator"]["type"] == "QueuedRunCoordinator"
    assert rendered["run_monitoring"] == {_snake(k): v for k, v in daemon["runMonitoring"].items()}
    assert rendered["run_retries"] == {_snake(k): v for k, v in daemon["runRetries"].items()}
    assert "sensors" not in rendered and "schedules" not in rendered  # useThreads false: not written

    concurrency = values["concurrency"]
    assert concurrency["enabled"] is True
    assert rendered["concurrency"]["pools"] == {_snake(k): v for k, v in concurrency["pools"].items()}
    assert (
        rendered["concurrency"]["runs"]["tag_concurrency_limits"]
        == concurrency["runs"]["tagConcurrencyLimits"]
    )
    assert rendered["telemetry"] == values["telemetry"]


def test_the_rendered_instance_keeps_the_production_guarantees(rendered: dict[str, Any]) -> None:
    """Same pools, per-partition run limit, monitoring and retries as the repository's dagster.yaml."""
    production = _load(PRODUCTION)
    assert rendered["concurrency"] == production["concurrency"]
    assert rendered["run_retries"] == production["run_retries"]
    for key, value in production["run_monitoring"].items():
        assert rendered["run_monitoring"][key] == value, key
    assert rendered["run_coordinator"]["class"] == production["run_coordinator"]["class"]
    assert rendered["run_coordinator"]["config"] == production["run_coordinator"]["config"]


def test_the_rendered_instance_loads_with_dagster_k8s(rendered: dict[str, Any], chart_env: None) -> None:
    instance_config = process_config(dagster_instance_config_schema(), rendered)
    assert instance_config.success, instance_config.errors
    launcher = process_config(K8sRunLauncher.config_type(), rendered["run_launcher"]["config"])
    assert launcher.success, launcher.errors
    assert launcher.value["instance_config_map"] == "dagster-instance"
    assert launcher.value["postgres_password_secret"] == "dagster-postgresql-secret"


def test_the_values_wire_secrets_and_the_guard_without_literals(values: dict[str, Any]) -> None:
    deployment = _deployment(values)
    assert values["generatePostgresqlPasswordSecret"] is False
    assert {s["name"] for s in deployment["envSecrets"]} == {"icp-app", "icp-provider-keys"}
    names = {e["name"] for e in deployment["env"]}
    assert not names & {"OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY", "ICP_DATABASE_URL"}
    assert deployment["includeConfigInLaunchedRuns"]["enabled"] is True
    assert deployment["codeServerArgs"][:2] == ["-m", "icp_pipeline.definitions"]
    (guard,) = deployment["initContainers"]
    assert guard["command"] == ["python", "-m", "icp_pipeline.instance.pool_guard"]
    assert guard["image"] == f"{deployment['image']['repository']}:{deployment['image']['tag']}"
    password = next(e for e in guard["env"] if e["name"] == "DAGSTER_PG_PASSWORD")
    assert password["valueFrom"]["secretKeyRef"]["name"] == values["global"]["postgresqlSecretName"]
    mounted = {m["name"] for m in guard["volumeMounts"]}
    config_map = next(v for v in deployment["volumes"] if v["name"] in mounted)
    assert config_map["configMap"]["name"] == f"{values['fullnameOverride']}-instance"


def _container_context(values: Mapping[str, Any]) -> dict[str, Any]:
    """What the chart hands the code server as DAGSTER_CONTAINER_CONTEXT for its runs, from the values
    (the user-deployments subchart's `dagsterUserDeployments.k8sContainerContext` helper)."""
    deployment = _deployment(values)
    return {
        "k8s": {
            "image_pull_policy": deployment["image"]["pullPolicy"],
            "env_config_maps": [f"dagster-{deployment['name']}-user-env"],
            "env_secrets": [s["name"] for s in deployment["envSecrets"]],
            "volume_mounts": copy.deepcopy(deployment["volumeMounts"]),
            "volumes": copy.deepcopy(deployment["volumes"]),
            "resources": copy.deepcopy(deployment["resources"]),
            "namespace": values["runLauncher"]["config"]["k8sRunLauncher"]["jobNamespace"],
            # The subchart's service account; its exact name follows the release (not checked here).
            "service_account_name": "dagster-user-deployments",
            "env": copy.deepcopy(deployment["env"]),
            "run_k8s_config": {
                "pod_spec_config": {"init_containers": copy.deepcopy(deployment["initContainers"])}
            },
        }
    }


class RecordingBatchApi:
    """Stands in for the Kubernetes API server: keeps the Job the launcher submits."""

    def __init__(self) -> None:
        self.jobs: list[tuple[str, Any]] = []

    def create_namespaced_job(self, body: Any, namespace: str, **_: Any) -> Any:
        self.jobs.append((namespace, body))
        return body


@pytest.fixture
def chart_instance(
    rendered: dict[str, Any], chart_env: None, postgres_databases: Callable[[], str], tmp_path: Path
) -> Iterator[DagsterInstance]:
    """An instance from the rendered config, its storages pointed at a throwaway local database."""
    url = postgres_databases()
    config = copy.deepcopy(rendered)
    for storage in ("run_storage", "event_log_storage", "schedule_storage"):
        db = config[storage]["config"]["postgres_db"]
        db.update(hostname="127.0.0.1", username="postgres", db_name=url.rsplit("/", 1)[1], port=5432)
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    os.environ["DAGSTER_HOME"] = str(home)  # chart_env's monkeypatch restores it
    instance = DagsterInstance.get()
    yield instance
    instance.dispose()


@pytest.mark.postgres
def test_the_chart_instance_with_the_guard_holds_the_pool_limit(chart_instance: DagsterInstance) -> None:
    # The init container's command, on this instance's database.
    done = subprocess.run(
        [sys.executable, "-m", "icp_pipeline.instance.pool_guard"],
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    storage = chart_instance.event_log_storage
    assert type(storage) is PostgresEventLogStorage  # the stock class, as the chart writes it
    limit = chart_instance.global_op_concurrency_default_limit
    assert limit == 3
    storage.set_concurrency_slots("llm", limit)
    claimed = [_race(storage, f"round{n}") for n in range(10)]
    assert max(claimed) == limit, claimed


@pytest.mark.postgres
def test_a_run_job_built_by_the_chart_launcher_validates(
    chart_instance: DagsterInstance, values: dict[str, Any], rendered: dict[str, Any], tmp_path: Path
) -> None:
    config = process_config(K8sRunLauncher.config_type(), rendered["run_launcher"]["config"])
    assert config.success, config.errors
    # Outside a cluster: a kubeconfig that is never contacted, and the API call recorded instead.
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "none", "cluster": {"server": "https://127.0.0.1:9"}}],
                "users": [{"name": "none", "user": {"token": "unused"}}],
                "contexts": [{"name": "none", "context": {"cluster": "none", "user": "none"}}],
                "current-context": "none",
            }
        )
    )
    api = RecordingBatchApi()
    launcher = K8sRunLauncher(
        **{**config.value, "load_incluster_config": False, "kubeconfig_file": str(kubeconfig)},
        k8s_client_batch_api=api,
    )
    launcher.register_instance(chart_instance)

    origin = JobPythonOrigin(
        job_name=question_run_job.name,
        repository_origin=RepositoryPythonOrigin(
            executable_path="/usr/local/bin/python",
            code_pointer=ModuleCodePointer("icp_pipeline.definitions", "defs", None),
            container_image=IMAGE,
            entry_point=["dagster"],
            container_context=_container_context(values),
        ),
    )
    run = DagsterRun(job_name=question_run_job.name, job_code_origin=origin)
    chart_instance.add_run(run)
    launcher.launch_run(LaunchRunContext(dagster_run=run, workspace=None))

    ((namespace, job),) = api.jobs
    manifest = kubernetes.client.ApiClient().sanitize_for_serialization(job)
    kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)

    assert namespace == "icp" and manifest["kind"] == "Job"
    # The instance reaches the run worker in its args with the password as an env reference only.
    assert CHART_ENV["DAGSTER_PG_PASSWORD"] not in json.dumps(manifest)
    pod = manifest["spec"]["template"]["spec"]
    (container,) = pod["containers"]  # one container: the run worker runs every step in-process
    assert container["image"] == IMAGE
    assert container["args"][:3] == ["dagster", "api", "execute_run"]
    env = {e["name"]: e for e in container["env"]}
    assert env["DAGSTER_PG_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "dagster-postgresql-secret"
    assert env["ICP_HOME"]["value"] == "/var/lib/icp"
    secrets = {s["secretRef"]["name"] for s in container["envFrom"] if "secretRef" in s}
    assert secrets == {"icp-app", "icp-provider-keys"}
    assert {"name": "icp-home", "mountPath": "/var/lib/icp"} in container["volumeMounts"]
    volume_names = [v["name"] for v in pod["volumes"]]
    assert len(volume_names) == len(set(volume_names))  # Kubernetes rejects duplicate volume names
    (guard,) = pod["initContainers"]  # the pool guard runs before this run's first claim, too
    assert guard["command"] == ["python", "-m", "icp_pipeline.instance.pool_guard"]
    assert {m["name"] for m in guard["volumeMounts"]} <= set(volume_names)
    assert pod["serviceAccountName"] == "dagster-user-deployments"
    assert pod["restartPolicy"] == "Never"


def test_the_validator_rejects_a_broken_job() -> None:
    """kubernetes-validate really checks the schema offline (so the test above could fail)."""
    broken = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "x"},
        "spec": {"template": {"spec": {"containers": [{"name": "c", "image": 3}], "restartPolicy": "Never"}}},
    }
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)
