# -*- test-case-name: tests.test_bulkwrites,tests.test_promises,tests.test_component -*-
"""
Writing users' stored rosters with XEP-0356 privileged sets: many items per
iq, saved once, where the server has contrib's mod_rosteradmin_roster, else
one item per set; and the module's promises and revocations, which need it
too (L{rosteradmin.promises} decides them).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.words.protocols.jabber.error import StanzaError
from twisted.words.xish import domish

from rosteradmin.errors import NotConnected, SyncFailed
from rosteradmin.interfaces import IConnectionStatus
from rosteradmin.parking import WriteParking
from rosteradmin.roster import NS_ROSTER, Contact, RosterDiff
from rosteradmin.slots import PrioritySlots
from rosteradmin.stanzalimit import WRAPPER_BYTES, StanzaLimit

#: contrib/prosody/mod_rosteradmin_roster.lua: many roster items per iq.
NS_BULK_ROSTER = "urn:x-rosteradmin:roster:0"

#: The errors of a server that does not know the bulk iq.
NO_BULK_CONDITIONS = ("service-unavailable", "feature-not-implemented")

#: How a request fails when the stream goes away before its answer (wokkel
#: fails pending iqs with the connection's loss) or it cannot be sent.
DISCONNECTED = (NotConnected, ConnectionLost, ConnectionDone)


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


class RosterWriter:
    """
    Writes diffs into users' stored rosters within the bound of privileged
    requests, each write refused while its user is parked
    (L{WriteParking}).

    @ivar bulk: Whether the server takes many items per iq: unknown
        (C{None}) until tried on each connection.
    """

    log = Logger()

    def __init__(self, status: IConnectionStatus, slots: PrioritySlots, parking: WriteParking, limit: StanzaLimit,
                 request: Callable[[str | None, str, str, str], Deferred[domish.Element]]) -> None:
        """
        @param slots: The bound of privileged requests in flight.
        @param limit: The server's stanza size limit, for the size of a
            many-items iq.
        @param request: Sends a privileged iq (user or C{None} for the
            domain, type, payload, what it is) and fires with the answer.
        """
        self.status = status
        self.slots = slots
        self.parking = parking
        self.limit = limit
        self.request = request
        self.bulk: bool | None = None

    def write(self, username: str, diff: RosterDiff, urgent: bool = True) -> Deferred[None]:
        """
        Write the items of a diff into the user's stored roster: many per
        iq, saved once, where the server has contrib's
        mod_rosteradmin_roster; else one privileged set per item (with
        several items in one set, mod_privilege answers once per item with
        the same id, and it saves the whole roster after each item).

        @param urgent: A client waits for it; background writes (refreshes)
            go after urgent ones.
        @raise SyncFailed: The user's writes are parked (see L{rosteradmin.parking}).
        """
        parked = self.parking.refusal(username)
        if parked is not None:
            return parked
        if self.bulk is False:
            return self._writeEach(username, diff, urgent)
        chunks = bulkChunks(diff, self.limit.maxBytes - WRAPPER_BYTES)
        writes = [self.slots.run(username, urgent, self._writeChunk, username, chunk) for chunk in chunks]

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
        L{rosteradmin.promises}'); C{None} where it cannot be sent.  Sent at once, not queued behind writes,
        so that it reaches the server before any later write: a write
        queued earlier made the state forget the stored version, and
        nothing is promised then.
        """
        if self.bulk is False or not self.status.connected:
            return None
        d = self.request(username, "set", f"<query xmlns='{NS_BULK_ROSTER}' ver='{version}'/>", "promise")

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
        d = self.request(username, "set", f"<query xmlns='{NS_BULK_ROSTER}' ver=''/>", "promise")
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
        writes = [self.slots.run(username, urgent, self._writeItem, username, c.toXML("both"), False)
                  for c in diff.changed]
        writes += [
            self.slots.run(username, urgent, self._writeItem, username, Contact(jid, None, ()).toXML("remove"),
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
            self.parking.stored(username)
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
        parked = self.parking.refusal(username)
        if parked is not None:
            return parked
        d = self.request(username, "set", f"<query xmlns='{NS_BULK_ROSTER}'>{itemsXML}</query>", "write")

        def answered(result: object) -> object:
            self.bulk = True
            return result

        def unknown(failure: Failure) -> Failure:
            error = failure.value
            if self.bulk is not True and isinstance(error, StanzaError) and error.condition in NO_BULK_CONDITIONS:
                raise _NoBulkWrites(error.condition)
            return failure

        d.addCallbacks(answered, unknown)
        return self.parking.inFlight(d, username)

    def _writeItem(self, username: str, itemXML: str, removal: bool) -> Deferred[Any]:
        """
        One privileged roster set.

        @return: Deferred firing with the server's answer (unused: L{write}
            looks only at failures), or C{None} for the removal of an item
            the server did not hold.
        """
        parked = self.parking.refusal(username)
        if parked is not None:
            return parked
        d = self.request(username, "set", f"<query xmlns='{NS_ROSTER}'>{itemXML}</query>", "write")
        if removal:
            # Removing what the server does not hold is already done.
            d.addErrback(self._ignoreItemNotFound)
        return self.parking.inFlight(d, username)

    @staticmethod
    def _ignoreItemNotFound(failure: Failure) -> Failure | None:
        failure.trap(StanzaError)
        error = failure.value
        return failure if not isinstance(error, StanzaError) or error.condition != "item-not-found" else None
