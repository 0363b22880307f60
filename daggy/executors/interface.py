"""The executor seam.

An executor knows one job format: it validates jobs, names the job fields in which
``{{NAME}}`` placeholders expand, and starts attempts.  It never touches DAG state: the
runner decides what runs, the executor only runs it.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol

from daggy.model import Attempt


class Execution(Protocol):
    """A started attempt.

    ``result`` fires with an :class:`~daggy.model.Attempt` however the attempt ended (exit,
    signal, timeout, kill, spawn failure); it errbacks only on a bug in the executor.
    """

    result: Any  # Deferred[Attempt]

    def kill(self, reason: str) -> None:
        """Stop the attempt; ``result`` then fires with ``killed=True`` and ``reason`` in
        ``executorLog``.  Killing a finished attempt does nothing."""

    # Optional: ``started``, a Deferred firing with the executor state (a JSON object, e.g.
    # a Slurm job id) that :meth:`TaskExecutor.reattach` needs to find this attempt again
    # after a daemon restart.  The runner records it through the logger.


class TaskExecutor(Protocol):
    #: Most attempts this executor runs at once; ``None`` means no limit of its own.
    capacity: int | None
    #: Job fields whose strings (also inside lists and as dict values) expand ``{{NAME}}``.
    templatable_fields: tuple[str, ...]

    def validate_job(self, job: Any, path: str) -> list[str]:
        """Return every problem with ``job`` as ``"<path>.<field>: <message>"`` strings
        (``path`` is e.g. ``tasks.pull.job``); an empty list means the job is valid."""

    def start(self, run_id: int, task_name: str, job: dict[str, Any]) -> Execution:
        """Start one attempt of an (already validated and expanded) job now."""

    def reattach(self, run_id: int, task_name: str, job: dict[str, Any],
                 executor_state: dict[str, Any],
                 earlier_states: list[dict[str, Any]] = ()) -> Execution | None:
        """After a daemon restart, find an attempt that was running when the daemon died
        (``executor_state`` is what its ``started`` Deferred recorded, or ``{}`` when the
        daemon died before it fired; ``earlier_states`` are the executor states of the task's
        earlier, finished attempts, so they are not mistaken for this one).  Return an
        Execution watching it (its result may even be known already), or None when the
        attempt cannot be found again: the runner then closes it and runs the task again."""

    def stop(self) -> Any:
        """Kill every running attempt (their results fire with ``killed=True``).

        Returns a Deferred that fires once every attempt has ended."""


ExecutorFactory = Callable[..., TaskExecutor]
