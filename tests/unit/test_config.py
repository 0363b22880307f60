"""The daemon config file: formats, defaults, and a one-line error for every mistake."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from daggy.service.config import (
    DEFAULTS_SOURCE,
    ComponentChoice,
    ConfigError,
    DaemonConfig,
    default_config,
    load_config,
    validate_config,
)

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
MiB = 1024 * 1024

DEFAULTS = DaemonConfig(
    source=DEFAULTS_SOURCE,
    ip="127.0.0.1",
    port=2503,
    web_threads=10,
    dag_threads=50,
    max_request_bytes=64 * MiB,
    logger=ComponentChoice("OStreamLogger", {"file": "-"}),
    executor=ComponentChoice(
        "ForkingTaskExecutor", {"threads": 10, "maxOutputBytes": 16 * MiB, "killGraceSeconds": 5}
    ),
)


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
            "ForkingTaskExecutor", {"threads": 4, "maxOutputBytes": 16 * MiB, "killGraceSeconds": 5}
        ),
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


def test_example_configs_validate():
    """Every daemon config example in configs/ is valid."""
    paths = daemon_config_files()
    assert {path.name for path in paths} >= {
        "daggyd.json",
        "daggyd.yaml",
        "noop.yaml",
        "ostream-file.yaml",
    }
    for path in paths:
        assert load_config(path).source == str(path)


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
TOP_KEYS = "dag-threads, executor, ip, logger, max-request-bytes, port, web-threads"
FORKING_KEYS = "killGraceSeconds, maxOutputBytes, threads"
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
