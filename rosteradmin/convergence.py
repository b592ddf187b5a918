# -*- test-case-name: tests.test_convergence,tests.test_quarantine,tests.test_state -*-
"""
Bringing the server back to what is served, in the background, after
something kept it behind.

One entry for every way a user's server roster is found behind: the
refreshes and writes a previous run left unfinished (resumed once, when
the server first takes writes), the users whose write failed (re-synced
when the server takes writes again, or, for a user whose writes were
parked, when that user's may be tried again), a user found unsynced as a
client asks for its roster, and a user online before this connection
(caught up by a refresh).

Re-syncs share one bound over every event (L{AtMost}), and a user whose
re-sync is queued or running is not queued again: two restorations in a
row neither double the work at once nor write anyone twice.  A user whose
client asks for the roster goes first, even if a pass queued it already:
that entry then finds the user written (or writing) and does nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from rosteradmin.refreshes import Locked, Refreshes
from rosteradmin.serverrosters import ServerRosters
from rosteradmin.slots import AtMost
from rosteradmin.state import SyncState

#: Users re-synced into the server at once, over every event (L{AtMost}):
#: their writes have their own bound and pacing; this keeps the users
#: waiting for their turn from holding their locks meanwhile.
RESYNC_CONCURRENCY = 8


class Convergence:
    """
    Re-syncs, resumes and catches up users, in the background.

    @ivar resyncing: Users whose re-sync is queued or running.
    @ivar started: Users whose re-sync is running.
    """

    log = Logger()

    def __init__(self, state: SyncState, server: ServerRosters, refreshing: Refreshes, locked: Locked,
                 canSync: Callable[[], bool], background: Callable[[Deferred[Any], str, str], None]) -> None:
        """
        @param state: Who is pending or unsynced.
        @param server: Writes a user's cached roster (L{ServerRosters.resync}).
        @param refreshing: Refreshes users (fetch, write, push).
        @param locked: Runs a coroutine function under a user's lock.
        @param canSync: Whether the server takes writes now.
        @param background: Lets work on a user run on its own, logging how
            it failed (what, whose).
        """
        self.state = state
        self.server = server
        self.refreshing = refreshing
        self.locked = locked
        self.canSync = canSync
        self.background = background
        self.resyncing: set[str] = set()
        self.started: set[str] = set()
        self._resyncs: AtMost[str] = AtMost(RESYNC_CONCURRENCY)
        self._resumePending = True

    def writesRestored(self) -> None:
        """
        The server takes writes (again): the first time, resume what a
        previous run left, which refreshes every unsynced user too (they
        are pending); afterwards, re-sync every unsynced user.
        """
        if not self.canSync():
            return
        if self._resumePending:
            self._resume()
        else:
            self.resync(sorted(self.state.unsynced))

    def resync(self, usernames: Iterable[str], first: bool = False) -> None:
        """
        Write the cached rosters of these users that are unsynced, and
        push the changes, within the bound; a user already queued keeps
        its place, unless C{first}.

        @param first: Before the users already queued, these included (a
            client asked for the roster).
        """
        if not self.canSync():
            return
        skipped = self.started if first else self.resyncing
        new = [username for username in usernames
               if username in self.state.unsynced and username not in skipped]
        if not new:
            return
        if not first:
            self.log.info("re-syncing {count} rosters into the server", count=len(new))
        self.resyncing.update(new)
        self._resyncs.run(new, self._resyncOne, first=first)

    def catchUp(self, username: str) -> None:
        """
        Refresh a user online before this connection, joining a refresh of
        it that is queued (L{Refreshes.coalesced}).
        """
        self.background(self.refreshing.coalesced(username), "catch-up", username)

    def _resyncOne(self, username: str) -> Deferred[None]:
        if username in self.started:
            # Queued twice (a client's turn went first): that one runs.
            return succeed(None)
        self.started.add(username)

        def finished(_: object) -> None:
            self.started.discard(username)
            self.resyncing.discard(username)

        d = self.locked(username, self.server.resync, username)
        self.background(d, "resync", username)
        return d.addBoth(finished)

    def _resume(self) -> None:
        """
        Finish, once after start, the refreshes and writes a previous run
        accepted and did not finish (it crashed or was stopped meanwhile):
        the web app need not ask again.
        """
        self._resumePending = False
        pending = self.state.pending()
        if not pending:
            return
        self.log.info("resuming {count} unfinished refreshes and writes from {path}",
                      count=len(pending), path=self.state.path)
        d = self.refreshing.refresh(pending)
        d.addCallback(lambda summary: self.log.info(
            "resumed refreshes: {updated} updated, {errors} errors", updated=summary.updated,
            errors=summary.errors))
        self.background(d, "resume", f"{len(pending)} users")
