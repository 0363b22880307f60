"""``daggyc follow``: watch one run until it finishes.

Events come from daggyd's ``GET /v1/events?run=N`` Server-Sent Events stream (reconnecting
with ``Last-Event-ID``; after a ``gap`` the run is read again), or, from a daggyd without
that endpoint (404) or whose logger publishes no events (503), or with ``--poll``, from
polling the run every ``poll_interval`` seconds and turning the differences into the same
events.  :class:`RunProgress` is the
one model both feed; a view shows it (a live rich display on a terminal, lines otherwise,
JSON lines with ``--json``).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from itertools import islice
from typing import Any, Callable, Protocol

import httpx
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.text import Text

from daggy.client.errors import Busy, Unreachable
from daggy.client.http import DaggyClient
from daggy.client.render import (
    FINISHED,
    STATE_STYLES,
    counts_text,
    format_duration,
    parse_time,
    state_text,
)
from daggy.client.sse import Reconnecting, parse_lines

ALL_STATES = ("QUEUED", "RUNNING", "RETRY", "ERRORED", "KILLED", "COMPLETED")
DEFAULT_POLL_INTERVAL = 0.5
#: How long follow keeps trying to reach a daemon that went away before it gives up.
DEFAULT_GIVE_UP_SECONDS = 60.0
#: Failures already there when following starts are listed up to this many.
MAX_EARLIER_FAILURES = 20
#: Names of running tasks shown under the progress bar.
MAX_RUNNING_SHOWN = 5


@dataclass(frozen=True)
class Notice:
    """Something worth a line of its own: a failed attempt, a task that ended badly."""

    task: str
    kind: str  # "attempt failed", "ERRORED", "KILLED"
    detail: str = ""

    def text(self) -> Text:
        style = "red" if self.kind != "KILLED" else "magenta"
        line = Text("✗ " if self.kind != "KILLED" else "■ ", style=style)
        line.append(self.task, style="bold")
        line.append(f" {self.kind}", style=style)
        if self.detail:
            line.append(f": {self.detail}")
        return line


class RunProgress:
    """One run's state as follow knows it: task states, counts, running tasks, attempts.

    Applying an event is O(1); seeding from a full run is O(tasks).  Events that repeat what
    is known (an event delivered both in the snapshot and on the stream) change nothing.
    """

    def __init__(self, run_id: int) -> None:
        self.run_id = run_id
        self.state: str | None = None
        self.tag: str | None = None
        self.start_time: str | None = None
        #: The time of the latest event (or of the run's last update when read whole).
        self.last_update: str | None = None
        self.task_states: dict[str, str] = {}
        self.counts = {state: 0 for state in ALL_STATES}
        #: Insertion-ordered: the tasks that started first come first.
        self.running: dict[str, None] = {}
        self.attempt_counts: dict[str, int] = {}
        self._attempts_seen: set[tuple[str, Any, Any]] = set()
        #: Tasks reported ERRORED or KILLED, so a snapshot read again repeats nothing.
        self._reported_end: dict[str, str] = {}
        self.lock = threading.Lock()

    @property
    def finished(self) -> bool:
        return self.state in FINISHED

    @property
    def total(self) -> int:
        return len(self.task_states)

    def seed(self, run: dict[str, Any]) -> list[Notice]:
        """Take the whole state from a full run (``GET /v1/dagrun/N``); returns the failed
        attempts not seen before."""
        notices = []
        with self.lock:
            self.state = run.get("state")
            self.tag = run.get("tag")
            self.start_time = run.get("startTime")
            self.last_update = run.get("lastUpdate")
            self.task_states = dict(run.get("taskStates") or {})
            self.counts = {state: 0 for state in ALL_STATES}
            for state in self.task_states.values():
                self.counts[state] = self.counts.get(state, 0) + 1
            self.running = {name: None for name, state in self.task_states.items()
                            if state == "RUNNING"}
            all_attempts = run.get("taskAttempts") or {}
            for name, state in self.task_states.items():
                attempts = all_attempts.get(name) or []
                self.attempt_counts[name] = len(attempts)
                for number, attempt in enumerate(attempts, 1):
                    if self._new_attempt(name, attempt):
                        notice = _attempt_notice(name, number, attempt)
                        if notice:
                            notices.append(notice)
                notices.extend(self._ended_badly(name, state))
        return notices

    def _ended_badly(self, task: str, state: str) -> list[Notice]:
        """A notice the first time ``task`` is seen ERRORED or KILLED (again)."""
        if state not in ("ERRORED", "KILLED"):
            self._reported_end.pop(task, None)
            return []
        if self._reported_end.get(task) == state:
            return []
        self._reported_end[task] = state
        return [Notice(task, state)]

    def _new_attempt(self, task: str, attempt: dict[str, Any]) -> bool:
        key = (task, attempt.get("startTime"), attempt.get("stopTime"))
        if key in self._attempts_seen:
            return False
        self._attempts_seen.add(key)
        return True

    def apply(self, event: dict[str, Any]) -> list[Notice]:
        """Apply one event (the OStreamLogger schema); returns what deserves a line."""
        kind = event.get("event")
        task = event.get("task")
        with self.lock:
            if isinstance(event.get("time"), str):
                self.last_update = max(self.last_update or "", event["time"])
            if kind == "runState":
                self.state = event.get("state")
            elif kind == "runCreated":
                self.tag = event.get("tag")
                self.state = self.state or event.get("state")
            elif kind in ("taskAdded", "taskState") and isinstance(task, str):
                return self._set_task_state(task, event.get("state"), kind == "taskAdded")
            elif kind == "taskAttempt" and isinstance(task, str):
                attempt = event.get("attempt") or {}
                if self._new_attempt(task, attempt):
                    number = self.attempt_counts.get(task, 0) + 1
                    self.attempt_counts[task] = number
                    notice = _attempt_notice(task, number, attempt)
                    return [notice] if notice else []
        return []

    def _set_task_state(self, task: str, state: Any, added: bool) -> list[Notice]:
        if not isinstance(state, str):
            return []
        old = self.task_states.get(task)
        if old == state or (added and old is not None):
            return []
        if old is not None:
            self.counts[old] -= 1
        self.counts[state] = self.counts.get(state, 0) + 1
        self.task_states[task] = state
        if state == "RUNNING":
            self.running[task] = None
        else:
            self.running.pop(task, None)
        return self._ended_badly(task, state)

    def set_counts(self, state_doc: dict[str, Any]) -> None:
        """Take daggyd's own counts (``GET /v1/dagrun/N/state``) at the end, unless the run
        has moved on since (resumed already): then they would not match the end."""
        with self.lock:
            counts = state_doc.get("taskCounts")
            if state_doc.get("state") == self.state and isinstance(counts, dict):
                self.counts = {state: int(counts.get(state, 0)) for state in ALL_STATES}

    def elapsed(self, now: datetime | None = None) -> float | None:
        """Seconds the run has taken: up to its last event once finished, else up to now."""
        start = parse_time(self.start_time)
        if start is None:
            return None
        end = parse_time(self.last_update) if self.finished else (
            now or datetime.now(timezone.utc))
        return None if end is None else max(0.0, (end - start).total_seconds())

    def summary(self) -> dict[str, Any]:
        with self.lock:
            return {"runID": self.run_id, "state": self.state, "taskCounts": dict(self.counts)}


def _attempt_notice(task: str, number: int, attempt: dict[str, Any]) -> Notice | None:
    if attempt.get("succeeded") or attempt.get("killed"):
        return None
    return Notice(task, f"attempt {number} failed", attempt.get("executorLog") or "")


def diff_events(progress: RunProgress, run: dict[str, Any]) -> list[dict[str, Any]]:
    """The events that turn what ``progress`` knows into the full run ``run`` (polling)."""
    events: list[dict[str, Any]] = []
    run_id = progress.run_id
    attempts = run.get("taskAttempts") or {}
    for name, state in (run.get("taskStates") or {}).items():
        known = progress.attempt_counts.get(name, 0)
        for attempt in (attempts.get(name) or [])[known:]:
            events.append({"time": attempt.get("stopTime"), "event": "taskAttempt",
                           "runID": run_id, "task": name, "attempt": attempt})
        old = progress.task_states.get(name)
        if old is None:
            events.append({"time": run.get("lastUpdate"), "event": "taskAdded",
                           "runID": run_id, "task": name, "state": state})
        elif old != state:
            events.append({"time": run.get("lastUpdate"), "event": "taskState",
                           "runID": run_id, "task": name, "state": state})
    if run.get("state") != progress.state:
        events.append({"time": run.get("lastUpdate"), "event": "runState", "runID": run_id,
                       "state": run.get("state")})
    return events


# -- views -----------------------------------------------------------------------------------


class View(Protocol):
    def start(self, progress: RunProgress) -> None: ...
    def event(self, event: dict[str, Any]) -> None: ...
    def notice(self, notice: Notice) -> None: ...
    def stop(self, progress: RunProgress, ended: bool) -> None: ...


class JsonView:
    """One JSON object per line: every event, then the run's final state."""

    def __init__(self, out: Callable[[str], None] = print) -> None:
        self._out = out

    def start(self, progress: RunProgress) -> None:
        pass

    def event(self, event: dict[str, Any]) -> None:
        self._out(json.dumps(event, ensure_ascii=False))

    def notice(self, notice: Notice) -> None:
        pass

    def stop(self, progress: RunProgress, ended: bool) -> None:
        if ended:
            self._out(json.dumps(progress.summary()))


def _summary_line(progress: RunProgress) -> Text:
    line = Text(f"run {progress.run_id} ", style="bold")
    line.append_text(state_text(progress.state or "?"))
    elapsed = progress.elapsed()
    if elapsed is not None:
        line.append(f" in {format_duration(elapsed)}")
    line.append(": ")
    line.append_text(counts_text(progress.counts, all_states=False))
    return line


class PlainView:
    """For a console that is not a terminal: notices and the end, one line each."""

    def __init__(self, console: Console) -> None:
        self._console = console

    def start(self, progress: RunProgress) -> None:
        line = Text(f"following run {progress.run_id} ({progress.total} tasks, ")
        line.append(progress.state or "?")
        line.append(")")
        self._console.print(line)

    def event(self, event: dict[str, Any]) -> None:
        pass

    def notice(self, notice: Notice) -> None:
        self._console.print(notice.text())

    def stop(self, progress: RunProgress, ended: bool) -> None:
        if ended:
            self._console.print(_summary_line(progress))


class LiveView:
    """A progress bar of completed tasks with counts per state and the tasks running now,
    redrawn in place; notices print above it."""

    def __init__(self, console: Console) -> None:
        self._console = console
        self._progress_bar = Progress(
            TextColumn("{task.description}"), BarColumn(bar_width=None),
            MofNCompleteColumn(), TextColumn("tasks"), TextColumn("{task.fields[elapsed]}"),
            console=console, expand=True)
        self._bar = self._progress_bar.add_task("", total=None, elapsed="")
        self._live: Live | None = None
        self._run: RunProgress | None = None

    def _renderable(self) -> RenderableType:
        progress = self._run
        if progress is None:
            return Text("")
        with progress.lock:
            counts = dict(progress.counts)
            running = list(islice(progress.running, MAX_RUNNING_SHOWN))
            running_count = len(progress.running)
            state = progress.state or "?"
            total = len(progress.task_states)
            elapsed = progress.elapsed()
        description = Text(f"run {progress.run_id} ", style="bold")
        description.append_text(state_text(state))
        self._progress_bar.update(self._bar, description=description.markup, total=total or None,
                                  completed=counts.get("COMPLETED", 0),
                                  elapsed=format_duration(elapsed) if elapsed is not None else "")
        lines: list[RenderableType] = [self._progress_bar, counts_text(counts)]
        if running_count:
            line = Text("running: ", style=STATE_STYLES["RUNNING"])
            line.append(", ".join(running))
            if running_count > MAX_RUNNING_SHOWN:
                line.append(f" (+{running_count - MAX_RUNNING_SHOWN} more)", style="dim")
            lines.append(line)
        return Group(*lines)

    def start(self, progress: RunProgress) -> None:
        self._run = progress
        self._live = Live(console=self._console, get_renderable=self._renderable,
                          refresh_per_second=8, transient=False, redirect_stdout=False,
                          redirect_stderr=False)
        self._live.start()

    def event(self, event: dict[str, Any]) -> None:
        pass

    def notice(self, notice: Notice) -> None:
        self._console.print(notice.text())

    def stop(self, progress: RunProgress, ended: bool) -> None:
        if self._live is not None:
            self._live.refresh()
            self._live.stop()
        if ended:
            self._console.print(_summary_line(progress))


# -- following -------------------------------------------------------------------------------


class Follower:
    """Follow one run to its end with events (preferred) or polling.

    :param report_earlier: list the failures that happened before following started
        (not wanted right after resuming or re-running: they are what was just retried).
    :param sleep, clock: ``time.sleep`` and ``time.monotonic`` (fakes in tests).
    """

    def __init__(self, client: DaggyClient, run_id: int, view: View, *,
                 poll: bool = False, poll_interval: float = DEFAULT_POLL_INTERVAL,
                 give_up_seconds: float = DEFAULT_GIVE_UP_SECONDS,
                 report_earlier: bool = True,
                 sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._client = client
        self._run_id = run_id
        self._view = view
        self._poll = poll
        self._poll_interval = poll_interval
        self._report_earlier = report_earlier
        self._sleep = sleep
        self._clock = clock
        self._reconnecting = Reconnecting(give_up_seconds, sleep, clock)
        self.progress = RunProgress(run_id)
        self._started = False
        #: "events" or "polling": how the run was followed (for tests and --verbose).
        self.mode: str | None = None

    def follow(self) -> str:
        """Follow until the run is finished; returns its final state."""
        # Fails with NotFound (exit 5) before any display starts.
        self._client.get_run_state(self._run_id)
        ended = False
        try:
            if self._poll or not self._follow_events():
                self._follow_polling()
            self.progress.set_counts(self._client.get_run_state(self._run_id))
            ended = True
        finally:
            if self._started:
                self._view.stop(self.progress, ended)
        return self.progress.state or "?"

    def _seed(self, run: dict[str, Any], first: bool) -> None:
        notices = self.progress.seed(run)
        if first:
            self._view.start(self.progress)
            self._started = True
            if not self._report_earlier:
                notices = []
            elif len(notices) > MAX_EARLIER_FAILURES:
                hidden = len(notices) - MAX_EARLIER_FAILURES
                notices = notices[:MAX_EARLIER_FAILURES]
                notices.append(Notice(f"and {hidden} more failed attempts", "earlier",
                                      f"daggyc show {self._run_id} --state ERRORED"))
        for notice in notices:
            self._view.notice(notice)

    def _apply(self, event: dict[str, Any]) -> None:
        self._view.event(event)
        for notice in self.progress.apply(event):
            self._view.notice(notice)

    def _follow_events(self) -> bool:
        """Follow with the event stream; False if this daggyd has none."""
        last_id: int | None = None
        need_seed = True
        params = {"run": str(self._run_id)}
        while True:
            try:
                with self._client.event_stream(params, last_id) as response:
                    if response is None:
                        return False
                    self.mode = "events"
                    self._reconnecting.connected()
                    if need_seed:
                        # After subscribing, so nothing falls between the snapshot and the
                        # stream; events in both are applied twice, which changes nothing.
                        self._seed(self._client.get_run(self._run_id), not self._started)
                        need_seed = False
                        if self.progress.finished:
                            return True
                    for server_event in parse_lines(response.iter_lines()):
                        if server_event.id is not None:
                            last_id = server_event.id
                        if server_event.event == "gap":
                            # Events were lost beyond the replay window: read the run again.
                            self._seed(self._client.get_run(self._run_id), False)
                        else:
                            try:
                                event = server_event.json()
                            except ValueError:
                                continue
                            if not isinstance(event, dict) or event.get("runID") != self._run_id:
                                continue
                            self._apply(event)
                        if self.progress.finished:
                            return True
                problem: Exception = Unreachable("daggyd closed the event stream")
            except (Unreachable, Busy, httpx.StreamError) as error:
                problem = error
            if last_id is None:
                need_seed = True
            self._reconnecting.failed(problem)

    def _follow_polling(self) -> None:
        self.mode = "polling"
        full_interval = self._poll_interval
        last_full: float | None = None
        while True:
            try:
                # The cheap read every time; the whole run when it is due or at the end.
                state = self._client.get_run_state(self._run_id)
                now = self._clock()
                due = last_full is None or now - last_full >= full_interval
                if due or state.get("state") in FINISHED:
                    began = self._clock()
                    run = self._client.get_run(self._run_id)
                    # A run too large to read every half second is read less often.
                    full_interval = max(self._poll_interval, 4 * (self._clock() - began))
                    if not self._started:
                        self._seed(run, True)
                    else:
                        for event in diff_events(self.progress, run):
                            self._apply(event)
                    last_full = now
                self._reconnecting.connected()
            except (Unreachable, Busy) as error:
                self._reconnecting.failed(error)
                continue
            if self.progress.finished:
                return
            self._sleep(self._poll_interval)


def make_view(console: Console, as_json: bool) -> View:
    if as_json:
        return JsonView(lambda line: (sys.stdout.write(line + "\n"), sys.stdout.flush()))
    if console.is_terminal:
        return LiveView(console)
    return PlainView(console)

