"""
Tests for the HTTP API's connection handling: the connection cap, the
request deadline that drops idle and slow clients, and the open file limit
raised at start; over StringTransport and task.Clock, without sockets.
"""

from __future__ import annotations

import resource
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransportWithDisconnection
from twisted.logger import capturedLogs
from twisted.protocols.policies import ProtocolWrapper
from twisted.python import usage
from twisted.web import server
from twisted.web.resource import Resource

from rosteradmin import filelimit, startup, tap
from rosteradmin.config import Config
from rosteradmin.options import Options
from rosteradmin.web import REFUSALS_LOG_INTERVAL, ConnectionLimiter, makeSite

TIMEOUT = 30.0
REQUEST = b"GET / HTTP/1.1\r\nHost: api.invalid\r\n\r\n"


class Hello(Resource):
    """
    Answers every GET at once, or, with C{pending}, keeps the requests
    unanswered until the test finishes them.
    """

    isLeaf = True

    def __init__(self, pending: bool = False) -> None:
        super().__init__()
        self.pending = pending
        self.requests: list[server.Request] = []

    def render_GET(self, request: server.Request) -> bytes | int:
        if self.pending:
            self.requests.append(request)
            return server.NOT_DONE_YET
        return b"hello"


class Connection:
    """
    One client connection to a L{ConnectionLimiter}, over a transport that
    tells the protocol when either side closes it.
    """

    def __init__(self, limiter: ConnectionLimiter, port: int = 40000) -> None:
        protocol = limiter.buildProtocol(IPv4Address("TCP", "127.0.0.1", port))
        assert protocol is not None, "connection refused"
        self.protocol: ProtocolWrapper = protocol
        self.transport = StringTransportWithDisconnection(peerAddress=IPv4Address("TCP", "127.0.0.1", port))
        self.transport.protocol = protocol
        protocol.makeConnection(self.transport)

    @property
    def open(self) -> bool:
        return bool(self.transport.connected)

    def send(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def close(self) -> None:
        self.transport.loseConnection()


def makeLimiter(maxConnections: int = 10, pending: bool = False) -> tuple[ConnectionLimiter, Clock, Hello]:
    clock = Clock()
    root = Hello(pending)
    site = makeSite(root, 1024, TIMEOUT, clock)
    return ConnectionLimiter(site, maxConnections, clock), clock, root


def test_idleConnectionClosedAtDeadline() -> None:
    """
    A connection that sends nothing is closed C{http-timeout} seconds
    after it opened.
    """
    limiter, clock, _ = makeLimiter()
    connection = Connection(limiter)
    clock.advance(TIMEOUT - 0.1)
    assert connection.open
    clock.advance(0.1)
    assert not connection.open
    assert limiter.protocols == {}


@pytest.mark.parametrize("opening, trickle", [
    (b"GET / HTTP/1.1\r\n", b"X"),
    (b"POST / HTTP/1.1\r\nHost: api.invalid\r\nContent-Length: 100\r\n\r\n", b"["),
], ids=["slow headers", "slow body"])
def test_tricklingRequestClosedAtDeadline(opening: bytes, trickle: bytes) -> None:
    """
    A client trickling its request headers (slowloris), or a body after
    headers that came at once, a byte a second, is closed unanswered at the
    deadline: the bytes do not push it back, as twisted.web's idle timer
    would.
    """
    limiter, clock, _ = makeLimiter()
    connection = Connection(limiter)
    connection.send(opening)
    for _ in range(int(TIMEOUT) - 1):
        clock.advance(1)
        connection.send(trickle)
    assert connection.open
    clock.advance(1)
    assert not connection.open
    assert connection.transport.value() == b""


def test_idleKeptAliveConnectionClosed() -> None:
    """
    After a response, a kept-alive connection has a new deadline for its
    next request, and is closed when it passes idle.
    """
    limiter, clock, _ = makeLimiter()
    connection = Connection(limiter)
    clock.advance(TIMEOUT - 1)
    connection.send(REQUEST)
    assert connection.transport.value().startswith(b"HTTP/1.1 200 OK")
    clock.advance(TIMEOUT - 0.1)
    assert connection.open
    clock.advance(0.1)
    assert not connection.open


def test_keptAliveConnectionServesRequestsWithinDeadline() -> None:
    """
    A client sending each request within the deadline keeps its connection
    for as many requests as it likes.
    """
    limiter, clock, _ = makeLimiter()
    connection = Connection(limiter)
    for _ in range(5):
        clock.advance(TIMEOUT - 1)
        connection.send(REQUEST)
    assert connection.open
    assert connection.transport.value().count(b"HTTP/1.1 200 OK") == 5


def test_noDeadlineWhileRequestHandled() -> None:
    """
    A request being handled (waiting for a fetch, say) is not cut off by
    the deadline; the next one starts when its response is done.
    """
    limiter, clock, root = makeLimiter(pending=True)
    connection = Connection(limiter)
    connection.send(REQUEST)
    clock.advance(TIMEOUT * 10)
    assert connection.open
    [request] = root.requests
    request.write(b"late")
    request.finish()
    assert b"late" in connection.transport.value()
    clock.advance(TIMEOUT - 0.1)
    assert connection.open
    clock.advance(0.1)
    assert not connection.open


def test_connectionsOverCapClosedAtOnce() -> None:
    """
    Beyond C{http-max-connections} open connections, new ones are refused
    (the port closes them unread); once one closes, a new one is served.
    """
    limiter, clock, _ = makeLimiter(maxConnections=2)
    first, second = Connection(limiter), Connection(limiter)
    with capturedLogs():
        assert limiter.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40001)) is None
    assert limiter.refused == 1
    first.close()
    third = Connection(limiter)
    third.send(REQUEST)
    assert third.transport.value().startswith(b"HTTP/1.1 200 OK")
    assert second.open and len(limiter.protocols) == 2


def test_refusalsLoggedOncePerInterval() -> None:
    """
    A flood of refused connections is one warning at its start, then at
    most one per interval, counting those refused since the last.
    """
    limiter, clock, _ = makeLimiter(maxConnections=1, pending=True)
    Connection(limiter).send(REQUEST)
    with capturedLogs() as events:
        for _ in range(500):
            limiter.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40001))
            clock.advance(0.1)
        clock.advance(REFUSALS_LOG_INTERVAL)
        limiter.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40001))
    lines = [(e["count"], e["refused"], e["limit"]) for e in events if "refused" in e]
    assert lines == [(1, 1, 1), (500, 501, 1)]
    assert [e["log_level"].name for e in events] == ["warn", "warn"]


def test_closeAllOnStop() -> None:
    """
    Stopping closes every open connection and fires once they are gone.
    """
    limiter, clock, _ = makeLimiter()
    connections = [Connection(limiter, port) for port in (40000, 40001)]
    fired: list[object] = []
    limiter.closeAll(5.0).addBoth(fired.append)
    assert fired == [None]
    assert not any(c.open for c in connections)


def test_makeServiceWiresTheLimits() -> None:
    """
    The HTTP service's cap and deadline are the configured ones, on the
    service's reactor, and the cap wraps the port's factory.
    """
    options = Options()
    options.parseOptions([
        "--jid", "roster.example.org", "--secret", "s", "--domain", "example.org",
        "--roster-url", "http://127.0.0.1:1/r/%s", "--no-kick",
        "--http", "tcp:0:interface=127.0.0.1", "--http-max-connections", "7", "--http-timeout", "2.5",
    ])
    reactor = MemoryReactorClock()
    http = tap.makeService(options, reactor).getServiceNamed("http")
    assert (http.connections.maxConnections, http.site.timeOut, http.site.reactor) == (7, 2.5, reactor)
    http.privilegedStartService()
    [(_, factory, _, _)] = reactor.tcpServers
    assert factory is http.connections


def fakeLimits(soft: int, hard: int, refuse: bool = False) -> tuple[Any, Any, list[tuple[int, int]]]:
    """
    A getrlimit and a setrlimit over one fake RLIMIT_NOFILE, and the
    calls to setrlimit.
    """
    limits = [soft, hard]
    calls: list[tuple[int, int]] = []

    def getrlimit(which: int) -> tuple[int, int]:
        assert which == resource.RLIMIT_NOFILE
        return limits[0], limits[1]

    def setrlimit(which: int, value: tuple[int, int]) -> None:
        assert which == resource.RLIMIT_NOFILE
        calls.append(value)
        if refuse:
            raise ValueError("not allowed to raise maximum limit")
        limits[:] = value

    return getrlimit, setrlimit, calls


def test_fileLimitRaisedToHard() -> None:
    """
    Start-up raises the soft open file limit to the hard one, and logs both.
    """
    getrlimit, setrlimit, calls = fakeLimits(1024, 524288)
    with capturedLogs() as events:
        assert filelimit.raiseFileLimit(getrlimit, setrlimit) == 524288
    assert calls == [(524288, 524288)]
    assert [(e["log_level"].name, e["soft"], e["limit"]) for e in events] == [("info", 1024, 524288)]


def test_fileLimitAlreadyAtHard() -> None:
    """
    A soft limit already at the hard one (systemd's C{LimitNOFILE=} sets
    both) is only logged: no system call that a sandbox might refuse.
    """
    getrlimit, setrlimit, calls = fakeLimits(65536, 65536)
    with capturedLogs() as events:
        assert filelimit.raiseFileLimit(getrlimit, setrlimit) == 65536
    assert calls == []
    assert [(e["log_level"].name, e["limit"]) for e in events] == [("info", 65536)]


def test_fileLimitThatCannotBeRaised() -> None:
    """
    A refused raise is a warning naming both limits; the soft limit stays.
    """
    getrlimit, setrlimit, calls = fakeLimits(1024, resource.RLIM_INFINITY, refuse=True)
    with capturedLogs() as events:
        assert filelimit.raiseFileLimit(getrlimit, setrlimit) == 1024
    assert [(e["log_level"].name, e["limit"], e["hard"]) for e in events] == [
        ("warn", 1024, resource.RLIM_INFINITY)]


def test_startRaisesFileLimit(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    Starting the service tree raises the open file limit before any child
    starts.
    """
    raised: list[str] = []
    monkeypatch.setattr(startup, "raiseFileLimit", lambda: raised.append("raised") or 1024)
    top = startup.SequentialService("tcp:0")
    top.startService()
    assert raised == ["raised"] and top.running
    top.stopService()


CONFIG = Config(jid="roster.example.org", secret="s", domain="example.org", roster_url="http://x/%s")


@pytest.mark.parametrize("limit, cap, refused", [
    (1024, 1024 - 64 - filelimit.FILE_RESERVE, False),
    (1024, 1024 - 64 - filelimit.FILE_RESERVE + 1, True),
    (1024, 256, False),
    (100, 1, True),
    (resource.RLIM_INFINITY, 10**9, False),
])
def test_capMustLeaveFilesForTheRest(limit: int, cap: int, refused: bool) -> None:
    """
    An C{http-max-connections} that leaves fewer than the fetches and
    L{filelimit.FILE_RESERVE} of the hard open file limit is refused, saying the
    most allowed.
    """
    config = Config(**{**CONFIG.__dict__, "http_max_connections": cap})
    if not refused:
        filelimit.checkFileLimit(config, limit)
        return
    with pytest.raises(usage.UsageError) as raised:
        filelimit.checkFileLimit(config, limit)
    most = max(limit - 64 - filelimit.FILE_RESERVE, 0)
    assert str(raised.value) == (
        f"--http-max-connections: {cap} leaves too few of the {limit} open files the process may have "
        f"(RLIMIT_NOFILE) for the XMPP stream and 64 web-app fetches; at most {most} here "
        "(or raise LimitNOFILE= / ulimit -Hn)")


def test_optionsRefuseCapOverFileLimit() -> None:
    """
    The options refuse a connection cap above any real open file limit, as
    a one-line configuration error.
    """
    with pytest.raises(usage.UsageError, match=r"^--http-max-connections: 1000000000 leaves too few"):
        Options().parseOptions([
            "--jid", "roster.example.org", "--secret", "s", "--domain", "example.org",
            "--roster-url", "http://127.0.0.1:1/r/%s", "--no-kick", "--http-max-connections", "1000000000",
        ])
