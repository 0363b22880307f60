"""daggyc follow: the SSE parser, the run model, and following over the event stream
(reconnecting with Last-Event-ID) or by polling, against httpx mock transports."""

from __future__ import annotations

import json
from typing import Any, Iterator

import httpx
import pytest
from rich.console import Console

from daggy.client.errors import NotFound, Unreachable
from daggy.client.follow import (
    Follower,
    JsonView,
    LiveView,
    Notice,
    PlainView,
    RunProgress,
    diff_events,
)
from daggy.client.http import DaggyClient
from daggy.client.sse import EventParser, Reconnecting, ServerEvent, parse_lines

RUN_ID = 7
STATES = ("QUEUED", "RUNNING", "RETRY", "ERRORED", "KILLED", "COMPLETED")


def counts(**given: int) -> dict[str, int]:
    return {state: given.get(state.lower(), 0) for state in STATES}


def attempt(start: str, succeeded: bool, log: str = "exited with code 0") -> dict[str, Any]:
    return {"startTime": f"2021-01-01T00:00:0{start}.000000Z",
            "stopTime": f"2021-01-01T00:00:0{start}.500000Z", "rc": 0 if succeeded else 1,
            "succeeded": succeeded, "killed": False, "executorLog": log,
            "outputLog": "", "errorLog": ""}


def full_run(state: str, task_states: dict[str, str],
             attempts: dict[str, list] | None = None) -> dict[str, Any]:
    tally: dict[str, int] = {}
    for task_state in task_states.values():
        tally[task_state.lower()] = tally.get(task_state.lower(), 0) + 1
    return {"runID": RUN_ID, "tag": "t", "state": state, "parameters": {},
            "startTime": "2021-01-01T00:00:00.000000Z",
            "lastUpdate": "2021-01-01T00:00:05.000000Z", "taskCounts": counts(**tally),
            "taskStates": dict(task_states),
            "taskAttempts": {name: list((attempts or {}).get(name, [])) for name in task_states},
            "taskStateChanges": {name: [] for name in task_states}, "tasks": {}}


def sse(event_id: int, data: dict[str, Any]) -> bytes:
    return f"id: {event_id}\nevent: {data['event']}\ndata: {json.dumps(data)}\n\n".encode()


def task_state(task: str, state: str) -> dict[str, Any]:
    return {"time": "t", "event": "taskState", "runID": RUN_ID, "task": task, "state": state}


def run_state(state: str) -> dict[str, Any]:
    return {"time": "t", "event": "runState", "runID": RUN_ID, "state": state}


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class RecordingView:
    def __init__(self) -> None:
        self.events: list[dict] = []
        self.notices: list[Notice] = []
        self.started = self.stopped = 0

    def start(self, progress: RunProgress) -> None:
        self.started += 1

    def event(self, event: dict) -> None:
        self.events.append(event)

    def notice(self, notice: Notice) -> None:
        self.notices.append(notice)

    def stop(self, progress: RunProgress, ended: bool) -> None:
        self.stopped += 1


# -- the SSE parser --------------------------------------------------------------------------


def test_parser_dispatches_events_at_blank_lines_and_skips_comments():
    """Fields accumulate until a blank line; comments (keep-alives) produce nothing."""
    lines = [": keep-alive", "", "id: 4", "event: taskState", "data: {\"a\":", "data: 1}", "",
             "data:plain", ""]
    assert list(parse_lines(lines)) == [ServerEvent(4, "taskState", '{"a":\n1}'),
                                        ServerEvent(None, "message", "plain")]


def test_parser_ignores_events_without_data_and_bad_ids():
    """An event with no data line is dropped; a non-integer id does not count."""
    parser = EventParser()
    assert [parser.feed(line) for line in ["id: 3", "event: x", ""]] == [None, None, None]
    assert [parser.feed(line) for line in ["id: nope", "data: d"]] == [None, None]
    assert parser.feed("") == ServerEvent(None, "message", "d")


# -- the run model ---------------------------------------------------------------------------


def test_progress_counts_follow_events_and_repeated_events_change_nothing():
    """Counts move with each state change; an event repeating the known state is a no-op."""
    progress = RunProgress(RUN_ID)
    progress.seed(full_run("RUNNING", {"a": "QUEUED", "b": "QUEUED"}))
    progress.apply(task_state("a", "RUNNING"))
    progress.apply(task_state("a", "RUNNING"))
    assert progress.counts == counts(queued=1, running=1)
    assert list(progress.running) == ["a"]
    progress.apply(task_state("a", "COMPLETED"))
    progress.apply({"event": "taskAdded", "runID": RUN_ID, "task": "g", "state": "QUEUED"})
    assert progress.counts == counts(queued=2, completed=1)
    assert progress.running == {} and progress.total == 3
    progress.apply(run_state("COMPLETED"))
    assert progress.finished


def test_progress_reports_failed_attempts_and_bad_ends_once():
    """A failed attempt and an ERRORED task each give one notice, even when the snapshot
    and the stream both carry them."""
    progress = RunProgress(RUN_ID)
    failed = attempt("1", False, "exited with code 3")
    notices = progress.seed(full_run("RUNNING", {"a": "ERRORED"}, {"a": [failed]}))
    assert notices == [Notice("a", "attempt 1 failed", "exited with code 3"),
                       Notice("a", "ERRORED")]
    repeated = progress.apply({"event": "taskAttempt", "runID": RUN_ID, "task": "a",
                               "attempt": failed})
    assert repeated == [] and progress.apply(task_state("a", "ERRORED")) == []
    assert progress.seed(full_run("RUNNING", {"a": "ERRORED"}, {"a": [failed]})) == []
    progress.apply(task_state("a", "QUEUED"))
    second = attempt("2", False, "timed out")
    assert progress.apply({"event": "taskAttempt", "runID": RUN_ID, "task": "a",
                           "attempt": second}) == [Notice("a", "attempt 2 failed", "timed out")]
    assert progress.apply(task_state("a", "KILLED")) == [Notice("a", "KILLED")]


def test_diff_events_turns_two_snapshots_into_events():
    """Polling: new attempts, new tasks, state changes and the run's state become events."""
    progress = RunProgress(RUN_ID)
    progress.seed(full_run("RUNNING", {"a": "RUNNING"}))
    later = full_run("ERRORED", {"a": "ERRORED", "g": "QUEUED"},
                     {"a": [attempt("1", False)]})
    events = diff_events(progress, later)
    assert [(e["event"], e.get("task"), e.get("state")) for e in events] == [
        ("taskAttempt", "a", None), ("taskState", "a", "ERRORED"),
        ("taskAdded", "g", "QUEUED"), ("runState", None, "ERRORED")]


# -- following over a mock daggyd -----------------------------------------------------------


class MockDaggyd:
    """A daggyd on an httpx MockTransport.

    ``run`` answers the full run and /state; ``state_answers`` and ``run_answers`` are runs
    that successive /state and full-run reads move to first.  ``streams`` script
    /v1/events: each a list of byte chunks (an exception instance breaks the stream there);
    None answers ``events_status``.  Once the scripted streams are used up, the daemon is down: every
    request fails to connect."""

    def __init__(self, run: dict[str, Any], streams: list[list] | None = None,
                 state_answers: list[dict] = (), run_answers: list[dict] = (),
                 events_status: int = 404) -> None:
        self.run = run
        self.streams = streams
        self.events_status = events_status
        self.state_answers = list(state_answers)
        self.run_answers = list(run_answers)
        self.requests: list[httpx.Request] = []
        self.down = False

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path = request.url.path
        if path == "/v1/events" and self.streams == []:
            self.down = True
        if self.down:
            raise httpx.ConnectError("[Errno 111] Connection refused")
        if path == "/v1/events":
            if self.streams is None:
                return httpx.Response(self.events_status, json={"error": "no events here"})
            return httpx.Response(200, headers={"content-type": "text/event-stream"},
                                  content=self._chunks(self.streams.pop(0)))
        if path == f"/v1/dagrun/{RUN_ID}/state":
            if self.state_answers:
                self.run = self.state_answers.pop(0)
            return httpx.Response(200, json={key: self.run[key] for key in
                                             ("runID", "state", "taskCounts")})
        if path == f"/v1/dagrun/{RUN_ID}":
            if self.run_answers:
                self.run = self.run_answers.pop(0)
            return httpx.Response(200, json=self.run)
        return httpx.Response(404, json={"error": f"no such run: {path.split('/')[3]}"})

    @staticmethod
    def _chunks(script: list) -> Iterator[bytes]:
        for item in script:
            if isinstance(item, Exception):
                raise item
            yield item

    def reads_of(self, path: str) -> list[httpx.Request]:
        return [r for r in self.requests if r.url.path == path]

    def event_requests(self) -> list[httpx.Request]:
        return self.reads_of("/v1/events")


def follower(daggyd: MockDaggyd, view=None, **options) -> tuple[Follower, FakeClock]:
    clock = FakeClock()
    client = DaggyClient("http://daggyd.test", transport=httpx.MockTransport(daggyd))
    return Follower(client, RUN_ID, view or RecordingView(), sleep=clock.sleep, clock=clock,
                    **options), clock


def test_follow_over_events_ends_at_the_runs_final_state():
    """The stream is asked for this run's events; the run's COMPLETED runState ends it and
    the final counts are daggyd's."""
    running = full_run("RUNNING", {"a": "RUNNING", "b": "QUEUED"})
    daggyd = MockDaggyd(running, streams=[[
        sse(1, task_state("a", "COMPLETED")), b": keep-alive\n\n",
        sse(2, task_state("b", "RUNNING")), sse(3, task_state("b", "COMPLETED")),
        sse(4, run_state("COMPLETED")),
        sse(5, task_state("never", "read")),
    ]], state_answers=[running, full_run("COMPLETED", {"a": "COMPLETED", "b": "COMPLETED"})])
    view = RecordingView()
    follow, _ = follower(daggyd, view)
    assert follow.follow() == "COMPLETED"
    assert follow.mode == "events"
    [events_request] = daggyd.event_requests()
    assert events_request.url.params["run"] == str(RUN_ID)
    assert "last-event-id" not in events_request.headers
    assert [e["state"] for e in view.events] == ["COMPLETED", "RUNNING", "COMPLETED", "COMPLETED"]
    assert follow.progress.counts == counts(completed=2)
    assert view.started == view.stopped == 1


def test_follow_reconnects_with_last_event_id_and_loses_nothing():
    """When the stream breaks, follow reconnects sending the last id it saw and goes on
    with what the daemon replays."""
    daggyd = MockDaggyd(full_run("RUNNING", {"a": "QUEUED", "b": "QUEUED"}), streams=[
        [sse(10, task_state("a", "RUNNING")), sse(11, task_state("a", "COMPLETED")),
         httpx.RemoteProtocolError("peer closed connection")],
        [sse(12, task_state("b", "RUNNING")), sse(13, task_state("b", "ERRORED")),
         sse(14, run_state("ERRORED"))],
    ])
    view = RecordingView()
    follow, clock = follower(daggyd, view)
    assert follow.follow() == "ERRORED"
    first, second = daggyd.event_requests()
    assert "last-event-id" not in first.headers
    assert second.headers["last-event-id"] == "11"
    assert [(e["task"], e["state"]) for e in view.events if e["event"] == "taskState"] == [
        ("a", "RUNNING"), ("a", "COMPLETED"), ("b", "RUNNING"), ("b", "ERRORED")]
    assert follow.progress.counts == counts(completed=1, errored=1)
    assert view.notices == [Notice("b", "ERRORED")]
    assert clock.sleeps == [0.2], "one short pause before reconnecting"
    assert len(daggyd.reads_of(f"/v1/dagrun/{RUN_ID}")) == 1, (
        "a reconnect with Last-Event-ID needs no new snapshot")


def test_a_stream_the_daemon_closes_is_reopened_too():
    """A stream that simply ends before the run does (a slow consumer cut off) is reopened
    with Last-Event-ID."""
    daggyd = MockDaggyd(full_run("RUNNING", {"a": "RUNNING"}), streams=[
        [sse(5, task_state("a", "COMPLETED"))],
        [sse(6, run_state("COMPLETED"))],
    ])
    follow, _ = follower(daggyd)
    assert follow.follow() == "COMPLETED"
    assert daggyd.event_requests()[1].headers["last-event-id"] == "5"


def test_a_stream_broken_before_any_event_is_reopened_with_a_new_snapshot():
    """Without an event id to resume from, follow reads the run again after reconnecting."""
    daggyd = MockDaggyd(full_run("RUNNING", {"a": "RUNNING"}), streams=[
        [httpx.ReadError("reset")], [sse(1, run_state("COMPLETED"))]],
        run_answers=[full_run("RUNNING", {"a": "RUNNING"}),
                     full_run("RUNNING", {"a": "COMPLETED"})])
    follow, _ = follower(daggyd)
    assert follow.follow() == "COMPLETED"
    assert "last-event-id" not in daggyd.event_requests()[1].headers
    assert len(daggyd.reads_of(f"/v1/dagrun/{RUN_ID}")) == 2
    assert follow.progress.task_states == {"a": "COMPLETED"}


def test_a_gap_event_makes_follow_read_the_run_again():
    """After `event: gap` (events lost beyond the replay window) the run is re-read, so the
    counts are right again."""
    daggyd = MockDaggyd(full_run("RUNNING", {"a": "QUEUED", "b": "QUEUED"}), streams=[[
        b'id: 50\nevent: gap\ndata: {"from": 3, "oldest": 40}\n\n',
        sse(51, run_state("COMPLETED")),
    ]], run_answers=[full_run("RUNNING", {"a": "QUEUED", "b": "QUEUED"}),
                     full_run("RUNNING", {"a": "COMPLETED", "b": "COMPLETED"})])
    follow, _ = follower(daggyd)
    assert follow.follow() == "COMPLETED"
    assert len(daggyd.reads_of(f"/v1/dagrun/{RUN_ID}")) == 2
    assert follow.progress.task_states == {"a": "COMPLETED", "b": "COMPLETED"}
    assert follow.progress.counts == counts(completed=2)


def test_without_an_event_stream_follow_polls_every_half_second():
    """A daggyd answering 404 for /v1/events is polled: /state and the run every 0.5 s,
    the differences reported as events, until the run is finished."""
    first = full_run("RUNNING", {"a": "RUNNING"})
    daggyd = MockDaggyd(first, state_answers=[
        first, first,
        full_run("RUNNING", {"a": "RETRY"}, {"a": [attempt("1", False, "exited with code 1")]}),
        full_run("COMPLETED", {"a": "COMPLETED"},
                 {"a": [attempt("1", False, "exited with code 1"), attempt("2", True)]}),
    ])
    view = RecordingView()
    follow, clock = follower(daggyd, view)
    assert follow.follow() == "COMPLETED"
    assert follow.mode == "polling"
    assert clock.sleeps == [0.5, 0.5]
    assert view.notices == [Notice("a", "attempt 1 failed", "exited with code 1")]
    assert [(e["event"], e.get("state")) for e in view.events] == [
        ("taskAttempt", None), ("taskState", "RETRY"),
        ("taskAttempt", None), ("taskState", "COMPLETED"), ("runState", "COMPLETED")]
    assert follow.progress.counts == counts(completed=1)


def test_earlier_failures_are_listed_unless_asked_not_to():
    """Failures from before following started are listed first, except right after a
    resume or rerun (report_earlier=False); later failures are reported either way."""
    failed = attempt("1", False, "exited with code 9")
    for report_earlier, expected in ((True, [Notice("a", "attempt 1 failed",
                                                    "exited with code 9")]), (False, [])):
        daggyd = MockDaggyd(full_run("RUNNING", {"a": "QUEUED"}, {"a": [failed]}), streams=[[
            sse(1, {"event": "taskAttempt", "runID": RUN_ID, "task": "a", "attempt": failed}),
            sse(2, run_state("COMPLETED"))]])
        view = RecordingView()
        follow, _ = follower(daggyd, view, report_earlier=report_earlier)
        follow.follow()
        assert view.notices == expected


@pytest.mark.parametrize("status", [404, 503])
def test_a_daemon_without_events_for_this_logger_is_polled(status):
    """404 (an older daggyd) and 503 (a logger that publishes no events) both mean: poll."""
    daggyd = MockDaggyd(full_run("COMPLETED", {"a": "COMPLETED"}), events_status=status)
    follow, _ = follower(daggyd)
    assert follow.follow() == "COMPLETED"
    assert follow.mode == "polling" and len(daggyd.event_requests()) == 1


def test_polling_reads_a_slow_large_run_less_often():
    """The full run is read at most every 4x the time the last read took, while /state
    (cheap) is still read every 0.5 s."""
    clock = FakeClock()
    running = full_run("RUNNING", {"a": "RUNNING"})
    daggyd = MockDaggyd(running, state_answers=[running] * 6 + [
        full_run("COMPLETED", {"a": "COMPLETED"})])
    full_reads = []

    def slow_full_reads(request: httpx.Request) -> httpx.Response:
        if request.url.path == f"/v1/dagrun/{RUN_ID}":
            full_reads.append(clock.now)
            clock.now += 0.5  # every full read takes 0.5 s: read it every 2 s at most
        return daggyd(request)

    client = DaggyClient("http://daggyd.test", transport=httpx.MockTransport(slow_full_reads))
    follow = Follower(client, RUN_ID, RecordingView(), poll=True, sleep=clock.sleep,
                      clock=clock)
    assert follow.follow() == "COMPLETED"
    assert len(daggyd.reads_of(f"/v1/dagrun/{RUN_ID}/state")) == 8
    assert full_reads == [0.0, 2.0, 3.5], "the first, the next 2 s later, then at the change"


def test_poll_option_skips_the_event_stream():
    """--poll never asks for /v1/events."""
    daggyd = MockDaggyd(full_run("COMPLETED", {"a": "COMPLETED"}), streams=[])
    follow, _ = follower(daggyd, poll=True)
    assert follow.follow() == "COMPLETED"
    assert daggyd.event_requests() == []


def test_an_unknown_run_is_not_found_before_anything_is_shown():
    """Following a run daggyd does not have fails with NotFound and starts no display."""
    daggyd = MockDaggyd(full_run("RUNNING", {}), streams=[])
    view = RecordingView()
    client = DaggyClient("http://daggyd.test", transport=httpx.MockTransport(daggyd))
    with pytest.raises(NotFound, match="no such run: 8"):
        Follower(client, 8, view).follow()
    assert view.started == 0


def test_follow_gives_up_when_the_daemon_stays_unreachable():
    """Reconnecting backs off (0.2 s doubling to 5 s) and gives up after the give-up time
    with the connection error; the display is closed without a summary."""
    daggyd = MockDaggyd(full_run("RUNNING", {"a": "RUNNING"}), streams=[
        [httpx.RemoteProtocolError("gone")]])
    view = RecordingView()
    follow, clock = follower(daggyd, view, give_up_seconds=10)
    with pytest.raises(Unreachable, match="cannot reach daggyd at http://daggyd.test: "
                                          "Connection refused"):
        follow.follow()
    assert clock.sleeps == [0.2, 0.4, 0.8, 1.6, 3.2, 5.0]
    assert view.started == view.stopped == 1


def test_reconnecting_resets_after_a_success():
    """A successful connection resets the delay and the give-up timer."""
    clock = FakeClock()
    reconnecting = Reconnecting(100, clock.sleep, clock)
    reconnecting.failed(Unreachable("x"))
    reconnecting.failed(Unreachable("x"))
    reconnecting.connected()
    reconnecting.failed(Unreachable("x"))
    assert clock.sleeps == [0.2, 0.4, 0.2]


# -- views -----------------------------------------------------------------------------------


def test_json_view_prints_events_then_the_final_state():
    """--json: one JSON object per line, the final line being the run's state and counts."""
    lines: list[str] = []
    view = JsonView(lines.append)
    progress = RunProgress(RUN_ID)
    progress.seed(full_run("COMPLETED", {"a": "COMPLETED"}))
    view.event(task_state("a", "COMPLETED"))
    view.stop(progress, True)
    assert [json.loads(line) for line in lines] == [
        task_state("a", "COMPLETED"),
        {"runID": RUN_ID, "state": "COMPLETED", "taskCounts": counts(completed=1)}]


def test_plain_view_prints_notices_and_a_summary():
    """Without a terminal: a start line, one line per notice, and a summary with the run's
    duration (start to last update) and counts."""
    console = Console(record=True, width=100, force_terminal=False)
    view = PlainView(console)
    progress = RunProgress(RUN_ID)
    progress.seed(full_run("ERRORED", {"a[X=1]": "ERRORED", "b": "COMPLETED"}))
    view.start(progress)
    view.notice(Notice("a[X=1]", "attempt 1 failed", "exited with code 1"))
    view.stop(progress, True)
    assert console.export_text().splitlines() == [
        "following run 7 (2 tasks, ERRORED)",
        "✗ a[X=1] attempt 1 failed: exited with code 1",
        "run 7 ERRORED in 5.00s: 1 completed · 1 errored"]


def test_live_view_shows_the_bar_counts_and_running_tasks():
    """On a terminal the display has the run's state, completed/total, every state's
    count and the tasks running now (at most five named)."""
    console = Console(record=True, width=120, force_terminal=True, color_system=None)
    view = LiveView(console)
    progress = RunProgress(RUN_ID)
    tasks = {f"t[N={n}]": "RUNNING" for n in range(7)}
    tasks.update({"done": "COMPLETED", "bad": "ERRORED"})
    progress.seed(full_run("RUNNING", tasks))
    view._run = progress
    console.print(view._renderable())
    text = console.export_text()
    assert "run 7 RUNNING" in text and "1/9 tasks" in text
    assert "1 completed · 7 running · 0 retry · 1 errored · 0 killed · 0 queued" in text
    assert "running: t[N=0], t[N=1], t[N=2], t[N=3], t[N=4] (+2 more)" in text
