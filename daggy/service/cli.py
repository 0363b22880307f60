# -*- test-case-name: tests.unit.test_cli -*-
"""The ``daggyd`` console script: twistd's machinery with daggyd's defaults.

``daggyd`` runs in the foreground (its own log on stderr, the OStreamLogger's JSON events on
stdout); ``daggyd -d`` daemonizes with a pid file and a log file.  It translates its options
into a twistd command line and runs twistd's application runner on it, with the daggyd
service maker wired in directly, so it needs no plugin discovery and works from an editable
install too.
"""

from __future__ import annotations

import os
import sys
from typing import Sequence

from twisted.application.service import ServiceMaker
from twisted.internet.error import CannotListenError
from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    textFileLogObserver,
)
from twisted.python import usage

# twistd's own Unix option parser and runner (twisted.scripts.twistd re-exports the same
# classes under platform-neutral names); daggyd only runs on POSIX.
from twisted.scripts._twistd_unix import ServerOptions, UnixApplicationRunner

import daggy
from daggy.service.config import ConfigError
from daggy.service.logformat import LOG_FORMATS, json_log_observer

_log = Logger()

DEFAULT_PIDFILE = "daggyd.pid"
DEFAULT_LOGFILE = "daggyd.log"

#: The service maker the twistd plugin also declares; used here directly.
DAGGYD_SERVICE_MAKER = ServiceMaker(
    "daggyd",
    "daggy.service.tap",
    "daggy's DAG work-orchestration daemon: submit, track and control DAG runs over HTTP",
    "daggyd",
)


def stderr_log_observer() -> ILogObserver:
    """A log observer factory for twistd's ``--logger``: the daemon's own log as text on
    stderr, info level and above.

    twistd's ``--logfile`` can name a file or stdout but not stderr, and in the foreground
    stdout is reserved for the OStreamLogger's JSON event lines.
    """
    return FilteringLogObserver(
        textFileLogObserver(sys.stderr),
        [LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)],
    )


def stderr_json_log_observer() -> ILogObserver:
    """Like :func:`stderr_log_observer`, as JSON lines (``--log-format json``)."""
    return json_log_observer(sys.stderr)


class DaggydOptions(usage.Options):
    synopsis = (
        "Usage: daggyd [-d] [--config FILE] [--pidfile FILE] [--logfile FILE] [--umask MASK] "
        "[--log-format text|json]"
    )
    longdesc = (
        "Run daggyd, the DAG work-orchestration daemon.  By default it runs in the "
        "foreground on 127.0.0.1:2503 with ForkingTaskExecutor and OStreamLogger: JSON event "
        "lines go to stdout, the daemon's own log to stderr.  With -d it daemonizes, writing "
        f"its pid to ./{DEFAULT_PIDFILE} and its log to ./{DEFAULT_LOGFILE} (relative to the "
        "current directory) unless --pidfile/--logfile say otherwise.  SIGTERM or SIGINT "
        "stops it gracefully (exit status 0).  It refuses to listen on a non-loopback "
        "address without bearer tokens unless the config allows it.  See docs/config.md "
        "and docs/security.md."
    )

    optFlags = [
        [
            "daemon",
            "d",
            "Daemonize: detach from the terminal, write a pid file and log to a file.",
        ],
    ]
    optParameters = [
        [
            "config",
            "c",
            None,
            "Daemon config file, JSON (.json) or YAML (.yaml/.yml); see docs/config.md.  "
            "Default: built-in defaults.",
        ],
        [
            "pidfile",
            None,
            None,
            f"Pid file.  Default: ./{DEFAULT_PIDFILE} with -d; none in the foreground.",
        ],
        [
            "logfile",
            None,
            None,
            f"File for the daemon's own log (twistd rotates it at 1 MB).  Default: "
            f"./{DEFAULT_LOGFILE} with -d; stderr in the foreground.",
        ],
        [
            "umask",
            None,
            None,
            "File creation mask (octal, e.g. 022), inherited by tasks too.  Default: 077 "
            "with -d; unchanged in the foreground.",
        ],
        [
            "log-format",
            None,
            None,
            "The daemon's own log: text, or json (one JSON object per line, with run_id "
            "and task fields).  Default: the config's log-format, else text.",
        ],
    ]

    compData = usage.Completions(
        optActions={
            "config": usage.CompleteFiles("*.json *.yaml *.yml"),
            "pidfile": usage.CompleteFiles("*.pid"),
            "logfile": usage.CompleteFiles("*.log"),
        }
    )

    def opt_version(self) -> None:
        """Print the daggy version and exit."""
        print(f"daggyd {daggy.__version__}")
        sys.exit(0)

    def postOptions(self) -> None:
        log_format = self["log-format"]
        if log_format is not None and log_format not in LOG_FORMATS:
            raise usage.UsageError(f"--log-format: must be one of {', '.join(LOG_FORMATS)} "
                                   f"(got {log_format!r})")
        if self["daemon"]:
            if self["pidfile"] is None:
                self["pidfile"] = DEFAULT_PIDFILE
            if self["logfile"] is None:
                self["logfile"] = DEFAULT_LOGFILE

    def twistd_arguments(self) -> list[str]:
        """The equivalent twistd command line (without the program name)."""
        arguments = [] if self["daemon"] else ["--nodaemon"]
        # An empty --pidfile tells twistd to write none.
        arguments += ["--pidfile", self["pidfile"] or ""]
        if self["logfile"] is None:
            arguments += ["--logger", f"{__name__}.stderr_log_observer"]
        else:
            arguments += ["--logfile", self["logfile"]]
        if self["umask"] is not None:
            arguments += ["--umask", self["umask"]]
        arguments.append(DAGGYD_SERVICE_MAKER.tapname)
        if self["config"] is not None:
            arguments += ["--config", self["config"]]
        if self["log-format"] is not None:
            # The daggyd subcommand picks the observer (daggy.service.tap), since the
            # config file can choose the format too.
            arguments += ["--log-format", self["log-format"]]
        return arguments


class DaggydServerOptions(ServerOptions):
    """twistd's options with ``daggyd`` as the only subcommand (no plugin scan)."""

    @property
    def subCommands(self):
        maker = DAGGYD_SERVICE_MAKER
        # twistd's runner looks the chosen subcommand's maker up in loadedPlugins.
        self.loadedPlugins = {maker.tapname: maker}
        yield (maker.tapname, None, lambda: maker.options(), maker.description)


def _running_pid(pidfile: str) -> int | None:
    """The pid in ``pidfile`` if that process is alive.

    twistd makes the same check, but its message is several lines long and names twistd.
    A stale pid file is left for twistd to remove.
    """
    try:
        with open(pidfile) as pid_file:
            pid = int(pid_file.read())
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:  # alive, owned by another user
        return pid
    return pid


def main(argv: Sequence[str] | None = None) -> int:
    """Run daggyd; the exit status is 0 after a graceful stop (SIGTERM/SIGINT), 2 for a bad
    command line or config file, 1 when the HTTP port cannot be opened or the pid file
    names a running daggyd."""
    options = DaggydOptions()
    server_options = DaggydServerOptions()
    try:
        options.parseOptions(list(sys.argv[1:] if argv is None else argv))
        server_options.parseOptions(options.twistd_arguments())
    except usage.UsageError as error:
        print(f"daggyd: {error}", file=sys.stderr)
        return 2

    if server_options["pidfile"]:
        running = _running_pid(server_options["pidfile"])
        if running is not None:
            print(
                f"daggyd: already running as pid {running} (pid file {server_options['pidfile']})",
                file=sys.stderr,
            )
            return 1

    daemon_config = server_options.subOptions.daemon_config
    logger = daemon_config.logger
    if options["daemon"] and logger.name == "OStreamLogger" and logger.config["file"] == "-":
        print(
            "daggyd: warning: OStreamLogger writes to stdout, which is /dev/null once "
            "daemonized; set logger.config.file in the config file to keep the events",
            file=sys.stderr,
        )

    try:
        # Unlike twistd's runApp this does not re-raise a stopping signal on exit: a
        # graceful stop on SIGTERM/SIGINT exits with status 0.
        UnixApplicationRunner(server_options).run()
    except ConfigError as error:
        # Raised while building the service (before logging and daemonizing start).
        print(f"daggyd: {error}", file=sys.__stderr__)
        return 2
    except CannotListenError as error:
        reason = getattr(error.socketError, "strerror", None) or error.socketError
        message = f"daggyd: cannot listen on {_listen_address(error)}: {reason}"
        if options["daemon"]:
            # The parent process has already reported the failure; keep it in the log file.
            _log.critical("{message}", message=message)
        else:
            # twistd has redirected sys.stderr into its log; __stderr__ is the real one.
            print(message, file=sys.__stderr__)
        return 1
    _exit_without_teardown(0)
    return 0  # not reached; kept for readers and type checkers


def _listen_address(error: CannotListenError) -> str:
    """The address a CannotListenError is about: ``interface:port``, or a unix socket's
    path (its interface is ``None``)."""
    if error.interface is None:
        return str(error.port)
    # An empty interface (a `listen` string without one) is every IPv4 interface.
    interface = error.interface or "0.0.0.0"
    if ":" in interface:
        interface = f"[{interface}]"
    return f"{interface}:{error.port}"


def _exit_without_teardown(status: int) -> None:
    """Exit at once: by now the runner and the logger have stored and closed everything,
    and the log observers flush every line.  Letting the interpreter free a large run's
    objects one by one first took 40 s after a 1,000,000-task run."""
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            pass  # closed or gone (daemonized): nothing left to lose
    os._exit(status)
