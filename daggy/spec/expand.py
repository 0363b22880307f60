"""``{{NAME}}`` placeholder expansion.

A task is expanded over the cartesian product of the parameters its templatable job fields
actually use; parameters it does not use do not multiply it.  Instance names are
``defined[NAME=value,OTHER=value]`` with the used parameter names sorted, so they are
deterministic and never equal a defined name that has no ``[``.
"""

from __future__ import annotations

import itertools
import re
from typing import Any, Callable, Iterator

PLACEHOLDER = re.compile(r"\{\{([^{}]*)\}\}")
PARAMETER_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")


def iter_strings(value: Any, path: str) -> Iterator[tuple[str, str]]:
    """Yield ``(path, string)`` for every string in a job field (lists and dict values)."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from iter_strings(item, f"{path}[{index}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from iter_strings(item, f"{path}.{key}")


def map_strings(value: Any, transform: Callable[[str], str]) -> Any:
    """A copy of ``value`` with ``transform`` applied to every string inside it."""
    if isinstance(value, str):
        return transform(value)
    if isinstance(value, list):
        return [map_strings(item, transform) for item in value]
    if isinstance(value, dict):
        return {key: map_strings(item, transform) for key, item in value.items()}
    return value


def _mentions_placeholder(value: Any) -> bool:
    """Whether any string in a job field holds ``{{`` (most jobs have none: their paths are
    then never built)."""
    if isinstance(value, str):
        return "{{" in value
    if isinstance(value, list):
        return any(map(_mentions_placeholder, value))
    if isinstance(value, dict):
        return any(map(_mentions_placeholder, value.values()))
    return False


def placeholders_in_job(job: dict[str, Any], fields: tuple[str, ...], path: str
                        ) -> Iterator[tuple[str, str]]:
    """Yield ``(path, name)`` for every placeholder in the templatable fields of ``job``."""
    for field in fields:
        if field in job and _mentions_placeholder(job[field]):
            for string_path, text in iter_strings(job[field], f"{path}.{field}"):
                for match in PLACEHOLDER.finditer(text):
                    yield string_path, match.group(1)


def instance_name(defined_name: str, values: dict[str, str]) -> str:
    if not values:
        return defined_name
    inside = ",".join(f"{name}={values[name]}" for name in sorted(values))
    return f"{defined_name}[{inside}]"


def instance_count(used: list[str], parameters: dict[str, list[str]]) -> int:
    count = 1
    for name in used:
        count *= len(parameters[name])
    return count


def expand_job(job: dict[str, Any], fields: tuple[str, ...], used: list[str],
               parameters: dict[str, list[str]]) -> Iterator[tuple[dict[str, str], dict[str, Any]]]:
    """Yield ``(expansion_values, job)`` per instance, in a deterministic order: used
    parameters sorted by name, each parameter's values in the order given."""
    if not used:
        yield {}, job  # one instance, nothing to substitute: no copy
        return
    names = sorted(used)
    for combination in itertools.product(*(parameters[name] for name in names)):
        values = dict(zip(names, combination))

        def substitute(text: str) -> str:
            return PLACEHOLDER.sub(lambda match: values.get(match.group(1), match.group(0)), text)

        expanded = dict(job)
        for field in fields:
            if field in job:
                expanded[field] = map_strings(job[field], substitute)
        yield values, expanded
