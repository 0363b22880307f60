#!/usr/bin/env python3
"""Wall time of one large run with the OStreamLogger and with the RedisLogger, side by side.

    /work/venv/bin/python bench/logger_10k.py [--tasks 10000] [--threads 10] [--repeat 1]

Starts a daggyd (ForkingTaskExecutor, ``--threads``) with the OStreamLogger writing to a
file, submits a run of ``--tasks`` independent ``/bin/true`` tasks, and measures the wall
time from just before the POST to the first poll of the run's state that says COMPLETED
(polled every 50 ms), then stops the daemon (SIGTERM).  Then does the same with a daggyd
using the RedisLogger on a redis-server the benchmark starts itself (a free loopback port, a
temporary directory, AOF on with ``appendfsync everysec``: the setting a production daggyd
would use).  With ``--repeat N`` the pair is measured N times, alternating which logger goes
first.  Each daemon runs alone, so they do not compete for CPU.

Besides the wall time, the table shows the POST alone (validation, expansion, recording the
tasks), ``GET /v1/dagrun/{id}`` of the finished run, the time SIGTERM takes (the RedisLogger
stores its last writes then), the daemon's peak RSS, and what the run's record takes: the
event file's size, or the Redis memory of the run's keys (``MEMORY USAGE ... SAMPLES 0``).

Needs ``redis-server`` (``./scripts/test`` installs it; or set DAGGY_TEST_REDIS_SERVER).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "integration"))

from daemon_harness import Daemon, request, start_daemon  # noqa: E402
from redis_harness import RedisServer  # noqa: E402

POLL_SECONDS = 0.05
RUN_SECONDS = 1800


@dataclass
class Measurement:
    logger: str
    submit: float
    wall: float
    read: float
    stop: float
    peak_rss_mib: float
    stored_mib: float


def spec(tasks: int) -> dict:
    width = len(str(tasks - 1))
    return {"tag": "bench-10k",
            "tasks": {f"t{i:0{width}d}": {"job": {"command": ["/bin/true"]}}
                      for i in range(tasks)}}


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def wait_completed(daemon: Daemon, run_id: int) -> None:
    deadline = time.monotonic() + RUN_SECONDS
    while True:
        state = daemon.get(f"/v1/dagrun/{run_id}/state")["state"]
        if state == "COMPLETED":
            return
        if state in ("ERRORED", "KILLED"):
            raise AssertionError(f"run {run_id} ended {state}")
        if time.monotonic() > deadline:
            raise AssertionError(f"run {run_id} not COMPLETED after {RUN_SECONDS}s")
        time.sleep(POLL_SECONDS)


def measure(name: str, directory: Path, logger: dict, document: dict, threads: int,
            stored_mib: Callable[[], float]) -> Measurement:
    daemon = start_daemon("daggyd", directory, executor="ForkingTaskExecutor",
                          executor_config={"threads": threads}, logger=logger,
                          max_request_bytes=256 * 1024 * 1024)
    try:
        started = time.monotonic()
        run_id = request(daemon.port, "POST", "/v1/dagrun", document)["runID"]
        submitted = time.monotonic()
        wait_completed(daemon, run_id)
        finished = time.monotonic()
        run = daemon.run(run_id)
        read = time.monotonic() - finished
        assert run["taskCounts"]["COMPLETED"] == len(document["tasks"]), run["taskCounts"]
        rss = peak_rss_mib(daemon.process.popen.pid)
        stopping = time.monotonic()
        status = daemon.stop()
        stopped = time.monotonic()
        assert status == 0, f"daggyd exited with {status}:\n{daemon.log[-5000:]}"
        errors = daemon.new_log_errors(0)
        assert not errors, "\n".join(errors)
    finally:
        daemon.process.kill()
    return Measurement(name, submitted - started, finished - started, read,
                       stopped - stopping, rss, stored_mib())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--threads", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    options = parser.parse_args()

    document = spec(options.tasks)
    root = Path(tempfile.mkdtemp(prefix="daggy-bench-"))
    redis = RedisServer(root / "redis", appendonly=True)
    results: list[Measurement] = []

    def with_ostream(round_: int) -> Measurement:
        directory = root / f"ostream-{round_}"
        events = directory / "events.jsonl"
        return measure("OStreamLogger (file)", directory,
                       {"name": "OStreamLogger", "config": {"file": str(events)}},
                       document, options.threads, lambda: events.stat().st_size / 2**20)

    def with_redis(round_: int) -> Measurement:
        prefix = f"bench{round_}"

        def stored_mib() -> float:
            keys = redis.command("KEYS", f"{prefix}:*")
            return sum(redis.command("MEMORY", "USAGE", key, "SAMPLES", 0)
                       for key in keys) / 2**20

        return measure("RedisLogger", root / f"redis-{round_}",
                       {"name": "RedisLogger",
                        "config": {"host": redis.host, "port": redis.port, "prefix": prefix}},
                       document, options.threads, stored_mib)

    try:
        redis.start()
        for round_ in range(options.repeat):
            order = [with_ostream, with_redis] if round_ % 2 == 0 else [with_redis, with_ostream]
            for run in order:
                result = run(round_)
                results.append(result)
                print(f"  {result.logger}: {result.wall:.2f} s", file=sys.stderr, flush=True)
    finally:
        redis.stop()
        redis.cleanup()
        if options.keep:
            print(f"kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)

    print(f"\n{options.tasks} /bin/true tasks, ForkingTaskExecutor threads={options.threads}, "
          f"{options.repeat} round(s); medians\n")
    header = ("logger", "POST→COMPLETED s", "tasks/s", "POST s", "GET run s", "SIGTERM s",
              "peak RSS MiB", "record MiB")
    rows = []
    for name in dict.fromkeys(result.logger for result in results):
        mine = [result for result in results if result.logger == name]

        def median(field: str) -> float:
            return statistics.median(getattr(result, field) for result in mine)

        wall = median("wall")
        rows.append((name, f"{wall:.2f}", f"{options.tasks / wall:.0f}",
                     f"{median('submit'):.2f}", f"{median('read'):.2f}",
                     f"{median('stop'):.2f}", f"{median('peak_rss_mib'):.0f}",
                     f"{median('stored_mib'):.1f}"))
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, tuple("-" * width for width in widths), *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    print("\nraw: " + json.dumps([result.__dict__ for result in results]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
