# -*- test-case-name: tests.test_component,tests.test_fuzz -*-
"""
Small stanza helpers shared by the XMPP handlers.

wokkel 18's own helpers for disco, ping and MUC no longer import on current
Twisted, so the few stanzas rosteradmin needs are built here: raw XML for the
hot paths (a roster answer is one string concatenation), and IQ requests that
refuse to queue while the component is disconnected.
"""

from __future__ import annotations

import secrets
from functools import lru_cache
from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred, fail
from twisted.words.protocols.jabber.jid import JID
from twisted.words.protocols.jabber.xmpp_stringprep import resourceprep
from twisted.words.xish import domish
from twisted.words.xish.domish import escapeToXml
from wokkel import generic

from rosteradmin.errors import NotConnected
from rosteradmin.roster import JID_ERRORS
from rosteradmin.xmltext import carriesInXML

if TYPE_CHECKING:
    from wokkel.subprotocols import StreamManager

NS_CLIENT = "jabber:client"
NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
NS_FORWARD = "urn:xmpp:forward:0"


def attr(value: str) -> str:
    """
    Escape a value for an XML attribute in single quotes.
    """
    return escapeToXml(value, True)


def errorXML(condition: str, errorType: str, text: str | None = None) -> str:
    """
    An RFC 6120 C{<error/>} child.

    @param condition: The defined condition, e.g. C{not-allowed}.
    @param errorType: C{cancel}, C{modify}, C{wait}, C{auth} or C{continue}.
    @param text: Human-readable detail for the client, if any.
    """
    body = f"<{condition} xmlns='{NS_STANZAS}'/>"
    if text:
        body += f"<text xmlns='{NS_STANZAS}'>{escapeToXml(text)}</text>"
    return f"<error type='{errorType}'>{body}</error>"


def iqXML(
    iqType: str,
    stanzaID: str,
    to: str | None,
    payload: str = "",
    sender: str | None = None,
    namespace: str | None = None,
) -> str:
    """
    Serialise an IQ with no whitespace anywhere (mod_delegation drops replies
    with text nodes between elements: docs/protocol.md).
    """
    attrs = ""
    if namespace is not None:
        attrs += f" xmlns='{namespace}'"
    attrs += f" type='{iqType}' id='{attr(stanzaID)}'"
    if to is not None:
        attrs += f" to='{attr(to)}'"
    if sender is not None:
        attrs += f" from='{attr(sender)}'"
    return f"<iq{attrs}>{payload}</iq>"


def errorReply(iq: domish.Element, condition: str, errorType: str, sender: str, text: str | None = None) -> str:
    """
    The error reply to a request received directly by the component.
    """
    return iqXML(
        "error", iq.getAttribute("id", ""), iq.getAttribute("from"),
        errorXML(condition, errorType, text), sender=sender,
    )


def parseJID(value: str | None) -> JID | None:
    """
    Parse a JID from an attribute, C{None} when absent or invalid.

    Stringprep is the costliest step of answering a cached roster, and the
    same few JIDs ask again and again: parses are cached (bounded, unlike
    Twisted's C{internJID}).  Callers must not change the returned JID.
    """
    if not value:
        return None
    return _parseJID(value)


@lru_cache(maxsize=65536)
def _parseJID(value: str) -> JID | None:
    try:
        return JID(value)
    except JID_ERRORS:
        return None


def roomNickname(nick: str) -> str | None:
    """
    A room nickname as the room compares it (XEP-0045 §7.2: resourceprep),
    or C{None} if it cannot be one (empty, over 1023 bytes, or holding
    characters XML or resourceprep refuse).
    """
    if not carriesInXML(nick):
        return None
    try:
        prepared = resourceprep.prepare(nick)
    except UnicodeError:
        return None
    return prepared if prepared and len(prepared.encode("utf-8")) <= 1023 else None


def findChild(element: domish.Element, name: str, namespaces: tuple[str, ...]) -> domish.Element | None:
    """
    The first child element with this name in one of these namespaces.
    """
    for child in element.elements():
        if child.name == name and child.uri in namespaces:
            return child
    return None


def markHandled(stanza: domish.Element) -> None:
    """
    Tell the other observers of a stanza (and wokkel's and Twisted's
    fallbacks, which answer unhandled iqs with an error) that it is
    answered.
    """
    # domish.Element declares no "handled"; the jabber XmlStream reads it
    # (getattr(iq, "handled", False)), and wokkel sets it the same way.
    stanza.handled = True  # type: ignore[attr-defined]


class IQRequest(generic.Request):
    """
    An IQ get or set with a raw XML payload and an unguessable id.

    wokkel matches responses by id alone, and domish's ids are a counter; a
    random id keeps other entities from answering our requests for the
    server.
    """

    def __init__(self, recipient: str, stanzaType: str, payload: str, timeout: float) -> None:
        super().__init__(recipient=JID(recipient), stanzaType=stanzaType)
        self.stanzaID = "ra-" + secrets.token_hex(8)
        self.payload = payload
        self.timeout = timeout

    def toElement(self) -> domish.Element:
        element = super().toElement()
        element.addRawXml(self.payload)
        return element


def sendRequest(manager: StreamManager, connected: bool, request: IQRequest) -> Deferred[domish.Element]:
    """
    Send an IQ request, or fail at once with L{NotConnected}.

    wokkel would queue it without bound and flush it after the next login,
    stale; callers prefer to know.

    @return: A Deferred firing with the result iq, or failing with
        L{twisted.words.protocols.jabber.error.StanzaError},
        L{twisted.words.protocols.jabber.xmlstream.TimeoutError} or the
        connection loss.
    """
    if not connected:
        return fail(NotConnected("not connected to the XMPP server"))
    return manager.request(request)
