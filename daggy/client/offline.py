"""``daggyc validate`` without a daemon: the daemon's own spec parser
(:func:`daggy.spec.parse_run_spec`) with the job checks of the chosen executor.

No executor is built (that would need a reactor): each job format is the executor's
``templatable_fields`` plus its module-level job check.  The one check that needs the
daemon is whether each ``secretEnvironment`` name is a secret it has; offline, those names
are only checked for their form.  The limits are the defaults (docs/config.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from daggy.limits import RunLimits
from daggy.model import TaskDef
from daggy.spec import parse_run_spec


@dataclass(frozen=True)
class OfflineJobFormat:
    """What :func:`parse_run_spec` needs of an executor."""

    templatable_fields: tuple[str, ...]
    check: Callable[[Any, str], list[str]]

    def validate_job(self, job: Any, path: str) -> list[str]:
        return self.check(job, path)


def _forking() -> OfflineJobFormat:
    from daggy.executors.forking import ForkingTaskExecutor, validate_command_job

    return OfflineJobFormat(ForkingTaskExecutor.templatable_fields,
                            lambda job, path: validate_command_job(job, path, None))


def _slurm() -> OfflineJobFormat:
    from daggy.executors._slurm_commands import validate_slurm_job
    from daggy.executors.slurm import SlurmTaskExecutor

    return OfflineJobFormat(SlurmTaskExecutor.templatable_fields,
                            lambda job, path: validate_slurm_job(job, path, None))


def _noop() -> OfflineJobFormat:
    from daggy.executors.noop import NoopTaskExecutor

    return OfflineJobFormat(NoopTaskExecutor.templatable_fields,
                            NoopTaskExecutor(reactor=None).validate_job)


#: Executor name (as in a daemon config) → its job format.
EXECUTORS: dict[str, Callable[[], OfflineJobFormat]] = {
    "ForkingTaskExecutor": _forking,
    "SlurmTaskExecutor": _slurm,
    "NoopTaskExecutor": _noop,
}
#: Short spellings accepted by ``--executor``.
ALIASES = {"forking": "ForkingTaskExecutor", "slurm": "SlurmTaskExecutor",
           "noop": "NoopTaskExecutor"}
DEFAULT_EXECUTOR = "ForkingTaskExecutor"


def executor_name(text: str) -> str:
    """The executor a ``--executor`` value names (case-insensitive, short names too).

    :raises ValueError: no such executor."""
    wanted = text.lower()
    for name in EXECUTORS:
        if name.lower() == wanted:
            return name
    if wanted in ALIASES:
        return ALIASES[wanted]
    raise ValueError(f"unknown executor {text!r}; expected one of "
                     f"{', '.join(EXECUTORS)} (or {', '.join(ALIASES)})")


def validate_offline(spec: Any, executor: str = DEFAULT_EXECUTOR,
                     limits: RunLimits | None = None) -> list[TaskDef]:
    """The tasks ``spec`` expands to, as daggyd with ``executor`` would make them.

    :raises daggy.errors.SpecInvalid: with every problem, each prefixed by its path.
    """
    limits = limits or RunLimits()
    job_format = EXECUTORS[executor]()
    return parse_run_spec(spec, job_format, limits.max_tasks_per_run,
                          limits.max_job_depth).tasks
