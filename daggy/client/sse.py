"""Server-Sent Events: a line parser (the WHATWG rules daggyd's ``/v1/events`` needs) and
a reader that reconnects with ``Last-Event-ID`` (the contract is in docs/api.md)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

import httpx

from daggy.client.errors import Unreachable


@dataclass(frozen=True)
class ServerEvent:
    """One dispatched event: ``id`` is None when the event carried none."""

    id: int | None
    event: str
    data: str

    def json(self) -> Any:
        return json.loads(self.data)


class EventParser:
    """Feed it lines (without their line break); it returns each event as it completes."""

    def __init__(self) -> None:
        self._event = ""
        self._data: list[str] = []
        self._id: int | None = None
        self._id_seen = False

    def feed(self, line: str) -> ServerEvent | None:
        if line == "":
            return self._dispatch()
        if line.startswith(":"):
            return None  # a comment: daggyd's keep-alive
        field, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if field == "data":
            self._data.append(value)
        elif field == "event":
            self._event = value
        elif field == "id" and "\0" not in value:
            try:
                self._id = int(value)
                self._id_seen = True
            except ValueError:
                pass  # not one of daggyd's ids; keep the last good one for reconnecting
        return None

    def _dispatch(self) -> ServerEvent | None:
        data, event, event_id = self._data, self._event or "message", self._id
        seen = self._id_seen
        self._data, self._event, self._id_seen = [], "", False
        if not data:
            return None
        return ServerEvent(event_id if seen else None, event, "\n".join(data))


def parse_lines(lines: Iterable[str]) -> Iterator[ServerEvent]:
    parser = EventParser()
    for line in lines:
        event = parser.feed(line)
        if event is not None:
            yield event


#: Errors after which reading again may work: the stream broke or went silent.
STREAM_BROKEN = (httpx.TransportError, httpx.StreamError)


class Reconnecting:
    """Delays between reconnection attempts, giving up once the daemon has been unreachable
    for ``give_up_seconds``.

    :param sleep: ``time.sleep``, or a fake in tests.
    :param clock: ``time.monotonic``, or a fake in tests.
    """

    def __init__(self, give_up_seconds: float, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic, first_delay: float = 0.2,
                 max_delay: float = 5.0) -> None:
        self._give_up_seconds = give_up_seconds
        self._sleep = sleep
        self._clock = clock
        self._first_delay = first_delay
        self._max_delay = max_delay
        self._delay = first_delay
        self._failing_since: float | None = None

    def connected(self) -> None:
        self._delay = self._first_delay
        self._failing_since = None

    def failed(self, error: Exception) -> None:
        """Wait before the next attempt, or raise :class:`Unreachable` if it is time to give
        up (``error`` explains why)."""
        now = self._clock()
        if self._failing_since is None:
            self._failing_since = now
        elif now - self._failing_since >= self._give_up_seconds:
            if isinstance(error, Unreachable):
                raise error
            raise Unreachable(f"lost the event stream for {self._give_up_seconds:g} s: "
                              f"{error or type(error).__name__}")
        self._sleep(self._delay)
        self._delay = min(self._delay * 2, self._max_delay)
