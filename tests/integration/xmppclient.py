"""
A real XMPP client for the integration tests, on Twisted's own jabber
client stack (RFC 6120 stream, SASL PLAIN, resource binding) in the test
reactor.  It records everything it sends and receives for transcripts.
"""

from __future__ import annotations

import itertools
from typing import Callable

from twisted.internet import defer, reactor
from twisted.python.failure import Failure
from twisted.words.protocols.jabber import client, xmlstream
from twisted.words.protocols.jabber.jid import JID
from twisted.words.xish import domish

from rosteradmin.roster import NS_ROSTER

NS_MUC = "http://jabber.org/protocol/muc"
NS_MUC_USER = "http://jabber.org/protocol/muc#user"

_ids = itertools.count(1)


class XMPPTestClient:
    """
    One logged-in client session.

    @ivar jid: The full JID the server bound.
    @ivar presences: Every presence received.
    @ivar pushes: Every roster push received (each answered with a result).
    @ivar transcript: Every stanza sent (C{SEND}) and received (C{RECV}).
    """

    def __init__(self, xs: xmlstream.XmlStream) -> None:
        self.xs = xs
        self.jid: JID = xs.authenticator.jid
        self.presences: list[domish.Element] = []
        self.pushes: list[domish.Element] = []
        self.transcript: list[str] = []
        self._pending: dict[str, defer.Deferred[domish.Element]] = {}
        self._waiters: list[tuple[Callable[[], bool], defer.Deferred[None]]] = []
        self._closed: defer.Deferred[None] = defer.Deferred()
        xs.addObserver("/*", self._onStanza, priority=100)
        xs.addObserver("/iq[@type='result' or @type='error']", self._onResponse)
        xs.addObserver(f"/iq[@type='set']/query[@xmlns='{NS_ROSTER}']", self._onPush)
        xs.addObserver("/presence", self.presences.append)
        xs.addObserver(xmlstream.STREAM_END_EVENT, lambda reason: self._closed.callback(None))

    def send(self, stanza: domish.Element | str) -> None:
        self.transcript.append("SEND " + (stanza if isinstance(stanza, str) else stanza.toXml()))
        self.xs.send(stanza)

    def iq(self, element: domish.Element, timeout: float = 10.0) -> defer.Deferred[domish.Element]:
        """
        Send an iq; fire with the reply, result or error alike.
        """
        element["id"] = stanzaID = f"t{next(_ids)}"
        d: defer.Deferred[domish.Element] = defer.Deferred()
        self._pending[stanzaID] = d
        d.addTimeout(timeout, reactor)
        self.send(element)
        return d

    def rosterGet(self, ver: str | None = None, to: str | None = None,
                  timeout: float = 10.0) -> defer.Deferred[domish.Element]:
        iq = domish.Element((None, "iq"), attribs={"type": "get"})
        if to is not None:
            iq["to"] = to
        query = iq.addElement((NS_ROSTER, "query"))
        if ver is not None:
            query["ver"] = ver
        return self.iq(iq, timeout)

    def rosterSet(self, itemJID: str, name: str | None = None,
                  subscription: str | None = None) -> defer.Deferred[domish.Element]:
        iq = domish.Element((None, "iq"), attribs={"type": "set"})
        item = iq.addElement((NS_ROSTER, "query")).addElement("item")
        item["jid"] = itemJID
        if name is not None:
            item["name"] = name
        if subscription is not None:
            item["subscription"] = subscription
        return self.iq(iq)

    def sendPresence(self, **attributes: str) -> None:
        self.send(domish.Element((None, "presence"), attribs=attributes))

    def waitForPresence(self, predicate: Callable[[domish.Element], bool],
                        timeout: float = 10.0) -> defer.Deferred[domish.Element]:
        """
        The first presence, received already or later, that matches.
        """
        d = self._waitFor(lambda: any(predicate(p) for p in self.presences), timeout)
        d.addCallback(lambda _: next(p for p in self.presences if predicate(p)))
        return d

    def waitForPushes(self, count: int, timeout: float = 10.0) -> defer.Deferred[list[domish.Element]]:
        d = self._waitFor(lambda: len(self.pushes) >= count, timeout)
        d.addCallback(lambda _: list(self.pushes))
        return d

    def joinRoom(self, room: str, nick: str, timeout: float = 10.0) -> defer.Deferred[domish.Element]:
        """
        Enter a MUC room; fire with our self-presence (status 110) or the
        error presence.
        """
        occupant = f"{room}/{nick}"
        presence = domish.Element((None, "presence"), attribs={"to": occupant})
        presence.addElement((NS_MUC, "x"))
        self.send(presence)

        def joined(p: domish.Element) -> bool:
            return p.getAttribute("from") == occupant and (
                p.getAttribute("type") == "error" or _hasStatus(p, "110"))

        return self.waitForPresence(joined, timeout)

    def disconnect(self) -> defer.Deferred[None]:
        if not self._closed.called:
            self.xs.sendFooter()
            reactor.callLater(2, lambda: self.xs.transport and self.xs.transport.loseConnection())
        return self._closed

    def _waitFor(self, condition: Callable[[], bool], timeout: float) -> defer.Deferred[None]:
        d: defer.Deferred[None] = defer.Deferred()
        if condition():
            d.callback(None)
            return d
        self._waiters.append((condition, d))
        d.addTimeout(timeout, reactor)
        return d

    def _onStanza(self, element: domish.Element) -> None:
        self.transcript.append("RECV " + element.toXml())
        reactor.callLater(0, self._checkWaiters)

    def _checkWaiters(self) -> None:
        for entry in list(self._waiters):
            condition, d = entry
            if d.called:
                self._waiters.remove(entry)
            elif condition():
                self._waiters.remove(entry)
                d.callback(None)

    def _onResponse(self, iq: domish.Element) -> None:
        d = self._pending.pop(iq.getAttribute("id", ""), None)
        if d is not None and not d.called:
            d.callback(iq)

    def _onPush(self, iq: domish.Element) -> None:
        self.pushes.append(iq)
        self.send(f"<iq type='result' id='{iq.getAttribute('id', '')}'/>")


def _hasStatus(presence: domish.Element, code: str) -> bool:
    return any(
        x.name == "x" and x.uri == NS_MUC_USER
        and any(s.name == "status" and s.getAttribute("code") == code for s in x.elements())
        for x in presence.elements()
    )


def connectClient(jid: str, password: str, port: int, host: str = "127.0.0.1",
                  timeout: float = 10.0) -> defer.Deferred[XMPPTestClient]:
    """
    Log in (SASL PLAIN over loopback TCP, resource binding, no presence).
    """
    factory = client.XMPPClientFactory(JID(jid + "/test"), password)
    ready: defer.Deferred[XMPPTestClient] = defer.Deferred()

    def authenticated(xs: xmlstream.XmlStream) -> None:
        if not ready.called:
            ready.callback(XMPPTestClient(xs))

    def failed(reason: Failure) -> None:
        if not ready.called:
            ready.errback(reason)

    def plainTCP(xs: xmlstream.XmlStream) -> None:
        # The test server has no TLS; Twisted requires it unless told not to.
        for initializer in xs.initializers:
            if isinstance(initializer, xmlstream.TLSInitiatingInitializer):
                initializer.required = False

    factory.addBootstrap(xmlstream.STREAM_CONNECTED_EVENT, plainTCP)
    factory.addBootstrap(xmlstream.STREAM_AUTHD_EVENT, authenticated)
    factory.addBootstrap(xmlstream.INIT_FAILED_EVENT, failed)
    factory.clientConnectionFailed = lambda connector, reason: failed(reason)
    connector = reactor.connectTCP(host, port, factory)

    def timedOut(failure: Failure) -> Failure:
        connector.disconnect()
        return failure

    ready.addTimeout(timeout, reactor)
    ready.addErrback(timedOut)
    return ready

