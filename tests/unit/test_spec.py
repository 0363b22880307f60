"""Run spec parsing and validation: defaults, edges, and every rejection with its exact path."""

from __future__ import annotations

from typing import Any

import pytest

from daggy.errors import SpecInvalid
from daggy.model import TaskDef
from daggy.spec import parse_generated_tasks, parse_run_spec


class CommandJobFormat:
    """Stands in for an executor: a job needs a non-empty ``command`` list of strings."""

    templatable_fields = ("command", "environment", "workDir")

    def validate_job(self, job: Any, path: str) -> list[str]:
        if "command" not in job:
            return [f"{path}.command: required"]
        command = job["command"]
        if not isinstance(command, list) or not command:
            return [f"{path}.command: must be a non-empty list of strings"]
        return [f"{path}.command[{index}]: must be a string"
                for index, item in enumerate(command) if not isinstance(item, str)]


JOB_FORMAT = CommandJobFormat()


def job(*command: str, **fields: Any) -> dict[str, Any]:
    return {"command": list(command) or ["/bin/true"], **fields}


def parse(doc: Any, **kwargs):
    return parse_run_spec(doc, JOB_FORMAT, **kwargs)


def errors_of(doc: Any, **kwargs) -> list[str]:
    with pytest.raises(SpecInvalid) as caught:
        parse(doc, **kwargs)
    return caught.value.errors


def by_name(spec) -> dict[str, TaskDef]:
    return {task.name: task for task in spec.tasks}


# -- accepted specs ----------------------------------------------------------------------

def test_minimal_spec_gets_documented_defaults():
    """A task with only a job gets no retries, no interval, no edges and is no generator."""
    spec = parse({"tasks": {"only": {"job": job("/bin/echo", "hi")}}})
    assert spec.tag is None
    assert spec.parameters == {}
    [task] = spec.tasks
    assert task == TaskDef(name="only", defined_name="only", job=job("/bin/echo", "hi"),
                           max_retries=0, retry_interval_seconds=0, parents=[], children=[],
                           is_generator=False, expansion_values={})


def test_every_task_attribute_is_kept():
    """Tag, retries, interval and generator flag given in the spec reach the task."""
    spec = parse({"tag": "nightly", "tasks": {
        "gen": {"job": job(), "maxRetries": 3, "retryIntervalSeconds": 2.5,
                "isGenerator": True}}})
    assert spec.tag == "nightly"
    [task] = spec.tasks
    assert (task.max_retries, task.retry_interval_seconds, task.is_generator) == (3, 2.5, True)


def test_null_optional_fields_mean_their_defaults():
    """``null`` parameters, tag, parents and children are read as absent."""
    spec = parse({"tag": None, "parameters": None, "tasks": {
        "a": {"job": job(), "parents": None, "children": None}}})
    assert spec.tag is None and spec.tasks[0].parents == []


def test_parents_and_children_are_united():
    """An edge may be stated from either end, or both, and counts once."""
    spec = parse({"tasks": {
        "a": {"job": job(), "children": ["b"]},
        "b": {"job": job(), "parents": ["a"]},
        "c": {"job": job(), "parents": ["b"]},
        "d": {"job": job(), "parents": ["b"], "children": ["e"]},
        "e": {"job": job()},
    }})
    tasks = by_name(spec)
    assert tasks["b"].parents == ["a"]
    assert tasks["b"].children == ["c", "d"]
    assert tasks["e"].parents == ["d"]
    assert tasks["a"].children == ["b"]
    groups = {group.defined_name: group for group in spec.groups}
    assert groups["b"].parents == ["a"] and groups["b"].children == ["c", "d"]


def test_task_parameters_alias_is_accepted():
    """``taskParameters`` is read exactly like ``parameters``."""
    spec = parse({"taskParameters": {"D": ["1", "2"]},
                  "tasks": {"a": {"job": job("echo", "{{D}}")}}})
    assert [task.name for task in spec.tasks] == ["a[D=1]", "a[D=2]"]
    assert spec.parameters == {"D": ["1", "2"]}


def test_placeholders_outside_templatable_fields_are_left_alone():
    """Only the executor's templatable fields are scanned and expanded."""
    spec = parse({"tasks": {"a": {"job": job("echo", note="{{NOT_A_PARAMETER}}")}}})
    assert spec.tasks[0].job["note"] == "{{NOT_A_PARAMETER}}"


# -- rejected specs ----------------------------------------------------------------------

def test_missing_command_is_rejected_with_its_path():
    """The executor's complaint about a missing command names the task's job."""
    assert errors_of({"tasks": {"pull": {"job": {}}}}) == ["tasks.pull.job.command: required"]


def test_empty_command_is_rejected_with_its_path():
    """An empty command list is the executor's error, under the task's path."""
    assert errors_of({"tasks": {"pull": {"job": {"command": []}}}}) == [
        "tasks.pull.job.command: must be a non-empty list of strings"]


def test_non_string_argument_is_rejected_with_its_index():
    """A number among the command arguments is named by its index."""
    assert errors_of({"tasks": {"pull": {"job": {"command": ["/bin/sleep", 5]}}}}) == [
        "tasks.pull.job.command[1]: must be a string"]


@pytest.mark.parametrize("task, error", [
    ({}, "tasks.pull.job: required"),
    ({"job": None}, "tasks.pull.job: required"),
    ({"job": ["/bin/true"]}, "tasks.pull.job: must be an object"),
    ({"job": "command"}, "tasks.pull.job: must be an object"),
])
def test_missing_or_non_object_job_is_rejected(task, error):
    """Every task needs a job object, whatever the executor would accept."""
    assert errors_of({"tasks": {"pull": task}}) == [error]


def test_misspelt_task_attribute_is_rejected_not_ignored():
    """``parent`` instead of ``parents`` is an error, so the edge is never silently lost."""
    assert errors_of({"tasks": {"a": {"job": job()},
                                "b": {"job": job(), "parent": ["a"]}}}) == [
        "tasks.b: unknown task attribute 'parent'; did you mean 'parents'?"]


def test_unknown_task_attribute_without_a_near_miss_lists_the_allowed_ones():
    """An attribute like no known one gets the list of allowed attributes."""
    assert errors_of({"tasks": {"a": {"job": job(), "command": ["x"]}}}) == [
        "tasks.a: unknown task attribute 'command' (allowed: job, maxRetries, "
        "retryIntervalSeconds, parents, children, isGenerator)"]


def test_unknown_top_level_key_is_rejected():
    """A misspelt top-level key is an error with a suggestion."""
    assert errors_of({"task": {}, "tasks": {"a": {"job": job()}}}) == [
        "task: unknown spec key 'task'; did you mean 'tasks'?"]


@pytest.mark.parametrize("relation", ["parents", "children"])
def test_reference_to_unknown_task_is_rejected(relation):
    """An edge to a task that is not defined names the list entry and the missing task."""
    assert errors_of({"tasks": {"a": {"job": job()},
                                "b": {"job": job(), relation: ["a", "nope"]}}}) == [
        f"tasks.b.{relation}[1]: unknown task 'nope'"]


@pytest.mark.parametrize("relation", ["parents", "children"])
def test_self_edge_is_rejected(relation):
    """A task listing itself as parent or child is an error at that entry."""
    assert errors_of({"tasks": {"a": {"job": job(), relation: ["a"]}}}) == [
        f"tasks.a.{relation}[0]: a task cannot depend on itself"]


def test_cycle_is_rejected_naming_its_tasks():
    """A cycle is reported once, naming the tasks on it in edge order."""
    assert errors_of({"tasks": {
        "a": {"job": job(), "children": ["b"]},
        "b": {"job": job(), "children": ["c"]},
        "c": {"job": job(), "children": ["a"]},
    }}) == ["tasks: cycle: a -> b -> c -> a"]


def test_cycle_report_leaves_out_tasks_that_only_lead_into_it():
    """Tasks upstream of a cycle are not named as part of it."""
    assert errors_of({"tasks": {
        "root": {"job": job(), "children": ["x"]},
        "x": {"job": job()},
        "y": {"job": job(), "parents": ["x"], "children": ["x"]},
    }}) == ["tasks: cycle: x -> y -> x"]


@pytest.mark.parametrize("field, value, path", [
    ("command", ["echo", "{{DATE}}"], "tasks.a.job.command[1]"),
    ("environment", {"WHEN": "at {{DATE}}"}, "tasks.a.job.environment.WHEN"),
    ("workDir", "/data/{{DATE}}", "tasks.a.job.workDir"),
])
def test_placeholder_without_parameter_is_rejected(field, value, path):
    """A placeholder naming no parameter is reported at the string that holds it."""
    task_job = job("echo") | {field: value}
    assert errors_of({"parameters": {"OTHER": "x"}, "tasks": {"a": {"job": task_job}}}) == [
        f"{path}: placeholder {{{{DATE}}}} names no parameter"]


@pytest.mark.parametrize("value, error", [
    (5, "parameters.DATE: must be a string or a list of strings"),
    (None, "parameters.DATE: must be a string or a list of strings"),
    ({"a": "b"}, "parameters.DATE: must be a string or a list of strings"),
    (["2021", 2022], "parameters.DATE[1]: parameter values must be strings"),
    (["2021", ["2022"]], "parameters.DATE[1]: parameter values must be strings"),
    ([], "parameters.DATE: must not be an empty list"),
])
def test_bad_parameter_value_is_rejected(value, error):
    """A parameter is a string or a non-empty list of strings, nothing else."""
    assert errors_of({"parameters": {"DATE": value}, "tasks": {"a": {"job": job()}}}) == [error]


def test_bad_parameter_is_reported_under_the_alias_used():
    """With ``taskParameters`` the path says ``taskParameters``."""
    assert errors_of({"taskParameters": {"DATE": 5}, "tasks": {"a": {"job": job()}}}) == [
        "taskParameters.DATE: must be a string or a list of strings"]


def test_placeholder_naming_an_invalid_parameter_is_reported_once():
    """Only the parameter is reported, not each placeholder that uses it."""
    assert errors_of({"parameters": {"DATE": 5},
                      "tasks": {"a": {"job": job("echo", "{{DATE}}")}}}) == [
        "parameters.DATE: must be a string or a list of strings"]


def test_parameters_must_be_an_object():
    """A list of parameters is rejected as a whole."""
    assert errors_of({"parameters": ["DATE"], "tasks": {"a": {"job": job()}}}) == [
        "parameters: must be an object of name -> string or list of strings"]


def test_bad_parameter_name_is_rejected():
    """Parameter names are identifiers (dots and dashes allowed after the first char)."""
    assert errors_of({"parameters": {"1DATE": "x", "A.b-c": "y"},
                      "tasks": {"a": {"job": job()}}}) == [
        "parameters.1DATE: parameter names must match ^[A-Za-z_][A-Za-z0-9_.-]*$"]


def test_both_parameter_keys_are_rejected():
    """``parameters`` and ``taskParameters`` together are ambiguous."""
    assert errors_of({"parameters": {}, "taskParameters": {},
                      "tasks": {"a": {"job": job()}}}) == [
        "taskParameters: give either parameters or its alias taskParameters, not both"]


@pytest.mark.parametrize("value", [-1, 1.5, "3", True, None])
def test_bad_max_retries_is_rejected(value):
    """maxRetries is an integer >= 0 (booleans and strings are not integers)."""
    assert errors_of({"tasks": {"a": {"job": job(), "maxRetries": value}}}) == [
        "tasks.a.maxRetries: must be an integer >= 0"]


@pytest.mark.parametrize("value", [-0.5, -1, float("nan"), float("inf"), 10 ** 400, "5", True,
                                   None])
def test_bad_retry_interval_is_rejected(value):
    """retryIntervalSeconds is a finite number >= 0 that fits a float."""
    assert errors_of({"tasks": {"a": {"job": job(), "retryIntervalSeconds": value}}}) == [
        "tasks.a.retryIntervalSeconds: must be a number >= 0"]


@pytest.mark.parametrize("value", [1, "true", None])
def test_non_boolean_is_generator_is_rejected(value):
    """isGenerator must be a JSON boolean."""
    assert errors_of({"tasks": {"a": {"job": job(), "isGenerator": value}}}) == [
        "tasks.a.isGenerator: must be true or false"]


@pytest.mark.parametrize("value", ["b", [1], {"b": True}])
def test_edges_must_be_lists_of_names(value):
    """A bare string or non-string entries in ``parents`` are rejected."""
    assert errors_of({"tasks": {"a": {"job": job(), "parents": value},
                                "b": {"job": job()}}}) == [
        "tasks.a.parents: must be a list of task names"]


@pytest.mark.parametrize("doc, error", [
    ([], "body: a DAG run spec must be a JSON object"),
    ({}, "tasks: required"),
    ({"tasks": {}}, "tasks: must define at least one task"),
    ({"tasks": []}, "tasks: must be an object of task name -> task"),
    ({"tasks": {"a": "job"}}, "tasks.a: must be an object with at least a job"),
    ({"tasks": {"": {"job": job()}}}, "tasks.: task names must not be empty"),
    ({"tasks": {"a\nb": {"job": job()}}},
     "tasks.a\nb: task names must not contain control characters"),
    ({"tag": 7, "tasks": {"a": {"job": job()}}}, "tag: must be a string"),
])
def test_malformed_documents_are_rejected(doc, error):
    """Structural problems get one error each, with the path of the bad part."""
    assert errors_of(doc) == [error]


def test_instance_name_colliding_with_a_defined_name_is_rejected():
    """A defined task may not be named like another task's instance."""
    assert errors_of({"parameters": {"D": ["1", "2"]}, "tasks": {
        "a": {"job": job("echo", "{{D}}")},
        "a[D=1]": {"job": job()},
    }}) == ["tasks.a[D=1]: expanded name 'a[D=1]' collides with an instance of 'a'"]


def test_repeated_parameter_value_is_a_collision():
    """Two equal values would give two instances with one name."""
    assert errors_of({"parameters": {"D": ["x", "x"]},
                      "tasks": {"a": {"job": job("echo", "{{D}}")}}}) == [
        "tasks.a: expanded name 'a[D=x]' collides with an instance of 'a'"]


def test_expansion_beyond_the_task_limit_is_rejected_before_expanding():
    """The instance count is checked against max_tasks before any instance is made."""
    assert errors_of({"parameters": {"D": ["1", "2", "3"], "E": ["1", "2"]},
                      "tasks": {"a": {"job": job("{{D}}", "{{E}}")}}}, max_tasks=5) == [
        "tasks: expansion would make 6 tasks (limit 5)"]


def test_a_trillion_instances_are_counted_not_made():
    """Four parameters of 1,000 values (10^12 instances) are refused at once: the count is
    a product, so nothing of that size is ever allocated."""
    values = [str(index) for index in range(1000)]
    parameters = {name: values for name in ("A", "B", "C", "D")}
    assert errors_of({"parameters": parameters,
                      "tasks": {"a": {"job": job("{{A}}", "{{B}}", "{{C}}", "{{D}}")}}}) == [
        "tasks: expansion would make 1000000000000 tasks (limit 1000000)"]


def test_job_nesting_beyond_the_limit_is_rejected_with_its_path():
    """Nesting is measured without recursion, so even 100,000 levels give a clean error."""
    deep: list = []
    for _ in range(100_000):
        deep = [deep]
    assert errors_of({"tasks": {"a": {"job": {"command": ["x"], "environment": deep}}}}) == [
        "tasks.a.job: nested deeper than 32 levels"]
    three_deep = {"tasks": {"a": {"job": {"command": ["x"], "environment": {"A": {"B": "c"}}}}}}
    assert "tasks.a.job: nested deeper than 2 levels" in errors_of(three_deep, max_job_depth=2)
    assert [task.name for task in parse(three_deep, max_job_depth=3).tasks] == ["a"]


def test_every_problem_is_reported_at_once():
    """Problems in the top level, in one task and in another task's edges all come back."""
    assert errors_of({
        "tag": 1,
        "tasks": {
            "a": {"job": {"command": []}, "maxRetries": -1},
            "b": {"job": job(), "parents": ["a", "ghost"]},
        },
    }) == [
        "tag: must be a string",
        "tasks.a.job.command: must be a non-empty list of strings",
        "tasks.a.maxRetries: must be an integer >= 0",
        "tasks.b.parents[1]: unknown task 'ghost'",
    ]


def test_spec_invalid_maps_to_a_400_json_body_listing_every_error():
    """The raised error carries the list for the API's ``errors`` field."""
    with pytest.raises(SpecInvalid) as caught:
        parse({"tasks": {"a": {"job": {}}, "b": {"job": {}}}})
    assert caught.value.status == 400
    assert caught.value.to_json() == {
        "error": "tasks.a.job.command: required; tasks.b.job.command: required",
        "errors": ["tasks.a.job.command: required", "tasks.b.job.command: required"],
    }


# -- generated tasks ---------------------------------------------------------------------

def generator_task(name: str = "gen", children: list[str] | None = None) -> TaskDef:
    return TaskDef(name=name, defined_name=name, job=job(), is_generator=True,
                   children=children or [])


class ProbeOnly:
    """A set of names that may be probed but never copied or iterated."""

    def __init__(self, names):
        self._names = set(names)

    def __contains__(self, name):
        return name in self._names

    def __iter__(self):
        raise AssertionError("existing names were iterated")


def test_generated_tasks_are_wired_between_generator_and_its_children():
    """Roots of the output follow the generator; leaves of the output precede its children."""
    groups = parse_generated_tasks(
        {"fetch": {"job": job("get", "{{DAY}}")},
         "merge": {"job": job("merge"), "parents": ["fetch"]}},
        JOB_FORMAT, {"DAY": ["mon", "tue"]}, generator_task(children=["report"]),
        ProbeOnly({"gen", "report"}))
    fetch, merge = groups
    assert [task.name for task in fetch.instances] == ["fetch[DAY=mon]", "fetch[DAY=tue]"]
    assert fetch.parents == ["gen"] and fetch.children == ["merge"]
    assert merge.parents == ["fetch"] and merge.children == ["report"]
    assert all(task.parents == ["gen"] for task in fetch.instances)
    assert merge.instances[0].children == ["report"]
    assert fetch.instances[1].job == job("get", "tue")


def test_generated_tasks_use_scalar_run_parameters():
    """Scalar run parameters substitute into generated jobs too."""
    [group] = parse_generated_tasks({"x": {"job": job("echo", "{{ROOT}}")}}, JOB_FORMAT,
                                    {"ROOT": "/srv"}, generator_task(), set())
    assert group.instances[0].name == "x"
    assert group.instances[0].job["command"] == ["echo", "/srv"]


def test_empty_generator_output_generates_nothing():
    """A generator that prints ``{}`` adds no tasks and is not an error."""
    assert parse_generated_tasks({}, JOB_FORMAT, {}, generator_task(), set()) == []


def test_generated_task_errors_are_under_output():
    """Problems in a generator's output are reported with paths under ``output``."""
    with pytest.raises(SpecInvalid) as caught:
        parse_generated_tasks(
            {"x": {"job": {}}, "y": {"job": job("{{NOPE}}"), "parents": ["gen"]}},
            JOB_FORMAT, {}, generator_task(), {"gen"})
    assert caught.value.errors == [
        "output.x.job.command: required",
        "output.y.job.command[0]: placeholder {{NOPE}} names no parameter",
        "output.y.parents[0]: unknown task 'gen'",
    ]


@pytest.mark.parametrize("doc", [[], "tasks", None])
def test_generator_output_must_be_a_tasks_object(doc):
    """Output that is not a tasks object is rejected."""
    with pytest.raises(SpecInvalid) as caught:
        parse_generated_tasks(doc, JOB_FORMAT, {}, generator_task(), set())
    assert caught.value.errors == ["output: must be an object of task name -> task"]


def test_generated_name_already_in_the_run_is_rejected():
    """A generated task may not reuse an existing task's name."""
    with pytest.raises(SpecInvalid) as caught:
        parse_generated_tasks({"report": {"job": job()}}, JOB_FORMAT, {}, generator_task(),
                              ProbeOnly({"gen", "report"}))
    assert caught.value.errors == ["output.report: task name 'report' is already used in this run"]


def test_generated_task_named_like_its_generator_is_rejected_even_when_expanded():
    """Reusing the generator's name is refused although the instances would be named apart."""
    with pytest.raises(SpecInvalid) as caught:
        parse_generated_tasks({"gen": {"job": job("{{D}}")}}, JOB_FORMAT, {"D": ["1", "2"]},
                              generator_task(), ProbeOnly({"gen"}))
    assert caught.value.errors == ["output.gen: task name 'gen' is already used in this run"]


def test_generated_instance_colliding_with_an_existing_task_is_rejected():
    """An expanded generated name equal to an existing task's name is a collision."""
    with pytest.raises(SpecInvalid) as caught:
        parse_generated_tasks({"b": {"job": job("{{D}}")}}, JOB_FORMAT, {"D": ["1", "2"]},
                              generator_task(), ProbeOnly({"gen", "b[D=2]"}))
    assert caught.value.errors == [
        "output.b: expanded name 'b[D=2]' collides with an existing task"]


def test_generated_output_respects_the_task_limit():
    """max_tasks applies to what one generator adds."""
    with pytest.raises(SpecInvalid) as caught:
        parse_generated_tasks({"b": {"job": job("{{D}}")}}, JOB_FORMAT, {"D": ["1", "2"]},
                              generator_task(), set(), max_tasks=1)
    assert caught.value.errors == ["output: expansion would make 2 tasks (limit 1)"]
