"""A fakeredis-backed Redis for unit tests: no sockets, no real time.

:class:`FakeRedisServer` holds the data (a ``fakeredis.FakeServer``) and can be stopped and
started like a real server.  :meth:`FakeRedisServer.endpoint` is an
``IStreamClientEndpoint`` for the real connector
(:class:`daggy.loggers._txredis.TxRedisConnector`), so a test drives the production
protocol, reply parser and logger end to end: bytes written by the client are executed by
fakeredis, and the replies come back as RESP2 bytes one clock turn later
(``clock.advance(0)``).

Needs the ``fakeredis`` package (a test dependency).
"""

from __future__ import annotations

from typing import Any

import fakeredis
import redis.exceptions
from fakeredis._clients._sync import FakeRedisConnection
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone, ConnectionLost, ConnectionRefusedError
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.python.failure import Failure
from zope.interface import implementer

_STATUS_REPLIES = frozenset({b"OK", b"QUEUED", b"PONG"})
_EXEC = b"*1\r\n$4\r\nEXEC\r\n"


def encode_reply(value: Any, top_level: bool = True) -> bytes:
    """One fakeredis reply as RESP2 bytes, spelled the way Redis spells it."""
    if value is None:
        return b"$-1\r\n"
    if isinstance(value, Exception):
        message = str(value) or type(value).__name__
        first_word = message.split(" ", 1)[0]
        if isinstance(value, redis.exceptions.AuthenticationError):
            message = "WRONGPASS " + message
        elif not (first_word.isupper() and first_word.isalpha()):
            message = "ERR " + message
        return b"-" + message.replace("\r", " ").replace("\n", " ").encode() + b"\r\n"
    if isinstance(value, bool):
        return b":1\r\n" if value else b":0\r\n"
    if isinstance(value, int):
        return b":%d\r\n" % value
    if isinstance(value, float):
        value = repr(value).encode()
    if isinstance(value, str):
        value = value.encode()
    if isinstance(value, bytes):
        if top_level and value in _STATUS_REPLIES:
            return b"+" + value + b"\r\n"
        return b"$%d\r\n%s\r\n" % (len(value), value)
    if isinstance(value, dict):
        value = [item for pair in value.items() for item in pair]
    if isinstance(value, (list, tuple, set, frozenset)):
        return b"*%d\r\n" % len(value) + b"".join(encode_reply(item, False) for item in value)
    raise TypeError(f"cannot encode a reply of type {type(value).__name__}")


class FakeRedisServer:
    """A Redis server for tests, reachable through :meth:`endpoint`.

    * ``stop()`` closes every connection (their protocols see ``connectionLost``) and
      refuses new ones until ``start()``; the data stays, as with a persistent Redis.
    * ``lose_reply_once()``: the next write, and the rest written in the same reactor turn
      (a whole transaction), is executed but no reply arrives and the connection drops, as
      when Redis dies right after a transaction.
    * ``fail_writes_once(after_transactions=0)``: once ``after_transactions`` more
      transactions (EXECs) have been executed, the next write never reaches Redis and the
      connection drops (Redis discards a MULTI left open).
    * ``stall()``: commands are executed but replies are held back until ``resume()``, as
      with a Redis that stopped answering.
    * ``client()``: a synchronous ``fakeredis.FakeRedis`` on the same data, to look at or
      change it directly.
    * ``writes`` counts the client writes executed (txredisapi writes each command
      separately), ``transactions`` the EXECs among them.
    """

    def __init__(self, clock: Any):
        self._clock = clock
        self.server = fakeredis.FakeServer()
        self.running = True
        self.connections: list[_FakeRedisTransport] = []
        self.writes = 0
        self.transactions = 0
        self._lose_reply_once = False
        self._fail_writes_once = False
        self._fail_after_transactions = 0
        self.stalled = False

    def endpoint(self) -> _FakeRedisEndpoint:
        return _FakeRedisEndpoint(self)

    def client(self, db: int = 0) -> fakeredis.FakeRedis:
        return fakeredis.FakeRedis(server=self.server, db=db)

    def require_password(self, password: str) -> None:
        self.client().config_set("requirepass", password)

    def stop(self) -> None:
        self.running = False
        for connection in list(self.connections):
            connection.drop(ConnectionLost("Redis went away"))

    def start(self) -> None:
        self.running = True

    def lose_reply_once(self) -> None:
        self._lose_reply_once = True

    def fail_writes_once(self, after_transactions: int = 0) -> None:
        self._fail_writes_once = True
        self._fail_after_transactions = self.transactions + after_transactions

    def stall(self) -> None:
        self.stalled = True

    def resume(self) -> None:
        self.stalled = False
        for connection in list(self.connections):
            connection.release_replies()

    def _take_fault(self) -> str | None:
        if self._fail_writes_once and self.transactions >= self._fail_after_transactions:
            self._fail_writes_once = False
            return "fail"
        if self._lose_reply_once:
            self._lose_reply_once = False
            return "lose"
        return None


@implementer(IStreamClientEndpoint)
class _FakeRedisEndpoint:
    def __init__(self, server: FakeRedisServer):
        self._server = server

    def connect(self, factory: Any) -> Deferred[Any]:
        server = self._server

        def cancel(_: Deferred[Any]) -> None:
            # Deferred fails itself with CancelledError after this.
            if call.active():
                call.cancel()

        connected: Deferred[Any] = Deferred(cancel)

        def attempt() -> None:
            if not server.running:
                connected.errback(ConnectionRefusedError("Connection refused"))
                return
            protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 6379))
            transport = _FakeRedisTransport(server, protocol)
            server.connections.append(transport)
            protocol.makeConnection(transport)
            connected.callback(protocol)

        # Connecting takes a reactor turn, as it does over a socket.
        call = server._clock.callLater(0, attempt)
        return connected


class _FakeRedisTransport:
    """Carries bytes between one client protocol and fakeredis, replies one turn later."""

    disconnecting = False

    def __init__(self, server: FakeRedisServer, protocol: Any):
        self._server = server
        self._protocol = protocol
        self._redis = FakeRedisConnection(server=server.server, writer=None, protocol=2)
        self._held: list[bytes] = []
        self._delivery: Any = None
        self._failing = False
        self._losing = False
        self.connected = True

    # -- ITransport --------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        if not self.connected or self._failing:
            return
        server = self._server
        fault = None if self._losing else server._take_fault()
        if fault == "fail":
            self._failing = True
            self._drop_soon(ConnectionLost("Redis went away before the write"))
            return
        socket = self._redis.get_socket()
        socket.sendall(data)
        server.writes += 1
        if data.endswith(_EXEC):
            server.transactions += 1
        replies = []
        while self._redis.can_read():
            try:
                reply = self._redis.read_response()
            except redis.exceptions.RedisError as error:
                reply = error
            replies.append(encode_reply(reply))
        if fault == "lose":
            # Everything written in this reactor turn (a whole transaction) is executed,
            # but no reply arrives.
            self._losing = True
            self._drop_soon(ConnectionLost("Redis went away after the write"))
        if self._losing:
            return
        self._held.append(b"".join(replies))
        if not server.stalled:
            self.release_replies()

    def writeSequence(self, data: list[bytes]) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        self.drop(ConnectionDone("closed by the client"))

    def abortConnection(self) -> None:
        self.drop(ConnectionLost("aborted by the client"))

    def getPeer(self) -> IPv4Address:
        return IPv4Address("TCP", "127.0.0.1", 6379)

    def getHost(self) -> IPv4Address:
        return IPv4Address("TCP", "127.0.0.1", 40000)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        self.loseConnection()

    # -- control -----------------------------------------------------------------------
    def release_replies(self) -> None:
        if self._delivery is None and self._held:
            self._delivery = self._server._clock.callLater(0, self._deliver)

    def _deliver(self) -> None:
        self._delivery = None
        if not self.connected or self._server.stalled:
            return
        data, self._held = b"".join(self._held), []
        self._protocol.dataReceived(data)

    def _drop_soon(self, reason: Exception) -> None:
        # A socket reports its loss from the reactor, never from inside write().
        self._held = []
        self._server._clock.callLater(0, self.drop, reason)

    def drop(self, reason: Exception) -> None:
        """Close the connection now; the protocol sees ``connectionLost(reason)``."""
        if not self.connected:
            return
        self.connected = False
        if self._delivery is not None and self._delivery.active():
            self._delivery.cancel()
        self._delivery = None
        self._held = []
        if self in self._server.connections:
            self._server.connections.remove(self)
        self._redis.disconnect()
        self._protocol.connectionLost(Failure(reason))

