# -*- test-case-name: tests.unit.test_redis_logger -*-
"""The narrow Redis seam the RedisLogger talks through, and a RESP2 reply parser.

:class:`RedisConnector` opens a :class:`RedisConnection` (authenticated, database selected);
the connection runs single commands and MULTI/EXEC transactions.  The real implementation is
in :mod:`daggy.loggers._txredis` (txredisapi underneath); tests connect the same code to
fakeredis (:mod:`daggy.testing.redis`).

Replies are plain values: bulk strings are ``bytes``, status replies ``str``, integers
``int``, arrays ``list`` and nil ``None``.  An error reply fails the command's Deferred with
:class:`RedisReplyError`; a lost, refused or timed-out connection with
:class:`RedisConnectionError`.

No Twisted reactor and no txredisapi here: importing this module is always safe.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Protocol, Sequence

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

#: One command: its name and arguments (``bytes``, ``str`` or ``int``).
Command = Sequence[Any]


class RedisError(Exception):
    """Base of the errors a Redis command can fail with."""


class RedisConnectionError(RedisError):
    """The connection is gone (refused, lost, closed, or no reply in time)."""


class RedisReplyError(RedisError):
    """Redis answered with an error (``-ERR ...``, ``-WRONGTYPE ...``, ``-WRONGPASS ...``)."""


class RedisProtocolError(RedisConnectionError):
    """Redis sent something that is not RESP2; the connection cannot be used any more."""


class RedisConnection(Protocol):
    def execute(self, *command: Any) -> Deferred[Any]:
        """Run one command; Deferred[its reply]."""

    def transaction(self, commands: Sequence[Command]) -> Deferred[list[Any]]:
        """Run ``commands`` in one MULTI/EXEC; Deferred[their replies, in order].

        Fails with :class:`RedisReplyError` if Redis rejected any of them (nothing, or
        everything but the failed command, was applied: Redis does not roll back), and
        with :class:`RedisConnectionError` if the connection was lost (it may or may not
        have been applied)."""

    def disconnect(self) -> None:
        """Close the connection; commands still waiting fail with RedisConnectionError."""


class RedisConnector(Protocol):
    #: Where the connector connects, for messages: ``localhost:6379``, ``/run/redis.sock``.
    description: str

    def connect(self, on_lost: Callable[[RedisConnection, Failure], None]
                ) -> Deferred[RedisConnection]:
        """Open a connection, authenticate and select the database.

        :param on_lost: called with the connection and the reason when a connection this
            call delivered closes, whoever closed it.
        :returns: Deferred[connection]; fails with :class:`RedisConnectionError` or
            :class:`RedisReplyError` (wrong password, no such database).
        """


def describe_error(error: BaseException) -> str:
    """An error in few words, for logs and ``/ready``.

    Twisted's network errors put their docstring in front ("Connection was refused by other
    side: 111: Connection refused."); only the specific part is kept, or the docstring when
    there is nothing else.
    """
    text = str(error).strip()
    summary = ""
    if type(error).__module__ == "twisted.internet.error":
        summary = (type(error).__doc__ or "").strip().rstrip(".")
        if summary and text.startswith(summary):
            text = re.sub(r"^\d+: ", "", text[len(summary):].lstrip(".: "))
    return text.rstrip(".") or summary or type(error).__name__


class _Array:
    """An array reply still being read: how many elements are missing, and those read."""

    __slots__ = ("missing", "items")

    def __init__(self, missing: int):
        self.missing = missing
        self.items: list[Any] = []


class ReplyParser:
    """Incremental RESP2 reply parser.

    ``feed(data)`` returns every reply completed by ``data``.  Parsing resumes where the
    last chunk stopped (the position in the buffer and the arrays being read are kept), so
    a reply of many megabytes arriving in small chunks costs O(its size), not O(size²); a
    bulk string is copied once, when it is complete.
    """

    #: Consumed bytes are dropped from the buffer once there are this many of them.
    COMPACT_BYTES = 1 << 16

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._position = 0
        self._arrays: list[_Array] = []

    def feed(self, data: bytes) -> list[Any]:
        """Add bytes from the connection.

        :returns: the replies completed so far, in order.
        :raises RedisProtocolError: the bytes are not RESP2.
        """
        buffer = self._buffer
        buffer += data
        position = self._position
        arrays = self._arrays
        replies: list[Any] = []
        while True:
            line_end = buffer.find(b"\r\n", position)
            if line_end < 0:
                break
            kind = buffer[position]
            if kind == 0x24:  # "$" bulk string
                length = self._integer(buffer, position + 1, line_end)
                if length < 0:
                    value: Any = None
                    position = line_end + 2
                else:
                    start = line_end + 2
                    end = start + length
                    if len(buffer) < end + 2:
                        break
                    value = bytes(buffer[start:end])
                    position = end + 2
            elif kind == 0x2A:  # "*" array
                count = self._integer(buffer, position + 1, line_end)
                position = line_end + 2
                if count > 0:
                    arrays.append(_Array(count))
                    continue
                value = [] if count == 0 else None
            elif kind == 0x3A:  # ":" integer
                value = self._integer(buffer, position + 1, line_end)
                position = line_end + 2
            elif kind == 0x2B:  # "+" status
                value = buffer[position + 1:line_end].decode("utf-8", "replace")
                position = line_end + 2
            elif kind == 0x2D:  # "-" error
                value = RedisReplyError(buffer[position + 1:line_end].decode("utf-8", "replace"))
                position = line_end + 2
            else:
                raise RedisProtocolError(
                    f"unexpected reply from Redis: {bytes(buffer[position:line_end][:40])!r}")
            # Hand the value to the innermost array being read; a completed array is in turn
            # a value for the one around it.
            while arrays:
                array = arrays[-1]
                array.items.append(value)
                array.missing -= 1
                if array.missing:
                    break
                arrays.pop()
                value = array.items
            else:
                replies.append(value)
        if position >= self.COMPACT_BYTES:
            del buffer[:position]
            position = 0
        self._position = position
        return replies

    @staticmethod
    def _integer(buffer: bytearray, start: int, end: int) -> int:
        try:
            return int(buffer[start:end])
        except ValueError:
            raise RedisProtocolError(
                f"unexpected reply from Redis: {bytes(buffer[start - 1:end][:40])!r}") from None
