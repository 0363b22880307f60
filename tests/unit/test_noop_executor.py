"""NoopTaskExecutor: every attempt succeeds at once and nothing runs."""

from __future__ import annotations

from twisted.internet.task import Clock

from daggy.executors.noop import NoopTaskExecutor
from daggy.testing import result_of


def test_noop_has_no_capacity_limit():
    """The noop executor imposes no concurrency limit and templates the usual fields."""
    executor = NoopTaskExecutor(Clock())
    assert executor.capacity is None
    assert executor.templatable_fields == ("command", "environment", "workDir")


def test_noop_accepts_any_object():
    """Any job object is valid, whatever its fields."""
    executor = NoopTaskExecutor(Clock())
    assert executor.validate_job({}, "tasks.a.job") == []
    assert executor.validate_job({"anything": [1, 2], "command": 3}, "tasks.a.job") == []


def test_noop_rejects_non_objects():
    """A job that is not an object is rejected with its path."""
    executor = NoopTaskExecutor(Clock())
    assert executor.validate_job("echo", "tasks.a.job") == ["tasks.a.job: must be an object"]


def test_noop_start_succeeds_at_once():
    """start() returns an execution whose result already fired: rc 0, succeeded, 'noop'."""
    clock = Clock()
    clock.advance(42)
    execution = NoopTaskExecutor(clock).start(7, "a", {"command": ["rm", "-rf", "/"]})
    attempt = result_of(execution.result)
    assert (attempt.rc, attempt.succeeded, attempt.executor_log) == (0, True, "noop")
    assert attempt.start_time == attempt.stop_time == 42
    assert not (attempt.killed or attempt.timed_out)


def test_noop_kill_and_stop_are_immediate():
    """Killing a noop execution does nothing and stop() has already fired."""
    executor = NoopTaskExecutor(Clock())
    execution = executor.start(1, "a", {})
    execution.kill("user request")
    assert result_of(execution.result).succeeded
    assert result_of(executor.stop()) is None
