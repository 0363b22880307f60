"""How long the web UI takes to show a large run: page load to graph laid out and drawn, and
to the first click answered, in Debian's headless Chromium (Playwright) against a NoopTask
daggyd.

    .venv/bin/python bench/ui_load.py [--repeat 3] [--sizes 1000,5000]

Runs are lattices of ``layers x 100`` distinct tasks, each with two parents in the layer
before (nothing to collapse: the hardest case for the layout), plus one run of 5,000
expanded instances of one task (collapsed into one group). Prints a table of medians.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "integration"))

from daemon_harness import start_daemon  # noqa: E402

CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--disable-dev-shm-usage"]


def lattice(tasks: int, width: int = 100) -> dict:
    spec = {}
    for layer in range(tasks // width):
        for column in range(width):
            task: dict = {"job": {"command": ["true"]}}
            if layer:
                task["parents"] = [f"t{layer - 1}_{column}",
                                   f"t{layer - 1}_{(column + 1) % width}"]
            spec[f"t{layer}_{column}"] = task
    return {"tasks": spec}


def expanded(instances: int) -> dict:
    return {"parameters": {"N": [str(n) for n in range(instances)]},
            "tasks": {"each": {"job": {"command": ["true"]}},
                      "sum": {"job": {"command": ["true"]}, "parents": ["each"]}}}


def measure(page, base: str, run_id: int, probe_task: str) -> tuple[float, float]:
    started = time.monotonic()
    page.goto(f"{base}/#/run/{run_id}")
    page.wait_for_function("() => window.daggyUI && window.daggyUI.ready && window.daggyUI.cy",
                           timeout=300_000)
    ready = time.monotonic() - started
    page.fill("#task-filter", probe_task)
    page.click(f'#task-table tr[data-task="{probe_task}"]')
    page.wait_for_selector("#task-panel-name", state="visible")
    return ready, time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--sizes", default="1000,5000")
    options = parser.parse_args()
    from playwright.sync_api import sync_playwright

    directory = Path(tempfile.mkdtemp(prefix="daggy-ui-bench-"))
    daemon = start_daemon("daggyd", directory, executor="NoopTaskExecutor",
                          **{"max_request_bytes": 1 << 30})
    rows = []
    try:
        cases = [(f"lattice {size}", lattice(size), f"t{size // 100 - 1}_99")
                 for size in map(int, options.sizes.split(","))]
        cases.append(("5000 instances of one task", expanded(5000), "each[N=4999]"))
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=shutil.which("chromium"),
                                                 headless=True, args=CHROMIUM_FLAGS)
            for name, spec, probe in cases:
                run_id = daemon.submit(spec)
                daemon.wait_run(run_id, "COMPLETED", seconds=600)
                readies, clicks = [], []
                for _ in range(options.repeat):
                    context = browser.new_context(viewport={"width": 1366, "height": 768})
                    page = context.new_page()
                    ready, click = measure(page, f"http://127.0.0.1:{daemon.port}", run_id,
                                           probe)
                    readies.append(ready)
                    clicks.append(click)
                    context.close()
                rows.append((name, statistics.median(readies), statistics.median(clicks)))
            browser.close()
    finally:
        daemon.stop()
        shutil.rmtree(directory, ignore_errors=True)
    print(f"{'run':<30} {'graph ready (s)':>16} {'panel open (s)':>15}")
    for name, ready, click in rows:
        print(f"{name:<30} {ready:>16.2f} {click:>15.2f}")


if __name__ == "__main__":
    main()
