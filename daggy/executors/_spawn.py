# -*- test-case-name: tests.integration.test_forking_real -*-
"""Spawn a task as the leader of a new session, so that its pid is its process-group id and
the whole group can be signalled, without exec'ing a helper first.

``reactor.spawnProcess`` offers no way to run code in the child before ``exec``.  Twisted's
own :class:`twisted.internet.process.Process` does the spawning in two overridable steps:
``_trySpawnInsteadOfFork`` (``posix_spawnp``, used when no working directory, uid or gid is
asked for) and ``_execChild`` (the child side after ``fork``).  The subclass below adds
``setsid`` to both: ``posix_spawn(..., setsid=True)`` on the fast path and ``os.setsid()``
before ``exec`` on the fork path.  Everything else (pipes, the file actions that close the
daemon's descriptors, reaping) stays Twisted's.

Twisted marks both methods private; they have kept their signatures since posix_spawn came
in (Twisted 22.8).  ``SESSION_SPAWN_AVAILABLE`` is False when they are missing, and callers
then fall back to exec'ing util-linux ``setsid``.
"""

from __future__ import annotations

import _signal  # the C module: getsignal without converting every answer to an enum
import os
from typing import Any

from twisted.internet import process as _twisted_process
from twisted.internet.posixbase import PosixReactorBase

_list_open_fds = getattr(_twisted_process, "_listOpenFDs", None)
_get_file_actions = getattr(_twisted_process, "_getFileActions", None)

SESSION_SPAWN_AVAILABLE = (
    _list_open_fds is not None
    and _get_file_actions is not None
    and hasattr(_twisted_process.Process, "_trySpawnInsteadOfFork")
    and hasattr(_twisted_process.Process, "_execChild")
    and hasattr(os, "posix_spawn")
)


_inherited_descriptors_sealed = False


def _seal_inherited_descriptors() -> None:
    """Mark every descriptor above 2 close-on-exec, once per daemon.

    Python opens descriptors non-inheritable (PEP 446), so the only ones a task could
    inherit are those daggyd itself inherited from whatever started it.  With those sealed,
    a spawn need not list ``/proc/self/fd`` and query each descriptor (as Twisted does on
    every spawn, a tenth of the daemon's time per task): the child gets only its pipes.
    """
    global _inherited_descriptors_sealed
    if _inherited_descriptors_sealed:
        return
    for fd in _list_open_fds():
        if fd > 2:
            try:
                os.set_inheritable(fd, False)
            except OSError:
                pass  # closed since it was listed (the listing's own descriptor)
    _inherited_descriptors_sealed = True


class _SessionLeaderProcess(_twisted_process.Process):
    """A Twisted process whose child calls ``setsid`` before it runs the program."""

    def _trySpawnInsteadOfFork(self, path, uid, gid, executable, args, environment, kwargs):
        if path is not None or uid is not None or gid is not None:
            return False  # posix_spawn cannot chdir or change ids: fork, then _execChild
        _seal_inherited_descriptors()
        fdmap = kwargs.get("fdmap")
        # Only the descriptors the child is given matter (the rest are close-on-exec).  The
        # parent's ends are Twisted's fresh pipes, close-on-exec like every descriptor
        # Python opens; the child's numbers are listed too so relocations avoid them, and
        # are always replaced (dup2), never closed: no need to ask the kernel about either.
        fd_state = [(fd, True) for fd in {*fdmap.values(), *fdmap}]
        # The daemon may ignore signals (SIGPIPE, SIGHUP under nohup): a task must not
        # inherit that.
        ignored = [number for number in range(1, _signal.NSIG)
                   if _signal.getsignal(number) == _signal.SIG_IGN]
        self.pid = os.posix_spawn(
            executable, args, environment if environment is not None else os.environ,
            file_actions=_get_file_actions(fd_state, fdmap,
                                           doClose=os.POSIX_SPAWN_CLOSE,
                                           doDup2=os.POSIX_SPAWN_DUP2),
            setsigdef=ignored, setsid=True)
        self.status = -1
        return True

    def _execChild(self, path, uid, gid, executable, args, environment):
        os.setsid()
        super()._execChild(path, uid, gid, executable, args, environment)


def can_spawn_session_leaders(reactor: Any) -> bool:
    """Whether :func:`spawn_session_leader` can start processes on ``reactor``."""
    return SESSION_SPAWN_AVAILABLE and isinstance(reactor, PosixReactorBase)


def spawn_session_leader(reactor: PosixReactorBase, protocol: Any, executable: str,
                         args: list[str], env: dict[str, str], path: str | None) -> Any:
    """Like ``reactor.spawnProcess(protocol, executable, args, env, path)``, with the child
    the leader of a new session and process group.  ``executable`` must be a path (no
    ``PATH`` search); ``args[0]`` is what the program sees as its name."""
    return _SessionLeaderProcess(reactor, executable, args, env, path, protocol, None, None,
                                 None)
