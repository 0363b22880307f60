"""ForkingTaskExecutor on a fake process reactor: no process is forked, time is a Clock."""

from __future__ import annotations

import errno
import signal

import pytest
from twisted.internet.error import ProcessDone
from twisted.python.failure import Failure

from daggy.executors._process import BoundedOutput, ProgramNotFound, find_program
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
        " (allowed: command, environment, timeoutSeconds, workDir)"
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
