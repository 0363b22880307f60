"""Parameter expansion: which tasks multiply, how instances are named, what is substituted."""

from __future__ import annotations

from typing import Any

from daggy.spec import parse_run_spec
from daggy.spec.expand import instance_name, iter_strings, map_strings, placeholders_in_job


class AcceptingJobFormat:
    """Stands in for an executor that accepts any job object."""

    templatable_fields = ("command", "environment", "workDir")

    def validate_job(self, job: Any, path: str) -> list[str]:
        return []


def parse(doc: dict[str, Any]):
    return parse_run_spec(doc, AcceptingJobFormat())


def job(*command: str, **fields: Any) -> dict[str, Any]:
    return {"command": list(command), **fields}


DATES = ["2021-01-01", "2021-01-02", "2021-01-03"]
NAMES = ["alice", "bob"]


def chain_spec() -> dict[str, Any]:
    return {
        "parameters": {"DATE": DATES, "NAME": NAMES, "UNUSED": ["u1", "u2", "u3", "u4"]},
        "tasks": {
            "A": {"job": job("fetch", "{{DATE}}"), "children": ["B"]},
            "B": {"job": job("index")},
            "C": {"job": job("mail", "{{NAME}}", "{{DATE}}"), "parents": ["B"]},
        },
    }


def test_chain_expands_to_three_plus_one_plus_six_tasks():
    """Each task multiplies only by the parameters it uses: 3 + 1 + 6 = 10 tasks."""
    spec = parse(chain_spec())
    counts = {group.defined_name: len(group.instances) for group in spec.groups}
    assert counts == {"A": 3, "B": 1, "C": 6}
    assert len(spec.tasks) == 10


def test_instances_are_named_by_sorted_parameter_names_in_value_order():
    """Names list used parameters sorted by name; values follow the order given."""
    spec = parse(chain_spec())
    names = [task.name for task in spec.tasks]
    assert names == [
        "A[DATE=2021-01-01]", "A[DATE=2021-01-02]", "A[DATE=2021-01-03]",
        "B",
        "C[DATE=2021-01-01,NAME=alice]", "C[DATE=2021-01-01,NAME=bob]",
        "C[DATE=2021-01-02,NAME=alice]", "C[DATE=2021-01-02,NAME=bob]",
        "C[DATE=2021-01-03,NAME=alice]", "C[DATE=2021-01-03,NAME=bob]",
    ]


def test_instances_keep_defined_name_values_and_edges():
    """Every instance records its defined task, its values, and the defined task's edges."""
    spec = parse(chain_spec())
    instance = next(task for task in spec.tasks if task.name == "C[DATE=2021-01-02,NAME=bob]")
    assert instance.defined_name == "C"
    assert instance.expansion_values == {"DATE": "2021-01-02", "NAME": "bob"}
    assert instance.job == job("mail", "bob", "2021-01-02")
    assert instance.parents == ["B"]
    a_instances = [task for task in spec.tasks if task.defined_name == "A"]
    assert all(task.children == ["B"] for task in a_instances)
    assert spec.tasks[3].name == "B" and spec.tasks[3].expansion_values == {}


def test_scalar_parameter_substitutes_without_multiplying_or_naming():
    """A string parameter fills its placeholder but adds no instances and no name part."""
    spec = parse({"parameters": {"ROOT": "/srv", "DAY": ["mon", "tue"]},
                  "tasks": {"a": {"job": job("ls", "{{ROOT}}/{{DAY}}")},
                            "b": {"job": job("ls", "{{ROOT}}")}}})
    assert [task.name for task in spec.tasks] == ["a[DAY=mon]", "a[DAY=tue]", "b"]
    assert spec.tasks[1].job["command"] == ["ls", "/srv/tue"]
    assert spec.tasks[1].expansion_values == {"DAY": "tue", "ROOT": "/srv"}
    assert spec.tasks[2].job["command"] == ["ls", "/srv"]


def test_single_value_list_still_names_the_instance():
    """A one-element list does not multiply, but its value is part of the name."""
    spec = parse({"parameters": {"DAY": ["mon"]}, "tasks": {"a": {"job": job("{{DAY}}")}}})
    assert [task.name for task in spec.tasks] == ["a[DAY=mon]"]


def test_placeholder_used_in_several_fields_takes_one_value_per_instance():
    """Repeated uses of one parameter agree within an instance and do not multiply."""
    spec = parse({"parameters": {"D": ["1", "2"]}, "tasks": {"a": {"job": job(
        "run", "{{D}}", "--again={{D}}{{D}}",
        environment={"DAY": "{{D}}", "{{D}}": "key is not expanded"},
        workDir="/w/{{D}}")}}})
    assert [task.job for task in spec.tasks] == [
        job("run", "1", "--again=11", environment={"DAY": "1", "{{D}}": "key is not expanded"},
            workDir="/w/1"),
        job("run", "2", "--again=22", environment={"DAY": "2", "{{D}}": "key is not expanded"},
            workDir="/w/2"),
    ]


def test_substitution_is_single_pass():
    """A value that itself looks like a placeholder is inserted literally."""
    spec = parse({"parameters": {"A": ["{{B}}"], "B": "b"},
                  "tasks": {"t": {"job": job("echo", "{{A}}")}}})
    assert spec.tasks[0].job["command"] == ["echo", "{{B}}"]
    assert spec.tasks[0].name == "t[A={{B}}]"


def test_other_job_fields_are_copied_unchanged():
    """Fields outside the templatable ones keep their values, placeholders included."""
    spec = parse({"parameters": {"D": ["1", "2"]},
                  "tasks": {"a": {"job": job("{{D}}", timeoutSeconds=5, note="{{D}}")}}})
    assert [(t.job["timeoutSeconds"], t.job["note"]) for t in spec.tasks] == [
        (5, "{{D}}"), (5, "{{D}}")]


def test_instances_do_not_share_or_change_the_submitted_job():
    """Expanding copies the templated fields, so instances and the spec stay independent."""
    doc = {"parameters": {"D": ["1", "2"]},
           "tasks": {"a": {"job": job("{{D}}", environment={"X": "{{D}}"})}}}
    spec = parse(doc)
    first, second = spec.tasks
    first.job["command"].append("extra")
    first.job["environment"]["X"] = "changed"
    assert second.job == job("2", environment={"X": "2"})
    assert doc["tasks"]["a"]["job"] == job("{{D}}", environment={"X": "{{D}}"})


def test_expansion_is_deterministic():
    """Parsing one spec twice gives the same tasks in the same order."""
    assert parse(chain_spec()).tasks == parse(chain_spec()).tasks


def test_three_parameters_multiply():
    """Three used list parameters give the full cartesian product."""
    spec = parse({"parameters": {"X": ["1", "2"], "Y": ["a", "b", "c"], "Z": ["p", "q"]},
                  "tasks": {"t": {"job": job("{{Z}}{{X}}{{Y}}")}}})
    assert len(spec.tasks) == 12
    assert spec.tasks[0].name == "t[X=1,Y=a,Z=p]"
    assert spec.tasks[-1].job["command"] == ["q2c"]


def test_instance_name_without_values_is_the_defined_name():
    """A task that uses no list parameter keeps its defined name."""
    assert instance_name("a", {}) == "a"
    assert instance_name("a", {"b": "2", "A": "1"}) == "a[A=1,b=2]"


def test_iter_strings_names_each_string_by_path():
    """Strings inside lists and dict values are found with their paths; others skipped."""
    found = list(iter_strings({"k": ["x", 1, {"deep": "y"}], "n": None}, "job.f"))
    assert found == [("job.f.k[0]", "x"), ("job.f.k[2].deep", "y")]


def test_map_strings_leaves_non_strings_alone():
    """Numbers, booleans and nulls inside a field survive substitution unchanged."""
    assert map_strings(["a", 1, True, None, {"k": "b"}], str.upper) == [
        "A", 1, True, None, {"k": "B"}]


def test_placeholders_in_job_reports_only_templatable_fields():
    """Placeholders are looked for only in the fields the executor names."""
    found = list(placeholders_in_job(
        {"command": ["{{A}}", "x{{B}}y{{A}}"], "other": "{{C}}"}, ("command", "workDir"), "p"))
    assert found == [("p.command[0]", "A"), ("p.command[1]", "B"), ("p.command[1]", "A")]
