"""daggyc's exit codes and the errors that carry them.

Every failure daggyc reports is one :class:`DaggycError`: one line on stderr (plus one line
per spec error for :class:`SpecRejected`) and the exit code scripts can rely on.
"""

from __future__ import annotations

import enum
from typing import IO

import click


class ExitCode(enum.IntEnum):
    """Documented in docs/client.md#exit-codes; never renumber."""

    OK = 0
    #: The run ended ERRORED or KILLED (follow), or daggyd refused or failed the operation.
    FAILED = 1
    #: Bad command line (click's own usage errors use 2 as well).
    USAGE = 2
    #: daggyd could not be reached: connection refused, DNS, TLS, timeout, dropped answer.
    UNREACHABLE = 3
    #: daggyd answered 401: no token, or a wrong one.
    AUTH = 4
    #: No such run, task or attempt (daggyd answered 404).
    NOT_FOUND = 5
    #: The spec file cannot be parsed or the spec is invalid (offline or daggyd's 400/413).
    INVALID_SPEC = 6
    #: daggyd cannot take the request now: 429 (too many queued runs) or 503 (shutting
    #: down, its store unreachable); try again later.
    BUSY = 7
    #: Interrupted (Ctrl-C).
    INTERRUPTED = 130


class DaggycError(click.ClickException):
    """A failure reported as ``daggyc: <message>`` with a documented exit code."""

    exit_code = ExitCode.FAILED

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code

    def detail_lines(self) -> list[str]:
        """Lines printed after the message (indented)."""
        return []

    def show(self, file: IO[str] | None = None) -> None:
        echo = (lambda line: click.echo(line, err=True)) if file is None else (
            lambda line: click.echo(line, file=file))
        echo(f"daggyc: {self.message}")
        for line in self.detail_lines():
            echo(f"  {line}")


class Unreachable(DaggycError):
    exit_code = ExitCode.UNREACHABLE


class AuthFailed(DaggycError):
    exit_code = ExitCode.AUTH


class NotFound(DaggycError):
    exit_code = ExitCode.NOT_FOUND


class Busy(DaggycError):
    exit_code = ExitCode.BUSY


class SpecRejected(DaggycError):
    """An invalid spec: ``errors`` holds every problem, each starting with its path."""

    exit_code = ExitCode.INVALID_SPEC

    def __init__(self, message: str, errors: list[str] | None = None) -> None:
        super().__init__(message)
        self.errors = list(errors or [])

    def detail_lines(self) -> list[str]:
        return self.errors
