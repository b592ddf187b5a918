"""
Tests for parking a user's roster writes that keep coinciding with losses
of the component stream (L{rosteradmin.privilege.PrivilegeHandler}).
"""

from __future__ import annotations

from twisted.logger import capturedLogs

from rosteradmin.parking import PARK_FIRST_DELAY
from rosteradmin.roster import EMPTY_ROSTER, Contact, Roster
from tests.helpers import PERMISSIONS_2, ComponentOnWire, WebApp
from tests.test_component import serverAnswers


def dropAndReconnect(wire: ComponentOnWire) -> None:
    """
    Lose the stream, as when the server closes it, and connect again on a
    new transport.
    """
    wire.reconnect(PERMISSIONS_2)


def sets(wire: ComponentOnWire) -> list[str]:
    """
    Users whose roster is being written, from what the component sent.
    """
    return [s["to"] for s in wire.sent() if s.name == "iq" and s["type"] == "set"]


def test_writesInFlightAtTwoLossesAreParked() -> None:
    """
    Alice's write is in flight when the stream drops, and again after the
    reconnect's resync: her writes are parked (not sent after the next
    reconnect, the refresh says why) while bob is synced; after the backoff
    they are tried again.
    """
    wire = ComponentOnWire(WebApp({"alice": {"carol@example.org": {}}, "bob": {"carol@example.org": {}}}))
    wire.handshake(PERMISSIONS_2)
    reply = serverAnswers()
    with capturedLogs() as events:
        wire.backend.refresh(["alice"])
        for stanza in wire.sent():
            if stanza["type"] == "get":
                wire.receive(reply(stanza))
        assert sets(wire) == ["alice@example.org"]
        dropAndReconnect(wire)
        for stanza in wire.sent():
            if stanza["type"] == "get":
                wire.receive(reply(stanza))
        assert sets(wire) == ["alice@example.org"]  # the resync
        dropAndReconnect(wire)
        assert "alice" in wire.component.privileges.parked
        refresh = wire.backend.refresh(["alice", "bob"])
        sent = wire.answerRequests(reply)
    assert [s["to"] for s in sent if s["type"] == "set"] == ["bob@example.org"]
    assert refresh.result.updated == 1 and "parked" in refresh.result.failures["alice"]
    assert any("parked the roster writes of alice" in str(e.get("log_format", "")) or
               "parked" in str(e.get("why", "")) for e in events)
    wire.clock.advance(PARK_FIRST_DELAY)
    assert wire.component.privileges.parked == {}
    assert "alice@example.org" in [s["to"] for s in wire.answerRequests(reply) if s["type"] == "set"]
    assert wire.backend.unsynced == set()


def test_oneLossIsACoincidence() -> None:
    """
    A write in flight at one stream loss is written again after the
    reconnect, and its success clears the strike.
    """
    wire = ComponentOnWire(WebApp({"alice": {"carol@example.org": {}}}))
    wire.handshake(PERMISSIONS_2)
    reply = serverAnswers()
    with capturedLogs():
        wire.backend.refresh(["alice"])
        for stanza in wire.sent():
            if stanza["type"] == "get":
                wire.receive(reply(stanza))
        dropAndReconnect(wire)
        wire.answerRequests(reply)
    privileges = wire.component.privileges
    assert privileges.parked == {} and not privileges.parking._strikes and wire.backend.unsynced == set()


def test_parkedUserGetsNoPushesAndManyStrikesDoNotOverflow() -> None:
    """
    A parked user's clients get no pushes of the data that could not be
    written, and a user parked again and again waits at most the longest
    delay (the doubling does not overflow).
    """
    wire = ComponentOnWire(WebApp({"alice": {"carol@example.org": {}}}))
    wire.handshake(PERMISSIONS_2 + "<presence from='alice@example.org/phone' to='roster.example.org'/>")
    privileges = wire.component.privileges
    privileges.parking._strikes["alice"] = 5000
    privileges.parking._writing["alice"] = 1  # in flight at the next loss of the stream
    with capturedLogs():
        privileges.parking.connectionLost()
    assert "alice" in privileges.parked and "3600 s" in privileges.parked["alice"]
    assert privileges.online == {"alice": {"alice@example.org/phone"}}
    assert privileges.push("alice", EMPTY_ROSTER, Roster([Contact("carol@example.org", None, ())])) == 0
    privileges.stopRetrying()
    wire.clock.advance(3600)
    assert "alice" in privileges.parked


def test_writesCutOffByAStreamLossAreNotRefusals() -> None:
    """
    A refresh whose writes are cut off by a loss of the stream reports the
    user updated, not failed: the server refused nothing, and the user is
    written after the reconnect (a refresh reply listing hundreds of such
    users as failed made web apps retry them for nothing).
    """
    wire = ComponentOnWire(WebApp({"alice": {"carol@example.org": {}}}))
    wire.handshake(PERMISSIONS_2)
    reply = serverAnswers()
    with capturedLogs():
        refresh = wire.backend.refresh(["alice"])
        for stanza in wire.sent():
            if stanza["type"] == "get":
                wire.receive(reply(stanza))
        dropAndReconnect(wire)
        assert refresh.result.updated == 1 and refresh.result.failures == {}
        assert "alice@example.org" in [s["to"] for s in wire.answerRequests(reply) if s["type"] == "set"]
    assert wire.backend.unsynced == set()
