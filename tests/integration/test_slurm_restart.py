"""A daggyd with the SlurmTaskExecutor and the RedisLogger survives ``kill -9`` while its
Slurm jobs run: a new daemon on the same Redis prefix watches the jobs the old one
submitted again, records their real results and submits nothing twice.

The daemons are started through ``Daggyds`` (test_redis_daemon.py), so its teardown stops
the new daemon, checks its exit status and that neither daemon logged an error; the killed
daemon is simply no longer running then.
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
    daggyd,
    free_port,
    wait_until,
    write_config,
)
from slurm_harness import SlurmCluster
from test_redis_daemon import (  # noqa: F401
    Daggyds,
    daggyds,
    ready_status,
    redis_logger,
    stored_hash,
    unique_prefix,
)

pytestmark = pytest.mark.integration

#: Slurm jobs queue, start and are noticed at the next 0.5 s poll; a few seconds is normal.
RUN_SECONDS = 90
SLEEPERS = [f"sleep-{i}" for i in range(6)]
CHILD = "after"


@pytest.fixture
def job_output_dir():
    # Not tmp_path: the jobs write here and munged needs world-searchable parents.
    directory = Path(tempfile.mkdtemp(prefix="daggy-slurm-restart-", dir="/tmp"))
    os.chmod(directory, 0o755)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def start_slurm_daggyd(daggyds: Daggyds, cluster: SlurmCluster, config: dict,
                       logger: dict) -> Daemon:
    """A daggyd with the SlurmTaskExecutor ``config`` and ``logger``, started with the
    cluster's environment and registered with ``daggyds`` for its teardown checks."""
    directory = daggyds._tmp_path / f"daggyd-{len(daggyds.started)}"
    directory.mkdir()
    port = free_port()
    path = write_config(directory, port, "SlurmTaskExecutor", config, logger=logger)
    process = Process(daggyd("--config", str(path)), directory, cluster.env)
    daemon = Daemon("daggyd", port, directory, process, directory / "stderr.txt", 0)
    daggyds.started.append(daemon)
    wait_until(lambda: process.popen.poll() is not None or ready_status(port) == 200,
               "daggyd to answer /ready with 200", START_SECONDS)
    assert process.popen.poll() is None, (
        f"daggyd exited with {process.popen.returncode}:\n{daemon.log}")
    return daemon


def jobs_named(cluster: SlurmCluster, name_prefix: str) -> dict[str, tuple[str, str]]:
    """(name, state) of each job squeue still knows whose name starts with ``name_prefix``,
    by id (one squeue call)."""
    listed = cluster.run("squeue", "-h", "-t", "all", "-o", "%i %j %T").stdout
    found = {}
    for line in listed.splitlines():
        if line.strip():
            job_id, name, state = line.split()
            if name.startswith(name_prefix):
                found[job_id] = (name, state)
    return found


def finished_jobs_named(cluster: SlurmCluster, name_prefix: str) -> dict[str, tuple[str, str]]:
    """(name, state) of each finished job in the completion log (``sacct -c``) whose name
    starts with ``name_prefix``, by id."""
    listed = cluster.run("sacct", "-c", "-n", "-P", "-o", "JobID,JobName,State").stdout
    found = {}
    for line in listed.splitlines():
        if line.strip():
            job_id, name, state = line.split("|")[:3]
            if name.startswith(name_prefix):
                found[job_id] = (name, state.split()[0])
    return found


def test_slurm_jobs_outlive_kill_9_and_are_not_submitted_twice(
        session_redis_server, slurm_cluster, daggyds, job_output_dir):
    """kill -9 of the daemon while six Slurm jobs run, then a restart once they have
    ended: the run completes, each task has one attempt with its job's real output and rc 0,
    the child runs after, and Slurm saw exactly one job per task."""
    job_prefix = f"dgr{uuid.uuid4().hex[:8]}"
    executor = {"sacctCompletion": True, "pollIntervalSeconds": 0.5,
                "outputDir": str(job_output_dir), "jobNamePrefix": job_prefix}
    logger = redis_logger(session_redis_server, unique_prefix("slurm-kill9"))
    first = start_slurm_daggyd(daggyds, slurm_cluster, executor, logger)
    run_id = first.submit({"tag": "slurm-kill9", "tasks": {
        **{name: {"job": {"command": ["sh", "-c", "sleep 3; echo done-$0", name]},
                  "children": [CHILD]} for name in SLEEPERS},
        CHILD: {"job": {"command": ["sh", "-c", "echo done-$0", CHILD]}},
    }})
    run_jobs = f"{job_prefix}.{run_id}."

    # Kill only once every job id is recorded: a job submitted but not yet recorded cannot
    # be found again, and that window is not what this test is about.
    wait_until(lambda: all(first.run(run_id).get("taskExecutorStates", {}).get(name, {})
                           .get("jobId") for name in SLEEPERS),
               "every sleeper's job id to be recorded", RUN_SECONDS)
    wait_until(lambda: sum(state == "RUNNING"
                           for _, state in jobs_named(slurm_cluster, run_jobs).values()) >= 2,
               "some sleeper jobs to run in Slurm", RUN_SECONDS)
    daggyds.kill9(first)
    at_kill = jobs_named(slurm_cluster, run_jobs)
    assert any(state == "RUNNING" for _, state in at_kill.values()), at_kill
    wait_until(lambda: len(finished_jobs_named(slurm_cluster, run_jobs)) == len(SLEEPERS),
               "the sleeper jobs to finish in Slurm", RUN_SECONDS)
    assert not any(state in {"PENDING", "RUNNING"}
                   for _, state in jobs_named(slurm_cluster, run_jobs).values())

    second = start_slurm_daggyd(daggyds, slurm_cluster, executor, logger)
    run = second.wait_run(run_id, seconds=RUN_SECONDS)

    assert run["state"] == "COMPLETED", run
    for name in [*SLEEPERS, CHILD]:
        [attempt] = run["taskAttempts"][name]
        assert (attempt["rc"], attempt["succeeded"], attempt["outputLog"]) == (
            0, True, f"done-{name}\n"), (name, attempt)
    recorded = {name: attempt["executorState"]["jobId"]
                for name, [attempt] in run["taskAttempts"].items()}
    assert {name: state["jobId"] for name, state in run["taskExecutorStates"].items()} == recorded
    assert len(set(recorded.values())) == len(SLEEPERS) + 1
    in_slurm = finished_jobs_named(slurm_cluster, run_jobs)
    assert sorted(in_slurm) == sorted(recorded.values()), (in_slurm, recorded)
    assert all(state == "COMPLETED" for _, state in in_slurm.values()), in_slurm


def held_sbatch(directory: Path, real_sbatch: str) -> tuple[Path, Path, Path]:
    """An sbatch wrapper that submits for real, logs the job id, then keeps its answer back
    while a hold file exists: the job is in Slurm but daggyd has not heard of it.
    Returns (wrapper, hold file, log)."""
    hold, log = directory / "hold", directory / "sbatch.log"
    wrapper = directory / "sbatch"
    wrapper.write_text(
        "#!/bin/sh\n"
        f'out=$("{real_sbatch}" "$@"); rc=$?\n'
        f'echo "$out" >> "{log}"\n'
        f'while [ -e "{hold}" ]; do sleep 0.05; done\n'
        'echo "$out"; exit $rc\n')
    wrapper.chmod(0o755)
    return wrapper, hold, log


def test_kill_9_before_the_job_id_is_recorded_submits_nothing_twice(
        session_redis_server, slurm_cluster, daggyds, job_output_dir, tmp_path):
    """kill -9 while sbatch has submitted one task's job but not yet answered, with a second
    task still waiting for an sbatch slot: after a restart the first task's job is found by
    its name and watched (not submitted again), the second is submitted once, and the run
    completes with exactly one Slurm job per task."""
    job_prefix = f"dgw{uuid.uuid4().hex[:8]}"
    wrapper, hold, sbatch_log = held_sbatch(tmp_path, slurm_cluster.programs["sbatch"])
    hold.touch()
    executor = {"sacctCompletion": True, "pollIntervalSeconds": 0.5,
                "outputDir": str(job_output_dir), "jobNamePrefix": job_prefix,
                "maxParallelSubmits": 1, "commandPaths": {"sbatch": str(wrapper)}}
    redis_prefix = unique_prefix("slurm-window")
    logger = redis_logger(session_redis_server, redis_prefix)
    first = start_slurm_daggyd(daggyds, slurm_cluster, executor, logger)
    names = ("held", "waiting")
    run_id = first.submit({"tag": "slurm-window", "tasks": {
        name: {"job": {"command": ["sh", "-c", "echo done-$0", name]}} for name in names}})
    task_states = f"{redis_prefix}:run:{run_id}:taskStates"
    wait_until(lambda: sbatch_log.exists() and sbatch_log.read_text().strip(),
               "the first sbatch to submit its job", RUN_SECONDS)
    wait_until(lambda: stored_hash(session_redis_server, task_states)
               == {name: "RUNNING" for name in names},
               "both tasks to be stored RUNNING", RUN_SECONDS)
    daggyds.kill9(first)
    hold.unlink()
    [held_job] = sbatch_log.read_text().split()
    assert stored_hash(session_redis_server,
                       f"{redis_prefix}:run:{run_id}:taskExecutorStates") == {}

    second = start_slurm_daggyd(daggyds, slurm_cluster, executor, logger)
    run = second.wait_run(run_id, seconds=RUN_SECONDS)

    assert run["state"] == "COMPLETED", run
    attempts = {}
    for name in names:
        [attempt] = run["taskAttempts"][name]
        assert (attempt["rc"], attempt["outputLog"]) == (0, f"done-{name}\n"), (name, attempt)
        attempts[name] = attempt["executorState"]["jobId"]
    assert attempts["held"] == held_job
    submitted = sbatch_log.read_text().split()
    assert sorted(submitted) == sorted(attempts.values()), (submitted, attempts)
    in_slurm = finished_jobs_named(slurm_cluster, f"{job_prefix}.{run_id}.")
    assert sorted(in_slurm) == sorted(submitted), in_slurm
