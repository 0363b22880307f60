"""The daemon config file: formats, defaults, and a one-line error for every mistake."""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from daggy.service.config import (
    DEFAULTS_SOURCE,
    ComponentChoice,
    ConfigError,
    DaemonConfig,
    default_config,
    load_config,
    validate_config,
)
from daggy.limits import RunLimits
from daggy.service.listen import parse_listen

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
MiB = 1024 * 1024
TOKEN = "s3cret-Token-0123456789"
OTHER_TOKEN = "another.token_ABCDEFGHIJ"

DEFAULTS = DaemonConfig(
    source=DEFAULTS_SOURCE,
    ip="127.0.0.1",
    port=2503,
    web_threads=10,
    dag_threads=50,
    max_request_bytes=64 * MiB,
    logger=ComponentChoice("OStreamLogger", {"file": "-"}),
    executor=ComponentChoice(
        "ForkingTaskExecutor", {"threads": 10, "maxOutputBytes": 16 * MiB, "killGraceSeconds": 5,
                                "isolation": "auto", "secretsFile": None}
    ),
)


def write_certificate(directory: Path, name: str = "daggyd") -> tuple[Path, Path]:
    """A fresh self-signed EC certificate for localhost/127.0.0.1: (key file, cert file)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
        .sign(key, hashes.SHA256())
    )
    key_path, cert_path = directory / f"{name}.key", directory / f"{name}.crt"
    key_path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


def config_error(directory: Path, document, name: str = "daggyd.json") -> ConfigError:
    path = write(directory, name, json.dumps(document))
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    return raised.value


def daemon_config_files() -> list[Path]:
    """Every example daemon config in configs/ (a DAG spec there has a "tasks" key)."""
    found = []
    for path in sorted(CONFIGS.iterdir()):
        if path.suffix in (".json", ".yaml", ".yml"):
            document = yaml.safe_load(path.read_text(encoding="utf-8"))
            if not (isinstance(document, dict) and "tasks" in document):
                found.append(path)
    return found


# -- defaults and formats ----------------------------------------------------------------


def test_limits_are_read_into_run_limits_and_site_settings():
    """Every limit key reaches the RunLimits and the HTTP settings the daemon is built from."""
    config = validate_config({
        "max-tasks-per-run": 10, "max-job-depth": 4, "max-queued-runs": 3,
        "max-generated-tasks": 5, "max-generator-output-bytes": 1000,
        "max-connections": 7, "request-timeout-seconds": 2.5, "idle-timeout-seconds": 9},
        "limits.json")
    assert config.run_limits == RunLimits(
        max_tasks_per_run=10, max_job_depth=4, max_queued_runs=3, max_generated_tasks=5,
        max_generator_output_bytes=1000)
    assert (config.max_connections, config.request_timeout_seconds,
            config.idle_timeout_seconds) == (7, 2.5, 9)


@pytest.mark.parametrize("key, value, problem", [
    ("max-tasks-per-run", 0, "must be an integer >= 1 (got 0)"),
    ("max-job-depth", 1, "must be an integer from 2 to 256 (got 1)"),
    ("max-queued-runs", "many", 'must be an integer >= 1 (got "many")'),
    ("request-timeout-seconds", 0, "must be a number > 0 and <= 3600 (got 0)"),
    ("max-connections", True, "must be an integer >= 1 (got true)"),
])
def test_bad_limits_are_one_line_errors(key, value, problem):
    """A bad limit is reported with its key."""
    with pytest.raises(ConfigError) as caught:
        validate_config({key: value}, "limits.json")
    assert caught.value.problems == [f"{key}: {problem}"]


@pytest.mark.parametrize("value", ["text", "json"])
def test_log_format_is_read(value):
    """log-format chooses daggyd's own log format; text is the default."""
    assert validate_config({"log-format": value}, "log.json").log_format == value
    assert default_config().log_format == "text"


@pytest.mark.parametrize("value, shown", [("JSON", '"JSON"'), ("yaml", '"yaml"'), (1, "1"),
                                          (None, "null")])
def test_an_unknown_log_format_is_a_one_line_error(value, shown):
    """A log-format other than text or json is reported with its key."""
    with pytest.raises(ConfigError) as caught:
        validate_config({"log-format": value}, "log.json")
    assert caught.value.problems == [f"log-format: must be one of text, json (got {shown})"]


def test_event_window_settings_are_read():
    """The event stream's replay window and stalled-reader cut-off come from the config,
    with the documented defaults."""
    config = validate_config({"event-window-events": 500, "event-window-bytes": 4096,
                              "event-reader-stall-seconds": 2.5}, "events.json")
    assert (config.event_window_events, config.event_window_bytes,
            config.event_reader_stall_seconds) == (500, 4096, 2.5)
    defaults = default_config()
    assert (defaults.event_window_events, defaults.event_window_bytes,
            defaults.event_reader_stall_seconds) == (100_000, 64 << 20, 30.0)


@pytest.mark.parametrize("key, value, problem", [
    ("event-window-events", 0, "must be an integer from 1 to 100000000 (got 0)"),
    ("event-window-events", 1.5, "must be an integer from 1 to 100000000 (got 1.5)"),
    ("event-window-bytes", True, "must be an integer from 1 to 1099511627776 (got true)"),
    ("event-reader-stall-seconds", 0, "must be a number > 0 and <= 86400 (got 0)"),
    ("event-reader-stall-seconds", "30", 'must be a number > 0 and <= 86400 (got "30")'),
])
def test_bad_event_window_settings_are_one_line_errors(key, value, problem):
    with pytest.raises(ConfigError) as caught:
        validate_config({key: value}, "events.json")
    assert caught.value.problems == [f"{key}: {problem}"]


def test_defaults():
    """Without a file the daemon listens on 127.0.0.1:2503 with the forking executor and the
    stdout logger, with every documented default."""
    assert default_config() == DEFAULTS


def test_an_empty_object_means_all_defaults(tmp_path):
    """A config file holding `{}` yields the defaults, with the file as its source."""
    path = write(tmp_path, "empty.json", "{}")
    assert load_config(path) == DaemonConfig(**{**DEFAULTS.__dict__, "source": str(path)})


def test_an_empty_yaml_file_means_all_defaults(tmp_path):
    """An empty (or all-comments) YAML file yields the defaults."""
    path = write(tmp_path, "empty.yaml", "# nothing set\n")
    assert load_config(path).port == 2503


def test_json_file(tmp_path):
    """A .json file is read as JSON, and its values replace the defaults."""
    path = write(
        tmp_path,
        "d.json",
        json.dumps(
            {
                "ip": "0.0.0.0",
                "port": 8080,
                "web-threads": 2,
                "dag-threads": 3,
                "max-request-bytes": 1024,
                "auth-tokens": [TOKEN],
                "logger": {"name": "OStreamLogger", "config": {"file": "/tmp/events"}},
                "executor": {"name": "ForkingTaskExecutor", "config": {"threads": 4}},
            }
        ),
    )
    assert load_config(path) == DaemonConfig(
        source=str(path),
        ip="0.0.0.0",
        port=8080,
        web_threads=2,
        dag_threads=3,
        max_request_bytes=1024,
        logger=ComponentChoice("OStreamLogger", {"file": "/tmp/events"}),
        executor=ComponentChoice(
            "ForkingTaskExecutor", {"threads": 4, "maxOutputBytes": 16 * MiB, "killGraceSeconds": 5,
                                   "isolation": "auto", "secretsFile": None}
        ),
        auth_tokens=(TOKEN,),
    )


@pytest.mark.parametrize("suffix", [".yaml", ".yml", ".YAML"])
def test_yaml_file(tmp_path, suffix):
    """A .yaml/.yml file is read as YAML."""
    path = write(
        tmp_path,
        "d" + suffix,
        "port: 8080\nexecutor:\n  name: NoopTaskExecutor\nlogger: {name: OStreamLogger}\n",
    )
    config = load_config(path)
    assert (config.port, config.executor, config.logger) == (
        8080,
        ComponentChoice("NoopTaskExecutor", {}),
        ComponentChoice("OStreamLogger", {"file": "-"}),
    )


@pytest.mark.parametrize("text", ['{"port": 8080}', "port: 8080\n"])
def test_other_extensions_are_tried_as_json_then_yaml(tmp_path, text):
    """A file with another extension is read as JSON, or failing that as YAML."""
    assert load_config(write(tmp_path, "daggyd.conf", text)).port == 8080


def test_ip_accepts_ipv6_and_localhost():
    """IPv6 literals and "localhost" are valid listen addresses."""
    assert validate_config({"ip": "::1"}).ip == "::1"
    assert validate_config({"ip": "localhost"}).ip == "localhost"


def test_kill_grace_seconds_accepts_fractions():
    """killGraceSeconds is any positive number, not only an integer."""
    config = validate_config(
        {"executor": {"name": "ForkingTaskExecutor", "config": {"killGraceSeconds": 0.5}}}
    )
    assert config.executor.config["killGraceSeconds"] == 0.5


#: Examples naming files that validation reads (checked by their own test).
NEEDS_FILES = {"auth-tls.yaml"}


def test_example_configs_validate():
    """Every daemon config example in configs/ is valid."""
    paths = daemon_config_files()
    assert {path.name for path in paths} >= {
        "daggyd.json",
        "daggyd.yaml",
        "noop.yaml",
        "ostream-file.yaml",
        *NEEDS_FILES,
    }
    for path in paths:
        if path.name not in NEEDS_FILES:
            assert load_config(path).source == str(path)


def test_example_auth_tls_config(tmp_path):
    """configs/auth-tls.yaml is valid once its key, certificate and token files exist: it
    serves TLS on every interface and requires the tokens in the file."""
    key, cert = write_certificate(tmp_path)
    tokens = write(tmp_path, "tokens", f"# daggyd clients\n{TOKEN}\n")
    text = (CONFIGS / "auth-tls.yaml").read_text(encoding="utf-8")
    for example, real in [("/etc/daggyd/tls/key.pem", key), ("/etc/daggyd/tls/cert.pem", cert),
                          ("/etc/daggyd/tokens", tokens),
                          ("/var/log/daggyd/events.jsonl", tmp_path / "events.jsonl")]:
        assert example in text
        text = text.replace(example, str(real))
    config = load_config(write(tmp_path, "auth-tls.yaml", text))
    assert config.listen.startswith("ssl:2503:interface=0.0.0.0:")
    assert config.auth_tokens == (TOKEN,)
    assert config.exposure() == "0.0.0.0 (every IPv4 interface)"


def test_example_default_configs_spell_out_the_defaults():
    """configs/daggyd.json and configs/daggyd.yaml hold exactly the built-in defaults."""
    for name in ("daggyd.json", "daggyd.yaml"):
        path = CONFIGS / name
        assert load_config(path) == DaemonConfig(**{**DEFAULTS.__dict__, "source": str(path)})


def test_example_noop_and_file_configs():
    """configs/noop.yaml selects the no-op executor; configs/ostream-file.yaml logs to a file."""
    assert load_config(CONFIGS / "noop.yaml").executor == ComponentChoice("NoopTaskExecutor", {})
    assert load_config(CONFIGS / "ostream-file.yaml").logger.config["file"] != "-"


# -- reading and parsing errors -----------------------------------------------------------


def assert_one_line(error: ConfigError, expected: str) -> None:
    message = str(error)
    assert "\n" not in message
    assert message == expected


def test_missing_file(tmp_path):
    """A missing file is a one-line error naming it."""
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    assert_one_line(raised.value, f"{path}: cannot read the file: No such file or directory")


def test_directory_instead_of_file(tmp_path):
    """A directory given as the config file is a one-line error."""
    with pytest.raises(ConfigError) as raised:
        load_config(tmp_path)
    assert_one_line(raised.value, f"{tmp_path}: cannot read the file: Is a directory")


def test_not_utf8(tmp_path):
    """Bytes that are not UTF-8 are a one-line error."""
    path = tmp_path / "bad.yaml"
    path.write_bytes(b"port: 25\xff3\n")
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    assert_one_line(raised.value, f"{path}: not UTF-8 text (bad byte at offset 8)")


def test_invalid_json(tmp_path):
    """A JSON syntax error is reported with its line and column on one line."""
    path = write(tmp_path, "bad.json", '{\n  "port": 2503\n  "ip": "::1"\n}')
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    assert_one_line(
        raised.value, f"{path}: invalid JSON at line 3 column 3: Expecting ',' delimiter"
    )


def test_invalid_yaml(tmp_path):
    """A YAML syntax error is reported with its line and column on one line."""
    path = write(tmp_path, "bad.yaml", "port: 2503\n  ip: x\n")
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    assert_one_line(
        raised.value,
        f"{path}: invalid YAML at line 2 column 5: mapping values are not allowed here",
    )


def test_unparsable_file_with_another_extension(tmp_path):
    """A file that is neither JSON nor YAML reports both failures on one line."""
    path = write(tmp_path, "daggyd.conf", "port: [2503\n")
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: invalid JSON at line 1 column 1: ")
    assert "; invalid YAML at line 2 column 1: " in message


def test_duplicate_json_key(tmp_path):
    """A key given twice in JSON is an error, not a silent override."""
    path = write(tmp_path, "dup.json", '{"port": 1, "port": 2}')
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    assert_one_line(raised.value, f'{path}: invalid JSON: duplicate key "port"')


def test_duplicate_yaml_key(tmp_path):
    """A key given twice in a YAML mapping (at any depth) is an error."""
    path = write(tmp_path, "dup.yaml", "executor:\n  name: A\n  name: B\n")
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    assert_one_line(raised.value, f'{path}: invalid YAML at line 3 column 3: duplicate key "name"')


def test_yaml_aliases_still_work(tmp_path):
    """Anchors and aliases resolve as usual in YAML configs."""
    path = write(
        tmp_path,
        "alias.yaml",
        "x-executor: &noop {name: NoopTaskExecutor}\nexecutor: *noop\n",
    )
    with pytest.raises(ConfigError) as raised:  # x-executor itself is not a daemon key
        load_config(path)
    assert str(raised.value).startswith(f"{path}: x-executor: unknown key")


@pytest.mark.parametrize(
    "text, got",
    [("[1, 2]", "an array"), ('"port"', "a string"), ("7", "a number"), ("true", "a boolean")],
)
def test_top_level_must_be_an_object(tmp_path, text, got):
    """A config document that is not an object is a one-line error."""
    path = write(tmp_path, "x.json", text)
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    assert_one_line(raised.value, f"{path}: must be an object of settings (got {got})")


# -- validation errors -------------------------------------------------------------------

FORKING = "ForkingTaskExecutor"
TOP_KEYS = ("allow-unauthenticated, auth-token-file, auth-tokens, dag-threads, "
            "event-reader-stall-seconds, event-window-bytes, event-window-events, executor, "
            "idle-timeout-seconds, ip, listen, log-format, logger, max-connections, "
            "max-generated-tasks, "
            "max-generator-output-bytes, max-job-depth, max-queued-runs, max-request-bytes, "
            "max-tasks-per-run, port, request-timeout-seconds, web-threads, web-ui")
FORKING_KEYS = "isolation, killGraceSeconds, maxOutputBytes, secretsFile, threads"
ADDRESS = 'must be an IPv4 or IPv6 address or "localhost"'
PORT = "must be an integer from 1 to 65535"
COMPONENT = 'must be an object with "name" and optional "config"'


def ostream(**config):
    return {"logger": {"name": "OStreamLogger", "config": config}}


def forking(**config):
    return {"executor": {"name": FORKING, "config": config}}


@pytest.mark.parametrize(
    "document, problem",
    [
        ({"colour": "red"}, f"colour: unknown key (expected one of: {TOP_KEYS})"),
        ({"ip": 127}, f"ip: {ADDRESS} (got 127)"),
        ({"ip": "example.com"}, f'ip: {ADDRESS} (got "example.com")'),
        ({"ip": ""}, f'ip: {ADDRESS} (got "")'),
        ({"port": 0}, f"port: {PORT} (got 0)"),
        ({"port": 65536}, f"port: {PORT} (got 65536)"),
        ({"port": "2503"}, f'port: {PORT} (got "2503")'),
        ({"port": 2503.0}, f"port: {PORT} (got 2503.0)"),
        ({"port": True}, f"port: {PORT} (got true)"),
        ({"port": None}, f"port: {PORT} (got null)"),
        ({"web-threads": 0}, "web-threads: must be an integer >= 1 (got 0)"),
        ({"web-threads": True}, "web-threads: must be an integer >= 1 (got true)"),
        ({"dag-threads": -1}, "dag-threads: must be an integer >= 1 (got -1)"),
        ({"dag-threads": "50"}, 'dag-threads: must be an integer >= 1 (got "50")'),
        ({"max-request-bytes": 0}, "max-request-bytes: must be an integer >= 1 (got 0)"),
        ({"max-request-bytes": 1.5}, "max-request-bytes: must be an integer >= 1 (got 1.5)"),
        # the logger section
        ({"logger": "OStreamLogger"}, f'logger: {COMPONENT} (got "OStreamLogger")'),
        ({"logger": {}}, "logger.name: required (one of: OStreamLogger, RedisLogger)"),
        ({"logger": {"config": {}}}, "logger.name: required (one of: OStreamLogger, RedisLogger)"),
        (
            {"logger": {"name": "FileLogger"}},
            'logger.name: unknown logger "FileLogger" (expected one of: OStreamLogger, RedisLogger)',
        ),
        (
            {"logger": {"name": 3}},
            "logger.name: unknown logger 3 (expected one of: OStreamLogger, RedisLogger)",
        ),
        (
            {"logger": {"name": "OStreamLogger", "cfg": {}}},
            "logger.cfg: unknown key (expected one of: config, name)",
        ),
        (
            {"logger": {"name": "OStreamLogger", "config": []}},
            "logger.config: must be an object (got [])",
        ),
        (
            {"logger": {"name": "OStreamLogger", "config": None}},
            "logger.config: must be an object (got null)",
        ),
        (
            ostream(path="x"),
            "logger.config.path: unknown key for OStreamLogger (expected one of: file)",
        ),
        (ostream(file=""), 'logger.config.file: must be a non-empty string (got "")'),
        (ostream(file=1), "logger.config.file: must be a non-empty string (got 1)"),
        # the executor section
        ({"executor": []}, f"executor: {COMPONENT} (got [])"),
        (
            {"executor": {"name": "SlurmExecutor"}},
            'executor.name: unknown executor "SlurmExecutor" '
            "(expected one of: ForkingTaskExecutor, NoopTaskExecutor, SlurmTaskExecutor)",
        ),
        (
            forking(thread=4),
            f"executor.config.thread: unknown key for {FORKING} (expected one of: {FORKING_KEYS})",
        ),
        (forking(threads="ten"), 'executor.config.threads: must be an integer >= 1 (got "ten")'),
        (forking(threads=0), "executor.config.threads: must be an integer >= 1 (got 0)"),
        (forking(threads=False), "executor.config.threads: must be an integer >= 1 (got false)"),
        (
            forking(maxOutputBytes=0),
            "executor.config.maxOutputBytes: must be an integer >= 1 (got 0)",
        ),
        (
            forking(killGraceSeconds=0),
            "executor.config.killGraceSeconds: must be a number > 0 (got 0)",
        ),
        (
            forking(killGraceSeconds=-2.5),
            "executor.config.killGraceSeconds: must be a number > 0 (got -2.5)",
        ),
        (
            forking(killGraceSeconds="5"),
            'executor.config.killGraceSeconds: must be a number > 0 (got "5")',
        ),
        (
            forking(killGraceSeconds=True),
            "executor.config.killGraceSeconds: must be a number > 0 (got true)",
        ),
        (
            forking(killGraceSeconds=float("inf")),
            "executor.config.killGraceSeconds: must be a number > 0 (got Infinity)",
        ),
        (
            {"executor": {"name": "NoopTaskExecutor", "config": {"threads": 1}}},
            "executor.config.threads: unknown key for NoopTaskExecutor "
            "(NoopTaskExecutor takes no config keys)",
        ),
    ],
)
def test_invalid_value(tmp_path, document, problem):
    """Each invalid key or value is a one-line error naming the file and the key path."""
    error = config_error(tmp_path, document)
    assert_one_line(error, f"{tmp_path / 'daggyd.json'}: {problem}")
    assert error.problems == [problem]


def test_the_documented_example_message(tmp_path, monkeypatch):
    """A YAML config with a non-integer thread count gives exactly the documented message."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").mkdir()
    write(
        tmp_path,
        "configs/x.yaml",
        "executor:\n  name: ForkingTaskExecutor\n  config:\n    threads: ten\n",
    )
    with pytest.raises(ConfigError) as raised:
        load_config("configs/x.yaml")
    assert str(raised.value) == (
        'configs/x.yaml: executor.config.threads: must be an integer >= 1 (got "ten")'
    )


def test_every_problem_is_reported_on_one_line(tmp_path):
    """Several mistakes are all reported, in order, joined on a single line."""
    error = config_error(
        tmp_path,
        {
            "port": 0,
            "extra": 1,
            "logger": {"name": "Nope"},
            "executor": {"name": FORKING, "config": {"threads": 0, "killGraceSeconds": 0}},
        },
    )
    assert error.problems == [
        "port: must be an integer from 1 to 65535 (got 0)",
        f"extra: unknown key (expected one of: {TOP_KEYS})",
        'logger.name: unknown logger "Nope" (expected one of: OStreamLogger, RedisLogger)',
        "executor.config.threads: must be an integer >= 1 (got 0)",
        "executor.config.killGraceSeconds: must be a number > 0 (got 0)",
    ]
    assert str(error) == f"{tmp_path / 'daggyd.json'}: " + "; ".join(error.problems)


def test_long_values_are_shortened(tmp_path):
    """A huge wrong value is abbreviated so the message stays short."""
    error = config_error(tmp_path, {"ip": "x" * 500})
    assert len(str(error)) < len(str(tmp_path)) + 150


def test_yaml_non_string_key_is_named(tmp_path):
    """A non-string key in YAML is reported by its value."""
    path = write(tmp_path, "k.yaml", "1: x\n")
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    assert str(raised.value) == f"{path}: 1: unknown key (expected one of: {TOP_KEYS})"


# -- listening and authentication --------------------------------------------------------

EXPOSED_FIX = ("set auth-tokens or auth-token-file to require a bearer token, or set "
               "allow-unauthenticated: true to let anyone who can reach it run commands")


def test_authentication_is_off_by_default_on_loopback():
    """The defaults listen on 127.0.0.1:2503 without tokens and without a listen string."""
    config = default_config()
    assert (config.listen, config.auth_tokens, config.auth_token_file,
            config.allow_unauthenticated) == (None, (), None, False)
    assert not config.authenticated
    assert config.exposure() is None
    assert config.listening_on() == "127.0.0.1:2503"


def test_auth_tokens_turn_authentication_on():
    """Every token of auth-tokens is accepted; a repeated one is kept once."""
    config = validate_config({"auth-tokens": [TOKEN, OTHER_TOKEN, TOKEN]})
    assert config.auth_tokens == (TOKEN, OTHER_TOKEN)
    assert config.authenticated


def test_tokens_stay_out_of_the_repr():
    """A config's repr (what a debugger or a log line would show) holds no token."""
    config = validate_config({"auth-tokens": [TOKEN]})
    assert TOKEN not in repr(config)
    assert TOKEN not in str(config)


@pytest.mark.parametrize(
    "tokens, problem",
    [
        ("x" * 20, "must be a list of tokens (got a string)"),
        ({"a": 1}, "must be a list of tokens (got an object)"),
        (None, "must be a list of tokens (got null)"),
        ([TOKEN, 7], "token 2: must be a string (got a number)"),
        (["short-secret"], "token 1: must be at least 16 characters long (got 12)"),
        (["x" * 1025], "token 1: must be at most 1024 characters long (got 1025)"),
        (["has a space in it 123"], "token 1: may only hold letters, digits and - . _ ~ + / "
                                    "(then optional trailing =), as an RFC 6750 bearer token"),
        (["semi;colon;secret;xx"], "token 1: may only hold letters, digits and - . _ ~ + / "
                                   "(then optional trailing =), as an RFC 6750 bearer token"),
        (["é" * 20], "token 1: may only hold letters, digits and - . _ ~ + / "
                     "(then optional trailing =), as an RFC 6750 bearer token"),
    ],
)
def test_invalid_auth_tokens_are_reported_without_the_token(tmp_path, tokens, problem):
    """A bad auth-tokens value is a one-line error that never quotes a token."""
    error = config_error(tmp_path, {"auth-tokens": tokens})
    assert error.problems == [f"auth-tokens: {problem}"]
    if isinstance(tokens, list):
        assert not any(str(token) in str(error) for token in tokens if len(str(token)) > 2)


def test_token_file_holds_one_token_per_line(tmp_path):
    """auth-token-file: one token per line, surrounding blanks, blank lines and # comment
    lines ignored; its tokens join those of auth-tokens."""
    path = write(tmp_path, "tokens", f"# clients of daggyd\n\n  {OTHER_TOKEN}  \n"
                                     f"   # old one, remove after the move:\n{TOKEN}\n")
    config = validate_config({"auth-token-file": str(path), "auth-tokens": [TOKEN]})
    assert config.auth_tokens == (TOKEN, OTHER_TOKEN)
    assert config.auth_token_file == str(path)


def test_token_file_alone_allows_listening_everywhere(tmp_path):
    """With tokens from a file, 0.0.0.0 is accepted."""
    path = write(tmp_path, "tokens", TOKEN)
    assert validate_config({"ip": "0.0.0.0", "auth-token-file": str(path)}).auth_tokens == (
        TOKEN,)


def token_file_problem(tmp_path, content: bytes | None, name: str = "tokens") -> str:
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    error = config_error(tmp_path, {"auth-token-file": str(path)})
    assert len(error.problems) == 1
    return error.problems[0].replace(str(path), "FILE")


def test_missing_token_file(tmp_path):
    """A token file that cannot be read is a config error naming it."""
    assert token_file_problem(tmp_path, None) == (
        "auth-token-file: cannot read FILE: No such file or directory")


def test_unreadable_token_file(tmp_path):
    """A token file daggyd may not read is a config error naming it."""
    path = write(tmp_path, "tokens", TOKEN)
    path.chmod(0)
    try:
        if os.access(path, os.R_OK):
            pytest.skip("running as root: every file is readable")
        assert token_file_problem(tmp_path, None) == (
            "auth-token-file: cannot read FILE: Permission denied")
    finally:
        path.chmod(0o600)


@pytest.mark.parametrize("content", [b"", b"\n\n", b"# only a comment\n   \n"])
def test_empty_token_file(tmp_path, content):
    """A token file without a token is a config error (not authentication turned off)."""
    assert token_file_problem(tmp_path, content) == (
        "auth-token-file: FILE holds no token (one per line; # starts a comment line)")


@pytest.mark.parametrize(
    "content, problem",
    [
        (f"{TOKEN}\nshort-one\n", "FILE line 2: the token must be at least 16 characters "
                                  "long (got 9)"),
        (f"# c\n{TOKEN} # a comment\n", "FILE line 2: holds more than one word (one token "
                                        "per line)"),
        (f"{TOKEN}\n\nquote\"d-token-1234567\n", "FILE line 3: the token may only hold "
         "letters, digits and - . _ ~ + / (then optional trailing =), as an RFC 6750 "
         "bearer token"),
    ],
)
def test_bad_line_in_token_file(tmp_path, content, problem):
    """A bad token in the file is reported by line number, never by its value."""
    reported = token_file_problem(tmp_path, content.encode())
    assert reported == f"auth-token-file: {problem}"
    assert "short-one" not in reported and "quote" not in reported


def test_token_file_not_utf8(tmp_path):
    """A token file that is not UTF-8 is reported without its bytes."""
    assert token_file_problem(tmp_path, b"\xff" * 20) == (
        "auth-token-file: FILE is not UTF-8 text (bad byte at offset 0)")


def test_directory_as_token_file(tmp_path):
    """A directory given as the token file is a config error."""
    (tmp_path / "dir").mkdir()
    assert token_file_problem(tmp_path, None, "dir") == (
        "auth-token-file: cannot read FILE: Is a directory")


@pytest.mark.parametrize(
    "ip, named",
    [
        ("0.0.0.0", "0.0.0.0 (every IPv4 interface)"),
        ("::", ":: (every IPv6 interface)"),
        ("10.1.2.3", "10.1.2.3 (not a loopback address)"),
        ("192.168.0.10", "192.168.0.10 (not a loopback address)"),
        ("2001:db8::1", "2001:db8::1 (not a loopback address)"),
        ("::ffff:127.0.0.1", "::ffff:127.0.0.1 (not a loopback address)"),
    ],
)
def test_non_loopback_ip_without_authentication_is_refused(tmp_path, ip, named):
    """Listening on an address other machines can reach, without tokens, is a config error
    naming the address and the fix."""
    error = config_error(tmp_path, {"ip": ip})
    assert error.problems == [
        f"ip: refusing to listen on {named} without authentication; {EXPOSED_FIX}"]


@pytest.mark.parametrize("ip", ["127.0.0.1", "127.9.8.7", "::1", "localhost"])
def test_loopback_ip_needs_no_authentication(ip):
    """Loopback addresses (127.0.0.0/8, ::1, localhost) are served without tokens."""
    config = validate_config({"ip": ip})
    assert config.exposure() is None
    assert not config.authenticated


@pytest.mark.parametrize("ip", ["0.0.0.0", "::", "10.1.2.3"])
def test_allow_unauthenticated_accepts_an_exposed_address(ip):
    """allow-unauthenticated: true lets daggyd listen anywhere without tokens."""
    config = validate_config({"ip": ip, "allow-unauthenticated": True})
    assert config.allow_unauthenticated
    assert config.exposure() is not None
    assert not config.authenticated


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_allow_unauthenticated_must_be_a_boolean(tmp_path, value):
    """allow-unauthenticated only takes true or false (and no refusal is added on top)."""
    error = config_error(tmp_path, {"ip": "0.0.0.0", "allow-unauthenticated": value})
    assert error.problems == [
        f"allow-unauthenticated: must be true or false (got {json.dumps(value)})"]


def test_a_bad_token_is_not_also_reported_as_missing_authentication(tmp_path):
    """When auth-tokens is invalid, only that is reported, not the refusal too."""
    error = config_error(tmp_path, {"ip": "0.0.0.0", "auth-tokens": ["short"]})
    assert error.problems == ["auth-tokens: token 1: must be at least 16 characters long (got 5)"]


@pytest.mark.parametrize(
    "listen, kind, address, port",
    [
        ("tcp:8080:interface=127.0.0.1", "tcp", "127.0.0.1", 8080),
        ("tcp:port=8080:interface=localhost", "tcp", "localhost", 8080),
        (r"tcp6:8080:interface=\:\:1", "tcp6", "::1", 8080),
        ("tcp:interface=127.0.0.2:8080:backlog=10", "tcp", "127.0.0.2", 8080),
        ("unix:/run/daggyd.sock:mode=660", "unix", "/run/daggyd.sock", None),
    ],
)
def test_listen_takes_an_endpoint_string(listen, kind, address, port):
    """listen takes a Twisted server endpoint string; loopback and unix sockets need no
    authentication."""
    config = validate_config({"listen": listen})
    assert config.listen == listen
    assert config.listening_on() == listen
    assert config.exposure() is None
    target = parse_listen(listen)
    assert (target.kind, target.address, target.port, target.tls) == (kind, address, port,
                                                                      False)


@pytest.mark.parametrize(
    "listen, named",
    [
        ("tcp:8080", "0.0.0.0 (every IPv4 interface)"),
        ("tcp:8080:interface=", "0.0.0.0 (every IPv4 interface)"),
        ("tcp6:8080", ":: (every IPv6 interface)"),
        ("tcp:8080:interface=10.0.0.7", "10.0.0.7 (not a loopback address)"),
    ],
)
def test_exposed_listen_without_authentication_is_refused(tmp_path, listen, named):
    """A listen string without an interface means every interface, and like any
    non-loopback address it needs tokens (or allow-unauthenticated)."""
    error = config_error(tmp_path, {"listen": listen})
    assert error.problems == [
        f"listen: refusing to listen on {named} without authentication; {EXPOSED_FIX}"]
    assert validate_config({"listen": listen, "auth-tokens": [TOKEN]}).authenticated
    assert validate_config({"listen": listen, "allow-unauthenticated": True}).listen == listen


@pytest.mark.parametrize("keys", [{"ip": "127.0.0.1"}, {"port": 2503},
                                  {"ip": "::1", "port": 1}])
def test_listen_excludes_ip_and_port(tmp_path, keys):
    """listen holds the whole address, so giving ip or port too is an error."""
    error = config_error(tmp_path, {"listen": "tcp:2503:interface=127.0.0.1", **keys})
    assert error.problems == [
        f"listen: give either listen or {' and '.join(keys)}, not both (listen holds the "
        f"whole address, as in tcp:2503:interface=127.0.0.1)"]


def test_null_listen_means_ip_and_port():
    """listen: null (as in configs/daggyd.yaml) leaves ip and port in charge."""
    assert validate_config({"listen": None, "ip": "::1", "port": 80}).listening_on() == "[::1]:80"


ENDPOINTS = "ssl, tcp, tcp6, unix"


@pytest.mark.parametrize(
    "listen, problem",
    [
        ("", 'must be a non-empty string or null (got "")'),
        (2503, "must be a non-empty string or null (got 2503)"),
        ("2503", f"endpoint type '2503' is not supported (expected one of: {ENDPOINTS})"),
        (":2503", f"no endpoint type (expected one of: {ENDPOINTS})"),
        ("http:2503", f"endpoint type 'http' is not supported (expected one of: {ENDPOINTS})"),
        ("systemd:domain=INET:index=0",
         f"endpoint type 'systemd' is not supported (expected one of: {ENDPOINTS})"),
        ("tcp", "tcp: needs a port, as in tcp:2503"),
        ("tcp:http", "tcp: port must be an integer from 1 to 65535 (got 'http')"),
        ("tcp:0:interface=127.0.0.1", "tcp: port must be an integer from 1 to 65535 (got '0')"),
        ("tcp:65536", "tcp: port must be an integer from 1 to 65535 (got '65536')"),
        ("tcp:2503:2504", "tcp: one positional value (port) expected, got 2; give the others "
                          "as name=value"),
        ("tcp:2503:port=2504", "tcp: port given twice"),
        ("tcp:2503:interface=1.1.1.1:interface=127.0.0.1",
         "option 'interface' given twice"),
        ("tcp:2503:iface=127.0.0.1",
         "tcp: unknown option 'iface' (expected one of: port, interface, backlog)"),
        ("tcp:2503:interface=::1", "tcp: one positional value (port) expected, got 3; give "
                                   "the others as name=value"),
        ("tcp:2503:interface=example.com",
         "tcp: interface must be an IP address or \"localhost\" (got 'example.com')"),
        ("tcp6:2503:interface=127.0.0.1",
         "tcp6: interface must be an IPv6 address (got '127.0.0.1')"),
        ("tcp:2503:backlog=many",
         "tcp: backlog must be an integer from 1 to 65535 (got 'many')"),
        ("tcp:2503\\", "ends with a lone backslash"),
        ("unix:", "unix: needs a socket path, as in unix:/run/daggyd.sock"),
        ("unix:/tmp/d.sock:mode=999",
         "unix: mode must be an octal number from 0 to 777 (got '999')"),
        ("unix:/tmp/d.sock:lockfile=yes", "unix: lockfile must be 0 or 1 (got 'yes')"),
        ("ssl:2503", "ssl: needs privateKey=FILE (a PEM private key) and certKey=FILE (its "
                     "PEM certificate; may be left out when the key file holds it)"),
        ("ssl:2503:privateKey=k.pem:sslmethod=TLSv1_METHOD",
         "ssl: unknown option 'sslmethod' (expected one of: port, interface, backlog, "
         "privateKey, certKey, extraCertChain)"),
    ],
)
def test_invalid_listen(tmp_path, listen, problem):
    """Each mistake in a listen string is a one-line config error saying what is wrong."""
    error = config_error(tmp_path, {"listen": listen, "auth-tokens": [TOKEN]})
    assert_one_line(error, f"{tmp_path / 'daggyd.json'}: listen: {problem}")


def ssl_listen(key, cert=None, interface="127.0.0.1", port=8443) -> str:
    listen = f"ssl:{port}:interface={interface}:privateKey={key}"
    return listen if cert is None else f"{listen}:certKey={cert}"


def test_ssl_listen_loads_the_key_and_certificate(tmp_path):
    """An ssl: listen string with a matching key and certificate is valid and means TLS."""
    key, cert = write_certificate(tmp_path)
    config = validate_config({"listen": ssl_listen(key, cert)})
    assert config.listen == ssl_listen(key, cert)
    assert parse_listen(config.listen).tls
    assert config.exposure() is None


def test_ssl_key_file_may_hold_the_certificate_too(tmp_path):
    """Without certKey the certificate is read from the privateKey file."""
    key, cert = write_certificate(tmp_path)
    both = write(tmp_path, "both.pem", key.read_text() + cert.read_text())
    assert validate_config({"listen": ssl_listen(both)}).listen == ssl_listen(both)


def ssl_problem(tmp_path, listen) -> str:
    error = config_error(tmp_path, {"listen": listen})
    assert len(error.problems) == 1
    return error.problems[0]


def test_ssl_missing_files(tmp_path):
    """A key or certificate file that cannot be read is a config error naming it."""
    key, cert = write_certificate(tmp_path)
    missing = tmp_path / "missing.pem"
    assert ssl_problem(tmp_path, ssl_listen(key, missing)) == (
        f"listen: ssl: certKey: cannot read {missing}: No such file or directory")
    assert ssl_problem(tmp_path, ssl_listen(missing, cert)) == (
        f"listen: ssl: privateKey: cannot read {missing}: No such file or directory")


def test_ssl_files_that_are_not_pem(tmp_path):
    """Files without a PEM certificate or key (or swapped) are named in the error."""
    key, cert = write_certificate(tmp_path)
    junk = write(tmp_path, "junk.pem", "not a certificate\n")
    assert ssl_problem(tmp_path, ssl_listen(key, junk)) == (
        f"listen: ssl: certKey: {junk} holds no PEM certificate (OpenSSL: no start line)")
    assert ssl_problem(tmp_path, ssl_listen(cert, key)).startswith(
        f"listen: ssl: certKey: {key} holds no PEM certificate (")
    assert ssl_problem(tmp_path, ssl_listen(junk, cert)).startswith(
        f"listen: ssl: privateKey: {junk} holds no PEM private key (")


def test_ssl_key_of_another_certificate(tmp_path):
    """A private key that does not belong to the certificate is a config error."""
    key, cert = write_certificate(tmp_path, "one")
    other_key, _ = write_certificate(tmp_path, "two")
    assert ssl_problem(tmp_path, ssl_listen(other_key, cert)) == (
        f"listen: ssl: the private key in {other_key} does not belong to the certificate in "
        f"{cert}")


def test_ssl_on_every_interface_still_needs_authentication(tmp_path):
    """TLS does not replace authentication: ssl: on 0.0.0.0 without tokens is refused."""
    key, cert = write_certificate(tmp_path)
    assert ssl_problem(tmp_path, ssl_listen(key, cert, interface="0.0.0.0")) == (
        "listen: refusing to listen on 0.0.0.0 (every IPv4 interface) without "
        f"authentication; {EXPOSED_FIX}")


def test_listening_problems_are_reported_with_the_others(tmp_path):
    """A bad token file and a bad listen string are both reported, on one line, in key
    order after the scalar keys."""
    error = config_error(tmp_path, {"port": 0, "listen": "tcp:x",
                                    "auth-token-file": str(tmp_path / "nope")})
    assert error.problems == [
        "port: must be an integer from 1 to 65535 (got 0)",
        "listen: give either listen or port, not both (listen holds the whole address, as "
        "in tcp:2503:interface=127.0.0.1)",
        f"auth-token-file: cannot read {tmp_path / 'nope'}: No such file or directory",
    ]


# -- executor secretsFile (secretEnvironment values) -------------------------------------

SECRET_VALUE = "pa55-word-never-shown"


def build_executor(name: str, config_overrides: dict):
    """Build an executor the way the daemon does, from its validated config object."""
    from daggy.service.registry import EXECUTORS
    from daggy.testing import FakeProcessReactor

    component = EXECUTORS[name]
    return component.build(FakeProcessReactor(), {**component.defaults(), **config_overrides})


def secrets_error(name: str, path: Path) -> str:
    with pytest.raises(ValueError) as raised:
        build_executor(name, {"secretsFile": str(path)})
    return str(raised.value)


@pytest.mark.parametrize("executor", ["ForkingTaskExecutor", "SlurmTaskExecutor"])
def test_secrets_file_defaults_to_null_and_must_be_a_path(tmp_path, executor):
    """secretsFile is null by default for both executors; anything but a non-empty string
    or null is a one-line error naming the key."""
    from daggy.service.registry import EXECUTORS

    assert EXECUTORS[executor].defaults()["secretsFile"] is None
    error = config_error(tmp_path, {"executor": {"name": executor,
                                                 "config": {"secretsFile": 3}}})
    assert error.problems == [
        "executor.config.secretsFile: must be a non-empty string or null (got 3)"]


@pytest.mark.parametrize("executor", ["ForkingTaskExecutor", "SlurmTaskExecutor"])
@pytest.mark.parametrize("name, text", [
    ("secrets.yaml", f"DB_PASSWORD: {SECRET_VALUE}\n# a comment\nAPI_KEY: 'k'\n"),
    ("secrets.json", json.dumps({"DB_PASSWORD": SECRET_VALUE, "API_KEY": "k"})),
    ("secrets", json.dumps({"DB_PASSWORD": SECRET_VALUE, "API_KEY": "k"})),
])
def test_a_secrets_file_gives_the_executor_its_secrets(tmp_path, executor, name, text):
    """A JSON or YAML object of name -> string makes those names valid in a job's
    secretEnvironment, and only those."""
    path = write(tmp_path, name, text)
    built = build_executor(executor, {"secretsFile": str(path)})
    job = {"command": ["true"], "secretEnvironment": ["DB_PASSWORD", "API_KEY"]}
    assert built.validate_job(job, "tasks.a.job") == []
    [error] = built.validate_job({"command": ["true"], "secretEnvironment": ["OTHER_NAME"]},
                                 "tasks.a.job")
    assert error.startswith(f"tasks.a.job.secretEnvironment[0]: no secret named 'OTHER_NAME' "
                            f"(it is neither in the executor's secretsFile {path}")
    assert SECRET_VALUE not in repr(built._secrets)


@pytest.mark.parametrize("name, content, problem", [
    ("s.yaml", f"DB_PASSWORD: [{SECRET_VALUE}\n", "invalid YAML at line 2 column 1"),
    ("s.yaml", f"A: {SECRET_VALUE}: x\n", "invalid YAML at line 1 column"),
    ("s.json", f'{{"A": "{SECRET_VALUE}",}}', "invalid JSON at line 1 column"),
    ("s.yaml", f"- {SECRET_VALUE}\n", "must be an object mapping variable names to strings "
                                      "(got an array)"),
    ("s.yaml", "DB_PASSWORD: 12345\n", "DB_PASSWORD: must be a string (got a number)"),
    ("s.yaml", f"A: x\n{SECRET_VALUE}: x\n", "name number 2 is not an environment variable "
                                              "name"),
    ("s.yaml", f"A: {SECRET_VALUE}\nA: other\n", "'A' is given twice"),
    ("s.json", json.dumps({"A": SECRET_VALUE + "\0"}), "A: must not contain NUL characters"),
])
def test_a_bad_secrets_file_is_one_line_naming_the_file_never_a_value(
        tmp_path, name, content, problem):
    """A secrets file that does not parse, or is not an object of strings under valid
    names, stops the executor with one line naming the file and the problem, without any
    part of the file's text."""
    path = write(tmp_path, name, content)
    message = secrets_error("ForkingTaskExecutor", path)
    assert message.startswith(f"secretsFile: {path}: {problem}"), message
    assert "\n" not in message
    assert SECRET_VALUE not in message and "12345" not in message


def test_a_missing_or_unreadable_secrets_file_names_the_file(tmp_path):
    """A secrets file that cannot be read is an error naming it."""
    missing = tmp_path / "nope.yaml"
    assert secrets_error("SlurmTaskExecutor", missing) == (
        f"secretsFile: cannot read {missing}: No such file or directory")
    assert secrets_error("ForkingTaskExecutor", tmp_path) == (
        f"secretsFile: cannot read {tmp_path}: Is a directory")
    binary = tmp_path / "s.yaml"
    binary.write_bytes(b"A: \xff\n")
    assert secrets_error("ForkingTaskExecutor", binary) == (
        f"secretsFile: {binary}: not UTF-8 text (bad byte at offset 3)")


def test_a_bad_secrets_file_stops_the_daemon_with_one_config_line(tmp_path):
    """Building the daemon with a bad secretsFile gives the one-line config error of
    every component that cannot start."""
    from daggy.service.services import _build_component
    from daggy.service.registry import EXECUTORS
    from daggy.testing import FakeProcessReactor

    path = write(tmp_path, "s.yaml", f"- {SECRET_VALUE}\n")
    config = load_config(write(tmp_path, "d.json", json.dumps(
        {"executor": {"name": "ForkingTaskExecutor", "config": {"secretsFile": str(path)}}})))
    with pytest.raises(ConfigError) as raised:
        _build_component(config, "executor", EXECUTORS, FakeProcessReactor())
    assert str(raised.value) == (
        f"{tmp_path / 'd.json'}: executor: cannot start ForkingTaskExecutor: secretsFile: "
        f"{path}: must be an object mapping variable names to strings (got an array)")


def test_a_secrets_file_readable_by_others_is_warned_about(tmp_path):
    """A secrets file other users may read is accepted with one warning saying so."""
    from twisted.logger import globalLogPublisher

    path = write(tmp_path, "s.yaml", "A: b\n")
    os.chmod(path, 0o644)
    seen = []
    globalLogPublisher.addObserver(seen.append)
    try:
        build_executor("ForkingTaskExecutor", {"secretsFile": str(path)})
        os.chmod(path, 0o600)
        build_executor("ForkingTaskExecutor", {"secretsFile": str(path)})
    finally:
        globalLogPublisher.removeObserver(seen.append)
    warnings = [event for event in seen if "secretsFile" in event.get("log_format", "")]
    assert len(warnings) == 1 and warnings[0]["mode"] == 0o644
