"""The DAGs of bench/dagbench.py and how each runner is handed them.

A DAG is a ``Dag``: task names in an order where every parent comes before its children,
each task's argv, and its parents.  ``daggy_spec_bytes`` turns it into the JSON of a daggyd
run spec (edges as ``children``); ``bench/floor.py`` and ``bench/_luigi_runner.py`` read that
same file, and ``makefile`` writes the GNU make version.  Nothing here times anything.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field


@dataclass
class Dag:
    """Tasks in topological order; ``parents[name]`` lists the tasks ``name`` waits for."""

    names: list[str]
    commands: dict[str, list[str]]
    parents: dict[str, list[str]]
    children: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.children:
            self.children = {name: [] for name in self.names}
            for name in self.names:
                for parent in self.parents[name]:
                    self.children[parent].append(name)

    def __len__(self) -> int:
        return len(self.names)


def independent(count: int, command: list[str]) -> Dag:
    width = len(str(count - 1))
    names = [f"t{i:0{width}d}" for i in range(count)]
    return Dag(names, {name: command for name in names}, {name: [] for name in names})


def chain(length: int, command: list[str]) -> Dag:
    width = len(str(length - 1))
    names = [f"c{i:0{width}d}" for i in range(length)]
    parents = {name: ([names[i - 1]] if i else []) for i, name in enumerate(names)}
    return Dag(names, {name: command for name in names}, parents)


def lattice(layers: int, width: int, command: list[str]) -> Dag:
    """``layers`` × ``width`` tasks; task i of layer l waits for tasks i and i+1 (mod width)
    of layer l−1, so every task but those of the last layer has two children."""
    layer_digits, index_digits = len(str(layers - 1)), len(str(width - 1))

    def name(layer: int, index: int) -> str:
        return f"L{layer:0{layer_digits}d}_{index:0{index_digits}d}"

    names, parents = [], {}
    for layer in range(layers):
        for index in range(width):
            task = name(layer, index)
            names.append(task)
            if layer == 0:
                parents[task] = []
            else:
                parents[task] = sorted({name(layer - 1, index),
                                        name(layer - 1, (index + 1) % width)})
    return Dag(names, {task: command for task in names}, parents)


# -- what each runner reads ----------------------------------------------------------------


def daggy_spec_bytes(dag: Dag, tag: str) -> bytes:
    """The daggyd run spec, built as text (a 1,000,000-task spec is ~90 MB: no dict of
    dicts for it)."""
    parts = ['{"tag":', json.dumps(tag), ',"tasks":{']
    first = True
    command_json: dict[int, str] = {}
    for name in dag.names:
        command = dag.commands[name]
        encoded = command_json.get(id(command))
        if encoded is None:
            encoded = command_json[id(command)] = json.dumps(command)
        if not first:
            parts.append(",")
        first = False
        parts.append(f'{json.dumps(name)}:{{"job":{{"command":{encoded}}}')
        kids = dag.children[name]
        if kids:
            parts.append(f',"children":{json.dumps(kids)}')
        parts.append("}")
    parts.append("}}")
    return "".join(parts).encode()


def parameter_spec_bytes(values: int, tag: str) -> bytes:
    """One task expanded by a list parameter into ``values`` instances."""
    document = {"tag": tag, "parameters": {"N": [str(i) for i in range(values)]},
                "tasks": {"each": {"job": {"command": ["/bin/true", "{{N}}"]}}}}
    return json.dumps(document, separators=(",", ":")).encode()


def makefile(dag: Dag) -> str:
    """Phony targets, one per task: prerequisites = parents, recipe = the command (no
    shell metacharacters, so make execs it directly)."""
    lines = [".PHONY: all " + " ".join(dag.names), "",
             "all: " + " ".join(dag.names), ""]
    for name in dag.names:
        lines.append(f"{name}: {' '.join(dag.parents[name])}".rstrip())
        lines.append("\t@" + shlex.join(dag.commands[name]))
    return "\n".join(lines) + "\n"


def load_spec(path: str) -> tuple[list[str], dict[str, list[str]], dict[str, list[str]]]:
    """Read a spec written by ``daggy_spec_bytes`` (or any spec with ``job.command`` and
    edges as ``children`` and/or ``parents``, without parameters): names, argv by name and
    children by name."""
    with open(path, "rb") as spec_file:
        tasks = json.load(spec_file)["tasks"]
    children: dict[str, list[str]] = {name: [] for name in tasks}
    for name, task in tasks.items():
        for child in task.get("children") or ():
            children[name].append(child)
        for parent in task.get("parents") or ():
            children[parent].append(name)
    for name in children:
        children[name] = list(dict.fromkeys(children[name]))
    commands = {name: task["job"]["command"] for name, task in tasks.items()}
    return list(tasks), commands, children
