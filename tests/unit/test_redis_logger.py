"""RedisLogger on fakeredis with a fake clock: batching, retries, outages, limits, layout.

The logger runs with its real connector (txredisapi's protocol and daggy's reply parser)
over ``daggy.testing.redis.FakeRedisServer``, whose replies arrive one clock turn after the
write.  The behaviour every logger shares is in test_logger_contract.py.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.python.failure import Failure

from daggy.errors import Unavailable, UnknownRun
from daggy.loggers._redis_api import RedisProtocolError, RedisReplyError, ReplyParser
from daggy.loggers._txredis import TxRedisConnector
from daggy.loggers.redis import (
    INITIAL_RETRY_SECONDS,
    MAX_RETRY_SECONDS,
    RedisLogger,
    read_password_file,
)
from daggy.model import Attempt, State, TaskDef, iso8601
from daggy.server.api import DaggyAPI
from daggy.service.config import ConfigError, validate_config
from daggy.service.registry import LOGGERS
from daggy.service.services import LoggerService, build_service
from daggy.testing.redis import FakeRedisServer

T0 = 1_700_000_000.0


# -- helpers ----------------------------------------------------------------------------------

class RecordingConnector:
    """Wraps a connector and records every command and transaction its connections run."""

    def __init__(self, inner: TxRedisConnector):
        self._inner = inner
        self.description = inner.description
        self.transactions: list[list[tuple]] = []
        self.commands: list[tuple] = []

    def connect(self, on_lost):
        wrappers: dict[Any, RecordingConnection] = {}

        def lost(connection, reason):
            on_lost(wrappers[connection], reason)

        def wrap(connection):
            wrappers[connection] = RecordingConnection(connection, self)
            return wrappers[connection]

        return self._inner.connect(lost).addCallback(wrap)


class RecordingConnection:
    def __init__(self, inner, recorder: RecordingConnector):
        self._inner = inner
        self._recorder = recorder

    def execute(self, *command):
        self._recorder.commands.append(tuple(command))
        return self._inner.execute(*command)

    def transaction(self, commands):
        self._recorder.transactions.append([tuple(command) for command in commands])
        return self._inner.transaction(commands)

    def disconnect(self):
        self._inner.disconnect()


class Env:
    """A fake clock, a fakeredis server and the loggers a test opens on them."""

    def __init__(self):
        self.clock = Clock()
        self.server = FakeRedisServer(self.clock)
        self.loggers: list[RedisLogger] = []

    def connector(self, **options: Any) -> RecordingConnector:
        return RecordingConnector(
            TxRedisConnector(self.clock, self.server.endpoint(), "fakeredis:6379", **options))

    def logger(self, prefix: str = "daggy", ready: bool = True, connector=None,
               **options: Any) -> RedisLogger:
        connector = connector or self.connector()
        logger = RedisLogger(self.clock, prefix=prefix, connector=connector, **options)
        self.loggers.append(logger)
        logger.start()
        if ready:
            self.settle(logger.when_ready())
            assert logger.status() == (True, "")
        return logger

    def settle(self, d: Deferred | None = None, limit: int = 500) -> None:
        """Run the clock's calls, earliest first, until ``d`` fired or none are left."""
        for _ in range(limit):
            if d is not None and d.called:
                return
            calls = self.clock.getDelayedCalls()
            if not calls:
                return
            self.clock.advance(max(0.0, min(c.getTime() for c in calls) - self.clock.seconds()))

    def turn(self) -> None:
        """Deliver what is due now (replies, connections), without moving time."""
        for _ in range(50):
            if not any(c.getTime() <= self.clock.seconds() for c in self.clock.getDelayedCalls()):
                return
            self.clock.advance(0)

    def outcome(self, d: Deferred) -> Any:
        """Settle ``d`` and return its result or Failure (consumed, whichever it is)."""
        self.settle(d)
        outcomes: list[Any] = []
        d.addBoth(outcomes.append)
        assert outcomes, f"{d!r} has not fired"
        return outcomes[0]

    def result(self, d: Deferred) -> Any:
        self.settle(d)
        outcomes: list[Any] = []
        d.addBoth(outcomes.append)
        assert outcomes, f"{d!r} has not fired"
        if isinstance(outcomes[0], Failure):
            outcomes[0].raiseException()
        return outcomes[0]

    def failure(self, d: Deferred) -> Failure:
        self.settle(d)
        outcomes: list[Any] = []
        d.addBoth(outcomes.append)
        assert outcomes and isinstance(outcomes[0], Failure), outcomes
        return outcomes[0]

    def close_all(self) -> None:
        self.server.start()
        self.server.resume()
        for logger in self.loggers:
            closed = logger.close()
            self.settle(closed)
            assert closed.called


@pytest.fixture
def env():
    e = Env()
    yield e
    e.close_all()
    assert e.clock.getDelayedCalls() == []


@pytest.fixture
def log_events():
    """Every event logged by daggy's Redis code during the test."""
    events: list[dict] = []

    def observer(event):
        if event.get("log_namespace", "").startswith("daggy.loggers"):
            events.append(event)

    globalLogPublisher.addObserver(observer)
    yield events
    globalLogPublisher.removeObserver(observer)


def messages(events, level=None) -> list[str]:
    return [formatEvent(event) for event in events
            if level is None or event["log_level"] == level]


def tasks(count: int, prefix: str = "t") -> list[TaskDef]:
    return [TaskDef(name=f"{prefix}{i}", defined_name=prefix, job={"command": ["/bin/true"]})
            for i in range(count)]


def new_run(env: Env, logger: RedisLogger, task_defs=(), tag="nightly") -> int:
    run_id = env.result(logger.create_run(tag, {"P": ["1"]}, T0))
    if task_defs:
        logger.add_tasks(run_id, task_defs, T0)
    return run_id


def stored_hash(env: Env, key: str) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in env.server.client().hgetall(key).items()}


def assert_redis_matches_mirror(env: Env, logger: RedisLogger, run_id: int) -> None:
    """What a new logger reads back from Redis equals what ``logger`` answers."""
    expected = env.result(logger.get_run(run_id))
    reader = env.logger(prefix=logger.prefix)
    assert env.result(reader.get_run(run_id)) == expected


# -- batching ---------------------------------------------------------------------------------

def test_writes_within_a_flush_interval_go_out_in_one_transaction(env):
    """Writes are held for flush_interval, then all of them go in one MULTI/EXEC."""
    connector = env.connector()
    logger = env.logger(connector=connector, flush_interval=0.05)
    run_id = new_run(env, logger, tasks(3))
    env.settle()
    before = len(connector.transactions)
    for name in ("t0", "t1", "t2"):
        logger.record_task_state(run_id, name, State.RUNNING, T0 + 1)
    logger.record_run_state(run_id, State.RUNNING, T0 + 1)
    env.clock.advance(0.04)
    env.turn()
    assert len(connector.transactions) == before
    env.clock.advance(0.011)
    env.turn()
    assert len(connector.transactions) == before + 1
    assert stored_hash(env, f"daggy:run:{run_id}:taskStates") == {
        "t0": "RUNNING", "t1": "RUNNING", "t2": "RUNNING"}
    assert stored_hash(env, f"daggy:run:{run_id}")["state"] == "RUNNING"


def test_a_state_wave_of_10000_tasks_is_a_few_transactions_of_a_few_commands(env):
    """A state change of each of 10,000 tasks is written in 3 transactions (5,000 items
    each at most), each a handful of multi-field HSETs, not 10,000 round trips."""
    connector = env.connector()
    logger = env.logger(connector=connector)
    run_id = new_run(env, logger, tasks(10_000))
    env.result(logger.flush())
    before = len(connector.transactions)
    for task in tasks(10_000):
        logger.record_task_state(run_id, task.name, State.RUNNING, T0 + 1)
    env.result(logger.flush())
    wave = connector.transactions[before:]
    assert len(wave) == 3
    assert all(len(transaction) <= 4 for transaction in wave)
    states = env.server.client().hgetall(f"daggy:run:{run_id}:taskStates")
    assert len(states) == 10_000 and set(states.values()) == {b"RUNNING"}
    assert json.loads(env.server.client().hget(f"daggy:run:{run_id}", "taskCounts")) == {
        "QUEUED": 0, "RUNNING": 10_000, "RETRY": 0, "ERRORED": 0, "KILLED": 0, "COMPLETED": 0}


def test_transactions_are_bounded_in_bytes(env):
    """Large values are spread over transactions of about max_batch_bytes each."""
    connector = env.connector()
    logger = env.logger(connector=connector, max_batch_bytes=2000)
    run_id = new_run(env, logger, tasks(10))
    env.result(logger.flush())
    before = len(connector.transactions)
    for task in tasks(10):
        logger.record_attempt(run_id, task.name, Attempt(T0, T0 + 1, 0, True,
                                                         output_log="x" * 900))
    env.result(logger.flush())
    assert len(connector.transactions) - before >= 5
    assert_redis_matches_mirror(env, logger, run_id)


def test_a_large_new_run_is_listed_only_once_all_its_tasks_are_stored(env, log_events):
    """A daemon that dies while a new run's tasks are stored (several transactions) leaves
    no half run behind: the run is listed only by the transaction after its tasks."""
    logger = env.logger(max_batch_items=10)
    run_id = new_run(env, logger, tasks(50))
    env.server.fail_writes_once(after_transactions=2)  # two of the six transactions apply
    assert env.outcome(logger.flush()).check(Unavailable)
    env.server.stop()
    assert env.result(logger.close()) is None
    assert env.server.client().exists(f"daggy:run:{run_id}:tasks")
    env.server.start()
    reader = env.logger()
    assert env.result(reader.list_runs(all_runs=True)) == []
    assert env.result(reader.load_unfinished_runs()) == []


# -- retries ----------------------------------------------------------------------------------

def test_a_transaction_whose_reply_was_lost_is_written_again_without_duplicates(env, log_events):
    """When Redis applies a transaction but the connection dies before the reply, the batch
    is written again after reconnecting, and nothing is doubled."""
    logger = env.logger()
    run_id = new_run(env, logger, tasks(2))
    env.result(logger.flush())
    logger.record_task_state(run_id, "t0", State.RUNNING, T0 + 1)
    logger.record_attempt(run_id, "t0", Attempt(T0 + 1, T0 + 2, 0, True, output_log="ok"))
    logger.record_task_state(run_id, "t0", State.COMPLETED, T0 + 2)
    env.server.lose_reply_once()
    flushed = logger.flush()
    assert env.failure(flushed).check(Unavailable)
    assert logger.status()[0] is False
    applied = env.server.client().hget(f"daggy:run:{run_id}:taskStates", "t0")
    assert applied == b"COMPLETED"  # Redis did apply it; the logger cannot know
    env.settle(logger.when_ready())
    env.result(logger.flush())
    changes = json.loads(env.server.client().hget(f"daggy:run:{run_id}:taskStateChanges", "t0"))
    assert [change["state"] for change in changes] == ["QUEUED", "RUNNING", "COMPLETED"]
    attempts = json.loads(env.server.client().hget(f"daggy:run:{run_id}:taskAttempts", "t0"))
    assert len(attempts) == 1
    assert_redis_matches_mirror(env, logger, run_id)
    assert len(messages(log_events, LogLevel.warn)) == 1
    assert any("answers again" in text for text in messages(log_events, LogLevel.info))


def test_a_write_that_never_reached_redis_is_written_after_reconnecting(env):
    """A batch lost before Redis saw it is written once the connection is back."""
    logger = env.logger()
    run_id = new_run(env, logger, tasks(1))
    env.result(logger.flush())
    logger.record_run_state(run_id, State.RUNNING, T0 + 1)
    env.server.fail_writes_once()
    assert env.failure(logger.flush()).check(Unavailable)
    env.settle(logger.when_ready())
    env.result(logger.flush())
    assert stored_hash(env, f"daggy:run:{run_id}")["state"] == "RUNNING"


def test_a_write_redis_rejects_is_logged_as_an_error_and_retried_until_it_succeeds(
        env, log_events):
    """A command error (a key of the wrong type) fails the batch, is logged once as an
    error, and the batch is retried with backoff until it applies."""
    logger = env.logger()
    run_id = new_run(env, logger)
    env.result(logger.flush())
    env.server.client().set("daggy:active", "not a set")
    logger.record_run_state(run_id, State.RUNNING, T0 + 1)
    assert env.failure(logger.flush()).check(Unavailable)
    assert "WRONGTYPE" in logger.status()[1]
    for _ in range(3):  # three more tries, all rejected
        env.settle(logger.when_ready())
        assert env.outcome(logger.flush()).check(Unavailable)
    (error,) = messages(log_events, LogLevel.error)
    assert "WRONGTYPE" in error
    env.server.client().delete("daggy:active")
    env.settle(logger.when_ready())
    env.result(logger.flush())
    assert env.server.client().smembers("daggy:active") == {str(run_id).encode()}


# -- outages ----------------------------------------------------------------------------------

def test_unreachable_redis_at_start_is_retried_with_backoff_and_logged_once(env, log_events):
    """start() never fails: attempts follow a 0.1 s doubling backoff capped at 5 s, /ready's
    reason names the problem, one warning is logged, and the logger is ready once Redis
    answers."""
    env.server.stop()
    logger = env.logger(ready=False)
    ready = logger.when_ready()
    env.turn()
    delays = []
    for _ in range(9):
        (retry,) = env.clock.getDelayedCalls()
        delays.append(round(retry.getTime() - env.clock.seconds(), 3))
        env.clock.advance(retry.getTime() - env.clock.seconds())
        env.turn()
    assert delays == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0, 5.0]
    assert INITIAL_RETRY_SECONDS == 0.1 and MAX_RETRY_SECONDS == 5.0
    assert not ready.called
    ok, reason = logger.status()
    assert not ok
    assert reason == ("cannot reach Redis at fakeredis:6379: Connection refused; retrying")
    assert len(messages(log_events, LogLevel.warn)) == 1
    env.server.start()
    env.settle(ready)
    assert env.result(ready) is None
    assert logger.status() == (True, "")


def test_outage_backlog_is_one_mark_per_item_and_written_in_order(env, log_events):
    """While Redis is away writes keep updating the mirror; the backlog holds one mark per
    changed item however many writes there were, and is written oldest first on return."""
    connector = env.connector()
    logger = env.logger(connector=connector, max_batch_items=2)
    run_id = new_run(env, logger, tasks(3))
    env.result(logger.flush())
    env.server.stop()
    for round_ in range(100):
        for name in ("t2", "t0"):
            logger.record_task_state(run_id, name, State.RUNNING, T0 + round_)
            logger.record_task_state(run_id, name, State.QUEUED, T0 + round_)
    logger.record_attempt(run_id, "t1", Attempt(T0, T0 + 1, 1, False))
    assert len(logger._dirty) == 4  # t2 state, t0 state, t1 attempts, run status
    assert env.result(logger.get_task_state(run_id, "t2"))["state"] == "QUEUED"
    before = len(connector.transactions)
    env.server.start()
    env.settle(logger.when_ready())
    env.result(logger.flush())
    written = [[command[1].decode().rsplit(":", 1)[-1] for command in transaction
                if command[0] == b"HSET"]
               for transaction in connector.transactions[before:]]
    # In the order of each item's latest change, two items per transaction.
    assert written == [["taskStates", "taskStateChanges"], ["taskAttempts", str(run_id)]]
    assert_redis_matches_mirror(env, logger, run_id)
    assert len(messages(log_events, LogLevel.warn)) == 1


def test_during_an_outage_what_needs_redis_is_unavailable_and_the_rest_answers(env):
    """Without Redis: create_run and flush fail with Unavailable (503), reading a run stored
    before is 503, while runs in memory, listings, run states and unknown IDs answer."""
    earlier = env.logger()
    old = new_run(env, earlier, tasks(1))
    earlier.record_run_state(old, State.COMPLETED, T0 + 1)
    env.result(earlier.close())
    logger = env.logger()
    live = new_run(env, logger, tasks(1))
    env.server.stop()
    assert env.failure(logger.create_run(None, {}, T0)).check(Unavailable)
    assert env.failure(logger.flush()).value.status == 503
    assert env.failure(logger.get_run(old)).check(Unavailable)
    assert env.failure(logger.get_task(old, "t0")).check(Unavailable)
    assert env.result(logger.get_run_state(old))["state"] == "COMPLETED"
    assert [run["runID"] for run in env.result(logger.list_runs(all_runs=True))] == [old, live]
    assert env.result(logger.get_run(live))["runID"] == live
    assert env.failure(logger.get_run(99)).check(UnknownRun)


def test_when_ready_waits_for_the_next_connection_during_an_outage(env):
    """when_ready() fires at once while connected, waits during an outage, and fires when
    the connection is back."""
    logger = env.logger()
    assert logger.when_ready().called
    env.server.stop()
    waiting = logger.when_ready()
    env.clock.advance(1)
    assert not waiting.called
    env.server.start()
    env.settle(waiting)
    assert env.result(waiting) is None


def test_a_redis_that_stops_answering_times_out_and_is_reconnected(env, log_events):
    """A request without a reply within the reply timeout drops the connection; the writes
    are stored after reconnecting."""
    logger = env.logger(connector=env.connector(reply_timeout=2.0))
    run_id = new_run(env, logger)
    env.result(logger.flush())
    env.server.stall()
    logger.record_run_state(run_id, State.RUNNING, T0 + 1)
    flushed = logger.flush()
    env.clock.advance(1.9)
    assert not flushed.called
    env.clock.advance(0.1)
    assert env.failure(flushed).check(Unavailable)
    assert "no reply within 2 s" in logger.status()[1]
    env.server.resume()
    env.settle(logger.when_ready())
    env.result(logger.flush())
    assert stored_hash(env, f"daggy:run:{run_id}")["state"] == "RUNNING"


# -- output limit -----------------------------------------------------------------------------

def test_outputs_above_the_limit_keep_their_head_and_say_how_much_was_cut(env):
    """Each log is cut to max_stored_output_bytes (never inside a character), flagged as
    truncated, and executorLog says how many bytes were not stored; memory and Redis agree."""
    logger = env.logger(max_stored_output_bytes=10)
    run_id = new_run(env, logger, tasks(1))
    logger.record_attempt(run_id, "t0", Attempt(T0, T0 + 1, 0, True, output_log="0123456789AB",
                                                error_log="ééééééé", executor_log="exited"))
    logger.record_attempt(run_id, "t0", Attempt(T0, T0 + 1, 0, True, output_log="short"))
    first, second = env.result(logger.get_task(run_id, "t0"))["attempts"]
    assert first["outputLog"] == "0123456789" and first["outputTruncated"] is True
    assert first["errorLog"] == "ééééé" and first["errorTruncated"] is True
    assert first["executorLog"] == (
        "exited\n"
        "outputLog: 2 more bytes were not stored (the RedisLogger keeps the first 10 bytes)\n"
        "errorLog: 4 more bytes were not stored (the RedisLogger keeps the first 10 bytes)")
    assert second["outputLog"] == "short" and second["outputTruncated"] is False
    env.result(logger.flush())
    assert_redis_matches_mirror(env, logger, run_id)


# -- key layout -------------------------------------------------------------------------------

def test_the_key_layout_is_as_documented(env):
    """Every key is under the prefix, with the documented type and encoding."""
    logger = env.logger(prefix="lay")
    run_id = new_run(env, logger, [TaskDef("b", "b", {"command": ["x"]}),
                                   TaskDef("a", "a", {"command": ["y"]}, parents=["b"])],
                     tag="nightly")
    logger.record_task_state(run_id, "b", State.RUNNING, T0 + 1)
    logger.record_executor_state(run_id, "b", {"pid": 7}, T0 + 1)
    logger.record_attempt(run_id, "b", Attempt(T0 + 1, T0 + 2, 0, True))
    env.result(logger.flush())
    client = env.server.client()
    types = {key.decode(): client.type(key).decode() for key in client.keys("*")}
    assert types == {
        "lay:nextRunID": "string", "lay:runs": "zset", "lay:active": "set",
        "lay:run:0": "hash", "lay:run:0:tasks": "hash", "lay:run:0:taskStates": "hash",
        "lay:run:0:taskStateChanges": "hash", "lay:run:0:taskAttempts": "hash",
        "lay:run:0:taskExecutorStates": "hash"}
    assert client.get("lay:nextRunID") == b"1"
    assert client.zrange("lay:runs", 0, -1, withscores=True) == [(b"0", 0.0)]
    assert client.smembers("lay:active") == {b"0"}
    run = stored_hash(env, "lay:run:0")
    assert set(run) == {"tag", "parameters", "state", "startTime", "lastUpdate", "taskCounts",
                        "stateChanges"}
    assert json.loads(run["tag"]) == "nightly" and json.loads(run["parameters"]) == {"P": ["1"]}
    assert run["state"] == "QUEUED" and run["startTime"] == iso8601(T0)
    assert run["lastUpdate"] == iso8601(T0 + 2)
    assert json.loads(run["taskCounts"])["RUNNING"] == 1
    assert json.loads(run["stateChanges"]) == [{"time": iso8601(T0), "state": "QUEUED"}]
    added = {name: json.loads(value) for name, value in stored_hash(env, "lay:run:0:tasks").items()}
    assert added == {"b": {"index": 0, "definition": TaskDef("b", "b", {"command": ["x"]}).to_json()},
                     "a": {"index": 1, "definition": TaskDef("a", "a", {"command": ["y"]},
                                                             parents=["b"]).to_json()}}
    assert stored_hash(env, "lay:run:0:taskStates") == {"a": "QUEUED", "b": "RUNNING"}
    assert json.loads(stored_hash(env, "lay:run:0:taskStateChanges")["b"])[-1]["state"] == "RUNNING"
    assert json.loads(stored_hash(env, "lay:run:0:taskAttempts")["b"])[0]["rc"] == 0
    assert json.loads(stored_hash(env, "lay:run:0:taskExecutorStates")["b"]) == {"pid": 7}
    logger.record_run_state(run_id, State.COMPLETED, T0 + 3)
    env.result(logger.flush())
    assert client.smembers("lay:active") == set()


def test_two_prefixes_on_one_redis_stay_apart(env):
    """Loggers with different prefixes number their runs separately and never see each
    other's runs."""
    first = env.logger(prefix="one")
    second = env.logger(prefix="two")
    assert new_run(env, first, tasks(1), tag="a") == 0
    assert new_run(env, first, tasks(1), tag="b") == 1
    assert new_run(env, second, tasks(2), tag="c") == 0
    env.result(first.flush())
    env.result(second.flush())
    reopened = env.logger(prefix="two")
    assert [(r["runID"], r["tag"]) for r in env.result(reopened.list_runs(all_runs=True))] == [
        (0, "c")]
    assert sorted(env.result(reopened.get_run(0))["tasks"]) == ["t0", "t1"]
    assert all(key.startswith((b"one:", b"two:")) for key in env.server.client().keys("*"))


# -- runs stored before -----------------------------------------------------------------------

def test_finished_runs_stored_before_are_read_from_redis_when_asked(env):
    """A finished run of an earlier daemon is listed from summaries read at connect, and its
    full record is read from Redis (one transaction) when asked for, not kept in memory."""
    earlier = env.logger()
    run_id = new_run(env, earlier, tasks(3), tag="old")
    earlier.record_run_state(run_id, State.KILLED, T0 + 5)
    expected = env.result(earlier.get_run(run_id))
    env.result(earlier.close())
    connector = env.connector()
    logger = env.logger(connector=connector)
    assert env.result(logger.list_runs()) == []
    assert env.result(logger.list_runs(all_runs=True, state=State.KILLED))[0]["tag"] == "old"
    before = len(connector.transactions)
    assert env.result(logger.get_run(run_id)) == expected
    assert len(connector.transactions) == before + 1
    assert not logger.has_run(run_id)
    assert env.result(logger.get_task_state(run_id, "t1"))["state"] == "QUEUED"
    assert env.failure(logger.get_task(run_id, "nope")).value.status == 404


# -- recovery ---------------------------------------------------------------------------------

def test_loading_an_unfinished_run_reads_it_in_one_transaction(env):
    """load_unfinished_runs reads each run with one transaction of six HGETALLs, whatever
    its size, and answers it exactly as the old logger did."""
    earlier = env.logger()
    run_id = new_run(env, earlier, tasks(2000))
    earlier.record_run_state(run_id, State.RUNNING, T0 + 1)
    for task in tasks(1000):
        earlier.record_task_state(run_id, task.name, State.COMPLETED, T0 + 2)
    expected = env.result(earlier.get_run(run_id))
    env.result(earlier.close())
    connector = env.connector()
    logger = env.logger(connector=connector)
    before_tx, before_cmd = len(connector.transactions), len(connector.commands)
    (loaded,) = env.result(logger.load_unfinished_runs())
    assert len(connector.transactions) - before_tx == 1
    assert [command[0] for command in connector.transactions[-1]] == [b"HGETALL"] * 6
    assert len(connector.commands) - before_cmd == 1  # SMEMBERS
    assert loaded == expected
    assert list(loaded["tasks"]) == [task.name for task in tasks(2000)]


def test_loading_goes_on_after_a_lost_connection(env):
    """A connection lost while unfinished runs are loaded delays the load, it does not fail."""
    earlier = env.logger()
    for _ in range(3):
        new_run(env, earlier, tasks(2))
    env.result(earlier.close())
    logger = env.logger()
    env.server.lose_reply_once()
    loading = logger.load_unfinished_runs()
    env.turn()
    assert not loading.called
    assert [doc["runID"] for doc in env.result(loading)] == [0, 1, 2]


def test_a_run_that_cannot_be_decoded_is_logged_and_not_loaded(env, no_logged_errors):
    """An unreadable stored run is left out of load_unfinished_runs (and logged); the
    others load."""
    earlier = env.logger()
    new_run(env, earlier, tasks(1))
    new_run(env, earlier, tasks(1))
    env.result(earlier.close())
    env.server.client().hset("daggy:run:0", "stateChanges", "{not json")
    logger = env.logger()
    assert [doc["runID"] for doc in env.result(logger.load_unfinished_runs())] == [1]
    assert len(no_logged_errors) == 1
    assert "Run 0 stored in Redis could not be read" in formatEvent(no_logged_errors[0])
    no_logged_errors.clear()


# -- connection options -----------------------------------------------------------------------

def test_password_and_database_are_sent_on_connect(env):
    """AUTH with the password and SELECT of the database precede every other command."""
    env.server.require_password("s3cret")
    logger = env.logger(connector=env.connector(password="s3cret", db=3))
    run_id = new_run(env, logger)
    env.result(logger.flush())
    assert env.server.client(db=3).exists(f"daggy:run:{run_id}")
    assert not env.server.client(db=0).exists(f"daggy:run:{run_id}")


def test_a_wrong_password_keeps_the_logger_unready_with_the_reason(env, log_events):
    """A rejected password is retried with backoff and /ready's reason says why."""
    env.server.require_password("s3cret")
    logger = env.logger(ready=False, connector=env.connector(password="wrong"))
    env.clock.advance(1)
    env.turn()
    ready, reason = logger.status()
    assert not ready
    assert reason.startswith("cannot reach Redis at fakeredis:6379: WRONGPASS")
    assert len(messages(log_events, LogLevel.warn)) == 1


# -- close ------------------------------------------------------------------------------------

def test_close_stores_pending_writes_then_disconnects(env):
    """close() writes what is pending before disconnecting; the mirror stays readable."""
    logger = env.logger()
    run_id = new_run(env, logger, tasks(1))
    logger.record_run_state(run_id, State.RUNNING, T0 + 1)
    assert env.result(logger.close()) is None
    assert stored_hash(env, f"daggy:run:{run_id}")["state"] == "RUNNING"
    assert env.server.connections == []
    assert logger.status() == (False, "the run logger is closed")
    assert env.result(logger.get_run_state(run_id))["state"] == "RUNNING"


def test_close_without_redis_reports_what_was_not_stored(env, log_events):
    """Closing during an outage logs how many changes were not stored and leaves no timer."""
    logger = env.logger()
    run_id = new_run(env, logger, tasks(2))
    env.result(logger.flush())
    env.server.stop()
    logger.record_task_state(run_id, "t0", State.RUNNING, T0 + 1)
    assert env.result(logger.close()) is None
    assert env.clock.getDelayedCalls() == []
    assert any("2 changes to 1 runs not stored" in text
               for text in messages(log_events, LogLevel.warn))


def test_close_while_redis_hangs_gives_up_after_the_close_timeout(env, log_events):
    """close() waits at most close_timeout for the last writes."""
    logger = env.logger(close_timeout=3.0)
    run_id = new_run(env, logger)
    env.result(logger.flush())
    env.server.stall()
    logger.record_run_state(run_id, State.RUNNING, T0 + 1)
    closing = logger.close()
    env.clock.advance(2.9)
    env.turn()
    assert not closing.called
    env.clock.advance(0.1)
    env.turn()
    assert env.result(closing) is None
    assert any("not stored" in text for text in messages(log_events, LogLevel.warn))


def test_close_before_redis_answered_stops_connecting(env):
    """Closing a logger still trying to connect cancels the attempt; when_ready never fires."""
    env.server.stop()
    logger = env.logger(ready=False)
    ready = logger.when_ready()
    env.clock.advance(0.35)
    env.result(logger.close())
    assert env.clock.getDelayedCalls() == []
    env.server.start()
    env.settle()
    assert not ready.called


# -- /ready -----------------------------------------------------------------------------------

def test_ready_answers_503_with_the_reason_until_redis_answers(env):
    """GET /ready is 503 {"msg", "error": reason} while Redis is away, 200 once connected."""
    env.server.stop()
    logger = env.logger(ready=False)
    env.turn()
    client = StubTreq(DaggyAPI(object(), logger, env.clock).resource())

    def ready() -> tuple[int, Any]:
        d = client.get("http://daggy.test/ready")
        client.flush()
        response = env.result(d)
        body = client.json_content(response)
        client.flush()
        return response.code, env.result(body)

    assert ready() == (503, {
        "msg": "daggyd is not ready",
        "error": "cannot reach Redis at fakeredis:6379: Connection refused; retrying"})
    env.server.start()
    env.settle(logger.when_ready())
    assert ready() == (200, {"msg": "Ya like DAGs?"})


# -- reply parser -----------------------------------------------------------------------------

def test_reply_parser_reads_replies_split_at_any_byte():
    """Replies fed in pieces of any size come out whole and in order."""
    data = (b"+OK\r\n:42\r\n$5\r\nhe\r\nl\r\n$-1\r\n*-1\r\n*0\r\n"
            b"*3\r\n$1\r\na\r\n*2\r\n:1\r\n-WRONGTYPE bad\r\n$0\r\n\r\n-ERR boom\r\n")
    for size in (1, 2, 3, 7, len(data)):
        parser = ReplyParser()
        replies: list[Any] = []
        for start in range(0, len(data), size):
            replies.extend(parser.feed(data[start:start + size]))
        assert replies[:6] == ["OK", 42, b"he\r\nl", None, None, []]
        nested = replies[6]
        assert nested[0] == b"a" and nested[2] == b""
        assert nested[1][0] == 1 and isinstance(nested[1][1], RedisReplyError)
        assert str(nested[1][1]) == "WRONGTYPE bad"
        assert isinstance(replies[7], RedisReplyError) and str(replies[7]) == "ERR boom"
        assert len(replies) == 8


def test_reply_parser_reads_a_large_reply_in_linear_time():
    """A reply with 200,000 elements arriving in 64 KiB chunks is parsed in one pass."""
    elements = [b"field%d" % i for i in range(200_000)]
    data = b"*%d\r\n" % len(elements) + b"".join(b"$%d\r\n%s\r\n" % (len(e), e)
                                                 for e in elements)
    parser = ReplyParser()
    replies: list[Any] = []
    for start in range(0, len(data), 65536):
        replies.extend(parser.feed(data[start:start + 65536]))
    assert replies == [elements]


def test_reply_parser_rejects_what_is_not_resp():
    """Bytes that are not RESP2 raise RedisProtocolError."""
    with pytest.raises(RedisProtocolError):
        ReplyParser().feed(b"HTTP/1.1 400 Bad Request\r\n")
    with pytest.raises(RedisProtocolError):
        ReplyParser().feed(b"$abc\r\n")


def test_a_connection_sending_garbage_is_dropped_and_reconnected(env):
    """A protocol error drops the connection like any other loss."""
    logger = env.logger()
    (transport,) = env.server.connections
    transport._protocol.dataReceived(b"?what\r\n")
    assert logger.status()[0] is False
    env.settle(logger.when_ready())
    assert logger.status() == (True, "")


# -- config and wiring ------------------------------------------------------------------------

def test_redis_logger_config_has_the_documented_defaults_and_checks():
    """RedisLogger's config keys default as documented and reject bad values by key."""
    config = validate_config({"logger": {"name": "RedisLogger"}})
    assert dict(config.logger.config) == {
        "prefix": "daggy", "host": "localhost", "port": 6379, "password": None,
        "passwordFile": None, "db": 0, "unixSocket": None, "flushIntervalSeconds": 0.05,
        "maxStoredOutputBytes": 1048576}
    with pytest.raises(ConfigError) as caught:
        validate_config({"logger": {"name": "RedisLogger", "config": {
            "prefix": "", "port": 0, "db": -1, "password": 5, "flushIntervalSeconds": 0,
            "maxStoredOutputBytes": 0, "unixSocket": "", "hots": "x"}}})
    assert caught.value.problems == [
        'logger.config.prefix: must be a non-empty string (got "")',
        "logger.config.port: must be an integer from 1 to 65535 (got 0)",
        "logger.config.db: must be an integer >= 0 (got -1)",
        "logger.config.password: must be a non-empty string or null (got 5)",
        "logger.config.flushIntervalSeconds: must be a number > 0 and <= 60 (got 0)",
        "logger.config.maxStoredOutputBytes: must be an integer from 1 to 67108864 (got 0)",
        'logger.config.unixSocket: must be a non-empty string or null (got "")',
        "logger.config.hots: unknown key for RedisLogger (expected one of: db, "
        "flushIntervalSeconds, host, maxStoredOutputBytes, password, passwordFile, port, "
        "prefix, unixSocket)"]


def test_password_file_is_read_without_its_trailing_newline(tmp_path):
    """passwordFile holds the password; one trailing newline is not part of it."""
    path = tmp_path / "redis.pass"
    path.write_text("p@ss word\n")
    assert read_password_file(str(path)) == "p@ss word"
    path.write_text("\n")
    with pytest.raises(ValueError, match="empty"):
        read_password_file(str(path))


class Reactor(MemoryReactorClock):
    def suggestThreadPoolSize(self, size: int) -> None:
        pass


@pytest.mark.parametrize("logger_config, problem", [
    ({"password": "x", "passwordFile": "/dev/null"},
     "password and passwordFile are both given; give one of them"),
    ({"passwordFile": "/nonexistent/redis.pass"}, "No such file or directory"),
])
def test_bad_password_settings_are_config_errors(logger_config, problem):
    """Contradicting or unreadable password settings stop the daemon with a config error."""
    config = validate_config({"logger": {"name": "RedisLogger", "config": logger_config}})
    with pytest.raises(ConfigError) as caught:
        build_service(config, Reactor())
    assert "logger: cannot start RedisLogger: " in str(caught.value)
    assert problem in str(caught.value)


@pytest.mark.parametrize("logger_config, kind, target", [
    ({"host": "127.0.0.1", "port": 7000}, "tcp", ("127.0.0.1", 7000)),
    ({"unixSocket": "/run/redis/redis.sock"}, "unix", "/run/redis/redis.sock"),
])
def test_the_daemon_starts_connecting_to_the_configured_redis(logger_config, kind, target):
    """Starting the service tree starts the RedisLogger connecting (TCP or unix socket)
    through the daemon's reactor; the daemon does not wait for it."""
    reactor = Reactor()
    config = validate_config({"logger": {"name": "RedisLogger", "config": logger_config}})
    daemon = build_service(config, reactor)
    logger = daemon.getServiceNamed("logger").logger
    assert isinstance(logger, RedisLogger)
    daemon.getServiceNamed("logger").startService()
    reactor.advance(0)
    if kind == "tcp":
        assert [client[:2] for client in reactor.tcpClients] == [target]
    else:
        assert [client[0] for client in reactor.unixClients] == [target]
    assert logger.status()[0] is False
    closed = logger.close()
    assert closed.called


def test_logger_service_starts_the_logger_when_the_daemon_starts():
    """LoggerService.startService calls the logger's start() once."""
    calls = []

    class Logger:
        def start(self):
            calls.append("start")

    service = LoggerService(Logger())
    service.startService()
    assert calls == ["start"] and service.running


def test_the_registry_builds_a_redis_logger_from_its_config():
    """The RedisLogger entry builds a RedisLogger with the configured prefix."""
    component = LOGGERS["RedisLogger"]
    logger = component.build(Reactor(), dict(component.defaults(), prefix="p1"))
    assert isinstance(logger, RedisLogger)
    assert logger.prefix == "p1" and logger.where == "localhost:6379"


# -- events: the replay window in a Redis stream -----------------------------------------------

from daggy.events import EventHub  # noqa: E402


class EventSink:
    def __init__(self):
        self.written: list[bytes] = []

    def write(self, data):
        self.written.append(data)

    def finish(self):
        pass

    def abort(self):
        pass

    def ids(self) -> list[int]:
        """The IDs of the event messages written so far; gaps as ``("gap", from, oldest)``."""
        found: list[Any] = []
        for block in b"".join(self.written).decode().split("\n\n")[:-1]:
            if block.startswith(":"):
                continue  # a keep-alive
            fields = dict(line.split(": ", 1) for line in block.split("\n"))
            if fields.get("event") == "gap":
                gap = json.loads(fields["data"])
                found.append(("gap", gap["from"], gap["oldest"]))
            else:
                found.append(int(fields["id"]))
        return found


def publishing_logger(env: Env, hub: EventHub | None = None, prefix: str = "daggy",
                      **options: Any) -> tuple[RedisLogger, EventHub]:
    """A started, ready RedisLogger publishing to ``hub`` (a new one by default)."""
    hub = hub or EventHub(env.clock, max_events=options.pop("max_events", 100_000))
    logger = RedisLogger(env.clock, prefix=prefix, connector=options.pop("connector", None)
                         or env.connector(), **options)
    env.loggers.append(logger)
    logger.publish_to(hub)
    logger.start()
    env.settle(logger.when_ready())
    return logger, hub


def stored_events(env: Env, key: str = "daggy:events") -> list[tuple[int, dict]]:
    return [(int(entry_id.split(b"-")[0]), json.loads(fields[b"data"]))
            for entry_id, fields in env.server.client().xrange(key)]


def test_events_are_stored_in_a_stream_under_their_own_ids(env):
    """Every published event is XADDed to {prefix}:events with ID '<event id>-0' and its JSON
    (what the stream and the OStreamLogger carry) as the 'data' field."""
    connector = env.connector()
    logger, hub = publishing_logger(env, connector=connector)
    run_id = new_run(env, logger, tasks(2))
    logger.record_task_state(run_id, "t0", State.RUNNING, T0 + 1)
    env.result(logger.flush())
    published = [(event_id, json.loads(line)) for event_id, line in hub.window_after(0, 100)]
    assert [event["event"] for _, event in published] == [
        "runCreated", "taskAdded", "taskAdded", "taskState"]
    assert stored_events(env) == published
    xadds = [command for transaction in connector.transactions for command in transaction
             if command[0] == b"XADD"]
    assert [command[2:4] for command in xadds[:-1]] == [(b"1-0", b"data"), (b"2-0", b"data"),
                                                       (b"3-0", b"data")]
    # The last XADD of a transaction trims the stream to about the window's size.
    assert xadds[-1][2:5] == (b"MAXLEN", b"~", 100_000)


def test_the_stream_is_trimmed_to_about_the_window(env):
    """With MAXLEN ~ the stream keeps about max_events events, not every event ever."""
    logger, hub = publishing_logger(env, max_events=100)
    run_id = new_run(env, logger)
    for batch in range(20):
        logger.add_tasks(run_id, tasks(50, prefix=f"b{batch}_"), T0)
        env.result(logger.flush())
    assert hub.last_id == 1001
    assert 100 <= env.server.client().xlen("daggy:events") < 1000
    assert stored_events(env)[-1][0] == hub.last_id


def test_a_restarted_logger_numbers_on_and_replays_from_redis(env):
    """After a restart the hub numbers events after the last stored one, and a reader that
    reconnects with a Last-Event-ID from before the restart gets the stored events after it,
    then the new ones: no gap, no duplicate."""
    logger, hub = publishing_logger(env)
    run_id = new_run(env, logger, tasks(3))
    logger.record_run_state(run_id, State.RUNNING, T0 + 1)
    env.result(logger.flush())
    last_before = hub.last_id
    env.settle(logger.close())

    restarted, new_hub = publishing_logger(env)
    assert new_hub.last_id == last_before and new_hub.oldest_id == last_before + 1
    sink = EventSink()
    subscription = new_hub.subscribe(sink, last_event_id=2)
    env.settle(restarted.load_run(run_id))
    restarted.record_run_state(run_id, State.COMPLETED, T0 + 2)
    env.turn()
    assert sink.ids() == list(range(3, last_before + 2))
    subscription.close()
    env.result(restarted.flush())
    assert [event_id for event_id, _ in stored_events(env)] == list(range(1, last_before + 2))


def test_a_filtered_reader_replays_only_its_runs_stored_events(env):
    """The run filter applies to the events read back from Redis too."""
    logger, hub = publishing_logger(env)
    first = new_run(env, logger, tasks(2))
    second = new_run(env, logger, tasks(2))
    env.result(logger.flush())
    env.settle(logger.close())
    restarted, new_hub = publishing_logger(env)
    sink = EventSink()
    new_hub.subscribe(sink, run_id=second, last_event_id=0)
    env.turn()
    new_hub.close()
    expected = [event_id for event_id, event in stored_events(env) if event["runID"] == second]
    assert sink.ids() == expected and first != second


def test_an_event_whose_reply_was_lost_is_not_stored_twice(env, log_events):
    """When Redis applied a transaction of events but the reply was lost, the logger reads
    the stream's last ID on reconnecting and goes on after it: no XADD is refused, nothing
    is stored twice, and no error is logged."""
    logger, hub = publishing_logger(env)
    run_id = new_run(env, logger, tasks(2))
    env.result(logger.flush())
    logger.record_task_state(run_id, "t0", State.RUNNING, T0 + 1)
    env.server.lose_reply_once()
    assert env.failure(logger.flush()).check(Unavailable)
    env.settle(logger.when_ready())
    logger.record_task_state(run_id, "t0", State.COMPLETED, T0 + 2)
    env.result(logger.flush())
    assert [event_id for event_id, _ in stored_events(env)] == list(range(1, hub.last_id + 1))
    assert messages(log_events, LogLevel.error) == []


def test_events_published_while_redis_is_away_are_stored_when_it_is_back(env):
    """An outage delays the events' storing; they are all stored, in order, afterwards."""
    logger, hub = publishing_logger(env)
    run_id = new_run(env, logger, tasks(1))
    env.result(logger.flush())
    env.server.stop()
    env.settle()
    logger.record_task_state(run_id, "t0", State.RUNNING, T0 + 1)
    logger.record_task_state(run_id, "t0", State.COMPLETED, T0 + 2)
    env.server.start()
    env.settle(logger.when_ready())
    env.result(logger.flush())
    assert [event_id for event_id, _ in stored_events(env)] == list(range(1, hub.last_id + 1))


def test_no_reader_is_accepted_before_the_stored_numbering_is_known(env):
    """Until the first connection says where the numbering goes on, subscribing is refused
    (the IDs a reader sends could not be placed)."""
    env.server.stop()
    hub = EventHub(env.clock)
    logger = RedisLogger(env.clock, connector=env.connector())
    env.loggers.append(logger)
    logger.publish_to(hub)
    logger.start()
    with pytest.raises(Unavailable):
        hub.subscribe(EventSink())
    env.server.start()
    env.settle(logger.when_ready())
    hub.subscribe(EventSink()).close()


def test_reading_stored_events_while_redis_is_away_gives_a_gap(env):
    """A replay that needs Redis while it cannot be reached gets a gap to what memory
    holds (and a warning), not an error."""
    logger, hub = publishing_logger(env)
    new_run(env, logger, tasks(3))
    env.result(logger.flush())
    env.settle(logger.close())
    restarted, new_hub = publishing_logger(env)
    env.server.stop()
    env.settle()
    sink = EventSink()
    new_hub.subscribe(sink, last_event_id=1)
    env.turn()
    new_hub.close()
    assert sink.ids() == [("gap", 1, new_hub.oldest_id)]
