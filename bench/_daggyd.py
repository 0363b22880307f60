"""daggyd under measurement, for bench/dagbench.py: start it, submit, wait, read it back,
and load its API (wrk, or a multi-process Python client when wrk is missing).

Built on the test helpers in ``tests/integration/daemon_harness.py``; the caller puts that
directory on ``sys.path``.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import shutil
import signal
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from http.client import HTTPConnection, HTTPException
from pathlib import Path
from typing import Any

from daemon_harness import Daemon, parse_time, start_daemon

from _workloads import Dag

#: Interval between two polls of ``/v1/dagrun/{id}/state`` (each costs the daemon a request).
POLL_SECONDS = 0.02
#: Large enough for the 1,000,000-task spec (~80 MB).
MAX_REQUEST_BYTES = 1 << 31
FINISHED = ("COMPLETED", "ERRORED", "KILLED")


class BenchError(Exception):
    """A measurement that could not be made (timeout, wrong outcome); the bench records the
    message for that cell and goes on."""


# -- /proc ---------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process (not its children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# -- HTTP ----------------------------------------------------------------------------------


class Client:
    """One keep-alive connection to the daemon; reconnects once if the daemon closed it."""

    def __init__(self, port: int, timeout: float = 600) -> None:
        self.port = port
        self.timeout = timeout
        self._connection: HTTPConnection | None = None

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        for attempt in (1, 2):
            if self._connection is None:
                self._connection = HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
            try:
                headers = {"Content-Type": "application/json"} if body is not None else {}
                self._connection.request(method, path, body=body, headers=headers)
                response = self._connection.getresponse()
                return response.status, response.read()
            except (OSError, HTTPException):
                self.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def json(self, method: str, path: str, body: bytes | None = None) -> Any:
        status, raw = self.request(method, path, body)
        if not 200 <= status < 300:
            raise BenchError(f"{method} {path}: {status} {raw[:500]!r}")
        return json.loads(raw)

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


# -- one daemon, one run -------------------------------------------------------------------


#: The ForkingTaskExecutor's ``isolation`` for every daemon the bench starts; None keeps
#: daggyd's default ("auto": a cgroup per task where the machine allows).
ISOLATION: str | None = None


def forking_settings(workers: int, logger: dict) -> dict:
    config: dict = {"threads": workers}
    if ISOLATION is not None:
        config["isolation"] = ISOLATION
    return {"executor": "ForkingTaskExecutor", "executor_config": config, "logger": logger}


def noop_settings(logger: dict) -> dict:
    return {"executor": "NoopTaskExecutor", "executor_config": None, "logger": logger}


def start(directory: Path, settings: dict) -> Daemon:
    return start_daemon("daggyd", directory, executor=settings["executor"],
                        executor_config=settings["executor_config"],
                        logger=settings["logger"], max_request_bytes=MAX_REQUEST_BYTES)


@dataclass
class RunResult:
    seconds: float  # just before the POST → first poll answering COMPLETED
    post_seconds: float
    cpu_seconds: float  # the daemon's own CPU over that time (not its tasks')
    peak_rss_mib: float
    run_id: int
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


def submit_and_wait(client: Client, pid: int, spec: bytes, timeout: float,
                    poll: float = POLL_SECONDS) -> RunResult:
    """POST the spec, poll its state until COMPLETED; BenchError on another end or the
    timeout."""
    cpu_before = cpu_seconds(pid)
    began = time.monotonic()
    run_id = client.json("POST", "/v1/dagrun", spec)["runID"]
    posted = time.monotonic()
    deadline = began + timeout
    path = f"/v1/dagrun/{run_id}/state"
    while True:
        answer = client.json("GET", path)
        if answer["state"] == "COMPLETED":
            break
        if answer["state"] in FINISHED:
            raise BenchError(f"run {run_id} ended {answer['state']}: {answer['taskCounts']}")
        if time.monotonic() > deadline:
            raise BenchError(f"run {run_id} not COMPLETED after {timeout:.0f} s:"
                             f" {answer['taskCounts']}")
        time.sleep(poll)
    finished = time.monotonic()
    return RunResult(seconds=finished - began, post_seconds=posted - began,
                     cpu_seconds=cpu_seconds(pid) - cpu_before, peak_rss_mib=peak_rss_mib(pid),
                     run_id=run_id)


def check_order(run: dict, dag: Dag) -> tuple[list[str], float | None]:
    """Problems with the finished run (a task not COMPLETED, a task that started before one
    of its parents stopped) and the median, over tasks with parents, of a task's first
    attempt's start minus its last parent's stop, in ms."""
    problems: list[str] = []
    counts = run["taskCounts"]
    if counts["COMPLETED"] != len(dag):
        problems.append(f"{counts['COMPLETED']} of {len(dag)} tasks COMPLETED: {counts}")
    attempts = run["taskAttempts"]
    starts, stops = {}, {}
    for name in dag.names:
        tries = attempts.get(name) or []
        if not tries:
            problems.append(f"{name}: no attempt")
            continue
        if len(tries) != 1:
            problems.append(f"{name}: {len(tries)} attempts")
        starts[name] = parse_time(tries[0]["startTime"]).timestamp()
        stops[name] = parse_time(tries[-1]["stopTime"]).timestamp()
    gaps, early = [], 0
    for name in dag.names:
        parents = dag.parents[name]
        if parents and name in starts and all(parent in stops for parent in parents):
            gap = starts[name] - max(stops[parent] for parent in parents)
            gaps.append(gap)
            if gap < 0:
                early += 1
    if early:
        problems.append(f"{early} tasks started before a parent stopped")
    return problems[:5], (statistics.median(gaps) * 1000 if gaps else None)


def timed_get(client: Client, path: str) -> tuple[float, int]:
    """Seconds and bytes of one GET."""
    began = time.monotonic()
    status, raw = client.request("GET", path)
    seconds = time.monotonic() - began
    if status != 200:
        raise BenchError(f"GET {path}: {status} {raw[:300]!r}")
    return seconds, len(raw)


def stop(daemon: Daemon, seconds: float = 30) -> tuple[list[str], float]:
    """SIGTERM the daemon and wait up to ``seconds`` for it to exit (then SIGKILL); what
    went wrong (exit status, errors in its log) and the seconds SIGTERM → exit."""
    notes = []
    popen = daemon.process.popen
    began = time.monotonic()
    try:
        if popen.poll() is None:
            popen.send_signal(signal.SIGTERM)
        status = popen.wait(timeout=seconds)
        if status != 0:
            notes.append(f"daggyd exited with {status} after SIGTERM")
    except subprocess.TimeoutExpired:
        notes.append(f"daggyd did not exit within {seconds:.0f} s of SIGTERM; killed")
    finally:
        daemon.process.kill()
    stop_seconds = time.monotonic() - began
    errors = daemon.new_log_errors(0)
    if errors:
        notes.append(f"daggyd logged {len(errors)} error lines, first: {errors[0][:300]}")
    return notes, stop_seconds


# -- API load ------------------------------------------------------------------------------


@dataclass
class LoadResult:
    tool: str
    requests_per_second: float
    requests: int
    errors: int
    p50_ms: float
    p99_ms: float


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _duration_ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if not match:
        return float("nan")
    return float(match.group(1)) * _UNITS[match.group(2)]


def wrk_load(url: str, seconds: float, connections: int) -> LoadResult:
    """``wrk -t1 -c<connections> -d<seconds>s --latency URL``; errors are socket errors plus
    non-2xx answers."""
    completed = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency", "--timeout", "5s",
         url], capture_output=True, text=True, timeout=seconds + 60, check=False)
    out = completed.stdout
    if completed.returncode != 0:
        raise BenchError(f"wrk exited with {completed.returncode}: {completed.stderr[:300]}")
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    errors = 0
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+),"
                              r" timeout (\d+)", out)
    if socket_errors:
        errors += sum(int(value) for value in socket_errors.groups())
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non_2xx:
        errors += int(non_2xx.group(1))
    # Only the "Latency Distribution" lines: "62.50%" elsewhere also contains "50%".
    p50 = re.search(r"^\s+50%\s+(\S+)\s*$", out, re.MULTILINE)
    p99 = re.search(r"^\s+99%\s+(\S+)\s*$", out, re.MULTILINE)
    return LoadResult("wrk", rate, requests, errors,
                      _duration_ms(p50.group(1)) if p50 else float("nan"),
                      _duration_ms(p99.group(1)) if p99 else float("nan"))


def _client_process(port: int, path: str, until: float, queue) -> None:
    latencies, errors = [], 0
    connection = HTTPConnection("127.0.0.1", port, timeout=5)
    while time.monotonic() < until:
        began = time.monotonic()
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            response.read()
            if response.status != 200:
                errors += 1
        except (OSError, HTTPException):
            errors += 1
            connection.close()
            connection = HTTPConnection("127.0.0.1", port, timeout=5)
            continue
        latencies.append(time.monotonic() - began)
    connection.close()
    queue.put((latencies, errors))


def python_load(port: int, path: str, seconds: float, processes: int) -> LoadResult:
    """``processes`` processes, each one keep-alive connection sending requests back to
    back for ``seconds``."""
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    until = time.monotonic() + seconds
    workers = [context.Process(target=_client_process, args=(port, path, until, queue))
               for _ in range(processes)]
    for worker in workers:
        worker.start()
    try:
        results = [queue.get(timeout=seconds + 60) for _ in workers]
    finally:
        for worker in workers:
            worker.join(timeout=5)
            if worker.is_alive():
                worker.kill()
    latencies = sorted(value for values, _ in results for value in values)
    errors = sum(errors for _, errors in results)

    def percentile(fraction: float) -> float:
        if not latencies:
            return float("nan")
        return latencies[min(len(latencies) - 1, int(fraction * len(latencies)))] * 1000

    return LoadResult(f"python ({processes} processes)", len(latencies) / seconds,
                      len(latencies), errors, percentile(0.5), percentile(0.99))


def load(port: int, path: str, seconds: float, connections: int) -> LoadResult:
    if shutil.which("wrk"):
        return wrk_load(f"http://127.0.0.1:{port}{path}", seconds, connections)
    return python_load(port, path, seconds, max(1, min(connections, 2)))
