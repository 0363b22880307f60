"""Reading a run spec file (JSON or YAML) and applying ``-p NAME=VALUE`` and ``--tag``.

YAML is read with the safe loader, two rules stricter: a key given twice is an error (YAML
would keep the last one silently), and dates stay strings (``DATE: [2021-01-01]`` means the
string, as it would in JSON).  Anything that has no JSON equivalent (binary, sets, non-string
keys, NaN) is reported with its path, so what daggyc sends is what the file says.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable

from daggy._documents import (
    DocumentErrors,
    load_document,
    load_json,
    load_yaml,
    unique_key_loader,
)
from daggy.client.errors import SpecRejected

_SpecLoader = unique_key_loader(repr, timestamps=False)


def _parse_json(text: str) -> Any:
    return load_json(text, allow_constants=False)


def _parse_yaml(text: str) -> Any:
    return load_yaml(text, _SpecLoader)


def _child_path(path: str, key: Any) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)


def json_problems(document: Any) -> list[str]:
    """Where ``document`` holds something JSON cannot (walked without recursion)."""
    problems = []
    stack: list[tuple[str, Any]] = [("", document)]
    while stack:
        path, value = stack.pop()
        where = path or "the document"
        if isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(key, str):
                    problems.append(f"{where}: key {key!r} is not a string; quote it")
                else:
                    stack.append((_child_path(path, key), item))
        elif isinstance(value, list):
            stack.extend((_child_path(path, index), item) for index, item in enumerate(value))
        elif isinstance(value, float) and not math.isfinite(value):
            problems.append(f"{where}: {value!r} is not a JSON number")
        elif value is not None and not isinstance(value, (str, int, float, bool)):
            problems.append(f"{where}: a YAML {type(value).__name__} has no JSON form; "
                            "quote it to make it a string")
    return sorted(problems)


def parse_spec_text(text: str, name: str) -> Any:
    """The document in ``text``: JSON for ``*.json``, YAML for ``*.yaml``/``*.yml``, else
    JSON if it parses as JSON, then YAML.

    :raises SpecRejected: it parses as neither, or holds values JSON cannot.
    """
    try:
        document = load_document(text, name, _parse_json, _parse_yaml)
    except DocumentErrors as error:
        if len(error.problems) == 1:
            raise SpecRejected(f"{name}: {error.problems[0]}") from None
        raise SpecRejected(f"{name}: neither JSON nor YAML:", error.problems) from None
    problems = json_problems(document)
    if problems:
        raise SpecRejected(f"{name}: values JSON cannot hold:", problems)
    return document


def read_spec_file(path: str) -> tuple[Any, str]:
    """The parsed spec in the file ``path`` (``-`` reads stdin) and a name for messages.

    :raises SpecRejected: the file cannot be read or parsed.
    """
    if path == "-":
        import sys

        name = "<stdin>"
        raw = sys.stdin.buffer.read()
    else:
        name = path
        try:
            raw = Path(path).read_bytes()
        except OSError as error:
            raise SpecRejected(f"cannot read {path}: {error.strerror or error}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise SpecRejected(f"{name}: not UTF-8 text (bad byte at offset {error.start})") from None
    return parse_spec_text(text, name), name


def parse_parameter_options(options: Iterable[str]) -> dict[str, list[str]]:
    """``-p NAME=VALUE`` options → name → values, in the order given.

    Only the first ``=`` separates; the value is taken verbatim (commas included).

    :raises ValueError: an option without ``=`` or with an empty name.
    """
    parameters: dict[str, list[str]] = {}
    for option in options:
        name, separator, value = option.partition("=")
        if not separator:
            raise ValueError(f"{option!r}: expected NAME=VALUE")
        if not name:
            raise ValueError(f"{option!r}: the parameter name is empty")
        parameters.setdefault(name, []).append(value)
    return parameters


def apply_overrides(spec: Any, parameters: dict[str, list[str]],
                    tag: str | None = None) -> Any:
    """A copy of ``spec`` with ``parameters`` set and ``tag`` replaced (when given).

    A name given once becomes a string, or a one-element list when the spec itself makes
    that parameter a list (so instance names keep their shape); a name given several times
    becomes the list of its values.  The spec's ``taskParameters`` alias is kept if the
    spec uses it.  A spec that is not an object is returned unchanged: validation reports it.
    """
    if not isinstance(spec, dict) or (not parameters and tag is None):
        return spec
    spec = dict(spec)
    if tag is not None:
        spec["tag"] = tag
    if parameters:
        key = "taskParameters" if "taskParameters" in spec and "parameters" not in spec \
            else "parameters"
        existing = spec.get(key)
        if existing is not None and not isinstance(existing, dict):
            return spec  # invalid as it stands; validation says so at its path
        merged = dict(existing or {})
        for name, values in parameters.items():
            if len(values) > 1 or isinstance(merged.get(name), list):
                merged[name] = list(values)
            else:
                merged[name] = values[0]
        spec[key] = merged
    return spec
