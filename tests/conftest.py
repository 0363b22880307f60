"""Shared fixtures: every test fails if it leaves an unhandled error in the Twisted log."""

from __future__ import annotations

import gc

import pytest
from twisted.logger import globalLogPublisher


@pytest.fixture(autouse=True)
def no_logged_errors():
    """Fail a test that logged a failure (e.g. an "Unhandled error in Deferred").

    pytest-twisted does not do trial's logged-error check, so it is done here.
    """
    errors = []

    def observer(event):
        if event.get("log_failure") is not None or event.get("isError"):
            errors.append(event)

    globalLogPublisher.addObserver(observer)
    try:
        yield errors
        gc.collect()
    finally:
        globalLogPublisher.removeObserver(observer)
    if errors:
        from twisted.logger import formatEvent

        messages = []
        for event in errors:
            failure = event.get("log_failure")
            messages.append(formatEvent(event) + ("\n" + failure.getTraceback() if failure else ""))
        pytest.fail("errors were logged during the test:\n" + "\n".join(messages))
