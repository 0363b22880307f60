# -*- test-case-name: tests.unit.test_api -*-
"""daggyd's REST API (documented in docs/api.md).

L{DaggyAPI} is a class-based Klein app: routes read through the logger and act through the
runner; every failure, whether a typed L{DaggyError}, a routing miss (404/405) or a bug,
is turned into a JSON C{{"error": ...}} answer by L{DaggyAPI.answer_error}.

Task names may contain any character.  Clients percent-encode a name as one path segment
(C{/} as C{%2F}), but twisted.web percent-decodes segments before Klein routes them, which
loses the difference between C{%2F} and C{/}; the task routes therefore capture everything
after C{task/} and split the raw C{request.path} themselves.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import unquote_to_bytes

from klein import Klein
from klein.resource import KleinResource
from twisted.internet.defer import maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from werkzeug.exceptions import BadHost, HTTPException, MethodNotAllowed, NotFound
from werkzeug.routing import BaseConverter

from daggy._collector import collector_paused
from daggy.errors import (
    BadRequest,
    DaggyError,
    SpecInvalid,
    Unavailable,
    UnknownRun,
    json_type_name,
)
from daggy.jsonio import loads_like_stdlib
from daggy.model import State
from daggy.server._json import JSON_CONTENT_TYPE, json_body
from daggy.server._site import IDLE_TIMEOUT_SECONDS, DaggySite, make_site
from daggy.server.openapi import OPENAPI_PATH, build_openapi_document

__all__ = ["DaggyAPI", "DaggySite", "make_site", "IDLE_TIMEOUT_SECONDS"]

_RUN_ID = re.compile(r"[0-9]+")
# More than any run counter will reach (2**63 has 19 digits).
_MAX_RUN_ID_DIGITS = 19
_TRUE_WORDS = frozenset({"", "1", "true", "yes"})
_FALSE_WORDS = frozenset({"0", "false", "no"})
_RUN_TARGET_STATES = (State.QUEUED, State.KILLED)
_TASK_TARGET_STATES = (State.QUEUED, State.COMPLETED, State.KILLED)


class _Remainder(BaseConverter):
    """Matches the rest of the path, even when empty or starting with C{/} (unlike C{path})."""

    regex = ".*"
    part_isolating = False


class _UTF8Resource(KleinResource):
    """Answers a path or Host that is not UTF-8, or a Host that is not a valid host name,
    with a JSON 400 (Klein itself would log an error and answer with a plain-text or HTML
    body), and the run-state poll through L{DaggyAPI.answer_state_poll}.
    """

    def __init__(self, app: Klein, api: "DaggyAPI"):
        super().__init__(app)
        self._api = api

    def render(self, request: IRequest) -> Any:
        try:
            for segment in request.prepath + request.postpath:
                segment.decode("utf-8")
        except UnicodeDecodeError:
            return json_body(request, {"error": "path: not UTF-8 after percent-decoding"}, 400)
        try:
            request.getRequestHostname().decode("utf-8")
        except UnicodeDecodeError:
            return json_body(request, {"error": "Host header: not UTF-8"}, 400)
        if request.method == b"GET":
            answer = self._api.answer_state_poll(request)
            if answer is not None:
                return answer
        try:
            return super().render(request)
        except BadHost:
            # Raised by werkzeug's Map.bind, before Klein's error handling, for a Host it
            # cannot IDNA-encode (an empty or over-long label, ...).
            return json_body(request, {"error": "Host header: not a valid host name"}, 400)


def _text(raw: bytes) -> str:
    """Bytes from the request line, for messages and logs; never fails."""
    return raw.decode("utf-8", "replace")


def _parse_json_body(request: IRequest) -> Any:
    raw = request.content.read()
    if not raw.strip():
        raise BadRequest("body: empty; expected a JSON document")

    def reject_constant(name: str) -> None:
        raise ValueError(f"{name} is not valid JSON")

    try:
        with collector_paused():
            return loads_like_stdlib(raw, parse_constant=reject_constant)
    except json.JSONDecodeError as e:
        raise BadRequest(
            f"body: invalid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except UnicodeDecodeError:
        raise BadRequest("body: invalid JSON: not UTF-8") from None
    except RecursionError:
        raise BadRequest("body: invalid JSON: nested too deeply") from None
    except ValueError as e:
        raise BadRequest(f"body: invalid JSON: {e}") from None


def _parse_spec_body(request: IRequest) -> dict[str, Any]:
    doc = _parse_json_body(request)
    if not isinstance(doc, dict):
        raise BadRequest(
            f"body: expected a JSON object (a DAG spec), got {json_type_name(doc)}")
    return doc


def _parse_run_id(text: str) -> int:
    digits = text.lstrip("0")
    if not _RUN_ID.fullmatch(text) or len(digits) > _MAX_RUN_ID_DIGITS:
        # Run IDs are integers of a sane size, so no run has this ID (and int() refuses
        # strings of more than 4,300 digits).
        shown = text if len(text) <= 40 else f"{text[:40]}... ({len(text)} characters)"
        raise UnknownRun(shown)
    return int(digits or "0")


def _state_named(text: str) -> State:
    """The state C{text} names in any ASCII case.

    @raise ValueError: for anything else (str.upper would map some non-ASCII letters, such
        as the dotless i of C{"kılled"}, onto a state name).
    """
    if not text.isascii():
        raise ValueError(text)
    return State(text.upper())


def _parse_target_state(text: str, allowed: tuple[State, ...], what: str) -> State:
    allowed_names = ", ".join(state.value for state in allowed)
    try:
        state = _state_named(text)
    except ValueError:
        raise BadRequest(
            f"state: unknown state {text!r}; a {what} can be set to {allowed_names}") from None
    if state not in allowed:
        raise BadRequest(
            f"state: a {what} cannot be set to {state.value}; use {allowed_names}")
    return state


def _query_value(request: IRequest, name: str) -> str | None:
    values = request.args.get(name.encode("ascii"))
    if not values:
        return None
    if len(values) > 1:
        raise BadRequest(f"{name}: give at most one value")
    try:
        return values[0].decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest(f"{name}: not UTF-8") from None


def _unquote_segment(raw: bytes, what: str) -> str:
    try:
        return unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest(f"{what}: not UTF-8 after percent-decoding") from None


def _parse_event_id(raw: str, what: str) -> int:
    """An event ID a client sent back (C{Last-Event-ID})."""
    text = raw.strip(" \t")
    if not _RUN_ID.fullmatch(text) or len(text.lstrip("0")) > _MAX_RUN_ID_DIGITS:
        shown = text if len(text) <= 40 else f"{text[:40]}... ({len(text)} characters)"
        raise BadRequest(f"{what}: expected an event ID (a non-negative integer), got "
                         f"{shown!r}")
    return int(text)


def _last_event_id(request: IRequest) -> int | None:
    """The C{Last-Event-ID} header, else the C{lastEventID} query parameter: a browser's
    EventSource reconnects to the same URL with the header, which is the newer of the two."""
    header = request.getHeader(b"last-event-id")
    if header is not None:
        try:
            text = header.decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest("Last-Event-ID: not UTF-8") from None
        return _parse_event_id(text, "Last-Event-ID")
    query = _query_value(request, "lastEventID")
    return None if query is None else _parse_event_id(query, "lastEventID")


class _ResponseSink:
    """An L{daggy.events.EventSink} writing to an HTTP response."""

    def __init__(self, request: IRequest):
        self._request = request

    def write(self, data: bytes) -> None:
        self._request.write(data)

    def finish(self) -> None:
        request = self._request
        if not request.finished and not request._disconnected:
            request.unregisterProducer()
            request.finish()

    def abort(self) -> None:
        channel = self._request.channel
        if channel is not None and channel.transport is not None:
            channel.transport.abortConnection()


class _EventStream(Resource):
    """The answer of C{GET /v1/events}: a subscription's Server-Sent Events stream."""

    isLeaf = True

    def __init__(self, subscription: Any):
        super().__init__()
        self._subscription = subscription

    def render(self, request: IRequest) -> Any:
        request.setResponseCode(200)
        request.setHeader(b"Content-Type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"Cache-Control", b"no-store")
        # Proxies such as nginx would otherwise hold events back to fill their buffers.
        request.setHeader(b"X-Accel-Buffering", b"no")
        # The transport pauses the subscription while its buffer is full (a slow reader).
        request.registerProducer(self._subscription, True)
        # The headers now, so that the client knows the stream is open before any event.
        request.write(b"")
        return NOT_DONE_YET


def _task_path(request: IRequest, run_id: str) -> tuple[str, list[str]]:
    """Split a raw C{/v1/dagrun/<id>/task/<name>[/...]} path into (name, trailing segments).

    The name is exactly one raw segment, so an encoded C{%2F} stays inside it.  The API is
    served as the root resource, so the raw path starts with these segments.
    """
    raw_segments = request.path.split(b"/")
    expected_prefix = ["", "v1", "dagrun", run_id, "task"]
    prefix = [_unquote_segment(s, "path") for s in raw_segments[:len(expected_prefix)]]
    if prefix != expected_prefix or len(raw_segments) <= len(expected_prefix):
        raise NotFound()
    name = _unquote_segment(raw_segments[len(expected_prefix)], "task name")
    if not name:
        raise BadRequest("task name: empty")
    tail = [_unquote_segment(s, "path") for s in raw_segments[len(expected_prefix) + 1:]]
    if tail and tail[-1] == "":
        # A trailing slash, accepted as on every other route (a name ending in "/" arrives
        # as "%2F" inside its segment, so this is unambiguous).
        tail.pop()
    return name, tail


def _task_route_methods(tail: list[str]) -> tuple[str, ...]:
    """The methods a task path with these trailing segments takes; none when there is no
    such endpoint.  Klein matches every C{.../task/<rest>} path for GET and PATCH alike, so
    this, not the route table, says what each path really serves."""
    if tail in ([], ["state"]):
        return ("GET", "HEAD")
    if len(tail) == 2 and tail[0] == "state":
        return ("PATCH",)
    return ()


def _task_target(request: IRequest, run_id: str) -> tuple[str, list[str]]:
    """C{_task_path}, raising NotFound or MethodNotAllowed when the path does not take the
    request's method."""
    name, tail = _task_path(request, run_id)
    methods = _task_route_methods(tail)
    if not methods:
        raise NotFound()
    if _text(request.method) not in methods:
        raise MethodNotAllowed(valid_methods=list(methods))
    return name, tail


def _methods_of_task_path(request: IRequest) -> tuple[str, ...] | None:
    """For a task path, the methods it takes (none: no such endpoint); None for any other
    path or one that cannot be read."""
    segments = request.path.split(b"/")
    if len(segments) < 6 or segments[1:3] != [b"v1", b"dagrun"] or segments[4] != b"task":
        return None
    try:
        return _task_route_methods(_task_path(request, _unquote_segment(segments[3], "path"))[1])
    except (BadRequest, NotFound):
        return None


class DaggyAPI:
    """The daggyd REST API.

    @param runner: a L{daggy.runner.RunManager} (submit, validate, kill/resume runs, force
        task states).
    @param logger: a L{daggy.loggers.interface.RunLogger}, read for every GET.
    @param clock: an C{IReactorTime}; the Site made by L{make_site} uses it for idle
        timeouts.
    @param executor_name: the executor the runner uses (C{"ForkingTaskExecutor"}, ...), so
        that the OpenAPI document describes its job format; without it the document allows
        any job object.
    @param events: the L{daggy.events.EventHub} C{GET /v1/events} streams; by default the
        one the logger publishes to (its C{events} attribute), if any.
    """

    log = Logger()
    app = Klein()
    app.url_map.converters["remainder"] = _Remainder
    # Answer "/v1/dagruns/" and "/v1/dagruns" alike instead of redirecting (a redirect would
    # be an HTML page, and a POST would not survive it).
    app.url_map.strict_slashes = False
    app.url_map.merge_slashes = False

    def __init__(self, runner: Any, logger: Any, clock: Any, *,
                 executor_name: str | None = None, events: Any = None):
        self._runner = runner
        self._logger = logger
        self._clock = clock
        self._executor_name = executor_name
        self._events = events
        self._openapi_json: bytes | None = None

    @property
    def clock(self) -> Any:
        return self._clock

    def resource(self) -> KleinResource:
        """The API as an C{IResource}, to be the root resource of a Site."""
        return _UTF8Resource(self.app, self)

    def answer_state_poll(self, request: IRequest) -> bytes | None:
        """Answer C{GET /v1/dagrun/<id>/state} without Klein's dispatch, exactly as the
        route below does, when the logger answers at once; else None (Klein then routes
        the request as usual).

        It is the endpoint clients poll while a run executes, and routing through Klein
        (werkzeug matching, the Deferred-based dispatch) was most of its cost.
        """
        path = request.postpath
        if (len(path) != 4 or path[0] != b"v1" or path[1] != b"dagrun"
                or path[3] != b"state"):
            return None
        try:
            reading = self._logger.get_run_state(_parse_run_id(path[2].decode("utf-8")))
        except DaggyError as error:
            return json_body(request, error.to_json(), error.status)
        outcome: list[Any] = []
        reading.addBoth(outcome.append)
        if not outcome:
            return None  # an asynchronous read: the route waits for it
        if isinstance(outcome[0], Failure):
            if isinstance(outcome[0].value, DaggyError) and outcome[0].value.status < 500:
                return json_body(request, outcome[0].value.to_json(), outcome[0].value.status)
            return None  # the route reports (and logs) it
        return json_body(request, outcome[0])

    # -- errors ---------------------------------------------------------------------------

    @app.handle_errors
    def answer_error(self, request: IRequest, failure: Failure) -> bytes:
        """Turn any failure of a route (or of routing) into a JSON answer."""
        error = failure.value
        if isinstance(error, DaggyError):
            if error.status >= 500:
                self.log.warn("{method} {uri}: {error}", method=_text(request.method),
                              uri=_text(request.uri), error=error.message)
            return json_body(request, error.to_json(), error.status)
        if isinstance(error, HTTPException):
            return self._answer_http_exception(request, error)
        self.log.failure("Unexpected error answering {method} {uri}", failure,
                         method=_text(request.method), uri=_text(request.uri))
        return json_body(request, {"error": "internal error"}, 500)

    def _answer_http_exception(self, request: IRequest, error: HTTPException) -> bytes:
        method = _text(request.method)
        path = _text(request.path)
        if isinstance(error, MethodNotAllowed):
            task_methods = _methods_of_task_path(request)
            if task_methods is not None:
                # So that Allow lists what this task path takes, not every method of the
                # pattern Klein matched.
                error = (MethodNotAllowed(valid_methods=list(task_methods)) if task_methods
                         else NotFound())
        if isinstance(error, NotFound):
            message = f"no such endpoint: {method} {path}"
        elif isinstance(error, MethodNotAllowed):
            allowed = ", ".join(error.valid_methods or ())
            message = f"method {method} not allowed on {path}; allowed: {allowed}"
        else:
            message = error.description or error.name
        for name, value in error.get_headers():
            if name.lower() != "content-type":
                request.setHeader(name.encode("latin-1"), value.encode("latin-1"))
        return json_body(request, {"error": message}, error.code or 500)

    # -- routes ---------------------------------------------------------------------------

    @app.route("/ready", methods=["GET"])
    def ready(self, request: IRequest) -> bytes:
        # 503 while the logger cannot serve (a RedisLogger without Redis), with its reason.
        ready, reason = self._logger.status()
        if not ready:
            return json_body(request, {"msg": "daggyd is not ready", "error": reason}, 503)
        return json_body(request, {"msg": "Ya like DAGs?"})

    @app.route(OPENAPI_PATH, methods=["GET"])
    def openapi_document(self, request: IRequest) -> bytes:
        # Built on first use: most daemons are never asked for it.
        if self._openapi_json is None:
            self._openapi_json = json.dumps(
                build_openapi_document(self._executor_name)).encode("utf-8")
        request.setHeader(b"Content-Type", JSON_CONTENT_TYPE)
        return self._openapi_json

    # Both spellings are registered: with only one, werkzeug answers a wrong verb on the other
    # spelling with 404 instead of 405.
    @app.route("/v1/dagrun", methods=["POST"], endpoint="submit_run")
    @app.route("/v1/dagrun/", methods=["POST"], endpoint="submit_run_slash")
    async def submit_run(self, request: IRequest) -> bytes:
        doc = _parse_spec_body(request)
        run_id = await self._runner.submit(doc)
        return json_body(request, {"runID": run_id})

    @app.route("/v1/dagrun/validate", methods=["POST"])
    def validate_spec(self, request: IRequest) -> bytes:
        doc = _parse_spec_body(request)
        try:
            names = self._runner.validate(doc)
        except SpecInvalid as e:
            return json_body(request, {"valid": False, **e.to_json()}, e.status)
        return json_body(request, {"valid": True, "tasks": list(names)})

    @app.route("/v1/dagruns", methods=["GET"], endpoint="list_runs")
    @app.route("/v1/dagruns/", methods=["GET"], endpoint="list_runs_slash")
    async def list_runs(self, request: IRequest) -> bytes:
        all_runs = _query_value(request, "all")
        # Only ASCII words count: str.lower maps some other letters onto ASCII ones.
        word = all_runs.lower() if all_runs is not None and all_runs.isascii() else None
        if all_runs is None or word in _FALSE_WORDS:
            include_finished = False
        elif word in _TRUE_WORDS:
            include_finished = True
        else:
            raise BadRequest(f"all: expected 1, true or yes (or 0, false, no), got {all_runs!r}")
        state_name = _query_value(request, "state")
        state = None
        if state_name is not None:
            try:
                state = _state_named(state_name)
            except ValueError:
                names = ", ".join(s.value for s in State)
                raise BadRequest(f"state: unknown state {state_name!r}; expected one of {names}")
        if all_runs is None and state is not None:
            # Asking for runs in a given state means those runs, finished or not.
            include_finished = True
        runs = await self._logger.list_runs(
            all_runs=include_finished, tag=_query_value(request, "tag"), state=state)
        return json_body(request, runs)

    @app.route("/v1/dagrun/<run_id>", methods=["GET"])
    async def get_run(self, request: IRequest, run_id: str) -> bytes:
        run = await self._logger.get_run(_parse_run_id(run_id))
        return json_body(request, run)

    @app.route("/v1/dagrun/<run_id>", methods=["DELETE"])
    async def kill_run(self, request: IRequest, run_id: str) -> bytes:
        number = _parse_run_id(run_id)
        await maybeDeferred(self._runner.kill_run, number)
        return json_body(request, {"runID": number, "state": State.KILLED.value})

    @app.route("/v1/dagrun/<run_id>/state", methods=["GET"])
    async def get_run_state(self, request: IRequest, run_id: str) -> bytes:
        state = await self._logger.get_run_state(_parse_run_id(run_id))
        return json_body(request, state)

    @app.route("/v1/dagrun/<run_id>/state/<state_name>", methods=["PATCH"])
    async def set_run_state(self, request: IRequest, run_id: str, state_name: str) -> bytes:
        number = _parse_run_id(run_id)
        state = _parse_target_state(state_name, _RUN_TARGET_STATES, "run")
        if state is State.QUEUED:
            await maybeDeferred(self._runner.resume_run, number)
        else:
            await maybeDeferred(self._runner.kill_run, number)
        return json_body(request, {"runID": number, "state": state.value})

    @app.route("/v1/events", methods=["GET"])
    async def stream_events(self, request: IRequest) -> Any:
        hub = self._events if self._events is not None else getattr(self._logger, "events",
                                                                    None)
        run_text = _query_value(request, "run")
        run_id = None
        if run_text is not None:
            run_id = _parse_run_id(run_text)
            await self._logger.get_run_state(run_id)  # UnknownRun: 404
        last_event_id = _last_event_id(request)
        if hub is None:
            raise Unavailable("this daggyd publishes no events: its run logger does not "
                              "support them")
        if request.method == b"HEAD":
            request.setHeader(b"Content-Type", b"text/event-stream; charset=utf-8")
            request.setHeader(b"Cache-Control", b"no-store")
            return b""
        subscription = hub.subscribe(_ResponseSink(request), run_id, last_event_id)
        request.notifyFinish().addBoth(lambda _: subscription.close())
        return _EventStream(subscription)

    @app.route("/v1/dagrun/<run_id>/task/<remainder:rest>", methods=["GET"])
    async def get_task(self, request: IRequest, run_id: str, rest: str) -> bytes:
        number = _parse_run_id(run_id)
        name, tail = _task_target(request, run_id)
        if tail == []:
            task = await self._logger.get_task(number, name)
            return json_body(request, task)
        state = await self._logger.get_task_state(number, name)
        return json_body(request, state)

    @app.route("/v1/dagrun/<run_id>/task/<remainder:rest>", methods=["PATCH"])
    async def set_task_state(self, request: IRequest, run_id: str, rest: str) -> bytes:
        number = _parse_run_id(run_id)
        name, tail = _task_target(request, run_id)
        state = _parse_target_state(tail[1], _TASK_TARGET_STATES, "task")
        await maybeDeferred(self._runner.set_task_state, number, name, state)
        return json_body(request, {"runID": number, "name": name, "state": state.value})
