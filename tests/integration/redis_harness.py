"""Start private `redis-server` processes for tests and talk RESP to them (test helpers).

Each server listens on a free loopback port (never the system Redis on 6379), keeps its data,
AOF and log in a directory of its own, reads no config file, and is a child of the test
process, so stopping it never depends on pid files.  Imported by the integration tests
(pytest puts this directory on ``sys.path``) and by ``bench/``; the fixtures built on it are
in ``conftest.py``.

The binary is ``$DAGGY_TEST_REDIS_SERVER`` (exported by ``scripts/test.d/redis.sh``, which
installs Debian's ``redis-server`` package when it is missing), else ``redis-server`` on
``PATH``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from daemon_harness import START_SECONDS, STOP_SECONDS, free_port, wait_until

HOST = "127.0.0.1"
#: Attempts at finding a free port for a first start: another process may take the port
#: between ``free_port()`` and redis-server binding it.
PORT_ATTEMPTS = 5
#: A unix socket path must fit in sockaddr_un (108 bytes on Linux, with the NUL).
MAX_SOCKET_PATH = 100


class RedisNotInstalled(RuntimeError):
    """No redis-server binary to run."""


class RedisReplyError(Exception):
    """An error reply (``-ERR ...``) from Redis."""


def find_redis_server() -> str:
    """The redis-server binary to run; raises RedisNotInstalled with what to do about it."""
    configured = os.environ.get("DAGGY_TEST_REDIS_SERVER")
    if configured:
        if os.access(configured, os.X_OK) and Path(configured).is_file():
            return configured
        raise RedisNotInstalled(
            f"DAGGY_TEST_REDIS_SERVER={configured!r} is not an executable file")
    found = shutil.which("redis-server")
    if found:
        return found
    ci = os.environ.get("CI", "").lower() == "true"
    raise RedisNotInstalled(
        "redis-server is not installed, and the Redis integration tests need it"
        + (" (CI=true: a missing Redis is a failure, not a skip)" if ci else "")
        + ". Run the tests with ./scripts/test, which installs Debian's redis-server package"
        " (scripts/test.d/redis.sh), or install it yourself (apt-get install redis-server) or"
        " point DAGGY_TEST_REDIS_SERVER at a redis-server binary.")


# -- RESP ----------------------------------------------------------------------------------


def encode_command(*arguments: Any) -> bytes:
    """One command as a RESP array of bulk strings (str, bytes and numbers accepted)."""
    parts = [b"*%d\r\n" % len(arguments)]
    for argument in arguments:
        if isinstance(argument, str):
            data = argument.encode()
        elif isinstance(argument, bytes):
            data = argument
        else:
            data = str(argument).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


class RedisClient:
    """A blocking RESP connection for test code: ``client.command("GET", "k")``.

    Bulk strings come back as ``bytes``, simple strings as ``str``, integers as ``int``,
    arrays as lists, nil as None; an error reply raises RedisReplyError.
    """

    def __init__(self, sock: socket.socket):
        self._socket = sock
        self._reader = sock.makefile("rb")

    @classmethod
    def connect(cls, host: str = HOST, port: int | None = None, *, unix_socket: str | None = None,
                password: str | None = None, timeout: float = 10) -> "RedisClient":
        if unix_socket:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            address: Any = unix_socket
        else:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            address = (host, port)
        sock.settimeout(timeout)
        try:
            sock.connect(address)
        except BaseException:
            sock.close()
            raise
        client = cls(sock)
        if password is not None:
            try:
                client.command("AUTH", password)
            except BaseException:
                client.close()
                raise
        return client

    def command(self, *arguments: Any) -> Any:
        self._socket.sendall(encode_command(*arguments))
        return self._read_reply()

    def _read_reply(self) -> Any:
        line = self._reader.readline()
        if not line.endswith(b"\r\n"):
            raise ConnectionError("Redis closed the connection")
        kind, body = line[:1], line[1:-2]
        if kind == b"+":
            return body.decode()
        if kind == b"-":
            raise RedisReplyError(body.decode())
        if kind == b":":
            return int(body)
        if kind == b"$":
            length = int(body)
            if length < 0:
                return None
            data = self._reader.read(length + 2)
            if len(data) != length + 2:
                raise ConnectionError("Redis closed the connection")
            return data[:-2]
        if kind == b"*":
            count = int(body)
            return None if count < 0 else [self._read_reply() for _ in range(count)]
        raise ConnectionError(f"unexpected RESP reply {line!r}")

    def close(self) -> None:
        self._reader.close()
        self._socket.close()

    def __enter__(self) -> "RedisClient":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


# -- a server ------------------------------------------------------------------------------


class RedisServer:
    """One private redis-server: ``start()``, ``stop()`` (SIGTERM), ``kill()`` (SIGKILL),
    ``restart()`` (same port, socket and directory, so an AOF written before is loaded).

    ``appendonly=True`` keeps data across restarts in ``directory/data/appendonlydir``;
    SIGTERM flushes it completely, while after ``kill()`` up to ``appendfsync``'s window
    (1 s for "everysec") may be lost.  RDB snapshots are off (``--save ''``).
    """

    def __init__(self, directory: Path, *, appendonly: bool = False,
                 appendfsync: str = "everysec", password: str | None = None,
                 unix_socket: bool = False, port: int | None = None,
                 executable: str | None = None):
        self.directory = Path(directory)
        self.data_dir = self.directory / "data"
        self.log_path = self.directory / "redis.log"
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        self.password = password
        self.port = port
        self.host = HOST
        self.executable = executable or find_redis_server()
        self.unix_socket: str | None = None
        self._socket_dir: str | None = None
        if unix_socket:
            path = self.directory / "redis.sock"
            if len(str(path)) > MAX_SOCKET_PATH:
                self._socket_dir = tempfile.mkdtemp(prefix="daggy-redis-")
                path = Path(self._socket_dir) / "redis.sock"
            self.unix_socket = str(path)
        self.popen: subprocess.Popen | None = None
        self.starts = 0

    # -- lifecycle

    def _argv(self) -> list[str]:
        argv = [
            self.executable,
            "--bind", self.host, "--port", str(self.port),
            "--dir", str(self.data_dir),
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", self.appendfsync,
            "--daemonize", "no",
            "--logfile", str(self.log_path),
        ]
        if self.password is not None:
            argv += ["--requirepass", self.password]
        if self.unix_socket:
            argv += ["--unixsocket", self.unix_socket, "--unixsocketperm", "700"]
        return argv

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def start(self) -> "RedisServer":
        """Start the server and wait until it answers PING (after AUTH, when a password is
        set).  The first start picks a free port unless one was given; later starts reuse
        it."""
        assert not self.running, "redis-server is already running"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        pick_port = self.port is None
        for _ in range(PORT_ATTEMPTS if pick_port else 1):
            if pick_port:
                self.port = free_port()
            if self._spawn_and_wait():
                self.starts += 1
                return self
            if not pick_port or "Address already in use" not in self.log:
                break
        raise AssertionError(
            f"redis-server on {self.host}:{self.port} exited with {self.popen.returncode}"
            f" before answering PING; its log:\n{self.log}")

    def _spawn_and_wait(self) -> bool:
        """Start the process; True once it answers, False if it exited first."""
        out = open(self.directory / "stdout.txt", "ab")
        try:
            self.popen = subprocess.Popen(self._argv(), cwd=self.data_dir,
                                          stdin=subprocess.DEVNULL, stdout=out,
                                          stderr=subprocess.STDOUT)
        finally:
            out.close()
        try:
            wait_until(lambda: self.popen.poll() is not None or self.ping(),
                       f"redis-server on {self.host}:{self.port} to answer PING",
                       START_SECONDS)
        except BaseException:
            self.kill()
            raise
        return self.popen.poll() is None

    def stop(self, seconds: float = STOP_SECONDS) -> int:
        """SIGTERM (Redis flushes its AOF and exits); returns the exit status."""
        if self.popen is None:
            return 0
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                return self.popen.wait(timeout=seconds)
            except subprocess.TimeoutExpired:
                self.kill()
                raise AssertionError(
                    f"redis-server did not exit within {seconds}s of SIGTERM; killed it")
        return self.popen.returncode

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.popen is not None and self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait()

    def restart(self) -> "RedisServer":
        """Stop (SIGTERM) and start again on the same port, socket and directory."""
        self.stop()
        return self.start()

    def cleanup(self) -> None:
        """Kill the server if it runs, and remove a socket directory made for it."""
        self.kill()
        if self._socket_dir:
            shutil.rmtree(self._socket_dir, ignore_errors=True)

    # -- talking to it

    def client(self, *, unix: bool = False, timeout: float = 10) -> RedisClient:
        """A new authenticated connection (over the unix socket when ``unix``)."""
        return RedisClient.connect(self.host, self.port,
                                   unix_socket=self.unix_socket if unix else None,
                                   password=self.password, timeout=timeout)

    def command(self, *arguments: Any) -> Any:
        """One command on a fresh connection."""
        with self.client() as client:
            return client.command(*arguments)

    def ping(self) -> bool:
        """Whether the server answers PONG now (a server still loading its AOF does not)."""
        try:
            return self.command("PING") == "PONG"
        except (OSError, ConnectionError, RedisReplyError):
            return False

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen is not None else None

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password is not None else ""
        return f"redis://{auth}{self.host}:{self.port}/0"

    def __repr__(self) -> str:
        return f"<RedisServer {self.host}:{self.port} dir={self.directory}>"


def start_redis(directory: Path, **options) -> RedisServer:
    """A started RedisServer in ``directory`` (see RedisServer for the options)."""
    directory.mkdir(parents=True, exist_ok=True)
    return RedisServer(directory, **options).start()

