"""GET /metrics and --log-format json on real daemons: the metrics, parsed with
prometheus-client's text parser, count what a run with a failing, retried task did; with
auth on they need the token; JSON log lines carry run and task IDs as fields."""

from __future__ import annotations

import json
from http.client import HTTPConnection
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from daemon_harness import (
    Reply,
    answers,
    daggyd,
    free_port,
    parse_time,
    wait_until,
    write_config,
)

pytestmark = pytest.mark.integration

TOKEN = "integration-metrics-token-0123456789"


def get(port: int, path: str, token: str | None = None) -> Reply:
    connection = HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()},
                     response.read())
    finally:
        connection.close()


def scrape(port: int, token: str | None = None) -> dict[tuple[str, tuple], float]:
    """Every sample of GET /metrics: (name, sorted labels) -> value."""
    reply = get(port, "/metrics", token)
    assert reply.status == 200, reply.raw
    assert reply.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(reply.raw.decode("utf-8"))
            for sample in family.samples}


def by_label(samples: dict, name: str, label: str, **others: str) -> dict[str, float]:
    """The non-zero samples called ``name`` with ``others`` labels, by ``label``'s value."""
    found = {}
    for (sample_name, labels), value in samples.items():
        labels = dict(labels)
        if sample_name == name and value and all(labels.get(k) == v for k, v in others.items()):
            found[labels[label]] = value
    return found


def test_metrics_count_a_run_with_a_failing_retried_task(daemons, tmp_path):
    """After a run where one task fails once then succeeds on its retry and another fails
    both its attempts, the run and task counts by state, the attempts by outcome, the queue
    waits and the HTTP requests in /metrics match the run the API reports."""
    daemon = daemons("daggyd", executor_config={"threads": 3})
    marker = tmp_path / "tried-once"
    flaky = ["/bin/sh", "-c", 'test -e "$0" || { touch "$0"; exit 1; }', str(marker)]
    run_id = daemon.submit({"tasks": {
        "flaky": {"job": {"command": flaky}, "maxRetries": 1},
        "after": {"job": {"command": ["/bin/true"]}, "parents": ["flaky"]},
        "doomed": {"job": {"command": ["/bin/false"]}, "maxRetries": 1},
    }})
    run = daemon.wait_run(run_id)
    assert run["state"] == "ERRORED"
    attempts = [attempt for task in run["taskAttempts"].values() for attempt in task]
    assert len(attempts) == 5

    samples = scrape(daemon.port)
    assert by_label(samples, "daggy_runs", "state") == {"ERRORED": 1}
    counts = {state: count for state, count in run["taskCounts"].items() if count}
    assert by_label(samples, "daggy_tasks", "state") == counts == {"COMPLETED": 2,
                                                                    "ERRORED": 1}
    executor = {"executor": "ForkingTaskExecutor"}
    assert by_label(samples, "daggy_task_attempt_duration_seconds_count", "outcome",
                    **executor) == {"succeeded": 2, "failed": 3}
    durations = sum(attempt_seconds(attempt) for attempt in attempts)
    recorded = sum(by_label(samples, "daggy_task_attempt_duration_seconds_sum", "outcome",
                            **executor).values())
    assert recorded == pytest.approx(durations, abs=0.01)
    assert samples[("daggy_task_queue_wait_seconds_count", (("executor",
                                                               "ForkingTaskExecutor"),))] == 5
    assert samples[("daggy_executor_slots", (("executor", "ForkingTaskExecutor"),))] == 3
    assert samples[("daggy_executor_slots_in_use", (("executor",
                                                      "ForkingTaskExecutor"),))] == 0
    assert by_label(samples, "daggy_http_requests_total", "code", method="POST",
                    route="/v1/dagrun") == {"200": 1}
    polls = by_label(samples, "daggy_http_requests_total", "code", method="GET",
                     route="/v1/dagrun/{runID}/state")
    assert polls["200"] >= 1
    assert samples[("daggy_logger_ready", (("logger", "OStreamLogger"),))] == 1
    assert samples[("process_open_fds", ())] > 0


def attempt_seconds(attempt: dict) -> float:
    return (parse_time(attempt["stopTime"]) - parse_time(attempt["startTime"])).total_seconds()


def test_metrics_need_the_token_when_auth_is_on(daemons):
    """With bearer tokens, /metrics answers 401 with a Bearer challenge without a token
    and the metrics with one; /ready stays open."""
    daemon = daemons("daggyd", **{"auth-tokens": [TOKEN]})
    reply = get(daemon.port, "/metrics")
    assert reply.status == 401
    assert reply.headers["www-authenticate"].startswith('Bearer realm="daggyd"')
    assert "error" in json.loads(reply.raw)
    samples = scrape(daemon.port, TOKEN)
    assert by_label(samples, "daggy_http_requests_total", "code", route="/metrics") == {
        "401": 1}
    assert get(daemon.port, "/ready").status == 200


@pytest.mark.parametrize("launcher", ["daggyd", "twistd"])
def test_json_log_lines_carry_run_and_task_ids(daemons, launcher):
    """With log-format json the daemon's own log (daggyd: stderr, twistd: its log file) is
    JSON lines, and a task that cannot start is logged with run_id and task fields."""
    daemon = daemons(launcher, **{"log-format": "json"})
    run_id = daemon.submit({"tasks": {"missing": {"job": {"command": ["/no/such/program"]}}}})
    assert daemon.wait_run(run_id)["state"] == "ERRORED"
    wait_until(lambda: "could not start" in daemon.log, "the failed start to be logged")
    lines = [json.loads(line) for line in daemon.log.splitlines()]
    [warning] = [line for line in lines if line["message"].startswith("could not start")]
    assert (warning["level"], warning["run_id"], warning["task"]) == ("warn", run_id,
                                                                       "missing")
    assert {"time", "namespace"} <= set(warning)
    assert not [line for line in lines if line["level"] in ("error", "critical")]


def test_log_format_flag_of_daggyd(processes, tmp_path):
    """`daggyd --log-format json` logs JSON lines to stderr even when the config says
    text."""
    port = free_port()
    config = write_config(tmp_path, port, "NoopTaskExecutor", **{"log-format": "text"})
    process = processes(daggyd("--config", str(config), "--log-format", "json"), tmp_path)
    wait_until(lambda: answers(port), "daggyd to answer /ready")
    process.popen.terminate()
    assert process.wait() == 0
    lines = [json.loads(line) for line in Path(process.err_path).read_text().splitlines()]
    assert any("Serving the API on" in line["message"] for line in lines)
