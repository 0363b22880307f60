"""Turning daggyd's answers into rich tables, trees and text.

Task names and tags are user text that may hold ``[...]`` (every expanded instance does),
so they always go into :class:`rich.text.Text` objects, never into console markup.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any, Iterable

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

#: Display order: where a run is going, then what went wrong, then what waits.
STATES = ("COMPLETED", "RUNNING", "RETRY", "ERRORED", "KILLED", "QUEUED")
FINISHED = frozenset({"COMPLETED", "ERRORED", "KILLED"})
STATE_STYLES = {
    "COMPLETED": "green",
    "RUNNING": "cyan",
    "RETRY": "yellow",
    "ERRORED": "bold red",
    "KILLED": "magenta",
    "QUEUED": "dim",
}


def parse_time(text: str | None) -> datetime | None:
    """daggyd's ``2021-01-01T00:00:00.000000Z`` (None stays None)."""
    if not text:
        return None
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
    except ValueError:
        return None


def seconds_between(start: str | None, stop: str | None) -> float | None:
    first, last = parse_time(start), parse_time(stop)
    if first is None or last is None:
        return None
    return max(0.0, (last - first).total_seconds())


def format_duration(seconds: float | None) -> str:
    """``0.25s``, ``12.3s``, ``4m05s``, ``2h03m``; ``-`` when unknown."""
    if seconds is None:
        return "-"
    if seconds < 10:
        return f"{seconds:.2f}s"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def format_time(text: str | None) -> str:
    """A daggyd time as local-free ``2021-01-01 00:00:00`` UTC, short for tables."""
    moment = parse_time(text)
    return moment.strftime("%Y-%m-%d %H:%M:%S") if moment else "-"


def state_text(state: str) -> Text:
    return Text(state, style=STATE_STYLES.get(state, ""))


def counts_text(counts: dict[str, int], *, all_states: bool = True) -> Text:
    """``3 completed · 1 running · ...``; without ``all_states`` only non-zero counts."""
    text = Text()
    shown = [state for state in STATES if all_states or counts.get(state, 0)]
    for index, state in enumerate(shown):
        if index:
            text.append(" · ", style="dim")
        text.append(f"{counts.get(state, 0)} {state.lower()}", style=STATE_STYLES[state])
    if not shown:
        text.append("no tasks", style="dim")
    return text


def counts_plain(counts: dict[str, int]) -> str:
    return counts_text(counts, all_states=False).plain


def runs_table(runs: Iterable[dict[str, Any]]) -> Table:
    table = Table(box=None, pad_edge=False, header_style="bold")
    table.add_column("RUN", justify="right")
    table.add_column("TAG", overflow="fold")
    table.add_column("STATE")
    table.add_column("STARTED (UTC)", no_wrap=True)
    table.add_column("DURATION", justify="right")
    table.add_column("TASKS", overflow="fold")
    for run in runs:
        counts = run.get("taskCounts") or {}
        total = sum(counts.values())
        tasks = Text(f"{counts.get('COMPLETED', 0)}/{total}  ")
        tasks.append_text(counts_text(counts, all_states=False))
        table.add_row(str(run["runID"]), Text(run.get("tag") or "-"), state_text(run["state"]),
                      format_time(run.get("startTime")),
                      format_duration(seconds_between(run.get("startTime"),
                                                      run.get("lastUpdate"))),
                      tasks)
    return table


def _latest(changes: list[dict[str, Any]], state: str) -> str | None:
    for change in reversed(changes):
        if change.get("state") == state:
            return change.get("time")
    return None


def task_duration(state: str, attempts: list[dict[str, Any]],
                  state_changes: list[dict[str, Any]], now: str | None) -> float | None:
    """A running task's time since it started; else its last attempt's run time."""
    if state == "RUNNING":
        return seconds_between(_latest(state_changes, "RUNNING"), now)
    if attempts:
        return seconds_between(attempts[-1].get("startTime"), attempts[-1].get("stopTime"))
    return None


def attempts_text(attempts: list[dict[str, Any]]) -> Text:
    failed = sum(1 for attempt in attempts if not attempt.get("succeeded"))
    text = Text(str(len(attempts)))
    if failed:
        text.append(f" ({failed} failed)", style="red")
    return text


def run_header(run: dict[str, Any]) -> Group:
    title = Text(f"run {run['runID']} ", style="bold")
    title.append_text(state_text(run["state"]))
    if run.get("tag"):
        title.append("  tag ", style="dim")
        title.append(run["tag"])
    when = Text("started ", style="dim")
    when.append(format_time(run.get("startTime")) + " UTC")
    when.append("  ran ", style="dim")
    when.append(format_duration(seconds_between(run.get("startTime"), run.get("lastUpdate"))))
    counts = run.get("taskCounts") or {}
    tasks = Text(f"{sum(counts.values())} tasks: ", style="dim")
    tasks.append_text(counts_text(counts, all_states=False))
    lines: list[RenderableType] = [title, when, tasks]
    if run.get("parameters"):
        parameters = Text("parameters ", style="dim")
        parameters.append(", ".join(
            f"{name}={value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)}"
            for name, value in run["parameters"].items()))
        lines.append(parameters)
    return Group(*lines)


def _task_rows(run: dict[str, Any], states: set[str] | None
               ) -> Iterable[tuple[str, str, list, float | None, str]]:
    task_states = run.get("taskStates") or {}
    all_attempts = run.get("taskAttempts") or {}
    all_changes = run.get("taskStateChanges") or {}
    # A running task has run until now, which is later than the run's last update.
    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    for name, state in task_states.items():
        if states and state not in states:
            continue
        attempts = all_attempts.get(name) or []
        last_log = attempts[-1].get("executorLog", "") if attempts else ""
        yield (name, state, attempts,
               task_duration(state, attempts, all_changes.get(name) or [], now), last_log)


def tasks_table(run: dict[str, Any], states: set[str] | None = None) -> Table:
    table = Table(box=None, pad_edge=False, header_style="bold")
    table.add_column("TASK", overflow="fold")
    table.add_column("STATE")
    table.add_column("ATTEMPTS", justify="right")
    table.add_column("DURATION", justify="right")
    table.add_column("LAST ATTEMPT", overflow="fold")
    for name, state, attempts, seconds, last_log in _task_rows(run, states):
        table.add_row(Text(name), state_text(state), attempts_text(attempts),
                      format_duration(seconds), Text(last_log))
    return table


def tasks_tree(run: dict[str, Any], states: set[str] | None = None) -> Tree:
    """Tasks grouped under their defined name, each group saying what it runs after."""
    title = Text(f"run {run['runID']} ", style="bold")
    title.append_text(state_text(run["state"]))
    tree = Tree(title)
    definitions = run.get("tasks") or {}
    groups: dict[str, list] = {}
    for row in _task_rows(run, states):
        defined = (definitions.get(row[0]) or {}).get("definedName", row[0])
        groups.setdefault(defined, []).append(row)
    for defined, rows in groups.items():
        counts: dict[str, int] = {}
        for row in rows:
            counts[row[1]] = counts.get(row[1], 0) + 1
        label = Text(defined, style="bold")
        parents = (definitions.get(rows[0][0]) or {}).get("parents") or []
        if len(rows) == 1 and rows[0][0] == defined:
            label = _task_label(*rows[0], bold=True)
            node = tree.add(label)
        else:
            label.append("  ")
            label.append_text(counts_text(counts, all_states=False))
            node = tree.add(label)
            for row in rows:
                node.add(_task_label(*row))
        if parents:
            after = Text("after ", style="dim")
            after.append(", ".join(parents))
            node.add(after)
    return tree


def _task_label(name: str, state: str, attempts: list, seconds: float | None, last_log: str,
                bold: bool = False) -> Text:
    label = Text(name, style="bold" if bold else "")
    label.append("  ")
    label.append_text(state_text(state))
    label.append(f"  {len(attempts)} attempt{'s' if len(attempts) != 1 else ''}", style="dim")
    if seconds is not None:
        label.append(f"  {format_duration(seconds)}", style="dim")
    if last_log and state != "COMPLETED":
        label.append(f"  {last_log}", style="dim")
    return label
