"""The web UI's files on the Site: the page at /, its files at /ui/, only the files found in
the folder, cache validation, the Content-Security-Policy, no token needed for them (but
still for the API), and the packaged folder itself."""

from __future__ import annotations

import json

import pytest

from daggy.server.api import make_site
from daggy.server.webui import CONTENT_SECURITY_POLICY, INDEX, load_assets
from test_api import Connection, Harness

TOKEN = "webui-test-token-0123456789"


@pytest.fixture
def assets(tmp_path, monkeypatch):
    """A UI folder of a few files, as package ``fakeui``'s ``ui`` folder."""
    package = tmp_path / "fakeui"
    (package / "ui" / "vendor").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "ui" / "index.html").write_text("<!doctype html><title>daggy</title>")
    (package / "ui" / "app.js").write_text("export const answer = 42;\n")
    (package / "ui" / "vendor" / "lib.min.js").write_text("/* lib */")
    (package / "ui" / "vendor" / "lib.LICENSE.txt").write_text("MIT")
    (package / "ui" / "notes.md").write_text("not served: unknown type")
    (package / "ui" / "node_modules").mkdir()
    (package / "ui" / "node_modules" / "x.js").write_text("not served")
    monkeypatch.syspath_prepend(str(tmp_path))
    return load_assets("fakeui", "ui")


def get(site, path: bytes, headers: bytes = b"", method: bytes = b"GET"):
    [response] = Connection(site).send(
        method + b" " + path + b" HTTP/1.1\r\nHost: daggy.test\r\n" + headers + b"\r\n")
    return response


def test_only_known_file_types_outside_node_modules_are_loaded(assets):
    assert sorted(assets) == ["app.js", "index.html", "vendor/lib.LICENSE.txt",
                              "vendor/lib.min.js"]


def test_the_page_is_served_at_the_root_with_its_headers(assets):
    site = make_site(Harness().api, max_request_bytes=64, ui_assets=assets)
    status, headers, body = get(site, b"/")
    assert (status, body) == (200, b"<!doctype html><title>daggy</title>")
    assert headers["content-type"] == "text/html; charset=utf-8"
    assert headers["content-security-policy"] == CONTENT_SECURITY_POLICY.decode()
    assert "connect-src 'self'" in headers["content-security-policy"]
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["cache-control"] == "no-cache"
    status, headers, body = get(site, b"/ui/vendor/lib.min.js")
    assert (status, body, headers["content-type"]) == (
        200, b"/* lib */", "text/javascript; charset=utf-8")


def test_an_unchanged_file_is_answered_304(assets):
    site = make_site(Harness().api, max_request_bytes=64, ui_assets=assets)
    _, headers, _ = get(site, b"/ui/app.js")
    status, _, body = get(site, b"/ui/app.js",
                          b"If-None-Match: " + headers["etag"].encode() + b"\r\n")
    assert (status, body) == (304, b"")
    status, _, _ = get(site, b"/ui/app.js", b'If-None-Match: "other"\r\n')
    assert status == 200


@pytest.mark.parametrize("path", [b"/ui/notes.md", b"/ui/node_modules/x.js", b"/ui/../ui/app.js",
                                  b"/ui/%2e%2e/index.html", b"/ui/", b"/ui/vendor",
                                  b"/ui/nothing.js"])
def test_anything_else_under_ui_is_a_json_404(assets, path):
    site = make_site(Harness().api, max_request_bytes=64, ui_assets=assets)
    status, headers, body = get(site, path)
    assert status == 404 and headers["content-type"].startswith("application/json")
    assert json.loads(body)["error"].startswith("no such file: ")


def test_other_methods_are_a_json_405(assets):
    site = make_site(Harness().api, max_request_bytes=64, ui_assets=assets)
    status, headers, body = get(site, b"/", method=b"POST")
    assert status == 405 and headers["allow"] == "GET, HEAD"
    assert json.loads(body) == {"error": "method POST not allowed on /; allowed: GET, HEAD"}


def test_the_api_is_still_served_beside_the_ui(assets):
    site = make_site(Harness().api, max_request_bytes=64, ui_assets=assets)
    status, _, body = get(site, b"/ready")
    assert (status, json.loads(body)) == (200, {"msg": "Ya like DAGs?"})
    status, _, body = get(site, b"/v1/dagruns")
    assert (status, json.loads(body)) == (200, [])


def test_with_tokens_the_ui_files_are_open_and_the_api_is_not(assets):
    """The page must load to ask for the token; the data behind it still needs one."""
    site = make_site(Harness().api, max_request_bytes=64, ui_assets=assets,
                     auth_tokens=[TOKEN])
    assert get(site, b"/")[0] == 200
    assert get(site, b"/ui/app.js")[0] == 200
    assert get(site, b"/ui/nothing.js")[0] == 404
    assert get(site, b"/v1/dagruns")[0] == 401
    assert get(site, b"/", method=b"POST")[0] == 401
    auth = b"Authorization: Bearer " + TOKEN.encode() + b"\r\n"
    assert get(site, b"/v1/dagruns", auth)[0] == 200


def test_without_the_ui_the_root_is_the_apis_404():
    site = make_site(Harness().api, max_request_bytes=64)
    status, _, body = get(site, b"/")
    assert status == 404 and "error" in json.loads(body)


def test_the_package_ships_the_ui():
    """daggy/ui holds the page, its script and the vendored graph libraries."""
    shipped = load_assets()
    assert {INDEX, "app.js", "app.css", "vendor/cytoscape.min.js"} <= set(shipped)
    assert b'src="/ui/app.js"' in shipped[INDEX].body
    assert not any(name.startswith("http") for name in shipped)
