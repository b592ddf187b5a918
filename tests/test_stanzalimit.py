"""
Tests for L{rosteradmin.stanzalimit}: no stanza larger than the server
accepts is ever sent, and what cannot fit is refused for its user alone.
"""

from __future__ import annotations

import pytest
from twisted.logger import capturedLogs

from rosteradmin.errors import StanzaTooLarge
from rosteradmin.roster import Contact, Roster
from rosteradmin.stanzalimit import WRAPPER_BYTES, StanzaLimit
from tests.helpers import PERMISSIONS_2, ComponentOnWire, WebApp, makeConfig
from tests.test_component import envelope, innerIQ, rosterGet, serverAnswers

LIMIT = 16 * 1024


def test_encodeRefusesOverTheLimit() -> None:
    """
    A stanza of exactly the limit is sent as UTF-8 bytes; one byte more is
    refused and counted by what it was.
    """
    limit = StanzaLimit(100)
    assert limit.encode("é" * 50, "answer") == ("é" * 50).encode("utf-8")
    with pytest.raises(StanzaTooLarge):
        limit.encode("é" * 50 + "x", "push")
    assert limit.refused == {"push": 1}


def test_itemAndAnswerRefusals() -> None:
    """
    A contact whose item cannot fit one stanza refuses the roster; a roster
    whose items fit but whose answer does not is only too large to answer.
    """
    limit = StanzaLimit(LIMIT)
    huge = Contact("bob@example.org", None, tuple(f"group {n}" for n in range(2000)))
    assert "'bob@example.org'" in (limit.itemRefusal(Roster([huge])) or "")
    many = Roster(Contact(f"user{n}@example.org", f"User {n}", ("Friends",)) for n in range(400))
    assert limit.itemRefusal(many) is None
    assert "400 contacts" in (limit.answerRefusal(many) or "")
    small = Roster(list(many)[:10])
    assert limit.answerRefusal(small) is None and limit.itemRefusal(small) is None


def smallLimitWire(rosters: dict[str, object]) -> ComponentOnWire:
    wire = ComponentOnWire(WebApp(rosters), makeConfig(max_stanza_bytes=LIMIT))
    wire.handshake(PERMISSIONS_2)
    return wire


def test_rosterTooLargeForOneAnswerGetsAnError() -> None:
    """
    A roster whose answer is over the server's limit is stored item by
    item, and its client gets a resource-constraint error saying why,
    inside the envelope: the stream stays up.
    """
    roster = {f"user{n}@example.org": {"name": f"User {n}", "groups": ["Friends"]} for n in range(400)}
    wire = smallLimitWire({"alice": roster})
    with capturedLogs():
        wire.receive(envelope(rosterGet()))
        sent = wire.answerRequests(serverAnswers())
    [reply] = [s for s in sent if s.getAttribute("to") == "example.org"]
    inner = innerIQ(reply)
    assert inner["type"] == "error" and inner.error.firstChildElement().name == "resource-constraint"
    assert "400 contacts" in str(inner.error.text)
    assert len([s for s in sent if s["type"] == "set"]) == 400
    assert "alice" in wire.backend.snapshot().refused
    assert 0 < wire.transport.largestWrite <= LIMIT


def test_oversizedItemRefusedForItsUserOnly() -> None:
    """
    A contact too large for any stanza refuses that user's roster (the
    refresh says why, nothing of it is written); another user in the same
    refresh is synced.  No stanza over the limit is ever written.
    """
    huge = {"bob@example.org": {"name": "Bob", "groups": [f"group {n}" for n in range(2000)]}}
    wire = smallLimitWire({"alice": huge, "carol": {"bob@example.org": {"name": "Bob"}}})
    with capturedLogs():
        refresh = wire.backend.refresh(["alice", "carol"])
        sent = wire.answerRequests(serverAnswers())
    summary = refresh.result
    assert summary.updated == 1 and list(summary.failures) == ["alice"]
    assert "cannot be stored" in summary.failures["alice"]
    assert {s["to"] for s in sent if s["type"] == "set"} == {"carol@example.org"}
    assert wire.backend.snapshot().refused == {"alice": summary.failures["alice"]}
    assert 0 < wire.transport.largestWrite <= LIMIT


def test_refusalClearedByARosterThatFits() -> None:
    """
    Once the web app's roster fits again, the user is no longer refused.
    """
    webApp = WebApp({"alice": {"bob@example.org": {"groups": [f"g{n}" for n in range(2000)]}}})
    wire = ComponentOnWire(webApp, makeConfig(max_stanza_bytes=LIMIT))
    wire.handshake(PERMISSIONS_2)
    with capturedLogs():
        wire.backend.refresh(["alice"])
        wire.answerRequests(serverAnswers())
    assert "alice" in wire.backend.snapshot().refused
    webApp.rosters["alice"] = {"bob@example.org": {"name": "Bob"}}
    refresh = wire.backend.refresh(["alice"])
    wire.answerRequests(serverAnswers())
    assert refresh.result.updated == 1 and wire.backend.snapshot().refused == {}


def test_wrapperBoundCoversTheLargestJIDs() -> None:
    """
    The wrapper allowance covers a push to a full JID of maximum length
    with a maximum-length id, around the item.
    """
    jid = "u" * 1023 + "@" + "d" * 1023 + "/" + "r" * 1023
    wrapper = (f"<iq type='set' id='ra-0123456789abcdef' to='{jid}'><privileged_iq xmlns='urn:xmpp:privilege:2'>"
               f"<iq xmlns='jabber:client' type='set' id='push-01234567-99999' to='{jid}'>"
               "<query xmlns='jabber:iq:roster' ver='0123456789abcdef'></query></iq></privileged_iq></iq>")
    assert len(wrapper.encode()) < WRAPPER_BYTES


def test_errorEchoingAHugeIdStillFits() -> None:
    """
    A client id so long that even the error echoing it is over the limit:
    the envelope alone gets the error, and nothing over the limit is sent.
    """
    wire = smallLimitWire({"alice": {"bob@example.org": {}}})
    query = rosterGet().replace("id='c1'", "id='" + "x" * LIMIT + "'")
    with capturedLogs():
        wire.receive(envelope(query, stanzaID="huge"))
        sent = wire.answerRequests(serverAnswers())
    [reply] = [s for s in sent if s.getAttribute("id") == "huge"]
    assert reply["type"] == "error" and reply.error.firstChildElement().name == "resource-constraint"
    assert wire.transport.largestWrite <= LIMIT
