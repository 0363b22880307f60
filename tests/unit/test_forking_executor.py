"""ForkingTaskExecutor on a fake process reactor: no process is forked, time is a Clock."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal

import pytest
from twisted.internet.error import ProcessDone
from twisted.python.failure import Failure

from daggy.executors._isolation import (
    IsolationUnavailable,
    ProcessTreeScope,
    ProcStat,
    own_cgroup_dir,
    parse_stat,
    task_processes,
)
from daggy.executors._process import BoundedOutput, ProgramNotFound, decode_output, find_program
from daggy.executors.forking import ForkingTaskExecutor
from daggy.testing import FakeProcessReactor, result_of

SETSID = "/usr/bin/setsid"
PATH = "/usr/bin:/bin"
ENVIRON = {"PATH": PATH, "HOME": "/home/daggy", "LANG": "C.UTF-8"}
JOB_PATH = "tasks.pull.job"


@pytest.fixture
def reactor():
    reactor = FakeProcessReactor()
    yield reactor
    assert reactor.getDelayedCalls() == [], "a timer was left pending"


def make_executor(reactor, **kwargs):
    kwargs.setdefault("environ", ENVIRON)
    kwargs.setdefault("kill_grace_seconds", 5)
    return ForkingTaskExecutor(reactor, kill_group=reactor.kill_group, **kwargs)


def validate(job):
    return ForkingTaskExecutor(FakeProcessReactor()).validate_job(job, JOB_PATH)


# Validation


def test_valid_job_has_no_errors():
    """A job using every field correctly validates cleanly."""
    job = {
        "command": ["/bin/echo", "{{DATE}}"],
        "environment": {"A": "1"},
        "timeoutSeconds": 2.5,
        "workDir": "/tmp",
    }
    assert validate(job) == []


def test_job_must_be_an_object():
    """A job that is not an object is rejected with the job's own path."""
    assert validate(["echo"]) == ["tasks.pull.job: must be an object"]


def test_command_is_required():
    """A job without a command names the missing field."""
    assert validate({}) == ["tasks.pull.job.command: is required (a non-empty list of strings)"]


@pytest.mark.parametrize("command", ["echo hi", [], None, {"0": "echo"}])
def test_command_must_be_a_non_empty_list(command):
    """A command that is a string, empty or not a list is rejected."""
    assert validate({"command": command}) == [
        "tasks.pull.job.command: must be a non-empty list of strings"
    ]


def test_command_elements_must_be_strings():
    """Each non-string argument is reported with its index."""
    assert validate({"command": ["echo", 1, "x", None]}) == [
        "tasks.pull.job.command[1]: must be a string",
        "tasks.pull.job.command[3]: must be a string",
    ]


def test_command_program_must_not_be_empty():
    """An empty program name cannot be executed and is rejected."""
    assert validate({"command": ["", "x"]}) == [
        "tasks.pull.job.command[0]: must name the program (it is empty)"
    ]


@pytest.mark.parametrize("timeout", [0, -1, "5", True, None, float("nan"), float("inf")])
def test_timeout_must_be_a_positive_number(timeout):
    """timeoutSeconds rejects zero, negatives, strings, booleans, null and non-finite values."""
    assert validate({"command": ["true"], "timeoutSeconds": timeout}) == [
        "tasks.pull.job.timeoutSeconds: must be a number > 0"
    ]


@pytest.mark.parametrize("timeout", [1, 0.5, 86400])
def test_timeout_accepts_positive_numbers(timeout):
    """timeoutSeconds accepts integers and fractions above zero."""
    assert validate({"command": ["true"], "timeoutSeconds": timeout}) == []


def test_unknown_field_is_an_error():
    """A misspelt or unknown job field is rejected, listing the allowed ones."""
    assert validate({"command": ["true"], "colour": "red"}) == [
        "tasks.pull.job.colour: unknown job field"
        " (allowed: command, environment, secretEnvironment, timeoutSeconds, workDir)"
    ]


def test_environment_must_map_names_to_strings():
    """environment must be an object whose values are strings, each error naming the variable."""
    assert validate({"command": ["true"], "environment": ["A=1"]}) == [
        "tasks.pull.job.environment: must be an object of strings"
    ]
    assert validate({"command": ["true"], "environment": {"A": 1, "B": "ok"}}) == [
        "tasks.pull.job.environment.A: must be a string"
    ]


def test_environment_names_must_be_usable():
    """Variable names that are empty or contain '=' are rejected."""
    errors = validate({"command": ["true"], "environment": {"A=B": "1", "": "2"}})
    assert len(errors) == 2
    assert all("variable names must be non-empty" in error for error in errors)


def test_nul_characters_are_rejected():
    """NUL cannot be passed to exec, so it is reported in arguments, values and workDir."""
    errors = validate(
        {"command": ["echo", "a\0b"], "environment": {"A": "x\0"}, "workDir": "/tmp\0"}
    )
    assert errors == [
        "tasks.pull.job.command[1]: must not contain NUL characters",
        "tasks.pull.job.environment.A: must not contain NUL characters",
        "tasks.pull.job.workDir: must not contain NUL characters",
    ]


@pytest.mark.parametrize("work_dir", ["", 3, None])
def test_work_dir_must_be_a_non_empty_string(work_dir):
    """workDir must be a non-empty string."""
    assert validate({"command": ["true"], "workDir": work_dir}) == [
        "tasks.pull.job.workDir: must be a non-empty string"
    ]


def test_every_problem_is_reported_at_once():
    """Validation does not stop at the first error."""
    errors = validate({"command": [], "timeoutSeconds": -1, "shell": True})
    assert len(errors) == 3


# Construction


def test_capacity_and_templatable_fields():
    """capacity is the thread count and command, environment and workDir are templated."""
    executor = ForkingTaskExecutor(FakeProcessReactor(), threads=3)
    assert executor.capacity == 3
    assert executor.templatable_fields == ("command", "environment", "workDir")


@pytest.mark.parametrize(
    "kwargs",
    [{"threads": 0}, {"threads": True}, {"max_output_bytes": -1}, {"kill_grace_seconds": -1}],
)
def test_bad_configuration_is_refused(kwargs):
    """Nonsensical configuration values raise ValueError at construction."""
    with pytest.raises(ValueError):
        ForkingTaskExecutor(FakeProcessReactor(), **kwargs)


# Spawning


def test_command_runs_under_setsid_with_its_own_argv(reactor):
    """The command is exec'd through setsid with argv unchanged, no shell and stdin closed."""
    executor = make_executor(reactor)
    executor.start(1, "pull", {"command": ["echo", "a b", "$HOME"]})
    process = reactor.last_process
    assert process.executable == SETSID
    assert process.args == [SETSID, "--", "echo", "a b", "$HOME"]
    assert process.path is None
    assert 0 in process.closed_fds
    process.exit(0)


def test_environment_is_daemon_environment_plus_job_environment(reactor):
    """The child gets the daemon's environment with the job's variables added and overriding."""
    executor = make_executor(reactor)
    executor.start(1, "pull", {"command": ["true"], "environment": {"HOME": "/x", "DATE": "1"}})
    process = reactor.last_process
    assert process.env == {"PATH": PATH, "HOME": "/x", "LANG": "C.UTF-8", "DATE": "1"}
    process.exit(0)


def test_default_environment_is_a_snapshot_of_os_environ(reactor, monkeypatch):
    """Without ``environ`` the daemon's os.environ at construction time is used."""
    monkeypatch.setenv("DAGGY_TEST_BEFORE", "yes")
    executor = ForkingTaskExecutor(reactor, kill_group=reactor.kill_group)
    monkeypatch.setenv("DAGGY_TEST_AFTER", "yes")
    executor.start(1, "pull", {"command": ["/bin/true"]})
    process = reactor.last_process
    assert process.env["DAGGY_TEST_BEFORE"] == "yes"
    assert "DAGGY_TEST_AFTER" not in process.env
    process.exit(0)


def test_work_dir_becomes_the_child_cwd(reactor, tmp_path):
    """workDir is passed as the child's working directory."""
    executor = make_executor(reactor)
    executor.start(1, "pull", {"command": ["true"], "workDir": str(tmp_path)})
    assert reactor.last_process.path == str(tmp_path)
    reactor.last_process.exit(0)


def test_program_is_looked_up_in_the_job_path(reactor, tmp_path):
    """A bare program name is found through the PATH the job sets, keeping argv[0] as written."""
    tool = tmp_path / "mytool"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    executor = make_executor(reactor)
    executor.start(1, "pull", {"command": ["mytool"], "environment": {"PATH": str(tmp_path)}})
    assert reactor.last_process.args == [SETSID, "--", "mytool"]
    reactor.last_process.exit(0)


# Results


def test_successful_exit_records_output_and_times(reactor):
    """A zero exit gives a succeeded attempt with both streams, pid and reactor times."""
    reactor.advance(100)
    executor = make_executor(reactor)
    execution = executor.start(1, "pull", {"command": ["true"]})
    process = reactor.last_process
    process.send_stdout(b"hello ")
    process.send_stderr(b"warn\n")
    process.send_stdout("wörld\n".encode())
    reactor.advance(7)
    assert not execution.result.called
    process.exit(0)
    attempt = result_of(execution.result)
    assert (attempt.start_time, attempt.stop_time) == (100, 107)
    assert attempt.rc == 0
    assert attempt.succeeded
    assert attempt.output_log == "hello wörld\n"
    assert attempt.error_log == "warn\n"
    assert attempt.executor_log == "exited with code 0"
    assert not (attempt.killed or attempt.timed_out)
    assert not (attempt.output_truncated or attempt.error_truncated)
    assert attempt.executor_state == {"pid": process.original_pid}


def test_non_zero_exit_fails(reactor):
    """An exit code other than 0 is recorded as rc and the attempt fails."""
    execution = make_executor(reactor).start(1, "pull", {"command": ["false"]})
    reactor.last_process.exit(3)
    attempt = result_of(execution.result)
    assert (attempt.rc, attempt.succeeded) == (3, False)
    assert attempt.executor_log == "exited with code 3"


def test_death_by_signal_has_no_exit_code(reactor):
    """A child killed by a signal has rc None and the signal's name in executorLog."""
    execution = make_executor(reactor).start(1, "pull", {"command": ["true"]})
    reactor.last_process.die(signal.SIGSEGV)
    attempt = result_of(execution.result)
    assert (attempt.rc, attempt.succeeded) == (None, False)
    assert attempt.executor_log == "killed by signal SIGSEGV"


def test_invalid_utf8_is_replaced(reactor):
    """Output that is not UTF-8 is decoded with replacement characters, never an error."""
    execution = make_executor(reactor).start(1, "pull", {"command": ["true"]})
    reactor.last_process.send_stdout(b"ok \xff\xfe end")
    reactor.last_process.exit(0)
    assert result_of(execution.result).output_log == "ok \ufffd\ufffd end"


def test_output_beyond_the_limit_is_dropped(reactor):
    """Each stream keeps its first max_output_bytes; the attempt says how much was written."""
    execution = make_executor(reactor, max_output_bytes=10).start(1, "pull", {"command": ["true"]})
    process = reactor.last_process
    process.send_stdout(b"123456")
    process.send_stdout(b"7890ab")
    process.send_stdout(b"x" * 100)
    process.send_stderr(b"short")
    process.exit(0)
    attempt = result_of(execution.result)
    assert attempt.output_log == "1234567890"
    assert attempt.output_truncated
    assert attempt.error_log == "short"
    assert not attempt.error_truncated
    assert attempt.succeeded
    assert attempt.executor_log == (
        "exited with code 0\nstdout truncated: kept the first 10 of 112 bytes"
    )


def test_bounded_output_stores_at_most_the_limit():
    """Memory stays bounded: bytes past the limit are counted but not stored."""
    output = BoundedOutput(1024)
    for _ in range(1000):
        output.add(b"y" * 4096)
    assert sum(len(chunk) for chunk in output._chunks) == 1024
    assert (output.kept, output.total, output.truncated) == (1024, 4096 * 1000, True)


# Timeout and kill


def test_timeout_sends_term_then_kill(reactor):
    """At timeoutSeconds the group gets SIGTERM, and SIGKILL kill_grace_seconds later."""
    job = {"command": ["sleep", "100"], "timeoutSeconds": 30}
    execution = make_executor(reactor).start(1, "pull", job)
    process = reactor.last_process
    reactor.advance(29.9)
    assert process.group_signals == []
    reactor.advance(0.1)
    assert process.group_signals == [signal.SIGTERM]
    reactor.advance(4.9)
    assert process.group_signals == [signal.SIGTERM]
    reactor.advance(0.1)
    assert process.group_signals == [signal.SIGTERM, signal.SIGKILL]
    assert not execution.result.called
    process.die(signal.SIGKILL)
    attempt = result_of(execution.result)
    assert attempt.timed_out and not attempt.killed and not attempt.succeeded
    assert attempt.rc is None
    assert attempt.executor_log.splitlines() == [
        "timed out after 30s",
        "still running 5s after SIGTERM: sent SIGKILL",
        "killed by signal SIGKILL",
    ]
    assert attempt.stop_time - attempt.start_time == 35


def test_exit_after_term_cancels_the_kill(reactor):
    """A process that exits on SIGTERM is not sent SIGKILL and no timer is left behind."""
    job = {"command": ["sleep", "9"], "timeoutSeconds": 1}
    execution = make_executor(reactor).start(1, "pull", job)
    process = reactor.last_process
    reactor.advance(1)
    process.die("TERM")
    reactor.advance(10)
    assert process.group_signals == [signal.SIGTERM]
    attempt = result_of(execution.result)
    assert attempt.executor_log == "timed out after 1s\nkilled by signal SIGTERM"


def test_group_members_left_after_a_kill_get_sigkill(reactor):
    """When the child dies of SIGTERM but its group lives on, the group is sent SIGKILL at once."""
    execution = make_executor(reactor).start(1, "pull", {"command": ["sleep", "9"]})
    process = reactor.last_process
    execution.kill("user request")
    process.lingering = True
    process.die("TERM")
    assert process.group_signals == [signal.SIGTERM, signal.SIGKILL]
    assert result_of(execution.result).killed


def test_normal_exit_cancels_the_timeout(reactor):
    """A process that ends before its timeout is never signalled."""
    job = {"command": ["true"], "timeoutSeconds": 60}
    execution = make_executor(reactor).start(1, "pull", job)
    reactor.last_process.exit(0)
    reactor.advance(120)
    assert reactor.last_process.group_signals == []
    assert result_of(execution.result).succeeded


def test_kill_terminates_the_group_with_the_reason(reactor):
    """kill() sends SIGTERM now, SIGKILL after the grace, and records killed with the reason."""
    execution = make_executor(reactor).start(1, "pull", {"command": ["sleep", "9"]})
    process = reactor.last_process
    execution.kill("user request")
    execution.kill("second request")
    assert process.group_signals == [signal.SIGTERM]
    reactor.advance(5)
    assert process.group_signals == [signal.SIGTERM, signal.SIGKILL]
    process.die("KILL")
    attempt = result_of(execution.result)
    assert attempt.killed and not attempt.timed_out and not attempt.succeeded
    assert attempt.executor_log.splitlines()[0] == "killed: user request"


def test_kill_wins_even_if_the_process_exits_zero(reactor):
    """An attempt that was killed never counts as succeeded, whatever its exit code."""
    execution = make_executor(reactor).start(1, "pull", {"command": ["true"]})
    execution.kill("user request")
    reactor.last_process.exit(0)
    attempt = result_of(execution.result)
    assert (attempt.rc, attempt.killed, attempt.succeeded) == (0, True, False)


def test_kill_after_the_end_does_nothing(reactor):
    """Killing a finished attempt sends no signal and changes nothing."""
    execution = make_executor(reactor).start(1, "pull", {"command": ["true"]})
    reactor.last_process.exit(0)
    execution.kill("late")
    assert reactor.last_process.group_signals == []
    assert result_of(execution.result).succeeded


def test_kill_during_timeout_grace_marks_both(reactor):
    """A kill during the timeout's grace period records both, without restarting the grace."""
    job = {"command": ["sleep", "9"], "timeoutSeconds": 1}
    execution = make_executor(reactor).start(1, "pull", job)
    process = reactor.last_process
    reactor.advance(1)
    execution.kill("user request")
    reactor.advance(5)
    assert process.group_signals == [signal.SIGTERM, signal.SIGKILL]
    process.die("KILL")
    attempt = result_of(execution.result)
    assert attempt.killed and attempt.timed_out


def test_signal_reaches_the_child_before_it_has_its_own_group(reactor):
    """If the group does not exist yet (setsid not run), the child's pid is signalled instead."""

    def no_such_group(pgid, signum):
        raise ProcessLookupError(errno.ESRCH, "No such process")

    executor = ForkingTaskExecutor(reactor, environ=ENVIRON, kill_group=no_such_group)
    execution = executor.start(1, "pull", {"command": ["sleep", "9"]})
    process = reactor.last_process
    execution.kill("user request")
    assert process.signals == [signal.SIGTERM]
    process.die("TERM")
    assert result_of(execution.result).killed


def test_output_held_open_by_a_background_process_is_abandoned(reactor):
    """If output pipes stay open kill_grace_seconds after the child exited, the attempt ends."""
    execution = make_executor(reactor).start(1, "pull", {"command": ["sh", "-c", "sleep 99 &"]})
    process = reactor.last_process
    process.send_stdout(b"started\n")
    process.exit(0, pipes_open=True)
    reactor.advance(4.9)
    assert not execution.result.called
    reactor.advance(0.1)
    assert process.lost_connection
    attempt = result_of(execution.result)
    assert attempt.succeeded and attempt.output_log == "started\n"
    assert "stopped reading" in attempt.executor_log
    assert process.group_signals == []


def test_output_closed_soon_after_exit_is_kept(reactor):
    """Pipes that close within the grace period end the attempt normally, cancelling the wait."""
    execution = make_executor(reactor).start(1, "pull", {"command": ["true"]})
    process = reactor.last_process
    process.exit(0, pipes_open=True)
    reactor.advance(1)
    process.send_stdout(b"late output")
    process.close_pipes()
    attempt = result_of(execution.result)
    assert attempt.output_log == "late output"
    assert attempt.executor_log == "exited with code 0"


class ExitsDuringSpawnReactor(FakeProcessReactor):
    """The real reactor may reap a child that exits at once before spawnProcess returns."""

    def spawnProcess(self, *args, **kwargs):
        process = super().spawnProcess(*args, **kwargs)
        process.exit(0, pipes_open=True)
        return process


def test_child_reaped_inside_spawn_process_keeps_its_pid():
    """A child reaped before spawnProcess returns is still tracked by pid and drained."""
    reactor = ExitsDuringSpawnReactor()
    execution = make_executor(reactor).start(1, "pull", {"command": ["true"]})
    process = reactor.last_process
    assert process.pid is None
    execution.kill("user request")
    assert process.group_signals == [signal.SIGTERM]
    reactor.advance(10)
    attempt = result_of(execution.result)
    assert attempt.executor_state == {"pid": process.original_pid}
    assert attempt.killed
    assert reactor.getDelayedCalls() == []


def test_a_second_process_ended_is_ignored(reactor):
    """The result fires once; a repeated processEnded changes nothing and raises nothing."""
    execution = make_executor(reactor).start(1, "pull", {"command": ["false"]})
    process = reactor.last_process
    process.exit(1)
    process.protocol.processEnded(Failure(ProcessDone(0)))
    assert result_of(execution.result).rc == 1


# Spawn failures


def start_failed(reactor, job):
    execution = make_executor(reactor).start(1, "pull", job)
    assert reactor.processes == []
    attempt = result_of(execution.result)
    assert (attempt.rc, attempt.succeeded, attempt.killed) == (None, False, False)
    execution.kill("no effect")
    return attempt


def test_missing_binary_is_a_failed_attempt(reactor):
    """A program path that does not exist gives a failed attempt, not an exception."""
    attempt = start_failed(reactor, {"command": ["/no/such/bin", "x"]})
    assert attempt.executor_log == "spawn failed: /no/such/bin: No such file or directory"


def test_program_not_in_path_is_a_failed_attempt(reactor):
    """A bare program name missing from PATH names the PATH that was searched."""
    attempt = start_failed(reactor, {"command": ["no-such-program-daggy"]})
    assert attempt.executor_log == (
        f"spawn failed: no-such-program-daggy: command not found in PATH={PATH}"
    )


def test_non_executable_file_is_a_failed_attempt(reactor, tmp_path):
    """A file without execute permission cannot be started."""
    script = tmp_path / "script.sh"
    script.write_text("echo hi\n")
    script.chmod(0o644)
    attempt = start_failed(reactor, {"command": [str(script)]})
    # Even root needs an execute bit, so this holds for every user.
    assert attempt.executor_log == f"spawn failed: {script}: Permission denied"


def test_directory_as_program_is_a_failed_attempt(reactor, tmp_path):
    """A directory is not a program."""
    attempt = start_failed(reactor, {"command": [str(tmp_path)]})
    assert attempt.executor_log == f"spawn failed: {tmp_path}: Is a directory"


def test_bad_work_dir_is_a_failed_attempt(reactor, tmp_path):
    """A workDir that is missing or not a directory gives a failed attempt."""
    attempt = start_failed(reactor, {"command": ["true"], "workDir": "/no/such/dir"})
    assert attempt.executor_log == "spawn failed: workDir /no/such/dir: No such file or directory"
    a_file = tmp_path / "file"
    a_file.write_text("")
    attempt = start_failed(reactor, {"command": ["true"], "workDir": str(a_file)})
    assert attempt.executor_log == f"spawn failed: workDir {a_file}: Not a directory"


def test_relative_program_is_resolved_in_work_dir(reactor, tmp_path):
    """A program path with a slash is relative to workDir, where the child will run."""
    script = tmp_path / "run.sh"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    executor = make_executor(reactor)
    executor.start(1, "pull", {"command": ["./run.sh"], "workDir": str(tmp_path)})
    assert reactor.last_process.args == [SETSID, "--", "./run.sh"]
    reactor.last_process.exit(0)


def test_nul_from_a_parameter_value_is_a_failed_attempt(reactor):
    """A NUL that reached the job through expansion gives a failed attempt, not an exception."""
    attempt = start_failed(reactor, {"command": ["ec\0ho"]})
    assert attempt.executor_log == "spawn failed: 'ec\\x00ho': contains a NUL character"
    attempt = start_failed(reactor, {"command": ["true"], "workDir": "/tmp\0"})
    assert attempt.executor_log == "spawn failed: workDir '/tmp\\x00': contains a NUL character"


def test_nul_in_an_argument_is_a_failed_attempt(reactor):
    """spawnProcess refusing an argument (ValueError) gives a failed attempt."""
    reactor.spawn_error = ValueError("embedded null byte")
    attempt = result_of(make_executor(reactor).start(1, "pull", {"command": ["true"]}).result)
    assert attempt.executor_log == "spawn failed: embedded null byte"


def test_spawn_process_raising_is_a_failed_attempt(reactor):
    """An OSError from spawnProcess (e.g. too many processes) gives a failed attempt."""
    reactor.spawn_error = OSError(errno.EAGAIN, "Resource temporarily unavailable")
    execution = make_executor(reactor).start(1, "pull", {"command": ["true"]})
    attempt = result_of(execution.result)
    assert attempt.executor_log == "spawn failed: [Errno 11] Resource temporarily unavailable"
    assert (attempt.rc, attempt.succeeded) == (None, False)


def test_missing_setsid_is_a_failed_attempt(reactor):
    """Without the setsid helper nothing is spawned and the attempt says why."""
    executor = ForkingTaskExecutor(
        reactor, environ=ENVIRON, kill_group=reactor.kill_group, setsid_path="/no/setsid"
    )
    attempt = result_of(executor.start(1, "pull", {"command": ["true"]}).result)
    assert attempt.executor_log == "spawn failed: /no/setsid: No such file or directory"


def test_find_program_follows_path_order(tmp_path):
    """The first executable match in PATH wins, and a missing one raises ProgramNotFound."""
    first, second = tmp_path / "a", tmp_path / "b"
    for directory in (first, second):
        directory.mkdir()
        tool = directory / "tool"
        tool.write_text("")
        tool.chmod(0o755)
    (first / "tool").chmod(0o644)
    assert find_program("tool", f"{first}:{second}", "/") == str(second / "tool")
    with pytest.raises(ProgramNotFound):
        find_program("tool", str(first), "/")


# Stop


def test_stop_kills_everything_and_waits(reactor):
    """stop() kills every running attempt and fires only after the last one ended."""
    executor = make_executor(reactor)
    first = executor.start(1, "a", {"command": ["sleep", "9"]})
    second = executor.start(1, "b", {"command": ["sleep", "9"]})
    assert executor.running_count == 2
    stopped = executor.stop()
    one, two = reactor.processes
    assert one.group_signals == two.group_signals == [signal.SIGTERM]
    one.die("TERM")
    assert not stopped.called
    reactor.advance(5)
    assert two.group_signals == [signal.SIGTERM, signal.SIGKILL]
    two.die("KILL")
    assert result_of(stopped) is None
    for execution in (first, second):
        attempt = result_of(execution.result)
        assert attempt.killed
        assert "killed: daemon shutting down" in attempt.executor_log
    assert executor.running_count == 0


def test_stop_with_nothing_running_fires_at_once(reactor):
    """stop() on an idle executor has already fired."""
    assert result_of(make_executor(reactor).stop()) is None


def test_start_after_stop_is_refused(reactor):
    """Once stopped, start() spawns nothing and reports a killed attempt."""
    executor = make_executor(reactor)
    executor.stop()
    attempt = result_of(executor.start(1, "a", {"command": ["true"]}).result)
    assert reactor.processes == []
    assert attempt.killed and not attempt.succeeded
    assert attempt.executor_log == "not started: daemon shutting down"


def test_start_beyond_capacity_still_runs(reactor):
    """The executor does not queue: the runner owns the limit, extra starts run anyway."""
    executor = make_executor(reactor, threads=1)
    executor.start(1, "a", {"command": ["true"]})
    executor.start(1, "b", {"command": ["true"]})
    assert len(reactor.running_processes()) == 2
    for process in reactor.processes:
        process.exit(0)


# Output decoding


@pytest.mark.parametrize("data, cut, text", [
    (b"plain", False, "plain"),
    (b"a\xffb", False, "a\ufffdb"),
    (b"nul\x00esc\x1b", False, "nul\x00esc\x1b"),
    (b"\xed\xa0\x80", False, "\ufffd\ufffd\ufffd"),  # an encoded surrogate is not UTF-8
    (b"\xc3(", False, "\ufffd("),
    (b"euro \xe2\x82", False, "euro \ufffd"),
    (b"euro \xe2\x82", True, "euro "),
    (b"\xff\xe2\x82\xac", True, "\ufffd\u20ac"),
])
def test_output_is_decoded_to_text_any_json_encoder_can_write(data, cut, text):
    """Task bytes become text with U+FFFD for what is not UTF-8 (never a lone surrogate);
    a character cut by the output limit is dropped, not replaced."""
    assert decode_output(data, cut=cut) == text
    assert json.loads(json.dumps(text)) == text
    text.encode("utf-8")  # strict: no surrogates


def test_a_character_cut_by_the_limit_is_dropped(reactor):
    """When maxOutputBytes ends inside a multi-byte character, the partial character is
    left out of outputLog instead of becoming U+FFFD."""
    execution = make_executor(reactor, max_output_bytes=4).start(1, "pull", {"command": ["true"]})
    reactor.last_process.send_stdout("ab\u20ac".encode())
    reactor.last_process.exit(0)
    attempt = result_of(execution.result)
    assert (attempt.output_log, attempt.output_truncated) == ("ab", True)


# Isolation: the executor's use of a scope


class FakeScope:
    """Records what the executor asks of it."""

    def __init__(self, reactor, others=2):
        self.reactor = reactor
        self.environment = {"DAGGY_TASK_ID": "7.1.1"}
        self.events = []
        self.others = others

    @contextlib.contextmanager
    def spawning(self):
        self.events.append(("enter", len(self.reactor.processes)))
        try:
            yield
        finally:
            self.events.append(("leave", len(self.reactor.processes)))

    def started(self, pid):
        self.events.append(("started", pid))

    def task_reaped(self):
        if ("reaped",) not in self.events:
            self.events.append(("reaped",))

    def signal(self, signum, skip_group):
        self.events.append(("signal", signum, skip_group))
        return self.others

    def release(self):
        self.events.append(("release",))


class FakeIsolation:
    mode = "fake"
    why_not_stronger = ""

    def __init__(self, reactor, others=2):
        self.scopes = []
        self.closed = 0
        self._reactor = reactor
        self._others = others

    def new_scope(self):
        self.scopes.append(FakeScope(self._reactor, self._others))
        return self.scopes[-1]

    def close(self):
        self.closed += 1


def test_task_is_spawned_inside_its_scope_with_the_scope_environment(reactor):
    """The spawn happens inside the scope's context, the scope learns the pid, and the
    scope's variables are laid over the job's (a job cannot override them)."""
    isolation = FakeIsolation(reactor)
    executor = make_executor(reactor, isolation=isolation)
    executor.start(1, "pull", {"command": ["true"],
                               "environment": {"DAGGY_TASK_ID": "forged", "X": "1"}})
    process = reactor.last_process
    [scope] = isolation.scopes
    assert scope.events == [("enter", 0), ("started", process.pid), ("leave", 1)]
    assert process.env["DAGGY_TASK_ID"] == "7.1.1" and process.env["X"] == "1"
    process.exit(0)
    assert scope.events[3:] == [("reaped",), ("release",)]
    assert executor.isolation == "fake"


def test_kill_signals_the_group_then_the_rest_of_the_task(reactor):
    """A kill sends SIGTERM to the group and then to the scope (group members left out);
    SIGKILL goes to both after the grace and once more when the task has ended; the scope is
    released after that, and executorLog counts the processes outside the group."""
    isolation = FakeIsolation(reactor)
    execution = make_executor(reactor, isolation=isolation).start(1, "pull", {"command": ["true"]})
    process = reactor.last_process
    [scope] = isolation.scopes
    pid = execution.pid
    execution.kill("user request")
    reactor.advance(5)
    process.die("KILL")
    assert process.group_signals == [signal.SIGTERM, signal.SIGKILL]
    assert [event for event in scope.events if event[0] in ("signal", "release")] == [
        ("signal", signal.SIGTERM, pid), ("signal", signal.SIGKILL, pid),
        ("signal", signal.SIGKILL, None), ("release",)]
    attempt = result_of(execution.result)
    assert attempt.executor_log.splitlines() == [
        "killed: user request",
        "SIGTERM also sent to 2 processes outside the task's process group",
        "still running 5s after SIGTERM: sent SIGKILL",
        "killed by signal SIGKILL",
    ]


def test_a_task_ending_by_itself_only_releases_its_scope(reactor):
    """Without a kill or timeout nothing is signalled; the scope is released."""
    isolation = FakeIsolation(reactor)
    make_executor(reactor, isolation=isolation).start(1, "pull", {"command": ["true"]})
    reactor.last_process.exit(1)
    [scope] = isolation.scopes
    assert not [event for event in scope.events if event[0] == "signal"]
    assert scope.events[-1] == ("release",)


def test_the_scope_of_a_failed_spawn_is_released(reactor):
    """When spawnProcess raises, the scope is left and released at once."""
    isolation = FakeIsolation(reactor)
    reactor.spawn_error = OSError(errno.EAGAIN, "Resource temporarily unavailable")
    execution = make_executor(reactor, isolation=isolation).start(1, "pull", {"command": ["true"]})
    assert result_of(execution.result).executor_log.startswith("spawn failed:")
    [scope] = isolation.scopes
    assert scope.events[0][0] == "enter" and scope.events[-1] == ("release",)
    assert ("leave", 0) in scope.events


def test_stop_closes_the_isolation_once_every_task_ended(reactor):
    """The isolation is closed exactly once, after the last attempt of a stopped executor."""
    isolation = FakeIsolation(reactor, others=0)
    executor = make_executor(reactor, isolation=isolation)
    executor.start(1, "pull", {"command": ["true"]})
    stopped = executor.stop()
    assert isolation.closed == 0
    reactor.last_process.die("TERM")
    assert result_of(stopped) is None and isolation.closed == 1
    executor.stop()
    assert isolation.closed == 1


def test_auto_isolation_on_a_fake_reactor_uses_process_groups_only(reactor):
    """"auto" never touches cgroups or the subreaper flag for a reactor that is not real."""
    assert make_executor(reactor).isolation == "session"
    assert make_executor(reactor, isolation="session").isolation == "session"


def test_unknown_isolation_is_refused(reactor):
    """An isolation name that does not exist is a configuration error."""
    with pytest.raises(ValueError, match="isolation must be one of auto, cgroup"):
        make_executor(reactor, isolation="jail")


# Isolation: finding a task's processes


def test_stat_is_parsed_past_a_command_name_with_parentheses():
    """The command name may contain spaces and ')': fields are read after its last ')'."""
    stat = parse_stat(b"42 (a) b (c)) S 7 40 39 0 -1 4194560 0 0")
    assert stat == ProcStat(ppid=7, pgid=40, sid=39, state="S") and stat.alive
    assert not parse_stat(b"43 (x) Z 1 43 43 0").alive


DAEMON = 100
TASK = 200


def table(**rows):
    """pid=ppid,pgid,sid,state"""
    return {int(pid[1:]): ProcStat(*map(int, row[:3]), row[3]) for pid, row in rows.items()}


PROCESSES = table(
    p1=(0, 1, 1, "S"),
    p100=(1, 100, 1, "S"),          # daggyd
    p200=(100, 200, 200, "S"),      # the task
    p201=(200, 200, 200, "S"),      # its child, in its group
    p202=(200, 202, 200, "S"),      # a job-control group of its session
    p203=(200, 203, 203, "S"),      # a child that called setsid
    p204=(203, 204, 204, "S"),      # ... and its own setsid'd child
    p205=(200, 200, 200, "Z"),      # a zombie child
    p300=(100, 300, 300, "S"),      # an orphan of the task (carries its id)
    p301=(300, 301, 301, "S"),      # the orphan's child
    p400=(100, 400, 400, "S"),      # another task
    p401=(100, 401, 401, "S"),      # an orphan of the other task
    p500=(1, 500, 500, "S"),        # unrelated
)


def test_task_processes_follow_sessions_groups_parents_and_the_task_id():
    """The task, its session, its group, its descendants, the daemon's orphans carrying the
    task's id and their descendants; never zombies, the daemon, pid 1 or other tasks."""
    def carries(pid):
        return pid == 300

    found = task_processes(PROCESSES, TASK, False, DAEMON, carries)
    assert found == [200, 201, 202, 203, 204, 300, 301]


def test_a_reaped_task_pid_is_not_trusted():
    """Once the task is reaped its pid may be someone else's: a process with that pid
    outside the task's session and group is left alone."""
    processes = table(p100=(1, 100, 1, "S"), p200=(1, 600, 600, "S"), p201=(1, 200, 200, "S"))
    assert task_processes(processes, TASK, True, DAEMON, lambda pid: False) == [201]
    assert task_processes(processes, TASK, False, DAEMON, lambda pid: False) == [200, 201]


def test_process_tree_scope_signals_what_the_proc_walk_finds(tmp_path):
    """The subreaper scope reads a /proc, finds the task's processes (orphans of the daemon
    by their environment) and signals those outside the already signalled group."""
    daemon = os.getpid()

    def process(pid, ppid, pgid, sid, environ=b""):
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "stat").write_bytes(
            f"{pid} (x y) S {ppid} {pgid} {sid} 0".encode())
        (tmp_path / str(pid) / "environ").write_bytes(environ)

    (tmp_path / "self").mkdir()
    process(50001, daemon, 50001, 50001, b"A=1\0DAGGY_TASK_ID=9.1.1\0")
    process(50002, 50001, 50001, 50001)
    process(50003, 50001, 50003, 50003)
    process(50004, daemon, 50004, 50004, b"DAGGY_TASK_ID=9.1.1\0")
    process(50005, daemon, 50005, 50005, b"DAGGY_TASK_ID=9.1.12\0")
    sent = []
    scope = ProcessTreeScope("9.1.1", proc=str(tmp_path), kill=lambda *a: sent.append(a))
    assert scope.environment == {"DAGGY_TASK_ID": "9.1.1"}
    assert scope.signal(signal.SIGTERM, None) == 0  # not started: nothing is known
    scope.started(50001)
    assert scope.signal(signal.SIGTERM, 50001) == 2
    assert sent == [(50003, signal.SIGTERM), (50004, signal.SIGTERM)]


@pytest.mark.parametrize("cgroup_lines, mount_line, expected", [
    ("0::/system.slice/daggyd.service\n",
     "30 24 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw\n",
     "/sys/fs/cgroup/system.slice/daggyd.service"),
    ("4:memory:/x\n1:cpu:/\n0::/\n",
     "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n",
     "/sys/fs/cgroup/unified"),
    ("0::/inner\n",  # a cgroup namespace's view: mount root and path are both relative
     "30 24 0:26 /outer /sys/fs/cgroup\\040x rw - cgroup2 cgroup2 rw\n",
     "/sys/fs/cgroup x/inner"),
])
def test_own_cgroup_dir_joins_the_mount_point_and_the_cgroup_path(
        tmp_path, cgroup_lines, mount_line, expected):
    """The daemon's cgroup directory comes from /proc/self/cgroup's v2 line and the cgroup2
    entry of /proc/self/mountinfo (escaped spaces and a bind-mounted root included)."""
    (tmp_path / "self").mkdir()
    (tmp_path / "self" / "cgroup").write_text(cgroup_lines)
    (tmp_path / "self" / "mountinfo").write_text(
        "22 1 0:21 / /proc rw - proc proc rw\n" + mount_line)
    if "/outer" in mount_line:
        (tmp_path / "self" / "cgroup").write_text("0::/outer/inner\n")
    assert own_cgroup_dir(str(tmp_path)) == expected


@pytest.mark.parametrize("cgroup_lines, mounts, why", [
    ("4:memory:/x\n", "30 24 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n", "cgroup v1"),
    ("0::/\n", "22 1 0:21 / /proc rw - proc proc rw\n", "not mounted"),
])
def test_no_cgroup_v2_is_reported_as_unavailable(tmp_path, cgroup_lines, mounts, why):
    """Without a cgroup v2 line or mount the cgroup mechanism is unavailable, saying why."""
    (tmp_path / "self").mkdir()
    (tmp_path / "self" / "cgroup").write_text(cgroup_lines)
    (tmp_path / "self" / "mountinfo").write_text(mounts)
    with pytest.raises(IsolationUnavailable, match=why):
        own_cgroup_dir(str(tmp_path))


# Secrets (secretEnvironment)

SECRET = "s3cr3t-value-that-must-not-leak"


def secret_executor(reactor, **kwargs):
    kwargs.setdefault("secrets", {"DB_PASSWORD": SECRET})
    kwargs.setdefault("secrets_source", "/etc/daggyd/secrets.yaml")
    return make_executor(reactor, environ={**ENVIRON, "FROM_DAEMON": "daemon-value"}, **kwargs)


def test_secret_values_reach_only_the_spawned_environment(reactor):
    """Names in secretEnvironment get their values from the secrets file (else daggyd's
    environment) in the task's environment, and nowhere in the argv."""
    executor = secret_executor(reactor)
    job = {"command": ["true"], "secretEnvironment": ["DB_PASSWORD", "FROM_DAEMON"]}
    assert executor.validate_job(job, JOB_PATH) == []
    executor.start(1, "pull", job)
    process = reactor.last_process
    assert process.env["DB_PASSWORD"] == SECRET
    assert process.env["FROM_DAEMON"] == "daemon-value"
    assert not any(SECRET in arg for arg in process.args)
    process.exit(0)


def test_secrets_are_given_only_to_jobs_that_name_them(reactor):
    """A secret from the file is not in the environment of a job that does not list it."""
    executor = secret_executor(reactor)
    executor.start(1, "pull", {"command": ["true"]})
    assert "DB_PASSWORD" not in reactor.last_process.env
    reactor.last_process.exit(0)


def test_the_secrets_file_wins_over_the_daemon_environment(reactor):
    """A name in both the file and daggyd's environment gets the file's value."""
    executor = secret_executor(reactor, secrets={"FROM_DAEMON": SECRET})
    executor.start(1, "pull", {"command": ["true"], "secretEnvironment": ["FROM_DAEMON"]})
    assert reactor.last_process.env["FROM_DAEMON"] == SECRET
    reactor.last_process.exit(0)


@pytest.mark.parametrize("names, problem", [
    ("DB_PASSWORD", "tasks.pull.job.secretEnvironment: must be a list of environment"),
    ([3], "tasks.pull.job.secretEnvironment[0]: must be a string"),
    (["{{NAME}}"], "tasks.pull.job.secretEnvironment[0]: placeholders are not allowed"),
    (["A=B"], "tasks.pull.job.secretEnvironment[0]: must be an environment variable name"),
    (["1A"], "tasks.pull.job.secretEnvironment[0]: must be an environment variable name"),
    ([""], "tasks.pull.job.secretEnvironment[0]: must be an environment variable name"),
    (["DB_PASSWORD", "DB_PASSWORD"], "tasks.pull.job.secretEnvironment[1]: 'DB_PASSWORD' is "
                                     "listed twice"),
    (["NOPE"], "tasks.pull.job.secretEnvironment[0]: no secret named 'NOPE' (it is neither "
               "in the executor's secretsFile /etc/daggyd/secrets.yaml nor in daggyd's "
               "environment)"),
])
def test_bad_secret_names_are_refused_naming_the_entry(reactor, names, problem):
    """secretEnvironment must list valid, distinct names the daemon has a secret for."""
    executor = secret_executor(reactor)
    errors = executor.validate_job({"command": ["true"], "secretEnvironment": names}, JOB_PATH)
    assert len(errors) == 1 and errors[0].startswith(problem), errors


def test_a_secret_name_also_in_environment_is_refused(reactor):
    """A variable comes from the spec or from the daemon, not both."""
    executor = secret_executor(reactor)
    job = {"command": ["true"], "environment": {"DB_PASSWORD": "x"},
           "secretEnvironment": ["DB_PASSWORD"]}
    [error] = executor.validate_job(job, JOB_PATH)
    assert error.startswith("tasks.pull.job.secretEnvironment[0]: 'DB_PASSWORD' is also set "
                            "in environment")


def test_secret_environment_is_not_templatable(reactor):
    """Placeholders never expand in secretEnvironment: it is not a templatable field."""
    assert "secretEnvironment" not in ForkingTaskExecutor.templatable_fields


def test_without_a_secrets_file_the_error_says_none_is_configured(reactor):
    """With no secretsFile the missing-secret message says so."""
    executor = make_executor(reactor)
    [error] = executor.validate_job({"command": ["true"], "secretEnvironment": ["NOPE"]},
                                    JOB_PATH)
    assert "secretsFile (none is configured)" in error


def test_a_secret_missing_at_start_is_a_failed_attempt_without_the_values(reactor):
    """A job naming a secret this daemon lacks (a run recovered by a daemon configured
    differently) gives a failed attempt naming the secret, and nothing is spawned."""
    attempt_executor = secret_executor(reactor)
    execution = attempt_executor.start(
        1, "pull", {"command": ["true"], "secretEnvironment": ["DB_PASSWORD", "GONE"]})
    assert reactor.processes == []
    attempt = result_of(execution.result)
    assert (attempt.rc, attempt.succeeded) == (None, False)
    assert attempt.executor_log.startswith(
        "spawn failed: secretEnvironment: no secret named 'GONE'")
    assert SECRET not in json.dumps(attempt.to_json())


def test_the_executor_repr_shows_no_secret_value(reactor):
    """Neither the executor nor its secret store show a value in their repr."""
    executor = secret_executor(reactor)
    assert SECRET not in repr(executor) + repr(executor._secrets)
    assert "1 from /etc/daggyd/secrets.yaml" in repr(executor._secrets)
