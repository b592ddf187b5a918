# -*- test-case-name: tests.test_reconnect -*-
"""
How the component reconnects: a backoff that a refused handshake does not
reset, and a clear reason when the server cannot be reached.
"""

from __future__ import annotations

import pytest
from twisted.application.internet import ClientService
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, capturedLogs
from twisted.python.failure import Failure

from rosteradmin.component import BACKOFF_FACTOR, HandshakeBackoff
from tests.helpers import STREAM_HEADER, ComponentOnWire

NOT_AUTHORIZED = ("<stream:error><not-authorized xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"
                  "</stream:error></stream:stream>")


def refusedHandshake(wire: ComponentOnWire) -> None:
    """
    One connection that the server accepts, then closes after refusing the
    component's secret.
    """
    factory, attempt = wire.server.attempts[-1]
    xs = factory.buildProtocol(None)
    xs.makeConnection(StringTransport())
    attempt.callback(xs)
    xs.dataReceived(STREAM_HEADER)
    xs.dataReceived(NOT_AUTHORIZED)
    xs.connectionLost(Failure(ConnectionDone()))


def test_refusedHandshakesBackOff() -> None:
    """
    Each refused handshake makes the next attempt wait longer, up to
    reconnect-max-delay (Twisted's factory reset the delay on every TCP
    connection, so a wrong secret was retried about once a second).
    """
    wire = ComponentOnWire()
    backoff = wire.component.backoff = HandshakeBackoff(wire.config.reconnect_max_delay, jitter=lambda: 0.0)
    wire.component.connection = ClientService(wire.server, wire.component.factory, retryPolicy=backoff,
                                              clock=wire.clock)  # exact delays
    wire.component.startService()
    delays = []
    for _ in range(6):
        refusedHandshake(wire)
        [retry] = wire.clock.getDelayedCalls()
        delays.append(retry.getTime() - wire.clock.seconds())
        wire.clock.advance(delays[-1])
    assert len(wire.server.attempts) == 7  # the first, and six retries
    e = BACKOFF_FACTOR
    assert delays == pytest.approx([1, e, e ** 2, e ** 3, 30, 30])
    assert wire.config.reconnect_max_delay == 30
    assert wire.component.status.lastError == "stream error: not-authorized"


def test_handshakeResetsBackoff() -> None:
    """
    A completed handshake starts the backoff over.
    """
    wire = ComponentOnWire()
    backoff = wire.component.backoff
    for attempt in range(4):
        backoff(attempt)
    assert backoff.failures == 4
    wire.handshake()
    assert backoff.failures == 0


def test_unreachableServerLoggedAndReported() -> None:
    """
    A failed TCP connection is logged as an error naming the address, the
    cause and the next attempt, and is the health check's last_error.
    """
    wire = ComponentOnWire()
    wire.component.startService()
    [(_, attempt)] = wire.server.attempts
    with capturedLogs() as events:
        attempt.errback(Failure(ConnectionRefusedError("Connection refused")))
    [event] = [e for e in events if e["log_level"] >= LogLevel.warn]
    assert event["log_level"] == LogLevel.error and event["address"] == "127.0.0.1:5347"
    [retry] = wire.clock.getDelayedCalls()
    assert event["next"] == f"retrying in {retry.getTime() - wire.clock.seconds():.1f} s"
    assert wire.component.status.lastError.startswith("cannot connect to 127.0.0.1:5347: Connection was refused")
    assert not wire.component.status.connected


CONFLICT = "<stream:error><conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error></stream:stream>"


def conflictAfterHandshake(wire: ComponentOnWire) -> None:
    """
    One connection whose handshake completes, then closed by the server
    because another connection holds the component's JID (Prosody's
    C{kick_new}).
    """
    factory, attempt = wire.server.attempts[-1]
    xs = factory.buildProtocol(None)
    transport = StringTransport()
    xs.makeConnection(transport)
    attempt.callback(xs)
    xs.dataReceived(STREAM_HEADER)
    xs.dataReceived("<handshake/>")
    xs.dataReceived(CONFLICT)
    xs.connectionLost(Failure(ConnectionDone()))


def test_conflictMeansAnotherLeads() -> None:
    """
    A C{<conflict/>} after the handshake is read as "another instance
    holds the component connection": said once as an error, then at info,
    and the next attempt waits the longest (reconnect-max-delay), not the
    1 s a completed handshake would reset the backoff to.
    """
    wire = ComponentOnWire()
    backoff = wire.component.backoff = HandshakeBackoff(wire.config.reconnect_max_delay, jitter=lambda: 0.0)
    wire.component.connection = ClientService(wire.server, wire.component.factory, retryPolicy=backoff,
                                              clock=wire.clock)
    wire.component.startService()
    errors = []
    for _ in range(3):
        with capturedLogs() as events:
            conflictAfterHandshake(wire)
        errors += [e for e in events if e["log_level"] >= LogLevel.error]
        [retry] = wire.clock.getDelayedCalls()
        assert retry.getTime() - wire.clock.seconds() == pytest.approx(wire.config.reconnect_max_delay)
        wire.clock.advance(retry.getTime() - wire.clock.seconds())
    [error] = errors  # no error line per attempt: not an error loop
    assert "another rosteradmin instance holds the component connection" in error["log_format"]
    assert wire.component.status.lastError == "stream error: conflict"
