"""L1 of bench/dagbench.py: one run of independent ``/bin/true`` tasks on a private Slurm
cluster, with the Slurm commands wrapped to count their calls.

Reuses ``bench/slurm_jobs.py`` (the wrappers, the daemon start) and
``tests/integration/slurm_harness.py`` (the cluster); the caller puts both directories on
``sys.path``.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

from slurm_harness import SlurmCluster
from slurm_jobs import WRAPPED, read_calls, start_slurm_daggyd, write_wrappers

from _daggyd import BenchError, Client, cpu_seconds, peak_rss_mib, stop
from _workloads import daggy_spec_bytes, independent

#: The bench polls the run's state this often; rarer than elsewhere, so that its requests
#: add little to the daemon's CPU per tick.
STATE_POLL_SECONDS = 0.25
SAMPLE_SECONDS = 0.02


def run_on_slurm(cluster: SlurmCluster, directory: Path, tasks: int, poll: float,
                 timeout: float, label: str) -> dict:
    """Submit ``tasks`` independent ``/bin/true`` tasks to a daggyd with the
    SlurmTaskExecutor on ``cluster`` and wait until the run is COMPLETED.  The daemon's CPU
    is sampled right after each ``squeue`` call starts (seen in the wrapper's log within
    ``SAMPLE_SECONDS``), which splits it into poll ticks."""
    directory.mkdir(mode=0o755)
    directory.chmod(0o755)
    logs = write_wrappers(directory / "bin", cluster.programs)
    output_dir = directory / "output"
    output_dir.mkdir(mode=0o755)
    output_dir.chmod(0o755)
    executor_config = {
        "sacctCompletion": True,
        "pollIntervalSeconds": poll,
        "outputDir": str(output_dir),
        "jobNamePrefix": f"dagbench{os.getpid()}{label}",
        "commandPaths": {name: str(directory / "bin" / name) for name in WRAPPED},
    }
    daemon = start_slurm_daggyd(directory / "daggyd", cluster, executor_config, None)
    pid = daemon.process.popen.pid
    client = Client(daemon.port)
    notes: list[str] = []
    try:
        spec = daggy_spec_bytes(independent(tasks, ["/bin/true"]), f"dagbench-L1-{label}")
        cpu_start = cpu_seconds(pid)
        posted = time.time()
        run_id = client.json("POST", "/v1/dagrun", spec)["runID"]
        # (squeue calls so far, daemon CPU, job ids in the latest squeue call)
        samples: list[tuple[int, float, int]] = []
        next_state_poll = 0.0
        deadline = time.monotonic() + timeout
        while True:
            squeue_calls = read_calls(logs["squeue"])
            calls = len(squeue_calls)
            if calls and (not samples or calls > samples[-1][0]):
                what = squeue_calls[-1].what
                samples.append((calls, cpu_seconds(pid), int(what) if what.isdigit() else 0))
            if time.monotonic() >= next_state_poll:
                next_state_poll = time.monotonic() + STATE_POLL_SECONDS
                state = client.json("GET", f"/v1/dagrun/{run_id}/state")
                if state["state"] == "COMPLETED":
                    break
                if state["state"] in ("ERRORED", "KILLED"):
                    raise BenchError(f"Slurm run ended {state['state']}: {state['taskCounts']}")
            if time.monotonic() > deadline:
                raise BenchError(f"Slurm run not COMPLETED after {timeout:.0f} s")
            time.sleep(SAMPLE_SECONDS)
        finished = time.time()
        cpu_total = cpu_seconds(pid) - cpu_start
        rss = peak_rss_mib(pid)
    finally:
        client.close()
        notes += stop(daemon)[0]

    sbatch = read_calls(logs["sbatch"])
    squeue = [call for call in read_calls(logs["squeue"]) if call.time >= posted]
    sacct = [call for call in read_calls(logs["sacct"]) if call.time >= posted]
    duration = finished - posted
    # CPU from one squeue call to the next, with the job ids the first of them asked about.
    ticks = [((cpu - previous_cpu) / (count - previous_count), tracked)
             for (previous_count, previous_cpu, tracked), (count, cpu, _) in
             zip(samples, samples[1:])]
    per_tick = [cpu for cpu, _ in ticks]
    ids = [int(call.what) for call in squeue if call.what.isdigit()]
    busiest = max(ids) if ids else 0
    at_most_tracked = [cpu for cpu, tracked in ticks if busiest and tracked >= 0.9 * busiest]
    close_calls = sum(1 for earlier, later in zip(squeue, squeue[1:])
                      if later.time - earlier.time < poll / 2)
    if len(sbatch) != tasks:
        notes.append(f"{len(sbatch)} sbatch calls for {tasks} tasks")
    sbatch_span = sbatch[-1].time - sbatch[0].time if len(sbatch) > 1 else 0.0
    return {
        "seconds": duration,
        "cpu_seconds": cpu_total,
        "peak_rss_mib": rss,
        "sbatch_calls": len(sbatch),
        "sbatch_per_second": (len(sbatch) - 1) / sbatch_span if sbatch_span > 0 else None,
        "post_to_last_sbatch": sbatch[-1].time - posted if sbatch else None,
        "squeue_calls": len(squeue),
        "ticks": duration / poll,
        "squeue_calls_closer_than_half_a_tick": close_calls,
        "max_ids_per_squeue": max(ids) if ids else 0,
        "sacct_calls": len(sacct),
        # Means, not medians: the CPU clock ticks in 10 ms steps, a mean over n poll ticks
        # is good to 10/n ms.
        "cpu_per_tick_mean_ms": statistics.fmean(per_tick) * 1000 if per_tick else None,
        "cpu_per_tick_max_ms": max(per_tick) * 1000 if per_tick else None,
        "cpu_per_tick_most_tracked_ms": (statistics.fmean(at_most_tracked) * 1000
                                         if at_most_tracked else None),
        "notes": notes,
    }
