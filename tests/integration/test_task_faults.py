"""Faulty and hostile tasks with real processes: killed from outside, closing their output
early, flooding stdout, writing bytes that are not UTF-8, and daemonising with ``setsid``.

The first half drives ForkingTaskExecutor on the real reactor in this process, once per
isolation mechanism this machine offers (docs/executors.md, "Task isolation"); the second
half runs a real daggyd and looks at it from outside (/proc, the HTTP API).
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import time
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet.task import deferLater

from daemon_harness import Daemon, live_processes_with, task_path, wait_until
from daggy.executors.forking import ForkingTaskExecutor

pytestmark = pytest.mark.integration

GIB = 1 << 30
#: maxOutputBytes of the daemon tests.
DAEMON_MAX_OUTPUT = 1 << 20
#: What daggyd's peak RSS may grow by while a task writes 1 GiB, beyond maxOutputBytes: the
#: kept bytes, their text, the attempt's JSON event line (NULs are 6 bytes each there) and
#: the allocator's slack.
RSS_SLACK = 40 << 20


@pytest.fixture
def reactor():
    from twisted.internet import reactor

    return reactor


@pytest.fixture
def executors(reactor):
    """``make(**options)``: ForkingTaskExecutors stopped after the test (releasing their
    cgroups and the subreaper); a mechanism the machine lacks skips the test."""
    made: list[ForkingTaskExecutor] = []

    def make(**options) -> ForkingTaskExecutor:
        try:
            made.append(ForkingTaskExecutor(reactor, **options))
        except ValueError as e:
            pytest.skip(str(e))
        return made[-1]

    yield make
    for executor in made:
        executor.stop()


@pytest.fixture
def marker():
    """A sleep duration of about 1000 s that no other process on the machine has in its
    argv; every process left with it is killed after the test."""
    text = f"1000.{random.randrange(10**12):012d}"
    yield text
    for pid in live_processes_with(text):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


async def wait_for(reactor, predicate, what: str, timeout: float = 10.0):
    """Poll ``predicate`` on the reactor until it is true; fail after ``timeout`` seconds."""
    deadline = reactor.seconds() + timeout
    while not predicate():
        if reactor.seconds() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        await deferLater(reactor, 0.05, lambda: None)


def stat_of(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def orphan_zombies_of(parent: int) -> list[int]:
    """Zombie children of ``parent`` outside its session: unreaped orphans of tasks."""
    own_session = os.getsid(parent)
    found = []
    for entry in os.listdir("/proc"):
        fields = stat_of(int(entry)) if entry.isdigit() else None
        if fields and fields[0] == "Z" and int(fields[1]) == parent \
                and int(fields[3]) != own_session:
            found.append(int(entry))
    return found


#: A task that leaves a daemon behind in a new session: the daemon ignores SIGTERM, closes
#: stdio (so nothing ties it to the attempt) and sleeps ``$1`` seconds; the task sleeps too.
SETSID_DAEMON = ("setsid sh -c 'trap \"\" TERM; exec sleep \"$0\"' \"$1\" "
                 "</dev/null >/dev/null 2>&1 & echo started; exec sleep \"$1\"")

#: A task whose grandchild is orphaned: the child calls setsid, forks the grandchild (which
#: closes stdio and sleeps argv[1] seconds) and exits at once; the task then sleeps.
DOUBLE_FORK = """
import os, sys, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        os.execvp("sleep", ["sleep", sys.argv[1]])
    os._exit(0)
os.wait()
print("orphaned", flush=True)
os.execvp("sleep", ["sleep", sys.argv[1]])
"""


# -- the executor on the real reactor ------------------------------------------------------


@pytest.mark.parametrize("mode", ["cgroup", "subreaper"])
@pytest_twisted.ensureDeferred
async def test_setsid_daemon_is_killed_on_timeout(reactor, executors, marker, mode):
    """A timeout reaches a daemon the task started in a session of its own, even though it
    ignores SIGTERM and holds none of the task's pipes: nothing of the task remains."""
    executor = executors(isolation=mode, kill_grace_seconds=0.5)
    job = {"command": ["sh", "-c", SETSID_DAEMON, "sh", marker], "timeoutSeconds": 1}
    attempt = await executor.start(1, "t", job).result
    assert attempt.timed_out and attempt.output_log == "started\n"
    assert "SIGTERM also sent to 1 process outside the task's process group" in \
        attempt.executor_log.splitlines()
    await wait_for(reactor, lambda: not live_processes_with(marker), "the daemon is gone")
    await wait_for(reactor, lambda: not orphan_zombies_of(os.getpid()), "no zombies")


@pytest_twisted.ensureDeferred
async def test_without_isolation_a_setsid_daemon_escapes(reactor, executors, marker):
    """With process groups only (isolation "session"), the daemon of the same task survives
    the timeout: the documented limit that the cgroup and subreaper mechanisms lift."""
    executor = executors(isolation="session", kill_grace_seconds=0.5)
    job = {"command": ["sh", "-c", SETSID_DAEMON, "sh", marker], "timeoutSeconds": 1}
    attempt = await executor.start(1, "t", job).result
    assert attempt.timed_out
    assert len(live_processes_with(marker)) == 1


@pytest.mark.parametrize("mode", ["cgroup", "subreaper"])
@pytest_twisted.ensureDeferred
async def test_orphaned_grandchild_is_killed_and_reaped(reactor, executors, marker, mode):
    """A double-forked grandchild (its parent gone, so not a descendant of the task any
    more) is killed with the task, and daggyd, its subreaper, leaves no zombie of it."""
    executor = executors(isolation=mode, kill_grace_seconds=0.5)
    execution = executor.start(1, "t", {"command": [sys.executable, "-c", DOUBLE_FORK, marker]})
    await wait_for(reactor, lambda: len(live_processes_with(marker)) == 2, "two sleeps")
    [orphan] = [pid for pid in live_processes_with(marker) if pid != execution.pid]
    assert int(stat_of(orphan)[1]) == os.getpid(), "re-parented to us, the subreaper"
    execution.kill("test")
    attempt = await execution.result
    assert attempt.killed and attempt.output_log == "orphaned\n"
    await wait_for(reactor, lambda: not live_processes_with(marker), "the orphan is gone")
    await wait_for(reactor, lambda: not orphan_zombies_of(os.getpid()), "no zombies")


@pytest_twisted.ensureDeferred
async def test_stopped_executor_leaves_no_cgroup(reactor, executors):
    """After stop(), the executor's cgroup directory (with every task cgroup) is gone."""
    executor = executors(isolation="cgroup")
    attempts = [await executor.start(1, f"t{n}", {"command": ["true"]}).result
                for n in range(3)]
    assert all(attempt.succeeded for attempt in attempts)
    base = executor._isolation.base
    assert os.path.isdir(base)
    await executor.stop()
    assert not os.path.exists(base)


@pytest_twisted.ensureDeferred
async def test_kill_nine_from_outside_is_a_failed_attempt(reactor, executors):
    """SIGKILL sent to the task by someone else ends the attempt as failed, not killed by
    daggyd, with the signal named and no exit code."""
    executor = executors()
    execution = executor.start(1, "t", {"command": ["sh", "-c", "echo up; exec sleep 100"]})
    await wait_for(reactor, lambda: (stat_of(execution.pid) or [""])[0] == "S", "sleeping")
    os.kill(execution.pid, signal.SIGKILL)
    attempt = await execution.result
    assert (attempt.rc, attempt.succeeded, attempt.killed) == (None, False, False)
    assert attempt.executor_log == "killed by signal SIGKILL"


@pytest_twisted.ensureDeferred
async def test_task_closing_its_output_early_is_waited_for(reactor, executors):
    """A task that closes stdout and stderr and goes on running is still waited for: the
    attempt ends when it exits, with its exit code."""
    executor = executors()
    started = time.monotonic()
    attempt = await executor.start(1, "t", {"command": [
        "sh", "-c", "echo early; exec >&- 2>&-; sleep 1; exit 3"]}).result
    assert time.monotonic() - started >= 1
    assert (attempt.rc, attempt.output_log, attempt.executor_log) == (
        3, "early\n", "exited with code 3")


@pytest_twisted.ensureDeferred
async def test_bytes_that_are_not_utf8_become_replacement_characters(reactor, executors):
    """Invalid UTF-8 becomes U+FFFD, NUL stays NUL, valid multi-byte characters survive, and
    a character cut by maxOutputBytes is dropped rather than replaced."""
    executor = executors(max_output_bytes=20)
    script = r"printf 'ok \377 \000 \303( \342\202\254 \355\240\200!\342\202\254'"
    attempt = await executor.start(1, "t", {"command": ["sh", "-c", script]}).result
    assert attempt.output_log == "ok \ufffd \x00 \ufffd( \u20ac \ufffd\ufffd\ufffd!"
    assert attempt.output_truncated
    json.loads(json.dumps(attempt.to_json()))


# -- a real daggyd -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def daggyd(daemons) -> Daemon:
    return daemons("daggyd", executor_config={
        "threads": 4, "killGraceSeconds": 0.5, "maxOutputBytes": DAEMON_MAX_OUTPUT})


def peak_rss(pid: int) -> int:
    """The peak resident set size of ``pid`` so far, in bytes (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for {pid}")


def test_daemon_memory_stays_bounded_under_a_gigabyte_of_stdout(daemons, tmp_path):
    """A task writing 1 GiB to stdout leaves daggyd's peak RSS within maxOutputBytes plus a
    fixed slack; the attempt keeps the first maxOutputBytes and says how much was dropped."""
    daemon = daemons("daggyd", executor_config={"maxOutputBytes": DAEMON_MAX_OUTPUT})
    pid = daemon.process.popen.pid
    before = peak_rss(pid)
    run_id = daemon.submit({"tasks": {"flood": {"job": {
        "command": ["head", "-c", str(GIB), "/dev/zero"]}}}})
    run = daemon.wait_run(run_id)
    growth = peak_rss(pid) - before
    [attempt] = run["taskAttempts"]["flood"]
    assert run["state"] == "COMPLETED" and attempt["rc"] == 0
    assert attempt["outputLog"] == "\0" * DAEMON_MAX_OUTPUT and attempt["outputTruncated"]
    assert (f"stdout truncated: kept the first {DAEMON_MAX_OUTPUT} of {GIB} bytes"
            in attempt["executorLog"])
    assert growth <= DAEMON_MAX_OUTPUT + RSS_SLACK, f"peak RSS grew by {growth >> 20} MiB"


def test_kill_nine_of_a_task_fails_it_and_retries_run_on(daggyd, tmp_path):
    """kill -9 of a task's process from outside fails that attempt (signal recorded), the
    task is retried as configured and then ERRORED, its child never runs, and an
    independent task still completes."""
    pid_file = tmp_path / "pid"
    run_id = daggyd.submit({"tasks": {
        "victim": {"job": {"command": ["sh", "-c", 'echo $$ > "$0"; exec sleep 100',
                                       str(pid_file)]},
                   "maxRetries": 1, "children": ["after"]},
        "after": {"job": {"command": ["true"]}},
        "bystander": {"job": {"command": ["sh", "-c", "sleep 0.5; echo fine"]}},
    }})
    killed = set()
    for _ in range(2):
        pid = wait_until(lambda: pid_file.exists() and pid_file.read_text().strip()
                         and int(pid_file.read_text()) not in killed
                         and int(pid_file.read_text()), "the victim's pid")
        pid_file.unlink()
        os.kill(pid, signal.SIGKILL)
        killed.add(pid)
    run = daggyd.wait_run(run_id)
    assert run["state"] == "ERRORED"
    assert run["taskStates"] == {"victim": "ERRORED", "after": "QUEUED",
                                 "bystander": "COMPLETED"}
    victim = run["taskAttempts"]["victim"]
    assert [a["executorLog"] for a in victim] == ["killed by signal SIGKILL"] * 2
    assert {a["executorState"]["pid"] for a in victim} == killed
    assert all(a["rc"] is None and not a["killed"] and not a["succeeded"] for a in victim)


def test_binary_output_is_served_as_valid_json(daggyd):
    """Bytes that are not UTF-8 come back from GET .../task/<name> as strict UTF-8 JSON
    with U+FFFD in their place; NUL and control characters arrive JSON-escaped."""
    name = "bin/ary ☃"
    script = r"printf 'a\377b\000c\033[0m\303(\342\202\254\n'; printf '\376\377' >&2"
    run_id = daggyd.submit({"tasks": {name: {"job": {"command": ["sh", "-c", script]}}}})
    daggyd.wait_run(run_id)
    reply = daggyd.http("GET", task_path(run_id, name))
    assert reply.status == 200
    task = json.loads(reply.raw.decode("utf-8"))  # strict: raises on invalid UTF-8
    [attempt] = task["attempts"]
    assert attempt["outputLog"] == "a\ufffdb\x00c\x1b[0m\ufffd(\u20ac\n"
    assert attempt["errorLog"] == "\ufffd\ufffd"
    assert b"\\u0000" in reply.raw and b"\x00" not in reply.raw
    lines = (daggyd.directory / "events.jsonl").read_bytes().decode("utf-8").splitlines()
    recorded = [json.loads(line)["attempt"] for line in lines
                if f'"runID":{run_id},' in line and '"taskAttempt"' in line]
    assert recorded == [attempt]


def test_run_kill_reaches_a_setsid_daemon_of_the_task(daggyd, marker):
    """Killing a run over the API also kills the daemon its task started in a new session;
    daggyd keeps no zombie of it."""
    daemon_pid = daggyd.process.popen.pid
    run_id = daggyd.submit({"tasks": {"t": {"job": {
        "command": [sys.executable, "-c", DOUBLE_FORK, marker]}}}})
    wait_until(lambda: len(live_processes_with(marker)) == 2, "the task and its daemon")
    assert daggyd.http("DELETE", f"/v1/dagrun/{run_id}").status == 200
    run = daggyd.wait_run(run_id)
    assert run["taskStates"]["t"] == "KILLED"
    wait_until(lambda: not live_processes_with(marker), "no process of the task", 10)
    wait_until(lambda: not orphan_zombies_of(daemon_pid), "no zombie under daggyd", 10)
