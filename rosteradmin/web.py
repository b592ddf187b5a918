# -*- test-case-name: tests.test_api,tests.test_web -*-
"""
JSON over twisted.web: the plumbing under L{rosteradmin.api}.

Handlers are coroutines returning C{(status, body)}; L{ApiError} becomes its
status and JSON body, anything else a logged 500, so a caller never sees a
traceback.  Request bodies are capped while they arrive (twisted.web has no
cap of its own), and secrets are compared in constant time.

The API must never take the descriptors the XMPP side and the web-app
fetches need: its connections are capped (L{ConnectionLimiter}), and each
must send a whole request within a deadline (L{RequestDeadlineChannel}), so
idle and slow clients cannot hold them.
"""

from __future__ import annotations

import hmac
import json
from functools import partial
from http import HTTPStatus
from typing import Any, Callable, Coroutine, Iterable

from twisted.application.internet import StreamServerEndpointService
from twisted.internet.defer import Deferred, TimeoutError as DeferredTimeoutError, ensureDeferred, succeed
from twisted.internet.interfaces import IAddress, IReactorTime
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from twisted.web import http, server
from twisted.web.error import UnsupportedMethod
from twisted.web.resource import Resource

JSON = dict[str, Any]

TOO_LARGE = "Request body too large"

#: Seconds between two log lines about connections refused over the cap:
#: a flood of connections must not become a flood of log lines.
REFUSALS_LOG_INTERVAL = 60.0

Handler = Callable[[server.Request], Coroutine[Any, Any, tuple[int, JSON]]]


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

    tooLarge = False
    _received = 0

    def __init__(self, *args: Any, maxBodyBytes: int, **kwargs: Any) -> None:
        """
        @param maxBodyBytes: The largest body stored (C{--max-body-bytes}).
        """
        super().__init__(*args, **kwargs)
        self.maxBodyBytes = maxBodyBytes

    def gotLength(self, length: int | None) -> None:
        super().gotLength(length)
        if length is not None and length > self.maxBodyBytes:
            # Refuse at once rather than read a body we will not use.  The
            # request is not parsed yet, so answer on the connection itself,
            # with a body that fits both error shapes of the API.
            self.tooLarge = True
            body = json.dumps({"status": "error", "message": TOO_LARGE, "error": TOO_LARGE}).encode()
            transport = self.channel.transport if self.channel is not None else None
            if transport is None:
                return  # the connection is gone already
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
            if self.content is not None:
                self.content.seek(0)
                self.content.truncate()
            return
        super().handleContentChunk(data)


class Drain:
    """
    Counts the requests being handled, so that a stopping service can let
    them finish; requests that arrive meanwhile get 503.
    """

    log = Logger()

    def __init__(self) -> None:
        self.inFlight = 0
        self.stopping = False
        self._idle: list[Deferred[None]] = []

    def track(self, d: Deferred[Any]) -> None:
        self.inFlight += 1
        d.addBoth(self._finished)

    def _finished(self, result: object) -> object:
        self.inFlight -= 1
        if not self.inFlight:
            idle, self._idle = self._idle, []
            for waiter in idle:
                waiter.callback(None)
        return result

    def wait(self, clock: IReactorTime, timeout: float) -> Deferred[None]:
        """
        Fire when no request is in flight, or after C{timeout} seconds.
        """
        if not self.inFlight:
            return succeed(None)
        self.log.info("waiting for {count} HTTP requests to finish", count=self.inFlight)
        d: Deferred[None] = Deferred()
        self._idle.append(d)
        d.addTimeout(timeout, clock)
        d.addErrback(self._gaveUp)
        return d

    def _gaveUp(self, failure: Failure) -> None:
        failure.trap(DeferredTimeoutError)
        self.log.warn("stopping with {count} HTTP requests unfinished", count=self.inFlight)


class RequestDeadlineChannel(http.HTTPChannel):
    """
    An HTTP/1.1 channel whose idle timer is a deadline: armed when the
    channel starts waiting for a request (on connecting, and once the
    previous response is done), it is not pushed back by the bytes that
    arrive, so a client must send a whole request, headers and body, within
    it, and an idle kept-alive connection is closed when it expires.

    twisted.web's own timer (C{Site(timeout=)}) restarts at every read, so a
    client sending one byte now and then (slowloris) holds its connection
    for ever.  The timer still stops while a request is handled, and it
    closes the connection as twisted.web does: flushing what is written,
    then aborting if the client does not read it (C{abortTimeout}).
    """

    def resetTimeout(self) -> None:
        # HTTPChannel.dataReceived calls this at every read: the deadline
        # stands whatever arrives.
        pass


class APISite(server.Site):
    """
    The API's Site: its requests cap their bodies (L{LimitedRequest}), its
    clients must send each request within C{timeout} seconds, and its idle
    connections are closed after as long (L{RequestDeadlineChannel}).
    """

    # A class, not HTTPFactory's method: Factory.buildProtocol calls it
    # (twisted.web's default protocol only adds HTTP/2, which no endpoint
    # string negotiates).  HTTPFactory types protocol as its own factory
    # method, not as any protocol factory.
    protocol = RequestDeadlineChannel  # type: ignore[assignment]
    displayTracebacks = False

    def __init__(self, root: Resource, maxBodyBytes: int, timeout: float, clock: IReactorTime | None) -> None:
        """
        @param clock: The timers' clock; the global reactor when None.
        """
        super().__init__(root, timeout=timeout, reactor=clock)
        # Site calls its requestFactory with the channel, as it would a
        # class; twisted types it as the class.
        self.requestFactory = partial(LimitedRequest, maxBodyBytes=maxBodyBytes)  # type: ignore[assignment]


def makeSite(root: Resource, maxBodyBytes: int, timeout: float = 30.0,
             clock: IReactorTime | None = None) -> APISite:
    """
    The API's L{APISite}.

    @param clock: The timers' clock; the global reactor when None.
    """
    return APISite(root, maxBodyBytes, timeout, clock)


class ConnectionLimiter(WrappingFactory):
    """
    Knows the open HTTP connections: it closes new ones at once beyond
    C{maxConnections}, so that the API cannot take the descriptors the XMPP
    side and the web-app fetches need, and it closes them all when the
    service stops, once their responses are written.

    A refused connection costs one C{accept} and one C{close}, and is
    counted; the count is logged at most once per L{REFUSALS_LOG_INTERVAL}.

    @ivar refused: How many connections were refused since the start.
    """

    log = Logger()

    def __init__(self, site: server.Site, maxConnections: int, clock: IReactorTime) -> None:
        super().__init__(site)
        self.maxConnections = maxConnections
        self.clock = clock
        self.refused = 0
        self._unreported = 0
        self._lastReport: float | None = None
        self._closed: list[Deferred[None]] = []

    # IProtocolFactory.buildProtocol may return None (the port then closes
    # the connection); WrappingFactory narrows its return type.
    def buildProtocol(self, addr: IAddress | None) -> ProtocolWrapper | None:  # type: ignore[override]
        if len(self.protocols) < self.maxConnections:
            return super().buildProtocol(addr)
        # None makes the port close the socket at once, unread.
        self.refused += 1
        self._unreported += 1
        now = self.clock.seconds()
        if self._lastReport is None or now - self._lastReport >= REFUSALS_LOG_INTERVAL:
            self.log.warn("HTTP API full ({limit} connections open, --http-max-connections): closed {count} new "
                          "connections at once since the last such line, {refused} in all (one line per "
                          "{interval:.0f} s at most)", limit=self.maxConnections, count=self._unreported,
                          refused=self.refused, interval=REFUSALS_LOG_INTERVAL)
            self._unreported = 0
            self._lastReport = now
        return None

    def unregisterProtocol(self, p: Any) -> None:
        super().unregisterProtocol(p)
        if not self.protocols:
            closed, self._closed = self._closed, []
            for d in closed:
                d.callback(None)

    def closeAll(self, timeout: float) -> Deferred[None]:
        """
        Close every connection (pending writes are flushed first); fire when
        all are gone, or after C{timeout} seconds.
        """
        if not self.protocols:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._closed.append(d)
        for p in list(self.protocols):
            p.loseConnection()
        d.addTimeout(timeout, self.clock)
        d.addErrback(lambda f: f.trap(DeferredTimeoutError))
        return d


class DrainingService(StreamServerEndpointService):
    """
    The HTTP API's service: at most C{maxConnections} connections at once
    (L{ConnectionLimiter}); on stop it closes the port, lets the requests in
    flight finish (up to C{drainTimeout} seconds) and get their responses
    out, and only then lets the rest of the service stop.
    """

    def __init__(self, endpoint: Any, site: server.Site, drain: Drain, clock: IReactorTime, drainTimeout: float,
                 maxConnections: int) -> None:
        """
        @param drain: The requests in flight, which the resources count.
        """
        self.connections = ConnectionLimiter(site, maxConnections, clock)
        super().__init__(endpoint, self.connections)
        # As twisted.application.strports.service does: a failure to listen
        # is raised by privilegedStartService, not only logged.
        self._raiseSynchronously = True
        self.site = site
        self.drain = drain
        self.clock = clock
        self.drainTimeout = drainTimeout

    def stopService(self) -> Deferred[None]:
        self.drain.stopping = True
        d = super().stopService()
        d.addCallback(lambda _: self.drain.wait(self.clock, self.drainTimeout))
        d.addCallback(lambda _: self.connections.closeAll(5.0))
        return d


def authorizationProblem(request: server.Request, expected: str | None) -> str | None:
    """
    What keeps the request's C{Authorization} header from being
    C{expected}: None when nothing does (or nothing is expected), else
    C{"missing"}, C{"repeated"} (two or more headers, whatever they hold:
    which one a proxy or a framework reads differs) or C{"wrong"}.

    The raw bytes are compared, in constant time, with C{expected} as
    UTF-8: a header that is not UTF-8 (Latin-1, say) is simply wrong.
    """
    if expected is None:
        return None
    given = request.requestHeaders.getRawHeaders(b"authorization") or []
    if len(given) > 1:
        return "repeated"
    if not given or not given[0]:
        return "missing"
    if hmac.compare_digest(given[0], expected.encode("utf-8")):
        return None
    return "wrong"


def readJSON(request: server.Request) -> Any:
    """
    The request body as JSON.

    @raise ApiError: 413 over the size cap, 400 when not UTF-8 JSON.
    """
    if getattr(request, "tooLarge", False):
        raise ApiError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, TOO_LARGE)
    body = b""
    if request.content is not None:
        request.content.seek(0)
        body = request.content.read()
    try:
        return json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ApiError(HTTPStatus.BAD_REQUEST, "Request body is not valid JSON") from None


class JsonLeaf(Resource):
    """
    A leaf resource whose errors are JSON.  twisted.web dispatches each
    method to C{render_<METHOD>} (L{Resource.render}) and raises
    L{UnsupportedMethod} for one the resource does not offer: that becomes
    a JSON 405 whose C{Allow} lists C{allowedMethods}.  HEAD is GET without
    the body (twisted.web drops it), only where C{allowedMethods} lists it:
    a GET that changes something (a refresh) offers none.

    @cvar allowedMethods: The methods offered (twisted.web's attribute).
    @cvar hasSubpaths: Whether paths below this one are its to answer;
        if not, they are a 404.
    """

    isLeaf = True
    allowedMethods: tuple[bytes, ...] = ()
    hasSubpaths = False

    @staticmethod
    def errorBody(message: str) -> JSON:
        """
        The JSON body of an error reply.
        """
        return {"error": message}

    def render(self, request: server.Request) -> bytes | int:
        if not self.hasSubpaths and request.postpath not in ([], [b""]):
            writeJSON(request, HTTPStatus.NOT_FOUND, self.errorBody("No such resource"))
            return server.NOT_DONE_YET
        try:
            result: bytes | int = super().render(request)
        except UnsupportedMethod as e:
            methodNotAllowed(request, e.allowedMethods, self.errorBody("Method not allowed"))
            return server.NOT_DONE_YET
        return result

    def render_HEAD(self, request: server.Request) -> bytes | int:
        if b"HEAD" not in self.allowedMethods:
            raise UnsupportedMethod(self.allowedMethods)
        result: bytes | int = super().render_HEAD(request)
        return result


class JsonResource(JsonLeaf):
    """
    A L{JsonLeaf} whose methods are coroutines returning C{(status, body)}:
    each C{render_<METHOD>} returns C{self.respond(request, handler)}.
    While the service stops, new requests get 503; those in flight are
    counted so that it can let them finish.
    """

    log = Logger()

    def __init__(self, drain: Drain) -> None:
        """
        @param drain: The requests in flight, shared with the HTTP service.
        """
        super().__init__()
        self.drain = drain

    def respond(self, request: server.Request, handler: Handler) -> int:
        """
        Answer C{request} with what C{handler} returns, as JSON.
        """
        if self.drain.stopping:
            writeJSON(request, HTTPStatus.SERVICE_UNAVAILABLE, self.errorBody("The service is stopping"))
            return server.NOT_DONE_YET
        finished: list[Failure | None] = []
        request.notifyFinish().addBoth(finished.append)

        def write(result: tuple[int, JSON]) -> None:
            # Unless the client went away meanwhile.
            if not finished:
                writeJSON(request, *result)

        d = ensureDeferred(handler(request))
        d.addErrback(self._ebRender, request).addCallback(write)
        d.addErrback(lambda f: self.log.failure("writing an HTTP response failed", f))
        self.drain.track(d)
        return server.NOT_DONE_YET

    def _ebRender(self, failure: Failure, request: server.Request) -> tuple[int, JSON]:
        error = failure.value
        if isinstance(error, ApiError):
            return error.code, self.errorBody(error.message)
        self.log.failure("{method} {path} failed", failure,
                         method=request.method.decode("ascii", "replace"),
                         path=request.path.decode("ascii", "replace"))
        return HTTPStatus.INTERNAL_SERVER_ERROR, self.errorBody("Internal error")


def writeJSON(request: server.Request, code: int, body: JSON) -> None:
    """
    Answer C{request} with C{code} and C{body} as JSON, and finish it.
    """
    data = json.dumps(body).encode("utf-8")
    request.setResponseCode(int(code))
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"content-length", b"%d" % len(data))
    request.write(data)
    request.finish()


def methodNotAllowed(request: server.Request, allowed: Iterable[bytes], body: JSON) -> None:
    """
    Answer 405 with the C{Allow} header listing C{allowed}.
    """
    request.setHeader(b"allow", b", ".join(sorted(allowed)))
    writeJSON(request, HTTPStatus.METHOD_NOT_ALLOWED, body)
