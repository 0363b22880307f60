"""Real daggyd processes with bearer-token authentication, TLS, and the refusal to listen
on a non-loopback address without authentication."""

from __future__ import annotations

import json
import socket
import ssl
from http.client import HTTPConnection, HTTPException, HTTPSConnection

import pytest

from daemon_harness import (
    REPO,
    Reply,
    daggyd,
    free_port,
    start_daemon,
    twistd,
    wait_until,
)
from tests.unit.test_config import write_certificate

pytestmark = pytest.mark.integration

TOKEN = "s3cret-Token-0123456789"
OTHER_TOKEN = "another.token_ABCDEFGHIJ"
CHALLENGE = 'Bearer realm="daggyd"'
EXPOSED_FIX = ("set auth-tokens or auth-token-file to require a bearer token, or set "
               "allow-unauthenticated: true to let anyone who can reach it run commands")


def call(connection: HTTPConnection, method: str, path: str, token: str | None = None,
         body=None) -> Reply:
    """One request on ``connection`` (closed afterwards), with ``token`` as a bearer token."""
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    try:
        connection.request(method, path, body=data, headers=headers)
        response = connection.getresponse()
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()},
                     response.read())
    finally:
        connection.close()


def plain(port: int):
    return lambda *args, **kwargs: call(HTTPConnection("127.0.0.1", port, timeout=30),
                                        *args, **kwargs)


def write_token_file(directory, *tokens):
    path = directory / "tokens"
    path.write_text("# daggyd clients, one token per line\n\n" + "\n".join(tokens) + "\n")
    path.chmod(0o600)
    return path


@pytest.fixture(scope="module")
def token_file(tmp_path_factory):
    return write_token_file(tmp_path_factory.mktemp("tokens"), TOKEN, OTHER_TOKEN)


@pytest.mark.parametrize("launcher", ["daggyd", "twistd"])
def test_auth_with_a_token_file(daemons, token_file, launcher):
    """With tokens in a file, a request without a token (or with a wrong one) gets 401 and
    a WWW-Authenticate challenge, /ready stays open, and with a token a run is submitted,
    completes and is read back."""
    daemon = daemons(launcher, auth_token_file=str(token_file))
    request = plain(daemon.port)

    refused = request("GET", "/v1/dagruns")
    assert refused.status == 401
    assert refused.headers["www-authenticate"] == CHALLENGE
    assert "error" in refused.json
    wrong = request("POST", "/v1/dagrun", "wrong-token-0123456789",
                    {"tasks": {"t": {"job": {"command": ["/bin/true"]}}}})
    assert wrong.status == 401
    assert wrong.headers["www-authenticate"] == f'{CHALLENGE}, error="invalid_token"'
    assert b"wrong-token" not in wrong.raw
    assert request("GET", "/ready").status == 200

    submitted = request("POST", "/v1/dagrun", TOKEN,
                        {"tasks": {"greet": {"job": {"command": ["/bin/echo", "hi"]}}}})
    assert submitted.status == 200
    run_id = submitted.json["runID"]
    wait_until(lambda: request("GET", f"/v1/dagrun/{run_id}/state", OTHER_TOKEN).json["state"]
               == "COMPLETED", f"run {run_id} to complete")
    run = request("GET", f"/v1/dagrun/{run_id}", TOKEN)
    assert run.status == 200
    assert run.json["taskStates"] == {"greet": "COMPLETED"}
    assert request("GET", f"/v1/dagrun/{run_id}").status == 401
    assert TOKEN not in daemon.log and OTHER_TOKEN not in daemon.log


def write_tls_config(directory, port: int, key, cert, **settings):
    config = directory / "daggyd.json"
    config.write_text(json.dumps({
        "listen": f"ssl:{port}:interface=127.0.0.1:privateKey={key}:certKey={cert}",
        "executor": {"name": "NoopTaskExecutor"},
        "logger": {"name": "OStreamLogger", "config": {"file": "events.jsonl"}},
        **settings,
    }))
    return config


def https(port: int, cafile) -> HTTPSConnection:
    return HTTPSConnection("localhost", port, timeout=30,
                           context=ssl.create_default_context(cafile=str(cafile)))


def test_tls_listen(tmp_path, processes):
    """daggyd listening on ssl: serves HTTPS that a client verifying the certificate
    accepts (with a bearer token too); plain HTTP and an unverified certificate fail; it
    stops with status 0."""
    key, cert = write_certificate(tmp_path)
    port = free_port()
    config = write_tls_config(tmp_path, port, key, cert,
                              **{"auth-tokens": [TOKEN]})
    daemon = processes(daggyd("--config", str(config)), tmp_path)

    def ready() -> bool:
        try:
            return call(https(port, cert), "GET", "/ready").status == 200
        except (OSError, HTTPException):
            assert daemon.popen.poll() is None, daemon.err
            return False

    wait_until(ready, "daggyd to answer /ready over HTTPS")
    assert call(https(port, cert), "GET", "/v1/dagruns").status == 401
    submitted = call(https(port, cert), "POST", "/v1/dagrun", TOKEN,
                     {"tasks": {"t": {"job": {"command": ["x"]}}}})
    assert submitted.status == 200
    run_id = submitted.json["runID"]
    wait_until(lambda: call(https(port, cert), "GET", f"/v1/dagrun/{run_id}/state",
                            TOKEN).json["state"] == "COMPLETED", "the run to complete")

    # A client that does not trust the certificate refuses the connection.
    with pytest.raises(ssl.SSLCertVerificationError):
        call(HTTPSConnection("localhost", port, timeout=30,
                             context=ssl.create_default_context()), "GET", "/ready")
    # Plain HTTP on the TLS port gets no HTTP answer.
    with pytest.raises((HTTPException, ConnectionError)):
        call(HTTPConnection("127.0.0.1", port, timeout=30), "GET", "/ready")

    daemon.popen.send_signal(15)
    assert daemon.wait() == 0
    assert "Traceback" not in daemon.err
    assert "Serving the API on ssl:" in daemon.err


def test_tls_with_a_bad_certificate_is_a_config_error(tmp_path, processes):
    """A key that does not match the certificate stops daggyd with one line and status 2."""
    key, _ = write_certificate(tmp_path, "one")
    _, cert = write_certificate(tmp_path, "two")
    config = write_tls_config(tmp_path, free_port(), key, cert)
    daemon = processes(daggyd("--config", str(config)), tmp_path)
    assert daemon.wait() == 2
    assert daemon.err == (f"daggyd: {config}: listen: ssl: the private key in {key} does not "
                          f"belong to the certificate in {cert}\n")


def listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.parametrize("settings, key, named", [
    ({"ip": "0.0.0.0"}, "ip", "0.0.0.0 (every IPv4 interface)"),
    ({"listen": "tcp:{port}"}, "listen", "0.0.0.0 (every IPv4 interface)"),
])
def test_daggyd_refuses_an_exposed_address_without_authentication(
        tmp_path, processes, settings, key, named):
    """daggyd configured to listen on every interface without tokens exits with status 2
    and one line naming the address and the fix, without ever listening."""
    port = free_port()
    settings = {name: value.format(port=port) for name, value in settings.items()}
    if "ip" in settings:
        settings["port"] = port
    config = tmp_path / "daggyd.json"
    config.write_text(json.dumps(settings))
    daemon = processes(daggyd("--config", str(config)), tmp_path)
    assert daemon.wait() == 2
    assert daemon.err == (f"daggyd: {config}: {key}: refusing to listen on {named} without "
                          f"authentication; {EXPOSED_FIX}\n")
    assert daemon.out == ""
    assert not listening(port)


def test_twistd_refuses_an_exposed_address_without_authentication(tmp_path, processes):
    """`twistd -n daggyd` refuses the same config as a usage error (status 1)."""
    config = tmp_path / "daggyd.json"
    config.write_text(json.dumps({"ip": "0.0.0.0", "port": free_port()}))
    daemon = processes(twistd("-n", "--pidfile", "", "daggyd", "--config", str(config)),
                       tmp_path, env={"PYTHONPATH": str(REPO)})
    assert daemon.wait() == 1
    # twistd prints its usage text, then the error after its own program name.
    assert daemon.out.splitlines()[-1].endswith(
        f": {config}: ip: refusing to listen on 0.0.0.0 (every IPv4 interface) "
        f"without authentication; {EXPOSED_FIX}")


def test_allow_unauthenticated_starts_on_every_interface(tmp_path):
    """allow-unauthenticated: true lets daggyd listen on 0.0.0.0 without tokens; it warns
    in its log."""
    daemon = start_daemon("daggyd", tmp_path, "NoopTaskExecutor",
                          ip="0.0.0.0", allow_unauthenticated=True)
    try:
        assert daemon.http("GET", "/v1/dagruns").status == 200
    finally:
        assert daemon.stop() == 0
    assert "WITHOUT authentication" in daemon.log


def test_an_empty_token_file_is_a_config_error(tmp_path, processes):
    """A token file holding no token stops daggyd with one line naming it (status 2)."""
    tokens = write_token_file(tmp_path)
    config = tmp_path / "daggyd.json"
    config.write_text(json.dumps({"auth-token-file": str(tokens)}))
    daemon = processes(daggyd("--config", str(config)), tmp_path)
    assert daemon.wait() == 2
    assert daemon.err == (f"daggyd: {config}: auth-token-file: {tokens} holds no token (one "
                          f"per line; # starts a comment line)\n")
