"""The runner: turns the DAG engine's decisions into executor calls and logger records.

One :class:`RunManager` serves the daemon.  It admits at most ``max_active_runs`` runs at
once (``dag-threads``; the rest wait QUEUED) and never has more attempts in flight than the
executor's ``capacity``.  Ready tasks are dispatched once per reactor turn, round-robin over
the active runs, at most ``dispatch_batch`` per turn so a huge ready set cannot starve the
HTTP server.

Each run has one Deferred (``_Run.done``) that fires with its final state; every callback
chain ends in an errback that logs the failure and records the run as ERRORED.
"""

from __future__ import annotations

import copy
from collections import deque
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from daggy._collector import collector_paused
from daggy.dag import DagEngine, Outcome
from daggy.errors import (
    BadRequest,
    Conflict,
    SpecInvalid,
    TooManyRequests,
    Unavailable,
    UnknownRun,
    UnknownTask,
)
from daggy.jsonio import loads_like_stdlib
from daggy.limits import RunLimits
from daggy.model import FINISHED_STATES, Attempt, State, TaskDef, parse_iso8601
from daggy.spec import parse_generated_tasks, parse_run_spec

SHUTDOWN_REASON = "daemon shutting down"


def _unmeasured(*args) -> None:
    """What the runner observes into when the daemon keeps no metrics."""


def retries_used(history) -> int:
    """How many retries a task has used, from its recorded state changes: RETRY entries
    since an operator last queued it again (resume or task PATCH from a finished state)."""
    used, previous = 0, None
    for change in history:
        state = change["state"]
        if state == State.RETRY:
            used += 1
        elif state == State.QUEUED and previous in FINISHED_STATES:
            used = 0
        previous = State(state)
    return used


def last_change(history, state: State, default: float) -> float:
    """When ``history`` last entered ``state`` (POSIX seconds), or ``default``."""
    for change in reversed(history):
        if change["state"] == state:
            return parse_iso8601(change["time"])
    return default


class _Run:
    def __init__(self, run_id: int, tag: str | None, parameters: dict[str, Any]):
        self.run_id = run_id
        self.tag = tag
        self.parameters = parameters
        self.engine: DagEngine | None = None
        self.state = State.QUEUED
        self.active = False  # holds one of the max_active_runs slots
        self.executions: dict[str, Any] = {}
        self.retry_timers: dict[str, Any] = {}
        self.done: defer.Deferred = defer.Deferred()
        #: When its tasks were added (or the run was loaded); the start of their queue
        #: wait unless ``queued_since`` says otherwise (metrics only).
        self.added_at = 0.0
        #: Task name -> when it last became QUEUED again (retry, resume, generated tasks),
        #: until it starts or leaves QUEUED.
        self.queued_since: dict[str, float] = {}


class RunManager:
    log = Logger()

    def __init__(self, reactor, executor, logger, max_active_runs: int = 50,
                 limits: RunLimits = RunLimits(), dispatch_batch: int = 1000,
                 metrics: Any = None):
        self._reactor = reactor
        self._executor = executor
        self._logger = logger
        self._max_active_runs = max_active_runs
        self.limits = limits
        self._dispatch_batch = dispatch_batch
        self._runs: dict[int, _Run] = {}
        self._waiting: deque[_Run] = deque()
        self._active_count = 0
        self._ready_runs: dict[int, _Run] = {}  # insertion order is the round-robin order
        self._in_flight = 0
        self._dispatch_call = None
        self._drained: defer.Deferred | None = None
        self.accepting = True
        self._stopping = False
        # daggy.metrics.DaemonMetrics observers (docs/metrics.md), or no-ops.
        executor_name = type(executor).__name__
        if metrics is None:
            self._observe_attempt = self._observe_queue_wait = _unmeasured
        else:
            self._observe_attempt = metrics.attempt_recorder(executor_name)
            self._observe_queue_wait = metrics.queue_wait_recorder(executor_name)

    # -- submission ----------------------------------------------------------------------
    def validate(self, doc: Any) -> list[str]:
        """Expanded task names of ``doc``; raises SpecInvalid."""
        return [task.name for task in self._parse(doc).tasks]

    def _parse(self, doc: Any):
        return parse_run_spec(doc, self._executor, self.limits.max_tasks_per_run,
                              self.limits.max_job_depth)

    def submit(self, doc: Any) -> defer.Deferred:
        """Validate, record and queue a run.  Fires with the run ID; fails with SpecInvalid,
        or Unavailable while the daemon stops."""
        return defer.Deferred.fromCoroutine(self._submit(doc))

    async def _submit(self, doc: Any) -> int:
        if not self.accepting:
            raise Unavailable("daggyd is shutting down and accepts no new runs")
        if len(self._waiting) >= self.limits.max_queued_runs:
            raise TooManyRequests(
                f"{len(self._waiting)} runs are already queued (limit "
                f"{self.limits.max_queued_runs}); submit again once some have started")
        with collector_paused():
            spec = self._parse(doc)
        now = self._reactor.seconds()
        run_id = await self._logger.create_run(spec.tag, spec.parameters, now)
        run = _Run(run_id, spec.tag, spec.parameters)
        run.added_at = now
        with collector_paused():
            run.engine = DagEngine(on_state=self._state_recorder(run))
            run.engine.add_groups(spec.groups)
            self._logger.add_tasks(run_id, spec.tasks, now)
        self._runs[run_id] = run
        run.done.addErrback(self._log_run_failure, run)
        self._enqueue(run)
        try:
            # Answer with the ID only once the run is stored, so a daemon killed right after
            # cannot forget a run its client was told about.
            await self._logger.flush()
        except Unavailable as error:
            self.log.warn("run {run_id} is accepted and running but not stored yet: {error}",
                          run_id=run_id, error=error.message)
        return run_id

    def _state_recorder(self, run: _Run):
        record, clock, run_id = self._logger.record_task_state, self._reactor, run.run_id
        queued_since, observe_queue_wait = run.queued_since, self._observe_queue_wait

        def on_state(name: str, state: State) -> None:
            now = clock.seconds()
            record(run_id, name, state, now)
            if state is State.RUNNING:
                observe_queue_wait(now - queued_since.pop(name, run.added_at))
            elif state is State.QUEUED:
                queued_since[name] = now
            elif queued_since:
                queued_since.pop(name, None)

        return on_state

    def run_done(self, run_id: int) -> defer.Deferred:
        """A Deferred firing with the run's state when it next finishes."""
        run = self._get(run_id)
        if run.state in FINISHED_STATES and not run.active:
            return defer.succeed(run.state)
        waiter: defer.Deferred = defer.Deferred()
        run.done.addBoth(lambda result: (waiter.callback(result), result)[1])
        return waiter

    # -- metrics (read at scrape time) ----------------------------------------------------
    def state_counts(self) -> tuple[dict[State, int], dict[State, int]]:
        """The runs this runner holds and their tasks, each counted by state: O(runs)."""
        runs = dict.fromkeys(State, 0)
        tasks = dict.fromkeys(State, 0)
        for run in self._runs.values():
            runs[run.state] += 1
            if run.engine is not None:
                for state, count in run.engine.counts.items():
                    tasks[state] += count
        return runs, tasks

    @property
    def attempts_in_flight(self) -> int:
        """Attempts handed to the executor whose results have not been recorded yet."""
        return self._in_flight

    # -- run admission -------------------------------------------------------------------
    def _set_run_state(self, run: _Run, state: State) -> None:
        if run.state is not state:
            run.state = state
            self._logger.record_run_state(run.run_id, state, self._reactor.seconds())

    def _enqueue(self, run: _Run) -> None:
        self._set_run_state(run, State.QUEUED)
        if self._active_count < self._max_active_runs and not self._stopping:
            self._activate(run)
        else:
            self._waiting.append(run)

    def _activate(self, run: _Run) -> None:
        self._active_count += 1
        run.active = True
        self._set_run_state(run, State.RUNNING)
        self._after_change(run)

    def _release(self, run: _Run) -> None:
        run.active = False
        self._active_count -= 1
        self._ready_runs.pop(run.run_id, None)
        while self._waiting and self._active_count < self._max_active_runs and not self._stopping:
            waiting = self._waiting.popleft()
            if waiting.state is State.QUEUED and not waiting.active:
                self._activate(waiting)

    def _after_change(self, run: _Run) -> None:
        """Re-evaluate a run after its engine changed: finish it, or make it dispatchable."""
        engine = run.engine
        if not run.active:
            return
        if engine.is_finished():
            self._set_run_state(run, engine.final_state())
            self._release(run)
            done, run.done = run.done, defer.Deferred()
            run.done.addErrback(self._log_run_failure, run)
            done.callback(run.state)
        elif engine.ready_count and not engine.killed:
            self._ready_runs[run.run_id] = run
            self._schedule_dispatch()

    # -- dispatch ------------------------------------------------------------------------
    def _schedule_dispatch(self) -> None:
        if self._dispatch_call is None and not self._stopping:
            self._dispatch_call = self._reactor.callLater(0, self._dispatch)

    def _dispatch(self) -> None:
        self._dispatch_call = None
        capacity = self._executor.capacity
        started = 0
        while (self._ready_runs and not self._stopping
               and (capacity is None or self._in_flight < capacity)):
            if started >= self._dispatch_batch:
                self._schedule_dispatch()
                return
            run_id, run = next(iter(self._ready_runs.items()))
            del self._ready_runs[run_id]
            task = run.engine.pop_ready()
            if task is None:
                continue
            if run.engine.ready_count:
                self._ready_runs[run_id] = run  # to the back: round-robin between runs
            self._start(run, task)
            started += 1

    def _start(self, run: _Run, task: TaskDef) -> None:
        run.engine.mark_running(task.name)
        try:
            execution = self._executor.start(run.run_id, task.name, task.job)
        except Exception:
            failure = Failure()
            self.log.failure("executor failed to start {task} of run {run_id}", failure,
                             task=task.name, run_id=run.run_id)
            self._in_flight += 1
            self._watch(run, task, defer.succeed(self._internal_attempt(failure)))
        else:
            self._track(run, task, execution)

    def _track(self, run: _Run, task: TaskDef, execution) -> None:
        """Follow a started (or re-attached) attempt until its result is recorded."""
        self._in_flight += 1
        run.executions[task.name] = execution
        started = getattr(execution, "started", None)
        if started is not None:
            started.addCallback(self._record_executor_state, run, task.name)
            started.addErrback(self.log.failure, "recording the executor state of {task} "
                               "of run {run_id} failed", task=task.name, run_id=run.run_id)
        self._watch(run, task, execution.result)

    def _record_executor_state(self, state: dict, run: _Run, name: str) -> None:
        self._logger.record_executor_state(run.run_id, name, state, self._reactor.seconds())

    def _watch(self, run: _Run, task: TaskDef, result: defer.Deferred) -> None:
        result.addErrback(self._executor_bug, run, task)
        result.addCallback(self._attempt_ended, run, task)
        result.addErrback(self._internal_error, run)

    def _internal_attempt(self, failure: Failure) -> Attempt:
        now = self._reactor.seconds()
        return Attempt(start_time=now, stop_time=now, rc=None, succeeded=False,
                       executor_log=f"internal executor error: {failure.getErrorMessage()}")

    def _executor_bug(self, failure: Failure, run: _Run, task: TaskDef) -> Attempt:
        self.log.failure("executor failed {task} of run {run_id}", failure, task=task.name,
                         run_id=run.run_id)
        return self._internal_attempt(failure)

    # -- attempt results -----------------------------------------------------------------
    def _attempt_ended(self, attempt: Attempt, run: _Run, task: TaskDef) -> None:
        self._in_flight -= 1
        run.executions.pop(task.name, None)
        try:
            self._observe_attempt(attempt)
            self._record_outcome(attempt, run, task)
        finally:
            # Even after a bug while recording (reported by _internal_error), shutdown
            # must not wait for an attempt that has ended.
            self._schedule_dispatch()
            if self._drained is not None and self._in_flight == 0:
                drained, self._drained = self._drained, None
                drained.callback(None)

    def _record_outcome(self, attempt: Attempt, run: _Run, task: TaskDef) -> None:
        engine = run.engine
        generated = None
        if task.is_generator and attempt.succeeded:
            generated = self._generated_tasks(attempt, run, task)
        self._logger.record_attempt(run.run_id, task.name, attempt)
        if self._stopping and attempt.killed:
            engine.requeue_interrupted(task.name)  # runs again when the run resumes
        else:
            if generated:
                engine.add_groups(generated, after=task.name)
                now = self._reactor.seconds()
                added = [t for g in generated for t in g.instances]
                self._logger.add_tasks(run.run_id, added, now)
                run.queued_since.update(dict.fromkeys([t.name for t in added], now))
            outcome = engine.attempt_ended(task.name, attempt.succeeded, killed=attempt.killed)
            if outcome is Outcome.RETRY:
                run.retry_timers[task.name] = self._reactor.callLater(
                    task.retry_interval_seconds, self._retry_due, run, task.name)
            self._after_change(run)

    def _generated_tasks(self, attempt: Attempt, run: _Run, task: TaskDef):
        """Parse a generator's stdout; on bad output mark the attempt failed and say why."""
        limits = self.limits
        output = attempt.output_log.encode("utf-8", "surrogatepass")
        if attempt.output_truncated:
            problem = ("generator output was cut at the executor's output limit; "
                       "its task list is incomplete")
        elif len(output) > limits.max_generator_output_bytes:
            problem = (f"generator output is {len(output)} bytes (limit "
                       f"{limits.max_generator_output_bytes})")
        else:
            try:
                doc = loads_like_stdlib(output)
            except RecursionError:
                problem = "generator output is not valid JSON: nested too deeply"
            except ValueError as error:
                problem = f"generator output is not valid JSON: {error}"
            else:
                room = limits.max_tasks_per_run - run.engine.task_count
                try:
                    return parse_generated_tasks(
                        doc, self._executor, run.parameters, task, run.engine,
                        max(0, min(limits.max_generated_tasks, room)), limits.max_job_depth)
                except SpecInvalid as error:
                    problem = "generator output rejected: " + "; ".join(error.errors)
        attempt.succeeded = False
        attempt.executor_log = "; ".join(filter(None, [attempt.executor_log, problem]))
        return None

    def _retry_due(self, run: _Run, name: str) -> None:
        run.retry_timers.pop(name, None)
        try:
            run.engine.retry_due(name)
            self._after_change(run)
        except Exception:
            self._internal_error(Failure(), run)

    def _internal_error(self, failure: Failure, run: _Run) -> None:
        """A bug in the runner: log it, and fail the run rather than leave it hanging."""
        self.log.failure("internal error in run {run_id}", failure, run_id=run.run_id)
        for timer in run.retry_timers.values():
            timer.cancel()
        run.retry_timers.clear()
        for execution in list(run.executions.values()):
            execution.kill("internal error in daggyd")
        if run.active:
            self._set_run_state(run, State.ERRORED)
            self._release(run)

    def _log_run_failure(self, failure: Failure, run: _Run) -> None:
        self.log.failure("run {run_id} failed", failure, run_id=run.run_id)

    # -- restart recovery ----------------------------------------------------------------
    def recover(self) -> defer.Deferred:
        """Resume every run the logger has as unfinished (after a daemon restart).

        COMPLETED tasks stay; a RUNNING task is offered to the executor to re-attach, and
        otherwise its attempt is closed as interrupted and the task queued again without
        using a retry; RETRY timers are re-armed for what is left of their interval.
        Fires with the recovered run IDs."""
        return defer.Deferred.fromCoroutine(self._recover())

    async def _recover(self) -> list[int]:
        recovered = []
        for doc in await self._logger.load_unfinished_runs():
            if doc["runID"] in self._runs:
                continue
            try:
                self._restore(doc)
            except Exception:
                self.log.failure("could not recover run {run_id}", run_id=doc["runID"])
                self._logger.record_run_state(doc["runID"], State.ERRORED,
                                              self._reactor.seconds())
            else:
                recovered.append(doc["runID"])
        if recovered:
            self.log.info("recovered {count} unfinished runs: {run_ids}",
                          count=len(recovered), run_ids=recovered)
        return recovered

    def _rebuild(self, doc: dict) -> _Run:
        """A run (and its engine) as its records describe it, held by this runner."""
        run = _Run(doc["runID"], doc.get("tag"), doc.get("parameters") or {})
        run.added_at = self._reactor.seconds()
        run.state = State(doc["state"])
        tasks = [TaskDef.from_json(copy.deepcopy(task)) for task in doc["tasks"].values()]
        states = {name: State(state) for name, state in doc["taskStates"].items()}
        histories = doc.get("taskStateChanges", {})
        run.engine = DagEngine(on_state=self._state_recorder(run))
        run.engine.restore(tasks, states, {name: retries_used(histories.get(name, ()))
                                           for name in states})
        if run.state is State.KILLED:
            run.engine.killed = True
        self._runs[run.run_id] = run
        run.done.addErrback(self._log_run_failure, run)
        return run

    def _restore(self, doc: dict) -> None:
        run = self._rebuild(doc)
        states = {name: State(state) for name, state in doc["taskStates"].items()}
        histories = doc.get("taskStateChanges", {})
        now = self._reactor.seconds()
        executor_states = doc.get("taskExecutorStates", {})
        attempts = doc.get("taskAttempts", {})
        for name, state in states.items():
            if state is State.RUNNING:
                task = run.engine.task(name)
                earlier = [dict(attempt.get("executorState") or {})
                           for attempt in attempts.get(name, ())]
                executor_state = dict(executor_states.get(name) or {})
                if executor_state in earlier:
                    # The daemon died before the running attempt reported its own state:
                    # what is recorded belongs to an attempt that already ended.
                    executor_state = {}
                execution = self._executor.reattach(run.run_id, name, task.job,
                                                    executor_state, earlier)
                if execution is not None:
                    self._track(run, task, execution)
                    continue
                since = last_change(histories.get(name, ()), State.RUNNING, default=now)
                self._logger.record_attempt(run.run_id, name, Attempt(
                    start_time=since, stop_time=now, rc=None, succeeded=False,
                    executor_log="daggyd restarted while this attempt was running; its "
                                 "outcome is unknown, so the task runs again (this does not "
                                 "use one of its retries)"))
                run.engine.requeue_interrupted(name)
            elif state is State.RETRY:
                task = run.engine.task(name)
                since = last_change(histories.get(name, ()), State.RETRY, default=now)
                delay = max(0.0, since + task.retry_interval_seconds - now)
                run.retry_timers[name] = self._reactor.callLater(delay, self._retry_due, run,
                                                                 name)
        self._enqueue(run)

    # -- operator actions ----------------------------------------------------------------
    def _get(self, run_id: int) -> _Run:
        try:
            return self._runs[run_id]
        except KeyError:
            raise UnknownRun(run_id) from None

    def _with_run(self, run_id: int, action, *args):
        """Apply an operator action to a run.  A run this runner does not hold (a finished
        run of an earlier daemon) is loaded from the logger first, and the result is then a
        Deferred; otherwise the action runs (and raises) at once."""
        run = self._runs.get(run_id)
        if run is not None:
            return action(run, *args)

        async def load_then_act():
            doc = await self._logger.load_run(run_id)
            loaded = self._runs.get(run_id)  # another request may have loaded it meanwhile
            return action(loaded if loaded is not None else self._rebuild(doc), *args)

        return defer.Deferred.fromCoroutine(load_then_act())

    def kill_run(self, run_id: int):
        """Kill a run: running tasks are killed, queued ones never start.

        :raises UnknownRun: no such run.  :raises Conflict: the run already finished."""
        return self._with_run(run_id, self._kill_run)

    def _kill_run(self, run: _Run) -> None:
        run_id = run.run_id
        if run.state in FINISHED_STATES:
            raise Conflict(f"run {run_id} is already {run.state}")
        for name in run.engine.kill():
            run.executions[name].kill("run killed by request")
        for timer in run.retry_timers.values():
            timer.cancel()
        run.retry_timers.clear()
        self._set_run_state(run, State.KILLED)
        self._after_change(run)  # releases the slot at once if nothing was running

    def resume_run(self, run_id: int):
        """Queue a finished run again: COMPLETED tasks stay, the rest run again.

        :raises Conflict: the run is queued or running, or its killed tasks are still
            stopping."""
        return self._with_run(run_id, self._resume_run)

    def _resume_run(self, run: _Run) -> None:
        run_id = run.run_id
        if run.active or run.state not in FINISHED_STATES:
            detail = ("still stopping its killed tasks" if run.state in FINISHED_STATES
                      else str(run.state))
            raise Conflict(f"run {run_id} is {detail}; only a finished run can be resumed")
        if self._stopping:
            raise Unavailable("daggyd is shutting down")
        run.engine.resume()
        self._enqueue(run)

    def set_task_state(self, run_id: int, name: str, state: State):
        """Operator action on one task: QUEUED re-runs it (resuming a finished run),
        COMPLETED marks it done so its children can run, KILLED kills it."""
        return self._with_run(run_id, self._set_task_state, name, state)

    def _set_task_state(self, run: _Run, name: str, state: State) -> None:
        run_id = run.run_id
        engine = run.engine
        if name not in engine:
            raise UnknownTask(run_id, name)
        if state is State.QUEUED:
            if self._stopping:
                raise Unavailable("daggyd is shutting down")
            engine.requeue_task(name)
        elif state is State.COMPLETED:
            engine.complete_task(name)
            timer = run.retry_timers.pop(name, None)
            if timer is not None:
                timer.cancel()
        elif state is State.KILLED:
            if engine.kill_task(name):
                run.executions[name].kill("task killed by request")
            timer = run.retry_timers.pop(name, None)
            if timer is not None:
                timer.cancel()
        else:
            raise BadRequest(f"state: a task can be set to QUEUED, COMPLETED or KILLED, "
                             f"not {state}")
        if run.active:
            if run.state in FINISHED_STATES and not engine.killed:
                # Re-queuing a task lifted the kill of a run whose killed tasks are still
                # stopping: it runs again, so it must not keep reporting KILLED.
                self._set_run_state(run, State.RUNNING)
            self._after_change(run)
        elif run in self._waiting:
            pass
        elif not engine.killed and engine.ready_count:
            self._enqueue(run)  # a finished run has work again
        else:
            self._set_run_state(run, engine.final_state())

    # -- shutdown ------------------------------------------------------------------------
    def stop(self) -> defer.Deferred:
        """Stop accepting runs, kill running tasks (their attempts are recorded and the
        tasks queued again), flush the logger.  Fires when all that is done."""
        return defer.Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        self.accepting = False
        self._stopping = True
        if self._dispatch_call is not None:
            self._dispatch_call.cancel()
            self._dispatch_call = None
        for run in self._runs.values():
            for timer in run.retry_timers.values():
                timer.cancel()
            run.retry_timers.clear()
        if self._in_flight:
            self._drained = defer.Deferred()
            drained = self._drained
            await self._executor.stop()
            await drained
        else:
            await self._executor.stop()
        try:
            await self._logger.flush()
        except Unavailable as error:
            self.log.warn("not every record could be stored before stopping: {error}",
                          error=error.message)
