"""End to end: a real daggyd process with the forking executor, driven over HTTP as users do.

Most tests share one `daggyd` per module (each test submits runs of its own and checks only
those); the core scenarios also run against `twistd -n daggyd`.  Every test fails if the
daemon logged an error while it ran.
"""

from __future__ import annotations

import json
import random
import time
from datetime import timedelta

import pytest

from daemon_harness import (
    FINISHED,
    Daemon,
    live_processes_with,
    parse_time,
    task_path,
    wait_until,
)

pytestmark = pytest.mark.integration

MAX_REQUEST_BYTES = 1024 * 1024
#: Timestamps are rounded to the microsecond, so a gap of exactly 1 s may show 1 µs less.
ONE_SECOND = timedelta(seconds=1) - timedelta(microseconds=1)


def _settings() -> dict:
    return {
        "executor_config": {"threads": 10, "killGraceSeconds": 2},
        "max_request_bytes": MAX_REQUEST_BYTES,
    }


@pytest.fixture(scope="module")
def shared_daggyd(daemons) -> Daemon:
    return daemons("daggyd", **_settings())


@pytest.fixture(scope="module", params=["daggyd", "twistd"])
def launched(request, daemons, shared_daggyd) -> Daemon:
    if request.param == "daggyd":
        return shared_daggyd
    return daemons(request.param, **_settings())


def _checked(daemon: Daemon):
    mark = len(daemon.log)
    yield daemon
    errors = daemon.new_log_errors(mark)
    assert not errors, f"{daemon.launcher} logged errors:\n" + "\n".join(errors)


@pytest.fixture
def daemon(shared_daggyd):
    """The shared daggyd; the test fails if the daemon logs an error meanwhile."""
    yield from _checked(shared_daggyd)


@pytest.fixture
def any_daemon(launched):
    """The test runs once with `daggyd` and once with `twistd -n daggyd`."""
    yield from _checked(launched)


# -- spec and result helpers ---------------------------------------------------------------


def cmd(*command: str, **fields) -> dict:
    return {"command": list(command), **fields}


def sh(script: str, *arguments: str, **fields) -> dict:
    return cmd("sh", "-c", script, "sh", *arguments, **fields)


def attempts(run: dict, name: str) -> list[dict]:
    return run["taskAttempts"][name]


def only_attempt(run: dict, name: str) -> dict:
    [attempt] = run["taskAttempts"][name]
    return attempt


def history(run: dict, name: str) -> list[str]:
    return [change["state"] for change in run["taskStateChanges"][name]]


def started(attempt: dict):
    return parse_time(attempt["startTime"])


def stopped(attempt: dict):
    return parse_time(attempt["stopTime"])


def assert_after(run: dict, child: str, parent: str) -> None:
    """Every attempt of ``child`` started after the last attempt of ``parent`` ended."""
    assert started(attempts(run, child)[0]) >= stopped(attempts(run, parent)[-1]), (
        child, parent)


def unique_marker() -> str:
    """A sleep duration of about a minute that no other process on the machine uses."""
    return f"60.{random.randrange(10**12):012d}"


def wait_processes_gone(marker: str, seconds: float = 20) -> None:
    wait_until(lambda: not live_processes_with(marker),
               f"no live process with {marker} in its command line", seconds)


def run_ids(daemon: Daemon) -> list[int]:
    return [summary["runID"] for summary in daemon.get("/v1/dagruns?all=1")]


def kill_quietly(daemon: Daemon, run_id: int) -> None:
    """Clean-up: stop a run that a failed test may have left running (409 if finished)."""
    daemon.http("DELETE", f"/v1/dagrun/{run_id}")


# -- 1. diamond --------------------------------------------------------------------------


def test_diamond_runs_in_dependency_order(any_daemon):
    """a -> (b, c) -> d completes, each task starting only after its parents ended."""
    run_id = any_daemon.submit({"tag": "diamond", "tasks": {
        "a": {"job": cmd("/bin/echo", "a")},
        "b": {"job": sh("sleep 0.2; echo b"), "parents": ["a"]},
        "c": {"job": sh("sleep 0.2; echo c"), "parents": ["a"]},
        "d": {"job": cmd("/bin/echo", "d"), "parents": ["b", "c"]},
    }})
    run = any_daemon.wait_run(run_id)
    assert run["state"] == "COMPLETED"
    assert run["taskStates"] == dict.fromkeys("abcd", "COMPLETED")
    assert run["taskCounts"]["COMPLETED"] == 4
    for name in "abcd":
        attempt = only_attempt(run, name)
        assert (attempt["rc"], attempt["succeeded"]) == (0, True)
        assert attempt["outputLog"] == f"{name}\n"
        assert history(run, name) == ["QUEUED", "RUNNING", "COMPLETED"]
    assert_after(run, "b", "a")
    assert_after(run, "c", "a")
    assert_after(run, "d", "b")
    assert_after(run, "d", "c")
    assert [c["state"] for c in run["stateChanges"]] == ["QUEUED", "RUNNING", "COMPLETED"]
    tagged = any_daemon.get("/v1/dagruns?all=1&tag=diamond")
    assert run_id in [summary["runID"] for summary in tagged]


# -- 2. parameter expansion ---------------------------------------------------------------


def test_parameter_expansion_makes_instances_that_run_in_order(daemon):
    """DATE (3) x NAME (2) on A -> B -> C gives 3 A, 1 B and 6 C instances with the values
    substituted; B runs after every A, every C after B."""
    dates, names = ["2021-01-01", "2021-01-02", "2021-01-03"], ["alice", "bob"]
    run_id = daemon.submit({
        "parameters": {"DATE": dates, "NAME": names},
        "tasks": {
            "A": {"job": cmd("/bin/echo", "A", "{{DATE}}")},
            "B": {"job": cmd("/bin/echo", "B"), "parents": ["A"]},
            "C": {"job": cmd("/bin/echo", "C", "{{DATE}}", "{{NAME}}"), "parents": ["B"]},
        },
    })
    run = daemon.wait_run(run_id)
    assert run["state"] == "COMPLETED"
    a_names = [f"A[DATE={date}]" for date in dates]
    c_names = [f"C[DATE={date},NAME={name}]" for date in dates for name in names]
    assert sorted(run["tasks"]) == sorted(a_names + ["B"] + c_names)
    assert len(run["tasks"]) == 10
    for date, name in zip(dates, a_names):
        task = run["tasks"][name]
        assert (task["definedName"], task["expansionValues"]) == ("A", {"DATE": date})
        assert task["job"]["command"] == ["/bin/echo", "A", date]
        assert only_attempt(run, name)["outputLog"] == f"A {date}\n"
        assert_after(run, "B", name)
    assert run["tasks"]["B"]["expansionValues"] == {}
    assert only_attempt(run, "B")["outputLog"] == "B\n"
    for date in dates:
        for person in names:
            name = f"C[DATE={date},NAME={person}]"
            task = run["tasks"][name]
            assert task["definedName"] == "C"
            assert task["expansionValues"] == {"DATE": date, "NAME": person}
            assert only_attempt(run, name)["outputLog"] == f"C {date} {person}\n"
            assert_after(run, name, "B")
    assert set(run["taskStates"].values()) == {"COMPLETED"}


# -- 3. generators ------------------------------------------------------------------------


def test_generator_adds_tasks_that_run_before_its_children(any_daemon):
    """A generator's JSON output adds tasks; they run after it and before its child."""
    generated = {
        "fetch": {"job": cmd("/bin/echo", "fetched")},
        "merge": {"job": cmd("/bin/echo", "merged"), "parents": ["fetch"]},
    }
    run_id = any_daemon.submit({"tasks": {
        "plan": {"job": cmd("/bin/echo", json.dumps(generated)), "isGenerator": True},
        "report": {"job": cmd("/bin/echo", "report"), "parents": ["plan"]},
    }})
    run = any_daemon.wait_run(run_id)
    assert run["state"] == "COMPLETED"
    assert set(run["tasks"]) == {"plan", "report", "fetch", "merge"}
    assert only_attempt(run, "fetch")["outputLog"] == "fetched\n"
    assert only_attempt(run, "merge")["outputLog"] == "merged\n"
    assert run["tasks"]["fetch"]["parents"] == ["plan"]
    assert run["tasks"]["merge"]["children"] == ["report"]
    assert_after(run, "fetch", "plan")
    assert_after(run, "merge", "fetch")
    assert_after(run, "report", "merge")
    assert_after(run, "report", "fetch")


def test_generator_with_non_json_output_errors_and_holds_its_child(daemon):
    """A generator printing "hello world" fails with an executorLog saying why; its child
    never starts and the run ends ERRORED."""
    run_id = daemon.submit({"tasks": {
        "plan": {"job": cmd("/bin/echo", "hello world"), "isGenerator": True},
        "report": {"job": cmd("/bin/echo", "report"), "parents": ["plan"]},
    }})
    run = daemon.wait_run(run_id)
    assert run["state"] == "ERRORED"
    assert run["taskStates"] == {"plan": "ERRORED", "report": "QUEUED"}
    attempt = only_attempt(run, "plan")
    assert (attempt["rc"], attempt["succeeded"]) == (0, False)
    assert attempt["outputLog"] == "hello world\n"
    assert "generator output is not valid JSON" in attempt["executorLog"]
    assert attempts(run, "report") == []


# -- 4. retries ---------------------------------------------------------------------------


def test_retries_wait_their_interval_and_then_succeed(daemon, tmp_path):
    """A task failing twice, with maxRetries 2 and a 1 s interval, makes 3 attempts at least
    1 s apart and completes."""
    counter = tmp_path / "count"
    script = ('n=$(cat "$1" 2>/dev/null || echo 0); n=$((n+1)); echo "$n" > "$1"; '
              'echo "attempt $n"; [ "$n" -ge 3 ]')
    run_id = daemon.submit({"tasks": {"flaky": {
        "job": sh(script, str(counter)), "maxRetries": 2, "retryIntervalSeconds": 1}}})
    run = daemon.wait_run(run_id)
    assert run["state"] == "COMPLETED"
    tries = attempts(run, "flaky")
    assert [(a["rc"], a["succeeded"]) for a in tries] == [(1, False), (1, False), (0, True)]
    assert [a["outputLog"] for a in tries] == ["attempt 1\n", "attempt 2\n", "attempt 3\n"]
    for earlier, later in zip(tries, tries[1:]):
        assert started(later) - stopped(earlier) >= ONE_SECOND
    assert history(run, "flaky") == [
        "QUEUED", "RUNNING", "RETRY", "QUEUED", "RUNNING", "RETRY", "QUEUED", "RUNNING",
        "COMPLETED"]


# -- 5. timeout ---------------------------------------------------------------------------


def test_timeout_stops_the_task_and_errors_it(daemon):
    """timeoutSeconds 1 on `sleep 30` ends the attempt as timed out within seconds."""
    submitted = time.monotonic()
    run_id = daemon.submit({"tasks": {"slow": {"job": cmd("sleep", "30", timeoutSeconds=1)}}})
    run = daemon.wait_run(run_id, seconds=15)
    assert time.monotonic() - submitted < 15
    assert run["state"] == "ERRORED"
    assert run["taskStates"]["slow"] == "ERRORED"
    attempt = only_attempt(run, "slow")
    assert (attempt["timedOut"], attempt["killed"], attempt["succeeded"]) == (True, False, False)
    assert attempt["rc"] is None
    assert "timed out after 1s" in attempt["executorLog"]
    assert stopped(attempt) - started(attempt) < timedelta(seconds=10)


# -- 6. kill ------------------------------------------------------------------------------


def test_kill_stops_running_tasks_and_their_children_processes(any_daemon):
    """DELETE kills the running tasks (background processes included), leaves queued tasks
    unstarted, ends the run KILLED; a second DELETE is a 409."""
    marker = unique_marker()
    napping = sh(f"sleep {marker} & sleep {marker}")
    run_id = any_daemon.submit({"tasks": {
        "nap1": {"job": napping}, "nap2": {"job": napping},
        "after1": {"job": cmd("/bin/echo", "never"), "parents": ["nap1"]},
        "after2": {"job": cmd("/bin/echo", "never"), "parents": ["nap2"]},
    }})
    try:
        any_daemon.wait_task(run_id, "nap1", "RUNNING")
        any_daemon.wait_task(run_id, "nap2", "RUNNING")
        wait_until(
            lambda: sum(argv[0] == "sleep" for argv in live_processes_with(marker).values()) == 4,
            "both sleeps of both tasks to run")
        reply = any_daemon.http("DELETE", f"/v1/dagrun/{run_id}")
        assert (reply.status, reply.json) == (200, {"runID": run_id, "state": "KILLED"})
        wait_until(lambda: any_daemon.get(f"/v1/dagrun/{run_id}/state")["taskCounts"]["KILLED"]
                   == 2, "both running tasks to be KILLED")
        wait_processes_gone(marker)
    finally:
        kill_quietly(any_daemon, run_id)
    run = any_daemon.run(run_id)
    assert run["state"] == "KILLED"
    assert run["taskStates"] == {
        "nap1": "KILLED", "nap2": "KILLED", "after1": "QUEUED", "after2": "QUEUED"}
    for name in ("nap1", "nap2"):
        attempt = only_attempt(run, name)
        assert (attempt["killed"], attempt["succeeded"]) == (True, False)
        assert "killed: run killed by request" in attempt["executorLog"]
        assert history(run, name) == ["QUEUED", "RUNNING", "KILLED"]
    for name in ("after1", "after2"):
        assert attempts(run, name) == []
        assert history(run, name) == ["QUEUED"]
    again = any_daemon.http("DELETE", f"/v1/dagrun/{run_id}")
    assert again.status == 409
    assert again.json == {"error": f"run {run_id} is already KILLED"}


# -- 7. resume ----------------------------------------------------------------------------


def test_resume_reruns_only_what_did_not_complete(daemon, tmp_path):
    """A run ERRORED on a missing file completes once the file exists and the run is
    re-queued; the task that had completed is not run again."""
    needed = tmp_path / "needed"
    run_id = daemon.submit({"tasks": {
        "first": {"job": cmd("/bin/echo", "first")},
        "second": {"job": cmd("test", "-e", str(needed)), "parents": ["first"]},
    }})
    run = daemon.wait_run(run_id)
    assert run["state"] == "ERRORED"
    assert run["taskStates"] == {"first": "COMPLETED", "second": "ERRORED"}
    assert only_attempt(run, "second")["rc"] == 1
    needed.touch()
    reply = daemon.http("PATCH", f"/v1/dagrun/{run_id}/state/QUEUED")
    assert (reply.status, reply.json) == (200, {"runID": run_id, "state": "QUEUED"})
    run = daemon.wait_run(run_id)
    assert run["state"] == "COMPLETED"
    assert len(attempts(run, "first")) == 1
    assert [a["rc"] for a in attempts(run, "second")] == [1, 0]
    assert [c["state"] for c in run["stateChanges"]] == [
        "QUEUED", "RUNNING", "ERRORED", "QUEUED", "RUNNING", "COMPLETED"]


# -- 8. task operator actions -------------------------------------------------------------


def test_marking_an_errored_task_completed_lets_its_child_run(daemon):
    """PATCH .../task/{name}/state/COMPLETED on an ERRORED task runs its child and the run
    completes."""
    run_id = daemon.submit({"tasks": {
        "broken": {"job": cmd("false")},
        "after": {"job": cmd("/bin/echo", "after"), "parents": ["broken"]},
    }})
    assert daemon.wait_run(run_id)["state"] == "ERRORED"
    reply = daemon.http("PATCH", task_path(run_id, "broken", "state", "COMPLETED"))
    assert (reply.status, reply.json) == (
        200, {"runID": run_id, "name": "broken", "state": "COMPLETED"})
    run = daemon.wait_run(run_id)
    assert run["state"] == "COMPLETED"
    assert only_attempt(run, "broken")["rc"] == 1
    assert only_attempt(run, "after")["outputLog"] == "after\n"
    assert history(run, "broken") == ["QUEUED", "RUNNING", "ERRORED", "COMPLETED"]


def test_requeueing_one_task_runs_it_again(daemon, tmp_path):
    """PATCH QUEUED on a COMPLETED task of a finished run runs just that task once more."""
    log = tmp_path / "ran"
    run_id = daemon.submit({"tasks": {
        "first": {"job": cmd("/bin/echo", "first")},
        "second": {"job": sh('echo run >> "$1"; cat "$1"', str(log)), "parents": ["first"]},
    }})
    assert daemon.wait_run(run_id)["state"] == "COMPLETED"
    reply = daemon.http("PATCH", task_path(run_id, "second", "state", "queued"))
    assert (reply.status, reply.json) == (
        200, {"runID": run_id, "name": "second", "state": "QUEUED"})
    run = daemon.wait_run(run_id)
    assert run["state"] == "COMPLETED"
    assert len(attempts(run, "first")) == 1
    assert [a["outputLog"] for a in attempts(run, "second")] == ["run\n", "run\nrun\n"]


def test_killing_one_running_task(daemon):
    """PATCH KILLED on a RUNNING task kills its process; the other task still completes and
    the run ends KILLED."""
    marker = unique_marker()
    run_id = daemon.submit({"tasks": {
        "nap": {"job": cmd("sleep", marker)},
        "quick": {"job": cmd("/bin/echo", "quick")},
    }})
    try:
        daemon.wait_task(run_id, "nap", "RUNNING")
        reply = daemon.http("PATCH", task_path(run_id, "nap", "state", "KILLED"))
        assert (reply.status, reply.json) == (
            200, {"runID": run_id, "name": "nap", "state": "KILLED"})
        run = daemon.wait_run(run_id, seconds=20)
        wait_processes_gone(marker)
    finally:
        kill_quietly(daemon, run_id)
    assert run["state"] == "KILLED"
    assert run["taskStates"] == {"nap": "KILLED", "quick": "COMPLETED"}
    attempt = only_attempt(run, "nap")
    assert (attempt["killed"], attempt["succeeded"]) == (True, False)
    assert "killed: task killed by request" in attempt["executorLog"]


def test_requeueing_a_task_while_a_killed_run_stops_makes_it_run_again(daemon):
    """PATCH QUEUED on a task while the killed run's tasks are still stopping lifts the
    kill: the run is RUNNING again (not KILLED) until the stubborn task ends."""
    marker = unique_marker()
    run_id = daemon.submit({"tasks": {
        "done": {"job": cmd("/bin/echo", "done")},
        # Ignores SIGTERM, so it lives on for killGraceSeconds (2 s) after the kill.
        "stubborn": {"job": sh(f"trap '' TERM; sleep {marker}")},
    }})
    try:
        daemon.wait_task(run_id, "done", "COMPLETED")
        daemon.wait_task(run_id, "stubborn", "RUNNING")
        wait_until(lambda: any(argv[0] == "sleep"
                               for argv in live_processes_with(marker).values()),
                   "the stubborn task's sleep to start")
        assert daemon.http("DELETE", f"/v1/dagrun/{run_id}").status == 200
        reply = daemon.http("PATCH", task_path(run_id, "done", "state", "QUEUED"))
        assert reply.status == 200, reply.raw
        assert daemon.get(f"/v1/dagrun/{run_id}/state")["state"] == "RUNNING"
        assert run_id in [s["runID"] for s in daemon.get("/v1/dagruns")]
        run = daemon.wait_run(run_id, seconds=20)
        wait_processes_gone(marker)
    finally:
        kill_quietly(daemon, run_id)
    assert run["taskStates"] == {"done": "COMPLETED", "stubborn": "KILLED"}
    assert [a["outputLog"] for a in attempts(run, "done")] == ["done\n", "done\n"]
    stubborn = only_attempt(run, "stubborn")
    assert stubborn["killed"] is True
    assert "sent SIGKILL" in stubborn["executorLog"]
    # Ends KILLED: a task was killed and none errored.
    assert [c["state"] for c in run["stateChanges"]] == [
        "QUEUED", "RUNNING", "KILLED", "RUNNING", "KILLED"]


# -- 9. large output ----------------------------------------------------------------------


def test_ten_mebibytes_of_stdout_are_kept_whole(daemon):
    """10 MiB written to stdout is recorded in full, not truncated."""
    size = 10 * 1024 * 1024
    run_id = daemon.submit({"tasks": {"loud": {
        "job": sh(f"head -c {size} /dev/zero | tr '\\0' x")}}})
    daemon.wait_run(run_id)
    task = daemon.task(run_id, "loud")
    assert task["state"] == "COMPLETED"
    [attempt] = task["attempts"]
    assert len(attempt["outputLog"]) == size
    assert attempt["outputLog"] == "x" * size
    assert (attempt["outputTruncated"], attempt["errorTruncated"]) == (False, False)


# -- 10. missing binary -------------------------------------------------------------------


def test_missing_binary_is_a_failed_attempt_and_the_daemon_stays_up(daemon):
    """A command that cannot be executed errors its task, names the binary, and does not
    hurt the daemon."""
    run_id = daemon.submit({"tasks": {"ghost": {"job": cmd("/no/such/binary", "x")}}})
    run = daemon.wait_run(run_id)
    assert run["state"] == "ERRORED"
    assert run["taskStates"] == {"ghost": "ERRORED"}
    attempt = only_attempt(run, "ghost")
    assert (attempt["rc"], attempt["succeeded"]) == (None, False)
    assert "/no/such/binary" in attempt["executorLog"]
    assert "spawn failed" in attempt["executorLog"]
    assert daemon.get("/ready") == {"msg": "Ya like DAGs?"}


# -- 11. validation over HTTP --------------------------------------------------------------


def _task(job: dict | None = None, **attributes) -> dict:
    return {"job": cmd("/bin/true") if job is None else job, **attributes}


INVALID_SPECS = {
    "missing command": (
        {"tasks": {"a": {"job": {}}}},
        "tasks.a.job.command: is required (a non-empty list of strings)"),
    "empty command": (
        {"tasks": {"a": {"job": {"command": []}}}},
        "tasks.a.job.command: must be a non-empty list of strings"),
    "non-string argument": (
        {"tasks": {"a": {"job": {"command": ["/bin/echo", 3]}}}},
        "tasks.a.job.command[1]: must be a string"),
    "unknown task attribute": (
        {"tasks": {"a": _task(), "b": _task(parent=["a"])}},
        "tasks.b: unknown task attribute 'parent'; did you mean 'parents'?"),
    "unknown task reference": (
        {"tasks": {"a": _task(parents=["nope"])}},
        "tasks.a.parents[0]: unknown task 'nope'"),
    "self edge": (
        {"tasks": {"a": _task(children=["a"])}},
        "tasks.a.children[0]: a task cannot depend on itself"),
    "cycle": (
        {"tasks": {"a": _task(children=["b"]), "b": _task(children=["c"]),
                   "c": _task(children=["a"])}},
        "tasks: cycle: a -> b -> c -> a"),
    "placeholder with no parameter": (
        {"tasks": {"a": _task(cmd("/bin/echo", "{{DAY}}"))}},
        "tasks.a.job.command[1]: placeholder {{DAY}} names no parameter"),
    "parameter value not a string": (
        {"parameters": {"DAY": 5}, "tasks": {"a": _task()}},
        "parameters.DAY: must be a string or a list of strings"),
    "parameter list item not a string": (
        {"parameters": {"DAY": ["mon", 2]}, "tasks": {"a": _task()}},
        "parameters.DAY[1]: parameter values must be strings"),
    "negative maxRetries": (
        {"tasks": {"a": _task(maxRetries=-1)}},
        "tasks.a.maxRetries: must be an integer >= 0"),
    "negative retryIntervalSeconds": (
        {"tasks": {"a": _task(retryIntervalSeconds=-0.5)}},
        "tasks.a.retryIntervalSeconds: must be a number >= 0"),
    "name collision after expansion": (
        {"parameters": {"DAY": ["mon"]},
         "tasks": {"a": _task(cmd("/bin/echo", "{{DAY}}")), "a[DAY=mon]": _task()}},
        "tasks.a[DAY=mon]: expanded name 'a[DAY=mon]' collides with an instance of 'a'"),
}


@pytest.mark.parametrize("case", list(INVALID_SPECS))
def test_invalid_spec_is_a_400_naming_the_problem(daemon, case):
    """Submitting or validating an invalid spec answers 400 with an errors list whose entry
    names the offending path, and records no run."""
    spec, expected = INVALID_SPECS[case]
    runs_before = run_ids(daemon)
    for path in ("/v1/dagrun", "/v1/dagrun/validate"):
        reply = daemon.http("POST", path, spec)
        assert reply.status == 400, (path, reply.raw)
        assert reply.headers["content-type"].startswith("application/json")
        body = reply.json
        assert expected in body["errors"], (path, body)
        assert expected in body["error"]
        if path.endswith("validate"):
            assert body["valid"] is False
    assert run_ids(daemon) == runs_before


def test_validate_lists_the_expanded_task_names(daemon):
    """A valid spec validates to the names it expands to, without creating a run."""
    runs_before = run_ids(daemon)
    reply = daemon.http("POST", "/v1/dagrun/validate", {
        "parameters": {"DAY": ["mon", "tue"], "ROOT": "/srv"},
        "tasks": {"pull": _task(cmd("/bin/echo", "{{DAY}}", "{{ROOT}}")),
                  "report": _task(parents=["pull"])},
    })
    assert (reply.status, reply.json) == (
        200, {"valid": True, "tasks": ["pull[DAY=mon]", "pull[DAY=tue]", "report"]})
    assert run_ids(daemon) == runs_before


# -- 12. HTTP statuses --------------------------------------------------------------------


def assert_error(reply, status: int, *fragments: str) -> None:
    assert reply.status == status, (reply.status, reply.raw)
    assert reply.headers["content-type"].startswith("application/json")
    body = reply.json
    assert set(body) == {"error"} and isinstance(body["error"], str), body
    for fragment in fragments:
        assert fragment in body["error"], body


def test_http_error_statuses(daemon):
    """Unknown things are 404, wrong verbs 405, forbidden changes 409 and oversized bodies
    413, each with a JSON error body."""
    done_id = daemon.submit({"tasks": {"t": {"job": cmd("/bin/true")}}})
    assert daemon.wait_run(done_id)["state"] == "COMPLETED"
    assert_error(daemon.http("GET", "/v1/dagrun/987654321"), 404, "no such run: 987654321")
    assert_error(daemon.http("GET", "/v1/dagrun/987654321/state"), 404)
    assert_error(daemon.http("GET", task_path(done_id, "nope")), 404, "nope")
    assert_error(daemon.http("GET", "/v1/nothing/here"), 404, "no such endpoint")
    reply = daemon.http("DELETE", "/v1/dagruns")
    assert_error(reply, 405, "DELETE")
    assert "GET" in reply.headers["allow"]
    assert_error(daemon.http("PUT", "/v1/dagrun"), 405)
    assert_error(daemon.http("DELETE", f"/v1/dagrun/{done_id}"), 409, "already COMPLETED")

    marker = unique_marker()
    running_id = daemon.submit({"tasks": {"nap": {"job": cmd("sleep", marker)}}})
    try:
        daemon.wait_task(running_id, "nap", "RUNNING")
        assert_error(daemon.http("PATCH", f"/v1/dagrun/{running_id}/state/QUEUED"), 409)
        assert daemon.get(f"/v1/dagrun/{running_id}/state")["state"] == "RUNNING"
    finally:
        kill_quietly(daemon, running_id)
    daemon.wait_task(running_id, "nap", "KILLED")
    wait_processes_gone(marker)

    runs_before = run_ids(daemon)
    padding = "x" * (MAX_REQUEST_BYTES + 1)
    oversized = json.dumps({"tag": padding, "tasks": {"t": {"job": cmd("/bin/true")}}})
    assert_error(daemon.http("POST", "/v1/dagrun", raw=oversized.encode()), 413,
                 str(MAX_REQUEST_BYTES))
    assert run_ids(daemon) == runs_before
    assert daemon.get("/ready") == {"msg": "Ya like DAGs?"}


# -- 13. scale ----------------------------------------------------------------------------


def test_ten_thousand_independent_tasks_complete(daemon):
    """10,000 independent /bin/true tasks submitted over HTTP all complete (wall time from
    POST to COMPLETED printed; run with -s to see it)."""
    count = 10_000
    spec = {"tag": "ten-thousand",
            "tasks": {f"t{i:05d}": {"job": cmd("/bin/true")} for i in range(count)}}
    body = json.dumps(spec, separators=(",", ":")).encode()
    assert len(body) < MAX_REQUEST_BYTES
    began = time.monotonic()
    reply = daemon.http("POST", "/v1/dagrun", raw=body)
    assert reply.status == 200, reply.raw
    run_id = reply.json["runID"]
    state = None

    def finished():
        nonlocal state
        state = daemon.get(f"/v1/dagrun/{run_id}/state")
        return state["state"] in FINISHED

    wait_until(finished, "10,000 tasks to finish", 300)
    elapsed = time.monotonic() - began
    print(f"\n10,000 independent /bin/true tasks: POST to COMPLETED in {elapsed:.1f} s "
          f"({count / elapsed:.0f} tasks/s)")
    assert state["state"] == "COMPLETED"
    assert state["taskCounts"]["COMPLETED"] == count
    assert daemon.get(task_path(run_id, "t09999"))["attempts"][0]["rc"] == 0


def test_lattice_of_a_thousand_tasks_respects_every_edge(daemon):
    """20 layers x 50 tasks, each with 2 parents in the layer before, all complete and every
    task starts after both its parents ended."""
    layers, width = 20, 50

    def name(layer: int, index: int) -> str:
        return f"L{layer:02d}-{index:02d}"

    tasks = {}
    for layer in range(layers):
        for index in range(width):
            parents = ([] if layer == 0
                       else [name(layer - 1, index), name(layer - 1, (index + 1) % width)])
            tasks[name(layer, index)] = {"job": cmd("/bin/true"), "parents": parents}
    began = time.monotonic()
    run_id = daemon.submit({"tag": "lattice", "tasks": tasks})
    run = daemon.wait_run(run_id, seconds=120)
    print(f"\n1,000-task lattice (20 x 50): POST to COMPLETED in "
          f"{time.monotonic() - began:.1f} s")
    assert run["state"] == "COMPLETED"
    assert run["taskCounts"]["COMPLETED"] == layers * width
    for child, definition in run["tasks"].items():
        assert len(attempts(run, child)) == 1
        for parent in definition["parents"]:
            assert_after(run, child, parent)
