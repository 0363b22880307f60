"""Fakes for testing daggy and code built on it; importable, no real I/O."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from daggy.testing.reactor import FakeProcess, FakeProcessReactor

__all__ = ["FakeProcess", "FakeProcessReactor", "result_of"]


def result_of(d: Deferred[Any]) -> Any:
    """The result of an already-fired Deferred; raise its error, or fail if it has not fired.

    A Deferred that is still waiting in a fake-reactor test usually means the test forgot to
    drive the fake (advance the clock, end a process).
    """
    results: list[Any] = []
    d.addBoth(results.append)
    if not results:
        raise AssertionError(f"{d!r} has not fired")
    result = results[0]
    if isinstance(result, Failure):
        result.raiseException()
    return result
