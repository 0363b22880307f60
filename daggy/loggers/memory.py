# -*- test-case-name: tests.unit.test_logger_contract -*-
"""The in-memory run store: a complete :class:`~daggy.loggers.interface.RunLogger`.

It is the record behind :class:`~daggy.loggers.ostream.OStreamLogger` and the logger double
of every unit test.  Everything lives in memory for the life of the process.

Cost model (a run of 100,000 tasks is normal input):

* every write is O(1) in the number of tasks of the run (``add_tasks`` is O(tasks added));
* ``get_run_state``, ``get_task``, ``get_task_state`` are O(1) in the number of tasks, and
  ``list_runs`` is O(runs); ``load_unfinished_runs`` is O(tasks of the unfinished runs);
* ``get_run`` is O(tasks) (it answers with every task), but it builds only fresh outer
  containers: the per-task documents it shares are read-only (see :func:`freeze`), so no
  read can corrupt the store and no read deep-copies 100,000 definitions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable, NoReturn

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from daggy.errors import Conflict, UnknownRun, UnknownTask
from daggy.model import FINISHED_STATES, Attempt, State, TaskDef, iso8601

if TYPE_CHECKING:
    from daggy.events import EventHub


def _read_only(self: Any, *args: Any, **kwargs: Any) -> NoReturn:
    raise TypeError(f"{type(self).__name__} from the run store is read-only; copy it first")


class ReadOnlyDict(dict):
    """A ``dict`` the store shares with readers; every mutating method raises ``TypeError``.

    It is still a ``dict`` (``json.dumps`` and ``==`` work as usual); ``copy.copy`` /
    ``copy.deepcopy`` / pickling give plain, mutable ``dict`` copies.
    """

    __slots__ = ()
    __setitem__ = __delitem__ = __ior__ = _read_only
    clear = pop = popitem = setdefault = update = _read_only

    def copy(self) -> dict:
        return dict(self)

    def __copy__(self) -> dict:
        return dict(self)

    def __deepcopy__(self, memo: dict) -> dict:
        return thaw(self)

    def __reduce__(self) -> tuple:
        return (dict, (dict(self),))


class ReadOnlyList(list):
    """A ``list`` the store shares with readers; every mutating method raises ``TypeError``."""

    __slots__ = ()
    __setitem__ = __delitem__ = __iadd__ = __imul__ = _read_only
    append = extend = insert = pop = remove = clear = sort = reverse = _read_only

    def copy(self) -> list:
        return list(self)

    def __copy__(self) -> list:
        return list(self)

    def __deepcopy__(self, memo: dict) -> list:
        return thaw(self)

    def __reduce__(self) -> tuple:
        return (list, (list(self),))


_SCALARS = (str, int, float, bool, type(None))


def freeze(value: Any) -> Any:
    """Return a read-only copy of a JSON-like value (dicts and lists/tuples, recursively).

    States become their names.  Exact-type checks come first because this runs once per
    stored task and attempt.
    """
    kind = type(value)
    if kind in _SCALARS:
        return value
    if kind is dict:
        return ReadOnlyDict({key: freeze(item) for key, item in value.items()})
    if kind is list or kind is tuple:
        return ReadOnlyList([freeze(item) for item in value])
    if kind is ReadOnlyDict or kind is ReadOnlyList:
        return value
    if isinstance(value, State):
        return value.value
    if isinstance(value, dict):
        return ReadOnlyDict({key: freeze(item) for key, item in value.items()})
    if isinstance(value, (list, tuple)):
        return ReadOnlyList([freeze(item) for item in value])
    return value


def frozen_task(task: TaskDef) -> ReadOnlyDict:
    """``freeze(task.to_json())``, built directly: it runs once per task of every run."""
    return ReadOnlyDict(
        name=task.name, definedName=task.defined_name, job=freeze(task.job),
        maxRetries=task.max_retries, retryIntervalSeconds=task.retry_interval_seconds,
        parents=ReadOnlyList(task.parents), children=ReadOnlyList(task.children),
        isGenerator=task.is_generator, expansionValues=ReadOnlyDict(task.expansion_values))


def frozen_attempt(attempt: Attempt) -> ReadOnlyDict:
    """``freeze(attempt.to_json())``, built directly: it runs once per attempt."""
    doc = attempt.to_json()
    doc["executorState"] = freeze(doc["executorState"])
    return ReadOnlyDict(doc)


def thaw(value: Any) -> Any:
    """Return a plain, mutable deep copy of a (possibly frozen) JSON-like value."""
    if isinstance(value, dict):
        return {key: thaw(item) for key, item in value.items()}
    if isinstance(value, list):
        return [thaw(item) for item in value]
    return value


def _zero_counts() -> dict[str, int]:
    return {state.value: 0 for state in State}


class _RunRecord:
    """Everything known about one run.  Task dicts are keyed by task name; ``tasks`` is in
    the order the tasks were added, and so is every answer listing them."""

    __slots__ = (
        "run_id", "tag", "parameters", "state", "start_time", "last_update", "state_changes",
        "task_counts", "tasks", "task_states", "task_attempts", "task_state_changes",
        "task_executor_states",
    )

    def __init__(self, run_id: int, tag: str | None, parameters: Any,
                 first_change: ReadOnlyDict, now: float):
        self.run_id = run_id
        self.tag = tag
        self.parameters = freeze(parameters)
        self.state = State.QUEUED
        self.start_time = now
        self.last_update = now
        self.state_changes: list[ReadOnlyDict] = [first_change]
        self.task_counts = _zero_counts()
        self.tasks: dict[str, ReadOnlyDict] = {}
        self.task_states: dict[str, str] = {}
        self.task_attempts: dict[str, list[ReadOnlyDict]] = {}
        self.task_state_changes: dict[str, list[ReadOnlyDict]] = {}
        # Only tasks whose executor reported a state have an entry.
        self.task_executor_states: dict[str, ReadOnlyDict] = {}

    def touch(self, now: float) -> None:
        # Events are recorded in call order, but an attempt carries the executor's stop time;
        # keep lastUpdate monotonic whatever order the times come in.
        if now > self.last_update:
            self.last_update = now

    def summary(self) -> dict[str, Any]:
        return {
            "runID": self.run_id,
            "tag": self.tag,
            "state": self.state.value,
            "startTime": iso8601(self.start_time),
            "lastUpdate": iso8601(self.last_update),
            "taskCounts": dict(self.task_counts),
        }

    def document(self) -> dict[str, Any]:
        """The ``get_run`` answer: fresh outer containers around the shared read-only
        documents.  O(tasks)."""
        document = self.summary()
        executor_states = self.task_executor_states
        document.update(
            parameters=self.parameters,
            stateChanges=list(self.state_changes),
            tasks=dict(self.tasks),
            taskStates=dict(self.task_states),
            taskAttempts={name: list(attempts) for name, attempts in self.task_attempts.items()},
            taskStateChanges={name: list(changes)
                              for name, changes in self.task_state_changes.items()},
            # In task order (not the order the states were reported), so the answer does not
            # depend on how the record was built.
            taskExecutorStates={name: executor_states[name] for name in self.tasks
                                if name in executor_states} if executor_states else {},
        )
        return document


def restored_record(run_id: int, tag: str | None, parameters: Any, state: State,
                    start_time: float, last_update: float, state_changes: list[Any],
                    tasks: Iterable[tuple[str, Any]], task_states: dict[str, str],
                    task_state_changes: dict[str, Any], task_attempts: dict[str, Any],
                    task_executor_states: dict[str, Any]) -> _RunRecord:
    """A run record rebuilt from a durable store (see :meth:`MemoryStore._adopt_run`).

    ``tasks`` are ``(name, definition)`` pairs in the order they were added.  A task with no
    recorded state is QUEUED; ``taskCounts`` are counted from the task states, so they always
    agree with them.  Values are frozen here (already frozen ones are kept as they are).
    """
    record = _RunRecord(run_id, tag, parameters, ReadOnlyDict(), start_time)
    record.state = State(state)
    record.last_update = last_update
    record.state_changes = [freeze(change) for change in state_changes]
    counts = record.task_counts
    for name, definition in tasks:
        record.tasks[name] = freeze(definition)
        task_state = State(task_states.get(name, State.QUEUED)).value
        record.task_states[name] = task_state
        counts[task_state] += 1
        # The lists grow with later records; their entries are shared read-only documents.
        record.task_state_changes[name] = list(freeze(task_state_changes.get(name, [])))
        record.task_attempts[name] = list(freeze(task_attempts.get(name, [])))
        executor_state = task_executor_states.get(name)
        if executor_state is not None:
            record.task_executor_states[name] = freeze(executor_state)
    return record


class MemoryStore:
    """A :class:`~daggy.loggers.interface.RunLogger` that keeps every run in memory.

    No reactor is needed: reads return already-fired Deferreds, ``flush()``/``close()``
    succeed at once.  Run IDs are 0, 1, 2, ... in creation order.

    ``taskCounts`` always holds all six states (zero included), so clients can read any
    count without a default.  All states and times in answers are plain strings (state
    names, ISO 8601 UTC).

    Writes naming an unknown run or task raise :class:`~daggy.errors.UnknownRun` /
    :class:`~daggy.errors.UnknownTask` immediately: they are bugs of the caller.
    ``add_tasks`` with a task name the run already has (or twice in one call) raises
    :class:`~daggy.errors.Conflict` and stores none of the tasks.

    After :meth:`publish_to`, every write also publishes its event (the OStreamLogger's
    line object, docs/loggers.md) to an :class:`~daggy.events.EventHub`.
    """

    log = Logger()

    def __init__(self) -> None:
        self._runs: dict[int, _RunRecord] = {}
        self._next_run_id = 0
        # Events come in bursts sharing one ``now`` (a reactor turn); formatting a timestamp
        # costs more than the rest of a state change, so the last one is reused.
        self._last_time: tuple[float | None, str | None] = (None, None)
        self._events: EventHub | None = None
        # Whether the writes build event objects (and hand them to _emit).
        self._emitting = False

    # -- events -------------------------------------------------------------------------
    def publish_to(self, hub: EventHub) -> None:
        """Publish the event of every write from now on to ``hub`` (call it before the
        first write; ``GET /v1/events`` streams them)."""
        self._events = hub
        self._emitting = True

    @property
    def events(self) -> EventHub | None:
        """The hub the events are published to, if any."""
        return self._events

    def _emit(self, event: dict[str, Any]) -> tuple[int, bytes] | None:
        """Publish one event; ``(event ID, its JSON line)``, or None if it was not
        published."""
        hub = self._events
        if hub is None:
            return None
        try:
            return hub.publish(event)
        except (TypeError, ValueError):
            self.log.failure("Run event {event_name!r} is not JSON-serialisable; not "
                             "published", event_name=event.get("event"))
            return None

    def _emit_run_created(self, record: _RunRecord) -> None:
        self._emit({"time": record.state_changes[0]["time"], "event": "runCreated",
                    "runID": record.run_id, "tag": record.tag,
                    "parameters": record.parameters, "state": State.QUEUED.value})

    def _emit_tasks_added(self, run_id: int,
                          added: list[tuple[ReadOnlyDict, ReadOnlyDict]]) -> None:
        emit = self._emit
        for definition, change in added:
            emit({"time": change["time"], "event": "taskAdded", "runID": run_id,
                  "task": definition["name"], "state": change["state"],
                  "definition": definition})

    # -- helpers ------------------------------------------------------------------------
    def run_ids(self) -> list[int]:
        """Every run ID, in creation order."""
        return list(self._runs)

    def has_run(self, run_id: int) -> bool:
        try:
            return run_id in self._runs
        except TypeError:  # an unhashable ID names no run
            return False

    def _run(self, run_id: int) -> _RunRecord:
        try:
            return self._runs[run_id]
        except (KeyError, TypeError):
            raise UnknownRun(run_id) from None

    def _time_text(self, now: float) -> str:
        last_now, last_text = self._last_time
        if now != last_now:
            last_text = iso8601(now)
            self._last_time = (now, last_text)
        return last_text

    def _state_change(self, now: float, state: State) -> ReadOnlyDict:
        return ReadOnlyDict(time=self._time_text(now), state=State(state).value)

    @staticmethod
    def _check_task(record: _RunRecord, task_name: str) -> None:
        if task_name not in record.task_states:
            raise UnknownTask(record.run_id, task_name)

    def _adopt_run(self, record: _RunRecord) -> None:
        """Hold a run read back from a durable store (it keeps its run ID)."""
        self._runs[record.run_id] = record
        self._next_run_id = max(self._next_run_id, record.run_id + 1)

    # -- writes (synchronous cores; they return what they stored) ------------------------
    def _create_run(self, tag: str | None, parameters: dict[str, list[str]],
                    now: float, run_id: int | None = None) -> _RunRecord:
        """Record a new QUEUED run, under ``run_id`` when a store allocated it elsewhere."""
        if run_id is None:
            run_id = self._next_run_id
        elif run_id in self._runs:
            raise Conflict(f"run {run_id} already exists")
        record = _RunRecord(run_id, tag, parameters, self._state_change(now, State.QUEUED), now)
        self._runs[run_id] = record
        self._next_run_id = max(self._next_run_id, run_id + 1)
        return record

    def _add_tasks(self, run_id: int, tasks: Iterable[TaskDef],
                   now: float) -> list[tuple[ReadOnlyDict, ReadOnlyDict]]:
        record = self._run(run_id)
        tasks = list(tasks)
        seen: set[str] = set()
        for task in tasks:
            if task.name in record.task_states or task.name in seen:
                raise Conflict(f"run {run_id} already has a task named {task.name!r}")
            seen.add(task.name)
        added = []
        change = self._state_change(now, State.QUEUED)
        for task in tasks:
            definition = frozen_task(task)
            record.tasks[task.name] = definition
            record.task_states[task.name] = State.QUEUED.value
            record.task_attempts[task.name] = []
            # State-change entries are read-only, so one entry can be shared by the batch.
            record.task_state_changes[task.name] = [change]
            added.append((definition, change))
        record.task_counts[State.QUEUED.value] += len(tasks)
        if tasks:
            record.touch(now)
        return added

    def _record_run_state(self, run_id: int, state: State, now: float) -> ReadOnlyDict:
        record = self._run(run_id)
        change = self._state_change(now, state)
        record.state = State(state)
        record.state_changes.append(change)
        record.touch(now)
        return change

    def _record_task_state(self, run_id: int, task_name: str, state: State,
                           now: float) -> ReadOnlyDict:
        record = self._run(run_id)
        self._check_task(record, task_name)
        change = self._state_change(now, state)
        record.task_counts[record.task_states[task_name]] -= 1
        record.task_counts[change["state"]] += 1
        record.task_states[task_name] = change["state"]
        record.task_state_changes[task_name].append(change)
        record.touch(now)
        return change

    def _record_attempt(self, run_id: int, task_name: str, attempt: Attempt) -> ReadOnlyDict:
        record = self._run(run_id)
        self._check_task(record, task_name)
        stored = frozen_attempt(attempt)
        record.task_attempts[task_name].append(stored)
        record.touch(attempt.stop_time)
        return stored

    def _record_executor_state(self, run_id: int, task_name: str, state: dict[str, Any],
                               now: float) -> ReadOnlyDict:
        record = self._run(run_id)
        self._check_task(record, task_name)
        stored = freeze(dict(state))
        record.task_executor_states[task_name] = stored
        record.touch(now)
        return stored

    # -- writes (RunLogger) --------------------------------------------------------------
    def create_run(self, tag: str | None, parameters: dict[str, list[str]],
                   now: float) -> Deferred[int]:
        """Allocate the next run ID and record the run as QUEUED.

        :returns: a Deferred that has already fired with the run ID.
        """
        record = self._create_run(tag, parameters, now)
        if self._emitting:
            self._emit_run_created(record)
        return defer.succeed(record.run_id)

    def add_tasks(self, run_id: int, tasks: Iterable[TaskDef], now: float) -> None:
        added = self._add_tasks(run_id, tasks, now)
        if self._emitting:
            self._emit_tasks_added(run_id, added)

    def record_run_state(self, run_id: int, state: State, now: float) -> None:
        change = self._record_run_state(run_id, state, now)
        if self._emitting:
            self._emit({"time": change["time"], "event": "runState", "runID": run_id,
                        "state": change["state"]})

    def record_task_state(self, run_id: int, task_name: str, state: State, now: float) -> None:
        change = self._record_task_state(run_id, task_name, state, now)
        if self._emitting:
            self._emit({"time": change["time"], "event": "taskState", "runID": run_id,
                        "task": task_name, "state": change["state"]})

    def record_attempt(self, run_id: int, task_name: str, attempt: Attempt) -> None:
        stored = self._record_attempt(run_id, task_name, attempt)
        if self._emitting:
            self._emit({"time": stored["stopTime"], "event": "taskAttempt", "runID": run_id,
                        "task": task_name, "attempt": stored})

    def record_executor_state(self, run_id: int, task_name: str, state: dict[str, Any],
                              now: float) -> None:
        """Keep what the executor needs to find the task's running attempt again (replacing
        what an earlier attempt reported)."""
        stored = self._record_executor_state(run_id, task_name, state, now)
        if self._emitting:
            self._emit({"time": self._time_text(now), "event": "taskExecutorState",
                        "runID": run_id, "task": task_name, "executorState": stored})

    def start(self) -> None:
        """Nothing to connect to: the store is ready from the start."""

    def when_ready(self) -> Deferred[None]:
        """An already-fired Deferred: memory is always ready."""
        return defer.succeed(None)

    def status(self) -> tuple[bool, str]:
        """Always ``(True, "")``."""
        return True, ""

    def load_unfinished_runs(self) -> Deferred[list[dict[str, Any]]]:
        """Every run that is not finished, as ``get_run`` documents, by run ID.

        :returns: an already-fired Deferred; O(tasks of those runs).
        """
        return defer.succeed([record.document() for record in self._runs.values()
                              if record.state not in FINISHED_STATES])

    def load_run(self, run_id: int) -> Deferred[dict[str, Any]]:
        """Every run this store knows is already held: the same as :meth:`get_run`."""
        return self.get_run(run_id)

    def flush(self) -> Deferred[None]:
        """Everything is stored as soon as it is written: an already-fired Deferred."""
        return defer.succeed(None)

    def close(self) -> Deferred[None]:
        """Nothing to release; the records stay readable.  An already-fired Deferred."""
        return defer.succeed(None)

    # -- reads ---------------------------------------------------------------------------
    def list_runs(self, all_runs: bool = False, tag: str | None = None,
                  state: State | None = None) -> Deferred[list[dict[str, Any]]]:
        """Summaries ``{runID, tag, state, startTime, lastUpdate, taskCounts}`` by run ID.

        :param all_runs: include finished (COMPLETED, ERRORED, KILLED) runs.
        :param tag: only runs with exactly this tag.
        :param state: only runs in this state.
        :returns: an already-fired Deferred; O(runs), independent of task counts.
        """
        summaries = []
        for record in self._runs.values():  # insertion order is run-ID order
            if not all_runs and record.state in FINISHED_STATES:
                continue
            if tag is not None and record.tag != tag:
                continue
            if state is not None and record.state != state:
                continue
            summaries.append(record.summary())
        return defer.succeed(summaries)

    def get_run(self, run_id: int) -> Deferred[dict[str, Any]]:
        """The whole run: summary fields plus ``parameters``, ``stateChanges``, ``tasks``,
        ``taskStates``, ``taskAttempts``, ``taskStateChanges``, ``taskExecutorStates``.

        :returns: a Deferred that has fired with the document, or failed with
            :class:`~daggy.errors.UnknownRun`.
        """
        try:
            record = self._run(run_id)
        except UnknownRun:
            return defer.fail()
        return defer.succeed(record.document())

    def get_run_state(self, run_id: int) -> Deferred[dict[str, Any]]:
        """``{runID, state, taskCounts}``; fails with :class:`~daggy.errors.UnknownRun`."""
        try:
            record = self._run(run_id)
        except UnknownRun:
            return defer.fail()
        return defer.succeed({"runID": record.run_id, "state": record.state.value,
                              "taskCounts": dict(record.task_counts)})

    def get_task(self, run_id: int, task_name: str) -> Deferred[dict[str, Any]]:
        """``{runID, name, definition, state, attempts, stateChanges, executorState}``
        (``executorState`` is ``None`` until the executor reports one); fails with
        :class:`~daggy.errors.UnknownRun` or :class:`~daggy.errors.UnknownTask`."""
        try:
            record = self._run(run_id)
            self._check_task(record, task_name)
        except (UnknownRun, UnknownTask):
            return defer.fail()
        return defer.succeed({
            "runID": record.run_id,
            "name": task_name,
            "definition": record.tasks[task_name],
            "state": record.task_states[task_name],
            "attempts": list(record.task_attempts[task_name]),
            "stateChanges": list(record.task_state_changes[task_name]),
            "executorState": record.task_executor_states.get(task_name),
        })

    def get_task_state(self, run_id: int, task_name: str) -> Deferred[dict[str, Any]]:
        """``{runID, name, state}``; fails with :class:`~daggy.errors.UnknownRun` or
        :class:`~daggy.errors.UnknownTask`."""
        try:
            record = self._run(run_id)
            self._check_task(record, task_name)
        except (UnknownRun, UnknownTask):
            return defer.fail()
        return defer.succeed({"runID": record.run_id, "name": task_name,
                              "state": record.task_states[task_name]})
