# -*- test-case-name: tests.unit.test_config -*-
"""The daemon config file: JSON or YAML, validated into a :class:`DaemonConfig`.

Pure: no Twisted imports.  Every problem is reported as ``<file>: <key path>: <problem>`` on
one line (several problems are joined with ``"; "``), so ``daggyd`` and ``twistd daggyd`` can
print it as a single usage error.  docs/config.md describes every key.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import yaml

from daggy.errors import json_type_name

from daggy.service.registry import (
    DEFAULT_REGISTRY,
    MiB,
    Component,
    Registry,
    Setting,
    listen_address,
    port_number,
    positive_integer,
    shown,
)

#: The ``source`` of a config built without a file.
DEFAULTS_SOURCE = "<defaults>"

DEFAULT_LOGGER = "OStreamLogger"
DEFAULT_EXECUTOR = "ForkingTaskExecutor"

_SCALAR_SETTINGS: dict[str, Setting] = {
    "ip": Setting("127.0.0.1", listen_address),
    "port": Setting(2503, port_number),
    "web-threads": Setting(10, positive_integer),
    "dag-threads": Setting(50, positive_integer),
    "max-request-bytes": Setting(64 * MiB, positive_integer),
}
_COMPONENT_KEYS = ("logger", "executor")
_TOP_LEVEL_KEYS = sorted([*_SCALAR_SETTINGS, *_COMPONENT_KEYS])


class ConfigError(Exception):
    """The daemon config file is missing, unreadable, unparsable or invalid.

    ``str()`` is one line naming the file and each offending key, e.g.
    ``configs/x.yaml: executor.config.threads: must be an integer >= 1 (got "ten")``.
    """

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = list(problems)
        super().__init__(f"{source}: " + "; ".join(self.problems))


@dataclass(frozen=True)
class ComponentChoice:
    """The logger or executor a config names, with its complete (defaulted) config."""

    name: str
    config: Mapping[str, Any]


@dataclass(frozen=True)
class DaemonConfig:
    """A validated daemon config; ``source`` is the file it came from (or ``<defaults>``)."""

    source: str
    ip: str
    port: int
    web_threads: int
    dag_threads: int
    max_request_bytes: int
    logger: ComponentChoice
    executor: ComponentChoice


def default_config(registry: Registry = DEFAULT_REGISTRY) -> DaemonConfig:
    """The config ``daggyd`` runs with when no file is given."""
    return validate_config({}, DEFAULTS_SOURCE, registry)


def load_config(path: str | Path, registry: Registry = DEFAULT_REGISTRY) -> DaemonConfig:
    """Read and validate a config file.

    The format follows the extension (``.json``; ``.yaml``/``.yml``); any other name is tried
    as JSON, then as YAML.

    :raises ConfigError: the file cannot be read or parsed, or a value is invalid.
    """
    return validate_config(read_document(path), str(path), registry)


def read_document(path: str | Path) -> Any:
    """The parsed contents of a config file (not yet validated).

    :raises ConfigError: the file cannot be read, is not UTF-8, or does not parse.
    """
    source = str(path)
    try:
        with open(path, "rb") as config_file:
            raw = config_file.read()
    except OSError as error:
        raise ConfigError(source, [f"cannot read the file: {error.strerror or error}"]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(source, [f"not UTF-8 text (bad byte at offset {error.start})"]) from None

    suffix = Path(path).suffix.lower()
    if suffix == ".json":
        parsers = [_parse_json]
    elif suffix in (".yaml", ".yml"):
        parsers = [_parse_yaml]
    else:
        parsers = [_parse_json, _parse_yaml]
    problems = []
    for parse in parsers:
        try:
            return parse(text)
        except _ParseError as error:
            problems.append(str(error))
    raise ConfigError(source, problems)


def validate_config(
    document: Any, source: str = DEFAULTS_SOURCE, registry: Registry = DEFAULT_REGISTRY
) -> DaemonConfig:
    """Check a parsed config document and fill in every default.

    An empty document (``null``, e.g. an empty YAML file) means all defaults.

    :raises ConfigError: listing every problem found.
    """
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise ConfigError(source, [f"must be an object of settings (got {json_type_name(document)})"])

    problems: list[str] = []
    values = {key: setting.default for key, setting in _SCALAR_SETTINGS.items()}
    for key, value in document.items():
        if key in _SCALAR_SETTINGS:
            problem = _SCALAR_SETTINGS[key].check(value)
            if problem:
                problems.append(f"{key}: {problem}")
            else:
                values[key] = value
        elif key not in _COMPONENT_KEYS:
            problems.append(f"{key}: unknown key (expected one of: {', '.join(_TOP_LEVEL_KEYS)})")

    # Checked after the scalars so that problems come out in a stable order.
    logger = _choose_component(document, "logger", DEFAULT_LOGGER, registry.loggers, problems)
    executor = _choose_component(
        document, "executor", DEFAULT_EXECUTOR, registry.executors, problems
    )
    if problems:
        raise ConfigError(source, problems)
    assert logger is not None and executor is not None
    return DaemonConfig(
        source=source,
        ip=values["ip"],
        port=values["port"],
        web_threads=values["web-threads"],
        dag_threads=values["dag-threads"],
        max_request_bytes=values["max-request-bytes"],
        logger=logger,
        executor=executor,
    )


def _choose_component(
    document: dict,
    kind: str,
    default_name: str,
    components: Mapping[str, Component],
    problems: list[str],
) -> ComponentChoice | None:
    """Validate the ``logger``/``executor`` section; ``None`` when it is invalid."""
    if kind not in document:
        return ComponentChoice(default_name, components[default_name].defaults())
    section = document[kind]
    known_names = ", ".join(sorted(components))
    if not isinstance(section, dict):
        problems.append(
            f'{kind}: must be an object with "name" and optional "config" (got {shown(section)})'
        )
        return None
    for key in section:
        if key not in ("name", "config"):
            problems.append(f"{kind}.{key}: unknown key (expected one of: config, name)")
    if "name" not in section:
        problems.append(f"{kind}.name: required (one of: {known_names})")
        return None
    name = section["name"]
    if not isinstance(name, str) or name not in components:
        problems.append(
            f"{kind}.name: unknown {kind} {shown(name)} (expected one of: {known_names})"
        )
        return None
    component = components[name]
    config = section.get("config", {})
    if not isinstance(config, dict):
        problems.append(f"{kind}.config: must be an object (got {shown(config)})")
        return None

    values = component.defaults()
    for key, value in config.items():
        setting = component.settings.get(key)
        if setting is None:
            if component.settings:
                expected = f"expected one of: {', '.join(sorted(component.settings))}"
            else:
                expected = f"{name} takes no config keys"
            problems.append(f"{kind}.config.{key}: unknown key for {name} ({expected})")
            continue
        problem = setting.check(value)
        if problem:
            problems.append(f"{kind}.config.{key}: {problem}")
        else:
            values[key] = value
    return ComponentChoice(name, values)


# -- parsing ---------------------------------------------------------------------------------


class _ParseError(Exception):
    """The text is not valid in one format; ``str()`` is one line."""


class _DuplicateKey(Exception):
    pass


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Both JSON and YAML libraries silently keep the last of two equal keys; in a config file
    # that hides a mistake, so it is an error here.
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKey(key)
        result[key] = value
    return result


def _parse_json(text: str) -> Any:
    try:
        return json.loads(text, object_pairs_hook=_unique_object)
    except json.JSONDecodeError as error:
        raise _ParseError(
            f"invalid JSON at line {error.lineno} column {error.colno}: {error.msg}"
        ) from None
    except _DuplicateKey as error:
        raise _ParseError(f"invalid JSON: duplicate key {shown(error.args[0])}") from None


class _UniqueKeySafeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that rejects a mapping with the same key twice."""


def _construct_unique_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> Iterator[dict]:
    seen = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            duplicate = key in seen
        except TypeError:  # unhashable; construct_mapping reports it
            continue
        if duplicate:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {shown(key)}", key_node.start_mark
            )
        seen.add(key)
    # Same two-step shape as SafeConstructor.construct_yaml_map, so aliases still resolve.
    data: dict = {}
    yield data
    data.update(loader.construct_mapping(node))


_UniqueKeySafeLoader.add_constructor("tag:yaml.org,2002:map", _construct_unique_mapping)


def _parse_yaml(text: str) -> Any:
    try:
        return yaml.load(text, Loader=_UniqueKeySafeLoader)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
        problem = " ".join(str(error.problem or error.context or "syntax error").split())
        raise _ParseError(f"invalid YAML{where}: {problem}") from None
    except yaml.YAMLError as error:
        raise _ParseError(f"invalid YAML: {' '.join(str(error).split())}") from None
