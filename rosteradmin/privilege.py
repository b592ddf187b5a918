# -*- test-case-name: tests.test_component,tests.test_api,tests.test_privilege -*-
"""
XEP-0356 Privileged Entity: reading and writing users' stored rosters, the
backend's L{IRosterSync} on the component stream.

Every privileged request (reads, writes and pushes) shares one bound of
requests in flight (L{PrioritySlots}: urgent first, a few per user,
background work paced by the server's latency).  Writes are
L{rosteradmin.rosterwrites}' job, parking a user's writes
L{rosteradmin.parking}'s, what the server granted
L{rosteradmin.permissions}', who is online L{rosteradmin.presence}'s, what
devices show and the pushes L{rosteradmin.devices}'.
"""

from __future__ import annotations

from typing import TypeVar

from twisted.internet.defer import Deferred, ensureDeferred, fail
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.words.protocols.jabber.error import StanzaError
from twisted.words.xish import domish
from wokkel.subprotocols import XMPPHandler
from zope.interface import implementer

from rosteradmin.errors import InvalidRoster, NotConnected, StanzaTooLarge, SyncFailed
from rosteradmin.interfaces import IConnectionStatus, IRosterSync, IServerObserver
from rosteradmin.pacing import LatencyPacer
from rosteradmin.parking import WriteParking
from rosteradmin.rosterwrites import DISCONNECTED, RosterWriter
from rosteradmin.permissions import Permissions, PermissionTracker
from rosteradmin.presence import PresenceTracker
from rosteradmin.devices import DeviceViews
from rosteradmin.slots import MAX_SYNC_IN_FLIGHT, PER_USER_IN_FLIGHT, RESERVED_FOR_CLIENTS, PrioritySlots
from rosteradmin.stanzalimit import StanzaLimit
from rosteradmin.roster import NS_ROSTER, Contact, Roster, RosterDiff, StoredRoster, contactJID
from rosteradmin.slicing import inSlices
from rosteradmin.stanzas import IQRequest, findChild, parseJID, sendRequest

T = TypeVar("T")

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
        self._sync = PrioritySlots(MAX_SYNC_IN_FLIGHT, reserved=RESERVED_FOR_CLIENTS, perKey=PER_USER_IN_FLIGHT,
                                   now=clock.seconds)
        self.pacer = LatencyPacer(self._sync, clock, latencyTarget)
        self.devices = devices
        self.parking = WriteParking(clock, self._unparked)
        self.writer = RosterWriter(status, self._sync, self.parking, limit, self._request)

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

    @property
    def parked(self) -> dict[str, str]:
        return self.parking.parked

    @property
    def bulk(self) -> bool | None:
        """
        Whether the server takes many items per iq (L{RosterWriter.bulk}).
        """
        return self.writer.bulk

    @bulk.setter
    def bulk(self, value: bool | None) -> None:
        self.writer.bulk = value

    def _unparked(self, username: str) -> None:
        """
        A parked user's writes may be tried again: the backend re-syncs
        that user, if the server has not stored its roster.
        """
        if self.canSync():
            self.observer.userWritable(username)

    def connectionLost(self, reason: Failure) -> None:
        self.parking.connectionLost()
        self.bulk = None  # the server may have been reconfigured meanwhile

    def canSync(self) -> bool:
        return self.grants.canSync()

    @property
    def syncRefusal(self) -> str | None:
        return self.grants.syncRefusal

    @property
    def unreachable(self) -> str | None:
        """
        Never: this sync's writes go over the component's stream, whose
        loss the connection's state tells.
        """
        return None

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
        Write the items of a diff into the user's stored roster
        (L{RosterWriter.write}); the devices follow the contacts written
        until they are pushed them.
        """
        if username not in self.parked:
            self.devices.changing(username, frozenset(c.jid for c in diff.changed) | frozenset(diff.removed))
        return self.writer.write(username, diff, urgent)

    def promiseCurrent(self, username: str, version: str) -> Deferred[bool] | None:
        return self.writer.promiseCurrent(username, version)

    def revokeCurrent(self, username: str | None) -> Deferred[bool]:
        return self.writer.revokeCurrent(username)

    def stopRetrying(self) -> None:
        """
        The service stops: no parked user's writes are tried again.
        """
        self.parking.stop()
        self.devices.stop()

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

    def putBack(self, username: str, resource: str, jids: frozenset[str], roster: Roster) -> None:
        # The device views know what this client holds.
        if username not in self.parked:
            self.devices.edited(username, resource, jids, roster)

    def pushRequest(self, username: str, payload: str) -> Deferred[domish.Element]:
        """
        One push, within the bound of privileged requests as background
        work (a refresh's).
        """
        return self._sync.run(username, False, self._sendPush, username, payload)

    def _sendPush(self, username: str, payload: str) -> Deferred[domish.Element]:
        """
        Send one push, counted in flight (L{WriteParking.inFlight}) like a write.
        """
        return self.parking.inFlight(self._request(username, "set", payload, "push"), username)

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
