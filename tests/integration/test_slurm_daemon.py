"""End to end with the SlurmTaskExecutor: a real daggyd, started with the private cluster's
environment (``SLURM_CONF``), runs every task as a Slurm batch job and is driven over HTTP.

One daemon serves the whole module (each test submits its own runs); at the end it must
stop on SIGTERM with exit 0 and without an error in its log.  Job outputs go to a
world-readable directory under /tmp (not pytest's ``tmp_path``: munged needs
world-searchable parents, and the jobs write there).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path

import pytest

from daemon_harness import (
    START_SECONDS,
    Daemon,
    Process,
    answers,
    daggyd,
    free_port,
    parse_time,
    wait_until,
    write_config,
)
from slurm_harness import FINAL_STATES, SlurmCluster

pytestmark = pytest.mark.integration

#: Slurm jobs queue, start and are noticed at the next 0.5 s poll; a few seconds is normal.
RUN_SECONDS = 90
#: How long Slurm may take to take cancelled jobs off the node.
CANCEL_SECONDS = 60
#: This module's own job name prefix, so it finds its jobs among any others on the cluster.
JOB_NAME_PREFIX = f"dgt{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def job_output_dir():
    directory = Path(tempfile.mkdtemp(prefix="daggy-slurm-out-", dir="/tmp"))
    os.chmod(directory, 0o755)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def slurm_daggyd(slurm_cluster: SlurmCluster, job_output_dir, tmp_path_factory):
    """A daggyd with the SlurmTaskExecutor on the private cluster (sacct -c for results,
    0.5 s polls), its own job name prefix, and the cluster's environment."""
    directory = tmp_path_factory.mktemp("slurm-daggyd")
    port = free_port()
    config = write_config(directory, port, "SlurmTaskExecutor", {
        "sacctCompletion": True,
        "pollIntervalSeconds": 0.5,
        "outputDir": str(job_output_dir),
        "jobNamePrefix": JOB_NAME_PREFIX,
    }, logger={"name": "OStreamLogger", "config": {"file": "events.jsonl"}})
    process = Process(daggyd("--config", str(config)), directory, slurm_cluster.env)
    daemon = Daemon("daggyd", port, directory, process, directory / "stderr.txt", 0)
    try:
        wait_until(lambda: answers(port) or process.popen.poll() is not None,
                   "daggyd to answer /ready", START_SECONDS)
        assert process.popen.poll() is None, (
            f"daggyd exited with {process.popen.returncode}:\n{daemon.log}")
        yield daemon
    finally:
        status = daemon.stop()
    assert status == 0, f"daggyd exited with {status}:\n{daemon.log}"
    assert daemon.new_log_errors(0) == [], daemon.log


def echo(*words: str, **fields) -> dict:
    return {"job": {"command": ["echo", *words]}, **fields}


def only_attempt(run: dict, name: str) -> dict:
    [attempt] = run["taskAttempts"][name]
    return attempt


def run_with_attempts(daemon: Daemon, run_id: int, names) -> dict | None:
    """The run once each of ``names`` has an attempt recorded, else None."""
    run = daemon.run(run_id)
    return run if all(run["taskAttempts"].get(name) for name in names) else None


def job_ids(run: dict) -> list[str]:
    return [attempt["executorState"]["jobId"]
            for attempts in run["taskAttempts"].values() for attempt in attempts]


def jobs_named(cluster: SlurmCluster, name_prefix: str, state: str) -> dict[str, str]:
    """The id and name of each job in ``state`` whose name starts with ``name_prefix``
    (one squeue call)."""
    listed = cluster.run("squeue", "-h", "-t", state, "-o", "%i %j").stdout
    return {job_id: name for job_id, name in (line.split(None, 1) for line in listed.splitlines()
                                             if line.strip())
            if name.startswith(name_prefix)}


def test_diamond_dag_runs_as_slurm_jobs_in_dependency_order(slurm_daggyd):
    """A diamond of echo tasks completes; each task's stdout is its outputLog, each ran as
    its own Slurm job, and no task started before its parents stopped."""
    run_id = slurm_daggyd.submit({"tag": "diamond", "tasks": {
        "top": echo("top", children=["left", "right"]),
        "left": echo("left", children=["bottom"]),
        "right": echo("right", children=["bottom"]),
        "bottom": echo("bottom"),
    }})

    run = slurm_daggyd.wait_run(run_id, seconds=RUN_SECONDS)

    assert run["state"] == "COMPLETED", run
    attempts = {name: only_attempt(run, name) for name in ("top", "left", "right", "bottom")}
    for name, attempt in attempts.items():
        assert (attempt["rc"], attempt["succeeded"], attempt["outputLog"], attempt["errorLog"]
                ) == (0, True, f"{name}\n", ""), (name, attempt)
    assert len(set(job_ids(run))) == 4
    start = {name: parse_time(a["startTime"]) for name, a in attempts.items()}
    stop = {name: parse_time(a["stopTime"]) for name, a in attempts.items()}
    assert stop["top"] <= start["left"] and stop["top"] <= start["right"]
    assert max(stop["left"], stop["right"]) <= start["bottom"]


def test_job_exiting_3_errors_its_task(slurm_daggyd):
    """A job whose command exits with 3 gives an attempt with rc 3 and its stderr, the task
    and the run end ERRORED, and its child never runs."""
    run_id = slurm_daggyd.submit({"tag": "exit-3", "tasks": {
        "fails": {"job": {"command": ["sh", "-c", "echo before; echo oops >&2; exit 3"]},
                  "children": ["after"]},
        "after": echo("never"),
    }})

    run = slurm_daggyd.wait_run(run_id, seconds=RUN_SECONDS)

    assert run["state"] == "ERRORED", run
    attempt = only_attempt(run, "fails")
    assert (attempt["rc"], attempt["succeeded"], attempt["outputLog"], attempt["errorLog"]
            ) == (3, False, "before\n", "oops\n"), attempt
    assert slurm_daggyd.task_state(run_id, "fails") == "ERRORED"
    assert run["taskAttempts"].get("after", []) == []
    assert slurm_daggyd.task_state(run_id, "after") == "QUEUED"


def test_parameter_expansion_runs_one_job_per_value(slurm_daggyd):
    """A task with a three-valued parameter becomes three tasks, each its own Slurm job
    printing its own value."""
    run_id = slurm_daggyd.submit({"tag": "expansion", "parameters": {"N": ["1", "2", "3"]},
                                  "tasks": {"greet": echo("hello {{N}}")}})

    run = slurm_daggyd.wait_run(run_id, seconds=RUN_SECONDS)

    assert run["state"] == "COMPLETED", run
    names = [f"greet[N={n}]" for n in ("1", "2", "3")]
    assert sorted(run["tasks"]) == names
    for n, name in zip(("1", "2", "3"), names):
        attempt = only_attempt(run, name)
        assert (attempt["rc"], attempt["outputLog"]) == (0, f"hello {n}\n"), (name, attempt)
    assert len(set(job_ids(run))) == 3


def test_killing_a_run_cancels_its_running_jobs(slurm_daggyd, slurm_cluster):
    """DELETE of a run whose jobs run ``sleep 60`` ends the run KILLED with killed attempts,
    and Slurm no longer has those jobs pending or running."""
    names = ("sleep-a", "sleep-b")
    run_id = slurm_daggyd.submit({"tag": "kill", "tasks": {
        name: {"job": {"command": ["sleep", "60"]}} for name in names}})
    for name in names:
        slurm_daggyd.wait_task(run_id, name, "RUNNING", seconds=RUN_SECONDS)
    run_jobs = f"{JOB_NAME_PREFIX}.{run_id}."
    wait_until(lambda: len(jobs_named(slurm_cluster, run_jobs, "RUNNING")) == 2,
               "both sleep jobs to run in Slurm", RUN_SECONDS)
    running = jobs_named(slurm_cluster, run_jobs, "RUNNING")

    killed = slurm_daggyd.http("DELETE", f"/v1/dagrun/{run_id}")
    assert killed.status == 200, killed.raw
    assert slurm_daggyd.wait_run(run_id, seconds=RUN_SECONDS)["state"] == "KILLED"
    # The run is KILLED at once; each attempt is recorded when Slurm reports its job ended.
    run = wait_until(lambda: run_with_attempts(slurm_daggyd, run_id, names),
                     "the killed attempts to be recorded", CANCEL_SECONDS)

    assert run["state"] == "KILLED", run
    for name in names:
        attempt = only_attempt(run, name)
        assert (attempt["killed"], attempt["succeeded"]) == (True, False), (name, attempt)
    ids = job_ids(run)
    assert sorted(running) == sorted(ids)
    wait_until(lambda: all(state in FINAL_STATES
                           for state in slurm_cluster.squeue(ids).values()),
               "the cancelled jobs to leave the queue", CANCEL_SECONDS)
    assert jobs_named(slurm_cluster, run_jobs, "RUNNING") == {}
