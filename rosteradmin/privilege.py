# -*- test-case-name: tests.test_component,tests.test_api,tests.test_privilege -*-
"""
XEP-0356 Privileged Entity: what the server lets us do with its users'
rosters, and doing it.

The server announces our permissions in a C{<message><privilege/>}
right after the handshake (Prosody: C{urn:xmpp:privilege:2}, ejabberd up to
24.07: C{:1}).  With C{roster} access we read and write users' stored
rosters; with C{presence} access (C{managed_entity}) we see their presences,
which tells us who is online; with C{iq} access for C{jabber:iq:roster}
(C{:2} only) we push roster changes to their clients ourselves, because
Prosody pushes nothing while the roster namespace is delegated.

A server that delegates our own privileged roster iqs back to us (ejabberd,
see L{rosteradmin.delegation}) cannot store what we write: privileged sync
is then off until the next connection.
"""

from __future__ import annotations

import secrets
from collections import Counter
from typing import Any, Callable, NamedTuple, TypeVar, cast

from twisted.internet.defer import Deferred, DeferredList, fail
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.words.protocols.jabber.error import StanzaError
from twisted.words.xish import domish
from wokkel.subprotocols import XMPPHandler
from zope.interface import implementer

from rosteradmin.delegation import OWN_REQUEST_DELEGATED
from rosteradmin.errors import NotConnected, StanzaTooLarge, SyncFailed
from rosteradmin.interfaces import IConnectionStatus, IRosterSync
from rosteradmin.pacing import LatencyPacer
from rosteradmin.slots import PrioritySlots
from rosteradmin.stanzalimit import WRAPPER_BYTES, StanzaLimit
from rosteradmin.roster import NS_ROSTER, Contact, Roster, RosterDiff, diffSteps
from rosteradmin.stanzas import NS_CLIENT, IQRequest, findChild, iqXML, markHandled, parseJID, sendRequest

T = TypeVar("T")

NS_DELAY = "urn:xmpp:delay"
NS_PRIVILEGE_1 = "urn:xmpp:privilege:1"

#: contrib/prosody/mod_rosteradmin_roster.lua: many roster items per iq.
NS_BULK_ROSTER = "urn:x-rosteradmin:roster:0"
NS_PRIVILEGE_2 = "urn:xmpp:privilege:2"
PRIVILEGE_NAMESPACES = (NS_PRIVILEGE_2, NS_PRIVILEGE_1)

#: Most privileged roster gets and sets in flight at once, over all users.
MAX_SYNC_IN_FLIGHT = 32

#: Of those, how many only work a client waits for may hold.
RESERVED_FOR_CLIENTS = 8

#: How a request fails when the stream goes away before its answer (wokkel
#: fails pending iqs with the connection's loss) or it cannot be sent.
DISCONNECTED = (NotConnected, ConnectionLost, ConnectionDone)

#: Of those, how many one user's work may hold: a user whose first sync
#: writes thousands of items leaves the rest to other users' logins.
PER_USER_IN_FLIGHT = 4

#: Seconds a user's writes stay parked the first time, doubling each time.
PARK_FIRST_DELAY = 30.0
PARK_MAX_DELAY = 3600.0


class _NoBulkWrites(Exception):
    """
    The server does not take many roster items per iq (no
    mod_rosteradmin_roster).
    """


def bulkChunks(diff: RosterDiff, maxBytes: int) -> list[str]:
    """
    The items of a diff (C{both}, then C{remove}), as few runs of item XML
    as fit C{maxBytes} each (an item larger than that is refused before any
    write: L{rosteradmin.stanzalimit.StanzaLimit.itemRefusal}).
    """
    items = [c.toXML("both") for c in diff.changed] + [Contact(j, None, ()).toXML("remove") for j in diff.removed]
    chunks: list[str] = []
    current: list[str] = []
    size = 0
    for item in items:
        itemSize = len(item.encode("utf-8"))
        if current and size + itemSize > maxBytes:
            chunks.append("".join(current))
            current, size = [], 0
        current.append(item)
        size += itemSize
    if current:
        chunks.append("".join(current))
    return chunks


class StoredRoster(NamedTuple):
    """
    A roster as the server stores it.

    @ivar roster: Its items, as contacts.
    @ivar notBoth: Contacts whose stored subscription is not C{both} (or
        with a pending C{ask}): they must be rewritten even when their name
        and groups match.
    """

    roster: Roster
    notBoth: frozenset[str]


class Permissions(NamedTuple):
    """
    What the server granted (XEP-0356 §4).
    """

    namespace: str
    roster: str
    presence: str
    iqNamespaces: frozenset[str]

    @property
    def canReadAndWriteRosters(self) -> bool:
        return self.roster == "both"

    @property
    def canPush(self) -> bool:
        # <privileged_iq> exists in privilege:2 only.
        return self.namespace == NS_PRIVILEGE_2 and NS_ROSTER in self.iqNamespaces

    @property
    def seesPresence(self) -> bool:
        return self.presence in ("managed_entity", "roster")


NO_PERMISSIONS = Permissions(NS_PRIVILEGE_2, "none", "none", frozenset())


def parsePermissions(privilege: domish.Element) -> Permissions:
    """
    Read the C{<perm/>} elements of a privilege advertisement.
    """
    granted: dict[str, str] = {}
    iqNamespaces: set[str] = set()
    for perm in privilege.elements():
        if perm.name != "perm":
            continue
        access = perm.getAttribute("access", "")
        granted[access] = perm.getAttribute("type", "none")
        if access == "iq":
            iqNamespaces.update(
                ns["ns"] for ns in perm.elements()
                if ns.name == "namespace" and ns.getAttribute("type") in ("set", "both") and ns.getAttribute("ns")
            )
    return Permissions(
        privilege.uri, granted.get("roster", "none"), granted.get("presence", "none"), frozenset(iqNamespaces)
    )


def parseStoredRoster(result: domish.Element) -> StoredRoster:
    """
    Read the server's answer to a privileged roster get.
    """
    contacts: list[Contact] = []
    notBoth: set[str] = set()
    query = findChild(result, "query", (NS_ROSTER,))
    for item in query.elements() if query is not None else ():
        jid = parseJID(item.getAttribute("jid")) if item.name == "item" else None
        if jid is None:
            continue
        bare = jid.userhost()
        groups = tuple(dict.fromkeys(str(g) for g in item.elements() if g.name == "group" and str(g)))
        contacts.append(Contact(bare, item.getAttribute("name") or None, groups))
        if item.getAttribute("subscription") != "both" or item.getAttribute("ask"):
            notBoth.add(bare)
    return StoredRoster(Roster(contacts), frozenset(notBoth))


@implementer(IRosterSync)
class PrivilegeHandler(XMPPHandler):
    """
    Tracks the granted permissions and users' online resources, and writes
    rosters into the server.

    @ivar online: Online full JIDs by username, from presence permission.
    @ivar rostersDelegatedBack: The server delegated our own roster iqs
        back to us on this connection: no privileged sync until the next.
    """

    log = Logger()

    def __init__(
        self,
        domain: str,
        status: IConnectionStatus,
        clock: IReactorTime,
        timeout: float,
        limit: StanzaLimit,
        latencyTarget: float = 0.05,
        userOnline: Callable[[str], object] = lambda username: None,
        rosterAccessGranted: Callable[[], object] = lambda: None,
        userWasOnline: Callable[[str], object] = lambda username: None,
    ) -> None:
        """
        @param domain: The only sender trusted for permissions and presences.
        @param status: Whether we are connected.
        @param clock: Time for parked users' retries.
        @param latencyTarget: The reply latency background writes may push
            the server to (see L{rosteradmin.pacing}).
        @param timeout: Seconds to wait for the server to answer an iq.
        @param limit: The server's stanza size limit, checked before each
            request is sent.
        @param userOnline: Called with a username when a user's first
            resource comes online (the backend warms its cache).  Not
            called for the presences the server replays when we connect
            (L{isReplayed}): those clients hold a roster already, and a
            silent warm would write the web app's current roster into the
            server and the cache without pushing it to them, so that the
            next refresh finds nothing to push.
        @param rosterAccessGranted: Called when the server grants roster
            access, after each connection (the backend writes what it could
            not write meanwhile).
        @param userWasOnline: Called with a username instead of
            C{userOnline} when the user's first resource is one the server
            replays on connecting: the user was online before this
            connection, and its clients hold what the server stores.
        """
        super().__init__()
        self.domain = domain
        self.status = status
        self.clock = clock
        self.timeout = timeout
        self.limit = limit
        self.userOnline = userOnline
        self.rosterAccessGranted = rosterAccessGranted
        self.userWasOnline = userWasOnline
        self.permissions = NO_PERMISSIONS
        self.online: dict[str, set[str]] = {}
        self.rostersDelegatedBack = False
        self._toldCannotPush = False
        #: Whether the server takes many items per iq: unknown until tried.
        self.bulk: bool | None = None
        self._sync = PrioritySlots(MAX_SYNC_IN_FLIGHT, reserved=RESERVED_FOR_CLIENTS, perKey=PER_USER_IN_FLIGHT,
                                   now=clock.seconds)
        self.pacer = LatencyPacer(self._sync, clock, latencyTarget)
        self._writing: Counter[str] = Counter()
        self._strikes: Counter[str] = Counter()
        self.parked: dict[str, str] = {}
        self._unparkCalls: dict[str, IDelayedCall] = {}

    def connectionMade(self) -> None:
        # The advertisement and presences arrive in the handshake's read.
        self.xmlstream.addObserver("/message/privilege", self._onAdvertisement)
        self.xmlstream.addObserver("/presence", self._onPresence, priority=-1)
        self.xmlstream.addObserver(OWN_REQUEST_DELEGATED, self._onOwnRequestDelegated)

    def connectionLost(self, reason: Failure) -> None:
        # The server sends permissions and current presences again after
        # every reconnect.
        self._strike(sorted(self._writing))
        self.permissions = NO_PERMISSIONS
        self.online = {}
        self.rostersDelegatedBack = False
        self._toldCannotPush = False
        self.bulk = None  # the server may have been reconfigured meanwhile

    def _onOwnRequestDelegated(self, namespace: str | None) -> None:
        """
        The server sent one of our roster iqs back to us instead of to the
        user's roster (the delegation handler logged why): stop syncing, as
        every read and write would fail the same way.
        """
        if namespace == NS_ROSTER:
            self.rostersDelegatedBack = True

    def _onAdvertisement(self, message: domish.Element) -> None:
        privilege = findChild(message, "privilege", PRIVILEGE_NAMESPACES)
        if privilege is None:
            return
        markHandled(message)
        if message.getAttribute("from") != self.domain:
            self.log.warn("ignored privilege advertisement from untrusted {sender}",
                          sender=message.getAttribute("from"))
            return
        self.permissions = parsePermissions(privilege)
        self.log.info(
            "server grants roster={roster} presence={presence} iq={iq} ({version})",
            roster=self.permissions.roster, presence=self.permissions.presence,
            iq=sorted(self.permissions.iqNamespaces), version=self.permissions.namespace,
        )
        if self.canSync():
            self.rosterAccessGranted()

    def _onPresence(self, presence: domish.Element) -> None:
        """
        Track users' online resources; warm the cache on a first one.
        """
        if presence.handled:
            return
        sender = parseJID(presence.getAttribute("from"))
        if sender is None or sender.host != self.domain or not sender.user or not sender.resource:
            return
        markHandled(presence)
        username, full = sender.user, sender.full()
        kind = presence.getAttribute("type")
        if kind is None:
            resources = self.online.setdefault(username, set())
            first = not resources
            resources.add(full)
            if first and self.isReplayed(presence):
                self.userWasOnline(username)
            elif first:
                self.userOnline(username)
        elif kind == "unavailable":
            resources = self.online.get(username, set())
            resources.discard(full)
            if not resources:
                self.online.pop(username, None)

    def isReplayed(self, presence: domish.Element) -> bool:
        """
        Whether a presence is the server replaying one sent before we
        connected, rather than forwarding one as it is sent.

        Prosody keeps each session's current presence stamped with a
        XEP-0203 C{<delay from='example.org'/>} (C{mod_presence}), and
        C{mod_privilege} sends that copy to a component that authenticates
        (C{advertise_presences}, XEP-0356 §7); presences it forwards as
        they happen carry no delay.
        """
        delay = findChild(presence, "delay", (NS_DELAY,))
        return delay is not None and delay.getAttribute("from") == self.domain

    def canSync(self) -> bool:
        return self.status.connected and self.permissions.canReadAndWriteRosters and not self.rostersDelegatedBack

    @property
    def syncRefusal(self) -> str | None:
        if self.rostersDelegatedBack:
            return ("the server sends rosteradmin's own roster requests back to it "
                    "(ejabberd's mod_delegation): roster writes are off until the next connection")
        return None

    def readStored(self, username: str, urgent: bool = True) -> Deferred[StoredRoster]:
        """
        The roster the server stores for a user (a privileged get).  Reads
        share the bound of writes: a bulk refresh must not flood the server
        with thousands of reads at once.

        @param urgent: A client waits for it.
        """
        d = self._sync.run(username, urgent, self._request, username, "get", f"<query xmlns='{NS_ROSTER}'/>", "read")
        stored = d.addCallback(parseStoredRoster)
        return stored.addErrback(self._ebSync, username, "read")

    def write(self, username: str, diff: RosterDiff, urgent: bool = True) -> Deferred[None]:
        """
        Write the items of a diff into the user's stored roster: many per
        iq, saved once, where the server has contrib's
        mod_rosteradmin_roster; else one privileged set per item (with
        several items in one set, mod_privilege answers once per item with
        the same id, and it saves the whole roster after each item).

        @param urgent: A client waits for it; background writes (refreshes)
            go after urgent ones.
        @raise SyncFailed: The user's writes are parked (see L{_strike}).
        """
        parked = self._parkedFailure(username)
        if parked is not None:
            return parked
        if self.bulk is False:
            return self._writeEach(username, diff, urgent)
        chunks = bulkChunks(diff, self.limit.maxBytes - WRAPPER_BYTES)
        writes = [self._sync.run(username, urgent, self._writeChunk, username, chunk) for chunk in chunks]

        def checkOrFallBack(results: list[tuple[bool, object]]) -> Deferred[None] | None:
            if any(not ok and cast(Failure, r).check(_NoBulkWrites) for ok, r in results):
                if self.bulk is None:
                    self.bulk = False
                    self.log.info("the server has no mod_rosteradmin_roster: writing one roster item per "
                                  "privileged set, each a full save of the roster (see contrib/prosody)")
                return self._writeEach(username, diff, urgent)
            self._checkWrites(username, results)
            return None

        return DeferredList(writes, consumeErrors=True).addCallback(checkOrFallBack)

    def _writeEach(self, username: str, diff: RosterDiff, urgent: bool) -> Deferred[None]:
        """
        One privileged set per item.
        """
        writes = [self._sync.run(username, urgent, self._writeItem, username, c.toXML("both"), False)
                  for c in diff.changed]
        writes += [
            self._sync.run(username, urgent, self._writeItem, username, Contact(jid, None, ()).toXML("remove"),
                             True)
            for jid in diff.removed
        ]
        return DeferredList(writes, consumeErrors=True).addCallback(lambda results: self._checkWrites(username,
                                                                                                    results))

    def _checkWrites(self, username: str, results: list[tuple[bool, object]]) -> None:
        """
        Turn the outcomes of a user's writes into success or why not.

        @raise NotConnected: Writes were cut off by the loss of the stream.
        @raise SyncFailed: The server refused some.
        """
        # DeferredList types every result as the value type; a failed
        # one (ok false) is the Failure.
        failed = [cast(Failure, r) for ok, r in results if not ok]
        if not failed:
            # Every item was stored: none of them is a poison write.
            self._strikes.pop(username, None)
            return
        if all(f.check(*DISCONNECTED) for f in failed):
            # Not refused: the stream went away.  The user stays
            # unsynced and is written after the reconnect.
            raise NotConnected(f"{len(failed)} of {len(results)} roster writes for {username!r} "
                               "were cut off by the loss of the XMPP connection")
        raise SyncFailed(f"{len(failed)} of {len(results)} roster writes for {username!r} failed: "
                         f"{failed[0].getErrorMessage()}")

    def _writeChunk(self, username: str, itemsXML: str) -> Deferred[Any]:
        """
        One iq of many items for mod_rosteradmin_roster.

        @raise _NoBulkWrites: The server does not know that iq.
        """
        parked = self._parkedFailure(username)
        if parked is not None:
            return parked
        d = self._request(username, "set", f"<query xmlns='{NS_BULK_ROSTER}'>{itemsXML}</query>", "write")

        def answered(result: object) -> object:
            self.bulk = True
            return result

        def unknown(failure: Failure) -> Failure:
            error = failure.value
            if (self.bulk is not True and isinstance(error, StanzaError)
                    and error.condition in ("service-unavailable", "feature-not-implemented")):
                raise _NoBulkWrites(error.condition)
            return failure

        d.addCallbacks(answered, unknown)
        return self._inFlight(d, username)

    def _parkedFailure(self, username: str) -> Deferred[Any] | None:
        """
        A failure for a write of a parked user (checked again as each queued
        item starts: the user may have been parked since), else C{None}.
        """
        reason = self.parked.get(username)
        if reason is None:
            return None
        return fail(SyncFailed(f"roster writes for {username!r} are parked: {reason}"))

    def _strike(self, usernames: list[str]) -> None:
        """
        The stream dropped while these users' writes were in flight.  One
        drop is a coincidence; a second one with the same user's writes in
        flight may be that user's data making the server close the stream
        (a limit we do not know of): that user's writes are parked, with a
        backoff, so a reconnect does not send them again and everyone else
        is served meanwhile.
        """
        for username in usernames:
            self._strikes[username] += 1
            strikes = self._strikes[username]
            if strikes < 2 or username in self.parked:
                continue
            delay = min(PARK_FIRST_DELAY * 2 ** min(strikes - 2, 16), PARK_MAX_DELAY)
            self.parked[username] = (f"roster writes were in flight at {strikes} stream losses in a row; "
                                     f"parked for {delay:.0f} s")
            self.log.error("parked the roster writes of {user}: they were in flight at {strikes} losses of the "
                           "stream in a row; retrying in {delay:.0f} s", user=username, strikes=strikes, delay=delay)
            self._unparkCalls[username] = self.clock.callLater(delay, self._unpark, username)

    def stopRetrying(self) -> None:
        """
        The service stops: no parked user's writes are tried again.
        """
        calls, self._unparkCalls = self._unparkCalls, {}
        for call in calls.values():
            if call.active():
                call.cancel()

    def _unpark(self, username: str) -> None:
        """
        Try a parked user's writes again: the backend re-syncs the users the
        server has not stored.
        """
        self._unparkCalls.pop(username, None)
        self.parked.pop(username, None)
        if self.canSync():
            self.rosterAccessGranted()

    def stuck(self) -> str | None:
        """
        Why privileged requests make no progress (they all have a timeout,
        so a queue that has not moved for twice that is wedged), or C{None}.
        """
        stalled = self._sync.stalled(2 * self.timeout + 1)
        return f"privileged roster requests: {stalled}" if stalled is not None else None

    def hurry(self, username: str) -> None:
        """
        A client now waits for this user's roster: its background reads and
        writes go before the other background ones.
        """
        self._sync.promote(username)

    def _writeItem(self, username: str, itemXML: str, removal: bool) -> Deferred[Any]:
        """
        One privileged roster set.

        @return: Deferred firing with the server's answer (unused: L{write}
            looks only at failures), or C{None} for the removal of an item
            the server did not hold.
        """
        parked = self._parkedFailure(username)
        if parked is not None:
            return parked
        d = self._request(username, "set", f"<query xmlns='{NS_ROSTER}'>{itemXML}</query>", "write")
        if removal:
            # Removing what the server does not hold is already done.
            d.addErrback(self._ignoreItemNotFound)
        return self._inFlight(d, username)

    def _inFlight(self, d: Deferred[T], username: str) -> Deferred[T]:
        """
        Count a user's write or push as in flight until it is answered: if
        the stream drops meanwhile, it may be why (L{_strike}).
        """
        self._writing[username] += 1

        def answered(result: object) -> object:
            self._writing[username] -= 1
            if not self._writing[username]:
                del self._writing[username]
            return result

        return d.addBoth(answered)

    @staticmethod
    def _ignoreItemNotFound(failure: Failure) -> Failure | None:
        failure.trap(StanzaError)
        error = failure.value
        return failure if not isinstance(error, StanzaError) or error.condition != "item-not-found" else None

    def push(self, username: str, before: Roster, after: Roster, rewrite: frozenset[str] = frozenset()) -> int:
        """
        Send each change from C{before} (what the user's clients hold) to
        C{after} to each online resource as a roster push from the user's
        bare JID (XEP-0356 §7, C{<privileged_iq>}).  Every push carries the
        version of the roster once it is applied (RFC 6121 §2.6.3): a client
        that keeps the version of the last push it got, and asks with it
        later, gets an empty result only if its roster is current.

        @param rewrite: Contacts to push again though unchanged: the server
            told the clients another subscription.
        """
        resources = self.online.get(username)
        if not resources or not self.status.connected or username in self.parked:
            return 0
        if not self.permissions.canPush:
            if not self._toldCannotPush:
                self._toldCannotPush = True
                self.log.warn(
                    "roster changes of online users are not pushed: the server grants no iq permission "
                    "for jabber:iq:roster ({version}; urn:xmpp:privilege:1 has none); clients see the "
                    "changes at their next roster get", version=self.permissions.namespace)
            return 0
        steps = diffSteps(before, after, rewrite)
        if not steps:
            return 0
        pushID = secrets.token_hex(4)
        sent = 0
        for resource in sorted(resources):
            for index, step in enumerate(steps):
                push = iqXML("set", f"push-{pushID}-{index}", resource,
                             f"<query xmlns='{NS_ROSTER}' ver='{step.version}'>{step.item}</query>",
                             namespace=NS_CLIENT)
                d = self._inFlight(self._request(
                    username, "set", f"<privileged_iq xmlns='{NS_PRIVILEGE_2}'>{push}</privileged_iq>", "push"),
                    username)
                d.addErrback(self._ebPush, resource)
                sent += 1
        self.log.info("pushed {count} roster changes to {resources} resources of {user}",
                      count=len(steps), resources=len(resources), user=username)
        return sent

    def _ebPush(self, failure: Failure, resource: str) -> None:
        self.log.warn("roster push to {resource} failed: {why}", resource=resource, why=failure.getErrorMessage())

    def _request(self, username: str, iqType: str, payload: str, what: str = "write") -> Deferred[domish.Element]:
        """
        A privileged iq to a user's bare JID, unless it is larger than the
        server accepts (it would close the stream for everyone).

        @param what: What it is, for the refused-stanza counts.
        """
        request = IQRequest(f"{username}@{self.domain}", iqType, payload, self.timeout)
        try:
            self.limit.encode(request.toElement().toXml(), what)
        except StanzaTooLarge as e:
            return fail(e)
        sent = self.clock.seconds()
        d = sendRequest(self.parent, self.status.connected, request)

        def answered(result: T) -> T:
            if not isinstance(result, Failure) or result.check(StanzaError):
                self.pacer.observe(self.clock.seconds() - sent)
            return result

        return d.addBoth(answered)

    def _ebSync(self, failure: Failure, username: str, what: str) -> Failure:
        if failure.check(NotConnected, SyncFailed):
            return failure
        if failure.check(*DISCONNECTED):
            raise NotConnected(f"privileged roster {what} for {username!r} was cut off by the loss of the "
                               "XMPP connection")
        error = failure.value
        reason = error.condition if isinstance(error, StanzaError) else failure.getErrorMessage()
        raise SyncFailed(f"privileged roster {what} for {username!r} failed: {reason}")
