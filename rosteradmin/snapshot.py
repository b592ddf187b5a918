# -*- test-case-name: tests.test_api,tests.test_health,tests.test_inspection -*-
"""
What C{/healthz} and C{/metrics} show, as one value taken at one moment;
and what the parts hold of one user, for C{GET /roster_admin/users/<username>}
(L{rosteradmin.inspection}).

The two edges read a L{ServiceSnapshot}, never the parts behind it: each
part gives its own figures as a frozen value (the backend a
L{BackendSnapshot}, the XMPP side a L{StreamSnapshot}, the full sync a
L{SyncSnapshot}), and L{Snapshots} takes them together.  So neither edge
reaches into the cache, the fetcher, the sync or the state, and the
constructors of the edges take one callable instead of a collaborator per
figure.  The values are copies: what a request renders does not change
under it.

One user's values (L{UserSnapshot}, L{UserReading}, L{ResourcesSnapshot})
are frozen copies in the same way: the inspection reads them, never the
cache, the state, the promises or the devices behind them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from rosteradmin.roster import Roster, StoredRoster


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
        though connected and granting access (it refuses them, or
        ejabberd's API cannot be reached), or C{None}.
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
    @ivar delegationExpected: Whether the server is meant to delegate them
        (C{--delegation expected}) or to answer them itself (C{none}).
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
    delegationExpected: bool
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
class EventsSnapshot:
    """
    The outbox of events for the web app
    (L{rosteradmin.events.EventDelivery.snapshot}).

    @ivar queued: Events waiting for the web app.
    @ivar oldestAge: Seconds the oldest of them has waited, or C{None}.
    @ivar delivered: Events the web app accepted since start.
    @ivar dropped: Events not kept since start: the outbox was full, or
        the state did not take them.
    @ivar lastTransaction: The id of the last transaction accepted.
    @ivar problem: Why the web app has not taken events for longer than
        it should, or C{None}.
    """

    queued: int
    oldestAge: float | None
    delivered: int
    dropped: int
    lastTransaction: int | None
    problem: str | None


@dataclass(frozen=True)
class ServiceSnapshot:
    """
    Everything C{/healthz} and C{/metrics} show, taken together.

    @ivar sync: The current or last full sync, or C{None} before the first.
    @ivar kicks: Kick requests by HTTP status.
    @ivar onlineChecked: Server rosters of online users the online check
        has read back.
    @ivar role: This process's role, C{"leader"} (always, on an SQLite
        state) or C{"standby"} (L{rosteradmin.leadership}).
    @ivar roleSince: When (UNIX time) it took that role.
    @ivar roleProblem: Why leadership cannot be taken or confirmed (the
        state's database cannot be reached), or C{None}.
    @ivar events: The outbox of events for the web app, or C{None}
        without C{--events-url}.
    """

    backend: BackendSnapshot
    stream: StreamSnapshot
    sync: SyncSnapshot | None
    kicks: Mapping[str, int]
    onlineChecked: int
    role: str = "leader"
    roleSince: float = 0.0
    roleProblem: str | None = None
    events: EventsSnapshot | None = None


class Role(Protocol):
    """
    What the snapshots show of leadership
    (L{rosteradmin.leadership.Leadership}).
    """

    @property
    def role(self) -> str: ...

    @property
    def since(self) -> float: ...

    @property
    def problem(self) -> str | None: ...


class Snapshots:
    """
    Takes L{ServiceSnapshot}s: each part's figures, read in one call.  The
    composition root (L{rosteradmin.tap.makeAPI}) gives it where each part's
    figures come from.
    """

    def __init__(self, backend: Callable[[], BackendSnapshot], stream: Callable[[], StreamSnapshot],
                 sync: Callable[[], SyncSnapshot | None], kicks: Mapping[str, int],
                 onlineChecked: Callable[[], int] = lambda: 0, role: Role | None = None,
                 events: Callable[[], EventsSnapshot | None] = lambda: None) -> None:
        """
        @param kicks: Kicks by HTTP status, as the kick resource counts them.
        @param onlineChecked: How many server rosters the online check has
            read back, if it runs.
        @param role: This process's leadership; by default it leads since
            the snapshots were made.
        @param events: The outbox of events, if events are sent.
        """
        self._role = role if role is not None else _Leader(time.time())
        self._backend = backend
        self._stream = stream
        self._sync = sync
        self._kicks = kicks
        self._onlineChecked = onlineChecked
        self._events = events

    def __call__(self) -> ServiceSnapshot:
        """
        Read every part's figures now.
        """
        return ServiceSnapshot(self._backend(), self._stream(), self._sync(), dict(self._kicks),
                               self._onlineChecked(), self._role.role, self._role.since, self._role.problem,
                               self._events())


@dataclass(frozen=True)
class UserSnapshot:
    """
    What the backend holds of one user, read at once
    (L{rosteradmin.lookup.UserLookup.held}).

    @ivar cached: The roster served to the user's clients, or C{None}
        when not cached (the next login fetches it).
    @ivar serverVersion: The version of the roster the state records the
        server was last made to hold, or C{None} when unknown.
    @ivar syncedAt: When the state's storage recorded that version (the
        server's roster last read back or written), in seconds since the
        epoch, or C{None} when not known.
    @ivar pendingSince: When the user became pending (its server roster
        may be behind: a refresh accepted and not finished, a write that
        failed), in seconds since the epoch, or C{None}.
    @ivar unsynced: A write of the cached roster failed in this run: it is
        written once the server takes writes.
    @ivar refused: Why the web app's roster is refused (too large for the
        server's stanza limit), or C{None}.
    @ivar parked: Why the user's writes are held back after coinciding
        with stream losses, or C{None}.
    @ivar verified: The version the server's stored roster was read back
        or written with in this run, or C{None}.
    @ivar promised: The version promised to the server on this
        connection (it answers the user's roster gets itself while it
        holds), or C{None}.
    @ivar doubted: The version under which a client may show something
        else (a refused edit): it is answered in full, or C{None}.
    @ivar unpushed: Contacts whose pushes some device of the user has not
        taken yet.
    @ivar canSync: Whether the server takes roster reads and writes now.
    @ivar syncRefusal: Why it does not, though connected (it refuses, or
        ejabberd's API cannot be reached), or C{None}.
    """

    cached: Roster | None
    serverVersion: str | None
    syncedAt: float | None
    pendingSince: float | None
    unsynced: bool
    refused: str | None
    parked: str | None
    verified: str | None
    promised: str | None
    doubted: str | None
    unpushed: frozenset[str]
    canSync: bool
    syncRefusal: str | None


@dataclass(frozen=True)
class UserReading:
    """
    One user's rosters read now, under the user's lock (no write of the
    user's in flight), and what the backend held of the user then
    (L{rosteradmin.lookup.UserLookup.read}).

    @ivar webApp: The web app's roster, or C{None} when the fetch failed.
    @ivar webAppProblem: Why the fetch failed, or C{None}.
    @ivar webAppUnknown: The web app answered 404: it does not know the
        user.
    @ivar server: What the server stores, or C{None} when not read.
    @ivar serverProblem: Why it was not read, or C{None}.
    @ivar inTime: The rosters were read within the deadline (else
        neither is known, and C{held} is what was held then).
    """

    webApp: Roster | None
    webAppProblem: str | None
    webAppUnknown: bool
    server: StoredRoster | None
    serverProblem: str | None
    held: UserSnapshot
    inTime: bool


@dataclass(frozen=True)
class DeviceSnapshot:
    """
    One client of a user that is pushed roster changes, and what it shows
    (L{rosteradmin.devices.DeviceViews.describe}).

    @ivar jid: Its full JID.
    @ivar available: It sent available presence (else it only asked for
        its roster).
    @ivar holds: The version of the roster it holds but for C{dirty}, or
        C{None} when not known.
    @ivar dirty: Contacts whose state on it is unknown: they are pushed.
    @ivar sending: A batch of pushes to it is unanswered.
    @ivar failures: Its failed batches in a row.
    """

    jid: str
    available: bool
    holds: str | None
    dirty: frozenset[str]
    sending: bool
    failures: int


@dataclass(frozen=True)
class ResourcesSnapshot:
    """
    A user's online resources as the XMPP side knows them
    (L{rosteradmin.component.RosterComponent.resources}).

    @ivar presenceShared: The server shares its users' presences with us
        (XEP-0356 C{presence}): without it, who is online is not known.
    @ivar online: The full JIDs online, from presence.
    @ivar devices: The clients pushed roster changes.
    """

    presenceShared: bool
    online: tuple[str, ...]
    devices: tuple[DeviceSnapshot, ...]


@dataclass(frozen=True)
class _Leader:
    """
    The role of a process that leads throughout.
    """

    since: float
    role: str = "leader"
    problem: str | None = None
