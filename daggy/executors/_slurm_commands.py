# -*- test-case-name: tests.unit.test_slurm_executor -*-
"""The Slurm executor's plain parts: job validation, the batch script, sbatch options,
parsing of squeue/sacct/scontrol output and the Slurm state table.

Nothing here touches the reactor; :class:`CommandRunner` is the one piece that spawns (a
Slurm command through ``reactor.spawnProcess``, with a timeout, never failing its Deferred).
"""

from __future__ import annotations

import hashlib
import re
import shlex
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from daggy.executors._process import (
    BoundedOutput,
    command_job_errors,
    describe_exit,
    signal_name,
)
from daggy.executors._secrets import SecretStore, secret_environment_errors

JOB_FIELDS = (
    "command", "environment", "secretEnvironment", "minCPUs", "minMemoryMB", "minTmpDiskMB",
    "priority", "timeLimitSeconds", "workDir", "tmpDir", "partition", "account", "qos", "gres",
    "sbatchArgs",
)
STRING_FIELDS = ("workDir", "tmpDir", "partition", "account", "qos", "gres")
#: field -> (lowest, highest) accepted value.
INTEGER_FIELDS = {
    "minCPUs": (1, 1_000_000),
    "minMemoryMB": (1, 1 << 40),
    "minTmpDiskMB": (0, 1 << 40),
    "priority": (0, 4_294_967_293),
    "timeLimitSeconds": (1, 365 * 24 * 3600),
}
#: sbatch options the executor sets itself; a job overriding them would break tracking.
RESERVED_SBATCH_OPTIONS = (
    "--output", "--error", "--job-name", "--wrap", "--array", "--parsable", "--input",
    "-o", "-e", "-J", "-a", "-i",
)
_SHELL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9._-]+")
MAX_NAME_LENGTH = 120

# Slurm job states.  Every state Slurm documents (squeue(1) "JOB STATE CODES") is listed in
# exactly one of these.
ACTIVE_STATES = frozenset({
    "PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED",
    "REQUEUE_FED", "REQUEUE_HOLD", "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED",
    "RESV_DEL_HOLD", "SPECIAL_EXIT", "POWER_UP_NODE", "UPDATE_DB",
})
#: finished state -> (succeeded when the exit code is 0, retryable, why it ended)
FINAL_STATES: dict[str, tuple[bool, bool, str]] = {
    "COMPLETED": (True, False, "completed"),
    "FAILED": (False, False, "failed"),
    "CANCELLED": (False, False, "was cancelled"),
    "TIMEOUT": (False, False, "reached its time limit"),
    "OUT_OF_MEMORY": (False, False, "ran out of memory"),
    "NODE_FAIL": (False, True, "was lost to a node failure"),
    "PREEMPTED": (False, True, "was preempted"),
    "BOOT_FAIL": (False, True, "could not start: its node failed to boot"),
    "DEADLINE": (False, False, "missed its deadline"),
    "REVOKED": (False, True, "was revoked (it runs on another cluster of the federation)"),
    "LAUNCH_FAILED": (False, True, "failed to launch"),
}


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def validate_slurm_job(job: Any, path: str, secrets: SecretStore | None = None,
                       executor_sets_export: bool = False) -> list[str]:
    """Every problem with a Slurm job, each as ``"<path>.<field>: <message>"``.

    :param secrets: the secrets ``secretEnvironment`` names are looked up in (not looked up
        when None).
    :param executor_sets_export: the executor's own ``sbatchArgs`` hold ``--export``, which
        would decide the job's environment instead of :func:`export_option`.
    """
    if not isinstance(job, dict):
        return [f"{path}: must be an object"]
    errors = command_job_errors(
        job, path, JOB_FIELDS, lambda name: bool(_SHELL_NAME.match(name)),
        "variable names must be letters, digits and '_', not starting with a digit")

    for key, (low, high) in INTEGER_FIELDS.items():
        if key in job:
            value = job[key]
            if not _is_integer(value) or not low <= value <= high:
                errors.append(f"{path}.{key}: must be an integer from {low} to {high}")

    for key in STRING_FIELDS:
        if key in job:
            value = job[key]
            if not isinstance(value, str) or not value:
                errors.append(f"{path}.{key}: must be a non-empty string")
            elif "\0" in value or "\n" in value:
                errors.append(f"{path}.{key}: must not contain NUL or newline characters")

    if "sbatchArgs" in job:
        args = job["sbatchArgs"]
        if not isinstance(args, list):
            errors.append(f"{path}.sbatchArgs: must be a list of strings")
        else:
            for index, arg in enumerate(args):
                if not isinstance(arg, str):
                    errors.append(f"{path}.sbatchArgs[{index}]: must be a string")
                elif "\0" in arg:
                    errors.append(f"{path}.sbatchArgs[{index}]: must not contain NUL characters")
                elif reserved_option(arg):
                    errors.append(
                        f"{path}.sbatchArgs[{index}]: {arg.split('=')[0]} is set by the"
                        " executor and cannot be given"
                    )
                elif job.get("secretEnvironment") and is_export_option(arg):
                    errors.append(
                        f"{path}.sbatchArgs[{index}]: --export cannot be combined with"
                        " secretEnvironment (the executor passes the secrets with"
                        " --export=ALL,<names>)")

    errors.extend(secret_environment_errors(job, path, secrets))
    if executor_sets_export and job.get("secretEnvironment"):
        errors.append(f"{path}.secretEnvironment: cannot be used while the executor's"
                      " sbatchArgs set --export (the secrets are passed with"
                      " --export=ALL,<names>)")
    return errors


def is_export_option(arg: str) -> bool:
    """Whether ``arg`` is sbatch's ``--export`` (not ``--export-file``)."""
    return arg == "--export" or arg.startswith("--export=")


def export_option(names: list[str]) -> str:
    """The sbatch option passing the secrets of a job: the whole environment of the sbatch
    process, as without ``--export``, naming the secrets explicitly.  Names only: the
    values are in sbatch's environment, never on its command line."""
    return "--export=ALL," + ",".join(names)


def reserved_option(arg: str) -> bool:
    """Whether ``arg`` sets an sbatch option the executor owns (``--output=x``, ``-ox``).

    sbatch parses long options with getopt_long, which takes any unambiguous prefix of a
    name (``--out=x`` is ``--output=x``), so a prefix of a reserved name is reserved too."""
    if arg.startswith("--"):
        name = arg.split("=", 1)[0]
        return len(name) > 2 and any(
            option.startswith(name) for option in RESERVED_SBATCH_OPTIONS
            if option.startswith("--"))
    return any(arg.startswith(option) for option in RESERVED_SBATCH_OPTIONS
               if not option.startswith("--"))


def safe_name(text: str) -> str:
    """A file-name and job-name safe rendering of a task name: only ASCII letters, digits,
    ``.``, ``_`` and ``-`` (every other run of characters, ``/``, NUL, control characters and
    non-ASCII letters included, becomes one ``_``), no leading ``.`` or ``-`` (so never
    ``..`` nor something a command reads as an option), at most :data:`MAX_NAME_LENGTH`
    characters, never empty.

    Different names can give the same result; :func:`file_stem` and :func:`job_name` add a
    hash wherever that matters."""
    name = _UNSAFE_NAME_CHARS.sub("_", text).lstrip(".-")[:MAX_NAME_LENGTH]
    return name or "task"


def _hashed(wanted: str, digits: int) -> str:
    """``safe_name(wanted)`` when that leaves ``wanted`` unchanged, else the safe name cut
    short and followed by ``~`` and ``digits`` hex digits of a SHA-1 of ``wanted``.

    ``~`` is never part of an unchanged name (it is not a safe character), so a changed name
    never equals an unchanged one, and two changed names only meet if their hashes do."""
    name = safe_name(wanted)
    if name == wanted:
        return name
    digest = hashlib.sha1(wanted.encode("utf-8", "surrogatepass")).hexdigest()[:digits]
    return f"{name[:MAX_NAME_LENGTH - digits - 1]}~{digest}"


def job_name(prefix: str, run_id: int, task_name: str) -> str:
    """``<prefix>.<run id>.<task>`` as a Slurm job name.  When the task name had to be made
    safe (or shortened), a hash of the original keeps two tasks of one run from sharing a job
    name (a restarted daemon finds jobs by name)."""
    return _hashed(f"{prefix}.{run_id}.{task_name}", 8)


def file_stem(task_name: str) -> str:
    """The task's part of its output file names (``<stem>.<job id>.out``): the task name
    itself when it is already safe (see :func:`safe_name`), otherwise its safe form with
    ``~`` and a 64-bit hash of the name, so that no two task names share a stem and no name
    can point outside the run's directory."""
    return _hashed(task_name, 16)


def parse_named_jobs(output: str) -> dict[str, set[str]]:
    """Lines starting ``JobID|JobName|...`` (squeue ``-o '%i|%j|...'``, sacct
    ``--format=JobID,JobName,...``) -> job name -> job ids; job steps are skipped."""
    jobs: dict[str, set[str]] = {}
    for line in output.splitlines():
        parts = line.strip().split("|")
        if len(parts) < 2 or not parts[0] or "." in parts[0]:
            continue
        jobs.setdefault(parts[1], set()).add(parts[0])
    return jobs


def slurm_time(seconds: int) -> str:
    """``3725`` -> ``"0-01:02:05"`` (sbatch ``--time`` as days-hours:minutes:seconds)."""
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    return f"{days}-{hours:02d}:{minutes:02d}:{secs:02d}"


def batch_script(command: list[str], environment: dict[str, str], tmp_dir: str | None) -> str:
    """The script sbatch runs: exports the job's environment, then ``exec``s the argv with
    every argument single-quoted, so no argument is ever interpreted by the shell."""
    lines = ["#!/bin/sh"]
    for name, value in environment.items():
        lines.append(f"export {name}={shlex.quote(value)}")
    if tmp_dir is not None:
        lines.append(f"export TMPDIR={shlex.quote(tmp_dir)}")
    lines.append("exec " + " ".join(shlex.quote(arg) for arg in command))
    return "\n".join(lines) + "\n"


def job_options(job: dict[str, Any], defaults: dict[str, str | None]) -> list[str]:
    """sbatch options for a job's resource fields (job values over executor defaults)."""
    options: list[str] = []
    for key, option in (("partition", "--partition"), ("account", "--account"),
                        ("qos", "--qos")):
        value = job.get(key, defaults.get(key))
        if value:
            options.append(f"{option}={value}")
    if "workDir" in job:
        options.append(f"--chdir={job['workDir']}")
    if "minCPUs" in job:
        options.append(f"--cpus-per-task={job['minCPUs']}")
    if "minMemoryMB" in job:
        options.append(f"--mem={job['minMemoryMB']}M")
    if "minTmpDiskMB" in job:
        options.append(f"--tmp={job['minTmpDiskMB']}M")
    if "priority" in job:
        options.append(f"--priority={job['priority']}")
    if "timeLimitSeconds" in job:
        options.append(f"--time={slurm_time(job['timeLimitSeconds'])}")
    if "gres" in job:
        options.append(f"--gres={job['gres']}")
    return options


@dataclass(frozen=True)
class JobStatus:
    """What Slurm said about one job: its state and, once known, exit code and signal."""

    state: str
    exit_code: int | None = None
    signal: int | None = None
    reason: str = ""

    @property
    def finished(self) -> bool:
        return self.state not in ACTIVE_STATES and self.state in FINAL_STATES


def normalise_state(text: str) -> str:
    """``"CANCELLED by 1000"`` -> ``"CANCELLED"``; ``"RUNNING+"`` -> ``"RUNNING"``."""
    word = text.strip().split(" ")[0] if text.strip() else ""
    return word.rstrip("+").upper()


def parse_exit_code(text: str) -> tuple[int | None, int | None]:
    """``"3:0"`` -> ``(3, 0)``; anything unparsable -> ``(None, None)``."""
    code, _, signal = text.strip().partition(":")
    try:
        return int(code), int(signal or 0)
    except ValueError:
        return None, None


def parse_squeue(output: str) -> dict[str, JobStatus]:
    """Lines of ``squeue -h -o '%i|%T|%r'`` -> job id -> status."""
    statuses: dict[str, JobStatus] = {}
    for line in output.splitlines():
        parts = line.strip().split("|")
        if len(parts) < 2 or not parts[0]:
            continue
        statuses[parts[0]] = JobStatus(normalise_state(parts[1]),
                                       reason=parts[2] if len(parts) > 2 else "")
    return statuses


def parse_sacct(output: str) -> dict[str, JobStatus]:
    """Lines of ``sacct -n -P -o JobID,State,ExitCode`` -> job id -> status.

    Job steps (``12.batch``) are skipped; a job listed twice (requeued) keeps its last line.
    """
    statuses: dict[str, JobStatus] = {}
    for line in output.splitlines():
        parts = line.strip().split("|")
        if len(parts) < 3 or not parts[0] or "." in parts[0]:
            continue
        code, signal = parse_exit_code(parts[2])
        statuses[parts[0]] = JobStatus(normalise_state(parts[1]), code, signal)
    return statuses


def parse_scontrol(output: str) -> dict[str, JobStatus]:
    """Lines of ``scontrol -o show job`` (one ``Key=Value ...`` line per job)."""
    statuses: dict[str, JobStatus] = {}
    for line in output.splitlines():
        fields = dict(item.partition("=")[::2] for item in line.split() if "=" in item)
        job_id = fields.get("JobId")
        if not job_id or "JobState" not in fields:
            continue
        code, signal = parse_exit_code(fields.get("ExitCode", ""))
        statuses[job_id] = JobStatus(normalise_state(fields["JobState"]), code, signal,
                                     fields.get("Reason", ""))
    return statuses


def describe_status(job_id: str, status: JobStatus) -> tuple[bool, int | None, bool, str]:
    """``(succeeded, rc, retryable, executorLog sentence)`` for a finished job."""
    ok_if_zero, retryable, why = FINAL_STATES[status.state]
    rc: int | None = None
    detail = ""
    if status.state in ("COMPLETED", "FAILED") and status.exit_code is not None:
        if status.signal:
            detail = f", killed by signal {signal_name(status.signal)}"
        else:
            rc = status.exit_code
            detail = f", exit code {rc}"
    succeeded = ok_if_zero and rc == 0
    text = f"Slurm job {job_id} {why} (state {status.state}{detail})"
    if status.reason and status.reason not in ("None", "(null)"):
        text += f", reason {status.reason}"
    if retryable:
        text += "; not the task's fault, so it is retryable"
    return succeeded, rc, retryable, text


@dataclass(frozen=True)
class CommandResult:
    """How a Slurm command ended: ``rc`` is None when it did not run to an exit code (spawn
    failure, signal, timeout); ``problem`` then says why."""

    rc: int | None
    stdout: str
    stderr: str
    problem: str = ""

    @property
    def ok(self) -> bool:
        return self.rc == 0

    def describe(self) -> str:
        if self.problem:
            return self.problem
        message = self.stderr.strip().splitlines()
        return f"exit code {self.rc}" + (f": {message[-1]}" if message else "")


class _CommandProtocol(ProcessProtocol):
    def __init__(self, done: Deferred[CommandResult], limit: int) -> None:
        self._done = done
        self._stdout = BoundedOutput(limit)
        self._stderr = BoundedOutput(limit)
        self.timed_out = False

    def outReceived(self, data: bytes) -> None:
        self._stdout.add(data)

    def errReceived(self, data: bytes) -> None:
        self._stderr.add(data)

    def processEnded(self, reason: Failure) -> None:
        rc, description = describe_exit(reason)
        problem = ""
        if self.timed_out:
            problem = "timed out"
            rc = None
        elif rc is None:
            problem = description
        if not self._done.called:
            self._done.callback(CommandResult(rc, self._stdout.text(), self._stderr.text(),
                                              problem))


class CommandRunner:
    """Runs one Slurm command at a time per call; the Deferred always succeeds."""

    log = Logger()

    def __init__(self, reactor: Any, environ: dict[str, str], timeout_seconds: float,
                 max_output_bytes: int = 64 * 1024 * 1024) -> None:
        self._reactor = reactor
        self._environ = environ
        self._timeout = timeout_seconds
        self._limit = max_output_bytes

    def run(self, argv: list[str], stdin: bytes | None = None,
            environment: dict[str, str] | None = None) -> Deferred[CommandResult]:
        """Run ``argv`` with ``stdin``; ``environment`` is added to the command's
        environment (how secret values reach sbatch: never on ``argv``)."""
        done: Deferred[CommandResult] = Deferred()
        protocol = _CommandProtocol(done, self._limit)
        env = {**self._environ, **environment} if environment else self._environ
        try:
            transport = self._reactor.spawnProcess(protocol, argv[0], argv, env=env)
        except Exception as e:
            done.callback(CommandResult(None, "", "", f"could not run {argv[0]}: {e}"))
            return done
        if stdin is not None:
            transport.write(stdin)
        transport.closeStdin()
        if done.called:
            return done
        timer = self._reactor.callLater(self._timeout, self._time_out, protocol, transport)

        def cancel_timer(result: CommandResult) -> CommandResult:
            if timer.active():
                timer.cancel()
            return result

        done.addCallback(cancel_timer)
        return done

    def _time_out(self, protocol: _CommandProtocol, transport: Any) -> None:
        protocol.timed_out = True
        try:
            transport.signalProcess("KILL")
        except ProcessExitedAlready:
            pass
