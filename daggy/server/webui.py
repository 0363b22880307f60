# -*- test-case-name: tests.unit.test_webui -*-
"""The web UI's files: ``GET /`` is the page, ``GET /ui/<file>`` its scripts, styles and
vendored libraries (docs/ui.md).

The files ship inside the package (``daggy/ui/``) and are read once, when the daemon is
built, so serving them never touches the disk.  Only the files found then are served:
there is no directory listing and no path outside the folder.  Every answer carries a
Content-Security-Policy that lets the page load and connect to this daemon only, so the UI
makes no request to any other host.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from typing import Any

from twisted.web.iweb import IRequest
from twisted.web.resource import Resource

from daggy.server._json import json_body, method_not_allowed

_CONTENT_TYPES = {
    ".html": b"text/html; charset=utf-8",
    ".js": b"text/javascript; charset=utf-8",
    ".css": b"text/css; charset=utf-8",
    ".svg": b"image/svg+xml",
    ".png": b"image/png",
    ".json": b"application/json",
    ".txt": b"text/plain; charset=utf-8",
}
#: The page may load its own files and talk to its own daemon, nothing else.
CONTENT_SECURITY_POLICY = (
    b"default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    b"img-src 'self' data: blob:; connect-src 'self'; font-src 'self'; object-src 'none'; "
    b"base-uri 'none'; frame-ancestors 'none'; form-action 'none'")
_METHODS = (b"GET", b"HEAD")
#: The folder of the UI's files inside the package, and the page served at ``/``.
ASSET_PACKAGE = "daggy"
ASSET_FOLDER = "ui"
INDEX = "index.html"


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: bytes
    etag: bytes


def load_assets(package: str = ASSET_PACKAGE, folder: str = ASSET_FOLDER) -> dict[str, Asset]:
    """Every file below ``folder`` of ``package`` with a known type, by its path relative
    to the folder (``index.html``, ``vendor/cytoscape.min.js``)."""
    found: dict[str, Asset] = {}
    root = resources.files(package).joinpath(folder)
    if not root.is_dir():
        return found
    pending: list[tuple[str, Any]] = [("", root)]
    while pending:
        prefix, directory = pending.pop()
        for entry in directory.iterdir():
            name = prefix + entry.name
            if entry.is_dir():
                if not entry.name.startswith((".", "_")) and entry.name != "node_modules":
                    pending.append((name + "/", entry))
                continue
            suffix = entry.name[entry.name.rfind("."):] if "." in entry.name else ""
            content_type = _CONTENT_TYPES.get(suffix)
            if content_type is None:
                continue
            body = entry.read_bytes()
            etag = b'"' + hashlib.sha256(body).hexdigest()[:32].encode("ascii") + b'"'
            found[name] = Asset(body, content_type, etag)
    return found


def is_ui_path(postpath: list[bytes]) -> bool:
    """Whether a request's path is the UI's: ``/`` or ``/ui/...``."""
    return postpath == [b""] or (len(postpath) > 1 and postpath[0] == b"ui")


class WebUIResource(Resource):
    """Serves ``/`` (the page) and ``/ui/<file>``; a leaf, given the whole path."""

    isLeaf = True

    def __init__(self, assets: dict[str, Asset]):
        super().__init__()
        self._assets = assets

    @property
    def available(self) -> bool:
        return INDEX in self._assets

    def render(self, request: IRequest) -> bytes:
        postpath = request.postpath
        path = "/" + "/".join(segment.decode("utf-8", "replace") for segment in postpath)
        if request.method not in _METHODS:
            return method_not_allowed(request, path, ("GET", "HEAD"))
        if postpath == [b""]:
            name = INDEX
        else:
            name = "/".join(segment.decode("utf-8", "replace") for segment in postpath[1:])
        asset = self._assets.get(name)
        if asset is None:
            return json_body(request, {"error": f"no such file: {path}"}, 404)
        request.setHeader(b"Content-Type", asset.content_type)
        request.setHeader(b"Content-Security-Policy", CONTENT_SECURITY_POLICY)
        request.setHeader(b"X-Content-Type-Options", b"nosniff")
        request.setHeader(b"Referrer-Policy", b"no-referrer")
        # Revalidated every time, answered 304 while unchanged: an upgraded daggyd is never
        # shown with the old scripts.
        request.setHeader(b"Cache-Control", b"no-cache")
        request.setHeader(b"ETag", asset.etag)
        if request.getHeader(b"if-none-match") == asset.etag:
            request.setResponseCode(304)
            return b""
        return asset.body
