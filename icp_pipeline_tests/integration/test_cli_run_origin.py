"""The CLI's runs are runs of the code location in workspace.yaml (issue 11, item 1): they carry the
origin the webserver gives its own runs, so the UI lists them under their job and re-executes them,
and `org run` opens its cycle by materializing `org_cycle`."""

from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa
from dagster._core.storage.tags import REPOSITORY_LABEL_TAG
from dagster._core.workspace.load import location_origins_from_yaml_paths

from icp_pipeline.cli.instance import write_embedded_instance_yaml
from icp_pipeline.cli.origins import LOCATION_NAME, remote_job_origin
from icp_pipeline.cli.runner import run_cycle
from icp_pipeline.db.models import Cycle, Question
from icp_pipeline.db.session import session_scope
from icp_pipeline_tests.integration.test_cli_faults import cli_env, finish, load, small_org, start
from icp_pipeline_tests.support.dagster_services import REPO_ROOT, dagster_services
from icp_pipeline_tests.support.pipeline import count, pipeline_defs

LABEL = f"__repository__@{LOCATION_NAME}"


def org_cycle_materializations(instance: dg.DagsterInstance, org: str) -> list[dg.EventLogRecord]:
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("org_cycle"), asset_partitions=[org]), limit=10
    ).records
    return list(records)


def test_the_origin_is_the_one_the_webserver_loads_from_workspace_yaml() -> None:
    (location,) = location_origins_from_yaml_paths([str(REPO_ROOT / "workspace.yaml")])
    origin = remote_job_origin("question_run_job")
    assert origin.repository_origin.code_location_origin == location
    assert origin.repository_origin.get_label() == LABEL


def test_org_run_records_runs_with_an_origin_and_materializes_org_cycle(
    icp_env: Path, tmp_path, monkeypatch
) -> None:
    db_url = f"sqlite:///{icp_env / 'app.db'}"
    monkeypatch.setenv("ICP_DATABASE_URL", db_url)
    write_embedded_instance_yaml(icp_env / "dagster_home")
    load(db_url, small_org(tmp_path))
    defs = pipeline_defs(db_url)

    first = run_cycle("tiny", workers=2, progress=False, defs=defs)
    assert first.status == "succeeded" and first.pushed
    # A command that only reports the cycle opens none.
    assert run_cycle("tiny", progress=False, defs=defs, existing_only=True).status == "refused"

    with dg.DagsterInstance.get() as instance:
        runs = instance.get_runs(dg.RunsFilter(job_name="question_run_job"))
        assert len(runs) == 4  # 1 question x 2 models x 2 locations
        # Listed under their job in the UI: by job name and the repository label of the location.
        listed = instance.get_runs(
            dg.RunsFilter(job_name="question_run_job", tags={REPOSITORY_LABEL_TAG: LABEL})
        )
        assert {r.run_id for r in listed} == {r.run_id for r in runs}
        for run in [*runs, *instance.get_runs(dg.RunsFilter(job_name="org_rollup_job"))]:
            assert run.remote_job_origin == remote_job_origin(run.job_name)
            assert run.remote_job_origin.location_name == LOCATION_NAME
            assert run.remote_job_origin.repository_origin.repository_name == "__repository__"
            assert run.job_code_origin.job_name == run.job_name
            assert run.job_code_origin.repository_origin.code_pointer.module == "icp_pipeline.definitions"
            assert run.tags["icp/launched_by"] == "cli" and run.tags["icp/worker"]
            assert run.tags["dagster/partition"]

        records = org_cycle_materializations(instance, "tiny")
        cycles = sorted(r.asset_materialization.metadata["cycle_id"].value for r in records)
        assert cycles == [first.cycle_id]
        for record in records:
            run = instance.get_run_by_id(record.run_id)
            assert run.job_name == "org_cycle_job" and run.remote_job_origin == remote_job_origin(
                "org_cycle_job"
            )


def test_a_cycle_org_cycle_cannot_open_ends_the_command_with_its_error(
    icp_env: Path, tmp_path, monkeypatch
) -> None:
    db_url = f"sqlite:///{icp_env / 'app.db'}"
    monkeypatch.setenv("ICP_DATABASE_URL", db_url)
    write_embedded_instance_yaml(icp_env / "dagster_home")
    load(db_url, small_org(tmp_path))
    with session_scope(db_url) as session:
        session.execute(sa.update(Question).values(active=False))
    with pytest.raises(
        ValueError, match="could not open a cycle of tiny: ValueError: org 'tiny' has no active"
    ):
        run_cycle("tiny", progress=False, defs=pipeline_defs(db_url))
    assert count(db_url, Cycle) == 0
    with dg.DagsterInstance.get() as instance:
        (run,) = instance.get_runs(dg.RunsFilter(job_name="org_cycle_job"))
        assert run.status == dg.DagsterRunStatus.FAILURE


REEXECUTE = """
mutation ($parentRunId: String!) {
  launchRunReexecution(reexecutionParams: {parentRunId: $parentRunId, strategy: ALL_STEPS}) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
  }
}"""

JOB_RUNS = """
query ($job: String!) {
  pipelineOrError(params: {pipelineName: $job, repositoryName: "__repository__",
                           repositoryLocationName: "icp_pipeline"}) {
    __typename
    ... on Pipeline { runs { runId status } }
  }
}"""

RUN = """
query ($runId: ID!) { runOrError(runId: $runId) { ... on Run { status parentRunId jobName } } }"""

ORG_CYCLE = """
{ assetOrError(assetKey: {path: ["org_cycle"]}) {
    ... on Asset { assetMaterializations(partitions: ["tiny"]) { runId partition } } } }"""


def test_the_ui_lists_and_re_executes_a_cli_run(tmp_path: Path) -> None:
    """`org run` as a user runs it, then a real dagster-webserver on the same instance, loading
    workspace.yaml: the job lists the CLI's runs, and "Re-execute" runs one again."""
    home = tmp_path / "icp"
    dagster_home = home / "dagster_home"
    dagster_home.mkdir(parents=True)
    write_embedded_instance_yaml(dagster_home)
    db_url = f"sqlite:///{home / 'app.db'}"
    load(db_url, small_org(tmp_path))
    env = cli_env(home, db_url, 0.0)
    code, out, err = finish(start(env, "org", "run", "tiny"), 120)
    assert code == 0, err[-3000:]
    assert "4/4" in err  # the progress bar is kept

    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        cli_runs = {r.run_id for r in instance.get_runs(dg.RunsFilter(job_name="question_run_job"))}
    assert len(cli_runs) == 4
    service_env = {k: env[k] for k in ("ICP_HOME", "ICP_DATABASE_URL", "ICP_OFFLINE_LATENCY_SECONDS")}
    with dagster_services(dagster_home, service_env, daemon=False) as services:
        job = services.graphql(JOB_RUNS, {"job": "question_run_job"})["pipelineOrError"]
        assert {r["runId"] for r in job["runs"]} == cli_runs
        cycle_runs = services.graphql(ORG_CYCLE)["assetOrError"]["assetMaterializations"]
        assert [m["partition"] for m in cycle_runs] == ["tiny"]

        parent = sorted(cli_runs)[0]
        launched = services.graphql(REEXECUTE, {"parentRunId": parent})["launchRunReexecution"]
        assert launched["__typename"] == "LaunchRunSuccess", launched
        child = launched["run"]["runId"]
        # The re-execution is a run of the same job with the CLI run as its parent; the instance's run
        # coordinator queues it (a daemon would then launch it through the code location's server).
        run = services.graphql(RUN, {"runId": child})["runOrError"]
        assert run == {"status": "QUEUED", "parentRunId": parent, "jobName": "question_run_job"}
