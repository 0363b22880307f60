"""The REST API through StubTreq over the real resource, and the Site's body limit and log.

A fake runner records the calls the API makes and raises the runner's typed errors; run
and task documents come from a real MemoryStore filled through its write methods.
"""

from __future__ import annotations

import json
from urllib.parse import quote

import pytest
from treq.testing import StubTreq
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.web.test.requesthelper import DummyChannel

from daggy.errors import Conflict, SpecInvalid, Unavailable, UnknownRun, UnknownTask
from daggy.loggers.memory import MemoryStore
from daggy.model import FINISHED_STATES, Attempt, State, TaskDef
from daggy.server._site import _BoundedRequest
from daggy.server.api import IDLE_TIMEOUT_SECONDS, DaggyAPI, make_site

BASE = "http://daggy.test"

SPECIAL_NAMES = [
    "pull[DATE=2021-01-01,DIR=/tmp]",
    "a/b",
    "/leading",
    "trailing/",
    "100%",
    "%2F literally",
    "with space",
    "[bracketed]",
    "été ☃ 名前",
    "a+b",
    "what?#frag",
    "state",
    "..",
]


def result_of(deferred):
    """The result of a Deferred that has already fired (raising its failure)."""
    results = []
    deferred.addBoth(results.append)
    assert results, "Deferred has not fired"
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]


class FakeRunner:
    """Stands in for RunManager: records calls, keeps run states, raises its typed errors."""

    def __init__(self, store: MemoryStore):
        self._store = store
        self.calls: list[tuple] = []
        self.accepting = True
        self.explode_with: Exception | None = None

    def _run_state(self, run_id):
        if self.explode_with is not None:
            raise self.explode_with
        if not self._store.has_run(run_id):
            raise UnknownRun(run_id)
        return State(result_of(self._store.get_run_state(run_id))["state"])

    def validate(self, doc):
        tasks = doc.get("tasks")
        if not isinstance(tasks, dict) or not tasks:
            raise SpecInvalid(["tasks: required, a non-empty object",
                               "tag: must be a string"])
        return sorted(tasks)

    def submit(self, doc):
        self.calls.append(("submit", doc))
        if not self.accepting:
            return defer.fail(Unavailable("daggyd is shutting down and accepts no new runs"))
        try:
            names = self.validate(doc)
        except SpecInvalid:
            return defer.fail()
        run_id = result_of(self._store.create_run(doc.get("tag"), {}, 0.0))
        self._store.add_tasks(run_id, [TaskDef(name, name, {}) for name in names], 0.0)
        return defer.succeed(run_id)

    def kill_run(self, run_id):
        self.calls.append(("kill_run", run_id))
        state = self._run_state(run_id)
        if state in FINISHED_STATES:
            raise Conflict(f"run {run_id} is already {state}")

    def resume_run(self, run_id):
        self.calls.append(("resume_run", run_id))
        if self._run_state(run_id) not in FINISHED_STATES:
            raise Conflict(f"run {run_id} is running; only a finished run can be resumed")

    def set_task_state(self, run_id, name, state):
        self.calls.append(("set_task_state", run_id, name, state))
        self._run_state(run_id)
        if name not in result_of(self._store.get_run(run_id))["taskStates"]:
            raise UnknownTask(run_id, name)


class Harness:
    def __init__(self):
        self.clock = Clock()
        self.store = MemoryStore()
        self.runner = FakeRunner(self.store)
        self.api = DaggyAPI(self.runner, self.store, self.clock)
        self.client = StubTreq(self.api.resource())

    def add_run(self, tag="nightly", state=State.RUNNING, tasks=("a", "b")):
        run_id = result_of(self.store.create_run(tag, {"DATE": ["2021-01-01"]}, 100.0))
        self.store.add_tasks(run_id, [TaskDef(name, "pull", {"command": ["/bin/true"]})
                                      for name in tasks], 100.0)
        self.store.record_run_state(run_id, state, 101.0)
        return run_id

    def request(self, method, path, data=None, headers=None):
        """(response, body bytes) for one request; every handler here answers synchronously."""
        d = self.client.request(method, BASE + path, data=data, headers=headers)
        self.client.flush()
        response = result_of(d)
        body = self.client.content(response)
        self.client.flush()
        return response, result_of(body)

    def json(self, method, path, data=None, expect=200):
        response, body = self.request(method, path, data=data)
        assert response.code == expect, body
        assert response.headers.getRawHeaders("content-type") == ["application/json"]
        return json.loads(body)


@pytest.fixture
def harness():
    return Harness()


def task_path(run_id, name, *rest):
    return "/".join([f"/v1/dagrun/{run_id}/task", quote(name, safe=""), *rest])


# -- /ready ----------------------------------------------------------------------------------

def test_ready(harness):
    """GET /ready answers with the readiness message as JSON."""
    assert harness.json("GET", "/ready") == {"msg": "Ya like DAGs?"}


def test_head_ready_has_no_body(harness):
    """HEAD on a GET route answers 200 with the headers and no body."""
    response, body = harness.request("HEAD", "/ready")
    assert (response.code, body) == (200, b"")


# -- submit and validate -----------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/v1/dagrun", "/v1/dagrun/"])
def test_submit_returns_run_id(harness, path):
    """POSTing a spec hands the parsed document to the runner and answers with its run ID."""
    spec = {"tag": "t", "tasks": {"one": {"job": {"command": ["/bin/true"]}}}}
    assert harness.json("POST", path, data=json.dumps(spec).encode()) == {"runID": 0}
    assert harness.json("POST", path, data=json.dumps(spec).encode()) == {"runID": 1}
    assert harness.runner.calls == [("submit", spec), ("submit", spec)]


@pytest.mark.parametrize("body, message", [
    (b"", "body: empty; expected a JSON document"),
    (b"  \n", "body: empty; expected a JSON document"),
    (b"{nope", "body: invalid JSON: Expecting property name enclosed in double quotes "
               "at line 1 column 2"),
    (b"tasks: {}", "body: invalid JSON: Expecting value at line 1 column 1"),
    (b'{"tasks": NaN}', "body: invalid JSON: NaN is not valid JSON"),
    (b'{"tasks": "\xff"}', "body: invalid JSON: not UTF-8"),
    (b"[" * 100_000, "body: invalid JSON: nested too deeply"),
    (b"[1, 2]", "body: expected a JSON object (a DAG spec), got an array"),
    (b'"spec"', "body: expected a JSON object (a DAG spec), got a string"),
    (b"null", "body: expected a JSON object (a DAG spec), got null"),
])
@pytest.mark.parametrize("path", ["/v1/dagrun", "/v1/dagrun/validate"])
def test_bad_body_is_400_naming_the_problem(harness, path, body, message):
    """A body that is not a JSON object is a 400 naming the problem; the runner is not asked."""
    assert harness.json("POST", path, data=body, expect=400) == {"error": message}
    assert harness.runner.calls == []


def test_submit_invalid_spec_lists_every_error(harness):
    """A spec the runner rejects is a 400 with the joined message and the list of errors."""
    answer = harness.json("POST", "/v1/dagrun", data=b'{"tasks": {}}', expect=400)
    assert answer == {
        "error": "tasks: required, a non-empty object; tag: must be a string",
        "errors": ["tasks: required, a non-empty object", "tag: must be a string"],
    }


def test_submit_while_shutting_down_is_503(harness):
    """A runner that no longer accepts runs makes submit answer 503 with its message."""
    harness.runner.accepting = False
    answer = harness.json("POST", "/v1/dagrun", data=b'{"tasks": {"a": {}}}', expect=503)
    assert answer == {"error": "daggyd is shutting down and accepts no new runs"}


def test_validate_valid_spec_lists_task_names(harness):
    """A valid spec validates to its expanded task names without submitting anything."""
    answer = harness.json("POST", "/v1/dagrun/validate",
                          data=b'{"tasks": {"b": {}, "a": {}}}')
    assert answer == {"valid": True, "tasks": ["a", "b"]}
    assert harness.runner.calls == []
    assert harness.store.run_ids() == []


def test_validate_invalid_spec(harness):
    """An invalid spec validates to a 400 with valid=false and every error."""
    answer = harness.json("POST", "/v1/dagrun/validate", data=b'{"tag": 3}', expect=400)
    assert answer == {
        "valid": False,
        "error": "tasks: required, a non-empty object; tag: must be a string",
        "errors": ["tasks: required, a non-empty object", "tag: must be a string"],
    }


# -- run list ---------------------------------------------------------------------------------

def test_list_runs_filters(harness):
    """The list holds unfinished runs unless all= is true, and filters by tag and state."""
    running = harness.add_run(tag="nightly", state=State.RUNNING)
    done = harness.add_run(tag="nightly", state=State.COMPLETED)
    other = harness.add_run(tag="hourly", state=State.QUEUED)

    def ids(query):
        return [run["runID"] for run in harness.json("GET", "/v1/dagruns" + query)]

    assert ids("") == [running, other]
    assert ids("/") == [running, other]
    for word in ["1", "true", "yes", "TRUE", ""]:
        assert ids(f"?all={word}") == [running, done, other]
    assert ids("?all=0") == [running, other]
    assert ids("?all=no") == [running, other]
    assert ids("?tag=nightly") == [running]
    assert ids("?tag=nightly&all=1") == [running, done]
    assert ids("?state=COMPLETED") == [done]
    assert ids("?state=completed&all=false") == []
    assert ids("?state=QUEUED&tag=hourly") == [other]
    assert ids("?tag=none") == []


def test_list_runs_item_shape(harness):
    """Each listed run carries its ID, tag, state, times and per-state task counts."""
    harness.add_run(tag="nightly", state=State.RUNNING, tasks=("a", "b"))
    [item] = harness.json("GET", "/v1/dagruns")
    assert item["runID"] == 0
    assert item["tag"] == "nightly"
    assert item["state"] == "RUNNING"
    assert item["taskCounts"]["QUEUED"] == 2
    assert item["startTime"] == "1970-01-01T00:01:40.000000Z"
    assert item["lastUpdate"] == "1970-01-01T00:01:41.000000Z"


def test_list_runs_tag_with_special_characters(harness):
    """A percent-encoded tag filter is decoded before matching."""
    run_id = harness.add_run(tag="a&b=c é")
    answer = harness.json("GET", "/v1/dagruns?tag=" + quote("a&b=c é", safe=""))
    assert [run["runID"] for run in answer] == [run_id]


@pytest.mark.parametrize("query, message", [
    ("?state=DONE", "state: unknown state 'DONE'; expected one of QUEUED, RUNNING, RETRY, "
                    "ERRORED, KILLED, COMPLETED"),
    ("?all=maybe", "all: expected 1, true or yes (or 0, false, no), got 'maybe'"),
    ("?tag=a&tag=b", "tag: give at most one value"),
    ("?tag=%FF", "tag: not UTF-8"),
])
def test_list_runs_bad_query_is_400(harness, query, message):
    """A bad filter value is a 400 naming the parameter."""
    assert harness.json("GET", "/v1/dagruns" + query, expect=400) == {"error": message}


# -- one run -----------------------------------------------------------------------------------

def test_get_run(harness):
    """GET on a run answers with the whole run document from the logger."""
    run_id = harness.add_run(tasks=("a",))
    harness.store.record_attempt(run_id, "a", Attempt(102.0, 103.0, 0, True, output_log="hi\n"))
    answer = harness.json("GET", f"/v1/dagrun/{run_id}")
    assert answer == json.loads(json.dumps(result_of(harness.store.get_run(run_id))))
    assert answer["taskAttempts"]["a"][0]["outputLog"] == "hi\n"
    assert answer["taskStates"] == {"a": "QUEUED"}


def test_get_run_state(harness):
    """GET on a run's state answers with its state and task counts."""
    run_id = harness.add_run(state=State.ERRORED, tasks=("a",))
    answer = harness.json("GET", f"/v1/dagrun/{run_id}/state")
    assert answer["runID"] == run_id
    assert answer["state"] == "ERRORED"
    assert answer["taskCounts"]["QUEUED"] == 1


@pytest.mark.parametrize("path", ["/v1/dagrun/0/state", "/v1/dagrun/%30/state",
                                  "/v1/dagrun/7/state", "/v1/dagrun/x/state",
                                  "/v1/dagrun/0/state/", "/v1/dagrun/0/state?all=1"])
def test_state_poll_shortcut_answers_exactly_as_the_route(harness, monkeypatch, path):
    """The run-state poll answered without Klein's routing gives the same status, headers
    and body as the Klein route does."""
    harness.add_run(state=State.RUNNING, tasks=("a",))
    fast = harness.request("GET", path)
    monkeypatch.setattr(DaggyAPI, "answer_state_poll", lambda self, request: None)
    routed = harness.request("GET", path)
    assert (fast[0].code, fast[1]) == (routed[0].code, routed[1])
    assert (list(fast[0].headers.getAllRawHeaders())
            == list(routed[0].headers.getAllRawHeaders()))


def test_state_poll_shortcut_leaves_asynchronous_reads_to_the_route(harness):
    """When the logger's answer is not ready at once, the route waits for it."""
    run_id = harness.add_run(state=State.RUNNING, tasks=("a",))
    reads = []

    def slow_read(requested):
        reads.append(defer.Deferred())
        return reads[-1]

    harness.store.get_run_state = slow_read
    d = harness.client.request("GET", BASE + f"/v1/dagrun/{run_id}/state")
    harness.client.flush()
    assert len(reads) == 2  # the shortcut's, then the route's
    reads[1].callback({"runID": run_id, "state": "RUNNING"})
    harness.client.flush()
    response = result_of(d)
    body = harness.client.content(response)
    harness.client.flush()
    assert (response.code, json.loads(result_of(body))) == (
        200, {"runID": run_id, "state": "RUNNING"})


@pytest.mark.parametrize("method, suffix", [
    ("GET", ""), ("DELETE", ""), ("GET", "/state"), ("PATCH", "/state/QUEUED"),
    ("GET", "/task/a"), ("GET", "/task/a/state"), ("PATCH", "/task/a/state/QUEUED"),
])
@pytest.mark.parametrize("run_id", ["7", "abc", "-1", "1.5", "%C3%A9"])
def test_unknown_or_malformed_run_id_is_404(harness, method, suffix, run_id):
    """Every run route answers 404 JSON for a run that does not exist or a non-integer ID."""
    answer = harness.json(method, f"/v1/dagrun/{run_id}{suffix}", expect=404)
    assert answer["error"].startswith("no such run: ")


def test_kill_run(harness):
    """DELETE on a run asks the runner to kill it and answers with the KILLED state."""
    run_id = harness.add_run()
    assert harness.json("DELETE", f"/v1/dagrun/{run_id}") == {"runID": run_id, "state": "KILLED"}
    assert harness.runner.calls == [("kill_run", run_id)]


def test_kill_finished_run_is_409(harness):
    """Killing a finished run is a 409 carrying the runner's message."""
    run_id = harness.add_run(state=State.COMPLETED)
    answer = harness.json("DELETE", f"/v1/dagrun/{run_id}", expect=409)
    assert answer == {"error": f"run {run_id} is already COMPLETED"}


def test_patch_run_state(harness):
    """PATCHing a run to QUEUED resumes it and to KILLED kills it (names are case-blind)."""
    finished = harness.add_run(state=State.ERRORED)
    running = harness.add_run(state=State.RUNNING)
    assert harness.json("PATCH", f"/v1/dagrun/{finished}/state/QUEUED") == {
        "runID": finished, "state": "QUEUED"}
    assert harness.json("PATCH", f"/v1/dagrun/{running}/state/killed") == {
        "runID": running, "state": "KILLED"}
    assert harness.runner.calls == [("resume_run", finished), ("kill_run", running)]


def test_resume_running_run_is_409(harness):
    """Re-queueing a run that is still running is a 409."""
    run_id = harness.add_run(state=State.RUNNING)
    answer = harness.json("PATCH", f"/v1/dagrun/{run_id}/state/QUEUED", expect=409)
    assert "only a finished run can be resumed" in answer["error"]


@pytest.mark.parametrize("state, message", [
    ("RUNNING", "state: a run cannot be set to RUNNING; use QUEUED, KILLED"),
    ("COMPLETED", "state: a run cannot be set to COMPLETED; use QUEUED, KILLED"),
    ("PAUSED", "state: unknown state 'PAUSED'; a run can be set to QUEUED, KILLED"),
])
def test_patch_run_to_other_state_is_400(harness, state, message):
    """PATCHing a run to a state other than QUEUED or KILLED is a 400 naming the state."""
    run_id = harness.add_run()
    assert harness.json("PATCH", f"/v1/dagrun/{run_id}/state/{state}", expect=400) == {
        "error": message}
    assert harness.runner.calls == []


# -- tasks -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", SPECIAL_NAMES)
def test_task_routes_with_special_names(harness, name):
    """A task name encoded as one path segment reaches the logger and runner unchanged."""
    run_id = harness.add_run(tasks=(name, "a", "b"))
    harness.store.record_attempt(run_id, name, Attempt(102.0, 103.5, 3, False, error_log="x"))

    task = harness.json("GET", task_path(run_id, name))
    assert task["name"] == name
    assert task["definition"]["name"] == name
    assert task["attempts"][0]["rc"] == 3
    assert task["attempts"][0]["stopTime"] == "1970-01-01T00:01:43.500000Z"

    assert harness.json("GET", task_path(run_id, name, "state")) == {
        "runID": run_id, "name": name, "state": "QUEUED"}

    assert harness.json("PATCH", task_path(run_id, name, "state", "COMPLETED")) == {
        "runID": run_id, "name": name, "state": "COMPLETED"}
    assert harness.runner.calls == [("set_task_state", run_id, name, State.COMPLETED)]


@pytest.mark.parametrize("state", ["QUEUED", "COMPLETED", "KILLED", "queued"])
def test_patch_task_state_passes_state(harness, state):
    """PATCHing a task's state passes the State to the runner and echoes it back."""
    run_id = harness.add_run()
    answer = harness.json("PATCH", task_path(run_id, "a", "state", state))
    assert answer == {"runID": run_id, "name": "a", "state": state.upper()}
    assert harness.runner.calls == [("set_task_state", run_id, "a", State(state.upper()))]


@pytest.mark.parametrize("state, message", [
    ("RUNNING", "state: a task cannot be set to RUNNING; use QUEUED, COMPLETED, KILLED"),
    ("BOGUS", "state: unknown state 'BOGUS'; a task can be set to QUEUED, COMPLETED, KILLED"),
])
def test_patch_task_to_other_state_is_400(harness, state, message):
    """PATCHing a task to an unsupported or unknown state is a 400 naming the state."""
    run_id = harness.add_run()
    assert harness.json("PATCH", task_path(run_id, "a", "state", state), expect=400) == {
        "error": message}
    assert harness.runner.calls == []


@pytest.mark.parametrize("method, suffix", [
    ("GET", ()), ("GET", ("state",)), ("PATCH", ("state", "QUEUED")),
])
def test_unknown_task_is_404(harness, method, suffix):
    """Every task route answers 404 JSON for a task the run does not have."""
    run_id = harness.add_run()
    answer = harness.json(method, task_path(run_id, "a/b", *suffix), expect=404)
    assert answer == {"error": f"run {run_id} has no task named 'a/b'"}


def test_task_routes_accept_a_trailing_slash(harness):
    """A trailing slash after a task route is ignored, as on every other route."""
    run_id = harness.add_run(tasks=("a/", "a"))
    assert harness.json("GET", task_path(run_id, "a") + "/")["name"] == "a"
    assert harness.json("GET", task_path(run_id, "a/") + "/")["name"] == "a/"
    assert harness.json("GET", task_path(run_id, "a/", "state") + "/")["name"] == "a/"


def test_unencoded_slash_in_task_name_is_404(harness):
    """A name whose '/' is not encoded splits into segments no route knows."""
    run_id = harness.add_run(tasks=("a/b",))
    answer = harness.json("GET", f"/v1/dagrun/{run_id}/task/a/b", expect=404)
    assert answer == {"error": f"no such endpoint: GET /v1/dagrun/{run_id}/task/a/b"}


def test_empty_task_name_is_400(harness):
    """An empty task name segment is a 400."""
    run_id = harness.add_run()
    answer = harness.json("GET", f"/v1/dagrun/{run_id}/task//state", expect=400)
    assert answer == {"error": "task name: empty"}


def test_non_utf8_task_name_is_400(harness):
    """A task name that is not UTF-8 once decoded is a 400, and nothing is logged as an error."""
    run_id = harness.add_run()
    answer = harness.json("GET", f"/v1/dagrun/{run_id}/task/%FF", expect=400)
    assert answer == {"error": "path: not UTF-8 after percent-decoding"}


# -- routing errors ----------------------------------------------------------------------------

@pytest.mark.parametrize("method, path, allowed", [
    ("DELETE", "/v1/dagruns", "GET, HEAD"),
    ("POST", "/ready", "GET, HEAD"),
    ("GET", "/v1/dagrun", "POST"),
    ("GET", "/v1/dagrun/", "POST"),
    ("POST", "/v1/dagrun/0", "DELETE, GET, HEAD"),
    ("PUT", "/v1/dagrun/0/state", "GET, HEAD"),
    ("GET", "/v1/dagrun/0/state/QUEUED", "PATCH"),
    ("DELETE", "/v1/dagrun/0/task/a", "GET, HEAD"),
    ("PUT", "/v1/dagrun/0/task/a/state/", "GET, HEAD"),
    ("DELETE", "/v1/dagrun/0/task/a/state/QUEUED", "PATCH"),
    ("OPTIONS", "/v1/dagrun/0/task/a%2Fb/state/killed", "PATCH"),
    ("PATCH", "/v1/dagrun/0/task/a", "GET, HEAD"),
    ("PATCH", "/v1/dagrun/0/task/a/state", "GET, HEAD"),
    ("GET", "/v1/dagrun/0/task/a/state/QUEUED", "PATCH"),
    ("OPTIONS", "/v1/dagruns", "GET, HEAD"),
])
def test_wrong_verb_is_405_with_allow(harness, method, path, allowed):
    """A known path with the wrong verb is a 405 JSON answer with an Allow header."""
    harness.add_run()
    response, body = harness.request(method, path)
    assert response.code == 405
    assert response.headers.getRawHeaders("content-type") == ["application/json"]
    allow = response.headers.getRawHeaders("allow")[0]
    assert sorted(allow.split(", ")) == sorted(allowed.split(", "))
    assert json.loads(body)["error"].startswith(f"method {method} not allowed on ")


@pytest.mark.parametrize("suffix", ["", "/state", "/task/a", "/task/a/state"])
def test_run_id_of_thousands_of_digits_is_404(harness, suffix):
    """A run ID too long for int() (or any run counter) is an unknown run, shown shortened,
    on the state fast path and through Klein alike."""
    harness.add_run()
    answer = harness.json("GET", "/v1/dagrun/" + "9" * 5000 + suffix, expect=404)
    assert answer == {"error": f"no such run: {'9' * 40}... (5000 characters)"}
    for method, path in [("DELETE", ""), ("PATCH", "/state/KILLED")]:
        harness.json(method, "/v1/dagrun/" + "9" * 20 + path, expect=404)


def test_run_id_with_leading_zeros_names_the_run(harness):
    """Leading zeros do not count, however many there are: 000...01 is run 1."""
    harness.add_run()
    harness.add_run()
    answer = harness.json("GET", "/v1/dagrun/" + "0" * 5000 + "1/state")
    assert answer["runID"] == 1


def test_get_validate_reads_as_a_run_id(harness):
    """GET /v1/dagrun/validate is the run route with a non-integer ID, hence a 404."""
    assert harness.json("GET", "/v1/dagrun/validate", expect=404) == {
        "error": "no such run: validate"}


@pytest.mark.parametrize("path", [
    "/", "/v2/dagruns", "/v1/dagrun/0/nope", "/v1/dagrun/0/task/a/logs",
    "/v1/dagrun/0/task/a/state/QUEUED/extra", "/ready/x", "/v1/dagrun/0/task",
])
def test_unknown_route_is_404_json(harness, path):
    """An unknown path is a 404 JSON answer naming the method and path."""
    harness.add_run()
    answer = harness.json("GET", path, expect=404)
    assert answer == {"error": f"no such endpoint: GET {path}"}


@pytest.mark.parametrize("method", ["DELETE", "PATCH", "PUT"])
def test_unknown_task_subpath_is_404_for_every_method(harness, method):
    """A path below a task that no route serves is a 404 whatever the method, not a 405
    advertising the methods of other task paths."""
    harness.add_run()
    response, body = harness.request(method, "/v1/dagrun/0/task/a/logs")
    assert response.code == 404
    assert response.headers.getRawHeaders("allow") is None
    assert json.loads(body) == {"error": f"no such endpoint: {method} /v1/dagrun/0/task/a/logs"}


@pytest.mark.parametrize("method, path, data", [
    ("GET", "/nope", None),
    ("DELETE", "/v1/dagruns", None),
    ("GET", "/v1/dagrun/abc", None),
    ("GET", "/v1/dagrun/%FF", None),
    ("POST", "/v1/dagrun", b"<html>"),
    ("PATCH", "/v1/dagrun/0/state/RUNNING", None),
    ("GET", "/v1/dagrun/0/task/%2F/state/x", None),
])
def test_errors_never_answer_html(harness, method, path, data):
    """Every error answer is JSON with an "error" string, never an HTML page."""
    response, body = harness.request(method, path, data=data)
    assert response.code >= 400
    assert response.headers.getRawHeaders("content-type") == ["application/json"]
    assert b"<html" not in body.lower()
    assert isinstance(json.loads(body)["error"], str)


def test_unexpected_exception_is_logged_500(harness, no_logged_errors):
    """A bug behind a route answers 500 "internal error" and is logged with its traceback."""
    run_id = harness.add_run()
    harness.runner.explode_with = RuntimeError("kaboom")
    answer = harness.json("DELETE", f"/v1/dagrun/{run_id}", expect=500)
    assert answer == {"error": "internal error"}
    [event] = no_logged_errors
    assert event["log_failure"].check(RuntimeError)
    assert "kaboom" not in json.dumps(answer)
    no_logged_errors.clear()


# -- the Site: body limit, timeout, access log -------------------------------------------------

class Connection:
    """A real HTTPChannel from the Site, fed bytes through an in-memory transport."""

    def __init__(self, site):
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
        self.protocol = site.buildProtocol(None)
        self.protocol.makeConnection(self.transport)

    def send(self, data: bytes) -> list[tuple[int, dict, bytes]]:
        """Feed C{data}; return the responses written so far (and forget them)."""
        self.protocol.dataReceived(data)
        written = self.transport.value()
        self.transport.clear()
        return parse_responses(written)

    def close(self):
        self.protocol.connectionLost(Failure(ConnectionDone()))


def parse_responses(data: bytes) -> list[tuple[int, dict, bytes]]:
    responses = []
    while data:
        head, _, data = data.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if "content-length" in headers:
            length = int(headers["content-length"])
            body, data = data[:length], data[length:]
        else:
            assert headers.get("transfer-encoding") == "chunked"
            body = b""
            while True:
                size_line, _, data = data.partition(b"\r\n")
                size = int(size_line, 16)
                body += data[:size]
                data = data[size + 2:]
                if size == 0:
                    break
        responses.append((int(status_line.split()[1]), headers, body))
    return responses


def post(path: bytes, body: bytes, chunk_size: int | None = None) -> bytes:
    if chunk_size is None:
        return (b"POST " + path + b" HTTP/1.1\r\nHost: daggy.test\r\n"
                b"Content-Length: %d\r\n\r\n" % len(body) + body)
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + chunk_size]), body[i:i + chunk_size])
                      for i in range(0, len(body), chunk_size))
    return (b"POST " + path + b" HTTP/1.1\r\nHost: daggy.test\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n")


@pytest.fixture
def site_harness():
    harness = Harness()
    harness.site = make_site(harness.api, max_request_bytes=64)
    yield harness
    assert harness.clock.getDelayedCalls() == []


SPEC = json.dumps({"tasks": {"a": {}}}, separators=(",", ":")).encode()


@pytest.mark.parametrize("chunk_size", [None, 5])
def test_body_at_the_limit_is_served(site_harness, chunk_size):
    """A body of exactly max_request_bytes reaches the route (declared or chunked)."""
    connection = Connection(site_harness.site)
    body = SPEC + b" " * (64 - len(SPEC))
    [(code, headers, answer)] = connection.send(post(b"/v1/dagrun", body, chunk_size))
    assert (code, json.loads(answer)) == (200, {"runID": 0})
    connection.close()


@pytest.mark.parametrize("host", [b"h" * 64, b"a..b", b".", "\u00e9".encode() * 100])
def test_host_that_is_not_a_host_name_is_400_json(site_harness, host):
    """A Host header werkzeug cannot IDNA-encode is a 400 JSON answer, not a 500."""
    connection = Connection(site_harness.site)
    [(code, headers, answer)] = connection.send(
        b"GET /v1/dagruns HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
    assert (code, headers["content-type"]) == (400, "application/json")
    assert json.loads(answer) == {"error": "Host header: not a valid host name"}
    connection.close()


@pytest.mark.parametrize("chunk_size", [None, 7, 1000])
def test_body_over_the_limit_is_413(site_harness, chunk_size):
    """A body one byte over the limit is a 413 JSON answer and never reaches the runner;
    the connection stays usable."""
    connection = Connection(site_harness.site)
    body = SPEC + b" " * (65 - len(SPEC))
    [(code, headers, answer)] = connection.send(post(b"/v1/dagrun", body, chunk_size))
    assert code == 413
    assert headers["content-type"] == "application/json"
    assert json.loads(answer) == {"error": "request body larger than 64 bytes"}
    assert site_harness.runner.calls == []

    [(code, _, answer)] = connection.send(b"GET /ready HTTP/1.1\r\nHost: daggy.test\r\n\r\n")
    assert (code, json.loads(answer)) == (200, {"msg": "Ya like DAGs?"})
    connection.close()


@pytest.mark.parametrize("declared", [None, 10_000_000])
def test_excess_body_is_discarded_not_buffered(site_harness, declared):
    """The request keeps no more than the limit of an oversized body in its content."""
    channel = DummyChannel()
    channel.site = site_harness.site
    request = _BoundedRequest(channel)
    request.gotLength(declared)
    for _ in range(100):
        request.handleContentChunk(b"x" * 100_000)
    assert request.content.tell() == 0
    assert request._body_too_large


def test_idle_connection_times_out(site_harness):
    """A connection idle for the Site's timeout is closed."""
    assert site_harness.site.timeOut == IDLE_TIMEOUT_SECONDS
    connection = Connection(site_harness.site)
    connection.send(b"GET /ready HTTP/1.1\r\nHost: daggy.test\r\n\r\n")
    site_harness.clock.advance(IDLE_TIMEOUT_SECONDS - 1)
    assert not connection.transport.disconnecting
    site_harness.clock.advance(1)
    assert connection.transport.disconnecting
    connection.close()


def test_requests_write_no_log_events(site_harness):
    """Answering requests (found or not) writes nothing to the daemon's log."""
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        connection = Connection(site_harness.site)
        site_harness.site.startFactory()
        connection.send(b"GET /ready HTTP/1.1\r\nHost: daggy.test\r\n\r\n")
        connection.send(b"GET /nope HTTP/1.1\r\nHost: daggy.test\r\n\r\n")
        connection.close()
        site_harness.site.stopFactory()
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert events == []


def test_a_request_trickling_in_is_answered_408_and_closed(site_harness):
    """A client that keeps sending header bytes (so the idle timeout never fires) but does
    not finish its request within request_timeout gets a 408 JSON answer and is cut off."""
    site = make_site(site_harness.api, max_request_bytes=64, reactor=site_harness.clock,
                     request_timeout=10)
    site.startFactory()
    connection = Connection(site)
    connection.send(b"GET /ready HTTP/1.1\r\n")
    for _ in range(12):
        site_harness.clock.advance(1)
        if connection.transport.disconnecting:
            break
        connection.send(b"X-Slow: 1\r\n")
    assert site_harness.clock.seconds() >= 10
    answer = connection.transport.value()
    assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1]) == {
        "error": "request not received within 10 seconds"}
    assert connection.transport.disconnecting
    connection.close()
    site.stopFactory()


def test_a_request_received_in_time_is_not_cut_off(site_harness):
    """Finished requests leave the deadline sweep: a keep-alive connection lives on."""
    site = make_site(site_harness.api, max_request_bytes=64, reactor=site_harness.clock,
                     request_timeout=10)
    site.startFactory()
    connection = Connection(site)
    [(status, _, _)] = connection.send(b"GET /ready HTTP/1.1\r\nHost: daggy.test\r\n\r\n")
    site_harness.clock.advance(20)
    assert status == 200
    assert connection.transport.value() == b""
    assert not connection.transport.disconnecting
    connection.close()
    site.stopFactory()


def test_a_request_for_star_is_answered_in_json(site_harness):
    """`GET *` gets a JSON 405 naming OPTIONS, the one method `*` takes."""
    connection = Connection(site_harness.site)
    [(status, headers, body)] = connection.send(b"GET * HTTP/1.1\r\nHost: daggy.test\r\n\r\n")
    assert status == 405
    assert json.loads(body) == {"error": "method GET not allowed on *; allowed: OPTIONS"}
    [(status, _, _)] = connection.send(b"OPTIONS * HTTP/1.1\r\nHost: daggy.test\r\n\r\n")
    assert status == 200
    connection.close()


def test_connections_beyond_the_cap_are_refused(site_harness):
    """With max_connections open, the next connection gets no protocol (the port closes
    it); once one closes, connections are accepted again."""
    site = make_site(site_harness.api, max_request_bytes=64, reactor=site_harness.clock,
                     max_connections=2)
    first = site.buildProtocol(None)
    second = site.buildProtocol(None)
    assert first is not None and second is not None
    assert site.buildProtocol(None) is None
    first.makeConnection(StringTransport())
    first.connectionLost(Failure(ConnectionDone()))
    assert site.buildProtocol(None) is not None


def test_make_site_rejects_negative_limit(harness):
    """A negative body limit is a programming error caught when the Site is made."""
    with pytest.raises(ValueError):
        make_site(harness.api, -1)


# -- GET /v1/events (Server-Sent Events) -------------------------------------------------------

from daggy.events import DEFAULT_MAX_PAUSED_SECONDS, EventHub  # noqa: E402
from daggy.model import iso8601  # noqa: E402


@pytest.fixture
def sse():
    """A Site over a MemoryStore that publishes to an EventHub (found by the API through
    the logger), and the connections a test opens on it."""
    harness = Harness()
    harness.hub = EventHub(harness.clock)
    harness.store.publish_to(harness.hub)
    harness.site = make_site(harness.api, max_request_bytes=64)
    yield harness
    assert harness.clock.getDelayedCalls() == []


def open_stream(site, target: bytes = b"/v1/events", headers: bytes = b""):
    """A Connection that sent C{GET target}; (connection, status, headers, body so far)."""
    connection = Connection(site)
    connection.protocol.dataReceived(
        b"GET " + target + b" HTTP/1.1\r\nHost: daggy.test\r\n" + headers + b"\r\n")
    head, _, rest = connection.transport.value().partition(b"\r\n\r\n")
    connection.transport.clear()
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    answer_headers = {name.lower(): value.strip() for name, _, value in
                      (line.partition(":") for line in header_lines)}
    return connection, int(status_line.split()[1]), answer_headers, rest


def dechunk(data: bytes) -> bytes:
    """The body bytes of complete chunks in C{data} (the stream never ends)."""
    body = b""
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line, 16)
        body += data[:size]
        data = data[size + 2:]
    return body


def stream_messages(connection) -> list[dict]:
    """The SSE messages written to C{connection} since the last call: each a dict of its
    fields, C{data} decoded from JSON."""
    body = dechunk(connection.transport.value())
    connection.transport.clear()
    assert body.endswith(b"\n\n") or not body
    messages = []
    for block in body.decode("utf-8").split("\n\n")[:-1]:
        fields = dict(line.split(": ", 1) for line in block.split("\n"))
        fields["data"] = json.loads(fields["data"])
        messages.append(fields)
    return messages


def test_events_stream_is_server_sent_events_of_the_logger_events(sse):
    """GET /v1/events answers 200 text/event-stream (not cached, chunked) at once, then each
    event the logger records as an id/event/data message with the OStreamLogger object."""
    connection, status, headers, body = open_stream(sse.site)
    assert status == 200
    assert headers["content-type"] == "text/event-stream; charset=utf-8"
    assert headers["cache-control"] == "no-store"
    assert headers["transfer-encoding"] == "chunked"
    assert body == b""
    run_id = sse.add_run(tasks=("a",))
    sse.clock.advance(0)
    messages = stream_messages(connection)
    assert [(m["id"], m["event"]) for m in messages] == [
        ("1", "runCreated"), ("2", "taskAdded"), ("3", "runState")]
    assert messages[2]["data"] == {"time": iso8601(101.0), "event": "runState",
                                   "runID": run_id, "state": "RUNNING"}
    assert messages[1]["data"]["definition"]["name"] == "a"
    connection.close()
    assert sse.hub.subscriptions == 0


def test_events_of_one_run(sse):
    """?run=N streams only run N's events."""
    first = sse.add_run()
    connection, status, _, _ = open_stream(sse.site, b"/v1/events?run=%d" % first)
    assert status == 200
    second = sse.add_run()
    sse.store.record_run_state(first, State.COMPLETED, 102.0)
    sse.clock.advance(0)
    messages = stream_messages(connection)
    assert [(m["data"]["runID"], m["event"], m["data"]["state"]) for m in messages] == [
        (first, "runState", "COMPLETED")]
    assert second != first
    connection.close()


@pytest.mark.parametrize("query, status, error", [
    (b"run=7", 404, "no such run: 7"),
    (b"run=seven", 404, "no such run: seven"),
    (b"run=1&run=2", 400, "run: give at most one value"),
    (b"lastEventID=-1", 400, "lastEventID: expected an event ID (a non-negative integer), "
                             "got '-1'"),
    (b"lastEventID=" + b"9" * 30, 400, "lastEventID: expected an event ID (a non-negative "
                                       "integer), got '" + "9" * 30 + "'"),
])
def test_bad_events_query_is_a_json_error_before_streaming(sse, query, status, error):
    """An unknown or malformed run ID, or a bad lastEventID, is a JSON 4xx naming it; no
    stream is opened."""
    connection = Connection(sse.site)
    [(code, headers, body)] = connection.send(
        b"GET /v1/events?" + query + b" HTTP/1.1\r\nHost: daggy.test\r\n\r\n")
    assert (code, headers["content-type"], json.loads(body)) == (
        status, "application/json", {"error": error})
    assert sse.hub.subscriptions == 0
    connection.close()


@pytest.mark.parametrize("header, query, error", [
    (b"Last-Event-ID: abc\r\n", b"", "Last-Event-ID: expected an event ID (a non-negative "
                                     "integer), got 'abc'"),
    # A browser never sends it empty (the SSE spec); the document's pattern refuses it.
    (b"Last-Event-ID: \r\n", b"?lastEventID=1", "Last-Event-ID: expected an event ID (a "
                                                 "non-negative integer), got ''"),
    (b"", b"?lastEventID=", "lastEventID: expected an event ID (a non-negative integer), "
                            "got ''"),
])
def test_bad_last_event_id_is_400(sse, header, query, error):
    """A Last-Event-ID header or lastEventID that is not an event ID is a 400 naming it."""
    connection = Connection(sse.site)
    [(code, _, body)] = connection.send(b"GET /v1/events" + query + b" HTTP/1.1\r\n"
                                        b"Host: daggy.test\r\n" + header + b"\r\n")
    assert (code, json.loads(body)) == (400, {"error": error})
    connection.close()


@pytest.mark.parametrize("headers, query, expected", [
    (b"Last-Event-ID: 1\r\n", b"", [2, 3, 4]),
    (b"", b"?lastEventID=2", [3, 4]),
    # An EventSource reconnects to the same URL with the header: the header is newer.
    (b"Last-Event-ID: 3\r\n", b"?lastEventID=1", [4]),
])
def test_reconnecting_with_last_event_id_replays_what_was_missed(sse, headers, query, expected):
    """The Last-Event-ID header (else lastEventID) gets every retained later event first."""
    sse.add_run(tasks=("a",))
    sse.store.record_run_state(0, State.COMPLETED, 102.0)
    connection, status, _, _ = open_stream(sse.site, b"/v1/events" + query, headers)
    assert status == 200
    sse.clock.advance(0)
    assert [int(m["id"]) for m in stream_messages(connection)] == expected
    connection.close()


def test_a_keep_alive_comment_every_15_seconds_of_silence_and_no_idle_timeout(sse):
    """An idle stream gets ': keep-alive' every 15 s and outlives the Site's idle timeout."""
    connection, _, _, _ = open_stream(sse.site)
    for _ in range(int(IDLE_TIMEOUT_SECONDS // 15) + 2):
        sse.clock.advance(15)
        assert dechunk(connection.transport.value()) == b": keep-alive\n\n"
        connection.transport.clear()
    assert not connection.transport.disconnecting
    connection.close()


def test_a_reader_that_stops_reading_is_disconnected(sse):
    """When the transport's buffer stays full (the channel pauses the stream) the daemon
    writes nothing more to it, however many events come, and drops the connection once it
    has taken nothing for max_paused_seconds."""
    connection, _, _, _ = open_stream(sse.site)
    connection.transport.producer.pauseProducing()  # what a full transport buffer does
    run_id = sse.add_run(tasks=())
    for second in range(int(DEFAULT_MAX_PAUSED_SECONDS) - 1):
        sse.store.add_tasks(run_id, [TaskDef(f"t{second}_{n}", "pull", {"pad": "x" * 1000})
                                     for n in range(100)], 102.0)
        sse.clock.advance(1)
        assert connection.transport.value() == b""
    assert not connection.transport.disconnecting
    sse.clock.advance(1)
    assert connection.transport.disconnected  # aborted
    assert sse.hub.subscriptions == 0
    connection.close()


def test_a_reader_that_resumes_gets_what_it_missed(sse):
    """A pause within the limit loses nothing: on resume every event follows in order."""
    connection, _, _, _ = open_stream(sse.site)
    connection.transport.producer.pauseProducing()
    sse.add_run(tasks=("a", "b"))
    sse.clock.advance(0)
    assert connection.transport.value() == b""
    connection.transport.producer.resumeProducing()
    sse.clock.advance(0)
    assert [int(m["id"]) for m in stream_messages(connection)] == [1, 2, 3, 4]
    connection.close()


def test_a_client_that_goes_away_is_forgotten(sse):
    """Closing the connection ends the subscription; later events cost it nothing."""
    connection, _, _, _ = open_stream(sse.site)
    assert sse.hub.subscriptions == 1
    connection.close()
    assert sse.hub.subscriptions == 0
    sse.add_run()
    sse.clock.advance(0)
    assert connection.transport.value() == b""


def test_head_events_answers_the_headers_only(sse):
    """HEAD /v1/events answers 200 with the stream's content type and no stream."""
    response, body = sse.request("HEAD", "/v1/events")
    assert (response.code, body) == (200, b"")
    assert response.headers.getRawHeaders("content-type") == ["text/event-stream; charset=utf-8"]
    assert sse.hub.subscriptions == 0


def test_events_without_a_hub_is_503(harness):
    """A daemon whose logger publishes no events answers /v1/events with a JSON 503."""
    answer = harness.json("GET", "/v1/events", expect=503)
    assert "publishes no events" in answer["error"]


def test_events_before_the_numbering_is_known_is_503(sse):
    """While a durable logger has not said where the event IDs go on, the stream is 503."""
    hub = EventHub(sse.clock)
    hub.defer_numbering()
    api = DaggyAPI(sse.runner, sse.store, sse.clock, events=hub)
    connection = Connection(make_site(api, max_request_bytes=64))
    [(code, _, body)] = connection.send(b"GET /v1/events HTTP/1.1\r\nHost: daggy.test\r\n\r\n")
    assert code == 503 and "event stream starts" in json.loads(body)["error"]
    connection.close()


def test_events_need_the_bearer_token_when_auth_is_on(sse):
    """With bearer tokens configured, /v1/events is 401 without one and streams with one."""
    token = "a-test-token-that-is-long-enough-0123456789"
    site = make_site(sse.api, max_request_bytes=64, auth_tokens=[token])
    connection = Connection(site)
    [(code, _, _)] = connection.send(b"GET /v1/events HTTP/1.1\r\nHost: daggy.test\r\n\r\n")
    assert code == 401
    connection.close()
    connection, status, _, _ = open_stream(
        site, headers=b"Authorization: Bearer " + token.encode() + b"\r\n")
    assert status == 200
    connection.close()
