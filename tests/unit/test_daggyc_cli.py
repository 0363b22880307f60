"""daggyc's commands against a mock daggyd (httpx MockTransport): what each sends, what
it prints, and the documented exit code of every kind of failure."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from daggy.client.cli import cli
from daggy.client.errors import ExitCode

STATES = ("QUEUED", "RUNNING", "RETRY", "ERRORED", "KILLED", "COMPLETED")
TASK = "pull[DATE=2021-01-01,DIR=/tmp]"
TASK_SEGMENT = "pull%5BDATE%3D2021-01-01%2CDIR%3D%2Ftmp%5D"
YAML_SPEC = """\
tag: nightly
parameters:
  DATE: [2021-01-01]
  DIR: /tmp
tasks:
  pull:
    job: {command: [fetch, "{{DATE}}", "{{DIR}}"]}
    maxRetries: 1
  report:
    job: {command: [report]}
    parents: [pull]
"""


def counts(**given: int) -> dict[str, int]:
    return {state: given.get(state.lower(), 0) for state in STATES}


def attempt(number: int, succeeded: bool, out: str, err: str = "") -> dict[str, Any]:
    return {"startTime": f"2021-01-01T00:00:0{number}.000000Z",
            "stopTime": f"2021-01-01T00:00:0{number}.250000Z", "rc": 0 if succeeded else 1,
            "succeeded": succeeded, "outputLog": out, "errorLog": err,
            "executorLog": f"exited with code {0 if succeeded else 1}", "killed": False,
            "timedOut": False, "outputTruncated": False, "errorTruncated": False,
            "executorState": {}}


RUN = {
    "runID": 3, "tag": "nightly", "state": "ERRORED",
    "startTime": "2021-01-01T00:00:00.000000Z", "lastUpdate": "2021-01-01T00:00:05.000000Z",
    "taskCounts": counts(errored=1, queued=1),
    "parameters": {"DATE": ["2021-01-01"], "DIR": "/tmp"}, "stateChanges": [],
    "tasks": {
        TASK: {"name": TASK, "definedName": "pull", "parents": [], "children": ["report"]},
        "report": {"name": "report", "definedName": "report", "parents": ["pull"],
                   "children": []},
    },
    "taskStates": {TASK: "ERRORED", "report": "QUEUED"},
    "taskAttempts": {TASK: [attempt(1, False, "first out\n", "first err\n"),
                            attempt(2, False, "second out\n", "second err\n")],
                     "report": []},
    "taskStateChanges": {TASK: [], "report": []},
    "taskExecutorStates": {},
}


class FakeDaggyd:
    """Enough of daggyd's API for the client: one run (3), a token check when ``token`` is
    set, and a fixed answer for any path in ``overrides``."""

    def __init__(self, token: str | None = None) -> None:
        self.token = token
        self.requests: list[httpx.Request] = []
        self.overrides: dict[tuple[str, str], httpx.Response] = {}
        self.run = json.loads(json.dumps(RUN))

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path = request.url.raw_path.decode().split("?")[0]
        if self.token and request.headers.get("authorization") != f"Bearer {self.token}":
            return httpx.Response(401, json={"error": "authentication required"})
        key = (request.method, path)
        if key in self.overrides:
            return self.overrides[key]
        if key == ("POST", "/v1/dagrun"):
            return httpx.Response(200, json={"runID": 3})
        if key == ("POST", "/v1/dagrun/validate"):
            return httpx.Response(200, json={"valid": True, "tasks": ["a", "b[X=1]"]})
        if key == ("GET", "/v1/dagruns"):
            return httpx.Response(200, json=[{k: self.run[k] for k in (
                "runID", "tag", "state", "startTime", "lastUpdate", "taskCounts")}])
        if key == ("GET", "/v1/dagrun/3"):
            return httpx.Response(200, json=self.run)
        if key == ("GET", "/v1/dagrun/3/state"):
            return httpx.Response(200, json={"runID": 3, "state": self.run["state"],
                                             "taskCounts": self.run["taskCounts"]})
        if key == ("DELETE", "/v1/dagrun/3"):
            return httpx.Response(200, json={"runID": 3, "state": "KILLED"})
        if key == ("PATCH", "/v1/dagrun/3/state/QUEUED"):
            return httpx.Response(200, json={"runID": 3, "state": "QUEUED"})
        if request.method == "GET" and path == f"/v1/dagrun/3/task/{TASK_SEGMENT}":
            return httpx.Response(200, json={
                "runID": 3, "name": TASK, "state": "ERRORED",
                "attempts": self.run["taskAttempts"][TASK], "stateChanges": [],
                "definition": self.run["tasks"][TASK], "executorState": None})
        if request.method == "PATCH" and path.startswith(f"/v1/dagrun/3/task/{TASK_SEGMENT}/state/"):
            return httpx.Response(200, json={"runID": 3, "name": TASK,
                                             "state": path.rsplit("/", 1)[1]})
        if path.startswith("/v1/dagrun/"):
            return httpx.Response(404, json={"error": f"no such run: {path.split('/')[3]}"})
        return httpx.Response(404, json={"error": f"no such endpoint: {request.method} {path}"})

    def last(self) -> httpx.Request:
        return self.requests[-1]


class Sleeper:
    def __init__(self) -> None:
        self.now = 0.0

    def sleep(self, seconds: float) -> None:
        self.now += seconds

    def clock(self) -> float:
        return self.now


def invoke(args: list[str], daggyd=None, env: dict | None = None, input: str | None = None):
    """Run daggyc with ``daggyd`` (a transport handler) and a clean environment."""
    sleeper = Sleeper()
    obj = {"sleep": sleeper.sleep, "clock": sleeper.clock}
    if daggyd is not None:
        obj["transport"] = httpx.MockTransport(daggyd)
    base_env = {"DAGGY_URL": None, "DAGGY_TOKEN": None, "DAGGY_TOKEN_FILE": None,
                "DAGGY_CA_CERT": None, "COLUMNS": "120"}
    return CliRunner(env={**base_env, **(env or {})}).invoke(cli, args, obj=obj, input=input)


@pytest.fixture
def spec_file(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text(YAML_SPEC)
    return str(path)


# -- submit ----------------------------------------------------------------------------------


def test_submit_sends_the_yaml_spec_with_overrides_and_prints_the_run_id(spec_file):
    """submit posts the file's spec with -p and --tag applied and prints only the run ID."""
    daggyd = FakeDaggyd()
    result = invoke(["submit", spec_file, "-p", "DATE=2021-02-01", "-p", "DATE=2021-02-02",
                     "-p", "DIR=/a,/b", "--tag", "rerun"], daggyd)
    assert result.exit_code == 0, result.output
    assert result.stdout == "3\n"
    request = daggyd.last()
    assert (request.method, request.url.path) == ("POST", "/v1/dagrun")
    sent = json.loads(request.content)
    assert sent["tag"] == "rerun"
    assert sent["parameters"] == {"DATE": ["2021-02-01", "2021-02-02"], "DIR": "/a,/b"}
    assert sent["tasks"]["pull"]["maxRetries"] == 1


def test_submit_json_prints_an_object(spec_file):
    """--json (before or after the command) prints {"runID": N}."""
    for args in (["--json", "submit", spec_file], ["submit", spec_file, "--json"]):
        result = invoke(args, FakeDaggyd())
        assert result.exit_code == 0 and json.loads(result.stdout) == {"runID": 3}


def test_submit_reads_stdin(spec_file):
    """FILE '-' reads the spec from standard input."""
    daggyd = FakeDaggyd()
    result = invoke(["submit", "-"], daggyd, input='{"tasks": {"a": {"job": {}}}}')
    assert result.exit_code == 0
    assert json.loads(daggyd.last().content) == {"tasks": {"a": {"job": {}}}}


def test_submit_rejected_spec_lists_every_error_and_exits_6(spec_file):
    """daggyd's 400 with errors: a summary line and one line per error path, exit 6."""
    daggyd = FakeDaggyd()
    errors = ["tasks.pull.job.command: required", "tasks.report.parents[0]: unknown task 'p'"]
    daggyd.overrides[("POST", "/v1/dagrun")] = httpx.Response(
        400, json={"error": "; ".join(errors), "errors": errors})
    result = invoke(["submit", spec_file], daggyd)
    assert result.exit_code == ExitCode.INVALID_SPEC == 6
    assert result.stderr.splitlines() == ["daggyc: invalid spec (2 errors):",
                                          "  tasks.pull.job.command: required",
                                          "  tasks.report.parents[0]: unknown task 'p'"]


def test_submit_a_body_error_or_too_large_is_an_invalid_spec(spec_file):
    """A 400 without an errors list, or a 413, is still exit 6 with daggyd's message."""
    daggyd = FakeDaggyd()
    daggyd.overrides[("POST", "/v1/dagrun")] = httpx.Response(
        413, json={"error": "request body larger than 10 bytes"})
    result = invoke(["submit", spec_file], daggyd)
    assert result.exit_code == 6
    assert result.stderr == "daggyc: invalid spec: request body larger than 10 bytes\n"


def test_unparseable_spec_file_exits_6_without_contacting_daggyd(tmp_path):
    """A file that is not valid YAML fails before any request."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("tasks: [\n")
    daggyd = FakeDaggyd()
    result = invoke(["submit", str(bad)], daggyd)
    assert result.exit_code == 6 and daggyd.requests == []
    assert result.stderr.startswith(f"daggyc: {bad}: invalid YAML at line 2 column 1")


@pytest.mark.parametrize("args", [["submit", "spec.yaml", "-p", "NOVALUE"],
                                  ["submit", "spec.yaml", "-p", "=x"],
                                  ["submit"],
                                  ["show", "abc"],
                                  ["runs", "--state", "DONE"],
                                  ["logs", "3", TASK, "--attempt", "0"],
                                  ["frobnicate"]])
def test_usage_errors_exit_2(args, tmp_path, monkeypatch):
    """Malformed options and arguments are usage errors (exit 2), sending nothing."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "spec.yaml").write_text(YAML_SPEC)
    daggyd = FakeDaggyd()
    result = invoke(args, daggyd)
    assert result.exit_code == ExitCode.USAGE == 2, result.output
    assert daggyd.requests == []


# -- connection, auth, errors ----------------------------------------------------------------


def test_unreachable_daemon_exits_3_with_one_line():
    """A refused connection: one line naming the URL and the reason, exit 3."""
    def refuse(request):
        raise httpx.ConnectError("[Errno 111] Connection refused")

    result = invoke(["runs"], refuse, env={"DAGGY_URL": "http://127.0.0.1:9"})
    assert result.exit_code == ExitCode.UNREACHABLE == 3
    assert result.stderr == ("daggyc: cannot reach daggyd at http://127.0.0.1:9: "
                             "Connection refused\n")


def test_a_timeout_is_unreachable_too():
    """No answer within --timeout is exit 3 naming the timeout."""
    def hang(request):
        raise httpx.ReadTimeout("timed out")

    result = invoke(["runs", "--timeout", "2.5"], hang)
    assert result.exit_code == 3
    assert result.stderr == ("daggyc: daggyd at http://127.0.0.1:2503 did not answer "
                             "within 2.5 s\n")


def test_missing_token_is_exit_4_with_a_hint():
    """A 401 without a token says how to give one; exit 4."""
    result = invoke(["runs"], FakeDaggyd(token="s3cret-token-0123456789"))
    assert result.exit_code == ExitCode.AUTH == 4
    assert result.stderr == ("daggyc: daggyd requires a bearer token: set DAGGY_TOKEN or "
                             "pass --token\n")


def test_wrong_token_is_exit_4_and_never_echoed():
    """A rejected token: daggyd's reason, not the token itself."""
    result = invoke(["runs", "--token", "wrong-token-0123456789"],
                    FakeDaggyd(token="s3cret-token-0123456789"))
    assert result.exit_code == 4
    assert "wrong-token" not in result.stderr
    assert result.stderr.startswith("daggyc: daggyd rejected the token (")


@pytest.mark.parametrize("how", ["flag", "env", "file-flag", "file-env"])
def test_token_from_flag_env_or_file(how, tmp_path):
    """The token comes from --token, DAGGY_TOKEN, --token-file or DAGGY_TOKEN_FILE and is
    sent as a bearer token."""
    token = "s3cret-token-0123456789"
    token_file = tmp_path / "token"
    token_file.write_text(f"# daggyd token\n\n  {token}  \n")
    args, env = {"flag": (["--token", token], {}),
                 "env": ([], {"DAGGY_TOKEN": token}),
                 "file-flag": (["--token-file", str(token_file)], {}),
                 "file-env": ([], {"DAGGY_TOKEN_FILE": str(token_file)})}[how]
    daggyd = FakeDaggyd(token=token)
    result = invoke(["runs", *args], daggyd, env=env)
    assert result.exit_code == 0, result.output
    assert daggyd.last().headers["authorization"] == f"Bearer {token}"


def test_unreadable_token_file_is_a_usage_error(tmp_path):
    """A token file that cannot be read or holds no token: exit 2, naming the file."""
    empty = tmp_path / "empty"
    empty.write_text("# nothing\n")
    result = invoke(["runs", "--token-file", str(empty)], FakeDaggyd())
    assert result.exit_code == 2
    assert result.stderr == f"daggyc: the token file {empty} holds no token\n"


def test_a_missing_ca_file_is_a_usage_error(tmp_path):
    """--ca-cert naming a file that does not exist: exit 2, naming it."""
    missing = tmp_path / "ca.pem"
    result = invoke(["runs", "--ca-cert", str(missing)], FakeDaggyd())
    assert result.exit_code == 2
    assert result.stderr == f"daggyc: cannot use the CA file {missing}: No such file or directory\n"


def test_url_from_flag_or_env_and_bad_urls():
    """--url beats DAGGY_URL; a URL daggyc cannot use is exit 2."""
    daggyd = FakeDaggyd()
    result = invoke(["--url", "http://flag:1", "runs"], daggyd, env={"DAGGY_URL": "http://env:2"})
    assert result.exit_code == 0 and daggyd.last().url.host == "flag"
    invoke(["runs"], daggyd, env={"DAGGY_URL": "http://env:2/"})
    assert (daggyd.last().url.host, daggyd.last().url.port) == ("env", 2)
    result = invoke(["runs", "--url", "ftp://x"], daggyd)
    assert result.exit_code == 2 and "expected http://HOST[:PORT]" in result.stderr


def test_not_found_exits_5_with_daggyds_message():
    """A 404 is exit 5 with daggyd's message."""
    result = invoke(["show", "42"], FakeDaggyd())
    assert result.exit_code == ExitCode.NOT_FOUND == 5
    assert result.stderr == "daggyc: no such run: 42\n"


def test_conflict_exits_1_with_daggyds_message():
    """A 409 (the run already finished) is exit 1 with daggyd's message."""
    daggyd = FakeDaggyd()
    daggyd.overrides[("DELETE", "/v1/dagrun/3")] = httpx.Response(
        409, json={"error": "run 3 is already ERRORED"})
    result = invoke(["kill", "3"], daggyd)
    assert result.exit_code == ExitCode.FAILED == 1
    assert result.stderr == "daggyc: run 3 is already ERRORED\n"


@pytest.mark.parametrize("status", [429, 503])
def test_busy_daemon_exits_7(status, spec_file):
    """429 (too many queued runs) and 503 (shutting down) mean: try later, exit 7."""
    daggyd = FakeDaggyd()
    daggyd.overrides[("POST", "/v1/dagrun")] = httpx.Response(status, json={"error": "busy"})
    result = invoke(["submit", spec_file], daggyd)
    assert result.exit_code == ExitCode.BUSY == 7
    assert result.stderr == "daggyc: daggyd cannot take this now (busy); try again later\n"


def test_a_non_daggyd_answer_is_reported_plainly():
    """A proxy's HTML 502 is exit 1 with the status and the start of the text."""
    daggyd = FakeDaggyd()
    daggyd.overrides[("GET", "/v1/dagruns")] = httpx.Response(502, text="<h1>Bad gateway</h1>")
    result = invoke(["runs"], daggyd)
    assert result.exit_code == 1
    assert result.stderr == "daggyc: daggyd answered 502: HTTP 502 Bad Gateway: <h1>Bad gateway</h1>\n"


def test_interrupt_exits_130():
    """Ctrl-C during a command is exit 130 with one line."""
    def interrupted(request):
        raise KeyboardInterrupt

    result = invoke(["runs"], interrupted)
    assert result.exit_code == ExitCode.INTERRUPTED == 130
    assert result.stderr == "daggyc: interrupted\n"


# -- validate --------------------------------------------------------------------------------


def test_validate_offline_prints_the_expanded_tasks(spec_file):
    """Offline validation needs no daemon and prints one expanded task per line."""
    result = invoke(["validate", spec_file, "-p", "DATE=d1", "-p", "DATE=d2"])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == ["pull[DATE=d1]", "pull[DATE=d2]", "report"]
    assert result.stderr == f"{spec_file}: valid (offline, ForkingTaskExecutor): 3 tasks\n"


def test_validate_offline_lists_errors_with_paths_and_exits_6(tmp_path):
    """Every problem is printed with its path; exit 6."""
    spec = tmp_path / "s.json"
    spec.write_text(json.dumps({"tasks": {
        "a": {"job": {"command": [], "timeoutSecond": 3}},
        "b": {"job": {"command": ["x", "{{DAY}}"]}, "parents": ["c"]}}}))
    result = invoke(["validate", str(spec)])
    assert result.exit_code == 6
    assert result.stderr.splitlines() == [
        f"daggyc: {spec}: invalid spec (offline, ForkingTaskExecutor), 4 errors:",
        "  tasks.a.job.timeoutSecond: unknown job field (allowed: command, environment, "
        "secretEnvironment, timeoutSeconds, workDir)",
        "  tasks.a.job.command: must be a non-empty list of strings",
        "  tasks.b.job.command[1]: placeholder {{DAY}} names no parameter",
        "  tasks.b.parents[0]: unknown task 'c'",
    ]


def test_validate_json_reports_valid_and_invalid(tmp_path):
    """--json prints {"valid": ..., "tasks"/"errors": ...} on stdout."""
    good = tmp_path / "good.yaml"
    good.write_text("tasks: {a: {job: {command: [x]}}}\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text("tasks: {a: {job: {command: 3}}}\n")
    assert json.loads(invoke(["validate", str(good), "--json"]).stdout) == {
        "valid": True, "tasks": ["a"]}
    result = invoke(["validate", str(bad), "--json"])
    assert result.exit_code == 6
    assert json.loads(result.stdout) == {
        "valid": False, "errors": ["tasks.a.job.command: must be a non-empty list of strings"]}


def test_validate_uses_the_chosen_executors_job_format(tmp_path):
    """--executor picks the job checks: a Slurm-only field is fine for Slurm, an error for
    the forking executor, and anything goes for noop; unknown executors are usage errors."""
    spec = tmp_path / "s.yaml"
    spec.write_text("tasks: {a: {job: {command: [x], partition: gpu}}}\n")
    assert invoke(["validate", str(spec), "--executor", "SlurmTaskExecutor"]).exit_code == 0
    assert invoke(["validate", str(spec), "--executor", "noop"]).exit_code == 0
    forking = invoke(["validate", str(spec)])
    assert forking.exit_code == 6
    assert "  tasks.a.job.partition: unknown job field (allowed: command," in forking.stderr
    unknown = invoke(["validate", str(spec), "--executor", "docker"])
    assert unknown.exit_code == 2 and "unknown executor 'docker'" in unknown.stderr


def test_validate_server_asks_daggyd(spec_file):
    """--server posts the spec to /v1/dagrun/validate and prints daggyd's task list; its
    400 lists the errors and exits 6."""
    daggyd = FakeDaggyd()
    result = invoke(["validate", spec_file, "--server"], daggyd)
    assert result.exit_code == 0 and result.stdout == "a\nb[X=1]\n"
    assert daggyd.last().url.path == "/v1/dagrun/validate"
    daggyd.overrides[("POST", "/v1/dagrun/validate")] = httpx.Response(400, json={
        "valid": False, "error": "x: no", "errors": ["tasks.pull.job.secretEnvironment[0]: no"]})
    result = invoke(["validate", spec_file, "--server"], daggyd)
    assert result.exit_code == 6
    assert result.stderr.splitlines()[1:] == ["  tasks.pull.job.secretEnvironment[0]: no"]


# -- runs, show, logs ------------------------------------------------------------------------


def test_runs_passes_filters_and_prints_a_table():
    """--all, --tag and --state (any case) become query parameters; the table has one row
    per run."""
    daggyd = FakeDaggyd()
    result = invoke(["runs", "--all", "--tag", "night ly", "--state", "errored"], daggyd)
    assert result.exit_code == 0, result.output
    assert dict(daggyd.last().url.params) == {"all": "1", "tag": "night ly", "state": "ERRORED"}
    header, row = result.stdout.splitlines()
    assert header.split() == ["RUN", "TAG", "STATE", "STARTED", "(UTC)", "DURATION", "TASKS"]
    assert row.split() == ["3", "nightly", "ERRORED", "2021-01-01", "00:00:00", "5.00s", "0/2",
                           "1", "errored", "·", "1", "queued"]


def test_runs_json_and_empty_list():
    """--json prints daggyd's list; no runs prints a hint on stderr."""
    daggyd = FakeDaggyd()
    assert json.loads(invoke(["runs", "--json"], daggyd).stdout)[0]["runID"] == 3
    daggyd.overrides[("GET", "/v1/dagruns")] = httpx.Response(200, json=[])
    result = invoke(["runs"], daggyd)
    assert result.exit_code == 0 and result.stdout == ""
    assert result.stderr == "no unfinished runs (--all lists every run)\n"


def test_show_prints_tasks_with_states_attempts_and_durations():
    """The table lists each task (names with brackets printed literally), its state,
    attempts with failures, the last attempt's duration and outcome."""
    result = invoke(["show", "3"], FakeDaggyd())
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["run", "3", "ERRORED", "tag", "nightly"]
    assert "parameters DATE=[\"2021-01-01\"], DIR=/tmp" in result.stdout
    [pull] = [line for line in lines if line.startswith(TASK)]
    assert pull.split()[1:] == ["ERRORED", "2", "(2", "failed)", "0.25s", "exited", "with",
                                "code", "1"]
    [report] = [line for line in lines if line.startswith("report")]
    assert report.split() == ["report", "QUEUED", "0", "-"]


def test_show_gives_a_running_task_the_time_since_it_started():
    """A RUNNING task's duration is the time since its latest RUNNING state change."""
    daggyd = FakeDaggyd()
    daggyd.run["taskStates"]["report"] = "RUNNING"
    daggyd.run["taskStateChanges"]["report"] = [
        {"time": "2021-01-01T00:00:00.000000Z", "state": "QUEUED"},
        {"time": "2021-01-01T00:00:05.000000Z", "state": "RUNNING"}]
    result = invoke(["show", "3"], daggyd)
    [report] = [line for line in result.stdout.splitlines() if line.startswith("report")]
    assert report.split()[:3] == ["report", "RUNNING", "0"]
    assert report.split()[3].endswith("m"), "years since 2021, shown in hours and minutes"


def test_show_tree_groups_instances_and_filters_by_state():
    """--tree groups instances under their defined task; --state keeps only those tasks."""
    result = invoke(["show", "3", "--tree"], FakeDaggyd())
    assert result.exit_code == 0
    assert "pull  1 errored" in result.stdout and f"{TASK}  ERRORED  2 attempts" in result.stdout
    assert "after pull" in result.stdout
    only = invoke(["show", "3", "--state", "queued"], FakeDaggyd())
    assert "report" in only.stdout and TASK not in only.stdout


def test_show_json_is_the_full_run():
    """--json prints daggyd's full run document."""
    assert json.loads(invoke(["show", "3", "--json"], FakeDaggyd()).stdout) == RUN


def test_logs_prints_the_chosen_attempts_output_verbatim():
    """logs prints the last attempt by default, --attempt N the Nth (1-based, or negative
    from the end), --stderr its standard error; the task name is percent-encoded."""
    daggyd = FakeDaggyd()
    assert invoke(["logs", "3", TASK], daggyd).stdout == "second out\n"
    assert daggyd.last().url.raw_path.decode() == f"/v1/dagrun/3/task/{TASK_SEGMENT}"
    assert invoke(["logs", "3", TASK, "--attempt", "1"], daggyd).stdout == "first out\n"
    assert invoke(["logs", "3", TASK, "-a", "-2", "--stderr"], daggyd).stdout == "first err\n"
    as_json = json.loads(invoke(["logs", "3", TASK, "-a", "1", "--json"], daggyd).stdout)
    assert (as_json["attemptNumber"], as_json["attemptCount"]) == (1, 2)
    assert as_json["attempt"]["outputLog"] == "first out\n"


def test_logs_of_a_missing_attempt_exits_5():
    """An attempt number beyond the attempts made is exit 5 saying how many there are."""
    result = invoke(["logs", "3", TASK, "--attempt", "3"], FakeDaggyd())
    assert result.exit_code == 5
    assert result.stderr == f"daggyc: task {TASK!r} of run 3 has 2 attempts; there is no attempt 3\n"


# -- operations --------------------------------------------------------------------------------


@pytest.mark.parametrize("args, method, path, printed", [
    (["kill", "3"], "DELETE", "/v1/dagrun/3", "run 3 KILLED"),
    (["resume", "3"], "PATCH", "/v1/dagrun/3/state/QUEUED", "run 3 QUEUED (resumed)"),
    (["kill", "3", TASK], "PATCH", f"/v1/dagrun/3/task/{TASK_SEGMENT}/state/KILLED",
     f"task {TASK} of run 3 KILLED"),
    (["rerun", "3", TASK], "PATCH", f"/v1/dagrun/3/task/{TASK_SEGMENT}/state/QUEUED",
     f"task {TASK} of run 3 QUEUED (queued to run again)"),
    (["complete", "3", TASK], "PATCH", f"/v1/dagrun/3/task/{TASK_SEGMENT}/state/COMPLETED",
     f"task {TASK} of run 3 COMPLETED (marked done)"),
])
def test_operations_send_the_right_request(args, method, path, printed):
    """kill, resume, rerun and complete each make one request and print its outcome."""
    daggyd = FakeDaggyd()
    result = invoke(args, daggyd)
    assert result.exit_code == 0, result.output
    assert (daggyd.last().method, daggyd.last().url.raw_path.decode()) == (method, path)
    assert result.stdout == printed + "\n"
    assert json.loads(invoke([*args, "--json"], daggyd).stdout)["runID"] == 3


# -- follow ----------------------------------------------------------------------------------


@pytest.mark.parametrize("final, code", [("COMPLETED", 0), ("ERRORED", 1), ("KILLED", 1)])
def test_follow_exit_code_is_0_only_for_completed(final, code):
    """follow exits 0 when the run ends COMPLETED, 1 when it ends ERRORED or KILLED."""
    daggyd = FakeDaggyd()
    daggyd.run["state"] = final
    result = invoke(["follow", "3"], daggyd)
    assert result.exit_code == code, result.output
    assert result.stdout.splitlines()[-1].startswith(f"run 3 {final} in 5.00s: ")


def test_submit_follow_json_prints_the_id_then_events_then_the_end(spec_file):
    """submit --follow --json: the run ID object, then one line per event, then the final
    state object."""
    daggyd = FakeDaggyd()
    daggyd.run["state"] = "RUNNING"
    daggyd.run["taskStates"] = {TASK: "RUNNING", "report": "QUEUED"}
    daggyd.run["taskAttempts"] = {TASK: [], "report": []}
    polls = []

    def handler(request):
        if request.url.path == "/v1/dagrun/3/state":
            polls.append(request)
            if len(polls) == 3:
                daggyd.run.update(state="COMPLETED", taskCounts=counts(completed=2),
                                  taskStates={TASK: "COMPLETED", "report": "COMPLETED"})
        return daggyd(request)

    result = invoke(["submit", spec_file, "--follow", "--json"], handler)
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert lines[0] == {"runID": 3}
    assert [(e["event"], e.get("task"), e["state"]) for e in lines[1:-1]] == [
        ("taskState", TASK, "COMPLETED"), ("taskState", "report", "COMPLETED"),
        ("runState", None, "COMPLETED")]
    assert lines[-1] == {"runID": 3, "state": "COMPLETED", "taskCounts": counts(completed=2)}
