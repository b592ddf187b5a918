"""
Tests for the client-facing replies inside delegation envelopes: who they
come from and go to.
"""

from __future__ import annotations

import pytest
from twisted.words.xish import domish

from rosteradmin.delegation import innerError, innerReply, replySender
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
