"""The logger (state store) seam.

The runner writes through the ``record_*``/``create_run``/``add_tasks`` calls and the HTTP
API reads through the ``get_*``/``list_runs`` calls.  Writes are fire-and-forget: a logger
keeps them in call order and may batch them; ``flush()`` fires once everything written so
far is stored.  Reads return Deferreds (a remote store answers asynchronously) and fail with
:class:`~daggy.errors.UnknownRun` / :class:`~daggy.errors.UnknownTask`.

Every read returns plain JSON-ready dicts; the shapes are documented in docs/api.md.
``now`` arguments are POSIX seconds from the daemon's clock.

A logger backed by a remote store (RedisLogger) connects in ``start()`` and may be unable to
serve for a while: ``status()`` says why (``/ready`` answers 503 with it) and ``when_ready()``
fires once it can serve.  After a daemon restart the runner resumes what
``load_unfinished_runs()`` returns.
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

    def record_executor_state(self, run_id: int, task_name: str, state: dict[str, Any],
                              now: float) -> None:
        """Keep what the executor needs to find the task's running attempt again after a
        restart (a pid, a Slurm job id): one JSON object per task, replaced by each attempt's.
        Shown as ``taskExecutorStates[name]`` by ``get_run`` and ``executorState`` by
        ``get_task``."""

    # -- lifecycle --------------------------------------------------------------------
    def start(self) -> None:
        """Begin connecting to the store, if there is one (retrying until it answers).
        Called once, when the daemon starts; never blocks and never raises."""

    def when_ready(self) -> Any:
        """Deferred[None] firing once the logger can serve: connected to its store, with
        the store checked.  Fires at once when it is ready already."""

    def status(self) -> tuple[bool, str]:
        """``(ready, reason)``: whether the logger can serve now, and if not, why (one line
        for people, e.g. ``cannot reach Redis at localhost:6379: Connection refused``)."""

    def load_unfinished_runs(self) -> Any:
        """Deferred[list of get_run documents] of every run that is not finished (QUEUED or
        RUNNING), by run ID, each with ``taskExecutorStates``.  A durable logger reads them
        from its store (and from then on holds them like runs it created)."""

    def load_run(self, run_id: int) -> Any:
        """Deferred[get_run document] of a run, held from then on like a run this daemon
        created, so that it can be written again (an operator resuming a finished run of an
        earlier daemon).  Fails with UnknownRun, or Unavailable when the store is away."""

    def flush(self) -> Any:
        """Deferred firing once every write made so far is stored.  A remote store that
        cannot be reached fails it with :class:`~daggy.errors.Unavailable` (the writes stay
        queued)."""

    def close(self) -> Any:
        """Flush and release resources.  Deferred."""

    # -- reads (all Deferreds) --------------------------------------------------------
    def list_runs(self, all_runs: bool = False, tag: str | None = None,
                  state: State | None = None) -> Any:
        """Deferred[list of {runID, tag, state, startTime, lastUpdate, taskCounts}]; without
        ``all_runs`` only runs that are not finished."""

    def get_run(self, run_id: int) -> Any:
        """Deferred[{runID, tag, state, parameters, stateChanges, tasks, taskStates,
        taskAttempts, taskStateChanges, taskExecutorStates, startTime, lastUpdate,
        taskCounts}]; ``tasks`` (and every per-task map) in the order tasks were added."""

    def get_run_state(self, run_id: int) -> Any:
        """Deferred[{runID, state, taskCounts}]."""

    def get_task(self, run_id: int, task_name: str) -> Any:
        """Deferred[{runID, name, definition, state, attempts, stateChanges,
        executorState}] (``executorState`` is ``None`` until one is recorded)."""

    def get_task_state(self, run_id: int, task_name: str) -> Any:
        """Deferred[{runID, name, state}]."""
