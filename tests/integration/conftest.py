"""Fixtures starting real daemon processes (helpers in daemon_harness.py), private
redis-server processes (helpers in redis_harness.py) and a private Slurm cluster (helpers in
slurm_harness.py)."""

from __future__ import annotations

import warnings

import pytest

from daemon_harness import Daemon, Process, start_daemon
from redis_harness import RedisNotInstalled, RedisServer, find_redis_server
from slurm_harness import SlurmCluster, SlurmNotInstalled


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


# -- Redis ---------------------------------------------------------------------------------


def _redis_binary() -> str:
    """The redis-server to run; fails the test (never skips it) when there is none."""
    try:
        return find_redis_server()
    except RedisNotInstalled as error:
        problem = str(error)
    pytest.fail(problem, pytrace=False)


def _redis_starter(make_directory):
    """``start(**options) -> RedisServer`` (options of ``RedisServer``) plus the list of
    servers it started, each in a fresh directory."""
    executable = _redis_binary()
    started: list[RedisServer] = []

    def start(**options) -> RedisServer:
        server = RedisServer(make_directory(), executable=executable, **options)
        started.append(server)
        return server.start()

    return start, started


def _stop_all(servers: list[RedisServer]) -> None:
    for server in servers:
        try:
            server.stop()
        finally:
            server.cleanup()


@pytest.fixture
def redis_servers(tmp_path_factory):
    """Start private redis-servers on free loopback ports: ``start(appendonly=False,
    appendfsync="everysec", password=None, unix_socket=False) -> RedisServer`` (see
    ``redis_harness.RedisServer``).  Every server still running at the end of the test is
    stopped."""
    start, started = _redis_starter(lambda: tmp_path_factory.mktemp("redis"))
    yield start
    _stop_all(started)


@pytest.fixture
def redis_server(redis_servers) -> RedisServer:
    """A private redis-server for this test, with AOF persistence (``appendonly yes``) so
    it keeps its data across ``restart()``."""
    return redis_servers(appendonly=True)


@pytest.fixture(scope="session")
def session_redis_server(tmp_path_factory) -> RedisServer:
    """One private redis-server (no persistence) shared by the whole session, for tests
    that keep apart by key prefix and never stop it."""
    start, started = _redis_starter(lambda: tmp_path_factory.mktemp("session-redis"))
    yield start()
    _stop_all(started)


# -- Slurm ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def slurm_cluster():
    """One private single-node Slurm cluster (munged, slurmctld, slurmd on free loopback
    ports, in a temporary directory) shared by the whole session; run Slurm commands with
    ``slurm_cluster.env`` or its helpers (see ``slurm_harness.SlurmCluster``).  Fails, never
    skips, when Slurm is not installed.  At the end every job is cancelled and everything the
    cluster started is stopped, whatever the tests did."""
    try:
        cluster = SlurmCluster()
    except SlurmNotInstalled as error:
        pytest.fail(str(error), pytrace=False)
    cluster.start()
    try:
        yield cluster
    finally:
        leftovers = cluster.stop()
    if leftovers:
        # They are dead now; failing the session for them would not make the tests wrong.
        warnings.warn(f"stopping the Slurm cluster had to kill leftovers (logs kept in"
                      f" {cluster.directory}): {'; '.join(leftovers)}")
