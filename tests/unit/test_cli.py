"""The `daggyd` console script's options, as data: what twistd command line they become."""

from __future__ import annotations

import io
import os
import subprocess
import json

import pytest
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.python import usage

from daggy.service import cli
from daggy.service.config import default_config, load_config


def parsed(*argv: str) -> cli.DaggydOptions:
    options = cli.DaggydOptions()
    options.parseOptions(list(argv))
    return options


STDERR_LOGGER = "daggy.service.cli.stderr_log_observer"


def test_foreground_is_the_default():
    """Plain `daggyd` runs twistd in the foreground, logging to stderr, with no pid file."""
    assert parsed().twistd_arguments() == [
        "--nodaemon", "--pidfile", "", "--logger", STDERR_LOGGER, "daggyd",
    ]


def test_config_is_passed_to_the_daggyd_subcommand():
    """--config/-c FILE becomes the daggyd subcommand's --config."""
    for flag in ("--config", "-c"):
        assert parsed(flag, "x.yaml").twistd_arguments()[-3:] == ["daggyd", "--config", "x.yaml"]


def test_daemon_mode_uses_the_default_pid_and_log_files():
    """-d daemonizes with ./daggyd.pid and ./daggyd.log."""
    assert parsed("-d").twistd_arguments() == [
        "--pidfile", "daggyd.pid", "--logfile", "daggyd.log", "daggyd",
    ]


def test_daemon_mode_with_chosen_files():
    """--pidfile and --logfile replace the daemon-mode defaults."""
    assert parsed("--daemon", "--pidfile", "/run/d.pid", "--logfile", "/var/log/d.log",
                  "-c", "c.json").twistd_arguments() == [
        "--pidfile", "/run/d.pid", "--logfile", "/var/log/d.log",
        "daggyd", "--config", "c.json",
    ]


def test_foreground_with_a_log_file_and_pid_file():
    """In the foreground, an explicit --logfile replaces stderr and --pidfile is honoured."""
    assert parsed("--logfile", "d.log", "--pidfile", "d.pid").twistd_arguments() == [
        "--nodaemon", "--pidfile", "d.pid", "--logfile", "d.log", "daggyd",
    ]


@pytest.mark.parametrize("argv", [["--bogus"], ["extra-argument"], ["--config"]])
def test_bad_command_lines_are_usage_errors(argv):
    """Unknown options, stray arguments and a missing value are usage errors."""
    with pytest.raises(usage.UsageError):
        parsed(*argv)


def test_server_options_offer_only_daggyd_without_a_plugin_scan():
    """The twistd options daggyd runs with know the daggyd subcommand directly."""
    server_options = cli.DaggydServerOptions()
    server_options.parseOptions(parsed().twistd_arguments())
    assert server_options.subCommand == "daggyd"
    assert server_options["nodaemon"]
    assert server_options["pidfile"] == ""
    assert server_options["logger"] is cli.stderr_log_observer
    assert list(server_options.loadedPlugins) == ["daggyd"]
    assert server_options.subOptions.daemon_config == default_config()


def test_server_options_load_the_config(tmp_path):
    """The daggyd subcommand loads and validates the --config file."""
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"port": 9999}))
    server_options = cli.DaggydServerOptions()
    server_options.parseOptions(parsed("-c", str(path)).twistd_arguments())
    assert server_options.subOptions.daemon_config == load_config(path)


def test_main_reports_a_bad_config_in_one_line_with_status_2(tmp_path, capsys):
    """A config error is one `daggyd: ...` line on stderr and exit status 2."""
    path = tmp_path / "c.yaml"
    path.write_text("dag-threads: many\n")
    assert cli.main(["--config", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == f'daggyd: {path}: dag-threads: must be an integer >= 1 (got "many")\n'


def test_main_reports_a_bad_option_with_status_2(capsys):
    """An unknown option is one `daggyd: ...` line on stderr and exit status 2."""
    assert cli.main(["--frobnicate"]) == 2
    assert capsys.readouterr().err == "daggyd: option --frobnicate not recognized\n"


def test_stderr_log_observer_writes_info_and_above(monkeypatch):
    """The foreground log observer writes info-level events to stderr and drops debug ones."""
    stderr = io.StringIO()
    monkeypatch.setattr("sys.stderr", stderr)
    observer = cli.stderr_log_observer()
    log = Logger(namespace="probe", observer=observer)
    log.debug("hidden {x}", x=1)
    log.info("shown {x}", x=2)
    assert [line.split(" ", 1)[1] for line in stderr.getvalue().splitlines()] == [
        "[probe#info] shown 2"
    ]


def test_umask_is_passed_to_twistd():
    """--umask reaches twistd, which applies it (tasks inherit it)."""
    arguments = parsed("-d", "--umask", "022").twistd_arguments()
    assert arguments[arguments.index("--umask") + 1] == "022"
    server_options = cli.DaggydServerOptions()
    server_options.parseOptions(arguments)
    assert server_options["umask"] == 0o022


def test_main_refuses_to_start_when_the_pid_file_names_a_live_process(tmp_path, capsys):
    """A pid file naming a running process makes daggyd say so in one line and exit 1."""
    pidfile = tmp_path / "daggyd.pid"
    pidfile.write_text(str(os.getpid()))
    assert cli.main(["--pidfile", str(pidfile)]) == 1
    assert capsys.readouterr().err == (
        f"daggyd: already running as pid {os.getpid()} (pid file {pidfile})\n"
    )


def test_a_stale_pid_file_is_not_a_running_daggyd(tmp_path):
    """A pid file naming a process that has exited does not block a start."""
    finished = subprocess.Popen(["true"])
    finished.wait()
    pidfile = tmp_path / "daggyd.pid"
    pidfile.write_text(str(finished.pid))
    assert cli._running_pid(str(pidfile)) is None
    pidfile.write_text("garbage")
    assert cli._running_pid(str(pidfile)) is None
    assert cli._running_pid(str(tmp_path / "absent.pid")) is None


def test_main_refuses_an_exposed_address_without_authentication(tmp_path, capsys):
    """ip 0.0.0.0 without tokens stops daggyd before it listens: one line naming the
    address and the fix, exit status 2."""
    path = tmp_path / "c.yaml"
    path.write_text("ip: 0.0.0.0\n")
    assert cli.main(["--config", str(path)]) == 2
    assert capsys.readouterr().err == (
        f"daggyd: {path}: ip: refusing to listen on 0.0.0.0 (every IPv4 interface) without "
        "authentication; set auth-tokens or auth-token-file to require a bearer token, or set "
        "allow-unauthenticated: true to let anyone who can reach it run commands\n")


@pytest.mark.parametrize("interface, port, shown", [
    ("127.0.0.1", 2503, "127.0.0.1:2503"),
    ("", 2503, "0.0.0.0:2503"),
    ("::1", 2503, "[::1]:2503"),
    (None, "/run/daggyd.sock", "/run/daggyd.sock"),
])
def test_cannot_listen_names_the_address(interface, port, shown):
    """The port-in-use message names a TCP address (bracketing IPv6) or a socket path."""
    error = CannotListenError(interface, port, OSError(98, "Address already in use"))
    assert cli._listen_address(error) == shown


# -- --log-format --------------------------------------------------------------------------


def server_options_for(*argv: str) -> cli.DaggydServerOptions:
    """The twistd options `daggyd ARGV` runs with."""
    server_options = cli.DaggydServerOptions()
    server_options.parseOptions(parsed(*argv).twistd_arguments())
    return server_options


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


def test_log_format_is_passed_to_the_daggyd_subcommand():
    """--log-format reaches the daggyd subcommand, which decides the observer (the config
    file may choose the format too); without it nothing is passed."""
    assert parsed("--log-format", "json").twistd_arguments()[-3:] == [
        "daggyd", "--log-format", "json"]
    assert "--log-format" not in parsed().twistd_arguments()


@pytest.mark.parametrize("value", ["JSON", "xml", ""])
def test_an_unknown_log_format_is_a_usage_error(value, capsys):
    """Only text and json are log formats; anything else is a one-line usage error."""
    with pytest.raises(usage.UsageError) as raised:
        parsed("--log-format", value)
    assert str(raised.value) == f"--log-format: must be one of text, json (got {value!r})"
    assert cli.main(["--log-format", value]) == 2
    assert capsys.readouterr().err == f"daggyd: {raised.value}\n"


def test_json_log_format_in_the_foreground_logs_json_to_stderr(tmp_path):
    """In the foreground, --log-format json (or log-format: json in the config) makes the
    stderr observer the JSON one; --log-format text overrides the config."""
    assert server_options_for("--log-format", "json")["logger"] is cli.stderr_json_log_observer
    path = tmp_path / "c.yaml"
    path.write_text("log-format: json\n")
    assert server_options_for("-c", str(path))["logger"] is cli.stderr_json_log_observer
    assert server_options_for("-c", str(path), "--log-format", "text")["logger"] is (
        cli.stderr_log_observer)
    assert server_options_for()["logger"] is cli.stderr_log_observer


def test_stderr_json_log_observer_writes_json_lines_with_run_and_task_fields(monkeypatch):
    """The JSON observer writes one object per line, info level and above, with the event's
    fields (run_id, task) and the rendered message."""
    stderr = io.StringIO()
    monkeypatch.setattr("sys.stderr", stderr)
    log = Logger(namespace="probe", observer=cli.stderr_json_log_observer())
    log.debug("hidden {run_id}", run_id=1)
    log.warn("run {run_id} task {task} failed", run_id=3, task="pull/2021")
    [line] = json_lines(stderr.getvalue())
    assert line.pop("time").endswith("Z")
    assert line == {"level": "warn", "namespace": "probe",
                    "message": "run 3 task pull/2021 failed", "run_id": 3,
                    "task": "pull/2021"}


def test_a_logged_failure_carries_its_traceback(monkeypatch):
    """log.failure events have the traceback text in a failure field; values JSON cannot
    hold are shown as text."""
    stderr = io.StringIO()
    monkeypatch.setattr("sys.stderr", stderr)
    log = Logger(namespace="probe", observer=cli.stderr_json_log_observer())
    try:
        1 / 0
    except ZeroDivisionError:
        log.failure("internal error in run {run_id}", run_id=9, thing=object(),
                    keyed={(1, 2): "tuple key"})
    [line] = json_lines(stderr.getvalue())
    assert (line["level"], line["message"], line["run_id"]) == (
        "critical", "internal error in run 9", 9)
    assert "ZeroDivisionError" in line["failure"] and "Traceback" in line["failure"]
    assert line["thing"].startswith("<object object")
    assert line["keyed"] == "{(1, 2): 'tuple key'}"


def test_json_log_format_with_a_log_file_writes_json_there(tmp_path):
    """With --logfile, --log-format json writes JSON lines to that file (twistd would have
    written text there)."""
    path = tmp_path / "d.log"
    server_options = server_options_for("--logfile", str(path), "--log-format", "json")
    assert server_options["logger"] is None
    observer = server_options.subOptions.make_log_observer()
    Logger(namespace="probe", observer=observer).info("run {run_id} started", run_id=4)
    [line] = json_lines(path.read_text())
    assert (line["message"], line["run_id"]) == ("run 4 started", 4)


def test_events_of_the_legacy_log_api_are_written_without_their_legacy_keys(monkeypatch):
    """An event from twisted.python.log (as twisted itself still logs some) becomes a line
    with its text as message and none of the legacy keys; a field of a new-style event that
    shares a legacy key's name (why) is kept."""
    from twisted.logger import LogPublisher
    from twisted.python.log import LogPublisher as LegacyPublisher

    stderr = io.StringIO()
    monkeypatch.setattr("sys.stderr", stderr)
    publisher = LogPublisher(cli.stderr_json_log_observer())
    legacy = LegacyPublisher(publisher, publisher)
    legacy.msg("Site starting on 2503")
    Logger(namespace="probe", observer=publisher).warn("could not start: {why}", why="gone")
    legacy_line, new_line = json_lines(stderr.getvalue())
    assert (legacy_line["message"], legacy_line["system"]) == ("Site starting on 2503", "-")
    assert set(legacy_line) == {"time", "level", "namespace", "message", "system"}
    assert legacy_line["time"].endswith("Z")
    assert new_line["why"] == "gone"
