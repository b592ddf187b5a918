# -*- test-case-name: tests.test_component,tests.test_api -*-
"""
The rosters: cached, fetched from the web app, written into the server.

L{RosterBackend} is the one owner of the cache and the fetcher.  It knows
neither XMPP nor HTTP: the XMPP side reaches it as an L{IRosterBackend}, and
it writes into the server through an L{IRosterSync}.  Work on one user is
serialised (a fetch, a server sync and a cache update never interleave with
another for the same user); different users proceed in parallel.
"""

from __future__ import annotations

from typing import Any, Callable, Coroutine, TypeVar

from twisted.application.service import Service
from twisted.internet.defer import Deferred, ensureDeferred, succeed
from twisted.logger import Logger
from zope.interface import implementer

from rosteradmin.cache import RosterCache
from rosteradmin.convergence import Convergence
from rosteradmin.errors import FetchFailed, SyncFailed
from rosteradmin.fetcher import RosterFetcher
from rosteradmin.interfaces import IRosterBackend, IRosterSync, RefreshSummary
from rosteradmin.lookup import UserLookup
from rosteradmin.promises import Promises
from rosteradmin.refreshes import Refreshes
from rosteradmin.refusals import Refusals
from rosteradmin.roster import Roster, StoredRoster
from rosteradmin.serverrosters import ServerRosters
from rosteradmin.slots import KeyedLock, Shared
from rosteradmin.snapshot import BackendSnapshot, UserReading
from rosteradmin.stanzalimit import StanzaLimit
from rosteradmin.state import SyncState

T = TypeVar("T")


@implementer(IRosterBackend)
class RosterBackend(Service):
    """
    Serves, refreshes and syncs rosters.

    @ivar sync: Writes into the server.
    @ivar server: Makes what the server stores converge on what is served.
    @ivar refusals: Rosters the server cannot carry, refused per user.
    @ivar converging: Brings the server back to what is served after it
        fell behind.
    """

    log = Logger()

    def __init__(self, cache: RosterCache, fetcher: RosterFetcher, sync: IRosterSync,
                 limit: StanzaLimit | None = None, state: SyncState | None = None) -> None:
        """
        @param sync: How rosters are written into the server; chosen by the
            composition root (L{rosteradmin.tap.chooseRosterSync}).
        @param limit: The server's stanza size limit: rosters it cannot
            carry are refused for their user alone.
        @param state: What the server holds and who is pending, kept across
            restarts; by default in memory only.
        """
        self.state = state if state is not None else SyncState()
        self.promises = Promises(sync, self.state, lambda user: self._locked(user, self.server.verify, user, True),
                                 lambda user: user not in self.refusals.refused)
        self.cache = cache
        # Only a cached user's clients are answered without a fetch: what
        # is verified of the others is read again when they are loaded.
        cache.onEvict = self.promises.forget
        self.fetcher = fetcher
        self.sync = sync
        self.limit = limit if limit is not None else StanzaLimit()
        self.refusals = Refusals(self.limit, cache)
        self.server = ServerRosters(cache, sync, self.state, self.promises)
        self._locks: KeyedLock[str] = KeyedLock()
        self.refreshing = Refreshes(self.state, fetcher.clock, self._locked, self._refreshOne, self.refusals)
        self.converging = Convergence(self.state, self.server, self.refreshing, self._locked, sync.canSync,
                                      self._background)
        self.lookup = UserLookup(cache, fetcher, sync, self.state, self.promises, self.refusals, self._locked)
        # Users whose roster clients wait for.
        self._clientLoads: Shared[str, Roster] = Shared()

    @property
    def unsynced(self) -> set[str]:
        return self.state.unsynced

    def writable(self) -> Deferred[None]:
        return self.server.writable()

    def refresh(self, usernames: list[str], verify: bool = False) -> Deferred[RefreshSummary]:
        """
        Re-fetch each distinct user, then update the cache and the server and
        push the changes (L{Refreshes.refresh}).
        """
        return self.refreshing.refresh(usernames, verify)

    def snapshot(self) -> BackendSnapshot:
        """
        The figures C{/healthz} and C{/metrics} show of the rosters, read
        at once.  Work is stuck when fetches or privileged requests are
        queued and none moves; memory is saturated when the cache is over
        its bound because of online users' rosters, or the refusals are
        kept at their bound.
        """
        cache, fetcher, state = self.cache, self.fetcher, self.state
        stuck = [reason for reason in (fetcher.stuck(), self.sync.stuck()) if reason is not None]
        saturated = [reason for reason in (cache.overBound(), self.refusals.saturation()) if reason is not None]
        return BackendSnapshot(
            cachedUsers=len(cache), cachedContacts=cache.contacts, cacheCharge=cache.charge, cacheHits=cache.hits,
            cacheMisses=cache.misses, cacheEvictions=cache.evictions,
            fetchesInFlight=fetcher.inFlight, fetchFailures=fetcher.failures, refreshes=self.refreshing.count,
            unsyncedUsers=len(self.unsynced), refused=dict(self.refusals.refused),
            stanzasRefused=dict(self.limit.refused), parked=dict(self.sync.parked), promised=self.promises.count,
            driftRepaired=dict(self.server.driftRepaired), pendingUsers=state.pendingCount(),
            stateUnsaved=state.unsaved, stateProblem=state.problem, syncRefusal=self.sync.syncRefusal or self.sync.unreachable,
            stuck="; ".join(stuck) if stuck else None, saturated=tuple(saturated))

    def readUser(self, username: str, deadline: float) -> Deferred[UserReading]:
        """One user's rosters read now, and what is held of it (L{UserLookup.read})."""
        return self.lookup.read(username, deadline)

    def stopService(self) -> Deferred[None]:
        """
        Close the fetcher, then the state: what its file has not taken yet
        gets a last chance.
        """
        super().stopService()
        return self.fetcher.close().addCallback(lambda _: self.state.close())

    def getRoster(self, username: str) -> Deferred[Roster]:
        """
        A user's roster: from the cache, or fetched and written into the
        server before it is returned (so the presence the client sends after
        its roster get reaches its contacts: docs/protocol.md).

        @param username: A nodeprepped username.
        @raise FetchFailed: The roster is not cached and cannot be fetched.
        """
        roster = self.cache.get(username)
        if roster is not None:
            self.converging.resync([username], first=True)
            return succeed(roster)
        return self._loadForClient(username)

    def rosterStored(self, username: str) -> Deferred[None]:
        """
        The server is about to load the user's roster for a login, and
        waits until it stores the web app's (contrib's
        mod_rosteradmin_roster): at once if the state records what it
        stores and the user is not unsynced, else once the roster is
        fetched and written (L{getRoster}).  A refresh on its way is not
        waited for: it pushes its change when done.

        @raise FetchFailed: The roster is not cached and cannot be fetched.
        """
        if self.state.serverVersion(username) is not None and username not in self.unsynced:
            return succeed(None)
        return self.getRoster(username).addCallback(lambda _: None)

    def warm(self, username: str) -> None:
        """
        Load a user's roster before the client asks for it.
        """
        if username not in self.cache:
            self._background(self._loadForClient(username), "warm", username)

    def catchUp(self, username: str) -> None:
        """
        A user was online before this connection (the server replayed its
        presence after our restart): its clients hold what the server
        stores.  Refresh it in the background, so that a change made while
        we were away is stored and pushed.
        """
        if username not in self.cache:
            self.converging.catchUp(username)

    def putBack(self, username: str, resource: str, jids: frozenset[str]) -> None:
        """
        A client's roster set was refused: push it again what the web app
        has for the contacts it tried to change, and a removal of those it
        tried to add (L{IRosterSync.putBack}).  Clients such as profanity
        show their edit as done and keep it until the next login, whatever
        the error says; the push puts their roster view right at once.

        @param resource: The client's full JID.
        @param jids: The bare JIDs of the set's items.
        """
        roster = self.cache.peek(username)
        holds = roster.version if roster is not None and jids else None
        self._background(self.promises.clientEdited(username, holds), "revoking the promised version", username)
        if roster is not None and holds is not None:
            self.sync.putBack(username, resource, jids, roster)

    def clientsMayDiffer(self, username: str, version: str) -> bool:
        """
        Whether a client holding this (current) version may yet show
        something else (L{Promises.clientsMayDiffer}): it gets the whole
        roster.
        """
        return self.promises.clientsMayDiffer(username, version)

    def answered(self, username: str, resource: str, roster: Roster) -> None:
        """
        A client was answered C{roster}: it holds it from now on
        (L{IRosterSync.answered}), and the server may answer the user's
        next queries itself if it stores that roster (L{Promises.answered}).
        """
        self.sync.answered(username, resource, roster)
        self.promises.answered(username, roster.version,
                               synced=username not in self.unsynced and username not in self.refusals.refused)

    def canSync(self) -> bool:
        return self.sync.canSync()

    def verifyServer(self, username: str) -> Deferred[None]:
        """
        Read back the server roster of a cached user and repair what
        differs from the cache, pushing the repaired items: the cheap check
        for online users (no web-app fetch), whose presence goes wrong at
        once when the server's roster does.
        """
        return self._locked(username, self.server.verify, username)

    def _loadForClient(self, username: str) -> Deferred[Roster]:
        """
        Load a roster clients wait for, once for all of them, its failure
        too (L{Shared}).

        A bulk refresh may be loading the user already (holding the
        user's lock) behind thousands of others: while clients wait, that
        refresh's fetch, reads and writes for this user are urgent, so
        they wait for one user's work, not for the whole refresh.
        """
        def load() -> Deferred[Roster]:
            self.fetcher.hurry(username)
            self.sync.hurry(username)
            return self._locked(username, self._load, username)

        return self._clientLoads.run(username, load)

    def writesRestored(self) -> None:
        """
        Write the rosters that could not be written while the server took
        no writes (L{Convergence.writesRestored}).
        """
        self.server.restored()
        revocation = self.promises.connected()
        if revocation is not None:
            self._background(revocation, "revoking the promised versions", "every user")
        self.converging.writesRestored()

    def userWritable(self, username: str) -> None:
        """
        Re-sync this user alone, if unsynced: its writes were parked.
        """
        self.converging.resync([username])

    def _background(self, d: Deferred[Any], what: str, username: str) -> None:
        """
        Let work run on its own, logging how it failed.
        """
        d.addErrback(lambda f: self.log.warn("{what} of {user} failed: {why}",
                                             what=what, user=username, why=f.getErrorMessage()))

    def _locked(self, username: str, work: Callable[..., Coroutine[Deferred[Any], Any, T]],
                *args: object) -> Deferred[T]:
        """
        Run C{work} while holding the user's lock.
        """
        return self._locks.run(username, lambda: ensureDeferred(work(*args)))

    async def _load(self, username: str) -> Roster:
        """
        Fetch a roster on a cache miss and write it into the server.
        """
        cached = self.cache.peek(username)
        if cached is not None:
            return cached
        roster, stored = await self._fetchWithStored(username)
        self.refusals.admit(username, roster, stored)
        held = await self.server.write(username, roster, stored, urgent=True)
        self.cache.put(username, roster)
        if held is not None and held.roster.contacts:
            # The server may have answered the user's clients from what it
            # stored (a promise of an earlier run): they hold that.
            self.sync.push(username, held.roster, roster, held.notBoth)
        else:
            self.sync.push(username, None, roster, frozenset())
        return roster

    async def _fetchWithStored(self, username: str, urgent: bool = True,
                               verify: bool = False) -> tuple[Roster, Deferred[StoredRoster] | None]:
        """
        Fetch from the web app while the server reads its stored roster:
        the client waits for both, so it waits for the slower only.  When
        the state knows what the server holds, the read is skipped (the
        fetched roster may well equal it), unless C{verify}.

        @param urgent: A client waits (see L{RosterFetcher.fetch}).
        """
        known = self.state.serverVersion(username) is not None and not verify
        stored = self.sync.readStored(username, urgent) if self.sync.canSync() and not known else None
        try:
            roster = await self.fetcher.fetch(username, urgent)
        except FetchFailed:
            if stored is not None:
                stored.addErrback(lambda failure: None)  # nothing to sync
            raise
        return roster, stored

    async def _refreshOne(self, username: str, verify: bool = False) -> None:
        """
        @raise SyncFailed: The roster is cached and pushed, but the server
            refused to store it (it is written again on the user's next
            login or after reconnecting).
        """
        roster, storedRead = await self._fetchWithStored(username, urgent=username in self._clientLoads,
                                                         verify=verify)
        self.refusals.admit(username, roster, storedRead)
        refused: SyncFailed | None = None
        try:
            stored = await self.server.write(username, roster, storedRead,
                                               urgent=username in self._clientLoads, report=True, verify=verify)
        except SyncFailed as e:
            stored, refused = None, e
        previous = self.cache.put(username, roster)
        # What the user's clients hold, where no view of theirs is known:
        # what the server held, where it was read (our last answer, or what
        # the server changed since and told them, as Prosody does for a
        # subscription presence: those items are pushed again); else our
        # last answer.
        if stored is not None:
            self.sync.push(username, stored.roster, roster, stored.notBoth)
        else:
            self.sync.push(username, previous, roster, frozenset())
        self.log.info("refreshed {user}: {contacts} contacts", user=username, contacts=len(roster),
                      outcome="ok" if refused is None else "not stored")
        if refused is not None:
            raise refused
