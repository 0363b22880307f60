"""`twistd daggyd` options and the service tree build_service wires from a config."""

from __future__ import annotations

import json

import pytest
from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.endpoints import SSL4ServerEndpoint, TCP4ServerEndpoint, TCP6ServerEndpoint
from twisted.internet.error import CannotListenError
from twisted.internet.testing import MemoryReactorClock, RaisingMemoryReactor
from twisted.logger import globalLogPublisher
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from daggy.loggers.memory import MemoryStore
from daggy.loggers.ostream import OStreamLogger
from daggy.model import State
from daggy.runner import RunManager
from daggy.server._site import DaggySite
from daggy.server.auth import BearerTokenResource
from daggy.service import tap
from daggy.service.config import ConfigError, default_config, load_config, validate_config
from daggy.service.registry import Component, Registry
from daggy.service.services import (
    DaggyService,
    HTTPServerService,
    EventsService,
    LoggerService,
    RunnerService,
    build_service,
    listening_endpoint,
)
from daggy.testing.executor import FakeExecutor
from test_config import write_certificate

_sync = SynchronousTestCase()
result_of = _sync.successResultOf


class DaemonReactor(MemoryReactorClock):
    """A MemoryReactorClock that also records the thread pool size and port closes."""

    def __init__(self, events: list | None = None):
        super().__init__()
        self.events = [] if events is None else events
        self.thread_pool_size = None

    def suggestThreadPoolSize(self, size: int) -> None:
        self.thread_pool_size = size

    def listenTCP(self, port, factory, backlog=50, interface=""):
        listening = super().listenTCP(port, factory, backlog, interface)
        events = self.events

        class RecordingPort:
            def getHost(self):
                return listening.getHost()

            def stopListening(self):
                events.append("http stopped listening")
                return succeed(None)

        return RecordingPort()


def write_config(tmp_path, document, name="daggyd.json"):
    path = tmp_path / name
    path.write_text(json.dumps(document), encoding="utf-8")
    return path


def noop_config(tmp_path, **overrides):
    """A real config: no-op executor, OStreamLogger writing to a file in tmp_path."""
    document = {
        "executor": {"name": "NoopTaskExecutor"},
        "logger": {"name": "OStreamLogger", "config": {"file": str(tmp_path / "events.jsonl")}},
        **overrides,
    }
    return load_config(write_config(tmp_path, document))


# -- Options -------------------------------------------------------------------------------


def test_options_without_config_use_the_defaults():
    """`twistd daggyd` with no options runs on the built-in defaults."""
    options = tap.Options()
    options.parseOptions([])
    assert options["config"] is None
    assert options.daemon_config == default_config()


@pytest.mark.parametrize("flag", ["--config", "-c"])
def test_options_load_the_config_file(tmp_path, flag):
    """--config/-c FILE loads and validates that file."""
    path = write_config(tmp_path, {"port": 8080})
    options = tap.Options()
    options.parseOptions([flag, str(path)])
    assert options["config"] == str(path)
    assert options.daemon_config == load_config(path)


def test_options_report_an_invalid_config_as_a_one_line_usage_error(tmp_path):
    """A config mistake becomes a UsageError carrying the one-line ConfigError message."""
    path = write_config(tmp_path, {"port": "http"})
    with pytest.raises(usage.UsageError) as raised:
        tap.Options().parseOptions(["--config", str(path)])
    assert str(raised.value) == f'{path}: port: must be an integer from 1 to 65535 (got "http")'


def test_options_reject_unknown_flags():
    """An option daggyd does not have is a usage error."""
    with pytest.raises(usage.UsageError):
        tap.Options().parseOptions(["--listen", "tcp:80"])


def test_help_documents_every_option():
    """`twistd daggyd --help` describes --config, the defaults and where the docs are."""
    text = str(tap.Options())
    assert "-c, --config=" in text
    assert "docs/config.md" in text
    assert "127.0.0.1:2503" in text


def test_make_service_builds_the_tree_on_the_global_reactor(tmp_path):
    """makeService turns parsed options into the (unstarted) daemon service tree."""
    options = tap.Options()
    options.parseOptions(["--config", str(write_config(tmp_path, {
        "executor": {"name": "NoopTaskExecutor"},
        "logger": {"name": "OStreamLogger", "config": {"file": str(tmp_path / "e.jsonl")}},
    }))])
    daemon = tap.makeService(options)
    try:
        assert isinstance(daemon, DaggyService)
        assert [child.name for child in daemon] == ["events", "logger", "runner", "http"]
        assert not daemon.running
    finally:
        result_of(daemon.getServiceNamed("logger").logger.close())


# -- build_service -------------------------------------------------------------------------


def test_tree_shape_and_order(tmp_path):
    """The tree holds the event hub, the logger, the runner and the HTTP server, added in
    that order; the logger publishes to the hub, sized by the config."""
    config = noop_config(tmp_path, **{"event-window-events": 123, "event-window-bytes": 4567,
                                      "event-reader-stall-seconds": 8.5})
    daemon = build_service(config, DaemonReactor())
    children = list(daemon)
    assert [(type(child), child.name) for child in children] == [
        (EventsService, "events"),
        (LoggerService, "logger"),
        (RunnerService, "runner"),
        (HTTPServerService, "http"),
    ]
    hub = children[0].hub
    assert isinstance(children[1].logger, OStreamLogger)
    assert children[1].logger.events is hub
    assert (hub.max_events, hub.max_bytes, hub.max_paused_seconds) == (123, 4567, 8.5)
    assert isinstance(children[2].runner, RunManager)
    assert isinstance(children[3].factory, DaggySite)
    result_of(children[1].logger.close())


def test_starting_listens_on_the_configured_address(tmp_path):
    """Starting the tree listens on ip:port with a Site bounded by max-request-bytes, and the
    reactor's thread pool is sized by web-threads."""
    config = noop_config(tmp_path, ip="127.0.0.2", port=8123, **{
        "max-request-bytes": 4096, "web-threads": 3})
    reactor = DaemonReactor()
    daemon = build_service(config, reactor)
    daemon.privilegedStartService()
    daemon.startService()
    [(port, site, _backlog, interface)] = reactor.tcpServers
    assert (port, interface) == (8123, "127.0.0.2")
    assert site.max_request_bytes == 4096
    assert reactor.thread_pool_size == 3
    assert result_of(daemon.stopService()) is None
    assert reactor.events == ["http stopped listening"]
    assert reactor.getDelayedCalls() == []


def test_ipv6_address_listens_with_a_tcp6_endpoint():
    """An IPv6 ip gets an IPv6 endpoint; IPv4 addresses and localhost get TCP4."""
    reactor = MemoryReactorClock()
    assert isinstance(listening_endpoint(reactor, "::1", 2503), TCP6ServerEndpoint)
    assert isinstance(listening_endpoint(reactor, "127.0.0.1", 2503), TCP4ServerEndpoint)
    assert isinstance(listening_endpoint(reactor, "localhost", 2503), TCP4ServerEndpoint)


def test_unopenable_logger_file_is_a_config_error(tmp_path):
    """An OStreamLogger file that cannot be opened is reported as a one-line config error."""
    config = noop_config(tmp_path, logger={
        "name": "OStreamLogger", "config": {"file": str(tmp_path / "missing" / "e.jsonl")}})
    with pytest.raises(ConfigError) as raised:
        build_service(config, DaemonReactor())
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(f"{config.source}: logger: cannot start OStreamLogger: ")
    assert "No such file or directory" in message


class RecordingStore(MemoryStore):
    """A MemoryStore noting attempts and its close in a shared event list."""

    def __init__(self, events: list):
        super().__init__()
        # Not "events": MemoryStore.events is the run-event hub.
        self.noted = events

    def record_attempt(self, run_id, task_name, attempt):
        self.noted.append(f"attempt of {task_name} recorded (killed={attempt.killed})")
        super().record_attempt(run_id, task_name, attempt)

    def close(self):
        self.noted.append("logger closed")
        return super().close()


class FakeBackends:
    """A registry offering RecordingStore and FakeExecutor; keeps what it built."""

    def __init__(self, events: list):
        self.executors: list[FakeExecutor] = []
        self.stores: list[RecordingStore] = []

        def build_store(reactor, config):
            self.stores.append(RecordingStore(events))
            return self.stores[-1]

        def build_executor(reactor, config):
            self.executors.append(FakeExecutor(reactor, capacity=None))
            return self.executors[-1]

        self.registry = Registry(
            loggers={"RecordingStore": Component({}, build_store)},
            executors={"FakeTaskExecutor": Component({}, build_executor)},
        )

    def config(self, **overrides):
        return validate_config(
            {"logger": {"name": "RecordingStore"}, "executor": {"name": "FakeTaskExecutor"},
             **overrides},
            registry=self.registry,
        )


def one_task_run(name):
    return {"tasks": {name: {"job": {"command": ["/bin/true"]}}}}


def test_dag_threads_caps_the_runs_executing_at_once():
    """With dag-threads 1 a second run waits QUEUED while the first one runs."""
    backends = FakeBackends([])
    reactor = DaemonReactor()
    daemon = build_service(backends.config(**{"dag-threads": 1}), reactor, backends.registry)
    runner = daemon.getServiceNamed("runner").runner
    first = result_of(runner.submit(one_task_run("a")))
    second = result_of(runner.submit(one_task_run("b")))
    reactor.advance(0)
    store = backends.stores[0]
    assert result_of(store.get_run_state(first))["state"] == State.RUNNING.value
    assert result_of(store.get_run_state(second))["state"] == State.QUEUED.value
    assert [execution.task_name for execution in backends.executors[0].running] == ["a"]


def test_stopping_closes_the_port_then_drains_the_runner_then_closes_the_logger():
    """On stop the HTTP port closes first, then running tasks are killed and their attempts
    recorded, and only then is the logger closed."""
    events: list = []
    backends = FakeBackends(events)
    reactor = DaemonReactor(events)
    daemon = build_service(backends.config(), reactor, backends.registry)
    daemon.privilegedStartService()
    daemon.startService()
    runner = daemon.getServiceNamed("runner").runner
    result_of(runner.submit(one_task_run("sleeper")))
    reactor.advance(0)
    assert [execution.task_name for execution in backends.executors[0].running] == ["sleeper"]

    assert result_of(daemon.stopService()) is None
    assert events == [
        "http stopped listening",
        "attempt of sleeper recorded (killed=True)",
        "logger closed",
    ]
    assert not runner.accepting
    assert not daemon.running


# -- the services --------------------------------------------------------------------------


class ControlledStop(Service):
    """A service whose stop finishes when the test fires its Deferred."""

    def __init__(self, name: str, log: list):
        self.setName(name)
        self.log = log
        self.stopping: Deferred | None = None

    def stopService(self):
        Service.stopService(self)
        self.log.append(f"stopping {self.name}")
        self.stopping = Deferred()
        self.stopping.addCallback(lambda _: self.log.append(f"stopped {self.name}"))
        return self.stopping


def test_daggy_service_stops_children_one_at_a_time_last_first():
    """Each child's stop begins only after the later-added child's stop has finished."""
    log: list = []
    daemon = DaggyService()
    first, second, third = (ControlledStop(name, log) for name in ("first", "second", "third"))
    for child in (first, second, third):
        child.setServiceParent(daemon)
    daemon.startService()

    stopped = daemon.stopService()
    assert log == ["stopping third"]
    third.stopping.callback(None)
    assert log == ["stopping third", "stopped third", "stopping second"]
    second.stopping.callback(None)
    assert not stopped.called
    first.stopping.callback(None)
    assert log == [
        "stopping third", "stopped third", "stopping second", "stopped second",
        "stopping first", "stopped first",
    ]
    assert result_of(stopped) is None


def test_a_failing_child_stop_is_logged_and_the_rest_still_stop(no_logged_errors):
    """A child whose stop fails is logged; the children added before it are still stopped."""
    log: list = []
    daemon = DaggyService()
    survivor = ControlledStop("survivor", log)
    survivor.setServiceParent(daemon)

    class Broken(Service):
        name = "broken"

        def stopService(self):
            return fail(RuntimeError("boom"))

    Broken().setServiceParent(daemon)
    daemon.startService()
    stopped = daemon.stopService()
    survivor.stopping.callback(None)
    assert result_of(stopped) is None
    assert log == ["stopping survivor", "stopped survivor"]
    assert [event["log_format"] for event in no_logged_errors] == [
        "Stopping the {name} service failed"
    ]
    no_logged_errors.clear()


def test_logger_service_closes_the_logger_and_logs_a_failure(no_logged_errors):
    """LoggerService's stop waits for logger.close(); a failing close is logged, not raised."""

    class FailingLogger:
        def close(self):
            return fail(OSError("disk full"))

    assert result_of(LoggerService(FailingLogger()).stopService()) is None
    assert [event["log_format"] for event in no_logged_errors] == ["Closing the run logger failed"]
    no_logged_errors.clear()


def test_runner_service_stops_the_runner_and_logs_a_failure(no_logged_errors):
    """RunnerService's stop waits for runner.stop(); a failing stop is logged, not raised."""
    closing = Deferred()

    class Runner:
        def stop(self):
            return closing

    stopped = RunnerService(Runner(), logger=None).stopService()
    assert not stopped.called
    closing.errback(RuntimeError("stuck"))
    assert result_of(stopped) is None
    assert [event["log_format"] for event in no_logged_errors] == ["Stopping the runner failed"]
    no_logged_errors.clear()


def test_http_service_raises_when_the_port_is_unavailable():
    """A port that cannot be opened fails the start instead of leaving a daemon without one."""
    in_use = CannotListenError("127.0.0.1", 2503, OSError(98, "Address already in use"))
    reactor = RaisingMemoryReactor(listenException=in_use)
    server = HTTPServerService(TCP4ServerEndpoint(reactor, 2503, interface="127.0.0.1"), object())
    with pytest.raises(CannotListenError):
        server.privilegedStartService()


def test_runner_service_recovers_once_the_logger_is_ready():
    """RunnerService starts recovery only after the logger says it is ready."""
    ready = Deferred()
    recovered = []

    class Logger:
        def when_ready(self):
            return ready

    class Runner:
        def recover(self):
            recovered.append(True)
            return Deferred()

    service = RunnerService(Runner(), Logger())
    service.startService()
    assert recovered == []
    ready.callback(None)
    assert recovered == [True]


# -- listening and authentication ----------------------------------------------------------

TOKEN = "s3cret-Token-0123456789"
OTHER_TOKEN = "another.token_ABCDEFGHIJ"


def http_log_events(events):
    return [(event["log_level"].name, event["log_format"]) for event in events
            if event.get("log_namespace", "").endswith("HTTPServerService")]


def start_and_collect_log(daemon):
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        daemon.privilegedStartService()
        daemon.startService()
    finally:
        globalLogPublisher.removeObserver(events.append)
    return events


def test_tokens_put_the_api_behind_bearer_authentication(tmp_path):
    """With tokens from auth-tokens and auth-token-file the Site requires one of them, and
    the start is logged as authenticated."""
    token_file = tmp_path / "tokens"
    token_file.write_text(f"{OTHER_TOKEN}\n")
    config = noop_config(tmp_path, ip="0.0.0.0", **{
        "auth-tokens": [TOKEN], "auth-token-file": str(token_file)})
    reactor = DaemonReactor()
    daemon = build_service(config, reactor)
    site = daemon.getServiceNamed("http").factory
    assert isinstance(site.resource, BearerTokenResource)
    assert len(site.bearer_tokens) == 2
    assert site.bearer_tokens.accepts(OTHER_TOKEN.encode())
    events = start_and_collect_log(daemon)
    [(_, _, _, interface)] = reactor.tcpServers
    assert interface == "0.0.0.0"
    assert http_log_events(events) == [(
        "info", "Serving the API on {where}; every request but GET /ready needs a bearer "
                "token")]
    result_of(daemon.stopService())


def test_without_tokens_the_api_is_open_on_loopback(tmp_path):
    """Without tokens the Site serves the API directly, and the log says loopback only."""
    daemon = build_service(noop_config(tmp_path), DaemonReactor())
    site = daemon.getServiceNamed("http").factory
    assert site.bearer_tokens is None
    assert not isinstance(site.resource, BearerTokenResource)
    assert http_log_events(start_and_collect_log(daemon)) == [
        ("info", "Serving the API on {where} without authentication (local connections "
                 "only)")]
    result_of(daemon.stopService())


def test_an_allowed_exposed_address_without_tokens_is_warned_about(tmp_path):
    """allow-unauthenticated on 0.0.0.0 starts, with a warning in the log."""
    config = noop_config(tmp_path, ip="0.0.0.0", **{"allow-unauthenticated": True})
    daemon = build_service(config, DaemonReactor())
    events = start_and_collect_log(daemon)
    assert http_log_events(events) == [(
        "warn", "Serving the API on {exposure} WITHOUT authentication (allow-unauthenticated "
                "is true): anyone who can reach it can run commands as this user")]
    [warning] = [event for event in events if event.get("exposure")]
    assert warning["exposure"] == "0.0.0.0 (every IPv4 interface)"
    result_of(daemon.stopService())


def test_listen_string_chooses_the_endpoint(tmp_path):
    """A tcp: listen string is what the daemon listens on (ip and port are not used)."""
    reactor = DaemonReactor()
    daemon = build_service(noop_config(tmp_path, listen="tcp:8124:interface=127.0.0.3"),
                           reactor)
    assert isinstance(daemon.getServiceNamed("http").endpoint, TCP4ServerEndpoint)
    daemon.privilegedStartService()
    [(port, _, _, interface)] = reactor.tcpServers
    assert (port, interface) == (8124, "127.0.0.3")
    result_of(daemon.stopService())


def test_ssl_listen_string_listens_with_tls(tmp_path):
    """An ssl: listen string listens with TLS, using the key and certificate given."""
    key, cert = write_certificate(tmp_path)
    reactor = DaemonReactor()
    config = noop_config(tmp_path, listen=f"ssl:8443:interface=127.0.0.1:privateKey={key}:"
                                          f"certKey={cert}")
    daemon = build_service(config, reactor)
    assert isinstance(daemon.getServiceNamed("http").endpoint, SSL4ServerEndpoint)
    daemon.privilegedStartService()
    [(port, site, context_factory, _, interface)] = reactor.sslServers
    assert (port, interface) == (8443, "127.0.0.1")
    assert isinstance(site, DaggySite)
    assert context_factory.getContext() is not None
    result_of(daemon.stopService())


def test_a_certificate_gone_since_validation_is_a_config_error(tmp_path):
    """A key file removed between loading the config and building the service is still a
    one-line config error."""
    key, cert = write_certificate(tmp_path)
    config = noop_config(tmp_path, listen=f"ssl:8443:interface=127.0.0.1:privateKey={key}:"
                                          f"certKey={cert}")
    key.unlink()
    with pytest.raises(ConfigError) as raised:
        build_service(config, DaemonReactor())
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(f"{config.source}: listen: cannot use ssl:8443:")
    assert "FileNotFoundError" in message


def test_twistd_options_refuse_an_exposed_address_without_authentication(tmp_path):
    """`twistd daggyd --config` refuses 0.0.0.0 without tokens, as a one-line usage error."""
    path = write_config(tmp_path, {"ip": "0.0.0.0"})
    with pytest.raises(usage.UsageError) as raised:
        tap.Options().parseOptions(["--config", str(path)])
    assert str(raised.value) == (
        f"{path}: ip: refusing to listen on 0.0.0.0 (every IPv4 interface) without "
        "authentication; set auth-tokens or auth-token-file to require a bearer token, or "
        "set allow-unauthenticated: true to let anyone who can reach it run commands")


# -- the log format ------------------------------------------------------------------------


def twistd_options(*argv: str, stdout=None, monkeypatch=None):
    """`twistd ARGV` parsed (with only the daggyd subcommand, as the plugin offers it)."""
    from daggy.service.cli import DaggydServerOptions

    if stdout is not None:
        monkeypatch.setattr("sys.stdout", stdout)
    server_options = DaggydServerOptions()
    server_options.parseOptions(list(argv))
    return server_options


def test_log_format_option_and_config_key(tmp_path):
    """--log-format chooses the daemon's log format, over the config's log-format."""
    path = write_config(tmp_path, {"log-format": "json"})
    options = tap.Options()
    options.parseOptions(["--config", str(path)])
    assert options.log_format == "json"
    options = tap.Options()
    options.parseOptions(["--config", str(path), "--log-format", "text"])
    assert options.log_format == "text"
    options = tap.Options()
    options.parseOptions([])
    assert options.log_format == "text"
    with pytest.raises(usage.UsageError) as raised:
        tap.Options().parseOptions(["--log-format", "yaml"])
    assert str(raised.value) == "--log-format: must be one of text, json (got 'yaml')"


def test_twistd_in_the_foreground_logs_json_lines_to_stdout(monkeypatch):
    """`twistd -n daggyd --log-format json` logs JSON lines where twistd would log text
    (stdout), through the application's log observer, which makeService provides."""
    import io

    from twisted.application.service import Application
    from twisted.logger import ILogObserver, Logger

    stdout = io.StringIO()
    server_options = twistd_options("-n", "daggyd", "--log-format", "json",
                                    stdout=stdout, monkeypatch=monkeypatch)
    assert server_options["logger"] is None  # twistd then asks the application
    options = server_options.subOptions
    daemon = tap.makeService(options)
    try:
        application = Application("daggyd")
        daemon.setServiceParent(application)
        observer = application.getComponent(ILogObserver)
        assert observer is daemon.log_observer is not None
        Logger(namespace="probe", observer=observer).info("run {run_id} of {task}",
                                                          run_id=5, task="t")
        [line] = [json.loads(text) for text in stdout.getvalue().splitlines()]
        assert (line["message"], line["run_id"], line["task"]) == ("run 5 of t", 5, "t")
    finally:
        result_of(daemon.getServiceNamed("logger").logger.close())


def test_twistd_daemon_logs_json_to_its_log_file(tmp_path, monkeypatch):
    """A daemonizing twistd writes the JSON lines to --logfile, or to ./twistd.log."""
    from twisted.logger import Logger

    monkeypatch.chdir(tmp_path)
    for argv, name in ((["--logfile", str(tmp_path / "d.log")], "d.log"), ([], "twistd.log")):
        options = twistd_options(*argv, "daggyd", "--log-format", "json").subOptions
        Logger(namespace="probe", observer=options.make_log_observer()).warn("{n} lines", n=2)
        [line] = [json.loads(text) for text in (tmp_path / name).read_text().splitlines()]
        assert (line["level"], line["message"]) == ("warn", "2 lines")


def test_an_explicit_logger_or_syslog_keeps_its_own_format():
    """A --logger of the operator's choosing or --syslog is left alone by --log-format."""
    server_options = twistd_options("-n", "--logger", "twisted.logger.textFileLogObserver",
                                    "daggyd", "--log-format", "json")
    assert server_options.subOptions.make_log_observer is None
    assert server_options["logger"].__name__ == "textFileLogObserver"
    server_options = twistd_options("--syslog", "daggyd", "--log-format", "json")
    assert server_options.subOptions.make_log_observer is None
    assert server_options["logger"] is None


def test_text_log_format_leaves_twistd_to_choose():
    """With the default text format daggyd adds no log observer of its own."""
    server_options = twistd_options("-n", "daggyd")
    assert server_options.subOptions.make_log_observer is None
    assert server_options["logger"] is None


def test_the_service_tree_serves_metrics(tmp_path):
    """build_service wires the daemon's metrics: the Site serves /metrics and the runner
    and the logger are read at each scrape."""
    reactor = DaemonReactor()
    daemon = build_service(noop_config(tmp_path), reactor)
    site = daemon.getServiceNamed("http").factory
    runner = daemon.getServiceNamed("runner").runner
    text = site.metrics.exposition().decode()
    assert 'daggy_runs{state="COMPLETED"} 0.0' in text
    assert 'daggy_logger_ready{logger="OStreamLogger"} 1.0' in text
    assert "daggy_executor_slots{" not in text  # the no-op executor has no capacity
    submitted = runner.submit(one_task_run("a"))
    reactor.advance(0)
    result_of(submitted)
    reactor.advance(0)
    text = site.metrics.exposition().decode()
    assert 'daggy_runs{state="COMPLETED"} 1.0' in text
    assert 'daggy_tasks{state="COMPLETED"} 1.0' in text
    result_of(daemon.getServiceNamed("logger").logger.close())
