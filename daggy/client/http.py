"""A synchronous client of daggyd's REST API (docs/api.md) on httpx.

Every failure becomes a :class:`~daggy.client.errors.DaggycError` with the exit code
daggyc documents: transport problems are :class:`Unreachable`, and each HTTP error status
maps to one error class (:func:`raise_for_answer`).
"""

from __future__ import annotations

import re
import ssl
from contextlib import contextmanager
from typing import Any, Iterator
from urllib.parse import quote, urlsplit

import httpx

import daggy
from daggy.client.errors import (
    AuthFailed,
    Busy,
    DaggycError,
    NotFound,
    SpecRejected,
    Unreachable,
)

DEFAULT_URL = "http://127.0.0.1:2503"
DEFAULT_TIMEOUT_SECONDS = 30.0
#: The daemon sends a keep-alive comment after 15 s of silence; four missed ones mean the
#: connection is dead even if no error says so.
EVENT_STREAM_READ_TIMEOUT_SECONDS = 60.0
_ERRNO_PREFIX = re.compile(r"^\[Errno -?\d+\]\s*")


def task_segment(name: str) -> str:
    """A task name as one URL path segment (docs/api.md#task-names-in-urls)."""
    return quote(name, safe="")


def check_url(url: str) -> str:
    """``url`` if daggyc can talk to it (``http://``, ``https://`` or ``unix:/path``);
    else :class:`ValueError` saying why."""
    if url.startswith("unix:"):
        if not url[len("unix:"):].lstrip("/"):
            raise ValueError(f"{url!r}: a unix: URL needs a socket path (unix:/run/daggyd.sock)")
        return url
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{url!r}: expected http://HOST[:PORT], https://HOST[:PORT] or "
                         "unix:/PATH/TO/SOCKET")
    if parts.query or parts.fragment:
        raise ValueError(f"{url!r}: a daggyd URL has no query or fragment")
    return url


def _reason(error: Exception) -> str:
    text = _ERRNO_PREFIX.sub("", str(error)).strip()
    return text or type(error).__name__


def _error_message(response: httpx.Response) -> str:
    """daggyd's ``{"error": ...}`` message, or a short description of a foreign answer."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return body["error"]
    text = response.text.strip().splitlines()[0][:200] if response.text.strip() else ""
    return f"HTTP {response.status_code} {response.reason_phrase}" + (f": {text}" if text else "")


def raise_for_answer(response: httpx.Response, *, token_given: bool,
                     spec: bool = False) -> None:
    """Raise the error a non-2xx answer means; return for a 2xx one.

    :param spec: the request carried a run spec, so a 400 or 413 is an invalid spec.
    """
    status = response.status_code
    if 200 <= status < 300:
        return
    message = _error_message(response)
    if status == 401:
        if token_given:
            raise AuthFailed(f"daggyd rejected the token ({message})")
        raise AuthFailed("daggyd requires a bearer token: set DAGGY_TOKEN or pass --token")
    if status == 404:
        raise NotFound(message)
    if spec and status in (400, 413):
        try:
            errors = response.json().get("errors")
        except (ValueError, AttributeError):
            errors = None
        if isinstance(errors, list) and errors:
            count = len(errors)
            raise SpecRejected(f"invalid spec ({count} error{'s' if count != 1 else ''}):",
                               [str(error) for error in errors])
        raise SpecRejected(f"invalid spec: {message}")
    if status in (429, 503):
        raise Busy(f"daggyd cannot take this now ({message}); try again later")
    if status == 409:
        raise DaggycError(message)
    raise DaggycError(f"daggyd answered {status}: {message}")


class DaggyClient:
    """Talks to one daggyd.

    :param url: ``http://HOST:PORT``, ``https://HOST:PORT`` or ``unix:/PATH`` (a daggyd
        listening on a unix socket).
    :param token: sent as ``Authorization: Bearer <token>`` when given.
    :param timeout: seconds to wait for a connection or an answer.
    :param verify: TLS verification: True (the system's CA bundle), or an SSL context
        trusting the daemon's CA.
    :param transport: an httpx transport to use instead of the network (tests).
    """

    def __init__(self, url: str = DEFAULT_URL, token: str | None = None,
                 timeout: float = DEFAULT_TIMEOUT_SECONDS, verify: bool | ssl.SSLContext = True,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.url = check_url(url)
        self.token = token
        self.timeout = timeout
        headers = {"User-Agent": f"daggyc/{daggy.__version__}", "Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        base_url = url.rstrip("/")
        if url.startswith("unix:") and transport is None:
            transport = httpx.HTTPTransport(uds="/" + url[len("unix:"):].lstrip("/"))
        if url.startswith("unix:"):
            base_url = "http://daggyd"
        self._http = httpx.Client(base_url=base_url, headers=headers, timeout=timeout,
                                  verify=verify, transport=transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> DaggyClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- plumbing ------------------------------------------------------------------------
    def _unreachable(self, error: httpx.TransportError) -> Unreachable:
        if isinstance(error, httpx.TimeoutException):
            return Unreachable(f"daggyd at {self.url} did not answer within {self.timeout:g} s")
        return Unreachable(f"cannot reach daggyd at {self.url}: {_reason(error)}")

    def call(self, method: str, path: str, *, params: dict[str, str] | None = None,
             body: Any = None, spec: bool = False) -> Any:
        """The JSON answer of one request; raises the matching DaggycError otherwise."""
        try:
            response = self._http.request(method, path, params=params,
                                          json=body)
        except httpx.TransportError as error:
            raise self._unreachable(error) from None
        raise_for_answer(response, token_given=bool(self.token), spec=spec)
        try:
            return response.json()
        except ValueError:
            raise DaggycError(f"daggyd at {self.url} sent an answer that is not JSON "
                              f"({method} {path})") from None

    @contextmanager
    def event_stream(self, params: dict[str, str], last_event_id: int | None
                     ) -> Iterator[httpx.Response | None]:
        """An open ``GET /v1/events`` answer (not yet read), or None when this daggyd has
        no event stream (404: an older daggyd, or the run is unknown; 503: its logger
        publishes no events, or it is stopping) or answers something else than one.
        Other error answers raise as usual."""
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-store"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = str(last_event_id)
        timeout = httpx.Timeout(self.timeout, read=EVENT_STREAM_READ_TIMEOUT_SECONDS)
        try:
            with self._http.stream("GET", "/v1/events", params=params, headers=headers,
                                   timeout=timeout) as response:
                if response.status_code in (404, 503):
                    yield None
                    return
                if not 200 <= response.status_code < 300:
                    response.read()
                    raise_for_answer(response, token_given=bool(self.token))
                if not response.headers.get("content-type", "").startswith("text/event-stream"):
                    yield None
                    return
                yield response
        except httpx.TransportError as error:
            raise self._unreachable(error) from None

    # -- the API -------------------------------------------------------------------------
    def ready(self) -> dict[str, Any]:
        return self.call("GET", "/ready")

    def submit(self, spec: dict[str, Any]) -> int:
        return self.call("POST", "/v1/dagrun", body=spec, spec=True)["runID"]

    def validate(self, spec: dict[str, Any]) -> list[str]:
        """The expanded task names; raises SpecRejected for an invalid spec."""
        return self.call("POST", "/v1/dagrun/validate", body=spec, spec=True)["tasks"]

    def list_runs(self, all_runs: bool = False, tag: str | None = None,
                  state: str | None = None) -> list[dict[str, Any]]:
        params = {}
        if all_runs:
            params["all"] = "1"
        if tag is not None:
            params["tag"] = tag
        if state is not None:
            params["state"] = state
        return self.call("GET", "/v1/dagruns", params=params)

    def get_run(self, run_id: int) -> dict[str, Any]:
        return self.call("GET", f"/v1/dagrun/{run_id}")

    def get_run_state(self, run_id: int) -> dict[str, Any]:
        return self.call("GET", f"/v1/dagrun/{run_id}/state")

    def get_task(self, run_id: int, name: str) -> dict[str, Any]:
        return self.call("GET", f"/v1/dagrun/{run_id}/task/{task_segment(name)}")

    def kill_run(self, run_id: int) -> dict[str, Any]:
        return self.call("DELETE", f"/v1/dagrun/{run_id}")

    def set_run_state(self, run_id: int, state: str) -> dict[str, Any]:
        return self.call("PATCH", f"/v1/dagrun/{run_id}/state/{state}")

    def set_task_state(self, run_id: int, name: str, state: str) -> dict[str, Any]:
        return self.call("PATCH", f"/v1/dagrun/{run_id}/task/{task_segment(name)}/state/{state}")
