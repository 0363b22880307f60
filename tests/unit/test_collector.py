"""collector_paused: no cyclic collection inside, the collector's state restored after."""

import gc

import pytest

from daggy._collector import collector_paused


def test_collection_is_paused_inside_and_resumes_after_even_on_error():
    """Inside the block the collector is off; after it (also after an exception) it is on."""
    assert gc.isenabled()
    with pytest.raises(ValueError):
        with collector_paused():
            assert not gc.isenabled()
            raise ValueError("the burst failed")
    assert gc.isenabled()


def test_a_collector_that_was_off_stays_off():
    """A block inside code that already turned the collector off does not turn it on."""
    gc.disable()
    try:
        with collector_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    finally:
        gc.enable()
