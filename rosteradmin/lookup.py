# -*- test-case-name: tests.test_inspection -*-
"""
What the backend's parts hold of one user, and its rosters read now: the
backend's side of one user's whole picture (L{rosteradmin.inspection}).

L{UserLookup} is owned by the backend, given its parts at construction as
L{rosteradmin.refreshes.Refreshes} is, and hands out values
(L{rosteradmin.snapshot.UserReading}), so that the inspection reads no
part itself.  It changes nothing: the web app's roster is fetched and the
server's read, neither cached nor written.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from rosteradmin.cache import RosterCache
from rosteradmin.errors import FetchFailed, NotConnected, SyncFailed, UserUnknown
from rosteradmin.fetcher import RosterFetcher
from rosteradmin.interfaces import IRosterSync
from rosteradmin.promises import Promises
from rosteradmin.refusals import Refusals
from rosteradmin.snapshot import UserReading, UserSnapshot
from rosteradmin.state import SyncState

T = TypeVar("T")


class UserLookup:
    """
    Reads one user for the inspection.
    """

    def __init__(self, cache: RosterCache, fetcher: RosterFetcher, sync: IRosterSync, state: SyncState,
                 promises: Promises, refusals: Refusals,
                 locked: Callable[..., Deferred[Any]]) -> None:
        """
        @param locked: Runs a coroutine function under a user's lock (the
            backend's).
        """
        self.cache = cache
        self.fetcher = fetcher
        self.sync = sync
        self.state = state
        self.promises = promises
        self.refusals = refusals
        self.locked = locked

    def held(self, username: str, syncedAt: float | None = None) -> UserSnapshot:
        """
        What is held of the user now: its cache entry, what the state,
        the promises and the sync keep of it.

        @param syncedAt: When the storage recorded the server's version,
            if read.
        """
        state = self.state
        return UserSnapshot(
            cached=self.cache.peek(username), serverVersion=state.serverVersion(username), syncedAt=syncedAt,
            pendingSince=state.pendingSince(username), unsynced=username in state.unsynced,
            refused=self.refusals.refused.get(username), parked=self.sync.parked.get(username),
            verified=self.promises.verifiedVersion(username), promised=self.promises.promisedVersion(username),
            doubted=state.doubtedVersion(username), unpushed=state.unpushed(username), canSync=self.sync.canSync(),
            syncRefusal=self.sync.syncRefusal or self.sync.unreachable)

    def read(self, username: str, deadline: float) -> Deferred[UserReading]:
        """
        Fetch the user's roster from the web app and read what the server
        stores, both now and under the user's lock (no write of the
        user's in flight, so what differs is not a write half done), with
        what is held of the user at that moment.  The fetch and the read
        are urgent: an operator waits, as a client does.

        @param deadline: Seconds to wait, for the user's lock too: past
            them, the reading says the rosters were not read, with what is
            held then.
        """
        locked: Deferred[UserReading] = self.locked(username, self._read, username, deadline)
        notRead = f"no answer within {deadline:g} s"
        return _within(locked, deadline, self.fetcher.clock,
                       lambda: UserReading(None, notRead, False, None, notRead, self.held(username), inTime=False))

    async def _read(self, username: str, deadline: float) -> UserReading:
        reading = self.sync.readStored(username, True) if self.sync.canSync() else None
        webApp, webAppProblem, unknown = None, None, False
        try:
            webApp = await self.fetcher.fetch(username, True)
        except FetchFailed as e:
            webAppProblem, unknown = e.reason, isinstance(e, UserUnknown)
        server, serverProblem = None, None
        if reading is None:
            serverProblem = (self.sync.syncRefusal or self.sync.unreachable
                             or "not connected to the server, or no roster access granted")
        else:
            try:
                server = await reading
            except (SyncFailed, NotConnected) as e:
                serverProblem = str(e) or type(e).__name__
        syncedAt = await self.state.writtenAt(username, deadline).addErrback(lambda failure: None)
        return UserReading(webApp, webAppProblem, unknown, server, serverProblem, self.held(username, syncedAt),
                           inTime=True)


def _within(d: Deferred[T], seconds: float, clock: IReactorTime, late: Callable[[], T]) -> Deferred[T]:
    """
    C{d}'s result, or C{late()} once C{seconds} have passed without one.
    C{d} is not cancelled: it runs under the user's lock, behind work
    whose own deadlines end it, and its late result is dropped.
    """
    out: Deferred[T] = Deferred()

    def expire() -> None:
        if not out.called:
            out.callback(late())

    timer = clock.callLater(seconds, expire)

    def done(result: T | Failure) -> None:
        if timer.active():
            timer.cancel()
        if out.called:
            return None  # too late: dropped, a failure too
        if isinstance(result, Failure):
            out.errback(result)
        else:
            out.callback(result)
        return None

    d.addBoth(done)
    return out

