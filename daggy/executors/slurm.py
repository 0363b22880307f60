# -*- test-case-name: tests.unit.test_slurm_executor -*-
"""The Slurm executor: each attempt is one Slurm batch job; one poller watches them all.

Submission is ``sbatch --parsable`` with the batch script on stdin.  Every ``poll_interval``
the poller runs **one** ``squeue`` for every tracked job; jobs that squeue shows finished or
no longer lists are resolved with **one** ``sacct`` call, with ``scontrol -o show job`` as the
fallback.  A Slurm command that fails or times out is "no news": the poller logs it, backs
off and tries again; no task fails because Slurm's controller was slow.  Kills are queued and
sent as one ``scancel`` per tick.
"""

from __future__ import annotations

import os
from collections import deque
from typing import Any, Callable

from twisted.internet.defer import Deferred, ensureDeferred, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from daggy.executors._process import FinishedExecution, decode_output
from daggy.executors._secrets import MissingSecret, SecretStore
from daggy.executors._slurm_commands import (
    ACTIVE_STATES,
    FINAL_STATES,
    CommandResult,
    CommandRunner,
    JobStatus,
    batch_script,
    describe_status,
    export_option,
    file_stem,
    is_export_option,
    job_name,
    job_options,
    parse_named_jobs,
    parse_sacct,
    parse_scontrol,
    parse_squeue,
    safe_name,
    validate_slurm_job,
)
from daggy.model import Attempt

SHUTDOWN_REASON = "daemon shutting down"
COMMANDS = ("sbatch", "squeue", "sacct", "scontrol", "scancel")
#: Above this many ids, squeue lists the daemon user's jobs instead (one argument must stay
#: below the kernel's 128 KiB limit); sacct gets the ids in chunks of this size.
MAX_IDS_PER_CALL = 5000
#: Job names per squeue/sacct call when a restarted daemon looks for jobs by name.
MAX_NAMES_PER_CALL = 500
#: How far back sacct looks for a job found by name (it needs a start time without -j).
SEARCH_SACCT_START = "now-30days"


def _unmeasured(*args: Any) -> None:
    """What the executor reports to when the daemon keeps no metrics."""


def _normal_failure(command: str, result: CommandResult) -> bool:
    """Whether a non-zero exit is part of normal operation (not counted as a failure):
    scancel of jobs that already ended, squeue of ids the controller has purged."""
    if result.rc != 1:
        return False
    return command == "scancel" or (command == "squeue" and "Invalid job id" in result.stderr)


class SlurmTaskExecutor:
    """Run each attempt as a Slurm batch job and watch all of them with batched polls.

    :param reactor: ``seconds``, ``callLater`` and ``spawnProcess``.
    :param poll_interval: seconds between polls.
    :param output_dir: where job stdout/stderr files go (``<dir>/run-<id>/<task>.<job>.out``);
        must be visible to daggyd and the compute nodes.
    :param partition, account, qos: defaults for jobs that do not name their own.
    :param command_prefix: prepended to each Slurm command name (e.g. ``/opt/slurm/bin/``).
    :param command_paths: per-command overrides, e.g. ``{"squeue": "/usr/local/bin/squeue"}``.
    :param sbatch_args: extra sbatch arguments for every job.
    :param job_name_prefix: jobs are named ``<prefix>.<run id>.<task>``.
    :param max_output_bytes: bytes of each output file read into the attempt.
    :param command_timeout_seconds: a Slurm command running longer is killed (no news).
    :param submit_retries: sbatch failures retried this often before the attempt fails.
    :param submit_backoff_seconds: first delay between sbatch tries; doubles each time.
    :param max_backoff_seconds: cap of the submit and poll backoff.
    :param lost_job_seconds: a job in neither squeue, sacct nor scontrol for this long is
        reported as failed (lost).
    :param sacct_completion: run ``sacct -c`` (the job completion log; clusters without
        slurmdbd) instead of plain ``sacct``.
    :param max_parallel_submits: most sbatch processes at once; further submissions wait
        their turn (a 10,000-task wave must not fork 10,000 sbatch processes).
    :param environ: the environment of the Slurm commands (default: ``os.environ``).
    :param secrets: the values of the executor's ``secretsFile``; a job's
        ``secretEnvironment`` names are looked up there, then in ``environ``, and reach the
        job through sbatch's environment (``--export=ALL,<names>``), never its argv or the
        batch script.
    :param secrets_source: the secrets file's path, for messages.
    """

    log = Logger()

    capacity: int | None = None
    templatable_fields = ("command", "environment", "workDir", "tmpDir", "partition",
                          "account", "qos", "gres", "sbatchArgs")

    def __init__(
        self,
        reactor: Any,
        poll_interval: float = 1.0,
        output_dir: str = "/tmp/daggy-slurm",
        partition: str | None = None,
        account: str | None = None,
        qos: str | None = None,
        command_prefix: str = "",
        command_paths: dict[str, str] | None = None,
        sbatch_args: tuple[str, ...] | list[str] = (),
        job_name_prefix: str = "daggy",
        max_output_bytes: int = 16 * 1024 * 1024,
        command_timeout_seconds: float = 30.0,
        submit_retries: int = 4,
        submit_backoff_seconds: float = 1.0,
        max_backoff_seconds: float = 60.0,
        lost_job_seconds: float = 600.0,
        sacct_completion: bool = False,
        max_parallel_submits: int = 8,
        environ: dict[str, str] | None = None,
        secrets: dict[str, str] | None = None,
        secrets_source: str | None = None,
    ) -> None:
        if poll_interval <= 0:
            raise ValueError(f"pollIntervalSeconds must be > 0, not {poll_interval!r}")
        if not isinstance(max_parallel_submits, int) or max_parallel_submits < 1:
            raise ValueError(f"maxParallelSubmits must be an integer >= 1, not "
                             f"{max_parallel_submits!r}")
        if "%" in output_dir or "\\" in output_dir:
            raise ValueError("outputDir must not contain '%' or '\\' (sbatch file patterns)")
        unknown = set(command_paths or {}) - set(COMMANDS)
        if unknown:
            raise ValueError(f"commandPaths: unknown commands {sorted(unknown)}")
        self._reactor = reactor
        self._poll_interval = float(poll_interval)
        self._output_dir = os.path.abspath(output_dir)
        self._defaults = {"partition": partition, "account": account, "qos": qos}
        self._paths = {name: command_prefix + name for name in COMMANDS}
        self._paths.update(command_paths or {})
        self._sbatch_args = list(sbatch_args)
        self._sbatch_args_export = any(is_export_option(arg) for arg in self._sbatch_args)
        self._job_name_prefix = safe_name(job_name_prefix)
        self._max_output_bytes = max_output_bytes
        self._submit_retries = submit_retries
        self._submit_backoff = float(submit_backoff_seconds)
        self._max_backoff = float(max_backoff_seconds)
        self._lost_job_seconds = float(lost_job_seconds)
        self._sacct_completion = sacct_completion
        command_environ = dict(os.environ if environ is None else environ)
        self._secrets = SecretStore(secrets, command_environ, secrets_source)
        self._runner = CommandRunner(reactor, command_environ, command_timeout_seconds)
        #: job id -> execution, for every job submitted and not yet resolved.
        self._tracked: dict[str, SlurmExecution] = {}
        #: executions not yet finished (submitting or tracked).
        self._live: dict[SlurmExecution, None] = {}
        self._cancel_queue: dict[str, None] = {}
        #: executions of a restarted daemon whose job id was never recorded: found by name.
        self._searching: dict[SlurmExecution, None] = {}
        self._max_parallel_submits = max_parallel_submits
        self._submitting = 0
        self._submit_queue: deque[SlurmExecution] = deque()
        self._loop = LoopingCall(self._tick)
        self._loop.clock = reactor
        self._polling = False
        self._poll_failures = 0
        self._quiet_until = 0.0
        self._stopped = False
        self._batching_stop = False
        self._idle_waiters: list[Deferred[None]] = []
        #: Counts of Slurm commands run, by name (for tests, benchmarks and metrics).
        self.command_counts: dict[str, int] = {name: 0 for name in COMMANDS}
        #: Told how long each poll took, and the name of each Slurm command that failed;
        #: daggyd's metrics replace these no-ops (daggy.metrics.DaemonMetrics.watch).
        self.observe_poll_seconds: Callable[[float], None] = _unmeasured
        self.count_command_failure: Callable[[str], None] = _unmeasured

    # -- the TaskExecutor interface ------------------------------------------------------

    def validate_job(self, job: Any, path: str) -> list[str]:
        """Every problem with ``job`` as ``"<path>.<field>: <message>"``; unknown fields too.
        Every name in ``secretEnvironment`` must be a secret this executor has."""
        return validate_slurm_job(job, path, self._secrets, self._sbatch_args_export)

    def start(self, run_id: int, task_name: str, job: dict[str, Any]) -> Any:
        """Submit one attempt; ``started`` fires with ``{"jobId", "stdout", "stderr"}`` once
        sbatch answered.  Never raises for a task-level problem."""
        now = self._reactor.seconds()
        if self._stopped:
            return FinishedExecution(Attempt(
                start_time=now, stop_time=now, rc=None, succeeded=False, killed=True,
                executor_log=f"not submitted: {SHUTDOWN_REASON}"))
        execution = self._execution(run_id, task_name, job, now)
        if not execution.ended:
            self._live[execution] = None
            execution.submit()
        return execution

    def _execution(self, run_id: int, task_name: str, job: dict[str, Any],
                   now: float) -> SlurmExecution:
        """An execution ready to submit ``job`` (or already failed: no output directory)."""
        run_dir = os.path.join(self._output_dir, f"run-{run_id}")
        stem = os.path.join(run_dir, file_stem(task_name))
        name = job_name(self._job_name_prefix, run_id, task_name)
        stdout, stderr = stem + ".%j.out", stem + ".%j.err"
        secret_names = list(job.get("secretEnvironment") or ())
        argv = [
            "--parsable", f"--job-name={name}", f"--output={stdout}", f"--error={stderr}",
            *job_options(job, self._defaults),
            *([export_option(secret_names)] if secret_names else []),
            *self._sbatch_args, *job.get("sbatchArgs", ()),
        ]
        script = batch_script(list(job["command"]), dict(job.get("environment") or {}),
                              job.get("tmpDir"))
        try:
            secret_values = self._secrets.values(secret_names)
            missing = None
        except MissingSecret as e:
            secret_values, missing = {}, str(e)
        execution = SlurmExecution(self, f"run {run_id} task {task_name}", now,
                                   log_fields={"run_id": run_id, "task": task_name},
                                   stdout_pattern=stdout, stderr_pattern=stderr,
                                   job_name=name, argv=argv, script=script.encode("utf-8"),
                                   environment=secret_values)
        if missing is not None:
            execution.finish(succeeded=False, rc=None, log=f"not submitted: {missing}")
            return execution
        try:
            os.makedirs(run_dir, exist_ok=True)
        except OSError as e:
            execution.finish(succeeded=False, rc=None,
                             log=f"not submitted: cannot create {run_dir}: {e.strerror}")
        return execution

    def reattach(self, run_id: int, task_name: str, job: dict[str, Any],
                 executor_state: dict[str, Any],
                 earlier_states: list[dict[str, Any]] = ()) -> SlurmExecution | None:
        """Watch a job submitted by an earlier daemon again (no resubmission).  Its result
        comes from the next poll; a job that ended meanwhile gets its real result (sacct).

        Without a recorded job id (the daemon died between sbatch's answer and recording
        it, or before sbatch ran), the next poll looks the job up by its name, ignoring the
        jobs of ``earlier_states``; only when Slurm has no such job is it submitted."""
        if self._stopped:
            return None
        job_id = executor_state.get("jobId")
        now = self._reactor.seconds()
        if not isinstance(job_id, str) or not job_id:
            execution = self._execution(run_id, task_name, job, now)
            if execution.ended:
                return execution
            execution.not_these = {str(state.get("jobId")) for state in earlier_states
                                   if state.get("jobId")}
            self._live[execution] = None
            self._searching[execution] = None
            self._ensure_polling()
            return execution
        execution = SlurmExecution(self, f"run {run_id} task {task_name}", now,
                                   log_fields={"run_id": run_id, "task": task_name},
                                   stdout_pattern=str(executor_state.get("stdout", "")),
                                   stderr_pattern=str(executor_state.get("stderr", "")))
        execution.job_id = job_id
        execution.executor_state = dict(executor_state)
        execution.started.callback(dict(executor_state))
        self._live[execution] = None
        self.track(job_id, execution)
        return execution

    def stop(self) -> Deferred[None]:
        """Cancel every job (one scancel) and refuse new ones; fires once every attempt's
        result has fired."""
        self._stopped = True
        self._batching_stop = True
        try:
            for execution in list(self._live):
                execution.kill(SHUTDOWN_REASON)
        finally:
            self._batching_stop = False
        d = self._send_cancels()
        d.addErrback(lambda failure: self.log.failure("scancel at shutdown failed", failure))
        return self._when_idle()

    # -- used by SlurmExecution ----------------------------------------------------------

    def run_command(self, name: str, args: list[str], stdin: bytes | None = None,
                    environment: dict[str, str] | None = None) -> Deferred[CommandResult]:
        self.command_counts[name] += 1
        d = self._runner.run([self._paths[name], *args], stdin, environment)
        d.addCallback(self._counted, name)
        return d

    def _counted(self, result: CommandResult, name: str) -> CommandResult:
        if not result.ok and not _normal_failure(name, result):
            self.count_command_failure(name)
        return result

    def sbatch(self, execution: SlurmExecution) -> None:
        """Run sbatch for ``execution`` now, or once one of the parallel slots is free."""
        if self._submitting < self._max_parallel_submits:
            self._run_sbatch(execution)
        else:
            self._submit_queue.append(execution)

    def _run_sbatch(self, execution: SlurmExecution) -> None:
        self._submitting += 1
        execution.sbatch_running = True
        d = self.run_command("sbatch", execution.argv, execution.script,
                             execution.environment)
        d.addBoth(self._sbatch_slot_free)
        d.addCallback(execution.submitted)
        d.addErrback(execution.bug)

    def _sbatch_slot_free(self, result: Any) -> Any:
        self._submitting -= 1
        while self._submit_queue and self._submitting < self._max_parallel_submits:
            waiting = self._submit_queue.popleft()
            if not waiting.ended:
                self._run_sbatch(waiting)
        return result

    def submit_delay(self, tries: int) -> float | None:
        """Seconds to wait before sbatch try ``tries + 1``, or None when out of tries."""
        if tries > self._submit_retries:
            return None
        return min(self._submit_backoff * 2 ** (tries - 1), self._max_backoff)

    def track(self, job_id: str, execution: SlurmExecution) -> None:
        self._tracked[job_id] = execution
        self._ensure_polling()

    def cancel(self, job_id: str) -> None:
        """Queue ``job_id`` for the next tick's scancel (at once when stopping)."""
        self._cancel_queue[job_id] = None
        if self._stopped:
            if not self._batching_stop:
                self._send_cancels()
        else:
            self._ensure_polling()

    def is_searching(self, execution: SlurmExecution) -> bool:
        return execution in self._searching

    def ended(self, execution: SlurmExecution) -> None:
        self._live.pop(execution, None)
        self._searching.pop(execution, None)
        if execution.job_id is not None and self._tracked.get(execution.job_id) is execution:
            del self._tracked[execution.job_id]
        if not self._live and self._idle_waiters:
            waiters, self._idle_waiters = self._idle_waiters, []
            for waiter in waiters:
                waiter.callback(None)

    def read_output(self, path: str) -> tuple[str, bool]:
        """The first ``max_output_bytes`` of an output file and whether it was cut."""
        if not path:
            return "", False
        try:
            with open(path, "rb") as stream:
                data = stream.read(self._max_output_bytes + 1)
        except OSError:
            return "", False
        truncated = len(data) > self._max_output_bytes
        return decode_output(data[: self._max_output_bytes], cut=truncated), truncated

    # -- polling ---------------------------------------------------------------------------

    @property
    def tracked_count(self) -> int:
        return len(self._tracked)

    def _ensure_polling(self) -> None:
        if not self._loop.running and not self._stopped:
            self._loop.start(self._poll_interval, now=False)

    def _when_idle(self) -> Deferred[None]:
        if not self._live:
            if self._loop.running and not self._polling:
                self._loop.stop()
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._idle_waiters.append(waiter)
        return waiter

    def _tick(self) -> Deferred[None] | None:
        if self._polling:
            return None
        if not self._tracked and not self._cancel_queue and not self._searching:
            self._loop.stop()
            return None
        self._polling = True
        d = ensureDeferred(self._poll())
        d.addErrback(lambda failure: self.log.failure("Slurm poll failed", failure))

        def done(_: Any) -> None:
            self._polling = False
            if self._stopped or not (self._tracked or self._cancel_queue or self._searching):
                if self._loop.running:
                    self._loop.stop()

        d.addBoth(done)
        return d

    def _send_cancels(self) -> Deferred[None]:
        ids = list(self._cancel_queue)
        self._cancel_queue.clear()
        if not ids:
            return succeed(None)
        d = ensureDeferred(self._cancel(ids))
        d.addErrback(lambda failure: self.log.failure("scancel failed", failure))
        return d

    async def _cancel(self, ids: list[str]) -> None:
        if len(ids) > 1:
            # Pending jobs first.  Cancelling running jobs frees CPUs, slurmctld may then
            # start a pending job of the same list, and that job's launch can overtake its
            # cancel: seen with Slurm 22.05, the job then ran to its end, cancelled.
            await self.run_command("scancel", ["--state=PENDING", *ids])
        result = await self.run_command("scancel", ids)
        # rc 1 is normal when one of the jobs already finished; only a command that did
        # not run at all leaves the jobs to cancel again.
        if result.rc is None:
            self.log.warn("scancel of {count} jobs failed ({why}); trying again",
                          count=len(ids), why=result.describe())
            for job_id in ids:
                if job_id in self._tracked:
                    self._cancel_queue[job_id] = None

    async def _poll(self) -> None:
        await self._send_cancels()
        tick_time = self._reactor.seconds()
        if tick_time < self._quiet_until:
            return
        if self._searching:
            await self._search(tick_time)
        if not self._tracked:
            return
        ids = list(self._tracked)
        if len(ids) <= MAX_IDS_PER_CALL:
            args = ["-h", "-t", "all", "-o", "%i|%T|%r", "-j", ",".join(ids)]
        else:
            args = ["-h", "-t", "all", "-o", "%i|%T|%r", "-u", _user_name()]
        started = self._reactor.seconds()
        result = await self.run_command("squeue", args)
        if result.ok:
            listed = parse_squeue(result.stdout)
        elif result.rc == 1 and "Invalid job id" in result.stderr:
            listed = {}  # every id asked about has been purged from the controller
        else:
            self._no_news("squeue", result, tick_time)
            self.observe_poll_seconds(self._reactor.seconds() - started)
            return
        self._news()
        to_resolve: list[str] = []
        for job_id in ids:
            execution = self._tracked.get(job_id)
            if execution is None:
                continue
            status = listed.get(job_id)
            if status is None or status.state not in ACTIVE_STATES:
                to_resolve.append(job_id)
            else:
                execution.seen(status)
        if to_resolve:
            await self._resolve(to_resolve, listed)
        self.observe_poll_seconds(self._reactor.seconds() - started)

    async def _resolve(self, ids: list[str], listed: dict[str, JobStatus]) -> None:
        """Final states of finished or vanished jobs: sacct, then scontrol, then squeue's."""
        found: dict[str, JobStatus] = {}
        sacct_worked = True
        for start in range(0, len(ids), MAX_IDS_PER_CALL):
            chunk = ids[start:start + MAX_IDS_PER_CALL]
            args = ["-n", "-P", "-X", "-j", ",".join(chunk),
                    "--format=JobID,State,ExitCode"]
            if self._sacct_completion:
                args.insert(0, "-c")
            result = await self.run_command("sacct", args)
            if result.ok:
                found.update(parse_sacct(result.stdout))
            else:
                sacct_worked = False
                self.log.debug("sacct: {why}", why=result.describe())
        missing = [job_id for job_id in ids if job_id not in found
                   or found[job_id].state not in FINAL_STATES]
        scontrol_worked = True
        if missing:
            result = await self.run_command("scontrol", ["-o", "show", "job"])
            if result.ok:
                shown = parse_scontrol(result.stdout)
                for job_id in missing:
                    if job_id in shown:
                        found[job_id] = shown[job_id]
            else:
                scontrol_worked = False
        now = self._reactor.seconds()
        for job_id in ids:
            execution = self._tracked.get(job_id)
            if execution is None:
                continue
            candidates = [s for s in (found.get(job_id), listed.get(job_id)) if s is not None]
            final = [s for s in candidates if s.state in FINAL_STATES]
            status = final[0] if final else (candidates[0] if candidates else None)
            if status is not None and status.state in FINAL_STATES:
                execution.resolve(status)
            elif status is not None and status.state in ACTIVE_STATES:
                execution.seen(status)
            elif status is not None:
                execution.unknown_state(status)
            elif sacct_worked or scontrol_worked:
                execution.missing(now, self._lost_job_seconds)

    async def _search(self, tick_time: float) -> None:
        """Find by name the jobs of re-attached attempts whose job id was never recorded:
        one squeue and one sacct per batch of names.  Found jobs are tracked; attempts
        Slurm has no job for are submitted now.  A failed query decides nothing."""
        searching = list(self._searching)
        names = sorted({execution.job_name for execution in searching})
        found: dict[str, set[str]] = {}
        for start in range(0, len(names), MAX_NAMES_PER_CALL):
            chunk = ",".join(names[start:start + MAX_NAMES_PER_CALL])
            sacct_args = ["-n", "-P", "-X", "-S", SEARCH_SACCT_START, f"--name={chunk}",
                          "--format=JobID,JobName,State"]
            if self._sacct_completion:
                sacct_args.insert(0, "-c")
            queries = (("squeue", ["-h", "-t", "all", "-o", "%i|%j|%T", "-n", chunk]),
                       ("sacct", sacct_args))
            for command, args in queries:
                result = await self.run_command(command, args)
                if not result.ok:
                    self._no_news(command, result, tick_time)
                    return
                # Filtered here too: `sacct -c` ignores --name.
                for name, ids in parse_named_jobs(result.stdout).items():
                    found.setdefault(name, set()).update(ids)
        self._news()
        for execution in searching:
            if execution.ended or execution not in self._searching:
                continue
            del self._searching[execution]
            candidates = found.get(execution.job_name, set()) - execution.not_these
            candidates -= set(self._tracked)
            if candidates:
                execution.found(max(candidates, key=_job_id_order))
            elif execution.kill_requested:
                execution.finish(succeeded=False, rc=None, killed=True,
                                 log=f"not submitted: {execution.kill_requested}")
            else:
                self.log.info("Slurm has no job for {label} (the daemon stopped before it "
                              "was submitted): submitting it now", label=execution.label,
                              **execution.log_fields)
                execution.submit()

    def _no_news(self, command: str, result: CommandResult, tick_time: float) -> None:
        self._poll_failures += 1
        delay = min(self._poll_interval * 2 ** self._poll_failures, self._max_backoff)
        # Counted from the tick that ran the failed command, with half an interval of slack,
        # so the tick ``delay`` later polls again (the command itself took time).
        self._quiet_until = tick_time + delay - self._poll_interval / 2
        if self._poll_failures == 1:
            self.log.warn("{command} failed ({why}); no news about Slurm jobs, polling less "
                          "often until it works again", command=command, why=result.describe())

    def _news(self) -> None:
        if self._poll_failures:
            self.log.info("Slurm answers again after {count} failed polls",
                          count=self._poll_failures)
        self._poll_failures = 0
        self._quiet_until = 0.0


def _job_id_order(job_id: str) -> tuple[int, ...]:
    return tuple(int(part) for part in job_id.split("_") if part.isdigit())


def _user_name() -> str:
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name


class SlurmExecution:
    """One attempt as one Slurm job: submission with retries, then whatever polls say."""

    log = Logger()

    def __init__(self, executor: SlurmTaskExecutor, label: str, start_time: float, *,
                 stdout_pattern: str, stderr_pattern: str, job_name: str = "",
                 log_fields: dict[str, Any] | None = None,
                 argv: list[str] | None = None, script: bytes = b"",
                 environment: dict[str, str] | None = None) -> None:
        self.result: Deferred[Attempt] = Deferred()
        self.started: Deferred[dict[str, Any]] = Deferred()
        self.job_id: str | None = None
        self.job_name = job_name
        self.argv = argv or []
        self.script = script
        #: Added to sbatch's environment: the values of the job's secretEnvironment.
        self.environment = environment or {}
        self.stdout_pattern = stdout_pattern
        self.stderr_pattern = stderr_pattern
        #: job ids of the task's earlier attempts (never this attempt's job).
        self.not_these: set[str] = set()
        self._executor = executor
        self._reactor = executor._reactor
        self.label = label
        #: ``run_id`` and ``task``, added to every log event about this attempt.
        self.log_fields = log_fields or {}
        #: True while this attempt's sbatch process runs.
        self.sbatch_running = False
        #: What ``started`` reported: found again after a restart, kept in the attempt.
        self.executor_state: dict[str, Any] = {}
        self._start_time = start_time
        self._tries = 0
        self._retry_call: Any = None
        self._kill_reason: str | None = None
        self._missing_since: float | None = None
        self._warned_state: str | None = None
        self.ended = False

    # submission

    def submit(self) -> None:
        self._tries += 1
        self._executor.sbatch(self)

    def submitted(self, result: CommandResult) -> None:
        """sbatch ended (or timed out)."""
        self.sbatch_running = False
        job_id = result.stdout.strip().split(";")[0] if result.ok else ""
        if job_id.isdigit() or (job_id and job_id.replace("_", "").isdigit()):
            self.log.debug("submitted {label} as Slurm job {job}", label=self.label, job=job_id,
                           **self.log_fields)
            self.found(job_id)
            return
        why = result.describe() if not result.ok else f"unexpected output {result.stdout!r}"
        delay = self._executor.submit_delay(self._tries)
        if self._kill_reason is not None or delay is None:
            killed = self._kill_reason is not None
            self.log.warn("could not submit {label}: {why}", label=self.label, why=why,
                          **self.log_fields)
            self.finish(succeeded=False, rc=None, killed=killed,
                        log=(f"not submitted: {self._kill_reason}" if killed else
                             f"sbatch failed {self._tries} times; last: {why}"))
            return
        self.log.info("sbatch for {label} failed ({why}); try {next} in {delay}s",
                      label=self.label, why=why, next=self._tries + 1, delay=delay,
                      **self.log_fields)
        self._retry_call = self._reactor.callLater(delay, self._retry)

    def _retry(self) -> None:
        self._retry_call = None
        self.submit()

    def found(self, job_id: str) -> None:
        """This attempt is Slurm job ``job_id`` (sbatch answered, or a search found it)."""
        self.job_id = job_id
        stdout = self.stdout_pattern.replace("%j", job_id)
        stderr = self.stderr_pattern.replace("%j", job_id)
        self.stdout_pattern, self.stderr_pattern = stdout, stderr
        self.executor_state = {"jobId": job_id, "stdout": stdout, "stderr": stderr}
        self.started.callback(dict(self.executor_state))
        self._executor.track(job_id, self)
        if self._kill_reason is not None:
            reason, self._kill_reason = self._kill_reason, None
            self.kill(reason)

    # polling outcomes

    def seen(self, status: JobStatus) -> None:
        self._missing_since = None

    def unknown_state(self, status: JobStatus) -> None:
        self._missing_since = None
        if self._warned_state != status.state:
            self._warned_state = status.state
            self.log.warn("Slurm job {job} of {label} is in unknown state {state}; still "
                          "watching it", job=self.job_id, label=self.label, state=status.state,
                          **self.log_fields)

    def missing(self, now: float, give_up_after: float) -> None:
        if self._missing_since is None:
            self._missing_since = now
        elif now - self._missing_since >= give_up_after:
            self.finish(succeeded=False, rc=None, killed=self._kill_reason is not None,
                        log=f"Slurm job {self.job_id} is gone: not in squeue, sacct or "
                            f"scontrol for {give_up_after:g}s; its outcome is unknown")

    def resolve(self, status: JobStatus) -> None:
        succeeded, rc, _retryable, text = describe_status(str(self.job_id), status)
        killed = status.state == "CANCELLED" and self._kill_reason is not None
        if killed:
            text += f"; {self._kill_reason}"
        elif status.state == "CANCELLED":
            text += " outside daggyd"
        self.finish(succeeded=succeeded, rc=rc, killed=killed,
                    timed_out=status.state == "TIMEOUT", log=text)

    @property
    def kill_requested(self) -> str | None:
        """Why a kill was asked for while there was no job to cancel yet."""
        return self._kill_reason

    # the Execution interface

    def kill(self, reason: str) -> None:
        """Cancel the job (scancel at the next tick); the result fires once Slurm reports
        it ended.  A submission not yet made is abandoned."""
        if self.ended or self._kill_reason is not None:
            return
        self._kill_reason = reason
        if self._retry_call is not None:
            self._retry_call.cancel()
            self._retry_call = None
            self.finish(succeeded=False, rc=None, killed=True, log=f"not submitted: {reason}")
        elif self.job_id is None and not self.sbatch_running:
            if self._executor.is_searching(self) and reason != SHUTDOWN_REASON:
                return  # a job the search finds is cancelled then; none found, none submitted
            self.finish(succeeded=False, rc=None, killed=True, log=f"not submitted: {reason}")
        elif self.job_id is not None:
            self._executor.cancel(self.job_id)
            if reason == SHUTDOWN_REASON:
                # The daemon is going away: record the kill now instead of waiting for a poll.
                self.finish(succeeded=False, rc=None, killed=True,
                            log=f"Slurm job {self.job_id} cancelled: {reason}")

    def finish(self, *, succeeded: bool, rc: int | None, log: str, killed: bool = False,
               timed_out: bool = False) -> None:
        if self.ended:
            return
        self.ended = True
        self.environment = {}  # no secret value is kept longer than needed
        output, output_cut = ("", False)
        errors, errors_cut = ("", False)
        if self.job_id is not None:
            output, output_cut = self._executor.read_output(self.stdout_pattern)
            errors, errors_cut = self._executor.read_output(self.stderr_pattern)
        self._executor.ended(self)
        if not self.started.called:
            self.started.callback({})
        self.result.callback(Attempt(
            start_time=self._start_time, stop_time=self._reactor.seconds(), rc=rc,
            succeeded=succeeded, output_log=output, error_log=errors, executor_log=log,
            killed=killed, timed_out=timed_out, output_truncated=output_cut,
            error_truncated=errors_cut,
            executor_state=dict(self.executor_state)))

    def bug(self, failure: Any) -> None:
        self.log.failure("submitting {label} failed unexpectedly", failure, label=self.label,
                         **self.log_fields)
        self.finish(succeeded=False, rc=None, log=f"internal error: {failure.getErrorMessage()}")
