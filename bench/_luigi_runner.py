#!/usr/bin/env python3
"""Run a run spec with Luigi's local scheduler (a subprocess of bench/dagbench.py).

    /work/venv/bin/python bench/_luigi_runner.py SPEC.json --workers N --markers DIR

Each task of the spec becomes a ``Step`` (a ``luigi.Task`` with the task's name as its
parameter): ``requires()`` returns the parents' steps, ``run()`` runs the command with
``subprocess.run`` (output captured, non-zero exit raises) and then creates an empty marker
file in ``--markers``, and ``complete()`` is whether that file exists: the usual Luigi
idiom of a target per task.  ``luigi.build(every step, local_scheduler=True, workers=N)``
runs them; with N > 1 Luigi runs each task in a forked worker process.  Luigi's log is set
to WARNING so that logging does not dominate.

Prints one JSON object: ``seconds`` (from before reading the spec until ``luigi.build``
returned), ``tasks``, ``ok`` (what ``luigi.build`` returned) and ``done`` (marker files).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _workloads import load_spec  # noqa: E402

import luigi  # noqa: E402

COMMANDS: dict[str, list[str]] = {}
PARENTS: dict[str, list[str]] = {}
MARKERS = Path(".")


class Step(luigi.Task):
    name = luigi.Parameter()

    def requires(self):
        return [Step(name=parent) for parent in PARENTS[self.name]]

    def complete(self) -> bool:
        return (MARKERS / self.name).exists()

    def run(self) -> None:
        subprocess.run(COMMANDS[self.name], check=True, stdin=subprocess.DEVNULL,
                       capture_output=True)
        (MARKERS / self.name).touch()


def main() -> int:
    global MARKERS
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("spec")
    parser.add_argument("--workers", type=int, required=True)
    parser.add_argument("--markers", type=Path, required=True, help="an empty directory")
    options = parser.parse_args()

    began = time.monotonic()
    names, commands, children = load_spec(options.spec)
    COMMANDS.update(commands)
    PARENTS.update({name: [] for name in names})
    for name in names:
        for child in children[name]:
            PARENTS[child].append(name)
    MARKERS = options.markers
    ok = luigi.build([Step(name=name) for name in names], local_scheduler=True,
                     workers=options.workers, no_lock=True, log_level="WARNING")
    seconds = time.monotonic() - began
    done = len(os.listdir(MARKERS))
    print(json.dumps({"seconds": seconds, "tasks": len(names), "ok": bool(ok), "done": done}))
    return 0 if ok and done == len(names) else 1


if __name__ == "__main__":
    sys.exit(main())
