"""Compute logs captured to files without Dagster's mirror subprocesses.

Dagster's LocalComputeLogManager captures a run's stdout and stderr by pointing file descriptors 1
and 2 at two files (the ones the UI's stdout/stderr view reads), and mirrors each file back to the
process's own terminal with a `tail -F` process plus a Python watcher (`watch_orphans.py`): four
subprocesses per captured run, about 13 % of the CLI cycle's CPU (bench/bench_cycle.py).

FileComputeLogManager captures to the same files, with the same layout and cursors (it is a
LocalComputeLogManager: reading, subscribing and deleting are Dagster's), but only redirects the
descriptors, as Dagster's `redirect_to_file` does. What reached the terminal through the mirror:

- stderr: Dagster's console logger (the CLI sets it to WARNING: retries and step failures), Python
  logging's warnings (e.g. the ledger's retries), Python warnings. These are all writes to the
  `sys.stderr` object, so during a capture `sys.stderr` also echoes them to the process's original
  stderr (a copy of the descriptor taken before the redirect): the CLI's terminal keeps its warnings
  and errors, the daemon's log keeps its run workers' lines. Output written to descriptor 2 by C code
  or by a subprocess goes to the file only. `echo_stderr: false` turns the echo off.
- stdout: not echoed. In the CLI it would mix step output into the command's own output (its
  reports, `--json`); nothing the pipeline relies on prints there.

Private Dagster APIs used (dagster==1.13.27 is pinned in pyproject.toml; check them on an upgrade):
- dagster._core.storage.local_compute_log_manager: LocalComputeLogManager (subclassed: its paths,
  reads, cursors and subscriptions are what the UI uses) and IO_TYPE_EXTENSION (the file suffixes).
- dagster._core.execution.compute_logs.redirect_to_file: the descriptor redirect the parent's
  `capture_logs` does under its mirror (`mirror_stream_to_file`).
- dagster._core.storage.compute_log_manager: CapturedLogContext, ComputeIOType.
- dagster._utils: ensure_file, touch_file (the "complete" marker the UI waits for).
- dagster._serdes.ConfigurableClassData: the instance config plumbing.
- register_instance (MayHaveInstanceWeakref) and DagsterInstance.root_directory: the default
  base_dir, DAGSTER_HOME/storage as in Dagster's InstanceRef defaults.
"""

import os
import sys
from collections.abc import Generator, Sequence
from contextlib import contextmanager
from typing import Any, TextIO

from dagster import Bool, Field, Float, StringSource
from dagster._config.config_schema import UserConfigSchema
from dagster._core.execution.compute_logs import redirect_to_file
from dagster._core.storage.compute_log_manager import CapturedLogContext, ComputeIOType
from dagster._core.storage.local_compute_log_manager import IO_TYPE_EXTENSION, LocalComputeLogManager
from dagster._serdes import ConfigurableClassData
from dagster._utils import ensure_file, touch_file


class FileComputeLogManager(LocalComputeLogManager):
    """LocalComputeLogManager without the `tail -F` mirror: stdout and stderr go to the files only,
    and Python's writes to sys.stderr are echoed to the original stderr (see the module docstring).

    `base_dir` defaults to the instance's `storage` directory, where Dagster's default compute log
    manager keeps them (so `base_dir` need not repeat DAGSTER_HOME in dagster.yaml)."""

    def __init__(
        self,
        base_dir: str | None = None,
        polling_timeout: float | None = None,
        echo_stderr: bool = True,
        inst_data: ConfigurableClassData | None = None,
    ) -> None:
        # The parent needs a str; it is set from the instance in register_instance when not given.
        super().__init__(base_dir=base_dir or "", polling_timeout=polling_timeout, inst_data=inst_data)
        self._base_dir_given = bool(base_dir)
        self._echo_stderr = echo_stderr

    @classmethod
    def config_type(cls) -> UserConfigSchema:
        return {
            "base_dir": Field(StringSource, is_required=False),
            "polling_timeout": Field(Float, is_required=False),
            "echo_stderr": Field(Bool, is_required=False, default_value=True),
        }

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData | None, config_value: dict[str, Any]
    ) -> "FileComputeLogManager":
        return cls(inst_data=inst_data, **config_value)

    def register_instance(self, instance: Any) -> None:  # noqa: ANN401 - DagsterInstance
        super().register_instance(instance)
        if not self._base_dir_given:
            self._base_dir = os.path.join(instance.root_directory, "storage")

    @contextmanager
    def capture_logs(self, log_key: Sequence[str]) -> Generator[CapturedLogContext, None, None]:
        if not self._base_dir:
            raise RuntimeError(
                "FileComputeLogManager has no base_dir: configure one or use it in an instance"
            )
        outpath = self.get_captured_local_path(log_key, IO_TYPE_EXTENSION[ComputeIOType.STDOUT])
        errpath = self.get_captured_local_path(log_key, IO_TYPE_EXTENSION[ComputeIOType.STDERR])
        ensure_file(outpath)
        ensure_file(errpath)
        stderr = sys.stderr
        terminal = _dup_stream(stderr) if self._echo_stderr else None
        try:
            with redirect_to_file(sys.stdout, outpath), redirect_to_file(stderr, errpath):
                if terminal is not None:
                    sys.stderr = _Echo(stderr, terminal)
                try:
                    yield CapturedLogContext(log_key)
                finally:
                    if isinstance(sys.stderr, _Echo):
                        sys.stderr = stderr
        finally:
            if terminal is not None:
                terminal.close()
        # The marker tells the UI (and subscriptions) that the capture is complete, as the parent's.
        touch_file(self.complete_artifact_path(log_key))


def _dup_stream(stream: TextIO) -> TextIO | None:
    """A text stream on a copy of the stream's descriptor, taken before the descriptor is redirected."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):  # replaced by a test runner, closed
        return None
    return open(os.dup(fd), "w", encoding=getattr(stream, "encoding", None) or "utf-8", errors="replace")


class _Echo:
    """sys.stderr during a capture: each write goes to the real sys.stderr (descriptor 2, now the
    captured file) and to the terminal. Anything else (fileno, isatty, encoding) is the real stream's."""

    def __init__(self, captured: TextIO, terminal: TextIO) -> None:
        self._captured = captured
        self._terminal: TextIO | None = terminal

    def write(self, text: str) -> int:
        written = self._captured.write(text)
        if self._terminal is not None:
            try:
                self._terminal.write(text)
                self._terminal.flush()  # a line at a time, as the mirror showed it
            except (OSError, ValueError):  # the terminal is gone (its reader exited): the file still has it
                self._terminal = None
        return written

    def writelines(self, lines: Any) -> None:  # noqa: ANN401 - any iterable of str, as TextIO's
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        self._captured.flush()

    def __getattr__(self, name: str) -> Any:  # noqa: ANN401 - whatever the wrapped stream has
        return getattr(self._captured, name)
