# -*- test-case-name: tests.unit.test_config -*-
"""The loggers and executors a daemon config can name, with their config keys.

Each entry maps a name (``"ForkingTaskExecutor"``) to the keys its ``config`` object accepts
(each with a default and a check) and a ``build(reactor, config)`` factory.  The factories
import their implementation lazily, so loading this module (and validating a config file)
pulls in neither Twisted's reactor nor any backend library.

Adding a backend takes a factory and one entry (see ``_build_redis_logger`` and the
``RedisLogger`` entry of ``LOGGERS``).  A factory may raise ``OSError`` or ``ValueError`` for
a config that cannot work (a file that cannot be read, contradicting keys); the daemon
reports it as a config error.
"""

from __future__ import annotations

import ipaddress
import json
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

MiB = 1024 * 1024

#: A check returns ``None`` for an acceptable value, else a problem such as
#: ``must be an integer >= 1 (got "ten")``.
Check = Callable[[Any], str | None]


def shown(value: Any) -> str:
    """Render a config value the way the user wrote it (JSON spelling), on one short line."""
    text = json.dumps(value, default=str, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_integer(value: Any) -> bool:
    # bool is a subclass of int, but `threads: true` is a mistake, not 1.
    return isinstance(value, int) and not isinstance(value, bool)


def positive_integer(value: Any) -> str | None:
    if _is_integer(value) and value >= 1:
        return None
    return f"must be an integer >= 1 (got {shown(value)})"


def port_number(value: Any) -> str | None:
    if _is_integer(value) and 1 <= value <= 65535:
        return None
    return f"must be an integer from 1 to 65535 (got {shown(value)})"


def positive_number(value: Any) -> str | None:
    if (_is_integer(value) or isinstance(value, float)) and math.isfinite(value) and value > 0:
        return None
    return f"must be a number > 0 (got {shown(value)})"


def non_empty_string(value: Any) -> str | None:
    if isinstance(value, str) and value:
        return None
    return f"must be a non-empty string (got {shown(value)})"


def optional_non_empty_string(value: Any) -> str | None:
    if value is None or (isinstance(value, str) and value):
        return None
    return f"must be a non-empty string or null (got {shown(value)})"


def non_negative_integer(value: Any) -> str | None:
    if _is_integer(value) and value >= 0:
        return None
    return f"must be an integer >= 0 (got {shown(value)})"


def bounded_integer(low: int, high: int) -> Check:
    def check(value: Any) -> str | None:
        if _is_integer(value) and low <= value <= high:
            return None
        return f"must be an integer from {low} to {high} (got {shown(value)})"

    return check


def one_of(*choices: str) -> Check:
    def check(value: Any) -> str | None:
        if isinstance(value, str) and value in choices:
            return None
        return f"must be one of {', '.join(choices)} (got {shown(value)})"

    return check


def bounded_number(high: float) -> Check:
    """A number > 0 and <= ``high``."""

    def check(value: Any) -> str | None:
        if ((_is_integer(value) or isinstance(value, float)) and math.isfinite(value)
                and 0 < value <= high):
            return None
        return f"must be a number > 0 and <= {high:g} (got {shown(value)})"

    return check


def listen_address(value: Any) -> str | None:
    """An IPv4 or IPv6 address literal, or ``localhost``."""
    if isinstance(value, str):
        if value == "localhost":
            return None
        try:
            ipaddress.ip_address(value)
        except ValueError:
            pass
        else:
            return None
    return f'must be an IPv4 or IPv6 address or "localhost" (got {shown(value)})'


@dataclass(frozen=True)
class Setting:
    """One key of a component's ``config`` object."""

    default: Any
    check: Check


@dataclass(frozen=True)
class Component:
    """A logger or executor that a config can name."""

    settings: Mapping[str, Setting]
    #: ``build(reactor, config)`` where ``config`` has every key of ``settings``, validated.
    build: Callable[[Any, Mapping[str, Any]], Any]

    def defaults(self) -> dict[str, Any]:
        return {key: setting.default for key, setting in self.settings.items()}


def _secrets(config: Mapping[str, Any]) -> dict[str, Any]:
    """The ``secrets`` and ``secrets_source`` arguments of an executor with a
    ``secretsFile`` key.

    :raises ValueError: the file cannot be read or is not an object of strings; the
        message names the file, never a value.
    """
    path = config["secretsFile"]
    if path is None:
        return {}
    from daggy.executors._secrets import load_secrets_file

    return {"secrets": load_secrets_file(path), "secrets_source": path}


def _build_forking_executor(reactor: Any, config: Mapping[str, Any]) -> Any:
    from daggy.executors.forking import ForkingTaskExecutor

    return ForkingTaskExecutor(
        reactor,
        threads=config["threads"],
        max_output_bytes=config["maxOutputBytes"],
        kill_grace_seconds=float(config["killGraceSeconds"]),
        isolation=config["isolation"],
        **_secrets(config),
    )


def _build_noop_executor(reactor: Any, config: Mapping[str, Any]) -> Any:
    from daggy.executors.noop import NoopTaskExecutor

    return NoopTaskExecutor(reactor)


def _build_ostream_logger(reactor: Any, config: Mapping[str, Any]) -> Any:
    from daggy.loggers.ostream import OStreamLogger

    return OStreamLogger(reactor, file=config["file"])


def _build_redis_logger(reactor: Any, config: Mapping[str, Any]) -> Any:
    # Imported here: daggy.loggers.redis builds a txredisapi connector, and txredisapi
    # installs the global reactor when imported.
    from daggy.loggers.redis import RedisLogger, read_password_file

    password = config["password"]
    if config["passwordFile"] is not None:
        if password is not None:
            raise ValueError("password and passwordFile are both given; give one of them")
        password = read_password_file(config["passwordFile"])
    return RedisLogger(
        reactor,
        prefix=config["prefix"],
        host=config["host"],
        port=config["port"],
        password=password,
        db=config["db"],
        unix_socket=config["unixSocket"],
        flush_interval=float(config["flushIntervalSeconds"]),
        max_stored_output_bytes=config["maxStoredOutputBytes"],
    )


def _string_list(value: Any) -> str | None:
    if isinstance(value, list) and all(isinstance(item, str) and item for item in value):
        return None
    return f"must be a list of non-empty strings (got {shown(value)})"


def boolean(value: Any) -> str | None:
    if isinstance(value, bool):
        return None
    return f"must be true or false (got {shown(value)})"


def _string(value: Any) -> str | None:
    if isinstance(value, str):
        return None
    return f"must be a string (got {shown(value)})"


_SLURM_COMMANDS = ("sbatch", "squeue", "sacct", "scontrol", "scancel")


def _slurm_command_paths(value: Any) -> str | None:
    if (isinstance(value, dict) and all(key in _SLURM_COMMANDS for key in value)
            and all(isinstance(path, str) and path for path in value.values())):
        return None
    return (f"must be an object mapping some of {', '.join(_SLURM_COMMANDS)} to paths "
            f"(got {shown(value)})")


def _build_slurm_executor(reactor: Any, config: Mapping[str, Any]) -> Any:
    from daggy.executors.slurm import SlurmTaskExecutor

    return SlurmTaskExecutor(
        reactor,
        poll_interval=float(config["pollIntervalSeconds"]),
        output_dir=config["outputDir"],
        partition=config["partition"],
        account=config["account"],
        qos=config["qos"],
        command_prefix=config["commandPrefix"],
        command_paths=dict(config["commandPaths"]),
        sbatch_args=list(config["sbatchArgs"]),
        job_name_prefix=config["jobNamePrefix"],
        max_output_bytes=config["maxOutputBytes"],
        command_timeout_seconds=float(config["commandTimeoutSeconds"]),
        submit_retries=config["submitRetries"],
        submit_backoff_seconds=float(config["submitBackoffSeconds"]),
        max_backoff_seconds=float(config["maxBackoffSeconds"]),
        lost_job_seconds=float(config["lostJobSeconds"]),
        sacct_completion=config["sacctCompletion"],
        max_parallel_submits=config["maxParallelSubmits"],
        **_secrets(config),
    )


EXECUTORS: dict[str, Component] = {
    "ForkingTaskExecutor": Component(
        settings={
            "threads": Setting(10, positive_integer),
            "maxOutputBytes": Setting(16 * MiB, positive_integer),
            "killGraceSeconds": Setting(5, positive_number),
            # The modes of daggy.executors._isolation; not imported here, so that config
            # validation does not import the executors.
            "isolation": Setting("auto", one_of("auto", "cgroup", "subreaper", "session")),
            # A JSON/YAML object of secret values for jobs' secretEnvironment; read at start.
            "secretsFile": Setting(None, optional_non_empty_string),
        },
        build=_build_forking_executor,
    ),
    "NoopTaskExecutor": Component(settings={}, build=_build_noop_executor),
    "SlurmTaskExecutor": Component(
        settings={
            "pollIntervalSeconds": Setting(1, bounded_number(3600)),
            "outputDir": Setting("/tmp/daggy-slurm", non_empty_string),
            "partition": Setting(None, optional_non_empty_string),
            "account": Setting(None, optional_non_empty_string),
            "qos": Setting(None, optional_non_empty_string),
            "commandPrefix": Setting("", _string),
            "commandPaths": Setting({}, _slurm_command_paths),
            "sbatchArgs": Setting([], _string_list),
            "jobNamePrefix": Setting("daggy", non_empty_string),
            "maxOutputBytes": Setting(16 * MiB, positive_integer),
            "commandTimeoutSeconds": Setting(30, bounded_number(3600)),
            "submitRetries": Setting(4, non_negative_integer),
            "submitBackoffSeconds": Setting(1, bounded_number(3600)),
            "maxBackoffSeconds": Setting(60, bounded_number(86400)),
            "lostJobSeconds": Setting(600, bounded_number(30 * 86400)),
            "sacctCompletion": Setting(False, boolean),
            "maxParallelSubmits": Setting(8, positive_integer),
            "secretsFile": Setting(None, optional_non_empty_string),
        },
        build=_build_slurm_executor,
    ),
}

LOGGERS: dict[str, Component] = {
    "OStreamLogger": Component(
        settings={"file": Setting("-", non_empty_string)},
        build=_build_ostream_logger,
    ),
    "RedisLogger": Component(
        settings={
            "prefix": Setting("daggy", non_empty_string),
            "host": Setting("localhost", non_empty_string),
            "port": Setting(6379, port_number),
            "password": Setting(None, optional_non_empty_string),
            "passwordFile": Setting(None, optional_non_empty_string),
            "db": Setting(0, non_negative_integer),
            "unixSocket": Setting(None, optional_non_empty_string),
            "flushIntervalSeconds": Setting(0.05, bounded_number(60)),
            "maxStoredOutputBytes": Setting(1 * MiB, bounded_integer(1, 64 * MiB)),
        },
        build=_build_redis_logger,
    ),
}


@dataclass(frozen=True)
class Registry:
    """The components a config may name; tests pass their own to inject fakes."""

    loggers: Mapping[str, Component] = field(default_factory=lambda: LOGGERS)
    executors: Mapping[str, Component] = field(default_factory=lambda: EXECUTORS)


DEFAULT_REGISTRY = Registry()
