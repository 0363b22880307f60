"""Real `daggyd` and `twistd daggyd` processes: start, serve, stop on signals, exit statuses."""

from __future__ import annotations

import os
import signal
import socket

import pytest

from daemon_harness import (
    REPO,
    STOP_SECONDS,
    alive,
    answers,
    daggyd,
    events,
    free_port,
    request,
    twistd,
    wait_until,
    write_config,
)

pytestmark = pytest.mark.integration


def test_foreground_runs_a_dag_and_exits_0_on_sigterm(tmp_path, processes):
    """daggyd runs a submitted DAG with the forking executor, writes its events as JSON lines
    on stdout and its own log on stderr, and exits 0 on SIGTERM."""
    port = free_port()
    config = write_config(tmp_path, port, "ForkingTaskExecutor")
    daemon = processes(daggyd("--config", str(config)), tmp_path)
    wait_until(lambda: answers(port), "daggyd to answer /ready")
    run_id = request(port, "POST", "/v1/dagrun", {
        "tasks": {"greet": {"job": {"command": ["/bin/echo", "hello"]}}}})["runID"]
    wait_until(
        lambda: request(port, "GET", f"/v1/dagrun/{run_id}/state")["state"] == "COMPLETED",
        "the run to complete",
    )
    daemon.popen.send_signal(signal.SIGTERM)
    assert daemon.wait() == 0
    [attempt] = [e["attempt"] for e in events(daemon.out) if e["event"] == "taskAttempt"]
    assert (attempt["outputLog"], attempt["succeeded"]) == ("hello\n", True)
    assert "Received SIGTERM, shutting down." in daemon.err
    assert "Traceback" not in daemon.err


def test_sigterm_kills_running_tasks_and_records_them_before_exiting(tmp_path, processes):
    """A graceful stop kills a running task, records its killed attempt, then exits 0."""
    port = free_port()
    config = write_config(tmp_path, port, "ForkingTaskExecutor")
    daemon = processes(daggyd("-c", str(config)), tmp_path)
    wait_until(lambda: answers(port), "daggyd to answer /ready")
    run_id = request(port, "POST", "/v1/dagrun", {
        "tasks": {"nap": {"job": {"command": ["/bin/sleep", "300"]}}}})["runID"]
    wait_until(
        lambda: request(port, "GET", f"/v1/dagrun/{run_id}/task/nap/state")["state"] == "RUNNING",
        "the task to start",
    )
    daemon.popen.send_signal(signal.SIGTERM)
    assert daemon.wait() == 0
    [attempt] = [e["attempt"] for e in events(daemon.out) if e["event"] == "taskAttempt"]
    assert attempt["killed"] is True


def test_foreground_exits_0_on_sigint(tmp_path, processes):
    """SIGINT (Ctrl-C) stops daggyd gracefully with exit status 0."""
    port = free_port()
    daemon = processes(daggyd("--config", str(write_config(tmp_path, port))), tmp_path)
    wait_until(lambda: answers(port), "daggyd to answer /ready")
    daemon.popen.send_signal(signal.SIGINT)
    assert daemon.wait() == 0
    assert "Traceback" not in daemon.err


def test_bad_config_is_one_line_and_status_2(tmp_path, processes):
    """An invalid config file makes daggyd print one `daggyd:` line and exit 2."""
    config = tmp_path / "bad.yaml"
    config.write_text("executor:\n  name: ForkingTaskExecutor\n  config:\n    threads: ten\n")
    daemon = processes(daggyd("--config", str(config)), tmp_path)
    assert daemon.wait() == 2
    assert daemon.err == (
        f'daggyd: {config}: executor.config.threads: must be an integer >= 1 (got "ten")\n'
    )
    assert daemon.out == ""


def test_port_in_use_is_one_line_and_status_1(tmp_path, processes):
    """When the port is taken daggyd says so in one line, without a traceback, and exits 1."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        daemon = processes(daggyd("--config", str(write_config(tmp_path, port))), tmp_path)
        assert daemon.wait() == 1
    assert daemon.err.splitlines()[-1] == (
        f"daggyd: cannot listen on 127.0.0.1:{port}: Address already in use"
    )
    assert "Traceback" not in daemon.err


def test_daemon_mode_writes_pid_and_log_files_and_stops_on_sigterm(tmp_path, processes):
    """`daggyd -d` detaches once listening, writes ./daggyd.pid and ./daggyd.log, and on
    SIGTERM stops, removing the pid file."""
    port = free_port()
    config = write_config(
        tmp_path, port, logger={"name": "OStreamLogger", "config": {"file": "events.jsonl"}})
    launcher = processes(daggyd("-d", "--config", str(config)), tmp_path)
    assert launcher.wait() == 0
    pid = int(wait_until(lambda: (tmp_path / "daggyd.pid").exists()
                         and (tmp_path / "daggyd.pid").read_text(), "the pid file"))
    try:
        assert answers(port)
        request(port, "POST", "/v1/dagrun", {"tasks": {"t": {"job": {"command": ["true"]}}}})
        os.kill(pid, signal.SIGTERM)
        wait_until(lambda: not alive(pid), "the daemon to exit", STOP_SECONDS)
    finally:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)
    assert not (tmp_path / "daggyd.pid").exists()
    log = (tmp_path / "daggyd.log").read_text()
    assert "Server Shut Down." in log
    assert "Traceback" not in log
    assert "runCreated" in (tmp_path / "events.jsonl").read_text()
    assert launcher.out == ""


def test_twistd_daggyd_plugin_serves_and_stops(tmp_path, processes):
    """`twistd -n daggyd --config FILE` (plugin found on PYTHONPATH) serves the API and stops on
    SIGTERM; twistd, unlike daggyd, then re-raises the signal as its exit status."""
    port = free_port()
    daemon = processes(
        twistd("-n", "--pidfile", "", "--logfile", "twistd.log",
               "daggyd", "--config", str(write_config(tmp_path, port))),
        tmp_path,
        env={"PYTHONPATH": str(REPO)},
    )
    wait_until(lambda: answers(port), "twistd daggyd to answer /ready")
    daemon.popen.send_signal(signal.SIGTERM)
    assert daemon.wait() == -signal.SIGTERM
    assert "Server Shut Down." in (tmp_path / "twistd.log").read_text()
