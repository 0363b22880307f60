# -*- test-case-name: tests.unit.test_redis_logger -*-
"""The Redis connector daggyd uses: txredisapi's protocol on an endpoint of the injected
reactor.

txredisapi imports the global reactor when it is imported, so this module is imported only
when a RedisLogger is built (the registry's factory), never by the plugin or the config
checker.  Its connection helpers (``Connection``, ``RedisFactory``) would also connect and
schedule through that global reactor; daggy uses only its protocol class, connected through
an endpoint built on the reactor daggyd was given, with two overrides (see
:class:`_RedisProtocol`).  One connection carries every command, so Redis applies them in
the order they were sent.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import txredisapi
from twisted.internet import defer
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import HostnameEndpoint, UNIXClientEndpoint, connectProtocol
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure

from daggy.loggers._redis_api import (
    Command,
    RedisConnection,
    RedisConnectionError,
    RedisProtocolError,
    RedisReplyError,
    ReplyParser,
    describe_error,
)

#: Seconds to wait for a reply before the connection is considered dead.
DEFAULT_REPLY_TIMEOUT = 30.0
#: Seconds a TCP or unix-socket connection attempt may take.
DEFAULT_CONNECT_TIMEOUT = 5.0


class _RedisProtocol(txredisapi.BaseRedisProtocol):
    """txredisapi's Redis protocol, with daggy's reply parser and the injected reactor.

    txredisapi reads a reply line by line and, after every bulk string, pauses the transport
    and resumes one turn later through the *global* reactor: an HGETALL of 100,000 fields
    would take 200,000 reactor turns.  :class:`~daggy.loggers._redis_api.ReplyParser` reads
    whole chunks instead; txredisapi still encodes the commands and matches replies to them.
    Replies are not decoded (``charset=None``, ``convertNumbers=False``): a task named
    ``"12"`` must stay a string.
    """

    def __init__(self, reactor: Any):
        super().__init__(charset=None, convertNumbers=False)
        # The class attribute is the global reactor's callLater.
        self.callLater = reactor.callLater
        self._parser = ReplyParser()
        self.on_lost: Callable[[Failure], None] | None = None
        self.protocol_error: RedisProtocolError | None = None

    def _build_command(self, *args: Any, **kwargs: Any) -> bytes:
        # The base class extends a bytearray a few times per argument; a flush sends HSETs
        # of tens of thousands of arguments, so the command is joined once instead.
        parts = [b"*%d\r\n" % len(args)]
        append = parts.append
        for arg in args:
            kind = type(arg)
            if kind is not bytes:
                if kind is str:
                    arg = arg.encode("utf-8")
                elif kind is int:
                    arg = b"%d" % arg
                else:
                    arg = self._encode_value(arg)
            append(b"$%d\r\n" % len(arg))
            append(arg)
            append(b"\r\n")
        return b"".join(parts)

    def dataReceived(self, data: bytes, unpause: bool = False) -> None:
        try:
            replies = self._parser.feed(data)
        except RedisProtocolError as error:
            self.protocol_error = error
            self.transport.abortConnection()
            return
        for reply in replies:
            self.replyReceived(reply)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        # The base class fails every command still waiting for a reply.
        super().connectionLost(reason)
        on_lost, self.on_lost = self.on_lost, None
        if on_lost is not None:
            on_lost(reason)


class TxRedisConnection:
    """A :class:`~daggy.loggers._redis_api.RedisConnection` over one :class:`_RedisProtocol`.

    Every request gets ``reply_timeout`` seconds; a request without a reply by then aborts
    the connection (so every pending request fails with ``RedisConnectionError``).
    """

    def __init__(self, protocol: _RedisProtocol, reactor: Any, description: str,
                 reply_timeout: float):
        self._protocol = protocol
        self._reactor = reactor
        self._description = description
        self._reply_timeout = reply_timeout
        self._timed_out = False

    def execute(self, *command: Any) -> Deferred[Any]:
        return self._request(lambda: [self._protocol.execute_command(*command)]
                             ).addCallback(lambda replies: replies[0])

    def transaction(self, commands: Sequence[Command]) -> Deferred[list[Any]]:
        def send() -> list[Deferred[Any]]:
            # Written in one go, with no chance for anything else to come between MULTI and
            # EXEC on this connection.
            sent = [self._protocol.execute_command("MULTI")]
            try:
                sent.extend(self._protocol.execute_command(*command) for command in commands)
            except Exception:
                # MULTI is open and part of the batch is sent: the connection is unusable.
                self._protocol.transport.abortConnection()
                for request in sent:
                    request.addErrback(lambda _: None)
                raise
            sent.append(self._protocol.execute_command("EXEC"))
            return sent

        return self._request(send).addCallback(self._exec_result)

    def disconnect(self) -> None:
        transport = self._protocol.transport
        if transport is not None and self._protocol.connected:
            transport.abortConnection()

    # -- internals -----------------------------------------------------------------------
    def _request(self, send: Callable[[], list[Deferred[Any]]]) -> Deferred[list[Any]]:
        try:
            requests = send()
        except txredisapi.ConnectionError:
            return defer.fail(RedisConnectionError(
                f"not connected to Redis at {self._description}"))
        except Exception:
            return defer.fail()
        timer = self._reactor.callLater(self._reply_timeout, self._time_out)

        def done(result: Any) -> Any:
            if timer.active():
                timer.cancel()
            return result

        return (defer.gatherResults(requests, consumeErrors=True)
                .addBoth(done)
                .addErrback(self._translate))

    def _time_out(self) -> None:
        self._timed_out = True
        self.disconnect()

    def _translate(self, failure: Failure) -> Failure:
        if failure.check(defer.FirstError):
            failure = failure.value.subFailure
        if failure.check(RedisReplyError, RedisConnectionError, CancelledError):
            return failure
        if failure.check(txredisapi.ConnectionError):
            if self._timed_out:
                problem = f"no reply within {self._reply_timeout:g} s"
            elif self._protocol.protocol_error is not None:
                problem = str(self._protocol.protocol_error)
            else:
                problem = "connection lost"
            return Failure(RedisConnectionError(
                f"Redis at {self._description}: {problem}"))
        return failure

    @staticmethod
    def _exec_result(replies: list[Any]) -> list[Any]:
        results = replies[-1]
        if results is None:
            raise RedisReplyError("the transaction was aborted")
        for result in results:
            if isinstance(result, RedisReplyError):
                raise result
        return results


class TxRedisConnector:
    """A :class:`~daggy.loggers._redis_api.RedisConnector` over txredisapi.

    :param reactor: the reactor to connect and time out with.
    :param endpoint: an ``IStreamClientEndpoint`` reaching Redis (see :meth:`for_address`).
    :param description: where that is, for messages.
    :param password: sent with AUTH after connecting, when given.
    :param db: selected with SELECT after connecting, unless 0.
    """

    def __init__(self, reactor: Any, endpoint: Any, description: str, *,
                 password: str | None = None, db: int = 0,
                 reply_timeout: float = DEFAULT_REPLY_TIMEOUT):
        self._reactor = reactor
        self._endpoint = endpoint
        self.description = description
        self._password = password
        self._db = db
        self._reply_timeout = reply_timeout

    @classmethod
    def for_address(cls, reactor: Any, *, host: str = "localhost", port: int = 6379,
                    unix_socket: str | None = None, password: str | None = None, db: int = 0,
                    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
                    reply_timeout: float = DEFAULT_REPLY_TIMEOUT) -> TxRedisConnector:
        """Connect over a unix socket when ``unix_socket`` is given, else over TCP to
        ``host:port`` (a name is resolved without blocking; IPv4 and IPv6 both work)."""
        if unix_socket:
            endpoint = UNIXClientEndpoint(reactor, unix_socket, timeout=connect_timeout)
            description = unix_socket
        else:
            endpoint = HostnameEndpoint(reactor, host, port, timeout=connect_timeout)
            description = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        return cls(reactor, endpoint, description, password=password, db=db,
                   reply_timeout=reply_timeout)

    def connect(self, on_lost: Callable[[RedisConnection, Failure], None]
                ) -> Deferred[RedisConnection]:
        return Deferred.fromCoroutine(self._connect(on_lost))

    async def _connect(self, on_lost: Callable[[RedisConnection, Failure], None]
                       ) -> RedisConnection:
        protocol = _RedisProtocol(self._reactor)
        try:
            await connectProtocol(self._endpoint, protocol)
        except CancelledError:
            raise
        except Exception as error:
            raise RedisConnectionError(describe_error(error)) from None
        connection = TxRedisConnection(protocol, self._reactor, self.description,
                                       self._reply_timeout)
        try:
            if self._password is not None:
                await connection.execute("AUTH", self._password)
            if self._db:
                await connection.execute("SELECT", self._db)
        except BaseException:
            connection.disconnect()
            raise
        if not protocol.connected:
            raise RedisConnectionError(f"Redis at {self.description} closed the connection")
        protocol.on_lost = lambda reason: on_lost(connection, reason)
        return connection
