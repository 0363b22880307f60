# -*- test-case-name: tests.unit.test_signals -*-
"""SIGHUP for daggyd: the handler only hands the work to the reactor.

A Python signal handler runs between two bytecodes of whatever the main thread was doing,
in the middle of the reactor's own work, so it must not touch daggyd's state.  The handler
installed here does one thing: ``reactor.callFromThread(handler)``, which is safe from a
signal handler (Twisted's own SIGINT/SIGTERM handlers do the same) and wakes a reactor
blocked in ``epoll``.  The handler then runs on the reactor thread, at the start of its next
iteration, like any other event.

The same code serves ``daggyd`` and ``twistd -n daggyd``: neither installs a SIGHUP handler
of its own (twistd uses SIGUSR1 to rotate its log file), and both start the services in the
main thread, where ``signal.signal`` must be called.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any, Callable

from twisted.logger import Logger

log = Logger()


def install_sighup(reactor: Any, handler: Callable[[], object]) -> Callable[[], None]:
    """Make SIGHUP run ``handler()`` on the reactor thread.

    Several signals in a row may each run ``handler``; it should be idempotent.  An
    exception from it is logged, never raised into the reactor.

    :param reactor: provides ``callFromThread``.
    :param handler: called with no arguments, on the reactor thread, once per SIGHUP.
    :returns: an uninstaller restoring the handler that was there before (idempotent).
        Where SIGHUP cannot be handled (no SIGHUP on this platform, or not called from the
        main thread) nothing is installed, that is logged, and the uninstaller does nothing.
    """
    if not hasattr(signal, "SIGHUP"):
        log.warn("SIGHUP does not exist on this platform; it cannot reopen the event file")
        return _nothing
    if threading.current_thread() is not threading.main_thread():
        log.warn("not in the main thread: no SIGHUP handler installed")
        return _nothing

    def run_handler() -> None:
        log.info("Received SIGHUP")
        try:
            handler()
        except Exception:
            log.failure("Handling SIGHUP failed")

    def on_signal(signum: int, frame: FrameType | None) -> None:
        # Nothing else here: see the module docstring.
        reactor.callFromThread(run_handler)

    previous = signal.signal(signal.SIGHUP, on_signal)
    installed = True

    def uninstall() -> None:
        nonlocal installed
        if not installed:
            return
        installed = False
        # Only put the old handler back if ours is still the one installed; someone who
        # replaced it since keeps theirs.
        if signal.getsignal(signal.SIGHUP) is on_signal:
            signal.signal(signal.SIGHUP,
                          previous if previous is not None else signal.SIG_DFL)

    return uninstall


def _nothing() -> None:
    """The uninstaller when nothing was installed."""
