# -*- test-case-name: tests.test_api,tests.test_health -*-
"""
What C{/healthz} and C{/metrics} show, as one value taken at one moment.

The two edges read a L{ServiceSnapshot}, never the parts behind it: each
part gives its own figures as a frozen value (the backend a
L{BackendSnapshot}, the XMPP side a L{StreamSnapshot}, the full sync a
L{SyncSnapshot}), and L{Snapshots} takes them together.  So neither edge
reaches into the cache, the fetcher, the sync or the state, and the
constructors of the edges take one callable instead of a collaborator per
figure.  The values are copies: what a request renders does not change
under it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class BackendSnapshot:
    """
    The rosters: the cache, the fetches, the writes into the server and
    the state (L{rosteradmin.backend.RosterBackend.snapshot}).

    @ivar cacheCharge: What the cached rosters count against
        C{--cache-max-contacts}.
    @ivar refused: Why each refused user's roster cannot be stored or
        sent, by username.
    @ivar stanzasRefused: Stanzas not sent for being over the server's
        stanza limit, by what they were.
    @ivar parked: Users whose writes are held back after coinciding with
        stream losses, with why.
    @ivar promised: Roster versions the server took as promises.
    @ivar driftRepaired: Server roster items repaired, by cause.
    @ivar stateProblem: Why the state file does not take writes, or
        C{None}.
    @ivar syncRefusal: Why the server cannot take our roster writes,
        though connected and granting access, or C{None}.
    @ivar stuck: Why work on rosters makes no progress, or C{None}.
    @ivar saturated: Why the memory kept of users is at or past a bound,
        one line each.
    """

    cachedUsers: int
    cachedContacts: int
    cacheCharge: int
    cacheHits: int
    cacheMisses: int
    cacheEvictions: int
    fetchesInFlight: int
    fetchFailures: int
    refreshes: int
    unsyncedUsers: int
    refused: Mapping[str, str]
    stanzasRefused: Mapping[str, int]
    parked: Mapping[str, str]
    promised: int
    driftRepaired: Mapping[str, int]
    pendingUsers: int
    stateUnsaved: int
    stateProblem: str | None
    syncRefusal: str | None
    stuck: str | None
    saturated: tuple[str, ...]


@dataclass(frozen=True)
class StreamSnapshot:
    """
    The XMPP side: the connection, the queries, the online clients and
    their pushes (L{rosteradmin.component.RosterComponent.snapshot}).

    @ivar lastError: The last stream error or connection failure, or
        C{None}.
    @ivar queriesRefused: Roster queries refused to users who sent too many
        at once.
    @ivar onlineResources: Clients known online, from presence.
    @ivar delegated: Whether the server delegates clients' roster queries
        to us now.
    @ivar delegationMissing: Why clients' roster queries do not reach us
        (the server did not delegate them), or C{None}.
    @ivar interestedResources: Clients pushed roster changes.
    @ivar devicesGivenUp: Clients given up with roster pushes unanswered.
    """

    connected: bool
    lastError: str | None
    queriesAnswered: int
    queriesRefused: int
    onlineResources: int
    delegated: bool
    delegationMissing: str | None
    interestedResources: int
    rosterPushes: int
    devicesGivenUp: int


@dataclass(frozen=True)
class SyncSnapshot:
    """
    The current or last full sync or reconciliation pass
    (L{rosteradmin.fullsync.FullSync.snapshot}): its counts, not its
    failures.
    """

    kind: str
    running: bool
    listed: int
    listingDone: bool
    synced: int
    failed: int
    error: str | None


@dataclass(frozen=True)
class ServiceSnapshot:
    """
    Everything C{/healthz} and C{/metrics} show, taken together.

    @ivar sync: The current or last full sync, or C{None} before the first.
    @ivar kicks: Kick requests by HTTP status.
    @ivar onlineChecked: Server rosters of online users the online check
        has read back.
    """

    backend: BackendSnapshot
    stream: StreamSnapshot
    sync: SyncSnapshot | None
    kicks: Mapping[str, int]
    onlineChecked: int


class Snapshots:
    """
    Takes L{ServiceSnapshot}s: each part's figures, read in one call.  The
    composition root (L{rosteradmin.tap.makeAPI}) gives it where each part's
    figures come from.
    """

    def __init__(self, backend: Callable[[], BackendSnapshot], stream: Callable[[], StreamSnapshot],
                 sync: Callable[[], SyncSnapshot | None], kicks: Mapping[str, int],
                 onlineChecked: Callable[[], int] = lambda: 0) -> None:
        """
        @param kicks: Kicks by HTTP status, as the kick resource counts them.
        @param onlineChecked: How many server rosters the online check has
            read back, if it runs.
        """
        self._backend = backend
        self._stream = stream
        self._sync = sync
        self._kicks = kicks
        self._onlineChecked = onlineChecked

    def __call__(self) -> ServiceSnapshot:
        """
        Read every part's figures now.
        """
        return ServiceSnapshot(self._backend(), self._stream(), self._sync(), dict(self._kicks),
                               self._onlineChecked())
