"""
Real parts for the integration tests: the web app stub served over HTTP on
loopback.  (Prosody comes from L{rosteradmin.devprosody}, the XMPP client
from L{tests.integration.xmppclient}.)
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any
from urllib.parse import unquote

from twisted.internet import reactor
from twisted.web import server
from twisted.web.resource import Resource

from rosteradmin.devprosody import freePort

__all__ = ["WebAppStub", "freePort"]


class WebAppStub(Resource):
    """
    The web app's roster endpoint: C{GET /rosters/<username>}.

    @ivar rosters: The JSON object served per user (unknown users: C{{}}).
    @ivar requests: How often each user's roster was fetched.
    @ivar failures: A status and raw body to answer instead, per user.
    @ivar delays: Seconds to wait before answering, per user.
    @ivar url: The roster URL template, once listening.
    @ivar port: The listening port (tests stop and restart it).
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.rosters: dict[str, Any] = {}
        self.requests: Counter[str] = Counter()
        self.failures: dict[str, tuple[int, bytes]] = {}
        self.delays: dict[str, float] = {}
        self.lastHeaders: dict[str, dict[bytes, list[bytes]]] = {}
        self.url = ""
        self.port: Any = None
        self.portNumber = 0

    def render_GET(self, request: server.Request) -> int | bytes:
        username = unquote(request.postpath[-1].decode("ascii"))
        self.requests[username] += 1
        self.lastHeaders[username] = dict(request.requestHeaders.getAllRawHeaders())
        delay = self.delays.get(username)
        if delay is None:
            return self._answer(request, username)
        call = reactor.callLater(delay, self._answerLater, request, username)
        request.notifyFinish().addErrback(lambda _: call.active() and call.cancel())
        return server.NOT_DONE_YET

    def _answerLater(self, request: server.Request, username: str) -> None:
        request.write(self._answer(request, username))
        request.finish()

    def _answer(self, request: server.Request, username: str) -> bytes:
        if username in self.failures:
            code, body = self.failures[username]
            request.setResponseCode(code)
            return body
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(self.rosters.get(username, {})).encode("utf-8")
