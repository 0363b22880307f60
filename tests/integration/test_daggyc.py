"""daggyc as a subprocess against real daggyd processes (ForkingTaskExecutor, real
commands): submit YAML with -p, follow to the end with the right exit code, logs of a
retried task by attempt, kill/resume/rerun/complete, auth, an unreachable daemon, and
`daggyc follow` on a pseudo-terminal."""

from __future__ import annotations

import errno
import json
import os
import re
import select
import subprocess
import time
from pathlib import Path

import pytest

from daemon_harness import BIN, Daemon, Process, daggyd, free_port, wait_until
from test_auth_tls import write_certificate, write_tls_config
from test_metrics_daemon import by_label, scrape

pytestmark = pytest.mark.integration

DAGGYC = BIN / "daggyc"
TOKEN = "daggyc-test-token-0123456789"
COMMAND_SECONDS = 90
#: How daggyc prints a duration (0.25s, 12.3s, 4m05s).
DURATION = r"[0-9.hms]+"
#: CSI sequences (colours, cursor moves) and other escapes rich writes on a terminal.
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")


def daggyc(*args: str, url: str | None, token: str | None = None, cwd: Path | None = None,
           input: str | None = None) -> subprocess.CompletedProcess:
    assert DAGGYC.exists(), f"{DAGGYC} is missing; install daggy (pip install -e '.[test]')"
    env = {key: value for key, value in os.environ.items() if not key.startswith("DAGGY_")}
    if url is not None:
        env["DAGGY_URL"] = url
    if token is not None:
        env["DAGGY_TOKEN"] = token
    env["COLUMNS"] = "120"
    return subprocess.run([str(DAGGYC), *args], cwd=cwd, env=env, input=input,
                          capture_output=True, text=True, timeout=COMMAND_SECONDS)


def url_of(daemon: Daemon) -> str:
    return f"http://127.0.0.1:{daemon.port}"


@pytest.fixture(scope="module")
def daemon(daemons) -> Daemon:
    return daemons("daggyd", executor="ForkingTaskExecutor")


@pytest.fixture(scope="module")
def auth_daemon(daemons) -> Daemon:
    return daemons("daggyd", executor="ForkingTaskExecutor", auth_tokens=[TOKEN])


def run(daemon: Daemon, *args: str, **options) -> subprocess.CompletedProcess:
    return daggyc(*args, url=url_of(daemon), **options)


def write_spec(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text)
    return path


def submitted_id(result: subprocess.CompletedProcess) -> int:
    return int(result.stdout.splitlines()[0])


PARAMETERISED = """\
tag: from-yaml
parameters:
  DAY: [2021-01-01]
  GREETING: hello
tasks:
  greet:
    job: {command: [sh, -c, 'echo "{{GREETING}} {{DAY}}"']}
  summary:
    job: {command: [echo, done]}
    parents: [greet]
"""


def test_submit_yaml_with_parameters_and_follow_to_completed(daemon, tmp_path):
    """submit -p sets list and string parameters (a value with commas stays one), --follow
    shows the run to its end and exits 0 because it COMPLETED."""
    spec = write_spec(tmp_path, "spec.yaml", PARAMETERISED)
    result = run(daemon, "submit", str(spec), "-p", "DAY=2021-02-01", "-p", "DAY=2021-02-02",
                 "-p", "GREETING=hi, there", "--follow")
    assert result.returncode == 0, result.stderr
    run_id = submitted_id(result)
    assert re.fullmatch(rf"run {run_id} COMPLETED in {DURATION}: 3 completed",
                        result.stdout.splitlines()[-1])
    record = daemon.run(run_id)
    assert record["tag"] == "from-yaml"
    assert sorted(record["taskStates"]) == ["greet[DAY=2021-02-01]", "greet[DAY=2021-02-02]",
                                            "summary"]
    assert record["taskAttempts"]["greet[DAY=2021-02-02]"][0]["outputLog"] == \
        "hi, there 2021-02-02\n"
    logs = run(daemon, "logs", str(run_id), "greet[DAY=2021-02-01]")
    assert (logs.returncode, logs.stdout) == (0, "hi, there 2021-02-01\n")


def test_follow_of_an_errored_run_exits_1_and_reports_the_failure(daemon, tmp_path):
    """A run that ends ERRORED: follow reports the failed attempt and exits 1."""
    spec = write_spec(tmp_path, "bad.yaml", """\
tasks:
  ok: {job: {command: ["true"]}}
  broken: {job: {command: [sh, -c, "echo oops >&2; exit 3"]}}
  after: {job: {command: ["true"]}, parents: [broken]}
""")
    result = run(daemon, "submit", str(spec), "--follow")
    assert result.returncode == 1, result.stderr
    run_id = submitted_id(result)
    lines = result.stdout.splitlines()
    assert "✗ broken attempt 1 failed: exited with code 3" in lines
    assert "✗ broken ERRORED" in lines
    assert re.fullmatch(rf"run {run_id} ERRORED in {DURATION}: 1 completed · 1 errored · "
                        r"1 queued", lines[-1])
    again = run(daemon, "follow", str(run_id))
    assert again.returncode == 1
    assert run(daemon, "logs", str(run_id), "broken", "--stderr").stdout == "oops\n"


def test_logs_of_a_retried_task_by_attempt(daemon, tmp_path):
    """A task that fails once and succeeds on its retry: logs --attempt N shows each
    attempt's stdout and stderr; a third attempt does not exist (exit 5)."""
    work = tmp_path / "work"
    work.mkdir()
    spec = write_spec(tmp_path, "retry.json", json.dumps({"tasks": {"flaky": {
        "job": {"command": ["sh", "-c", "if [ -e marker ]; then echo second; else "
                            "touch marker; echo first; echo first-err >&2; exit 1; fi"],
                "workDir": str(work)},
        "maxRetries": 2}}}))
    result = run(daemon, "submit", str(spec), "--follow")
    assert result.returncode == 0, result.stdout + result.stderr
    run_id = str(submitted_id(result))
    assert "✗ flaky attempt 1 failed: exited with code 1" in result.stdout
    assert run(daemon, "logs", run_id, "flaky", "--attempt", "1").stdout == "first\n"
    assert run(daemon, "logs", run_id, "flaky", "--attempt", "1", "--stderr").stdout == \
        "first-err\n"
    assert run(daemon, "logs", run_id, "flaky", "--attempt", "2").stdout == "second\n"
    assert run(daemon, "logs", run_id, "flaky").stdout == "second\n"
    missing = run(daemon, "logs", run_id, "flaky", "--attempt", "3")
    assert missing.returncode == 5
    assert missing.stderr == (f"daggyc: task 'flaky' of run {run_id} has 2 attempts; there "
                              "is no attempt 3\n")
    shown = run(daemon, "show", run_id)
    [row] = [line for line in shown.stdout.splitlines() if line.startswith("flaky")]
    assert row.split()[:4] == ["flaky", "COMPLETED", "2", "(1"]


def test_follow_reads_the_event_stream_not_polls(daemons, tmp_path):
    """follow of a run that takes a few seconds reads GET /v1/events (one stream, counted in
    the daemon's /metrics) instead of polling the run every half second."""
    own = daemons("daggyd", executor="ForkingTaskExecutor")
    spec = write_spec(tmp_path, "slow.yaml", """\
tasks:
  first: {job: {command: [sleep, "1.5"]}}
  second: {job: {command: [sleep, "1.5"]}, parents: [first]}
""")
    result = run(own, "submit", str(spec), "--follow")
    assert result.returncode == 0, result.stdout + result.stderr
    samples = scrape(own.port)
    assert by_label(samples, "daggy_http_requests_total", "code", route="/v1/events") == {
        "200": 1}
    polls = by_label(samples, "daggy_http_requests_total", "route", method="GET")
    # Polling would have fetched the run about six times in three seconds.
    assert polls.get("/v1/dagrun/{runID}", 0) + polls.get("/v1/dagrun/{runID}/state", 0) <= 3


def test_kill_then_resume(daemon, tmp_path):
    """kill ends a running run KILLED (killing it again is refused, exit 1); resume
    queues it again and it completes."""
    gate = tmp_path / "go"
    spec = write_spec(tmp_path, "wait.yaml", f"""\
tasks:
  wait: {{job: {{command: [sh, -c, 'test -e {gate} || sleep 60']}}}}
  after: {{job: {{command: ["true"]}}, parents: [wait]}}
""")
    run_id = submitted_id(run(daemon, "submit", str(spec)))
    daemon.wait_task(run_id, "wait", "RUNNING")
    killed = run(daemon, "kill", str(run_id))
    assert (killed.returncode, killed.stdout) == (0, f"run {run_id} KILLED\n")
    assert daemon.wait_run(run_id)["state"] == "KILLED"
    again = run(daemon, "kill", str(run_id))
    assert again.returncode == 1 and again.stderr.startswith("daggyc: run ")
    followed = run(daemon, "follow", str(run_id))
    assert followed.returncode == 1
    assert followed.stdout.splitlines()[-1].startswith(f"run {run_id} KILLED")
    gate.touch()
    resumed = run(daemon, "resume", str(run_id), "--follow")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert resumed.stdout.splitlines()[0] == f"run {run_id} QUEUED (resumed)"
    assert daemon.run(run_id)["taskStates"] == {"wait": "COMPLETED", "after": "COMPLETED"}


def test_kill_one_task_rerun_it_and_complete_another(daemon, tmp_path):
    """kill RUN TASK, rerun RUN TASK and complete RUN TASK act on one task each (names
    with brackets and slashes percent-encoded), and the run ends as they say."""
    gate = tmp_path / "go"
    spec = write_spec(tmp_path, "ops.yaml", f"""\
parameters: {{DIR: [/tmp/a]}}
tasks:
  slow: {{job: {{command: [sh, -c, 'test -e {gate} || sleep 60; echo {{{{DIR}}}}']}}}}
  broken: {{job: {{command: ["false"]}}}}
  child: {{job: {{command: [echo, child ran]}}, parents: [broken]}}
""")
    run_id = str(submitted_id(run(daemon, "submit", str(spec))))
    slow = "slow[DIR=/tmp/a]"
    daemon.wait_task(int(run_id), slow, "RUNNING")
    killed = run(daemon, "kill", run_id, slow)
    assert (killed.returncode, killed.stdout) == (0, f"task {slow} of run {run_id} KILLED\n")
    assert daemon.wait_run(int(run_id))["state"] == "ERRORED"
    gate.touch()
    rerun = run(daemon, "rerun", run_id, slow)
    assert rerun.returncode == 0, rerun.stderr
    assert daemon.wait_task(int(run_id), slow, "COMPLETED")["attempts"][-1]["outputLog"] == \
        "/tmp/a\n"
    completed = run(daemon, "complete", run_id, "broken")
    assert completed.stdout == f"task broken of run {run_id} COMPLETED (marked done)\n"
    followed = run(daemon, "follow", run_id)
    assert followed.returncode == 0, followed.stdout + followed.stderr
    assert run(daemon, "logs", run_id, "child").stdout == "child ran\n"
    unknown = run(daemon, "rerun", run_id, "nope")
    assert unknown.returncode == 5
    assert unknown.stderr == f"daggyc: run {run_id} has no task named 'nope'\n"


def test_runs_and_show_list_what_the_daemon_has(daemon, tmp_path):
    """runs --all --tag lists the tagged runs; show --json is the daemon's full run; an
    unknown run is exit 5."""
    spec = write_spec(tmp_path, "tagged.yaml", "tasks: {a: {job: {command: ['true']}}}\n")
    result = run(daemon, "submit", str(spec), "--tag", "listed-by-tag", "--follow")
    run_id = submitted_id(result)
    listed = run(daemon, "runs", "--all", "--tag", "listed-by-tag", "--json")
    assert [entry["runID"] for entry in json.loads(listed.stdout)] == [run_id]
    table = run(daemon, "runs", "--state", "completed", "--tag", "listed-by-tag")
    assert table.stdout.splitlines()[1].split()[:3] == [str(run_id), "listed-by-tag",
                                                        "COMPLETED"]
    assert json.loads(run(daemon, "show", str(run_id), "--json").stdout) == \
        daemon.run(run_id)
    missing = run(daemon, "show", "999999")
    assert (missing.returncode, missing.stderr) == (5, "daggyc: no such run: 999999\n")


def test_validate_offline_agrees_with_the_daemon(daemon, tmp_path):
    """validate without a daemon and validate --server give the same tasks; an invalid
    spec is exit 6 listing each error with its path, offline and from submit alike."""
    spec = write_spec(tmp_path, "spec.yaml", PARAMETERISED)
    offline = daggyc("validate", str(spec), "-p", "DAY=d1", "-p", "DAY=d2", url="http://127.0.0.1:9")
    server = run(daemon, "validate", str(spec), "-p", "DAY=d1", "-p", "DAY=d2", "--server")
    assert offline.returncode == server.returncode == 0
    assert offline.stdout == server.stdout == "greet[DAY=d1]\ngreet[DAY=d2]\nsummary\n"
    bad = write_spec(tmp_path, "bad.yaml",
                     "tasks:\n  a: {job: {command: []}}\n  b: {job: {command: [x]}, parents: [c]}\n")
    expected = ["  tasks.a.job.command: must be a non-empty list of strings",
                "  tasks.b.parents[0]: unknown task 'c'"]
    checked = daggyc("validate", str(bad), url=None)
    assert checked.returncode == 6 and checked.stderr.splitlines()[1:] == expected
    submitted = run(daemon, "submit", str(bad))
    assert submitted.returncode == 6
    assert submitted.stderr.splitlines() == ["daggyc: invalid spec (2 errors):", *expected]


def test_auth_with_daggy_token(auth_daemon, tmp_path):
    """With auth on: no token is exit 4 with a hint, a wrong one exit 4 without echoing it,
    DAGGY_TOKEN works for every request including following."""
    spec = write_spec(tmp_path, "spec.yaml", "tasks: {a: {job: {command: ['true']}}}\n")
    missing = run(auth_daemon, "submit", str(spec))
    assert missing.returncode == 4
    assert missing.stderr == ("daggyc: daggyd requires a bearer token: set DAGGY_TOKEN or "
                              "pass --token\n")
    wrong = run(auth_daemon, "runs", "--token", "wrong-token-000000000000")
    assert wrong.returncode == 4 and "wrong-token" not in wrong.stderr
    followed = run(auth_daemon, "submit", str(spec), "--follow", token=TOKEN)
    assert followed.returncode == 0, followed.stderr
    shown = run(auth_daemon, "runs", "--all", "--json", token=TOKEN)
    assert json.loads(shown.stdout)[-1]["state"] == "COMPLETED"


def test_unreachable_daemon_exits_3(tmp_path):
    """Nothing listening at DAGGY_URL: one line naming the URL, exit 3."""
    url = f"http://127.0.0.1:{free_port()}"
    result = daggyc("runs", url=url)
    assert result.returncode == 3
    assert result.stderr == f"daggyc: cannot reach daggyd at {url}: Connection refused\n"
    spec = write_spec(tmp_path, "spec.yaml", "tasks: {a: {job: {command: ['true']}}}\n")
    assert daggyc("submit", str(spec), url=url).returncode == 3


def test_unix_socket_url(tmp_path):
    """DAGGY_URL=unix:/path talks to a daggyd listening on a unix socket."""
    socket_path = tmp_path / "api.sock"
    config = tmp_path / "daggyd.json"
    config.write_text(json.dumps({
        "listen": f"unix:{socket_path}:mode=600",
        "executor": {"name": "ForkingTaskExecutor"},
        "logger": {"name": "OStreamLogger", "config": {"file": "events.jsonl"}}}))
    process = Process(daggyd("--config", str(config)), tmp_path)
    try:
        url = f"unix:{socket_path}"
        wait_until(lambda: daggyc("runs", url=url).returncode == 0
                   or process.popen.poll() is not None, "daggyd to answer on its unix socket")
        assert process.popen.poll() is None, process.err
        spec = write_spec(tmp_path, "spec.yaml", "tasks: {a: {job: {command: [echo, sock]}}}\n")
        result = daggyc("submit", str(spec), "--follow", url=url)
        assert result.returncode == 0, result.stderr
        assert daggyc("logs", str(submitted_id(result)), "a", url=url).stdout == "sock\n"
    finally:
        process.popen.terminate()
        process.wait()


def test_https_with_a_ca_file(tmp_path):
    """An https:// URL works with --ca-cert naming the daemon's certificate, and fails
    (exit 3, naming the verification error) without it."""
    key, cert = write_certificate(tmp_path)
    port = free_port()
    config = write_tls_config(tmp_path, port, key, cert, **{"auth-tokens": [TOKEN]})
    process = Process(daggyd("--config", str(config)), tmp_path)
    url = f"https://localhost:{port}"
    try:
        wait_until(lambda: daggyc("runs", "--ca-cert", str(cert), url=url, token=TOKEN
                                  ).returncode == 0 or process.popen.poll() is not None,
                   "daggyd to answer over HTTPS")
        assert process.popen.poll() is None, process.err
        spec = write_spec(tmp_path, "spec.yaml", "tasks: {a: {job: {command: [x]}}}\n")
        result = daggyc("submit", str(spec), "--follow", "--ca-cert", str(cert), url=url,
                        token=TOKEN)
        assert result.returncode == 0, result.stderr
        untrusted = daggyc("runs", url=url, token=TOKEN)
        assert untrusted.returncode == 3
        assert "CERTIFICATE_VERIFY_FAILED" in untrusted.stderr
    finally:
        process.popen.terminate()
        process.wait()


# -- on a terminal -------------------------------------------------------------------------


def run_on_pty(argv: list[str], env: dict[str, str], seconds: float) -> tuple[int, str]:
    """Run ``argv`` with a pseudo-terminal as its stdin, stdout and stderr; returns its
    exit status and everything it wrote."""
    master, slave = os.openpty()
    try:
        process = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env,
                                   close_fds=True)
    finally:
        os.close(slave)
    chunks = []
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if not ready:
                continue
            try:
                data = os.read(master, 65536)
            except OSError as error:
                if error.errno == errno.EIO:  # the child closed its side: it has exited
                    break
                raise
            if not data:
                break
            chunks.append(data)
        else:
            process.kill()
            raise AssertionError(f"{argv} did not end within {seconds} s")
        return process.wait(timeout=seconds), b"".join(chunks).decode("utf-8", "replace")
    finally:
        os.close(master)
        if process.poll() is None:
            process.kill()


@pytest.mark.parametrize("mode", [[], ["--poll"]], ids=["default", "poll"])
def test_follow_on_a_terminal_shows_live_progress(daemon, tmp_path, mode):
    """On a terminal, follow redraws a progress bar in place with the completed/total count,
    every state's count and the tasks running now, prints failures above it, and ends with
    the summary line (exit 1: one task ERRORED)."""
    spec = write_spec(tmp_path, "slow.yaml", """\
parameters: {N: ["1", "2", "3"]}
tasks:
  work: {job: {command: [sleep, "2"]}}
  fan: {job: {command: [sh, -c, "sleep 1; echo {{N}}"]}}
  bad: {job: {command: [sh, -c, "sleep 1; exit 4"]}}
""")
    run_id = submitted_id(run(daemon, "submit", str(spec)))
    env = {key: value for key, value in os.environ.items() if not key.startswith("DAGGY_")}
    env.update(DAGGY_URL=url_of(daemon), TERM="xterm-256color", COLUMNS="100", LINES="30")
    env.pop("NO_COLOR", None)
    status, output = run_on_pty([str(DAGGYC), "follow", str(run_id), *mode], env,
                                COMMAND_SECONDS)
    assert status == 1, output
    assert "\x1b[" in output, "coloured, terminal output"
    assert "\x1b[1A" in output or "\x1b[2K" in output, "the display is redrawn in place"
    text = ANSI.sub("", output).replace("\r", "\n")
    assert "━" in text, "a progress bar"
    assert re.search(rf"run {run_id} RUNNING .* [0-4]/5 tasks {DURATION}", text), text
    assert re.search(r"\d completed · \d running · 0 retry · [01] errored · 0 killed · "
                     r"\d queued", text), text
    assert re.search(r"running: (work|fan\[N=\d\])", text), text
    assert "✗ bad attempt 1 failed: exited with code 4" in text
    assert "4/5 tasks" in text
    assert re.fullmatch(rf"run {run_id} ERRORED in {DURATION}: 4 completed · 1 errored",
                        text.rstrip().splitlines()[-1])
