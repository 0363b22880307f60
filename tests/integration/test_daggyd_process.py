"""Real `daggyd` and `twistd daggyd` processes: start, serve, stop on signals, exit statuses."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
DAGGYD = Path(sys.executable).parent / "daggyd"
START_SECONDS = 20
STOP_SECONDS = 20


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until(predicate, what: str, seconds: float = START_SECONDS):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {seconds}s waiting for {what}")


def request(port: int, method: str, path: str, body=None):
    data = None if body is None else json.dumps(body).encode()
    call = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method)
    with urllib.request.urlopen(call, timeout=5) as response:
        return json.loads(response.read() or b"null")


def answers(port: int) -> bool:
    try:
        return request(port, "GET", "/ready") is not None
    except (OSError, urllib.error.URLError):
        return False


def write_config(directory: Path, port: int, executor="NoopTaskExecutor", **extra) -> Path:
    path = directory / "daggyd.json"
    path.write_text(json.dumps({"port": port, "executor": {"name": executor}, **extra}))
    return path


class Process:
    """A child process with stdout/stderr in files (no pipe can fill up and stall it)."""

    def __init__(self, argv: list[str], directory: Path, env: dict | None = None):
        self.out_path = directory / "stdout.txt"
        self.err_path = directory / "stderr.txt"
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.popen = subprocess.Popen(
                argv, cwd=directory, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                env={**os.environ, **(env or {})},
            )

    def wait(self, seconds: float = STOP_SECONDS) -> int:
        return self.popen.wait(timeout=seconds)

    @property
    def out(self) -> str:
        return self.out_path.read_text()

    @property
    def err(self) -> str:
        return self.err_path.read_text()

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait()


@pytest.fixture
def processes():
    started: list[Process] = []

    def start(argv, directory, env=None) -> Process:
        started.append(Process(argv, directory, env))
        return started[-1]

    yield start
    for process in started:
        process.kill()


def daggyd(*arguments: str) -> list[str]:
    assert DAGGYD.exists(), f"{DAGGYD} is missing; install daggy (pip install -e '.[test]')"
    return [str(DAGGYD), *arguments]


def events(stdout: str) -> list[dict]:
    """Every stdout line is one JSON event."""
    return [json.loads(line) for line in stdout.splitlines()]


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


def alive(pid: int) -> bool:
    """Whether pid is a running (not zombie) process; the daemon is not our child."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


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
        [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
         "-n", "--pidfile", "", "--logfile", "twistd.log",
         "daggyd", "--config", str(write_config(tmp_path, port))],
        tmp_path,
        env={"PYTHONPATH": str(REPO)},
    )
    wait_until(lambda: answers(port), "twistd daggyd to answer /ready")
    daemon.popen.send_signal(signal.SIGTERM)
    assert daemon.wait() == -signal.SIGTERM
    assert "Server Shut Down." in (tmp_path / "twistd.log").read_text()
