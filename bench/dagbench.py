#!/usr/bin/env python3
"""daggyd next to the floor of its stack, GNU make and Luigi, on the same DAGs with the same
concurrency, in one run.

    /work/venv/bin/python bench/dagbench.py [--only W1,W2,...] [--repeat 3] [--quick] [--full]
        [--json FILE] [--keep]

Workloads (``--only`` takes a comma-separated list of W1 W2 W3 W4 W5 S1 A1 L1; default all):

- W1: 1,000 and 5,000 independent ``/bin/true`` tasks, 2 workers.
- W2: a chain of 200 ``/bin/true``, 2 workers; also the median gap between a parent's stop
  and its child's start (attempt timestamps).
- W3: a lattice of 20 layers × 50 ``/bin/true``, each task with 2 parents in the previous
  layer, 2 workers.
- W4: 200 independent ``sleep 0.5``, 50 workers.
- W5: W1–W3 again on a daggyd with the RedisLogger (a redis-server the bench starts), as a
  ratio to the same workload with the OStreamLogger.
- S1: NoopTaskExecutor: lattices of 100,000 and 1,000,000 tasks, and one task expanded by a
  parameter with 100,000 values: POST → COMPLETED and the daemon's peak RSS.
- A1: ``GET /v1/dagrun/{id}/state`` and ``GET /v1/dagruns`` under load (wrk, else a
  multi-process Python client) while a 10,000-task run executes; then one
  ``GET /v1/dagrun/{id}`` of the finished run.
- L1: 1,000 ``/bin/true`` tasks on a private Slurm cluster (SlurmTaskExecutor).

Runners of W1–W4, in this order in every repetition (so drift hits all alike): the floor
(``bench/floor.py``, timed inside), ``make -jN`` on a generated Makefile (timed around the
``make`` process), daggyd (a fresh daemon per measurement, ForkingTaskExecutor with
``threads`` = N, OStreamLogger to a file; timed from just before ``POST /v1/dagrun`` to the
first poll of the run's state, every 20 ms on a keep-alive connection, that answers
COMPLETED), daggyd with the RedisLogger (W5), and Luigi (``bench/_luigi_runner.py``, local
scheduler, ``workers`` = N, timed inside; runs above 1,000 tasks are skipped unless
``--full``).

Prints Markdown tables of medians over the repetitions, ratios (the median of the ratios of
runs paired in the same repetition), daggyd's peak RSS and CPU, and every target of issue 5,
met or missed, with the machine it ran on.  ``--quick``: one repetition of smaller sizes,
for trying the bench out (the targets are for the full sizes).  Everything the bench starts
(daemons, redis-server, the Slurm cluster, runner processes) is stopped and its temporary
directory removed at the end, on an error and on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
sys.path.insert(0, str(REPO / "tests" / "integration"))
sys.path.insert(0, str(BENCH))

import _daggyd  # noqa: E402
from _daggyd import BenchError, Client  # noqa: E402
from _workloads import (  # noqa: E402
    Dag,
    chain,
    daggy_spec_bytes,
    independent,
    lattice,
    makefile,
    parameter_spec_bytes,
)

PYTHON = sys.executable
GROUPS = ("W1", "W2", "W3", "W4", "W5", "S1", "A1", "L1")
LUIGI_MAX_TASKS = 1000
A1_CONNECTIONS = 8
L1_POLL_SECONDS = 1.0
TRUE = ["/bin/true"]


@dataclass(frozen=True)
class Sizes:
    w1: tuple[int, ...]
    w2: int
    w3: tuple[int, int]
    w4: tuple[int, int, float]  # tasks, workers, seconds each
    s1_lattices: tuple[tuple[int, int], ...]  # (layers, width)
    s1_parameter: int
    a1_tasks: int
    a1_seconds: float
    l1_tasks: int


FULL = Sizes(w1=(1000, 5000), w2=200, w3=(20, 50), w4=(200, 50, 0.5),
             s1_lattices=((100, 1000), (1000, 1000)), s1_parameter=100_000,
             a1_tasks=10_000, a1_seconds=5, l1_tasks=1000)
QUICK = Sizes(w1=(200, 1000), w2=50, w3=(5, 20), w4=(40, 20, 0.5),
              s1_lattices=((10, 1000), (100, 1000)), s1_parameter=10_000,
              a1_tasks=2000, a1_seconds=2, l1_tasks=100)


def count(number: int) -> str:
    """1000 → "1k", 1000000 → "1M"."""
    for size, suffix in ((1_000_000, "M"), (1000, "k")):
        if number >= size and number % size == 0:
            return f"{number // size}{suffix}"
    return str(number)


@dataclass
class Workload:
    key: str
    group: str
    describe: str
    dag: Dag
    workers: int
    runners: list[str]
    spec_path: Path | None = None
    makefile_path: Path | None = None

    @property
    def timeout(self) -> float:
        """Seconds one runner gets: generous, but bounded."""
        return 60 + len(self.dag) * 0.05


@dataclass
class Sample:
    round: int
    values: dict[str, Any]


class Flawed(Exception):
    """A measurement that was made but with something wrong besides (the daemon logged an
    error, did not stop in time): the values count, the message goes into the notes."""

    def __init__(self, message: str, values: dict[str, Any]):
        super().__init__(message)
        self.values = values


@dataclass
class Cell:
    samples: list[Sample] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    skipped: str | None = None

    def values(self, name: str) -> list[float]:
        found = [sample.values[name] for sample in self.samples
                 if sample.values.get(name) is not None]
        return [value for value in found if not (isinstance(value, float) and math.isnan(value))]

    def median(self, name: str) -> float | None:
        values = self.values(name)
        return statistics.median(values) if values else None

    def by_round(self, name: str) -> dict[int, float]:
        return {sample.round: sample.values[name] for sample in self.samples
                if sample.values.get(name) is not None}


def paired_ratio(numerator: Cell, denominator: Cell, name: str = "seconds") -> float | None:
    """The median over repetitions of numerator / denominator, paired by repetition."""
    top, bottom = numerator.by_round(name), denominator.by_round(name)
    ratios = [top[r] / bottom[r] for r in top if r in bottom and bottom[r] > 0]
    return statistics.median(ratios) if ratios else None


# -- machine -------------------------------------------------------------------------------


def _first_line(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return "not installed"
    return ((done.stdout or done.stderr).strip().splitlines() or ["?"])[0]


def _version(distribution: str) -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(distribution)
    except PackageNotFoundError:
        return "not installed"


def busy_processes(seconds: float = 1.0, limit: int = 6) -> list[str]:
    """Processes (not this one) that used more than 5 % of a CPU over ``seconds``."""
    def sample() -> dict[int, tuple[float, str]]:
        found = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(
                    errors="replace").strip()
            except OSError:
                continue
            found[int(entry.name)] = (int(fields[11]) + int(fields[12]), command)
        return found

    before = sample()
    time.sleep(seconds)
    after = sample()
    ticks = os.sysconf("SC_CLK_TCK")
    busy = []
    for pid, (cpu, command) in after.items():
        used = (cpu - before.get(pid, (cpu, ""))[0]) / ticks / seconds
        if used > 0.05:
            busy.append((used, f"{used * 100:.0f} % {command[:90]}"))
    return [text for _, text in sorted(busy, reverse=True)[:limit]]


def machine_info() -> dict[str, Any]:
    model = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    memory = "?"
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            memory = f"{int(line.split()[1]) / 2**20:.1f} GiB"
    commit = _first_line(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    changed = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain"],
                             capture_output=True, text=True, check=False).stdout.splitlines()
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": model,
        "memory": memory,
        "kernel": platform.release(),
        "load average at start": Path("/proc/loadavg").read_text().split()[:3],
        "python": platform.python_version(),
        "twisted": _version("twisted"),
        "luigi": _version("luigi"),
        "make": _first_line(["make", "--version"]),
        "redis": _first_line(["redis-server", "--version"]),
        "wrk": _first_line(["wrk", "-v"]) if shutil.which("wrk") else "not installed",
        "git commit": f"{commit}" + (f" + {len(changed)} uncommitted files" if changed else ""),
        "busy processes at start": busy_processes(),
    }


# -- running things ------------------------------------------------------------------------


def run_process(argv: list[str], cwd: Path, timeout: float,
                env: dict[str, str] | None = None) -> tuple[float, str, str]:
    """Run a runner in its own process group; (wall seconds, stdout, stderr).  The group is
    killed on a timeout or an interrupt."""
    began = time.monotonic()
    process = subprocess.Popen(argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True,
                               env=env)
    try:
        out, err = process.communicate(timeout=timeout)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        if isinstance(sys.exc_info()[1], subprocess.TimeoutExpired):
            raise BenchError(f"timed out after {timeout:.0f} s") from None
        raise
    seconds = time.monotonic() - began
    if process.returncode != 0:
        raise BenchError(f"exit status {process.returncode}: {(err or out)[-500:]}")
    return seconds, out, err


class Bench:
    def __init__(self, options: argparse.Namespace, root: Path, stack: contextlib.ExitStack):
        self.options = options
        self.sizes = QUICK if options.quick else FULL
        self.root = root
        self.stack = stack
        self.cells: dict[tuple[str, str], Cell] = {}
        self.notes: list[str] = []
        self.redis = None
        self.cluster = None
        self.workloads: list[Workload] = []
        self.groups = set(options.only)

    def cell(self, key: str, runner: str) -> Cell:
        return self.cells.setdefault((key, runner), Cell())

    # -- setup

    def plan(self) -> None:
        sizes, groups = self.sizes, self.groups
        redis = "W5" in groups
        if redis and not groups & {"W1", "W2", "W3"}:
            base = ["daggyd"]
            w123 = {"W1", "W2", "W3"}
        else:
            base = ["floor", "make", "daggyd"]
            w123 = groups & {"W1", "W2", "W3"}
        extra = ["daggyd-redis"] if redis else []
        luigi = [] if base == ["daggyd"] else ["luigi"]
        runners = base + extra + luigi
        if "W1" in w123:
            for tasks in sizes.w1:
                self.workloads.append(Workload(
                    f"W1 {count(tasks)}", "W1", f"{tasks:,} independent /bin/true",
                    independent(tasks, TRUE), 2, runners))
        if "W2" in w123:
            self.workloads.append(Workload(
                f"W2 chain {sizes.w2}", "W2", f"chain of {sizes.w2} /bin/true",
                chain(sizes.w2, TRUE), 2, runners))
        if "W3" in w123:
            layers, width = sizes.w3
            self.workloads.append(Workload(
                f"W3 lattice {layers}×{width}", "W3",
                f"{layers} layers × {width} /bin/true, 2 parents each",
                lattice(layers, width, TRUE), 2, runners))
        if "W4" in groups:
            tasks, workers, seconds = sizes.w4
            self.workloads.append(Workload(
                f"W4 {tasks}×sleep {seconds:g}", "W4",
                f"{tasks} independent sleep {seconds:g}",
                independent(tasks, ["sleep", f"{seconds:g}"]), workers,
                ["floor", "make", "daggyd", "luigi"]))
        specs = self.root / "specs"
        specs.mkdir()
        for number, workload in enumerate(self.workloads):
            workload.spec_path = specs / f"w{number}.json"
            workload.spec_path.write_bytes(daggy_spec_bytes(workload.dag, "dagbench"))
            workload.makefile_path = specs / f"w{number}.mk"
            workload.makefile_path.write_text(makefile(workload.dag))
            for runner in workload.runners:
                reason = self.unavailable(runner, workload)
                if reason:
                    self.cell(workload.key, runner).skipped = reason

    def unavailable(self, runner: str, workload: Workload) -> str | None:
        if runner == "make" and not shutil.which("make"):
            return "make is not installed"
        if runner == "luigi":
            if _version("luigi") == "not installed":
                return "luigi is not installed (pip install -e '.[bench]')"
            if len(workload.dag) > LUIGI_MAX_TASKS and not self.options.full:
                return f"skipped above {LUIGI_MAX_TASKS:,} tasks (--full runs it)"
        if runner == "daggyd-redis" and self.start_redis() is None:
            return "redis-server is not installed"
        return None

    def start_redis(self):
        if self.redis is None:
            from redis_harness import RedisNotInstalled, RedisServer
            try:
                server = RedisServer(self.root / "redis", appendonly=True)
            except RedisNotInstalled:
                return None
            self.stack.callback(server.cleanup)
            self.stack.callback(server.stop)
            server.start()
            self.redis = server
        return self.redis

    def directory(self, name: str) -> Path:
        path = self.root / name
        path.mkdir(parents=True)
        return path

    def discard(self, path: Path) -> None:
        if not self.options.keep:
            shutil.rmtree(path, ignore_errors=True)

    # -- the runners of W1–W4

    def run_floor(self, workload: Workload, round_: int) -> dict:
        _, out, _ = run_process([PYTHON, str(BENCH / "floor.py"), str(workload.spec_path),
                                 "--workers", str(workload.workers)],
                                self.root, workload.timeout)
        result = json.loads(out)
        return {"seconds": result["seconds"], "gap_ms": result["gapMedianMs"],
                "cpu_seconds": result["cpuSeconds"]}

    def run_make(self, workload: Workload, round_: int) -> dict:
        env = {key: value for key, value in os.environ.items()
               if key not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
        seconds, _, _ = run_process(["make", "-s", f"-j{workload.workers}", "-f",
                                     str(workload.makefile_path), "all"],
                                    self.root, workload.timeout, env)
        return {"seconds": seconds}

    def run_luigi(self, workload: Workload, round_: int) -> dict:
        markers = self.directory(f"luigi-{round_}-{workload.spec_path.stem}")
        try:
            _, out, _ = run_process([PYTHON, str(BENCH / "_luigi_runner.py"),
                                     str(workload.spec_path), "--workers",
                                     str(workload.workers), "--markers", str(markers)],
                                    markers, 60 + len(workload.dag) * 0.5)
        finally:
            self.discard(markers)
        return {"seconds": json.loads(out)["seconds"]}

    def run_daggyd(self, workload: Workload, round_: int, redis: bool = False) -> dict:
        name = f"daggyd{'-redis' if redis else ''}-{round_}-{workload.spec_path.stem}"
        directory = self.directory(name)
        if redis:
            logger = {"name": "RedisLogger",
                      "config": {"host": self.redis.host, "port": self.redis.port,
                                 "prefix": f"dagbench-{name}"}}
        else:
            logger = {"name": "OStreamLogger",
                      "config": {"file": str(directory / "events.jsonl")}}
        settings = _daggyd.forking_settings(workload.workers, logger)
        return self.measure_daggyd(directory, settings, workload.spec_path.read_bytes(),
                                   workload.timeout, workload.dag)

    def measure_daggyd(self, directory: Path, settings: dict, spec: bytes, timeout: float,
                       dag: Dag | None, stop_seconds: float = 30) -> dict:
        daemon = _daggyd.start(directory, settings)
        client = Client(daemon.port)
        values: dict[str, Any] = {}
        try:
            run = _daggyd.submit_and_wait(client, daemon.process.popen.pid, spec, timeout)
            values = {"seconds": run.seconds, "post_seconds": run.post_seconds,
                      "cpu_seconds": run.cpu_seconds, "rss_mib": run.peak_rss_mib}
            if dag is not None:
                read_seconds, _ = _daggyd.timed_get(client, f"/v1/dagrun/{run.run_id}")
                problems, gap = _daggyd.check_order(
                    client.json("GET", f"/v1/dagrun/{run.run_id}"), dag)
                values.update(gap_ms=gap, get_run_seconds=read_seconds)
                if problems:
                    raise BenchError("; ".join(problems))
        finally:
            client.close()
            notes, values["stop_seconds"] = _daggyd.stop(daemon, stop_seconds)
            self.discard(directory)
        if notes:
            raise Flawed("; ".join(notes), values)
        return values

    # -- S1, A1, L1

    def s1_cases(self) -> list[tuple[str, Callable[[], bytes], int]]:
        cases = []
        for layers, width in self.sizes.s1_lattices:
            tasks = layers * width
            cases.append((f"S1 lattice {count(tasks)} ({layers}×{width})",
                          lambda layers=layers, width=width: daggy_spec_bytes(
                              lattice(layers, width, TRUE), "dagbench-S1"), tasks))
        values = self.sizes.s1_parameter
        cases.append((f"S1 parameter ×{count(values)}",
                      lambda: parameter_spec_bytes(values, "dagbench-S1"), values))
        return cases

    def run_s1(self, make_spec: Callable[[], bytes], tasks: int, round_: int,
               label: str) -> dict:
        spec = make_spec()
        directory = self.directory(f"s1-{round_}-{tasks}-{len(spec)}")
        settings = _daggyd.noop_settings(
            {"name": "OStreamLogger", "config": {"file": str(directory / "events.jsonl")}})
        spec_mib = len(spec) / 2**20
        try:
            values = self.measure_daggyd(directory, settings, spec, 120 + tasks * 0.002, None,
                                         stop_seconds=60 + tasks * 0.0002)
        except Flawed as flawed:
            flawed.values["spec_mib"] = spec_mib
            raise
        values["spec_mib"] = spec_mib
        return values

    def run_a1(self, round_: int) -> dict:
        tasks, seconds = self.sizes.a1_tasks, self.sizes.a1_seconds
        directory = self.directory(f"a1-{round_}")
        settings = _daggyd.forking_settings(
            2, {"name": "OStreamLogger", "config": {"file": str(directory / "events.jsonl")}})
        daemon = _daggyd.start(directory, settings)
        client = Client(daemon.port)
        values: dict[str, Any] = {}
        try:
            spec = daggy_spec_bytes(independent(tasks, TRUE), "dagbench-A1")
            began = time.monotonic()
            run_id = client.json("POST", "/v1/dagrun", spec)["runID"]
            for label, path in (("state", f"/v1/dagrun/{run_id}/state"),
                                ("list", "/v1/dagruns")):
                result = _daggyd.load(daemon.port, path, seconds, A1_CONNECTIONS)
                state = client.json("GET", f"/v1/dagrun/{run_id}/state")
                values.update({f"{label}_rps": result.requests_per_second,
                               f"{label}_errors": result.errors,
                               f"{label}_p50_ms": result.p50_ms,
                               f"{label}_p99_ms": result.p99_ms,
                               f"{label}_running_after": state["state"] == "RUNNING",
                               "tool": result.tool})
            deadline = began + 120 + tasks * 0.05
            while client.json("GET", f"/v1/dagrun/{run_id}/state")["state"] != "COMPLETED":
                if time.monotonic() > deadline:
                    raise BenchError(f"the A1 run was not COMPLETED after"
                                     f" {deadline - began:.0f} s")
                time.sleep(_daggyd.POLL_SECONDS)
            values["run_seconds"] = time.monotonic() - began
            reads = [_daggyd.timed_get(client, f"/v1/dagrun/{run_id}") for _ in range(3)]
            values["get_run_seconds"] = statistics.median(seconds for seconds, _ in reads)
            values["get_run_mib"] = reads[0][1] / 2**20
            values["rss_mib"] = _daggyd.peak_rss_mib(daemon.process.popen.pid)
        finally:
            client.close()
            notes, values["stop_seconds"] = _daggyd.stop(daemon)
            self.discard(directory)
        if notes:
            raise Flawed("; ".join(notes), values)
        return values

    def start_cluster(self):
        if self.cluster is None:
            from slurm_harness import SlurmCluster, SlurmNotInstalled
            try:
                cluster = SlurmCluster(min_job_age=3600)
            except SlurmNotInstalled as missing:
                raise BenchError(str(missing).split(". ")[0]) from None

            def stop_cluster() -> None:
                if cluster.running:
                    from slurm_jobs import wait_for_job_processes
                    wait_for_job_processes(cluster)
                leftovers = cluster.stop()
                if leftovers:
                    self.notes.append(f"stopping the Slurm cluster had to kill {leftovers}")
                shutil.rmtree(cluster.directory, ignore_errors=True)

            self.stack.callback(stop_cluster)
            print(f"  starting a private Slurm cluster in {cluster.directory}",
                  file=sys.stderr, flush=True)
            cluster.start()
            self.cluster = cluster
        return self.cluster

    def run_l1(self, round_: int) -> dict:
        from _slurm_run import run_on_slurm
        cluster = self.start_cluster()
        directory = self.root / f"l1-{round_}"
        try:
            values = run_on_slurm(cluster, directory, self.sizes.l1_tasks, L1_POLL_SECONDS,
                                  600 + self.sizes.l1_tasks * 0.5, f"r{round_}")
        finally:
            self.discard(directory)
        notes = values.pop("notes")
        if notes:
            raise Flawed("; ".join(notes), values)
        return values

    # -- the rounds

    def measure(self, key: str, runner: str, round_: int, action: Callable[[], dict]) -> None:
        cell = self.cell(key, runner)
        if cell.skipped:
            return
        began = time.monotonic()
        try:
            values = action()
        except Flawed as flawed:
            values = flawed.values
            cell.failures.append(f"round {round_ + 1} (measured): {flawed}")
            print(f"  {key} / {runner}: {flawed}", file=sys.stderr, flush=True)
        except BenchError as error:
            cell.failures.append(f"round {round_ + 1}: {error}")
            print(f"  {key} / {runner}: FAILED {error}", file=sys.stderr, flush=True)
            return
        cell.samples.append(Sample(round_, values))
        shown = values.get("seconds", values.get("run_seconds"))
        print(f"  {key} / {runner}: {shown:.3f} s" if shown is not None else
              f"  {key} / {runner}: done",
              f"({time.monotonic() - began:.0f} s with setup)", file=sys.stderr, flush=True)

    def run(self) -> None:
        runners = {"floor": self.run_floor, "make": self.run_make, "daggyd": self.run_daggyd,
                   "daggyd-redis": lambda w, r: self.run_daggyd(w, r, redis=True),
                   "luigi": self.run_luigi}
        for round_ in range(self.options.repeat):
            print(f"round {round_ + 1} of {self.options.repeat}", file=sys.stderr, flush=True)
            for workload in self.workloads:
                for runner in workload.runners:
                    self.measure(workload.key, runner, round_,
                                 lambda w=workload, r=runner: runners[r](w, round_))
            if "S1" in self.groups:
                for label, make_spec, tasks in self.s1_cases():
                    if tasks >= 1_000_000 and round_ > 0 and not self.options.full:
                        continue  # minutes per run: once, unless --full
                    self.measure(label, "daggyd", round_,
                                 lambda m=make_spec, t=tasks, l=label: self.run_s1(
                                     m, t, round_, l))
            if "A1" in self.groups:
                self.measure("A1", "daggyd", round_, lambda: self.run_a1(round_))
            if "L1" in self.groups:
                self.measure("L1", "daggyd", round_, lambda: self.run_l1(round_))


# -- the report ----------------------------------------------------------------------------


def seconds_text(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"


def ratio_text(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}×"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


@dataclass
class Target:
    what: str
    value: float | None
    limit: float
    unit: str
    at_most: bool = True
    note: str = ""

    def line(self) -> str:
        if self.value is None or (isinstance(self.value, float) and math.isnan(self.value)):
            verdict, shown = "not measured", "–"
        else:
            met = self.value <= self.limit if self.at_most else self.value >= self.limit
            verdict = "met" if met else "MISSED"
            shown = (f"{self.value:.0f}" if abs(self.value) >= 100 else f"{self.value:.3g}"
                     ) + self.unit
            if not met:
                factor = (self.value / self.limit if self.at_most else
                          self.limit / self.value if self.value else math.inf)
                verdict += f" by {factor:.2f}×"
        sign = "≤" if self.at_most else "≥"
        note = f" ({self.note})" if self.note else ""
        return f"| {self.what} | {shown} | {sign} {self.limit:g}{self.unit} | {verdict}{note} |"


def report(bench: Bench, machine: dict[str, Any], wall: float) -> str:
    options, sizes = bench.options, bench.sizes
    out: list[str] = []
    mode = "--quick (1 repetition, small sizes; targets are for the full sizes)" \
        if options.quick else f"{options.repeat} repetitions"
    out.append(f"## dagbench: {mode}, {wall / 60:.1f} min\n")
    out.append(f"ForkingTaskExecutor isolation: {options.isolation or 'auto (the default)'}\n")
    out.append("Machine: " + "; ".join(
        f"{key} {', '.join(value) if isinstance(value, list) else value}"
        for key, value in machine.items() if key != "busy processes at start"))
    busy = machine["busy processes at start"]
    out.append("\nOther processes busy at start (CPU over 1 s): "
               + ("; ".join(busy) if busy else "none") + "\n")
    targets: list[Target] = []
    cells = bench.cells

    def cell(key: str, runner: str) -> Cell:
        return cells.get((key, runner), Cell())

    def shown(key: str, runner: str, name: str = "seconds") -> str:
        c = cell(key, runner)
        if c.skipped:
            return "skipped"
        value = c.median(name)
        if value is None:
            return "failed" if c.failures else "–"
        return seconds_text(value)

    forking = [w for w in bench.workloads]
    if forking:
        rows = []
        for w in forking:
            daggyd, floor, make, luigi = (cell(w.key, r) for r in
                                          ("daggyd", "floor", "make", "luigi"))
            luigi_ratio = paired_ratio(luigi, daggyd)
            rows.append([
                w.key, f"{len(w.dag):,}", str(w.workers), shown(w.key, "floor"),
                shown(w.key, "make"), shown(w.key, "daggyd"),
                ratio_text(paired_ratio(daggyd, floor)), ratio_text(paired_ratio(daggyd, make)),
                shown(w.key, "luigi"), ratio_text(luigi_ratio),
                seconds_text(daggyd.median("post_seconds")),
                seconds_text(floor.median("cpu_seconds")),
                seconds_text(daggyd.median("cpu_seconds")),
                f"{daggyd.median('rss_mib'):.0f}" if daggyd.median("rss_mib") else "–",
            ])
        out.append("### W1–W4: seconds, medians; ratios are medians of paired runs\n")
        out.append(table(["workload", "tasks", "workers", "floor s", "make s", "daggyd s",
                          "daggyd/floor", "daggyd/make", "Luigi s", "Luigi/daggyd",
                          "daggyd POST s", "floor CPU s", "daggyd CPU s",
                          "daggyd peak RSS MiB"], rows))
        out.append("")
        for w in forking:
            if w.group in ("W1", "W2", "W3"):
                daggyd = cell(w.key, "daggyd")
                targets.append(Target(f"{w.key}: daggyd/floor",
                                      paired_ratio(daggyd, cell(w.key, "floor")), 1.3, "×"))
                targets.append(Target(f"{w.key}: daggyd/make",
                                      paired_ratio(daggyd, cell(w.key, "make")), 3, "×"))
                luigi = cell(w.key, "luigi")
                targets.append(Target(f"{w.key}: Luigi/daggyd", paired_ratio(luigi, daggyd),
                                      10, "×", at_most=False, note=luigi.skipped or ""))
            if w.group == "W2":
                daggyd = cell(w.key, "daggyd")
                out.append(f"W2 gap, parent stop → child start (median over the chain, median"
                           f" over repetitions): daggyd {shown(w.key, 'daggyd', 'gap_ms')} ms,"
                           f" floor {shown(w.key, 'floor', 'gap_ms')} ms\n")
                targets.append(Target("W2: parent stop → child start, median",
                                      daggyd.median("gap_ms"), 2, " ms"))
            if w.group == "W4":
                tasks, workers, each = sizes.w4
                ideal = math.ceil(tasks / workers) * each
                targets.append(Target(f"{w.key}, {workers} workers: daggyd",
                                      cell(w.key, "daggyd").median("seconds"),
                                      round(ideal * 1.1, 3), " s",
                                      note=f"ideal {ideal:g} s"))
        redis_rows = []
        for w in forking:
            if "daggyd-redis" in w.runners:
                ostream, redis = cell(w.key, "daggyd"), cell(w.key, "daggyd-redis")
                ratio = paired_ratio(redis, ostream)
                redis_rows.append([w.key, shown(w.key, "daggyd"), shown(w.key, "daggyd-redis"),
                                   ratio_text(ratio),
                                   f"{redis.median('rss_mib'):.0f}"
                                   if redis.median("rss_mib") else "–"])
                targets.append(Target(f"W5 {w.key}: RedisLogger/OStreamLogger", ratio, 1.3,
                                      "×", note=redis.skipped or ""))
        if redis_rows:
            out.append("### W5: RedisLogger vs OStreamLogger (same daemon settings)\n")
            out.append(table(["workload", "OStreamLogger s", "RedisLogger s", "Redis/OStream",
                              "Redis daggyd peak RSS MiB"], redis_rows))
            out.append("")

    if "S1" in bench.groups:
        rows = []
        for label, _, tasks in bench.s1_cases():
            c = cell(label, "daggyd")
            rss = c.median("rss_mib")
            rows.append([label, f"{tasks:,}", f"{len(c.samples)}",
                         f"{c.median('spec_mib'):.1f}" if c.median("spec_mib") else "–",
                         shown(label, "daggyd", "post_seconds"), shown(label, "daggyd"),
                         shown(label, "daggyd", "cpu_seconds"),
                         f"{rss:.0f}" if rss else "–",
                         shown(label, "daggyd", "stop_seconds")])
            big = tasks >= 1_000_000
            targets.append(Target(f"{label}: POST → COMPLETED", c.median("seconds"),
                                  120 if big else 10, " s", note="aim" if big else ""))
            targets.append(Target(f"{label}: daggyd peak RSS", rss,
                                  6144 if big else 1024, " MiB", note="aim" if big else ""))
        out.append("### S1: NoopTaskExecutor, OStreamLogger to a file\n")
        out.append(table(["case", "tasks", "runs", "spec MiB", "POST s", "POST→COMPLETED s",
                          "daggyd CPU s", "daggyd peak RSS MiB", "SIGTERM→exit s"], rows))
        out.append("")

    if "A1" in bench.groups:
        c = cell("A1", "daggyd")
        if c.samples:
            tool = c.samples[0].values["tool"]
            rows = []
            for label, path in (("state", "GET /v1/dagrun/{id}/state"),
                                ("list", "GET /v1/dagruns")):
                running = all(s.values[f"{label}_running_after"] for s in c.samples)
                rows.append([path, f"{c.median(f'{label}_rps'):.0f}",
                             f"{sum(c.values(f'{label}_errors')):.0f}",
                             f"{c.median(f'{label}_p50_ms'):.2f}",
                             f"{c.median(f'{label}_p99_ms'):.2f}",
                             "yes" if running else "no"])
            out.append(f"### A1: API under load ({tool}, {A1_CONNECTIONS} connections,"
                       f" {sizes.a1_seconds:g} s per endpoint) while a"
                       f" {sizes.a1_tasks:,}-task /bin/true run executes (2 workers)\n")
            out.append(table(["request", "requests/s", "errors", "p50 ms", "p99 ms",
                              "run still RUNNING after"], rows))
            out.append(f"\nThen GET /v1/dagrun/{{id}} of the finished {sizes.a1_tasks:,}-task"
                       f" run: {seconds_text(c.median('get_run_seconds'))} s for"
                       f" {c.median('get_run_mib'):.1f} MiB; the run took"
                       f" {seconds_text(c.median('run_seconds'))} s under that load\n")
            targets.append(Target("A1: /state requests/s during the run", c.median("state_rps"),
                                  3000, "/s", at_most=False,
                                  note=f"errors {sum(c.values('state_errors')):.0f}"))
            targets.append(Target("A1: /state errors", sum(c.values("state_errors")), 0, ""))
            targets.append(Target(f"A1: GET /v1/dagrun/{{id}}, {sizes.a1_tasks:,} tasks",
                                  c.median("get_run_seconds"), 0.5, " s"))
        else:
            targets.append(Target("A1", None, 0, ""))

    if "L1" in bench.groups:
        c = cell("L1", "daggyd")
        if c.samples:
            def med(name: str, digits: int = 1) -> str:
                value = c.median(name)
                return "–" if value is None else f"{value:.{digits}f}"
            ticks = c.median("ticks")
            per_tick = [s.values["squeue_calls"] / s.values["ticks"] for s in c.samples]
            rows = [
                ["POST → COMPLETED", f"{med('seconds', 1)} s"],
                ["sbatch calls, rate", f"{med('sbatch_calls', 0)}, {med('sbatch_per_second')}"
                                       " /s"],
                ["POST → last sbatch", f"{med('post_to_last_sbatch')} s"],
                ["squeue calls / poll ticks", f"{med('squeue_calls', 0)} / {ticks:.0f}"
                                              f" = {statistics.median(per_tick):.2f}"],
                ["squeue calls less than half a tick apart",
                 med("squeue_calls_closer_than_half_a_tick", 0)],
                ["most job ids in one squeue call", med("max_ids_per_squeue", 0)],
                ["sacct calls", med("sacct_calls", 0)],
                ["daggyd CPU per tick, mean / max", f"{med('cpu_per_tick_mean_ms')} /"
                                                    f" {med('cpu_per_tick_max_ms')} ms"],
                ["daggyd CPU per tick while tracking the most jobs",
                 f"{med('cpu_per_tick_most_tracked_ms')} ms"],
                ["daggyd CPU, whole run", f"{med('cpu_seconds', 2)} s"],
                ["daggyd peak RSS", f"{med('peak_rss_mib', 0)} MiB"],
            ]
            out.append(f"### L1: {sizes.l1_tasks:,} /bin/true on a private Slurm cluster"
                       f" (16-CPU node, pollIntervalSeconds {L1_POLL_SECONDS:g},"
                       " sacctCompletion)\n")
            out.append(table(["L1", "median"], rows))
            out.append("")
            targets.append(Target("L1: squeue calls per poll tick",
                                  statistics.median(per_tick), 1.05, ""))
            targets.append(Target("L1: daggyd CPU per tick (most jobs tracked)",
                                  c.median("cpu_per_tick_most_tracked_ms"), 50, " ms",
                                  note=f"at {med('max_ids_per_squeue', 0)} jobs"))
            targets.append(Target("L1: sbatch submissions per second",
                                  c.median("sbatch_per_second"), 100, "/s", at_most=False))
        else:
            targets.append(Target("L1", None, 0, ""))

    out.append("### Targets (issue 5)\n")
    out.append("| target | measured | limit | verdict |\n|---|---:|---:|---|")
    out.extend(target.line() for target in targets)
    problems = [f"{key} / {runner}: {failure}" for (key, runner), c in cells.items()
                for failure in c.failures]
    skipped = sorted({f"{key} / {runner}: {c.skipped}" for (key, runner), c in cells.items()
                      if c.skipped})
    if skipped or problems or bench.notes:
        out.append("\nNotes:")
        out.extend(f"- {line}" for line in skipped + problems + bench.notes)
    load_average = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    out.append(f"\nLoad average at the end: {load_average}")
    return "\n".join(out)


def parse_only(text: str | None) -> list[str]:
    if not text:
        return list(GROUPS)
    chosen = [part.strip().upper() for part in text.split(",") if part.strip()]
    unknown = [part for part in chosen if part not in GROUPS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown workload(s) {', '.join(unknown)};"
                                         f" choose from {', '.join(GROUPS)}")
    return chosen


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", type=parse_only, default=list(GROUPS),
                        help=f"comma-separated workloads ({','.join(GROUPS)}); default all")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions (default 3)")
    parser.add_argument("--quick", action="store_true",
                        help="1 repetition of smaller sizes, for trying the bench out")
    parser.add_argument("--full", action="store_true",
                        help="also run Luigi above 1,000 tasks, and the 1,000,000-task S1 run"
                        " in every repetition (by default only in the first)")
    parser.add_argument("--json", type=Path, help="also write every measurement to FILE")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--isolation", choices=("auto", "cgroup", "subreaper", "session"),
                        help="the ForkingTaskExecutor's isolation (default: daggyd's, auto)")
    options = parser.parse_args()
    _daggyd.ISOLATION = options.isolation
    if options.quick:
        options.repeat = 1
    if options.repeat < 1:
        parser.error("--repeat must be at least 1")

    # SIGTERM and SIGHUP unwind like Ctrl-C, so that everything started is stopped; SIGINT
    # interrupts even when the bench was started with it ignored (a background job).
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, lambda number, frame: sys.exit(128 + number))
    signal.signal(signal.SIGINT, signal.default_int_handler)

    machine = machine_info()
    began = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="daggy-dagbench-", dir="/tmp"))
    root.chmod(0o755)
    with contextlib.ExitStack() as stack:
        if options.keep:
            stack.callback(lambda: print(f"kept {root}", file=sys.stderr))
        else:
            stack.callback(shutil.rmtree, root, ignore_errors=True)
        bench = Bench(options, root, stack)
        bench.plan()
        bench.run()
    text = report(bench, machine, time.monotonic() - began)
    print(text)
    if options.json:
        options.json.write_text(json.dumps({
            "machine": machine, "options": {k: str(v) for k, v in vars(options).items()},
            "cells": [{"workload": key, "runner": runner, "skipped": c.skipped,
                       "failures": c.failures,
                       "samples": [{"round": s.round, **s.values} for s in c.samples]}
                      for (key, runner), c in bench.cells.items()]}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; everything the bench started is stopped", file=sys.stderr)
        sys.exit(130)
