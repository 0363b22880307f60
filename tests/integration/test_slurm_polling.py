"""The SlurmTaskExecutor's polling, retries and time limits with a real daggyd on the private
Slurm cluster: retried tasks get a new job per attempt, a job over its time limit is recorded
as a timeout, every poll tick is one ``squeue`` whatever the number of jobs, and a failing
``squeue`` fails no task.

The squeue tests run their own daemon whose ``commandPaths.squeue`` is a wrapper script
(``SqueueWrapper``) that logs each call (time, outcome, the ``-j`` ids) before running the
real squeue, or fails while its flag file exists.  The timeout job is submitted when the
module starts, so that Slurm's minute-granular limit runs out while the other tests run.
"""

from __future__ import annotations

import shlex
import statistics
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from daemon_harness import Daemon, parse_time, wait_until
from slurm_harness import SlurmCluster
from test_redis_daemon import daggyds  # noqa: F401 (fixture)
from test_slurm_daemon import RUN_SECONDS, job_ids
from test_slurm_daemon import job_output_dir, slurm_daggyd  # noqa: F401 (fixtures)
from test_slurm_restart import start_slurm_daggyd

pytestmark = pytest.mark.integration

POLL_SECONDS = 0.5
#: Slurm limits are whole minutes, checked every 30 s, then KillWait=5: 60 to ~100 s.
TIMEOUT_SECONDS = 240
PARALLEL_TASKS = 200
#: 200 jobs through the node's 16 slots on a 2-core machine, after 200 sbatch calls.
PARALLEL_SECONDS = 300
EVENTS_LOGGER = {"name": "OStreamLogger", "config": {"file": "events.jsonl"}}


def sh(script: str, *arguments: str, **fields) -> dict:
    """A task running ``sh -c script`` with ``$0``, ``$1``, ... bound to ``arguments``."""
    return {"job": {"command": ["sh", "-c", script, *arguments]}, **fields}


def attempts_of(run: dict, name: str) -> list[dict]:
    return run["taskAttempts"].get(name, [])


# -- the squeue wrapper --------------------------------------------------------------------


@dataclass(frozen=True)
class SqueueCall:
    """One logged squeue invocation: wall-clock ``time``, whether it ran the real squeue
    (``ok``) or failed on purpose, and the job ids of its ``-j`` argument."""

    time: float
    ok: bool
    ids: tuple[str, ...]


class SqueueWrapper:
    """A shell script standing in for squeue: it appends ``<time> ok|fail <-j ids>`` to
    ``log`` for each call, then fails with exit 1 (and a message on stderr) while ``flag``
    exists, else execs the real squeue."""

    def __init__(self, directory: Path, real_squeue: str):
        self.path = directory / "squeue"
        self.log = directory / "squeue-calls.log"
        self.flag = directory / "squeue-fails"
        log, flag = shlex.quote(str(self.log)), shlex.quote(str(self.flag))
        self.path.write_text(f"""#!/bin/sh
stamp=$(date +%s.%N)
ids= next=
for argument do
    if [ -n "$next" ]; then ids=$argument; next=; fi
    if [ "$argument" = -j ]; then next=1; fi
done
if [ -e {flag} ]; then
    echo "$stamp fail $ids" >> {log}
    echo "squeue: error: the test made squeue fail" >&2
    exit 1
fi
echo "$stamp ok $ids" >> {log}
exec {shlex.quote(real_squeue)} "$@"
""")
        self.path.chmod(0o755)

    def calls(self) -> list[SqueueCall]:
        if not self.log.exists():
            return []
        calls = []
        for line in self.log.read_text().splitlines():
            stamp, outcome, *ids = line.split(" ")
            calls.append(SqueueCall(float(stamp), outcome == "ok",
                                    tuple(filter(None, "".join(ids).split(",")))))
        return calls


def squeue_daggyd(daggyds, cluster: SlurmCluster, output_dir: Path, wrapper: SqueueWrapper,
                  **config) -> Daemon:
    """A daggyd of its own whose squeue is ``wrapper``, polling every POLL_SECONDS."""
    return start_slurm_daggyd(daggyds, cluster, {
        "sacctCompletion": True,
        "pollIntervalSeconds": POLL_SECONDS,
        "outputDir": str(output_dir / f"daemon-{uuid.uuid4().hex[:8]}"),
        "jobNamePrefix": f"dgp{uuid.uuid4().hex[:8]}",
        "commandPaths": {"squeue": str(wrapper.path)},
        **config,
    }, EVENTS_LOGGER)


def gaps(calls: list[SqueueCall]) -> list[float]:
    return [later.time - earlier.time for earlier, later in zip(calls, calls[1:])]


# -- time limit (submitted first, checked last) --------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def timeout_run(slurm_daggyd) -> int:
    """The id of a run whose one task sleeps 600 s under ``timeLimitSeconds: 1``, submitted
    before this module's first test (Slurm needs 60 to ~100 s to time it out)."""
    return slurm_daggyd.submit({"tag": "time-limit", "tasks": {
        "sleeper": {"job": {"command": ["sleep", "600"], "timeLimitSeconds": 1}}}})


# -- retries -------------------------------------------------------------------------------


def test_failed_attempt_is_retried_as_a_new_slurm_job(slurm_daggyd, job_output_dir):
    """A task whose command fails on its first run and succeeds on its second, with
    ``maxRetries: 2``, completes after exactly two attempts (rc 1, then rc 0), each its own
    Slurm job, the second submitted no sooner than ``retryIntervalSeconds`` after the first
    ended."""
    counter = job_output_dir / f"counter-{uuid.uuid4().hex[:8]}"
    run_id = slurm_daggyd.submit({"tag": "retry-then-succeed", "tasks": {
        "flaky": sh('n=$(cat "$0" 2>/dev/null || echo 0); echo "$((n + 1))" > "$0";'
                    ' echo "run $n"; [ "$n" -ge 1 ]', str(counter),
                    maxRetries=2, retryIntervalSeconds=1),
    }})

    run = slurm_daggyd.wait_run(run_id, seconds=RUN_SECONDS)

    assert run["state"] == "COMPLETED", run
    first, second = attempts_of(run, "flaky")
    assert (first["rc"], first["succeeded"], first["outputLog"]) == (1, False, "run 0\n"), first
    assert (second["rc"], second["succeeded"], second["outputLog"]) == (0, True, "run 1\n"), second
    assert first["executorState"]["jobId"] != second["executorState"]["jobId"]
    assert (parse_time(second["startTime"]) - parse_time(first["stopTime"])).total_seconds() >= 1
    assert counter.read_text() == "2\n"
    assert [change["state"] for change in run["taskStateChanges"]["flaky"]].count("RETRY") == 1


def test_task_failing_every_attempt_errors_after_its_retries(slurm_daggyd):
    """A task whose command always exits 4, with ``maxRetries: 2``, ends ERRORED after three
    attempts, each rc 4 and each its own Slurm job."""
    run_id = slurm_daggyd.submit({"tag": "retries-exhausted", "tasks": {
        "hopeless": sh("echo nope >&2; exit 4", maxRetries=2, retryIntervalSeconds=0.2),
    }})

    run = slurm_daggyd.wait_run(run_id, seconds=RUN_SECONDS)

    assert run["state"] == "ERRORED", run
    attempts = attempts_of(run, "hopeless")
    assert [(a["rc"], a["succeeded"], a["errorLog"]) for a in attempts] == [
        (4, False, "nope\n")] * 3, attempts
    assert len(set(job_ids(run))) == 3
    assert slurm_daggyd.task_state(run_id, "hopeless") == "ERRORED"


# -- one squeue per tick -------------------------------------------------------------------


def test_two_hundred_jobs_are_watched_with_one_squeue_per_tick(
        slurm_cluster, daggyds, job_output_dir, tmp_path):
    """200 independent tasks, all submitted and tracked at once (their jobs wait for a gate
    file), complete with one attempt each; every poll tick ran one squeue, which named all
    200 jobs while they were all tracked, and squeue ran no more often than once per poll
    interval."""
    wrapper = SqueueWrapper(tmp_path, slurm_cluster.programs["squeue"])
    daemon = squeue_daggyd(daggyds, slurm_cluster, job_output_dir, wrapper)
    gate = job_output_dir / f"gate-{uuid.uuid4().hex[:8]}"
    names = [f"job-{i:03d}" for i in range(PARALLEL_TASKS)]
    run_id = daemon.submit({"tag": "two-hundred", "tasks": {
        name: sh('while [ ! -e "$0" ]; do sleep 0.5; done; echo "$1"', str(gate), name)
        for name in names}})

    # No job can finish before the gate opens, so once all are submitted the next poll
    # must name every one of them.
    wait_until(lambda: any(len(call.ids) == PARALLEL_TASKS for call in wrapper.calls()),
               "a squeue call naming all 200 jobs", PARALLEL_SECONDS)
    gate.touch()
    run = daemon.wait_run(run_id, seconds=PARALLEL_SECONDS)

    assert run["state"] == "COMPLETED", run["state"]
    for name in names:
        assert [(a["rc"], a["outputLog"]) for a in attempts_of(run, name)] == [
            (0, f"{name}\n")], (name, attempts_of(run, name))
    assert len(set(job_ids(run))) == PARALLEL_TASKS
    calls = wrapper.calls()
    assert all(call.ok for call in calls)
    assert max(len(call.ids) for call in calls) == PARALLEL_TASKS
    # One call per tick: never more calls than ticks in the time they span.  LoopingCall
    # keeps its phase, so a tick that a busy reactor runs late is followed by one on
    # schedule: two calls can be closer than the interval (0.61 s then 0.39 s was seen),
    # but never back to back, and any three span more than one interval.
    elapsed = calls[-1].time - calls[0].time
    assert len(calls) <= elapsed / POLL_SECONDS + 2, (len(calls), elapsed)
    assert min(gaps(calls)) >= 0.25 * POLL_SECONDS, gaps(calls)
    assert min(c.time - a.time for a, c in zip(calls, calls[2:])) >= POLL_SECONDS, gaps(calls)


# -- squeue failing ------------------------------------------------------------------------


def test_failing_squeue_is_no_news_and_fails_no_task(
        slurm_cluster, daggyds, job_output_dir, tmp_path):
    """While squeue exits 1, the daemon warns once, polls less and less often and fails no
    task; when squeue works again every job's real result is recorded (one attempt each,
    rc 0) and polling is back to its normal interval."""
    wrapper = SqueueWrapper(tmp_path, slurm_cluster.programs["squeue"])
    daemon = squeue_daggyd(daggyds, slurm_cluster, job_output_dir, wrapper,
                           maxBackoffSeconds=4)
    short = [f"short-{i}" for i in range(3)]
    run_id = daemon.submit({"tag": "squeue-outage", "tasks": {
        **{name: sh('sleep 3; echo "done $0"', name) for name in short},
        # Still running after the outage, so that polls go on at the normal interval.
        "long": sh('sleep 12; echo "done $0"', "long"),
    }})
    for name in [*short, "long"]:
        daemon.wait_task(run_id, name, "RUNNING", seconds=RUN_SECONDS)

    wrapper.flag.touch()
    wait_until(lambda: sum(not call.ok for call in wrapper.calls()) >= 3,
               "three failed squeue calls", RUN_SECONDS)
    wrapper.flag.unlink()
    run = daemon.wait_run(run_id, seconds=RUN_SECONDS)

    assert run["state"] == "COMPLETED", run
    for name in [*short, "long"]:
        assert [(a["rc"], a["succeeded"], a["outputLog"]) for a in attempts_of(run, name)] == [
            (0, True, f"done {name}\n")], (name, attempts_of(run, name))
    calls = wrapper.calls()
    outcomes = "".join("+" if call.ok else "-" for call in calls)
    assert outcomes.strip("+") == "---", outcomes  # ok calls, then failures, then ok again
    first_failure = outcomes.index("-")
    outage = calls[first_failure:first_failure + 4]  # the three failures and the recovery
    outage_gaps = gaps(outage)
    # Backoff: 2, 4, then 8 intervals capped at maxBackoffSeconds (4 s); each wait ends at
    # the first tick after it, so the gaps are about 1.5, 2.5 and 4.5 s.
    assert outage_gaps == sorted(outage_gaps) and outage_gaps[0] >= 0.8 * 2 * POLL_SECONDS, \
        outage_gaps
    assert outage_gaps[-1] <= 4 + 3 * POLL_SECONDS, outage_gaps
    # A job that ended during the outage is recorded only once squeue answers again.
    recovery = outage[-1].time
    short_stops = [parse_time(attempts_of(run, name)[0]["stopTime"]).timestamp()
                   for name in short]
    assert min(short_stops) >= recovery, (short_stops, recovery)
    after = calls[first_failure + 3:]
    assert len(after) >= 3 and statistics.median(gaps(after)) < 1.5 * POLL_SECONDS, gaps(after)
    log = daemon.log
    assert log.count("no news about Slurm jobs") == 1, log
    assert "Slurm answers again after 3 failed polls" in log, log


# -- time limit ----------------------------------------------------------------------------


def test_job_over_its_time_limit_is_recorded_as_timed_out(slurm_daggyd, timeout_run):
    """A ``sleep 600`` job with ``timeLimitSeconds: 1`` (one minute for Slurm) is ended by
    Slurm: its attempt is timed out with no rc and a TIMEOUT executorLog, and the task and
    run end ERRORED."""
    run = slurm_daggyd.wait_run(timeout_run, seconds=TIMEOUT_SECONDS)

    assert run["state"] == "ERRORED", run
    [attempt] = attempts_of(run, "sleeper")
    assert (attempt["timedOut"], attempt["succeeded"], attempt["rc"], attempt["killed"]) == (
        True, False, None, False), attempt
    assert "TIMEOUT" in attempt["executorLog"], attempt
    assert attempt["executorLog"].startswith(f"Slurm job {attempt['executorState']['jobId']} ")
    ran = parse_time(attempt["stopTime"]) - parse_time(attempt["startTime"])
    assert ran.total_seconds() >= 60, ran  # Slurm's limit is a whole minute
    assert slurm_daggyd.task_state(timeout_run, "sleeper") == "ERRORED"
