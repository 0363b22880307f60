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
