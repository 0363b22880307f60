"""Reading JSON and YAML documents that people write (daemon configs, run spec files) more
strictly than the libraries do by default: a key given twice is an error, since both
``json`` and PyYAML would silently keep the last one and so hide a mistake.

Errors come as :class:`DocumentError`, one line naming the format and, where the parser
knows it, the line and column.  Pure: no Twisted imports.
"""

from __future__ import annotations

import json
from pathlib import PurePath
from typing import Any, Callable, Iterator

import yaml

KeyShown = Callable[[Any], str]

_MERGE = "tag:yaml.org,2002:merge"
_MAP = "tag:yaml.org,2002:map"
_TIMESTAMP = "tag:yaml.org,2002:timestamp"


class DocumentError(ValueError):
    """The text is not a valid document: ``str()`` is one line, e.g. ``invalid JSON at line
    3 column 5: Expecting ',' delimiter``."""


class _DuplicateKey(Exception):
    pass


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKey(key)
        result[key] = value
    return result


def _reject_constant(name: str) -> Any:
    raise DocumentError(f"invalid JSON: {name} is not JSON")


def load_json(text: str, *, show_key: KeyShown = repr, allow_constants: bool = True) -> Any:
    """The JSON document in ``text``, refusing duplicate keys (shown with ``show_key``) and,
    unless ``allow_constants``, ``NaN`` and ``Infinity``.

    :raises DocumentError: it is not such a document.
    """
    try:
        return json.loads(text, object_pairs_hook=_unique_object,
                          parse_constant=None if allow_constants else _reject_constant)
    except json.JSONDecodeError as error:
        raise DocumentError(f"invalid JSON at line {error.lineno} column {error.colno}: "
                            f"{error.msg}") from None
    except _DuplicateKey as error:
        raise DocumentError(f"invalid JSON: duplicate key {show_key(error.args[0])}") from None


def unique_key_loader(show_key: KeyShown = repr, *,
                      timestamps: bool = True) -> type[yaml.SafeLoader]:
    """A ``yaml.SafeLoader`` subclass that refuses a mapping with the same key twice (shown
    with ``show_key``); without ``timestamps``, dates stay strings, as they would in JSON."""

    class UniqueKeyLoader(yaml.SafeLoader):
        pass

    def construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> Iterator[dict]:
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == _MERGE:
                continue
            key = loader.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:  # unhashable; construct_mapping reports it
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {show_key(key)}", key_node.start_mark)
            seen.add(key)
        # Same two-step shape as SafeConstructor.construct_yaml_map, so aliases resolve.
        data: dict = {}
        yield data
        data.update(loader.construct_mapping(node))

    UniqueKeyLoader.add_constructor(_MAP, construct_mapping)
    if not timestamps:
        UniqueKeyLoader.yaml_implicit_resolvers = {
            first: [(tag, pattern) for tag, pattern in resolvers if tag != _TIMESTAMP]
            for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
        }
    return UniqueKeyLoader


def load_yaml(text: str, loader: type[yaml.SafeLoader]) -> Any:
    """The YAML document in ``text``, read with ``loader`` (see :func:`unique_key_loader`).

    :raises DocumentError: it is not a valid document.
    """
    try:
        return yaml.load(text, Loader=loader)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
        problem = " ".join(str(error.problem or error.context or "syntax error").split())
        raise DocumentError(f"invalid YAML{where}: {problem}") from None
    except yaml.YAMLError as error:
        raise DocumentError(f"invalid YAML: {' '.join(str(error).split())}") from None


class DocumentErrors(ValueError):
    """A document parsed in none of the formats tried: one problem per format."""

    def __init__(self, problems: list[str]):
        super().__init__("; ".join(problems))
        self.problems = problems


def load_document(text: str, name: str, parse_json: Callable[[str], Any],
                  parse_yaml: Callable[[str], Any]) -> Any:
    """The document in ``text``: JSON for ``*.json``, YAML for ``*.yaml``/``*.yml``, else
    JSON if it parses as JSON, then YAML.

    :param name: the file's name (only its suffix matters).
    :raises DocumentErrors: each parser tried raised a :class:`DocumentError`.
    """
    suffix = PurePath(name).suffix.lower()
    parsers = ([parse_json] if suffix == ".json" else [parse_yaml]
               if suffix in (".yaml", ".yml") else [parse_json, parse_yaml])
    problems = []
    for parse in parsers:
        try:
            return parse(text)
        except DocumentError as error:
            problems.append(str(error))
    raise DocumentErrors(problems)
