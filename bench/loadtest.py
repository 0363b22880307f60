#!/usr/bin/env python3
"""The API under load (issue 6): 50 clients poll daggyd while 20 runs of 500 tasks execute.

    /work/venv/bin/python bench/loadtest.py [--clients 50] [--list-clients 10] [--runs 20]
        [--tasks 500] [--command /bin/true] [--threads 8] [--interval 0] [--deadline 300]
        [--max-requests 1000000] [--client-processes 2] [--baseline] [--json FILE] [--keep]

One daggyd (``tests/integration/daemon_harness.py`` through ``bench/_daggyd.py``:
ForkingTaskExecutor with ``--threads`` workers, OStreamLogger to a file in a temporary
directory) gets ``--runs`` runs of ``--tasks`` independent tasks running ``--command``
(default ``/bin/true``), all POSTed at the start.  Then ``--client-processes`` client
processes (forked from this one, never inside the daemon) open ``--clients`` keep-alive
connections between them, each connection being one client that sends its next request
when the previous answer is in (after ``--interval`` seconds, 0 = back to back):

- ``--clients − --list-clients`` clients poll ``GET /v1/dagrun/{id}/state``, each going
  round the runs it has not yet seen finished (each starts at a different run);
- ``--list-clients`` clients call ``GET /v1/dagruns`` (the unfinished runs).

The clients are asyncio streams with a minimal HTTP/1.1 reader (Content-Length and chunked
bodies), so that on a 2-core machine they cost far less CPU than the daemon they measure.
The load stops when every run has finished (this process checks ``GET /v1/dagruns?all=1``
every 0.1 s on its own connection; those requests are not in the figures), at
``--deadline`` seconds after the first POST, or when the clients have made
``--max-requests`` requests.

Reports the requests made, the errors (any answer but 200, a socket error, no answer
within 10 s), p50/p99/max latency and requests/s per endpoint, the runs' total time (first
POST → every run COMPLETED), the daemon's CPU time and peak RSS (``VmHWM``), and checks
that every run COMPLETED with all its tasks and that the daemon logged no error and
stopped cleanly.  ``--baseline`` first runs the same runs on a fresh daemon without the
clients, for comparison.  Exit status 1 if there was any error or problem.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import multiprocessing
import queue
import shlex
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "integration"))
sys.path.insert(0, str(REPO / "bench"))

import _daggyd  # noqa: E402
from _daggyd import BenchError, Client  # noqa: E402
from _workloads import daggy_spec_bytes, independent  # noqa: E402
from daemon_harness import parse_time  # noqa: E402
from dagbench import machine_info  # noqa: E402

STATE = "GET /v1/dagrun/{id}/state"
LIST = "GET /v1/dagruns"
ENDPOINTS = (STATE, LIST)
FINISHED = frozenset({"COMPLETED", "ERRORED", "KILLED"})
REQUEST_TIMEOUT_SECONDS = 10.0
MONITOR_SECONDS = 0.1
ERROR_SAMPLES = 5


# -- the clients (in forked processes) -----------------------------------------------------


class HTTPError(Exception):
    """An answer that is not a well-formed HTTP/1.1 response."""


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    """(status, body, whether the server keeps the connection open) of one response."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head[:-4].split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
        raise HTTPError(f"bad status line {lines[0][:100]!r}")
    status = int(parts[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip().lower()
    keep_alive = headers.get(b"connection") != b"close"
    if b"content-length" in headers:
        body = await reader.readexactly(int(headers[b"content-length"]))
    elif headers.get(b"transfer-encoding") == b"chunked":
        chunks = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":
                    pass  # trailers
                break
            chunks.append((await reader.readexactly(size + 2))[:-2])
        body = b"".join(chunks)
    else:
        body = await reader.read()
        keep_alive = False
    return status, body, keep_alive


def _run_finished(body: bytes) -> bool | None:
    """Whether a run-state answer says the run has finished; None if it is not one."""
    try:
        return json.loads(body)["state"] in FINISHED
    except (ValueError, KeyError, TypeError):
        return None


@dataclass
class ClientFigures:
    """What the clients of one process saw."""

    latencies: dict[str, list[float]] = field(
        default_factory=lambda: {endpoint: [] for endpoint in ENDPOINTS})
    sent: dict[str, int] = field(default_factory=lambda: {e: 0 for e in ENDPOINTS})
    errors: dict[str, int] = field(default_factory=lambda: {e: 0 for e in ENDPOINTS})
    error_samples: list[str] = field(default_factory=list)
    began: float = 0.0
    ended: float = 0.0
    cpu_seconds: float = 0.0  # the client process's own CPU time


class _Load:
    """The clients of one process: shared stop flag, request budget and figures."""

    def __init__(self, port: int, until: float, budget: int, interval: float, stop_event):
        self.port = port
        self.until = until
        self.budget = budget
        self.interval = interval
        self.stop_event = stop_event
        self.stopping = False
        self.figures = ClientFigures()

    async def watch(self) -> None:
        """Turn the cross-process stop event into a local flag, checked without a syscall."""
        while not self.stopping:
            if self.stop_event.is_set() or time.monotonic() >= self.until:
                self.stopping = True
                return
            await asyncio.sleep(0.02)

    def take(self) -> bool:
        """Whether one more request may be sent."""
        if self.stopping or self.budget <= 0:
            return False
        self.budget -= 1
        return True

    def error(self, endpoint: str, what: str) -> None:
        self.figures.errors[endpoint] += 1
        if len(self.figures.error_samples) < ERROR_SAMPLES:
            self.figures.error_samples.append(f"{endpoint}: {what}")

    async def client(self, endpoint: str, run_ids: list[int]) -> None:
        """One keep-alive connection sending requests one after the other."""
        host = f"Host: 127.0.0.1:{self.port}\r\n\r\n".encode()
        pending = list(run_ids)
        list_request = b"GET /v1/dagruns HTTP/1.1\r\n" + host
        latencies = self.figures.latencies[endpoint]
        reader = writer = None
        index = 0
        try:
            while (endpoint == LIST or pending) and self.take():
                if endpoint == STATE:
                    index %= len(pending)
                    run_id = pending[index]
                    request = f"GET /v1/dagrun/{run_id}/state HTTP/1.1\r\n".encode() + host
                else:
                    request = list_request
                self.figures.sent[endpoint] += 1
                began = time.perf_counter()
                try:
                    if writer is None:
                        reader, writer = await asyncio.wait_for(
                            asyncio.open_connection("127.0.0.1", self.port),
                            REQUEST_TIMEOUT_SECONDS)
                    writer.write(request)
                    status, body, keep_alive = await asyncio.wait_for(
                        _read_response(reader), REQUEST_TIMEOUT_SECONDS)
                except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                        asyncio.TimeoutError, HTTPError, ValueError) as error:
                    self.error(endpoint, f"{type(error).__name__}: {error}")
                    keep_alive = False
                else:
                    latencies.append(time.perf_counter() - began)
                    if status != 200:
                        self.error(endpoint, f"{status} {body[:200]!r}")
                    elif endpoint == STATE:
                        finished = _run_finished(body)
                        if finished is None:
                            self.error(endpoint, f"200 without a state: {body[:200]!r}")
                        elif finished:
                            del pending[index]
                        else:
                            index += 1
                if not keep_alive:
                    if writer is not None:
                        writer.close()
                    reader = writer = None
                if self.interval:
                    await asyncio.sleep(self.interval)
        finally:
            if writer is not None:
                writer.close()

    async def run(self, assignments: list[tuple[str, list[int]]]) -> ClientFigures:
        watcher = asyncio.ensure_future(self.watch())
        self.figures.began = time.monotonic()
        await asyncio.gather(*(self.client(endpoint, runs) for endpoint, runs in assignments))
        self.figures.ended = time.monotonic()
        self.stopping = True
        await watcher
        self.figures.cpu_seconds = time.process_time()
        return self.figures


def _client_process(port: int, assignments: list[tuple[str, list[int]]], until: float,
                    budget: int, interval: float, stop_event, results) -> None:
    # The parent handles Ctrl-C and stops us through stop_event (or kills us).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    load = _Load(port, until, budget, interval, stop_event)
    results.put(asyncio.run(load.run(assignments)))


# -- the runs ------------------------------------------------------------------------------


@dataclass
class Outcome:
    """One daemon's runs, with or without the clients."""

    runs_seconds: float | None  # first POST → every run COMPLETED (seen by the monitor)
    runs_seconds_recorded: float | None  # earliest startTime → latest lastUpdate
    post_seconds: float
    daemon_cpu_seconds: float
    daemon_peak_rss_mib: float
    stop_seconds: float
    problems: list[str]
    clients: list[ClientFigures] = field(default_factory=list)
    load_seconds: float = 0.0
    load_ended_by: str = ""


def _all_runs(monitor: Client) -> list[dict]:
    return monitor.json("GET", "/v1/dagruns?all=1")


def _finished(monitor: Client, run_ids: list[int]) -> bool:
    """Whether every one of ``run_ids`` is in a finished state."""
    states = {run["runID"]: run["state"] for run in _all_runs(monitor)}
    return all(states.get(run_id) in FINISHED for run_id in run_ids)


def _check_runs(runs: list[dict], run_ids: list[int], tasks: int) -> tuple[list[str], float]:
    """Problems with the finished runs and their recorded span in seconds."""
    by_id = {run["runID"]: run for run in runs}
    problems = []
    for run_id in run_ids:
        run = by_id.get(run_id)
        if run is None:
            problems.append(f"run {run_id} is not listed")
        elif run["state"] != "COMPLETED" or run["taskCounts"]["COMPLETED"] != tasks:
            problems.append(f"run {run_id} is {run['state']}: {run['taskCounts']}")
    mine = [by_id[run_id] for run_id in run_ids if run_id in by_id]
    span = (max(parse_time(run["lastUpdate"]).timestamp() for run in mine)
            - min(parse_time(run["startTime"]).timestamp() for run in mine)) if mine else math.nan
    return problems, span


def run_once(root: Path, options: argparse.Namespace, with_clients: bool) -> Outcome:
    name = "load" if with_clients else "baseline"
    directory = root / name
    settings = _daggyd.forking_settings(
        options.threads, {"name": "OStreamLogger", "config": {"file": "events.jsonl"}})
    daemon = _daggyd.start(directory, settings)
    pid = daemon.process.popen.pid
    context = multiprocessing.get_context("fork")
    stop_event = context.Event()
    results = context.Queue()
    workers: list[Any] = []
    clients: list[ClientFigures] = []
    problems: list[str] = []
    monitor = Client(daemon.port, timeout=60)
    try:
        command = shlex.split(options.command)
        specs = [daggy_spec_bytes(independent(options.tasks, command), f"{name}-{i}")
                 for i in range(options.runs)]
        cpu_before = _daggyd.cpu_seconds(pid)
        began = time.monotonic()
        deadline = began + options.deadline
        run_ids = [monitor.json("POST", "/v1/dagrun", spec)["runID"] for spec in specs]
        post_seconds = time.monotonic() - began

        if with_clients:
            state_clients = options.clients - options.list_clients
            assignments = [
                (STATE, run_ids[i % len(run_ids):] + run_ids[:i % len(run_ids)])
                for i in range(state_clients)] + [(LIST, [])] * options.list_clients
            # Interleave so each process gets its share of both kinds of client.
            shares = [assignments[i::options.client_processes]
                      for i in range(options.client_processes)]
            budget = math.ceil(options.max_requests / options.client_processes)
            workers = [context.Process(
                target=_client_process,
                args=(daemon.port, share, deadline, budget, options.interval, stop_event,
                      results)) for share in shares if share]
            for worker in workers:
                worker.start()

        runs_seconds = None
        ended_by = "the deadline"
        while time.monotonic() < deadline:
            if _finished(monitor, run_ids):
                runs_seconds = time.monotonic() - began
                ended_by = "every run finished"
                break
            if workers and not any(worker.is_alive() for worker in workers):
                ended_by = "the request cap"
                # The load is over; the runs may still finish before the deadline.
                while runs_seconds is None and time.monotonic() < deadline:
                    time.sleep(MONITOR_SECONDS)
                    if _finished(monitor, run_ids):
                        runs_seconds = time.monotonic() - began
                break
            time.sleep(MONITOR_SECONDS)
        stop_event.set()
        for worker in workers:
            try:
                clients.append(results.get(timeout=60))
            except queue.Empty:
                break
        for worker in workers:
            worker.join(timeout=10)
            if worker.exitcode != 0:
                problems.append(f"a client process exited with {worker.exitcode}")
        daemon_cpu = _daggyd.cpu_seconds(pid) - cpu_before
        peak_rss = _daggyd.peak_rss_mib(pid)
        run_problems, span = _check_runs(_all_runs(monitor), run_ids, options.tasks)
        problems += run_problems
        if runs_seconds is None:
            problems.append(f"the runs did not all finish within {options.deadline:g} s")
    finally:
        stop_event.set()
        for worker in workers:
            if worker.is_alive():
                worker.kill()
                worker.join()
        monitor.close()
        stop_notes, stop_seconds = _daggyd.stop(daemon)
        problems += stop_notes
    load_seconds = 0.0
    if clients:
        load_seconds = (max(figures.ended for figures in clients)
                        - min(figures.began for figures in clients))
    return Outcome(runs_seconds, span, post_seconds, daemon_cpu, peak_rss, stop_seconds,
                   problems, clients, load_seconds, ended_by if with_clients else "")


# -- the report ----------------------------------------------------------------------------


def percentile(ordered: list[float], fraction: float) -> float:
    if not ordered:
        return math.nan
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def summarise(outcome: Outcome) -> dict[str, Any]:
    endpoints = {}
    for endpoint in ENDPOINTS:
        latencies = sorted(value for figures in outcome.clients
                           for value in figures.latencies[endpoint])
        errors = sum(figures.errors[endpoint] for figures in outcome.clients)
        endpoints[endpoint] = {
            "requests": sum(figures.sent[endpoint] for figures in outcome.clients),
            "errors": errors,
            "p50_ms": percentile(latencies, 0.50) * 1000,
            "p99_ms": percentile(latencies, 0.99) * 1000,
            "max_ms": (latencies[-1] * 1000) if latencies else math.nan,
            "requests_per_second": (len(latencies) / outcome.load_seconds
                                    if outcome.load_seconds else math.nan),
        }
    return {
        "endpoints": endpoints,
        "requests": sum(e["requests"] for e in endpoints.values()),
        "errors": sum(e["errors"] for e in endpoints.values()),
        "error_samples": [s for figures in outcome.clients for s in figures.error_samples],
        "load_seconds": outcome.load_seconds,
        "load_ended_by": outcome.load_ended_by,
        "runs_seconds": outcome.runs_seconds,
        "runs_seconds_recorded": outcome.runs_seconds_recorded,
        "post_seconds": outcome.post_seconds,
        "daemon_cpu_seconds": outcome.daemon_cpu_seconds,
        "daemon_cpu_share": (outcome.daemon_cpu_seconds / outcome.runs_seconds
                             if outcome.runs_seconds else math.nan),
        "clients_cpu_seconds": sum(figures.cpu_seconds for figures in outcome.clients),
        "daemon_peak_rss_mib": outcome.daemon_peak_rss_mib,
        "stop_seconds": outcome.stop_seconds,
        "problems": outcome.problems,
    }


def _number(value: float | None, digits: int = 1) -> str:
    return "—" if value is None or math.isnan(value) else f"{value:,.{digits}f}"


def report(options: argparse.Namespace, machine: dict, load: dict,
           baseline: dict | None) -> str:
    lines = [
        f"daggyd, ForkingTaskExecutor threads={options.threads}, OStreamLogger to a file;"
        f" {options.runs} runs × {options.tasks} independent `{options.command}`, POSTed at"
        f" the start;"
        f" {options.clients} keep-alive clients in {options.client_processes} processes"
        f" ({options.clients - options.list_clients} on {STATE},"
        f" {options.list_clients} on {LIST}),"
        f" {'back to back' if not options.interval else f'every {options.interval:g} s'}.",
        "",
        "| endpoint | requests | errors | req/s | p50 ms | p99 ms | max ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for endpoint, figures in load["endpoints"].items():
        lines.append(
            f"| `{endpoint}` | {figures['requests']:,} | {figures['errors']} |"
            f" {_number(figures['requests_per_second'], 0)} | {_number(figures['p50_ms'], 2)} |"
            f" {_number(figures['p99_ms'], 2)} | {_number(figures['max_ms'], 1)} |")
    total_rate = load["requests"] / load["load_seconds"] if load["load_seconds"] else math.nan
    lines.append(f"| all | {load['requests']:,} | {load['errors']} | {_number(total_rate, 0)}"
                 f" | | | |")
    lines += ["", "| | with the clients |" + (" without (baseline) |" if baseline else ""),
              "| --- | ---: |" + (" ---: |" if baseline else "")]

    def row(label: str, key: str, digits: int = 1, unit: str = "") -> None:
        values = [load] + ([baseline] if baseline else [])
        cells = " | ".join(f"{_number(v[key], digits)}{unit}" for v in values)
        lines.append(f"| {label} | {cells} |")

    row("runs' total time (first POST → all COMPLETED), s", "runs_seconds", 2)
    row("same, from the records (first startTime → last lastUpdate), s",
        "runs_seconds_recorded", 2)
    row(f"the {options.runs} POSTs, s", "post_seconds", 2)
    row("daemon CPU time over the runs, s", "daemon_cpu_seconds", 1)
    row("daemon CPU time / runs' total time", "daemon_cpu_share", 2)
    row("client processes' CPU time, s", "clients_cpu_seconds", 1)
    row("daemon peak RSS (VmHWM), MiB", "daemon_peak_rss_mib", 0)
    row("SIGTERM → exit, s", "stop_seconds", 2)
    lines += ["", f"Load phase: {load['load_seconds']:.2f} s, ended by: {load['load_ended_by']}."]
    problems = load["problems"] + (baseline["problems"] if baseline else [])
    if load["error_samples"]:
        lines.append("Errors (first ones): " + "; ".join(load["error_samples"]))
    lines.append("Problems: " + ("; ".join(problems) if problems else "none"))
    lines += ["", f"Machine: {machine['nproc']} CPUs ({machine['cpu']}), {machine['memory']},"
              f" Python {machine['python']}, Twisted {machine['twisted']},"
              f" {machine['git commit']}; load average at start"
              f" {' '.join(machine['load average at start'])}; busy processes at start:"
              f" {'; '.join(machine['busy processes at start']) or 'none'}."]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=50, help="connections (default 50)")
    parser.add_argument("--list-clients", type=int, default=10,
                        help="of which on GET /v1/dagruns (default 10)")
    parser.add_argument("--runs", type=int, default=20, help="runs (default 20)")
    parser.add_argument("--tasks", type=int, default=500, help="tasks per run (default 500)")
    parser.add_argument("--command", default="/bin/true",
                        help="each task's command line, split like a shell (default /bin/true)")
    parser.add_argument("--threads", type=int, default=8,
                        help="ForkingTaskExecutor threads (default 8)")
    parser.add_argument("--interval", type=float, default=0.0,
                        help="seconds a client waits between two requests (default 0)")
    parser.add_argument("--deadline", type=float, default=300.0,
                        help="seconds after the first POST when the load stops (default 300)")
    parser.add_argument("--max-requests", type=int, default=1_000_000,
                        help="cap on the clients' requests (default 1,000,000)")
    parser.add_argument("--client-processes", type=int, default=2,
                        help="processes the clients are spread over (default 2)")
    parser.add_argument("--baseline", action="store_true",
                        help="first run the same runs without the clients")
    parser.add_argument("--json", type=Path, help="also write the figures to FILE")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    options = parser.parse_args()
    if not 0 <= options.list_clients <= options.clients or options.clients < 1:
        parser.error("need 1 <= --clients and 0 <= --list-clients <= --clients")
    if min(options.runs, options.tasks, options.threads, options.client_processes,
           options.max_requests) < 1 or options.interval < 0:
        parser.error("--runs, --tasks, --threads, --client-processes, --max-requests must be"
                     " >= 1 and --interval >= 0")

    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, lambda number, frame: sys.exit(128 + number))
    signal.signal(signal.SIGINT, signal.default_int_handler)

    machine = machine_info()
    root = Path(tempfile.mkdtemp(prefix="daggy-loadtest-", dir="/tmp"))
    with contextlib.ExitStack() as stack:
        if options.keep:
            stack.callback(lambda: print(f"kept {root}", file=sys.stderr))
        else:
            stack.callback(shutil.rmtree, root, ignore_errors=True)
        try:
            baseline = summarise(run_once(root, options, False)) if options.baseline else None
            load = summarise(run_once(root, options, True))
        except BenchError as error:
            print(f"loadtest: {error}", file=sys.stderr)
            return 1
    print(report(options, machine, load, baseline))
    if options.json:
        options.json.write_text(json.dumps(
            {"machine": machine, "options": {k: str(v) for k, v in vars(options).items()},
             "load": load, "baseline": baseline}, indent=1, default=str))
    failed = load["errors"] or load["problems"] or (baseline and baseline["problems"])
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; everything the load test started is stopped", file=sys.stderr)
        sys.exit(130)
