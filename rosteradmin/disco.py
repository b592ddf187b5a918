# -*- test-case-name: tests.test_component -*-
"""
XEP-0030 disco#info and XEP-0199 ping for the component, and a polite
C{service-unavailable} for any other request addressed to it.

wokkel.disco and wokkel.ping no longer import on current Twisted, and the
component needs little: its identity, its features, and the delegation nodes
that servers query before they delegate a namespace (XEP-0355 §4.2; ejabberd
registers the delegation only once these are answered).
"""

from __future__ import annotations

from twisted.words.xish import domish
from wokkel.subprotocols import XMPPHandler

from rosteradmin.delegation import DELEGATION_NAMESPACES
from rosteradmin.roster import NS_ROSTER
from rosteradmin.stanzas import attr, errorReply, iqXML, markHandled

NS_DISCO_INFO = "http://jabber.org/protocol/disco#info"
NS_DISCO_ITEMS = "http://jabber.org/protocol/disco#items"
NS_PING = "urn:xmpp:ping"

FEATURES = (NS_DISCO_INFO, NS_DISCO_ITEMS, NS_PING, NS_ROSTER)

#: Nodes a server asks about before delegating the roster namespace.
DELEGATION_NODES = frozenset(
    f"{ns}:{kind}:{NS_ROSTER}" for ns in DELEGATION_NAMESPACES for kind in ("", "bare")
)


class DiscoHandler(XMPPHandler):
    """
    Answers disco#info, disco#items and ping sent to the component.
    """

    def __init__(self, componentJID: str, name: str = "rosteradmin") -> None:
        super().__init__()
        self.componentJID = componentJID
        features = "".join(f"<feature var='{f}'/>" for f in FEATURES)
        self._info = f"<identity category='component' type='generic' name='{attr(name)}'/>{features}"

    def connectionMade(self) -> None:
        # The server's disco queries on the delegation nodes come in the
        # handshake's read.
        self.xmlstream.addObserver(f"/iq[@type='get']/query[@xmlns='{NS_DISCO_INFO}']", self._onInfo)
        self.xmlstream.addObserver(f"/iq[@type='get']/query[@xmlns='{NS_DISCO_ITEMS}']", self._onItems)
        self.xmlstream.addObserver(f"/iq[@type='get']/ping[@xmlns='{NS_PING}']", self._onPing)
        self.xmlstream.addObserver("/iq[@type='get' or @type='set']", self._onUnhandled, priority=-100)

    def _onInfo(self, iq: domish.Element) -> None:
        markHandled(iq)
        node = iq.query.getAttribute("node")
        if node is None:
            self._reply(iq, f"<query xmlns='{NS_DISCO_INFO}'>{self._info}</query>")
        elif node in DELEGATION_NODES:
            # The server merges what we list here into its own disco; the
            # roster namespace needs nothing more than the node itself.
            self._reply(iq, f"<query xmlns='{NS_DISCO_INFO}' node='{attr(node)}'/>")
        else:
            self.send(errorReply(iq, "item-not-found", "cancel", self.componentJID))

    def _onItems(self, iq: domish.Element) -> None:
        markHandled(iq)
        node = iq.query.getAttribute("node")
        nodeAttr = f" node='{attr(node)}'" if node is not None else ""
        self._reply(iq, f"<query xmlns='{NS_DISCO_ITEMS}'{nodeAttr}/>")

    def _onPing(self, iq: domish.Element) -> None:
        markHandled(iq)
        self._reply(iq, "")

    def _onUnhandled(self, iq: domish.Element) -> None:
        """
        Every request gets an answer (RFC 6120 §8.2.3), even those nobody
        here understands.
        """
        if not iq.handled:
            markHandled(iq)
            self.send(errorReply(iq, "service-unavailable", "cancel", self.componentJID))

    def _reply(self, iq: domish.Element, payload: str) -> None:
        self.send(iqXML("result", iq.getAttribute("id", ""), iq.getAttribute("from"), payload,
                        sender=iq.getAttribute("to") or self.componentJID))
