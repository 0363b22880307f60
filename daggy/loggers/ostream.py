# -*- test-case-name: tests.unit.test_ostream_logger -*-
"""``OStreamLogger``: the in-memory run store plus one JSON line per event on a stream.

The stream is the daemon's standard output (``"-"``) or a file opened for append.  The
event line schema is documented in docs/loggers.md.

Writing never blocks the reactor on a pipe or socket: lines are buffered and written once per
reactor turn, and before each write of at most ``PIPE_BUF`` bytes the descriptor is polled
for room.  A reader that stops reading therefore only grows the backlog (bounded by
``max_backlog_bytes``; beyond it lines are dropped and that is logged), never stalls the
daemon.  Regular files are written directly.
"""

from __future__ import annotations

import collections
import os
import select
import stat
from typing import Any, Iterable

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from daggy.loggers.memory import MemoryStore
from daggy.jsonio import dumps_ascii_fallback
from daggy.model import Attempt, State, TaskDef

#: How long a stalled stream waits before the next attempt to write.
RETRY_SECONDS = 0.1
#: The most bytes written in one reactor turn, so a huge backlog never hogs the reactor.
MAX_BYTES_PER_TURN = 1 << 20
#: Default bound on buffered, unwritten bytes; beyond it new lines are dropped.
DEFAULT_MAX_BACKLOG_BYTES = 64 << 20
#: Default time ``close()`` waits for a stalled stream before discarding the backlog.
DEFAULT_CLOSE_TIMEOUT = 5.0


def _encode(event: dict[str, Any]) -> bytes:
    # Valid UTF-8 whatever the task output contained (what orjson refuses is written as
    # ASCII JSON); JSON escapes newlines inside strings, so one event is exactly one line.
    return dumps_ascii_fallback(event) + b"\n"


class _LineWriter:
    """Buffers bytes for one file descriptor and writes them without blocking the reactor.

    Invariant: ``_accepted - _settled == len(_backlog)``; ``_accepted`` counts every byte
    taken into the backlog, ``_settled`` every byte written or discarded.  ``flush()`` waits
    for ``_settled`` to reach the ``_accepted`` of the moment it was called.
    """

    log = Logger()

    def __init__(self, reactor: IReactorTime, fd: int, name: str, owns_fd: bool,
                 max_backlog_bytes: int):
        self._reactor = reactor
        self._fd = fd
        self._name = name
        self._owns_fd = owns_fd
        self._max_backlog_bytes = max_backlog_bytes
        self._backlog = bytearray()
        self._accepted = 0
        self._settled = 0
        self._waiters: collections.deque[tuple[int, Deferred[None]]] = collections.deque()
        self._drain_call: IDelayedCall | None = None
        self._failed = False
        self._closed = False
        self._warned_after_close = False
        self._dropped_lines = 0
        # Regular files always have room (a disk write is not a stall); anything else
        # (pipe, socket, terminal) is polled and written in PIPE_BUF pieces, which a
        # writable pipe accepts without blocking.
        if stat.S_ISREG(os.fstat(fd).st_mode):
            self._poller = None
            self._chunk_size = None
        else:
            self._poller = select.poll()
            self._poller.register(fd, select.POLLOUT)
            self._chunk_size = select.PIPE_BUF

    @property
    def backlog_bytes(self) -> int:
        return len(self._backlog)

    def write(self, line: bytes) -> None:
        """Queue one line; it is written on the next reactor turn (to a regular file: at
        once whenever a turn's backlog reaches ``MAX_BYTES_PER_TURN``)."""
        if self._closed:
            if not self._warned_after_close:
                self._warned_after_close = True
                self.log.warn("Run event written to {stream} after close(); events after "
                              "close are not written", stream=self._name)
            return
        if self._failed:
            self._dropped_lines += 1
            return
        if self._poller is None and len(self._backlog) >= MAX_BYTES_PER_TURN:
            # A regular file always takes the bytes (into the page cache): write them now
            # rather than let one turn's worth of events (a million-task submission is
            # hundreds of MiB) outgrow the backlog and be dropped.
            self._drain(budget=None)
        if len(self._backlog) + len(line) > self._max_backlog_bytes:
            if self._dropped_lines == 0:
                self.log.error(
                    "{stream} is not accepting run events ({backlog} bytes waiting); "
                    "dropping events until it catches up",
                    stream=self._name, backlog=len(self._backlog))
            self._dropped_lines += 1
            return
        self._backlog += line
        self._accepted += len(line)
        self._schedule(0)

    def flush(self) -> Deferred[None]:
        """Write what the stream accepts now.

        :returns: a Deferred firing once every byte queued so far is written (or discarded
            after a write error or a ``close()`` timeout).  It never fails.
        """
        self._cancel_drain()
        self._drain(budget=None)
        if self._settled >= self._accepted:
            return defer.succeed(None)
        waiter: Deferred[None] = Deferred()
        self._waiters.append((self._accepted, waiter))
        return waiter

    def close(self, timeout: float) -> Deferred[None]:
        """Flush, then close the descriptor if this writer opened it.

        :param timeout: seconds to wait for a stalled stream; after that the backlog is
            discarded (and that is logged) so shutdown cannot hang on a reader.
        :returns: a Deferred firing once closed; it never fails.
        """
        if self._closed:
            return defer.succeed(None)
        self._closed = True
        flushed = self.flush()
        if not flushed.called:
            give_up = self._reactor.callLater(timeout, self._abandon, timeout)

            def stop_waiting(result: Any) -> Any:
                if give_up.active():
                    give_up.cancel()
                return result

            flushed.addBoth(stop_waiting)
        return flushed.addCallback(lambda _: self._release())

    # -- internals -----------------------------------------------------------------------
    def _schedule(self, delay: float) -> None:
        if self._drain_call is None:
            self._drain_call = self._reactor.callLater(delay, self._drain_later)

    def _cancel_drain(self) -> None:
        if self._drain_call is not None:
            if self._drain_call.active():
                self._drain_call.cancel()
            self._drain_call = None

    def _drain_later(self) -> None:
        self._drain_call = None
        self._drain(budget=MAX_BYTES_PER_TURN)

    def _drain(self, budget: int | None) -> None:
        """Write as much of the backlog as the stream takes now; reschedule the rest."""
        if self._failed:
            return
        try:
            stalled = self._write_some(budget)
        except OSError:
            self._fail(Failure())
            return
        if self._backlog:
            self._schedule(RETRY_SECONDS if stalled else 0)
        elif self._dropped_lines:
            self.log.info("{stream} caught up; {count} run event lines were dropped",
                          stream=self._name, count=self._dropped_lines)
            self._dropped_lines = 0
        self._wake_waiters()

    def _write_some(self, budget: int | None) -> bool:
        """Write until the backlog is empty, the budget is spent or the stream is full.

        :returns: whether it stopped because the stream had no room.
        """
        while self._backlog and (budget is None or budget > 0):
            if self._poller is not None and not self._poller.poll(0):
                return True
            size = len(self._backlog)
            if budget is not None:
                size = min(size, budget)
            if self._chunk_size is not None:
                size = min(size, self._chunk_size)
            try:
                written = os.write(self._fd, self._backlog[:size])
            except BlockingIOError:
                # Someone else put the descriptor in non-blocking mode; same as "no room".
                return True
            del self._backlog[:written]
            self._settled += written
            if budget is not None:
                budget -= written
        return False

    def _discard_backlog(self) -> int:
        discarded = len(self._backlog)
        self._settled += discarded
        self._backlog.clear()
        self._cancel_drain()
        return discarded

    def _fail(self, failure: Failure) -> None:
        self._failed = True
        discarded = self._discard_backlog()
        self.log.failure(
            "Writing run events to {stream} failed; {discarded} bytes discarded and no "
            "further events are written there (the in-memory run record is unaffected)",
            failure, stream=self._name, discarded=discarded)
        self._wake_waiters()

    def _abandon(self, timeout: float) -> None:
        discarded = self._discard_backlog()
        self.log.error("{stream} took no run events for {timeout} seconds at close; "
                       "{discarded} bytes discarded",
                       stream=self._name, timeout=timeout, discarded=discarded)
        self._wake_waiters()

    def _wake_waiters(self) -> None:
        while self._waiters and self._waiters[0][0] <= self._settled:
            self._waiters.popleft()[1].callback(None)

    def _release(self) -> None:
        self._cancel_drain()
        if self._owns_fd:
            try:
                os.close(self._fd)
            except OSError:
                self.log.failure("Closing {stream} failed", stream=self._name)


class OStreamLogger(MemoryStore):
    """A :class:`~daggy.loggers.memory.MemoryStore` that also writes every event as a JSON
    line to standard output or a file.

    Reads are answered from memory (lost when the daemon stops); the lines are an audit
    trail, not something the logger reads back.

    :param reactor: provides ``callLater``; lines are written once per reactor turn.
    :param file: ``"-"`` for the daemon's real standard output (file descriptor 1, not
        ``sys.stdout``, which twistd replaces with a logging proxy), otherwise a path opened
        for append (created with mode 0644).  An unopenable path raises ``OSError`` here.
    :param stdout_fd: the descriptor ``"-"`` means (tests point it at a pipe).
    :param max_backlog_bytes: unwritten bytes kept while the stream takes nothing; lines
        beyond that are dropped (logged once per stall).
    :param close_timeout: seconds ``close()`` waits for a stalled stream.
    """

    log = Logger()

    def __init__(self, reactor: IReactorTime, file: str = "-", *, stdout_fd: int = 1,
                 max_backlog_bytes: int = DEFAULT_MAX_BACKLOG_BYTES,
                 close_timeout: float = DEFAULT_CLOSE_TIMEOUT):
        super().__init__()
        self._reactor = reactor
        self._close_timeout = close_timeout
        if file == "-":
            fd, name, owns_fd = stdout_fd, "standard output", False
        else:
            fd = os.open(file, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
            name, owns_fd = file, True
        self._writer = _LineWriter(reactor, fd, name, owns_fd, max_backlog_bytes)

    @classmethod
    def from_config(cls, reactor: IReactorTime, config: dict[str, Any] | None) -> OStreamLogger:
        """Build from the daemon config's ``logger.config`` object (``{"file": "-"}``).

        :raises ValueError: naming the offending field, for unknown keys or a non-string
            ``file``.
        :raises OSError: when the file cannot be opened.
        """
        config = {} if config is None else config
        if not isinstance(config, dict):
            raise ValueError("logger.config: must be an object")
        unknown = sorted(set(config) - {"file"})
        if unknown:
            raise ValueError(f"logger.config.{unknown[0]}: unknown OStreamLogger option")
        file = config.get("file", "-")
        if not isinstance(file, str) or not file:
            raise ValueError("logger.config.file: must be a non-empty string ('-' is stdout)")
        return cls(reactor, file)

    def _emit(self, event: dict[str, Any]) -> None:
        try:
            line = _encode(event)
        except (TypeError, ValueError):
            self.log.failure("Run event {event_name!r} is not JSON-serialisable; not written",
                             event_name=event.get("event"))
            return
        self._writer.write(line)

    # -- writes --------------------------------------------------------------------------
    def create_run(self, tag: str | None, parameters: dict[str, list[str]],
                   now: float) -> Deferred[int]:
        record = self._create_run(tag, parameters, now)
        self._emit({"time": record.state_changes[0]["time"], "event": "runCreated",
                    "runID": record.run_id, "tag": tag, "parameters": record.parameters,
                    "state": State.QUEUED.value})
        return defer.succeed(record.run_id)

    def add_tasks(self, run_id: int, tasks: Iterable[TaskDef], now: float) -> None:
        for definition, change in self._add_tasks(run_id, tasks, now):
            self._emit({"time": change["time"], "event": "taskAdded", "runID": run_id,
                        "task": definition["name"], "state": change["state"],
                        "definition": definition})

    def record_run_state(self, run_id: int, state: State, now: float) -> None:
        change = self._record_run_state(run_id, state, now)
        self._emit({"time": change["time"], "event": "runState", "runID": run_id,
                    "state": change["state"]})

    def record_task_state(self, run_id: int, task_name: str, state: State, now: float) -> None:
        change = self._record_task_state(run_id, task_name, state, now)
        self._emit({"time": change["time"], "event": "taskState", "runID": run_id,
                    "task": task_name, "state": change["state"]})

    def record_attempt(self, run_id: int, task_name: str, attempt: Attempt) -> None:
        stored = self._record_attempt(run_id, task_name, attempt)
        self._emit({"time": stored["stopTime"], "event": "taskAttempt",
                    "runID": run_id, "task": task_name, "attempt": stored})

    def record_executor_state(self, run_id: int, task_name: str, state: dict[str, Any],
                              now: float) -> None:
        stored = self._record_executor_state(run_id, task_name, state, now)
        self._emit({"time": self._time_text(now),
                    "event": "taskExecutorState", "runID": run_id, "task": task_name,
                    "executorState": stored})

    def flush(self) -> Deferred[None]:
        """Write every buffered line now.

        :returns: a Deferred firing once every line so far is handed to the OS (or
            discarded after a logged write error).  It never fails.
        """
        return self._writer.flush()

    def close(self) -> Deferred[None]:
        """Flush, then close the file (never standard output).  The in-memory record stays
        readable.  Waits at most ``close_timeout`` seconds for a stalled stream.

        :returns: a Deferred firing once closed; it never fails.
        """
        return self._writer.close(self._close_timeout)
