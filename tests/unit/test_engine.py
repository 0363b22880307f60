"""DagEngine driven by hand: ordering, retries, failure isolation, kill, resume, operator
actions, generated tasks, and large runs."""

from __future__ import annotations

from collections import deque
from typing import Any, Callable

import pytest

from daggy.dag import DagEngine, Outcome
from daggy.errors import Conflict, UnknownTask
from daggy.model import State
from daggy.spec import parse_generated_tasks, parse_run_spec


class AcceptingJobFormat:
    """Stands in for an executor that accepts any job object."""

    templatable_fields = ("command",)

    def validate_job(self, job: Any, path: str) -> list[str]:
        return []


JOB_FORMAT = AcceptingJobFormat()


def task(*parents: str, command: tuple[str, ...] = ("run",), **attributes: Any) -> dict:
    return {"job": {"command": list(command)}, "parents": list(parents), **attributes}


class Run:
    """A parsed spec in an engine, plus a simulated executor that ends attempts in FIFO
    order and records every start, end and state change."""

    def __init__(self, tasks: dict, parameters: dict | None = None):
        self.spec = parse_run_spec({"parameters": parameters or {}, "tasks": tasks}, JOB_FORMAT)
        self.transitions: list[tuple[str, State]] = []
        self.engine = DagEngine(on_state=lambda name, state: self.transitions.append((name, state)))
        self.engine.add_groups(self.spec.groups)
        self.running: deque[str] = deque()
        self.retrying: list[str] = []
        self.started: list[str] = []
        self.events: list[tuple[str, str]] = []

    def start_ready(self) -> list[str]:
        started = []
        while (ready := self.engine.pop_ready()) is not None:
            self.engine.mark_running(ready.name)
            self.running.append(ready.name)
            self.started.append(ready.name)
            self.events.append(("start", ready.name))
            started.append(ready.name)
        return started

    def end(self, name: str, succeeded: bool = True, killed: bool = False) -> Outcome:
        self.running.remove(name)
        outcome = self.engine.attempt_ended(name, succeeded, killed=killed)
        self.events.append(("end", name))
        if outcome is Outcome.RETRY:
            self.retrying.append(name)
        return outcome

    def drive(self, succeeds: Callable[[str], bool] = lambda name: True) -> State:
        """Run until nothing can happen; retry timers fire once nothing else is running."""
        while True:
            self.start_ready()
            if self.running:
                name = self.running[0]
                self.end(name, succeeds(name))
            elif self.retrying:
                for name in self.retrying:
                    self.engine.retry_due(name)
                self.retrying.clear()
            else:
                break
        assert self.engine.is_finished()
        return self.engine.final_state()

    def state(self, name: str) -> State:
        return self.engine.state(name)

    def states(self, prefix: str = "") -> set[State]:
        return {self.engine.state(name) for name in self.engine.names()
                if name.startswith(prefix)}

    def position(self, kind: str, name: str) -> int:
        return self.events.index((kind, name))

    def assert_all_ended_before_start(self, parents: list[str], children: list[str]) -> None:
        last_parent_end = max(self.position("end", name) for name in parents)
        first_child_start = min(self.position("start", name) for name in children)
        assert last_parent_end < first_child_start

    def instances(self, defined_name: str) -> list[str]:
        return [t.name for t in self.spec.tasks if t.defined_name == defined_name]


def fails_first(times: int, *names: str) -> Callable[[str], bool]:
    """A verdict that fails the first ``times`` attempts of each named task."""
    attempts: dict[str, int] = {}

    def succeeds(name: str) -> bool:
        attempts[name] = attempts.get(name, 0) + 1
        return name not in names or attempts[name] > times

    return succeeds


# -- ordering ----------------------------------------------------------------------------

def test_expanded_chain_runs_every_instance_in_dependency_order():
    """B starts only after all A instances completed, and C's instances only after B."""
    run = Run({"A": task(command=("{{DATE}}",)),
               "B": task("A"),
               "C": task("B", command=("{{DATE}}", "{{NAME}}"))},
              parameters={"DATE": ["d1", "d2", "d3"], "NAME": ["n1", "n2"]})
    assert run.drive() is State.COMPLETED
    assert len(run.started) == 10
    assert run.states() == {State.COMPLETED}
    run.assert_all_ended_before_start(run.instances("A"), ["B"])
    run.assert_all_ended_before_start(["B"], run.instances("C"))


def test_all_instances_of_a_group_start_together():
    """The instances of an expanded task are all ready at once, not one after another."""
    run = Run({"A": task(command=("{{D}}",))}, parameters={"D": ["1", "2", "3"]})
    assert run.start_ready() == ["A[D=1]", "A[D=2]", "A[D=3]"]


def test_diamond_runs_join_after_both_branches():
    """In a diamond the two middle tasks start together and the join waits for both."""
    run = Run({"top": task(), "left": task("top"), "right": task("top"),
               "join": task("left", "right")})
    assert run.start_ready() == ["top"]
    run.end("top")
    assert run.start_ready() == ["left", "right"]
    run.end("right")
    assert run.start_ready() == []
    run.end("left")
    assert run.start_ready() == ["join"]
    run.end("join")
    assert run.engine.is_finished() and run.engine.final_state() is State.COMPLETED


def test_expanded_diamond_join_waits_for_every_instance_of_both_branches():
    """An expanded join with two expanded parents waits for all instances of each."""
    run = Run({"top": task(),
               "left": task("top", command=("{{X}}",)),
               "right": task("top", command=("{{Y}}",)),
               "join": task("left", "right", command=("{{X}}", "{{Y}}"))},
              parameters={"X": ["1", "2"], "Y": ["a", "b", "c"]})
    assert run.drive() is State.COMPLETED
    assert len(run.started) == 1 + 2 + 3 + 6
    run.assert_all_ended_before_start(run.instances("left") + run.instances("right"),
                                      run.instances("join"))


def test_state_changes_are_reported_in_order():
    """on_state sees RUNNING then COMPLETED for each task of a successful chain."""
    run = Run({"a": task(), "b": task("a")})
    run.drive()
    assert run.transitions == [("a", State.RUNNING), ("a", State.COMPLETED),
                               ("b", State.RUNNING), ("b", State.COMPLETED)]


def test_queries_describe_the_run():
    """Length, membership, names, task definitions and counts reflect the tasks."""
    run = Run({"a": task(), "b": task("a", command=("{{D}}",))}, parameters={"D": ["1", "2"]})
    engine = run.engine
    assert len(engine) == 3
    assert "b[D=2]" in engine and "b" not in engine
    assert list(engine.names()) == ["a", "b[D=1]", "b[D=2]"]
    assert engine.task("b[D=1]").job == {"command": ["1"]}
    assert engine.counts[State.QUEUED] == 3 and engine.ready_count == 1
    run.start_ready()
    assert engine.running_count == 1 and engine.ready_count == 0
    assert not engine.is_finished()


# -- retries -----------------------------------------------------------------------------

def test_failed_task_is_retried_up_to_max_retries_then_succeeds():
    """A task failing twice with maxRetries 2 succeeds on its third attempt."""
    run = Run({"a": task(maxRetries=2), "b": task("a")})
    assert run.drive(fails_first(2, "a")) is State.COMPLETED
    assert [state for name, state in run.transitions if name == "a"] == [
        State.RUNNING, State.RETRY, State.QUEUED, State.RUNNING, State.RETRY, State.QUEUED,
        State.RUNNING, State.COMPLETED]
    assert run.engine.retries_used("a") == 2


def test_task_out_of_retries_is_errored():
    """With maxRetries 1 a task that always fails makes two attempts, then is ERRORED."""
    run = Run({"a": task(maxRetries=1), "b": task("a")})
    assert run.drive(lambda name: False) is State.ERRORED
    assert run.started == ["a", "a"]
    assert run.state("a") is State.ERRORED and run.state("b") is State.QUEUED


def test_task_waiting_to_retry_blocks_children_and_the_end_of_the_run():
    """While a task is in RETRY its children wait and the run is not finished."""
    run = Run({"a": task(maxRetries=1), "b": task("a")})
    run.start_ready()
    assert run.end("a", succeeded=False) is Outcome.RETRY
    assert run.state("a") is State.RETRY
    assert run.start_ready() == []
    assert not run.engine.is_finished()
    run.engine.retry_due("a")
    assert run.start_ready() == ["a"]


def test_retry_due_for_a_task_not_waiting_is_ignored():
    """A late retry timer for a task that left RETRY changes nothing."""
    run = Run({"a": task(maxRetries=1)})
    run.start_ready()
    run.end("a", succeeded=False)
    run.engine.complete_task("a")
    run.engine.retry_due("a")
    assert run.state("a") is State.COMPLETED and run.engine.ready_count == 0


def test_killed_attempt_is_not_retried():
    """An attempt that ended by a kill makes the task KILLED even with retries left."""
    run = Run({"a": task(maxRetries=3)})
    run.start_ready()
    assert run.end("a", succeeded=False, killed=True) is Outcome.KILLED
    assert run.state("a") is State.KILLED
    assert run.engine.is_finished() and run.engine.final_state() is State.KILLED


# -- failure isolation -------------------------------------------------------------------

def test_failure_stops_descendants_but_not_independent_branches():
    """An ERRORED task's descendants stay QUEUED, an unrelated branch completes, run ERRORED."""
    run = Run({"a": task(), "b": task("a"), "c": task("b"),
               "x": task(), "y": task("x")})
    assert run.drive(lambda name: name != "b") is State.ERRORED
    assert {name: run.state(name) for name in "abcxy"} == {
        "a": State.COMPLETED, "b": State.ERRORED, "c": State.QUEUED,
        "x": State.COMPLETED, "y": State.COMPLETED}


def test_one_failed_instance_holds_back_the_whole_child_group():
    """If one instance fails, its siblings finish but no child of the group starts."""
    run = Run({"A": task(command=("{{D}}",)), "B": task("A")}, parameters={"D": ["1", "2", "3"]})
    assert run.drive(lambda name: name != "A[D=2]") is State.ERRORED
    assert run.state("A[D=1]") is State.COMPLETED and run.state("A[D=3]") is State.COMPLETED
    assert run.state("B") is State.QUEUED and "B" not in run.started


# -- kill and resume ---------------------------------------------------------------------

def kill_mid_run() -> Run:
    """a runs, r waits out a retry, q is queued behind a."""
    run = Run({"a": task(), "r": task(maxRetries=1), "q": task("a")})
    run.start_ready()
    run.end("r", succeeded=False)
    return run


def test_kill_stops_everything_and_reports_running_tasks():
    """kill() returns the RUNNING tasks, kills RETRY tasks, and nothing new starts."""
    run = kill_mid_run()
    assert run.engine.kill() == ["a"]
    assert run.state("r") is State.KILLED
    assert not run.engine.is_finished()
    run.end("a", succeeded=False, killed=True)
    assert run.start_ready() == []
    assert run.state("q") is State.QUEUED
    assert run.engine.is_finished() and run.engine.final_state() is State.KILLED


def test_failure_after_kill_is_not_retried_and_run_stays_killed():
    """A task failing on its own after kill() is ERRORED, and the run is still KILLED."""
    run = Run({"a": task(maxRetries=5), "b": task()})
    run.start_ready()
    run.engine.kill()
    assert run.end("a", succeeded=False) is Outcome.ERRORED
    run.end("b")
    assert run.engine.final_state() is State.KILLED


def test_kill_of_a_finished_successful_run_keeps_it_completed():
    """Killing after every task completed does not change the outcome."""
    run = Run({"a": task()})
    run.drive()
    assert run.engine.kill() == []
    assert run.engine.final_state() is State.COMPLETED


def test_resume_requeues_unfinished_tasks_with_fresh_retries():
    """After kill, resume() queues every non-COMPLETED task again and the run can finish."""
    run = Run({"done": task(), "a": task("done", maxRetries=1), "b": task("a")})
    run.start_ready()
    run.end("done")
    run.start_ready()
    run.end("a", succeeded=False)
    assert run.engine.retries_used("a") == 1
    run.engine.kill()
    run.engine.resume()
    assert run.state("a") is State.QUEUED and run.engine.retries_used("a") == 0
    assert not run.engine.killed
    run.started.clear()
    assert run.drive(fails_first(1, "a")) is State.COMPLETED
    assert run.started == ["a", "a", "b"]


def test_resume_of_an_errored_run_reruns_only_what_did_not_complete():
    """Resuming an ERRORED run re-runs the failed task and its descendants, not the rest."""
    run = Run({"a": task(), "b": task("a"), "c": task("b"), "x": task()})
    run.drive(lambda name: name != "b")
    run.engine.resume()
    run.started.clear()
    assert run.drive() is State.COMPLETED
    assert run.started == ["b", "c"]


def test_resume_while_tasks_run_is_refused():
    """resume() is a Conflict while any task is RUNNING."""
    run = kill_mid_run()
    run.engine.kill()
    with pytest.raises(Conflict):
        run.engine.resume()


# -- operator actions --------------------------------------------------------------------

def test_requeue_of_an_errored_task_resumes_the_run():
    """Queuing an ERRORED task again lets it and its descendants run to completion."""
    run = Run({"a": task(), "b": task("a")})
    run.drive(lambda name: False)
    assert run.engine.final_state() is State.ERRORED
    run.engine.requeue_task("a")
    assert run.state("a") is State.QUEUED and not run.engine.is_finished()
    run.started.clear()
    assert run.drive() is State.COMPLETED
    assert run.started == ["a", "b"]


def test_requeue_gives_a_fresh_retry_budget():
    """A re-queued task gets all its maxRetries again."""
    run = Run({"a": task(maxRetries=1)})
    run.drive(lambda name: False)
    run.engine.requeue_task("a")
    assert run.engine.retries_used("a") == 0
    run.started.clear()
    assert run.drive(fails_first(1, "a")) is State.COMPLETED
    assert run.started == ["a", "a"]


def test_requeue_of_a_completed_task_holds_back_its_queued_children():
    """Re-running a COMPLETED task makes its not-yet-started children wait for it again."""
    run = Run({"a": task(), "b": task("a")})
    run.start_ready()
    run.end("a")
    run.engine.requeue_task("a")
    assert run.start_ready() == ["a"]
    run.end("a")
    assert run.start_ready() == ["b"]


def test_requeue_through_an_expanded_group_holds_back_the_next_group():
    """Re-running one completed instance makes the child group wait for it again."""
    run = Run({"A": task(command=("{{D}}",)), "B": task("A")}, parameters={"D": ["1", "2"]})
    run.start_ready()
    run.end("A[D=1]")
    run.end("A[D=2]")
    run.engine.requeue_task("A[D=1]")
    assert run.start_ready() == ["A[D=1]"]
    run.end("A[D=1]")
    assert run.start_ready() == ["B"]


def test_requeue_in_a_killed_run_lifts_the_kill():
    """Re-queuing a KILLED task of a killed run lets the run go on."""
    run = Run({"a": task(), "b": task("a")})
    run.start_ready()
    run.engine.kill()
    run.end("a", succeeded=False, killed=True)
    run.engine.requeue_task("a")
    assert not run.engine.killed
    assert run.drive() is State.COMPLETED


@pytest.mark.parametrize("advance", [0, 1])
def test_requeue_of_a_queued_or_running_task_is_refused(advance):
    """Only ERRORED, KILLED or COMPLETED tasks can be queued again."""
    run = Run({"a": task()})
    if advance:
        run.start_ready()
    with pytest.raises(Conflict):
        run.engine.requeue_task("a")


def test_complete_task_unblocks_children_of_an_errored_task():
    """Marking an ERRORED task COMPLETED by hand lets its children run."""
    run = Run({"a": task(), "b": task("a")})
    run.drive(lambda name: name != "a")
    run.engine.complete_task("a")
    run.started.clear()
    assert run.drive() is State.COMPLETED
    assert run.started == ["b"]


def test_complete_task_can_skip_a_task_that_has_not_run():
    """A QUEUED task marked COMPLETED never runs, and its children become ready."""
    run = Run({"a": task(), "b": task("a"), "c": task("b")})
    run.engine.complete_task("b")
    assert run.drive() is State.COMPLETED
    assert run.started == ["a", "c"]


def test_complete_task_of_an_instance_counts_towards_its_group():
    """Completing the last pending instance by hand releases the child group."""
    run = Run({"A": task(command=("{{D}}",)), "B": task("A")}, parameters={"D": ["1", "2"]})
    run.start_ready()
    run.end("A[D=1]")
    run.end("A[D=2]", succeeded=False)
    run.engine.complete_task("A[D=2]")
    assert run.start_ready() == ["B"]


@pytest.mark.parametrize("finish", [False, True])
def test_complete_task_of_a_running_or_completed_task_is_refused(finish):
    """A RUNNING task must be killed first, and a COMPLETED one is already done."""
    run = Run({"a": task()})
    run.start_ready()
    if finish:
        run.end("a")
    with pytest.raises(Conflict):
        run.engine.complete_task("a")


def test_kill_task_of_a_queued_task_stops_its_branch_only():
    """A QUEUED task killed by hand never runs, nor its descendants; the run ends KILLED."""
    run = Run({"a": task(), "b": task("a"), "c": task("b"), "x": task()})
    assert run.engine.kill_task("b") is False
    assert run.state("b") is State.KILLED
    assert run.drive() is State.KILLED
    assert run.started == ["a", "x"]
    assert run.state("c") is State.QUEUED


def test_kill_task_of_a_running_task_asks_the_caller_to_stop_it():
    """kill_task returns True for a RUNNING task, which turns KILLED when its attempt ends."""
    run = Run({"a": task(maxRetries=2)})
    run.start_ready()
    assert run.engine.kill_task("a") is True
    assert run.state("a") is State.RUNNING
    run.end("a", succeeded=False, killed=True)
    assert run.state("a") is State.KILLED


def test_kill_task_of_a_task_waiting_to_retry_kills_it_at_once():
    """A task in RETRY becomes KILLED and its pending retry is ignored."""
    run = Run({"a": task(maxRetries=2)})
    run.start_ready()
    run.end("a", succeeded=False)
    assert run.engine.kill_task("a") is False
    run.engine.retry_due("a")
    assert run.state("a") is State.KILLED and run.engine.is_finished()


@pytest.mark.parametrize("verdict", [True, False])
def test_kill_task_of_a_finished_task_is_refused(verdict):
    """COMPLETED and ERRORED tasks cannot be killed."""
    run = Run({"a": task()})
    run.drive(lambda name: verdict)
    with pytest.raises(Conflict):
        run.engine.kill_task("a")


def test_errored_outranks_killed_in_the_final_state():
    """A run with both an ERRORED and a hand-KILLED task ends ERRORED."""
    run = Run({"a": task(), "b": task()})
    run.engine.kill_task("b")
    assert run.drive(lambda name: False) is State.ERRORED


def test_unknown_task_names_are_reported():
    """Every per-task call names the missing task."""
    engine = Run({"a": task()}).engine
    for call in (engine.state, engine.task, engine.mark_running, engine.retry_due,
                 engine.requeue_task, engine.complete_task, engine.kill_task):
        with pytest.raises(UnknownTask):
            call("ghost")


def test_attempt_end_for_a_task_that_is_not_running_is_refused():
    """attempt_ended on a QUEUED task is a Conflict, not a silent state change."""
    run = Run({"a": task()})
    with pytest.raises(Conflict):
        run.engine.attempt_ended("a", True)


@pytest.mark.parametrize("finish", [False, True])
def test_mark_running_of_a_task_that_is_not_queued_is_refused(finish):
    """Starting a RUNNING or COMPLETED task again is a Conflict."""
    run = Run({"a": task(), "b": task("a")})
    run.start_ready()
    if finish:
        run.end("a")
    with pytest.raises(Conflict):
        run.engine.mark_running("a")
    assert run.state("a") is (State.COMPLETED if finish else State.RUNNING)


def test_interrupted_task_runs_again_with_its_retry_count_kept():
    """requeue_interrupted puts a RUNNING task back in the queue without touching retries."""
    run = Run({"a": task(maxRetries=2)})
    run.start_ready()
    run.end("a", succeeded=False)
    run.engine.retry_due("a")
    run.start_ready()
    run.engine.requeue_interrupted("a")
    run.running.clear()
    assert run.state("a") is State.QUEUED and run.engine.retries_used("a") == 1
    assert run.start_ready() == ["a"]


# -- generated tasks ---------------------------------------------------------------------

def generate(run: Run, generator: str, output: dict) -> None:
    """What the runner does when a generator succeeds: add its tasks, then end it."""
    groups = parse_generated_tasks(output, JOB_FORMAT, run.spec.parameters,
                                   run.engine.task(generator), run.engine)
    run.engine.add_groups(groups, after=generator)
    run.end(generator)


def drive_generators(run: Run, outputs: dict[str, dict]) -> State:
    while True:
        run.start_ready()
        if not run.running:
            break
        name = run.running[0]
        if name in outputs:
            generate(run, name, outputs[name])
        else:
            run.end(name)
    assert run.engine.is_finished()
    return run.engine.final_state()


def test_generator_children_wait_for_generated_tasks():
    """Generated tasks run after the generator and before the generator's children."""
    run = Run({"gen": task(isGenerator=True), "after": task("gen")})
    state = drive_generators(run, {"gen": {"made": task(), "also": task()}})
    assert state is State.COMPLETED
    assert run.started == ["gen", "made", "also", "after"]
    run.assert_all_ended_before_start(["made", "also"], ["after"])


def test_expanded_generated_tasks_with_internal_edges_are_ordered():
    """Generated groups are expanded and keep their own edges; the child waits for all."""
    run = Run({"gen": task(isGenerator=True), "after": task("gen")},
              parameters={"D": ["1", "2", "3"]})
    state = drive_generators(run, {"gen": {
        "fetch": task(command=("{{D}}",)),
        "merge": task("fetch"),
    }})
    assert state is State.COMPLETED
    fetches = ["fetch[D=1]", "fetch[D=2]", "fetch[D=3]"]
    assert run.started == ["gen", *fetches, "merge", "after"]
    assert run.engine.task("merge").parents == ["fetch"]
    assert run.engine.task("fetch[D=1]").parents == ["gen"]
    assert run.engine.task("merge").children == ["after"]


def test_every_instance_of_an_expanded_generator_feeds_the_child():
    """With an expanded generator, the child waits for every instance's generated tasks."""
    run = Run({"gen": task(isGenerator=True, command=("{{D}}",)), "after": task("gen")},
              parameters={"D": ["1", "2"]})
    state = drive_generators(run, {
        "gen[D=1]": {"one": task()},
        "gen[D=2]": {"two": task(command=("{{D}}",))},
    })
    assert state is State.COMPLETED
    run.assert_all_ended_before_start(["one", "two[D=1]", "two[D=2]"], ["after"])


def test_generator_without_children_adds_tasks_that_run():
    """Generated tasks of a leaf generator run, and the run waits for them."""
    run = Run({"gen": task(isGenerator=True)})
    assert drive_generators(run, {"gen": {"made": task()}}) is State.COMPLETED
    assert run.started == ["gen", "made"]


def test_generator_that_generates_nothing_releases_its_children():
    """An empty generated tasks object lets the generator's children run right after it."""
    run = Run({"gen": task(isGenerator=True), "after": task("gen")})
    assert drive_generators(run, {"gen": {}}) is State.COMPLETED
    assert run.started == ["gen", "after"]


def test_failed_generated_task_holds_back_the_generator_children():
    """If a generated task errors, the generator's children stay QUEUED."""
    run = Run({"gen": task(isGenerator=True), "after": task("gen")})
    run.start_ready()
    generate(run, "gen", {"made": task()})
    run.start_ready()
    run.end("made", succeeded=False)
    assert run.start_ready() == []
    assert run.engine.is_finished() and run.engine.final_state() is State.ERRORED
    assert run.state("after") is State.QUEUED


def test_generated_tasks_of_a_generator_with_expanded_children_gate_every_child():
    """Every instance of the generator's expanded child waits for the generated tasks."""
    run = Run({"gen": task(isGenerator=True), "after": task("gen", command=("{{D}}",))},
              parameters={"D": ["1", "2"]})
    drive_generators(run, {"gen": {"made": task()}})
    run.assert_all_ended_before_start(["made"], ["after[D=1]", "after[D=2]"])


# -- size --------------------------------------------------------------------------------

def test_hundred_thousand_wide_run_completes():
    """A fan-out to 100,000 instances and back in to one task runs every task once."""
    width = 100_000
    run = Run({"root": task(), "wide": task("root", command=("{{N}}",)), "sink": task("wide")},
              parameters={"N": [str(n) for n in range(width)]})
    assert run.drive() is State.COMPLETED
    assert len(run.started) == width + 2
    assert run.started[0] == "root" and run.started[-1] == "sink"
    assert run.engine.counts[State.COMPLETED] == width + 2


def test_hundred_thousand_independent_defined_tasks_complete():
    """100,000 separately defined tasks with a common child all run before it."""
    width = 100_000
    tasks = {f"t{n}": task() for n in range(width)}
    tasks["sink"] = task(*tasks)
    run = Run(tasks)
    assert run.drive() is State.COMPLETED
    assert len(run.started) == width + 1 and run.started[-1] == "sink"


def test_ten_thousand_long_chain_runs_in_order_without_recursion():
    """A 10,000-task chain parses, runs in chain order and completes."""
    length = 10_000
    tasks = {"t0": task()}
    tasks.update({f"t{n}": task(f"t{n - 1}") for n in range(1, length)})
    run = Run(tasks)
    assert run.drive() is State.COMPLETED
    assert run.started == [f"t{n}" for n in range(length)]


def test_ten_thousand_long_chain_of_expanded_groups_completes():
    """A chain of 10,000 expanded groups (joined through barriers) completes in order."""
    length = 10_000
    tasks = {"t0": task(command=("{{D}}",))}
    tasks.update({f"t{n}": task(f"t{n - 1}", command=("{{D}}",)) for n in range(1, length)})
    run = Run(tasks, parameters={"D": ["a", "b"]})
    assert run.drive() is State.COMPLETED
    assert run.started[-2:] == [f"t{length - 1}[D=a]", f"t{length - 1}[D=b]"]
    run.engine.resume()  # nothing left to run: every task stays COMPLETED
    assert run.engine.is_finished() and run.engine.final_state() is State.COMPLETED


def test_ten_thousand_long_cycle_is_found_without_recursion():
    """Cycle detection on a 10,000-task loop reports it instead of overflowing the stack."""
    from daggy.errors import SpecInvalid

    length = 10_000
    tasks = {f"t{n}": task(f"t{(n - 1) % length}") for n in range(length)}
    with pytest.raises(SpecInvalid) as caught:
        parse_run_spec({"tasks": tasks}, JOB_FORMAT)
    [error] = caught.value.errors
    assert error.startswith("tasks: cycle: t0 -> t1 -> ") and error.endswith(" -> t0")


class NoScanList(list):
    """A list that refuses whole-list walks, to catch O(N) scans in per-event code."""

    def _refuse(self, *args):
        raise AssertionError("per-event code walked a whole per-task list")

    __iter__ = __contains__ = __reversed__ = index = count = _refuse


class NoScanDict(dict):
    def _refuse(self, *args):
        raise AssertionError("per-event code walked the whole task index")

    __iter__ = keys = values = items = _refuse


def test_per_event_calls_never_walk_all_tasks():
    """pop_ready, mark_running, attempt_ended and retry_due touch only the tasks involved."""
    run = Run({"a": task(maxRetries=1), "b": task("a", command=("{{D}}",)), "c": task("b")},
              parameters={"D": [str(n) for n in range(50)]})
    engine = run.engine
    for attribute in ("_names", "_tasks", "_state", "_outstanding", "_successors",
                      "_retries_used", "_ready_flag"):
        setattr(engine, attribute, NoScanList(getattr(engine, attribute)))
    engine._index = NoScanDict(engine._index)
    succeeds = fails_first(1, "a")
    while (ready := engine.pop_ready()) is not None or run.retrying:
        if ready is None:
            engine.retry_due(run.retrying.pop())
            continue
        engine.mark_running(ready.name)
        outcome = engine.attempt_ended(ready.name, succeeds(ready.name))
        if outcome is Outcome.RETRY:
            run.retrying.append(ready.name)
    assert engine.is_finished() and engine.final_state() is State.COMPLETED
