"""Parse and validate a DAG run spec into expanded :class:`~daggy.model.TaskDef` s.

Every problem is collected (not just the first) as ``"<path>: <message>"`` and raised
together as :class:`~daggy.errors.SpecInvalid`.  Job formats belong to the executor, which
validates ``job`` objects and names the fields where ``{{NAME}}`` placeholders expand.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from typing import Any, Container, Iterable, Protocol

from daggy.errors import SpecInvalid
from daggy.limits import RunLimits
from daggy.model import TaskDef, is_finite_number
from daggy.spec.expand import (
    PARAMETER_NAME,
    expand_job,
    instance_count,
    instance_name,
    placeholders_in_job,
)

TOP_LEVEL_KEYS = ("tag", "parameters", "taskParameters", "tasks")
TASK_KEYS = ("job", "maxRetries", "retryIntervalSeconds", "parents", "children", "isGenerator")

# Checked before anything is expanded; jobs are copied, frozen and encoded by recursive
# code, so their nesting is bounded before the interpreter's recursion limit is near.
DEFAULT_MAX_TASKS = RunLimits.max_tasks_per_run
DEFAULT_MAX_JOB_DEPTH = RunLimits.max_job_depth
_CONTROL_CHARACTER = re.compile(r"[\x00-\x1f]")


class JobFormat(Protocol):
    templatable_fields: tuple[str, ...]

    def validate_job(self, job: Any, path: str) -> list[str]: ...


@dataclass
class TaskGroup:
    """A defined task and the instances expansion made of it."""

    defined_name: str
    instances: list[TaskDef]
    parents: list[str]
    children: list[str]


@dataclass
class ParsedSpec:
    tag: str | None
    parameters: dict[str, list[str] | str]
    groups: list[TaskGroup] = field(default_factory=list)

    @property
    def tasks(self) -> list[TaskDef]:
        return [task for group in self.groups for task in group.instances]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _unknown_key(path: str, key: Any, allowed: Iterable[str], what: str) -> str:
    allowed = list(allowed)
    key = str(key)
    close = difflib.get_close_matches(key, allowed, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f" (allowed: {', '.join(allowed)})"
    return f"{path}: unknown {what} {key!r}{hint}"


def _parse_parameters(doc: dict[str, Any], errors: list[str]) -> tuple[dict[str, Any], set[str]]:
    """The valid parameters, and every declared name (valid or not): a placeholder naming
    an invalid parameter is reported once, at the parameter, not again at the placeholder."""
    key = "parameters"
    if "parameters" in doc and "taskParameters" in doc:
        errors.append("taskParameters: give either parameters or its alias taskParameters, not both")
    elif "taskParameters" in doc:
        key = "taskParameters"
    raw = doc.get(key, {})
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        errors.append(f"{key}: must be an object of name -> string or list of strings")
        return {}, set()
    parameters: dict[str, Any] = {}
    for name, value in raw.items():
        path = f"{key}.{name}"
        # fullmatch: with match, the pattern's "$" would also match before a final newline.
        if not isinstance(name, str) or not PARAMETER_NAME.fullmatch(name):
            errors.append(f"{path}: parameter names must match {PARAMETER_NAME.pattern}")
            continue
        if isinstance(value, str):
            parameters[name] = value
        elif isinstance(value, list):
            bad = [i for i, item in enumerate(value) if not isinstance(item, str)]
            if bad:
                errors.append(f"{path}[{bad[0]}]: parameter values must be strings")
            elif not value:
                errors.append(f"{path}: must not be an empty list")
            else:
                parameters[name] = value
        else:
            errors.append(f"{path}: must be a string or a list of strings")
    return parameters, {name for name in raw if isinstance(name, str)}


def _string_list(value: Any, path: str, errors: list[str]) -> list[str]:
    if value is None:
        return []
    if type(value) is list:
        for item in value:
            if type(item) is not str:
                break
        else:
            return list(value)
    errors.append(f"{path}: must be a list of task names")
    return []


@dataclass
class _DefinedTask:
    name: str
    path: str
    job: dict[str, Any]
    max_retries: int
    retry_interval_seconds: float
    is_generator: bool
    parents: list[str]
    children: list[str]
    used_parameters: list[str]


def _job_deeper_than(job: dict[str, Any], limit: int) -> bool:
    """Whether lists/objects nest more than ``limit`` (at least 2) levels in ``job``.  Most
    jobs are two levels deep (fields holding strings, lists or objects of strings): those
    are recognised without the general walk."""
    for value in job.values():
        kind = type(value)
        if kind is list:
            items = value
        elif kind is dict:
            items = value.values()
        elif kind is str:
            continue
        else:
            return _deeper_than(job, limit)
        for item in items:
            if type(item) is not str:
                return _deeper_than(job, limit)
    return False


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether lists/objects nest more than ``limit`` levels in ``value`` (iterative, so a
    value of any depth can be measured)."""
    pending = [(value, 1)]
    while pending:
        value, depth = pending.pop()
        if isinstance(value, dict):
            items = value.values()
        elif isinstance(value, list):
            items = value
        else:
            continue
        if depth > limit:
            return True
        pending.extend((item, depth + 1) for item in items if isinstance(item, (dict, list)))
    return False


def _parse_task(name: Any, task: Any, path: str, executor: JobFormat,
                parameter_names: set[str], errors: list[str],
                max_job_depth: int = DEFAULT_MAX_JOB_DEPTH) -> _DefinedTask | None:
    if not isinstance(name, str):
        errors.append(f"{path}: task names must be strings")
        return None
    if not name:
        errors.append(f"{path}: task names must not be empty")
        return None
    if _CONTROL_CHARACTER.search(name):
        errors.append(f"{path}: task names must not contain control characters")
        return None
    if not isinstance(task, dict):
        errors.append(f"{path}: must be an object with at least a job")
        return None
    before = len(errors)
    for key in task:
        if key not in TASK_KEYS:
            errors.append(_unknown_key(path, key, TASK_KEYS, "task attribute"))
    job = task.get("job")
    if job is None:
        errors.append(f"{path}.job: required")
    elif not isinstance(job, dict):
        # Checked here, not left to the executor: expansion copies the job as an object.
        errors.append(f"{path}.job: must be an object")
    elif _job_deeper_than(job, max_job_depth):
        errors.append(f"{path}.job: nested deeper than {max_job_depth} levels")
    else:
        errors.extend(executor.validate_job(job, f"{path}.job"))
    max_retries = task.get("maxRetries", 0)
    if not _is_int(max_retries) or max_retries < 0:
        errors.append(f"{path}.maxRetries: must be an integer >= 0")
    interval = task.get("retryIntervalSeconds", 0)
    if not is_finite_number(interval) or interval < 0:
        errors.append(f"{path}.retryIntervalSeconds: must be a number >= 0")
    is_generator = task.get("isGenerator", False)
    if not isinstance(is_generator, bool):
        errors.append(f"{path}.isGenerator: must be true or false")
    parents = _string_list(task.get("parents"), f"{path}.parents", errors)
    children = _string_list(task.get("children"), f"{path}.children", errors)
    if len(errors) > before:
        return None
    used: set[str] = set()
    for string_path, placeholder in placeholders_in_job(job, executor.templatable_fields,
                                                        f"{path}.job"):
        if placeholder not in parameter_names:
            errors.append(f"{string_path}: placeholder {{{{{placeholder}}}}} names no parameter")
        else:
            used.add(placeholder)
    return _DefinedTask(name, path, job, max_retries, interval, is_generator, parents,
                        children, sorted(used))


def _is_acyclic(children: dict[str, set[str]], parents: dict[str, set[str]]) -> bool:
    """Kahn's algorithm: cheaper than a depth-first search when, as nearly always, there is
    no cycle to describe."""
    waiting = {name: len(names) for name, names in parents.items()}
    ready = [name for name, count in waiting.items() if count == 0]
    finished = 0
    while ready:
        name = ready.pop()
        finished += 1
        for child in children[name]:
            waiting[child] -= 1
            if not waiting[child]:
                ready.append(child)
    return finished == len(children)


def _find_cycle(order: list[str], children: dict[str, set[str]]) -> list[str] | None:
    """Return the names on one cycle, or None.  Iterative DFS: specs can be 10^5 tasks deep."""
    WHITE, GREY, BLACK = 0, 1, 2
    colour = dict.fromkeys(order, WHITE)
    for root in order:
        if colour[root] != WHITE:
            continue
        colour[root] = GREY
        stack = [(root, iter(sorted(children[root])))]
        while stack:
            node, successors = stack[-1]
            advanced = False
            for child in successors:
                if colour[child] == GREY:
                    path = [entry[0] for entry in stack]
                    return path[path.index(child):] + [child]
                if colour[child] == WHITE:
                    colour[child] = GREY
                    stack.append((child, iter(sorted(children[child]))))
                    advanced = True
                    break
            if not advanced:
                colour[node] = BLACK
                stack.pop()
    return None


def _report_bad_references(task: _DefinedTask, declared: Container[str], errors: list[str]
                           ) -> None:
    """A reference to an invalid (but declared) task is not reported: that task is."""
    for relation, names in (("parents", task.parents), ("children", task.children)):
        for index, other in enumerate(names):
            if other == task.name:
                errors.append(f"{task.path}.{relation}[{index}]: a task cannot depend on itself")
            elif other not in declared:
                errors.append(f"{task.path}.{relation}[{index}]: unknown task {other!r}")


def _build_groups(raw_tasks: Any, tasks_path: str, executor: JobFormat,
                  parameters: dict[str, Any], parameter_names: set[str], errors: list[str],
                  existing_names: Container[str], max_tasks: int,
                  max_job_depth: int = DEFAULT_MAX_JOB_DEPTH,
                  allow_empty: bool = False) -> list[TaskGroup]:
    """Validate a tasks object and expand it.  Nothing is expanded once ``errors`` holds
    anything (including problems found by the caller before)."""
    if not isinstance(raw_tasks, dict):
        errors.append(f"{tasks_path}: must be an object of task name -> task")
        return []
    if not raw_tasks:
        if not allow_empty:
            errors.append(f"{tasks_path}: must define at least one task")
        return []
    before = len(errors)
    lists = {name: value if isinstance(value, list) else [value]
             for name, value in parameters.items()}
    defined: dict[str, _DefinedTask] = {}
    for name, task in raw_tasks.items():
        parsed = _parse_task(name, task, f"{tasks_path}.{name}", executor, parameter_names,
                             errors, max_job_depth)
        if parsed is not None:
            defined[name] = parsed

    # References are checked against every declared name, so one broken task does not hide
    # (or cause) reference errors in the others.
    edges: dict[str, set[str]] = {name: set() for name in defined}
    reverse: dict[str, set[str]] = {name: set() for name in defined}
    for task in defined.values():
        name = task.name
        dangling = False
        for other in task.parents:
            if other in defined and other != name:
                edges[other].add(name)
                reverse[name].add(other)
            else:
                dangling = True
        for other in task.children:
            if other in defined and other != name:
                edges[name].add(other)
                reverse[other].add(name)
            else:
                dangling = True
        if dangling:
            _report_bad_references(task, raw_tasks, errors)
    if len(errors) > before:
        return []
    if not _is_acyclic(edges, reverse):
        cycle = _find_cycle(list(defined), edges)
        errors.append(f"{tasks_path}: cycle: {' -> '.join(cycle)}")
        return []
    if errors:
        return []

    total = sum(instance_count(task.used_parameters, lists) for task in defined.values())
    if total > max_tasks:
        errors.append(f"{tasks_path}: expansion would make {total} tasks (limit {max_tasks})")
        return []

    groups: list[TaskGroup] = []
    # Only the new names are collected; ``existing_names`` (up to the whole run) is only
    # probed, so parsing a generator's output costs what the output holds.
    seen: dict[str, str] = {}  # instance name -> its defined task
    for task in defined.values():
        if task.name in existing_names:
            errors.append(f"{task.path}: task name {task.name!r} is already used in this run")
            continue
        parents = sorted(reverse[task.name])
        children = sorted(edges[task.name])
        if not task.used_parameters:
            # One instance named as defined: nothing to expand, substitute or name.
            if task.name in seen:
                errors.append(f"{task.path}: expanded name {task.name!r} collides with an "
                              f"instance of {seen[task.name]!r}")
                continue
            seen[task.name] = task.name
            groups.append(TaskGroup(task.name, [TaskDef(
                name=task.name, defined_name=task.name, job=task.job,
                max_retries=task.max_retries, retry_interval_seconds=task.retry_interval_seconds,
                parents=parents, children=children, is_generator=task.is_generator,
                expansion_values={})], parents, children))
            continue
        instances = []
        for values, job in expand_job(task.job, executor.templatable_fields,
                                      task.used_parameters, lists):
            shown = {key: value for key, value in values.items()
                     if isinstance(parameters[key], list)} if values else values
            name = instance_name(task.name, shown)
            if name in seen or name in existing_names:
                other = (f"an instance of {seen[name]!r}" if name in seen
                         else "an existing task")
                errors.append(f"{task.path}: expanded name {name!r} collides with {other}")
                continue
            seen[name] = task.name
            instances.append(TaskDef(
                name=name, defined_name=task.name, job=job, max_retries=task.max_retries,
                retry_interval_seconds=task.retry_interval_seconds, parents=parents,
                children=children, is_generator=task.is_generator, expansion_values=values))
        groups.append(TaskGroup(task.name, instances, parents, children))
    return groups


def parse_run_spec(doc: Any, executor: JobFormat, max_tasks: int = DEFAULT_MAX_TASKS,
                   max_job_depth: int = DEFAULT_MAX_JOB_DEPTH) -> ParsedSpec:
    """Validate and expand a DAG run spec (a parsed JSON value).

    :raises SpecInvalid: with every problem found, each prefixed by its path.
    """
    errors: list[str] = []
    if not isinstance(doc, dict):
        raise SpecInvalid(["body: a DAG run spec must be a JSON object"])
    for key in doc:
        if key not in TOP_LEVEL_KEYS:
            errors.append(_unknown_key(key, key, TOP_LEVEL_KEYS, "spec key"))
    tag = doc.get("tag")
    if tag is not None and not isinstance(tag, str):
        errors.append("tag: must be a string")
    parameters, parameter_names = _parse_parameters(doc, errors)
    if "tasks" not in doc:
        errors.append("tasks: required")
        groups = []
    else:
        groups = _build_groups(doc["tasks"], "tasks", executor, parameters, parameter_names,
                               errors, (), max_tasks, max_job_depth)
    if errors:
        raise SpecInvalid(errors)
    return ParsedSpec(tag=tag, parameters=parameters, groups=groups)


def parse_generated_tasks(doc: Any, executor: JobFormat, parameters: dict[str, Any],
                          generator: TaskDef, existing_names: Container[str],
                          max_tasks: int = DEFAULT_MAX_TASKS,
                          max_job_depth: int = DEFAULT_MAX_JOB_DEPTH) -> list[TaskGroup]:
    """Validate and expand the tasks a generator printed (a tasks object; ``{}`` generates
    nothing and gives an empty list).

    ``existing_names`` is anything answering ``name in existing_names`` for the run's task
    names (the run's :class:`~daggy.dag.DagEngine` will do); it is only probed, never
    copied.  New task names (defined and expanded) must not be in it.

    Generated tasks may depend on each other; the run wires them after ``generator`` and
    before the generator's children, which is reflected in their ``parents``/``children``.

    :raises SpecInvalid: with paths under ``output``.
    """
    errors: list[str] = []
    groups = _build_groups(doc, "output", executor, parameters, set(parameters), errors,
                           existing_names, max_tasks, max_job_depth, allow_empty=True)
    if errors:
        raise SpecInvalid(errors)
    for group in groups:
        if not group.parents:
            group.parents = [generator.name]
        if not group.children:
            group.children = list(generator.children)
        for task in group.instances:
            task.parents = list(group.parents)
            task.children = list(group.children)
    return groups
