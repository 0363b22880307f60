#!/usr/bin/env python3
"""The floor for our stack: the least a Twisted program must do to run a DAG of commands.

    /work/venv/bin/python bench/floor.py SPEC.json --workers N

Reads a run spec as daggyd takes it (``tasks`` → ``job.command`` and ``children`` and/or
``parents``; no parameters), and runs it on the default reactor: at most ``--workers``
processes at once, each started with ``reactor.spawnProcess`` (stdin, stdout and stderr on
pipes, output kept in memory, the parent's environment), a task only after all its parents
exited 0.  No HTTP, no records, no state beyond a counter of unfinished parents per task.

Prints one JSON object on stdout: ``seconds`` from before reading the spec until the last
process was reaped; ``cpuSeconds``, this process's own user + system CPU over that time (not
its children's); ``tasks``; ``finished`` (processes reaped); ``failed`` (tasks that exited
non-zero; their descendants never start); and ``gapMedianMs``, the median over the tasks
with parents of a task's start minus its last parent's end (null without edges).  Starts
and ends are timed as daggyd's ForkingTaskExecutor times its attempts:
``reactor.seconds()`` just before ``spawnProcess`` and in ``processEnded``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from collections import deque
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _workloads import load_spec  # noqa: E402


def run(spec_path: str, workers: int) -> dict:
    from twisted.internet import reactor
    from twisted.internet.protocol import ProcessProtocol

    began = time.monotonic()
    before = resource.getrusage(resource.RUSAGE_SELF)
    names, commands, children = load_spec(spec_path)
    waiting = dict.fromkeys(names, 0)
    for name in names:
        for child in children[name]:
            waiting[child] += 1
    ready = deque(name for name in names if waiting[name] == 0)
    started: dict[str, float] = {}
    ended: dict[str, float] = {}
    environment = dict(os.environ)
    failed: list[str] = []
    state = {"running": 0, "finished": 0}

    class Task(ProcessProtocol):
        def __init__(self, name: str) -> None:
            self.name = name
            self.output: list[bytes] = []
            self.errors: list[bytes] = []

        def outReceived(self, data: bytes) -> None:
            self.output.append(data)

        def errReceived(self, data: bytes) -> None:
            self.errors.append(data)

        def processEnded(self, reason) -> None:
            ended[self.name] = reactor.seconds()
            state["running"] -= 1
            state["finished"] += 1
            if reason.value.exitCode == 0:
                for child in children[self.name]:
                    waiting[child] -= 1
                    if waiting[child] == 0:
                        ready.append(child)
            else:
                failed.append(self.name)
            fill()

    def fill() -> None:
        while ready and state["running"] < workers:
            name = ready.popleft()
            argv = commands[name]
            state["running"] += 1
            started[name] = reactor.seconds()
            reactor.spawnProcess(Task(name), argv[0], argv, environment)
        if state["running"] == 0:
            reactor.stop()

    reactor.callWhenRunning(fill)
    reactor.run()
    seconds = time.monotonic() - began
    parents: dict[str, list[str]] = {}
    for name in names:
        for child in children[name]:
            parents.setdefault(child, []).append(name)
    gaps = [started[child] - max(ended[parent] for parent in parents[child])
            for child in parents if child in started]
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return {"seconds": seconds, "cpuSeconds": cpu,
            "tasks": len(names), "finished": state["finished"],
            "failed": len(failed),
            "gapMedianMs": statistics.median(gaps) * 1000 if gaps else None}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("spec", help="a run spec file (JSON)")
    parser.add_argument("--workers", type=int, required=True, help="processes at once")
    options = parser.parse_args()
    result = run(options.spec, options.workers)
    print(json.dumps(result))
    return 0 if result["failed"] == 0 and result["finished"] == result["tasks"] else 1


if __name__ == "__main__":
    sys.exit(main())
