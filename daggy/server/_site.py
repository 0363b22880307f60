# -*- test-case-name: tests.unit.test_api -*-
"""The twisted.web Site serving the API: request-body limit, idle timeout, quiet access log,
and (when tokens are configured) bearer-token authentication."""

from __future__ import annotations

from io import BytesIO
from typing import TYPE_CHECKING, Any, Sequence

from twisted.logger import Logger
from twisted.web import server

from daggy.server._json import json_body
from daggy.server.auth import BearerTokenResource, BearerTokens

if TYPE_CHECKING:
    from daggy.server.api import DaggyAPI

# Idle keep-alive connections (and clients that stall while sending headers or a body) are
# dropped after this long; twisted.web suspends the timer while a response is being produced.
IDLE_TIMEOUT_SECONDS = 60.0


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

    def process(self) -> None:
        if not self._body_too_large:
            super().process()
            return
        self.site = self.channel.site
        limit = self.site.max_request_bytes
        self.write(json_body(self, {"error": f"request body larger than {limit} bytes"}, 413))
        self.finish()


class DaggySite(server.Site):
    """A Site that refuses large bodies and logs requests at debug level only.

    twisted.web's default access log writes one line per request to the global log at info
    level; a daemon polled by clients would drown its own log in them.

    With C{bearer_tokens} it serves C{resource} through a L{BearerTokenResource}.
    """

    _access_log = Logger()

    def __init__(self, resource: Any, max_request_bytes: int, *, timeout: float,
                 reactor: Any, bearer_tokens: BearerTokens | None = None):
        if bearer_tokens is not None:
            resource = BearerTokenResource(resource, bearer_tokens)
        super().__init__(resource, requestFactory=_BoundedRequest,
                         # Bodies are JSON; never parse them as form uploads.
                         parsePOSTFormSubmission=False,
                         timeout=timeout, reactor=reactor)
        self.max_request_bytes = max_request_bytes
        self.bearer_tokens = bearer_tokens

    def startFactory(self) -> None:
        # HTTPFactory opens its access-log file and starts a once-a-second timestamp timer
        # here; both serve only the access log that L{log} replaces.
        pass

    def stopFactory(self) -> None:
        pass

    def log(self, request: server.Request) -> None:
        self._access_log.debug(
            "{method} {uri} -> {code} ({length} bytes)",
            method=request.method.decode("ascii", "replace"),
            uri=request.uri.decode("ascii", "replace"),
            code=request.code,
            length=request.sentLength,
        )


def make_site(api: "DaggyAPI", max_request_bytes: int, *,
              timeout: float = IDLE_TIMEOUT_SECONDS, reactor: Any = None,
              auth_tokens: Sequence[str] = ()) -> DaggySite:
    """Build the Site serving C{api}.

    @param max_request_bytes: larger request bodies are answered with 413.
    @param timeout: seconds after which an idle connection is closed.
    @param reactor: provides C{callLater}/C{seconds} for the idle timeout; defaults to the
        API's clock.
    @param auth_tokens: when not empty, every request but C{GET}/C{HEAD /ready} needs
        C{Authorization: Bearer <one of them>} (see L{BearerTokenResource}).
    @raise ValueError: a negative limit, or a token that L{BearerTokens} rejects.
    """
    if max_request_bytes < 0:
        raise ValueError(f"max_request_bytes must be >= 0, got {max_request_bytes}")
    return DaggySite(api.resource(), max_request_bytes, timeout=timeout,
                     reactor=api.clock if reactor is None else reactor,
                     bearer_tokens=BearerTokens(auth_tokens) if auth_tokens else None)
