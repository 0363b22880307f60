# -*- test-case-name: tests.unit.test_tap -*-
"""``twistd daggyd``: command-line options and ``makeService``.

The twistd plugin (twisted/plugins/daggyd_plugin.py) and the ``daggyd`` console script
(daggy.service.cli) both build the daemon through this module.
"""

from __future__ import annotations

import sys
from typing import Any, Callable

from twisted.logger import ILogObserver
from twisted.python import usage

from daggy.service.config import ConfigError, DaemonConfig, default_config, load_config
from daggy.service.logformat import LOG_FORMATS, json_log_observer
from daggy.service.services import DaggyService, build_service

#: The ``--logger`` of ``daggyd`` in the foreground, and its JSON twin.
STDERR_TEXT_LOGGER = "daggy.service.cli.stderr_log_observer"
STDERR_JSON_LOGGER = "daggy.service.cli.stderr_json_log_observer"


class Options(usage.Options):
    synopsis = "[--config FILE] [--log-format text|json]"
    longdesc = (
        "Run daggyd, the DAG work-orchestration daemon: it accepts DAG run specs over HTTP "
        "and runs their tasks with the configured executor, recording every state change "
        "with the configured logger.  Without --config it listens on 127.0.0.1:2503 with "
        "ForkingTaskExecutor (10 tasks at once) and OStreamLogger writing JSON events to "
        "stdout.  It refuses to listen on a non-loopback address unless the config sets "
        "bearer tokens (or allow-unauthenticated).  Every config key is described in "
        "docs/config.md."
    )

    optParameters = [
        [
            "config",
            "c",
            None,
            "Daemon config file, JSON (.json) or YAML (.yaml/.yml); keys: ip, port, "
            "listen, auth-tokens, auth-token-file, allow-unauthenticated, web-threads, "
            "dag-threads, max-request-bytes, log-format, logger, executor (see "
            "docs/config.md and docs/security.md).  Default: built-in defaults.",
        ],
        [
            "log-format",
            None,
            None,
            "daggyd's own log: text, or json (one JSON object per line, with run_id and "
            "task fields).  Default: the config's log-format, else text.",
        ],
    ]

    compData = usage.Completions(optActions={"config": usage.CompleteFiles("*.json *.yaml *.yml")})

    #: The validated config, set by ``postOptions``.
    daemon_config: DaemonConfig
    #: ``"text"`` or ``"json"``: ``--log-format``, else the config's ``log-format``.
    log_format: str
    #: Makes the JSON log observer for twistd's application, when twistd would otherwise
    #: log text where it logs by default (stdout, or ``--logfile``); else None.
    make_log_observer: Callable[[], ILogObserver] | None = None

    def postOptions(self) -> None:
        chosen = self["log-format"]
        if chosen is not None and chosen not in LOG_FORMATS:
            raise usage.UsageError(f"--log-format: must be one of {', '.join(LOG_FORMATS)} "
                                   f"(got {chosen!r})")
        try:
            if self["config"] is None:
                self.daemon_config = default_config()
            else:
                self.daemon_config = load_config(self["config"])
        except ConfigError as error:
            raise usage.UsageError(str(error)) from None
        self.log_format = chosen or self.daemon_config.log_format
        if self.log_format == "json" and self.parent is not None:
            self._log_json_instead_of_text(self.parent)

    def _log_json_instead_of_text(self, twistd_options: Any) -> None:
        """Make twistd log JSON lines where it would log text.

        Runs before twistd's own ``postOptions``, which turns ``--logger`` from a name into
        the factory; a ``--logger`` other than daggyd's stderr one, and ``--syslog``, are
        left as they are (they choose the format themselves)."""
        logger = twistd_options["logger"]
        if logger == STDERR_TEXT_LOGGER:
            twistd_options["logger"] = STDERR_JSON_LOGGER
        elif logger is None and not twistd_options["syslog"]:
            logfile = twistd_options["logfile"]
            if logfile == "-" and not twistd_options["nodaemon"]:
                return  # twistd refuses this itself ("Daemons cannot log to stdout")
            if logfile == "-" or (twistd_options["nodaemon"] and not logfile):
                stream = sys.stdout
                self.make_log_observer = lambda: json_log_observer(stream)
            else:
                # Where and how (rotated at 1 MB) twistd would write its text log.
                from twisted.python.logfile import LogFile

                path = logfile or "twistd.log"
                self.make_log_observer = lambda: json_log_observer(LogFile.fromFullPath(path))


def makeService(options: Options) -> DaggyService:
    from twisted.internet import reactor

    daemon = build_service(options.daemon_config, reactor)
    if options.make_log_observer is not None:
        daemon.log_observer = options.make_log_observer()
    return daemon
