# -*- test-case-name: tests.unit.test_noop_executor -*-
"""The noop executor: every attempt succeeds at once without running anything.

Useful to exercise a DAG's shape (ordering, expansion, retries of nothing) and in tests.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, succeed

from daggy.executors._process import FinishedExecution
from daggy.model import Attempt


class NoopTaskExecutor:
    """Accepts any job object and reports success (``rc`` 0, ``executorLog`` ``noop``)."""

    templatable_fields = ("command", "environment", "workDir")

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor
        self.capacity: int | None = None

    def validate_job(self, job: Any, path: str) -> list[str]:
        """Only the shape is checked: a job must be a JSON object."""
        if not isinstance(job, dict):
            return [f"{path}: must be an object"]
        return []

    def start(self, run_id: int, task_name: str, job: dict[str, Any]) -> FinishedExecution:
        """Return an execution whose result has already fired with a successful attempt."""
        now = self._reactor.seconds()
        return FinishedExecution(
            Attempt(start_time=now, stop_time=now, rc=0, succeeded=True, executor_log="noop")
        )

    def reattach(self, run_id: int, task_name: str, job: dict[str, Any],
                 executor_state: dict[str, Any],
                 earlier_states: list[dict[str, Any]] = ()) -> None:
        """Nothing ever runs, so there is nothing to find again."""
        return None

    def stop(self) -> Deferred[None]:
        """Nothing ever runs, so stopping is immediate."""
        return succeed(None)
