# -*- test-case-name: tests.unit.test_auth -*-
"""Bearer-token authentication in front of the API (docs/security.md).

L{BearerTokens} decides whether a request carries one of the configured tokens;
L{BearerTokenResource} wraps the API's resource and answers every request without one
with 401, except C{GET}/C{HEAD /ready}, which health checks use without credentials.

Tokens are compared as SHA-256 digests with L{hmac.compare_digest}, against every
configured token, so neither the time taken nor an early exit tells a client how much of
a token it guessed, how long a token is, or which one matched.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass
from typing import Any, Iterable

from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource, getChildForRequest

from daggy.server._json import json_body
from daggy.server.webui import is_ui_path

#: The realm named in C{WWW-Authenticate}.
REALM = "daggyd"

#: RFC 6750's C{b64token}: the characters a bearer token may hold.
TOKEN_SYNTAX = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
MIN_TOKEN_LENGTH = 16
MAX_TOKEN_LENGTH = 1024

#: The requests answered without a token: the readiness probe (and the UI's files).
_OPEN_METHODS = frozenset({b"GET", b"HEAD"})
_OPEN_PATH = [b"ready"]


def token_problem(token: str) -> str | None:
    """Why C{token} cannot be a configured token, or C{None}.

    The problem never quotes the token: it is a secret even when it is a bad one.
    """
    if len(token) < MIN_TOKEN_LENGTH:
        return f"must be at least {MIN_TOKEN_LENGTH} characters long (got {len(token)})"
    if len(token) > MAX_TOKEN_LENGTH:
        return f"must be at most {MAX_TOKEN_LENGTH} characters long (got {len(token)})"
    if not TOKEN_SYNTAX.fullmatch(token):
        return ("may only hold letters, digits and - . _ ~ + / (then optional trailing =), "
                "as an RFC 6750 bearer token")
    return None


@dataclass(frozen=True)
class Refusal:
    """Why a request is not authenticated: the 401 answer's message and, for a token that
    was sent but is not valid, the RFC 6750 error code for C{WWW-Authenticate}."""

    message: str
    error_code: str | None = None

    def challenge(self) -> bytes:
        """The C{WWW-Authenticate} value."""
        value = f'Bearer realm="{REALM}"'
        if self.error_code is not None:
            value += f', error="{self.error_code}"'
        return value.encode("ascii")

    def answer(self, request: IRequest) -> bytes:
        """Make C{request} a 401 answer; return its body."""
        request.setHeader(b"WWW-Authenticate", self.challenge())
        return json_body(request, {"error": self.message}, 401)


_MISSING = Refusal("authentication required: send an Authorization: Bearer <token> header")
_OTHER_SCHEME = Refusal("Authorization header: expected the Bearer scheme")
_REPEATED = Refusal("Authorization header: given more than once", "invalid_token")
_INVALID = Refusal("Authorization header: the bearer token is not valid", "invalid_token")


class BearerTokens:
    """The tokens that authenticate a request; any one of them will do (so a token can be
    replaced without a moment when neither the old nor the new one works)."""

    def __init__(self, tokens: Iterable[str]):
        """
        @param tokens: each a valid token (see L{token_problem}); at least one.
        @raise ValueError: no token, or one that L{token_problem} rejects.
        """
        digests = []
        for number, token in enumerate(tokens, 1):
            problem = token_problem(token)
            if problem is not None:
                raise ValueError(f"token {number}: {problem}")
            digests.append(_digest(token.encode("ascii")))
        if not digests:
            raise ValueError("at least one token is needed")
        self._digests = tuple(digests)

    def __len__(self) -> int:
        return len(self._digests)

    def __repr__(self) -> str:
        return f"<BearerTokens: {len(self)} token(s)>"

    def refusal(self, request: IRequest) -> Refusal | None:
        """C{None} when C{request}'s C{Authorization} header holds one of the tokens, else
        why it does not."""
        headers = request.requestHeaders.getRawHeaders(b"Authorization")
        if not headers:
            return _MISSING
        if len(headers) > 1:
            return _REPEATED
        scheme, _, credentials = headers[0].strip().partition(b" ")
        if scheme.lower() != b"bearer":
            return _OTHER_SCHEME
        if not self.accepts(credentials.strip()):
            return _INVALID
        return None

    def accepts(self, candidate: bytes) -> bool:
        """Whether C{candidate} is one of the tokens, compared in constant time."""
        digest = _digest(candidate)
        matched = False
        for known in self._digests:
            # No early exit: every token is compared whatever the outcome.
            matched |= hmac.compare_digest(digest, known)
        return matched


def _digest(token: bytes) -> bytes:
    # Comparing fixed-length digests keeps compare_digest from revealing a token's length.
    return hashlib.sha256(token).digest()


def is_open(request: IRequest) -> bool:
    """Whether C{request} is answered without authentication: C{GET}/C{HEAD} of C{/ready},
    and of the web UI's files (C{/}, C{/ui/...}), which hold no data (the page asks for a
    token and sends it with every API request it makes)."""
    return request.method in _OPEN_METHODS and (request.postpath == _OPEN_PATH
                                                or is_ui_path(request.postpath))


class BearerTokenResource(Resource):
    """Serves C{wrapped} to requests with a valid bearer token, and C{/ready} to anyone;
    answers any other request with 401 and a C{WWW-Authenticate: Bearer} challenge.

    It is a leaf: it passes the whole path on to C{wrapped}, which resolves it as if it
    were the Site's root.
    """

    isLeaf = True

    def __init__(self, wrapped: IResource, tokens: BearerTokens):
        super().__init__()
        self._wrapped = wrapped
        self._tokens = tokens

    def render(self, request: IRequest) -> Any:
        if not is_open(request):
            refusal = self._tokens.refusal(request)
            if refusal is not None:
                return refusal.answer(request)
        return getChildForRequest(self._wrapped, request).render(request)
