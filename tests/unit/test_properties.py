"""Property tests: any document parses or is rejected with SpecInvalid, accepted specs expand
to the right counts, and the engine keeps every edge and every task under any schedule."""

from __future__ import annotations

import copy
import math
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daggy.dag import DagEngine, Outcome
from daggy.errors import SpecInvalid
from daggy.model import State, TaskDef
from daggy.spec import parse_generated_tasks, parse_run_spec

PROPERTY_SETTINGS = settings(
    max_examples=150, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


class CommandJobFormat:
    """Stands in for an executor: a job needs a non-empty ``command`` list of strings."""

    templatable_fields = ("command", "environment", "workDir")

    def validate_job(self, job: Any, path: str) -> list[str]:
        command = job.get("command")
        if not isinstance(command, list) or not command:
            return [f"{path}.command: must be a non-empty list of strings"]
        return [f"{path}.command[{index}]: must be a string"
                for index, item in enumerate(command) if not isinstance(item, str)]


JOB_FORMAT = CommandJobFormat()

# -- arbitrary documents -----------------------------------------------------------------

TASK_NAMES = st.sampled_from(["a", "b", "c", "", "a[D=1]", "{{D}}", "x\ny"]) | st.text(max_size=4)
SCALARS = (st.none() | st.booleans() | st.integers(-3, 3) | st.just(10 ** 400)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=6)
           | st.sampled_from(["{{D}}", "{{E}}", "x{{D}}y", "{{}}", "{{ D }}", "{{{D}}}"]))
JSON = st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4),
                                                                         inner, max_size=3),
    max_leaves=8)
NAME_LISTS = st.lists(TASK_NAMES, max_size=3) | JSON
JOBS = st.fixed_dictionaries({}, optional={
    "command": st.lists(SCALARS, max_size=3) | JSON,
    "environment": st.dictionaries(st.text(max_size=3), SCALARS, max_size=2) | JSON,
    "workDir": SCALARS,
    "other": JSON,
}) | JSON
TASKS = st.fixed_dictionaries({}, optional={
    "job": JOBS, "maxRetries": SCALARS, "retryIntervalSeconds": SCALARS,
    "parents": NAME_LISTS, "children": NAME_LISTS, "isGenerator": SCALARS, "parent": JSON,
}) | JSON
PARAMETERS = st.dictionaries(
    st.sampled_from(["D", "E", "1X", ""]) | st.text(max_size=3),
    st.lists(st.sampled_from(["1", "2", "x,E=1"]) | SCALARS, max_size=3) | SCALARS,
    max_size=3) | JSON
TASK_OBJECTS = st.dictionaries(TASK_NAMES, TASKS, max_size=4) | JSON
SPECS = st.fixed_dictionaries({}, optional={
    "tag": SCALARS, "parameters": PARAMETERS, "taskParameters": PARAMETERS,
    "tasks": TASK_OBJECTS, "tsks": JSON,
}) | JSON


def assert_well_formed_rejection(error: SpecInvalid) -> None:
    assert error.errors
    assert all(isinstance(message, str) and ": " in message for message in error.errors)


def assert_well_formed_tasks(tasks: list[TaskDef]) -> None:
    names = [task.name for task in tasks]
    assert len(names) == len(set(names))
    assert all(isinstance(task.job, dict) for task in tasks)


@PROPERTY_SETTINGS
@given(SPECS)
def test_any_document_parses_or_is_rejected_with_spec_invalid(doc):
    """Whatever JSON arrives, parsing returns tasks with unique names or raises SpecInvalid."""
    try:
        spec = parse_run_spec(doc, JOB_FORMAT)
    except SpecInvalid as error:
        assert_well_formed_rejection(error)
    else:
        assert spec.tasks
        assert_well_formed_tasks(spec.tasks)


@PROPERTY_SETTINGS
@given(TASK_OBJECTS, st.dictionaries(st.sampled_from(["D", "E"]),
                                     st.lists(st.sampled_from(["1", "2"]), min_size=1,
                                              max_size=2, unique=True) | st.just("s")))
def test_any_generator_output_parses_or_is_rejected_with_spec_invalid(output, parameters):
    """Whatever a generator prints, it becomes task groups or a SpecInvalid."""
    generator = TaskDef(name="a", defined_name="a", job={"command": ["g"]}, is_generator=True)
    try:
        groups = parse_generated_tasks(output, JOB_FORMAT, parameters, generator, {"a"})
    except SpecInvalid as error:
        assert_well_formed_rejection(error)
    else:
        tasks = [task for group in groups for task in group.instances]
        assert_well_formed_tasks(tasks)
        assert "a" not in {task.name for task in tasks}


# -- valid DAG specs ---------------------------------------------------------------------

VALUES = st.text(alphabet="abc123", min_size=1, max_size=3)


@st.composite
def dag_specs(draw, max_tasks: int = 6, max_values: int = 3, failures: bool = False):
    """A valid spec: random parameters, edges stated from either end, random use of
    placeholders, tasks defined in a shuffled order."""
    parameters = {}
    for index in range(draw(st.integers(0, 3))):
        if draw(st.booleans()):
            parameters[f"P{index}"] = draw(st.lists(VALUES, min_size=1, max_size=max_values,
                                                    unique=True))
        else:
            parameters[f"P{index}"] = draw(VALUES)
    count = draw(st.integers(1, max_tasks))
    names = [f"t{index}" for index in range(count)]
    tasks: dict[str, dict[str, Any]] = {}
    for index, name in enumerate(names):
        used = draw(st.lists(st.sampled_from(sorted(parameters)), unique=True)) if parameters \
            else []
        job: dict[str, Any] = {"command": ["run", name] + [f"--{p}={{{{{p}}}}}" for p in used]}
        if used and draw(st.booleans()):
            job["environment"] = {"FIRST": "{{" + used[0] + "}}"}
        tasks[name] = {"job": job, "parents": [], "children": []}
        if failures:
            tasks[name]["maxRetries"] = draw(st.integers(0, 2))
    for child in range(count):
        for parent in range(child):
            if draw(st.integers(0, 2)) == 0:
                way = draw(st.sampled_from(["parents", "children", "both"]))
                if way in ("parents", "both"):
                    tasks[names[child]]["parents"].append(names[parent])
                if way in ("children", "both"):
                    tasks[names[parent]]["children"].append(names[child])
    order = draw(st.permutations(names))
    return {"parameters": parameters, "tasks": {name: tasks[name] for name in order}}


def container_paths(value: Any, path: tuple = ()) -> list[tuple]:
    """Paths (key/index tuples) of every dict and list inside ``value``, itself included."""
    found = []
    if isinstance(value, (dict, list)):
        found.append(path)
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            found.extend(container_paths(item, path + (key,)))
    return found


MUTATION_VALUES = (SCALARS | JSON | TASK_NAMES | st.sampled_from(["t0", "t1", "P0", "P1"])
                   | st.lists(st.sampled_from(["t0", "t1", "t2", "ghost"]), max_size=3))
MUTATION_KEYS = (st.sampled_from(["parent", "tasks", "t0", "t1", "P0", "command", "job",
                                  "maxRetries", "children", "taskParameters"])
                 | st.text(max_size=3))


@st.composite
def mutated_specs(draw):
    """A valid spec with a few random values replaced, added or removed anywhere in it."""
    doc = copy.deepcopy(draw(dag_specs(max_tasks=4, max_values=2)))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(container_paths(doc)))
        target = doc
        for key in path:
            target = target[key]
        action = draw(st.sampled_from(["set", "delete", "add"]))
        if isinstance(target, dict):
            if action == "delete" and target:
                del target[draw(st.sampled_from(sorted(target)))]
            elif action == "set" and target:
                target[draw(st.sampled_from(sorted(target)))] = draw(MUTATION_VALUES)
            else:
                target[draw(MUTATION_KEYS)] = draw(MUTATION_VALUES)
        elif action == "delete" and target:
            del target[draw(st.integers(0, len(target) - 1))]
        elif action == "set" and target:
            target[draw(st.integers(0, len(target) - 1))] = draw(MUTATION_VALUES)
        else:
            target.append(draw(MUTATION_VALUES))
    return doc


@PROPERTY_SETTINGS
@given(mutated_specs())
def test_damaged_valid_specs_parse_or_are_rejected_with_spec_invalid(doc):
    """A valid spec with random damage still parses cleanly or raises only SpecInvalid."""
    try:
        spec = parse_run_spec(doc, JOB_FORMAT)
    except SpecInvalid as error:
        assert_well_formed_rejection(error)
    else:
        assert_well_formed_tasks(spec.tasks)


def used_lists(doc: dict, defined_name: str) -> dict[str, list[str]]:
    command = " ".join(doc["tasks"][defined_name]["job"]["command"])
    return {name: value for name, value in doc["parameters"].items()
            if "{{" + name + "}}" in command and isinstance(value, list)}


def required_before(spec) -> dict[str, set[str]]:
    """For every task, the tasks that must be COMPLETED before it starts (direct edges)."""
    instances: dict[str, list[str]] = {}
    for task in spec.tasks:
        instances.setdefault(task.defined_name, []).append(task.name)
    return {task.name: {name for parent in task.parents for name in instances[parent]}
            for task in spec.tasks}


@PROPERTY_SETTINGS
@given(dag_specs())
def test_accepted_specs_expand_to_the_product_of_used_list_lengths(doc):
    """Each defined task has as many instances as the product of its used list lengths."""
    spec = parse_run_spec(doc, JOB_FORMAT)
    for group in spec.groups:
        lists = used_lists(doc, group.defined_name)
        assert len(group.instances) == math.prod(len(values) for values in lists.values())
        for task in group.instances:
            assert task.defined_name == group.defined_name
            shown = {name: task.expansion_values[name] for name in lists}
            expected_name = group.defined_name if not shown else group.defined_name + "[" + \
                ",".join(f"{name}={shown[name]}" for name in sorted(shown)) + "]"
            assert task.name == expected_name
            assert "{{" not in " ".join(task.job["command"])
    assert_well_formed_tasks(spec.tasks)


def simulate(spec, data, attempts_to_fail: dict[str, int] | None = None):
    """Drive an engine under a schedule chosen by hypothesis; check edges at each start."""
    engine = DagEngine()
    engine.add_groups(spec.groups)
    required = required_before(spec)
    attempts_to_fail = attempts_to_fail or {}
    attempts: dict[str, int] = {}
    running: list[str] = []
    retrying: list[str] = []
    while True:
        options = (["start"] if engine.ready_count else []) + \
            [("end", name) for name in running] + [("retry", name) for name in retrying]
        if not options:
            break
        choice = data.draw(st.sampled_from(options))
        if choice == "start":
            task = engine.pop_ready()
            assert all(engine.state(name) is State.COMPLETED for name in required[task.name])
            assert engine.state(task.name) is State.QUEUED
            engine.mark_running(task.name)
            running.append(task.name)
            attempts[task.name] = attempts.get(task.name, 0) + 1
        elif choice[0] == "end":
            name = choice[1]
            running.remove(name)
            succeeded = attempts[name] > attempts_to_fail.get(name, 0)
            if engine.attempt_ended(name, succeeded) is Outcome.RETRY:
                retrying.append(name)
        else:
            retrying.remove(choice[1])
            engine.retry_due(choice[1])
    assert engine.is_finished()
    return engine, attempts


@PROPERTY_SETTINGS
@given(dag_specs(max_values=2), st.data())
def test_engine_respects_every_edge_and_completes_every_task(doc, data):
    """Under any schedule no task starts before all parent instances completed, and every
    task runs exactly once and ends COMPLETED when all attempts succeed."""
    spec = parse_run_spec(doc, JOB_FORMAT)
    engine, attempts = simulate(spec, data)
    assert attempts == {task.name: 1 for task in spec.tasks}
    assert all(engine.state(task.name) is State.COMPLETED for task in spec.tasks)
    assert engine.final_state() is State.COMPLETED


@PROPERTY_SETTINGS
@given(dag_specs(max_values=2, failures=True), st.data())
def test_failures_stop_exactly_the_descendants(doc, data):
    """A task completes iff its parents completed and it failed at most maxRetries times;
    it errors iff its parents completed and it failed more often; otherwise it stays QUEUED."""
    spec = parse_run_spec(doc, JOB_FORMAT)
    attempts_to_fail = {task.name: data.draw(st.integers(0, 3)) for task in spec.tasks}
    engine, attempts = simulate(spec, data, attempts_to_fail)
    required = required_before(spec)
    expected: dict[str, State] = {}
    pending = list(spec.tasks)
    while pending:
        for task in list(pending):
            if all(name in expected for name in required[task.name]):
                pending.remove(task)
                if any(expected[name] is not State.COMPLETED for name in required[task.name]):
                    expected[task.name] = State.QUEUED
                elif attempts_to_fail[task.name] <= task.max_retries:
                    expected[task.name] = State.COMPLETED
                else:
                    expected[task.name] = State.ERRORED
    assert {name: engine.state(name) for name in expected} == expected
    for task in spec.tasks:
        ran = expected[task.name] is not State.QUEUED
        assert attempts.get(task.name, 0) == (
            0 if not ran else min(attempts_to_fail[task.name], task.max_retries) + 1)
    any_error = State.ERRORED in expected.values()
    assert engine.final_state() is (State.ERRORED if any_error else State.COMPLETED)


def generated_output(output_doc: dict, prefix: str) -> dict:
    """The tasks of ``output_doc`` renamed under ``prefix``, using parameters Q* not P*."""
    output = {}
    for name, task in output_doc["tasks"].items():
        command = [part.replace("{{P", "{{Q") for part in task["job"]["command"]]
        output[prefix + name] = {
            "job": {"command": command},
            "parents": [prefix + parent for parent in task["parents"]],
            "children": [prefix + child for child in task["children"]],
        }
    return output


@PROPERTY_SETTINGS
@given(dag_specs(max_tasks=4, max_values=2), dag_specs(max_tasks=3, max_values=2), st.data())
def test_generated_tasks_run_between_generator_and_its_children(doc, output_doc, data):
    """Whichever task generates, its output runs after it, in its own edge order, and
    before every instance of its children."""
    doc = copy.deepcopy(doc)
    doc["parameters"].update({name.replace("P", "Q"): value
                              for name, value in output_doc["parameters"].items()})
    generator_name = data.draw(st.sampled_from(sorted(doc["tasks"])))
    doc["tasks"][generator_name]["isGenerator"] = True
    spec = parse_run_spec(doc, JOB_FORMAT)
    engine = DagEngine()
    engine.add_groups(spec.groups)

    required = required_before(spec)
    generated: list[str] = []
    running: list[str] = []
    while True:
        options = (["start"] if engine.ready_count else []) + running
        if not options:
            break
        choice = data.draw(st.sampled_from(options))
        if choice == "start":
            task = engine.pop_ready()
            assert all(engine.state(name) is State.COMPLETED for name in required[task.name])
            engine.mark_running(task.name)
            running.append(task.name)
            continue
        running.remove(choice)
        task = engine.task(choice)
        if task.is_generator:
            groups = parse_generated_tasks(generated_output(output_doc, choice + "/"),
                                           JOB_FORMAT, spec.parameters, task, engine)
            instances = {group.defined_name: [t.name for t in group.instances]
                         for group in groups}
            made = [name for names in instances.values() for name in names]
            for group in groups:
                before = {name for parent in group.parents for name in instances.get(parent, [])}
                for instance in group.instances:
                    required[instance.name] = before | {choice}
            for waiting in spec.tasks:
                if choice in required[waiting.name]:
                    required[waiting.name] |= set(made)
            generated.extend(made)
            engine.add_groups(groups, after=choice)
        engine.attempt_ended(choice, True)
    assert engine.is_finished() and engine.final_state() is State.COMPLETED
    generator_count = sum(1 for t in spec.tasks if t.defined_name == generator_name)
    per_generator = sum(len(group.instances) for group in parse_run_spec(
        {"parameters": doc["parameters"], "tasks": generated_output(output_doc, "")},
        JOB_FORMAT).groups)
    assert len(generated) == per_generator * generator_count
    assert len(engine) == len(spec.tasks) + len(generated)


def assert_bookkeeping_consistent(engine: DagEngine, spec, required) -> None:
    """Recompute readiness and counts from task states alone and compare."""
    states = {task.name: engine.state(task.name) for task in spec.tasks}
    ready = {name for name, state in states.items() if state is State.QUEUED
             and all(states[parent] is State.COMPLETED for parent in required[name])}
    assert engine.ready_count == len(ready)
    for state in State:
        assert engine.counts[state] == sum(1 for value in states.values() if value is state)


@PROPERTY_SETTINGS
@given(dag_specs(max_tasks=5, max_values=2, failures=True), st.data())
def test_operator_actions_keep_the_engine_consistent(doc, data):
    """Any mix of attempts, retries, kills, resumes and per-task operator actions keeps
    readiness equal to "QUEUED with every parent instance COMPLETED", and never starts a
    task early."""
    spec = parse_run_spec(doc, JOB_FORMAT)
    engine = DagEngine()
    engine.add_groups(spec.groups)
    required = required_before(spec)
    names = [task.name for task in spec.tasks]
    running: list[str] = []
    for _ in range(data.draw(st.integers(1, 60))):
        states = {name: engine.state(name) for name in names}
        options: list[tuple[str, str | None]] = []
        if engine.ready_count and not engine.killed:
            options.append(("start", None))
        options += [("end", name) for name in running]
        options += [(action, name) for name, state in states.items()
                    for action, allowed in (
                        ("retry_due", {State.RETRY}),
                        ("complete", {State.QUEUED, State.RETRY, State.ERRORED, State.KILLED}),
                        ("requeue", {State.ERRORED, State.KILLED, State.COMPLETED}),
                        ("kill_task", {State.QUEUED, State.RETRY, State.RUNNING}))
                    if state in allowed]
        options.append(("kill", None))
        if not running:
            options.append(("resume", None))
        action, name = data.draw(st.sampled_from(options))
        if action == "start":
            task = engine.pop_ready()
            assert all(engine.state(parent) is State.COMPLETED for parent in required[task.name])
            engine.mark_running(task.name)
            running.append(task.name)
        elif action == "end":
            running.remove(name)
            verdict = data.draw(st.sampled_from(["succeeded", "failed", "killed"]))
            engine.attempt_ended(name, verdict == "succeeded", killed=verdict == "killed")
        elif action == "retry_due":
            engine.retry_due(name)
        elif action == "complete":
            engine.complete_task(name)
        elif action == "requeue":
            engine.requeue_task(name)
        elif action == "kill_task":
            engine.kill_task(name)  # a RUNNING one ends later through "end"
        elif action == "kill":
            assert sorted(engine.kill()) == sorted(running)
        else:
            engine.resume()
            assert not engine.killed
            assert all(engine.state(n) in (State.QUEUED, State.COMPLETED) for n in names)
        assert_bookkeeping_consistent(engine, spec, required)
