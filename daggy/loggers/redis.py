# -*- test-case-name: tests.unit.test_redis_logger -*-
"""``RedisLogger``: the run record kept in Redis, so that runs survive a daemon restart.

Design (docs/loggers.md has the user-facing account and the key layout):

* **Mirror.**  The logger is a :class:`~daggy.loggers.memory.MemoryStore` holding every run
  this process created or recovered; the API's reads of those runs never wait on Redis.
  Runs stored in Redis by an earlier daemon and not recovered (finished runs) are read from
  Redis when asked for; their summaries (for ``list_runs``) are read once, on the first
  connection.
* **Write-behind.**  A write updates the mirror at once and marks what it changed as
  *dirty* (one mark per item: a run's status, a task's state, its attempts...).  A flush,
  at most every ``flush_interval`` seconds, writes the *current* value of every dirty item,
  in MULTI/EXEC transactions of bounded size.  Every command sets a whole value (HSET, ZADD,
  SADD, SREM), so a transaction retried after a lost connection cannot duplicate anything;
  while Redis is away the backlog is the set of dirty marks, at most one per item, and it
  is written, oldest mark first, when Redis is back.
* **Connection.**  One connection (so Redis applies commands in the order sent), opened by
  ``start()`` and reopened after any failure with backoff (0.1 s doubling to 5 s).  One
  warning is logged per outage, one info line when it ends.
* **Run IDs** come from ``INCR {prefix}:nextRunID``; without Redis no run can be created
  (:class:`~daggy.errors.Unavailable`).

This module does not import txredisapi (which would install the global reactor); the real
connector is imported when a RedisLogger is built without an injected one.
"""

from __future__ import annotations

import collections
import dataclasses
import gc
import json
from operator import itemgetter
from typing import TYPE_CHECKING, Any, Iterable

from twisted.internet import defer
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from daggy.errors import DaggyError, Unavailable, UnknownRun, UnknownTask
from daggy.loggers._redis_api import (
    Command,
    RedisConnection,
    RedisConnectionError,
    RedisConnector,
    RedisError,
    RedisReplyError,
    describe_error,
)
from daggy.loggers.memory import MemoryStore, _RunRecord, freeze, restored_record
from daggy.jsonio import dumps_surrogatepass
from daggy.model import FINISHED_STATES, Attempt, State, TaskDef, iso8601, parse_iso8601

if TYPE_CHECKING:
    from daggy.events import EventHub

MiB = 1 << 20
DEFAULT_PREFIX = "daggy"
DEFAULT_FLUSH_INTERVAL = 0.05
DEFAULT_MAX_STORED_OUTPUT_BYTES = MiB
DEFAULT_CLOSE_TIMEOUT = 5.0
#: Backoff between connection attempts: the first retry waits this long...
INITIAL_RETRY_SECONDS = 0.1
#: ...each failure doubles it, up to this.
MAX_RETRY_SECONDS = 5.0
#: Bounds on one MULTI/EXEC of a flush: dirty items, and bytes of values.
DEFAULT_MAX_BATCH_ITEMS = 5000
DEFAULT_MAX_BATCH_BYTES = 4 * MiB
#: Run summaries read per transaction on the first connection.
SUMMARY_BATCH = 1000

_FINISHED_VALUES = frozenset(state.value for state in FINISHED_STATES)
_STATE_VALUES = {state.value: state.value for state in State}

# Kinds of dirty items: (run_id, kind, task name or None) -> value (a task's index for
# _TASK_ADDED, else None).
_RUN_CREATED, _RUN_STATUS, _TASK_ADDED, _TASK_STATE, _TASK_ATTEMPTS, _TASK_EXECUTOR = range(6)

_SUMMARY_FIELDS = (b"tag", b"state", b"startTime", b"lastUpdate", b"taskCounts")


def _json(value: Any) -> bytes:
    # Lone surrogates (possible in JSON-decoded strings) survive as surrogatepass bytes;
    # json.loads decodes bytes with surrogatepass, so they read back unchanged.
    return dumps_surrogatepass(value)


def _name_bytes(name: str) -> bytes:
    return name.encode("utf-8", "surrogatepass")


def _name_text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogatepass")


def _text(raw: bytes | str) -> str:
    return raw if isinstance(raw, str) else raw.decode("utf-8", "surrogatepass")


def _pairs(reply: list[Any]) -> dict[bytes, bytes]:
    """An HGETALL reply as a dict."""
    items = iter(reply)
    return dict(zip(items, items))


def read_password_file(path: str) -> str:
    """The Redis password kept in ``path``: its contents less one trailing newline.

    :raises OSError: the file cannot be read.
    :raises ValueError: the file is empty or not UTF-8.
    """
    with open(path, "rb") as password_file:
        raw = password_file.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"passwordFile {path}: not UTF-8 text") from None
    if text.endswith("\r\n"):
        text = text[:-2]
    elif text.endswith("\n"):
        text = text[:-1]
    if not text:
        raise ValueError(f"passwordFile {path}: empty")
    return text


class RedisKeys:
    """The names of the keys of one prefix (the layout is documented in docs/loggers.md)."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self._base = _name_bytes(prefix)
        self.next_run_id = self._base + b":nextRunID"
        self.runs = self._base + b":runs"
        self.active = self._base + b":active"
        self.events = self._base + b":events"
        self._of_run: dict[int, tuple[bytes, ...]] = {}

    def of_run(self, run_id: int) -> tuple[bytes, bytes, bytes, bytes, bytes, bytes]:
        """``(run, tasks, taskStates, taskStateChanges, taskAttempts, taskExecutorStates)``
        keys of one run."""
        keys = self._of_run.get(run_id)
        if keys is None:
            run = b"%s:run:%d" % (self._base, run_id)
            keys = (run, run + b":tasks", run + b":taskStates", run + b":taskStateChanges",
                    run + b":taskAttempts", run + b":taskExecutorStates")
            self._of_run[run_id] = keys
        return keys  # type: ignore[return-value]


def _head(text: str, limit: int) -> tuple[str, int]:
    """The first ``limit`` bytes (UTF-8) of ``text``, and how many bytes were left out."""
    if len(text) * 4 <= limit:  # no character takes more than 4 bytes
        return text, 0
    data = text.encode("utf-8", "surrogatepass")
    if len(data) <= limit:
        return text, 0
    # "ignore" drops the character the cut went through.
    head = data[:limit].decode("utf-8", "ignore")
    return head, len(data) - len(head.encode("utf-8", "surrogatepass"))


class RedisLogger(MemoryStore):
    """A :class:`~daggy.loggers.interface.RunLogger` that keeps every run in Redis.

    :param reactor: the reactor to connect with and to time flushes and retries by.
    :param prefix: every key is ``{prefix}:...``; daemons with different prefixes share a
        Redis without seeing each other's runs.
    :param host: Redis host name or address (TCP), unless ``unix_socket`` is given.
    :param port: Redis TCP port.
    :param password: sent with AUTH when given.
    :param db: the database number, selected when not 0.
    :param unix_socket: a unix socket path to connect to instead of ``host:port``.
    :param flush_interval: the most seconds a write waits before it is sent to Redis (and
        so, about the most that a ``kill -9`` loses).
    :param max_stored_output_bytes: bytes kept of each attempt's ``outputLog`` and,
        separately, ``errorLog``; the rest is cut (and the attempt says so).
    :param connector: a :class:`~daggy.loggers._redis_api.RedisConnector`; by default one
        over txredisapi built from the arguments above.
    :param close_timeout: seconds ``close()`` waits for the last writes to be stored.
    :param max_batch_items: most dirty items written by one MULTI/EXEC.
    :param max_batch_bytes: about the most bytes of values written by one MULTI/EXEC.
    :param connector_options: ``connect_timeout`` and ``reply_timeout`` (seconds) of the
        default connector.
    """

    log = Logger()

    def __init__(self, reactor: Any, prefix: str = DEFAULT_PREFIX, host: str = "localhost",
                 port: int = 6379, password: str | None = None, db: int = 0,
                 unix_socket: str | None = None,
                 flush_interval: float = DEFAULT_FLUSH_INTERVAL,
                 max_stored_output_bytes: int = DEFAULT_MAX_STORED_OUTPUT_BYTES, *,
                 connector: RedisConnector | None = None,
                 close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
                 max_batch_items: int = DEFAULT_MAX_BATCH_ITEMS,
                 max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES,
                 **connector_options: Any):
        super().__init__()
        self._reactor = reactor
        if connector is None:
            from daggy.loggers._txredis import TxRedisConnector

            connector = TxRedisConnector.for_address(
                reactor, host=host, port=port, unix_socket=unix_socket, password=password,
                db=db, **connector_options)
        self._connector = connector
        self._keys = RedisKeys(prefix)
        self._flush_interval = flush_interval
        self._max_output = max_stored_output_bytes
        self._close_timeout = close_timeout
        self._max_batch_items = max_batch_items
        self._max_batch_bytes = max_batch_bytes

        # -- connection
        self._started = False
        self._closed = False
        self._connection: RedisConnection | None = None
        self._connecting: Deferred[None] | None = None
        self._retry_call: IDelayedCall | None = None
        self._retry_delay = INITIAL_RETRY_SECONDS
        self._ready_waiters: list[Deferred[None]] = []
        self._reason = f"not connected to Redis at {connector.description} yet"
        self._in_outage = False
        self._ever_ready = False
        # Summaries of the runs stored in Redis and not in the mirror; None until read.
        self._stored_runs: dict[int, dict[str, Any]] | None = None

        # -- write-behind
        self._dirty: dict[tuple[int, int, str | None], Any] = {}
        self._writes = 0  # marks made so far
        self._stored_writes = 0  # marks covered by completed flushes
        self._flush_waiters: collections.deque[tuple[int, Deferred[None]]] = (
            collections.deque())
        self._flush_call: IDelayedCall | None = None
        self._flushing = False
        # The items of the flush in progress that Redis has not confirmed yet.
        self._unconfirmed: list[tuple[tuple[int, int, str | None], Any]] = []
        self._warned_after_close = False

        # -- events (after publish_to): the ID of the last event stored in the stream
        self._events_stored_through = 0

    @property
    def prefix(self) -> str:
        return self._keys.prefix

    @property
    def where(self) -> str:
        """Where Redis is, for messages (``localhost:6379``, a socket path)."""
        return self._connector.description

    @property
    def pending_writes(self) -> int:
        """Changed records not yet confirmed stored (daggyd's metrics read it)."""
        return len(self._dirty) + len(self._unconfirmed)

    #: Told how many seconds each completed flush took; set by daggyd's metrics
    #: (daggy.metrics.DaemonMetrics.watch).
    observe_flush_seconds: Any = None

    # -- events --------------------------------------------------------------------------
    def publish_to(self, hub: EventHub) -> None:
        """Publish every event to ``hub`` and store them in the Redis stream
        ``{prefix}:events`` as well (about the newest ``hub.max_events``), so that the
        replay window survives a restart: the hub numbers on from the last stored event,
        and reads events older than its memory window from the stream.  Call it before
        :meth:`start`."""
        super().publish_to(hub)
        hub.defer_numbering()
        hub.set_archive(self)

    def read_events(self, first_id: int, last_id: int, limit: int
                    ) -> Deferred[list[tuple[int, bytes]]]:
        """The stored events with ``first_id <= id <= last_id``, oldest first, at most
        ``limit``, as ``(event ID, JSON)`` (the hub's :class:`~daggy.events.EventArchive`).
        Fails with :class:`~daggy.errors.Unavailable` while Redis cannot be reached."""
        connection = self._connection
        if connection is None:
            return defer.fail(Unavailable(f"the stored events cannot be read: {self._reason}"))

        def entries(reply: list[Any]) -> list[tuple[int, bytes]]:
            found = []
            for entry_id, fields in reply:
                data = _pairs(fields).get(b"data")
                if data is not None:
                    found.append((int(entry_id.split(b"-", 1)[0]), data))
            return found

        def failed(failure: Failure) -> None:
            failure.trap(RedisError)
            if failure.check(RedisConnectionError):
                self._connection_failed(connection, describe_error(failure.value))
            raise Unavailable(
                f"the stored events could not be read: {describe_error(failure.value)}")

        return connection.execute(
            b"XRANGE", self._keys.events, b"%d-0" % first_id, b"%d-0" % last_id,
            b"COUNT", limit).addCallbacks(entries, failed)

    def _events_waiting(self) -> bool:
        return self._events is not None and self._events.last_id > self._events_stored_through

    async def _read_last_event_id(self, connection: RedisConnection) -> None:
        """Number events on from the last stored one (on the first connection), and never
        store an event again that Redis already has (a transaction whose reply was lost)."""
        hub = self._events
        assert hub is not None
        reply = await connection.execute(b"XREVRANGE", self._keys.events, b"+", b"-",
                                         b"COUNT", 1)
        last = int(reply[0][0].split(b"-", 1)[0]) if reply else 0
        if not hub.numbering_known:
            if not hub.continue_after(last):
                self.log.error("Events were published before the last stored event ID ({last})"
                               " was read; their IDs may repeat stored ones", last=last)
        elif last > hub.last_id:
            self.log.error("The event stream {key} in Redis at {where} holds event {last}, "
                           "beyond this daemon's newest event {newest}: does another daemon "
                           "use prefix {prefix!r}?", key=_text(self._keys.events),
                           where=self.where, last=last, newest=hub.last_id,
                           prefix=self.prefix)
        self._events_stored_through = max(self._events_stored_through, last)

    async def _store_events(self, connection: RedisConnection, through: int) -> None:
        """XADD the events up to ``through`` that are not stored yet, with their own IDs,
        in bounded transactions; the last command of each trims the stream (``MAXLEN ~``)."""
        hub = self._events
        assert hub is not None
        key = self._keys.events
        lost = 0
        while self._events_stored_through < through:
            entries = hub.window_after(self._events_stored_through, self._max_batch_items)
            if not entries or entries[0][0] > through:
                lost += through - self._events_stored_through
                self._events_stored_through = through
                break
            lost += entries[0][0] - self._events_stored_through - 1
            commands: list[Command] = []
            size = 0
            last = 0
            for event_id, line in entries:
                if event_id > through or size >= self._max_batch_bytes:
                    break
                commands.append((b"XADD", key, b"%d-0" % event_id, b"data", line[:-1]))
                size += len(line)
                last = event_id
            commands[-1] = (b"XADD", key, b"MAXLEN", b"~", hub.max_events, *commands[-1][2:])
            await connection.transaction(commands)
            self._events_stored_through = max(self._events_stored_through, last)
        if lost:
            self.log.warn("{count} run events left the replay window before they were stored "
                          "in Redis; a reader replaying them from Redis gets a gap",
                          count=lost)

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        """Start connecting (and reconnecting, with backoff, until ``close()``)."""
        if self._started or self._closed:
            return
        self._started = True
        self._connect()

    def when_ready(self) -> Deferred[None]:
        """Fires (with None) once connected to Redis and the stored runs' summaries are
        read; at once if that is the case now.  While Redis is away it waits for the next
        connection.  Never fires if the logger is closed first."""
        if self._connection is not None:
            return defer.succeed(None)

        def forget(waiter: Deferred[None]) -> None:
            if waiter in self._ready_waiters:
                self._ready_waiters.remove(waiter)

        waiter: Deferred[None] = Deferred(forget)
        self._ready_waiters.append(waiter)
        return waiter

    def status(self) -> tuple[bool, str]:
        """``(True, "")`` while connected; otherwise ``(False, why)``."""
        if self._connection is not None:
            return True, ""
        return False, self._reason

    def flush(self) -> Deferred[None]:
        """Send every write made so far to Redis now.

        :returns: a Deferred firing once they are stored; failing with
            :class:`~daggy.errors.Unavailable` if Redis cannot be reached now or the
            connection is lost before they are (they stay queued and are written when
            Redis is back).
        """
        if self._stored_writes >= self._writes:
            return defer.succeed(None)
        if self._connection is None:
            return defer.fail(Unavailable(f"run records are not stored yet: {self._reason}"))
        waiter: Deferred[None] = Deferred()
        self._flush_waiters.append((self._writes, waiter))
        if not self._flushing:
            self._schedule_flush(0)
        return waiter

    def close(self) -> Deferred[None]:
        """Store what is left (waiting at most ``close_timeout`` seconds), then disconnect.

        Changes that could not be stored are counted in one warning.  The mirror stays
        readable.  Never fails.
        """
        if self._closed:
            return defer.succeed(None)
        self._closed = True
        if self._retry_call is not None:
            self._retry_call.cancel()
            self._retry_call = None
        if self._connecting is not None:
            self._connecting.cancel()
        return Deferred.fromCoroutine(self._close())

    async def _close(self) -> None:
        if self._connection is not None and self._stored_writes < self._writes:
            flushed = self.flush()
            give_up = self._reactor.callLater(self._close_timeout, flushed.cancel)
            try:
                await flushed
            except (Unavailable, CancelledError):
                pass
            finally:
                if give_up.active():
                    give_up.cancel()
        if self._events_waiting():
            assert self._events is not None
            self.log.warn("Closing the RedisLogger with {count} run events not stored in Redis "
                          "at {where}", count=self._events.last_id - self._events_stored_through,
                          where=self.where)
        unsaved = set(self._dirty).union(item for item, _ in self._unconfirmed)
        if unsaved:
            runs = len({run_id for run_id, _, _ in unsaved})
            self.log.warn(
                "Closing the RedisLogger with {count} changes to {runs} runs not stored in "
                "Redis at {where} ({reason})", count=len(unsaved), runs=runs,
                where=self.where, reason=self._reason or "no reply in time")
        self._cancel_flush_call()
        connection, self._connection = self._connection, None
        self._reason = "the run logger is closed"
        if connection is not None:
            connection.disconnect()
        self._fail_flush_waiters()

    # -- connecting ----------------------------------------------------------------------
    def _connect(self) -> None:
        self._retry_call = None
        connecting = Deferred.fromCoroutine(self._open())
        connecting.addErrback(self._connecting_failed)
        self._connecting = None if connecting.called else connecting

    def _connecting_failed(self, failure: Failure) -> None:
        if not failure.check(CancelledError):  # close() stopped it
            self.log.failure("Connecting to Redis at {where} failed unexpectedly", failure,
                             where=self.where)

    async def _open(self) -> None:
        try:
            connection = await self._connector.connect(self._on_connection_lost)
        except CancelledError:
            return
        except RedisError as error:
            self._connecting = None
            self._connect_failed(describe_error(error))
            return
        except Exception:
            self._connecting = None
            if not self._in_outage:
                self.log.failure("Connecting to Redis at {where} failed", where=self.where)
            self._connect_failed("unexpected error (see the log)")
            return
        try:
            if self._stored_runs is None:
                self._stored_runs = await self._read_stored_summaries(connection)
            if self._events is not None:
                await self._read_last_event_id(connection)
        except CancelledError:
            connection.disconnect()
            return
        except RedisError as error:
            self._connecting = None
            connection.disconnect()
            self._connect_failed(f"reading the stored runs: {describe_error(error)}")
            return
        except Exception:
            self._connecting = None
            connection.disconnect()
            if not self._in_outage:
                self.log.failure("The runs stored in Redis at {where} under prefix {prefix!r} "
                                 "could not be read", where=self.where, prefix=self.prefix)
            self._connect_failed("the stored runs could not be read (see the log)")
            return
        self._connecting = None
        if self._closed:
            connection.disconnect()
            return
        self._connected(connection)

    def _connected(self, connection: RedisConnection) -> None:
        self._connection = connection
        self._reason = ""
        if not self._ever_ready:
            self._ever_ready = True
            self.log.info("Connected to Redis at {where}: keys under prefix {prefix!r}, "
                          "{runs} runs stored before", where=self.where, prefix=self.prefix,
                          runs=len(self._stored_runs or ()))
        waiters, self._ready_waiters = self._ready_waiters, []
        for waiter in waiters:
            waiter.callback(None)
        if self._connection is not connection:
            return
        if self._dirty or self._events_waiting():
            # The outage is over once the waiting changes are stored: Redis may accept the
            # connection and still refuse the writes.
            self._schedule_flush(0)
        else:
            self._outage_over()

    def _outage_over(self) -> None:
        self._retry_delay = INITIAL_RETRY_SECONDS
        if self._in_outage:
            self._in_outage = False
            self.log.info("Redis at {where} answers again; the run records kept meanwhile are "
                          "stored", where=self.where)

    def _connect_failed(self, problem: str) -> None:
        if self._closed:
            return
        self._reason = f"cannot reach Redis at {self.where}: {problem}; retrying"
        if not self._in_outage:
            self._in_outage = True
            self.log.warn("Cannot reach Redis at {where}: {problem}. Retrying with backoff "
                          "(up to every {max_delay:g} s); runs cannot be created meanwhile",
                          where=self.where, problem=problem, max_delay=MAX_RETRY_SECONDS)
        self._schedule_reconnect()

    def _on_connection_lost(self, connection: RedisConnection, reason: Failure) -> None:
        self._connection_failed(connection, describe_error(reason.value))

    def _connection_failed(self, connection: RedisConnection, problem: str,
                           refused: bool = False) -> None:
        """The current connection cannot be used any more: reconnect."""
        if connection is not self._connection:
            return
        self._connection = None
        connection.disconnect()
        self._cancel_flush_call()
        self._reason = f"lost the connection to Redis at {self.where}: {problem}; reconnecting"
        self._fail_flush_waiters()
        if self._closed:
            return
        if not self._in_outage:
            self._in_outage = True
            log = self.log.error if refused else self.log.warn
            log("Lost the connection to Redis at {where}: {problem}. Reconnecting; changes "
                "are kept in memory and stored when Redis answers again",
                where=self.where, problem=problem)
        self._schedule_reconnect()

    def _schedule_reconnect(self) -> None:
        if self._closed or self._retry_call is not None:
            return
        delay = self._retry_delay
        self._retry_delay = min(delay * 2, MAX_RETRY_SECONDS)
        self._retry_call = self._reactor.callLater(delay, self._connect)

    async def _read_stored_summaries(self, connection: RedisConnection
                                     ) -> dict[int, dict[str, Any]]:
        raw_ids = await connection.execute("ZRANGE", self._keys.runs, 0, -1)
        run_ids = [run_id for run_id in (int(raw) for raw in raw_ids)
                   if not self.has_run(run_id)]
        summaries: dict[int, dict[str, Any]] = {}
        for start in range(0, len(run_ids), SUMMARY_BATCH):
            chunk = run_ids[start:start + SUMMARY_BATCH]
            replies = await connection.transaction(
                [(b"HMGET", self._keys.of_run(run_id)[0], *_SUMMARY_FIELDS)
                 for run_id in chunk])
            for run_id, (tag, state, start_time, last_update, counts) in zip(chunk, replies):
                if state is None:
                    continue  # listed, but its record is gone
                summaries[run_id] = {
                    "runID": run_id,
                    "tag": json.loads(tag) if tag is not None else None,
                    "state": _STATE_VALUES[_text(state)],
                    "startTime": _text(start_time),
                    "lastUpdate": _text(last_update),
                    "taskCounts": json.loads(counts),
                }
        return summaries

    # -- writes --------------------------------------------------------------------------
    def create_run(self, tag: str | None, parameters: dict[str, list[str]],
                   now: float) -> Deferred[int]:
        """Allocate a run ID in Redis (``INCR``) and record the run as QUEUED.

        :returns: Deferred[run ID]; fails with :class:`~daggy.errors.Unavailable` when
            Redis cannot be reached.
        """
        connection = self._connection
        if connection is None:
            return defer.fail(Unavailable(f"cannot create a run: {self._reason}"))

        def allocated(counter: Any) -> int:
            run_id = int(counter) - 1
            if self.has_run(run_id) or run_id in (self._stored_runs or ()):
                self.log.error("Redis at {where} allocated run ID {run_id}, which is taken: "
                               "{key} is behind the runs stored under prefix {prefix!r}",
                               where=self.where, run_id=run_id,
                               key=_text(self._keys.next_run_id), prefix=self.prefix)
                raise Unavailable(f"cannot create a run: Redis allocated run ID {run_id}, "
                                  f"which is taken (see the daemon log)")
            record = self._create_run(tag, parameters, now, run_id=run_id)
            if self._emitting:
                self._emit_run_created(record)
            self._mark((run_id, _RUN_CREATED, None))
            self._mark((run_id, _RUN_STATUS, None))
            return run_id

        def failed(failure: Failure) -> None:
            failure.trap(RedisError)
            if failure.check(RedisConnectionError):
                self._connection_failed(connection, describe_error(failure.value))
            raise Unavailable(f"cannot create a run: {describe_error(failure.value)}")

        return connection.execute("INCR", self._keys.next_run_id).addCallbacks(
            allocated, failed)

    def add_tasks(self, run_id: int, tasks: Iterable[TaskDef], now: float) -> None:
        first_index = len(self._run(run_id).tasks)
        added = self._add_tasks(run_id, tasks, now)
        if self._emitting:
            self._emit_tasks_added(run_id, added)
        for offset, (definition, _) in enumerate(added):
            self._mark((run_id, _TASK_ADDED, definition["name"]), first_index + offset)
        if added:
            self._mark((run_id, _RUN_STATUS, None))

    def record_run_state(self, run_id: int, state: State, now: float) -> None:
        super().record_run_state(run_id, state, now)
        self._mark((run_id, _RUN_STATUS, None))

    def record_task_state(self, run_id: int, task_name: str, state: State, now: float) -> None:
        super().record_task_state(run_id, task_name, state, now)
        self._mark((run_id, _TASK_STATE, task_name))
        self._mark((run_id, _RUN_STATUS, None))

    def record_attempt(self, run_id: int, task_name: str, attempt: Attempt) -> None:
        """Record an attempt, its outputs cut to ``max_stored_output_bytes`` each."""
        super().record_attempt(run_id, task_name, self._limit_outputs(attempt))
        self._mark((run_id, _TASK_ATTEMPTS, task_name))
        self._mark((run_id, _RUN_STATUS, None))

    def record_executor_state(self, run_id: int, task_name: str, state: dict[str, Any],
                              now: float) -> None:
        super().record_executor_state(run_id, task_name, state, now)
        self._mark((run_id, _TASK_EXECUTOR, task_name))
        self._mark((run_id, _RUN_STATUS, None))

    def _limit_outputs(self, attempt: Attempt) -> Attempt:
        limit = self._max_output
        output, output_cut = _head(attempt.output_log, limit)
        errors, errors_cut = _head(attempt.error_log, limit)
        if not output_cut and not errors_cut:
            return attempt
        notes = [f"{name}: {cut} more bytes were not stored (the RedisLogger keeps the "
                 f"first {limit} bytes)"
                 for name, cut in (("outputLog", output_cut), ("errorLog", errors_cut)) if cut]
        executor_log = "\n".join([attempt.executor_log, *notes] if attempt.executor_log
                                 else notes)
        return dataclasses.replace(
            attempt, output_log=output, error_log=errors, executor_log=executor_log,
            output_truncated=attempt.output_truncated or bool(output_cut),
            error_truncated=attempt.error_truncated or bool(errors_cut))

    # -- write-behind --------------------------------------------------------------------
    def _mark(self, item: tuple[int, int, str | None], value: Any = None) -> None:
        """Note that ``item`` changed; the next flush writes its current value.

        The dirty items are kept in the order of their latest change (a changed item moves
        to the end), and flushes write them in that order.  So when a flush takes several
        transactions, Redis never holds a change without the changes made before it: an
        attempt is stored no later than the task state it led to, and a run's status (with
        its listing in ``runs``/``active``) no earlier than the tasks it counts.
        """
        dirty = self._dirty
        if item in dirty:
            del dirty[item]
        dirty[item] = value
        self._writes += 1
        if self._closed:
            if not self._warned_after_close:
                self._warned_after_close = True
                self.log.warn("Run records written after the RedisLogger was closed are "
                              "kept in memory but not stored in Redis")
            return
        if self._flush_call is None and not self._flushing and self._connection is not None:
            self._flush_call = self._reactor.callLater(self._flush_interval, self._flush_due)

    def _schedule_flush(self, delay: float) -> None:
        if self._flush_call is not None:
            if delay > 0 or self._flush_call.getTime() <= self._reactor.seconds():
                return
            self._flush_call.cancel()
        self._flush_call = self._reactor.callLater(delay, self._flush_due)

    def _cancel_flush_call(self) -> None:
        if self._flush_call is not None:
            if self._flush_call.active():
                self._flush_call.cancel()
            self._flush_call = None

    def _flush_due(self) -> None:
        self._flush_call = None
        connection = self._connection
        if self._flushing or connection is None or not (self._dirty or self._events_waiting()):
            return
        self._flushing = True
        flushing = Deferred.fromCoroutine(self._flush_pass(connection))
        flushing.addErrback(lambda failure: self.log.failure(
            "Storing run records in Redis failed unexpectedly", failure))

    async def _flush_pass(self, connection: RedisConnection) -> None:
        """Write every dirty item, oldest mark first, in bounded transactions."""
        taken = self._writes
        flush_started = self._reactor.seconds()
        events_through = self._events.last_id if self._events is not None else 0
        items = list(self._dirty.items())
        self._dirty = {}
        position = batch_start = 0
        try:
            while position < len(items):
                batch_start = position
                self._unconfirmed = items[batch_start:]
                commands, position = self._batch(items, position)
                if commands:
                    await connection.transaction(commands)
            batch_start = len(items)
            self._unconfirmed = []
            if events_through > self._events_stored_through:
                await self._store_events(connection, events_through)
        except Exception as error:
            # What was not confirmed is written again, before anything marked since: the
            # commands set whole values, so repeating a transaction that did apply is
            # harmless.
            self._flushing = False
            self._unconfirmed = []
            unconfirmed = dict(items[batch_start:])
            unconfirmed.update(self._dirty)
            self._dirty = unconfirmed
            if isinstance(error, RedisError):
                self._connection_failed(connection, describe_error(error),
                                        refused=isinstance(error, RedisReplyError))
            else:
                self.log.failure("Storing run records in Redis failed", Failure(error))
                self._connection_failed(connection, "unexpected error (see the log)")
            return
        self._flushing = False
        self._unconfirmed = []
        self._stored_writes = max(self._stored_writes, taken)
        if self.observe_flush_seconds is not None:
            self.observe_flush_seconds(self._reactor.seconds() - flush_started)
        self._outage_over()
        waiters = self._flush_waiters
        while waiters and waiters[0][0] <= self._stored_writes:
            waiters.popleft()[1].callback(None)
        if self._connection is connection and self._dirty:
            self._schedule_flush(0 if waiters else self._flush_interval)

    def _batch(self, items: list[tuple[tuple[int, int, str | None], Any]],
               position: int) -> tuple[list[Command], int]:
        """The commands writing ``items[position:]`` up to the batch bounds, and where the
        next batch starts."""
        hashes: dict[bytes, list[bytes]] = {}
        other: list[Command] = []
        size = 0
        end = min(len(items), position + self._max_batch_items)
        while position < end and size < self._max_batch_bytes:
            (run_id, kind, name), value = items[position]
            position += 1
            try:
                size += self._encode_item(run_id, kind, name, value, hashes, other)
            except (TypeError, ValueError):
                self.log.failure("A record of task {task!r} of run {run_id} cannot be stored "
                                 "in Redis (not JSON); it is skipped", task=name, run_id=run_id)
        commands: list[Command] = [(b"HSET", key, *fields) for key, fields in hashes.items()]
        commands.extend(other)
        return commands, position

    def _encode_item(self, run_id: int, kind: int, name: str | None, value: Any,
                     hashes: dict[bytes, list[bytes]], other: list[Command]) -> int:
        """Add the commands writing one item's current value; returns the bytes added."""
        record = self._runs[run_id]
        keys = self._keys.of_run(run_id)
        if kind == _RUN_STATUS:
            fields = [b"state", record.state.value.encode(),
                      b"lastUpdate", iso8601(record.last_update).encode(),
                      b"taskCounts", _json(record.task_counts),
                      b"stateChanges", _json(record.state_changes)]
            hashes.setdefault(keys[0], []).extend(fields)
            # A run is listed once its status is stored, which is after its tasks: a daemon
            # killed halfway through storing a large new run leaves no half run to recover.
            other.append((b"ZADD", self._keys.runs, run_id, run_id))
            finished = record.state in FINISHED_STATES
            other.append((b"SREM" if finished else b"SADD", self._keys.active, run_id))
            return sum(len(field) for field in fields)
        if kind == _RUN_CREATED:
            fields = [b"tag", _json(record.tag), b"parameters", _json(record.parameters),
                      b"startTime", iso8601(record.start_time).encode()]
            hashes.setdefault(keys[0], []).extend(fields)
            return sum(len(field) for field in fields)
        assert name is not None
        field = _name_bytes(name)
        if kind == _TASK_ADDED or kind == _TASK_STATE:
            size = 0
            if kind == _TASK_ADDED:
                definition = _json({"index": value, "definition": record.tasks[name]})
                hashes.setdefault(keys[1], []).extend((field, definition))
                size += len(definition)
            changes = _json(record.task_state_changes[name])
            hashes.setdefault(keys[2], []).extend(
                (field, record.task_states[name].encode()))
            hashes.setdefault(keys[3], []).extend((field, changes))
            return size + len(changes) + 2 * len(field) + 10
        if kind == _TASK_ATTEMPTS:
            attempts = _json(record.task_attempts[name])
            hashes.setdefault(keys[4], []).extend((field, attempts))
            return len(attempts) + len(field)
        executor_state = _json(record.task_executor_states[name])
        hashes.setdefault(keys[5], []).extend((field, executor_state))
        return len(executor_state) + len(field)

    def _fail_flush_waiters(self) -> None:
        waiters, self._flush_waiters = self._flush_waiters, collections.deque()
        for _, waiter in waiters:
            waiter.errback(Unavailable(f"run records are not stored yet: {self._reason}"))

    # -- reads ---------------------------------------------------------------------------
    def list_runs(self, all_runs: bool = False, tag: str | None = None,
                  state: State | None = None) -> Deferred[list[dict[str, Any]]]:
        """Like :meth:`MemoryStore.list_runs`, over the mirror and the summaries of runs
        stored before; answered from memory.  Fails with
        :class:`~daggy.errors.Unavailable` until Redis has been reached once."""
        stored = self._stored_runs
        if stored is None:
            return defer.fail(Unavailable(f"the stored runs are not read yet: {self._reason}"))
        wanted_state = None if state is None else State(state).value
        summaries = []
        for record in self._runs.values():
            if self._listed(record.state.value, record.tag, all_runs, tag, wanted_state):
                summaries.append(record.summary())
        if stored:
            for summary in stored.values():
                if self._listed(summary["state"], summary["tag"], all_runs, tag, wanted_state):
                    summaries.append(dict(summary, taskCounts=dict(summary["taskCounts"])))
            summaries.sort(key=itemgetter("runID"))
        return defer.succeed(summaries)

    @staticmethod
    def _listed(run_state: str, run_tag: str | None, all_runs: bool, tag: str | None,
                state: str | None) -> bool:
        if not all_runs and run_state in _FINISHED_VALUES:
            return False
        if tag is not None and run_tag != tag:
            return False
        return state is None or run_state == state

    def get_run(self, run_id: int) -> Deferred[dict[str, Any]]:
        """Answered from the mirror, or read from Redis for a run stored before (failing
        with :class:`~daggy.errors.Unavailable` while Redis cannot be reached)."""
        if self.has_run(run_id):
            return super().get_run(run_id)
        return self._read_stored(run_id, self._read_stored_run)

    def load_run(self, run_id: int) -> Deferred[dict[str, Any]]:
        """A run stored before is read from Redis into the mirror (and written through it
        from then on); a run already in the mirror is answered from there."""
        if self.has_run(run_id):
            return super().get_run(run_id)
        return self._read_stored(run_id, self._load_stored_run)

    async def _load_stored_run(self, connection: RedisConnection, run_id: int
                               ) -> dict[str, Any]:
        record = await self._fetch_run(connection, run_id)
        if not self.has_run(run_id):
            self._adopt_run(record)
            if self._stored_runs is not None:
                self._stored_runs.pop(run_id, None)
        return await super().get_run(run_id)

    def get_run_state(self, run_id: int) -> Deferred[dict[str, Any]]:
        if self.has_run(run_id):
            return super().get_run_state(run_id)
        summary = self._stored_summary(run_id)
        if isinstance(summary, Deferred):
            return summary
        return defer.succeed({"runID": run_id, "state": summary["state"],
                              "taskCounts": dict(summary["taskCounts"])})

    def get_task(self, run_id: int, task_name: str) -> Deferred[dict[str, Any]]:
        if self.has_run(run_id):
            return super().get_task(run_id, task_name)
        return self._read_stored(run_id, self._read_stored_task, task_name)

    def get_task_state(self, run_id: int, task_name: str) -> Deferred[dict[str, Any]]:
        if self.has_run(run_id):
            return super().get_task_state(run_id, task_name)
        return self._read_stored(run_id, self._read_stored_task_state, task_name)

    def _stored_summary(self, run_id: Any) -> dict[str, Any] | Deferred[Any]:
        """The summary of a run stored before, or a failed Deferred saying why not."""
        stored = self._stored_runs
        if stored is None:
            return defer.fail(Unavailable(f"the stored runs are not read yet: {self._reason}"))
        try:
            return stored[run_id]
        except (KeyError, TypeError):
            return defer.fail(UnknownRun(run_id))

    def _read_stored(self, run_id: int, reader: Any, *args: Any) -> Deferred[Any]:
        summary = self._stored_summary(run_id)
        if isinstance(summary, Deferred):
            return summary
        connection = self._connection
        if connection is None:
            return defer.fail(Unavailable(
                f"run {run_id} is stored in Redis, which cannot be reached: {self._reason}"))

        def failed(failure: Failure) -> Failure:
            if failure.check(DaggyError):
                return failure
            if failure.check(RedisConnectionError):
                self._connection_failed(connection, describe_error(failure.value))
            if failure.check(RedisError):
                return Failure(Unavailable(
                    f"run {run_id} could not be read from Redis: {describe_error(failure.value)}"))
            self.log.failure("Reading run {run_id} from Redis failed", failure, run_id=run_id)
            return Failure(Unavailable(f"run {run_id} could not be read from Redis"))

        return Deferred.fromCoroutine(reader(connection, run_id, *args)).addErrback(failed)

    async def _read_stored_run(self, connection: RedisConnection, run_id: int
                               ) -> dict[str, Any]:
        record = await self._fetch_run(connection, run_id)
        return record.document()

    async def _read_stored_task(self, connection: RedisConnection, run_id: int,
                                task_name: str) -> dict[str, Any]:
        keys = self._keys.of_run(run_id)
        field = _name_bytes(task_name)
        added, state, changes, attempts, executor_state = await connection.transaction(
            [(b"HGET", key, field) for key in keys[1:]])
        if added is None:
            raise UnknownTask(run_id, task_name)
        return {
            "runID": run_id,
            "name": task_name,
            "definition": json.loads(added)["definition"],
            "state": _text(state) if state is not None else State.QUEUED.value,
            "attempts": json.loads(attempts) if attempts is not None else [],
            "stateChanges": json.loads(changes) if changes is not None else [],
            "executorState": (json.loads(executor_state) if executor_state is not None
                              else None),
        }

    async def _read_stored_task_state(self, connection: RedisConnection, run_id: int,
                                      task_name: str) -> dict[str, Any]:
        state = await connection.execute(b"HGET", self._keys.of_run(run_id)[2],
                                         _name_bytes(task_name))
        if state is None:
            raise UnknownTask(run_id, task_name)
        return {"runID": run_id, "name": task_name, "state": _text(state)}

    async def _fetch_run(self, connection: RedisConnection, run_id: int) -> _RunRecord:
        """Read one run's six hashes in one transaction (a consistent snapshot)."""
        replies = await connection.transaction(
            [(b"HGETALL", key) for key in self._keys.of_run(run_id)])
        return self._decode_run(run_id, replies)

    @staticmethod
    def _decode_run(run_id: int, replies: list[Any]) -> _RunRecord:
        # Decoding a run allocates a few containers per task and frees none, so the cyclic
        # garbage collector would scan the growing heap again and again (it doubles the
        # time of a 100,000-task run); none of this can make cycles.
        collecting = gc.isenabled()
        gc.disable()
        try:
            return RedisLogger._decode_run_parts(run_id, replies)
        finally:
            if collecting:
                gc.enable()

    @staticmethod
    def _decode_run_parts(run_id: int, replies: list[Any]) -> _RunRecord:
        run, added, states, changes, attempts, executor_states = (
            _pairs(reply) for reply in replies)
        if not run:
            raise UnknownRun(run_id)
        ordered = []
        for raw_name, raw in added.items():
            entry = json.loads(raw)
            ordered.append((entry["index"], _name_text(raw_name), entry["definition"]))
        ordered.sort(key=itemgetter(0))
        # Most tasks share a state history (added together, never run), so equal histories
        # are decoded once and shared, as the mirror shares them.
        shared: dict[bytes, Any] = {}

        def history(raw: bytes) -> Any:
            value = shared.get(raw)
            if value is None:
                value = shared[raw] = freeze(json.loads(raw))
            return value

        return restored_record(
            run_id=run_id,
            tag=json.loads(run[b"tag"]),
            parameters=json.loads(run[b"parameters"]),
            state=State(_text(run[b"state"])),
            start_time=parse_iso8601(_text(run[b"startTime"])),
            last_update=parse_iso8601(_text(run[b"lastUpdate"])),
            state_changes=json.loads(run[b"stateChanges"]),
            tasks=[(name, definition) for _, name, definition in ordered],
            task_states={_name_text(name): _STATE_VALUES[_text(state)]
                         for name, state in states.items()},
            task_state_changes={_name_text(name): history(raw)
                                for name, raw in changes.items()},
            task_attempts={_name_text(name): json.loads(raw) for name, raw in attempts.items()},
            task_executor_states={_name_text(name): json.loads(raw)
                                  for name, raw in executor_states.items()},
        )

    # -- recovery ------------------------------------------------------------------------
    def load_unfinished_runs(self) -> Deferred[list[dict[str, Any]]]:
        """Read every unfinished run stored in Redis into the mirror (runs already there
        are kept as they are) and answer them all as ``get_run`` documents, by run ID.

        Waits for Redis when it cannot be reached, and goes on where it stopped when the
        connection is lost meanwhile.  A run whose record cannot be decoded is logged and
        left out.
        """
        return Deferred.fromCoroutine(self._load_unfinished_runs())

    async def _load_unfinished_runs(self) -> list[dict[str, Any]]:
        while True:
            await self.when_ready()
            connection = self._connection
            assert connection is not None
            try:
                members = await connection.execute(b"SMEMBERS", self._keys.active)
                for run_id in sorted(int(member) for member in members):
                    if self.has_run(run_id):
                        continue
                    replies = await connection.transaction(
                        [(b"HGETALL", key) for key in self._keys.of_run(run_id)])
                    if self.has_run(run_id):
                        continue
                    self._adopt_stored_run(run_id, replies)
            except RedisConnectionError as error:
                self._connection_failed(connection, describe_error(error))
                continue  # wait for the next connection
            break
        unfinished = [record for record in self._runs.values()
                      if record.state not in FINISHED_STATES]
        unfinished.sort(key=lambda record: record.run_id)
        return [record.document() for record in unfinished]

    def _adopt_stored_run(self, run_id: int, replies: list[Any]) -> None:
        try:
            record = self._decode_run(run_id, replies)
        except UnknownRun:
            return  # listed as active, but its record is gone
        except Exception:
            self.log.failure("Run {run_id} stored in Redis could not be read; it is not "
                             "resumed", run_id=run_id)
            return
        if record.state in FINISHED_STATES:
            return
        self._adopt_run(record)
        if self._stored_runs is not None:
            self._stored_runs.pop(run_id, None)
