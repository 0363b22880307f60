# -*- test-case-name: tests.unit.test_events -*-
"""The daemon's run events: numbered, kept for a while, and streamed to subscribers.

The logger publishes every event it records (the OStreamLogger's JSON line objects:
``runCreated``, ``taskAdded``, ``runState``, ``taskState``, ``taskExecutorState``,
``taskAttempt``) to one :class:`EventHub`.  The hub

* numbers them 1, 2, 3, ... (daemon-wide, one more per event; a durable logger makes the
  numbering go on after a restart, see :meth:`EventHub.continue_after`);
* keeps the newest of them, at most ``max_events`` events and ``max_bytes`` bytes of JSON,
  as the *replay window*;
* hands them to its subscriptions (``GET /v1/events`` streams, docs/api.md), which read the
  window through a cursor: a subscription holds no copy of any event, so a reader that does
  not keep up costs no memory beyond its connection's buffer.

Cost per published event: one JSON encoding (the line is shared with the OStreamLogger,
which writes it as it is, and the RedisLogger, which stores it in its stream), three list
appends, and O(1) per subscription (a subscription that is not paused gets one drain per
reactor turn, whatever the number of events).

A subscription is an ``IPushProducer``: the HTTP transport pauses it when its buffer is
full, and while paused it writes nothing, so a reader that does not keep up costs its
connection's buffer and no more.  A reader whose connection takes nothing for
``max_paused_seconds`` is dropped (it reconnects with ``Last-Event-ID`` and replays from
the window).  Events that leave the window before a subscription sent them (it fell
behind, or a burst was larger than the window) are reported with a ``gap`` event, never
skipped silently.  Nothing is dropped for the size of a burst: a submission of 100,000
tasks publishes 100,000 events in one reactor turn, which no reader can take as they come.
Events older than the window can come from an :class:`EventArchive` (the RedisLogger's
stream), which keeps the window across restarts.
"""

from __future__ import annotations

from typing import Any, Protocol

import orjson
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from daggy.errors import DaggyError, Unavailable
from daggy.jsonio import dumps_ascii_fallback
from daggy.limits import (
    EVENT_READER_STALL_SECONDS,
    EVENT_WINDOW_BYTES,
    EVENT_WINDOW_EVENTS,
)

MiB = 1 << 20
#: The replay window's bounds and the stalled-reader cut-off, by default (config keys
#: event-window-events, event-window-bytes, event-reader-stall-seconds).
DEFAULT_MAX_EVENTS = EVENT_WINDOW_EVENTS
DEFAULT_MAX_BYTES = EVENT_WINDOW_BYTES
DEFAULT_MAX_PAUSED_SECONDS = EVENT_READER_STALL_SECONDS
#: Seconds of silence after which a subscription sends a keep-alive comment.
KEEPALIVE_SECONDS = 15.0
#: Most bytes written to one subscription per reactor turn, and most events of the window
#: it looks at (a filtered subscription skips others' events), so that a replay of the
#: whole window never hogs the reactor.
MAX_WRITE_BYTES_PER_TURN = MiB
MAX_SCAN_EVENTS_PER_TURN = 50_000
#: Events read from the archive per request.
ARCHIVE_PAGE_EVENTS = 1000
KEEPALIVE_FRAME = b": keep-alive\n\n"
# Evicted slots at the front of the window lists are deleted in one go once there are this
# many of them (and they are at least half of the lists): O(1) amortised per event.
_COMPACT_AT = 4096


class EventArchive(Protocol):
    """Where events older than the memory window can be read (the RedisLogger's stream)."""

    def read_events(self, first_id: int, last_id: int, limit: int) -> Deferred[Any]:
        """Deferred[list of ``(event_id, data)``]: the stored events with ``first_id <= id
        <= last_id``, oldest first, at most ``limit``; ``data`` is the event's JSON
        (bytes).  May fail (e.g. :class:`~daggy.errors.Unavailable`)."""


class EventSink(Protocol):
    """Where a subscription writes its stream (an HTTP response)."""

    def write(self, data: bytes) -> None: ...

    def finish(self) -> None:
        """End the stream cleanly (the daemon stops)."""

    def abort(self) -> None:
        """Drop the connection now, whatever is buffered (a stalled reader)."""


def sse_frame(event_id: int, name: bytes, data: bytes) -> bytes:
    """One Server-Sent Events message: ``id``, ``event`` and one ``data`` line."""
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (event_id, name, data)


def gap_frame(last_id: int, oldest_id: int) -> bytes:
    """The ``gap`` message: events after ``last_id`` and before ``oldest_id`` are not kept."""
    return b"event: gap\ndata: " + orjson.dumps({"from": last_id, "oldest": oldest_id}) + b"\n\n"


class EventHub:
    """Numbers events, keeps the replay window and feeds the subscriptions.

    :param reactor: ``IReactorTime``: subscriptions write on the next reactor turn and time
        their keep-alives with it.
    :param max_events: most events kept in the window (at least 1).
    :param max_bytes: most bytes of event JSON kept in the window (the newest event is
        kept whatever its size).
    :param max_paused_seconds: how long a subscription's connection may take nothing before
        it is disconnected.
    :param keepalive_seconds: silence after which a subscription sends ``: keep-alive``.
    """

    log = Logger()

    def __init__(self, reactor: IReactorTime, *, max_events: int = DEFAULT_MAX_EVENTS,
                 max_bytes: int = DEFAULT_MAX_BYTES,
                 max_paused_seconds: float = DEFAULT_MAX_PAUSED_SECONDS,
                 keepalive_seconds: float = KEEPALIVE_SECONDS):
        for name, value in (("max_events", max_events), ("max_bytes", max_bytes),
                            ("max_paused_seconds", max_paused_seconds),
                            ("keepalive_seconds", keepalive_seconds)):
            if not value > 0:
                raise ValueError(f"{name} must be more than 0, got {value!r}")
        self._reactor = reactor
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.max_paused_seconds = max_paused_seconds
        self.keepalive_seconds = keepalive_seconds
        # The window: parallel lists, slot i holding event ``_base_id + i``.  Slots before
        # ``_head`` are evicted (None) and deleted in batches.
        self._lines: list[bytes | None] = []
        self._names: list[bytes | None] = []
        self._runs: list[Any] = []
        self._base_id = 1
        self._head = 0
        self._next_id = 1
        self._evict_at = 1 + max_events
        self._bytes = 0
        self._name_bytes: dict[str, bytes] = {}
        self._subscriptions: dict[Subscription, None] = {}
        self._archive: EventArchive | None = None
        self._numbering_known = True

    # -- state ---------------------------------------------------------------------------
    @property
    def last_id(self) -> int:
        """The ID of the newest event (0 before the first)."""
        return self._next_id - 1

    @property
    def oldest_id(self) -> int:
        """The ID of the oldest event in the window (the next event's ID when it is empty)."""
        return self._base_id + self._head

    @property
    def retained_events(self) -> int:
        return self._next_id - self.oldest_id

    @property
    def retained_bytes(self) -> int:
        return self._bytes

    @property
    def subscriptions(self) -> int:
        """How many subscriptions (open event streams) there are."""
        return len(self._subscriptions)

    @property
    def archive(self) -> EventArchive | None:
        return self._archive

    def set_archive(self, archive: EventArchive | None) -> None:
        """Read events older than the window from ``archive`` when a subscription asks."""
        self._archive = archive

    @property
    def numbering_known(self) -> bool:
        """False between :meth:`defer_numbering` and :meth:`continue_after`."""
        return self._numbering_known

    def defer_numbering(self) -> None:
        """A durable logger will say where the numbering goes on (:meth:`continue_after`)
        once it has read its store; until then :meth:`subscribe` refuses, since the IDs
        readers know cannot be placed yet."""
        if self._next_id == 1:
            self._numbering_known = False

    def continue_after(self, last_id: int) -> bool:
        """Number the next event ``last_id + 1`` (a durable logger's stored events end at
        ``last_id``).  Only before the first event is published, or when it changes nothing.

        :returns: whether the numbering now goes on after ``last_id``.
        """
        self._numbering_known = True
        if last_id < self._next_id:
            return True
        if self._next_id != 1:
            return False
        self._next_id = self._base_id = last_id + 1
        self._evict_at = self._next_id + self.max_events
        return True

    # -- publishing ----------------------------------------------------------------------
    def publish(self, event: dict[str, Any]) -> tuple[int, bytes]:
        """Number ``event``, keep it in the window and pass it to the subscriptions.

        :param event: a JSON object with an ``event`` name (``taskState``, ...) and usually
            a ``runID``.
        :returns: ``(event ID, line)``: the event as compact UTF-8 JSON and a newline, what
            the stream carries as ``data:`` and the OStreamLogger writes as the event's line.
        :raises TypeError, ValueError: ``event`` is not JSON; nothing is published.
        """
        # A fresh bytes object of exactly this size: orjson's own result keeps the whole
        # buffer it was built in allocated (4 KiB, whatever the length).
        line = dumps_ascii_fallback(event) + b"\n"
        name = event.get("event")
        name_bytes = self._name_bytes.get(name)
        if name_bytes is None:
            name_bytes = self._new_name(name)
        event_id = self._next_id
        self._next_id = event_id + 1
        self._lines.append(line)
        self._names.append(name_bytes)
        self._runs.append(event.get("runID"))
        self._bytes += len(line)
        if event_id >= self._evict_at or self._bytes > self.max_bytes:
            self._evict()
        if self._subscriptions:
            for subscription in self._subscriptions:
                subscription._published()
        return event_id, line

    def _new_name(self, name: Any) -> bytes:
        if not isinstance(name, str):
            raise TypeError(f"an event's 'event' must be a string, got {type(name).__name__}")
        # A line break would end the SSE field early.
        encoded = name.replace("\r", " ").replace("\n", " ").encode("utf-8", "replace")
        self._name_bytes[name] = encoded
        return encoded

    def _evict(self) -> None:
        """Let the oldest events go until the window is within its bounds less a sixty-
        fourth (so that this runs once per so many events, not for every one)."""
        lines, names, runs = self._lines, self._names, self._runs
        head = self._head
        count = self._next_id - self._base_id - head
        keep_events = self.max_events - self.max_events // 64
        keep_bytes = self.max_bytes - self.max_bytes // 64
        size = self._bytes
        while count > 1 and (count > keep_events or size > keep_bytes):
            size -= len(lines[head])  # type: ignore[arg-type]
            lines[head] = names[head] = runs[head] = None
            head += 1
            count -= 1
        self._bytes = size
        if head >= _COMPACT_AT and head * 2 >= len(lines):
            del lines[:head], names[:head], runs[:head]
            self._base_id += head
            head = 0
        self._head = head
        # The ID past which the window holds more than max_events.
        self._evict_at = self._base_id + head + self.max_events

    def window_after(self, after_id: int, limit: int) -> list[tuple[int, bytes]]:
        """``(event ID, line)`` of the retained events after ``after_id``, oldest first, at
        most ``limit`` (a durable logger stores them from here)."""
        first = max(after_id + 1, self.oldest_id)
        start = first - self._base_id
        stop = min(len(self._lines), start + limit)
        lines = self._lines
        return [(self._base_id + index, lines[index])  # type: ignore[misc]
                for index in range(start, stop)]

    # -- subscribing ---------------------------------------------------------------------
    def subscribe(self, sink: EventSink, run_id: Any = None,
                  last_event_id: int | None = None) -> Subscription:
        """Start streaming to ``sink``: the events after ``last_event_id`` first (from the
        window, or the archive for older ones), then every new one; only those of run
        ``run_id`` when it is not None.

        Without ``last_event_id`` only new events are sent.  A ``last_event_id`` beyond the
        newest event (the numbering restarted: the daemon restarted without a durable
        logger) gets a ``gap`` and then every retained event.

        :raises Unavailable: the numbering is not known yet (see :meth:`defer_numbering`).
        """
        if not self._numbering_known:
            raise Unavailable("the event stream starts once the run logger has read its "
                              "store (event IDs go on from the stored ones)")
        if last_event_id is None:
            cursor, gap_from = self._next_id, None
        elif last_event_id > self.last_id:
            cursor, gap_from = 1, last_event_id
        else:
            cursor, gap_from = max(1, last_event_id + 1), None
        subscription = Subscription(self, self._reactor, sink, run_id, cursor, gap_from)
        self._subscriptions[subscription] = None
        subscription._schedule()
        return subscription

    def _forget(self, subscription: Subscription) -> None:
        self._subscriptions.pop(subscription, None)

    def close(self) -> None:
        """End every stream cleanly (the daemon stops); new subscriptions still work.

        Each stream first gets what its connection takes of the events it has not had (the
        last state changes of a stopping daemon), without waiting for a reactor turn."""
        for subscription in tuple(self._subscriptions):
            subscription._write_what_is_left()
            subscription.close()
            subscription._sink.finish()


@implementer(IPushProducer)
class Subscription:
    """One reader of the hub: a cursor into the window, a run filter and a sink.

    Made by :meth:`EventHub.subscribe`; registered as the streaming producer of the HTTP
    response, so that the transport pauses it when its buffer is full.
    """

    log = Logger()

    def __init__(self, hub: EventHub, reactor: IReactorTime, sink: EventSink, run_id: Any,
                 cursor: int, gap_from: int | None):
        self._hub = hub
        self._reactor = reactor
        self._sink = sink
        self.run_id = run_id
        #: The ID of the next event to consider.
        self._cursor = cursor
        #: When not None, a gap is reported before the next event considered, saying the
        #: reader has everything up to this ID.
        self._gap_from = gap_from
        self._paused = False
        self._paused_since = 0.0
        self._closed = False
        self._fetching = False
        self._archive_failed = False
        self._drain_call: IDelayedCall | None = None
        self._last_write = reactor.seconds()
        self._keepalive_call: IDelayedCall | None = reactor.callLater(
            hub.keepalive_seconds, self._keep_alive)
        #: Events written so far.
        self.sent = 0

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def next_id(self) -> int:
        """The ID of the next event this subscription will consider."""
        return self._cursor

    # -- IPushProducer -------------------------------------------------------------------
    def pauseProducing(self) -> None:
        if not self._paused:
            self._paused = True
            self._paused_since = self._reactor.seconds()

    def resumeProducing(self) -> None:
        self._paused = False
        # The keep-alive timer waits for the end of max_paused_seconds while paused.
        call = self._keepalive_call
        due = self._last_write + self._hub.keepalive_seconds
        if call is not None and call.active() and call.getTime() > due:
            call.reset(max(0.0, due - self._reactor.seconds()))
        self._schedule()

    def stopProducing(self) -> None:
        self.close()

    def close(self) -> None:
        """Stop streaming (the connection is gone); idempotent."""
        if self._closed:
            return
        self._closed = True
        self._hub._forget(self)
        for call in (self._drain_call, self._keepalive_call):
            if call is not None and call.active():
                call.cancel()
        self._drain_call = self._keepalive_call = None

    # -- streaming -----------------------------------------------------------------------
    def _write_what_is_left(self) -> None:
        """Drain until the window is sent or the connection pauses this subscription."""
        while (not self._closed and not self._paused and not self._fetching
               and self._cursor < self._hub._next_id):
            if self._drain_call is not None and self._drain_call.active():
                self._drain_call.cancel()
            self._drain_call = None
            self._drain()
    def _published(self) -> None:
        if self._drain_call is None and not self._paused and not self._fetching:
            self._drain_call = self._reactor.callLater(0, self._drain)

    def _schedule(self) -> None:
        if (self._drain_call is None and not self._closed and not self._paused
                and not self._fetching):
            self._drain_call = self._reactor.callLater(0, self._drain)

    def _drop(self, seconds: float) -> None:
        self.log.info(
            "An event stream reader took nothing for {seconds:.0f} seconds; disconnected (it "
            "can reconnect with Last-Event-ID {last_id})", seconds=seconds,
            last_id=self._cursor - 1)
        self.close()
        self._sink.abort()

    def _write(self, data: bytes) -> None:
        self._last_write = self._reactor.seconds()
        self._sink.write(data)

    def _drain(self) -> None:
        """Write what the reader has not had yet, up to this turn's budget."""
        self._drain_call = None
        if self._closed or self._paused or self._fetching:
            return
        hub = self._hub
        oldest = hub.oldest_id
        if self._cursor < oldest:
            if hub._archive is not None and not self._archive_failed:
                self._fetch(oldest - 1)
                return
            if self._gap_from is None:
                self._gap_from = self._cursor - 1
            self._cursor = oldest
        frames = []
        size = 0
        if self._gap_from is not None:
            frames.append(gap_frame(self._gap_from, self._cursor))
            self._gap_from = None
        base_id = hub._base_id
        lines, names, runs = hub._lines, hub._names, hub._runs
        index = self._cursor - base_id
        stop = min(len(lines), index + MAX_SCAN_EVENTS_PER_TURN)
        wanted = self.run_id
        sent = 0
        while index < stop and size < MAX_WRITE_BYTES_PER_TURN:
            if wanted is None or runs[index] == wanted:
                # The line ends in a newline: one more ends the message.
                frame = b"id: %d\nevent: %s\ndata: %s\n" % (
                    base_id + index, names[index], lines[index])
                frames.append(frame)
                size += len(frame)
                sent += 1
            index += 1
        self._cursor = base_id + index
        if frames:
            self.sent += sent
            self._write(b"".join(frames))
        if self._cursor < hub._next_id:
            self._schedule()

    # -- the archive ---------------------------------------------------------------------
    def _fetch(self, last_id: int) -> None:
        archive = self._hub._archive
        assert archive is not None
        self._fetching = True
        first_id = self._cursor
        reading = maybeDeferred(archive.read_events, first_id, last_id, ARCHIVE_PAGE_EVENTS)
        reading.addCallbacks(self._fetched, self._fetch_failed,
                             callbackArgs=(first_id, last_id), errbackArgs=(first_id,))
        reading.addErrback(lambda failure: self.log.failure(
            "Replaying stored events to an event stream failed", failure))

    def _fetched(self, entries: list[tuple[int, bytes]], first_id: int, last_id: int) -> None:
        self._fetching = False
        if self._closed:
            return
        frames = []
        cursor = self._cursor
        wanted = self.run_id
        sent = 0
        for event_id, data in entries:
            if event_id < cursor or event_id > last_id:
                continue
            parsed = self._parse_stored(event_id, data)
            if event_id > cursor and self._gap_from is None:
                self._gap_from = cursor - 1
            if self._gap_from is not None:
                frames.append(gap_frame(self._gap_from, event_id))
                self._gap_from = None
            cursor = event_id + 1
            if parsed is None:
                continue
            name, run_id, data = parsed
            if wanted is None or run_id == wanted:
                frames.append(sse_frame(event_id, name, data))
                sent += 1
        if len(entries) < ARCHIVE_PAGE_EVENTS and cursor <= last_id:
            # The archive holds nothing more up to last_id: those events are lost.
            if self._gap_from is None:
                self._gap_from = cursor - 1
            cursor = last_id + 1
        self._cursor = cursor
        if frames:
            self.sent += sent
            self._write(b"".join(frames))
        self._schedule()

    def _parse_stored(self, event_id: int, data: bytes) -> tuple[bytes, Any, bytes] | None:
        try:
            event = orjson.loads(data)
            name = event["event"]
            if not isinstance(name, str):
                raise TypeError("event name is not a string")
        except (orjson.JSONDecodeError, TypeError, KeyError):
            self.log.warn("Stored event {event_id} is not an event object; not replayed",
                          event_id=event_id)
            return None
        if b"\n" in data or b"\r" in data:
            data = dumps_ascii_fallback(event)
        name_bytes = self._hub._name_bytes.get(name) or self._hub._new_name(name)
        return name_bytes, event.get("runID"), data

    def _fetch_failed(self, failure: Failure, first_id: int) -> None:
        self._fetching = False
        self._archive_failed = True
        if failure.check(DaggyError):
            self.log.warn("Events from {first_id} on cannot be replayed from the archive: "
                          "{reason}; the reader gets a gap", first_id=first_id,
                          reason=failure.getErrorMessage())
        else:
            self.log.failure("Reading stored events from {first_id} on failed", failure,
                             first_id=first_id)
        if not self._closed:
            self._schedule()

    # -- keep-alive ----------------------------------------------------------------------
    def _keep_alive(self) -> None:
        """Send a keep-alive after keepalive_seconds of silence; drop a reader paused for
        max_paused_seconds (one timer does both)."""
        self._keepalive_call = None
        if self._closed:
            return
        now = self._reactor.seconds()
        hub = self._hub
        if self._paused:
            paused_for = now - self._paused_since
            if paused_for >= hub.max_paused_seconds:
                self._drop(paused_for)
                return
            # A connection whose buffer is full is not idle: no keep-alive.
            due = self._paused_since + hub.max_paused_seconds
        else:
            due = self._last_write + hub.keepalive_seconds
            if now >= due:
                self._write(KEEPALIVE_FRAME)
                if self._closed:
                    return
                due = now + hub.keepalive_seconds
        self._keepalive_call = self._reactor.callLater(max(0.0, due - now), self._keep_alive)
