"""
Tests for L{rosteradmin.fairness.QueryGate}: one user's flood of roster
queries is refused cheaply while other users are served.
"""

from __future__ import annotations

from twisted.internet.task import Clock

from rosteradmin.fairness import BURST_SECONDS, QueryGate
from tests.helpers import WebApp
from tests.test_component import connected, envelope, innerIQ, rosterGet, serverAnswers


def test_inFlightBound() -> None:
    """
    A user with the maximum in flight is refused until one is done; other
    users are not affected.
    """
    gate = QueryGate(Clock(), inFlight=2, rate=100)
    assert gate.admit("alice") and gate.admit("alice")
    assert not gate.admit("alice") and gate.admit("bob")
    gate.done("alice")
    assert gate.admit("alice") and gate.refusedCount == 1


def test_rateRefillsOverTime() -> None:
    """
    A burst of the rate's two seconds' worth is admitted, then one query
    per 1/rate seconds.
    """
    clock = Clock()
    gate = QueryGate(clock, inFlight=1000, rate=5)
    admitted = 0
    for _ in range(50):
        if gate.admit("alice"):
            admitted += 1
            gate.done("alice")
    assert admitted == int(5 * BURST_SECONDS)
    assert not gate.admit("alice")
    clock.advance(0.2)
    assert gate.admit("alice")


def test_floodAnsweredWithWaitOthersServed() -> None:
    """
    200 roster gets from one client in one read: the first ones within the
    rate are answered with the roster, the rest at once with a
    resource-constraint wait error inside the envelope; bob's get in the
    same read is answered with his roster.
    """
    wire = connected(WebApp({"alice": {"bob@example.org": {}}, "bob": {"alice@example.org": {}}}))
    wire.receive(envelope(rosterGet(), stanzaID="warm"))
    wire.answerRequests(serverAnswers())
    flood = "".join(envelope(rosterGet(), stanzaID=f"f{n}") for n in range(200))
    wire.receive(flood + envelope(rosterGet(sender="bob@example.org/phone"), stanzaID="bob"))
    replies = {s["id"]: innerIQ(s) for s in wire.answerRequests(serverAnswers()) if s.getAttribute("to") == "example.org"}
    assert replies["bob"]["type"] == "result" and replies["bob"].query is not None
    errors = [r for k, r in replies.items() if k != "bob" and r["type"] == "error"]
    served = [r for k, r in replies.items() if k != "bob" and r["type"] == "result"]
    assert len(errors) + len(served) == 200 and len(errors) >= 150
    assert {e.error["type"] for e in errors} == {"wait"}
    assert {e.error.firstChildElement().name for e in errors} == {"resource-constraint"}


def test_readingPausesWhileTheServerDoesNotRead() -> None:
    """
    The component registers as the producer of its stream's transport:
    when the transport's write buffer fills (the server reads slowly), it
    stops reading the server's requests, and resumes once drained.
    """
    wire = connected()
    producer = wire.transport.producer
    assert producer is wire.component.status.backpressure and wire.transport.streaming
    producer.pauseProducing()
    assert wire.transport.producerState == "paused"
    producer.resumeProducing()
    assert wire.transport.producerState == "producing" and producer.pauses == 1
