# -*- test-case-name: tests.unit.test_forking_executor -*-
"""The forking executor: every attempt is a local child process in its own process group.

The split follows buildbot's RunProcessPP/RunProcess: :class:`_ProcessAdapter` is a thin
``ProcessProtocol`` forwarding every event to one :class:`ForkedExecution`, which owns the
output buffers, the timers and the result Deferred.

Every task leads a new session, so its pid is its process-group id and a kill reaches its
whole group.  On a real reactor :mod:`daggy.executors._spawn` spawns it that way directly
(``posix_spawn`` with ``setsid``).  Elsewhere (fake reactors in tests, a Twisted without the
hooks that module needs) ``reactor.spawnProcess`` runs ``/usr/bin/setsid -- <command...>``:
the forked child is never a group leader, so setsid calls ``setsid()`` in place and then
``execvp``s the command, keeping the pid.  Either way the task sees exactly the ``argv`` the
job gave (``argv[0]`` included), with the program looked up in the job's ``PATH``.

A descendant that leaves the group (``setsid``, double fork) is found by the executor's
isolation (:mod:`daggy.executors._isolation`): a cgroup per task where the machine allows
it, else daggyd as a child subreaper plus a ``/proc`` walk at kill time.
"""

from __future__ import annotations

import os
import signal
from typing import Any, Callable

from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.posixbase import PosixReactorBase
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from daggy.executors._isolation import (
    GroupOnlyScope,
    Isolation,
    Scope,
    SessionIsolation,
    choose_isolation,
)
from daggy.executors._secrets import MissingSecret, SecretStore, secret_environment_errors
from daggy.executors._spawn import can_spawn_session_leaders, spawn_session_leader
from daggy.executors._process import (
    BoundedOutput,
    FinishedExecution,
    ProcessReactor,
    ProgramNotFound,
    check_work_dir,
    command_job_errors,
    describe_exit,
    find_program,
    format_seconds,
)
from daggy.model import Attempt, is_finite_number

JOB_FIELDS = ("command", "environment", "secretEnvironment", "timeoutSeconds", "workDir")
SHUTDOWN_REASON = "daemon shutting down"


def _has_nul(text: str) -> bool:
    return "\0" in text


def validate_command_job(job: Any, path: str, secrets: SecretStore | None = None) -> list[str]:
    """Check a ``{command, environment, secretEnvironment, timeoutSeconds, workDir}`` job;
    see :meth:`ForkingTaskExecutor.validate_job`.  Without ``secrets`` the names in
    ``secretEnvironment`` are checked but not looked up."""
    if not isinstance(job, dict):
        return [f"{path}: must be an object"]
    errors = command_job_errors(
        job, path, JOB_FIELDS,
        lambda name: bool(name) and "=" not in name and not _has_nul(name),
        "variable names must be non-empty and contain no '=' or NUL")

    if "timeoutSeconds" in job:
        timeout = job["timeoutSeconds"]
        if not is_finite_number(timeout) or timeout <= 0:
            errors.append(f"{path}.timeoutSeconds: must be a number > 0")

    if "workDir" in job:
        work_dir = job["workDir"]
        if not isinstance(work_dir, str) or not work_dir:
            errors.append(f"{path}.workDir: must be a non-empty string")
        elif _has_nul(work_dir):
            errors.append(f"{path}.workDir: must not contain NUL characters")
    errors.extend(secret_environment_errors(job, path, secrets))
    return errors


class ForkingTaskExecutor:
    """Run each attempt as a local process (argv, no shell) in its own process group.

    :param reactor: provides ``seconds``, ``callLater`` and ``spawnProcess``.
    :param threads: how many attempts may run at once (the runner enforces it).
    :param max_output_bytes: bytes kept per stream (stdout, stderr); the rest is dropped.
    :param kill_grace_seconds: how long after SIGTERM to send SIGKILL; also how long to
        wait for output pipes to close after the process exited.
    :param environ: the environment every task starts from (default: a snapshot of
        ``os.environ`` taken now); the job's ``environment`` is laid over it.
    :param kill_group: ``os.killpg``-compatible; tests inject a fake.
    :param setsid_path: the util-linux ``setsid`` that puts each task in a new session when
        the reactor cannot spawn session leaders itself.
    :param secrets: the values of the executor's ``secretsFile``; a job's
        ``secretEnvironment`` names are looked up there, then in ``environ``.
    :param isolation: how the processes of a task are found when it is killed (see
        :mod:`daggy.executors._isolation`): ``"auto"`` (the strongest this machine allows;
        process groups only on a reactor that is not a real POSIX one), ``"cgroup"``,
        ``"subreaper"``, ``"session"``, or an :class:`~daggy.executors._isolation.Isolation`.
    """

    log = Logger()

    templatable_fields = ("command", "environment", "workDir")

    def __init__(
        self,
        reactor: ProcessReactor,
        threads: int = 10,
        max_output_bytes: int = 16 * 1024 * 1024,
        kill_grace_seconds: float = 5.0,
        environ: dict[str, str] | None = None,
        *,
        kill_group: Callable[[int, int], None] = os.killpg,
        setsid_path: str = "/usr/bin/setsid",
        isolation: str | Isolation = "auto",
        secrets: dict[str, str] | None = None,
        secrets_source: str | None = None,
    ) -> None:
        if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
            raise ValueError(f"threads must be an integer >= 1, not {threads!r}")
        if (
            not isinstance(max_output_bytes, int)
            or isinstance(max_output_bytes, bool)
            or max_output_bytes < 0
        ):
            raise ValueError(f"maxOutputBytes must be an integer >= 0, not {max_output_bytes!r}")
        if not is_finite_number(kill_grace_seconds) or kill_grace_seconds < 0:
            raise ValueError(f"killGraceSeconds must be a number >= 0, not {kill_grace_seconds!r}")
        self._reactor = reactor
        self.capacity: int | None = threads
        self._max_output_bytes = max_output_bytes
        self._kill_grace_seconds = float(kill_grace_seconds)
        self._environ = dict(os.environ if environ is None else environ)
        self._secrets = SecretStore(secrets, self._environ, secrets_source)
        self._kill_group = kill_group
        self._setsid_path = None if can_spawn_session_leaders(reactor) else setsid_path
        if not isinstance(isolation, str):
            self._isolation: Isolation = isolation
        elif isolation == "auto" and not isinstance(reactor, PosixReactorBase):
            self._isolation = SessionIsolation("not a real reactor")
        else:
            self._isolation = choose_isolation(isolation, reactor, threads)
        if self._isolation.why_not_stronger:
            self.log.info("task isolation: {mode} ({why})", mode=self._isolation.mode,
                          why=self._isolation.why_not_stronger)
        else:
            self.log.info("task isolation: {mode}", mode=self._isolation.mode)
        self._running: set[ForkedExecution] = set()
        self._idle_waiters: list[Deferred[None]] = []
        self._stopped = False
        self._closed = False

    def validate_job(self, job: Any, path: str) -> list[str]:
        """Every problem with ``job``, each as ``"<path>.<field>: <message>"``.

        Unknown fields are errors, so a misspelt ``timeoutSecond`` is not silently ignored.
        Every name in ``secretEnvironment`` must be a secret this executor has.
        """
        return validate_command_job(job, path, self._secrets)

    def start(
        self, run_id: int, task_name: str, job: dict[str, Any]
    ) -> ForkedExecution | FinishedExecution:
        """Spawn one attempt of an already validated and expanded job.

        Never raises for a task-level problem: a missing program, a bad ``workDir`` or a
        failing ``spawnProcess`` give an execution whose result has already fired with
        ``succeeded=False, rc=None`` and ``executorLog`` starting ``spawn failed:``.
        """
        start_time = self._reactor.seconds()
        label = f"run {run_id} task {task_name}"
        # So that JSON log lines carry the IDs as fields (docs/config.md, log-format).
        fields = {"run_id": run_id, "task": task_name}
        if self._stopped:
            return FinishedExecution(
                Attempt(
                    start_time=start_time,
                    stop_time=start_time,
                    rc=None,
                    succeeded=False,
                    executor_log=f"not started: {SHUTDOWN_REASON}",
                    killed=True,
                )
            )
        command = list(job["command"])
        environment = dict(self._environ)
        environment.update(job.get("environment") or {})
        work_dir = job.get("workDir")
        try:
            # The values never leave this dict: only the spawned process gets them.
            environment.update(self._secrets.values(job.get("secretEnvironment") or ()))
            cwd = os.getcwd()
            if work_dir is not None:
                check_work_dir(work_dir)
                cwd = os.path.join(cwd, work_dir)
            if self._setsid_path is not None:
                find_program(self._setsid_path, None, cwd)
            # The lookup execvp would do, done here so a typo is reported plainly.
            program = find_program(command[0], environment.get("PATH"), cwd)
        except (ProgramNotFound, OSError, MissingSecret) as e:
            return self._spawn_failed(label, start_time, str(e), fields)

        scope = self._isolation.new_scope()
        # Last, so a job cannot override it.
        environment.update(scope.environment)
        execution = ForkedExecution(
            self._reactor,
            self._kill_group,
            label=label,
            log_fields=fields,
            start_time=start_time,
            timeout_seconds=job.get("timeoutSeconds"),
            kill_grace_seconds=self._kill_grace_seconds,
            max_output_bytes=self._max_output_bytes,
            on_ended=self._execution_ended,
            scope=scope,
        )
        try:
            execution.spawn(program, command, environment, work_dir, self._setsid_path)
        except (OSError, ValueError) as e:
            # OSError: fork or pipe limits; ValueError: e.g. a NUL byte in an argument that
            # came from a parameter value.
            scope.release()
            return self._spawn_failed(label, start_time, str(e), fields)
        except Exception as e:
            scope.release()
            self.log.failure("spawnProcess failed unexpectedly for {label}", label=label,
                             **fields)
            return self._spawn_failed(label, start_time, f"{type(e).__name__}: {e}", fields)
        if not execution.ended:
            self._running.add(execution)
        return execution

    def reattach(self, run_id: int, task_name: str, job: dict[str, Any],
                 executor_state: dict[str, Any],
                 earlier_states: list[dict[str, Any]] = ()) -> None:
        """A forked task does not survive as something daggyd can watch again: its pipes
        died with the old daemon.  The runner closes the attempt and runs the task again."""
        return None

    def stop(self) -> Deferred[None]:
        """Kill every running attempt (reason ``daemon shutting down``) and refuse new ones.

        :returns: a Deferred firing with ``None`` once every attempt's result has fired.
        """
        self._stopped = True
        for execution in list(self._running):
            execution.kill(SHUTDOWN_REASON)
        if not self._running:
            self._close_isolation()
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._idle_waiters.append(waiter)
        return waiter

    @property
    def running_count(self) -> int:
        """How many attempts have started and not yet ended."""
        return len(self._running)

    @property
    def isolation(self) -> str:
        """The mechanism that finds a task's processes: ``cgroup``, ``subreaper`` or
        ``session``."""
        return self._isolation.mode

    def _close_isolation(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._isolation.close()
        except Exception:
            self.log.failure("could not release the task isolation ({mode})",
                             mode=self._isolation.mode)

    def _spawn_failed(self, label: str, start_time: float, why: str,
                      fields: dict[str, Any]) -> FinishedExecution:
        self.log.warn("could not start {label}: {why}", label=label, why=why, **fields)
        return FinishedExecution(
            Attempt(
                start_time=start_time,
                stop_time=self._reactor.seconds(),
                rc=None,
                succeeded=False,
                executor_log=f"spawn failed: {why}",
            )
        )

    def _execution_ended(self, execution: ForkedExecution) -> None:
        self._running.discard(execution)
        if not self._running and self._stopped:
            self._close_isolation()
        if not self._running and self._idle_waiters:
            waiters, self._idle_waiters = self._idle_waiters, []
            for waiter in waiters:
                waiter.callback(None)


class _ProcessAdapter(ProcessProtocol):
    """Forwards process events to a :class:`ForkedExecution`; holds no logic itself."""

    def __init__(self, execution: ForkedExecution) -> None:
        self._execution = execution

    def connectionMade(self) -> None:
        self._execution.process_started(self.transport)

    def outReceived(self, data: bytes) -> None:
        self._execution.add_stdout(data)

    def errReceived(self, data: bytes) -> None:
        self._execution.add_stderr(data)

    def processExited(self, reason: Failure) -> None:
        self._execution.process_exited()

    def processEnded(self, reason: Failure) -> None:
        self._execution.process_ended(reason)


class ForkedExecution:
    """One attempt running as a child process: output, timers, kill, and the result.

    ``result`` fires exactly once, from ``processEnded`` (after every output pipe closed).
    """

    log = Logger()

    def __init__(
        self,
        reactor: ProcessReactor,
        kill_group: Callable[[int, int], None],
        *,
        label: str,
        log_fields: dict[str, Any] | None = None,
        start_time: float,
        timeout_seconds: float | None,
        kill_grace_seconds: float,
        max_output_bytes: int,
        on_ended: Callable[[ForkedExecution], None],
        scope: Scope | None = None,
    ) -> None:
        self.result: Deferred[Attempt] = Deferred()
        self._reactor = reactor
        self._kill_group = kill_group
        self._label = label
        #: ``run_id`` and ``task``, added to every log event about this attempt.
        self._log_fields = log_fields or {}
        self._start_time = start_time
        self._timeout_seconds = timeout_seconds
        self._grace = kill_grace_seconds
        self._on_ended = on_ended
        #: Where the task's processes are, beyond its process group.
        self._scope: Scope = scope if scope is not None else GroupOnlyScope()
        self._stdout = BoundedOutput(max_output_bytes)
        self._stderr = BoundedOutput(max_output_bytes)
        self._transport: Any = None
        # The pid of the child, which setsid makes the id of its process group too.
        self._pgid: int | None = None
        # Why the attempt is ending, in order (kill, timeout, escalation, abandoned output).
        self._notes: list[str] = []
        self._killed = False
        self._timed_out = False
        self._terminating = False
        self._exited = False
        self.ended = False
        self._timeout_call: Any = None
        self._sigkill_call: Any = None
        self._abandon_call: Any = None

    @property
    def pid(self) -> int | None:
        """The task's pid (also its process-group id); ``None`` before it was spawned."""
        return self._pgid

    def spawn(self, program: str, command: list[str], env: dict[str, str],
              work_dir: str | None, setsid_path: str | None) -> None:
        """Start the process (``program`` is ``command[0]`` found in the job's PATH; with a
        ``setsid_path`` that helper execs the command); exceptions from spawning propagate
        to the caller."""
        protocol = _ProcessAdapter(self)
        try:
            with self._scope.spawning():
                if setsid_path is None:
                    transport = spawn_session_leader(self._reactor, protocol, program, command,
                                                     env, work_dir)
                else:
                    transport = self._reactor.spawnProcess(
                        protocol, setsid_path, [setsid_path, "--", *command], env=env,
                        path=work_dir)
        except BaseException:
            # A late processEnded from a half-started process must not fire the result.
            self.ended = True
            raise
        if self._transport is None:
            self.process_started(transport)
        # Tasks get no input: EOF at once instead of a read that blocks forever.
        transport.closeStdin()
        if self._timeout_seconds is not None and not self.ended and not self._exited:
            self._timeout_call = self._reactor.callLater(self._timeout_seconds, self._time_out)

    def process_started(self, transport: Any) -> None:
        """Called from ``connectionMade``, inside ``spawnProcess``.

        The pid is taken here because a child that exits at once can be reaped before
        ``spawnProcess`` returns, and the transport forgets its pid once it is reaped.
        """
        self._transport = transport
        self._pgid = transport.pid
        if self._pgid is not None:
            self._scope.started(self._pgid)

    def kill(self, reason: str) -> None:
        """SIGTERM the process group, SIGKILL it ``kill_grace_seconds`` later; ``result``
        fires with ``killed=True`` and ``reason`` in ``executorLog``.  Idempotent."""
        if self.ended or self._killed:
            return
        self._killed = True
        self._notes.append(f"killed: {reason}")
        self._terminate()

    def add_stdout(self, data: bytes) -> None:
        self._stdout.add(data)

    def add_stderr(self, data: bytes) -> None:
        self._stderr.add(data)

    def process_exited(self) -> None:
        """The child is reaped, but a background process may still hold its output pipes."""
        self._exited = True
        self._scope.task_reaped()
        if self.ended:
            return
        self._cancel_timeout()
        if not self._terminating and self._abandon_call is None:
            # Without this, `cmd &` that inherits stdout would keep the attempt running for
            # as long as the background process lives.
            self._abandon_call = self._reactor.callLater(self._grace, self._abandon_output)

    def process_ended(self, reason: Failure) -> None:
        if self.ended:
            self.log.warn("{label}: process ended twice; ignored", label=self._label,
                          **self._log_fields)
            return
        self.ended = True
        self._exited = True
        self._scope.task_reaped()
        self._cancel_timeout()
        for name in ("_sigkill_call", "_abandon_call"):
            call = getattr(self, name)
            if call is not None and call.active():
                call.cancel()
            setattr(self, name, None)
        if self._terminating:
            # Group members that ignored SIGTERM and do not hold our pipes would otherwise
            # survive a kill; the group id cannot be reused while any of them lives.
            self._signal_group(signal.SIGKILL)
        try:
            self._scope.release()
        except Exception:
            self.log.failure("{label}: could not release its isolation scope", label=self._label,
                             **self._log_fields)
        try:
            attempt = self._make_attempt(reason)
        except Exception:
            self.log.failure("{label}: could not build the attempt record", label=self._label,
                             **self._log_fields)
            self.result.errback(Failure())
        else:
            self.result.callback(attempt)
        finally:
            self._on_ended(self)

    def _make_attempt(self, reason: Failure) -> Attempt:
        rc, description = describe_exit(reason)
        lines = [*self._notes, description]
        for name, stream in (("stdout", self._stdout), ("stderr", self._stderr)):
            if stream.truncated:
                lines.append(
                    f"{name} truncated: kept the first {stream.kept} of {stream.total} bytes"
                )
        return Attempt(
            start_time=self._start_time,
            stop_time=self._reactor.seconds(),
            rc=rc,
            succeeded=rc == 0 and not self._killed and not self._timed_out,
            output_log=self._stdout.text(),
            error_log=self._stderr.text(),
            executor_log="\n".join(lines),
            killed=self._killed,
            timed_out=self._timed_out,
            output_truncated=self._stdout.truncated,
            error_truncated=self._stderr.truncated,
            executor_state={"pid": self._pgid} if self._pgid is not None else {},
        )

    def _time_out(self) -> None:
        self._timeout_call = None
        self._timed_out = True
        self._notes.append(f"timed out after {format_seconds(self._timeout_seconds)}")
        self._terminate()

    def _terminate(self) -> None:
        self._cancel_timeout()
        if self._terminating:
            return
        self._terminating = True
        self._signal_group(signal.SIGTERM)
        self._sigkill_call = self._reactor.callLater(self._grace, self._send_sigkill)

    def _send_sigkill(self) -> None:
        self._sigkill_call = None
        self._notes.append(
            f"still running {format_seconds(self._grace)} after SIGTERM: sent SIGKILL"
        )
        self._signal_group(signal.SIGKILL)
        if self._abandon_call is None:
            # A process that escaped the group (its own setsid) may still hold the pipes.
            self._abandon_call = self._reactor.callLater(self._grace, self._abandon_output)

    def _abandon_output(self) -> None:
        self._abandon_call = None
        self._notes.append(
            f"output pipes still open {format_seconds(self._grace)} later (held by a"
            " background process): stopped reading"
        )
        if self._transport is not None:
            self._transport.loseConnection()

    def _cancel_timeout(self) -> None:
        if self._timeout_call is not None and self._timeout_call.active():
            self._timeout_call.cancel()
        self._timeout_call = None

    def _signal_group(self, signum: int) -> None:
        """Send ``signum`` to the task's process group, then to the task's processes that
        left it (as far as the isolation scope finds them)."""
        group_reached = self._signal_process_group(signum)
        try:
            others = self._scope.signal(signum, self._pgid if group_reached else None)
        except Exception:
            self.log.failure("{label}: could not signal the processes outside its process "
                             "group", label=self._label, **self._log_fields)
            return
        if others and signum == signal.SIGTERM:
            plural = "es" if others != 1 else ""
            self._notes.append(f"SIGTERM also sent to {others} process{plural} outside the "
                               "task's process group")

    def _signal_process_group(self, signum: int) -> bool:
        """Whether the whole process group was signalled."""
        pgid = self._pgid
        # 0 would be our own group and -1 every process we may signal.
        if pgid is None or pgid <= 1:
            return False
        try:
            self._kill_group(pgid, signum)
            return True
        except ProcessLookupError:
            # Either the group is gone, or the child has not reached setsid() yet.
            pass
        except OSError as e:
            self.log.warn(
                "{label}: could not signal process group {pgid}: {error}",
                label=self._label,
                pgid=pgid,
                error=e,
                **self._log_fields,
            )
            return False
        if not self._exited:
            try:
                self._transport.signalProcess(signum)
            except (ProcessExitedAlready, OSError):
                pass
        return False
