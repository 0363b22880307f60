"""OStreamLogger's event stream: line format, event sequence, buffering, stdout, failures.

The RunLogger behaviour it shares with MemoryStore is covered by test_logger_contract.py.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher

from daggy.loggers import ostream
from daggy.loggers.ostream import OStreamLogger
from daggy.model import Attempt, State, TaskDef, iso8601

T0 = 1_700_000_000.0


def fired(d) -> Any:
    outcomes: list[Any] = []
    d.addBoth(outcomes.append)
    assert outcomes, f"{d!r} has not fired"
    return outcomes[0]


def task(name: str, **overrides: Any) -> TaskDef:
    return TaskDef(name=name, defined_name=name, job={"command": ["/bin/echo", name]},
                   **overrides)


def read_events(path) -> list[dict[str, Any]]:
    with open(path, "rb") as stream:
        return [json.loads(line) for line in stream.read().splitlines()]


@pytest.fixture
def clock():
    clock = Clock()
    yield clock
    assert clock.getDelayedCalls() == []


@pytest.fixture
def events_path(tmp_path):
    return tmp_path / "events.jsonl"


@pytest.fixture
def logger(clock, events_path):
    logger = OStreamLogger(clock, str(events_path))
    yield logger
    assert fired(logger.close()) is None


@pytest.fixture
def log_events():
    """Every twisted.logger event emitted by daggy.loggers.ostream during the test."""
    events: list[dict[str, Any]] = []

    def observer(event):
        if event.get("log_namespace", "").startswith("daggy.loggers.ostream"):
            events.append(event)

    globalLogPublisher.addObserver(observer)
    yield events
    globalLogPublisher.removeObserver(observer)


@pytest.fixture
def pipe():
    """A pipe (read end non-blocking) whose ends are closed after the test if still open."""
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    yield read_fd, write_fd
    for fd in (read_fd, write_fd):
        with contextlib.suppress(OSError):
            os.close(fd)


@pytest.fixture
def fail_if_blocked():
    """Turn a write that blocks the test thread into a test failure instead of a hang."""

    def interrupt(signum, frame):
        raise TimeoutError("a write blocked the reactor thread")

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, 10)
    yield
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, previous)


def drain(read_fd: int) -> bytes:
    chunks = []
    while True:
        try:
            chunk = os.read(read_fd, 1 << 16)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def small_pipe(write_fd: int) -> int:
    """Shrink the pipe to one page so a few events fill it; skip where that is impossible."""
    if not hasattr(fcntl, "F_SETPIPE_SZ"):
        pytest.skip("needs Linux F_SETPIPE_SZ")
    return fcntl.fcntl(write_fd, fcntl.F_SETPIPE_SZ, 4096)


def play_small_run(logger: OStreamLogger) -> int:
    run_id = fired(logger.create_run("nightly", {"N": ["1"]}, T0))
    logger.add_tasks(run_id, [task("a"), task("b", parents=["a"])], T0)
    logger.record_run_state(run_id, State.RUNNING, T0 + 1)
    logger.record_task_state(run_id, "a", State.RUNNING, T0 + 1)
    logger.record_attempt(run_id, "a", Attempt(T0 + 1, T0 + 2, rc=0, succeeded=True,
                                               output_log="line 1\nline 2\n"))
    logger.record_task_state(run_id, "a", State.COMPLETED, T0 + 2)
    return run_id


# -- line format and sequence -------------------------------------------------------------

def test_every_event_is_one_compact_newline_terminated_json_line(logger, events_path):
    """Each line is compact JSON ending in \\n; newlines inside values are escaped."""
    play_small_run(logger)
    fired(logger.flush())
    raw = events_path.read_bytes()
    assert raw.endswith(b"\n")
    lines = raw.split(b"\n")[:-1]
    assert len(lines) == 7
    for line in lines:
        event = json.loads(line)
        assert line.decode() == json.dumps(event, separators=(",", ":"))
        assert {"time", "event", "runID"} <= set(event)


def test_output_of_any_bytes_is_one_strict_utf8_json_line(logger, events_path):
    """An attempt whose output holds NUL, newlines, U+2028 and U+FFFD (from bytes that were
    not UTF-8) is written as exactly one line of strict UTF-8 JSON that reads back equal."""
    run_id = fired(logger.create_run(None, {}, T0))
    logger.add_tasks(run_id, [task("a")], T0)
    output = "a\x00b\nc\u2028d\ufffde\r\x1b[0m"
    attempt = Attempt(T0, T0 + 1, rc=0, succeeded=True, output_log=output, error_log="\ufffd")
    logger.record_attempt(run_id, "a", attempt)
    fired(logger.flush())
    raw = events_path.read_bytes()
    assert raw.count(b"\n") == 3 and b"\x00" not in raw
    # (str.splitlines would also split at U+2028.)
    [line] = [line for line in raw.decode("utf-8").split("\n") if "taskAttempt" in line]
    assert json.loads(line)["attempt"] == attempt.to_json()


def test_a_small_run_writes_the_documented_event_sequence(logger, events_path):
    """A run's events come out in call order with the documented fields."""
    run_id = play_small_run(logger)
    fired(logger.flush())
    a, b = task("a").to_json(), task("b", parents=["a"]).to_json()
    attempt = Attempt(T0 + 1, T0 + 2, rc=0, succeeded=True, output_log="line 1\nline 2\n")
    assert read_events(events_path) == [
        {"time": iso8601(T0), "event": "runCreated", "runID": run_id, "tag": "nightly",
         "parameters": {"N": ["1"]}, "state": "QUEUED"},
        {"time": iso8601(T0), "event": "taskAdded", "runID": run_id, "task": "a",
         "state": "QUEUED", "definition": a},
        {"time": iso8601(T0), "event": "taskAdded", "runID": run_id, "task": "b",
         "state": "QUEUED", "definition": b},
        {"time": iso8601(T0 + 1), "event": "runState", "runID": run_id, "state": "RUNNING"},
        {"time": iso8601(T0 + 1), "event": "taskState", "runID": run_id, "task": "a",
         "state": "RUNNING"},
        {"time": iso8601(T0 + 2), "event": "taskAttempt", "runID": run_id, "task": "a",
         "attempt": attempt.to_json()},
        {"time": iso8601(T0 + 2), "event": "taskState", "runID": run_id, "task": "a",
         "state": "COMPLETED"},
    ]


def test_a_failed_write_to_memory_writes_no_line(logger, events_path):
    """A write the store rejects (unknown task) produces no event line."""
    run_id = fired(logger.create_run(None, {}, T0))
    with pytest.raises(Exception):
        logger.record_task_state(run_id, "ghost", State.RUNNING, T0)
    fired(logger.flush())
    assert [event["event"] for event in read_events(events_path)] == ["runCreated"]


# -- buffering ----------------------------------------------------------------------------

def test_lines_are_written_once_per_reactor_turn(clock, logger, events_path):
    """Events are buffered: nothing is written until the reactor turns, then all at once."""
    play_small_run(logger)
    assert events_path.read_bytes() == b""
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(0)
    assert len(read_events(events_path)) == 7
    assert clock.getDelayedCalls() == []


def test_a_file_takes_more_than_the_backlog_in_one_turn_without_losing_a_line(
        clock, events_path, monkeypatch):
    """A regular file is written as soon as a turn's backlog is large, so a submission
    bigger than max_backlog_bytes loses no event."""
    monkeypatch.setattr(ostream, "MAX_BYTES_PER_TURN", 1024)
    logger = OStreamLogger(clock, str(events_path), max_backlog_bytes=4096)
    run_id = fired(logger.create_run("big", {}, T0))
    logger.add_tasks(run_id, [task(f"t{i}") for i in range(500)], T0)
    written_before_the_turn = len(events_path.read_bytes())
    clock.advance(0)
    events = read_events(events_path)
    assert written_before_the_turn > 4096
    assert [e["task"] for e in events if e["event"] == "taskAdded"] == [
        f"t{i}" for i in range(500)]
    fired(logger.close())


def test_flush_writes_everything_without_waiting_for_the_reactor(clock, logger, events_path):
    """flush() writes every buffered line before firing and cancels the pending write."""
    play_small_run(logger)
    assert fired(logger.flush()) is None
    assert len(read_events(events_path)) == 7
    assert clock.getDelayedCalls() == []


def test_a_path_is_opened_for_append(clock, events_path):
    """An existing event file is appended to, not truncated."""
    events_path.write_bytes(b'{"old":true}\n')
    logger = OStreamLogger(clock, str(events_path))
    fired(logger.create_run(None, {}, T0))
    fired(logger.close())
    events = read_events(events_path)
    assert events[0] == {"old": True}
    assert events[1]["event"] == "runCreated"


def test_an_unopenable_path_raises_at_construction(clock, tmp_path):
    """A file in a missing directory raises OSError when the logger is built."""
    with pytest.raises(OSError):
        OStreamLogger(clock, str(tmp_path / "missing" / "events.jsonl"))


# -- standard output ----------------------------------------------------------------------

def test_dash_writes_to_file_descriptor_1(clock, capfd):
    """With file "-" the lines go to file descriptor 1, the process's real stdout."""
    logger = OStreamLogger(clock, "-")
    fired(logger.create_run("to-stdout", {}, T0))
    fired(logger.close())
    out, _ = capfd.readouterr()
    assert json.loads(out)["tag"] == "to-stdout"


def test_stdout_fd_override_and_close_leaves_stdout_open(clock, pipe):
    """"-" writes to the stdout_fd given, and close() does not close standard output."""
    read_fd, write_fd = pipe
    logger = OStreamLogger(clock, "-", stdout_fd=write_fd)
    play_small_run(logger)
    fired(logger.close())
    lines = drain(read_fd).splitlines()
    assert [json.loads(line)["event"] for line in lines][:2] == ["runCreated", "taskAdded"]
    os.fstat(write_fd)  # still open


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
def test_close_closes_the_event_file(clock, events_path):
    """close() releases the file descriptor it opened."""
    before = len(os.listdir("/proc/self/fd"))
    logger = OStreamLogger(clock, str(events_path))
    assert len(os.listdir("/proc/self/fd")) == before + 1
    fired(logger.close())
    assert len(os.listdir("/proc/self/fd")) == before


# -- failures -----------------------------------------------------------------------------

def test_a_write_error_is_logged_once_and_the_record_stays_readable(
        clock, pipe, log_events, no_logged_errors):
    """EPIPE is logged once as a failure; later events are not written but still recorded."""
    read_fd, write_fd = pipe
    os.close(read_fd)
    logger = OStreamLogger(clock, "-", stdout_fd=write_fd)
    run_id = fired(logger.create_run(None, {}, T0))
    assert fired(logger.flush()) is None
    logger.add_tasks(run_id, [task("a")], T0)
    logger.record_task_state(run_id, "a", State.RUNNING, T0 + 1)
    clock.advance(0)
    assert fired(logger.flush()) is None

    failures = [e for e in log_events if e.get("log_failure") is not None]
    assert len(failures) == 1
    assert isinstance(failures[0]["log_failure"].value, BrokenPipeError)
    assert fired(logger.get_task_state(run_id, "a"))["state"] == "RUNNING"
    assert fired(logger.close()) is None
    assert len(no_logged_errors) == 1
    no_logged_errors.clear()


def test_a_stalled_pipe_never_blocks_and_catches_up_when_read(clock, pipe, fail_if_blocked):
    """When the reader stops, writes wait (without blocking) and resume once it reads."""
    read_fd, write_fd = pipe
    small_pipe(write_fd)
    logger = OStreamLogger(clock, "-", stdout_fd=write_fd)
    run_id = fired(logger.create_run(None, {}, T0))
    logger.add_tasks(run_id, [task(f"task_{i}") for i in range(200)], T0)
    flushed = logger.flush()
    assert not flushed.called

    received = b""
    for _ in range(1000):
        received += drain(read_fd)
        if flushed.called:
            break
        clock.advance(ostream.RETRY_SECONDS)
    received += drain(read_fd)
    assert fired(flushed) is None
    events = [json.loads(line) for line in received.splitlines()]
    assert [e.get("task") for e in events] == [None] + [f"task_{i}" for i in range(200)]
    fired(logger.close())


def test_a_full_backlog_drops_lines_logs_once_and_recovers(
        clock, pipe, log_events, fail_if_blocked):
    """Beyond max_backlog_bytes lines are dropped with one error; writing resumes later."""
    read_fd, write_fd = pipe
    small_pipe(write_fd)
    logger = OStreamLogger(clock, "-", stdout_fd=write_fd, max_backlog_bytes=8192)
    run_id = fired(logger.create_run(None, {}, T0))
    logger.add_tasks(run_id, [task(f"task_{i}") for i in range(200)], T0)
    clock.advance(0)
    errors = [e for e in log_events if e["log_level"].name == "error"]
    assert len(errors) == 1

    for _ in range(100):
        drain(read_fd)
        clock.advance(ostream.RETRY_SECONDS)
    drain(read_fd)
    assert clock.getDelayedCalls() == []
    assert any("caught up" in e["log_format"] for e in log_events)

    logger.record_task_state(run_id, "task_199", State.RUNNING, T0 + 1)
    fired(logger.flush())
    assert json.loads(drain(read_fd))["event"] == "taskState"
    assert fired(logger.get_run_state(run_id))["taskCounts"]["QUEUED"] == 199
    fired(logger.close())


def test_close_gives_up_on_a_stalled_stream_after_its_timeout(
        clock, pipe, log_events, fail_if_blocked):
    """close() on a stream nobody reads fires after close_timeout, discarding the backlog."""
    read_fd, write_fd = pipe
    small_pipe(write_fd)
    logger = OStreamLogger(clock, "-", stdout_fd=write_fd, close_timeout=3)
    run_id = fired(logger.create_run(None, {}, T0))
    logger.add_tasks(run_id, [task(f"task_{i}") for i in range(200)], T0)
    closed = logger.close()
    clock.advance(2.9)
    assert not closed.called
    clock.advance(0.1)
    assert fired(closed) is None
    assert clock.getDelayedCalls() == []
    assert any("at close" in e["log_format"] for e in log_events)


def test_events_after_close_are_recorded_but_not_written(logger, events_path, log_events):
    """After close() the memory record still changes; the line is skipped with one warning."""
    run_id = fired(logger.create_run(None, {}, T0))
    logger.add_tasks(run_id, [task("a")], T0)
    fired(logger.close())
    logger.record_task_state(run_id, "a", State.RUNNING, T0 + 1)
    logger.record_task_state(run_id, "a", State.COMPLETED, T0 + 2)
    assert fired(logger.get_task_state(run_id, "a"))["state"] == "COMPLETED"
    assert len(read_events(events_path)) == 2
    assert len([e for e in log_events if e["log_level"].name == "warn"]) == 1


def test_an_unserialisable_event_is_logged_and_skipped(logger, events_path, no_logged_errors):
    """A value JSON cannot encode is logged as a failure; other events are still written."""
    run_id = fired(logger.create_run(None, {"P": {1, 2}}, T0))
    logger.record_run_state(run_id, State.RUNNING, T0)
    fired(logger.flush())
    assert [e["event"] for e in read_events(events_path)] == ["runState"]
    assert len(no_logged_errors) == 1
    no_logged_errors.clear()


# -- configuration ------------------------------------------------------------------------

def test_from_config_reads_the_file_option(clock, events_path):
    """from_config builds a logger writing to config["file"]."""
    logger = OStreamLogger.from_config(clock, {"file": str(events_path)})
    fired(logger.create_run(None, {}, T0))
    fired(logger.close())
    assert read_events(events_path)[0]["event"] == "runCreated"


@pytest.mark.parametrize("config, field", [
    ({"file": 3}, "logger.config.file"),
    ({"file": ""}, "logger.config.file"),
    ({"path": "/tmp/x"}, "logger.config.path"),
    (["-"], "logger.config"),
])
def test_from_config_names_the_offending_field(clock, config, field):
    """A bad logger config raises ValueError naming the field."""
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        OStreamLogger.from_config(clock, config)
