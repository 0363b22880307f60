"""Start real `daggyd` / `twistd daggyd` processes and talk HTTP to them (test helpers).

Imported by the integration tests (pytest puts this directory on ``sys.path``); the
fixtures built on these helpers are in ``conftest.py``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from http.client import HTTPConnection, HTTPException
from pathlib import Path
from typing import Any, Callable
from urllib.parse import quote

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
DAGGYD = BIN / "daggyd"
TWISTD = BIN / "twistd"
START_SECONDS = 20
STOP_SECONDS = 30
RUN_SECONDS = 60
FINISHED = frozenset({"COMPLETED", "ERRORED", "KILLED"})


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until(predicate: Callable[[], Any], what: str, seconds: float = START_SECONDS):
    """Poll ``predicate`` until it returns something truthy (returned), or fail after
    ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {seconds}s waiting for {what}")
        time.sleep(0.05)


# -- HTTP ----------------------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    raw: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.raw) if self.raw else None


def http(port: int, method: str, path: str, body: Any = None, *, raw: bytes | None = None,
         timeout: float = 60, headers: dict[str, str] | None = None) -> Reply:
    """One request on a fresh connection; any status is returned, not raised."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    connection = HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        sent = {} if data is None else {"Content-Type": "application/json"}
        sent.update(headers or {})
        connection.request(method, path, body=data, headers=sent)
        response = connection.getresponse()
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()},
                     response.read())
    finally:
        connection.close()


def request(port: int, method: str, path: str, body: Any = None) -> Any:
    """The JSON answer of a request that must succeed (2xx)."""
    reply = http(port, method, path, body)
    assert 200 <= reply.status < 300, (method, path, reply.status, reply.raw[:2000])
    return reply.json


def answers(port: int) -> bool:
    try:
        return http(port, "GET", "/ready", timeout=5).status == 200
    except (OSError, HTTPException):
        return False


def task_path(run_id: int, name: str, *rest: str) -> str:
    return "/".join([f"/v1/dagrun/{run_id}/task", quote(name, safe=""), *rest])


def parse_time(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)


# -- processes -----------------------------------------------------------------------------


def write_config(directory: Path, port: int, executor="NoopTaskExecutor",
                 executor_config: dict | None = None, **extra) -> Path:
    """A daemon config file; ``extra`` keys use the file's spelling via ``_`` → ``-``."""
    executor_choice = {"name": executor}
    if executor_config:
        executor_choice["config"] = executor_config
    settings = {"port": port, "executor": executor_choice,
                **{key.replace("_", "-"): value for key, value in extra.items()}}
    path = directory / "daggyd.json"
    path.write_text(json.dumps(settings))
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


def daggyd(*arguments: str) -> list[str]:
    assert DAGGYD.exists(), f"{DAGGYD} is missing; install daggy (pip install -e '.[test]')"
    return [str(DAGGYD), *arguments]


def twistd(*arguments: str) -> list[str]:
    assert TWISTD.exists(), f"{TWISTD} is missing; install twisted"
    return [str(TWISTD), *arguments]


#: How each launcher runs a foreground daemon on a config file: (argv, extra environment,
#: the file its own log goes to, exit status after SIGTERM).  twistd re-raises the signal.
LAUNCHERS = {
    "daggyd": lambda config: (daggyd("--config", str(config)), {}, "stderr.txt", 0),
    "twistd": lambda config: (
        twistd("-n", "--pidfile", "", "--logfile", "twistd.log", "daggyd",
               "--config", str(config)),
        {"PYTHONPATH": str(REPO)}, "twistd.log", -signal.SIGTERM),
}


def events(stdout: str) -> list[dict]:
    """Every line of an OStreamLogger stream is one JSON event."""
    return [json.loads(line) for line in stdout.splitlines()]


def alive(pid: int) -> bool:
    """Whether pid is a running (not zombie) process; works for processes that are not our
    children (this container's PID 1 does not reap orphans, so they linger as zombies)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def live_processes_with(marker: str) -> dict[int, list[str]]:
    """The argv of each live (non-zombie) process with ``marker`` in one of its arguments,
    by pid."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            arguments = (entry / "cmdline").read_bytes().split(b"\0")[:-1]
        except OSError:
            continue  # exited meanwhile, or not ours to read
        if any(marker.encode() in argument for argument in arguments) and alive(int(entry.name)):
            found[int(entry.name)] = [argument.decode(errors="replace") for argument in arguments]
    return found


# -- a running daemon ----------------------------------------------------------------------


@dataclass
class Daemon:
    """A daggyd started by one of the LAUNCHERS, with HTTP helpers bound to its port."""

    launcher: str
    port: int
    directory: Path
    process: Process
    log_path: Path
    stop_status: int

    # HTTP
    def http(self, method: str, path: str, body: Any = None, **options) -> Reply:
        return http(self.port, method, path, body, **options)

    def get(self, path: str) -> Any:
        return request(self.port, "GET", path)

    def submit(self, spec: dict) -> int:
        return request(self.port, "POST", "/v1/dagrun", spec)["runID"]

    def run(self, run_id: int) -> dict:
        return self.get(f"/v1/dagrun/{run_id}")

    def task(self, run_id: int, name: str) -> dict:
        return self.get(task_path(run_id, name))

    def task_state(self, run_id: int, name: str) -> str:
        return self.get(task_path(run_id, name, "state"))["state"]

    def wait_run(self, run_id: int, state: str | None = None,
                 seconds: float = RUN_SECONDS) -> dict:
        """Poll the run's state until it is finished (or ``state``); returns the full run."""
        wanted = {state} if state else FINISHED
        wait_until(lambda: self.get(f"/v1/dagrun/{run_id}/state")["state"] in wanted,
                   f"run {run_id} to reach {' or '.join(sorted(wanted))}", seconds)
        return self.run(run_id)

    def wait_task(self, run_id: int, name: str, state: str,
                  seconds: float = RUN_SECONDS) -> dict:
        wait_until(lambda: self.task_state(run_id, name) == state,
                   f"task {name!r} of run {run_id} to be {state}", seconds)
        return self.task(run_id, name)

    # the daemon's own log
    @property
    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def new_log_errors(self, since: int) -> list[str]:
        """Lines of the daemon's log written after offset ``since`` that report an error."""
        text = self.log[since:]
        return [line for line in text.splitlines()
                if "Traceback" in line or "Unhandled" in line
                or "#critical]" in line or "#error]" in line]

    def stop(self) -> int:
        """SIGTERM; returns the exit status."""
        if self.process.popen.poll() is None:
            self.process.popen.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(STOP_SECONDS)
        finally:
            self.process.kill()


def start_daemon(launcher: str, directory: Path, executor: str = "ForkingTaskExecutor",
                 executor_config: dict | None = None, **settings) -> Daemon:
    """Start a foreground daemon with a fresh config on a free loopback port and wait until
    it answers /ready.  Its events go to ``directory/events.jsonl``."""
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    settings.setdefault("logger", {"name": "OStreamLogger", "config": {"file": "events.jsonl"}})
    config = write_config(directory, port, executor, executor_config, **settings)
    argv, env, log_name, stop_status = LAUNCHERS[launcher](config)
    process = Process(argv, directory, env)
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
