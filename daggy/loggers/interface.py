"""The logger (state store) seam.

The runner writes through the ``record_*``/``create_run``/``add_tasks`` calls and the HTTP
API reads through the ``get_*``/``list_runs`` calls.  Writes are fire-and-forget: a logger
keeps them in call order and may batch them; ``flush()`` fires once everything written so
far is stored.  Reads return Deferreds (a remote store answers asynchronously) and fail with
:class:`~daggy.errors.UnknownRun` / :class:`~daggy.errors.UnknownTask`.

Every read returns plain JSON-ready dicts; the shapes are documented in docs/api.md.
``now`` arguments are POSIX seconds from the daemon's clock.
"""

from __future__ import annotations

from typing import Any, Iterable, Protocol

from daggy.model import Attempt, State, TaskDef


class RunLogger(Protocol):
    def create_run(self, tag: str | None, parameters: dict[str, list[str]], now: float) -> Any:
        """Allocate a run ID and record the run as QUEUED.  Deferred[int]."""

    def add_tasks(self, run_id: int, tasks: Iterable[TaskDef], now: float) -> None:
        """Record new tasks (at submit, or produced by a generator), each QUEUED."""

    def record_run_state(self, run_id: int, state: State, now: float) -> None: ...

    def record_task_state(self, run_id: int, task_name: str, state: State, now: float) -> None: ...

    def record_attempt(self, run_id: int, task_name: str, attempt: Attempt) -> None: ...

    def flush(self) -> Any:
        """Deferred firing once every write made so far is stored."""

    def close(self) -> Any:
        """Flush and release resources.  Deferred."""

    # -- reads (all Deferreds) --------------------------------------------------------
    def list_runs(self, all_runs: bool = False, tag: str | None = None,
                  state: State | None = None) -> Any:
        """Deferred[list of {runID, tag, state, startTime, lastUpdate, taskCounts}]; without
        ``all_runs`` only runs that are not finished."""

    def get_run(self, run_id: int) -> Any:
        """Deferred[{runID, tag, state, parameters, stateChanges, tasks, taskStates,
        taskAttempts, taskStateChanges, startTime, lastUpdate, taskCounts}]."""

    def get_run_state(self, run_id: int) -> Any:
        """Deferred[{runID, state, taskCounts}]."""

    def get_task(self, run_id: int, task_name: str) -> Any:
        """Deferred[{runID, name, definition, state, attempts, stateChanges}]."""

    def get_task_state(self, run_id: int, task_name: str) -> Any:
        """Deferred[{runID, name, state}]."""
