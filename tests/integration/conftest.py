"""Fixtures starting real daemon processes (helpers in daemon_harness.py)."""

from __future__ import annotations

import pytest

from daemon_harness import Daemon, Process, start_daemon


@pytest.fixture
def processes():
    """Start processes (``start(argv, directory, env=None)``); any still running at the end
    of the test is killed."""
    started: list[Process] = []

    def start(argv, directory, env=None) -> Process:
        started.append(Process(argv, directory, env))
        return started[-1]

    yield start
    for process in started:
        process.kill()


@pytest.fixture(scope="module")
def daemons(tmp_path_factory):
    """Start daemons living for the whole module: ``start(launcher, **settings)`` (see
    ``daemon_harness.start_daemon``).  At the end each gets SIGTERM and must exit with its
    launcher's status after a graceful stop, without a traceback in its log."""
    started: list[Daemon] = []

    def start(launcher: str, **settings) -> Daemon:
        daemon = start_daemon(launcher, tmp_path_factory.mktemp(launcher), **settings)
        started.append(daemon)
        return daemon

    yield start
    problems = []
    for daemon in started:
        status = daemon.stop()
        if status != daemon.stop_status:
            problems.append(f"{daemon.launcher} exited with {status}, not {daemon.stop_status}")
        if daemon.new_log_errors(0):
            problems.append(f"{daemon.launcher} logged errors:\n{daemon.log}")
    assert not problems, "\n".join(problems)
