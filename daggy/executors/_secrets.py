# -*- test-case-name: tests.unit.test_forking_executor -*-
"""Secret environment variables: a job names them in ``secretEnvironment``, the daemon
supplies their values.

The values come from the executor's ``secretsFile`` (read once, at start) and otherwise from
daggyd's own environment; a run spec only ever holds the names.  So the values never reach
the stored task definitions, the API, the event lines or the logs: no code path here puts a
value into a message, and :class:`SecretStore` does not show them in its ``repr``.
"""

from __future__ import annotations

import json
import os
import re
import stat
from typing import Any, Iterable, Mapping

import yaml
from twisted.logger import Logger

from daggy.errors import json_type_name

log = Logger()

FIELD = "secretEnvironment"
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
ENV_NAME_RULE = "letters, digits and '_', not starting with a digit"


def is_env_name(name: Any) -> bool:
    """Whether ``name`` is a portable environment variable name (a shell identifier)."""
    return isinstance(name, str) and bool(_ENV_NAME.match(name))


class MissingSecret(KeyError):
    """A job names a secret the daemon does not have; ``str()`` says which."""

    def __str__(self) -> str:
        return str(self.args[0])


class SecretStore:
    """Secret values by name: from the secrets file first, else from daggyd's environment.

    :param from_file: the contents of the executor's ``secretsFile`` (may be empty).
    :param environ: daggyd's environment (the snapshot the executor uses).
    :param source: the file's path, for messages (never a value).
    """

    def __init__(self, from_file: Mapping[str, str] | None = None,
                 environ: Mapping[str, str] | None = None, source: str | None = None):
        self._from_file = dict(from_file or {})
        self._environ = environ if environ is not None else {}
        self._source = source

    def __contains__(self, name: object) -> bool:
        return name in self._from_file or name in self._environ

    def __repr__(self) -> str:
        where = f"{len(self._from_file)} from {self._source or 'the secrets file'}"
        return f"<SecretStore: {where}, then daggyd's environment>"

    def missing(self, name: str) -> str:
        """Why ``name`` cannot be given to a task."""
        where = (f"secretsFile {self._source}" if self._source
                 else "secretsFile (none is configured)")
        return (f"no secret named {name!r} (it is neither in the executor's {where} nor in "
                "daggyd's environment)")

    def values(self, names: Iterable[str]) -> dict[str, str]:
        """``{name: value}`` for ``names``.

        :raises MissingSecret: a name the daemon has no value for (a run recovered by a
            daemon started without that secret).
        """
        found: dict[str, str] = {}
        for name in names:
            if name in self._from_file:
                found[name] = self._from_file[name]
            elif name in self._environ:
                found[name] = self._environ[name]
            else:
                raise MissingSecret(f"{FIELD}: {self.missing(name)}")
        return found


def secret_environment_errors(job: Mapping[str, Any], path: str,
                              secrets: SecretStore | None) -> list[str]:
    """Problems with a job's ``secretEnvironment``: a list of distinct, valid environment
    variable names (placeholders are not expanded there), none of them also in the job's
    ``environment``, each one a secret the daemon has (not checked when ``secrets`` is
    None).  Names are quoted in messages; values never are."""
    if FIELD not in job:
        return []
    names = job[FIELD]
    where = f"{path}.{FIELD}"
    if not isinstance(names, list):
        return [f"{where}: must be a list of environment variable names"]
    environment = job.get("environment")
    environment = environment if isinstance(environment, dict) else {}
    errors: list[str] = []
    seen: set[str] = set()
    for index, name in enumerate(names):
        here = f"{where}[{index}]"
        if not isinstance(name, str):
            errors.append(f"{here}: must be a string")
        elif "{{" in name:
            errors.append(f"{here}: placeholders are not allowed in secret names")
        elif not is_env_name(name):
            errors.append(f"{here}: must be an environment variable name ({ENV_NAME_RULE})")
        elif name in seen:
            errors.append(f"{here}: {name!r} is listed twice")
        elif name in environment:
            errors.append(f"{here}: {name!r} is also set in environment; a variable comes "
                          "either from the spec or from the daemon's secrets, not both")
        elif secrets is not None and name not in secrets:
            errors.append(f"{here}: {secrets.missing(name)}")
        if isinstance(name, str):
            seen.add(name)
    return errors


# -- the secrets file ------------------------------------------------------------------------


class _DuplicateName(Exception):
    pass


def _unique_object(pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
    result: dict[Any, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateName(key)
        result[key] = value
    return result


class _UniqueKeyLoader(yaml.SafeLoader):
    """A SafeLoader that refuses a name given twice (YAML would keep the last silently)."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    pairs = [(loader.construct_object(key, deep=True), loader.construct_object(value, deep=True))
             for key, value in node.value]
    return _unique_object(pairs)


_UniqueKeyLoader.add_constructor("tag:yaml.org,2002:map", _construct_mapping)


def _parse(text: str, path: str) -> Any:
    """The document; errors give a position, never the text around it (it may be a
    secret)."""
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in (".yaml", ".yml"):
        try:
            return json.loads(text, object_pairs_hook=_unique_object)
        except json.JSONDecodeError as error:
            if suffix == ".json":
                raise ValueError(f"invalid JSON at line {error.lineno} column {error.colno}: "
                                 f"{error.msg}") from None
        # Any other extension: YAML next, as the daemon config does.
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
        raise ValueError(f"invalid YAML{where}") from None
    except yaml.YAMLError:
        raise ValueError("invalid YAML") from None


def load_secrets_file(path: str) -> dict[str, str]:
    """Read an executor's ``secretsFile``: a JSON or YAML object of name -> string (the
    extension decides, as for the daemon config; any other name is tried as JSON, then YAML).

    :raises ValueError: one line starting ``secretsFile:`` and naming the file (and the
        offending name or position), never quoting a value.
    """
    def problem(text: str) -> ValueError:
        return ValueError(f"secretsFile: {path}: {text}")

    try:
        with open(path, "rb") as secrets_file:
            raw = secrets_file.read()
            mode = os.fstat(secrets_file.fileno()).st_mode
    except OSError as error:
        raise ValueError(f"secretsFile: cannot read {path}: {error.strerror or error}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise problem(f"not UTF-8 text (bad byte at offset {error.start})") from None
    try:
        document = _parse(text, path)
    except _DuplicateName as error:
        name = error.args[0]
        shown = repr(name) if is_env_name(name) else "a name"
        raise problem(f"{shown} is given twice") from None
    except ValueError as error:
        raise problem(str(error)) from None
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise problem("must be an object mapping variable names to strings "
                      f"(got {json_type_name(document)})")
    secrets: dict[str, str] = {}
    for position, (name, value) in enumerate(document.items(), 1):
        if not is_env_name(name):
            # Not quoted: a value pasted where a name belongs must not end up in a log.
            raise problem(f"name number {position} is not an environment variable name "
                          f"({ENV_NAME_RULE})")
        if not isinstance(value, str):
            raise problem(f"{name}: must be a string (got {json_type_name(value)})")
        if "\0" in value:
            raise problem(f"{name}: must not contain NUL characters")
        secrets[name] = value
    if stat.S_IMODE(mode) & 0o077:
        log.warn("secretsFile {path} is accessible to other users (mode {mode:o}); "
                 "chmod 600 it", path=path, mode=stat.S_IMODE(mode))
    return secrets
