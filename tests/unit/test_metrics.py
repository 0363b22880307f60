"""daggyd's Prometheus metrics: values after runs on a fake clock, the Slurm and Redis
measurements, HTTP request counts, and GET /metrics on the Site, all read back by parsing
the exposition with prometheus-client's own text parser."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.task import Clock

from daggy.loggers.memory import MemoryStore
from daggy.loggers.ostream import OStreamLogger
from daggy.metrics import CONTENT_TYPE, OTHER_ROUTE, DaemonMetrics, route_of
from daggy.model import Attempt, State
from daggy.runner import RunManager
from daggy.server.api import DaggyAPI, make_site
from daggy.testing import FakeProcessReactor, result_of
from daggy.testing.executor import FakeExecutor
from test_api import Connection
from test_redis_logger import Env
from test_slurm_executor import answer, make_executor, submit, tick

TOKEN = "metrics-test-token-0123456789"


def samples(metrics: DaemonMetrics) -> dict[tuple[str, tuple], float]:
    """Every sample of the exposition: (name, sorted labels) -> value."""
    text = metrics.exposition().decode("utf-8")
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def value(metrics: DaemonMetrics, name: str, **labels: str) -> float:
    return samples(metrics)[(name, tuple(sorted(labels.items())))]


def by_state(metrics: DaemonMetrics, name: str) -> dict[str, float]:
    return {dict(labels)["state"]: sample for (sample_name, labels), sample
            in samples(metrics).items() if sample_name == name and sample}


class Daemon:
    """A runner with metrics on a fake clock and a fake executor with two slots."""

    def __init__(self):
        self.clock = Clock()
        self.executor = FakeExecutor(self.clock, capacity=2)
        self.store = MemoryStore()
        self.metrics = DaemonMetrics(process_metrics=False)
        self.runner = RunManager(self.clock, self.executor, self.store, metrics=self.metrics)
        self.metrics.watch(runner=self.runner, executor=self.executor, logger=self.store,
                           executor_name="FakeExecutor", logger_name="MemoryStore")

    def submit(self, tasks: dict) -> int:
        run_id = result_of(self.runner.submit({"tasks": tasks}))
        self.clock.advance(0)
        return run_id

    def finish(self, name: str, rc: int = 0) -> None:
        self.executor.find(name).finish(rc=rc)
        self.clock.advance(0)


def job():
    return {"command": ["/bin/true"]}


@pytest.fixture
def daemon():
    return Daemon()


def test_counts_and_histograms_follow_a_run_with_a_retry(daemon):
    """After a run whose task fails once and is retried, the run and task counts by state,
    the attempt durations by outcome and the queue waits are what the clock says."""
    daemon.submit({
        "a": {"job": job(), "maxRetries": 1, "retryIntervalSeconds": 10},
        "b": {"job": job(), "parents": ["a"]},
        "c": {"job": job()},
    })
    assert by_state(daemon.metrics, "daggy_runs") == {"RUNNING": 1}
    assert by_state(daemon.metrics, "daggy_tasks") == {"RUNNING": 2, "QUEUED": 1}
    assert value(daemon.metrics, "daggy_executor_slots_in_use", executor="FakeExecutor") == 2
    assert value(daemon.metrics, "daggy_executor_slots", executor="FakeExecutor") == 2

    daemon.clock.advance(3)
    daemon.finish("c")  # ran 3 s
    daemon.clock.advance(1)
    daemon.finish("a", rc=1)  # ran 4 s, failed: RETRY for 10 s
    assert by_state(daemon.metrics, "daggy_tasks") == {"RETRY": 1, "QUEUED": 1, "COMPLETED": 1}
    daemon.clock.advance(10)  # the retry is due and starts at once
    daemon.clock.advance(2)
    daemon.finish("a")  # ran 2 s; b, QUEUED since 0, starts at 16
    daemon.clock.advance(5)
    daemon.finish("b")  # ran 5 s

    assert by_state(daemon.metrics, "daggy_runs") == {"COMPLETED": 1}
    assert by_state(daemon.metrics, "daggy_tasks") == {"COMPLETED": 3}
    assert value(daemon.metrics, "daggy_executor_slots_in_use", executor="FakeExecutor") == 0
    attempts = "daggy_task_attempt_duration_seconds"
    labels = {"executor": "FakeExecutor"}
    assert value(daemon.metrics, attempts + "_count", outcome="succeeded", **labels) == 3
    assert value(daemon.metrics, attempts + "_sum", outcome="succeeded", **labels) == 10
    assert value(daemon.metrics, attempts + "_count", outcome="failed", **labels) == 1
    assert value(daemon.metrics, attempts + "_sum", outcome="failed", **labels) == 4
    assert value(daemon.metrics, attempts + "_count", outcome="killed", **labels) == 0
    assert value(daemon.metrics, attempts + "_bucket", outcome="succeeded", le="2.5",
                 **labels) == 1
    assert value(daemon.metrics, attempts + "_bucket", outcome="succeeded", le="5.0",
                 **labels) == 3
    waits = "daggy_task_queue_wait_seconds"
    # a and c at once, a again when its retry was due, b after 16 s.
    assert value(daemon.metrics, waits + "_count", **labels) == 4
    assert value(daemon.metrics, waits + "_sum", **labels) == 16
    assert value(daemon.metrics, waits + "_bucket", le="10.0", **labels) == 3
    assert value(daemon.metrics, waits + "_bucket", le="30.0", **labels) == 4


def test_queue_wait_counts_from_the_last_return_to_queued(daemon):
    """A task queued again by an operator waits from that moment, not from submission, and
    a killed attempt is observed with outcome killed."""
    run_id = daemon.submit({"a": {"job": job()}})
    daemon.clock.advance(50)
    daemon.runner.kill_run(run_id)
    daemon.clock.advance(0)
    daemon.clock.advance(20)
    daemon.runner.set_task_state(run_id, "a", State.QUEUED)
    daemon.clock.advance(0)
    daemon.finish("a")
    labels = {"executor": "FakeExecutor"}
    assert value(daemon.metrics, "daggy_task_queue_wait_seconds_sum", **labels) == 0
    assert value(daemon.metrics, "daggy_task_queue_wait_seconds_count", **labels) == 2
    assert value(daemon.metrics, "daggy_task_attempt_duration_seconds_sum",
                 outcome="killed", **labels) == 50
    assert by_state(daemon.metrics, "daggy_runs") == {"COMPLETED": 1}


def test_generated_tasks_wait_from_when_they_were_added(daemon):
    """Tasks a generator adds wait from the generator's end, not from the submission."""
    daemon.submit({"gen": {"job": job(), "isGenerator": True}})
    daemon.clock.advance(30)
    daemon.executor.find("gen").finish(output='{"made": {"job": {"command": ["/bin/true"]}}}')
    daemon.clock.advance(0)
    daemon.clock.advance(0)
    assert [execution.task_name for execution in daemon.executor.running] == ["made"]
    labels = {"executor": "FakeExecutor"}
    assert value(daemon.metrics, "daggy_task_queue_wait_seconds_sum", **labels) == 0
    assert by_state(daemon.metrics, "daggy_tasks") == {"COMPLETED": 1, "RUNNING": 1}


def test_runner_without_metrics_runs_as_before():
    """A RunManager built without metrics measures nothing and still runs tasks."""
    clock = Clock()
    executor = FakeExecutor(clock)
    runner = RunManager(clock, executor, MemoryStore())
    result_of(runner.submit({"tasks": {"a": {"job": job()}}}))
    clock.advance(0)
    executor.find("a").finish()
    assert runner.state_counts()[0][State.COMPLETED] == 1


def test_two_daemons_in_one_process_keep_their_own_numbers():
    """Each DaemonMetrics has its own registry: one daemon's runs are not the other's."""
    first, second = Daemon(), Daemon()
    first.submit({"a": {"job": job()}})
    first.finish("a")
    assert by_state(first.metrics, "daggy_runs") == {"COMPLETED": 1}
    assert by_state(second.metrics, "daggy_runs") == {}


def test_exposition_has_no_created_series_and_process_metrics_when_asked():
    """prometheus-client's *_created series are left out; the process metrics are there
    unless turned off."""
    metrics = DaemonMetrics()
    names = {name for name, _ in samples(metrics)}
    assert not [name for name in names if name.endswith("_created")]
    assert {"python_info", "process_cpu_seconds_total"} <= names
    assert "python_info" not in {name for name, _ in samples(DaemonMetrics(
        process_metrics=False))}


def test_attempt_outcomes():
    """An attempt is counted as succeeded, failed, timed_out or killed."""
    metrics = DaemonMetrics(process_metrics=False)
    record = metrics.attempt_recorder("X")
    for succeeded, killed, timed_out in [(True, False, False), (False, False, False),
                                         (False, False, True), (False, True, False)]:
        record(Attempt(start_time=1, stop_time=3, rc=0, succeeded=succeeded, killed=killed,
                       timed_out=timed_out))
    for outcome in ("succeeded", "failed", "timed_out", "killed"):
        assert value(metrics, "daggy_task_attempt_duration_seconds_sum", executor="X",
                     outcome=outcome) == 2


# -- Slurm and the loggers -------------------------------------------------------------------

def test_slurm_poll_durations_and_command_failures(tmp_path):
    """Each poll's duration is observed; failed Slurm commands are counted by command,
    except the failures that are normal (squeue of purged ids, scancel of ended jobs)."""
    reactor = FakeProcessReactor()
    executor = make_executor(reactor, tmp_path, poll_interval=1, max_backoff_seconds=2)
    metrics = DaemonMetrics(process_metrics=False)
    metrics.watch(executor=executor, executor_name="SlurmTaskExecutor")
    execution = submit(reactor, executor, job_id="12")
    tick(reactor, executor)
    reactor.advance(0.25)  # squeue is slow, then fails
    answer(reactor, "squeue", rc=1, stderr="slurm_load_jobs error: Socket timed out\n")
    reactor.advance(2)
    answer(reactor, "squeue", rc=1, stderr="slurm_load_jobs error: Invalid job id specified\n")
    answer(reactor, "sacct", rc=1, stderr="Slurm accounting storage is disabled\n")
    answer(reactor, "scontrol", "JobId=12 JobState=COMPLETED Reason=None ExitCode=0:0\n")
    assert result_of(execution.result).succeeded

    def failures(command):
        return value(metrics, "daggy_slurm_command_failures_total", command=command)

    assert [failures(name) for name in ("sbatch", "squeue", "sacct", "scontrol", "scancel")] \
        == [0, 1, 1, 0, 0]
    assert value(metrics, "daggy_slurm_poll_duration_seconds_count") == 2
    assert value(metrics, "daggy_slurm_poll_duration_seconds_sum") == 0.25
    assert value(metrics, "daggy_slurm_commands_total", command="squeue") == 2
    assert value(metrics, "daggy_slurm_jobs_tracked") == 0
    assert "daggy_executor_slots" not in {name for name, _ in samples(metrics)}
    assert reactor.getDelayedCalls() == []


def test_redis_logger_flushes_and_pending_writes_are_measured():
    """The RedisLogger's flushes are observed and its unstored changes counted."""
    env = Env()
    logger = env.logger()
    metrics = DaemonMetrics(process_metrics=False)
    metrics.watch(logger=logger, logger_name="RedisLogger")
    env.result(logger.create_run(None, {}, 0.0))
    assert value(metrics, "daggy_logger_pending_writes", logger="RedisLogger") > 0
    env.result(logger.flush())
    assert value(metrics, "daggy_logger_pending_writes", logger="RedisLogger") == 0
    assert value(metrics, "daggy_logger_flush_duration_seconds_count",
                 logger="RedisLogger") >= 1
    assert value(metrics, "daggy_logger_ready", logger="RedisLogger") == 1
    env.result(logger.close())
    assert value(metrics, "daggy_logger_ready", logger="RedisLogger") == 0


def test_ostream_logger_backlog_is_reported(tmp_path):
    """Event lines not written yet are reported as the OStreamLogger's backlog."""
    clock = Clock()
    logger = OStreamLogger(clock, file=str(tmp_path / "events.jsonl"))
    metrics = DaemonMetrics(process_metrics=False)
    metrics.watch(logger=logger, logger_name="OStreamLogger")
    result_of(logger.create_run(None, {}, 0.0))
    assert value(metrics, "daggy_logger_backlog_bytes", logger="OStreamLogger") > 0
    clock.advance(0)  # the next reactor turn writes the lines
    assert value(metrics, "daggy_logger_backlog_bytes", logger="OStreamLogger") == 0
    result_of(logger.close())


def test_the_event_stream_is_reported():
    """With a hub, the open streams, the window's size and the newest event ID are gauges;
    without one they are absent."""
    from daggy.events import EventHub

    clock = Clock()
    store = MemoryStore()
    metrics = DaemonMetrics(process_metrics=False)
    metrics.watch(logger=store, logger_name="MemoryStore")
    assert not any(name.startswith("daggy_event") for name, _ in samples(metrics))
    hub = EventHub(clock, max_events=3)
    store.publish_to(hub)

    class Sink:
        def write(self, data): pass
        def finish(self): pass
        def abort(self): pass

    hub.subscribe(Sink())
    run_id = result_of(store.create_run(None, {}, 0.0))
    for state in (State.RUNNING, State.COMPLETED, State.RUNNING, State.COMPLETED):
        store.record_run_state(run_id, state, 1.0)
    assert value(metrics, "daggy_event_streams") == 1
    assert value(metrics, "daggy_event_last_id") == 5
    assert value(metrics, "daggy_event_window_events") == hub.retained_events <= 3
    assert value(metrics, "daggy_event_window_bytes") == hub.retained_bytes > 0
    hub.close()
    assert value(metrics, "daggy_event_streams") == 0


# -- HTTP ------------------------------------------------------------------------------------

@pytest.mark.parametrize("path, route", [
    (b"/ready", "/ready"),
    (b"/ready/", "/ready"),
    (b"/metrics", "/metrics"),
    (b"/v1/openapi.json", "/v1/openapi.json"),
    (b"/v1/events", "/v1/events"),
    (b"/v1/dagrun", "/v1/dagrun"),
    (b"/v1/dagrun/", "/v1/dagrun"),
    (b"/v1/dagruns", "/v1/dagruns"),
    (b"/v1/dagrun/validate", "/v1/dagrun/validate"),
    (b"/v1/dagrun/12", "/v1/dagrun/{runID}"),
    (b"/v1/dagrun/12/state", "/v1/dagrun/{runID}/state"),
    (b"/v1/dagrun/12/state/KILLED", "/v1/dagrun/{runID}/state/{state}"),
    (b"/v1/dagrun/12/task/a%2Fb", "/v1/dagrun/{runID}/task/{name}"),
    (b"/v1/dagrun/12/task/a/state", "/v1/dagrun/{runID}/task/{name}/state"),
    (b"/v1/dagrun/12/task/a/state/QUEUED", "/v1/dagrun/{runID}/task/{name}/state/{state}"),
    # The web UI: its page and its files (a fixed few, whatever the path).
    (b"/", "/"),
    (b"/ui/app.js", "/ui"),
    (b"/ui/vendor/cytoscape.min.js", "/ui"),
    (b"//", OTHER_ROUTE),
    (b"", OTHER_ROUTE),
    (b"*", OTHER_ROUTE),
    (b"/nope", OTHER_ROUTE),
    (b"/v2/dagrun", OTHER_ROUTE),
    (b"/v1/dagrun/12/logs", OTHER_ROUTE),
    (b"/v1/dagrun/12/task/a/logs", OTHER_ROUTE),
    (b"/v1/dagrun/12/task/a/state/QUEUED/more", OTHER_ROUTE),
    (b"/v1/dagrun/12/state/KILLED/more", OTHER_ROUTE),
    (b"/v1/x/12/state", OTHER_ROUTE),
])
def test_route_of_a_path(path, route):
    """A request path is labelled with its route template; anything else is 'other', so the
    label's values are a fixed few whatever clients request."""
    assert route_of(path) == route


class UnknownRuns:
    def kill_run(self, run_id):
        raise AssertionError("not called")


def metered_site(**options):
    clock = Clock()
    store = MemoryStore()
    result_of(store.create_run(None, {}, 0.0))
    api = DaggyAPI(UnknownRuns(), store, clock)
    metrics = DaemonMetrics(process_metrics=False)
    return make_site(api, 1024, metrics=metrics, reactor=clock, **options), metrics


def get(path: bytes, token: str | None = None, method: bytes = b"GET") -> bytes:
    auth = b"" if token is None else b"Authorization: Bearer " + token.encode() + b"\r\n"
    return method + b" " + path + b" HTTP/1.1\r\nHost: daggy.test\r\n" + auth + b"\r\n"


def test_requests_are_counted_by_method_route_and_status():
    """Each answered request is counted once under its method, route template and status
    code, the state poll's fast path included."""
    site, metrics = metered_site()
    connection = Connection(site)
    for path in (b"/v1/dagrun/0/state", b"/v1/dagrun/0/state", b"/v1/dagrun/7/state",
                 b"/ready", b"/nope"):
        connection.send(get(path))
    connection.send(get(b"/v1/dagrun/0", method=b"BREW"))
    connection.close()

    def count(method, route, code):
        return value(metrics, "daggy_http_requests_total", method=method, route=route,
                     code=code)

    assert count("GET", "/v1/dagrun/{runID}/state", "200") == 2
    assert count("GET", "/v1/dagrun/{runID}/state", "404") == 1
    assert count("GET", "/ready", "200") == 1
    assert count("GET", OTHER_ROUTE, "404") == 1
    assert count("OTHER", "/v1/dagrun/{runID}", "405") == 1


def test_metrics_are_served_in_the_prometheus_text_format():
    """GET /metrics answers 200 with the exposition; HEAD has no body; other methods get a
    JSON 405 naming GET and HEAD."""
    site, metrics = metered_site()
    connection = Connection(site)
    [(code, headers, body)] = connection.send(get(b"/metrics"))
    assert (code, headers["content-type"]) == (200, CONTENT_TYPE)
    assert headers["cache-control"] == "no-store"
    families = {family.name for family in text_string_to_metric_families(body.decode())}
    assert {"daggy_http_requests", "daggy_task_attempt_duration_seconds"} <= families
    [(code, _, body)] = connection.send(get(b"/metrics/", method=b"HEAD"))
    assert (code, body) == (200, b"")
    [(code, headers, body)] = connection.send(get(b"/metrics", method=b"POST"))
    assert (code, headers["allow"]) == (405, "GET, HEAD")
    assert body == b'{"error":"method POST not allowed on /metrics; allowed: GET, HEAD"}'
    connection.close()
    assert value(metrics, "daggy_http_requests_total", method="GET", route="/metrics",
                 code="200") == 1


def test_metrics_need_the_token_when_auth_is_on():
    """With bearer tokens /metrics answers 401 without one and 200 with one; /ready stays
    open."""
    site, _ = metered_site(auth_tokens=[TOKEN])
    connection = Connection(site)
    [(code, headers, _)] = connection.send(get(b"/metrics"))
    assert code == 401 and headers["www-authenticate"].startswith("Bearer")
    [(code, _, _)] = connection.send(get(b"/metrics", token=TOKEN))
    assert code == 200
    [(code, _, _)] = connection.send(get(b"/ready"))
    assert code == 200
    connection.close()


def test_a_site_without_metrics_has_no_metrics_path():
    """make_site without metrics serves no /metrics (the API answers 404)."""
    clock = Clock()
    site = make_site(DaggyAPI(UnknownRuns(), MemoryStore(), clock), 1024, reactor=clock)
    connection = Connection(site)
    [(code, _, _)] = connection.send(get(b"/metrics"))
    assert code == 404
    connection.close()


def test_a_request_cut_off_by_the_deadline_is_counted_as_408():
    """A request answered 408 by the request deadline is counted (route other: its request
    line may not have arrived whole)."""
    site, metrics = metered_site(request_timeout=2)
    site.startFactory()
    connection = Connection(site)
    connection.send(b"GET /ready HTTP/1.1\r\n")
    site.reactor.advance(3)
    assert connection.transport.disconnecting
    connection.close()
    site.stopFactory()
    assert value(metrics, "daggy_http_requests_total", method="OTHER", route=OTHER_ROUTE,
                 code="408") == 1
