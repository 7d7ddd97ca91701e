"""The CLI's runs, recorded as runs of the code location that workspace.yaml declares.

The CLI executes runs in its own (forked) processes, in-process, with the definitions it has already
imported. `job.execute_in_process` would record such a run without an origin: the Dagster UI then
cannot re-execute it ("Expected non-None value"), and neither the job's Runs tab nor the timeline
lists it. Here each run is created with the origin the webserver gives runs it launches itself:
`remote_job_origin` names the workspace's location (`icp_pipeline`) and repository (`__repository__`),
`job_code_origin` the module that defines the job. Then it is executed in this process.

Private Dagster APIs, pinned by dagster==1.13.27 and covered by icp_pipeline_tests/integration/
test_cli_run_origin.py: `location_origin_from_module_name` (how the workspace loader reads a
`python_module` entry, so the origin is equal to the webserver's), `merge_run_tags` (the partition
tags `execute_in_process` adds), `InMemoryJob` (executes the already-imported job definition, with
the caller's resources) and `execute_run`. Dagster has no public API that creates a run with an origin
and executes it in the current process.
"""

import sys
from typing import Any

# workspace.yaml: `python_module: {module_name: icp_pipeline.definitions, location_name: icp_pipeline}`.
LOCATION_NAME = "icp_pipeline"
DEFINITIONS_MODULE = "icp_pipeline.definitions"
DEFINITIONS_ATTRIBUTE = "defs"  # the Definitions object the code server finds in the module


def remote_job_origin(job_name: str) -> Any:  # RemoteJobOrigin, imported lazily
    """The job as the webserver knows it: workspace.yaml's location, its single repository."""
    from dagster._core.definitions.repository_definition.valid_definitions import SINGLETON_REPOSITORY_NAME
    from dagster._core.remote_origin import RemoteJobOrigin, RemoteRepositoryOrigin
    from dagster._core.workspace.load import location_origin_from_module_name

    location = location_origin_from_module_name(DEFINITIONS_MODULE, None, None, LOCATION_NAME)
    return RemoteJobOrigin(RemoteRepositoryOrigin(location, SINGLETON_REPOSITORY_NAME), job_name)


def job_code_origin(job_name: str) -> Any:  # JobPythonOrigin, imported lazily
    """Where a run worker would load the job from (as the code server reports it)."""
    from dagster._core.code_pointer import CodePointer
    from dagster._core.origin import JobPythonOrigin, RepositoryPythonOrigin

    pointer = CodePointer.from_module(DEFINITIONS_MODULE, DEFINITIONS_ATTRIBUTE, working_directory=None)
    return JobPythonOrigin(job_name, RepositoryPythonOrigin(sys.executable, pointer))


def execute_with_origin(
    job: Any,
    partition_key: str,
    instance: Any,
    tags: dict[str, str],
    run_config: dict[str, Any],
    run_id: str | None = None,
) -> Any:  # JobExecutionResult
    """Create the run of one partition with the workspace's origin and execute it in this process,
    with the job's own executor (in-process, see definitions.py), as `execute_in_process` would."""
    from dagster._core.definitions.job_base import InMemoryJob
    from dagster._core.execution.api import create_execution_plan, execute_run
    from dagster._core.execution.execute_in_process import merge_run_tags

    # Validates the key against the instance's dynamic partitions and adds dagster/partition.
    run_tags = merge_run_tags(job, partition_key, tags, None, instance, run_config)
    plan = create_execution_plan(
        job, run_config=run_config, instance_ref=instance.get_ref() if instance.is_persistent else None
    )
    run = instance.create_run_for_job(
        job_def=job,
        execution_plan=plan,
        run_id=run_id,
        run_config=run_config,
        tags=run_tags,
        remote_job_origin=remote_job_origin(job.name),
        job_code_origin=job_code_origin(job.name),
    )
    return execute_run(InMemoryJob(job), run, instance, raise_on_error=False)
