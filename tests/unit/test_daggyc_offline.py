"""daggyc validate offline: the same verdict and task list as the daemon's executors give,
without a reactor."""

from __future__ import annotations

import subprocess
import sys

import pytest
from twisted.internet.testing import MemoryReactorClock

from daggy.client.offline import executor_name, validate_offline
from daggy.errors import SpecInvalid
from daggy.executors.forking import ForkingTaskExecutor
from daggy.executors.noop import NoopTaskExecutor
from daggy.executors.slurm import SlurmTaskExecutor
from daggy.limits import RunLimits
from daggy.spec import parse_run_spec

SPECS = [
    {"parameters": {"D": ["1", "2"], "R": "/srv"},
     "tasks": {"a": {"job": {"command": ["x", "{{D}}", "{{R}}"]}, "children": ["b"]},
               "b": {"job": {"command": ["y"], "environment": {"W": "{{D}}"}}}}},
    {"tasks": {"a": {"job": {"command": ["x"], "timeoutSeconds": 0, "partition": "p"}},
               "b": {"job": {"command": "y"}, "parents": ["a", "zz"]}}},
    {"tasks": {"a": {"job": {"command": ["x"], "secretEnvironment": ["TOKEN", "1BAD"]}}}},
    {"tasks": {"a": {"job": {"command": ["x"], "sbatchArgs": ["--output=f"], "mem": 0}}}},
    {"tasks": {"a": {"job": {"command": ["x"]}, "parents": ["b"]},
               "b": {"job": {"command": ["y"]}, "parents": ["a"]}}},
    {"tsks": {}},
    ["not", "an", "object"],
]


def daemon_verdict(spec, executor) -> tuple[str, list[str]]:
    try:
        return "valid", [task.name for task in parse_run_spec(spec, executor).tasks]
    except SpecInvalid as error:
        return "invalid", [e for e in error.errors if "no secret named" not in e]


def offline_verdict(spec, name) -> tuple[str, list[str]]:
    try:
        return "valid", [task.name for task in validate_offline(spec, name)]
    except SpecInvalid as error:
        return "invalid", error.errors


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("name, build", [
    ("ForkingTaskExecutor", lambda: ForkingTaskExecutor(MemoryReactorClock(), environ={})),
    ("SlurmTaskExecutor", lambda: SlurmTaskExecutor(MemoryReactorClock(), environ={})),
    ("NoopTaskExecutor", lambda: NoopTaskExecutor(MemoryReactorClock())),
])
def test_offline_validation_matches_the_executor(spec, name, build):
    """Offline validation gives the executor's verdict, errors and task names; only the
    lookup of secret names (which needs the daemon's secrets) is left out."""
    assert offline_verdict(spec, name) == daemon_verdict(spec, build())


def test_offline_validation_applies_the_default_limits():
    """The task limit is the daemon's default, or the one given."""
    spec = {"parameters": {"N": [str(n) for n in range(20)]},
            "tasks": {"a": {"job": {"command": ["x", "{{N}}"]}}}}
    assert len(validate_offline(spec)) == 20
    with pytest.raises(SpecInvalid, match="expansion would make 20 tasks"):
        validate_offline(spec, limits=RunLimits(max_tasks_per_run=10))


@pytest.mark.parametrize("text, name", [("forking", "ForkingTaskExecutor"),
                                        ("SLURM", "SlurmTaskExecutor"),
                                        ("noopTaskExecutor", "NoopTaskExecutor")])
def test_executor_names_are_case_insensitive_with_short_forms(text, name):
    """--executor takes the config's names in any case, or forking/slurm/noop."""
    assert executor_name(text) == name


def test_the_client_never_imports_the_reactor():
    """Importing daggyc and validating offline installs no Twisted reactor."""
    code = ("import sys; from daggy.client import cli, offline; "
            "offline.validate_offline({'tasks': {'a': {'job': {'command': ['x']}}}}); "
            "offline.validate_offline({'tasks': {'a': {'job': {'command': ['x']}}}}, "
            "'SlurmTaskExecutor'); "
            "print('twisted.internet.reactor' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout == "False\n"
