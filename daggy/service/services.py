# -*- test-case-name: tests.unit.test_tap -*-
"""The daemon's service tree and :func:`build_service`, which wires a config into it.

The tree, in the order children are added (they start in this order and stop in reverse)::

    DaggyService                     stops its children one at a time, last added first
      LoggerService   "logger"       stop: logger.close()
      RunnerService   "runner"       stop: runner.stop() (refuse runs, kill tasks, record, flush)
      HTTPServerService "http"       stop: stop listening

So on SIGTERM the HTTP port closes first, then the runner records every killed attempt
through a logger that is still open, and only then is the logger closed.
"""

from __future__ import annotations

import gc

import ipaddress
from typing import Any, Mapping

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint, serverFromString
from twisted.logger import ILogObserver, Logger

from daggy.service.config import ConfigError, DaemonConfig
from daggy.service.signals import install_sighup
from daggy.service.registry import DEFAULT_REGISTRY, Component, Registry


#: gc thresholds of the daemon (CPython's default is 700, 10, 10).  A 100,000-task run keeps
#: millions of long-lived containers (definitions, states, attempts); with the defaults the
#: collector scans them over and over while they are created, which cost a third of the
#: time of such a run.  The first threshold stays small because every young collection is
#: a pause for the requests waiting: at 100,000 a pause took ~0.1 s, at 10,000 about a
#: tenth of that, and a 100,000-task run is as fast as with 100,000.
GC_THRESHOLDS = (10_000, 50, 10)


def tune_garbage_collector() -> None:
    """Collect less often, and never scan what exists at start-up (imports, config) again."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


class DaggyService(MultiService):
    """A MultiService that stops its children sequentially, in reverse order of addition.

    ``MultiService.stopService`` stops every child at once; daggyd needs each stop to finish
    before the next begins (the runner must finish recording before the logger closes).
    A child whose stop fails is logged and the next child is still stopped.
    """

    log = Logger()

    #: The log observer of the twistd application this service is added to (JSON logs,
    #: see daggy.service.tap); None leaves the choice to twistd.
    log_observer: ILogObserver | None = None

    def __init__(self, reactor: Any = None):
        super().__init__()
        self._reactor = reactor
        self._uninstall_sighup: Any = lambda: None

    def setServiceParent(self, parent: Any) -> None:
        super().setServiceParent(parent)
        if self.log_observer is not None and hasattr(parent, "setComponent"):
            # twistd logs through its application's ILogObserver component when no
            # --logger is given.
            parent.setComponent(ILogObserver, self.log_observer)

    def startService(self) -> None:
        tune_garbage_collector()
        super().startService()
        if self._reactor is not None:
            # SIGHUP (logrotate) reopens the OStreamLogger's file instead of killing daggyd.
            self._uninstall_sighup = install_sighup(
                self._reactor, self.getServiceNamed("logger").reopen)

    def stopService(self) -> Deferred[None]:
        Service.stopService(self)
        return Deferred.fromCoroutine(self._stop_children())

    async def _stop_children(self) -> None:
        for child in reversed(list(self)):
            try:
                await maybeDeferred(child.stopService)
            except Exception:
                self.log.failure("Stopping the {name} service failed", name=child.name)
        # Only now: restoring SIGHUP's default earlier would let one end the process while
        # the runner still records.
        self._uninstall_sighup()


class LoggerService(Service):
    """Owns the run logger: starts it (a RedisLogger begins connecting, and retries until
    Redis answers, without holding up the daemon) and closes (flushes and releases) it when
    the daemon stops."""

    name = "logger"
    log = Logger()

    def __init__(self, logger: Any):
        self.logger = logger

    def startService(self) -> None:
        Service.startService(self)
        self.logger.start()

    def reopen(self) -> None:
        """Reopen the logger's file, for loggers that write one (not the RedisLogger)."""
        reopen = getattr(self.logger, "reopen", None)
        if reopen is not None:
            reopen()

    def stopService(self) -> Deferred[None]:
        Service.stopService(self)
        closing = maybeDeferred(self.logger.close)
        closing.addErrback(
            lambda failure: self.log.failure("Closing the run logger failed", failure)
        )
        return closing


class EventsService(Service):
    """Owns the event hub of ``GET /v1/events``: when the daemon stops, after the runner
    and the logger, it sends each open stream what it has not had yet and ends it."""

    name = "events"

    def __init__(self, hub: Any):
        self.hub = hub

    def stopService(self) -> None:
        Service.stopService(self)
        self.hub.close()


class RunnerService(Service):
    """Owns the RunManager: once the logger is ready, resumes the runs it recorded as
    unfinished (restart recovery); stops it (no new runs, running tasks killed and
    recorded, logger flushed) when the daemon stops."""

    name = "runner"
    log = Logger()

    def __init__(self, runner: Any, logger: Any):
        self.runner = runner
        self.logger = logger
        self.recovered: Deferred | None = None

    def startService(self) -> None:
        Service.startService(self)
        # Not awaited: the logger may wait for its store (Redis) for a long time, and the
        # daemon must serve /ready meanwhile.
        self.recovered = maybeDeferred(self.logger.when_ready)
        self.recovered.addCallback(lambda _: self.runner.recover())
        self.recovered.addErrback(
            lambda failure: self.log.failure("Recovering unfinished runs failed", failure)
        )

    def stopService(self) -> Deferred[None]:
        Service.stopService(self)
        stopping = maybeDeferred(self.runner.stop)
        stopping.addErrback(
            lambda failure: self.log.failure("Stopping the runner failed", failure)
        )
        return stopping


class HTTPServerService(StreamServerEndpointService):
    """Serves the HTTP API on an endpoint.

    Unlike its base class it lets a failure to listen (e.g. the port is in use) propagate
    from ``privilegedStartService`` instead of only logging it, so the daemon exits at start
    instead of running without a port.

    :param where: the address, for the log line saying where and how the API is served.
    :param authenticated: whether the API requires a bearer token.
    :param exposure: how to name the address when other machines can reach it (see
        :meth:`DaemonConfig.exposure`); the log then warns if the API is unauthenticated.
    """

    name = "http"
    log = Logger()
    _raiseSynchronously = True

    def __init__(self, endpoint: Any, factory: Any, *, where: str = "",
                 authenticated: bool = False, exposure: str | None = None):
        super().__init__(endpoint, factory)
        self.where = where
        self.authenticated = authenticated
        self.exposure = exposure

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        if self.authenticated:
            self.log.info("Serving the API on {where}; every request but GET /ready needs "
                          "a bearer token", where=self.where)
        elif self.exposure is not None:
            self.log.warn("Serving the API on {exposure} WITHOUT authentication "
                          "(allow-unauthenticated is true): anyone who can reach it can run "
                          "commands as this user", exposure=self.exposure)
        else:
            self.log.info("Serving the API on {where} without authentication (local "
                          "connections only)", where=self.where)


def listening_endpoint(reactor: Any, ip: str, port: int) -> Any:
    """A TCP server endpoint for ``ip:port`` (IPv6 when ``ip`` is an IPv6 literal)."""
    if ip != "localhost" and ipaddress.ip_address(ip).version == 6:
        return TCP6ServerEndpoint(reactor, port, interface=ip)
    return TCP4ServerEndpoint(reactor, port, interface=ip)


def config_endpoint(config: DaemonConfig, reactor: Any) -> Any:
    """The server endpoint ``config`` listens on: its ``listen`` string, else ``ip:port``.

    :raises ConfigError: the ``listen`` string no longer works (validation built it once;
        e.g. a certificate file was removed since).
    """
    if config.listen is None:
        return listening_endpoint(reactor, config.ip, config.port)
    try:
        return serverFromString(reactor, config.listen)
    except Exception as error:
        raise ConfigError(config.source, [
            f"listen: cannot use {config.listen}: {type(error).__name__}: {error}"]) from None


def _build_component(
    config: DaemonConfig, kind: str, components: Mapping[str, Component], reactor: Any
) -> Any:
    choice = getattr(config, kind)
    try:
        return components[choice.name].build(reactor, choice.config)
    except (OSError, ValueError) as error:
        # e.g. OStreamLogger's file cannot be opened, or RedisLogger's passwordFile is empty:
        # a config problem, reported as one.
        raise ConfigError(config.source, [f"{kind}: cannot start {choice.name}: {error}"]) from None


def build_service(
    config: DaemonConfig, reactor: Any, registry: Registry = DEFAULT_REGISTRY
) -> DaggyService:
    """Build the daemon's service tree for ``config`` on ``reactor`` (not started).

    ``web-threads`` sizes the reactor's thread pool and ``dag-threads`` caps the DAG runs
    executing at once; docs/config.md explains both.  The API listens on ``listen`` (or
    ``ip:port``) and requires a bearer token when the config has any (docs/security.md);
    ``/metrics`` is served beside it (docs/metrics.md).

    :param registry: the loggers and executors the config's names refer to.
    :raises ConfigError: a logger or executor cannot be created (e.g. a file cannot be opened).
    """
    # Imported here, not at module level, so that `twistd daggyd --help` and config
    # validation do not import klein and the web stack.
    from daggy.events import EventHub
    from daggy.metrics import DaemonMetrics
    from daggy.runner import RunManager
    from daggy.server.api import DaggyAPI, make_site
    from daggy.server.webui import load_assets

    # First, so that a failure leaves no logger file open.
    endpoint = config_endpoint(config, reactor)
    reactor.suggestThreadPoolSize(config.web_threads)
    logger = _build_component(config, "logger", registry.loggers, reactor)
    executor = _build_component(config, "executor", registry.executors, reactor)
    events = None
    if hasattr(logger, "publish_to"):  # a logger of the RunLogger protocol alone has none
        events = EventHub(reactor, max_events=config.event_window_events,
                          max_bytes=config.event_window_bytes,
                          max_paused_seconds=config.event_reader_stall_seconds)
        # Before the first write, so that every event is numbered and kept.
        logger.publish_to(events)
    metrics = DaemonMetrics()
    runner = RunManager(reactor, executor, logger, max_active_runs=config.dag_threads,
                        limits=config.run_limits, metrics=metrics)
    metrics.watch(runner=runner, executor=executor, logger=logger,
                  executor_name=config.executor.name, logger_name=config.logger.name)
    api = DaggyAPI(runner, logger, reactor, executor_name=config.executor.name,
                   events=events)
    site = make_site(api, config.max_request_bytes,
                     auth_tokens=config.auth_tokens,
                     timeout=config.idle_timeout_seconds,
                     request_timeout=config.request_timeout_seconds,
                     max_connections=config.max_connections,
                     metrics=metrics,
                     ui_assets=load_assets() if config.web_ui else None)

    daemon = DaggyService(reactor)
    if events is not None:
        # First, so that it stops last: streams get the final events of the stopping runs.
        EventsService(events).setServiceParent(daemon)
    LoggerService(logger).setServiceParent(daemon)
    RunnerService(runner, logger).setServiceParent(daemon)
    # Added last so that it is the first to stop: no new requests while the runner drains.
    HTTPServerService(
        endpoint, site, where=config.listening_on(),
        authenticated=config.authenticated, exposure=config.exposure(),
    ).setServiceParent(daemon)
    return daemon
