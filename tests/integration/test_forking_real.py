"""ForkingTaskExecutor with the real reactor and real processes."""

from __future__ import annotations

import os
import re
import signal
import sys

import pytest
import pytest_twisted
from twisted.internet.task import deferLater

from daggy.executors.forking import ForkingTaskExecutor

pytestmark = pytest.mark.integration

TEN_MIB = 10 * 1024 * 1024


@pytest.fixture
def reactor():
    from twisted.internet import reactor

    return reactor


@pytest.fixture
def executors(reactor):
    """``make(**options)``: ForkingTaskExecutors on the real reactor, stopped after the test
    so that each gives back its task cgroups and the subreaper flag."""
    made: list[ForkingTaskExecutor] = []

    def make(**options) -> ForkingTaskExecutor:
        made.append(ForkingTaskExecutor(reactor, **options))
        return made[-1]

    yield make
    for executor in made:
        executor.stop()


@pytest.fixture
def leftover_groups():
    """Process groups a test leaves behind on purpose; they are killed afterwards."""
    groups: list[int] = []
    yield groups
    for pgid in groups:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def live_members(pgid: int) -> list[int]:
    """Pids of the non-zombie processes in group ``pgid``.

    ``os.killpg(pgid, 0)`` is not enough on its own: where pid 1 does not reap orphans (as in
    some containers) a killed grandchild stays a zombie member of the group for ever.
    """
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return []
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # it exited while we looked
        state, group = fields[0], int(fields[2])
        if group == pgid and state not in ("Z", "X"):
            members.append(int(entry))
    return members


async def wait_until(reactor, predicate, timeout=10.0, interval=0.05):
    """Poll ``predicate`` on the reactor until it is true; fail after ``timeout`` seconds."""
    deadline = reactor.seconds() + timeout
    while not predicate():
        if reactor.seconds() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await deferLater(reactor, interval, lambda: None)


async def run(executor, job):
    return await executor.start(1, "task", job).result


@pytest_twisted.ensureDeferred
async def test_echo_output(reactor, executors):
    """/bin/echo's output is captured and the attempt succeeds."""
    attempt = await run(executors(), {"command": ["/bin/echo", "hello", "world"]})
    assert attempt.output_log == "hello world\n"
    assert (attempt.rc, attempt.succeeded, attempt.error_log) == (0, True, "")
    assert attempt.executor_log == "exited with code 0"


@pytest_twisted.ensureDeferred
async def test_exit_code_and_stderr(reactor, executors):
    """A non-zero exit code is recorded with the task's stderr."""
    attempt = await run(
        executors(), {"command": ["sh", "-c", "echo oops >&2; exit 3"]}
    )
    assert (attempt.rc, attempt.succeeded) == (3, False)
    assert attempt.error_log == "oops\n"
    assert attempt.executor_log == "exited with code 3"


@pytest_twisted.ensureDeferred
async def test_missing_binary(reactor, executors):
    """A program that does not exist gives a failed attempt without a process."""
    attempt = await run(executors(), {"command": ["/no/such/bin"]})
    assert (attempt.rc, attempt.succeeded) == (None, False)
    assert attempt.executor_log == "spawn failed: /no/such/bin: No such file or directory"


@pytest_twisted.ensureDeferred
async def test_ten_mebibytes_of_stdout(reactor, executors):
    """10 MiB of stdout is captured completely under the default limit."""
    command = ["sh", "-c", f"head -c {TEN_MIB} /dev/zero | tr '\\0' a"]
    attempt = await run(executors(), {"command": command})
    assert attempt.succeeded
    assert len(attempt.output_log) == TEN_MIB
    assert attempt.output_log.count("a") == TEN_MIB
    assert not attempt.output_truncated


@pytest_twisted.ensureDeferred
async def test_truncation_with_a_small_limit(reactor, executors):
    """Output past maxOutputBytes is dropped, flagged and counted in executorLog."""
    executor = executors(max_output_bytes=1000)
    command = ["sh", "-c", "head -c 1048576 /dev/zero | tr '\\0' b"]
    attempt = await run(executor, {"command": command})
    assert attempt.output_log == "b" * 1000
    assert attempt.output_truncated and not attempt.error_truncated
    assert "stdout truncated: kept the first 1000 of 1048576 bytes" in attempt.executor_log
    assert attempt.succeeded


@pytest.mark.parametrize("how", ["posix_spawn", "fork (workDir)", "setsid helper"])
@pytest_twisted.ensureDeferred
async def test_task_runs_in_its_own_process_group(reactor, executors, tmp_path, how):
    """The task's pid is its process group and session id, and is recorded in the attempt,
    whether it was spawned directly, forked (a workDir rules out posix_spawn) or through
    the setsid helper (the fallback when Twisted lacks the hooks)."""
    code = "import os; print(os.getpid(), os.getpgrp(), os.getsid(0))"
    executor = executors()
    job = {"command": [sys.executable, "-c", code]}
    if how == "fork (workDir)":
        job["workDir"] = str(tmp_path)
    elif how == "setsid helper":
        executor._setsid_path = "/usr/bin/setsid"
    attempt = await run(executor, job)
    pid, pgid, sid = map(int, attempt.output_log.split())
    assert pid == pgid == sid == attempt.executor_state["pid"]
    assert pgid != os.getpgrp()


@pytest.mark.parametrize("how", ["posix_spawn", "fork (workDir)", "setsid helper"])
@pytest_twisted.ensureDeferred
async def test_task_is_born_in_its_own_cgroup(reactor, executors, tmp_path, how):
    """With cgroup isolation the task's first instruction already runs in its own cgroup
    (daggyd spawns it from inside), however it was spawned; daggyd itself is back home."""
    try:
        executor = executors(isolation="cgroup")
    except ValueError as e:
        pytest.skip(str(e))
    before = open("/proc/self/cgroup").read()
    job = {"command": ["cat", "/proc/self/cgroup"]}
    if how == "fork (workDir)":
        job["workDir"] = str(tmp_path)
    elif how == "setsid helper":
        executor._setsid_path = "/usr/bin/setsid"
    attempt = await run(executor, job)
    [v2_line] = [line for line in attempt.output_log.splitlines() if line.startswith("0::")]
    base_name = os.path.basename(executor._isolation.base)
    assert re.search(rf"/{re.escape(base_name)}/t\d+$", v2_line), v2_line
    assert open("/proc/self/cgroup").read() == before


@pytest_twisted.ensureDeferred
async def test_argv_is_passed_unchanged(reactor, executors):
    """The task sees exactly the job's argv, argv[0] included, without a shell."""
    attempt = await run(executors(), {"command": ["cat", "/proc/self/cmdline"]})
    assert attempt.output_log.split("\0") == ["cat", "/proc/self/cmdline", ""]


@pytest_twisted.ensureDeferred
async def test_environment_and_work_dir(reactor, executors, tmp_path):
    """Job variables are added to the daemon's environment and workDir is the cwd."""
    executor = executors(environ={"PATH": os.defpath, "KEEP": "daemon"})
    job = {
        "command": ["sh", "-c", 'echo "$KEEP $DAGGY_X"; pwd'],
        "environment": {"DAGGY_X": "from job"},
        "workDir": str(tmp_path),
    }
    attempt = await run(executor, job)
    assert attempt.output_log == f"daemon from job\n{tmp_path}\n"


@pytest.mark.parametrize("work_dir", [False, True], ids=["posix_spawn", "fork"])
@pytest_twisted.ensureDeferred
async def test_task_inherits_no_descriptor_but_its_pipes(reactor, executors, monkeypatch,
                                                        tmp_path, work_dir):
    """A descriptor daggyd inherited (not close-on-exec) never reaches a task: the task has
    exactly stdin, stdout and stderr open."""
    from daggy.executors import _spawn

    monkeypatch.setattr(_spawn, "_inherited_descriptors_sealed", False)
    read_end, write_end = os.pipe()
    os.set_inheritable(write_end, True)
    try:
        job = {"command": [sys.executable, "-c",
                           "import os; print(sorted(map(int, os.listdir('/proc/self/fd'))))"]}
        if work_dir:
            job["workDir"] = str(tmp_path)
        attempt = await run(executors(), job)
    finally:
        os.close(read_end)
        os.close(write_end)
    # 3 is the listing's own descriptor for /proc/self/fd.
    assert attempt.output_log == "[0, 1, 2, 3]\n", attempt


@pytest_twisted.ensureDeferred
async def test_stdin_is_closed(reactor, executors):
    """A task reading stdin sees end-of-file at once instead of hanging."""
    attempt = await run(executors(), {"command": ["cat"], "timeoutSeconds": 10})
    assert (attempt.rc, attempt.output_log, attempt.timed_out) == (0, "", False)


@pytest_twisted.ensureDeferred
async def test_timeout_kills_the_grandchild_too(reactor, executors):
    """A timeout terminates the whole group, including a background grandchild."""
    executor = executors(kill_grace_seconds=5)
    job = {"command": ["sh", "-c", "sleep 100 & sleep 100"], "timeoutSeconds": 0.5}
    started = reactor.seconds()
    attempt = await run(executor, job)
    assert attempt.timed_out and not attempt.succeeded and attempt.rc is None
    assert attempt.executor_log.splitlines()[0] == "timed out after 0.5s"
    assert reactor.seconds() - started < 5, "SIGTERM alone should have ended it"
    pgid = attempt.executor_state["pid"]
    await wait_until(reactor, lambda: live_members(pgid) == [])


@pytest_twisted.ensureDeferred
async def test_sigterm_ignored_escalates_to_sigkill(reactor, executors):
    """Processes that ignore SIGTERM are killed with SIGKILL after the grace period."""
    executor = executors(kill_grace_seconds=0.5)
    job = {"command": ["sh", "-c", "trap '' TERM; sleep 100 & sleep 100"], "timeoutSeconds": 0.2}
    attempt = await run(executor, job)
    assert attempt.timed_out and attempt.rc is None
    assert "sent SIGKILL" in attempt.executor_log
    assert attempt.executor_log.splitlines()[-1] == "killed by signal SIGKILL"
    pgid = attempt.executor_state["pid"]
    await wait_until(reactor, lambda: live_members(pgid) == [])


def command_line(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return cmdline.read().decode().split("\0")[:-1]
    except OSError:
        return []


@pytest_twisted.ensureDeferred
async def test_kill_with_reason(reactor, executors):
    """kill() ends a running task and its reason is recorded."""
    executor = executors()
    job = {"command": ["sh", "-c", "echo started; exec sleep 100"]}
    execution = executor.start(1, "task", job)
    await wait_until(reactor, lambda: command_line(execution.pid) == ["sleep", "100"])
    execution.kill("user request")
    attempt = await execution.result
    assert attempt.killed and not attempt.succeeded
    assert attempt.output_log == "started\n"
    assert attempt.executor_log.splitlines() == [
        "killed: user request",
        "killed by signal SIGTERM",
    ]


@pytest_twisted.ensureDeferred
async def test_kill_right_after_start(reactor, executors):
    """A kill sent before the task has its own process group still ends it at once."""
    executor = executors()
    for _ in range(20):
        execution = executor.start(1, "task", {"command": ["sleep", "100"]})
        execution.kill("user request")
        attempt = await execution.result
        assert attempt.killed
        assert attempt.executor_log.splitlines()[-1] == "killed by signal SIGTERM"


@pytest_twisted.ensureDeferred
async def test_stop_kills_running_tasks(reactor, executors):
    """stop() kills every running task and fires once all have ended."""
    executor = executors()
    executions = [executor.start(1, f"t{n}", {"command": ["sleep", "100"]}) for n in range(3)]
    await executor.stop()
    for execution in executions:
        assert execution.result.called
        attempt = await execution.result
        assert attempt.killed
        assert "daemon shutting down" in attempt.executor_log


@pytest_twisted.ensureDeferred
async def test_background_process_holding_stdout_does_not_hang(reactor, executors, leftover_groups):
    """A task that exits leaving a background process on its stdout still ends after the grace."""
    executor = executors(kill_grace_seconds=0.5)
    started = reactor.seconds()
    attempt = await run(executor, {"command": ["sh", "-c", "sleep 30 & echo done"]})
    assert "pid" in attempt.executor_state, attempt
    leftover_groups.append(attempt.executor_state["pid"])
    assert reactor.seconds() - started < 10
    assert (attempt.rc, attempt.succeeded, attempt.output_log) == (0, True, "done\n")
    assert "stopped reading" in attempt.executor_log
