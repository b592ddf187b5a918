# -*- test-case-name: tests.test_component,tests.test_fuzz -*-
"""
XEP-0355 Namespace Delegation: receiving the client requests the server
forwards to us, and answering them inside the same envelope.

The server wraps the client's iq as
C{<iq type='set'><delegation><forwarded xmlns='urn:xmpp:forward:0'><iq
xmlns='jabber:client'/></forwarded></delegation></iq>}.  Prosody's
mod_delegation speaks C{urn:xmpp:delegation:2}, ejabberd (through 26.x)
C{urn:xmpp:delegation:1}; the envelope is the same and the reply uses the
namespace of the request.

XEP-0355 §4.3.1 forbids forwarding the managing entity's own requests, but
ejabberd's mod_delegation forwards every iq of a delegated namespace, ours
included (issue #1737): each privileged roster get or set we send to a user
comes back to us as a delegated request.  Those are refused, and reported
once per connection as L{OWN_REQUEST_DELEGATED}.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.words.xish import domish
from wokkel.subprotocols import XMPPHandler

from rosteradmin.errors import StanzaTooLarge
from rosteradmin.stanzalimit import StanzaLimit
from rosteradmin.stanzas import NS_CLIENT, NS_FORWARD, errorReply, errorXML, findChild, iqXML, markHandled, parseJID

NS_DELEGATION_1 = "urn:xmpp:delegation:1"
NS_DELEGATION_2 = "urn:xmpp:delegation:2"
DELEGATION_NAMESPACES = (NS_DELEGATION_2, NS_DELEGATION_1)

DELEGATED_REQUEST = "/iq[@type='set']/delegation"
ADVERTISEMENT = "/message/delegation"

#: Dispatched on the stream, with the namespace, when the server delegates
#: one of our own requests back to us: privileged writes in that namespace
#: cannot work on this connection.
OWN_REQUEST_DELEGATED = "//event/rosteradmin/own-request-delegated"

OWN_REQUEST_TEXT = "The XMPP server delegated this component's own request back to it."

ANSWER_TOO_LARGE_TEXT = "The answer is larger than the XMPP server accepts in one stanza."


class MalformedEnvelope(Exception):
    """
    A delegation iq does not hold exactly one forwarded client iq.
    """


class Delegated(NamedTuple):
    """
    A client request forwarded by the server.

    @ivar namespace: The delegation namespace of the envelope, used again in
        the reply.
    @ivar outerID: The id of the server's envelope iq.
    @ivar outerFrom: Who sent the envelope (the server's domain).
    @ivar inner: The client's own iq.
    """

    namespace: str
    outerID: str
    outerFrom: str
    inner: domish.Element


def unwrap(iq: domish.Element) -> Delegated:
    """
    Take the client's iq out of a delegation envelope.

    @raise MalformedEnvelope: The envelope is not as XEP-0355 says.
    """
    delegation = findChild(iq, "delegation", DELEGATION_NAMESPACES)
    if delegation is None:
        raise MalformedEnvelope("no delegation element")
    forwarded = findChild(delegation, "forwarded", (NS_FORWARD,))
    if forwarded is None:
        raise MalformedEnvelope("no forwarded element")
    inners = [c for c in forwarded.elements() if c.name == "iq"]
    if len(inners) != 1 or inners[0].uri not in (NS_CLIENT, None):
        raise MalformedEnvelope("forwarded element must hold one jabber:client iq")
    inner = inners[0]
    if inner.getAttribute("type") not in ("get", "set") or not inner.getAttribute("from"):
        raise MalformedEnvelope("forwarded iq must be a get or set with a sender")
    return Delegated(delegation.uri, iq.getAttribute("id", ""), iq.getAttribute("from", ""), inner)


def wrap(delegated: Delegated, componentJID: str, innerXML: str) -> str:
    """
    Wrap the answer for the client in the result of the server's envelope.

    Every level holds exactly one child and no whitespace, or
    mod_delegation drops the reply and the client waits forever.
    """
    envelope = (
        f"<delegation xmlns='{delegated.namespace}'>"
        f"<forwarded xmlns='{NS_FORWARD}'>{innerXML}</forwarded></delegation>"
    )
    return iqXML("result", delegated.outerID, delegated.outerFrom, envelope, sender=componentJID)


def replySender(inner: domish.Element) -> str | None:
    """
    Who answers a delegated request: the entity it was addressed to, or,
    without a C{to}, the requester's own account, its bare JID (RFC 6120
    §10.3.3; RFC 6121 §2.1: the user's account answers roster queries).

    ejabberd routes the reply only if its C{from} equals the request's
    C{to}, so that is echoed exactly as received.
    """
    to = inner.getAttribute("to")
    if to:
        return to
    requester = parseJID(inner.getAttribute("from"))
    return requester.userhost() if requester is not None else None


def innerReply(inner: domish.Element, payload: str = "") -> str:
    """
    The client-facing result iq: from L{replySender}, addressed to the
    requester's full JID with the requester's id, as mod_delegation checks
    them.
    """
    return iqXML("result", inner.getAttribute("id", ""), inner["from"], payload,
                 sender=replySender(inner), namespace=NS_CLIENT)


def innerError(inner: domish.Element, condition: str, errorType: str, text: str | None = None) -> str:
    """
    The client-facing error iq.  It goes inside the envelope: an outer error
    reaches the client only as C{service-unavailable}.
    """
    return iqXML(
        "error", inner.getAttribute("id", ""), inner["from"],
        errorXML(condition, errorType, text), sender=replySender(inner), namespace=NS_CLIENT,
    )


#: Answers one delegated client iq: a Deferred firing with the
#: client-facing reply XML.
Answerer = Callable[[domish.Element], "Deferred[str]"]


class DelegationHandler(XMPPHandler):
    """
    Receives delegated requests, hands the client's iq to the handler of its
    namespace, and sends the wrapped answer back.

    @ivar delegated: Namespaces the server said it delegates to us, with the
        delegation namespace version it used.
    @ivar ownRequestsReturned: How many of our own requests the server
        delegated back to us on this connection.
    @ivar missing: Why clients' queries do not reach us, when the server
        has not delegated every namespace of C{answerers} within
        C{deadline} of the handshake (C{/healthz} shows it); else C{None}.
    @ivar expected: Whether the server is meant to delegate to us: without
        (C{--delegation none}, an ejabberd cluster) its absence is no
        problem, and a delegation that still arrives is answered.
    """

    log = Logger()

    def __init__(self, domain: str, componentJID: str, answerers: dict[str, Answerer], limit: StanzaLimit,
                 clock: IReactorTime | None = None, deadline: float = 10.0, expected: bool = True) -> None:
        """
        @param domain: The only sender whose envelopes are trusted.
        @param answerers: Handlers by the namespace of the client iq's child.
        @param limit: The server's stanza size limit: a larger answer would
            close the stream, so the client gets an error instead.
        @param clock: Times the C{deadline} (none: the delegation is not
            watched).
        @param deadline: Seconds after the handshake by which the server
            has advertised its delegations: Prosody sends them with the
            handshake, ejabberd after our answers to its disco queries.
        @param expected: Whether to watch for the delegation at all.
        """
        super().__init__()
        self.clock = clock
        self.deadline = deadline
        self.expected = expected
        self.missing: str | None = None
        self._watch: IDelayedCall | None = None
        self.limit = limit
        self.domain = domain
        self.componentJID = componentJID
        ownJID = parseJID(componentJID)
        self._ownDomain = ownJID.host if ownJID is not None else componentJID
        self.answerers = answerers
        self.delegated: dict[str, str] = {}
        self.ownRequestsReturned = 0

    def connectionMade(self) -> None:
        # Prosody sends the advertisement in the same read as the handshake
        # and never again: observe before authentication completes.
        self.xmlstream.addObserver(DELEGATED_REQUEST, self._onDelegatedRequest)
        self.xmlstream.addObserver(ADVERTISEMENT, self._onAdvertisement)

    def connectionInitialized(self) -> None:
        if self.clock is not None and self.expected:
            self._watch = self.clock.callLater(self.deadline, self._checkDelegated)

    def connectionLost(self, reason: Failure) -> None:
        if self._watch is not None and self._watch.active():
            self._watch.cancel()
        self._watch = None
        self.delegated = {}
        self.ownRequestsReturned = 0
        self.missing = None

    @property
    def inPlace(self) -> bool:
        """
        Whether the server delegates to us every namespace we answer, on
        this connection (before its advertisement arrives, it does not).
        """
        return set(self.answerers) <= set(self.delegated)

    def _checkDelegated(self) -> None:
        """
        Say, once per connection, that the server delegates less than we
        answer: its clients' queries then never reach us.  ejabberd 24.12
        with mod_privilege loaded does this (it drops our answers to the
        disco queries delegation starts with), and so does a server
        without mod_delegation.
        """
        self._watch = None
        absent = sorted(set(self.answerers) - set(self.delegated))
        if not absent:
            return
        self.missing = (
            f"the server delegated no {', '.join(absent)} to {self.componentJID} within {self.deadline:g} s of "
            f"the handshake: clients' roster queries go to the server's own roster store, not to rosteradmin "
            f"(is mod_delegation loaded and delegating it to us? on ejabberd 24.12, mod_privilege must not be "
            f"loaded)")
        self.log.error("{problem}", problem=self.missing)

    def _onAdvertisement(self, message: domish.Element) -> None:
        """
        Record the namespaces the server delegates to us (XEP-0355 §4.2).
        """
        delegation = findChild(message, "delegation", DELEGATION_NAMESPACES)
        if delegation is None:
            return
        markHandled(message)
        if message.getAttribute("from") != self.domain:
            self.log.warn(
                "ignored delegation advertisement from untrusted {sender}",
                sender=message.getAttribute("from"),
            )
            return
        for item in delegation.elements():
            if item.name == "delegated" and item.getAttribute("namespace"):
                self.delegated[item["namespace"]] = delegation.uri
        self.log.info(
            "server delegates {namespaces} ({version})",
            namespaces=sorted(self.delegated), version=delegation.uri,
        )
        if self.missing is not None and self.inPlace:
            self.missing = None
            self.log.info("the server's delegation arrived late: clients' roster queries reach us now")

    def _onDelegatedRequest(self, iq: domish.Element) -> None:
        """
        Answer one envelope, always: mod_delegation has no timeout.
        """
        if findChild(iq, "delegation", DELEGATION_NAMESPACES) is None:
            return
        markHandled(iq)
        sender = iq.getAttribute("from")
        if sender != self.domain:
            self.log.warn("refused delegation envelope from untrusted {sender}", sender=sender)
            self.send(errorReply(iq, "forbidden", "auth", self.componentJID))
            return
        try:
            delegated = unwrap(iq)
        except MalformedEnvelope as e:
            self.log.warn("refused malformed delegation envelope: {why}", why=str(e))
            self.send(errorReply(iq, "bad-request", "modify", self.componentJID))
            return
        payload = next(iter(delegated.inner.elements()), None)
        if self._isOwn(delegated.inner):
            self._refuseOwnRequest(delegated, payload.uri if payload is not None else None)
            return
        answerer = self.answerers.get(payload.uri) if payload is not None else None
        if answerer is None:
            self._sendWrapped(delegated, innerError(delegated.inner, "service-unavailable", "cancel"))
            return
        d = maybeDeferred(answerer, delegated.inner)
        d.addErrback(self._ebAnswer, delegated)
        d.addCallback(self._sendAnswer, delegated)
        d.addErrback(lambda f: self.log.failure("sending a delegated answer failed", f))

    def _isOwn(self, inner: domish.Element) -> bool:
        """
        Whether a delegated request was sent by us, or by anything else of
        our domain.
        """
        sender = parseJID(inner.getAttribute("from"))
        return sender is not None and sender.host == self._ownDomain

    def _refuseOwnRequest(self, delegated: Delegated, namespace: str | None) -> None:
        """
        Answer our own request with an error instead of processing it: the
        error goes back to the request we sent, which fails at once instead
        of timing out.  Log the server's misconfiguration once per
        connection, and tell the other handlers (L{OWN_REQUEST_DELEGATED}).
        """
        self._sendWrapped(delegated, innerError(delegated.inner, "not-allowed", "cancel", OWN_REQUEST_TEXT))
        self.ownRequestsReturned += 1
        if self.ownRequestsReturned == 1:
            self.log.error(
                "server misconfigured: it delegates {jid}'s own {namespace} requests back to {jid}, "
                "which XEP-0355 §4.3.1 forbids (ejabberd's mod_delegation does, issue #1737), so "
                "privileged roster writes can never reach the users' rosters: they are off until the "
                "next connection. Rosters are still served, but presence subscriptions are not written: "
                "see docs/troubleshooting.md, ejabberd.",
                jid=self.componentJID, namespace=namespace,
            )
        if self.xmlstream is not None:
            self.xmlstream.dispatch(namespace, OWN_REQUEST_DELEGATED)

    def _sendAnswer(self, innerXML: str, delegated: Delegated) -> None:
        """
        Send the wrapped answer, unless the stream it was asked on is gone
        (wokkel would queue it for the next stream, where nobody waits).
        """
        if self.xmlstream is None:
            self.log.info("dropped a delegated answer: the stream closed meanwhile")
            return
        self._sendWrapped(delegated, innerXML)

    def _sendWrapped(self, delegated: Delegated, innerXML: str) -> None:
        """
        Send an answer in its envelope if the server accepts its size; else
        an error for the client in the envelope, and if even that is too
        large (it echoes the client's id), an error to the envelope alone.
        Nothing over the limit is sent: it would close the stream.
        """
        try:
            data = self.limit.encode(wrap(delegated, self.componentJID, innerXML), "answer")
        except StanzaTooLarge as e:
            self.log.warn("answer to {requester} not sent: {why}", requester=delegated.inner["from"], why=str(e))
            try:
                data = self.limit.encode(wrap(delegated, self.componentJID, innerError(
                    delegated.inner, "resource-constraint", "cancel", ANSWER_TOO_LARGE_TEXT)), "answer")
            except StanzaTooLarge:
                data = iqXML("error", delegated.outerID, delegated.outerFrom,
                             errorXML("resource-constraint", "cancel"), sender=self.componentJID).encode("utf-8")
        self.send(data)

    def _ebAnswer(self, failure: Failure, delegated: Delegated) -> str:
        """
        A bug in an answerer still answers the client.
        """
        self.log.failure("answering a delegated request failed", failure)
        return innerError(delegated.inner, "internal-server-error", "cancel")
