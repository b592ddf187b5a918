# -*- test-case-name: tests.test_api,tests.test_component,tests.test_fetcher -*-
"""
Refreshes of many users at once: the usernames prepared in slices and
recorded as pending, a bounded number of users worked on at once
(L{rosteradmin.slots.AtMost}), and concurrent refreshes of one user
coalesced; each user's own refresh is the backend's
(L{rosteradmin.backend.RosterBackend}).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from rosteradmin.errors import FetchFailed, InvalidUsername, SyncFailed
from rosteradmin.interfaces import RefreshSummary
from rosteradmin.refusals import Refusals
from rosteradmin.roster import normaliseUsername
from rosteradmin.slicing import inSlices
from rosteradmin.slots import AtMost
from rosteradmin.state import SyncState

T = TypeVar("T")

#: Users of one refresh worked on at once (fetches and writes have their
#: own, smaller bounds; this one bounds the memory a huge refresh holds,
#: L{AtMost}).
REFRESH_WORKERS = 256

#: Runs work on a user under that user's lock.
Locked = Callable[..., Deferred[Any]]


class Refreshes:
    """
    Refreshes users, many at a time.

    @ivar count: How many refresh requests were handled.
    """

    log = Logger()

    def __init__(self, state: SyncState, clock: IReactorTime, locked: Locked,
                 refreshOne: Callable[[str, bool], Coroutine[Deferred[Any], Any, None]], refusals: Refusals) -> None:
        """
        @param state: Where the users of a refresh are pending until done.
        @param clock: Gives the reactor its turns between slices.
        @param locked: Runs a coroutine function under a user's lock.
        @param refreshOne: Refreshes one user (verifying what the server
            stores if told), under its lock.
        @param refusals: Whose roster was refused, for the summary.
        """
        self.state = state
        self.clock = clock
        self.locked = locked
        self.refreshOne = refreshOne
        self.refusals = refusals
        self.count = 0
        # Callers waiting for a user's queued refresh that has not started.
        self._queued: dict[str, list[Deferred[None]]] = {}

    def refresh(self, usernames: list[str], verify: bool = False) -> Deferred[RefreshSummary]:
        """
        Re-fetch each distinct user, then update the cache and the server and
        push the changes.  A failed fetch changes nothing for that user.

        @param verify: Read each server roster even when the state says it
            is current, and repair (and count) what changed behind our back.
        """
        return ensureDeferred(self._refresh(usernames, verify))

    async def _refresh(self, usernames: list[str], verify: bool) -> RefreshSummary:
        summary = RefreshSummary()
        distinct: dict[str, str] = {}
        # A refresh may name 100,000 users: preparing them and recording
        # them as pending is seconds of work, done in slices so that the
        # reactor serves logins meanwhile.
        async for part in inSlices(usernames, self.clock):
            prepared: list[str] = []
            for given in part:
                try:
                    username = normaliseUsername(given)
                except InvalidUsername as e:
                    summary.failures[given] = str(e)
                    continue
                if username not in distinct:
                    distinct[username] = given
                    prepared.append(username)
            self.state.addPending(prepared)
        self.count += 1

        async def refreshOne(username: str) -> None:
            given = distinct[username]
            try:
                if verify:
                    await self.locked(username, self.refreshOne, username, True)
                else:
                    await self.coalesced(username)
            except FetchFailed as e:
                summary.failures[given] = e.reason
            except SyncFailed as e:
                summary.failures[given] = f"fetched and served, but the server did not store it: {e}"
            except Exception:
                self.log.failure("refresh of {user} failed", user=username)
                summary.failures[given] = "internal error"
            else:
                tooLarge = self.refusals.refused.get(username)
                if tooLarge is not None:
                    summary.failures[given] = f"stored in the server, but clients cannot be sent it: {tooLarge}"
                else:
                    summary.updated += 1
            finally:
                # Finished and reported; an unsynced user stays pending
                # until its write succeeds.
                self.state.done(username)

        # A refresh of 100,000 users holds the work of a few hundred at a
        # time, not of all.
        await AtMost[str](REFRESH_WORKERS).run(distinct, lambda username: ensureDeferred(refreshOne(username)))
        return summary

    def coalesced(self, username: str) -> Deferred[None]:
        """
        Refresh one user, joining a refresh of that user that is queued and
        has not fetched yet: it will fetch after this request arrived, so
        its result answers this request too.  A refresh that is running
        (it may have fetched before the request arrived) is not joined: the
        request queues the next one.  So any number of concurrent refreshes
        of one user cost at most two fetches.
        """
        joined: Deferred[None] = Deferred()
        waiters = self._queued.get(username)
        if waiters is not None:
            waiters.append(joined)
            return joined
        waiters = self._queued[username] = [joined]

        async def run() -> None:
            # From now on, a new request cannot know whether this fetch
            # saw its change: it queues the next refresh.
            del self._queued[username]
            await self.refreshOne(username, False)

        def deliver(result: object) -> None:
            for waiter in waiters:
                if isinstance(result, Failure):
                    waiter.errback(result)
                else:
                    waiter.callback(None)

        self.locked(username, run).addBoth(deliver)
        return joined
