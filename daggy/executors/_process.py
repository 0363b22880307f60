# -*- test-case-name: tests.unit.test_forking_executor -*-
"""Helpers shared by the local executors: bounded output capture, program lookup, exit
descriptions and an execution that has already ended.

Nothing here touches the reactor; everything is plain and synchronous so it is easy to test.
"""

from __future__ import annotations

import codecs
import os
import signal
import stat
from typing import Any, Protocol

from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.python.failure import Failure

from daggy.model import Attempt


class ProcessReactor(Protocol):
    """What the forking executor needs from its reactor: a clock and process spawning."""

    def seconds(self) -> float: ...

    def callLater(self, delay: float, callable: Any, *args: Any, **kw: Any) -> Any: ...

    def spawnProcess(
        self,
        processProtocol: Any,
        executable: str,
        args: Any = (),
        env: Any = None,
        path: str | None = None,
        uid: int | None = None,
        gid: int | None = None,
        usePTY: bool = False,
        childFDs: Any = None,
    ) -> Any: ...


class BoundedOutput:
    """Bytes of one output stream, keeping only the first ``limit`` bytes.

    Bytes past the limit are counted and dropped at once, so memory stays bounded however
    much a task writes.
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._chunks: list[bytes] = []
        self._kept = 0
        #: Every byte received, kept or not.
        self.total = 0

    def add(self, data: bytes) -> None:
        self.total += len(data)
        room = self._limit - self._kept
        if room <= 0:
            return
        if len(data) > room:
            data = data[:room]
        self._chunks.append(data)
        self._kept += len(data)

    @property
    def kept(self) -> int:
        return self._kept

    @property
    def truncated(self) -> bool:
        return self.total > self._kept

    def text(self) -> str:
        """The kept bytes as text; see :func:`decode_output`."""
        return decode_output(b"".join(self._chunks), cut=self.truncated)


def decode_output(data: bytes, cut: bool = False) -> str:
    """Task output as text that any JSON encoder can write: UTF-8, with every byte sequence
    that is not valid UTF-8 replaced by U+FFFD (one per maximal invalid sequence, as
    ``bytes.decode(errors="replace")`` does).  NUL and other control bytes stay as the
    characters they are (JSON escapes them as ``\\u0000`` ...); the result never holds a
    lone surrogate.

    ``cut``: ``data`` is the head of a longer output, so a multi-byte character the cut went
    through is dropped instead of becoming U+FFFD.
    """
    if not cut:
        return data.decode("utf-8", errors="replace")
    # Without final=True the decoder holds back an incomplete (so far valid) last sequence.
    return codecs.getincrementaldecoder("utf-8")(errors="replace").decode(data, final=False)


def command_job_errors(job: dict[str, Any], path: str, allowed_fields: tuple[str, ...],
                       env_name_ok: Any, env_name_rule: str) -> list[str]:
    """The checks every argv-style job format shares: no unknown fields, ``command`` a
    non-empty list of NUL-free strings, ``environment`` an object of NUL-free strings whose
    names pass ``env_name_ok`` (``env_name_rule`` says what a valid name is)."""
    errors: list[str] = []
    for key in job:
        if key not in allowed_fields:
            errors.append(
                f"{path}.{key}: unknown job field (allowed: {', '.join(allowed_fields)})")

    command = job.get("command")
    if "command" not in job:
        errors.append(f"{path}.command: is required (a non-empty list of strings)")
    elif not isinstance(command, list) or not command:
        errors.append(f"{path}.command: must be a non-empty list of strings")
    else:
        for index, arg in enumerate(command):
            if not isinstance(arg, str):
                errors.append(f"{path}.command[{index}]: must be a string")
            elif "\0" in arg:
                errors.append(f"{path}.command[{index}]: must not contain NUL characters")
        if isinstance(command[0], str) and not command[0]:
            errors.append(f"{path}.command[0]: must name the program (it is empty)")

    if "environment" in job:
        environment = job["environment"]
        if not isinstance(environment, dict):
            errors.append(f"{path}.environment: must be an object of strings")
        else:
            for name, value in environment.items():
                if not env_name_ok(name):
                    errors.append(f"{path}.environment.{name}: {env_name_rule}")
                if not isinstance(value, str):
                    errors.append(f"{path}.environment.{name}: must be a string")
                elif "\0" in value:
                    errors.append(f"{path}.environment.{name}: must not contain NUL characters")
    return errors


class ProgramNotFound(Exception):
    """The program of a command cannot be executed; ``str()`` says why."""


def find_program(program: str, search_path: str | None, cwd: str) -> str:
    """Find the file ``execvp`` would run for ``program`` in directory ``cwd``.

    A name with a slash is a path (relative to ``cwd``); a bare name is looked up in
    ``search_path`` (the ``PATH`` the program will see; ``os.defpath`` when unset), an
    empty entry meaning ``cwd``.  Returns the path found.

    :raises ProgramNotFound: if there is no such executable file.
    """
    if "\0" in program:
        raise ProgramNotFound(f"{program!r}: contains a NUL character")
    if "/" in program:
        candidate = os.path.join(cwd, program)
        try:
            mode = os.stat(candidate).st_mode
        except OSError as e:
            raise ProgramNotFound(f"{program}: {e.strerror}") from None
        if stat.S_ISDIR(mode):
            raise ProgramNotFound(f"{program}: Is a directory")
        if not os.access(candidate, os.X_OK):
            raise ProgramNotFound(f"{program}: Permission denied")
        return candidate
    if search_path is None:
        search_path = os.defpath
    for directory in search_path.split(":"):
        candidate = os.path.join(cwd, directory, program)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise ProgramNotFound(f"{program}: command not found in PATH={search_path}")


def check_work_dir(work_dir: str) -> None:
    """:raises ProgramNotFound: unless ``work_dir`` is a directory we may enter."""
    if "\0" in work_dir:
        raise ProgramNotFound(f"workDir {work_dir!r}: contains a NUL character")
    try:
        mode = os.stat(work_dir).st_mode
    except OSError as e:
        raise ProgramNotFound(f"workDir {work_dir}: {e.strerror}") from None
    if not stat.S_ISDIR(mode):
        raise ProgramNotFound(f"workDir {work_dir}: Not a directory")
    if not os.access(work_dir, os.X_OK):
        raise ProgramNotFound(f"workDir {work_dir}: Permission denied")


def signal_name(number: int) -> str:
    """``15`` -> ``"SIGTERM"``; numbers without a name come back as ``"signal 99"``."""
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def describe_exit(reason: Failure) -> tuple[int | None, str]:
    """Turn a ``processEnded`` reason into ``(rc, description)``; ``rc`` is ``None`` after
    a signal."""
    value = reason.value
    if isinstance(value, ProcessDone):
        return 0, "exited with code 0"
    if isinstance(value, ProcessTerminated):
        if value.signal is not None:
            return None, f"killed by signal {signal_name(value.signal)}"
        if value.exitCode is not None:
            return value.exitCode, f"exited with code {value.exitCode}"
    return None, f"ended abnormally: {value!r}"


def format_seconds(seconds: float) -> str:
    """``30.0`` -> ``"30s"``, ``2.5`` -> ``"2.5s"``."""
    if float(seconds).is_integer():
        return f"{int(seconds)}s"
    return f"{seconds:g}s"


class FinishedExecution:
    """An execution whose attempt ended before ``start`` returned (noop, spawn failure)."""

    def __init__(self, attempt: Attempt) -> None:
        self.result: Deferred[Attempt] = succeed(attempt)

    def kill(self, reason: str) -> None:
        """Nothing is running any more, so there is nothing to kill."""
