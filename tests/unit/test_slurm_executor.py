"""SlurmTaskExecutor on a fake process reactor: sbatch/squeue/sacct are played by the test."""

from __future__ import annotations

import os
import re
import shlex

import pytest

from daggy.executors._slurm_commands import (
    FINAL_STATES,
    JobStatus,
    batch_script,
    describe_status,
    file_stem,
    parse_sacct,
    parse_scontrol,
    parse_squeue,
    safe_name,
    slurm_time,
)
from daggy.executors.slurm import SlurmTaskExecutor
from daggy.testing import FakeProcessReactor, result_of

JOB_PATH = "tasks.pull.job"


@pytest.fixture
def reactor():
    reactor = FakeProcessReactor()
    yield reactor
    assert reactor.getDelayedCalls() == [], "a timer was left pending"


def make_executor(reactor, tmp_path, **kwargs):
    kwargs.setdefault("output_dir", str(tmp_path / "out"))
    kwargs.setdefault("environ", {"PATH": "/usr/bin"})
    kwargs.setdefault("command_prefix", "/usr/bin/")
    return SlurmTaskExecutor(reactor, **kwargs)


def validate(job):
    return SlurmTaskExecutor(FakeProcessReactor()).validate_job(job, JOB_PATH)


def script_of(process):
    return b"".join(data for fd, data in process.written if fd == 0).decode()


def submit(reactor, executor, task="pull", job=None, job_id="100", run_id=7):
    """Start a task and let sbatch answer with ``job_id``."""
    execution = executor.start(run_id, task, job or {"command": ["/bin/true"]})
    sbatch = reactor.last_process
    assert sbatch.executable == "/usr/bin/sbatch"
    sbatch.send_stdout(f"{job_id}\n".encode())
    sbatch.exit(0)
    return execution


def tick(reactor, executor):
    reactor.advance(executor._poll_interval)


def answer(reactor, name, stdout="", rc=0, stderr=""):
    """The most recent process must be the Slurm command ``name``; it prints and exits."""
    process = reactor.last_process
    assert process.executable == f"/usr/bin/{name}", process.args
    if stdout:
        process.send_stdout(stdout.encode())
    if stderr:
        process.send_stderr(stderr.encode())
    process.exit(rc)
    return process


# Validation


def test_valid_job_has_no_errors():
    """A job using every field correctly validates cleanly."""
    job = {
        "command": ["/bin/echo", "{{DATE}}"], "environment": {"A_1": "x"}, "minCPUs": 2,
        "minMemoryMB": 100, "minTmpDiskMB": 0, "priority": 5, "timeLimitSeconds": 60,
        "workDir": "/tmp", "tmpDir": "/tmp", "partition": "p", "account": "a", "qos": "q",
        "gres": "gpu:1", "sbatchArgs": ["--exclusive"],
    }
    assert validate(job) == []


@pytest.mark.parametrize("job, problem", [
    ([], "tasks.pull.job: must be an object"),
    ({}, "tasks.pull.job.command: is required (a non-empty list of strings)"),
    ({"command": "ls"}, "tasks.pull.job.command: must be a non-empty list of strings"),
    ({"command": ["ls", 1]}, "tasks.pull.job.command[1]: must be a string"),
    ({"command": ["ls"], "minCPUs": 0},
     "tasks.pull.job.minCPUs: must be an integer from 1 to 1000000"),
    ({"command": ["ls"], "minMemoryMB": True}, "tasks.pull.job.minMemoryMB: must be an integer"),
    ({"command": ["ls"], "timeLimitSeconds": 1.5}, "tasks.pull.job.timeLimitSeconds: must be"),
    ({"command": ["ls"], "priority": -1}, "tasks.pull.job.priority: must be an integer"),
    ({"command": ["ls"], "partition": ""}, "tasks.pull.job.partition: must be a non-empty string"),
    ({"command": ["ls"], "gres": 3}, "tasks.pull.job.gres: must be a non-empty string"),
    ({"command": ["ls"], "environment": {"A": 1}},
     "tasks.pull.job.environment.A: must be a string"),
    ({"command": ["ls"], "environment": {"1A": "x"}}, "tasks.pull.job.environment.1A: variable"),
    ({"command": ["ls"], "sbatchArgs": "--x"}, "tasks.pull.job.sbatchArgs: must be a list"),
    ({"command": ["ls"], "sbatchArgs": ["--output=/x"]},
     "tasks.pull.job.sbatchArgs[0]: --output is set by the executor"),
    ({"command": ["ls"], "sbatchArgs": ["-Jname"]}, "tasks.pull.job.sbatchArgs[0]: -Jname is set"),
    # sbatch takes any unambiguous prefix of a long option.
    ({"command": ["ls"], "sbatchArgs": ["--out=/x"]}, "tasks.pull.job.sbatchArgs[0]: --out"),
    ({"command": ["ls"], "sbatchArgs": ["--job", "x"]}, "tasks.pull.job.sbatchArgs[0]: --job"),
    ({"command": ["ls"], "timeoutSeconds": 3}, "tasks.pull.job.timeoutSeconds: unknown job field"),
])
def test_invalid_jobs_name_the_field(job, problem):
    """Each bad value is reported with its path and field."""
    errors = validate(job)
    assert len(errors) == 1 and errors[0].startswith(problem), errors


def test_templatable_fields_and_capacity():
    """Slurm places jobs itself (no capacity) and the string fields expand parameters."""
    executor = SlurmTaskExecutor(FakeProcessReactor())
    assert executor.capacity is None
    for field in ("command", "environment", "workDir", "tmpDir", "partition", "account",
                  "qos", "gres", "sbatchArgs"):
        assert field in executor.templatable_fields


# Pure helpers


def test_safe_name_prevents_path_traversal():
    """Task names become file-name-safe: no slashes, no leading dots, bounded length."""
    assert safe_name("../../etc/passwd") == "_.._etc_passwd"
    assert "/" not in safe_name("a/b") and safe_name("") == "task"
    assert len(safe_name("x" * 1000)) == 120


HOSTILE_NAMES = [
    "../../etc/x", "/abs", "/", "a/b", "a_b", "..", ".", "...", "-rf", "--output=x",
    ".hidden", "nul\0byte", "new\nline", "tab\there", "\x1b[31mred", "%j%u", "back\\slash",
    "été ☃", "名前", "\udcff", "x" * 300, "x" * 301, "~", "a~b", "task", "",
]


@pytest.mark.parametrize("name", HOSTILE_NAMES, ids=range(len(HOSTILE_NAMES)))
def test_file_stem_is_one_plain_file_name(name):
    """Whatever the task name, its file stem is one path component of safe ASCII characters,
    not starting with '.' or '-', short enough for any file system."""
    stem = file_stem(name)
    assert re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9._~-]*", stem), stem
    assert stem not in (".", "..") and "/" not in stem and len(stem) <= 120
    assert os.path.basename(os.path.join("/out/run-1", stem)) == stem
    assert os.path.dirname(os.path.normpath(os.path.join("/out/run-1", stem))) == "/out/run-1"


def test_file_stems_of_different_names_differ():
    """No two task names share a file stem, even when making them safe gives the same text;
    a name that is already safe is used as it is."""
    names = HOSTILE_NAMES + ["a:b", "a b", "a\tb", "x" * 299 + "y", "\u00e9t\u00e9"]
    stems = [file_stem(name) for name in names]
    assert len(set(stems)) == len(set(names))
    assert file_stem("task") == "task" and file_stem("a_b") == "a_b"
    assert file_stem("a/b").startswith("a_b~") and file_stem("..").startswith("task~")


def test_output_files_of_hostile_task_names_stay_in_the_run_directory(reactor, tmp_path):
    """sbatch's --output/--error of a task named ../../x, /abs or with a NUL point inside
    <outputDir>/run-<id>/, at distinct files."""
    executor = make_executor(reactor, tmp_path)
    run_dir = str(tmp_path / "out" / "run-3")
    seen = set()
    for name in ("../../x", "/abs", "a/b", "a_b", "..", "nul\0", "-n", "x" * 300):
        execution = executor.start(3, name, {"command": ["/bin/true"]})
        options = dict(arg.split("=", 1) for arg in reactor.last_process.args[2:5])
        for key in ("--output", "--error"):
            path = options[key]
            assert os.path.dirname(os.path.normpath(path)) == run_dir, (name, path)
            assert not os.path.basename(path).startswith((".", "-"))
            seen.add(path)
        execution.kill("done")
        reactor.last_process.exit(1)
        assert result_of(execution.result).killed
    assert len(seen) == 16
    assert os.listdir(tmp_path / "out") == ["run-3"]


def test_batch_script_quotes_every_argument():
    """The script execs the argv verbatim: shell metacharacters stay literal."""
    script = batch_script(["echo", "$HOME; rm -rf /", "it's"], {"A": "x y"}, "/scratch")
    lines = script.splitlines()
    assert lines[0] == "#!/bin/sh"
    assert "export A='x y'" in lines and "export TMPDIR=/scratch" in lines
    assert shlex.split(lines[-1]) == ["exec", "echo", "$HOME; rm -rf /", "it's"]


def test_slurm_time_format():
    """Time limits are written as days-hours:minutes:seconds."""
    assert slurm_time(3725) == "0-01:02:05" and slurm_time(90061) == "1-01:01:01"


def test_parsers():
    """squeue, sacct (steps skipped, suffixes dropped) and scontrol output are parsed."""
    assert parse_squeue("12|RUNNING|None\n13|PENDING|Priority\n") == {
        "12": JobStatus("RUNNING", reason="None"), "13": JobStatus("PENDING", reason="Priority")}
    assert parse_sacct("12|FAILED|3:0\n12.batch|FAILED|3:0\n13|CANCELLED by 0|0:15\n") == {
        "12": JobStatus("FAILED", 3, 0), "13": JobStatus("CANCELLED", 0, 15)}
    line = ("JobId=12 JobName=x JobState=FAILED Reason=NonZeroExitCode Dependency=(null) "
            "ExitCode=3:0\n")
    assert parse_scontrol(line) == {"12": JobStatus("FAILED", 3, 0, "NonZeroExitCode")}


@pytest.mark.parametrize("state, exit_code, succeeded, rc, words", [
    ("COMPLETED", "0:0", True, 0, "completed"),
    ("FAILED", "3:0", False, 3, "exit code 3"),
    ("FAILED", "0:9", False, None, "signal SIGKILL"),
    ("CANCELLED", "0:15", False, None, "cancelled"),
    ("TIMEOUT", "0:0", False, None, "time limit"),
    ("OUT_OF_MEMORY", "0:125", False, None, "out of memory"),
    ("NODE_FAIL", "0:0", False, None, "retryable"),
    ("PREEMPTED", "0:0", False, None, "retryable"),
    ("BOOT_FAIL", "0:0", False, None, "retryable"),
    ("DEADLINE", "0:0", False, None, "deadline"),
])
def test_state_mapping(state, exit_code, succeeded, rc, words):
    """Each final Slurm state maps to a verdict, an rc and an explanation."""
    status = parse_sacct(f"5|{state}|{exit_code}")["5"]
    assert status.state in FINAL_STATES
    got_succeeded, got_rc, _, text = describe_status("5", status)
    assert (got_succeeded, got_rc) == (succeeded, rc)
    assert words in text and state in text


# Submission


def test_submission_argv_script_and_started(reactor, tmp_path):
    """sbatch gets the job's options and the quoted script on stdin; started reports paths."""
    executor = make_executor(reactor, tmp_path, partition="batch", sbatch_args=("--no-requeue",))
    job = {"command": ["printf", "%s", "a b"], "environment": {"X": "1"}, "minCPUs": 2,
           "minMemoryMB": 50, "timeLimitSeconds": 90, "workDir": "/w", "account": "acct",
           "sbatchArgs": ["--exclusive"]}
    execution = executor.start(7, "../evil task", job)
    sbatch = reactor.last_process
    out = str(tmp_path / "out" / "run-7" / "_evil_task~e18ce2af7956bd36")
    assert sbatch.args == [
        "/usr/bin/sbatch", "--parsable", "--job-name=daggy.7..._evil_task~e93e53d5",
        f"--output={out}.%j.out", f"--error={out}.%j.err", "--partition=batch",
        "--account=acct", "--chdir=/w", "--cpus-per-task=2", "--mem=50M",
        "--time=0-00:01:30", "--no-requeue", "--exclusive",
    ]
    assert sbatch.env == {"PATH": "/usr/bin"}
    assert script_of(sbatch).splitlines()[-1] == "exec printf %s 'a b'"
    assert 0 in sbatch.closed_fds
    assert not execution.started.called
    sbatch.send_stdout(b"4242;cluster\n")
    sbatch.exit(0)
    assert result_of(execution.started) == {
        "jobId": "4242", "stdout": f"{out}.4242.out", "stderr": f"{out}.4242.err"}
    assert executor.tracked_count == 1
    executor.stop()
    answer(reactor, "scancel")
    assert result_of(execution.result).killed


def test_submit_failures_retry_with_backoff_then_fail(reactor, tmp_path):
    """A failing sbatch is retried with doubling delays, then the attempt fails clearly."""
    executor = make_executor(reactor, tmp_path, submit_retries=2, submit_backoff_seconds=1)
    execution = executor.start(1, "t", {"command": ["true"]})
    answer(reactor, "sbatch", rc=1, stderr="sbatch: error: Slurm temporarily unable to "
                                           "accept job, sleeping and retrying\n")
    assert len(reactor.processes) == 1
    reactor.advance(1)
    answer(reactor, "sbatch", rc=1, stderr="sbatch: error: MaxJobCount reached\n")
    reactor.advance(1.5)
    assert len(reactor.processes) == 2
    reactor.advance(0.5)
    answer(reactor, "sbatch", rc=1, stderr="sbatch: error: MaxJobCount reached\n")
    attempt = result_of(execution.result)
    assert not attempt.succeeded and attempt.rc is None
    assert attempt.executor_log == ("sbatch failed 3 times; last: exit code 1: "
                                    "sbatch: error: MaxJobCount reached")


def test_submit_retry_then_success(reactor, tmp_path):
    """A transient sbatch failure followed by success tracks the job normally."""
    executor = make_executor(reactor, tmp_path)
    execution = executor.start(1, "t", {"command": ["true"]})
    answer(reactor, "sbatch", rc=1, stderr="Socket timed out\n")
    reactor.advance(1)
    answer(reactor, "sbatch", stdout="77\n")
    assert result_of(execution.started)["jobId"] == "77"
    tick(reactor, executor)
    answer(reactor, "squeue", "77|COMPLETED|None\n")
    answer(reactor, "sacct", "77|COMPLETED|0:0\n")
    assert result_of(execution.result).succeeded


def test_sbatch_timeout_is_a_failed_try(reactor, tmp_path):
    """An sbatch that hangs is killed after the command timeout and counts as a failed try."""
    executor = make_executor(reactor, tmp_path, submit_retries=0, command_timeout_seconds=30)
    execution = executor.start(1, "t", {"command": ["true"]})
    sbatch = reactor.last_process
    reactor.advance(30)
    assert sbatch.signals == [9]
    sbatch.die("KILL")
    assert result_of(execution.result).executor_log == "sbatch failed 1 times; last: timed out"


def test_kill_while_waiting_to_retry_submission(reactor, tmp_path):
    """Killing an attempt whose sbatch waits for a retry ends it without submitting."""
    executor = make_executor(reactor, tmp_path)
    execution = executor.start(1, "t", {"command": ["true"]})
    answer(reactor, "sbatch", rc=1)
    execution.kill("run killed by request")
    attempt = result_of(execution.result)
    assert attempt.killed and attempt.executor_log == "not submitted: run killed by request"
    assert len(reactor.processes) == 1


# Polling


def test_one_squeue_per_tick_for_many_jobs(reactor, tmp_path):
    """However many jobs are tracked, each tick runs exactly one squeue naming all of them."""
    executor = make_executor(reactor, tmp_path)
    executions = [submit(reactor, executor, task=f"t{i}", job_id=str(100 + i))
                  for i in range(200)]
    for _ in range(3):
        before = len(reactor.processes)
        tick(reactor, executor)
        assert len(reactor.processes) == before + 1
        squeue = answer(reactor, "squeue",
                        "".join(f"{100 + i}|RUNNING|None\n" for i in range(200)))
        assert squeue.args[:6] == ["/usr/bin/squeue", "-h", "-t", "all", "-o", "%i|%T|%r"]
        assert squeue.args[6:] == ["-j", ",".join(str(100 + i) for i in range(200))]
    assert executor.command_counts["squeue"] == 3
    assert not any(execution.result.called for execution in executions)
    tick(reactor, executor)
    answer(reactor, "squeue", "".join(f"{100 + i}|COMPLETED|None\n" for i in range(200)))
    sacct = answer(reactor, "sacct", "".join(f"{100 + i}|COMPLETED|0:0\n" for i in range(200)))
    assert sacct.args[:5] == ["/usr/bin/sacct", "-n", "-P", "-X", "-j"]
    assert all(result_of(execution.result).succeeded for execution in executions)
    assert executor.command_counts["sacct"] == 1


def test_vanished_job_resolved_by_sacct_with_outputs(reactor, tmp_path):
    """A job purged from squeue gets its real result from sacct, with its output files."""
    executor = make_executor(reactor, tmp_path, sacct_completion=True)
    execution = submit(reactor, executor, job_id="12")
    paths = result_of(execution.started)
    with open(paths["stdout"], "w") as stream:
        stream.write("hello\n")
    with open(paths["stderr"], "w") as stream:
        stream.write("oops\n")
    tick(reactor, executor)
    answer(reactor, "squeue", rc=1, stderr="slurm_load_jobs error: Invalid job id specified\n")
    sacct = answer(reactor, "sacct", "12|FAILED|3:0\n")
    assert sacct.args[1] == "-c"
    attempt = result_of(execution.result)
    assert (attempt.succeeded, attempt.rc) == (False, 3)
    assert (attempt.output_log, attempt.error_log) == ("hello\n", "oops\n")
    assert attempt.executor_log == "Slurm job 12 failed (state FAILED, exit code 3)"
    assert attempt.executor_state == paths  # what a restarted daemon compares


def test_output_is_bounded(reactor, tmp_path):
    """Only max_output_bytes of an output file are read, and the cut is flagged."""
    executor = make_executor(reactor, tmp_path, max_output_bytes=4)
    execution = submit(reactor, executor, job_id="12")
    with open(result_of(execution.started)["stdout"], "w") as stream:
        stream.write("0123456789")
    tick(reactor, executor)
    answer(reactor, "squeue", "12|COMPLETED|None\n")
    answer(reactor, "sacct", "12|COMPLETED|0:0\n")
    attempt = result_of(execution.result)
    assert attempt.output_log == "0123" and attempt.output_truncated


def test_scontrol_is_the_fallback_when_sacct_fails(reactor, tmp_path):
    """Without accounting, the final state and exit code come from scontrol."""
    executor = make_executor(reactor, tmp_path)
    execution = submit(reactor, executor, job_id="12")
    tick(reactor, executor)
    answer(reactor, "squeue", "12|TIMEOUT|TimeLimit\n")
    answer(reactor, "sacct", rc=1, stderr="Slurm accounting storage is disabled\n")
    answer(reactor, "scontrol", "JobId=12 JobState=TIMEOUT Reason=TimeLimit ExitCode=0:15\n")
    attempt = result_of(execution.result)
    assert attempt.timed_out and not attempt.succeeded and attempt.rc is None
    assert "reached its time limit" in attempt.executor_log


def test_squeue_failure_is_no_news_and_backs_off(reactor, tmp_path, no_logged_errors):
    """A failing squeue fails no task; polls back off and resume when squeue works again."""
    executor = make_executor(reactor, tmp_path, poll_interval=1, max_backoff_seconds=8)
    execution = submit(reactor, executor, job_id="12")
    tick(reactor, executor)
    answer(reactor, "squeue", rc=1, stderr="slurm_load_jobs error: Socket timed out\n")
    squeues = executor.command_counts["squeue"]
    reactor.advance(1)  # inside the 2s backoff: no squeue
    assert executor.command_counts["squeue"] == squeues
    reactor.advance(1)
    answer(reactor, "squeue", rc=1, stderr="Unable to contact slurm controller\n")
    reactor.advance(4)
    squeue = reactor.last_process
    squeue.die("KILL")  # a signal, as after a timeout: still no news
    for _ in range(10):
        reactor.advance(1)
        if not reactor.last_process.exited:
            break
    assert executor.command_counts["squeue"] == 4
    assert not execution.result.called
    answer(reactor, "squeue", "12|COMPLETED|None\n")
    answer(reactor, "sacct", "12|COMPLETED|0:0\n")
    assert result_of(execution.result).succeeded


def test_backoff_counts_from_the_failed_tick_not_from_the_answer(reactor, tmp_path,
                                                                 no_logged_errors):
    """A slow failing squeue still gives waits of exactly 2x, 4x the interval between polls:
    the time squeue took is not added to the backoff."""
    executor = make_executor(reactor, tmp_path, poll_interval=1, max_backoff_seconds=60)
    submit(reactor, executor, job_id="12")
    poll_times = []
    for _ in range(3):
        while executor.command_counts["squeue"] == len(poll_times):
            reactor.advance(0.1)
        poll_times.append(reactor.seconds())
        reactor.advance(0.3)  # squeue answers slowly
        answer(reactor, "squeue", rc=1, stderr="Socket timed out\n")
    gaps = [b - a for a, b in zip(poll_times, poll_times[1:])]
    assert gaps == pytest.approx([2, 4], abs=0.15)
    executor.stop()
    answer(reactor, "scancel")


def test_pending_and_running_jobs_keep_waiting(reactor, tmp_path):
    """Active states do not end the attempt and start no resolution call."""
    executor = make_executor(reactor, tmp_path)
    execution = submit(reactor, executor, job_id="12")
    for state in ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED"):
        tick(reactor, executor)
        answer(reactor, "squeue", f"12|{state}|None\n")
    assert not execution.result.called and executor.command_counts["sacct"] == 0
    execution.kill("task killed by request")
    tick(reactor, executor)
    answer(reactor, "scancel")
    answer(reactor, "squeue", "12|CANCELLED|None\n")
    answer(reactor, "sacct", "12|CANCELLED by 0|0:0\n")
    assert result_of(execution.result).killed


def test_node_failure_is_retryable(reactor, tmp_path):
    """A job lost to a node failure fails the attempt with a log saying it is retryable."""
    executor = make_executor(reactor, tmp_path)
    execution = submit(reactor, executor, job_id="12")
    tick(reactor, executor)
    answer(reactor, "squeue", "12|NODE_FAIL|None\n")
    answer(reactor, "sacct", "12|NODE_FAIL|0:0\n")
    attempt = result_of(execution.result)
    assert not attempt.succeeded and "retryable" in attempt.executor_log


def test_job_unknown_everywhere_is_failed_after_lost_job_seconds(reactor, tmp_path):
    """A job neither squeue, sacct nor scontrol knows is reported lost, not waited for forever."""
    executor = make_executor(reactor, tmp_path, lost_job_seconds=2)
    execution = submit(reactor, executor, job_id="12")
    for _ in range(3):
        tick(reactor, executor)
        answer(reactor, "squeue", "")
        answer(reactor, "sacct", "")
        answer(reactor, "scontrol", "")
    attempt = result_of(execution.result)
    assert "is gone" in attempt.executor_log and not attempt.succeeded


# Kill, stop, reattach


def test_kills_are_batched_into_one_scancel(reactor, tmp_path):
    """Kills in one tick become one scancel of the pending jobs among them, then one of all
    (so no pending job starts because a running one was cancelled first); results fire
    once Slurm reports CANCELLED."""
    executor = make_executor(reactor, tmp_path)
    first = submit(reactor, executor, task="a", job_id="1")
    second = submit(reactor, executor, task="b", job_id="2")
    first.kill("run killed by request")
    second.kill("run killed by request")
    tick(reactor, executor)
    pending = answer(reactor, "scancel")
    assert pending.args == ["/usr/bin/scancel", "--state=PENDING", "1", "2"]
    scancel = answer(reactor, "scancel")
    assert scancel.args == ["/usr/bin/scancel", "1", "2"]
    answer(reactor, "squeue", "1|CANCELLED|None\n2|COMPLETED|None\n")
    answer(reactor, "sacct", "1|CANCELLED by 0|0:0\n2|COMPLETED|0:0\n")
    killed = result_of(first.result)
    assert killed.killed and killed.executor_log.endswith("; run killed by request")
    assert result_of(second.result).succeeded  # it finished before the cancel landed
    assert executor.command_counts["scancel"] == 2


def test_stop_cancels_everything_in_one_call(reactor, tmp_path):
    """stop() sends one scancel for every job (pending ones first) and fires once all
    attempts ended."""
    executor = make_executor(reactor, tmp_path)
    executions = [submit(reactor, executor, task=f"t{i}", job_id=str(i)) for i in range(3)]
    stopped = executor.stop()
    assert answer(reactor, "scancel").args == ["/usr/bin/scancel", "--state=PENDING", "0", "1",
                                               "2"]
    assert reactor.last_process.args == ["/usr/bin/scancel", "0", "1", "2"]
    answer(reactor, "scancel")
    result_of(stopped)
    assert all(result_of(e.result).killed for e in executions)
    assert result_of(executor.start(1, "late", {"command": ["true"]}).result).killed


def test_reattach_watches_the_job_without_resubmitting(reactor, tmp_path):
    """A re-attached job is polled again and gets its real result; nothing is submitted."""
    executor = make_executor(reactor, tmp_path, sacct_completion=True)
    out = tmp_path / "old.out"
    out.write_text("from before the restart\n")
    execution = executor.reattach(3, "t", {"command": ["true"]},
                                  {"jobId": "55", "stdout": str(out), "stderr": ""})
    assert result_of(execution.started)["jobId"] == "55"
    tick(reactor, executor)
    answer(reactor, "squeue", rc=1, stderr="slurm_load_jobs error: Invalid job id specified\n")
    answer(reactor, "sacct", "55|FAILED|3:0\n")
    attempt = result_of(execution.result)
    assert attempt.rc == 3 and attempt.output_log == "from before the restart\n"
    assert executor.command_counts["sbatch"] == 0


def reattach_unrecorded(executor, earlier=({"jobId": "41"},)):
    """Re-attach task "t" of run 3 whose running attempt never recorded a job id."""
    return executor.reattach(3, "t", {"command": ["true"]}, {}, list(earlier))


def test_reattach_without_job_id_finds_the_job_by_name(reactor, tmp_path):
    """When the daemon died before recording the job id, the job is found by its name (the
    earlier attempt's job of the same name is ignored) and watched; nothing is submitted."""
    executor = make_executor(reactor, tmp_path, sacct_completion=True)
    execution = reattach_unrecorded(executor)
    assert not execution.started.called
    tick(reactor, executor)
    squeue = answer(reactor, "squeue", "41|daggy.3.t|FAILED\n42|daggy.3.t|RUNNING\n"
                                       "43|daggy.3.other|RUNNING\n")
    assert squeue.args[-2:] == ["-n", "daggy.3.t"]
    sacct = answer(reactor, "sacct", "41|daggy.3.t|FAILED\n7|daggy.9.x|COMPLETED\n")
    assert sacct.args[:2] == ["/usr/bin/sacct", "-c"] and "--name=daggy.3.t" in sacct.args
    assert result_of(execution.started)["jobId"] == "42"
    answer(reactor, "squeue", "42|COMPLETED|None\n")
    answer(reactor, "sacct", "42|COMPLETED|0:0\n")
    attempt = result_of(execution.result)
    assert attempt.succeeded and attempt.executor_state["jobId"] == "42"
    assert executor.command_counts["sbatch"] == 0


def test_reattach_without_job_id_submits_when_slurm_has_no_job(reactor, tmp_path):
    """When neither squeue nor sacct knows a job of that name (the daemon died before
    sbatch ran), the attempt is submitted then, once."""
    executor = make_executor(reactor, tmp_path)
    execution = reattach_unrecorded(executor)
    tick(reactor, executor)
    answer(reactor, "squeue", "41|daggy.3.t|COMPLETED\n")
    answer(reactor, "sacct", "41|daggy.3.t|COMPLETED\n")
    sbatch = reactor.last_process
    assert "--job-name=daggy.3.t" in sbatch.args
    sbatch.send_stdout(b"50\n")
    sbatch.exit(0)
    assert result_of(execution.started)["jobId"] == "50"
    assert executor.command_counts["sbatch"] == 1
    execution.kill("run killed by request")
    tick(reactor, executor)
    assert answer(reactor, "scancel").args == ["/usr/bin/scancel", "50"]
    answer(reactor, "squeue", "50|CANCELLED|None\n")
    answer(reactor, "sacct", "50|CANCELLED|0:15\n")
    assert result_of(execution.result).killed


def test_search_by_name_decides_nothing_when_slurm_does_not_answer(reactor, tmp_path,
                                                                   no_logged_errors):
    """A failed squeue during the search is no news: nothing is submitted, the search is
    tried again after the backoff and a kill meanwhile ends the attempt unsubmitted."""
    executor = make_executor(reactor, tmp_path)
    execution = reattach_unrecorded(executor)
    tick(reactor, executor)
    answer(reactor, "squeue", rc=1, stderr="Socket timed out on send/recv operation\n")
    assert executor.command_counts == {"sbatch": 0, "squeue": 1, "sacct": 0, "scontrol": 0,
                                       "scancel": 0}
    reactor.advance(2)
    answer(reactor, "squeue", "")
    answer(reactor, "sacct", rc=1, stderr="sacct: error: Problem talking to the database\n")
    assert not execution.result.called
    execution.kill("run killed by request")
    assert not execution.result.called  # the job may exist: the search must say
    reactor.advance(8)
    answer(reactor, "squeue", "")
    answer(reactor, "sacct", "")
    attempt = result_of(execution.result)
    assert attempt.killed and attempt.executor_log == "not submitted: run killed by request"
    assert executor.command_counts["sbatch"] == 0


def test_stop_ends_a_search_by_name_at_once(reactor, tmp_path):
    """Stopping the executor does not wait for a search that has not run yet."""
    executor = make_executor(reactor, tmp_path)
    execution = reattach_unrecorded(executor)
    stopped = executor.stop()
    assert result_of(execution.result).killed
    result_of(stopped)


def test_at_most_max_parallel_submits_sbatch_processes(reactor, tmp_path):
    """Beyond max_parallel_submits, submissions wait in order for a free sbatch; a waiting
    attempt that is killed is never submitted."""
    executor = make_executor(reactor, tmp_path, max_parallel_submits=2)
    executions = [executor.start(1, f"t{i}", {"command": ["true"]}) for i in range(4)]
    sbatches = list(reactor.processes)
    assert len(sbatches) == 2
    executions[2].kill("run killed by request")
    assert result_of(executions[2].result).executor_log == "not submitted: run killed by request"
    sbatches[0].send_stdout(b"10\n")
    sbatches[0].exit(0)
    assert len(reactor.processes) == 3
    assert "--job-name=daggy.1.t3" in reactor.last_process.args
    sbatches[1].send_stdout(b"11\n")
    sbatches[1].exit(0)
    answer(reactor, "sbatch", "13\n")
    assert [result_of(executions[i].started)["jobId"] for i in (0, 1, 3)] == ["10", "11", "13"]
    assert executor.command_counts["sbatch"] == 3
    executor.stop()
    answer(reactor, "scancel")
    answer(reactor, "scancel")


def test_max_parallel_submits_must_be_positive(tmp_path):
    """A zero or non-integer maxParallelSubmits is refused when the executor is built."""
    for bad in (0, 1.5):
        with pytest.raises(ValueError, match="maxParallelSubmits"):
            make_executor(FakeProcessReactor(), tmp_path, max_parallel_submits=bad)


def test_polls_never_overlap(reactor, tmp_path):
    """While an squeue is still running, later ticks start no second one."""
    executor = make_executor(reactor, tmp_path, command_timeout_seconds=30)
    execution = submit(reactor, executor, job_id="12")
    tick(reactor, executor)
    slow = reactor.last_process
    reactor.advance(5)
    assert reactor.last_process is slow and executor.command_counts["squeue"] == 1
    answer(reactor, "squeue", "12|COMPLETED|None\n")
    answer(reactor, "sacct", "12|COMPLETED|0:0\n")
    assert result_of(execution.result).succeeded


# Secrets (secretEnvironment)

SECRET = "s3cr3t-value-that-must-not-leak"


def test_secret_values_go_through_sbatchs_environment_never_its_argv_or_script(
        reactor, tmp_path):
    """A job's secrets reach sbatch in its environment, named (not valued) by
    --export=ALL,<names>; neither argv nor the batch script (which Slurm stores) holds a
    value, and retries pass them again."""
    executor = make_executor(reactor, tmp_path, secrets={"DB_PASSWORD": SECRET},
                             environ={"PATH": "/usr/bin", "API_KEY": "from-daemon"})
    job = {"command": ["printenv", "DB_PASSWORD"], "secretEnvironment": ["DB_PASSWORD", "API_KEY"],
           "environment": {"PLAIN": "x"}}
    assert executor.validate_job(job, JOB_PATH) == []
    execution = executor.start(7, "pull", job)
    sbatch = answer(reactor, "sbatch", rc=1, stderr="Socket timed out\n")
    reactor.advance(1)
    retry = reactor.last_process
    for process in (sbatch, retry):
        assert "--export=ALL,DB_PASSWORD,API_KEY" in process.args
        assert not any(SECRET in arg for arg in process.args)
        assert SECRET not in script_of(process)
        assert process.env == {"PATH": "/usr/bin", "API_KEY": "from-daemon",
                               "DB_PASSWORD": SECRET}
    assert "export PLAIN=x" in script_of(retry)
    answer(reactor, "sbatch", stdout="55\n")
    tick(reactor, executor)
    answer(reactor, "squeue", "55|COMPLETED|None\n")
    answer(reactor, "sacct", "55|COMPLETED|0:0\n")
    attempt = result_of(execution.result)
    assert attempt.succeeded
    assert execution.environment == {}


def test_jobs_without_secrets_get_no_export_option_and_no_secret(reactor, tmp_path):
    """Only a job naming secrets gets --export and their values."""
    executor = make_executor(reactor, tmp_path, secrets={"DB_PASSWORD": SECRET})
    execution = submit(reactor, executor)
    sbatch = reactor.processes[0]
    assert not any(arg.startswith("--export") for arg in sbatch.args)
    assert sbatch.env == {"PATH": "/usr/bin"}
    executor.stop()
    answer(reactor, "scancel")
    assert result_of(execution.result).killed


def test_export_in_sbatch_args_cannot_be_combined_with_secrets(reactor, tmp_path):
    """--export in the job's sbatchArgs, or in the executor's, would decide the job's
    environment instead; with secretEnvironment that is an error naming the field."""
    executor = make_executor(reactor, tmp_path, secrets={"DB_PASSWORD": SECRET})
    job = {"command": ["true"], "secretEnvironment": ["DB_PASSWORD"],
           "sbatchArgs": ["--export=NONE"]}
    [error] = executor.validate_job(job, JOB_PATH)
    assert error.startswith("tasks.pull.job.sbatchArgs[0]: --export cannot be combined with "
                            "secretEnvironment")
    assert executor.validate_job({"command": ["true"], "sbatchArgs": ["--export=NONE"]},
                                 JOB_PATH) == []
    assert executor.validate_job({"command": ["true"], "secretEnvironment": ["DB_PASSWORD"],
                                  "sbatchArgs": ["--export-file=/x"]}, JOB_PATH) == []

    strict = make_executor(reactor, tmp_path, secrets={"DB_PASSWORD": SECRET},
                           sbatch_args=["--export=NONE"])
    [error] = strict.validate_job({"command": ["true"], "secretEnvironment": ["DB_PASSWORD"]},
                                  JOB_PATH)
    assert error.startswith("tasks.pull.job.secretEnvironment: cannot be used while the "
                            "executor's sbatchArgs set --export")


@pytest.mark.parametrize("names, problem", [
    (["NOPE"], "tasks.pull.job.secretEnvironment[0]: no secret named 'NOPE'"),
    (["{{X}}"], "tasks.pull.job.secretEnvironment[0]: placeholders are not allowed"),
    (["A-B"], "tasks.pull.job.secretEnvironment[0]: must be an environment variable name"),
    ({"A": "b"}, "tasks.pull.job.secretEnvironment: must be a list"),
])
def test_bad_secret_names_are_refused(reactor, tmp_path, names, problem):
    """Slurm jobs check secretEnvironment as forking jobs do."""
    executor = make_executor(reactor, tmp_path, secrets={"DB_PASSWORD": SECRET})
    [error] = executor.validate_job({"command": ["true"], "secretEnvironment": names},
                                    JOB_PATH)
    assert error.startswith(problem)


def test_a_secret_missing_at_submission_fails_without_running_sbatch(reactor, tmp_path):
    """A job naming a secret this daemon lacks (a recovered run) is not submitted; the
    attempt says which secret is missing."""
    executor = make_executor(reactor, tmp_path)
    execution = executor.start(1, "t", {"command": ["true"], "secretEnvironment": ["GONE"]})
    assert reactor.processes == []
    attempt = result_of(execution.result)
    assert not attempt.succeeded
    assert attempt.executor_log.startswith(
        "not submitted: secretEnvironment: no secret named 'GONE'")


def test_secret_environment_is_not_templatable():
    """Placeholders never expand in secretEnvironment."""
    assert "secretEnvironment" not in SlurmTaskExecutor.templatable_fields
