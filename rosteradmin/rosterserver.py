# -*- test-case-name: tests.test_component -*-
"""
Answering clients' roster queries (RFC 6121 §2) from the backend.

Queries arrive delegated by the server (XEP-0355, see
L{rosteradmin.delegation}) or, on servers without delegation, addressed to
the component's own JID.  Either way: only users of the managed domain are
served, each only their own roster; roster sets are refused, because the web
application owns the rosters (and told to it as what the user tried,
L{rosteradmin.attempts}); XEP-0237 versions spare unchanged rosters.

The server's own query comes first: contrib's mod_rosteradmin_roster asks,
before a login loads the user's roster, that its store hold the web app's
(C{<load user='...'/>}), and holds the login until answered, so that the
client's initial presence reaches the contacts even for a user no sync has
reached yet.
"""

from __future__ import annotations

import time

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.words.xish import domish
from wokkel.subprotocols import XMPPHandler

from rosteradmin.attempts import Attempts
from rosteradmin.delegation import innerError, innerReply
from rosteradmin.errors import FetchFailed, RosterRefused, StanzaTooLarge, UserUnknown
from rosteradmin.fairness import QueryGate
from rosteradmin.interfaces import IRosterBackend
from rosteradmin.roster import NS_ROSTER
from rosteradmin.rosterwrites import NS_BULK_ROSTER
from rosteradmin.stanzalimit import StanzaLimit
from rosteradmin.stanzas import errorReply, errorXML, iqXML, markHandled, parseJID

#: The most items of a refused roster set put back (RFC 6121 allows one).
MAX_PUT_BACK = 16


def setItems(iq: domish.Element) -> frozenset[str]:
    """
    The bare JIDs a roster set names (at most L{MAX_PUT_BACK}), normalised
    as the roster keeps them; items without a valid JID are left out.
    """
    jids: set[str] = set()
    query = iq.query
    for item in query.elements(NS_ROSTER, "item") if query is not None else ():
        jid = parseJID(item.getAttribute("jid"))
        if jid is not None and len(jids) < MAX_PUT_BACK:
            jids.add(jid.userhost())
    return frozenset(jids)


DIRECT_QUERY = f"/iq[@type='get' or @type='set']/query[@xmlns='{NS_ROSTER}']"

#: The server's request to store a user's roster before a login loads it.
LOAD_QUERY = f"/iq[@type='get']/query[@xmlns='{NS_BULK_ROSTER}']/load"

SET_REFUSED_TEXT = "The roster is managed by the web application and cannot be changed here."

REFUSED_TEXT = ("Your roster holds a contact larger than the server accepts in one stanza. "
                "Please tell the administrator.")

UNKNOWN_TEXT = "The web application does not know your account, so it has no roster for you."

TOO_MANY_TEXT = "Too many roster requests at once: try again in a few seconds."

TOO_LARGE_TEXT = ("Your roster has {count} contacts: more than the server can send in one answer. "
                  "Please tell the administrator.")


class QueryRefused(Exception):
    """
    A roster query gets this stanza error.
    """

    def __init__(self, condition: str, errorType: str, text: str) -> None:
        super().__init__(text)
        self.condition = condition
        self.errorType = errorType
        self.text = text


class RosterServer(XMPPHandler):
    """
    Serves roster gets from an L{IRosterBackend}.
    """

    log = Logger()

    def __init__(self, backend: IRosterBackend, domain: str, componentJID: str, limit: StanzaLimit,
                 gate: QueryGate, attempts: Attempts | None = None) -> None:
        """
        @param limit: The server's stanza size limit: a roster too large for
            one answer gets an error, not a closed stream.
        @param gate: Bounds each user's queries, so that one client cannot
            crowd out the others.
        @param attempts: Tells the web app of refused roster sets, when it
            wants events.
        """
        super().__init__()
        self.attempts = attempts
        self.limit = limit
        self.gate = gate
        self.backend = backend
        self.domain = domain
        self.componentJID = componentJID
        self.answered = 0

    def connectionMade(self) -> None:
        self.xmlstream.addObserver(DIRECT_QUERY, self._onDirectQuery)
        self.xmlstream.addObserver(LOAD_QUERY, self._onLoad)

    def _onLoad(self, iq: domish.Element) -> None:
        """
        The server waits to load a user's roster for a login: answer once
        it stores the web app's (L{IRosterBackend.rosterStored}); an error
        lets the login go on with what it stores.  Only the managed domain
        itself asks, each user within the user's query bounds.
        """
        if iq.getAttribute("from") != self.domain:
            return
        markHandled(iq)
        load = iq.query.load if iq.query is not None else None
        user = parseJID(f"{load.getAttribute('user', '')}@{self.domain}") if load is not None else None
        if user is None or not user.user or user.host != self.domain:
            self.send(errorReply(iq, "bad-request", "modify", self.componentJID))
            return
        if not self.gate.admit(user.user):
            self.send(errorReply(iq, "resource-constraint", "wait", self.componentJID, TOO_MANY_TEXT))
            return
        ensureDeferred(self._load(iq, user.user))

    async def _load(self, iq: domish.Element, username: str) -> None:
        """
        Answer an admitted load once the server stores the roster, or with
        why it cannot.
        """
        started = time.monotonic()
        try:
            await self.backend.rosterStored(username)
            reply = iqXML("result", iq.getAttribute("id", ""), self.domain, sender=self.componentJID)
        except Exception:
            condition, errorType, text = self._refusal(Failure())
            reply = errorReply(iq, condition, errorType, self.componentJID, text)
        finally:
            self.gate.done(username)
        self.log.debug("roster load of {user} for a login answered in {elapsed:.3f}s",
                       user=username, elapsed=time.monotonic() - started)
        if self.xmlstream is not None:
            self.send(reply)

    def answerDelegated(self, inner: domish.Element) -> Deferred[str]:
        """
        Answer a client's roster iq forwarded by the server.

        @return: A Deferred firing with the client-facing reply iq as XML.
        """
        target = inner.getAttribute("to")
        d = ensureDeferred(self._answer(inner, target))
        d.addCallbacks(
            lambda payload: innerReply(inner, payload),
            lambda f: innerError(inner, *self._refusal(f)),
        )
        return d

    def _onDirectQuery(self, iq: domish.Element) -> None:
        """
        Answer a roster query sent to the component's own JID (servers
        without XEP-0355): the roster is the sender's.
        """
        to = parseJID(iq.getAttribute("to"))
        if to is None or to.userhost() != self.componentJID:
            return
        markHandled(iq)
        d = ensureDeferred(self._answer(iq, None))
        d.addCallbacks(
            lambda payload: iqXML("result", iq.getAttribute("id", ""), iq["from"], payload, sender=self.componentJID),
            lambda f: iqXML(
                "error", iq.getAttribute("id", ""), iq["from"],
                errorXML(*self._refusal(f)), sender=self.componentJID,
            ),
        )
        d.addCallback(self._sendIfConnected, iq)

    def _sendIfConnected(self, reply: str, iq: domish.Element) -> None:
        """
        Send a direct answer if the server accepts its size, else an error
        (if even that fits: it echoes the client's id).
        """
        if self.xmlstream is None:
            return
        try:
            self.send(self.limit.encode(reply, "answer"))
        except StanzaTooLarge as e:
            self.log.warn("direct roster answer to {requester} not sent: {why}", requester=iq.getAttribute("from"),
                          why=str(e))
            try:
                self.send(self.limit.encode(errorReply(iq, "resource-constraint", "cancel", self.componentJID),
                                            "answer"))
            except StanzaTooLarge:
                pass

    def _refusal(self, failure: Failure) -> tuple[str, str, str]:
        """
        Map a failed answer to a stanza error, the one error map of this edge.
        """
        e = failure.value
        if isinstance(e, QueryRefused):
            return e.condition, e.errorType, e.text
        if failure.check(RosterRefused):
            return "resource-constraint", "cancel", REFUSED_TEXT
        if failure.check(UserUnknown):
            return "item-not-found", "cancel", UNKNOWN_TEXT
        if failure.check(FetchFailed):
            # Type wait: the client may retry, and its session stays open.
            return "internal-server-error", "wait", "The roster is temporarily unavailable."
        self.log.failure("answering a roster query failed", failure)
        return "internal-server-error", "cancel", "Internal error."

    async def _answer(self, iq: domish.Element, target: str | None) -> str:
        """
        Check who asks for what, then serve the roster payload.

        @param target: The C{to} of a delegated query: absent, or the
            requester's own bare JID (compared normalised, as the requester's
            is).  The server also delegates a user's query addressed to
            another user; that one is refused.
        @return: The C{<query/>} XML, or C{""} when the client's version is
            current (XEP-0237 §2.6: an empty result).
        @raise QueryRefused: The query is not allowed.
        """
        started = time.monotonic()
        requester = parseJID(iq.getAttribute("from"))
        if requester is None or requester.host != self.domain or not requester.user:
            self.log.warn("refused roster query from {sender}: not a user of {domain}",
                          sender=iq.getAttribute("from"), domain=self.domain)
            raise QueryRefused("forbidden", "auth", f"Only users of {self.domain} are served.")
        username = requester.user
        addressed = parseJID(target) if target is not None else None
        if target is not None and (addressed is None or addressed.full() != requester.userhost()):
            self.log.warn("refused {user}'s query for the roster of {target}", user=username, target=target)
            raise QueryRefused("forbidden", "auth", "You may only read your own roster.")
        if iq.getAttribute("type") == "set":
            self.log.info("refused roster set from {user}", user=username)
            # The put-back costs pushes, and the event a place in the
            # outbox: within the user's query bounds only.
            if self.gate.admit(username):
                try:
                    self.backend.putBack(username, requester.full(), setItems(iq))
                    if self.attempts is not None:
                        self.attempts.rosterSetRefused(username, requester.full(), iq)
                finally:
                    self.gate.done(username)
            raise QueryRefused("not-allowed", "cancel", SET_REFUSED_TEXT)
        if not self.gate.admit(username):
            self.log.debug("roster query {user} refused: too many at once", user=username)
            raise QueryRefused("resource-constraint", "wait", TOO_MANY_TEXT)
        try:
            return await self._serve(username, requester.full(), iq, started)
        finally:
            self.gate.done(username)

    async def _serve(self, username: str, resource: str, iq: domish.Element, started: float) -> str:
        """
        The roster payload for an admitted query from C{resource} (a full
        JID).
        """
        query = iq.query
        clientVersion = query.getAttribute("ver") if query is not None else None
        try:
            roster = await self.backend.getRoster(username)
        except FetchFailed:
            self.log.warn("roster query {user} → unavailable in {elapsed:.3f}s",
                          user=username, elapsed=time.monotonic() - started)
            raise
        self.answered += 1
        if clientVersion == roster.version and not self.backend.clientsMayDiffer(username, roster.version):
            outcome, payload = "version current", ""
        else:
            refusal = self.limit.answerRefusal(roster)
            if refusal is not None:
                self.log.warn("roster query {user} refused: {why}", user=username, why=refusal)
                raise QueryRefused("resource-constraint", "cancel", TOO_LARGE_TEXT.format(count=len(roster)))
            outcome, payload = "served", roster.queryXML()
        self.backend.answered(username, resource, roster)
        self.log.debug("roster query {user} → {outcome} in {elapsed:.3f}s",
                       user=username, outcome=outcome, elapsed=time.monotonic() - started)
        return payload
