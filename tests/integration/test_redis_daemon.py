"""End to end with the RedisLogger: a real daggyd (forking executor) on a real, private
redis-server, through restarts, `kill -9`, Redis outages, passwords and key prefixes.

Each test starts its own daemons (``daggyds``) and, when it stops or restarts Redis, its own
redis-server; the others share one redis-server and keep apart by key prefix.  Every test
fails if a daemon logged an error, and a daemon stopped with SIGTERM must exit with 0.
"""

from __future__ import annotations

import json
import signal
import uuid
from http.client import HTTPException
from pathlib import Path
from typing import Any

import pytest

from daemon_harness import (
    START_SECONDS,
    Daemon,
    Process,
    daggyd,
    free_port,
    http,
    task_path,
    wait_until,
    write_config,
)
from redis_harness import RedisServer

pytestmark = pytest.mark.integration

THREADS = 10
#: The note the runner puts in the attempt a daemon restart interrupted (docs/architecture.md).
RESTARTED = "daggyd restarted while this attempt was running"
#: The note of an attempt killed by a clean stop.
SHUTTING_DOWN = "shutting down"
#: Seconds a reconnecting RedisLogger may take to notice Redis is back (backoff caps at 5 s).
RECONNECT_SECONDS = 20


# -- daemons -------------------------------------------------------------------------------


def redis_logger(server: RedisServer, prefix: str, **config: Any) -> dict:
    return {"name": "RedisLogger",
            "config": {"host": server.host, "port": server.port, "prefix": prefix, **config}}


def unique_prefix(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:10]}"


def ready_status(port: int) -> int | None:
    """The status /ready answers with, or None while nothing answers on the port."""
    try:
        return http(port, "GET", "/ready", timeout=5).status
    except (OSError, HTTPException):
        return None


class Daggyds:
    """Starts daggyd processes with a given logger config (``start``), and at the end of the
    test stops those still running; each must exit with 0 and none may log an error."""

    def __init__(self, tmp_path: Path):
        self._tmp_path = tmp_path
        self.started: list[Daemon] = []

    def start(self, logger: dict, *, ready: bool = True, threads: int = THREADS) -> Daemon:
        """Start a daemon; wait until /ready answers 200 (``ready``) or at all."""
        directory = self._tmp_path / f"daggyd-{len(self.started)}"
        directory.mkdir()
        port = free_port()
        config = write_config(directory, port, "ForkingTaskExecutor",
                              {"threads": threads, "killGraceSeconds": 2}, logger=logger)
        process = Process(daggyd("--config", str(config)), directory)
        daemon = Daemon("daggyd", port, directory, process, directory / "stderr.txt", 0)
        self.started.append(daemon)
        wanted = {200} if ready else {200, 503}
        wait_until(lambda: process.popen.poll() is not None or ready_status(port) in wanted,
                   f"daggyd to answer /ready{' with 200' if ready else ''}", START_SECONDS)
        assert process.popen.poll() is None, (
            f"daggyd exited with {process.popen.returncode}:\n{daemon.log}")
        return daemon

    def stop(self, daemon: Daemon) -> None:
        """SIGTERM; the daemon must exit with 0."""
        assert daemon.stop() == 0, f"daggyd did not exit with 0:\n{daemon.log}"

    def kill9(self, daemon: Daemon) -> None:
        daemon.process.popen.send_signal(signal.SIGKILL)
        daemon.process.popen.wait()

    def finish(self) -> None:
        """Stop every daemon still running (SIGTERM, then SIGKILL if it hangs); fails if one
        exits with another status than 0 or any logged an error."""
        problems = []
        for daemon in self.started:
            if daemon.process.popen.poll() is None:
                status = daemon.stop()
                if status != 0:
                    problems.append(f"{daemon.directory.name} exited with {status}")
            errors = daemon.new_log_errors(0)
            if errors:
                problems.append(f"{daemon.directory.name} logged errors:\n{daemon.log}")
        assert not problems, "\n".join(problems)


@pytest.fixture
def daggyds(tmp_path):
    """Start daggyds (see Daggyds).  A test that also takes a redis-server fixture must
    name it first, so that Redis outlives the daemons (fixtures stop in reverse order)."""
    launcher = Daggyds(tmp_path)
    yield launcher
    launcher.finish()


# -- specs and reads -----------------------------------------------------------------------


def sh(script: str, *arguments: str, **fields: Any) -> dict:
    return {"job": {"command": ["sh", "-c", script, "sh", *arguments]}, **fields}


def sleeps(count: int, seconds: float = 0.2, tag: str | None = None) -> dict:
    """``count`` independent ``sleep`` tasks named t000, t001..."""
    spec: dict[str, Any] = {"tasks": {f"t{i:03d}": {"job": {"command": ["sleep", str(seconds)]}}
                                      for i in range(count)}}
    if tag is not None:
        spec["tag"] = tag
    return spec


def run_state(daemon: Daemon, run_id: int) -> dict:
    return daemon.get(f"/v1/dagrun/{run_id}/state")


def completed(daemon: Daemon, run_id: int) -> int:
    return run_state(daemon, run_id)["taskCounts"]["COMPLETED"]


def listed_ids(daemon: Daemon) -> list[int]:
    return [summary["runID"] for summary in daemon.get("/v1/dagruns?all=1")]


def everything(daemon: Daemon, run_ids: list[int] | None = None) -> dict:
    """Every answer the API gives about the runs: the listings, and for each run the full
    run, its state, and every task and task state."""
    record: dict[str, Any] = {"all": daemon.get("/v1/dagruns?all=1"),
                              "unfinished": daemon.get("/v1/dagruns")}
    for run_id in run_ids if run_ids is not None else [s["runID"] for s in record["all"]]:
        run = daemon.run(run_id)
        record[run_id] = {
            "run": run,
            "state": run_state(daemon, run_id),
            "tasks": {name: daemon.task(run_id, name) for name in run["tasks"]},
            "taskStates": {name: daemon.get(task_path(run_id, name, "state"))
                           for name in run["tasks"]},
        }
    return record


def not_ready_reason(daemon: Daemon) -> str:
    """Why /ready answers 503 ("" when it answers 200)."""
    reply = daemon.http("GET", "/ready")
    if reply.status == 200:
        return ""
    assert reply.status == 503, (reply.status, reply.raw)
    return reply.json["error"]


def is_interrupted(attempt: dict) -> bool:
    return (attempt["rc"] is None and attempt["succeeded"] is False
            and RESTARTED in attempt["executorLog"])


# -- 1. clean restart ----------------------------------------------------------------------


def test_history_reads_back_identical_after_a_clean_restart(session_redis_server, daggyds,
                                                            tmp_path):
    """After SIGTERM and a new daemon on the same Redis and prefix, the listings, every
    finished run, task, attempt and (cut) output answer exactly as before; a run stopped
    mid-task is resumed and completes."""
    logger = redis_logger(session_redis_server, unique_prefix("history"),
                          maxStoredOutputBytes=1000)
    first = daggyds.start(logger)
    flag = tmp_path / "flaky-failed-once"
    generated = {"été ☃": {"job": {"command": ["echo", "made"]}},
                 "a/b c": {"job": {"command": ["true"]}, "parents": ["été ☃"]}}
    done = first.submit({
        "tag": "history",
        "parameters": {"DAY": ["mon", "tue"]},
        "tasks": {
            "greet": sh('echo "hello {{DAY}}"; echo "warn {{DAY}}" >&2', children=["gen"]),
            "big": sh("head -c 5000 /dev/zero | tr '\\0' x; echo tail >&2"),
            "flaky": sh('[ -e "$1" ] || { touch "$1"; echo nope >&2; exit 3; }; echo ok',
                        str(flag), maxRetries=1),
            "gen": {"job": {"command": ["echo", json.dumps(generated)]}, "isGenerator": True},
        },
    })
    failed = first.submit({"tasks": {"bad": sh("echo oops; exit 2"),
                                     "after": sh("true", parents=["bad"])}})
    killed = first.submit({"tag": "killed", "tasks": {"long": sh("exec sleep 60")}})
    first.wait_task(killed, "long", "RUNNING")
    assert first.http("DELETE", f"/v1/dagrun/{killed}").status == 200
    assert first.wait_run(done)["state"] == "COMPLETED"
    assert first.wait_run(failed)["state"] == "ERRORED"
    assert first.wait_run(killed)["state"] == "KILLED"
    go_on = tmp_path / "go-on"
    resumed = first.submit({"tag": "resumed",
                            "tasks": {"wait": sh('[ -e "$1" ] || exec sleep 60; echo went on',
                                                 str(go_on))}})
    first.wait_task(resumed, "wait", "RUNNING")
    finished = [done, failed, killed]
    before = everything(first, finished)
    run = before[done]["run"]
    assert sorted(run["tasks"]) == sorted(["greet[DAY=mon]", "greet[DAY=tue]", "big", "flaky",
                                           "gen", "été ☃", "a/b c"])
    [big] = run["taskAttempts"]["big"]
    assert (len(big["outputLog"]), big["outputTruncated"], big["errorLog"]) == (
        1000, True, "tail\n")
    assert "4000 more bytes were not stored" in big["executorLog"]
    assert [a["rc"] for a in run["taskAttempts"]["flaky"]] == [3, 0]

    daggyds.stop(first)
    go_on.touch()
    second = daggyds.start(logger)

    after = everything(second, finished)
    finished_summaries = [s for s in before["all"] if s["runID"] in finished]
    assert [s for s in after["all"] if s["runID"] in finished] == finished_summaries
    assert {key: after[key] for key in finished} == {key: before[key] for key in finished}
    assert list(after[done]["run"]["tasks"]) == list(run["tasks"])
    assert listed_ids(second) == [done, failed, killed, resumed]

    again = second.wait_run(resumed)
    assert again["state"] == "COMPLETED"
    stopped, rerun = again["taskAttempts"]["wait"]
    assert stopped["killed"] is True and SHUTTING_DOWN in stopped["executorLog"]
    assert (rerun["rc"], rerun["outputLog"]) == (0, "went on\n")
    assert [c["state"] for c in again["taskStateChanges"]["wait"]] == [
        "QUEUED", "RUNNING", "QUEUED", "RUNNING", "COMPLETED"]


# -- 2. kill -9 ----------------------------------------------------------------------------


def stored_hash(server: RedisServer, key: str) -> dict[str, str]:
    reply = server.command("HGETALL", key)
    return {reply[i].decode(): reply[i + 1].decode() for i in range(0, len(reply), 2)}


def test_a_run_survives_kill_9_of_the_daemon(session_redis_server, daggyds):
    """kill -9 during a 200-task run, then a restart: the run completes, tasks completed
    before the kill keep their one attempt and are not run again, and each task that was
    running gets its interrupted attempt recorded before the attempt that completed it."""
    prefix = unique_prefix("kill9")
    logger = redis_logger(session_redis_server, prefix)
    first = daggyds.start(logger)
    run_id = first.submit(sleeps(200, tag="kill9"))
    wait_until(lambda: completed(first, run_id) >= 50, "50 tasks to complete", 60)
    daggyds.kill9(first)
    key = f"{prefix}:run:{run_id}"
    states_at_kill = stored_hash(session_redis_server, f"{key}:taskStates")
    attempts_at_kill = stored_hash(session_redis_server, f"{key}:taskAttempts")
    by_state: dict[str, set[str]] = {}
    for name, state in states_at_kill.items():
        by_state.setdefault(state, set()).add(name)
    assert len(states_at_kill) == 200
    assert by_state.get("COMPLETED"), "no task was stored as COMPLETED when the daemon died"
    assert by_state.get("RUNNING"), "no task was stored as RUNNING when the daemon died"
    assert by_state.get("QUEUED"), "every task had started when the daemon died"

    second = daggyds.start(logger)
    run = second.wait_run(run_id)

    assert run["state"] == "COMPLETED"
    assert run["taskCounts"]["COMPLETED"] == 200
    assert set(run["taskStates"].values()) == {"COMPLETED"}
    for name, attempts in run["taskAttempts"].items():
        *earlier, last = attempts
        assert (last["rc"], last["succeeded"]) == (0, True), (name, attempts)
        assert all(map(is_interrupted, earlier)), (name, attempts)
        if name in by_state["COMPLETED"]:
            assert attempts == json.loads(attempts_at_kill[name]), name
            assert len(attempts) == 1
        elif name in by_state["RUNNING"]:
            assert len(attempts) == 2 and is_interrupted(attempts[0]), (name, attempts)
            changes = [c["state"] for c in run["taskStateChanges"][name]]
            assert changes == ["QUEUED", "RUNNING", "QUEUED", "RUNNING", "COMPLETED"], name
        else:
            assert len(attempts) == 1, (name, attempts)
    interrupted = {name for name, attempts in run["taskAttempts"].items()
                   if any(map(is_interrupted, attempts))}
    assert interrupted == by_state["RUNNING"]
    [summary] = second.get("/v1/dagruns?all=1")
    assert (summary["runID"], summary["state"], summary["taskCounts"]["COMPLETED"]) == (
        run_id, "COMPLETED", 200)


# -- 3. prefixes ---------------------------------------------------------------------------


def test_two_prefixes_on_one_redis_stay_apart(session_redis_server, daggyds):
    """Two daemons with different prefixes on one Redis each number runs from 0, list only
    their own runs, and write only keys under their own prefix."""
    left_prefix, right_prefix = unique_prefix("left"), unique_prefix("right")
    left = daggyds.start(redis_logger(session_redis_server, left_prefix))
    right = daggyds.start(redis_logger(session_redis_server, right_prefix))
    left_runs = [left.submit({"tag": f"left-{i}", "tasks": {"a": sh("echo left")}})
                 for i in range(2)]
    right_runs = [right.submit({"tag": "right", "tasks": {"b": sh("echo right")}})]
    assert (left_runs, right_runs) == ([0, 1], [0])
    for run_id in left_runs:
        assert left.wait_run(run_id)["state"] == "COMPLETED"
    assert right.wait_run(0)["state"] == "COMPLETED"

    assert [(s["runID"], s["tag"]) for s in left.get("/v1/dagruns?all=1")] == [
        (0, "left-0"), (1, "left-1")]
    assert [(s["runID"], s["tag"]) for s in right.get("/v1/dagruns?all=1")] == [(0, "right")]
    assert list(right.run(0)["tasks"]) == ["b"]
    assert right.http("GET", "/v1/dagrun/1").status == 404
    daggyds.stop(left)
    daggyds.stop(right)
    for prefix, runs in [(left_prefix, 2), (right_prefix, 1)]:
        keys = [key.decode() for key in session_redis_server.command("KEYS", f"{prefix}*")]
        assert keys and all(key.startswith(f"{prefix}:") for key in keys), keys
        assert session_redis_server.command("GET", f"{prefix}:nextRunID") == str(runs).encode()

    reopened = daggyds.start(redis_logger(session_redis_server, right_prefix))
    assert listed_ids(reopened) == [0]
    assert reopened.submit({"tasks": {"c": sh("true")}}) == 1


# -- 4. Redis outage -----------------------------------------------------------------------


def test_a_redis_outage_mid_run_loses_nothing(redis_server, daggyds):
    """Redis stopped mid-run: tasks go on, /ready and run creation answer 503 with the
    reason while reads of the run still work; once Redis is back the run completes with
    every attempt, and a restarted daemon reads back the same record."""
    logger = redis_logger(redis_server, "outage")
    first = daggyds.start(logger)
    run_id = first.submit(sleeps(200, tag="outage"))
    wait_until(lambda: completed(first, run_id) >= 20, "20 tasks to complete", 60)
    redis_server.stop()

    # About 2 s (100 tasks of 0.2 s on 10 threads) without Redis.
    down_at = completed(first, run_id)
    wait_until(lambda: completed(first, run_id) >= down_at + 100,
               "100 more tasks to complete while Redis is down", 60)
    ready = first.http("GET", "/ready")
    assert ready.status == 503, ready.raw
    assert str(redis_server.port) in ready.json["error"]
    refused = first.http("POST", "/v1/dagrun", {"tasks": {"a": sh("true")}})
    assert refused.status == 503 and refused.json["error"], refused.raw
    assert first.run(run_id)["state"] == "RUNNING"
    assert listed_ids(first) == [run_id]

    redis_server.start()
    run = first.wait_run(run_id)
    assert run["state"] == "COMPLETED"
    assert all(len(attempts) == 1 and attempts[0]["rc"] == 0
               for attempts in run["taskAttempts"].values())
    wait_until(lambda: first.http("GET", "/ready").status == 200,
               "/ready to answer 200 again", RECONNECT_SECONDS)
    before = everything(first)
    assert before["all"][0]["state"] == "COMPLETED"

    daggyds.stop(first)
    second = daggyds.start(logger)
    assert everything(second) == before


def test_sigterm_while_redis_is_down_exits_cleanly(redis_server, daggyds):
    """SIGTERM during a Redis outage stops the daemon with exit 0 and without an error:
    what could not be stored is reported as a warning, not a traceback."""
    first = daggyds.start(redis_logger(redis_server, "sigterm-outage"))
    run_id = first.submit(sleeps(50))
    wait_until(lambda: completed(first, run_id) >= 5, "5 tasks to complete", 60)
    redis_server.stop()
    wait_until(lambda: first.http("GET", "/ready").status == 503,
               "/ready to notice the outage", RECONNECT_SECONDS)
    daggyds.stop(first)
    assert first.new_log_errors(0) == [], first.log
    assert "not stored" in first.log


def test_a_finished_run_of_an_earlier_daemon_can_be_resumed(session_redis_server, daggyds,
                                                            tmp_path):
    """After a restart, PATCH state/QUEUED on a run the old daemon finished ERRORED re-runs
    what failed; the outcome is stored and read back by the next daemon."""
    logger = redis_logger(session_redis_server, unique_prefix("resume-old"))
    marker = tmp_path / "marker"
    first = daggyds.start(logger)
    run_id = first.submit({"tasks": {
        "setup": sh("true", children=["check"]),
        "check": sh('test -e "$1"', str(marker))}})
    assert first.wait_run(run_id)["state"] == "ERRORED"
    daggyds.stop(first)
    marker.touch()
    second = daggyds.start(logger)
    resumed = second.http("PATCH", f"/v1/dagrun/{run_id}/state/QUEUED")
    assert resumed.status == 200, resumed.raw
    run = second.wait_run(run_id)
    assert run["state"] == "COMPLETED"
    assert [len(run["taskAttempts"][name]) for name in ("setup", "check")] == [1, 2]
    daggyds.stop(second)
    third = daggyds.start(logger)
    assert third.run(run_id)["state"] == "COMPLETED"


# -- 5. passwords --------------------------------------------------------------------------


def test_redis_with_a_password(redis_servers, daggyds, tmp_path):
    """The password can come from the config or from passwordFile; a wrong one leaves the
    daemon up with /ready 503 saying why, and run creation 503."""
    server = redis_servers(password="s3cret pass")
    with_password = daggyds.start(redis_logger(server, "pw", password="s3cret pass"))
    run_id = with_password.submit({"tasks": {"a": sh("echo secret")}})
    assert with_password.wait_run(run_id)["state"] == "COMPLETED"
    daggyds.stop(with_password)

    password_file = tmp_path / "redis-password"
    password_file.write_text("s3cret pass\n")
    password_file.chmod(0o600)
    from_file = daggyds.start(redis_logger(server, "pw", passwordFile=str(password_file)))
    assert listed_ids(from_file) == [run_id]
    assert from_file.run(run_id)["taskAttempts"]["a"][0]["outputLog"] == "secret\n"

    wrong = daggyds.start(redis_logger(server, "pw", password="guess"), ready=False)
    wait_until(lambda: "WRONGPASS" in not_ready_reason(wrong),
               "/ready to say the password was refused")
    assert wrong.http("GET", "/ready").status == 503
    refused = wrong.http("POST", "/v1/dagrun", {"tasks": {"a": sh("true")}})
    assert refused.status == 503 and refused.json["error"], refused.raw
    assert wrong.process.popen.poll() is None
    assert "Traceback" not in wrong.log


# -- 6. Redis not there at start ----------------------------------------------------------


def test_daemon_waits_for_a_redis_that_is_not_up_yet(redis_servers, daggyds):
    """With nothing listening on the Redis port, the daemon serves /ready 503 with the
    reason and refuses runs with a 503 JSON error; when Redis starts on that port it becomes
    ready and runs complete."""
    port = free_port()
    config = {"name": "RedisLogger",
              "config": {"host": "127.0.0.1", "port": port, "prefix": "late"}}
    daemon = daggyds.start(config, ready=False)
    assert f"127.0.0.1:{port}" in not_ready_reason(daemon)
    wait_until(lambda: "refused" in not_ready_reason(daemon),
               "/ready to say the connection was refused")
    refused = daemon.http("POST", "/v1/dagrun", {"tasks": {"a": sh("true")}})
    assert refused.status == 503, refused.raw
    assert refused.headers["content-type"].startswith("application/json")
    assert refused.json["error"]
    listing = daemon.http("GET", "/v1/dagruns?all=1")
    assert listing.status == 503 and listing.json["error"], listing.raw

    redis_servers(port=port)
    wait_until(lambda: daemon.http("GET", "/ready").status == 200,
               "/ready to answer 200 once Redis is up", RECONNECT_SECONDS)
    run_id = daemon.submit({"tasks": {"a": sh("echo late")}})
    assert run_id == 0
    run = daemon.wait_run(run_id)
    assert run["state"] == "COMPLETED"
    assert run["taskAttempts"]["a"][0]["outputLog"] == "late\n"


# -- 7. unix socket and database number ---------------------------------------------------


def test_unix_socket_and_database_number(redis_servers, daggyds):
    """With unixSocket and db the daemon reaches Redis over the socket and keeps its keys in
    that database only."""
    server = redis_servers(unix_socket=True)
    logger = {"name": "RedisLogger",
              "config": {"unixSocket": server.unix_socket, "db": 3, "prefix": "sock",
                         "port": 1}}
    daemon = daggyds.start(logger)
    run_id = daemon.submit({"tasks": {"a": sh("echo via socket")}})
    assert daemon.wait_run(run_id)["state"] == "COMPLETED"
    daggyds.stop(daemon)

    assert server.command("KEYS", "*") == []
    with server.client(unix=True) as client:
        assert client.command("SELECT", 3) == "OK"
        assert client.command("GET", "sock:nextRunID") == b"1"
    again = daggyds.start(logger)
    assert again.run(run_id)["taskAttempts"]["a"][0]["outputLog"] == "via socket\n"
