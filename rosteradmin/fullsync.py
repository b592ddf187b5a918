# -*- test-case-name: tests.test_fullsync -*-
"""
Full sync and reconciliation: make the server hold every user's web-app
roster before anyone logs in, and keep it so.

A user's first login is the expensive and fragile moment: the server must
already route presence between the contacts the web app lists, or the
presence the client sends before its roster get reaches nobody.  So at
start-up (with C{--users-url}) and on demand, every user is walked and
converged: fetched, compared with the state and the server, written where
they differ.  Then every C{--reconcile-interval} the walk is done again with
the server's rosters read back even where the state says they are current,
so that what changed behind our back (a client's subscription presence, an
admin tool, a lost write) is repaired and counted.

Users are walked a page at a time, each page as one background refresh:
logins go first (their work is urgent), the privileged requests are
bounded and paced by the server's reply latency, and memory holds one page.

One pass runs at a time.  Users named while one runs (a user the web app
has just created) join it: their refresh starts at once, and the pass ends
once they are done too.  A pass can be cancelled: it reads no further page
and starts no further batch, and a full pass cancelled, or stopped on a
users list that does not end, is not started again after a restart.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, DeferredList, ensureDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from rosteradmin.backend import RosterBackend
from rosteradmin.slicing import inSlices
from rosteradmin.snapshot import SyncSnapshot
from rosteradmin.users import UserLister, UsersListEndless, UsersUnavailable

#: Users of one batch of a full sync: a page of the users list (which may
#: hold a million names) is cut into batches of this size, each one
#: refresh.  Not a bound on work at once, which is the refresh's
#: (L{rosteradmin.refreshes.REFRESH_WORKERS}): the unit of what a pass
#: records as pending (a crash leaves one batch to resume, not a page), of
#: its progress and of its cancellation (the batch under way finishes).
BATCH_SIZE = 500

#: Failures kept to show in the progress (the counts are complete).
MAX_FAILURES_SHOWN = 20

#: The error of a cancelled pass.
CANCELLED = "cancelled (DELETE /roster_admin/sync)"


@dataclass
class SyncProgress:
    """
    Where a full sync or reconciliation pass stands.

    @ivar kind: C{"full"} (all users of the users list), C{"users"} (some
        users, on demand) or C{"reconcile"} (all, read back).
    @ivar listed: Users listed so far, and users who joined the pass by
        name; the total once C{listingDone}.
    @ivar error: Why the pass stopped before the end of its users
        (L{CANCELLED} as soon as it is cancelled).
    """

    kind: str
    startedAt: float
    listed: int = 0
    listingDone: bool = False
    synced: int = 0
    failed: int = 0
    failures: dict[str, str] = field(default_factory=dict)
    finishedAt: float | None = None
    error: str | None = None

    @property
    def running(self) -> bool:
        return self.finishedAt is None

    @property
    def cancelled(self) -> bool:
        return self.error == CANCELLED

    def toJSON(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "running": self.running, "listed": self.listed,
            "listing_done": self.listingDone, "synced": self.synced, "failed": self.failed,
            "failures": self.failures, "started_at": self.startedAt, "finished_at": self.finishedAt,
            "error": self.error,
        }


class FullSync(Service):
    """
    Runs full syncs and reconciliation passes, one at a time.

    @ivar current: The pass running now, or the last one.
    @ivar passes: Passes finished, by kind.
    """

    log = Logger()

    def __init__(self, backend: RosterBackend, lister: UserLister | None, clock: IReactorTime,
                 atStart: bool, reconcileInterval: float) -> None:
        """
        @param lister: The web app's users (C{--users-url}), if any; without
            it, full passes walk the users whose server roster the state
            knows.
        @param atStart: Run a full sync once the server first takes writes.
        @param reconcileInterval: Seconds between reconciliation passes.
        """
        self.backend = backend
        self.lister = lister
        self.clock = clock
        self.atStart = atStart
        self.reconcileInterval = reconcileInterval
        self.current: SyncProgress | None = None
        self._loop: LoopingCall | None = None
        self._running: Deferred[None] | None = None
        # The next batch of the running pass, while it is awaited: a page
        # of the users list being read or prepared, which a cancel stops.
        self._waiting: Deferred[list[str]] | None = None
        # The refreshes of users who joined the running pass by name.
        self._joined: list[Deferred[None]] = []

    def startService(self) -> None:
        super().startService()
        interrupted = self.backend.state.interruptedSync()
        if interrupted is not None:
            self.log.info("the {kind} sync of the previous run did not finish: starting it again", kind=interrupted)
            self.backend.writable().addCallback(lambda _: self.start(interrupted))
        elif self.atStart and self.lister is not None:
            self.backend.writable().addCallback(lambda _: self.start("full"))
        self._loop = LoopingCall(self._reconcile)
        self._loop.clock = self.clock
        self._loop.start(self.reconcileInterval, now=False)

    def stopService(self) -> None:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()

    def nextReconciliation(self) -> float | None:
        """
        Seconds until the next reconciliation pass (it refreshes every user and reads each server roster back), or C{None} when none is
        scheduled (the service is not running).
        """
        loop = self._loop
        if loop is None or not loop.running or loop.call is None:
            return None
        return max(0.0, loop.call.getTime() - self.clock.seconds())

    async def accept(self, usernames: list[str]) -> tuple[SyncProgress, bool]:
        """
        Sync these users: record them as pending (so that they are synced
        even if this process dies first), in slices, as 100,000 of them
        are seconds of SQLite work; then L{start} a pass of them, or join
        the running one.

        @return: The pass, and whether they joined one that was running.
        """
        async for part in inSlices(usernames, self.clock):
            self.backend.state.addPending(part)
        joined = self.current is not None and self.current.running
        return self.start("users", usernames, recorded=True), joined

    def start(self, kind: str, usernames: list[str] | None = None, recorded: bool = False) -> SyncProgress:
        """
        Start a pass, unless one runs: then that one's progress, which the
        C{usernames}, if given, join: they are refreshed at once, counted
        in its progress, and it ends once they are done too.

        @param kind: C{"full"}, C{"reconcile"}, or C{"users"} with
            C{usernames}.
        @param recorded: The C{usernames} are recorded as pending already
            (L{accept}).
        """
        if usernames is not None and not recorded:
            # Accepted: they are synced even if this process dies first.
            self.backend.state.addPending(usernames)
        if self.current is not None and self.current.running:
            if usernames is not None:
                self._join(self.current, usernames)
            return self.current
        progress = self.current = SyncProgress(kind, time.time())
        self.log.info("{kind} sync started", kind=kind)
        if usernames is None:
            self.backend.state.syncRunning(kind)
        self._running = ensureDeferred(self._run(progress, usernames))
        self._running.addErrback(lambda f: self.log.failure("{kind} sync failed", f, kind=kind))
        return progress

    def cancel(self) -> SyncProgress | None:
        """
        Cancel the running pass: the page of the users list being read is
        dropped, no further batch starts, the batch being refreshed
        finishes (its users' work is under way), and users who joined it
        by name are still synced.  A full pass cancelled is not started
        again after a restart.

        @return: The pass cancelled, or C{None} if none runs.
        """
        progress = self.current
        if progress is None or not progress.running:
            return None
        if not progress.cancelled:
            self.log.info("{kind} sync cancelled: {listed} listed, {synced} synced so far", kind=progress.kind,
                          listed=progress.listed, synced=progress.synced)
            progress.error = CANCELLED
            if self._waiting is not None:
                self._waiting.cancel()
        return progress

    def snapshot(self) -> SyncSnapshot | None:
        """
        What C{/healthz} and C{/metrics} show of the current or last pass:
        its counts, not its failures (C{GET /roster_admin/sync} shows
        those); C{None} before the first.
        """
        current = self.current
        if current is None:
            return None
        return SyncSnapshot(current.kind, current.running, current.listed, current.listingDone, current.synced,
                            current.failed, current.error)

    def _join(self, progress: SyncProgress, usernames: list[str]) -> None:
        self.log.info("{count} users join the running {kind} sync", count=len(usernames), kind=progress.kind)
        progress.listed += len(usernames)
        d = ensureDeferred(self._refreshBatch(progress, usernames, verify=False))
        self._joined.append(d)
        d.addErrback(lambda f: self.log.failure("sync of the users who joined failed", f))
        d.addBoth(lambda result: self._joined.remove(d))

    def _reconcile(self) -> None:
        if self.current is None or not self.current.running:
            self.start("reconcile")

    async def _run(self, progress: SyncProgress, usernames: list[str] | None) -> None:
        started = time.monotonic()
        batches = self._batches(progress, usernames)
        endless = False
        try:
            while not progress.cancelled:
                self._waiting = ensureDeferred(_next(batches))
                try:
                    batch = await self._waiting
                except StopAsyncIteration:
                    break
                finally:
                    self._waiting = None
                await self._refreshBatch(progress, batch, verify=progress.kind == "reconcile")
        except (UsersUnavailable, CancelledError) as e:
            if not progress.cancelled:
                if isinstance(e, CancelledError):
                    raise
                progress.error = str(e)
                endless = isinstance(e, UsersListEndless)
                self.log.error("{kind} sync stopped: {why}", kind=progress.kind, why=str(e))
        finally:
            await batches.aclose()
        # Users named while the pass ran are synced, whatever became of it.
        while self._joined:
            await DeferredList(list(self._joined))
        progress.finishedAt = time.time()
        # A pass stopped on an error of the moment (the web app down) is
        # started again after a restart; not one the operator cancelled, or
        # a users list that would not end the next time either.
        if usernames is None and (progress.error is None or progress.cancelled or endless):
            self.backend.state.syncRunning(None)
        self.log.info("{kind} sync done in {elapsed:.1f} s: {synced} synced, {failed} failed of {listed}",
                      kind=progress.kind, elapsed=time.monotonic() - started, synced=progress.synced,
                      failed=progress.failed, listed=progress.listed)

    async def _refreshBatch(self, progress: SyncProgress, batch: list[str], verify: bool) -> None:
        summary = await self.backend.refresh(batch, verify=verify)
        progress.synced += summary.updated
        progress.failed += summary.errors
        for user, why in summary.failures.items():
            if len(progress.failures) < MAX_FAILURES_SHOWN:
                progress.failures[user] = why

    async def _batches(self, progress: SyncProgress,
                       usernames: list[str] | None) -> AsyncGenerator[list[str], None]:
        """
        The users to converge, in batches, counting each page as listed as
        soon as it is read (so the total is known once the last is).
        """
        async for page, last in self._pages(usernames):
            progress.listed += len(page)
            progress.listingDone = last
            for start in range(0, len(page), BATCH_SIZE):
                yield page[start:start + BATCH_SIZE]
        progress.listingDone = True

    async def _pages(self, usernames: list[str] | None) -> AsyncIterator[tuple[list[str], bool]]:
        if usernames is not None:
            yield usernames, True
        elif self.lister is not None:
            async for page in self.lister.pages():
                yield page
        else:
            yield self.backend.state.knownUsers(), True


async def _next(batches: AsyncIterator[list[str]]) -> list[str]:
    """
    The next batch, as a coroutine (which a Deferred can wrap and cancel).

    @raise StopAsyncIteration: There is none.
    """
    return await batches.__anext__()
