"""``GET /v1/events`` on real daemons: a reader follows runs as they execute, reconnects with
Last-Event-ID without losing or repeating anything, a reader that stops reading cannot grow
the daemon's memory and is disconnected, and with the RedisLogger the window survives a
restart.

The reader is a plain blocking socket that parses HTTP/1.1 chunked Server-Sent Events
itself, so that a test can also stop reading and shrink its receive buffer.
"""

from __future__ import annotations

import json
import socket
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import pytest

from daemon_harness import RUN_SECONDS, start_daemon, wait_until
from daggy.events import DEFAULT_MAX_PAUSED_SECONDS
from redis_harness import RedisServer

pytestmark = pytest.mark.integration

FINISHED = frozenset({"COMPLETED", "ERRORED", "KILLED"})


class EventStream:
    """A blocking reader of ``GET /v1/events`` (test side)."""

    def __init__(self, port: int, query: str = "", *, last_event_id: int | None = None,
                 receive_buffer: int | None = None, timeout: float = 30):
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if receive_buffer is not None:
            # Before connecting, so that the advertised TCP window is small from the start.
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        self.socket.settimeout(timeout)
        self.socket.connect(("127.0.0.1", port))
        headers = "" if last_event_id is None else f"Last-Event-ID: {last_event_id}\r\n"
        target = "/v1/events" + (f"?{query}" if query else "")
        self.socket.sendall(f"GET {target} HTTP/1.1\r\nHost: daggy.test\r\n{headers}\r\n"
                            .encode())
        self._raw = b""
        self._body = b""
        while b"\r\n\r\n" not in self._raw:
            self._receive()
        head, self._raw = self._raw.split(b"\r\n\r\n", 1)
        status_line, *lines = head.decode("latin-1").split("\r\n")
        self.status = int(status_line.split()[1])
        self.headers = {name.lower(): value.strip() for name, _, value in
                        (line.partition(":") for line in lines)}
        if self.status != 200:  # a JSON error, chunked or with a length
            if "content-length" in self.headers:
                while len(self._raw) < int(self.headers["content-length"]):
                    self._receive()
                body = self._raw
            else:
                body = b""
                while chunk := self._next_chunk():
                    body += chunk
            self.error = json.loads(body)

    def _receive(self) -> None:
        data = self.socket.recv(1 << 16)
        if not data:
            raise EOFError("the daemon closed the stream")
        self._raw += data

    def _next_chunk(self) -> bytes:
        while b"\r\n" not in self._raw:
            self._receive()
        size_line, rest = self._raw.split(b"\r\n", 1)
        size = int(size_line, 16)
        while len(rest) < size + 2:
            self._receive()
            rest = self._raw.split(b"\r\n", 1)[1]
        self._raw = rest[size + 2:]
        return rest[:size]

    def next_message(self) -> dict[str, Any]:
        """The next message: ``{"id", "event", "data"}`` (``id`` an int, or None for a gap;
        ``data`` decoded) or ``{"comment": text}``."""
        while b"\n\n" not in self._body:
            self._body += self._next_chunk()
        block, self._body = self._body.split(b"\n\n", 1)
        if block.startswith(b":"):
            return {"comment": block[1:].strip().decode()}
        fields = dict(line.split(": ", 1) for line in block.decode("utf-8").split("\n"))
        return {"id": int(fields["id"]) if "id" in fields else None, "event": fields["event"],
                "data": json.loads(fields["data"])}

    def read_until(self, done: Callable[[dict[str, Any]], bool],
                   seconds: float = RUN_SECONDS) -> list[dict[str, Any]]:
        """Messages (comments left out) up to and including the first one ``done`` accepts."""
        deadline = time.monotonic() + seconds
        messages = []
        while True:
            self.socket.settimeout(max(0.1, deadline - time.monotonic()))
            message = self.next_message()
            if "comment" in message:
                continue
            messages.append(message)
            if done(message):
                return messages

    def close(self) -> None:
        self.socket.close()


def run_finished(run_id: int) -> Callable[[dict[str, Any]], bool]:
    """Whether a message says that run ``run_id`` has finished."""
    def done(message: dict[str, Any]) -> bool:
        data = message["data"]
        return (message["event"] == "runState" and data["runID"] == run_id
                and data["state"] in FINISHED)
    return done


def lattice(layers: int, width: int, job: dict[str, Any] | None = None,
            prefix: str = "") -> dict[str, Any]:
    """A spec of layers x width tasks named ``{prefix}t{layer}_{column}``, each task feeding
    two of the next layer."""
    tasks = {}
    for layer in range(layers):
        for column in range(width):
            task: dict[str, Any] = {"job": job or {"command": ["/bin/true"]}}
            if layer + 1 < layers:
                task["children"] = [f"{prefix}t{layer + 1}_{column}",
                                    f"{prefix}t{layer + 1}_{(column + 1) % width}"]
            tasks[f"{prefix}t{layer}_{column}"] = task
    return {"tasks": tasks}


def file_events(directory: Path, run_id: int, last_event: str = "runState") -> list[dict]:
    """The run's events in the daemon's OStreamLogger file, once its end is written."""
    path = directory / "events.jsonl"

    def complete() -> list[dict] | None:
        events = [json.loads(line) for line in path.read_bytes().splitlines()]
        mine = [event for event in events if event["runID"] == run_id]
        ended = mine and mine[-1]["event"] == last_event and mine[-1]["state"] in FINISHED
        return mine if ended else None

    return wait_until(complete, f"the end of run {run_id} in {path}")


def vm_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


@pytest.fixture(scope="module")
def noop_daemon(daemons):
    return daemons("daggyd", executor="NoopTaskExecutor")


@pytest.fixture(scope="module")
def forking_daemon(daemons):
    return daemons("daggyd", executor="ForkingTaskExecutor", executor_config={"threads": 4})


# -- following runs ---------------------------------------------------------------------------

def test_a_reader_gets_every_event_of_a_run_as_it_executes(noop_daemon):
    """A reader connected before a run is submitted receives each of its events, numbered
    without holes, exactly as the OStreamLogger writes them, up to the run's end."""
    stream = EventStream(noop_daemon.port)
    assert stream.status == 200
    assert stream.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert stream.headers["cache-control"] == "no-store"
    run_id = noop_daemon.submit(lattice(10, 20))
    messages = stream.read_until(run_finished(run_id))
    stream.close()
    ids = [message["id"] for message in messages]
    assert ids == list(range(ids[0], ids[0] + len(ids)))
    mine = [message for message in messages if message["data"]["runID"] == run_id]
    assert [message["data"] for message in mine] == file_events(noop_daemon.directory, run_id)
    assert all(message["event"] == message["data"]["event"] for message in mine)


def test_a_filtered_reader_gets_only_its_run(noop_daemon):
    """?run=N streams run N's events (replayed from lastEventID=0, then live) and no
    other's."""
    first = noop_daemon.submit(lattice(2, 3))
    second = noop_daemon.submit(lattice(2, 3))
    stream = EventStream(noop_daemon.port, f"run={first}&lastEventID=0")
    messages = stream.read_until(run_finished(first))
    stream.close()
    assert {message["data"]["runID"] for message in messages} == {first}
    assert [message["data"] for message in messages] == file_events(
        noop_daemon.directory, first)
    assert second != first


def test_an_unknown_run_is_a_json_404_before_any_stream(noop_daemon):
    """?run= naming no run answers 404 JSON, not a stream."""
    stream = EventStream(noop_daemon.port, "run=987654")
    assert (stream.status, stream.error) == (404, {"error": "no such run: 987654"})
    stream.close()


def test_reconnecting_with_last_event_id_loses_and_repeats_nothing(forking_daemon):
    """A reader that disconnects in the middle of a run and reconnects with the last ID it
    saw gets the rest: together the two connections hold every event of the run exactly
    once, in order, as the OStreamLogger wrote them."""
    stream = EventStream(forking_daemon.port)
    run_id = forking_daemon.submit(lattice(20, 6, {"command": ["/bin/sleep", "0.1"]}))
    first_part = stream.read_until(
        lambda message: message["data"]["runID"] == run_id and message["event"] == "taskState"
        and message["data"]["task"].startswith("t3_") and message["data"]["state"] == "COMPLETED")
    stream.close()
    # More happens while nobody listens.
    wait_until(lambda: forking_daemon.get(f"/v1/dagrun/{run_id}/state")["taskCounts"][
        "COMPLETED"] >= 30, "the run to go on")
    assert forking_daemon.get(f"/v1/dagrun/{run_id}/state")["state"] == "RUNNING"
    stream = EventStream(forking_daemon.port, last_event_id=first_part[-1]["id"])
    second_part = stream.read_until(run_finished(run_id))
    stream.close()
    ids = [message["id"] for message in first_part + second_part]
    assert ids == list(range(ids[0], ids[0] + len(ids)))  # no gap, no duplicate
    mine = [message["data"] for message in first_part + second_part
            if message["data"]["runID"] == run_id]
    assert mine == file_events(forking_daemon.directory, run_id)


# -- a reader that stops reading --------------------------------------------------------------

def test_a_reader_that_stops_reading_cannot_grow_the_daemon_and_is_disconnected(tmp_path):
    """A reader with a tiny receive buffer that never reads, while a 20,000-task run
    executes, costs the daemon no more memory than a run without it (the daemon does not
    buffer the stream for it), and is disconnected once it has taken nothing for
    30 seconds."""
    daemon = start_daemon("daggyd", tmp_path / "daemon", executor="NoopTaskExecutor",
                          max_request_bytes=64 << 20)
    try:
        # Jobs and names are padded so that the stream of a run (about 70 MB) dwarfs what
        # the measurement can miss; two runs first bring the replay window (64 MiB) to its
        # steady state, and the third is the baseline without a stalled reader.
        spec = lattice(100, 200, {"command": ["/bin/true"], "note": "x" * 1000},
                       prefix="p" * 150)
        growth = []
        for stalled in (False, False, False, True):
            reader = EventStream(daemon.port, receive_buffer=4096) if stalled else None
            before = vm_rss_kib(daemon.process.popen.pid)
            run_id = daemon.submit(spec)
            daemon.wait_run(run_id, "COMPLETED", seconds=300)
            growth.append(vm_rss_kib(daemon.process.popen.pid) - before)
        streamed = sum(len(line) for line in
                       (daemon.directory / "events.jsonl").read_bytes().splitlines()
                       if json.loads(line)["runID"] == run_id)
        print(f"RSS growth per run (KiB): {growth}; stream of the last run: {streamed} bytes")
        assert streamed > 40 << 20
        # Had the daemon buffered the stream for the stalled reader, the last run would have
        # grown it by at least the stream's size; a third of it is the noise allowed.
        assert growth[3] < growth[2] + streamed // 3 // 1024, (growth, streamed)
        # The daemon cuts the reader off once it has taken nothing for 30 s (reading
        # before that would make it a reader again).
        wait_until(lambda: "An event stream reader took nothing for" in daemon.log,
                   "the stalled reader to be disconnected", DEFAULT_MAX_PAUSED_SECONDS + 30)
        reader.socket.settimeout(10)
        received = 0
        try:
            while True:
                data = reader.socket.recv(1 << 16)
                if not data:
                    break
                received += len(data)
        except ConnectionResetError:
            pass
        # What reached it ends long before the run's end.
        assert received < streamed // 4
        reader.close()
        assert daemon.http("GET", "/ready").status == 200
        assert daemon.new_log_errors(0) == []
    finally:
        assert daemon.stop() == 0


# -- the RedisLogger: the window survives a restart --------------------------------------------

def test_with_redis_a_reader_replays_across_a_daemon_restart(tmp_path, redis_server: RedisServer):
    """With the RedisLogger, a reader reconnecting to a restarted daemon with a Last-Event-ID
    from before the restart gets the stored events after it, then new events numbered on
    from the stored ones."""
    logger = {"name": "RedisLogger", "config": {
        "host": redis_server.host, "port": redis_server.port,
        "prefix": f"events-{uuid.uuid4().hex[:8]}"}}
    daemon = start_daemon("daggyd", tmp_path / "first", executor="NoopTaskExecutor",
                          logger=logger)
    try:
        stream = EventStream(daemon.port)
        run_id = daemon.submit(lattice(3, 4))
        before = stream.read_until(run_finished(run_id))
        stream.close()
    finally:
        assert daemon.stop() == 0
    assert before[0]["id"] == 1 and [m["id"] for m in before] == list(range(1, len(before) + 1))

    daemon = start_daemon("daggyd", tmp_path / "second", executor="NoopTaskExecutor",
                          logger=logger)
    try:
        stream = EventStream(daemon.port, last_event_id=5)
        replayed = stream.read_until(lambda message: message["id"] == before[-1]["id"])
        assert replayed == before[5:]
        second_run = daemon.submit(lattice(2, 2))
        after = stream.read_until(run_finished(second_run))
        stream.close()
        assert [m["id"] for m in after] == list(
            range(before[-1]["id"] + 1, before[-1]["id"] + 1 + len(after)))
        assert {m["data"]["runID"] for m in after} == {second_run}
        assert daemon.new_log_errors(0) == []
    finally:
        assert daemon.stop() == 0
