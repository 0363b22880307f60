# -*- test-case-name: tests.unit.test_tap -*-
"""``twistd daggyd``: command-line options and ``makeService``.

The twistd plugin (twisted/plugins/daggyd_plugin.py) and the ``daggyd`` console script
(daggy.service.cli) both build the daemon through this module.
"""

from __future__ import annotations

from twisted.python import usage

from daggy.service.config import ConfigError, DaemonConfig, default_config, load_config
from daggy.service.services import DaggyService, build_service


class Options(usage.Options):
    synopsis = "[--config FILE]"
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
            "dag-threads, max-request-bytes, logger, executor (see docs/config.md and "
            "docs/security.md).  Default: built-in defaults.",
        ],
    ]

    compData = usage.Completions(optActions={"config": usage.CompleteFiles("*.json *.yaml *.yml")})

    #: The validated config, set by ``postOptions``.
    daemon_config: DaemonConfig

    def postOptions(self) -> None:
        try:
            if self["config"] is None:
                self.daemon_config = default_config()
            else:
                self.daemon_config = load_config(self["config"])
        except ConfigError as error:
            raise usage.UsageError(str(error)) from None


def makeService(options: Options) -> DaggyService:
    from twisted.internet import reactor

    return build_service(options.daemon_config, reactor)
