# -*- test-case-name: tests.unit.test_forking_executor,tests.integration.test_task_faults -*-
"""Finding every process a task started, so that a kill or a timeout reaches all of them.

A task leads its own session and process group, and ``killpg`` reaches every process that
stays in that group.  A descendant that calls ``setsid`` (or ``setpgid``), as daemonising
programs do, leaves it.  What finds such a descendant depends on what the machine allows;
:func:`choose_isolation` picks the strongest mechanism available:

``cgroup``
    Every task runs in a cgroup v2 of its own, ``<daggyd's cgroup>/daggy.<pid>.<n>/t<k>``.
    daggyd moves *itself* into the task's cgroup just before spawning and back right after,
    so the task is born inside: no window in which a child could be forked outside.  No
    process can leave a cgroup by ``setsid`` or double forking; a kill signals every member
    (SIGTERM to the listed members, SIGKILL through ``cgroup.kill``).  Needs a cgroup v2
    hierarchy in which daggyd may create cgroups and move processes (root, or a delegated
    subtree such as systemd's ``Delegate=yes``).  Costs two cgroup moves per spawn.
``subreaper``
    daggyd becomes a child subreaper (``prctl(PR_SET_CHILD_SUBREAPER)``), so an orphaned
    descendant of a task is re-parented to daggyd instead of init, and every task gets a
    unique ``DAGGY_TASK_ID`` in its environment.  A kill walks ``/proc`` once per signal and
    signals the task's session, its process group, every descendant of the task (by parent
    pid) and every orphan of daggyd whose initial environment carries the task's id, with
    their descendants.  daggyd reaps the orphans when they exit (Twisted only reaps the
    processes it spawned).  A process that clears its environment *and* is orphaned escapes.
``session``
    ``killpg`` only (no ``/proc``, or no Linux).

Everything here runs on the reactor thread; nothing blocks for long: cgroup files are
virtual, and a ``/proc`` walk reads one small file per process on the machine.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import re
import signal
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Protocol

from twisted.logger import Logger

ISOLATION_MODES = ("auto", "cgroup", "subreaper", "session")
#: The environment variable that marks every process of a task in ``subreaper`` mode.
TASK_ID_VARIABLE = "DAGGY_TASK_ID"
#: Lingering cgroups (still holding processes a finished task left behind) looked at again
#: each time a task's cgroup is released: O(1) work per task.
LINGERING_CHECKS_PER_RELEASE = 4
#: Bytes of a process's environment read when looking for a task id.
MAX_ENVIRON_BYTES = 1 << 20
_BASE_NAME = re.compile(r"daggy\.(\d+)\.(\d+)\Z")
_PR_SET_CHILD_SUBREAPER = 36
#: Key of the orphan reaper in Twisted's table of processes to reap: never a real pid.
_REAPER_KEY = -1

_instance_numbers = itertools.count(1)


class IsolationUnavailable(Exception):
    """A mechanism cannot be used on this machine; ``str()`` says why."""


class Scope(Protocol):
    """Where one task's processes are: created before the spawn, released after the end."""

    #: Variables laid over the task's environment (after the job's own).
    environment: dict[str, str]

    def spawning(self) -> contextlib.AbstractContextManager[None]:
        """The spawn happens inside this context."""

    def started(self, pid: int) -> None:
        """The task's process is ``pid``."""

    def task_reaped(self) -> None:
        """The task's own process has been reaped (its pid may be reused from now on)."""

    def signal(self, signum: int, skip_group: int | None) -> int:
        """Send ``signum`` to the task's processes that ``killpg`` cannot reach; members of
        process group ``skip_group`` (already signalled) are left out.  Returns how many
        processes were signalled, when known (0 when not)."""

    def release(self) -> None:
        """The attempt has ended; free what the scope holds."""


class Isolation(Protocol):
    #: ``"cgroup"``, ``"subreaper"`` or ``"session"``.
    mode: str
    #: Why a stronger mechanism is not used (empty when the strongest one is).
    why_not_stronger: str

    def new_scope(self) -> Scope: ...

    def close(self) -> None:
        """The executor has stopped and no task runs: give back what is held."""


# -- reading /proc ----------------------------------------------------------------------


@dataclass(frozen=True)
class ProcStat:
    """The fields of ``/proc/<pid>/stat`` that relate processes to each other."""

    ppid: int
    pgid: int
    sid: int
    state: str

    @property
    def alive(self) -> bool:
        """Not a zombie (nor dead): a signal can still make a difference."""
        return self.state not in ("Z", "X", "x")


def parse_stat(data: bytes) -> ProcStat:
    """Parse ``/proc/<pid>/stat``.  The command name (field 2) may hold spaces and
    parentheses, so the fields after it are found from its last ``)``."""
    fields = data[data.rindex(b")") + 2:].split()
    return ProcStat(ppid=int(fields[1]), pgid=int(fields[2]), sid=int(fields[3]),
                    state=fields[0].decode("ascii", "replace"))


def _read(path: str, limit: int = 4096) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, limit)
    finally:
        os.close(fd)


def _write(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def read_stat(pid: int, proc: str = "/proc") -> ProcStat | None:
    """The stat of ``pid``, or None when it is gone."""
    try:
        return parse_stat(_read(f"{proc}/{pid}/stat"))
    except (OSError, ValueError, IndexError):
        return None


def process_table(proc: str = "/proc") -> dict[int, ProcStat]:
    """Every process visible in ``proc``: one directory listing and one small read per
    process (a few microseconds each)."""
    table: dict[int, ProcStat] = {}
    with os.scandir(proc) as entries:
        for entry in entries:
            if entry.name.isdigit():
                stat = read_stat(int(entry.name), proc)
                if stat is not None:
                    table[int(entry.name)] = stat
    return table


def environ_has(pid: int, name: str, value: str, proc: str = "/proc") -> bool:
    """Whether the environment ``pid`` was started with holds ``name=value``.  False when it
    cannot be read (another user's process, or gone)."""
    try:
        data = _read(f"{proc}/{pid}/environ", MAX_ENVIRON_BYTES)
    except OSError:
        return False
    return b"\0" + f"{name}={value}".encode() + b"\0" in b"\0" + data


def task_processes(table: dict[int, ProcStat], task_pid: int, task_reaped: bool,
                   daemon_pid: int, carries_task_id: Callable[[int], bool]) -> list[int]:
    """The live processes of one task in a process table.

    Those are: the task itself (unless reaped: then its pid may belong to someone else),
    every member of its session and of its process group (ids that cannot be reused while
    any member lives), every child of the daemon for which ``carries_task_id`` holds (orphans
    re-parented to the daemon), and every descendant of any of these by parent pid.  The
    daemon, pid 1 and zombies are never in the answer.
    """
    children: dict[int, list[int]] = {}
    for pid, stat in table.items():
        children.setdefault(stat.ppid, []).append(pid)
    roots = [pid for pid, stat in table.items()
             if stat.sid == task_pid or stat.pgid == task_pid]
    if not task_reaped and task_pid in table:
        roots.append(task_pid)
    roots.extend(pid for pid in children.get(daemon_pid, ())
                 if pid != task_pid and carries_task_id(pid))
    found: set[int] = set()
    stack = roots
    while stack:
        pid = stack.pop()
        if pid in found or pid in (0, 1, daemon_pid):
            continue
        found.add(pid)
        stack.extend(children.get(pid, ()))
    return sorted(pid for pid in found if table[pid].alive)


# -- session only ---------------------------------------------------------------------------


class GroupOnlyScope:
    """Nothing beyond the task's process group, which the executor signals itself."""

    environment: dict[str, str] = {}

    def spawning(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def started(self, pid: int) -> None:
        pass

    def task_reaped(self) -> None:
        pass

    def signal(self, signum: int, skip_group: int | None) -> int:
        return 0

    def release(self) -> None:
        pass


class SessionIsolation:
    """Process groups only: a descendant that leaves the task's session escapes."""

    mode = "session"

    def __init__(self, why_not_stronger: str = "") -> None:
        self.why_not_stronger = why_not_stronger
        self._scope = GroupOnlyScope()

    def new_scope(self) -> GroupOnlyScope:
        return self._scope

    def close(self) -> None:
        pass


# -- cgroup v2 ------------------------------------------------------------------------------


def _unescape_mount_field(text: str) -> str:
    # mountinfo writes space, tab, newline and backslash as \040, \011, \012, \134.
    return re.sub(r"\\([0-7]{3})", lambda match: chr(int(match.group(1), 8)), text)


def own_cgroup_dir(proc: str = "/proc") -> str:
    """The directory of this process's cgroup in the cgroup v2 hierarchy.

    :raises IsolationUnavailable: no cgroup v2 hierarchy, or it is not mounted here.
    """
    try:
        with open(f"{proc}/self/cgroup", encoding="utf-8", errors="surrogateescape") as lines:
            entries = [line.rstrip("\n").split(":", 2) for line in lines]
        with open(f"{proc}/self/mountinfo", encoding="utf-8",
                  errors="surrogateescape") as lines:
            mounts = list(lines)
    except OSError as e:
        raise IsolationUnavailable(f"cannot read {proc}/self: {e.strerror}") from None
    paths = [entry[2] for entry in entries if len(entry) == 3 and entry[:2] == ["0", ""]]
    if not paths:
        raise IsolationUnavailable("this process is in no cgroup v2 hierarchy (cgroup v1 only)")
    path = paths[0]
    for line in mounts:
        left, _, right = line.partition(" - ")
        if right.split()[:1] != ["cgroup2"]:
            continue
        fields = left.split()
        root, mount_point = _unescape_mount_field(fields[3]), _unescape_mount_field(fields[4])
        if root == "/":
            relative = path
        elif path == root or path.startswith(root + "/"):
            relative = path[len(root):]
        else:
            continue
        return os.path.normpath(mount_point + "/" + relative.lstrip("/"))
    raise IsolationUnavailable("the cgroup v2 hierarchy is not mounted")


def _populated(path: str) -> bool:
    """Whether cgroup ``path`` or a cgroup below it holds a live process (zombies do not
    count).  A cgroup that is gone holds nothing."""
    try:
        events = _read(os.path.join(path, "cgroup.events"))
    except FileNotFoundError:
        return False
    for line in events.splitlines():
        key, _, value = line.partition(b" ")
        if key == b"populated":
            return value.strip() != b"0"
    return True


def _remove_tree(path: str) -> bool:
    """rmdir cgroup ``path`` and every cgroup below it (a task may have made some).  False
    if one is still in use."""
    try:
        with os.scandir(path) as entries:
            below = [entry.path for entry in entries if entry.is_dir(follow_symlinks=False)]
    except FileNotFoundError:
        return True
    except OSError:
        return False
    removed = all([_remove_tree(child) for child in below])
    try:
        os.rmdir(path)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return removed


def _members(path: str) -> list[int]:
    """Pids in cgroup ``path`` and the cgroups below it."""
    pids: list[int] = []
    for directory, _, _ in os.walk(path):
        try:
            data = _read(os.path.join(directory, "cgroup.procs"), 1 << 24)
        except OSError:
            continue
        pids.extend(int(word) for word in data.split())
    return pids


class CgroupScope:
    """One task's cgroup (from the isolation's pool, or new)."""

    log = Logger()

    environment: dict[str, str] = {}

    def __init__(self, isolation: CgroupIsolation, path: str) -> None:
        self.path = path
        self._isolation = isolation
        #: The task was spawned inside (so every process it starts is inside too).
        self.contained = False
        #: daggyd could not move back out: the cgroup must never be killed.
        self.holds_daemon = False

    @contextlib.contextmanager
    def spawning(self) -> Iterator[None]:
        entered = self._isolation.enter(self)
        try:
            yield
        finally:
            if entered:
                self.holds_daemon = not self._isolation.leave(self)
                self.contained = not self.holds_daemon

    def started(self, pid: int) -> None:
        pass

    def task_reaped(self) -> None:
        pass

    def signal(self, signum: int, skip_group: int | None) -> int:
        if not self.contained or self.holds_daemon:
            return 0
        if signum == signal.SIGKILL and self._isolation.has_kill_file:
            try:
                # Kills every member and every cgroup below, atomically against forks.
                _write(os.path.join(self.path, "cgroup.kill"), b"1")
            except FileNotFoundError:
                pass
            return 0
        daemon_pid = self._isolation.daemon_pid
        count = 0
        for pid in _members(self.path):
            if pid == daemon_pid:
                continue
            if skip_group is not None:
                stat = read_stat(pid)
                if stat is None or stat.pgid == skip_group:
                    continue
            try:
                self._isolation.kill(pid, signum)
            except ProcessLookupError:
                continue
            count += 1
        return count

    def release(self) -> None:
        self._isolation.release(self)


class CgroupIsolation:
    """A cgroup v2 per task, under a directory of this executor's own.

    :param home: the cgroup daggyd runs in (see :func:`own_cgroup_dir`).
    :param pool_size: empty task cgroups kept for reuse (saves a mkdir and an rmdir each).
    :param kill: ``os.kill``-compatible.
    :param reactor: when given, daggyd also becomes a child subreaper (if the kernel allows)
        and reaps the orphans of tasks, so that none is left a zombie where pid 1 does not
        reap (containers without an init).

    :raises IsolationUnavailable: the cgroup cannot be created, or daggyd cannot move
        itself into it and back.
    """

    mode = "cgroup"
    why_not_stronger = ""
    log = Logger()

    def __init__(self, home: str, pool_size: int = 16,
                 kill: Callable[[int, int], None] = os.kill, reactor: Any = None) -> None:
        self.home = home
        self.kill = kill
        self.daemon_pid = os.getpid()
        self._pid_bytes = str(self.daemon_pid).encode()
        self._pool_size = pool_size
        self._free: list[str] = []
        self._lingering: dict[str, None] = {}
        self._names = itertools.count(1)
        self._broken = ""
        self.has_kill_file = False
        self.base = os.path.join(home, f"daggy.{self.daemon_pid}.{next(_instance_numbers)}")
        remove_stale_cgroups(home)
        try:
            os.mkdir(self.base)
        except OSError as e:
            raise IsolationUnavailable(f"cannot create cgroup {self.base}: {e.strerror}") from None
        try:
            self._probe()
        except IsolationUnavailable:
            _remove_tree(self.base)
            raise
        #: Whether daggyd reaps the orphans of tasks (see :class:`OrphanReaper`).
        self.reaps_orphans = False
        if reactor is not None:
            try:
                _Subreaper.acquire(reactor)
                self.reaps_orphans = True
            except IsolationUnavailable as e:
                self.log.info("orphans of tasks go to init, not daggyd: {why}", why=e)

    def _probe(self) -> None:
        scope = self.new_scope()
        own_cgroup = os.path.join(self.home, "cgroup.procs")
        try:
            _write(os.path.join(scope.path, "cgroup.procs"), self._pid_bytes)
        except OSError as e:
            raise IsolationUnavailable(
                f"cannot move a process into {scope.path}: {e.strerror}") from None
        try:
            _write(own_cgroup, self._pid_bytes)
        except OSError as e:
            self.log.critical("daggyd is stuck in cgroup {path}: cannot move back to {home}: "
                              "{error}", path=scope.path, home=self.home, error=e.strerror)
            raise IsolationUnavailable(f"cannot move back into {self.home}: {e.strerror}") from None
        self.has_kill_file = os.path.exists(os.path.join(scope.path, "cgroup.kill"))
        self._free.append(scope.path)

    @property
    def usable(self) -> bool:
        return not self._broken

    def new_scope(self) -> CgroupScope:
        if self._free:
            return CgroupScope(self, self._free.pop())
        path = os.path.join(self.base, f"t{next(self._names)}")
        try:
            os.mkdir(path)
        except OSError as e:
            self.log.warn("cannot create cgroup {path} ({error}): the task runs outside",
                          path=path, error=e.strerror)
            return CgroupScope(self, "")
        return CgroupScope(self, path)

    def enter(self, scope: CgroupScope) -> bool:
        """Move daggyd into ``scope``'s cgroup, so that the task forked now starts there."""
        if not scope.path or self._broken:
            return False
        try:
            _write(os.path.join(scope.path, "cgroup.procs"), self._pid_bytes)
        except OSError as e:
            self.log.warn("cannot move into cgroup {path} ({error}): the task runs outside",
                          path=scope.path, error=e.strerror)
            return False
        return True

    def leave(self, scope: CgroupScope) -> bool:
        """Move daggyd back home.  On failure no cgroup is used again (daggyd would be in it)."""
        try:
            _write(os.path.join(self.home, "cgroup.procs"), self._pid_bytes)
        except OSError as e:
            self._broken = f"cannot move back to {self.home}: {e.strerror}"
            self.log.critical("daggyd is stuck in cgroup {path}: {why}; later tasks are "
                              "isolated by process group only", path=scope.path,
                              why=self._broken)
            return False
        return True

    def release(self, scope: CgroupScope) -> None:
        if scope.path and not scope.holds_daemon:
            if _populated(scope.path):
                # Processes the task left behind when it ended by itself: removed once empty.
                self._lingering[scope.path] = None
            elif len(self._free) < self._pool_size:
                self._free.append(scope.path)
            elif not _remove_tree(scope.path):
                self._lingering[scope.path] = None
        for path in list(itertools.islice(self._lingering, LINGERING_CHECKS_PER_RELEASE)):
            del self._lingering[path]
            if _populated(path) or not _remove_tree(path):
                self._lingering[path] = None  # to the back of the queue

    def close(self) -> None:
        """Remove every empty task cgroup and, if that empties it, this executor's directory.
        Cgroups still holding processes stay; a later daggyd removes them once empty."""
        if self.reaps_orphans:
            self.reaps_orphans = False
            _Subreaper.release()
        paths, self._free = self._free, []
        paths.extend(self._lingering)
        self._lingering.clear()
        for path in paths:
            if _populated(path) or not _remove_tree(path):
                self._lingering[path] = None
        if not self._lingering:
            _remove_tree(self.base)

    def __repr__(self) -> str:
        return f"<CgroupIsolation {self.base}>"


def _pid_is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_cgroups(home: str) -> None:
    """Clear the cgroups of daemons that are no longer running (``daggy.<pid>.<n>`` whose
    pid is gone): their tasks are run again by the runner, so any process still in them is
    killed (``cgroup.kill``), and the empty cgroups are removed (those whose processes are
    still dying are tried again by the next daemon)."""
    log = CgroupIsolation.log
    try:
        with os.scandir(home) as entries:
            stale = [entry.path for entry in entries
                     if (match := _BASE_NAME.match(entry.name))
                     and not _pid_is_running(int(match.group(1)))]
    except OSError:
        return
    for base in stale:
        if _populated(base):
            members = _members(base)
            try:
                _write(os.path.join(base, "cgroup.kill"), b"1")
            except FileNotFoundError:  # a kernel before 5.14: one by one
                for pid in members:
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGKILL)
            except OSError:
                continue
            log.warn("killed {count} processes left in {path} by a daggyd that is no longer "
                     "running", count=len(members), path=base)
        _remove_tree(base)


# -- subreaper --------------------------------------------------------------------------------


def _set_child_subreaper(on: bool) -> None:
    """:raises OSError: the kernel refused (not Linux, or older than 3.4)."""
    libc = ctypes.CDLL(None, use_errno=True)
    prctl = getattr(libc, "prctl", None)
    if prctl is None:
        raise OSError("no prctl in the C library")
    if prctl(_PR_SET_CHILD_SUBREAPER, ctypes.c_ulong(int(on)), ctypes.c_ulong(0),
             ctypes.c_ulong(0), ctypes.c_ulong(0)) != 0:
        number = ctypes.get_errno()
        raise OSError(number, os.strerror(number))


def _reap_table() -> dict[int, Any] | None:
    try:
        from twisted.internet import process
    except ImportError:
        return None
    return getattr(process, "reapProcessHandlers", None)


class OrphanReaper:
    """Reaps the orphans of tasks that were re-parented to daggyd because it is a subreaper
    (Twisted only reaps the processes it spawned).

    Twisted calls ``reapProcess`` of every entry of its ``reapProcessHandlers`` on each
    SIGCHLD; this object sits in that table under a key no pid can have.  It looks at the
    next exited child without reaping it (``waitid(WNOWAIT)``).  A child in Twisted's table
    is left to Twisted (and looked past one reactor turn later).  Any other child is an
    orphan of a task if its session is not daggyd's: every task leads a session of its own,
    and no descendant of a task can ever join daggyd's session.  Orphans are reaped; a child
    of daggyd's own session that Twisted does not know (one started with ``subprocess``) is
    left to whoever started it.
    """

    log = Logger()

    def __init__(self, reactor: Any, proc: str = "/proc") -> None:
        self._reactor = reactor
        self._handlers = _reap_table()
        self._proc = proc
        self._own_session = os.getsid(0)
        self._again: Any = None
        #: How many orphans were reaped.
        self.reaped = 0

    def reapProcess(self) -> None:
        self.reap(look_again=True)

    def reap(self, look_again: bool = False) -> None:
        handlers = self._handlers if self._handlers is not None else {}
        while True:
            try:
                exited = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return
            if exited is None or exited.si_pid == 0:
                return
            pid = exited.si_pid
            if pid in handlers:
                if look_again and self._again is None:
                    self._again = self._reactor.callLater(0, self._look_again)
                return
            if not self._is_orphan(pid):
                # Not ours to reap, and waitid(P_ALL) cannot look past it: find the orphans
                # among the children one by one.
                self._reap_listed_orphans()
                return
            self._reap(pid)

    def _is_orphan(self, pid: int) -> bool:
        stat = read_stat(pid, self._proc)
        return stat is not None and stat.sid != self._own_session

    def _reap(self, pid: int) -> None:
        try:
            reaped, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return
        if reaped:
            self.reaped += 1

    def _reap_listed_orphans(self) -> None:
        handlers = self._handlers if self._handlers is not None else {}
        try:
            with os.scandir(f"{self._proc}/self/task") as threads:
                thread_dirs = [thread.path for thread in threads]
        except OSError:
            return
        for thread_dir in thread_dirs:
            try:
                children = _read(f"{thread_dir}/children", 1 << 20).split()
            except OSError:
                continue
            for word in children:
                pid = int(word)
                if pid not in handlers and self._is_orphan(pid):
                    self._reap(pid)

    def _look_again(self) -> None:
        self._again = None
        try:
            self.reap()
        except Exception:
            self.log.failure("reaping orphaned task processes failed")

    def cancel(self) -> None:
        if self._again is not None and self._again.active():
            self._again.cancel()
        self._again = None


class _Subreaper:
    """daggyd as a child subreaper, shared by every executor of the process."""

    users = 0
    reaper: OrphanReaper | None = None

    @classmethod
    def acquire(cls, reactor: Any) -> None:
        if cls.users == 0:
            handlers = _reap_table()
            if handlers is None:
                raise IsolationUnavailable("this Twisted has no reapProcessHandlers table")
            try:
                _set_child_subreaper(True)
            except (OSError, AttributeError) as e:
                raise IsolationUnavailable(f"prctl(PR_SET_CHILD_SUBREAPER): {e}") from None
            cls.reaper = OrphanReaper(reactor)
            handlers[_REAPER_KEY] = cls.reaper
            cls.reaper.reap()  # orphans from before
        cls.users += 1

    @classmethod
    def release(cls) -> None:
        cls.users -= 1
        if cls.users > 0 or cls.reaper is None:
            return
        reaper, cls.reaper = cls.reaper, None
        handlers = _reap_table()
        if handlers is not None and handlers.get(_REAPER_KEY) is reaper:
            del handlers[_REAPER_KEY]
        reaper.cancel()
        try:
            _set_child_subreaper(False)
        except OSError:
            pass
        reaper.reap()  # orphans that exited meanwhile; later ones go to init


class ProcessTreeScope:
    """One task found by walking ``/proc`` (see :func:`task_processes`)."""

    def __init__(self, task_id: str, proc: str = "/proc",
                 kill: Callable[[int, int], None] = os.kill) -> None:
        self.task_id = task_id
        self.environment = {TASK_ID_VARIABLE: task_id}
        self._proc = proc
        self._kill = kill
        self._pid: int | None = None
        self._reaped = False

    def spawning(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def started(self, pid: int) -> None:
        self._pid = pid

    def task_reaped(self) -> None:
        self._reaped = True

    def signal(self, signum: int, skip_group: int | None) -> int:
        if self._pid is None:
            return 0
        daemon_pid = os.getpid()
        table = process_table(self._proc)
        targets = task_processes(
            table, self._pid, self._reaped, daemon_pid,
            lambda pid: environ_has(pid, TASK_ID_VARIABLE, self.task_id, self._proc))
        count = 0
        for pid in targets:
            if skip_group is not None and table[pid].pgid == skip_group:
                continue
            try:
                self._kill(pid, signum)
            except (ProcessLookupError, PermissionError):
                continue
            count += 1
        return count

    def release(self) -> None:
        pass


class SubreaperIsolation:
    """daggyd as a child subreaper plus a ``/proc`` walk at kill time.

    :raises IsolationUnavailable: ``prctl`` refused, or there is no ``/proc``.
    """

    mode = "subreaper"

    def __init__(self, reactor: Any, why_not_stronger: str = "", proc: str = "/proc") -> None:
        if not os.path.isdir(f"{proc}/self"):
            raise IsolationUnavailable(f"no {proc} to find processes in")
        _Subreaper.acquire(reactor)
        self.why_not_stronger = why_not_stronger
        self._proc = proc
        self._prefix = f"{os.getpid()}.{next(_instance_numbers)}."
        self._numbers = itertools.count(1)
        self._closed = False

    def new_scope(self) -> ProcessTreeScope:
        return ProcessTreeScope(self._prefix + str(next(self._numbers)), self._proc)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            _Subreaper.release()


# -- choosing -------------------------------------------------------------------------------


def choose_isolation(mode: str, reactor: Any, pool_size: int) -> Isolation:
    """The isolation ``mode`` asks for (``auto``: the strongest available).

    :raises ValueError: ``mode`` is unknown, or names a mechanism this machine lacks (the
        message says why).
    """
    if mode not in ISOLATION_MODES:
        raise ValueError(f"isolation must be one of {', '.join(ISOLATION_MODES)}, not {mode!r}")
    if mode == "session":
        return SessionIsolation()
    reasons: list[str] = []
    if mode in ("auto", "cgroup"):
        try:
            return CgroupIsolation(own_cgroup_dir(), pool_size=pool_size, reactor=reactor)
        except IsolationUnavailable as e:
            if mode == "cgroup":
                raise ValueError(f"isolation cgroup is not available: {e}") from None
            reasons.append(f"no cgroup: {e}")
    try:
        return SubreaperIsolation(reactor, "; ".join(reasons))
    except IsolationUnavailable as e:
        if mode == "subreaper":
            raise ValueError(f"isolation subreaper is not available: {e}") from None
        reasons.append(f"no subreaper: {e}")
    return SessionIsolation("; ".join(reasons))
