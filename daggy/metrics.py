# -*- test-case-name: tests.unit.test_metrics -*-
"""daggyd's Prometheus metrics, served at ``GET /metrics`` (docs/metrics.md lists them).

One :class:`DaemonMetrics` per daemon holds a ``CollectorRegistry`` of its own, never
prometheus-client's global one, so several daemons (or tests) in one process do not mix
their numbers.  Two kinds of metric live in it:

* **Observed as things happen**: attempt durations and queue waits (the runner), Slurm poll
  durations and command failures (the SlurmTaskExecutor), RedisLogger flush durations and
  HTTP answers (the Site).  Each observation is a histogram or counter update: O(1), a few
  microseconds.  The observing code holds a bound ``observe``/``inc`` (or a no-op when
  the daemon has no metrics), so it never looks a label set up per event.
* **Read at scrape time** by :class:`_DaemonState`: runs and tasks by state (summed over the
  runner's runs from each run's per-state counts: O(runs), never O(tasks)), executor slots
  and logger backlogs.  Nothing is maintained for them between scrapes.

Nothing here imports the reactor or twisted.web; the Site serves :meth:`exposition`.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from daggy.model import State

#: The Prometheus text exposition format daggyd answers with.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: Buckets (seconds) of task attempt durations and queue waits: tasks last from
#: milliseconds (a /bin/true) to a day (a Slurm job).
TASK_SECONDS_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600,
                        1800, 3600, 7200, 21600, 86400)
#: Buckets (seconds) of a Slurm poll (squeue, then sacct/scontrol for finished jobs).
SLURM_POLL_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
#: Buckets (seconds) of a RedisLogger flush (one or more MULTI/EXEC round trips).
FLUSH_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5,
                 10)

#: How an attempt ended, the ``outcome`` label of the attempt duration histogram.
OUTCOMES = ("succeeded", "failed", "timed_out", "killed")

#: HTTP methods counted by name; any other is counted as ``OTHER``.
_METHODS = {method.encode("ascii"): method
            for method in ("GET", "HEAD", "POST", "PATCH", "DELETE", "PUT", "OPTIONS")}
#: The route of a path that is not one of the API's (a 404, or a malformed request).
OTHER_ROUTE = "other"

_ONE_SEGMENT_ROUTES = {b"ready": "/ready", b"metrics": "/metrics"}
_V1_ROUTES = {b"dagrun": "/v1/dagrun", b"dagruns": "/v1/dagruns",
              b"openapi.json": "/v1/openapi.json", b"events": "/v1/events"}
_RUN_STATE_ROUTES = {4: "/v1/dagrun/{runID}/state", 5: "/v1/dagrun/{runID}/state/{state}"}
_TASK_ROUTES = {5: "/v1/dagrun/{runID}/task/{name}", 6: "/v1/dagrun/{runID}/task/{name}/state",
                7: "/v1/dagrun/{runID}/task/{name}/state/{state}"}


def ignore(*args: Any) -> None:
    """The observer of a component that is not measured."""


def route_of(path: bytes) -> str:
    """The route template a raw request path belongs to (``/v1/dagrun/{runID}/state``),
    or :data:`OTHER_ROUTE`: the ``route`` label, one of a fixed few whatever clients send.

    A task name is one raw (percent-encoded) segment, as the API reads it."""
    if path == b"/":
        return "/"  # the web UI's page
    parts = path.split(b"/")
    if parts[-1] == b"" and len(parts) > 2:
        del parts[-1]  # a trailing slash, which every route accepts
    count = len(parts) - 1
    if count == 1:
        return _ONE_SEGMENT_ROUTES.get(parts[1], OTHER_ROUTE)
    if count >= 2 and parts[1] == b"ui":
        return "/ui"
    if count < 2 or parts[1] != b"v1":
        return OTHER_ROUTE
    if count == 2:
        return _V1_ROUTES.get(parts[2], OTHER_ROUTE)
    if parts[2] != b"dagrun":
        return OTHER_ROUTE
    if count == 3:
        return "/v1/dagrun/validate" if parts[3] == b"validate" else "/v1/dagrun/{runID}"
    if parts[4] == b"state":
        return _RUN_STATE_ROUTES.get(count, OTHER_ROUTE)
    if parts[4] == b"task" and (count == 5 or parts[6] == b"state"):
        return _TASK_ROUTES.get(count, OTHER_ROUTE)
    return OTHER_ROUTE


def outcome_of(attempt: Any) -> str:
    """One of :data:`OUTCOMES` for an :class:`~daggy.model.Attempt`."""
    if attempt.succeeded:
        return "succeeded"
    if attempt.killed:
        return "killed"
    return "timed_out" if attempt.timed_out else "failed"


class DaemonMetrics:
    """The metrics of one daemon, in a registry of its own.

    :param process_metrics: also export the ``process_*`` (CPU, memory, open files),
        ``python_gc_*`` and ``python_info`` metrics prometheus-client collects for a
        process; tests leave them out.
    """

    def __init__(self, *, process_metrics: bool = True):
        self.registry = CollectorRegistry()
        registry = self.registry
        self.task_attempt_seconds = Histogram(
            "daggy_task_attempt_duration_seconds",
            "How long task attempts ran (stop minus start time), by executor and outcome.",
            ["executor", "outcome"], buckets=TASK_SECONDS_BUCKETS, registry=registry)
        self.task_queue_wait_seconds = Histogram(
            "daggy_task_queue_wait_seconds",
            "How long tasks stayed QUEUED before an attempt started (QUEUED to RUNNING): "
            "waiting for their parents, a dag-threads slot and an executor slot.",
            ["executor"], buckets=TASK_SECONDS_BUCKETS, registry=registry)
        #: Slurm and RedisLogger metrics, made by :meth:`watch` for a daemon that has them.
        self.slurm_poll_seconds: Histogram | None = None
        self.slurm_command_failures: Counter | None = None
        self.logger_flush_seconds: Histogram | None = None
        self._state = _DaemonState()
        registry.register(self._state)
        if process_metrics:
            ProcessCollector(registry=registry)
            PlatformCollector(registry=registry)
            GCCollector(registry=registry)
        self._exposed = _WithoutCreatedSeries(registry)

    # -- wiring ----------------------------------------------------------------------------
    def watch(self, *, runner: Any = None, executor: Any = None, logger: Any = None,
              executor_name: str | None = None, logger_name: str | None = None) -> None:
        """Read ``runner``, ``executor`` and ``logger`` at every scrape, and make the
        executor and logger report what they measure (their ``observe_*`` hooks)."""
        state = self._state
        state.runner = runner
        state.executor = executor
        state.logger = logger
        state.executor_name = executor_name or type(executor).__name__
        state.logger_name = logger_name or type(logger).__name__
        registry = self.registry
        if hasattr(executor, "observe_poll_seconds"):
            self.slurm_poll_seconds = Histogram(
                "daggy_slurm_poll_duration_seconds",
                "How long one poll of the tracked Slurm jobs took: squeue, then sacct (and "
                "scontrol) for the jobs that left the queue.",
                buckets=SLURM_POLL_BUCKETS, registry=registry)
            executor.observe_poll_seconds = self.slurm_poll_seconds.observe
        if hasattr(executor, "count_command_failure"):
            failures = self.slurm_command_failures = Counter(
                "daggy_slurm_command_failures",
                "Slurm commands that failed: could not run, timed out, or exited non-zero "
                "(except the exits that are normal: scancel of a job that already ended, "
                "squeue of purged jobs).",
                ["command"], registry=registry)
            increments = {command: failures.labels(command).inc
                          for command in getattr(executor, "command_counts", ())}
            executor.count_command_failure = lambda command: increments[command]()
        if hasattr(logger, "observe_flush_seconds"):
            self.logger_flush_seconds = Histogram(
                "daggy_logger_flush_duration_seconds",
                "How long the RedisLogger took to store a batch of run records (a flush, "
                "from its start to Redis confirming its last transaction).",
                ["logger"], buckets=FLUSH_BUCKETS, registry=registry)
            logger.observe_flush_seconds = self.logger_flush_seconds.labels(
                state.logger_name).observe

    def attempt_recorder(self, executor_name: str) -> Callable[[Any], None]:
        """A function observing an ended :class:`~daggy.model.Attempt`'s duration."""
        observers = {outcome: self.task_attempt_seconds.labels(executor_name, outcome).observe
                     for outcome in OUTCOMES}

        def record(attempt: Any) -> None:
            observers[outcome_of(attempt)](max(0.0, attempt.stop_time - attempt.start_time))

        return record

    def queue_wait_recorder(self, executor_name: str) -> Callable[[float], None]:
        """A function observing one queue wait, in seconds."""
        return self.task_queue_wait_seconds.labels(executor_name).observe

    def count_request(self, method: bytes, path: bytes, code: int) -> None:
        """Count one answered HTTP request (about a microsecond: it runs for every one)."""
        # A plain dict rather than a prometheus Counter, whose lock and label lookup cost
        # as much again; the scrape turns it into daggy_http_requests_total.  Keyed by
        # route, not path, it holds a few dozen entries whatever clients request.
        key = (method, route_of(path), code)
        counts = self._state.http_requests
        try:
            counts[key] += 1
        except KeyError:
            counts[key] = 1

    # -- exposition --------------------------------------------------------------------------
    def exposition(self) -> bytes:
        """Every metric in the Prometheus text format (:data:`CONTENT_TYPE`)."""
        return generate_latest(self._exposed)


class _WithoutCreatedSeries:
    """The registry's metrics less prometheus-client's ``*_created`` series (when each
    counter and histogram was created), which would double the series of every label set
    and say nothing a scrape of ``process_start_time_seconds`` does not."""

    def __init__(self, registry: CollectorRegistry):
        self._registry = registry

    def collect(self) -> Iterable[Metric]:
        for metric in self._registry.collect():
            if metric.type in ("counter", "histogram"):
                metric.samples = [sample for sample in metric.samples
                                  if not sample.name.endswith("_created")]
            yield metric


class _DaemonState:
    """The gauges read at scrape time from the runner, the executor and the logger."""

    def __init__(self) -> None:
        self.runner: Any = None
        self.executor: Any = None
        self.logger: Any = None
        self.executor_name = ""
        self.logger_name = ""
        #: (method, route template, status code) -> requests answered.
        self.http_requests: dict[tuple[bytes, str, int], int] = {}

    def collect(self) -> Iterable[Metric]:
        yield self._http_metrics()
        yield from self._runner_metrics()
        yield from self._executor_metrics()
        yield from self._logger_metrics()
        yield from self._event_metrics()

    def _http_metrics(self) -> Metric:
        family = CounterMetricFamily(
            "daggy_http_requests", "HTTP requests answered, by method, route template and "
            "status code.", labels=["method", "route", "code"])
        totals: dict[tuple[str, str, str], int] = {}
        for (method, route, code), count in list(self.http_requests.items()):
            labels = (_METHODS.get(method, "OTHER"), route, str(code))
            totals[labels] = totals.get(labels, 0) + count
        for labels, count in totals.items():
            family.add_metric(labels, count)
        return family

    def _runner_metrics(self) -> Iterable[Metric]:
        runner = self.runner
        if runner is None:
            return
        run_counts, task_counts = runner.state_counts()
        runs = GaugeMetricFamily(
            "daggy_runs", "Runs this daemon holds (submitted, or recovered or loaded since "
            "it started), by state.", labels=["state"])
        tasks = GaugeMetricFamily(
            "daggy_tasks", "Tasks of the runs this daemon holds, by state.", labels=["state"])
        for state in State:
            if state is not State.RETRY:  # a task state only
                runs.add_metric([state.value], run_counts.get(state, 0))
            tasks.add_metric([state.value], task_counts.get(state, 0))
        yield runs
        yield tasks
        in_use = GaugeMetricFamily(
            "daggy_executor_slots_in_use", "Task attempts started and not yet ended.",
            labels=["executor"])
        in_use.add_metric([self.executor_name], runner.attempts_in_flight)
        yield in_use

    def _executor_metrics(self) -> Iterable[Metric]:
        executor = self.executor
        if executor is None:
            return
        capacity = getattr(executor, "capacity", None)
        if capacity is not None:
            slots = GaugeMetricFamily(
                "daggy_executor_slots", "Task attempts the executor runs at once (its "
                "capacity; absent for an executor without a limit, such as Slurm).",
                labels=["executor"])
            slots.add_metric([self.executor_name], capacity)
            yield slots
        command_counts = getattr(executor, "command_counts", None)
        if command_counts is not None:
            commands = CounterMetricFamily(
                "daggy_slurm_commands", "Slurm commands run, by command.", labels=["command"])
            for command, count in command_counts.items():
                commands.add_metric([command], count)
            yield commands
        tracked = getattr(executor, "tracked_count", None)
        if tracked is not None:
            yield GaugeMetricFamily("daggy_slurm_jobs_tracked",
                                    "Slurm jobs submitted and not yet seen to end.",
                                    value=tracked)

    def _logger_metrics(self) -> Iterable[Metric]:
        logger = self.logger
        if logger is None:
            return
        name = [self.logger_name]
        ready = GaugeMetricFamily(
            "daggy_logger_ready", "1 while the run logger can store records (a RedisLogger "
            "connected to Redis), else 0.", labels=["logger"])
        ready.add_metric(name, 1 if logger.status()[0] else 0)
        yield ready
        backlog = getattr(logger, "backlog_bytes", None)
        if backlog is not None:
            family = GaugeMetricFamily(
                "daggy_logger_backlog_bytes", "Bytes of event lines waiting to be written "
                "(OStreamLogger).", labels=["logger"])
            family.add_metric(name, backlog)
            yield family
        pending = getattr(logger, "pending_writes", None)
        if pending is not None:
            family = GaugeMetricFamily(
                "daggy_logger_pending_writes", "Changed run records not yet stored "
                "(RedisLogger: waiting for the next flush, or for Redis to come back).",
                labels=["logger"])
            family.add_metric(name, pending)
            yield family

    def _event_metrics(self) -> Iterable[Metric]:
        hub = getattr(self.logger, "events", None)
        if hub is None:
            return
        yield GaugeMetricFamily("daggy_event_streams",
                                "Open GET /v1/events streams.", value=hub.subscriptions)
        yield GaugeMetricFamily("daggy_event_window_events", "Events kept in the replay "
                                "window of GET /v1/events.", value=hub.retained_events)
        yield GaugeMetricFamily("daggy_event_window_bytes", "Bytes of event JSON kept in "
                                "the replay window.", value=hub.retained_bytes)
        yield GaugeMetricFamily("daggy_event_last_id", "The ID of the newest event (IDs "
                                "go on across restarts with the RedisLogger).",
                                value=hub.last_id)
