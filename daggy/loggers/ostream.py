# -*- test-case-name: tests.unit.test_ostream_logger -*-
"""``OStreamLogger``: the in-memory run store plus one JSON line per event on a stream.

The stream is the daemon's standard output (``"-"``) or a file opened for append.  The
event line schema is documented in docs/loggers.md.

Writing never blocks the reactor on a pipe or socket: lines are buffered and written once per
reactor turn, and before each write of at most ``PIPE_BUF`` bytes the descriptor is polled
for room.  A reader that stops reading therefore only grows the backlog (bounded by
``max_backlog_bytes``; beyond it lines are dropped and that is logged), never stalls the
daemon.  Regular files are written directly.

A write error (a full disk, ``EIO``, ``EPIPE`` after the reader of standard output left) is
logged once and never raised: the lines stay in the same bounded backlog and writing is
retried with a backoff until it works again, which is logged with the number of lines lost.
:meth:`OStreamLogger.reopen` (daggyd calls it on SIGHUP) moves writing to a new file at the
configured path after logrotate renamed the old one.
"""

from __future__ import annotations

import collections
import errno
import os
import select
import stat
from typing import Any, Callable

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from daggy.loggers.memory import MemoryStore
from daggy.jsonio import dumps_ascii_fallback

#: How long a stalled stream waits before the next attempt to write; also the first delay
#: after a write error.
RETRY_SECONDS = 0.1
#: The longest delay between two attempts to write to a stream that fails (the delay
#: doubles from ``RETRY_SECONDS`` up to this).
MAX_ERROR_RETRY_SECONDS = 5.0
#: The most bytes written in one reactor turn, so a huge backlog never hogs the reactor.
MAX_BYTES_PER_TURN = 1 << 20
#: Default bound on buffered, unwritten bytes; beyond it new lines are dropped.
DEFAULT_MAX_BACKLOG_BYTES = 64 << 20
#: Default time ``close()`` waits for a stalled stream before discarding the backlog.
DEFAULT_CLOSE_TIMEOUT = 5.0
#: How a file path is opened, at start and by ``reopen()``.
OPEN_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
FILE_MODE = 0o644


def _encode(event: dict[str, Any]) -> bytes:
    # Valid UTF-8 whatever the task output contained (what orjson refuses is written as
    # ASCII JSON); JSON escapes newlines inside strings, so one event is exactly one line.
    return dumps_ascii_fallback(event) + b"\n"


def describe_os_error(error: OSError) -> str:
    """``No space left on device (ENOSPC)``: the text and the symbolic errno."""
    text = error.strerror or str(error) or type(error).__name__
    name = errno.errorcode.get(error.errno) if isinstance(error.errno, int) else None
    return f"{text} ({name})" if name else text


class _LineWriter:
    """Buffers bytes for one file descriptor and writes them without blocking the reactor.

    Invariant: ``_accepted - _settled == len(_backlog)``; ``_accepted`` counts every byte
    taken into the backlog, ``_settled`` every byte written or discarded.  ``flush()`` waits
    for ``_settled`` to reach the ``_accepted`` of the moment it was called.

    The first ``_head`` bytes of the backlog are the start of a line already written to the
    descriptor (a short write, e.g. on a disk that filled up, can end inside a line).  A line
    leaves the backlog only once its newline is written, so :meth:`reopen` can write a line
    whose start went to the old file whole to the new one.
    """

    log = Logger()

    def __init__(self, reactor: IReactorTime, fd: int, name: str, owns_fd: bool,
                 max_backlog_bytes: int, path: str | None = None,
                 write: Callable[[int, Any], int] = os.write):
        self._reactor = reactor
        self._os_write = write
        self._fd = fd
        self._name = name
        self._owns_fd = owns_fd
        #: What ``reopen()`` opens again; ``None`` for standard output.
        self._path = path
        self._max_backlog_bytes = max_backlog_bytes
        self._backlog = bytearray()
        self._head = 0
        self._accepted = 0
        self._settled = 0
        self._waiters: collections.deque[tuple[int, Deferred[None]]] = collections.deque()
        self._drain_call: IDelayedCall | None = None
        #: Why writing fails, while it does (``None`` when it works).
        self._error: str | None = None
        self._error_since = 0.0
        self._retry_delay = RETRY_SECONDS
        self._closed = False
        self._warned_after_close = False
        self._dropped_lines = 0
        self._poller: Any = None
        self._chunk_size: int | None = None
        self._watch(fd, stat.S_ISREG(os.fstat(fd).st_mode))

    def _watch(self, fd: int, regular: bool) -> None:
        # Regular files always have room (a disk write is not a stall); anything else
        # (pipe, socket, terminal, device) is polled and written in PIPE_BUF pieces, which a
        # writable pipe accepts without blocking.
        if regular:
            self._poller = None
            self._chunk_size = None
        else:
            self._poller = select.poll()
            self._poller.register(fd, select.POLLOUT)
            self._chunk_size = select.PIPE_BUF

    @property
    def backlog_bytes(self) -> int:
        return len(self._backlog)

    @property
    def failing(self) -> str | None:
        """Why writing fails, while it does; ``None`` when it works."""
        return self._error

    def write(self, line: bytes) -> None:
        """Queue one line; it is written on the next reactor turn (to a regular file: at
        once whenever a turn's backlog reaches ``MAX_BYTES_PER_TURN``)."""
        if self._closed:
            if not self._warned_after_close:
                self._warned_after_close = True
                self.log.warn("Run event written to {stream} after close(); events after "
                              "close are not written", stream=self._name)
            return
        if (self._poller is None and self._error is None
                and len(self._backlog) >= MAX_BYTES_PER_TURN):
            # A regular file always takes the bytes (into the page cache): write them now
            # rather than let one turn's worth of events (a million-task submission is
            # hundreds of MiB) outgrow the backlog and be dropped.
            self._drain(budget=None)
        if len(self._backlog) + len(line) > self._max_backlog_bytes:
            self._drop_line()
            return
        self._backlog += line
        self._accepted += len(line)
        # While writing fails the retry timer is pending, so this waits for it.
        self._schedule(0)

    def flush(self) -> Deferred[None]:
        """Write what the stream accepts now.

        :returns: a Deferred firing once every byte queued so far is written (or discarded
            after a ``close()`` timeout), or at once while writing fails (the lines stay
            queued and are retried).  It never fails.
        """
        if self._error is None:
            self._cancel_drain()
        self._drain(budget=None)
        if self._settled >= self._accepted or self._error is not None:
            return defer.succeed(None)
        waiter: Deferred[None] = Deferred()
        self._waiters.append((self._accepted, waiter))
        return waiter

    def reopen(self) -> None:
        """Write what the current file takes, then open the path again and go on writing
        there (logrotate renamed the file).  Standard output is not reopened.  A path that
        cannot be opened is logged, and writing goes on to the file opened before."""
        if self._path is None or self._closed:
            return
        if self._backlog:
            written_before = self._settled + self._head
            try:
                self._write_some(budget=None)
            except OSError as error:
                if self._error is None:
                    self.log.warn(
                        "Writing run events to the old {stream} before reopening it failed "
                        "({reason}); the {count} bytes left are written to the new file",
                        stream=self._name, reason=describe_os_error(error),
                        count=len(self._backlog) - self._head)
            if self._settled + self._head != written_before:
                self._wake_waiters()
        try:
            fd = os.open(self._path, OPEN_FLAGS, FILE_MODE)
        except OSError as error:
            self.log.error("Cannot reopen {stream} ({reason}); run events still go to the "
                           "file opened before", stream=self._name,
                           reason=describe_os_error(error))
            return
        try:
            regular = stat.S_ISREG(os.fstat(fd).st_mode)
        except OSError:
            regular = False
        old_fd, self._fd = self._fd, fd
        self._watch(fd, regular)
        # A line whose start went to the old file is written whole to the new one.
        self._head = 0
        self._close_fd(old_fd)
        self.log.info("Reopened {stream}: run events now go to the file at that path",
                      stream=self._name)
        if self._error is not None:
            # The new file may well take them: try at once rather than after the backoff.
            self._cancel_drain()
            self._retry_delay = RETRY_SECONDS
        if self._backlog:
            self._schedule(0)

    def close(self, timeout: float) -> Deferred[None]:
        """Flush, then close the descriptor if this writer opened it.

        :param timeout: seconds to wait for a stalled stream; after that the backlog is
            discarded (and that is logged) so shutdown cannot hang on a reader.  While
            writing fails, what is left is discarded at once (and logged).
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

    def _schedule_retry(self) -> None:
        if self._drain_call is None and not self._closed:
            self._drain_call = self._reactor.callLater(self._retry_delay, self._drain_later)
            self._retry_delay = min(self._retry_delay * 2, MAX_ERROR_RETRY_SECONDS)

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
        written_before = self._settled + self._head
        try:
            stalled = self._write_some(budget)
        except OSError as error:
            self._write_failed(describe_os_error(error))
            return
        except Exception:
            # Not expected from os.write or poll; still never raised into the runner.
            self.log.failure("Writing run events to {stream} failed unexpectedly",
                             stream=self._name)
            self._write_failed("unexpected error, logged above")
            return
        if self._error is not None:
            if stalled and self._settled + self._head == written_before:
                # Nothing could be tried, so nothing is known: keep the backoff.
                self._schedule_retry()
                return
            self._recovered()
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
        :raises OSError: the write failed; the bytes written before are accounted for.
        """
        while len(self._backlog) > self._head and (budget is None or budget > 0):
            if self._poller is not None and not self._poller.poll(0):
                return True
            start = self._head
            size = len(self._backlog) - start
            if budget is not None:
                size = min(size, budget)
            if self._chunk_size is not None:
                size = min(size, self._chunk_size)
            try:
                written = self._os_write(self._fd, self._backlog[start:start + size])
            except BlockingIOError:
                # Someone else put the descriptor in non-blocking mode; same as "no room".
                return True
            end = start + written
            # Only whole lines leave the backlog (see the class docstring).
            last_newline = self._backlog.rfind(b"\n", start, end)
            if last_newline < 0:
                self._head = end
            else:
                done = last_newline + 1
                del self._backlog[:done]
                self._settled += done
                self._head = end - done
            if budget is not None:
                budget -= written
        return False

    def _drop_line(self) -> None:
        if self._dropped_lines == 0:
            if self._error is None:
                self.log.error(
                    "{stream} is not accepting run events ({backlog} bytes waiting); "
                    "dropping events until it catches up",
                    stream=self._name, backlog=len(self._backlog))
            else:
                self.log.warn(
                    "{backlog} bytes of run events are waiting for {stream}, which cannot be "
                    "written to; further event lines are dropped until it can",
                    stream=self._name, backlog=len(self._backlog))
        self._dropped_lines += 1

    def _write_failed(self, reason: str) -> None:
        if self._error is None:
            self._error = reason
            self._error_since = self._reactor.seconds()
            self._retry_delay = RETRY_SECONDS
            self.log.error(
                "Cannot write run events to {stream}: {reason}. Keeping up to {limit} bytes "
                "of event lines in memory and retrying; the run records the API serves are "
                "unaffected", stream=self._name, reason=reason, limit=self._max_backlog_bytes)
        self._schedule_retry()
        # flush() never waits for a stream that fails: the lines stay queued for the retry.
        while self._waiters:
            self._waiters.popleft()[1].callback(None)

    def _recovered(self) -> None:
        self.log.info(
            "Run events are written to {stream} again, after {seconds:.1f} s of errors "
            "({reason}); {lost} event lines were lost", stream=self._name,
            seconds=self._reactor.seconds() - self._error_since, reason=self._error,
            lost=self._dropped_lines)
        self._error = None
        self._dropped_lines = 0
        self._retry_delay = RETRY_SECONDS
        self._cancel_drain()

    def _discard_backlog(self) -> int:
        """Drop every queued byte; returns how many lines (or line ends) were dropped."""
        lines = self._backlog.count(b"\n")
        self._settled += len(self._backlog)
        self._backlog.clear()
        self._head = 0
        self._cancel_drain()
        return lines

    def _abandon(self, timeout: float) -> None:
        discarded = len(self._backlog)
        self._discard_backlog()
        self.log.error("{stream} took no run events for {timeout} seconds at close; "
                       "{discarded} bytes discarded",
                       stream=self._name, timeout=timeout, discarded=discarded)
        self._wake_waiters()

    def _wake_waiters(self) -> None:
        while self._waiters and self._waiters[0][0] <= self._settled:
            self._waiters.popleft()[1].callback(None)

    def _release(self) -> None:
        self._cancel_drain()
        if self._error is not None:
            lost = self._discard_backlog() + self._dropped_lines
            self.log.error("Closing {stream} while writing to it fails ({reason}): {lost} "
                           "run event lines were never written", stream=self._name,
                           reason=self._error, lost=lost)
        if self._owns_fd:
            self._close_fd(self._fd)

    def _close_fd(self, fd: int) -> None:
        try:
            os.close(fd)
        except OSError as error:
            self.log.warn("Closing {stream} failed: {reason}", stream=self._name,
                          reason=describe_os_error(error))


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
    :param max_backlog_bytes: unwritten bytes kept while the stream takes nothing (stalled
        or failing); lines beyond that are dropped (logged once per stall).
    :param close_timeout: seconds ``close()`` waits for a stalled stream.
    :param write: ``os.write``-compatible; tests inject failing streams.
    """

    log = Logger()

    def __init__(self, reactor: IReactorTime, file: str = "-", *, stdout_fd: int = 1,
                 max_backlog_bytes: int = DEFAULT_MAX_BACKLOG_BYTES,
                 close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
                 write: Callable[[int, Any], int] = os.write):
        super().__init__()
        self._reactor = reactor
        self._close_timeout = close_timeout
        # Every write makes a line, published or not.
        self._emitting = True
        if file == "-":
            fd, name, owns_fd, path = stdout_fd, "standard output", False, None
        else:
            fd = os.open(file, OPEN_FLAGS, FILE_MODE)
            # Absolute, so a reopen finds the same path whatever the working directory is.
            name, owns_fd, path = file, True, os.path.abspath(file)
        self._writer = _LineWriter(reactor, fd, name, owns_fd, max_backlog_bytes, path, write)

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

    def _emit(self, event: dict[str, Any]) -> tuple[int, bytes] | None:
        """Write the event's line, and publish it when publishing (one JSON encoding
        serves both)."""
        hub = self._events
        try:
            if hub is None:
                published = None
                line = _encode(event)
            else:
                published = hub.publish(event)
                line = published[1]
        except (TypeError, ValueError):
            self.log.failure("Run event {event_name!r} is not JSON-serialisable; not written",
                             event_name=event.get("event"))
            return None
        self._writer.write(line)
        return published

    def flush(self) -> Deferred[None]:
        """Write every buffered line now.

        :returns: a Deferred firing once every line so far is handed to the OS, or at once
            while writing fails (the lines stay queued and are retried; the error is
            logged).  It never fails.
        """
        return self._writer.flush()

    def reopen(self) -> None:
        """Go on writing to a new file at the configured path: what the old file takes now
        is written to it first, then the path is opened again (created if missing) and the
        old file closed.  For logrotate, which renames the file and sends SIGHUP.

        No line is lost or written twice: a line whose start went to the old file (a short
        write) is written whole to the new one.  Standard output (``"-"``) is not reopened.
        A path that cannot be opened is logged, and the events go on to the old file.
        """
        self._writer.reopen()

    @property
    def backlog_bytes(self) -> int:
        """Bytes of event lines waiting to be written (daggyd's metrics read it)."""
        return self._writer.backlog_bytes

    @property
    def write_error(self) -> str | None:
        """Why the event stream cannot be written to, while it cannot; else ``None``."""
        return self._writer.failing

    def close(self) -> Deferred[None]:
        """Flush, then close the file (never standard output).  The in-memory record stays
        readable.  Waits at most ``close_timeout`` seconds for a stalled stream, and not
        at all for one that fails (what is left is discarded and counted in the log).

        :returns: a Deferred firing once closed; it never fails.
        """
        return self._writer.close(self._close_timeout)
