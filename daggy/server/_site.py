# -*- test-case-name: tests.unit.test_api -*-
"""The twisted.web Site serving the API: request-body limit, idle and whole-request
timeouts, a cap on open connections, no access log, and (when tokens are configured)
bearer-token authentication.  With metrics it also serves C{GET /metrics} beside the API
(behind the same authentication) and counts every answered request."""

from __future__ import annotations

from io import BytesIO
from typing import TYPE_CHECKING, Any, Sequence

from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.web import server
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource

from daggy.jsonio import dumps_ascii_fallback
from daggy.limits import DEFAULT_MAX_CONNECTIONS, IDLE_TIMEOUT_SECONDS, REQUEST_TIMEOUT_SECONDS
from daggy.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE, DaemonMetrics
from daggy.server._json import json_body, method_not_allowed
from daggy.server.auth import BearerTokenResource, BearerTokens
from daggy.server.openapi import METRICS_PATH
from daggy.server.webui import Asset, WebUIResource, is_ui_path

if TYPE_CHECKING:
    from daggy.server.api import DaggyAPI

_METRICS_PATHS = ([b"metrics"], [b"metrics", b""])
_METRICS_METHODS = (b"GET", b"HEAD")
_METRICS_CONTENT_TYPE = METRICS_CONTENT_TYPE.encode("ascii")

_REQUEST_TIMEOUT_ANSWER = (
    b"HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\n"
    b"Connection: close\r\nContent-Length: %d\r\n\r\n%s")


class _BoundedRequest(server.Request):
    """A request that keeps at most C{site.max_request_bytes} of body.

    A larger body (declared by Content-Length, or counted while a chunked body arrives) is
    read and dropped, so it never occupies memory or disk, and L{process} answers 413
    without consulting the resource.

    When the site requires a bearer token, the body of a request without a valid one is
    read and dropped too (whatever its size): the resource answers it with 401 without
    reading it, so a client without a token cannot make daggyd hold anything.
    """

    _body_too_large = False
    _body_unauthenticated = False
    _body_bytes = 0

    def __init__(self, channel: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(channel, *args, **kwargs)
        # Created when a request's first line arrives; L{requestReceived} is called once all
        # of it has.  The site's sweep answers 408 to a request that takes too long between.
        site = getattr(channel, "site", None)
        if site is not None and isinstance(site, DaggySite):
            site.receiving_since(self)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        self.channel.site.received(self)
        super().requestReceived(command, path, version)

    def connectionLost(self, reason: Any) -> None:
        site = getattr(self.channel, "site", None)
        if isinstance(site, DaggySite):
            site.received(self)
            if self.startedWriting and not self.finished:
                # An answer the client left before its end (an event stream, as a rule):
                # twisted.web logs only finished requests, so it is counted here.
                site.log(self)
        super().connectionLost(reason)

    def gotLength(self, length: int | None) -> None:
        site = self.channel.site
        self._max_body_bytes = site.max_request_bytes
        # The headers are all in by now; the body is not.
        if site.bearer_tokens is not None and site.bearer_tokens.refusal(self) is not None:
            self._body_unauthenticated = True
            self.content = BytesIO()
        elif length is not None and length > self._max_body_bytes:
            self._body_too_large = True
            self.content = BytesIO()
        else:
            super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self._body_too_large or self._body_unauthenticated:
            return
        self._body_bytes += len(data)
        if self._body_bytes > self._max_body_bytes:
            self._body_too_large = True
            self.content.close()
            self.content = BytesIO()
            return
        super().handleContentChunk(data)

    def _handleStar(self) -> None:
        # twisted.web answers a request for "*" itself (before any resource), with an empty
        # body; every other answer of the API is JSON, so this one is too.
        if self.method == b"OPTIONS":
            super()._handleStar()
            return
        self.write(method_not_allowed(self, "*", ("OPTIONS",)))
        self.finish()

    def process(self) -> None:
        if not self._body_too_large:
            super().process()
            return
        self.site = self.channel.site
        limit = self.site.max_request_bytes
        self.write(json_body(self, {"error": f"request body larger than {limit} bytes"}, 413))
        self.finish()


class MetricsResource(Resource):
    """C{GET /metrics}: the daemon's metrics in the Prometheus text format."""

    isLeaf = True

    def __init__(self, metrics: DaemonMetrics):
        super().__init__()
        self._metrics = metrics

    def render(self, request: IRequest) -> bytes:
        if request.method not in _METRICS_METHODS:
            return method_not_allowed(request, METRICS_PATH, ("GET", "HEAD"))
        request.setHeader(b"Content-Type", _METRICS_CONTENT_TYPE)
        request.setHeader(b"Cache-Control", b"no-store")
        return self._metrics.exposition()


class _SiteRoot(Resource):
    """The Site's root beside the API: C{/metrics} (with metrics), C{/} and C{/ui/...}
    (with the web UI), else the API.

    A leaf, like the API's Klein resource, so the API still sees (and routes) the whole
    path."""

    isLeaf = True

    def __init__(self, api: Any, metrics: MetricsResource | None,
                 ui: WebUIResource | None):
        super().__init__()
        self._api = api
        self._metrics = metrics
        self._ui = ui

    def render(self, request: IRequest) -> Any:
        postpath = request.postpath
        if self._metrics is not None and postpath in _METRICS_PATHS:
            return self._metrics.render(request)
        if self._ui is not None and is_ui_path(postpath):
            return self._ui.render(request)
        return self._api.render(request)


class DaggySite(server.Site):
    """A Site that refuses large bodies, slow requests and connections beyond a cap, and
    writes no access log.

    twisted.web's default access log writes one line per request; a daemon polled by
    clients would drown its own log in them, and even a filtered-out debug event cost a
    sixth of the time of answering a ``/state`` poll.

    With C{bearer_tokens} it serves C{resource} through a L{BearerTokenResource}.  With
    C{metrics} it serves them at C{/metrics} beside C{resource} and counts each answered
    request in them (by method, route template and status: see L{log}).
    """

    log_events = Logger()

    def __init__(self, resource: Any, max_request_bytes: int, *, timeout: float,
                 reactor: Any, bearer_tokens: BearerTokens | None = None,
                 request_timeout: float = REQUEST_TIMEOUT_SECONDS,
                 max_connections: int = DEFAULT_MAX_CONNECTIONS,
                 metrics: DaemonMetrics | None = None, ui: WebUIResource | None = None):
        if metrics is not None or ui is not None:
            resource = _SiteRoot(resource, None if metrics is None else MetricsResource(metrics),
                                 ui)
        if bearer_tokens is not None:
            resource = BearerTokenResource(resource, bearer_tokens)
        super().__init__(resource, requestFactory=_BoundedRequest,
                         # Bodies are JSON; never parse them as form uploads.
                         parsePOSTFormSubmission=False,
                         timeout=timeout, reactor=reactor)
        self.max_request_bytes = max_request_bytes
        self.bearer_tokens = bearer_tokens
        self.request_timeout = request_timeout
        self.max_connections = max_connections
        self.metrics = metrics
        self._count_request = None if metrics is None else metrics.count_request
        self.open_connections = 0
        self.refused_connections = 0
        # Requests still arriving -> when their first line came.  Insertion order is
        # arrival order, so the sweep stops at the first request still within its time.
        self._receiving: dict[_BoundedRequest, float] = {}
        self._sweep = LoopingCall(self._answer_slow_requests)
        self._sweep.clock = self.reactor

    def receiving_since(self, request: _BoundedRequest) -> None:
        self._receiving[request] = self.reactor.seconds()

    def received(self, request: _BoundedRequest) -> None:
        self._receiving.pop(request, None)

    def _answer_slow_requests(self) -> None:
        try:
            deadline = self.reactor.seconds() - self.request_timeout
            while self._receiving:
                request, since = next(iter(self._receiving.items()))
                if since > deadline:
                    break
                del self._receiving[request]
                body = dumps_ascii_fallback(
                    {"error": f"request not received within {self.request_timeout:g} seconds"})
                transport = request.channel.transport if request.channel else None
                if transport is not None:
                    transport.write(_REQUEST_TIMEOUT_ANSWER % (len(body), body))
                    transport.loseConnection()
                if self._count_request is not None:
                    # Its method and path are not known yet: counted as route "other".
                    self._count_request(b"", b"", 408)
        except Exception:
            self.log_events.failure("answering slow requests failed")

    def buildProtocol(self, addr: Any) -> Any:
        if self.open_connections >= self.max_connections:
            # Closed at once by the listening port; logged once per burst.
            if not self.refused_connections:
                self.log_events.warn(
                    "{count} connections are open (max-connections); refusing more",
                    count=self.open_connections)
            self.refused_connections += 1
            return None
        protocol = super().buildProtocol(addr)
        self.open_connections += 1
        lost = protocol.connectionLost

        def connection_lost(reason: Any) -> None:
            self.open_connections -= 1
            if self.refused_connections and self.open_connections < self.max_connections:
                self.log_events.info("accepting connections again after refusing {count}",
                                     count=self.refused_connections)
                self.refused_connections = 0
            lost(reason)

        protocol.connectionLost = connection_lost
        return protocol

    def startFactory(self) -> None:
        # HTTPFactory opens its access-log file and starts a once-a-second timestamp timer
        # here; both serve only the access log that L{log} replaces.
        if not self._sweep.running:
            self._sweep.start(min(1.0, self.request_timeout / 2), now=False)

    def stopFactory(self) -> None:
        if self._sweep.running:
            self._sweep.stop()

    def log(self, request: server.Request) -> None:
        """No access log (see the class docstring); with metrics, count the request.

        twisted.web calls this once per request, as it finishes."""
        if self._count_request is not None:
            self._count_request(request.method, request.path, request.code)


def make_site(api: "DaggyAPI", max_request_bytes: int, *,
              timeout: float = IDLE_TIMEOUT_SECONDS, reactor: Any = None,
              request_timeout: float = REQUEST_TIMEOUT_SECONDS,
              max_connections: int = DEFAULT_MAX_CONNECTIONS,
              auth_tokens: Sequence[str] = (),
              metrics: DaemonMetrics | None = None,
              ui_assets: dict[str, Asset] | None = None) -> DaggySite:
    """Build the Site serving C{api}.

    @param max_request_bytes: larger request bodies are answered with 413.
    @param timeout: seconds after which an idle connection is closed.
    @param reactor: provides C{callLater}/C{seconds} for the idle timeout; defaults to the
        API's clock.
    @param auth_tokens: when not empty, every request but C{GET}/C{HEAD /ready} needs
        C{Authorization: Bearer <one of them>} (see L{BearerTokenResource}).
    @param metrics: a L{daggy.metrics.DaemonMetrics} to serve at C{/metrics} and to count
        requests in; without it there is no C{/metrics}.
    @param ui_assets: the web UI's files (L{daggy.server.webui.load_assets}) to serve at
        C{/} and C{/ui/}; without them there is no UI.
    @raise ValueError: a negative limit, or a token that L{BearerTokens} rejects.
    """
    if max_request_bytes < 0:
        raise ValueError(f"max_request_bytes must be >= 0, got {max_request_bytes}")
    return DaggySite(api.resource(), max_request_bytes, timeout=timeout,
                     reactor=api.clock if reactor is None else reactor,
                     bearer_tokens=BearerTokens(auth_tokens) if auth_tokens else None,
                     request_timeout=request_timeout, max_connections=max_connections,
                     metrics=metrics,
                     ui=None if ui_assets is None else WebUIResource(ui_assets))
