# -*- test-case-name: tests.test_component,tests.test_api,tests.test_privilege -*-
"""
XEP-0356 Privileged Entity: reading and writing users' stored rosters, the
backend's L{IRosterSync} on the component stream.

Every privileged request (reads, writes and pushes) shares one bound of
requests in flight (L{PrioritySlots}: urgent first, a few per user,
background work paced by the server's latency).  What the server granted
is L{rosteradmin.permissions}' job, who is online
L{rosteradmin.presence}'s, what devices show and the pushes
L{rosteradmin.devices}'.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, TypeVar, cast

from twisted.internet.defer import Deferred, DeferredList, ensureDeferred, fail, succeed
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.words.protocols.jabber.error import StanzaError
from twisted.words.xish import domish
from wokkel.subprotocols import XMPPHandler
from zope.interface import implementer

from rosteradmin.errors import InvalidRoster, NotConnected, StanzaTooLarge, SyncFailed
from rosteradmin.interfaces import IConnectionStatus, IRosterSync, IServerObserver
from rosteradmin.pacing import LatencyPacer
from rosteradmin.permissions import Permissions, PermissionTracker
from rosteradmin.presence import PresenceTracker
from rosteradmin.devices import DeviceViews
from rosteradmin.slots import MAX_SYNC_IN_FLIGHT, PER_USER_IN_FLIGHT, RESERVED_FOR_CLIENTS, PrioritySlots
from rosteradmin.stanzalimit import WRAPPER_BYTES, StanzaLimit
from rosteradmin.roster import NS_ROSTER, Contact, Roster, RosterDiff, StoredRoster, contactJID
from rosteradmin.slicing import inSlices
from rosteradmin.stanzas import IQRequest, findChild, parseJID, sendRequest

T = TypeVar("T")

#: contrib/prosody/mod_rosteradmin_roster.lua: many roster items per iq.
NS_BULK_ROSTER = "urn:x-rosteradmin:roster:0"

#: The errors of a server that does not know the bulk iq.
NO_BULK_CONDITIONS = ("service-unavailable", "feature-not-implemented")

#: How a request fails when the stream goes away before its answer (wokkel
#: fails pending iqs with the connection's loss) or it cannot be sent.
DISCONNECTED = (NotConnected, ConnectionLost, ConnectionDone)

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


def storedJID(value: str | None) -> str | None:
    """
    The bare JID of a stored roster item, C{None} if it has none.  Items
    are mostly users' bare JIDs, as we wrote them: prepared the cheap way
    (L{rosteradmin.roster.contactJID}: reading back a 20,000-item roster
    spent seconds in stringprep); anything else (a server's JID, a stray
    full JID) through Twisted's parser.
    """
    if not value:
        return None
    try:
        return contactJID(value)
    except InvalidRoster:
        jid = parseJID(value)
        return jid.userhost() if jid is not None else None


async def parseStoredRoster(result: domish.Element, clock: IReactorTime) -> StoredRoster:
    """
    Read the server's answer to a privileged roster get, giving the reactor
    a turn between slices of items (L{inSlices}): a stored roster of
    20,000 items is a quarter of a second of work.
    """
    contacts: list[Contact] = []
    notBoth: set[str] = set()
    query = findChild(result, "query", (NS_ROSTER,))
    async for part in inSlices(query.elements() if query is not None else (), clock):
        for item in part:
            bare = storedJID(item.getAttribute("jid")) if item.name == "item" else None
            if bare is None:
                continue
            groups = tuple(dict.fromkeys(str(g) for g in item.elements() if g.name == "group" and str(g)))
            contacts.append(Contact(bare, item.getAttribute("name") or None, groups))
            if item.getAttribute("subscription") != "both" or item.getAttribute("ask"):
                notBoth.add(bare)
    return StoredRoster(Roster(contacts), frozenset(notBoth))


@implementer(IRosterSync)
class PrivilegeHandler(XMPPHandler):
    """
    Reads and writes users' stored rosters within the bound of privileged
    requests, parks the writes of users whose writes keep coinciding with
    stream losses, and sends the pushes of L{DeviceViews} within the same
    bound.

    @ivar grants: What the server granted on this connection.
    @ivar presence: Who is online.
    """

    log = Logger()

    observer: IServerObserver

    def __init__(
        self,
        domain: str,
        status: IConnectionStatus,
        grants: PermissionTracker,
        presence: PresenceTracker,
        devices: DeviceViews,
        clock: IReactorTime,
        timeout: float,
        limit: StanzaLimit,
        latencyTarget: float = 0.05,
    ) -> None:
        """
        @param domain: The users' domain: requests go to their bare JIDs.
        @param status: Whether we are connected.
        @param devices: What each device shows: changes are pushed there.
        @param clock: Time for parked users' retries.
        @param latencyTarget: The reply latency background writes may push
            the server to (see L{rosteradmin.pacing}).
        @param timeout: Seconds to wait for the server to answer an iq.
        @param limit: The server's stanza size limit, checked before each
            request is sent.
        """
        super().__init__()
        self.domain = domain
        self.status = status
        self.grants = grants
        self.presence = presence
        self.clock = clock
        self.timeout = timeout
        self.limit = limit
        #: Whether the server takes many items per iq: unknown until tried.
        self.bulk: bool | None = None
        self._sync = PrioritySlots(MAX_SYNC_IN_FLIGHT, reserved=RESERVED_FOR_CLIENTS, perKey=PER_USER_IN_FLIGHT,
                                   now=clock.seconds)
        self.pacer = LatencyPacer(self._sync, clock, latencyTarget)
        self.devices = devices
        self._writing: Counter[str] = Counter()
        self._strikes: Counter[str] = Counter()
        self.parked: dict[str, str] = {}
        self._unparkCalls: dict[str, IDelayedCall] = {}

    def observe(self, observer: IServerObserver) -> None:
        """
        Say whom to tell once a parked user may be written again: the
        backend, which is given this handler as its L{IRosterSync} at
        construction, so it is told after (by L{rosteradmin.tap.wireParts},
        before the stream exists, which also gives it to the permission and
        presence trackers).
        """
        self.observer = observer

    @property
    def permissions(self) -> Permissions:
        """
        What the server granted on this connection.
        """
        return self.grants.permissions

    @property
    def online(self) -> dict[str, set[str]]:
        """
        Online full JIDs by username.
        """
        return self.presence.online

    def connectionLost(self, reason: Failure) -> None:
        self._strike(sorted(self._writing))
        self.bulk = None  # the server may have been reconfigured meanwhile

    def canSync(self) -> bool:
        return self.grants.canSync()

    @property
    def syncRefusal(self) -> str | None:
        return self.grants.syncRefusal

    def readStored(self, username: str, urgent: bool = True) -> Deferred[StoredRoster]:
        """
        The roster the server stores for a user (a privileged get).  Reads
        share the bound of writes: a bulk refresh must not flood the server
        with thousands of reads at once.

        @param urgent: A client waits for it.
        """
        d = self._sync.run(username, urgent, self._request, username, "get", f"<query xmlns='{NS_ROSTER}'/>", "read")
        stored = d.addCallback(lambda result: ensureDeferred(parseStoredRoster(result, self.clock)))
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
        self.devices.changing(username, frozenset(c.jid for c in diff.changed) | frozenset(diff.removed))
        if self.bulk is False:
            return self._writeEach(username, diff, urgent)
        chunks = bulkChunks(diff, self.limit.maxBytes - WRAPPER_BYTES)
        writes = [self._sync.run(username, urgent, self._writeChunk, username, chunk) for chunk in chunks]

        def checkOrFallBack(results: list[tuple[bool, object]]) -> Deferred[None] | None:
            if any(not ok and cast(Failure, r).check(_NoBulkWrites) for ok, r in results):
                self._noBulkWrites()
                return self._writeEach(username, diff, urgent)
            self._checkWrites(username, results)
            return None

        return DeferredList(writes, consumeErrors=True).addCallback(checkOrFallBack)

    def _noBulkWrites(self) -> None:
        """
        The server does not know contrib's bulk iq: say so once per
        connection, and write item by item from now on.
        """
        if self.bulk is None:
            self.bulk = False
            self.log.info("the server has no mod_rosteradmin_roster: writing one roster item per "
                          "privileged set, each a full save of the roster (see contrib/prosody)")

    def promiseCurrent(self, username: str, version: str) -> Deferred[bool] | None:
        """
        Give contrib's mod_rosteradmin_roster the version of the roster it
        stores for the user (a bulk iq with no items; the contract is
        L{rosteradmin.promises}').  Sent at once, not queued behind writes,
        so that it reaches the server before any later write: a write
        queued earlier made the state forget the stored version, and
        nothing is promised then.
        """
        if self.bulk is False or not self.status.connected:
            return None
        d = self._request(username, "set", f"<query xmlns='{NS_BULK_ROSTER}' ver='{version}'/>", "promise")

        def refused(failure: Failure) -> bool:
            self._ebPromise(failure, username)
            return False

        return d.addCallbacks(lambda result: True, refused)

    def revokeCurrent(self, username: str | None) -> Deferred[bool]:
        """
        End the server's promise for the user, or for every user
        (C{ver=''} to the user's bare JID, or to the domain), if the server
        may hold one: one may be left from an earlier connection, or from
        an earlier run of rosteradmin.
        """
        if self.bulk is False:
            return succeed(True)
        if not self.status.connected:
            return succeed(False)
        d = self._request(username, "set", f"<query xmlns='{NS_BULK_ROSTER}' ver=''/>", "promise")
        return d.addCallbacks(lambda result: True, self._ebPromise, errbackArgs=(username,))

    def _ebPromise(self, failure: Failure, username: str | None) -> bool:
        """
        A promise or revocation the server did not take.

        @return: Whether the server holds no promise anyway: it does not
            know the iq at all.
        """
        error = failure.value
        if self.bulk is not True and isinstance(error, StanzaError) and error.condition in NO_BULK_CONDITIONS:
            self._noBulkWrites()
            return True
        self.log.debug("version promise for {user} not taken: {why}", user=username, why=failure.getErrorMessage())
        return False

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
            if self.bulk is not True and isinstance(error, StanzaError) and error.condition in NO_BULK_CONDITIONS:
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
        self.devices.stop()

    def _unpark(self, username: str) -> None:
        """
        Try a parked user's writes again: the backend re-syncs the users the
        server has not stored.
        """
        self._unparkCalls.pop(username, None)
        self.parked.pop(username, None)
        if self.canSync():
            self.observer.connectionRestored()

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

    def push(self, username: str, before: Roster | None, after: Roster,
             rewrite: frozenset[str] = frozenset()) -> int:
        """
        Bring the user's devices to C{after} (L{DeviceViews.update}),
        unless the user's writes are parked: its data may be what makes
        the server close the stream.
        """
        if username in self.parked:
            return 0
        return self.devices.update(username, before, after, rewrite)

    def answered(self, username: str, resource: str, roster: Roster) -> None:
        self.devices.asked(username, resource, roster)

    def putBack(self, username: str, resource: str, jids: frozenset[str]) -> None:
        if username not in self.parked:
            self.devices.edited(username, resource, jids)

    def pushRequest(self, username: str, payload: str) -> Deferred[domish.Element]:
        """
        One push, within the bound of privileged requests as background
        work (a refresh's).
        """
        return self._sync.run(username, False, self._sendPush, username, payload)

    def _sendPush(self, username: str, payload: str) -> Deferred[domish.Element]:
        """
        Send one push, counted in flight for L{_strike} like a write.
        """
        return self._inFlight(self._request(username, "set", payload, "push"), username)

    def _request(self, username: str | None, iqType: str, payload: str,
                 what: str = "write") -> Deferred[domish.Element]:
        """
        A privileged iq to a user's bare JID (C{None}: to the domain),
        unless it is larger than the server accepts (it would close the
        stream for everyone).

        @param what: What it is, for the refused-stanza counts.
        """
        recipient = f"{username}@{self.domain}" if username is not None else self.domain
        request = IQRequest(recipient, iqType, payload, self.timeout)
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
