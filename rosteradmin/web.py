# -*- test-case-name: tests.test_api -*-
"""
JSON over twisted.web: the plumbing under L{rosteradmin.api}.

Handlers are coroutines returning C{(status, body)}; L{ApiError} becomes its
status and JSON body, anything else a logged 500, so a caller never sees a
traceback.  Request bodies are capped while they arrive (twisted.web has no
cap of its own), and secrets are compared in constant time.
"""

from __future__ import annotations

import hmac
import json
from http import HTTPStatus
from typing import Any, Awaitable, Callable

from twisted.internet.defer import ensureDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import server
from twisted.web.resource import Resource

JSON = dict[str, Any]

TOO_LARGE = "Request body too large"
Handler = Callable[[server.Request], Awaitable[tuple[int, JSON]]]


class ApiError(Exception):
    """
    An HTTP error; the resource shapes its JSON body from the message.
    """

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class LimitedRequest(server.Request):
    """
    A request that stops storing its body past C{maxBodyBytes}, so a huge
    upload costs no memory or disk; the resource then answers 413.
    """

    maxBodyBytes = 1024 * 1024
    tooLarge = False
    _received = 0

    def gotLength(self, length: int | None) -> None:
        super().gotLength(length)
        if length is not None and length > self.maxBodyBytes:
            # Refuse at once rather than read a body we will not use.  The
            # request is not parsed yet, so answer on the connection itself,
            # with a body that fits both error shapes of the API.
            self.tooLarge = True
            body = json.dumps({"status": "error", "message": TOO_LARGE, "error": TOO_LARGE}).encode()
            transport = self.channel.transport
            transport.write(
                b"HTTP/1.1 413 Payload Too Large\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
            )
            transport.loseConnection()

    def handleContentChunk(self, data: bytes) -> None:
        if self.tooLarge:
            return
        self._received += len(data)
        if self._received > self.maxBodyBytes:
            self.tooLarge = True
            self.content.seek(0)
            self.content.truncate()
            return
        super().handleContentChunk(data)


def makeSite(root: Resource, maxBodyBytes: int, timeout: float = 60.0) -> server.Site:
    """
    A Site whose requests cap their bodies and whose idle connections
    (slow senders included) are closed after C{timeout} seconds.
    """
    request = type("Request", (LimitedRequest,), {"maxBodyBytes": maxBodyBytes})
    site = server.Site(root, timeout=timeout)
    site.requestFactory = request
    site.displayTracebacks = False
    return site


def authorized(request: server.Request, expected: str | None) -> bool:
    """
    Whether the C{Authorization} header equals C{expected}, compared in
    constant time.  No expected value means no check.
    """
    if expected is None:
        return True
    given = request.getHeader("authorization")
    if given is None:
        return False
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def readJSON(request: server.Request) -> Any:
    """
    The request body as JSON.

    @raise ApiError: 413 over the size cap, 400 when not UTF-8 JSON.
    """
    if getattr(request, "tooLarge", False):
        raise ApiError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, TOO_LARGE)
    request.content.seek(0)
    body = request.content.read()
    try:
        return json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ApiError(HTTPStatus.BAD_REQUEST, "Request body is not valid JSON") from None


class JsonResource(Resource):
    """
    A leaf resource whose methods are coroutines C{_post}/C{_get} returning
    C{(status, body)}.
    """

    isLeaf = True
    log = Logger()
    methods: dict[bytes, str] = {}

    @staticmethod
    def errorBody(message: str) -> JSON:
        """
        The JSON body of an error reply.
        """
        return {"error": message}

    def render(self, request: server.Request) -> int:
        name = self.methods.get(request.method)
        if name is None:
            allowed = b", ".join(sorted(self.methods))
            request.setHeader(b"allow", allowed)
            self._write(request, HTTPStatus.METHOD_NOT_ALLOWED, self.errorBody("Method not allowed"))
            return server.NOT_DONE_YET
        handler: Handler = getattr(self, name)
        finished = []
        request.notifyFinish().addBoth(finished.append)
        d = ensureDeferred(handler(request))
        d.addErrback(self._ebRender, request)
        d.addCallback(lambda result: finished or self._write(request, *result))
        d.addErrback(lambda f: self.log.failure("writing an HTTP response failed", f))
        return server.NOT_DONE_YET

    def _ebRender(self, failure: Failure, request: server.Request) -> tuple[int, JSON]:
        if failure.check(ApiError):
            return failure.value.code, self.errorBody(failure.value.message)
        self.log.failure("{method} {path} failed", failure,
                         method=request.method.decode("ascii", "replace"),
                         path=request.path.decode("ascii", "replace"))
        return HTTPStatus.INTERNAL_SERVER_ERROR, self.errorBody("Internal error")

    @staticmethod
    def _write(request: server.Request, code: int, body: JSON) -> None:
        data = json.dumps(body).encode("utf-8")
        request.setResponseCode(int(code))
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"content-length", b"%d" % len(data))
        request.write(data)
        request.finish()
