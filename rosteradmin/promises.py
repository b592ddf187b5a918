# -*- test-case-name: tests.test_promises -*-
"""
Roster versions promised to the server: when Prosody may answer a user's
roster queries itself, and when it must ask us again.

Delegating a query costs Prosody about twice its own answer, and us a
web-app fetch after a restart.  So once the server stores exactly the
roster we serve (we wrote it, or read it back), we promise that roster's
version to contrib's mod_rosteradmin_roster, before any client asks, and
it answers that user's queries from its store until the promise ends.

The contract, both sides (contrib/prosody/mod_rosteradmin_roster.lua keeps
the other half):

  - A promise is a bulk iq with a version and no items, to the user's bare
    JID: C{<query xmlns='urn:x-rosteradmin:roster:0' ver='V'/>}.  The module
    records V with its stored roster's own version number and answers the
    user's roster gets itself: empty for a get with V (XEP-0237), else the
    stored roster with V.  It keeps promises in memory only.
  - A promise ends when the stored roster is saved again (every change we
    learn of is written there; a failed write is revoked), when the user's
    client sends a roster set (the client may show its refused edit), when
    we revoke it (C{ver=''} to the user, or to the host for every user), or
    when Prosody restarts.  A stored roster whose version is not a number
    (mod_groups) is never promised.

Our side promises a version only when it is known to be what the server
stores: read back or written in this run (the state's record alone could
be older than a change made behind our back: a version the state records
but this run has not verified is read back once, after its second answer,
and promised if the server holds it), still recorded in the state,
the user neither unsynced nor refused, and no client of the user doubted
at that version (L{SyncState.doubtClients}).  It promises at once when
the version is verified (L{verified}: a sync's write, a read back), so
that the promise a sync made outlives our restart: in the server's memory,
not ours; and after an answer (L{answered}) what a new connection lost.  A run whose state does not
know the stored rosters revokes every promise once, at its first
connection, until the server has taken it.  The wire is the sync's
(L{IRosterSync.promiseCurrent}, L{IRosterSync.revokeCurrent}); the
decisions are this module's alone.
"""

from __future__ import annotations

from typing import Callable

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from rosteradmin.interfaces import IRosterSync
from rosteradmin.state import SyncState


class Promises:
    """
    The one owner of promised roster versions.

    @ivar count: Versions promised (sent to the server).
    """

    log = Logger()

    def __init__(self, sync: IRosterSync, state: SyncState,
                 readBack: Callable[[str], Deferred[None]] | None = None,
                 answerable: Callable[[str], bool] | None = None) -> None:
        """
        @param sync: Sends promises and revocations to the server.
        @param state: What the server stores, and the doubted versions.
        @param readBack: Reads a cached user's stored roster back, repairs
            what differs, and calls L{verified} (or L{forget}); by default
            nothing is read back, and only what this run wrote or read is
            promised.
        @param answerable: Whether a user's roster may be answered to its
            clients (not refused): a version written or read back is
            promised at once only then.  By default, only answered
            versions are promised.
        """
        self.sync = sync
        self.state = state
        self._readBackStored = readBack
        self._answerable = answerable
        self.count = 0
        # Promises the server may hold from an earlier run cannot be
        # trusted without the versions that run recorded.
        self._revokeAll = not state.remembersServer
        # The version each user's stored roster was read back (or written)
        # with in this run: only those are promised.
        self._verified: dict[str, str] = {}
        # The version promised for each user on this connection.
        self._sent: dict[str, str] = {}
        # The version each user was answered once, unverified, and the one
        # its stored roster is being (or was) read back for, on this
        # connection: each is read back once, at its second answer.
        self._answeredOnce: dict[str, str] = {}
        self._readBack: dict[str, str] = {}

    def verified(self, username: str, version: str) -> None:
        """
        The server's stored roster of the user was read back, or written,
        in this run, and is the roster of C{version}.

        It is promised at once, before any client asks: a promise outlives
        our restart, while what this run verified does not, so a user the
        sync wrote and no client asked for since would otherwise have its
        first get after our restart delegated (a round trip through a
        server that, in a login storm, is busy with every other login).
        """
        self._verified[username] = version
        if self._answerable is not None and self._answerable(username):
            self.answered(username, version, synced=username not in self.state.unsynced)

    def forget(self, username: str) -> None:
        """
        What the server stores for the user is about to change, or is no
        longer known: nothing is promised until it is verified again.  A
        save in the server ends its promise by itself; a write that may have
        failed is revoked (L{revoke}).
        """
        self._verified.pop(username, None)
        self._sent.pop(username, None)
        self._answeredOnce.pop(username, None)
        self._readBack.pop(username, None)

    def verifiedVersion(self, username: str) -> str | None:
        """
        The version the user's stored roster was read back or written with
        in this run, while still known, or C{None}.
        """
        return self._verified.get(username)

    def promisedVersion(self, username: str) -> str | None:
        """
        The version promised for the user on this connection, or C{None}.
        """
        return self._sent.get(username)

    def answered(self, username: str, version: str, synced: bool) -> None:
        """
        A client was answered the roster of C{version}: promise it if the
        server stores exactly that roster.

        After a restart on the state, the state records what the server
        stores but this run has verified none of it: without a read back,
        no user would be promised again, and every get of every user would
        reach us for the whole run (twice Prosody's own cost each).  So a
        version only the state vouches for is read back (L{_readBackLater}),
        and promised if the server holds it.

        @param synced: The user is neither waiting for a write nor refused.
        """
        if (not synced or self.state.serverVersion(username) != version
                or self.clientsMayDiffer(username, version) or self._sent.get(username) == version):
            return
        if self._verified.get(username) != version:
            self._readBackLater(username, version, synced)
            return
        sent = self.sync.promiseCurrent(username, version)
        if sent is not None:
            self._sent[username] = version
            self.count += 1
            sent.addCallback(self._taken, username, version)

    def _readBackLater(self, username: str, version: str, synced: bool) -> None:
        """
        Read back the stored roster of a version answered a second time,
        once per user and connection, then try to promise it again.

        A read back costs the server about what answering a delegated get
        costs: it is spent on users whose clients ask again, not at every
        user's first answer (a login storm after a restart would pay one
        for each user, most of whom ask once).
        """
        if self._readBackStored is None or self._readBack.get(username) == version:
            return
        if self._answeredOnce.get(username) != version:
            self._answeredOnce[username] = version
            return
        self._readBack[username] = version
        self._readBackStored(username).addCallback(lambda _: self.answered(username, version, synced)).addErrback(
            lambda f: self.log.warn("reading back the stored roster of {user} failed: {why}",
                                    user=username, why=f.getErrorMessage()))

    def _taken(self, taken: bool, username: str, version: str) -> None:
        if not taken and self._sent.get(username) == version:
            del self._sent[username]  # to be sent again

    def clientsMayDiffer(self, username: str, version: str) -> bool:
        """
        Whether a client holding this (current) version may yet show
        something else: it gets the whole roster, and the version is not
        promised.
        """
        return self.state.clientsDoubted(username, version)

    def clientEdited(self, username: str, version: str | None) -> Deferred[bool]:
        """
        A client's roster set was refused: it may show its edit while it
        holds C{version} (the user's current one, if known).  The set may
        have crossed a promise on its way, so the promise is revoked, and
        the version doubted: an offline client that kept its edit must not
        be told "current".
        """
        if version is not None:
            self.state.doubtClients(username, version)
        return self.revoke(username)

    def revoke(self, username: str) -> Deferred[bool]:
        """
        The server may no longer store what the user's promise vouches for
        (a write failed part-way): end it.

        @return: Fires with whether the server has taken it (at once while
            disconnected: the write after the reconnection ends it).
        """
        self._sent.pop(username, None)
        return self.sync.revokeCurrent(username)

    def connected(self) -> Deferred[bool] | None:
        """
        The server takes roster writes on a new connection: what was sent
        on the last one is forgotten, and, if this run cannot trust the
        promises an earlier run made, they are all revoked, again at each
        connection until the server has taken it.

        @return: The revocation, if one was sent.
        """
        self._sent.clear()
        self._answeredOnce.clear()
        self._readBack.clear()
        if not self._revokeAll:
            return None
        self._revokeAll = False

        def revoked(taken: bool) -> bool:
            if not taken:
                self._revokeAll = True  # again at the next connection
            return taken

        return self.sync.revokeCurrent(None).addCallback(revoked)
