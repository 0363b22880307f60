"""Operations with a real daggyd: SIGHUP reopens the event file (logrotate), an event file
that cannot be written (/dev/full) does not stop the daemon, and secretEnvironment values
reach tasks but no answer, event line or log."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import tempfile
import uuid
from pathlib import Path

import pytest

from daemon_harness import (
    LAUNCHERS,
    Daemon,
    Process,
    answers,
    daggyd,
    free_port,
    wait_until,
    write_config,
)

pytestmark = pytest.mark.integration

#: Unique per session, so a match can only be a leak from this test.
FILE_SECRET = f"file-secret-{uuid.uuid4().hex}"
ENV_SECRET = f"env-secret-{uuid.uuid4().hex}"
HASH_BOTH = ["sh", "-c", 'printf %s "$DB_PASSWORD" | sha256sum; printf %s "$API_KEY" | sha256sum']


def sha256_line(text: str) -> str:
    return f"{hashlib.sha256(text.encode()).hexdigest()}  -\n"


def start(launcher: str, directory: Path, executor: str = "NoopTaskExecutor",
          executor_config: dict | None = None, env: dict | None = None,
          **settings) -> Daemon:
    """A foreground daemon on a free port (as ``daemon_harness.start_daemon``, plus an
    environment of its own); events go to ``directory/events.jsonl`` unless ``logger`` is
    given."""
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    settings.setdefault("logger", {"name": "OStreamLogger", "config": {"file": "events.jsonl"}})
    config = write_config(directory, port, executor, executor_config, **settings)
    argv, launcher_env, log_name, stop_status = LAUNCHERS[launcher](config)
    process = Process(argv, directory, {**launcher_env, **(env or {})})
    daemon = Daemon(launcher, port, directory, process, directory / log_name, stop_status)
    try:
        wait_until(lambda: answers(port) or process.popen.poll() is not None,
                   f"{launcher} to answer /ready")
        assert process.popen.poll() is None, (
            f"{launcher} exited with {process.popen.returncode}: {process.err}{daemon.log}")
    except BaseException:
        process.kill()
        raise
    return daemon


@pytest.fixture
def daemons():
    """Start daemons with :func:`start`; each still running at the end is killed."""
    started: list[Daemon] = []

    def start_one(*args, **kwargs) -> Daemon:
        started.append(start(*args, **kwargs))
        return started[-1]

    yield start_one
    for daemon in started:
        daemon.process.kill()


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines() if path.exists() else []


def run_ids_in(path: Path) -> set[int]:
    return {json.loads(line)["runID"] for line in lines_of(path)}


def completed_in(path: Path, run_id: int) -> bool:
    """Whether the event file holds the line saying run ``run_id`` completed."""
    for line in lines_of(path):
        event = json.loads(line)
        if (event["runID"], event["event"], event.get("state")) == (
                run_id, "runState", "COMPLETED"):
            return True
    return False


def one_task_run(daemon: Daemon, name: str) -> int:
    run_id = daemon.submit({"tag": name, "tasks": {name: {"job": {"command": ["true"]}}}})
    assert daemon.wait_run(run_id)["state"] == "COMPLETED"
    return run_id


# -- SIGHUP: reopen the event file ------------------------------------------------------------


@pytest.mark.parametrize("launcher", ["daggyd", "twistd"])
def test_sighup_after_a_rename_starts_a_new_event_file_without_losing_a_line(
        tmp_path, daemons, launcher):
    """logrotate's rename + SIGHUP: events before the signal stay in the renamed file,
    events after it go to a new file at the configured path; the daemon keeps serving,
    no line is lost or written twice, and a second SIGHUP is harmless."""
    daemon = daemons(launcher, tmp_path)
    events, rotated = tmp_path / "events.jsonl", tmp_path / "events.jsonl.1"
    before = one_task_run(daemon, "before")
    wait_until(lambda: completed_in(events, before), "the first run's events")
    os.rename(events, rotated)
    renamed = one_task_run(daemon, "renamed")  # still written to the renamed file
    wait_until(lambda: completed_in(rotated, renamed), "events to the renamed file")

    daemon.process.popen.send_signal(signal.SIGHUP)
    wait_until(events.exists, "daggyd to open a new event file")
    after = one_task_run(daemon, "after")
    wait_until(lambda: completed_in(events, after), "events to the new file")
    daemon.process.popen.send_signal(signal.SIGHUP)
    again = one_task_run(daemon, "again")
    wait_until(lambda: completed_in(events, again), "events after a second SIGHUP")

    assert daemon.stop() == daemon.stop_status
    old_lines, new_lines = lines_of(rotated), lines_of(events)
    assert run_ids_in(rotated) == {before, renamed}
    assert run_ids_in(events) == {after, again}
    for lines in (old_lines, new_lines):
        assert len(set(lines)) == len(lines)  # every event has its own time
    assert daemon.log.count("Received SIGHUP") == 2
    assert daemon.log.count("Reopened") == 2
    assert daemon.new_log_errors(0) == [], daemon.log


# -- an event file that cannot be written ---------------------------------------------------


def test_an_event_file_on_a_full_disk_is_reported_once_and_runs_go_on(tmp_path, daemons):
    """With /dev/full as the event file (every write fails with ENOSPC) daggyd runs DAGs
    to COMPLETED with the forking executor and answers the API from memory; the write
    error is logged once, and at stop how many lines were never written."""
    daemon = daemons("daggyd", tmp_path, "ForkingTaskExecutor",
                     logger={"name": "OStreamLogger", "config": {"file": "/dev/full"}})
    spec = {"tasks": {"hello": {"job": {"command": ["echo", "hello"]}, "children": ["bye"]},
                      "bye": {"job": {"command": ["echo", "bye"]}}}}
    first = daemon.submit(spec)
    run = daemon.wait_run(first)
    assert run["state"] == "COMPLETED"
    assert run["taskAttempts"]["bye"][0]["outputLog"] == "bye\n"
    second = daemon.submit(spec)
    assert daemon.wait_run(second)["state"] == "COMPLETED"
    assert [r["runID"] for r in daemon.get("/v1/dagruns?all=true")] == [first, second]
    assert daemon.http("GET", "/ready").status == 200

    assert daemon.stop() == 0
    errors = daemon.new_log_errors(0)
    assert len(errors) == 2, daemon.log
    assert "Cannot write run events to /dev/full: No space left on device (ENOSPC)" in errors[0]
    assert "Closing /dev/full while writing to it fails" in errors[1]
    assert "Traceback" not in daemon.log


# -- secretEnvironment --------------------------------------------------------------------


def write_secrets(directory: Path) -> Path:
    path = directory / "secrets.yaml"
    path.write_text(f"DB_PASSWORD: {FILE_SECRET}\n")
    path.chmod(0o600)
    return path


def assert_no_secret_in(*texts: str) -> None:
    for text in texts:
        assert FILE_SECRET not in text and ENV_SECRET not in text


def every_answer(daemon: Daemon, run_id: int, task: str) -> str:
    """Every API answer about the run, as text."""
    return "".join(daemon.http("GET", path).raw.decode() for path in (
        f"/v1/dagrun/{run_id}", f"/v1/dagrun/{run_id}/state", "/v1/dagruns?all=true",
        f"/v1/dagrun/{run_id}/task/{task}", f"/v1/dagrun/{run_id}/task/{task}/state"))


def test_forked_tasks_see_their_secrets_which_appear_nowhere_else(tmp_path, daemons):
    """A task naming secrets (one from secretsFile, one from daggyd's environment) gets
    their values (it prints their SHA-256); the values are in no API answer, event line
    or daemon log, and a name the daemon has no secret for is a 400 naming the field."""
    daemon = daemons("daggyd", tmp_path, "ForkingTaskExecutor",
                     {"secretsFile": str(write_secrets(tmp_path))},
                     env={"API_KEY": ENV_SECRET})
    run_id = daemon.submit({"tasks": {"hash": {"job": {
        "command": HASH_BOTH, "secretEnvironment": ["DB_PASSWORD", "API_KEY"]}}}})
    run = daemon.wait_run(run_id)
    assert run["state"] == "COMPLETED", run
    attempt = run["taskAttempts"]["hash"][0]
    assert attempt["outputLog"] == sha256_line(FILE_SECRET) + sha256_line(ENV_SECRET)
    assert run["tasks"]["hash"]["job"]["secretEnvironment"] == ["DB_PASSWORD", "API_KEY"]

    refused = daemon.http("POST", "/v1/dagrun", {"tasks": {"x": {"job": {
        "command": ["true"], "secretEnvironment": ["NO_SUCH_SECRET"]}}}})
    assert refused.status == 400
    assert "tasks.x.job.secretEnvironment[0]: no secret named 'NO_SUCH_SECRET'" in (
        refused.raw.decode())

    answers_text = every_answer(daemon, run_id, "hash")
    assert daemon.stop() == 0
    assert_no_secret_in(answers_text, (tmp_path / "events.jsonl").read_text(), daemon.log,
                        daemon.process.out)
    assert daemon.new_log_errors(0) == [], daemon.log


def test_slurm_jobs_see_their_secrets_which_stay_off_argv_and_out_of_the_batch_script(
        tmp_path, slurm_cluster):
    """With the SlurmTaskExecutor a job naming secrets gets their values; sbatch's argv
    holds only --export=ALL,<names>, the batch script Slurm stores holds no value, and
    neither do the API answers, the event lines or the daemon log."""
    output_dir = Path(tempfile.mkdtemp(prefix="daggy-slurm-secrets-", dir="/tmp"))
    os.chmod(output_dir, 0o755)
    try:
        argv_log = tmp_path / "sbatch-argv.log"
        wrapper = tmp_path / "sbatch"
        wrapper.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" >> {argv_log}\n'
                           f'exec {slurm_cluster.programs.get("sbatch", "sbatch")} "$@"\n')
        wrapper.chmod(0o755)
        port = free_port()
        config = write_config(tmp_path, port, "SlurmTaskExecutor", {
            "sacctCompletion": True, "pollIntervalSeconds": 0.5, "outputDir": str(output_dir),
            "jobNamePrefix": f"sec{uuid.uuid4().hex[:8]}", "commandPaths": {"sbatch": str(wrapper)},
            "secretsFile": str(write_secrets(tmp_path)),
        }, logger={"name": "OStreamLogger", "config": {"file": "events.jsonl"}})
        process = Process(daggyd("--config", str(config)), tmp_path,
                          {**slurm_cluster.env, "API_KEY": ENV_SECRET})
        daemon = Daemon("daggyd", port, tmp_path, process, tmp_path / "stderr.txt", 0)
        try:
            wait_until(lambda: answers(port) or process.popen.poll() is not None,
                       "daggyd to answer /ready")
            run_id = daemon.submit({"tasks": {"hash": {"job": {
                "command": HASH_BOTH, "secretEnvironment": ["DB_PASSWORD", "API_KEY"]}}}})
            run = daemon.wait_run(run_id, seconds=90)
            assert run["state"] == "COMPLETED", run
            attempt = run["taskAttempts"]["hash"][0]
            assert attempt["outputLog"] == sha256_line(FILE_SECRET) + sha256_line(ENV_SECRET)
            answers_text = every_answer(daemon, run_id, "hash")
            script = slurm_cluster.run("scontrol", "write", "batch_script",
                                       attempt["executorState"]["jobId"], "-").stdout
        finally:
            status = daemon.stop()
        assert status == 0
        argv = argv_log.read_text()
        assert "--export=ALL,DB_PASSWORD,API_KEY" in argv.splitlines()
        assert "exec sh -c" in script
        assert_no_secret_in(argv, script, answers_text, (tmp_path / "events.jsonl").read_text(),
                            daemon.log)
        assert daemon.new_log_errors(0) == [], daemon.log
    finally:
        shutil.rmtree(output_dir, ignore_errors=True)
