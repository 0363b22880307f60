"""The RunLogger contract (tests/unit/test_logger_contract.py) against a real redis-server,
through the production connector (txredisapi) on the real reactor.

The contract's tests are imported, not copied: every test of that module that takes one of
its logger fixtures (``harness``, ``in_memory``, ``durable``) is collected here too, and the
three fixtures are redefined below to hand it a :class:`Harness` around a RedisLogger on the
session's redis-server, under a key prefix of its own.

``Harness.settle(d)`` is synchronous: it must make ``d`` fire.  In the unit suite it
advances a fake clock; here it lets the real reactor run until ``d`` has fired.  Under
pytest-twisted the reactor runs in a greenlet of its own, and ``pytest_twisted.blockon(d)``
switches to that greenlet until ``d`` fires, then back.  It cannot be called from the
reactor's greenlet, and pytest-twisted calls every test function there (from a reactor
callback), so each imported test is wrapped by :func:`beside_reactor`: it runs the test in a
greenlet of its own and hands pytest-twisted a Deferred that fires when the test ends; the
test's ``settle`` calls then switch to the reactor and back like ``blockon`` from a fixture.
``blockon`` consumes the result of the Deferred it waits on, so ``settle`` waits on a second
Deferred, fired (one reactor turn later) by a pass-through callback, and leaves ``d``'s
result for the harness to read; a deadline turns a Deferred that never fires into a failure
instead of a hang.
"""

from __future__ import annotations

import functools
import inspect
import uuid
from typing import Any, Callable

import greenlet
import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from redis_harness import RedisServer
from tests.unit import test_logger_contract as contract
from tests.unit.test_logger_contract import Harness

pytestmark = pytest.mark.integration

#: Seconds any one Deferred may take on a local Redis before the test fails.
SETTLE_SECONDS = 10
LOGGER_FIXTURES = {"harness", "in_memory", "durable"}


def settle_on_reactor(d: Deferred) -> None:
    """Run the reactor until ``d`` has fired, leaving its result in place."""
    if d.called:
        return
    from twisted.internet import reactor

    fired: Deferred[None] = Deferred()

    def passed_through(result):
        # Fired on a later turn: switching to the test now, in the middle of ``d``'s
        # callbacks, would leave ``d`` running callbacks while the test reads it.
        reactor.callLater(0, fire)
        return result

    def fire() -> None:
        if not fired.called:  # not timed out
            fired.callback(None)

    d.addBoth(passed_through)
    fired.addTimeout(SETTLE_SECONDS, reactor)
    pytest_twisted.blockon(fired)


def make_real_redis_logger(server: RedisServer) -> Harness:
    """A harness around RedisLoggers on ``server`` sharing a fresh prefix; ``reopen`` opens
    another one on it, as a restarted daemon would."""
    from twisted.internet import reactor

    from daggy.loggers.redis import RedisLogger

    prefix = f"contract-{uuid.uuid4().hex}"
    loggers: list[RedisLogger] = []

    def open_logger() -> RedisLogger:
        logger = RedisLogger(reactor, prefix=prefix, host=server.host, port=server.port)
        loggers.append(logger)
        logger.start()
        settle_on_reactor(logger.when_ready())
        assert logger.status() == (True, "")
        return logger

    def teardown() -> None:
        for logger in loggers:
            closed = logger.close()
            settle_on_reactor(closed)
            assert closed.called
        # Nothing of this test is left in Redis for another one to see.
        keys = server.command("KEYS", f"{prefix}:*")
        if keys:
            server.command("DEL", *keys)

    return Harness(open_logger(), settle=settle_on_reactor, teardown=teardown,
                   reopen=open_logger, notes={"server": server, "prefix": prefix})


@pytest.fixture
def real_redis_harness(session_redis_server):
    h = make_real_redis_logger(session_redis_server)
    yield h
    h.teardown()


@pytest.fixture
def harness(real_redis_harness):
    return real_redis_harness


@pytest.fixture
def in_memory(real_redis_harness):
    return real_redis_harness


@pytest.fixture
def durable(real_redis_harness):
    return real_redis_harness


def beside_reactor(test: Callable[..., Any]) -> Callable[..., Deferred]:
    """``test`` run in a greenlet of its own, so that it may block on the reactor (see the
    module docstring); returns a Deferred of its outcome.  Signature and marks (e.g.
    parametrize) are the test's own."""

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> Deferred:
        from twisted.internet import reactor

        finished: Deferred = Deferred()

        def body() -> None:
            try:
                result = test(*args, **kwargs)
            except BaseException:
                outcome = Failure()
                reactor.callLater(0, finished.errback, outcome)
            else:
                reactor.callLater(0, finished.callback, result)
            # Returning switches back to the reactor's greenlet; ``finished`` fires from
            # there, on the next reactor turn.

        greenlet.greenlet(body).switch()
        return finished

    return run


def _contract_tests() -> dict[str, Callable[..., Deferred]]:
    """The contract's tests that run against a logger fixture (the rest test MemoryStore
    helpers, which a Redis run adds nothing to), each wrapped by :func:`beside_reactor`."""
    tests = {}
    for name, value in vars(contract).items():
        if name.startswith("test_") and inspect.isfunction(value):
            if LOGGER_FIXTURES & set(inspect.signature(value).parameters):
                tests[name] = beside_reactor(value)
    return tests


globals().update(_contract_tests())
