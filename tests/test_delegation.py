"""
Tests for the client-facing replies inside delegation envelopes: who they
come from and go to.
"""

from __future__ import annotations

import pytest
from twisted.internet.defer import succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, capturedLogs
from twisted.python.failure import Failure
from twisted.words.protocols.jabber import xmlstream
from twisted.words.xish import domish

from rosteradmin.delegation import DelegationHandler, innerError, innerReply, replySender
from rosteradmin.roster import NS_ROSTER
from rosteradmin.stanzalimit import StanzaLimit
from tests.helpers import parseXML


def clientIQ(attributes: str) -> domish.Element:
    return parseXML(f"<iq type='get' id='c1' {attributes}><query xmlns='jabber:iq:roster'/></iq>", "jabber:client")


@pytest.mark.parametrize("attributes, sender", [
    ("from='alice@example.org/res'", "alice@example.org"),
    ("from='Alice@Example.org/res'", "alice@example.org"),
    ("from='alice@example.org/res' to='alice@example.org'", "alice@example.org"),
    ("from='alice@example.org/res' to='Alice@EXAMPLE.org'", "Alice@EXAMPLE.org"),
    ("from='bob@example.org/res' to='alice@example.org'", "alice@example.org"),
    ("from='@@bad'", None),
])
def test_replySender(attributes: str, sender: str | None) -> None:
    """
    The reply comes from the request's to, exactly as received, or else
    from the requester's own bare JID.
    """
    assert replySender(clientIQ(attributes)) == sender


def test_innerReplyAndErrorAddressed() -> None:
    """
    Results and errors go from the user's account to the requester's full
    JID, with the requester's id, in jabber:client.
    """
    inner = clientIQ("from='alice@example.org/res'")
    for xml in (innerReply(inner, "<query xmlns='jabber:iq:roster'/>"), innerError(inner, "not-allowed", "cancel")):
        reply = parseXML(xml, "jabber:client")
        assert (reply.uri, reply["id"], reply["from"], reply["to"]) == (
            "jabber:client", "c1", "alice@example.org", "alice@example.org/res")


def test_noSenderForInvalidRequester() -> None:
    """
    A requester whose JID does not parse gets a reply without from rather
    than a made-up one.
    """
    reply = parseXML(innerError(clientIQ("from='@@bad'"), "forbidden", "auth"), "jabber:client")
    assert reply.getAttribute("from") is None and reply["to"] == "@@bad"


def watchedHandler() -> tuple[DelegationHandler, Clock, xmlstream.XmlStream]:
    """
    A delegation handler on a stream that has done its handshake, watched
    with a clock.
    """
    clock = Clock()
    handler = DelegationHandler("example.org", "roster.example.org", {NS_ROSTER: lambda iq: succeed("")},
                                StanzaLimit(512 * 1024), clock, deadline=10)
    xs = xmlstream.XmlStream(xmlstream.Authenticator())
    xs.transport = StringTransport()
    handler.makeConnection(xs)
    handler.connectionInitialized()
    return handler, clock, xs


def advertisement(namespace: str = NS_ROSTER) -> domish.Element:
    return parseXML(f"<message from='example.org' to='roster.example.org'><delegation xmlns='urn:xmpp:delegation:2'>"
                    f"<delegated namespace='{namespace}'/></delegation></message>")


def test_missingDelegationSaidAfterTheDeadline() -> None:
    """
    No delegation of jabber:iq:roster within the deadline: the handler
    says why clients' queries do not reach us, in the log and in
    C{missing}; a late advertisement clears it, and so does a new
    connection.
    """
    handler, clock, xs = watchedHandler()
    clock.advance(9.9)
    assert handler.missing is None
    with capturedLogs() as events:
        clock.advance(0.1)
    assert handler.missing is not None and NS_ROSTER in handler.missing and "mod_privilege" in handler.missing
    assert [e["log_level"] for e in events] == [LogLevel.error]
    xs.dispatch(advertisement())
    assert handler.missing is None

    handler, clock, xs = watchedHandler()
    clock.advance(10)
    assert handler.missing is not None
    handler.connectionLost(Failure(ConnectionDone()))
    assert handler.missing is None and not clock.getDelayedCalls()


def test_delegationInTimeSaysNothing() -> None:
    """
    The advertisement within the deadline (Prosody sends it with the
    handshake): nothing is said; another namespace is not enough.
    """
    handler, clock, xs = watchedHandler()
    xs.dispatch(advertisement())
    clock.advance(10)
    assert handler.missing is None

    handler, clock, xs = watchedHandler()
    xs.dispatch(advertisement("urn:xmpp:mam:2"))
    clock.advance(10)
    assert handler.missing is not None
