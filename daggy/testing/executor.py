"""A fake executor whose attempts the test ends explicitly."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer

from daggy.model import Attempt


class FakeExecution:
    def __init__(self, executor: "FakeExecutor", run_id: int, task_name: str, job: dict):
        self._executor = executor
        self.run_id = run_id
        self.task_name = task_name
        self.job = job
        self.result: defer.Deferred = defer.Deferred()
        self.kill_reasons: list[str] = []
        self.start_time = executor.clock.seconds()
        if executor.reports_started:
            #: Fired by :meth:`report_started` with the executor state the runner records.
            self.started: defer.Deferred = defer.Deferred()

    def report_started(self, executor_state: dict) -> None:
        """Report what a restarted daemon needs to find this attempt again."""
        self.executor_state = executor_state
        self.started.callback(executor_state)

    def finish(self, rc: int = 0, output: str = "", error: str = "", killed: bool = False,
               timed_out: bool = False, log: str | None = None,
               output_truncated: bool = False) -> None:
        """End the attempt as the test says."""
        self._executor.running.remove(self)
        now = self._executor.clock.seconds()
        self.result.callback(Attempt(
            start_time=self.start_time, stop_time=now, rc=rc,
            succeeded=rc == 0 and not killed and not timed_out, output_log=output,
            error_log=error, executor_log=log if log is not None else f"exited with code {rc}",
            killed=killed, timed_out=timed_out, output_truncated=output_truncated,
            executor_state=dict(getattr(self, "executor_state", None) or {})))

    def kill(self, reason: str) -> None:
        self.kill_reasons.append(reason)
        if self in self._executor.running and self._executor.kill_ends_attempt:
            self.finish(rc=-15, killed=True, log=f"killed: {reason}")


class FakeExecutor:
    """Records started attempts in ``running`` (in start order) and ``started``."""

    templatable_fields = ("command", "environment", "workDir")

    def __init__(self, clock, capacity: int | None = 2, kill_ends_attempt: bool = True,
                 reports_started: bool = False):
        self.clock = clock
        #: Whether executions have a ``started`` Deferred (fired by ``report_started``).
        self.reports_started = reports_started
        self.capacity = capacity
        self.kill_ends_attempt = kill_ends_attempt
        self.running: list[FakeExecution] = []
        self.started: list[FakeExecution] = []
        self.stopped = False
        self.reattachable: set[str] = set()

    def validate_job(self, job: Any, path: str) -> list[str]:
        if not isinstance(job, dict):
            return [f"{path}: must be an object"]
        command = job.get("command")
        if not isinstance(command, list) or not command:
            return [f"{path}.command: must be a non-empty list of strings"]
        return [f"{path}.command[{i}]: must be a string"
                for i, item in enumerate(command) if not isinstance(item, str)]

    def start(self, run_id: int, task_name: str, job: dict) -> FakeExecution:
        execution = FakeExecution(self, run_id, task_name, job)
        self.running.append(execution)
        self.started.append(execution)
        return execution

    def reattach(self, run_id: int, task_name: str, job: dict, executor_state: dict,
                 earlier_states: list[dict] = ()):
        """Finds again the attempts listed in ``reattachable`` (by task name)."""
        if task_name not in self.reattachable:
            return None
        execution = FakeExecution(self, run_id, task_name, job)
        execution.executor_state = executor_state
        execution.earlier_states = list(earlier_states)
        self.running.append(execution)
        return execution

    def find(self, task_name: str) -> FakeExecution:
        return next(e for e in self.running if e.task_name == task_name)

    def stop(self) -> defer.Deferred:
        self.stopped = True
        for execution in list(self.running):
            execution.kill("daemon shutting down")
        return defer.succeed(None)
