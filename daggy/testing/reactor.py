# -*- test-case-name: tests.unit.test_forking_executor -*-
"""A fake reactor for process-spawning code: a clock plus a recording ``spawnProcess``.

Nothing is forked.  Each ``spawnProcess`` call creates a :class:`FakeProcess` transport
that records what the code under test did to it (signals, closed stdin, lost connection);
the test then plays the child's part with :meth:`FakeProcess.send_stdout`,
:meth:`FakeProcess.exit` and friends, which call the protocol exactly as the real reactor
does (``childDataReceived``, ``processExited``, ``processEnded``).

:meth:`FakeProcessReactor.kill_group` is an ``os.killpg`` stand-in for code that signals a
whole process group (pass it as the ``kill_group`` argument)::

    reactor = FakeProcessReactor()
    executor = ForkingTaskExecutor(reactor, kill_group=reactor.kill_group)
"""

from __future__ import annotations

import errno
import os
import signal as signal_module
from typing import Any

from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.interfaces import IProcessTransport, IReactorProcess
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from zope.interface import implementer

_SIGNAL_NAMES = {"HUP", "STOP", "INT", "KILL", "TERM"}


def _signal_number(signal_id: str | int) -> int:
    if isinstance(signal_id, str):
        if signal_id not in _SIGNAL_NAMES:
            raise ValueError(f"unknown signal name {signal_id!r}")
        return int(getattr(signal_module, f"SIG{signal_id}"))
    return int(signal_id)


@implementer(IProcessTransport)
class FakeProcess:
    """The transport of one fake child process, with helpers that play the child's part.

    :ivar signals: signal numbers sent to this pid with ``signalProcess``.
    :ivar group_signals: signal numbers sent to its process group with ``kill_group``.
    :ivar lingering: set it to simulate group members that outlive the child (the group
        then still accepts signals after the child ended).
    """

    def __init__(
        self,
        reactor: FakeProcessReactor,
        pid: int,
        protocol: Any,
        executable: str,
        args: list[str],
        env: dict[str, str] | None,
        path: str | None,
        child_fds: Any,
    ) -> None:
        self.pid: int | None = pid
        self.original_pid = pid
        self.protocol = protocol
        self.executable = executable
        self.args = args
        self.env = env
        self.path = path
        self.child_fds = child_fds
        self.signals: list[int] = []
        self.group_signals: list[int] = []
        self.closed_fds: set[int] = set()
        self.written: list[tuple[int, bytes]] = []
        self.lost_connection = False
        self.lingering = False
        self.exited = False
        self.ended = False
        self._reason: Failure | None = None
        self._reactor = reactor

    # IProcessTransport

    def closeStdin(self) -> None:
        self.closeChildFD(0)

    def closeStdout(self) -> None:
        self.closeChildFD(1)

    def closeStderr(self) -> None:
        self.closeChildFD(2)

    def closeChildFD(self, descriptor: int) -> None:
        self.closed_fds.add(descriptor)

    def writeToChild(self, childFD: int, data: bytes) -> None:
        self.written.append((childFD, data))

    def write(self, data: bytes) -> None:
        self.writeToChild(0, data)

    def writeSequence(self, data: list[bytes]) -> None:
        for chunk in data:
            self.write(chunk)

    def loseConnection(self) -> None:
        """Close our pipe ends: like the real transport, a reaped child then ends."""
        self.lost_connection = True
        self.closed_fds.update((0, 1, 2))
        if self.exited and not self.ended:
            self.close_pipes()

    def signalProcess(self, signalID: str | int) -> None:
        if self.exited:
            raise ProcessExitedAlready()
        self.signals.append(_signal_number(signalID))

    def getPeer(self) -> Any:
        return None

    def getHost(self) -> Any:
        return None

    # Test helpers: the child's side

    @property
    def group_alive(self) -> bool:
        """Whether signals to the process group would reach anyone."""
        return not self.ended or self.lingering

    def send_stdout(self, data: bytes) -> None:
        self.protocol.childDataReceived(1, data)

    def send_stderr(self, data: bytes) -> None:
        self.protocol.childDataReceived(2, data)

    def exit(self, code: int = 0, *, pipes_open: bool = False) -> None:
        """The child exits with ``code``.

        :param pipes_open: simulate a background process still holding stdout/stderr:
            only ``processExited`` is delivered; ``processEnded`` waits for
            :meth:`close_pipes` (or the code under test calling ``loseConnection``).
        """
        if code == 0:
            reason = Failure(ProcessDone(0))
        else:
            reason = Failure(ProcessTerminated(exitCode=code, status=code << 8))
        self._finish(reason, pipes_open)

    def die(self, signal: int | str, *, pipes_open: bool = False) -> None:
        """The child is killed by ``signal`` (a number or a name such as ``"TERM"``)."""
        number = _signal_number(signal)
        self._finish(Failure(ProcessTerminated(signal=number, status=number)), pipes_open)

    def close_pipes(self) -> None:
        """The last holder of the output pipes closes them; a reaped child then ends."""
        if self.ended:
            raise AssertionError(f"process {self.original_pid} already ended")
        if not self.exited:
            raise AssertionError(f"process {self.original_pid} has not exited yet")
        self.ended = True
        assert self._reason is not None
        self.protocol.processEnded(self._reason)

    def _finish(self, reason: Failure, pipes_open: bool) -> None:
        if self.exited:
            raise AssertionError(f"process {self.original_pid} already exited")
        self.exited = True
        self.pid = None  # as the real transport does once the child is reaped
        self._reason = reason
        self.protocol.processExited(reason)
        if not pipes_open:
            self.close_pipes()


@implementer(IReactorProcess)
class FakeProcessReactor(MemoryReactorClock):
    """``MemoryReactorClock`` plus a ``spawnProcess`` that records :class:`FakeProcess` es.

    :ivar processes: every process spawned, oldest first.
    :ivar spawn_error: if set, the next ``spawnProcess`` raises it (then it is cleared).
    """

    def __init__(self, first_pid: int = 1000) -> None:
        super().__init__()
        self.processes: list[FakeProcess] = []
        self.spawn_error: BaseException | None = None
        self._by_pid: dict[int, FakeProcess] = {}
        self._next_pid = first_pid

    def spawnProcess(
        self,
        processProtocol: Any,
        executable: str,
        args: Any = (),
        env: Any = None,
        path: str | None = None,
        uid: int | None = None,
        gid: int | None = None,
        usePTY: bool = False,
        childFDs: Any = None,
    ) -> FakeProcess:
        if self.spawn_error is not None:
            error, self.spawn_error = self.spawn_error, None
            raise error
        pid = self._next_pid
        self._next_pid += 1
        process = FakeProcess(
            self,
            pid,
            processProtocol,
            executable,
            list(args),
            dict(env) if env is not None else None,
            path,
            childFDs,
        )
        self.processes.append(process)
        self._by_pid[pid] = process
        processProtocol.makeConnection(process)
        return process

    def kill_group(self, pgid: int, signum: int) -> None:
        """``os.killpg`` for fake processes (each is the leader of group ``pid``).

        :raises ProcessLookupError: when the group has no live member, as ESRCH does.
        """
        process = self._by_pid.get(pgid)
        if process is None or not process.group_alive:
            raise ProcessLookupError(errno.ESRCH, os.strerror(errno.ESRCH))
        process.group_signals.append(signum)

    @property
    def last_process(self) -> FakeProcess:
        if not self.processes:
            raise AssertionError("no process was spawned")
        return self.processes[-1]

    def running_processes(self) -> list[FakeProcess]:
        """Spawned processes whose ``processEnded`` has not been delivered."""
        return [process for process in self.processes if not process.ended]
