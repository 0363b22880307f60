"""The private redis-server harness itself: the Redis integration tests rely on it starting,
guarding, restarting, persisting and isolating real servers as it claims."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from daemon_harness import alive
from redis_harness import RedisClient, RedisReplyError, RedisServer

pytestmark = pytest.mark.integration


def _config(server: RedisServer, name: str) -> str:
    key, value = server.command("CONFIG", "GET", name)
    assert key.decode() == name
    return value.decode()


def test_start_answers_ping_on_a_private_loopback_port(redis_server):
    """A started server answers PING on a loopback port of its own, with its data in the test's
    directory and no RDB snapshots."""
    assert redis_server.ping()
    assert redis_server.port != 6379
    assert _config(redis_server, "bind") == "127.0.0.1"
    assert _config(redis_server, "port") == str(redis_server.port)
    assert Path(_config(redis_server, "dir")) == redis_server.data_dir.resolve()
    assert _config(redis_server, "save") == ""
    assert _config(redis_server, "appendonly") == "yes"


def test_password_is_required(redis_servers):
    """With a password, commands without AUTH or with a wrong password are refused, and an
    authenticated client works."""
    server = redis_servers(password="s3cret word")
    with RedisClient.connect(port=server.port) as anonymous:
        with pytest.raises(RedisReplyError, match="NOAUTH"):
            anonymous.command("SET", "k", "v")
    with pytest.raises(RedisReplyError, match="WRONGPASS|invalid password"):
        RedisClient.connect(port=server.port, password="wrong")
    assert server.command("SET", "k", "v") == "OK"
    assert server.command("GET", "k") == b"v"


def test_restart_keeps_the_port_and_the_aof_data(redis_server):
    """restart() brings a new process up on the same port, and with appendonly every key and
    list written before the SIGTERM is there again."""
    redis_server.command("SET", "daggy:nextRunID", 7)
    redis_server.command("RPUSH", "daggy:list", "a", "b", "c")
    port, pid = redis_server.port, redis_server.pid

    redis_server.restart()

    assert (redis_server.port, redis_server.starts) == (port, 2)
    assert redis_server.pid != pid and not alive(pid)
    assert redis_server.command("GET", "daggy:nextRunID") == b"7"
    assert redis_server.command("LRANGE", "daggy:list", 0, -1) == [b"a", b"b", b"c"]
    assert (redis_server.data_dir / "appendonlydir").is_dir()


def test_without_appendonly_a_restart_starts_empty(redis_servers):
    """Without appendonly (and with RDB snapshots off) nothing survives a restart, so the
    persistence above really comes from the AOF."""
    server = redis_servers(appendonly=False)
    server.command("SET", "k", "v")
    server.restart()
    assert server.command("GET", "k") is None


def test_kill_stops_answering_and_start_recovers_fsynced_data(redis_servers):
    """kill() is a SIGKILL crash: the server stops answering; started again, it has what was
    fsynced (appendfsync always: everything)."""
    server = redis_servers(appendonly=True, appendfsync="always")
    server.command("SET", "k", "v")
    pid = server.pid
    server.kill()
    assert not server.running and not server.ping() and not alive(pid)

    server.start()
    assert server.command("GET", "k") == b"v"


def test_two_servers_run_at_once_and_stay_apart(redis_servers):
    """Two servers started in one test listen on different ports and have separate data."""
    first, second = redis_servers(), redis_servers()
    assert first.port != second.port and first.running and second.running
    first.command("SET", "k", "first")
    second.command("SET", "k", "second")
    assert first.command("GET", "k") == b"first"
    assert second.command("GET", "k") == b"second"


def test_unix_socket(redis_servers):
    """With unix_socket=True the server also answers on a unix socket path."""
    server = redis_servers(unix_socket=True, password="pw")
    assert server.unix_socket and Path(server.unix_socket).exists()
    with server.client(unix=True) as client:
        assert client.command("PING") == "PONG"
        assert client.command("SET", "k", "v") == "OK"
    assert server.command("GET", "k") == b"v"


def test_session_server_answers(session_redis_server):
    """The session-wide server is up and private (not on 6379)."""
    assert session_redis_server.ping() and session_redis_server.port != 6379


def test_missing_redis_server_fails_instead_of_skipping(tmp_path):
    """Without a redis-server binary, a test using the fixture fails (under CI=true too) with
    a message saying how to install it; it is never skipped."""
    env = {key: value for key, value in os.environ.items()
           if key != "DAGGY_TEST_REDIS_SERVER"}
    env.update(PATH=str(tmp_path), CI="true")
    here = Path(__file__)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfEs",
         f"{here}::test_session_server_answers"],
        cwd=here.parents[2], env=env, capture_output=True, text=True, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "skipped" not in output, output
    assert "redis-server is not installed" in output, output
    assert "CI=true: a missing Redis is a failure" in output, output
    assert "./scripts/test" in output, output
