"""The event hub: numbering, the replay window, subscriptions (filters, replay, gaps, slow
readers, keep-alives) and the archive, on a fake clock."""

from __future__ import annotations

import json
from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import LogLevel, globalLogPublisher

from daggy.errors import Unavailable
from daggy.events import (
    ARCHIVE_PAGE_EVENTS,
    KEEPALIVE_FRAME,
    MAX_WRITE_BYTES_PER_TURN,
    EventHub,
)


class Sink:
    """Records what a subscription writes, and whether it finished or aborted."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.finished = False
        self.aborted = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def finish(self) -> None:
        self.finished = True

    def abort(self) -> None:
        self.aborted = True

    def take(self) -> bytes:
        data = b"".join(self.written)
        self.written.clear()
        return data

    def messages(self) -> list[dict[str, Any]]:
        """The SSE messages written so far (and forgets them): each a dict of its fields,
        with ``data`` decoded from JSON; comments as ``{"comment": text}``."""
        return parse_messages(self.take())


def parse_messages(stream: bytes) -> list[dict[str, Any]]:
    messages = []
    assert stream.endswith(b"\n\n") or not stream, stream[-40:]
    for block in stream.decode("utf-8").split("\n\n")[:-1]:
        message: dict[str, Any] = {}
        for line in block.split("\n"):
            if line.startswith(":"):
                message["comment"] = line[1:].strip()
                continue
            name, _, value = line.partition(": ")
            assert name not in message, block
            message[name] = json.loads(value) if name == "data" else value
        messages.append(message)
    return messages


def event(run_id: int = 0, name: str = "taskState", **fields: Any) -> dict[str, Any]:
    return {"time": "2021-01-01T00:00:00.000000Z", "event": name, "runID": run_id, **fields}


def ids(messages: list[dict[str, Any]]) -> list[int]:
    return [int(message["id"]) for message in messages if "id" in message]


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def hub(clock):
    return EventHub(clock, max_events=10, max_bytes=1 << 20)


@pytest.fixture
def warnings():
    found: list[str] = []

    def observer(entry):
        if entry.get("log_level") is LogLevel.warn:
            found.append(entry.get("log_format", ""))

    globalLogPublisher.addObserver(observer)
    yield found
    globalLogPublisher.removeObserver(observer)


# -- numbering and the window -----------------------------------------------------------------

def test_events_are_numbered_from_1_and_published_as_json_lines(hub):
    """publish numbers events 1, 2, 3 and answers each with its compact JSON line."""
    first = hub.publish(event(task="a"))
    second = hub.publish(event(task="b"))
    assert first == (1, b'{"time":"2021-01-01T00:00:00.000000Z","event":"taskState",'
                        b'"runID":0,"task":"a"}\n')
    assert second[0] == 2 and json.loads(second[1])["task"] == "b"
    assert (hub.last_id, hub.oldest_id, hub.retained_events) == (2, 1, 2)


def test_an_event_that_is_not_json_is_refused_without_using_an_id(hub):
    """A value JSON cannot hold raises TypeError and the next event still gets the next ID."""
    with pytest.raises(TypeError):
        hub.publish(event(task=object()))
    with pytest.raises(TypeError):
        hub.publish({"runID": 0})
    assert hub.publish(event())[0] == 1


def test_the_window_keeps_the_newest_events_by_count(hub):
    """Beyond max_events, the oldest events leave the window."""
    for _ in range(25):
        hub.publish(event())
    assert (hub.oldest_id, hub.last_id, hub.retained_events) == (16, 25, 10)
    assert [event_id for event_id, _ in hub.window_after(0, 100)] == list(range(16, 26))


def test_the_window_keeps_the_newest_events_by_bytes(clock):
    """Beyond max_bytes of JSON the oldest events leave; the newest stays whatever its size."""
    hub = EventHub(clock, max_events=1000, max_bytes=1000)
    for _ in range(20):
        hub.publish(event(task="x" * 100))
    assert hub.retained_bytes <= 1000
    assert hub.retained_events == 1000 // len(hub.publish(event(task="x" * 100))[1])
    hub.publish(event(task="y" * 5000))
    assert (hub.retained_events, hub.oldest_id) == (1, hub.last_id)


def test_long_histories_keep_ids_and_lines_in_step(clock):
    """After many evictions (and compactions) every retained ID still has its own event."""
    hub = EventHub(clock, max_events=100)
    for number in range(1, 20_001):
        hub.publish(event(task=f"t{number}"))
    retained = hub.window_after(19_950, 10)
    assert [(event_id, json.loads(line)["task"]) for event_id, line in retained] == [
        (number, f"t{number}") for number in range(19_951, 19_961)]
    assert len(hub._lines) < 5000  # evicted slots are released


def test_window_sizes_must_be_positive(clock):
    """A zero or negative bound is refused when the hub is made."""
    with pytest.raises(ValueError, match="max_events"):
        EventHub(clock, max_events=0)
    with pytest.raises(ValueError, match="keepalive_seconds"):
        EventHub(clock, keepalive_seconds=0)


def test_numbering_goes_on_after_a_stored_id(clock):
    """continue_after before the first event makes the next ID one more than the stored
    one; subscriptions are refused until then."""
    hub = EventHub(clock)
    hub.defer_numbering()
    with pytest.raises(Unavailable):
        hub.subscribe(Sink())
    assert hub.continue_after(41)
    assert hub.numbering_known
    assert (hub.oldest_id, hub.last_id) == (42, 41)
    assert hub.publish(event())[0] == 42
    assert not hub.continue_after(100)  # too late: events were published
    assert hub.continue_after(10)  # changes nothing
    assert hub.publish(event())[0] == 43


# -- subscriptions ----------------------------------------------------------------------------

def test_a_subscription_gets_new_events_as_sse_messages_on_the_next_turn(clock, hub):
    """A subscription without Last-Event-ID gets only events published after it, framed as
    id/event/data messages, one write per reactor turn."""
    hub.publish(event(task="before"))
    sink = Sink()
    hub.subscribe(sink)
    hub.publish(event(task="a"))
    hub.publish(event(name="runState", state="RUNNING"))
    assert sink.written == []
    clock.advance(0)
    assert len(sink.written) == 1
    assert sink.messages() == [
        {"id": "2", "event": "taskState", "data": event(task="a")},
        {"id": "3", "event": "runState", "data": event(name="runState", state="RUNNING")},
    ]


def test_a_run_filter_passes_only_that_runs_events(clock, hub):
    """With a run ID only events of that run are sent; the IDs keep their global values."""
    sink = Sink()
    hub.subscribe(sink, run_id=1)
    for run_id in (0, 1, 0, 1):
        hub.publish(event(run_id))
    clock.advance(0)
    assert [(m["id"], m["data"]["runID"]) for m in sink.messages()] == [("2", 1), ("4", 1)]


def test_last_event_id_replays_what_follows_it_then_goes_live(clock, hub):
    """A Last-Event-ID inside the window gets every later event, then new ones: no gap, no
    duplicate."""
    for _ in range(5):
        hub.publish(event())
    sink = Sink()
    hub.subscribe(sink, last_event_id=2)
    clock.advance(0)
    assert ids(sink.messages()) == [3, 4, 5]
    hub.publish(event())
    clock.advance(0)
    assert ids(sink.messages()) == [6]


def test_last_event_id_of_the_newest_event_replays_nothing(clock, hub):
    """A reader that has everything gets no replay and no gap."""
    for _ in range(3):
        hub.publish(event())
    sink = Sink()
    hub.subscribe(sink, last_event_id=3)
    clock.advance(0)
    assert sink.written == []


def test_last_event_id_older_than_the_window_gets_a_gap_first(clock, hub):
    """A Last-Event-ID before the window gets a gap message (from, oldest) and then the
    whole window."""
    for _ in range(15):
        hub.publish(event())
    sink = Sink()
    hub.subscribe(sink, last_event_id=2)
    clock.advance(0)
    messages = sink.messages()
    assert messages[0] == {"event": "gap", "data": {"from": 2, "oldest": 6}}
    assert ids(messages) == list(range(6, 16))


def test_last_event_id_beyond_the_newest_gets_a_gap_and_everything_kept(clock, hub):
    """An ID the hub never gave out (the daemon restarted and numbers from 1 again) gets a
    gap from that ID and then every retained event."""
    for _ in range(3):
        hub.publish(event())
    sink = Sink()
    hub.subscribe(sink, last_event_id=5000)
    clock.advance(0)
    messages = sink.messages()
    assert messages[0] == {"event": "gap", "data": {"from": 5000, "oldest": 1}}
    assert ids(messages) == [1, 2, 3]


def test_a_gap_with_nothing_retained_names_the_next_id(clock):
    """A gap sent while the window is empty names the ID the next event will have."""
    hub = EventHub(clock)
    hub.defer_numbering()
    hub.continue_after(99)
    sink = Sink()
    hub.subscribe(sink, last_event_id=7)
    clock.advance(0)
    assert sink.messages() == [{"event": "gap", "data": {"from": 7, "oldest": 100}}]


def test_a_large_replay_is_spread_over_reactor_turns(clock):
    """Replaying many megabytes writes at most about MAX_WRITE_BYTES_PER_TURN per turn and
    still delivers every event once, in order."""
    hub = EventHub(clock)
    for number in range(1, 20_001):
        hub.publish(event(task=f"t{number}", padding="p" * 200))
    sink = Sink()
    hub.subscribe(sink, last_event_id=0)
    turns = 0
    while clock.getDelayedCalls() and turns < 1000:
        clock.advance(0)
        turns += 1
        if sink.written:
            assert len(sink.written[-1]) < MAX_WRITE_BYTES_PER_TURN + 1000
    assert turns > 3
    assert ids(sink.messages()) == list(range(1, 20_001))


def test_a_burst_larger_than_the_window_is_reported_as_a_gap(clock, hub):
    """Events that left the window within one turn, before a subscription could send them,
    are reported with a gap, never skipped silently."""
    sink = Sink()
    hub.subscribe(sink)
    hub.publish(event())
    clock.advance(0)
    for _ in range(30):
        hub.publish(event())
    clock.advance(0)
    messages = sink.messages()
    assert ids(messages) == [1] + list(range(22, 32))
    assert messages[1] == {"event": "gap", "data": {"from": 1, "oldest": 22}}


# -- slow readers -----------------------------------------------------------------------------

def test_a_reader_paused_for_max_paused_seconds_is_disconnected(clock):
    """While the transport has paused a subscription it writes nothing; once its connection
    has taken nothing for max_paused_seconds it is dropped (abort) and forgotten, whether
    or not events come meanwhile."""
    hub = EventHub(clock, max_paused_seconds=30)
    sink = Sink()
    subscription = hub.subscribe(sink)
    clock.advance(10)
    subscription.pauseProducing()
    for _ in range(29):
        hub.publish(event())
        clock.advance(1)
    assert not sink.aborted and sink.written == []
    clock.advance(1)
    assert sink.aborted and subscription.closed
    assert (hub.subscriptions, sink.written) == (0, [])
    assert clock.getDelayedCalls() == []


def test_a_burst_is_no_reason_to_disconnect(clock):
    """However many events are published while a reader is paused (one turn can publish a
    whole submission), it is not dropped: the events it lost come as a gap when it
    resumes."""
    hub = EventHub(clock, max_events=10)
    sink = Sink()
    subscription = hub.subscribe(sink)
    subscription.pauseProducing()
    for _ in range(1000):
        hub.publish(event(padding="p" * 1000))
    clock.advance(1)
    subscription.resumeProducing()
    clock.advance(0)
    messages = sink.messages()
    assert messages[0] == {"event": "gap", "data": {"from": 0, "oldest": 991}}
    assert ids(messages) == list(range(991, 1001))
    assert not sink.aborted


def test_a_reader_that_resumes_in_time_gets_everything(clock):
    """A pause shorter than max_paused_seconds loses nothing: on resume the reader gets
    every event it missed, and keep-alives go on as before."""
    hub = EventHub(clock, max_paused_seconds=30)
    sink = Sink()
    subscription = hub.subscribe(sink)
    subscription.pauseProducing()
    for _ in range(20):
        hub.publish(event())
    clock.advance(29)
    assert sink.written == []
    subscription.resumeProducing()
    clock.advance(0)
    assert ids(sink.messages()) == list(range(1, 21))
    clock.advance(15)
    assert sink.take() == KEEPALIVE_FRAME
    assert not sink.aborted


def test_a_subscription_holds_no_copy_of_the_events(clock):
    """Events a reader has not taken stay in the shared window only: publishing to a paused
    subscription keeps nothing per subscription."""
    hub = EventHub(clock)
    subscription = hub.subscribe(Sink())
    subscription.pauseProducing()
    for _ in range(100):
        hub.publish(event())
    assert set(vars(subscription)) >= {"_cursor"}
    assert not any(isinstance(value, (list, bytes, bytearray)) and value
                   for value in vars(subscription).values())


# -- keep-alives, closing ---------------------------------------------------------------------

def test_a_keep_alive_comment_follows_15_seconds_of_silence(clock, hub):
    """With no event for 15 s the stream gets ': keep-alive'; events postpone it."""
    sink = Sink()
    hub.subscribe(sink)
    clock.advance(14.9)
    assert sink.written == []
    clock.advance(0.1)
    assert sink.take() == KEEPALIVE_FRAME
    clock.advance(10)
    hub.publish(event())
    clock.advance(0)
    sink.take()
    clock.advance(14.9)
    assert sink.written == []
    clock.advance(0.1)
    assert sink.take() == KEEPALIVE_FRAME


def test_no_keep_alive_is_written_to_a_paused_reader(clock, hub):
    """A connection whose buffer is full is not idle: no keep-alive is added to it."""
    sink = Sink()
    subscription = hub.subscribe(sink)
    subscription.pauseProducing()
    clock.advance(60)
    assert sink.written == []


def test_close_stops_everything(clock, hub):
    """A closed subscription writes nothing more and leaves no timer behind."""
    sink = Sink()
    subscription = hub.subscribe(sink)
    hub.publish(event())
    subscription.close()
    subscription.close()
    clock.advance(100)
    assert sink.written == [] and hub.subscriptions == 0
    assert clock.getDelayedCalls() == []


def test_closing_the_hub_finishes_every_stream(clock, hub):
    """hub.close() ends each stream cleanly (finish, not abort)."""
    sinks = [Sink(), Sink()]
    for sink in sinks:
        hub.subscribe(sink)
    hub.close()
    assert [(s.finished, s.aborted) for s in sinks] == [(True, False), (True, False)]
    assert hub.subscriptions == 0 and clock.getDelayedCalls() == []


def test_closing_the_hub_first_sends_what_each_stream_has_not_had(clock, hub):
    """Events published in the same turn as close() (a stopping daemon's last KILLED states)
    still reach the streams, without a reactor turn; a paused stream is only finished."""
    live, paused = Sink(), Sink()
    hub.subscribe(live, run_id=0)
    hub.subscribe(paused).pauseProducing()
    hub.publish(event(0, task="a"))
    hub.publish(event(1, task="b"))
    hub.publish(event(0, "runState", state="KILLED"))
    hub.close()
    messages = live.messages()
    assert ids(messages) == [1, 3] and messages[-1]["data"]["state"] == "KILLED"
    assert paused.written == [] and paused.finished and live.finished
    assert clock.getDelayedCalls() == []


# -- the archive ------------------------------------------------------------------------------

class Archive:
    """Stored events (``{id: line-without-newline}``) answered as an EventArchive would."""

    def __init__(self, stored: dict[int, bytes]):
        self.stored = stored
        self.reads: list[tuple[int, int, int]] = []
        self.fail_with: Exception | None = None

    def read_events(self, first_id, last_id, limit):
        self.reads.append((first_id, last_id, limit))
        if self.fail_with is not None:
            return defer.fail(self.fail_with)
        found = [(event_id, data) for event_id, data in sorted(self.stored.items())
                 if first_id <= event_id <= last_id]
        return defer.succeed(found[:limit])


def stored_events(first: int, last: int, run_of=lambda number: 0) -> dict[int, bytes]:
    return {number: json.dumps(event(run_of(number), task=f"t{number}")).encode()
            for number in range(first, last + 1)}


def restarted_hub(clock, last_stored: int, archive: Archive) -> EventHub:
    hub = EventHub(clock, max_events=10)
    hub.defer_numbering()
    hub.set_archive(archive)
    hub.continue_after(last_stored)
    return hub


def test_events_older_than_the_window_are_replayed_from_the_archive(clock):
    """After a restart, a Last-Event-ID among the stored events gets the stored ones after
    it (read page by page), then the new ones: nothing lost, nothing twice."""
    archive = Archive(stored_events(1, 2500))
    hub = restarted_hub(clock, 2500, archive)
    hub.publish(event(task="new"))
    sink = Sink()
    hub.subscribe(sink, last_event_id=10)
    for _ in range(20):
        clock.advance(0)
    messages = sink.messages()
    assert ids(messages) == list(range(11, 2502))
    assert messages[0]["data"] == event(task="t11")
    assert [read[0] for read in archive.reads] == [11, 11 + ARCHIVE_PAGE_EVENTS,
                                                   11 + 2 * ARCHIVE_PAGE_EVENTS]
    assert all(read[1] == 2500 for read in archive.reads)


def test_archive_replay_applies_the_run_filter(clock):
    """Stored events of other runs are not sent to a filtered subscription."""
    archive = Archive(stored_events(1, 20, run_of=lambda number: number % 2))
    hub = restarted_hub(clock, 20, archive)
    sink = Sink()
    hub.subscribe(sink, run_id=1, last_event_id=0)
    clock.advance(0)
    clock.advance(0)
    assert ids(sink.messages()) == list(range(1, 21, 2))


def test_ids_the_archive_no_longer_has_are_reported_as_a_gap(clock):
    """A Last-Event-ID older than anything stored gets a gap naming the oldest stored ID."""
    archive = Archive(stored_events(500, 600))
    hub = restarted_hub(clock, 600, archive)
    sink = Sink()
    hub.subscribe(sink, last_event_id=3)
    clock.advance(0)
    messages = sink.messages()
    assert messages[0] == {"event": "gap", "data": {"from": 3, "oldest": 500}}
    assert ids(messages) == list(range(500, 601))


def test_an_archive_that_cannot_answer_gives_a_gap_and_a_warning(clock, warnings):
    """When the archive fails (Redis away), the reader gets a gap to the memory window and
    the live events; one warning is logged."""
    archive = Archive({})
    archive.fail_with = Unavailable("Redis is away")
    hub = restarted_hub(clock, 300, archive)
    hub.publish(event())
    sink = Sink()
    hub.subscribe(sink, last_event_id=100)
    clock.advance(0)
    clock.advance(0)
    messages = sink.messages()
    assert messages == [{"event": "gap", "data": {"from": 100, "oldest": 301}},
                        {"id": "301", "event": "taskState", "data": event()}]
    assert len(warnings) == 1 and "cannot be replayed" in warnings[0]


def test_a_stored_entry_that_is_not_an_event_is_skipped_with_a_warning(clock, warnings):
    """A corrupt stored entry is left out (warned about); the others are replayed."""
    archive = Archive(stored_events(1, 3))
    archive.stored[2] = b"not json"
    hub = restarted_hub(clock, 3, archive)
    sink = Sink()
    hub.subscribe(sink, last_event_id=0)
    clock.advance(0)
    clock.advance(0)
    assert ids(sink.messages()) == [1, 3]
    assert len(warnings) == 1
