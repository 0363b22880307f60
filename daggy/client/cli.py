# -*- test-case-name: tests.unit.test_daggyc_cli -*-
"""The ``daggyc`` console script (docs/client.md): click commands over
:class:`~daggy.client.http.DaggyClient`, rich output, documented exit codes
(:class:`~daggy.client.errors.ExitCode`).

``--url``, ``--token``, ``--token-file``, ``--timeout``, ``--ca-cert`` and ``--json`` are
accepted before the command and after it (``daggyc --json runs`` = ``daggyc runs --json``).
Tests pass ``obj={"transport": ..., "sleep": ..., "clock": ...}`` to click's runner to talk
to an :class:`httpx.MockTransport` without real time.
"""

from __future__ import annotations

import json
import os
import ssl
import sys
import time
from typing import Any, Callable

import click
from rich.console import Console
from rich.text import Text

from daggy.client.errors import DaggycError, ExitCode, NotFound, SpecRejected
from daggy.client.follow import DEFAULT_GIVE_UP_SECONDS, Follower, make_view
from daggy.client.http import DEFAULT_TIMEOUT_SECONDS, DEFAULT_URL, DaggyClient
from daggy.client.offline import DEFAULT_EXECUTOR, executor_name, validate_offline
from daggy.client.render import run_header, runs_table, tasks_table, tasks_tree
from daggy.client.specfile import apply_overrides, parse_parameter_options, read_spec_file
from daggy.errors import SpecInvalid

STATE_NAMES = ("QUEUED", "RUNNING", "RETRY", "ERRORED", "KILLED", "COMPLETED")
CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


# -- shared options ----------------------------------------------------------------------------


def _remember(key: str) -> Callable[[click.Context, click.Parameter, Any], None]:
    """Store an option given before or after the command; the later one wins."""

    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> None:
        if value is not None and value is not False:
            ctx.ensure_object(dict)[key] = value

    return callback


def connection_options(command: Callable) -> Callable:
    options = [
        click.option("--url", metavar="URL", expose_value=False, callback=_remember("url"),
                     help=f"daggyd's address: http(s)://HOST:PORT or unix:/PATH "
                          f"[env DAGGY_URL; default {DEFAULT_URL}]"),
        click.option("--token", metavar="TOKEN", expose_value=False,
                     callback=_remember("token"),
                     help="bearer token when daggyd requires one [env DAGGY_TOKEN]"),
        click.option("--token-file", metavar="FILE", expose_value=False,
                     callback=_remember("token_file"),
                     help="read the token from FILE (first line that is not blank or a "
                          "# comment) [env DAGGY_TOKEN_FILE]"),
        click.option("--timeout", type=click.FloatRange(min=0, min_open=True),
                     metavar="SECONDS", expose_value=False, callback=_remember("timeout"),
                     help=f"seconds to wait for daggyd [default {DEFAULT_TIMEOUT_SECONDS:g}]"),
        click.option("--ca-cert", metavar="FILE", expose_value=False,
                     callback=_remember("ca_cert"),
                     help="trust this CA file for https:// URLs [env DAGGY_CA_CERT]"),
    ]
    for option in reversed(options):
        command = option(command)
    return json_option(command)


def json_option(command: Callable) -> Callable:
    return click.option("--json", "as_json_flag", is_flag=True, expose_value=False,
                        callback=_remember("json"),
                        help="print JSON for scripts instead of tables")(command)


def _settings(ctx: click.Context) -> dict[str, Any]:
    return ctx.ensure_object(dict)


def _as_json(ctx: click.Context) -> bool:
    return bool(_settings(ctx).get("json"))


def _read_token_file(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as token_file:
            lines = token_file.read().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or str(error)
        raise DaggycError(f"cannot read the token file {path}: {reason}", ExitCode.USAGE) from None
    for line in lines:
        if line.strip() and not line.strip().startswith("#"):
            return line.strip()
    raise DaggycError(f"the token file {path} holds no token", ExitCode.USAGE)


def _token(settings: dict[str, Any]) -> str | None:
    if settings.get("token"):
        return settings["token"].strip()
    if settings.get("token_file"):
        return _read_token_file(settings["token_file"])
    if os.environ.get("DAGGY_TOKEN", "").strip():
        return os.environ["DAGGY_TOKEN"].strip()
    if os.environ.get("DAGGY_TOKEN_FILE"):
        return _read_token_file(os.environ["DAGGY_TOKEN_FILE"])
    return None


def make_client(ctx: click.Context) -> DaggyClient:
    settings = _settings(ctx)
    url = settings.get("url") or os.environ.get("DAGGY_URL") or DEFAULT_URL
    ca_cert = settings.get("ca_cert") or os.environ.get("DAGGY_CA_CERT")
    verify: ssl.SSLContext | bool = True
    if ca_cert:
        try:
            verify = ssl.create_default_context(cafile=ca_cert)
        except (OSError, ssl.SSLError) as error:
            reason = getattr(error, "strerror", None) or str(error)
            raise DaggycError(f"cannot use the CA file {ca_cert}: {reason}",
                              ExitCode.USAGE) from None
    try:
        client = DaggyClient(url, _token(settings),
                             timeout=settings.get("timeout", DEFAULT_TIMEOUT_SECONDS),
                             verify=verify, transport=settings.get("transport"))
    except ValueError as error:
        raise DaggycError(f"--url/DAGGY_URL: {error}", ExitCode.USAGE) from None
    ctx.call_on_close(client.close)
    return client


def console() -> Console:
    return Console(highlight=False)


def _print_json(document: Any) -> None:
    click.echo(json.dumps(document, indent=2, ensure_ascii=False))


def _note(message: str) -> None:
    click.echo(message, err=True)


# -- the group -------------------------------------------------------------------------------


class DaggycGroup(click.Group):
    """Turns Ctrl-C into exit code 130 and a closed stdout (``| head``) into a quiet exit."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            raise DaggycError("interrupted", ExitCode.INTERRUPTED) from None
        except BrokenPipeError:
            # Python would complain again when flushing stdout at exit.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            ctx.exit(ExitCode.FAILED)


@click.group(cls=DaggycGroup, context_settings=CONTEXT_SETTINGS)
@connection_options
@click.version_option(package_name="daggy", prog_name="daggyc")
def cli() -> None:
    """daggyc: submit, follow and control daggyd's DAG runs.

    Exit codes: 0 ok; 1 the run did not end COMPLETED, or daggyd refused the operation;
    2 usage; 3 daggyd unreachable; 4 authentication (401); 5 no such run, task or
    attempt; 6 invalid spec; 7 daggyd busy or shutting down (429/503), try later;
    130 interrupted.  See docs/client.md.
    """


def _load_spec(spec_file: str, parameter_options: tuple[str, ...], tag: str | None
               ) -> tuple[Any, str]:
    try:
        parameters = parse_parameter_options(parameter_options)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="'-p'") from None
    spec, name = read_spec_file(spec_file)
    return apply_overrides(spec, parameters, tag), name


spec_file_argument = click.argument("spec_file", metavar="FILE",
                                    type=click.Path(dir_okay=False, allow_dash=True))
parameter_option = click.option(
    "-p", "--param", "parameters", multiple=True, metavar="NAME=VALUE",
    help="set parameter NAME (overrides the spec's); repeat a NAME to make a list")
tag_option = click.option("--tag", metavar="TAG", help="set the run's tag")


def _follow(ctx: click.Context, client: DaggyClient, run_id: int, poll: bool,
            report_earlier: bool = True) -> None:
    settings = _settings(ctx)
    view = make_view(console(), _as_json(ctx))
    follower = Follower(client, run_id, view, poll=poll, report_earlier=report_earlier,
                        sleep=settings.get("sleep") or time.sleep,
                        clock=settings.get("clock") or time.monotonic,
                        give_up_seconds=settings.get("give_up_seconds",
                                                     DEFAULT_GIVE_UP_SECONDS))
    state = follower.follow()
    ctx.exit(ExitCode.OK if state == "COMPLETED" else ExitCode.FAILED)


follow_flag = click.option("--follow", "-f", "follow", is_flag=True,
                           help="then follow the run until it ends (exit 0 only if COMPLETED)")
poll_flag = click.option("--poll", is_flag=True,
                         help="poll the run instead of using daggyd's event stream")


# -- commands --------------------------------------------------------------------------------


@cli.command()
@spec_file_argument
@parameter_option
@tag_option
@follow_flag
@poll_flag
@connection_options
@click.pass_context
def submit(ctx: click.Context, spec_file: str, parameters: tuple[str, ...], tag: str | None,
           follow: bool, poll: bool) -> None:
    """Submit the run spec in FILE (JSON or YAML; - reads stdin) and print its run ID."""
    spec, _ = _load_spec(spec_file, parameters, tag)
    client = make_client(ctx)
    run_id = client.submit(spec)
    if _as_json(ctx):
        click.echo(json.dumps({"runID": run_id}))
    else:
        click.echo(run_id)
    if follow:
        _follow(ctx, client, run_id, poll)


@cli.command()
@spec_file_argument
@parameter_option
@tag_option
@click.option("--server", is_flag=True,
              help="ask daggyd (its executor, secrets and limits) instead of checking offline")
@click.option("--executor", "executor", metavar="NAME", default=DEFAULT_EXECUTOR,
              show_default=True,
              help="offline: the executor whose job format to check "
                   "(ForkingTaskExecutor, SlurmTaskExecutor, NoopTaskExecutor, or forking, "
                   "slurm, noop)")
@connection_options
@click.pass_context
def validate(ctx: click.Context, spec_file: str, parameters: tuple[str, ...],
             tag: str | None, server: bool, executor: str) -> None:
    """Check the run spec in FILE and print the tasks it expands to, one per line.

    Offline by default, with daggyd's own parser and the executor's job checks (no daemon
    needed; secretEnvironment names are not looked up).  Invalid: every error with its path
    on stderr, exit code 6.
    """
    spec, name = _load_spec(spec_file, parameters, tag)
    if server:
        checked_by = "daggyd"
        try:
            tasks = make_client(ctx).validate(spec)
        except SpecRejected as error:
            _report_invalid(ctx, name, error.errors or [error.message], checked_by)
    else:
        try:
            executor = executor_name(executor)
        except ValueError as error:
            raise click.BadParameter(str(error), param_hint="'--executor'") from None
        checked_by = f"offline, {executor}"
        try:
            tasks = [task.name for task in validate_offline(spec, executor)]
        except SpecInvalid as error:
            _report_invalid(ctx, name, error.errors, checked_by)
    if _as_json(ctx):
        _print_json({"valid": True, "tasks": tasks})
        return
    _note(f"{name}: valid ({checked_by}): {len(tasks)} task{'s' if len(tasks) != 1 else ''}")
    for task in tasks:
        click.echo(task)


def _report_invalid(ctx: click.Context, name: str, errors: list[str], checked_by: str) -> None:
    if _as_json(ctx):
        _print_json({"valid": False, "errors": errors})
        ctx.exit(ExitCode.INVALID_SPEC)
    count = len(errors)
    raise SpecRejected(f"{name}: invalid spec ({checked_by}), {count} error"
                       f"{'s' if count != 1 else ''}:", errors)


state_choice = click.Choice(STATE_NAMES, case_sensitive=False)


@cli.command()
@click.option("--all", "all_runs", is_flag=True, help="include finished runs")
@click.option("--tag", metavar="TAG", help="only runs with this tag")
@click.option("--state", type=state_choice, help="only runs in this state (finished included)")
@connection_options
@click.pass_context
def runs(ctx: click.Context, all_runs: bool, tag: str | None, state: str | None) -> None:
    """List runs: by default those not finished yet."""
    found = make_client(ctx).list_runs(all_runs, tag, state.upper() if state else None)
    if _as_json(ctx):
        _print_json(found)
        return
    if not found:
        _note("no runs" if all_runs or state else "no unfinished runs (--all lists every run)")
        return
    console().print(runs_table(found))


run_argument = click.argument("run_id", metavar="RUN", type=click.IntRange(min=0))
task_argument = click.argument("task", metavar="TASK")


@cli.command()
@run_argument
@click.option("--tree", is_flag=True, help="group tasks under their defined name")
@click.option("--state", "states", type=state_choice, multiple=True,
              help="only tasks in this state (repeatable)")
@connection_options
@click.pass_context
def show(ctx: click.Context, run_id: int, tree: bool, states: tuple[str, ...]) -> None:
    """Show a run: its state, and every task with its state, attempts and duration."""
    run = make_client(ctx).get_run(run_id)
    if _as_json(ctx):
        _print_json(run)
        return
    wanted = {state.upper() for state in states} or None
    out = console()
    out.print(run_header(run))
    out.print()
    out.print(tasks_tree(run, wanted) if tree else tasks_table(run, wanted))


@cli.command()
@run_argument
@poll_flag
@connection_options
@click.pass_context
def follow(ctx: click.Context, run_id: int, poll: bool) -> None:
    """Follow a run live until it ends: exit 0 if it ends COMPLETED, 1 otherwise."""
    _follow(ctx, make_client(ctx), run_id, poll)


@cli.command()
@run_argument
@task_argument
@click.option("--attempt", "-a", "attempt_number", type=int, metavar="N",
              help="attempt N (1 is the first; -1 the last, the default)")
@click.option("--stderr", "stderr", is_flag=True, help="standard error instead of output")
@connection_options
@click.pass_context
def logs(ctx: click.Context, run_id: int, task: str, attempt_number: int | None,
         stderr: bool) -> None:
    """Print a task attempt's output (its stdout, or its stderr with --stderr)."""
    if attempt_number == 0:
        raise click.BadParameter("attempts count from 1 (or from -1, the last)",
                                 param_hint="'--attempt'")
    record = make_client(ctx).get_task(run_id, task)
    attempts = record.get("attempts") or []
    if not attempts:
        raise NotFound(f"task {task!r} of run {run_id} has no attempts yet (it is "
                       f"{record.get('state')}; output is recorded when an attempt ends)")
    wanted = -1 if attempt_number is None else attempt_number
    index = wanted - 1 if wanted > 0 else len(attempts) + wanted
    if not 0 <= index < len(attempts):
        raise NotFound(f"task {task!r} of run {run_id} has {len(attempts)} attempt"
                       f"{'s' if len(attempts) != 1 else ''}; there is no attempt {wanted}")
    attempt = attempts[index]
    if _as_json(ctx):
        _print_json({"runID": run_id, "name": task, "attemptNumber": index + 1,
                     "attemptCount": len(attempts), "attempt": attempt})
        return
    text = attempt.get("errorLog" if stderr else "outputLog") or ""
    sys.stdout.write(text)
    sys.stdout.flush()
    if attempt.get("errorTruncated" if stderr else "outputTruncated"):
        _note(f"daggyc: the {'stderr' if stderr else 'output'} of attempt {index + 1} was cut "
              "at the executor's output limit")


def _done(ctx: click.Context, answer: dict[str, Any], line: Text) -> None:
    if _as_json(ctx):
        _print_json(answer)
    else:
        console().print(line)


@cli.command()
@run_argument
@click.argument("task", metavar="[TASK]", required=False)
@connection_options
@click.pass_context
def kill(ctx: click.Context, run_id: int, task: str | None) -> None:
    """Kill a run (its running tasks are killed, the run ends KILLED), or one TASK of it."""
    client = make_client(ctx)
    if task is None:
        answer = client.kill_run(run_id)
        _done(ctx, answer, Text(f"run {run_id} {answer.get('state', 'KILLED')}"))
    else:
        answer = client.set_task_state(run_id, task, "KILLED")
        _done(ctx, answer, _task_line(run_id, task, answer))


def _task_line(run_id: int, task: str, answer: dict[str, Any], note: str = "") -> Text:
    line = Text("task ")
    line.append(task, style="bold")
    line.append(f" of run {run_id} {answer.get('state')}{note}")
    return line


@cli.command()
@run_argument
@follow_flag
@poll_flag
@connection_options
@click.pass_context
def resume(ctx: click.Context, run_id: int, follow: bool, poll: bool) -> None:
    """Resume a finished run: COMPLETED tasks are kept, every other task runs again."""
    client = make_client(ctx)
    answer = client.set_run_state(run_id, "QUEUED")
    _done(ctx, answer, Text(f"run {run_id} {answer.get('state', 'QUEUED')} (resumed)"))
    if follow:
        _follow(ctx, client, run_id, poll, report_earlier=False)


@cli.command()
@run_argument
@task_argument
@follow_flag
@poll_flag
@connection_options
@click.pass_context
def rerun(ctx: click.Context, run_id: int, task: str, follow: bool, poll: bool) -> None:
    """Run TASK again (from ERRORED, KILLED or COMPLETED) with a fresh retry budget."""
    client = make_client(ctx)
    answer = client.set_task_state(run_id, task, "QUEUED")
    _done(ctx, answer, _task_line(run_id, task, answer, " (queued to run again)"))
    if follow:
        _follow(ctx, client, run_id, poll, report_earlier=False)


@cli.command()
@run_argument
@task_argument
@connection_options
@click.pass_context
def complete(ctx: click.Context, run_id: int, task: str) -> None:
    """Mark TASK COMPLETED without running it, so the tasks after it can start."""
    answer = make_client(ctx).set_task_state(run_id, task, "COMPLETED")
    _done(ctx, answer, _task_line(run_id, task, answer, " (marked done)"))


def main() -> None:
    cli(prog_name="daggyc")
