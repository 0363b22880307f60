"""The RunLogger contract, run against every logger.

Each entry of ``LOGGER_FACTORIES`` builds a :class:`Harness` around one logger.  The tests use
only the RunLogger protocol plus the harness, so a new logger joins the suite by adding a
factory.  The RedisLogger runs here on fakeredis (``daggy.testing.redis``) with a fake clock,
which ``settle`` drives; a durable logger's harness also has ``reopen``, which builds a new
logger on the same store (a daemon restart).

Reads follow ``flush()`` because a logger may batch writes.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import Any, Callable

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from daggy.errors import Conflict, UnknownRun, UnknownTask
from daggy.executors._process import decode_output
from daggy.jsonio import dumps_ascii_fallback
from daggy.loggers.interface import RunLogger
from daggy.loggers.memory import MemoryStore
from daggy.loggers.ostream import OStreamLogger
from daggy.model import Attempt, State, TaskDef, iso8601
from daggy.testing.redis import FakeRedisServer

T0 = 1_700_000_000.0


@dataclass
class Harness:
    """One logger under test plus the means to resolve its Deferreds."""

    logger: RunLogger
    #: Drive whatever the logger needs (fake clock, fake connection) until ``d`` has fired.
    settle: Callable[[Deferred], None]
    teardown: Callable[[], None] = lambda: None
    notes: dict[str, Any] = field(default_factory=dict)
    #: For durable loggers: a new, ready logger on the same store (as after a restart).
    reopen: Callable[[], RunLogger] | None = None

    def result(self, d: Deferred) -> Any:
        outcome = self._outcome(d)
        if isinstance(outcome, Failure):
            outcome.raiseException()
        return outcome

    def failure(self, d: Deferred) -> Failure:
        outcome = self._outcome(d)
        assert isinstance(outcome, Failure), f"expected a failure, got {outcome!r}"
        return outcome

    def read(self, method: str, *args: Any, **kwargs: Any) -> Any:
        self.result(self.logger.flush())
        return self.result(getattr(self.logger, method)(*args, **kwargs))

    def read_failure(self, method: str, *args: Any, **kwargs: Any) -> Failure:
        self.result(self.logger.flush())
        return self.failure(getattr(self.logger, method)(*args, **kwargs))

    def _outcome(self, d: Deferred) -> Any:
        self.settle(d)
        outcomes: list[Any] = []
        d.addBoth(outcomes.append)
        assert outcomes, f"{d!r} has not fired"
        return outcomes[0]


def make_memory_store(tmp_path) -> Harness:
    return Harness(MemoryStore(), settle=lambda d: None)


def make_ostream_logger(tmp_path) -> Harness:
    clock = Clock()
    logger = OStreamLogger(clock, str(tmp_path / "events.jsonl"))

    def settle(d: Deferred) -> None:
        clock.advance(0)

    def teardown() -> None:
        closed: list[Any] = []
        logger.close().addBoth(closed.append)
        assert closed == [None]
        assert clock.getDelayedCalls() == []

    return Harness(logger, settle=settle, teardown=teardown)


def settle_clock(clock: Clock, d: Deferred, limit: int = 1000) -> None:
    """Run ``clock``'s calls, earliest first, until ``d`` has fired (or nothing is left)."""
    for _ in range(limit):
        if d.called:
            return
        calls = clock.getDelayedCalls()
        if not calls:
            return
        clock.advance(max(0.0, min(call.getTime() for call in calls) - clock.seconds()))


def make_redis_logger(tmp_path) -> Harness:
    from daggy.loggers._txredis import TxRedisConnector
    from daggy.loggers.redis import RedisLogger

    clock = Clock()
    server = FakeRedisServer(clock)
    loggers: list[RedisLogger] = []

    def settle(d: Deferred) -> None:
        settle_clock(clock, d)

    def open_logger() -> RedisLogger:
        connector = TxRedisConnector(clock, server.endpoint(), "fakeredis:6379")
        logger = RedisLogger(clock, prefix="contract", connector=connector)
        loggers.append(logger)
        logger.start()
        settle(logger.when_ready())
        assert logger.status() == (True, "")
        return logger

    def teardown() -> None:
        for logger in loggers:
            closed = logger.close()
            settle(closed)
            assert closed.called
        assert clock.getDelayedCalls() == []

    return Harness(open_logger(), settle=settle, teardown=teardown, reopen=open_logger,
                   notes={"server": server, "clock": clock})


#: Every logger the contract runs against: ``(factory(tmp_path) -> Harness)``.
LOGGER_FACTORIES = [
    pytest.param(make_memory_store, id="memory"),
    pytest.param(make_ostream_logger, id="ostream"),
    pytest.param(make_redis_logger, id="redis"),
]

#: Loggers whose writes apply synchronously in memory (they share MemoryStore's write rules).
IN_MEMORY_FACTORIES = LOGGER_FACTORIES

#: Loggers whose record outlives them (their harness has ``reopen``).
DURABLE_FACTORIES = [pytest.param(make_redis_logger, id="redis")]


@pytest.fixture(params=LOGGER_FACTORIES)
def harness(request, tmp_path):
    h = request.param(tmp_path)
    yield h
    h.teardown()


@pytest.fixture(params=IN_MEMORY_FACTORIES)
def in_memory(request, tmp_path):
    h = request.param(tmp_path)
    yield h
    h.teardown()


@pytest.fixture(params=DURABLE_FACTORIES)
def durable(request, tmp_path):
    h = request.param(tmp_path)
    yield h
    h.teardown()


def task(name: str, **overrides: Any) -> TaskDef:
    fields: dict[str, Any] = dict(name=name, defined_name=name.split("_")[0],
                                  job={"command": ["/bin/echo", name]})
    fields.update(overrides)
    return TaskDef(**fields)


def attempt(start: float, stop: float, rc: int = 0, **overrides: Any) -> Attempt:
    return Attempt(start_time=start, stop_time=stop, rc=rc, succeeded=rc == 0, **overrides)


def new_run(h: Harness, tasks: list[TaskDef] = (), tag: str | None = "nightly",
            parameters: dict | None = None, now: float = T0) -> int:
    run_id = h.result(h.logger.create_run(tag, parameters or {}, now))
    if tasks:
        h.logger.add_tasks(run_id, tasks, now)
    return run_id


def counts(**nonzero: int) -> dict[str, int]:
    every = {state.value: 0 for state in State}
    every.update(nonzero)
    return every


# -- run creation -------------------------------------------------------------------------

def test_run_ids_are_allocated_from_zero_in_creation_order(harness):
    """create_run fires with 0, 1, 2 for the first three runs."""
    ids = [new_run(harness, tag=f"t{i}") for i in range(3)]
    assert ids == [0, 1, 2]


def test_new_run_is_queued_with_one_state_change_at_creation(harness):
    """A new run is QUEUED, started and last updated at creation, with zero task counts."""
    run_id = new_run(harness, tag="nightly", parameters={"DATE": ["2021-01-01", "2021-01-02"]})
    run = harness.read("get_run", run_id)
    assert run["runID"] == run_id
    assert run["tag"] == "nightly"
    assert run["state"] == "QUEUED"
    assert run["parameters"] == {"DATE": ["2021-01-01", "2021-01-02"]}
    assert run["startTime"] == iso8601(T0)
    assert run["lastUpdate"] == iso8601(T0)
    assert run["stateChanges"] == [{"time": iso8601(T0), "state": "QUEUED"}]
    assert run["taskCounts"] == counts()
    assert run["tasks"] == {}


def test_get_run_has_exactly_the_documented_keys(harness):
    """get_run answers with the documented document shape and JSON-serialisable values."""
    run_id = new_run(harness, [task("a")])
    run = harness.read("get_run", run_id)
    assert set(run) == {"runID", "tag", "state", "parameters", "startTime", "lastUpdate",
                        "taskCounts", "stateChanges", "tasks", "taskStates", "taskAttempts",
                        "taskStateChanges", "taskExecutorStates"}
    json.dumps(run)


# -- tasks --------------------------------------------------------------------------------

def test_added_tasks_are_queued_with_their_definition_and_first_state_change(harness):
    """add_tasks stores each definition as TaskDef.to_json(), QUEUED, with one state change."""
    tasks = [task("pull", max_retries=2, children=["work"]),
             task("work_1", parents=["pull"], expansion_values={"N": "1"})]
    run_id = new_run(harness)
    harness.logger.add_tasks(run_id, tasks, T0 + 1)
    run = harness.read("get_run", run_id)
    assert run["tasks"] == {t.name: t.to_json() for t in tasks}
    assert run["taskStates"] == {"pull": "QUEUED", "work_1": "QUEUED"}
    assert run["taskAttempts"] == {"pull": [], "work_1": []}
    assert run["taskStateChanges"] == {
        name: [{"time": iso8601(T0 + 1), "state": "QUEUED"}] for name in ("pull", "work_1")}
    assert run["taskCounts"] == counts(QUEUED=2)
    assert run["lastUpdate"] == iso8601(T0 + 1)


def test_task_state_changes_move_task_counts(harness):
    """Each task state change moves one task between taskCounts buckets."""
    run_id = new_run(harness, [task("a"), task("b"), task("c")])
    harness.logger.record_task_state(run_id, "a", State.RUNNING, T0 + 1)
    harness.logger.record_task_state(run_id, "b", State.RUNNING, T0 + 2)
    harness.logger.record_task_state(run_id, "a", State.COMPLETED, T0 + 3)
    harness.logger.record_task_state(run_id, "b", State.RETRY, T0 + 4)
    expected = counts(QUEUED=1, RETRY=1, COMPLETED=1)
    assert harness.read("get_run_state", run_id)["taskCounts"] == expected
    assert harness.read("get_run", run_id)["taskCounts"] == expected
    assert harness.read("list_runs")[0]["taskCounts"] == expected


def test_task_state_changes_are_kept_in_call_order(harness):
    """taskStateChanges lists every change of a task in call order, even with equal times."""
    run_id = new_run(harness, [task("a")])
    for state in (State.RUNNING, State.RETRY, State.RUNNING, State.ERRORED):
        harness.logger.record_task_state(run_id, "a", state, T0 + 5)
    detail = harness.read("get_task", run_id, "a")
    assert [change["state"] for change in detail["stateChanges"]] == [
        "QUEUED", "RUNNING", "RETRY", "RUNNING", "ERRORED"]
    assert detail["state"] == "ERRORED"
    assert harness.read("get_task_state", run_id, "a") == {
        "runID": run_id, "name": "a", "state": "ERRORED"}
    assert harness.read("get_run", run_id)["taskStateChanges"]["a"] == detail["stateChanges"]


def test_tasks_added_during_a_run_join_it_with_their_own_time(harness):
    """Tasks added after the run started (generator output) are QUEUED and counted."""
    run_id = new_run(harness, [task("gen", is_generator=True)])
    harness.logger.record_run_state(run_id, State.RUNNING, T0 + 1)
    harness.logger.record_task_state(run_id, "gen", State.COMPLETED, T0 + 2)
    harness.logger.add_tasks(run_id, [task("child_1", parents=["gen"]),
                                      task("child_2", parents=["gen"])], T0 + 3)
    run = harness.read("get_run", run_id)
    assert sorted(run["tasks"]) == ["child_1", "child_2", "gen"]
    assert run["taskCounts"] == counts(QUEUED=2, COMPLETED=1)
    assert run["taskStateChanges"]["child_1"] == [{"time": iso8601(T0 + 3), "state": "QUEUED"}]
    assert run["lastUpdate"] == iso8601(T0 + 3)
    assert harness.read("get_task", run_id, "child_2")["definition"]["parents"] == ["gen"]


def test_adding_no_tasks_changes_nothing(harness):
    """add_tasks with an empty batch leaves the run as it was."""
    run_id = new_run(harness, [task("a")])
    before = harness.read("get_run", run_id)
    harness.logger.add_tasks(run_id, [], T0 + 9)
    assert harness.read("get_run", run_id) == before


# -- run state ----------------------------------------------------------------------------

def test_run_state_changes_are_recorded_in_order(harness):
    """record_run_state sets the state and appends to stateChanges in call order."""
    run_id = new_run(harness)
    harness.logger.record_run_state(run_id, State.RUNNING, T0 + 1)
    harness.logger.record_run_state(run_id, State.ERRORED, T0 + 2)
    harness.logger.record_run_state(run_id, State.QUEUED, T0 + 3)
    harness.logger.record_run_state(run_id, State.RUNNING, T0 + 4)
    run = harness.read("get_run", run_id)
    assert run["state"] == "RUNNING"
    assert run["stateChanges"] == [
        {"time": iso8601(T0 + t), "state": s}
        for t, s in [(0, "QUEUED"), (1, "RUNNING"), (2, "ERRORED"), (3, "QUEUED"),
                     (4, "RUNNING")]]
    assert run["startTime"] == iso8601(T0)
    assert run["lastUpdate"] == iso8601(T0 + 4)
    assert harness.read("get_run_state", run_id) == {
        "runID": run_id, "state": "RUNNING", "taskCounts": counts()}


# -- attempts -----------------------------------------------------------------------------

def test_attempts_are_kept_per_task_in_order(harness):
    """record_attempt appends Attempt.to_json() to the task's attempts, oldest first."""
    run_id = new_run(harness, [task("a"), task("b")])
    first = attempt(T0 + 1, T0 + 2, rc=1, error_log="boom\nline two")
    second = attempt(T0 + 3, T0 + 4, output_log="ok\n", executor_state={"jobID": "17"})
    harness.logger.record_attempt(run_id, "a", first)
    harness.logger.record_attempt(run_id, "a", second)
    detail = harness.read("get_task", run_id, "a")
    assert detail["attempts"] == [first.to_json(), second.to_json()]
    run = harness.read("get_run", run_id)
    assert run["taskAttempts"] == {"a": [first.to_json(), second.to_json()], "b": []}
    assert run["lastUpdate"] == iso8601(T0 + 4)


#: What an executor can make of task output (see daggy.executors._process.decode_output):
#: every byte value, invalid UTF-8 (as U+FFFD), an encoded surrogate, a cut character, and
#: control characters JSON must escape (NUL, ESC, DEL, U+2028).
ANY_BYTES = decode_output(bytes(range(256)) + b"\xed\xa0\x80 \xf0\x9f\x98\x80 \xc3")
CONTROL_TEXT = "nul\x00 bell\x07 esc\x1b[0m del\x7f \u2028 cr\r\n \ufffd"


def test_output_made_of_any_bytes_is_answered_unchanged_as_strict_utf8_json(harness):
    """Task output holding NULs, control characters and U+FFFD is answered exactly as it
    was recorded (also after a restart), and every answer encodes as strict UTF-8 JSON."""
    run_id = new_run(harness, [task("a")])
    record = attempt(T0 + 1, T0 + 2, rc=1, output_log=ANY_BYTES, error_log=CONTROL_TEXT)
    harness.logger.record_attempt(run_id, "a", record)
    answers = [harness.read("get_task", run_id, "a"), harness.read("get_run", run_id)]
    assert answers[0]["attempts"] == [record.to_json()]
    assert answers[1]["taskAttempts"]["a"] == [record.to_json()]
    for answer in answers:
        assert json.loads(dumps_ascii_fallback(answer).decode("utf-8")) == answer
    if harness.reopen is not None:
        harness.logger = harness.reopen()
        assert harness.read("get_task", run_id, "a")["attempts"] == [record.to_json()]


def test_get_task_has_the_documented_shape(harness):
    """get_task answers {runID, name, definition, state, attempts, stateChanges,
    executorState}, executorState None until one is recorded."""
    definition = task("a", job={"command": ["/bin/true"], "environment": {"X": "1"}})
    run_id = new_run(harness, [definition])
    assert harness.read("get_task", run_id, "a") == {
        "runID": run_id,
        "name": "a",
        "definition": definition.to_json(),
        "state": "QUEUED",
        "attempts": [],
        "stateChanges": [{"time": iso8601(T0), "state": "QUEUED"}],
        "executorState": None,
    }


# -- executor states ----------------------------------------------------------------------

def test_executor_states_are_kept_per_task_and_replaced_by_the_next(harness):
    """record_executor_state keeps the latest state per task, shown by get_run and get_task."""
    run_id = new_run(harness, [task("a"), task("b"), task("c")])
    harness.logger.record_executor_state(run_id, "c", {"pid": 10}, T0 + 1)
    harness.logger.record_executor_state(run_id, "a", {"pid": 11}, T0 + 2)
    harness.logger.record_executor_state(run_id, "a", {"jobID": "77", "cluster": "x"}, T0 + 3)
    run = harness.read("get_run", run_id)
    assert run["taskExecutorStates"] == {"a": {"jobID": "77", "cluster": "x"}, "c": {"pid": 10}}
    assert list(run["taskExecutorStates"]) == ["a", "c"]  # task order
    assert harness.read("get_task", run_id, "a")["executorState"] == {
        "jobID": "77", "cluster": "x"}
    assert harness.read("get_task", run_id, "b")["executorState"] is None
    assert run["lastUpdate"] == iso8601(T0 + 3)


def test_executor_state_of_an_unknown_task_raises_unknown_task(in_memory):
    """record_executor_state naming a task the run does not have raises UnknownTask."""
    run_id = new_run(in_memory, [task("a")])
    with pytest.raises(UnknownTask):
        in_memory.logger.record_executor_state(run_id, "b", {"pid": 1}, T0)


# -- readiness and recovery ---------------------------------------------------------------

def test_a_started_logger_is_ready(harness):
    """After start() a reachable logger says it is ready and when_ready() has fired."""
    harness.logger.start()  # a second start changes nothing
    assert harness.logger.status() == (True, "")
    assert harness.result(harness.logger.when_ready()) is None


def test_load_unfinished_runs_answers_unfinished_runs_as_full_documents(harness):
    """load_unfinished_runs lists every QUEUED or RUNNING run, by run ID, as get_run does."""
    queued = new_run(harness, [task("a")])
    finished = new_run(harness, [task("a")])
    running = new_run(harness, [task("a"), task("b")])
    harness.logger.record_run_state(finished, State.COMPLETED, T0 + 1)
    harness.logger.record_run_state(running, State.RUNNING, T0 + 1)
    harness.logger.record_task_state(running, "a", State.RUNNING, T0 + 2)
    harness.logger.record_executor_state(running, "a", {"pid": 42}, T0 + 2)
    harness.result(harness.logger.flush())
    loaded = harness.result(harness.logger.load_unfinished_runs())
    assert [doc["runID"] for doc in loaded] == [queued, running]
    assert loaded[1] == harness.read("get_run", running)
    assert loaded[1]["taskExecutorStates"] == {"a": {"pid": 42}}


# -- durability (loggers whose record outlives them) --------------------------------------

def fill_history(h: Harness) -> tuple[int, int]:
    """A finished run and an unfinished one with every kind of record; returns their IDs."""
    done = new_run(h, [task("x")], tag="old", parameters={"P": ["1", "2"]})
    h.logger.record_run_state(done, State.RUNNING, T0 + 1)
    h.logger.record_task_state(done, "x", State.RUNNING, T0 + 1)
    h.logger.record_attempt(done, "x", attempt(T0 + 1, T0 + 2, output_log="done\n"))
    h.logger.record_task_state(done, "x", State.COMPLETED, T0 + 2)
    h.logger.record_run_state(done, State.COMPLETED, T0 + 2)
    names = ["z", "12", "a/b c", "été ☃", "m"]
    live = new_run(h, [task(name) for name in names], tag=None)
    h.logger.add_tasks(live, [task("gen_1", parents=["z"])], T0 + 3)
    h.logger.record_run_state(live, State.RUNNING, T0 + 3)
    h.logger.record_task_state(live, "12", State.RUNNING, T0 + 3)
    h.logger.record_attempt(live, "12", attempt(T0 + 3, T0 + 4, rc=1, error_log="e"))
    h.logger.record_task_state(live, "12", State.RETRY, T0 + 4)
    h.logger.record_task_state(live, "m", State.RUNNING, T0 + 5)
    h.logger.record_executor_state(live, "m", {"pid": 4242}, T0 + 5)
    h.result(h.logger.flush())
    return done, live


def test_a_reopened_logger_answers_exactly_as_before(durable):
    """After a restart every read (listing, runs, tasks, states) answers as before it."""
    done, live = fill_history(durable)
    reads = [("list_runs", (), {"all_runs": True}), ("list_runs", (), {}),
             ("get_run", (done,), {}), ("get_run", (live,), {}),
             ("get_run_state", (done,), {}), ("get_run_state", (live,), {}),
             ("get_task", (done, "x"), {}), ("get_task", (live, "m"), {}),
             ("get_task_state", (live, "12"), {})]
    before = [durable.read(method, *args, **kwargs) for method, args, kwargs in reads]
    old = durable.logger
    durable.logger = durable.reopen()
    durable.result(old.close())
    after = [durable.read(method, *args, **kwargs) for method, args, kwargs in reads]
    assert after == before
    assert list(after[3]["tasks"]) == ["z", "12", "a/b c", "été ☃", "m", "gen_1"]


def test_a_reopened_logger_loads_unfinished_runs_identical_to_before(durable):
    """load_unfinished_runs on a new logger returns the unfinished runs exactly as recorded,
    and the new logger then records on top of them."""
    done, live = fill_history(durable)
    expected = durable.read("get_run", live)
    durable.logger = durable.reopen()
    loaded = durable.result(durable.logger.load_unfinished_runs())
    assert [doc["runID"] for doc in loaded] == [live]
    assert loaded[0] == expected
    assert list(loaded[0]["tasks"]) == list(expected["tasks"])
    assert loaded[0]["taskExecutorStates"] == {"m": {"pid": 4242}}
    durable.logger.record_task_state(live, "m", State.COMPLETED, T0 + 9)
    assert durable.read("get_run_state", live)["taskCounts"] == counts(
        QUEUED=4, RETRY=1, COMPLETED=1)
    assert durable.result(durable.logger.create_run(None, {}, T0 + 9)) == live + 1
    with pytest.raises(UnknownRun):
        durable.logger.record_task_state(done, "x", State.QUEUED, T0 + 9)


# -- listing ------------------------------------------------------------------------------

def make_listing_runs(h: Harness) -> None:
    """Runs 0..4: nightly/RUNNING, nightly/COMPLETED, adhoc/QUEUED, adhoc/ERRORED,
    nightly/KILLED."""
    for tag, state in [("nightly", State.RUNNING), ("nightly", State.COMPLETED),
                       ("adhoc", None), ("adhoc", State.ERRORED), ("nightly", State.KILLED)]:
        run_id = new_run(h, [task("a")], tag=tag)
        if state is not None:
            h.logger.record_run_state(run_id, state, T0 + 10 + run_id)


def test_list_runs_hides_finished_runs_unless_all_runs(harness):
    """list_runs shows unfinished runs by default and every run with all_runs, by runID."""
    make_listing_runs(harness)
    assert [r["runID"] for r in harness.read("list_runs")] == [0, 2]
    assert [r["runID"] for r in harness.read("list_runs", all_runs=True)] == [0, 1, 2, 3, 4]


def test_list_runs_filters_by_exact_tag_and_state(harness):
    """list_runs' tag filter matches tags exactly and its state filter matches the run state."""
    make_listing_runs(harness)
    assert [r["runID"] for r in harness.read("list_runs", all_runs=True, tag="nightly")] == [
        0, 1, 4]
    assert harness.read("list_runs", all_runs=True, tag="night") == []
    assert [r["runID"] for r in harness.read("list_runs", tag="adhoc")] == [2]
    assert [r["runID"] for r in harness.read("list_runs", all_runs=True,
                                             state=State.ERRORED)] == [3]
    assert [r["runID"] for r in harness.read("list_runs", all_runs=True, tag="nightly",
                                             state=State.KILLED)] == [4]


def test_list_runs_summaries_have_the_documented_shape(harness):
    """Each list_runs entry is {runID, tag, state, startTime, lastUpdate, taskCounts}."""
    run_id = new_run(harness, [task("a"), task("b")], tag=None)
    harness.logger.record_task_state(run_id, "a", State.RUNNING, T0 + 2)
    assert harness.read("list_runs") == [{
        "runID": run_id, "tag": None, "state": "QUEUED", "startTime": iso8601(T0),
        "lastUpdate": iso8601(T0 + 2), "taskCounts": counts(QUEUED=1, RUNNING=1)}]


# -- unknown runs and tasks ---------------------------------------------------------------

@pytest.mark.parametrize("method, args", [
    ("get_run", ()), ("get_run_state", ()), ("get_task", ("a",)), ("get_task_state", ("a",)),
])
def test_reads_of_an_unknown_run_fail_with_unknown_run(harness, method, args):
    """Every read naming a run that does not exist fails with UnknownRun (a 404)."""
    new_run(harness, [task("a")])
    failure = harness.read_failure(method, 7, *args)
    assert failure.check(UnknownRun)
    assert failure.value.status == 404
    assert failure.value.run_id == 7


@pytest.mark.parametrize("method", ["get_task", "get_task_state"])
def test_reads_of_an_unknown_task_fail_with_unknown_task(harness, method):
    """Task reads naming a task the run does not have fail with UnknownTask (a 404)."""
    run_id = new_run(harness, [task("a")])
    failure = harness.read_failure(method, run_id, "nope")
    assert failure.check(UnknownTask)
    assert failure.value.status == 404
    assert failure.value.task_name == "nope"


# -- isolation ----------------------------------------------------------------------------

def try_to_mutate(action: Callable[[], Any]) -> None:
    """Mutate a returned structure; a store may refuse (TypeError) or hand out copies."""
    try:
        action()
    except TypeError:
        pass


def test_changing_read_results_does_not_change_the_store(harness):
    """Mutating anything a read returned leaves later reads unchanged."""
    run_id = new_run(harness, [task("a", job={"command": ["x"], "env": {"K": "v"}})],
                     parameters={"P": ["1"]})
    harness.logger.record_attempt(run_id, "a", attempt(T0, T0 + 1, executor_state={"k": 1}))
    original_run = copy.deepcopy(harness.read("get_run", run_id))
    original_task = copy.deepcopy(harness.read("get_task", run_id, "a"))
    original_list = copy.deepcopy(harness.read("list_runs"))
    original_state = copy.deepcopy(harness.read("get_run_state", run_id))

    run = harness.read("get_run", run_id)
    try_to_mutate(lambda: run["tasks"]["a"]["job"]["command"].append("y"))
    try_to_mutate(lambda: run["tasks"]["a"]["job"]["env"].update(K="changed"))
    try_to_mutate(lambda: run["tasks"].pop("a"))
    try_to_mutate(lambda: run["taskStates"].update(a="KILLED"))
    try_to_mutate(lambda: run["taskCounts"].update(QUEUED=99))
    try_to_mutate(lambda: run["parameters"]["P"].append("2"))
    try_to_mutate(lambda: run["stateChanges"][0].update(state="KILLED"))
    try_to_mutate(lambda: run["stateChanges"].append({}))
    try_to_mutate(lambda: run["taskAttempts"]["a"][0]["executorState"].update(k=2))
    try_to_mutate(lambda: run["taskStateChanges"]["a"].clear())
    detail = harness.read("get_task", run_id, "a")
    try_to_mutate(lambda: detail["attempts"].clear())
    try_to_mutate(lambda: detail["definition"].update(name="b"))
    try_to_mutate(lambda: detail["stateChanges"][0].update(time="never"))
    listing = harness.read("list_runs")
    try_to_mutate(lambda: listing[0]["taskCounts"].update(QUEUED=99))
    state = harness.read("get_run_state", run_id)
    try_to_mutate(lambda: state["taskCounts"].update(QUEUED=99))

    assert harness.read("get_run", run_id) == original_run
    assert harness.read("get_task", run_id, "a") == original_task
    assert harness.read("list_runs") == original_list
    assert harness.read("get_run_state", run_id) == original_state


def test_runs_are_independent(harness):
    """Writes to one run never show up in another."""
    first = new_run(harness, [task("a")])
    second = new_run(harness, [task("a")])
    harness.logger.record_task_state(first, "a", State.RUNNING, T0 + 1)
    harness.logger.record_run_state(first, State.RUNNING, T0 + 1)
    assert harness.read("get_task_state", second, "a")["state"] == "QUEUED"
    assert harness.read("get_run_state", second)["state"] == "QUEUED"


def test_flush_and_close_fire_and_records_stay_readable_after_close(harness):
    """flush() and close() fire with None; a closed logger still answers reads."""
    run_id = new_run(harness, [task("a")])
    assert harness.result(harness.logger.flush()) is None
    assert harness.result(harness.logger.close()) is None
    assert harness.result(harness.logger.get_task_state(run_id, "a"))["state"] == "QUEUED"


# -- in-memory write rules ----------------------------------------------------------------

def test_writes_naming_an_unknown_run_raise_unknown_run(in_memory):
    """Writes to a run that does not exist raise UnknownRun at once (a caller bug)."""
    with pytest.raises(UnknownRun):
        in_memory.logger.add_tasks(3, [task("a")], T0)
    with pytest.raises(UnknownRun):
        in_memory.logger.record_run_state(3, State.RUNNING, T0)
    with pytest.raises(UnknownRun):
        in_memory.logger.record_task_state(3, "a", State.RUNNING, T0)
    with pytest.raises(UnknownRun):
        in_memory.logger.record_attempt(3, "a", attempt(T0, T0))


def test_writes_naming_an_unknown_task_raise_unknown_task(in_memory):
    """Task writes naming a task the run does not have raise UnknownTask and change nothing."""
    run_id = new_run(in_memory, [task("a")])
    with pytest.raises(UnknownTask):
        in_memory.logger.record_task_state(run_id, "b", State.RUNNING, T0 + 1)
    with pytest.raises(UnknownTask):
        in_memory.logger.record_attempt(run_id, "b", attempt(T0, T0 + 1))
    assert in_memory.read("get_run_state", run_id)["taskCounts"] == counts(QUEUED=1)
    assert in_memory.read("list_runs")[0]["lastUpdate"] == iso8601(T0)


@pytest.mark.parametrize("batch", [[task("b"), task("a")], [task("b"), task("b")]])
def test_adding_a_duplicate_task_name_raises_conflict_and_adds_nothing(in_memory, batch):
    """A batch repeating a task name (of the run or of itself) raises Conflict, storing none."""
    run_id = new_run(in_memory, [task("a")])
    with pytest.raises(Conflict):
        in_memory.logger.add_tasks(run_id, batch, T0 + 1)
    run = in_memory.read("get_run", run_id)
    assert list(run["tasks"]) == ["a"]
    assert run["taskCounts"] == counts(QUEUED=1)


def test_add_tasks_accepts_a_one_shot_iterable(in_memory):
    """add_tasks consumes a generator of TaskDefs exactly once."""
    run_id = new_run(in_memory)
    in_memory.logger.add_tasks(run_id, (task(f"t_{i}") for i in range(3)), T0)
    assert in_memory.read("get_run_state", run_id)["taskCounts"] == counts(QUEUED=3)


def test_memory_store_helpers_report_known_runs():
    """run_ids() lists runs in creation order and has_run() tells known from unknown IDs."""
    store = MemoryStore()
    store.create_run(None, {}, T0)
    store.create_run(None, {}, T0)
    assert store.run_ids() == [0, 1]
    assert store.has_run(1) and not store.has_run(2) and not store.has_run("1")


def test_shared_documents_copy_into_plain_mutable_values():
    """copy.deepcopy of a read result gives plain dicts/lists that can be changed freely."""
    store = MemoryStore()
    store.create_run(None, {"P": ["1"]}, T0)
    store.add_tasks(0, [task("a")], T0)
    results: list[Any] = []
    store.get_run(0).addCallback(results.append)
    run = copy.deepcopy(results[0])
    run["tasks"]["a"]["job"]["command"].append("more")
    run["parameters"]["P"].append("2")
    assert type(run["tasks"]["a"]) is dict and type(run["parameters"]["P"]) is list


# -- events -----------------------------------------------------------------------------------

from daggy.events import EventHub  # noqa: E402


def publishing_harness(kind: str, tmp_path) -> tuple[Harness, EventHub, Callable[[], None]]:
    """A logger of ``kind`` that publishes to a new hub from its first write."""
    clock = Clock()
    hub = EventHub(clock)
    if kind == "memory":
        logger: Any = MemoryStore()
        logger.publish_to(hub)
        return Harness(logger, settle=lambda d: None), hub, lambda: None
    if kind == "ostream":
        logger = OStreamLogger(clock, str(tmp_path / "events.jsonl"))
        logger.publish_to(hub)
        return (Harness(logger, settle=lambda d: clock.advance(0)), hub,
                lambda: settle_clock(clock, logger.close()))
    from daggy.loggers._txredis import TxRedisConnector
    from daggy.loggers.redis import RedisLogger

    server = FakeRedisServer(clock)
    logger = RedisLogger(clock, prefix="contract",
                         connector=TxRedisConnector(clock, server.endpoint(), "fakeredis"))
    logger.publish_to(hub)
    logger.start()
    settle_clock(clock, logger.when_ready())
    return (Harness(logger, settle=lambda d: settle_clock(clock, d)), hub,
            lambda: settle_clock(clock, logger.close()))


def play_history(h: Harness) -> int:
    run_id = new_run(h, [task("pull"), task("report", parents=["pull"])],
                     parameters={"DATE": ["2021-01-01"]})
    h.logger.record_run_state(run_id, State.RUNNING, T0 + 1)
    h.logger.record_task_state(run_id, "pull", State.RUNNING, T0 + 1)
    h.logger.record_executor_state(run_id, "pull", {"pid": 42}, T0 + 1)
    h.logger.record_attempt(run_id, "pull", attempt(T0 + 1, T0 + 2, output_log="out\n"))
    h.logger.record_task_state(run_id, "pull", State.COMPLETED, T0 + 2)
    return run_id


@pytest.mark.parametrize("kind", ["memory", "ostream", "redis"])
def test_every_logger_publishes_the_ostream_events_numbered_in_order(kind, tmp_path):
    """Whatever the logger, each write publishes the event object the OStreamLogger writes
    as a line, numbered 1, 2, 3 in call order; a write the store rejects publishes nothing."""
    h, hub, close = publishing_harness(kind, tmp_path)
    reference = Harness(OStreamLogger(Clock(), str(tmp_path / "reference.jsonl")),
                        settle=lambda d: None)
    run_id = play_history(h)
    assert play_history(reference) == run_id
    reference.result(reference.logger.close())
    with pytest.raises(UnknownTask):
        h.logger.record_task_state(run_id, "nope", State.RUNNING, T0 + 3)
    published = hub.window_after(0, 100)
    assert [event_id for event_id, _ in published] == list(range(1, len(published) + 1))
    lines = (tmp_path / "reference.jsonl").read_bytes().splitlines()
    expected = [json.loads(line) for line in lines]
    assert [json.loads(line) for _, line in published] == expected
    assert [event["event"] for event in expected] == [
        "runCreated", "taskAdded", "taskAdded", "runState", "taskState", "taskExecutorState",
        "taskAttempt", "taskState"]
    close()
