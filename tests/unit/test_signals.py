"""install_sighup: SIGHUP only schedules the handler on the reactor; uninstalling restores."""

from __future__ import annotations

import signal
import threading

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred

from daggy.service.signals import install_sighup


class RecordingReactor:
    """Records ``callFromThread`` calls instead of running them."""

    def __init__(self):
        self.scheduled = []

    def callFromThread(self, f, *args, **kwargs):
        self.scheduled.append((f, args, kwargs))

    def run_scheduled(self):
        scheduled, self.scheduled = self.scheduled, []
        for f, args, kwargs in scheduled:
            f(*args, **kwargs)


@pytest.fixture
def restore_sighup():
    """Put back whatever SIGHUP handler the test process had."""
    previous = signal.getsignal(signal.SIGHUP)
    yield
    signal.signal(signal.SIGHUP, previous)


def test_sighup_only_schedules_the_handler(restore_sighup):
    """The signal handler does no work itself: the handler runs once the reactor runs what
    was scheduled, once per signal."""
    reactor = RecordingReactor()
    calls = []
    uninstall = install_sighup(reactor, lambda: calls.append("reopen"))
    signal.raise_signal(signal.SIGHUP)
    signal.raise_signal(signal.SIGHUP)
    assert calls == []
    assert len(reactor.scheduled) == 2
    reactor.run_scheduled()
    assert calls == ["reopen", "reopen"]
    uninstall()


def test_uninstall_restores_the_previous_handler(restore_sighup):
    """The uninstaller puts back the handler that was installed before; calling it twice
    is harmless."""
    def earlier(signum, frame):
        pass

    signal.signal(signal.SIGHUP, earlier)
    uninstall = install_sighup(RecordingReactor(), lambda: None)
    assert signal.getsignal(signal.SIGHUP) is not earlier
    uninstall()
    assert signal.getsignal(signal.SIGHUP) is earlier
    uninstall()
    assert signal.getsignal(signal.SIGHUP) is earlier


def test_uninstall_restores_the_default_disposition(restore_sighup):
    """With no Python handler before (SIG_DFL), uninstalling goes back to SIG_DFL."""
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    uninstall = install_sighup(RecordingReactor(), lambda: None)
    uninstall()
    assert signal.getsignal(signal.SIGHUP) is signal.SIG_DFL


def test_uninstall_leaves_a_handler_installed_later_alone(restore_sighup):
    """If someone replaced our handler since, uninstalling does not remove theirs."""
    uninstall = install_sighup(RecordingReactor(), lambda: None)

    def later(signum, frame):
        pass

    signal.signal(signal.SIGHUP, later)
    uninstall()
    assert signal.getsignal(signal.SIGHUP) is later


def test_a_failing_handler_is_logged_not_raised(restore_sighup, no_logged_errors):
    """An exception from the handler is logged as a failure and does not escape into the
    reactor."""
    reactor = RecordingReactor()
    uninstall = install_sighup(reactor, lambda: 1 / 0)
    signal.raise_signal(signal.SIGHUP)
    reactor.run_scheduled()
    uninstall()
    assert len(no_logged_errors) == 1
    assert no_logged_errors[0]["log_failure"].check(ZeroDivisionError)
    no_logged_errors.clear()


def test_outside_the_main_thread_nothing_is_installed(restore_sighup):
    """Called from another thread (where signal.signal is impossible) it installs nothing
    and returns a no-op uninstaller."""
    before = signal.getsignal(signal.SIGHUP)
    results = []
    thread = threading.Thread(
        target=lambda: results.append(install_sighup(RecordingReactor(), lambda: None)))
    thread.start()
    thread.join()
    assert signal.getsignal(signal.SIGHUP) is before
    results[0]()
    assert signal.getsignal(signal.SIGHUP) is before


@pytest_twisted.ensureDeferred
async def test_on_the_real_reactor_the_handler_runs_on_the_reactor_thread(restore_sighup):
    """With the real reactor, SIGHUP leads to the handler running in the reactor thread."""
    from twisted.internet import reactor

    ran: Deferred[str] = Deferred()
    uninstall = install_sighup(
        reactor, lambda: ran.callback(threading.current_thread().name))
    try:
        signal.raise_signal(signal.SIGHUP)
        assert not ran.called
        assert await ran == threading.main_thread().name
    finally:
        uninstall()
