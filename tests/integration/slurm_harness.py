"""Start a private single-node Slurm cluster for tests and run Slurm commands on it (test
helpers).

A cluster is a munged with its own key and socket, a slurmctld and a slurmd on free loopback
ports, and a generated ``slurm.conf``, all in a temporary directory of its own (never the
system munge or Slurm services, never ``/etc/slurm``).  The three daemons run in the
foreground as children of the test process, so stopping them never depends on pid files.
``JobCompType=jobcomp/filetxt`` makes ``sacct -c`` report final states and exit codes without
slurmdbd.  Every Slurm command must run with ``cluster.env`` (it sets ``SLURM_CONF``).  The
facts behind the configuration are in ``shared/reference/slurm-and-redis-on-one-machine.md``.

The binaries come from Debian's ``slurmctld slurmd slurm-client munge`` packages, which
``scripts/test.d/slurm.sh`` installs when they are missing.  Imported by the integration
tests (pytest puts this directory on ``sys.path``); the ``slurm_cluster`` fixture is in
``conftest.py``.
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from daemon_harness import alive, free_port, wait_until

HOST = "127.0.0.1"
#: Where the Debian packages put the daemons (often not on a non-root PATH).
SBIN_DIRS = ("/usr/sbin", "/sbin", "/usr/local/sbin")
DAEMONS = ("munged", "mungekey", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "sacct", "scontrol", "scancel", "sinfo")
#: Cluster start (munged answering, node idle) normally takes well under a second.
START_SECONDS = 30
#: Attempts at a first start: another process may take a port between ``free_port()`` and
#: the daemon binding it.
START_ATTEMPTS = 3
COMMAND_SECONDS = 30
#: How long stopping waits for processes left in the cluster directory to exit before it
#: kills them.
SWEEP_GRACE_SECONDS = 5
#: CPUs advertised for the node (``SlurmdParameters=config_overrides``): more job slots than
#: the machine has cores, so tests with many tiny jobs are not limited to one per core.
NODE_CPUS = 16
#: Slurm states after which a job never changes again.
FINAL_STATES = frozenset({
    "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL",
    "PREEMPTED", "BOOT_FAIL", "DEADLINE", "REVOKED", "SPECIAL_EXIT",
})


class SlurmNotInstalled(RuntimeError):
    """Slurm or munge binaries are missing."""


def _which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path=os.pathsep.join(SBIN_DIRS))


def find_slurm() -> dict[str, str]:
    """The path of every Slurm and munge program the harness runs, by name; raises
    SlurmNotInstalled with what to do about it."""
    found = {name: _which(name) for name in DAEMONS + CLIENTS}
    missing = sorted(name for name, path in found.items() if path is None)
    if not missing:
        return found
    ci = os.environ.get("CI", "").lower() == "true"
    raise SlurmNotInstalled(
        f"Slurm/munge programs are missing ({', '.join(missing)}), and the Slurm integration"
        " tests need them" + (" (CI=true: a missing Slurm is a failure, not a skip)" if ci else "")
        + ". Run the tests with ./scripts/test, which installs Debian's slurmctld, slurmd,"
        " slurm-client and munge packages (scripts/test.d/slurm.sh), or install them yourself"
        " (apt-get install --no-install-recommends slurmctld slurmd slurm-client munge).")


def _available_memory_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) // 1024
    return 4096


@dataclass(frozen=True)
class JobResult:
    """A job's final record from ``sacct -c``: ``state`` (e.g. "FAILED") and ``exit_code``
    as Slurm prints it, "code:signal" (e.g. "3:0")."""

    job_id: str
    state: str
    exit_code: str


class SlurmCluster:
    """One private single-node cluster: ``start()``, ``stop()``, ``env`` for commands, and
    helpers running the Slurm commands (``run``, ``sbatch``, ``squeue``, ``sacct``,
    ``scancel``).

    ``directory`` (made with mode 0755 when None) holds everything; munged needs every
    parent of its socket to be world-searchable, which pytest's ``tmp_path`` is not.
    """

    def __init__(self, directory: Path | None = None, *, cpus: int = NODE_CPUS,
                 min_job_age: int = 300):
        self.programs = find_slurm()
        self._made_directory = directory is None
        if directory is None:
            directory = Path(tempfile.mkdtemp(prefix="daggy-slurm-", dir="/tmp"))
        self.directory = Path(directory).resolve()
        self.cpus = cpus
        self.min_job_age = min_job_age
        self.node = socket.gethostname().split(".")[0]
        self.user = getpass.getuser()
        self.conf_path = self.directory / "etc" / "slurm.conf"
        self.munge_socket = self.directory / "run" / "munge.sock"
        self.jobcomp_path = self.directory / "log" / "jobcomp.txt"
        self.log_dir = self.directory / "log"
        self.ctld_port: int | None = None
        self.slurmd_port: int | None = None
        self._children: dict[str, subprocess.Popen] = {}
        self.env: dict[str, str] = {
            **{key: value for key, value in os.environ.items() if not key.startswith("SLURM_")},
            "SLURM_CONF": str(self.conf_path),
        }
        #: Seconds the last ``start()`` took until the node was idle.
        self.start_seconds: float | None = None

    # -- lifecycle

    def start(self) -> "SlurmCluster":
        """Start munged, slurmctld and slurmd and wait until the node is idle."""
        assert not self._children, "the cluster is already running"
        began = time.monotonic()
        self._prepare_directories()
        self._start_munged()
        problem = ""
        for _ in range(START_ATTEMPTS):
            self.ctld_port, self.slurmd_port = free_port(), free_port()
            while self.slurmd_port == self.ctld_port:
                self.slurmd_port = free_port()
            self._write_conf()
            problem = self._start_slurm()
            if not problem:
                self.start_seconds = time.monotonic() - began
                return self
            self._stop_slurm_daemons()
            if "Address already in use" not in problem:
                break
        self.stop()
        raise AssertionError(f"the private Slurm cluster did not start: {problem}")

    def _prepare_directories(self) -> None:
        os.chmod(self.directory, 0o755)
        for name in ("etc", "run", "log", "state", "spool", "jobs"):
            (self.directory / name).mkdir(mode=0o755, exist_ok=True)
            os.chmod(self.directory / name, 0o755)
        (self.directory / "munge").mkdir(mode=0o700, exist_ok=True)

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen:
        with open(self.log_dir / f"{name}.out", "ab") as out:
            process = subprocess.Popen(argv, cwd=self.directory, stdin=subprocess.DEVNULL,
                                       stdout=out, stderr=subprocess.STDOUT, env=self.env,
                                       start_new_session=True)
        self._children[name] = process
        return process

    def _start_munged(self) -> None:
        key = self.directory / "munge" / "munge.key"
        if not key.exists():
            subprocess.run([self.programs["mungekey"], "--create", f"--keyfile={key}"],
                           check=True, capture_output=True, timeout=COMMAND_SECONDS)
        munged = self._spawn("munged", [
            self.programs["munged"], "--foreground", f"--key-file={key}",
            f"--socket={self.munge_socket}", f"--pid-file={self.directory / 'run/munged.pid'}",
            f"--log-file={self.log_dir / 'munged.log'}",
            f"--seed-file={self.directory / 'munge/munged.seed'}",
        ])
        try:
            wait_until(lambda: munged.poll() is not None or self.munge_socket.exists(),
                       "munged to create its socket", START_SECONDS)
        except AssertionError:
            self.stop()
            raise
        if munged.poll() is not None:
            log = self._read(self.log_dir / "munged.log") + self._read(self.log_dir / "munged.out")
            self.stop()
            raise AssertionError(f"munged exited with {munged.returncode}; its log:\n{log}")

    def _start_slurm(self) -> str:
        """Start slurmctld and slurmd; "" once the node is idle, else what went wrong."""
        conf = str(self.conf_path)
        ctld = self._spawn("slurmctld", [self.programs["slurmctld"], "-D", "-f", conf])
        slurmd = self._spawn("slurmd", [self.programs["slurmd"], "-D", "-f", conf,
                                        "-N", self.node])
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            for name, process in (("slurmctld", ctld), ("slurmd", slurmd)):
                if process.poll() is not None:
                    return (f"{name} exited with {process.returncode}; its log:\n"
                            + self._read(self.log_dir / f"{name}.log")
                            + self._read(self.log_dir / f"{name}.out"))
            if self.node_state() == "idle":
                return ""
            time.sleep(0.05)
        return (f"the node was not idle within {START_SECONDS}s (state"
                f" {self.node_state()!r}); slurmctld log:\n"
                + self._read(self.log_dir / "slurmctld.log") + "\nslurmd log:\n"
                + self._read(self.log_dir / "slurmd.log"))

    def _write_conf(self) -> None:
        d = self.directory
        memory = max(256, _available_memory_mb() * 8 // 10)
        self.conf_path.write_text("\n".join([
            "ClusterName=daggytest",
            f"SlurmctldHost={self.node}({HOST})",
            f"SlurmctldPort={self.ctld_port}",
            f"SlurmdPort={self.slurmd_port}",
            # Both are needed for slurmctld and slurmd to bind 127.0.0.1 only.
            "CommunicationParameters=NoCtldInAddrAny,NoInAddrAny",
            f"SlurmUser={self.user}",
            f"SlurmdUser={self.user}",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={self.munge_socket}",
            f"StateSaveLocation={d / 'state'}",
            f"SlurmdSpoolDir={d / 'spool'}",
            f"SlurmctldPidFile={d / 'run/slurmctld.pid'}",
            f"SlurmdPidFile={d / 'run/slurmd.pid'}",
            f"SlurmctldLogFile={d / 'log/slurmctld.log'}",
            f"SlurmdLogFile={d / 'log/slurmd.log'}",
            "SlurmctldDebug=info",
            "SlurmdDebug=info",
            # No cgroups: portable to containers and CI runners without a writable cgroupfs.
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            # Read back by `sacct -c`, so final states are known without slurmdbd.
            "JobCompType=jobcomp/filetxt",
            f"JobCompLoc={self.jobcomp_path}",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core_Memory",
            # Without a default, a job lacking --mem is given all the node's memory, so jobs
            # would run one at a time.  (Memory is not enforced: no cgroups.)
            "DefMemPerCPU=100",
            # The default batch_sched_delay=3 adds about 3 s to every job.
            "SchedulerParameters=batch_sched_delay=0",
            f"MinJobAge={self.min_job_age}",
            # Impossible requests fail at sbatch instead of pending forever.
            "EnforcePartLimits=ALL",
            "KillWait=5",
            "InactiveLimit=0",
            "Waittime=0",
            "MpiDefault=none",
            "SwitchType=switch/none",
            "ReturnToService=2",
            "MailProg=/bin/true",
            "SlurmdParameters=config_overrides",
            "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
            f"NodeName={self.node} NodeAddr={HOST} CPUs={self.cpus} Boards=1 SocketsPerBoard=1"
            f" CoresPerSocket={self.cpus} ThreadsPerCore=1 RealMemory={memory} State=UNKNOWN",
            "",
        ]))
        os.chmod(self.conf_path, 0o644)

    @property
    def running(self) -> bool:
        return any(process.poll() is None for process in self._children.values())

    def stop(self) -> list[str]:
        """Cancel every job, stop slurmd, slurmctld and munged, and kill whatever is left of
        the cluster (slurmstepd outlives slurmd by design).  Safe to call more than once and
        after a failed start.  Returns the leftovers it had to kill (by description)."""
        killed: list[str] = []
        if self._children.get("slurmctld") and self._children["slurmctld"].poll() is None:
            self._cancel_all_jobs()
        job_pids = self._job_pids() if self._alive("slurmd") else set()
        self._stop_slurm_daemons()
        self._terminate("munged")
        for pid in job_pids:
            if self._kill_pid(pid):
                killed.append(f"job process {pid}")
        killed += self._sweep()
        if self._made_directory and not killed:
            # Keep the directory (logs) when something was left behind, for the report.
            shutil.rmtree(self.directory, ignore_errors=True)
        return killed

    def _alive(self, name: str) -> bool:
        process = self._children.get(name)
        return process is not None and process.poll() is None

    def _cancel_all_jobs(self) -> None:
        try:
            self.run("scancel", "--user", self.user, check=False, timeout=10)
            wait_until(lambda: not self.run("squeue", "-h", "-o", "%i", check=False,
                                            timeout=10).stdout.strip(),
                       "cancelled jobs to leave squeue", 15)
        except (AssertionError, subprocess.TimeoutExpired):
            pass  # the pid sweep below still kills what is left

    def _job_pids(self) -> set[int]:
        try:
            listing = self.run("scontrol", "listpids", check=False, timeout=10).stdout
        except subprocess.TimeoutExpired:
            return set()
        pids = set()
        for line in listing.splitlines()[1:]:
            first = line.split()[:1]
            if first and first[0].isdigit():
                pids.add(int(first[0]))
        return pids

    def _stop_slurm_daemons(self) -> None:
        self._terminate("slurmd")
        self._terminate("slurmctld")

    def _terminate(self, name: str, seconds: float = 10) -> None:
        process = self._children.pop(name, None)
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    @staticmethod
    def _kill_pid(pid: int) -> bool:
        if pid == os.getpid() or not alive(pid):
            return False
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            return False
        return True

    def _sweep(self) -> list[str]:
        """Kill every live process holding a file in the cluster directory open or working
        in it (slurmstepd keeps slurmd.log open; its environment is sanitized, so no tag
        reaches it), except this process and its ancestors."""
        spared = {os.getpid()}
        pid = os.getppid()
        while pid > 1:
            spared.add(pid)
            try:
                pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                break
        prefix = str(self.directory) + os.sep

        def users() -> list[Path]:
            return [entry for entry in Path("/proc").iterdir()
                    if entry.name.isdigit() and int(entry.name) not in spared
                    and alive(int(entry.name)) and self._uses(entry, prefix)]

        # slurmstepd exits by itself shortly after its job ends; kill only what lingers.
        try:
            wait_until(lambda: not users(), "cluster processes to exit", SWEEP_GRACE_SECONDS)
        except AssertionError:
            pass
        killed = []
        for entry in users():
            command = self._read(entry / "cmdline").replace("\0", " ").strip()
            if self._kill_pid(int(entry.name)):
                killed.append(f"{entry.name} {command}")
        return killed

    @staticmethod
    def _uses(entry: Path, prefix: str) -> bool:
        try:
            if (os.readlink(entry / "cwd") + os.sep).startswith(prefix):
                return True
            for fd in (entry / "fd").iterdir():
                if os.readlink(fd).startswith(prefix):
                    return True
        except OSError:
            pass  # exited meanwhile, or not ours to inspect
        return False

    @staticmethod
    def _read(path: Path) -> str:
        try:
            return Path(path).read_text(errors="replace")
        except OSError:
            return ""

    def __enter__(self) -> "SlurmCluster":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    # -- commands

    def run(self, command: str, *arguments: str, check: bool = True,
            timeout: float = COMMAND_SECONDS) -> subprocess.CompletedProcess:
        """Run a Slurm client command on this cluster; output captured as text.  With
        ``check`` a non-zero exit raises AssertionError showing its stderr."""
        argv = [self.programs.get(command) or command, *arguments]
        result = subprocess.run(argv, env=self.env, capture_output=True, text=True,
                                stdin=subprocess.DEVNULL, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} exited with {result.returncode}:"
                                 f" {result.stderr.strip()}")
        return result

    def node_state(self) -> str:
        """The node's state as ``sinfo`` prints it ("idle", "mixed", "down*", ...), or ""."""
        try:
            result = self.run("sinfo", "-h", "-n", self.node, "-o", "%T", check=False,
                              timeout=10)
        except subprocess.TimeoutExpired:
            return ""
        return result.stdout.strip() if result.returncode == 0 else ""

    def ping(self) -> bool:
        """Whether ``scontrol ping`` reports the controller UP."""
        result = self.run("scontrol", "ping", check=False, timeout=10)
        return result.returncode == 0 and "is UP" in result.stdout

    def sbatch(self, *arguments: str, script: str | None = None,
               chdir: Path | None = None) -> str:
        """Submit with ``sbatch --parsable`` (stdout/stderr to ``jobs/%j.out|err`` unless the
        arguments say otherwise); returns the job id.  ``script`` is the batch script text
        (a ``#!/bin/sh`` line is added when missing); else pass ``--wrap=...``."""
        jobs = self.directory / "jobs"
        argv = ["--parsable", f"--chdir={chdir or jobs}"]
        if not any(argument.startswith(("-o", "--output")) for argument in arguments):
            argv.append(f"--output={jobs}/%j.out")
        if not any(argument.startswith(("-e", "--error")) for argument in arguments):
            argv.append(f"--error={jobs}/%j.err")
        argv += arguments
        if script is not None:
            if not script.startswith("#!"):
                script = "#!/bin/sh\n" + script
            with tempfile.NamedTemporaryFile("w", dir=jobs, suffix=".sh", delete=False) as file:
                file.write(script)
            argv.append(file.name)
        # --parsable prints "id" or "id;cluster".
        return self.run("sbatch", *argv).stdout.strip().split(";")[0]

    def squeue(self, job_ids) -> dict[str, str]:
        """The state of each job Slurm still has in memory, by id, in one ``squeue -t all``
        call (purged and unknown ids are left out)."""
        ids = list(job_ids)
        result = self.run("squeue", "-h", "-t", "all", "-j", ",".join(ids), "-o", "%i %T",
                          check=False)
        if result.returncode != 0 and len(ids) > 1:
            raise AssertionError(f"squeue failed: {result.stderr.strip()}")
        return dict(line.split() for line in result.stdout.splitlines() if line.strip())

    def sacct(self, job_ids) -> dict[str, JobResult]:
        """The final record of each finished job, by id, from the job completion log in one
        ``sacct -c`` call (jobs not finished yet are left out)."""
        result = self.run("sacct", "-c", "-n", "-P", "-j", ",".join(job_ids),
                          "-o", "JobID,State,ExitCode")
        records = {}
        for line in result.stdout.splitlines():
            if line.strip():
                job_id, state, exit_code = line.split("|")[:3]
                # A cancelled job prints "CANCELLED by 0"; keep the state word alone.
                records[job_id] = JobResult(job_id, state.split()[0], exit_code)
        return records

    def scancel(self, *job_ids: str) -> None:
        self.run("scancel", *job_ids)

    def wait_state(self, job_id: str, states, seconds: float = 60) -> str:
        """Poll ``squeue`` until the job is in one of ``states``; returns that state."""
        wanted = {states} if isinstance(states, str) else set(states)
        return wait_until(lambda: self.squeue([job_id]).get(job_id) in wanted and
                          self.squeue([job_id])[job_id],
                          f"job {job_id} to reach {sorted(wanted)}", seconds)

    def wait_final(self, job_id: str, seconds: float = 60) -> JobResult:
        """Poll ``sacct -c`` until the job's final record is there; returns it."""
        return wait_until(lambda: self.sacct([job_id]).get(job_id),
                          f"job {job_id} to finish", seconds)

    def __repr__(self) -> str:
        return f"<SlurmCluster {self.node} ctld={HOST}:{self.ctld_port} dir={self.directory}>"


def start_slurm_cluster(directory: Path | None = None, **options) -> SlurmCluster:
    """A started SlurmCluster (see SlurmCluster for the options)."""
    return SlurmCluster(directory, **options).start()
