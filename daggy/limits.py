"""The limits a run is held to, with their defaults (docs/security.md lists them all).

Pure: no Twisted imports.  Every limit is checked before the work it bounds is done: the
instance count of a parameter expansion is computed, not produced, before it is compared.
"""

from __future__ import annotations

from dataclasses import dataclass

MiB = 1024 * 1024


@dataclass(frozen=True)
class RunLimits:
    #: Tasks of one run after expansion, generated tasks included.
    max_tasks_per_run: int = 1_000_000
    #: Nesting of lists and objects inside one job object.
    max_job_depth: int = 32
    #: Runs waiting for one of the ``dag-threads`` active slots; more are refused (429).
    max_queued_runs: int = 1_000
    #: Tasks (after expansion) one generator attempt may add.
    max_generated_tasks: int = 100_000
    #: Bytes of a generator's stdout that are parsed as its task list.
    max_generator_output_bytes: int = 16 * MiB

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}: must be an integer >= 1 (got {value!r})")
        if self.max_job_depth < 2:
            raise ValueError("max_job_depth: must be at least 2 (a job holding a list)")


#: Open HTTP connections; a connection beyond it is closed as soon as it is accepted.
DEFAULT_MAX_CONNECTIONS = 1_000
#: Seconds a client has to send a whole request (line, headers and body) once it began;
#: a client trickling bytes to hold a connection is answered 408 and disconnected.
REQUEST_TIMEOUT_SECONDS = 30.0
#: Seconds an idle keep-alive connection stays open.
IDLE_TIMEOUT_SECONDS = 60.0

#: The replay window of ``GET /v1/events`` (daggy/events.py): the newest events kept in
#: memory, by count and by bytes of JSON.
EVENT_WINDOW_EVENTS = 100_000
EVENT_WINDOW_BYTES = 64 * MiB
#: Seconds an event stream's connection may take nothing before the reader is considered
#: stalled and disconnected.
EVENT_READER_STALL_SECONDS = 30.0
