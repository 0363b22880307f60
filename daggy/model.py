"""Value objects shared by every layer: states, task definitions, attempts.

Pure: no Twisted imports.  Times are POSIX seconds (floats) inside the daemon and ISO 8601
UTC strings in every JSON document.
"""

from __future__ import annotations

import datetime
import math
import sys
from dataclasses import dataclass, field
from enum import Enum
from typing import Any



def is_finite_number(value: Any) -> bool:
    """A JSON number usable as seconds: an int or float (not a bool) no larger in size than
    the largest float.  JSON allows integers beyond it; one that would merely round down to
    it is out of range too.  Python compares an int with a float exactly (no rounding, no
    OverflowError), and NaN and the infinities fail the comparison."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return -sys.float_info.max <= value <= sys.float_info.max

class State(str, Enum):
    """States shared by tasks and DAG runs."""

    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    RETRY = "RETRY"
    ERRORED = "ERRORED"
    KILLED = "KILLED"
    COMPLETED = "COMPLETED"

    def __str__(self) -> str:
        return self.value


FINISHED_STATES = frozenset({State.COMPLETED, State.ERRORED, State.KILLED})


_last_second: list = [None, ""]


def iso8601(seconds: float | None) -> str | None:
    """POSIX seconds -> ISO 8601 UTC with microseconds, e.g. ``2021-01-01T00:00:00.000000Z``.

    Every state change and attempt is stamped, so this is hot: the text up to the seconds
    is kept for the last whole second seen, and only the microseconds are formatted anew
    (rounded as ``datetime.fromtimestamp`` rounds them)."""
    if seconds is None:
        return None
    fraction, whole = math.modf(seconds)
    micros = round(fraction * 1e6)
    if micros >= 1_000_000:
        whole += 1
        micros -= 1_000_000
    elif micros < 0:
        whole -= 1
        micros += 1_000_000
    if whole != _last_second[0]:
        stamp = datetime.datetime.fromtimestamp(whole, tz=datetime.timezone.utc)
        _last_second[:] = [whole, stamp.strftime("%Y-%m-%dT%H:%M:%S.")]
    return f"{_last_second[1]}{micros:06d}Z"


def parse_iso8601(text: str) -> float:
    """The inverse of :func:`iso8601`."""
    stamp = datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ")
    return stamp.replace(tzinfo=datetime.timezone.utc).timestamp()


@dataclass
class TaskDef:
    """One executable task of a run, after parameter expansion.

    ``parents``/``children`` hold the *defined* names the task was declared with (every instance
    of a defined task shares them: an edge to a defined task means "after all its instances").
    Generated tasks name their generator instance in ``parents``.
    """

    name: str
    defined_name: str
    job: dict[str, Any]
    max_retries: int = 0
    retry_interval_seconds: float = 0
    parents: list[str] = field(default_factory=list)
    children: list[str] = field(default_factory=list)
    is_generator: bool = False
    expansion_values: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "definedName": self.defined_name,
            "job": self.job,
            "maxRetries": self.max_retries,
            "retryIntervalSeconds": self.retry_interval_seconds,
            "parents": list(self.parents),
            "children": list(self.children),
            "isGenerator": self.is_generator,
            "expansionValues": dict(self.expansion_values),
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> "TaskDef":
        return cls(
            name=doc["name"],
            defined_name=doc["definedName"],
            job=doc["job"],
            max_retries=doc.get("maxRetries", 0),
            retry_interval_seconds=doc.get("retryIntervalSeconds", 0),
            parents=list(doc.get("parents", [])),
            children=list(doc.get("children", [])),
            is_generator=doc.get("isGenerator", False),
            expansion_values=dict(doc.get("expansionValues", {})),
        )


@dataclass
class Attempt:
    """The record of one execution of a task.

    ``executor_log`` says why the attempt ended (exit code, signal, timeout, kill, spawn
    failure); ``succeeded`` is the executor's verdict (exit code 0, not killed, not timed out).
    ``rc`` is the exit code, or ``None`` when the process died by a signal or never started.
    """

    start_time: float
    stop_time: float
    rc: int | None
    succeeded: bool
    output_log: str = ""
    error_log: str = ""
    executor_log: str = ""
    killed: bool = False
    timed_out: bool = False
    output_truncated: bool = False
    error_truncated: bool = False
    # Executor bookkeeping that must survive a restart (for example a Slurm job id).
    executor_state: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "startTime": iso8601(self.start_time),
            "stopTime": iso8601(self.stop_time),
            "rc": self.rc,
            "succeeded": self.succeeded,
            "outputLog": self.output_log,
            "errorLog": self.error_log,
            "executorLog": self.executor_log,
            "killed": self.killed,
            "timedOut": self.timed_out,
            "outputTruncated": self.output_truncated,
            "errorTruncated": self.error_truncated,
            "executorState": dict(self.executor_state),
        }
