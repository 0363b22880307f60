"""The web UI in a real headless Chromium (Debian's, driven by Playwright) against real
daggyd processes: the runs page updates live, a run page's node colours follow the run,
a task's logs, kill and resume from the page, the token dialog with auth on, and a
5,000-task run page that loads and answers clicks.  Every page is checked for console
errors, CSP violations and requests to any other host.

The load time of large run pages is measured in bench/ui_load.py, not asserted here.
"""

from __future__ import annotations

import os
import shutil
import time
from typing import Any, Iterator
from urllib.parse import urlsplit

import pytest

from daemon_harness import RUN_SECONDS, Daemon

pytestmark = pytest.mark.integration

TOKEN = "browser-test-token-0123456789"
#: Seconds a page may take to show what a test waits for (a loaded machine is slow).
PAGE_SECONDS = 60
#: Chromium's flags for a closed network as root: no sandbox, no background connections.
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--disable-dev-shm-usage"]


def chromium_path() -> str:
    path = os.environ.get("DAGGY_TEST_CHROMIUM") or shutil.which("chromium")
    if not path:
        # Never skipped: ./scripts/test installs it (scripts/test.d/chromium.sh).
        pytest.fail("Debian's chromium is not installed; run ./scripts/test, or "
                    "apt-get install chromium chromium-driver")
    return path


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    # Each context Playwright opens is a fresh, throw-away profile.
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), headless=True,
                                             args=CHROMIUM_FLAGS)
        try:
            yield browser
        finally:
            browser.close()


class Page:
    """A browser page on a daemon's UI that records console errors and foreign requests."""

    def __init__(self, browser: Any, daemon: Daemon):
        self.daemon = daemon
        self.base = f"http://127.0.0.1:{daemon.port}"
        self.context = browser.new_context(viewport={"width": 1366, "height": 768})
        self.page = self.context.new_page()
        self.problems: list[str] = []
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda error: self.problems.append(f"page error: {error}"))
        self.page.on("request", self._request)
        self.page.set_default_timeout(PAGE_SECONDS * 1000)

    def _console(self, message: Any) -> None:
        if message.type == "error":
            self.problems.append(f"console error: {message.text}")

    def _request(self, request: Any) -> None:
        host = urlsplit(request.url).hostname
        if request.url.startswith(("data:", "blob:")):
            return
        if host != "127.0.0.1":
            self.problems.append(f"request to another host: {request.url}")

    def open(self, fragment: str = "") -> None:
        self.page.goto(self.base + "/" + fragment)

    def ui(self, expression: str) -> Any:
        return self.page.evaluate(f"() => {expression}")

    def wait_ui(self, expression: str, seconds: float = PAGE_SECONDS) -> None:
        self.page.wait_for_function(f"() => {expression}", timeout=seconds * 1000)

    def close(self) -> None:
        self.context.close()

    def assert_clean(self, *allowed: str) -> None:
        problems = [p for p in self.problems if not any(a in p for a in allowed)]
        assert problems == []


@pytest.fixture(scope="module")
def daemon(daemons) -> Daemon:
    return daemons("daggyd", executor="ForkingTaskExecutor")


@pytest.fixture
def page(browser, daemon) -> Iterator[Page]:
    opened = Page(browser, daemon)
    yield opened
    opened.close()


def chain(*names: str, command: list[str] | None = None) -> dict[str, Any]:
    """A spec running ``names`` one after another."""
    tasks: dict[str, Any] = {}
    for index, name in enumerate(names):
        tasks[name] = {"job": {"command": command or ["sleep", "1"]}}
        if index:
            tasks[name]["parents"] = [names[index - 1]]
    return {"tasks": tasks}


# -- the runs page --------------------------------------------------------------------------

def test_the_runs_page_shows_a_new_run_live_until_it_completes(page, daemon):
    page.open()
    page.page.wait_for_selector("#runs-table")
    page.wait_ui("window.daggyUI && window.daggyUI.ready")
    run_id = daemon.submit({"tag": "browser-live", **chain("one", "two")})
    row = f'#runs-table tr[data-run-id="{run_id}"]'
    page.page.wait_for_selector(row)
    assert "browser-live" in page.page.inner_text(row)
    page.page.wait_for_selector(f'{row}[data-state="COMPLETED"]')
    assert daemon.run(run_id)["state"] == "COMPLETED"
    # Filtering by tag hides other runs and keeps this one.
    other = daemon.submit({"tag": "something-else", **chain("x", command=["true"])})
    page.page.wait_for_selector(f'#runs-table tr[data-run-id="{other}"]')
    page.page.fill("#filter-tag", "browser-live")
    page.page.wait_for_selector(f'#runs-table tr[data-run-id="{other}"]', state="hidden")
    assert page.page.is_visible(row)
    page.assert_clean()


# -- a run page -----------------------------------------------------------------------------

def test_node_colours_follow_the_run_to_completed_and_the_logs_show(page, daemon, tmp_path):
    gate = tmp_path / "go"
    spec = {"tasks": {
        "hello": {"job": {"command": ["sh", "-c", "echo hello from the browser"]}},
        # Waits for the test, so that the page surely sees it before it completes.
        "after": {"job": {"command": ["sh", "-c", f"while ! test -e {gate}; do sleep 0.05; "
                                                  "done; echo oops >&2"]},
                  "parents": ["hello"]}}}
    run_id = daemon.submit(spec)
    daemon.wait_task(run_id, "after", "RUNNING")
    page.open(f"#/run/{run_id}")
    page.wait_ui("window.daggyUI && window.daggyUI.ready && window.daggyUI.cy")
    page.wait_ui('window.daggyUI.nodeState("after") === "RUNNING"')
    running = page.ui('window.daggyUI.nodeColor("after")')
    gate.touch()
    # The node turns COMPLETED, and changes colour, live: no reload.
    page.wait_ui('window.daggyUI.nodeState("after") === "COMPLETED"', RUN_SECONDS)
    completed = page.ui('window.daggyUI.nodeColor("after")')
    assert running and completed and running != completed
    page.page.wait_for_selector('#task-table tr[data-task="hello"][data-state="COMPLETED"]')
    page.page.wait_for_selector('#run-state[data-state="COMPLETED"]')
    # The task panel shows the attempt's output.
    page.page.click('#task-table tr[data-task="hello"]')
    page.page.wait_for_selector("#task-panel .attempt pre.stdout")
    assert page.page.inner_text("#task-panel-name") == "hello"
    assert "hello from the browser" in page.page.inner_text("#task-panel .attempt pre.stdout")
    page.page.keyboard.press("Escape")
    page.page.wait_for_selector("#task-panel", state="hidden")
    page.page.click('#task-table tr[data-task="after"]')
    page.page.wait_for_function(
        "() => (document.querySelector('#task-panel .attempt pre.stderr') || {})"
        ".textContent?.includes('oops')")
    page.assert_clean()


def test_kill_and_resume_a_run_from_its_page(page, daemon, tmp_path):
    gate = tmp_path / "go"
    run_id = daemon.submit({"tasks": {
        "wait": {"job": {"command": ["sh", "-c", f"test -e {gate} || sleep 60"]}},
        "then": {"job": {"command": ["true"]}, "parents": ["wait"]}}})
    daemon.wait_task(run_id, "wait", "RUNNING")
    page.open(f"#/run/{run_id}")
    page.wait_ui("window.daggyUI && window.daggyUI.ready")
    page.page.wait_for_selector('#run-state[data-state="RUNNING"]')
    assert page.page.is_disabled("#resume-run")
    page.page.click("#kill-run")
    page.page.wait_for_selector('#run-state[data-state="KILLED"]')
    assert daemon.wait_run(run_id)["state"] == "KILLED"
    page.wait_ui('window.daggyUI.nodeState("wait") === "KILLED"')
    gate.touch()
    page.page.wait_for_selector("#resume-run:not([disabled])")
    page.page.click("#resume-run")
    page.page.wait_for_selector('#run-state[data-state="COMPLETED"]')
    assert daemon.wait_run(run_id)["taskStates"] == {"wait": "COMPLETED", "then": "COMPLETED"}
    page.wait_ui('window.daggyUI.nodeState("then") === "COMPLETED"')
    page.assert_clean()


def test_a_bad_action_shows_the_daemons_error(page, daemon):
    """Marking a running task completed is refused by the daemon (409): the page shows its
    error message and keeps working."""
    run_id = daemon.submit(chain("slow", command=["sleep", "30"]))
    daemon.wait_task(run_id, "slow", "RUNNING")
    page.open(f"#/run/{run_id}/task/slow")
    # Re-run is offered only for a finished task: disabled once the panel knows the state.
    page.page.wait_for_selector("#task-panel #task-rerun[disabled]")
    page.page.click("#task-complete")
    page.page.wait_for_selector("#error-banner:visible")
    assert "kill it first" in page.page.inner_text("#error-banner")
    assert daemon.task_state(run_id, "slow") == "RUNNING"
    daemon.http("DELETE", f"/v1/dagrun/{run_id}")
    page.page.wait_for_selector('#run-state[data-state="KILLED"]')
    # A refused request is logged by the browser as a failed resource load (409).
    page.assert_clean("status of 409")


# -- large runs -----------------------------------------------------------------------------

def lattice(layers: int, width: int) -> dict[str, Any]:
    tasks = {}
    for layer in range(layers):
        for column in range(width):
            task: dict[str, Any] = {"job": {"command": ["true"]}}
            if layer:
                task["parents"] = [f"t{layer - 1}_{column}",
                                   f"t{layer - 1}_{(column + 1) % width}"]
            tasks[f"t{layer}_{column}"] = task
    return {"tasks": tasks}


def test_a_5000_task_run_page_loads_and_answers_a_click(browser, daemons):
    noop = daemons("daggyd", executor="NoopTaskExecutor")
    run_id = noop.submit(lattice(50, 100))
    noop.wait_run(run_id, "COMPLETED")
    opened = Page(browser, noop)
    try:
        started = time.monotonic()
        opened.open(f"#/run/{run_id}")
        opened.wait_ui("window.daggyUI && window.daggyUI.ready && window.daggyUI.cy")
        seconds = time.monotonic() - started
        print(f"5,000-task run page ready in {seconds:.2f} s "
              f"(lastRenderMs {opened.ui('window.daggyUI.lastRenderMs')})")
        assert opened.ui("window.daggyUI.cy.nodes().length") >= 5000
        assert opened.ui('window.daggyUI.nodeState("t49_99")') == "COMPLETED"
        opened.page.fill("#task-filter", "t49_99")
        opened.page.click('#task-table tr[data-task="t49_99"]')
        opened.page.wait_for_selector("#task-panel-name")
        assert opened.page.inner_text("#task-panel-name") == "t49_99"
        opened.assert_clean()
    finally:
        opened.close()


def test_expanded_instances_are_grouped_under_their_task(page, daemon):
    spec = {"parameters": {"N": [str(n) for n in range(30)]}, "tasks": {
        "each": {"job": {"command": ["echo", "{{N}}"]}},
        "sum": {"job": {"command": ["true"]}, "parents": ["each"]}}}
    run_id = daemon.submit(spec)
    daemon.wait_run(run_id, "COMPLETED")
    page.open(f"#/run/{run_id}")
    page.wait_ui("window.daggyUI && window.daggyUI.ready && window.daggyUI.cy")
    page.wait_ui('window.daggyUI.nodeState("each[N=7]") === "COMPLETED"')
    assert len(page.page.query_selector_all("#task-table tr[data-task]")) == 31
    # Thirty instances start collapsed into one node; expanding shows each of them.
    collapsed = page.ui("window.daggyUI.cy.nodes(':visible').length")
    page.page.click("#expand-all")
    page.wait_ui(f"window.daggyUI.cy.nodes(':visible').length > {collapsed}")
    page.page.click("#collapse-all")
    page.wait_ui(f"window.daggyUI.cy.nodes(':visible').length === {collapsed}")
    page.assert_clean()


# -- auth -----------------------------------------------------------------------------------

def test_with_auth_the_page_asks_for_the_token_once(browser, daemons):
    secured = daemons("daggyd", executor="NoopTaskExecutor", auth_tokens=[TOKEN])
    reply = secured.http("POST", "/v1/dagrun", chain("a", command=["true"]),
                         headers={"Authorization": f"Bearer {TOKEN}"})
    assert reply.status == 200, reply.raw
    run_id = reply.json["runID"]
    opened = Page(browser, secured)
    try:
        opened.open()
        opened.page.wait_for_selector("#token-dialog", state="visible")
        opened.page.fill("#token-input", TOKEN)
        opened.page.click("#token-submit")
        opened.page.wait_for_selector("#token-dialog", state="hidden")
        opened.wait_ui("window.daggyUI && window.daggyUI.ready")
        assert opened.page.evaluate("() => sessionStorage.getItem('daggy.token')") == TOKEN
        opened.page.wait_for_selector(f'#runs-table tr[data-run-id="{run_id}"]')
        # The next page load takes the token from sessionStorage: no dialog.
        opened.page.reload()
        opened.wait_ui("window.daggyUI && window.daggyUI.ready")
        assert not opened.page.is_visible("#token-dialog")
        # 401s before the token was given are expected console noise.
        opened.assert_clean("401")
    finally:
        opened.close()
