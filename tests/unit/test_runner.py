"""RunManager on a fake clock and a fake executor: dispatch, retries, kill, resume, shutdown."""

from __future__ import annotations

import json

import pytest
from twisted.internet.defer import maybeDeferred
from twisted.internet.task import Clock

from daggy.errors import (
    BadRequest,
    Conflict,
    SpecInvalid,
    TooManyRequests,
    Unavailable,
    UnknownRun,
    UnknownTask,
)
from daggy.limits import RunLimits
from daggy.loggers.memory import MemoryStore
from daggy.model import State
from daggy.runner import RunManager
from daggy.testing.executor import FakeExecutor


def job(*command):
    return {"command": list(command) or ["/bin/true"]}


def result_of(deferred):
    results = []
    deferred.addBoth(results.append)
    assert results, "Deferred has not fired"
    if hasattr(results[0], "raiseException"):
        results[0].raiseException()
    return results[0]


class Harness:
    def __init__(self, capacity=2, max_active_runs=50, limits=RunLimits(), **kwargs):
        self.clock = Clock()
        self.executor = FakeExecutor(self.clock, capacity=capacity, **kwargs)
        self.store = MemoryStore()
        self.runner = RunManager(self.clock, self.executor, self.store,
                                 max_active_runs=max_active_runs, limits=limits)

    def submit(self, spec):
        run_id = result_of(self.runner.submit(spec))
        self.clock.advance(0)
        return run_id

    def turn(self):
        self.clock.advance(0)

    def running_names(self):
        return [e.task_name for e in self.executor.running]

    def finish(self, name, rc=0, **kwargs):
        self.executor.find(name).finish(rc=rc, **kwargs)
        self.turn()

    def run(self, run_id):
        return result_of(self.store.get_run(run_id))

    def task_states(self, run_id):
        return self.run(run_id)["taskStates"]

    def run_state(self, run_id):
        return self.run(run_id)["state"]


@pytest.fixture
def harness():
    h = Harness()
    yield h
    assert h.clock.getDelayedCalls() == [], "the runner left timers behind"


def test_diamond_runs_in_dependency_order(harness):
    """A diamond runs its root first, both middles together, the sink last, then COMPLETED."""
    run_id = harness.submit({"tasks": {
        "a": {"job": job(), "children": ["b", "c"]},
        "b": {"job": job()}, "c": {"job": job(), "children": ["d"]},
        "d": {"job": job(), "parents": ["b"]}}})
    assert harness.running_names() == ["a"]
    harness.finish("a")
    assert sorted(harness.running_names()) == ["b", "c"]
    harness.finish("b")
    assert harness.running_names() == ["c"]
    harness.finish("c")
    assert harness.running_names() == ["d"]
    harness.finish("d")
    assert harness.run_state(run_id) == "COMPLETED"
    states = [c["state"] for c in harness.run(run_id)["stateChanges"]]
    assert states == ["QUEUED", "RUNNING", "COMPLETED"]
    assert result_of(harness.runner.run_done(run_id)) is State.COMPLETED


def test_capacity_limits_attempts_in_flight(harness):
    """No more attempts run at once than the executor's capacity."""
    harness.submit({"tasks": {f"t{i}": {"job": job()} for i in range(5)}})
    assert len(harness.running_names()) == 2
    harness.finish("t0")
    assert len(harness.running_names()) == 2
    assert [e.task_name for e in harness.executor.started] == ["t0", "t1", "t2"]


def test_retry_waits_the_interval_then_errors_and_isolates(harness):
    """A failing task is retried after its interval, then ERRORED; its child stays QUEUED
    while an independent branch completes; the run ends ERRORED."""
    run_id = harness.submit({"tasks": {
        "flaky": {"job": job(), "maxRetries": 1, "retryIntervalSeconds": 5,
                  "children": ["after"]},
        "after": {"job": job()}, "other": {"job": job()}}})
    harness.finish("flaky", rc=1)
    assert harness.task_states(run_id)["flaky"] == "RETRY"
    harness.clock.advance(4.9)
    assert "flaky" not in harness.running_names()
    harness.clock.advance(0.1)
    harness.turn()
    assert "flaky" in harness.running_names()
    harness.finish("other")
    harness.finish("flaky", rc=2)
    states = harness.task_states(run_id)
    assert states == {"flaky": "ERRORED", "after": "QUEUED", "other": "COMPLETED"}
    assert harness.run_state(run_id) == "ERRORED"
    attempts = harness.run(run_id)["taskAttempts"]["flaky"]
    assert [a["rc"] for a in attempts] == [1, 2]
    history = [c["state"] for c in harness.run(run_id)["taskStateChanges"]["flaky"]]
    assert history == ["QUEUED", "RUNNING", "RETRY", "QUEUED", "RUNNING", "ERRORED"]


def test_expanded_parent_group_blocks_child_until_all_instances_complete(harness):
    """A child of an expanded task waits for every instance."""
    harness.executor.capacity = None
    run_id = harness.submit({"parameters": {"D": ["1", "2", "3"]}, "tasks": {
        "a": {"job": job("echo", "{{D}}"), "children": ["b"]}, "b": {"job": job()}}})
    assert sorted(harness.running_names()) == ["a[D=1]", "a[D=2]", "a[D=3]"]
    assert harness.executor.find("a[D=2]").job["command"] == ["echo", "2"]
    harness.finish("a[D=1]")
    harness.finish("a[D=3]")
    assert "b" not in harness.running_names()
    harness.finish("a[D=2]")
    assert harness.running_names() == ["b"]
    harness.finish("b")
    assert harness.run_state(run_id) == "COMPLETED"


def test_kill_run_kills_running_and_never_starts_queued(harness):
    """DELETE semantics: running tasks are killed, queued ones never start, run KILLED."""
    run_id = harness.submit({"tasks": {f"t{i}": {"job": job()} for i in range(4)}})
    harness.runner.kill_run(run_id)
    harness.turn()
    assert harness.running_names() == []
    assert len(harness.executor.started) == 2
    states = harness.task_states(run_id)
    assert sorted(states.values()) == ["KILLED", "KILLED", "QUEUED", "QUEUED"]
    assert harness.run_state(run_id) == "KILLED"
    with pytest.raises(Conflict):
        harness.runner.kill_run(run_id)


def test_resume_keeps_completed_and_reruns_the_rest(harness):
    """Resuming an ERRORED run re-runs only what did not complete, with fresh retries."""
    run_id = harness.submit({"tasks": {
        "a": {"job": job(), "children": ["b"]}, "b": {"job": job(), "maxRetries": 1}}})
    with pytest.raises(Conflict):
        harness.runner.resume_run(run_id)  # still running
    harness.finish("a")
    harness.finish("b", rc=1)
    harness.clock.advance(0)
    harness.turn()
    harness.finish("b", rc=1)
    assert harness.run_state(run_id) == "ERRORED"
    harness.runner.resume_run(run_id)
    harness.turn()
    assert harness.running_names() == ["b"]
    with pytest.raises(Conflict):
        harness.runner.resume_run(run_id)
    harness.finish("b", rc=1)
    harness.turn()
    assert harness.running_names() == ["b"], "the retry budget was not renewed"
    harness.finish("b")
    assert harness.run_state(run_id) == "COMPLETED"
    assert len(harness.run(run_id)["taskAttempts"]["a"]) == 1


def test_task_operator_actions(harness):
    """Task PATCH: COMPLETED unblocks children, QUEUED re-runs and resumes, KILLED kills."""
    run_id = harness.submit({"tasks": {
        "a": {"job": job(), "children": ["b"]}, "b": {"job": job()},
        "c": {"job": job()}}})
    harness.runner.set_task_state(run_id, "c", State.KILLED)
    harness.turn()
    harness.finish("a", rc=1)
    assert harness.run_state(run_id) == "ERRORED"
    harness.runner.set_task_state(run_id, "a", State.COMPLETED)
    harness.turn()
    assert harness.running_names() == ["b"]
    with pytest.raises(Conflict):
        harness.runner.set_task_state(run_id, "b", State.COMPLETED)
    harness.finish("b")
    assert harness.task_states(run_id)["c"] == "KILLED"
    harness.runner.set_task_state(run_id, "c", State.QUEUED)
    harness.turn()
    harness.finish("c")
    assert harness.run_state(run_id) == "COMPLETED"
    with pytest.raises(UnknownTask):
        harness.runner.set_task_state(run_id, "nope", State.QUEUED)
    with pytest.raises(UnknownRun):
        result_of(harness.runner.set_task_state(99, "a", State.QUEUED))
    with pytest.raises(BadRequest):
        harness.runner.set_task_state(run_id, "a", State.RUNNING)


def test_generator_adds_tasks_before_its_children(harness):
    """A generator's JSON stdout adds tasks that run before the generator's children."""
    run_id = harness.submit({"parameters": {"X": ["1", "2"]}, "tasks": {
        "gen": {"job": job(), "isGenerator": True, "children": ["last"]},
        "last": {"job": job()}}})
    output = json.dumps({"made": {"job": job("echo", "{{X}}")}})
    harness.finish("gen", output=output)
    assert sorted(harness.running_names()) == ["made[X=1]", "made[X=2]"]
    harness.finish("made[X=1]")
    harness.finish("made[X=2]")
    assert harness.running_names() == ["last"]
    harness.finish("last")
    assert harness.run_state(run_id) == "COMPLETED"
    tasks = harness.run(run_id)["tasks"]
    assert tasks["made[X=1]"]["parents"] == ["gen"]


def test_generator_with_bad_output_fails_with_reason_and_retries(harness):
    """Bad generator output fails the attempt with the reason in executorLog; retries apply."""
    run_id = harness.submit({"tasks": {
        "gen": {"job": job(), "isGenerator": True, "maxRetries": 1, "children": ["last"]},
        "last": {"job": job()}}})
    harness.finish("gen", output="hello world")
    harness.turn()
    harness.finish("gen", output=json.dumps({"x": {"job": {"command": []}}}))
    attempts = harness.run(run_id)["taskAttempts"]["gen"]
    assert "not valid JSON" in attempts[0]["executorLog"]
    assert "output.x.job.command" in attempts[1]["executorLog"]
    assert [a["succeeded"] for a in attempts] == [False, False]
    assert harness.task_states(run_id) == {"gen": "ERRORED", "last": "QUEUED"}


def generator_run(harness):
    return harness.submit({"parameters": {"X": ["1", "2", "3"]}, "tasks": {
        "gen": {"job": job(), "isGenerator": True, "children": ["last"]},
        "last": {"job": job()}}})


def test_generator_output_over_the_byte_limit_is_refused_unparsed():
    """Output larger than max_generator_output_bytes fails the attempt and adds no task."""
    h = Harness(limits=RunLimits(max_generator_output_bytes=100))
    run_id = generator_run(h)
    h.finish("gen", output=json.dumps({"made": {"job": job("x" * 200)}}))
    attempt = h.run(run_id)["taskAttempts"]["gen"][0]
    assert attempt["succeeded"] is False
    assert "limit 100" in attempt["executorLog"]
    assert sorted(h.task_states(run_id)) == ["gen", "last"]


def test_truncated_generator_output_is_refused():
    """Output the executor cut short is never taken for a complete task list."""
    h = Harness()
    run_id = generator_run(h)
    h.finish("gen", output=json.dumps({"made": {"job": job()}}), output_truncated=True)
    attempt = h.run(run_id)["taskAttempts"]["gen"][0]
    assert "cut at the executor's output limit" in attempt["executorLog"]
    assert h.task_states(run_id) == {"gen": "ERRORED", "last": "QUEUED"}


def test_generated_tasks_are_bounded_per_generator_and_per_run():
    """A generator may add at most max_generated_tasks, and never grow the run past
    max_tasks_per_run; the instance count is checked before expanding."""
    per_generator = Harness(limits=RunLimits(max_generated_tasks=2))
    run_id = generator_run(per_generator)
    per_generator.finish("gen", output=json.dumps({"made": {"job": job("{{X}}")}}))
    log = per_generator.run(run_id)["taskAttempts"]["gen"][0]["executorLog"]
    assert "would make 3 tasks (limit 2)" in log
    per_run = Harness(limits=RunLimits(max_tasks_per_run=4))
    run_id = generator_run(per_run)
    per_run.finish("gen", output=json.dumps({"made": {"job": job("{{X}}")}}))
    log = per_run.run(run_id)["taskAttempts"]["gen"][0]["executorLog"]
    assert "would make 3 tasks (limit 2)" in log
    fits = Harness(limits=RunLimits(max_tasks_per_run=5))
    run_id = generator_run(fits)
    fits.finish("gen", output=json.dumps({"made": {"job": job("{{X}}")}}))
    assert sorted(fits.task_states(run_id)) == ["gen", "last", "made[X=1]", "made[X=2]",
                                                 "made[X=3]"]


def test_deeply_nested_generator_output_fails_cleanly():
    """Output nested beyond what a JSON decoder can take fails the attempt, no crash."""
    h = Harness()
    run_id = generator_run(h)
    h.finish("gen", output="[" * 100_000 + "]" * 100_000)
    log = h.run(run_id)["taskAttempts"]["gen"][0]["executorLog"]
    assert "not valid JSON" in log


def test_queued_runs_are_bounded():
    """Beyond max_queued_runs waiting runs, a submission is refused with 429 and nothing
    is recorded; it is accepted again once a waiting run starts."""
    h = Harness(max_active_runs=1, limits=RunLimits(max_queued_runs=2))
    spec = {"tasks": {"a": {"job": job()}}}
    ids = [h.submit(spec) for _ in range(3)]  # one active, two waiting
    with pytest.raises(TooManyRequests) as refused:
        h.submit(spec)
    assert refused.value.status == 429
    assert "limit 2" in refused.value.message
    assert len(result_of(h.store.list_runs(all_runs=True))) == 3
    h.finish("a")
    assert h.run_state(ids[0]) == "COMPLETED"
    h.submit(spec)


def test_job_nesting_is_bounded():
    """A job nested deeper than max_job_depth is refused with its path."""
    h = Harness(limits=RunLimits(max_job_depth=3))
    deep = {"command": ["x"], "environment": {"A": [["too deep"]]}}
    with pytest.raises(SpecInvalid) as refused:
        h.submit({"tasks": {"a": {"job": deep}}})
    assert refused.value.errors == ["tasks.a.job: nested deeper than 3 levels"]


def test_dag_threads_queue_runs(harness):
    """Runs beyond max_active_runs wait QUEUED and start when a slot frees."""
    h = Harness(max_active_runs=1)
    first = h.submit({"tasks": {"a": {"job": job()}}})
    second = h.submit({"tasks": {"b": {"job": job()}}})
    assert h.run_state(second) == "QUEUED"
    assert h.running_names() == ["a"]
    h.finish("a")
    assert h.running_names() == ["b"]
    h.finish("b")
    assert [h.run_state(first), h.run_state(second)] == ["COMPLETED", "COMPLETED"]


def test_invalid_spec_raises_before_anything_is_recorded(harness):
    """A bad spec fails submit with every error and records no run."""
    with pytest.raises(SpecInvalid) as caught:
        result_of(harness.runner.submit({"tasks": {"a": {"job": job(), "parent": ["b"]}}}))
    assert "tasks.a: unknown task attribute 'parent'" in caught.value.errors[0]
    assert result_of(harness.store.list_runs(all_runs=True)) == []


def test_stop_kills_running_requeues_them_and_refuses_new_runs(harness):
    """Shutdown kills running attempts, records them, leaves the tasks QUEUED to re-run."""
    run_id = harness.submit({"tasks": {"a": {"job": job()}, "b": {"job": job()}}})
    result_of(harness.runner.stop())
    states = harness.task_states(run_id)
    assert states == {"a": "QUEUED", "b": "QUEUED"}
    attempts = harness.run(run_id)["taskAttempts"]
    assert attempts["a"][0]["killed"] and "shutting down" in attempts["a"][0]["executorLog"]
    with pytest.raises(Unavailable):
        result_of(harness.runner.submit({"tasks": {"a": {"job": job()}}}))


def test_large_wide_run_completes_with_unlimited_capacity():
    """10,000 independent tasks on an executor without a cap all complete."""
    h = Harness(capacity=None)
    run_id = h.submit({"tasks": {f"t{i}": {"job": job()} for i in range(10_000)}})
    while h.executor.running:
        for execution in list(h.executor.running):
            execution.finish()
        h.turn()
    assert h.run_state(run_id) == "COMPLETED"
    assert h.run(run_id)["taskCounts"]["COMPLETED"] == 10_000


def test_a_bug_recording_an_attempt_is_logged_and_does_not_hang_shutdown(
        harness, no_logged_errors):
    """If recording the attempts killed at shutdown raises, the error is logged and stop()
    still completes once the last running attempt has ended."""
    harness.submit({"tasks": {"a": {"job": job()}, "b": {"job": job()}}})
    assert sorted(harness.running_names()) == ["a", "b"]

    def broken(*args):
        raise TypeError("cannot record this attempt")

    harness.store.record_attempt = broken
    stopped = harness.runner.stop()
    harness.turn()
    assert harness.running_names() == []
    result_of(stopped)
    assert any("internal error in run" in str(e.get("log_format", "")) for e in no_logged_errors)
    no_logged_errors.clear()


def restarted(harness, reattachable=()):
    """A new RunManager on the same store, as after a daemon restart, recovered."""
    after = Harness()
    after.clock.advance(harness.clock.seconds())
    after.store = harness.store
    after.executor.reattachable = set(reattachable)
    after.runner = RunManager(after.clock, after.executor, after.store)
    recovered = result_of(after.runner.recover())
    after.turn()
    return after, recovered


def test_recovery_reruns_interrupted_keeps_completed_and_rearms_retries(harness):
    """After a restart: COMPLETED stays, a RUNNING task's attempt is closed and the task
    runs again without using a retry, a RETRY timer fires after what is left of it."""
    run_id = harness.submit({"tasks": {
        "a": {"job": job(), "children": ["b"]}, "b": {"job": job()},
        "c": {"job": job(), "maxRetries": 1, "retryIntervalSeconds": 10}}})
    harness.finish("a")
    harness.finish("c", rc=1)
    harness.clock.advance(4)
    assert harness.running_names() == ["b"]
    after, recovered = restarted(harness)
    assert recovered == [run_id]
    assert after.running_names() == ["b"]
    attempts = after.run(run_id)["taskAttempts"]
    assert "daggyd restarted" in attempts["b"][0]["executorLog"]
    assert len(attempts["a"]) == 1
    after.clock.advance(5.9)
    after.turn()
    assert "c" not in after.running_names()
    after.clock.advance(0.1)
    after.turn()
    assert sorted(after.running_names()) == ["b", "c"]
    after.finish("b")
    after.finish("c")
    assert after.run_state(run_id) == "COMPLETED"
    assert [e.task_name for e in after.executor.started] == ["b", "c"]
    harness.runner.kill_run(run_id)  # let the pre-restart runner's timers go
    harness.turn()


def test_recovery_reattaches_when_the_executor_can(harness):
    """A RUNNING attempt the executor finds again is watched, not re-run."""
    run_id = harness.submit({"tasks": {"a": {"job": job()}}})
    after, _ = restarted(harness, reattachable={"a"})
    assert after.executor.started == []
    after.finish("a")
    assert after.run_state(run_id) == "COMPLETED"
    assert len(after.run(run_id)["taskAttempts"]["a"]) == 1
    harness.runner.kill_run(run_id)
    harness.turn()


def test_recovery_does_not_mistake_an_earlier_attempts_state_for_the_running_one():
    """A retried task whose new attempt died with the daemon before reporting its executor
    state is re-attached with an empty state and the earlier attempts' states, not with the
    state of the attempt that already ended."""
    before = Harness(reports_started=True)
    run_id = before.submit({"tasks": {"a": {"job": job(), "maxRetries": 1}}})
    before.executor.find("a").report_started({"jobId": "41"})
    before.finish("a", rc=1)
    before.clock.advance(1)
    before.turn()
    assert before.running_names() == ["a"]  # the retry, which never reports its state
    after = Harness(reports_started=True)
    after.clock.advance(before.clock.seconds())
    after.store = before.store
    after.executor.reattachable = {"a"}
    after.runner = RunManager(after.clock, after.executor, after.store)
    result_of(after.runner.recover())
    [reattached] = after.executor.running
    assert (reattached.executor_state, reattached.earlier_states) == ({}, [{"jobId": "41"}])
    reattached.report_started({"jobId": "42"})
    after.finish("a")
    attempts = after.run(run_id)["taskAttempts"]["a"]
    assert [a["executorState"] for a in attempts] == [{"jobId": "41"}, {"jobId": "42"}]
    assert after.run_state(run_id) == "COMPLETED"
    before.runner.kill_run(run_id)
    before.turn()


def test_recovery_keeps_used_retries_and_generated_wiring(harness):
    """Recovered tasks keep the retries they used, and generated tasks still run before
    their generator's children."""
    run_id = harness.submit({"tasks": {
        "gen": {"job": job(), "isGenerator": True, "children": ["last"]},
        "last": {"job": job()},
        "flaky": {"job": job(), "maxRetries": 1}}})
    harness.finish("gen", output=json.dumps({"made": {"job": job()},
                                             "more": {"job": job(), "parents": ["made"]}}))
    harness.finish("flaky", rc=1)
    harness.turn()
    assert sorted(harness.running_names()) == ["flaky", "made"]
    after, _ = restarted(harness)
    assert sorted(after.running_names()) == ["flaky", "made"]
    after.finish("flaky", rc=1)
    assert after.task_states(run_id)["flaky"] == "ERRORED"
    after.finish("made")
    assert after.running_names() == ["more"]
    after.finish("more")
    assert after.running_names() == ["last"]
    after.finish("last")
    assert after.run_state(run_id) == "ERRORED"
    harness.runner.kill_run(run_id)
    harness.turn()


def test_a_finished_run_of_an_earlier_daemon_can_be_resumed(harness):
    """A run finished before a restart is loaded from the logger when an operator acts on
    it: resuming re-runs what did not complete; killing it again is a conflict."""
    run_id = harness.submit({"tasks": {
        "a": {"job": job(), "children": ["b"]}, "b": {"job": job()}}})
    harness.finish("a")
    harness.finish("b", rc=1)
    after, recovered = restarted(harness)
    assert recovered == []
    with pytest.raises(Conflict):
        result_of(maybeDeferred(after.runner.kill_run, run_id))
    result_of(maybeDeferred(after.runner.resume_run, run_id))
    after.turn()
    assert after.running_names() == ["b"]
    after.finish("b")
    assert after.run_state(run_id) == "COMPLETED"
    assert len(after.run(run_id)["taskAttempts"]["a"]) == 1
    with pytest.raises(UnknownRun):
        result_of(maybeDeferred(after.runner.resume_run, run_id + 1))
