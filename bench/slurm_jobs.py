#!/usr/bin/env python3
"""Submit rate, submit→RUNNING latency and daemon CPU per poll tick of the SlurmTaskExecutor
with about 1,000 tracked jobs, on a private single-node Slurm cluster.

    /work/venv/bin/python bench/slurm_jobs.py [--jobs 1000] [--poll 1.0] [--cpus 16]
        [--sleep 60] [--ticks 20] [--max-parallel-submits N] [--keep]

Starts its own Slurm cluster (``tests/integration/slurm_harness.py``: munged, slurmctld and
slurmd on free loopback ports in a temporary directory) with a node of ``--cpus`` CPUs, and
a daggyd with the SlurmTaskExecutor (``sacctCompletion``, ``pollIntervalSeconds`` =
``--poll``) whose Slurm commands are tiny bash wrappers that append one line per call (the
time, and what the call was about) to a log and ``exec`` the real program.  It submits one
run of ``--jobs`` independent tasks, each ``sleep --sleep`` (printing its start time first),
so that the node runs ``--cpus`` jobs and the rest stay PENDING: the daemon tracks about
``--jobs`` jobs at once.  It measures

1. the submit rate: from just before the POST until ``GET /v1/dagrun/{id}`` (every 0.5 s)
   shows a Slurm job id for every task; and sbatch calls per second from the wrapper log;
2. submit→RUNNING: for the first ``--cpus`` jobs (the ones that did not wait for a free CPU),
   Slurm's own start − submit time (whole seconds) and, to the millisecond, the time from the
   sbatch call to the job's command printing its start time; and POST → first job running;
3. the daemon's CPU per poll tick: utime+stime of daggyd (``/proc/<pid>/stat``) over
   ``--ticks`` poll ticks after every job was submitted, divided by the ``squeue`` calls in
   that window, and the number of job ids per ``squeue`` call.  Nothing talks to the daemon
   during that window.

Then it kills the run (``DELETE /v1/dagrun/{id}``), waits until the cluster has none of the
run's jobs queued or running, checks that no task was submitted twice and that Slurm has no
job daggyd does not know about, stops daggyd with SIGTERM and prints the results with the
machine's CPU count and model and the Slurm version.  Everything it started is stopped and its
temporary directories are removed (also on Ctrl-C or an error; ``--keep`` keeps the files).

Needs Slurm and munge (``./scripts/test`` installs Debian's packages) and bash.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "integration"))

from daemon_harness import (  # noqa: E402
    START_SECONDS,
    Daemon,
    Process,
    answers,
    daggyd,
    free_port,
    request,
    wait_until,
    write_config,
)
from slurm_harness import SlurmCluster  # noqa: E402

from _daggyd import cpu_seconds  # noqa: E402

#: How often the submit phase reads the run (each read serializes every task: keep it rare).
RUN_POLL_SECONDS = 0.5
#: Job records stay in ``squeue -t all`` this long after the job ended; longer than a bench.
MIN_JOB_AGE = 3600
JOB_NAME_PREFIX = "bench"
WRAPPED = ("sbatch", "squeue", "sacct", "scontrol", "scancel")
#: Slurm states in which a job holds or waits for a CPU.
QUEUED_STATES = "PENDING,RUNNING,CONFIGURING,COMPLETING,SUSPENDED,REQUEUED"
NEVER_STARTED = frozenset({"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED"})


# -- command wrappers ----------------------------------------------------------------------

#: What each wrapper writes after the time: the job name for sbatch, the number of job ids
#: for squeue, sacct (after ``-j``; "user" when squeue lists by ``-u``) and scancel.
_WRAPPER = """#!/bin/bash
what=-
previous=
set -f
for argument in "$@"; do
    case {mode}:$previous:$argument in
        sbatch:*:--job-name=*) what=${{argument#--job-name=}} ;;
        ids:-j:*) IFS=, parts=($argument); what=${{#parts[@]}} ;;
        ids:-u:*) what=user ;;
        args:*) what=$(( ${{what/-/0}} + 1 )) ;;
    esac
    previous=$argument
done
printf '%s %s\\n' "$EPOCHREALTIME" "$what" >> {log}
exec {real} "$@"
"""
_MODES = {"sbatch": "sbatch", "squeue": "ids", "sacct": "ids", "scancel": "args",
          "scontrol": "none"}


def write_wrappers(directory: Path, programs: dict[str, str]) -> dict[str, Path]:
    """One wrapper script per Slurm command; returns the log path of each."""
    directory.mkdir(mode=0o755)
    logs = {}
    for name in WRAPPED:
        logs[name] = directory / f"{name}.calls"
        logs[name].touch()
        script = directory / name
        script.write_text(_WRAPPER.format(mode=_MODES[name], log=logs[name],
                                          real=programs[name]))
        script.chmod(0o755)
    return logs


@dataclass
class Call:
    time: float
    what: str


def read_calls(log: Path) -> list[Call]:
    calls = []
    for line in log.read_text().splitlines():
        stamp, _, what = line.partition(" ")
        if stamp:
            calls.append(Call(float(stamp), what))
    return calls


# -- the daemon ----------------------------------------------------------------------------


def start_slurm_daggyd(directory: Path, cluster: SlurmCluster, executor_config: dict,
                       source: Path | None) -> Daemon:
    """A daggyd (OStreamLogger to a file) with the SlurmTaskExecutor on ``cluster``; with
    ``source``, the ``daggy`` package is imported from that directory."""
    directory.mkdir()
    port = free_port()
    config = write_config(directory, port, "SlurmTaskExecutor", executor_config,
                          logger={"name": "OStreamLogger", "config": {"file": "events.jsonl"}})
    env = dict(cluster.env)
    if source is not None:
        # PYTHONPATH comes before the editable install's import hook.
        env["PYTHONPATH"] = str(source)
    process = Process(daggyd("--config", str(config)), directory, env)
    daemon = Daemon("daggyd", port, directory, process, directory / "stderr.txt", 0)
    try:
        wait_until(lambda: answers(port) or process.popen.poll() is not None,
                   "daggyd to answer /ready", START_SECONDS)
        assert process.popen.poll() is None, (
            f"daggyd exited with {process.popen.returncode}:\n{daemon.log[-5000:]}")
    except BaseException:
        process.kill()
        raise
    return daemon


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def spec(jobs: int, sleep: float) -> dict:
    width = len(str(jobs - 1))
    # The job prints its start time to the millisecond (Slurm's own times are whole seconds).
    command = ["bash", "-c", f'echo "$EPOCHREALTIME"; exec sleep {sleep:g}']
    return {"tag": "bench-slurm",
            "tasks": {f"t{i:0{width}d}": {"job": {"command": command}} for i in range(jobs)}}


# -- measurement ---------------------------------------------------------------------------


@dataclass
class SlurmJob:
    job_id: str
    name: str
    state: str
    submit: str
    start: str


def slurm_jobs(cluster: SlurmCluster, name_prefix: str, states: str = "all") -> list[SlurmJob]:
    """Every job of this benchmark Slurm still knows (one squeue call)."""
    listed = cluster.run("squeue", "-h", "-t", states, "-o", "%i|%j|%T|%V|%S").stdout
    jobs = [SlurmJob(*line.split("|")) for line in listed.splitlines() if line.strip()]
    return [job for job in jobs if job.name.startswith(name_prefix)]


def slurm_seconds(text: str) -> float:
    """A Slurm timestamp (local time, whole seconds) as epoch seconds."""
    return time.mktime(time.strptime(text, "%Y-%m-%dT%H:%M:%S"))


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(fraction * len(ordered) + 0.5) - 1))]


def wait_for_calls(log: Path, after: float, count: int, seconds: float) -> list[Call]:
    """The calls logged after ``after`` once there are ``count`` of them (or the deadline)."""
    deadline = time.monotonic() + seconds
    while True:
        calls = [call for call in read_calls(log) if call.time > after]
        if len(calls) >= count or time.monotonic() > deadline:
            return calls
        time.sleep(0.02)


@dataclass
class Results:
    rows: list[tuple[str, str]] = field(default_factory=list)
    odd: list[str] = field(default_factory=list)

    def add(self, what: str, value: str) -> None:
        self.rows.append((what, value))
        print(f"  {what}: {value}", file=sys.stderr, flush=True)


def machine_info(cluster: SlurmCluster) -> list[tuple[str, str]]:
    model = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    slurm = cluster.run("sbatch", "--version", check=False).stdout.strip()
    ours = {process.pid for process in cluster._children.values()}
    others = sum(1 for entry in Path("/proc").iterdir()
                 if entry.name.isdigit() and int(entry.name) not in ours
                 and _comm(entry) == "slurmctld")
    return [("CPUs (nproc)", str(len(os.sched_getaffinity(0)))), ("CPU model", model),
            ("Slurm", slurm), ("load average at start", Path("/proc/loadavg").read_text()
                               .split()[0]),
            ("other slurmctld processes on the machine", str(others))]


def _comm(entry: Path) -> str:
    try:
        return (entry / "comm").read_text().strip()
    except OSError:
        return ""


def wait_for_job_processes(cluster: SlurmCluster, seconds: float = 30) -> None:
    """Give cancelled jobs' processes (slurmstepd) time to exit before the cluster stops,
    which would otherwise kill them as leftovers."""
    def no_job_processes() -> bool:
        listing = cluster.run("scontrol", "listpids", check=False, timeout=10).stdout
        return not any(line.split()[:1] and line.split()[0].isdigit()
                       for line in listing.splitlines()[1:])
    try:
        wait_until(no_job_processes, "job processes to exit", seconds)
    except (AssertionError, OSError, subprocess.SubprocessError):
        pass  # cluster.stop() kills what is left


def run_benchmark(options: argparse.Namespace, root: Path, cluster: SlurmCluster,
                  results: Results) -> None:
    logs = write_wrappers(root / "bin", cluster.programs)
    output_dir = root / "output"
    output_dir.mkdir(mode=0o755)
    output_dir.chmod(0o755)
    name_prefix = f"{JOB_NAME_PREFIX}{os.getpid()}"
    executor_config = {
        "sacctCompletion": True,
        "pollIntervalSeconds": options.poll,
        "outputDir": str(output_dir),
        "jobNamePrefix": name_prefix,
        "commandPaths": {name: str(root / "bin" / name) for name in WRAPPED},
    }
    if options.max_parallel_submits is not None:
        executor_config["maxParallelSubmits"] = options.max_parallel_submits
    daemon = start_slurm_daggyd(root / "daggyd", cluster, executor_config,
                                options.daggy_source)
    pid = daemon.process.popen.pid
    try:
        measure(options, daemon, pid, cluster, logs, output_dir, name_prefix, results)
    finally:
        stopping = time.monotonic()
        status = daemon.stop()
        results.add("daggyd SIGTERM → exit",
                    f"{time.monotonic() - stopping:.2f} s, status {status}")
        problems = daemon.new_log_errors(0)
        warnings = [line for line in daemon.log.splitlines() if "#warn]" in line]
        if problems or warnings:
            results.odd.append(f"daggyd logged {len(problems)} error and {len(warnings)} warning"
                               " lines; first ones:\n    "
                               + "\n    ".join((problems + warnings)[:6]))
        if status != 0:
            results.odd.append(f"daggyd exited with {status} after SIGTERM")


def measure(options: argparse.Namespace, daemon: Daemon, pid: int, cluster: SlurmCluster,
            logs: dict[str, Path], output_dir: Path, name_prefix: str,
            results: Results) -> None:
    jobs = options.jobs
    document = spec(jobs, options.sleep)
    cpu_at_start = cpu_seconds(pid)

    # 1. submit
    posted = time.time()
    run_id = request(daemon.port, "POST", "/v1/dagrun", document)["runID"]
    post_seconds = time.time() - posted
    deadline = time.monotonic() + options.submit_seconds
    read_latencies = []
    while True:
        before = time.time()
        run = daemon.run(run_id)
        read_latencies.append(time.time() - before)
        states = run["taskExecutorStates"]
        job_ids = {name: state["jobId"] for name, state in states.items()
                   if isinstance(state, dict) and state.get("jobId")}
        if len(job_ids) == jobs:
            all_submitted = time.time()
            break
        if run["state"] in ("COMPLETED", "ERRORED", "KILLED"):
            raise AssertionError(f"run {run_id} ended {run['state']} with {len(job_ids)} of"
                                 f" {jobs} tasks submitted: {run['taskCounts']}")
        if time.monotonic() > deadline:
            raise AssertionError(f"only {len(job_ids)} of {jobs} tasks had a Slurm job id"
                                 f" after {options.submit_seconds}s")
        time.sleep(RUN_POLL_SECONDS)
    cpu_after_submit = cpu_seconds(pid)
    submit_seconds = all_submitted - posted
    sbatch_calls = read_calls(logs["sbatch"])
    results.add("POST /v1/dagrun", f"{post_seconds:.2f} s")
    results.add(f"POST → all {jobs} tasks have a job id",
                f"{submit_seconds:.1f} s = {jobs / submit_seconds:.1f} jobs/s"
                f" (run read every {RUN_POLL_SECONDS} s)")
    if sbatch_calls:
        first_call, last_call = sbatch_calls[0].time, sbatch_calls[-1].time
        span = last_call - first_call
        rate = f" = {(len(sbatch_calls) - 1) / span:.1f} sbatch starts/s" if span > 0 else ""
        results.add("sbatch calls", f"{len(sbatch_calls)}; first {first_call - posted:.2f} s"
                    f" after POST, last {last_call - posted:.1f} s after POST{rate}")
    results.add("GET /v1/dagrun/{id} during submission",
                f"median {statistics.median(read_latencies) * 1000:.0f} ms,"
                f" max {max(read_latencies) * 1000:.0f} ms ({len(read_latencies)} reads)")
    results.add("daggyd CPU during submission",
                f"{cpu_after_submit - cpu_at_start:.1f} s"
                f" = {(cpu_after_submit - cpu_at_start) / jobs * 1000:.1f} ms per job")
    if len(set(job_ids.values())) != jobs:
        results.odd.append(f"{jobs - len(set(job_ids.values()))} job ids are shared by tasks")
    if len(sbatch_calls) != jobs:
        results.odd.append(f"{len(sbatch_calls)} sbatch calls for {jobs} tasks (retries?)")

    # 3. daemon CPU per tick: align both readings half a poll interval after a squeue call
    # starts, so the window holds whole ticks; no HTTP request to the daemon meanwhile.
    half = options.poll / 2
    tick_wait = options.poll * 4 + 60
    [first] = wait_for_calls(logs["squeue"], all_submitted, 1, tick_wait)[:1] or [None]
    if first is None:
        raise AssertionError("daggyd did not run squeue after the submission")
    time.sleep(max(0.0, first.time + half - time.time()))
    window_start, cpu_start = time.time(), cpu_seconds(pid)
    calls = wait_for_calls(logs["squeue"], window_start, options.ticks,
                           options.ticks * options.poll * 4 + 60)
    if calls:
        time.sleep(max(0.0, calls[-1].time + half - time.time()))
    window_end, cpu_end = time.time(), cpu_seconds(pid)
    rss = rss_mib(pid)
    ticks = [call for call in read_calls(logs["squeue"])
             if window_start < call.time <= window_end]
    cpu = cpu_end - cpu_start
    tracked = [int(call.what) for call in ticks if call.what.isdigit()]
    others = {name: sum(window_start < call.time <= window_end
                        for call in read_calls(logs[name]))
              for name in ("sbatch", "sacct", "scontrol", "scancel")}
    results.add("window", f"{window_end - window_start:.1f} s from {window_start - posted:.1f} s"
                f" after POST, {len(ticks)} squeue calls (= ticks)")
    if ticks:
        share = cpu / (window_end - window_start) * 100
        results.add("daggyd CPU per tick", f"{cpu / len(ticks) * 1000:.1f} ms ({cpu:.2f} s CPU"
                    f" in the window, {share:.1f} % of one core)")
    if tracked:
        results.add("job ids per squeue call",
                    f"min {min(tracked)}, median {statistics.median(tracked):.0f},"
                    f" max {max(tracked)}")
    results.add("other Slurm calls in the window",
                ", ".join(f"{name} {count}" for name, count in others.items()))
    results.add("daggyd RSS", f"{rss:.0f} MiB")
    if others["sacct"] or others["sbatch"]:
        results.odd.append("the CPU window is not clean: jobs were submitted or finished in it"
                           " (use a longer --sleep or fewer --ticks)")

    # What one read of the run costs the daemon, to tell it apart from the submission's CPU.
    before = cpu_seconds(pid)
    for _ in range(5):
        daemon.run(run_id)
    read_cpu = (cpu_seconds(pid) - before) / 5
    results.add("daggyd CPU for one GET /v1/dagrun/{id}",
                f"{read_cpu * 1000:.0f} ms ({len(read_latencies)} such reads during submission)")

    # 2. submit→RUNNING, from Slurm's records and the jobs' own start times
    listed = {job.job_id: job for job in slurm_jobs(cluster, name_prefix)}
    first_sbatch = {}
    for call in sbatch_calls:
        first_sbatch.setdefault(call.what, call.time)
    run_dir = output_dir / f"run-{run_id}"
    started_at = {}
    for path in run_dir.glob("*.out"):
        text = path.read_text().strip()
        if text:
            started_at[path.name.rsplit(".", 2)[1]] = float(text.splitlines()[0])
    earliest = sorted(job_ids.values(), key=int)[:options.cpus]
    no_wait = [listed[job_id] for job_id in earliest
               if job_id in listed and listed[job_id].state not in NEVER_STARTED]
    slurm_latency = [slurm_seconds(job.start) - slurm_seconds(job.submit) for job in no_wait]
    precise = [started_at[job.job_id] - first_sbatch[job.name] for job in no_wait
               if job.job_id in started_at and job.name in first_sbatch]
    results.add(f"first {len(earliest)} jobs started",
                f"{len(no_wait)} (by Slurm), {len(precise)} printed their start time")
    if slurm_latency:
        results.add("Slurm start − submit, first jobs",
                    f"median {statistics.median(slurm_latency):.0f} s,"
                    f" p95 {percentile(slurm_latency, 0.95):.0f} s (whole seconds)")
    if precise:
        results.add("sbatch call → command running, first jobs",
                    f"median {statistics.median(precise) * 1000:.0f} ms,"
                    f" p95 {percentile(precise, 0.95) * 1000:.0f} ms")
    if started_at:
        results.add("POST → first job running", f"{min(started_at.values()) - posted:.2f} s")
    results.add(f"POST → all {jobs} submitted", f"{submit_seconds:.1f} s")

    # duplicates and jobs daggyd does not know about
    by_name: dict[str, list[str]] = {}
    for job in listed.values():
        by_name.setdefault(job.name, []).append(job.job_id)
    doubles = {name: ids for name, ids in by_name.items() if len(ids) > 1}
    unknown = sorted(set(listed) - set(job_ids.values()), key=int)
    if doubles:
        results.odd.append(f"{len(doubles)} tasks have more than one Slurm job, e.g."
                           f" {next(iter(doubles.items()))}")
    if unknown:
        results.odd.append(f"{len(unknown)} Slurm jobs of this run are unknown to daggyd:"
                           f" {unknown[:10]}")

    # kill the run; every job must leave the queue
    killing = time.time()
    request(daemon.port, "DELETE", f"/v1/dagrun/{run_id}")
    try:
        wait_until(lambda: not slurm_jobs(cluster, name_prefix, QUEUED_STATES),
                   "the run's jobs to leave the queue", options.kill_seconds)
        results.add("DELETE → no job of the run queued or running",
                    f"{time.time() - killing:.1f} s")
    except AssertionError:
        left = slurm_jobs(cluster, name_prefix, QUEUED_STATES)
        results.odd.append(f"{len(left)} jobs still queued {options.kill_seconds}s after"
                           f" DELETE, e.g. {[(j.job_id, j.name, j.state) for j in left[:5]]}")
        cluster.run("scancel", *[job.job_id for job in left], check=False)
    wait_until(lambda: daemon.get(f"/v1/dagrun/{run_id}/state")["state"] == "KILLED",
               "the run to be KILLED", options.kill_seconds)
    results.add("DELETE → run KILLED", f"{time.time() - killing:.1f} s")
    scancels = [call for call in read_calls(logs["scancel"]) if call.time >= killing]
    results.add("scancel calls for the kill",
                f"{len(scancels)} ({', '.join(call.what + ' ids' for call in scancels[:5])})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1000, help="tasks (one Slurm job each)")
    parser.add_argument("--poll", type=float, default=1.0, help="pollIntervalSeconds")
    parser.add_argument("--cpus", type=int, default=16, help="CPUs of the Slurm node")
    parser.add_argument("--sleep", type=float, default=60,
                        help="seconds each job sleeps; the CPU window must end before the"
                        " first jobs do (the run is killed afterwards anyway)")
    parser.add_argument("--ticks", type=int, default=20, help="poll ticks in the CPU window")
    parser.add_argument("--max-parallel-submits", type=int, default=None,
                        help="maxParallelSubmits (left out of the config unless given)")
    parser.add_argument("--daggy-source", type=Path, default=None,
                        help="run daggyd with the daggy package from this directory (e.g."
                        " `git archive <commit> daggy | tar -x -C DIR`), not the installed one")
    parser.add_argument("--submit-seconds", type=float, default=900,
                        help="give up when not every task has a job id after this long")
    parser.add_argument("--kill-seconds", type=float, default=180,
                        help="how long the killed run's jobs may take to leave the queue")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    options = parser.parse_args()

    # SIGTERM (and SIGHUP) unwind like Ctrl-C, so every finally block below runs.
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, lambda number, frame: sys.exit(128 + number))

    root = Path(tempfile.mkdtemp(prefix="daggy-bench-slurm-", dir="/tmp"))
    root.chmod(0o755)
    results = Results()
    cluster = SlurmCluster(cpus=options.cpus, min_job_age=MIN_JOB_AGE)
    try:
        print(f"starting a Slurm cluster ({options.cpus} CPUs) in {cluster.directory}",
              file=sys.stderr, flush=True)
        cluster.start()
        machine = machine_info(cluster)
        run_benchmark(options, root, cluster, results)
    finally:
        if cluster.running:
            wait_for_job_processes(cluster)
        leftovers = cluster.stop()
        if leftovers:
            print(f"stopping the cluster had to kill: {leftovers}", file=sys.stderr)
            # The harness keeps the cluster directory then (for a test report); not here.
            if not options.keep:
                shutil.rmtree(cluster.directory, ignore_errors=True)
        if options.keep:
            print(f"kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)

    limit = ("not set (the executor's default)" if options.max_parallel_submits is None
             else str(options.max_parallel_submits))
    print(f"\n{options.jobs} tasks `sleep {options.sleep:g}`, SlurmTaskExecutor"
          f" pollIntervalSeconds={options.poll:g}, maxParallelSubmits={limit},"
          f" single node with {options.cpus} CPUs"
          + (f", daggy from {options.daggy_source}" if options.daggy_source else "") + "\n")
    rows = machine + results.rows
    width = max(len(what) for what, _ in rows)
    for what, value in rows:
        print(f"{what.ljust(width)}  {value}")
    if results.odd:
        print("\nodd:")
        for line in results.odd:
            print(f"  - {line}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; everything the benchmark started is stopped", file=sys.stderr)
        sys.exit(130)
