# -*- test-case-name: tests.test_component,tests.test_fullsync,tests.test_onlinecheck,tests.test_bounds -*-
"""
What the server stores converges on the rosters rosteradmin serves.

Each write makes a user's stored roster equal the roster served: the
state's record of what the server holds spares a read where it is current
(the cheap path); otherwise the stored roster is read, diffed and the
difference written, and what the server changed behind our back is counted
as drift.  A user whose write could not be done is unsynced (and pending)
in the state until it is, after the next connection or at its next load.
"""

from __future__ import annotations

from collections import Counter

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from rosteradmin.cache import RosterCache
from rosteradmin.errors import NotConnected, SyncFailed
from rosteradmin.interfaces import IRosterSync
from rosteradmin.promises import Promises
from rosteradmin.roster import Roster, RosterDiff, StoredRoster, diffRosters, holdsVersion
from rosteradmin.state import SyncState


class ServerRosters:
    """
    Writes served rosters into the server, and tells the state who is
    behind (L{SyncState.unsynced}).

    @ivar driftRepaired: Stored roster items repaired because the server
        changed them behind our back, by cause.
    """

    log = Logger()

    def __init__(self, cache: RosterCache, sync: IRosterSync, state: SyncState, promises: Promises) -> None:
        """
        @param cache: The rosters served: drift is measured against the one
            we wrote, while it is still cached.
        """
        self.cache = cache
        self.sync = sync
        self.state = state
        self.promises = promises
        self.driftRepaired: Counter[str] = Counter()
        self._writableWaiters: list[Deferred[None]] = []

    def writable(self) -> Deferred[None]:
        """
        Fires once the server takes roster writes: now, or when it next
        grants roster access.
        """
        if self.sync.canSync():
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._writableWaiters.append(d)
        return d

    def restored(self) -> None:
        """
        The server takes writes again: L{writable}'s waiters go on.
        """
        waiters, self._writableWaiters = self._writableWaiters, []
        for waiter in waiters:
            waiter.callback(None)

    async def verify(self, username: str, urgent: bool = False) -> None:
        """
        Read back the stored roster of a cached user and repair what
        differs, pushing the repaired items (under the user's lock).

        @param urgent: The user's clients are asking now (a read back to
            promise the roster): it goes before background work.
        """
        roster = self.cache.peek(username)
        if roster is None or not self.sync.canSync():
            return
        stored = await self.write(username, roster, urgent=urgent, verify=True)
        if stored is not None:
            # The clients hold the cached roster, but for the subscriptions
            # the server told them.
            self.sync.push(username, roster, roster, stored.notBoth)

    async def resync(self, username: str) -> None:
        """
        Write a roster refreshed while disconnected, and push the changes
        (under the user's lock): the user's clients hold what the server
        held, as it stayed unwritten.
        """
        roster = self.cache.peek(username)
        if roster is not None and username in self.state.unsynced:
            stored = await self.write(username, roster, urgent=False)
            if stored is not None:
                self.sync.push(username, stored.roster, roster, stored.notBoth)

    async def write(self, username: str, roster: Roster, storedRead: Deferred[StoredRoster] | None = None,
                    *, urgent: bool, report: bool = False, verify: bool = False) -> StoredRoster | None:
        """
        Make the server's stored roster equal C{roster}.  On failure the
        user is remembered as unsynced and written after reconnecting.

        @param storedRead: The server's stored roster, if already asked for.
        @param urgent: A client waits for it.
        @param report: Raise L{SyncFailed} when the server refuses, or
            cannot take writes at all (a refresh reports it); being
            disconnected is never raised.
        @param verify: Count what differs from what we last wrote as drift.
        @return: What the server held before, if it was read.
        """
        known = self.state.serverVersion(username)
        if storedRead is None and not verify and known == roster.version:
            # The server holds this roster already (we wrote it): the
            # cheap path, no privileged read or write.
            self.state.caughtUp(username)
            return None
        if storedRead is None and not self.sync.canSync():
            await self.markUnsynced(username)
            if report and self.sync.syncRefusal is not None:
                raise SyncFailed(self.sync.syncRefusal)
            return None
        try:
            stored = await (storedRead if storedRead is not None else self.sync.readStored(username, urgent))
            diff = self._diffFromStored(username, stored, roster, known)
            if diff:
                # Until the write is done, what the server holds is not the
                # recorded version: a crash meanwhile must not leave the
                # cheap path trusting it.
                self.state.forgetServer(username)
                self.promises.forget(username)
                await self.sync.write(username, diff, urgent)
        except (SyncFailed, NotConnected) as e:
            self.log.warn("server roster of {user} not synced: {why}", user=username, why=str(e))
            # Part of a write may have been stored: what the server holds
            # is no longer known.
            self.state.forgetServer(username)
            self.promises.forget(username)
            await self.markUnsynced(username)
            if report and isinstance(e, SyncFailed):
                raise
            return None
        self.state.recordServer(username, roster.version)
        # Read back (and written) in this run: what it holds is known, not
        # only recorded.
        self.promises.verified(username, roster.version)
        if diff:
            self.log.info("synced {user} into the server: {changed} set, {removed} removed",
                          user=username, changed=len(diff.changed), removed=len(diff.removed))
        return stored

    def _diffFromStored(self, username: str, stored: StoredRoster, roster: Roster, known: str | None) -> RosterDiff:
        """
        What to write to make the stored roster C{roster}: what differs,
        and the contacts whose stored subscription is not C{both}.  What the
        server holds beyond the version we recorded (C{known}) changed
        behind our back: it is counted as drift.
        """
        diff = diffRosters(stored.roster, roster)
        if known is not None and (stored.notBoth or not holdsVersion(stored.roster, roster, known)):
            self._countDrift(username, stored, roster, known)
        return _withRewrites(diff, roster, stored.notBoth) if stored.notBoth else diff

    def _countDrift(self, username: str, stored: StoredRoster, roster: Roster, known: str) -> None:
        """
        The server holds something else than we last wrote (a client's
        subscription presence, an admin tool, a lost write): count what it
        changed, by cause.  Measured against the roster we wrote, where the
        cache still holds it (the roster of version C{known}), so that what
        the web app changed since is not counted; else (after a restart or
        an eviction) against the web app's roster C{roster}, all that is
        being repaired.
        """
        wrote = self.cache.peek(username)
        diff = diffRosters(stored.roster, wrote if wrote is not None and wrote.version == known else roster)
        storedJIDs = stored.roster.byJID()
        causes = Counter(
            "missing" if contact.jid not in storedJIDs else "changed" for contact in diff.changed)
        causes["extra"] += len(diff.removed)
        causes["subscription"] += len(stored.notBoth)
        causes = +causes
        self.driftRepaired.update(causes)
        self.log.warn("repairing drift in the server roster of {user}: {causes}", user=username,
                      causes=", ".join(f"{count} {cause}" for cause, count in sorted(causes.items()))
                      or "none left: it holds the web app's roster")

    def markUnsynced(self, username: str) -> Deferred[bool]:
        """
        The server may not hold C{username}'s cached roster: write it once
        the server takes writes again, and after a restart too.

        @return: Fires once the server no longer answers queries with the
            version it stores (L{Promises.revoke}): a client
            asking after the refresh reported its failure gets our answer.
            While disconnected it fires at once; the promise then ends
            with the write after the reconnection.
        """
        self.state.markUnsynced(username)
        return self.promises.revoke(username)


def _withRewrites(diff: RosterDiff, roster: Roster, notBoth: frozenset[str]) -> RosterDiff:
    """
    Add the contacts whose stored subscription is wrong to a diff.
    """
    already = {c.jid for c in diff.changed}
    extra = tuple(c for c in roster.contacts if c.jid in notBoth and c.jid not in already)
    return RosterDiff(diff.changed + extra, diff.removed)
