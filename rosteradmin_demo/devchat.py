# -*- test-case-name: tests.test_devchat -*-
"""
The Converse.js chat page of C{contrib/converse/}, served the way a site
deploys it, for the demo (C{--websocket}) and the browser tests: its
C{index.html} unchanged, a C{config.js} made from the given settings, and
C{dist/} from the npm package that C{scripts/setup.sh} installs.

(C{twisted.web.static} warns when imported on current Twisted, and the
tests turn warnings into errors: so this serves the few files itself.)
"""

from __future__ import annotations

import json
import mimetypes
import os
from pathlib import Path
from typing import Any

from twisted.web import pages, server
from twisted.web.resource import Resource


def converseDirectory() -> Path:
    """
    Where C{scripts/setup.sh} runs C{npm ci} for C{contrib/converse/package.json}:
    C{$ROSTERADMIN_CONVERSE_DIR}, else the user's cache directory, so the
    package is fetched once per version, not once per checkout.
    """
    configured = os.environ.get("ROSTERADMIN_CONVERSE_DIR")
    if configured:
        return Path(configured)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "rosteradmin" / "converse"


def converseDist(directory: Path | None = None) -> Path:
    """
    Converse.js's built files (C{converse.min.js} and what it loads).
    """
    return (directory or converseDirectory()) / "node_modules" / "converse.js" / "dist"


def localSettings(websocketURL: str, domain: str) -> dict[str, Any]:
    """
    The settings C{config.js} gives for a local Prosody (the demo's, the
    tests'): its WebSocket, its one domain.
    """
    return {
        "websocket_url": websocketURL,
        "locked_domain": domain,
        # Converse logs in again after a reload with the SCRAM keys it
        # kept; with Prosody's internal_plain storage the salt changes at
        # every login, so that fails, and races the login form.
        "reuse_scram_keys": False,
    }


class ConverseNotInstalled(Exception):
    """
    The npm package is not where L{converseDirectory} says.
    """


class ChatPage(Resource):
    """
    Serves C{/} (C{index.html}), C{/config.js} and C{/dist/...}.

    @ivar page: The directory of C{index.html} (C{contrib/converse}).

    @ivar settings: What C{config.js} sets C{window.converseSiteSettings}
        to: read at each request, so a test may change it before
        (re)loading the page.
    """

    isLeaf = True

    def __init__(self, page: Path, settings: dict[str, Any], dist: Path | None = None) -> None:
        """
        @param dist: Converse's C{dist/} directory (L{converseDist} if not given).
        @raise ConverseNotInstalled: It holds no C{converse.min.js}.
        """
        super().__init__()
        self.page = page
        self.settings = settings
        self.dist = (dist or converseDist()).resolve()
        if not (self.dist / "converse.min.js").is_file():
            raise ConverseNotInstalled(
                f"Converse.js is not installed in {self.dist.parents[1]}: `bash scripts/demo.sh --websocket` "
                f"installs it (npm ci with {page / 'package.json'})")

    def render_GET(self, request: server.Request) -> bytes:
        names = [segment.decode("utf-8", "replace") for segment in request.postpath or []]
        if names in ([], [""], ["index.html"]):
            path = self.page / "index.html"
        elif names == ["config.js"]:
            request.setHeader(b"content-type", b"text/javascript; charset=utf-8")
            return f"window.converseSiteSettings = {json.dumps(self.settings)};\n".encode()
        elif names[0] == "dist":
            try:
                path = self.dist.joinpath(*names[1:]).resolve()
            except (OSError, ValueError):  # a NUL in the path, say
                return pages.notFound().render(request)
            if not path.is_relative_to(self.dist):
                return pages.notFound().render(request)
        else:
            return pages.notFound().render(request)
        if not path.is_file():
            return pages.notFound().render(request)
        kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        request.setHeader(b"content-type", kind.encode())
        return path.read_bytes()
