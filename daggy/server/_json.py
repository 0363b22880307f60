# -*- test-case-name: tests.unit.test_api -*-
"""Writing JSON answers, shared by the routes and the body-size guard."""

from __future__ import annotations

from typing import Any

from twisted.web.iweb import IRequest

from daggy.jsonio import dumps_ascii_fallback

JSON_CONTENT_TYPE = b"application/json"


def json_body(request: IRequest, value: Any, status: int = 200) -> bytes:
    """Set C{status} and the JSON content type on C{request}; return C{value} encoded.

    UTF-8; an answer holding a lone surrogate that came in through a client's JSON (a
    legal C{"\\ud800"} escape) is written as ASCII JSON, so it can still be written back.
    """
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", JSON_CONTENT_TYPE)
    return dumps_ascii_fallback(value)


def method_not_allowed(request: IRequest, path: str, allowed: tuple[str, ...]) -> bytes:
    """The 405 answer: C{Allow} and a JSON error naming the method, the path and what it
    allows (one wording for the API, C{/metrics}, the UI's files and C{*})."""
    method = request.method.decode("ascii", "replace")
    listed = ", ".join(allowed)
    request.setHeader(b"Allow", listed.encode("ascii"))
    return json_body(request, {"error": f"method {method} not allowed on {path}; "
                                        f"allowed: {listed}"}, 405)
