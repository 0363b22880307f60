# -*- test-case-name: tests.unit.test_config -*-
"""The daemon config file: JSON or YAML, validated into a :class:`DaemonConfig`.

Every problem is reported as ``<file>: <key path>: <problem>`` on one line (several problems
are joined with ``"; "``), so ``daggyd`` and ``twistd daggyd`` can print it as a single usage
error.  docs/config.md describes every key.

Validation reads the files a config names for the listening side (``auth-token-file``, an
``ssl:`` endpoint's key and certificate), so that a missing or bad one stops daggyd at start.
Twisted is imported only to check those (a ``listen`` string, tokens); validating a config
that uses neither imports none of it.  A token never appears in a message, nor in the
``repr`` of a :class:`DaemonConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from daggy._documents import (
    DocumentErrors,
    load_document,
    load_json,
    load_yaml,
    unique_key_loader,
)
from daggy.errors import json_type_name
from daggy.limits import (
    DEFAULT_MAX_CONNECTIONS,
    EVENT_READER_STALL_SECONDS,
    EVENT_WINDOW_BYTES,
    EVENT_WINDOW_EVENTS,
    IDLE_TIMEOUT_SECONDS,
    REQUEST_TIMEOUT_SECONDS,
    RunLimits,
)

from daggy.service.listen import check_listen, exposure, parse_listen
from daggy.service.registry import (
    DEFAULT_REGISTRY,
    MiB,
    Component,
    Registry,
    Setting,
    boolean,
    bounded_integer,
    bounded_number,
    listen_address,
    one_of,
    optional_non_empty_string,
    port_number,
    positive_integer,
    shown,
)

def _token_list(value: Any) -> str | None:
    """``auth-tokens``: a list of valid tokens (possibly empty).  Never shows a token."""
    if not isinstance(value, list):
        return f"must be a list of tokens (got {json_type_name(value)})"
    if not value:
        return None
    from daggy.server.auth import token_problem

    for number, token in enumerate(value, 1):
        if not isinstance(token, str):
            return f"token {number}: must be a string (got {json_type_name(token)})"
        problem = token_problem(token)
        if problem:
            return f"token {number}: {problem}"
    return None


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
    "listen": Setting(None, optional_non_empty_string),
    "auth-tokens": Setting([], _token_list),
    "auth-token-file": Setting(None, optional_non_empty_string),
    "allow-unauthenticated": Setting(False, boolean),
    # Run limits (daggy/limits.py) and HTTP limits (daggy/server/_site.py); docs/security.md.
    "max-tasks-per-run": Setting(RunLimits.max_tasks_per_run, positive_integer),
    "max-job-depth": Setting(RunLimits.max_job_depth, bounded_integer(2, 256)),
    "max-queued-runs": Setting(RunLimits.max_queued_runs, positive_integer),
    "max-generated-tasks": Setting(RunLimits.max_generated_tasks, positive_integer),
    "max-generator-output-bytes": Setting(RunLimits.max_generator_output_bytes,
                                          positive_integer),
    "max-connections": Setting(DEFAULT_MAX_CONNECTIONS, positive_integer),
    "request-timeout-seconds": Setting(REQUEST_TIMEOUT_SECONDS, bounded_number(3600)),
    "idle-timeout-seconds": Setting(IDLE_TIMEOUT_SECONDS, bounded_number(86400)),
    # daggyd's own log: text lines, or JSON lines (daggy/service/logformat.py).
    "log-format": Setting("text", one_of("text", "json")),
    # The replay window of GET /v1/events and its stalled-reader cut-off (daggy/events.py).
    "event-window-events": Setting(EVENT_WINDOW_EVENTS, bounded_integer(1, 100_000_000)),
    "event-window-bytes": Setting(EVENT_WINDOW_BYTES, bounded_integer(1, 1 << 40)),
    "event-reader-stall-seconds": Setting(EVENT_READER_STALL_SECONDS, bounded_number(86400)),
    # The web UI at / (daggy/server/webui.py, docs/ui.md).
    "web-ui": Setting(True, boolean),
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
    #: A Twisted server endpoint string, used instead of ``ip`` and ``port`` when set.
    listen: str | None = None
    #: Every accepted bearer token (from ``auth-tokens`` and ``auth-token-file``); empty
    #: when authentication is off.
    auth_tokens: tuple[str, ...] = field(default=(), repr=False)
    auth_token_file: str | None = None
    allow_unauthenticated: bool = False
    run_limits: RunLimits = RunLimits()
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    request_timeout_seconds: float = REQUEST_TIMEOUT_SECONDS
    idle_timeout_seconds: float = IDLE_TIMEOUT_SECONDS
    #: daggyd's own log: ``"text"`` or ``"json"`` (``--log-format`` overrides it).
    log_format: str = "text"
    #: The replay window of ``GET /v1/events``: most events and bytes of JSON kept.
    event_window_events: int = EVENT_WINDOW_EVENTS
    event_window_bytes: int = EVENT_WINDOW_BYTES
    #: How long an event stream's connection may take nothing before it is dropped.
    event_reader_stall_seconds: float = EVENT_READER_STALL_SECONDS
    #: Whether ``/`` and ``/ui/`` serve the web UI.
    web_ui: bool = True

    @property
    def authenticated(self) -> bool:
        """Whether the API requires a bearer token."""
        return bool(self.auth_tokens)

    def listening_on(self) -> str:
        """Where daggyd listens, for messages: ``127.0.0.1:2503`` or the ``listen`` string."""
        if self.listen is not None:
            return self.listen
        host = f"[{self.ip}]" if ":" in self.ip else self.ip
        return f"{host}:{self.port}"

    def exposure(self) -> str | None:
        """``None`` when daggyd listens only where this machine alone can connect (a
        loopback address or a unix socket), else the address, named for a message."""
        if self.listen is None:
            return exposure(self.ip)
        return parse_listen(self.listen).exposure()


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

    try:
        return load_document(text, source, _parse_json, _parse_yaml)
    except DocumentErrors as error:
        raise ConfigError(source, error.problems) from None


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
    failed: set[str] = set()
    values = {key: setting.default for key, setting in _SCALAR_SETTINGS.items()}
    for key, value in document.items():
        if key in _SCALAR_SETTINGS:
            problem = _SCALAR_SETTINGS[key].check(value)
            if problem:
                problems.append(f"{key}: {problem}")
                failed.add(key)
            else:
                values[key] = value
        elif key not in _COMPONENT_KEYS:
            problems.append(f"{key}: unknown key (expected one of: {', '.join(_TOP_LEVEL_KEYS)})")

    tokens = _check_listening_side(document, values, failed, problems)

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
        listen=values["listen"],
        auth_tokens=tokens,
        auth_token_file=values["auth-token-file"],
        allow_unauthenticated=values["allow-unauthenticated"],
        run_limits=RunLimits(
            max_tasks_per_run=values["max-tasks-per-run"],
            max_job_depth=values["max-job-depth"],
            max_queued_runs=values["max-queued-runs"],
            max_generated_tasks=values["max-generated-tasks"],
            max_generator_output_bytes=values["max-generator-output-bytes"],
        ),
        max_connections=values["max-connections"],
        request_timeout_seconds=values["request-timeout-seconds"],
        idle_timeout_seconds=values["idle-timeout-seconds"],
        log_format=values["log-format"],
        event_window_events=values["event-window-events"],
        event_window_bytes=values["event-window-bytes"],
        event_reader_stall_seconds=values["event-reader-stall-seconds"],
        web_ui=values["web-ui"],
    )


_EXPOSED_FIX = ("set auth-tokens or auth-token-file to require a bearer token, or set "
                "allow-unauthenticated: true to let anyone who can reach it run commands")


def _check_listening_side(
    document: dict, values: dict, failed: set[str], problems: list[str]
) -> tuple[str, ...]:
    """Check ``listen`` against ``ip``/``port``, load the token file, and refuse a
    non-loopback address without authentication.  Returns every token (deduplicated, in
    order); a problem is appended to ``problems``.

    Runs after the scalar checks: the keys in ``failed`` kept their defaults in ``values``,
    and nothing is concluded from them.
    """
    where: str | None = None
    address_known = not {"listen", "ip"} & failed
    if address_known and values["listen"] is not None:
        clashing = [key for key in ("ip", "port") if key in document]
        if clashing:
            problems.append(f"listen: give either listen or {' and '.join(clashing)}, not both "
                            f"(listen holds the whole address, as in "
                            f"tcp:2503:interface=127.0.0.1)")
            address_known = False
        else:
            target, problem = check_listen(values["listen"])
            if target is None:
                problems.append(f"listen: {problem}")
                address_known = False
            else:
                where = target.exposure()
    elif address_known:
        where = exposure(values["ip"])

    tokens = list(values["auth-tokens"])
    auth_known = not {"auth-tokens", "auth-token-file", "allow-unauthenticated"} & failed
    if values["auth-token-file"] is not None:
        file_tokens, problem = read_token_file(values["auth-token-file"])
        if problem is not None:
            problems.append(f"auth-token-file: {problem}")
            auth_known = False
        tokens += file_tokens

    exposed_without_auth = where is not None and not tokens and not values[
        "allow-unauthenticated"]
    if address_known and auth_known and exposed_without_auth:
        key = "listen" if values["listen"] is not None else "ip"
        problems.append(f"{key}: refusing to listen on {where} without authentication; "
                        f"{_EXPOSED_FIX}")
    return tuple(dict.fromkeys(tokens))


def read_token_file(path: str) -> tuple[list[str], str | None]:
    """The tokens in an ``auth-token-file``: one per line; blank lines and lines starting
    with ``#`` are ignored, as is the whitespace around a token.

    :returns: ``(tokens, None)``, or ``([], problem)`` with a one-line problem naming the
        file (and the line) but never quoting a token.
    """
    try:
        with open(path, "rb") as token_file:
            raw = token_file.read()
    except OSError as error:
        return [], f"cannot read {path}: {error.strerror or error}"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        return [], f"{path} is not UTF-8 text (bad byte at offset {error.start})"

    from daggy.server.auth import token_problem

    tokens = []
    for number, line in enumerate(text.splitlines(), 1):
        token = line.strip()
        if not token or token.startswith("#"):
            continue
        if len(token.split()) > 1:
            return [], f"{path} line {number}: holds more than one word (one token per line)"
        problem = token_problem(token)
        if problem:
            return [], f"{path} line {number}: the token {problem}"
        tokens.append(token)
    if not tokens:
        return [], f"{path} holds no token (one per line; # starts a comment line)"
    return tokens, None


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


# Keys shown as the user wrote them (JSON spelling), as in every other config message.
_ConfigLoader = unique_key_loader(shown)


def _parse_json(text: str) -> Any:
    return load_json(text, show_key=shown)


def _parse_yaml(text: str) -> Any:
    return load_yaml(text, _ConfigLoader)
