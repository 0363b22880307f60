"""The DAG run state machine.

The engine decides; the runner acts.  It holds one node per task instance plus internal
*barrier* nodes that join expanded groups, so an edge between two defined tasks with N and M
instances costs N + M edges instead of N * M.  Barriers are never executed or shown.

Every node keeps ``outstanding``: how many of its predecessors are not complete (a task is
complete when COMPLETED, a barrier when its own ``outstanding`` is 0).  A task is *ready*
when it is QUEUED with nothing outstanding.  Each event touches only the node and its direct
successors, so per-event work does not grow with the size of the run.

Every task state change is reported to ``on_state(name, state)`` in the order it happens.
"""

from __future__ import annotations

import enum
from collections import deque
from typing import Callable, Iterable

from daggy.errors import Conflict, UnknownTask
from daggy.model import State, TaskDef

_BARRIER = None  # the state slot of a barrier node


class Outcome(enum.Enum):
    COMPLETED = "completed"
    RETRY = "retry"
    ERRORED = "errored"
    KILLED = "killed"


class DagEngine:
    def __init__(self, on_state: Callable[[str, State], None] = lambda name, state: None):
        self._on_state = on_state
        self._names: list[str | None] = []
        self._tasks: list[TaskDef | None] = []
        self._state: list[State | None] = []
        self._outstanding: list[int] = []
        self._successors: list[list[int]] = []
        self._retries_used: list[int] = []
        self._ready_flag: list[bool] = []
        self._index: dict[str, int] = {}
        self._ready: deque[int] = deque()
        self.ready_count = 0
        self.counts: dict[State, int] = dict.fromkeys(State, 0)
        self.killed = False

    @property
    def task_count(self) -> int:
        """Tasks in the run (barriers not counted)."""
        return len(self._index)

    # -- construction --------------------------------------------------------------------
    def _add_node(self, task: TaskDef | None) -> int:
        node = len(self._state)
        self._names.append(task.name if task else None)
        self._tasks.append(task)
        self._state.append(State.QUEUED if task else _BARRIER)
        self._outstanding.append(0)
        self._successors.append([])
        self._retries_used.append(0)
        self._ready_flag.append(False)
        if task is not None:
            self._index[task.name] = node
            self.counts[State.QUEUED] += 1
        return node

    def _is_complete(self, node: int) -> bool:
        state = self._state[node]
        return self._outstanding[node] == 0 if state is _BARRIER else state is State.COMPLETED

    def _add_edge(self, parent: int, child: int) -> None:
        self._successors[parent].append(child)
        if not self._is_complete(parent):
            if self._state[child] is _BARRIER and self._outstanding[child] == 0:
                self._uncomplete(child)  # the barrier was complete until now
            self._outstanding[child] += 1
            if self._state[child] is not _BARRIER:
                self._update_ready(child)

    def _add_group_nodes(self, instances: list[TaskDef]) -> tuple[list[int], int]:
        """Nodes for a group's instances; returns (entry nodes, the node that completes when
        every instance has)."""
        nodes = [self._add_node(task) for task in instances]
        if len(nodes) == 1:
            return nodes, nodes[0]
        barrier = self._add_node(None)
        for node in nodes:
            self._add_edge(node, barrier)
        return nodes, barrier

    def _connect(self, sources: list[int], targets: list[int]) -> None:
        """Every target waits for every source, in len(sources) + len(targets) edges."""
        if len(sources) > 1 and len(targets) > 1:
            join = self._add_node(None)
            for source in sources:
                self._add_edge(source, join)
            sources = [join]
        for source in sources:
            for target in targets:
                self._add_edge(source, target)

    def add_groups(self, groups: Iterable, after: str | None = None) -> None:
        """Add task groups (``TaskGroup``: defined name, instances, parents, children).

        Edges between groups are taken from ``parents`` (names of other groups added in the
        same call).  With ``after`` (a generator's name) the new tasks run after that task
        and before everything that was waiting for it.  Call it while the generator is still
        RUNNING (before :meth:`attempt_ended`), so its children can never start in between.
        """
        groups = list(groups)
        entry: dict[str, list[int]] = {}
        exit_: dict[str, int] = {}
        for group in groups:
            entry[group.defined_name], exit_[group.defined_name] = \
                self._add_group_nodes(group.instances)
        for group in groups:
            sources = [exit_[name] for name in group.parents if name in exit_]
            self._connect(sources, entry[group.defined_name])
        if after is not None:
            generator = self._index[after]
            waiting = list(self._successors[generator])
            for group in groups:
                for node in entry[group.defined_name]:
                    self._add_edge(generator, node)
            if waiting and groups:
                self._connect([exit_[group.defined_name] for group in groups], waiting)
        for group in groups:
            for node in entry[group.defined_name]:
                self._update_ready(node)

    def restore(self, tasks: Iterable[TaskDef], states: dict[str, State],
                retries_used: dict[str, int]) -> None:
        """Rebuild a recorded run (restart recovery) into this empty engine, silently.

        The structure comes from the task records alone: tasks sharing a ``definedName`` form
        a group; a name in ``parents``/``children`` is a defined task of the run (meaning all
        its instances) or, for generated tasks, the generator instance itself.
        """
        groups: dict[str, list[TaskDef]] = {}
        for task in tasks:
            groups.setdefault(task.defined_name, []).append(task)
        entry: dict[str, list[int]] = {}
        exit_: dict[str, int] = {}
        for defined, instances in groups.items():
            entry[defined], exit_[defined] = self._add_group_nodes(instances)
        sources: dict[str, dict[int, None]] = {defined: {} for defined in groups}
        for defined, instances in groups.items():
            for parent in instances[0].parents:
                source = exit_.get(parent, self._index.get(parent))
                if source is not None:
                    sources[defined][source] = None
            for child in instances[0].children:
                if child in groups:
                    sources[child][exit_[defined]] = None
        for defined, from_nodes in sources.items():
            self._connect(list(from_nodes), entry[defined])
        on_state, self._on_state = self._on_state, lambda name, state: None
        try:
            for name, state in states.items():
                node = self._node(name)
                self._retries_used[node] = retries_used.get(name, 0)
                self._set(node, State(state))
        finally:
            self._on_state = on_state
        for nodes in entry.values():
            for node in nodes:
                self._update_ready(node)

    # -- queries -------------------------------------------------------------------------
    def __contains__(self, name: str) -> bool:
        return name in self._index

    def __len__(self) -> int:
        return len(self._index)

    def task(self, name: str) -> TaskDef:
        return self._tasks[self._node(name)]

    def state(self, name: str) -> State:
        return self._state[self._node(name)]

    def names(self) -> Iterable[str]:
        return self._index.keys()

    def retries_used(self, name: str) -> int:
        return self._retries_used[self._node(name)]

    @property
    def running_count(self) -> int:
        return self.counts[State.RUNNING]

    def is_finished(self) -> bool:
        """Nothing runs, nothing waits out a retry, and nothing can start."""
        if self.counts[State.RUNNING] or self.counts[State.RETRY]:
            return False
        return self.killed or self.ready_count == 0

    def final_state(self) -> State:
        if self.counts[State.COMPLETED] == len(self._index):
            return State.COMPLETED
        if self.killed:
            return State.KILLED
        if self.counts[State.ERRORED]:
            return State.ERRORED
        return State.KILLED if self.counts[State.KILLED] else State.ERRORED

    # -- the ready queue -----------------------------------------------------------------
    def pop_ready(self) -> TaskDef | None:
        """The next task to start (FIFO), or None.  Skips entries made stale since."""
        if self.killed:
            return None
        while self._ready:
            node = self._ready.popleft()
            if self._ready_flag[node]:
                self._ready_flag[node] = False
                self.ready_count -= 1
                return self._tasks[node]
        return None

    def _update_ready(self, node: int) -> None:
        ready = self._state[node] is State.QUEUED and self._outstanding[node] == 0
        if ready and not self._ready_flag[node]:
            self._ready_flag[node] = True
            self.ready_count += 1
            self._ready.append(node)
        elif not ready and self._ready_flag[node]:
            self._ready_flag[node] = False  # its queue entry is skipped when popped
            self.ready_count -= 1

    # -- transitions ---------------------------------------------------------------------
    def _node(self, name: str) -> int:
        try:
            return self._index[name]
        except KeyError:
            raise UnknownTask(None, name) from None

    def _set(self, node: int, state: State) -> None:
        old = self._state[node]
        if old is state:
            return
        was_complete = old is State.COMPLETED
        self.counts[old] -= 1
        self.counts[state] += 1
        self._state[node] = state
        self._update_ready(node)
        self._on_state(self._names[node], state)
        if state is State.COMPLETED:
            self._complete(node)
        elif was_complete:
            self._uncomplete(node)

    def _complete(self, node: int) -> None:
        stack = [node]
        while stack:
            for child in self._successors[stack.pop()]:
                self._outstanding[child] -= 1
                if self._outstanding[child] == 0:
                    if self._state[child] is _BARRIER:
                        stack.append(child)
                    else:
                        self._update_ready(child)

    def _uncomplete(self, node: int) -> None:
        """``node`` stopped being complete: its successors wait for it again."""
        stack = [node]
        while stack:
            for child in self._successors[stack.pop()]:
                self._outstanding[child] += 1
                if self._outstanding[child] == 1:
                    if self._state[child] is _BARRIER:
                        stack.append(child)
                    else:
                        self._update_ready(child)

    def mark_running(self, name: str) -> None:
        node = self._node(name)
        if self._state[node] is not State.QUEUED:
            # Anything else is a caller bug; RUNNING over COMPLETED would silently block
            # the task's children again.
            raise Conflict(f"task {name!r} is {self._state[node]}, not QUEUED")
        if self._ready_flag[node]:  # started by name rather than popped
            self._ready_flag[node] = False
            self.ready_count -= 1
        self._set(node, State.RUNNING)

    def attempt_ended(self, name: str, succeeded: bool, killed: bool = False) -> Outcome:
        """Record how a RUNNING task's attempt ended and decide what follows."""
        node = self._node(name)
        if self._state[node] is not State.RUNNING:
            raise Conflict(f"task {name!r} is {self._state[node]}, not RUNNING")
        if succeeded:
            self._set(node, State.COMPLETED)
            return Outcome.COMPLETED
        if killed:
            self._set(node, State.KILLED)
            return Outcome.KILLED
        if self._retries_used[node] < self._tasks[node].max_retries and not self.killed:
            self._retries_used[node] += 1
            self._set(node, State.RETRY)
            return Outcome.RETRY
        self._set(node, State.ERRORED)
        return Outcome.ERRORED

    def requeue_interrupted(self, name: str) -> None:
        """A RUNNING task was interrupted (daemon shutdown): it will run again, untouched
        retry budget."""
        self._set(self._node(name), State.QUEUED)

    def retry_due(self, name: str) -> None:
        node = self._node(name)
        if self._state[node] is State.RETRY:
            self._set(node, State.QUEUED)

    # -- operator actions ----------------------------------------------------------------
    def kill(self) -> list[str]:
        """Kill the run: nothing new starts; tasks waiting out a retry are KILLED.  Returns
        the RUNNING tasks, which the caller must stop."""
        self.killed = True
        running = []
        for node, state in enumerate(self._state):
            if state is State.RETRY:
                self._set(node, State.KILLED)
            elif state is State.RUNNING:
                running.append(self._names[node])
        return running

    def resume(self) -> None:
        """Every task that is not COMPLETED is QUEUED again with a fresh retry budget."""
        if self.counts[State.RUNNING]:
            raise Conflict("tasks of this run are still running")
        self.killed = False
        for node, state in enumerate(self._state):
            if state is _BARRIER:
                continue
            if state is not State.COMPLETED:
                self._retries_used[node] = 0
                self._set(node, State.QUEUED)

    def requeue_task(self, name: str) -> None:
        """Run one finished task again (its retry budget is fresh); resumes a killed run."""
        node = self._node(name)
        state = self._state[node]
        if state not in (State.ERRORED, State.KILLED, State.COMPLETED):
            raise Conflict(f"task {name!r} is {state}; only ERRORED, KILLED or COMPLETED "
                           "tasks can be queued again")
        self.killed = False
        self._retries_used[node] = 0
        self._set(node, State.QUEUED)

    def complete_task(self, name: str) -> None:
        """Mark a task COMPLETED by hand so its children can run."""
        node = self._node(name)
        state = self._state[node]
        if state is State.RUNNING:
            raise Conflict(f"task {name!r} is RUNNING; kill it first")
        if state is State.COMPLETED:
            raise Conflict(f"task {name!r} is already COMPLETED")
        self._set(node, State.COMPLETED)

    def kill_task(self, name: str) -> bool:
        """Kill one task.  Returns True when it is RUNNING and the caller must stop it;
        a QUEUED or RETRY task becomes KILLED at once."""
        node = self._node(name)
        state = self._state[node]
        if state is State.RUNNING:
            return True
        if state in (State.QUEUED, State.RETRY):
            self._set(node, State.KILLED)
            return False
        raise Conflict(f"task {name!r} is {state}; only QUEUED, RETRY or RUNNING tasks "
                       "can be killed")
