"""OStreamLogger's event stream: line format, event sequence, buffering, stdout, failures.

The RunLogger behaviour it shares with MemoryStore is covered by test_logger_contract.py.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import signal
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher

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

def test_epipe_on_stdout_is_logged_once_and_the_record_stays_readable(
        clock, pipe, log_events):
    """EPIPE (the reader of standard output left) is one error naming the stream and errno,
    not a raised exception; later events are still recorded, and close reports the lines
    that were never written."""
    read_fd, write_fd = pipe
    os.close(read_fd)
    logger = OStreamLogger(clock, "-", stdout_fd=write_fd)
    run_id = fired(logger.create_run(None, {}, T0))
    assert fired(logger.flush()) is None
    logger.add_tasks(run_id, [task("a")], T0)
    logger.record_task_state(run_id, "a", State.RUNNING, T0 + 1)
    clock.advance(ostream.RETRY_SECONDS)
    assert fired(logger.flush()) is None

    [error] = errors_in(log_events)
    assert "standard output" in formatEvent(error)
    assert "Broken pipe (EPIPE)" in formatEvent(error)
    assert logger.write_error == "Broken pipe (EPIPE)"
    assert fired(logger.get_task_state(run_id, "a"))["state"] == "RUNNING"
    assert fired(logger.close()) is None
    [_, at_close] = errors_in(log_events)
    assert "3 run event lines were never written" in formatEvent(at_close)
    assert clock.getDelayedCalls() == []


class FlakyDisk:
    """An ``os.write`` stand-in for a disk that fills up: while ``room`` is 0 every write
    fails with ``error``; otherwise it takes at most ``room`` bytes (a short write) when
    ``room`` is set, everything when it is None.  What it took is in ``data``."""

    def __init__(self, error: int = errno.ENOSPC):
        self.error = error
        self.room: int | None = None
        self.data = bytearray()
        self.calls = 0

    def __call__(self, fd: int, chunk) -> int:
        self.calls += 1
        if self.room == 0:
            raise OSError(self.error, os.strerror(self.error))
        taken = bytes(chunk) if self.room is None else bytes(chunk[:self.room])
        if self.room is not None:
            self.room -= len(taken)
        self.data += taken
        return len(taken)

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in bytes(self.data).splitlines()]


def errors_in(log_events) -> list[dict[str, Any]]:
    return [e for e in log_events if e["log_level"].name == "error"]


def retry_delays(clock) -> list[float]:
    return [call.getTime() - clock.seconds() for call in clock.getDelayedCalls()]


@pytest.mark.parametrize("error", [errno.ENOSPC, errno.EIO, errno.EBADF, errno.EPIPE])
def test_a_failing_disk_is_one_error_then_retried_with_backoff_until_it_recovers(
        clock, events_path, log_events, error):
    """A write error is logged once (errno text and file), never raised; the lines stay
    queued and are retried after 0.1 s, 0.2 s, ... at most 5 s apart; flush() does not wait
    for the failing file; once the disk takes them every line is written, in order, once,
    and the recovery is logged with no line lost."""
    disk = FlakyDisk(error)
    disk.room = 0
    logger = OStreamLogger(clock, str(events_path), write=disk)
    run_id = play_small_run(logger)
    assert fired(logger.flush()) is None  # at once, although nothing was written

    [logged] = errors_in(log_events)
    text = formatEvent(logged)
    assert str(events_path) in text and os.strerror(error) in text
    assert errno.errorcode[error] in text
    delays = []
    for _ in range(9):
        delays += retry_delays(clock)
        clock.advance(delays[-1])
    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0, 5.0])
    assert len(errors_in(log_events)) == 1
    assert disk.data == b""
    assert fired(logger.get_run_state(run_id))["taskCounts"]["COMPLETED"] == 1

    disk.room = None
    clock.advance(retry_delays(clock)[0])
    assert [e["event"] for e in disk.events()] == [
        "runCreated", "taskAdded", "taskAdded", "runState", "taskState", "taskAttempt",
        "taskState"]
    [recovery] = [e for e in log_events if "again" in e["log_format"]]
    assert "0 event lines were lost" in formatEvent(recovery)
    assert logger.write_error is None
    logger.record_run_state(run_id, State.COMPLETED, T0 + 3)
    clock.advance(0)
    assert disk.events()[-1]["event"] == "runState"
    assert fired(logger.close()) is None


def test_a_short_write_before_the_disk_fills_loses_and_repeats_nothing(
        clock, events_path, log_events):
    """A disk that takes part of a line and then fails gets the rest of that line once it
    has room again: the file holds every line exactly once."""
    disk = FlakyDisk()
    logger = OStreamLogger(clock, str(events_path), write=disk)
    run_id = fired(logger.create_run(None, {}, T0))
    logger.add_tasks(run_id, [task(f"t{i}") for i in range(5)], T0)
    disk.room = 150  # ends inside the second line, then the disk is full
    clock.advance(0)
    assert len(errors_in(log_events)) == 1
    assert not disk.data.endswith(b"\n")
    disk.room = None
    clock.advance(ostream.RETRY_SECONDS)
    assert [e.get("task") for e in disk.events()] == [None, "t0", "t1", "t2", "t3", "t4"]
    fired(logger.close())


def test_lines_beyond_the_backlog_while_failing_are_counted_and_reported(
        clock, events_path, log_events):
    """While writing fails the backlog stays bounded: lines beyond it are dropped (one
    warning), the first ones are kept and written on recovery, and the recovery message
    counts the lines lost."""
    disk = FlakyDisk()
    disk.room = 0
    logger = OStreamLogger(clock, str(events_path), write=disk, max_backlog_bytes=2000)
    run_id = fired(logger.create_run(None, {}, T0))
    clock.advance(0)
    logger.add_tasks(run_id, [task(f"t{i}") for i in range(40)], T0)
    clock.advance(0)
    warnings = [e for e in log_events if e["log_level"].name == "warn"]
    assert len(warnings) == 1 and "dropped" in warnings[0]["log_format"]
    disk.room = None
    clock.advance(ostream.RETRY_SECONDS)
    kept = disk.events()
    assert [e.get("task") for e in kept] == [None] + [f"t{i}" for i in range(len(kept) - 1)]
    assert len(kept) < 41
    [recovery] = [e for e in log_events if "again" in e["log_format"]]
    assert f"{41 - len(kept)} event lines were lost" in formatEvent(recovery)
    assert len(errors_in(log_events)) == 1
    fired(logger.close())


def test_close_while_failing_discards_at_once_and_says_how_many_lines(
        clock, events_path, log_events):
    """close() does not wait for a failing file: it fires at once, leaves no timer and
    logs how many lines were never written."""
    disk = FlakyDisk()
    disk.room = 0
    logger = OStreamLogger(clock, str(events_path), write=disk)
    play_small_run(logger)
    clock.advance(0)
    assert fired(logger.close()) is None
    assert clock.getDelayedCalls() == []
    assert "7 run event lines were never written" in formatEvent(errors_in(log_events)[-1])


def test_a_real_dev_full_never_raises_and_keeps_the_record(clock, log_events):
    """Writing events to /dev/full (every write is ENOSPC) logs one error and the record
    the API serves is complete."""
    logger = OStreamLogger(clock, "/dev/full")
    run_id = play_small_run(logger)
    clock.advance(0)
    fired(logger.flush())
    clock.advance(ostream.RETRY_SECONDS)
    [logged] = errors_in(log_events)
    assert "/dev/full" in formatEvent(logged) and "ENOSPC" in formatEvent(logged)
    assert fired(logger.get_task(run_id, "a"))["attempts"][0]["outputLog"] == "line 1\nline 2\n"
    fired(logger.close())


def test_the_runner_never_sees_a_write_error_even_on_the_immediate_path(
        clock, events_path, log_events):
    """Past MAX_BYTES_PER_TURN a regular file is written inside the event call; a failure
    there is still only logged, and it is not tried again on every later line."""
    disk = FlakyDisk()
    disk.room = 0
    logger = OStreamLogger(clock, str(events_path), write=disk)
    run_id = fired(logger.create_run(None, {}, T0))
    big = "x" * 4096
    logger.add_tasks(run_id, [TaskDef(name=f"t{i}", defined_name="t",
                                      job={"command": ["echo", big]}) for i in range(600)], T0)
    assert disk.calls == 1
    assert len(errors_in(log_events)) == 1
    disk.room = None
    fired(logger.close())
    assert len(disk.events()) == 601


# -- reopen (SIGHUP, logrotate) -----------------------------------------------------------

def test_reopen_after_a_rename_starts_a_new_file_losing_and_repeating_nothing(
        clock, events_path, log_events):
    """After logrotate renames the file, reopen() writes what was queued to the old file,
    then every later line to a new file at the configured path."""
    logger = OStreamLogger(clock, str(events_path))
    run_id = fired(logger.create_run(None, {}, T0))
    logger.add_tasks(run_id, [task("a")], T0)
    clock.advance(0)
    rotated = events_path.with_name("events.jsonl.1")
    os.rename(events_path, rotated)
    logger.record_task_state(run_id, "a", State.RUNNING, T0 + 1)  # queued, not written yet
    logger.reopen()
    logger.record_task_state(run_id, "a", State.COMPLETED, T0 + 2)
    fired(logger.close())

    assert [e["event"] for e in read_events(rotated)] == ["runCreated", "taskAdded", "taskState"]
    assert [e["state"] for e in read_events(events_path)] == ["COMPLETED"]
    assert (events_path.stat().st_mode & 0o777) == 0o644 & ~current_umask()
    assert any("Reopened" in e["log_format"] for e in log_events)


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_reopen_writes_a_line_cut_by_a_short_write_whole_to_the_new_file(
        clock, events_path, log_events):
    """A line whose start went to the old file before its disk filled is written whole to
    the new file, so every line of the new file is complete and none is missing."""
    old_disk, new_disk = FlakyDisk(), FlakyDisk()
    old_fd: list[int] = []

    def write(fd, chunk):
        return (old_disk if fd in old_fd else new_disk)(fd, chunk)

    logger = OStreamLogger(clock, str(events_path), write=write)
    old_fd.append(logger._writer._fd)
    run_id = fired(logger.create_run(None, {}, T0))
    logger.add_tasks(run_id, [task(f"t{i}") for i in range(3)], T0)
    old_disk.room = 150  # ends inside the second line, then the old disk is full
    clock.advance(0)
    logger.reopen()
    clock.advance(0)
    old_lines = bytes(old_disk.data).split(b"\n")
    assert len(old_lines) == 2 and old_lines[1]  # one complete line, then a fragment
    assert [e.get("task") for e in new_disk.events()] == ["t0", "t1", "t2"]
    assert new_disk.data.startswith(old_lines[1])
    fired(logger.close())


def test_reopen_of_a_failing_file_recovers_on_the_new_one(clock, tmp_path, log_events):
    """A file that failed (its disk vanished) is replaced by reopen(): the queued lines go
    to the new file at once and the recovery is logged."""
    path = tmp_path / "events.jsonl"
    broken: set[int] = set()

    def write(fd, chunk):
        if fd in broken:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return os.write(fd, chunk)

    logger = OStreamLogger(clock, str(path), write=write)
    broken.add(logger._writer._fd)
    run_id = fired(logger.create_run(None, {}, T0))
    clock.advance(0)
    assert logger.write_error == "Input/output error (EIO)"
    os.rename(path, tmp_path / "old.jsonl")
    logger.reopen()
    clock.advance(0)
    assert logger.write_error is None
    assert [e["runID"] for e in read_events(path)] == [run_id]
    assert any("again" in e["log_format"] for e in log_events)
    fired(logger.close())


def test_reopen_of_standard_output_does_nothing(clock, pipe):
    """"-" is not reopened: lines keep going to the same descriptor."""
    read_fd, write_fd = pipe
    logger = OStreamLogger(clock, "-", stdout_fd=write_fd)
    fired(logger.create_run(None, {}, T0))
    logger.reopen()
    fired(logger.flush())
    assert json.loads(drain(read_fd))["event"] == "runCreated"
    fired(logger.close())
    os.write(write_fd, b"still open\n")


def test_a_path_that_cannot_be_reopened_keeps_the_old_file(clock, tmp_path, log_events):
    """If the path cannot be opened again (its directory is gone), one error is logged and
    the events go on to the file opened before."""
    directory = tmp_path / "logs"
    directory.mkdir()
    path = directory / "events.jsonl"
    logger = OStreamLogger(clock, str(path))
    run_id = fired(logger.create_run(None, {}, T0))
    moved = tmp_path / "moved"
    os.rename(directory, moved)
    logger.reopen()
    logger.record_run_state(run_id, State.RUNNING, T0 + 1)
    fired(logger.close())
    [logged] = errors_in(log_events)
    assert "Cannot reopen" in logged["log_format"] and "ENOENT" in formatEvent(logged)
    assert [e["event"] for e in read_events(moved / "events.jsonl")] == ["runCreated", "runState"]


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


# -- publishing events --------------------------------------------------------------------

def test_published_events_are_exactly_the_written_lines(clock, logger, events_path):
    """With a hub, each line written is byte for byte the line published, numbered in order
    (the JSON is encoded once for both)."""
    from daggy.events import EventHub

    hub = EventHub(clock)
    logger.publish_to(hub)
    play_small_run(logger)
    fired(logger.flush())
    published = hub.window_after(0, 100)
    assert [event_id for event_id, _ in published] == list(range(1, 8))
    assert b"".join(line for _, line in published) == events_path.read_bytes()


def test_an_unserialisable_event_is_neither_written_nor_published(
        clock, logger, events_path, no_logged_errors):
    """An event JSON cannot encode is logged once, and uses no event ID."""
    from daggy.events import EventHub

    hub = EventHub(clock)
    logger.publish_to(hub)
    run_id = fired(logger.create_run(None, {"P": {1, 2}}, T0))
    logger.record_run_state(run_id, State.RUNNING, T0)
    fired(logger.flush())
    assert [e["event"] for e in read_events(events_path)] == ["runState"]
    assert [(event_id, json.loads(line)["event"]) for event_id, line in
            hub.window_after(0, 10)] == [(1, "runState")]
    assert len(no_logged_errors) == 1
    no_logged_errors.clear()
