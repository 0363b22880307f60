"""Bearer-token authentication: the token check, the wrapping resource, and the Site."""

from __future__ import annotations

import json

import pytest
from treq.testing import StubTreq
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from twisted.web.test.requesthelper import DummyRequest

from daggy.executors.noop import NoopTaskExecutor
from daggy.loggers.memory import MemoryStore
from daggy.runner import RunManager
from daggy.server import auth
from daggy.server.api import DaggyAPI, make_site
from daggy.server.auth import BearerTokenResource, BearerTokens, token_problem

TOKEN = "s3cret-Token-0123456789"
OTHER_TOKEN = "another.token_ABCDEFGHIJ"
THIRD_TOKEN = "third+token/with~all==="
BASE = "http://daggy.test"

CHALLENGE = b'Bearer realm="daggyd"'
INVALID_CHALLENGE = b'Bearer realm="daggyd", error="invalid_token"'

result_of = SynchronousTestCase().successResultOf


# -- BearerTokens --------------------------------------------------------------------------


def test_every_configured_token_is_accepted():
    """Any one of several tokens authenticates (so tokens can be rotated)."""
    tokens = BearerTokens([TOKEN, OTHER_TOKEN, THIRD_TOKEN])
    assert len(tokens) == 3
    for token in (TOKEN, OTHER_TOKEN, THIRD_TOKEN):
        assert tokens.accepts(token.encode())


@pytest.mark.parametrize("candidate", [
    b"", b"s3cret", TOKEN.encode()[:-1], TOKEN.encode() + b"x", TOKEN.upper().encode(),
    b" " + TOKEN.encode(), TOKEN.encode() + b"\x00", "s3cret-Token-012345678é".encode(),
])
def test_anything_but_an_exact_token_is_rejected(candidate):
    """A prefix, an extension, another case or other bytes are not the token."""
    assert not BearerTokens([TOKEN]).accepts(candidate)


@pytest.mark.parametrize("position", [0, 1, 2])
def test_every_token_is_compared_whichever_matches(monkeypatch, position):
    """The check compares against every token with compare_digest, on equal-length
    digests, whether the first, the last or no token matches."""
    known = [TOKEN, OTHER_TOKEN, THIRD_TOKEN]
    compared = []
    real_compare = auth.hmac.compare_digest

    def spy(left, right):
        compared.append((len(left), len(right)))
        return real_compare(left, right)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    tokens = BearerTokens(known)
    assert tokens.accepts(known[position].encode())
    assert compared == [(32, 32)] * 3
    compared.clear()
    assert not tokens.accepts(b"wrong")
    assert compared == [(32, 32)] * 3


@pytest.mark.parametrize("tokens, message", [
    ([], "at least one token is needed"),
    ([TOKEN, "short"], "token 2: must be at least 16 characters long (got 5)"),
])
def test_bad_tokens_are_a_programming_error(tokens, message):
    """BearerTokens refuses no token or an invalid one, without quoting it."""
    with pytest.raises(ValueError) as raised:
        BearerTokens(tokens)
    assert str(raised.value) == message


def test_repr_holds_no_token():
    """The repr says how many tokens there are, not what they are."""
    assert repr(BearerTokens([TOKEN, OTHER_TOKEN])) == "<BearerTokens: 2 token(s)>"


@pytest.mark.parametrize("token, problem", [
    ("a" * 16, None),
    ("AZaz09-._~+/" + "x" * 5 + "==", None),
    ("abc=def" + "x" * 10, "may only hold letters, digits and - . _ ~ + / (then optional "
                           "trailing =), as an RFC 6750 bearer token"),
    ("a" * 15, "must be at least 16 characters long (got 15)"),
    ("a" * 1024, None),
    ("a" * 1025, "must be at most 1024 characters long (got 1025)"),
    ("=" + "a" * 16, "may only hold letters, digits and - . _ ~ + / (then optional trailing "
                     "=), as an RFC 6750 bearer token"),
    ("a" * 16 + "\t", "may only hold letters, digits and - . _ ~ + / (then optional trailing "
                      "=), as an RFC 6750 bearer token"),
])
def test_token_syntax(token, problem):
    """Tokens are RFC 6750 b64tokens of 16 to 1024 characters."""
    assert token_problem(token) == problem


# -- the wrapping resource -----------------------------------------------------------------


class Echo(Resource):
    """A leaf resource answering 200 with the path it was asked for."""

    isLeaf = True

    def render(self, request):
        return b"served " + b"/".join(request.postpath)


def render(resource, method=b"GET", path=b"/v1/dagruns", authorization=None):
    """Render ``path`` on ``resource`` as the Site's root would: (code, headers, body)."""
    request = DummyRequest(path[1:].split(b"/"))
    request.method = method
    request.path = path
    for value in [authorization] if isinstance(authorization, bytes) else authorization or []:
        request.requestHeaders.addRawHeader(b"Authorization", value)
    body = resource.render(request)
    assert body is not NOT_DONE_YET
    return request.responseCode or 200, request.responseHeaders, body


def guarded(wrapped=None):
    return BearerTokenResource(wrapped or Echo(), BearerTokens([TOKEN, OTHER_TOKEN]))


def assert_refused(answer, message, challenge):
    code, headers, body = answer
    assert code == 401
    assert headers.getRawHeaders(b"WWW-Authenticate") == [challenge]
    assert headers.getRawHeaders(b"Content-Type") == [b"application/json"]
    assert json.loads(body) == {"error": message}
    for token in (TOKEN, OTHER_TOKEN):
        assert token.encode() not in body


MISSING = "authentication required: send an Authorization: Bearer <token> header"
INVALID = "Authorization header: the bearer token is not valid"


@pytest.mark.parametrize("method", [b"GET", b"POST", b"DELETE", b"PATCH", b"HEAD"])
def test_no_token_is_401_with_a_challenge(method):
    """A request without Authorization gets 401, a JSON error and WWW-Authenticate."""
    assert_refused(render(guarded(), method), MISSING, CHALLENGE)


@pytest.mark.parametrize("header", [
    b"Bearer wrong-token-0123456789", b"Bearer " + TOKEN.encode() + b"x", b"Bearer ",
    b"Bearer", b"bearer s3cret-Token-012345678",
])
def test_a_wrong_token_is_401_invalid_token(header):
    """A bearer token that is not configured gets 401 with error="invalid_token"; the
    token sent is not echoed."""
    answer = render(guarded(), authorization=header)
    assert_refused(answer, INVALID, INVALID_CHALLENGE)
    assert b"wrong-token" not in answer[2]


def test_another_scheme_is_401_without_an_error_code():
    """Basic (or any other scheme) credentials are not a bearer token."""
    assert_refused(render(guarded(), authorization=b"Basic dXNlcjpwYXNz"),
                   "Authorization header: expected the Bearer scheme", CHALLENGE)


def test_two_authorization_headers_are_refused():
    """Sending Authorization twice is refused even if one of them is valid."""
    header = b"Bearer " + TOKEN.encode()
    assert_refused(render(guarded(), authorization=[header, header]),
                   "Authorization header: given more than once", INVALID_CHALLENGE)


@pytest.mark.parametrize("header", [
    b"Bearer " + TOKEN.encode(), b"Bearer " + OTHER_TOKEN.encode(),
    b"bearer " + TOKEN.encode(), b"BEARER   " + TOKEN.encode() + b"  ",
])
def test_a_configured_token_is_served(header):
    """Any configured token, with the scheme in any case, reaches the wrapped resource."""
    code, headers, body = render(guarded(), authorization=header)
    assert (code, body) == (200, b"served v1/dagruns")
    assert headers.getRawHeaders(b"WWW-Authenticate") is None


@pytest.mark.parametrize("method", [b"GET", b"HEAD"])
def test_ready_is_open(method):
    """GET and HEAD /ready need no token (health checks)."""
    assert render(guarded(), method, b"/ready")[::2] == (200, b"served ready")


@pytest.mark.parametrize("method, path", [(b"GET", b"/"), (b"HEAD", b"/"),
                                          (b"GET", b"/ui/app.js"), (b"HEAD", b"/ui/x/y.css")])
def test_the_web_ui_files_are_open(method, path):
    """GET and HEAD of the web UI's files need no token: the page asks for one."""
    assert render(guarded(), method, path)[0] == 200


@pytest.mark.parametrize("method, path", [
    (b"POST", b"/ready"), (b"DELETE", b"/ready"), (b"GET", b"/ready/"),
    (b"GET", b"/ready/x"), (b"GET", b"/v1/ready"), (b"POST", b"/"), (b"PUT", b"/ui/app.js"),
    (b"GET", b"/ui"), (b"GET", b"/uix/app.js"), (b"GET", b"//"), (b"GET", b"/v1/ui/app.js"),
])
def test_nothing_else_is_open(method, path):
    """Only GET/HEAD of exactly /ready and the UI's files are open: other methods and paths
    need a token."""
    assert_refused(render(guarded(), method, path), MISSING, CHALLENGE)


def test_a_wrapped_tree_is_traversed():
    """A non-leaf wrapped resource gets the whole path, as if it were the root."""
    root = Resource()
    v1 = Resource()
    root.putChild(b"v1", v1)
    v1.putChild(b"dagruns", Echo())
    code, _, body = render(guarded(root), authorization=b"Bearer " + TOKEN.encode())
    assert (code, body) == (200, b"served ")


# -- the real API behind make_site ---------------------------------------------------------


class APIHarness:
    """The real DaggyAPI and RunManager (no-op executor, memory store) behind make_site."""

    def __init__(self, tokens=(TOKEN, OTHER_TOKEN)):
        self.reactor = MemoryReactorClock()
        self.store = MemoryStore()
        runner = RunManager(self.reactor, NoopTaskExecutor(self.reactor), self.store)
        self.api = DaggyAPI(runner, self.store, self.reactor)
        self.site = make_site(self.api, max_request_bytes=256, auth_tokens=tokens)
        self.client = StubTreq(self.site.resource)

    def request(self, method, path, token=None, body=None):
        headers = {} if token is None else {b"Authorization": [b"Bearer " + token.encode()]}
        data = None if body is None else json.dumps(body).encode()
        response = result_of(self.client.request(method, BASE + path, headers=headers,
                                                 data=data))
        self.reactor.advance(0)
        self.client.flush()
        content = result_of(self.client.content(response))
        return response.code, response.headers, content


@pytest.fixture
def api():
    return APIHarness()


ROUTES = [
    ("GET", "/v1/dagruns"), ("POST", "/v1/dagrun"), ("POST", "/v1/dagrun/validate"),
    ("GET", "/v1/dagrun/0"), ("DELETE", "/v1/dagrun/0"), ("GET", "/v1/dagrun/0/state"),
    ("PATCH", "/v1/dagrun/0/state/QUEUED"), ("GET", "/v1/dagrun/0/task/a"),
    ("PATCH", "/v1/dagrun/0/task/a/state/COMPLETED"), ("GET", "/no/such/route"),
]


@pytest.mark.parametrize("method, path", ROUTES)
def test_every_api_route_needs_a_token(api, method, path):
    """Every endpoint but /ready (and unknown paths too) answers 401 without a token."""
    code, headers, body = api.request(method, path)
    assert code == 401
    assert headers.getRawHeaders(b"WWW-Authenticate") == [CHALLENGE]
    assert json.loads(body) == {"error": MISSING}


def test_a_run_with_a_token_completes_and_without_one_is_never_submitted(api):
    """With a token a run is submitted and read back; the same request without one (or
    with a wrong one) creates no run."""
    spec = {"tasks": {"a": {"job": {}}}}
    assert api.request("POST", "/v1/dagrun", body=spec)[0] == 401
    assert api.request("POST", "/v1/dagrun", "wrong-token-0123456789", body=spec)[0] == 401
    code, _, body = api.request("POST", "/v1/dagrun", OTHER_TOKEN, body=spec)
    assert (code, json.loads(body)) == (200, {"runID": 0})
    code, _, body = api.request("GET", "/v1/dagrun/0/state", TOKEN)
    assert (code, json.loads(body)["state"]) == (200, "COMPLETED")
    code, _, body = api.request("GET", "/v1/dagruns?all=1", TOKEN)
    assert [run["runID"] for run in json.loads(body)] == [0]


def test_ready_answers_without_a_token(api):
    """GET and HEAD /ready answer 200 without a token."""
    code, _, body = api.request("GET", "/ready")
    assert (code, json.loads(body)) == (200, {"msg": "Ya like DAGs?"})
    assert api.request("HEAD", "/ready")[0] == 200


def test_make_site_without_tokens_needs_none():
    """No tokens (the default) means no authentication."""
    harness = APIHarness(tokens=())
    assert harness.site.bearer_tokens is None
    assert harness.request("GET", "/v1/dagruns")[0] == 200


def test_make_site_rejects_an_invalid_token():
    """An invalid token is a programming error caught when the Site is made."""
    with pytest.raises(ValueError):
        APIHarness(tokens=("short",))


# -- the Site: unauthenticated bodies are never held ---------------------------------------


class Connection:
    """An HTTP connection to a Site over a StringTransport."""

    def __init__(self, site):
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
        self.protocol = site.buildProtocol(None)
        self.protocol.makeConnection(self.transport)

    def send(self, data: bytes) -> bytes:
        self.protocol.dataReceived(data)
        written = self.transport.value()
        self.transport.clear()
        return written

    def close(self):
        self.protocol.connectionLost(Failure(ConnectionDone()))


def post(body: bytes, token: str | None = None, chunked: bool = False) -> bytes:
    head = b"POST /v1/dagrun HTTP/1.1\r\nHost: daggy.test\r\n"
    if token is not None:
        head += b"Authorization: Bearer " + token.encode() + b"\r\n"
    if chunked:
        return head + b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (
            len(body), body)
    return head + b"Content-Length: %d\r\n\r\n" % len(body) + body


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


@pytest.mark.parametrize("chunked", [False, True])
def test_unauthenticated_oversized_body_is_401_not_413(api, chunked):
    """Without a token even an oversized body gets 401: the client learns nothing of the
    limits, and the body is dropped as it arrives."""
    connection = Connection(api.site)
    response = connection.send(post(b"x" * 1000, chunked=chunked))
    assert status_of(response) == 401
    assert b'WWW-Authenticate: Bearer realm="daggyd"' in response
    connection.close()


def test_unauthenticated_body_is_not_buffered(api):
    """The request keeps nothing of a body sent without a valid token."""
    connection = Connection(api.site)
    connection.send(b"POST /v1/dagrun HTTP/1.1\r\nHost: daggy.test\r\n"
                    b"Authorization: Bearer wrong-token-0123456789\r\n"
                    b"Content-Length: 200\r\n\r\n" + b"y" * 100)
    [request] = connection.protocol._channel.requests
    assert request.content.tell() == 0
    connection.close()


def test_authenticated_bodies_are_served_and_bounded(api):
    """With a token a small body is served and an oversized one gets 413, as without
    authentication."""
    connection = Connection(api.site)
    spec = json.dumps({"tasks": {"a": {"job": {}}}}).encode()
    assert status_of(connection.send(post(spec, TOKEN))) == 200
    assert status_of(connection.send(post(b" " * 1000, TOKEN))) == 413
    assert status_of(connection.send(
        b"HEAD /ready HTTP/1.1\r\nHost: daggy.test\r\n\r\n")) == 200
    connection.close()
