# -*- test-case-name: tests.test_config,tests.test_web,tests.integration.test_twistd -*-
"""
C{twistd rosteradmin}: the service tree, composed from its parts.

twistd's C{ServiceMaker} (C{twisted/plugins/rosteradmin_plugin.py}) reads
L{Options} (L{rosteradmin.options}) and L{makeService} from this module.
How start-up ends when it cannot succeed, and the top service, are
L{rosteradmin.startup}'s; the open file limit is L{rosteradmin.filelimit}'s.

One process on an SQLite state (or none) always leads: its parts
(L{leaderTerm}) start with it.  On a PostgreSQL state several processes
may share the state and one leads (L{rosteradmin.leadership}): each
builds the leader's parts afresh every time it starts leading, over the
state opened then, and meanwhile serves the API of a standby
(L{standbyRoot}), whose refreshes, syncs and kicks are recorded for the
leader (L{rosteradmin.handoff}).  What the leader does with the requests
standbys recorded is L{rosteradmin.applier}'s.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.application import service
from twisted.internet import endpoints
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.threads import deferToThread
from twisted.web.client import HTTPConnectionPool
from twisted.web.resource import Resource
from twisted.web.server import Site

from rosteradmin.api import KickRoute, LeaderCalls, buildRoot
from rosteradmin.applier import RequestApplier
from rosteradmin.attempts import Attempts, Record
from rosteradmin.backend import RosterBackend
from rosteradmin.cache import RosterCache
from rosteradmin.component import ConnectionMonitor, Handlers, RosterComponent
from rosteradmin.config import Config, eventSecrets
from rosteradmin.delegation import DelegationHandler
from rosteradmin.devices import DeviceViews
from rosteradmin.disco import DiscoHandler
from rosteradmin.ejabberdapi import EjabberdAPISync
from rosteradmin.ejabberdsessions import EjabberdSessions
from rosteradmin.events import EventDelivery
from rosteradmin.fairness import QueryGate
from rosteradmin.fetcher import RosterFetcher
from rosteradmin.fullsync import FullSync
from rosteradmin.handoff import Handoff
from rosteradmin.httpclient import makeHTTPClient
from rosteradmin.inspection import Inspector, Schedule
from rosteradmin.intake import Intake
from rosteradmin.interfaces import IOnlineUsers, IRosterSync
from rosteradmin.leadership import AlwaysLeader, LeaderOnly, Leadership, Term, Timings
from rosteradmin.metrics import FetchLatency, Metrics
from rosteradmin.muc import RoomKicker
from rosteradmin.onlinecheck import OnlineCheck
from rosteradmin.outbox import Outbox
from rosteradmin.options import Options as Options  # twistd reads it here
from rosteradmin.permissions import PermissionTracker
from rosteradmin.presence import PresenceTracker
from rosteradmin.privilege import PrivilegeHandler
from rosteradmin.roster import NS_ROSTER
from rosteradmin.rosterserver import RosterServer
from rosteradmin.slots import MAX_SYNC_IN_FLIGHT
from rosteradmin.snapshot import Role, Snapshots
from rosteradmin.stanzalimit import StanzaLimit
from rosteradmin.startup import EX_CONFIG, SequentialService, refuseToStart
from rosteradmin.state import StateError, SyncState, isPostgreSQL, openStorage
from rosteradmin.users import UserLister
from rosteradmin.web import Drain, DrainingService, makeSite


@dataclass(frozen=True)
class Parts:
    """
    The wired parts of one service, with the handles the HTTP API (and the
    tests) need.

    @ivar fetchLatency: The fetch histogram the fetcher reports to, for the
        metrics.
    @ivar online: Who is online: the presence tracker, or with ejabberd's
        API, its session list (a service of its own).
    """

    backend: RosterBackend
    component: RosterComponent
    fetchLatency: FetchLatency
    online: IOnlineUsers


def chooseRosterSync(config: Config, privileges: PrivilegeHandler, clock: Any) -> IRosterSync:
    """
    How the backend writes rosters into the server and pushes their changes:
    the one place that chooses an L{IRosterSync}.  By default XEP-0356 on
    the component stream, the privilege handler; with C{--roster-sync
    ejabberd-api}, ejabberd's HTTP API, with an HTTP client of its own.

    @param privileges: The privilege handler, already on the component
        stream; whichever implementation writes, it is the one told of
        users coming online and of roster access (its permission and
        presence trackers stay on the stream).
    @param clock: The reactor (the HTTP API's client connects with it).
    """
    if config.roster_sync != "ejabberd-api" or config.ejabberd_api_url is None:
        return privileges
    # One kept connection per call in flight.
    http, pool = makeHTTPClient(clock, config.iq_timeout, MAX_SYNC_IN_FLIGHT)
    return EjabberdAPISync(config.ejabberd_api_url, config.domain, clock, http, timeout=config.iq_timeout,
                           authorization=config.ejabberd_api_authorization,
                           latencyTarget=config.sync_latency_target, pool=pool)


def wireParts(config: Config, clock: Any, http: Any, xmppServer: IStreamClientEndpoint,
              pool: HTTPConnectionPool | None = None, state: SyncState | None = None,
              verbose: bool = False, record: Record | None = None) -> Parts:
    """
    Build the backend and the XMPP side and give each part its
    collaborators: the only place that wires them (L{makeService} and the
    tests' C{ComponentOnWire} both call it).

    The backend and the XMPP side need each other: the backend writes
    through the privilege handler (its L{IRosterSync}, given at
    construction), and the presence and permission trackers and the
    handler tell the backend of users coming online and of roster access
    (their C{observer}, set right after).

    @param clock: The reactor, or a L{twisted.internet.task.Clock}.
    @param http: A treq-like client for the web app.
    @param xmppServer: Connects to the server's component port.
    @param pool: The connection pool under C{http}, closed when the backend
        stops.
    @param state: What the server holds and who is pending; by default in
        memory only.
    @param verbose: Log every stanza sent and received.
    @param record: Keeps an event for the web app (what users tried), with
        C{--events-url}.
    """
    limit = StanzaLimit(config.max_stanza_bytes)
    fetchLatency = FetchLatency()
    fetcher = RosterFetcher(
        config.roster_url, config.domain, clock, http=http, pool=pool,
        timeout=config.fetch_timeout, concurrency=config.fetch_concurrency,
        maxBytes=config.max_roster_bytes, headers=config.web_app_headers,
        observeFetch=fetchLatency.observe,
    )
    status = ConnectionMonitor(clock, config.keepalive_interval)
    grants = PermissionTracker(config.domain, status)
    state = state if state is not None else SyncState()
    devices = DeviceViews(status, grants, state, clock)
    presence = PresenceTracker(config.domain, devices, config.iq_timeout)
    privileges = PrivilegeHandler(config.domain, status, grants, presence, devices, clock, config.iq_timeout,
                                  limit, config.sync_latency_target)
    devices.wire.sendThrough(privileges.pushRequest)
    sync = chooseRosterSync(config, privileges, clock)
    # Without mod_privilege no presence reaches us: ejabberd's API lists
    # the sessions instead.
    online: IOnlineUsers = (EjabberdSessions(sync.poster, config.domain, clock) if isinstance(sync, EjabberdAPISync)
                            else presence)
    # An online user's roster is what its clients hold: it stays cached.
    cache = RosterCache(config.cache_max_contacts, pinned=online.isOnline)
    backend = RosterBackend(cache, fetcher, sync, limit=limit, state=state)
    # The XMPP side tells the backend of the server's users and of roster
    # access whichever sync writes: who comes online, what the server
    # grants, when a parked user may be written again; the sync (that
    # handler again, or ejabberd's API) says when writes work.
    presence.observer = backend
    if isinstance(online, EjabberdSessions):
        online.observer = backend
    grants.observer = backend
    privileges.observe(backend)
    sync.observe(backend)
    if isinstance(sync, EjabberdAPISync):
        # ejabberd back after a restart: its API is probed at once, not at
        # the next probe, so the writes that waited are made now.
        status.onConnected = sync.availability.streamConnected
    attempts = Attempts(record, config.domain, cache.peek) if record is not None else None
    rosterServer = RosterServer(backend, config.domain, config.jid, limit,
                                QueryGate(clock, config.queries_per_user, config.query_rate), attempts)
    delegation = DelegationHandler(config.domain, config.jid, {NS_ROSTER: rosterServer.answerDelegated}, limit,
                                   clock, config.iq_timeout, expected=config.delegation == "expected")
    kicker = RoomKicker(config.jid, status, clock, config.iq_timeout, config.kick_nick, config.stay_in_rooms)
    handlers = Handlers(status, grants, presence, privileges, rosterServer, delegation, kicker,
                        DiscoHandler(config.jid), attempts)
    component = RosterComponent(config, clock, xmppServer, handlers, verbose=verbose, online=online)
    return Parts(backend, component, fetchLatency, online)


def makeApplier(config: Config, parts: Parts, fullSync: FullSync, intake: Intake, clock: Any) -> RequestApplier:
    """
    The service that applies, while this instance leads, the requests
    standbys recorded, through the calls the API makes here, once the
    XMPP stream is up.
    """
    comp = parts.component
    kick = None if config.no_kick or config.kick_authorization is None else (comp.kicker, comp.status)
    calls = LeaderCalls(parts.backend, fullSync, kick)
    return RequestApplier(intake, calls.apply, clock, lambda: comp.status.connected)


def makeEvents(config: Config, state: SyncState, clock: Any) -> EventDelivery | None:
    """
    What users tried, kept in the state's outbox and sent to the web app,
    with C{--events-url}; else C{None}.
    """
    if config.events_url is None:
        return None
    # One transaction in flight at a time: one kept connection.
    http, pool = makeHTTPClient(clock, config.fetch_timeout, 1)
    return EventDelivery(Outbox(state.storage, config.events_max_queued), config.events_url,
                         eventSecrets(config.events_secret), http, clock, config.fetch_timeout,
                         config.events_retry_max_delay, config.events_stale_after, config.web_app_headers, pool)


def makeAPI(config: Config, parts: Parts, fullSync: FullSync, drain: Drain, onlineCheck: OnlineCheck | None = None,
            handoff: Handoff | None = None, role: Role | None = None, events: EventDelivery | None = None) -> Resource:
    """
    The HTTP API's resource tree, with health and metrics read from one
    snapshot of the backend, the component and the full sync, and one
    user's picture from the backend, the component and when the repairing
    passes run next.

    @param drain: Counts the requests in flight, for the HTTP service.
    @param onlineCheck: Whose counts the metrics show, if it runs.
    @param handoff: Takes the requests while this instance does not lead.
    @param role: This process's leadership, which health and metrics show;
        by default it leads from now on.
    @param events: Sends what users tried to the web app, if it wants it.
    """
    comp = parts.component
    kickOutcomes: Counter[str] = Counter()
    kick = None
    if not config.no_kick and config.kick_authorization is not None:
        kick = KickRoute(comp.kicker, comp.status, config.kick_authorization, kickOutcomes)
    snapshots = Snapshots(parts.backend.snapshot, comp.snapshot, fullSync.snapshot, kickOutcomes,
                          lambda: onlineCheck.checked if onlineCheck is not None else 0, role,
                          events.snapshot if events is not None else lambda: None)
    # The fetch and the server's read run together: their two deadlines
    # added leave time to wait for the user's lock too.
    inspector = Inspector(parts.backend, comp.resources, config.fetch_timeout + config.iq_timeout,
                          Schedule(fullSync.nextReconciliation,
                                   onlineCheck.nextCheck if onlineCheck is not None else lambda: None))
    return buildRoot(drain, parts.backend, fullSync, config.refresh_authorization, kick, snapshots,
                     Metrics(snapshots, parts.fetchLatency), inspector, handoff)


@dataclass(frozen=True)
class Shared:
    """
    What every part of a process shares, whether it leads or not.

    @ivar drain: Counts the requests in flight, for the HTTP service.
    @ivar intake: The requests standbys record and the leader applies.
    @ivar role: Whether this process leads.
    """

    config: Config
    reactor: Any
    drain: Drain
    intake: Intake
    role: Role
    verbose: bool

    def parts(self, state: SyncState, record: Record | None = None) -> tuple[Parts, FullSync]:
        """
        The backend, the XMPP side and the full sync, over C{state}, not
        started; C{record} keeps what users tried, for the web app.
        """
        config, reactor = self.config, self.reactor
        # The web app's, for the fetcher (which closes the pool) and the
        # users lister: every fetch in flight may reuse a kept-alive
        # connection.
        http, pool = makeHTTPClient(reactor, config.fetch_timeout, config.fetch_concurrency)
        xmppServer = endpoints.HostnameEndpoint(reactor, config.xmpp_host, config.xmpp_port)
        parts = wireParts(config, reactor, http, xmppServer, pool, state, verbose=self.verbose, record=record)
        lister = None
        if config.users_url is not None:
            lister = UserLister(config.users_url, reactor, http=http, timeout=config.fetch_timeout,
                                maxBytes=config.max_roster_bytes, headers=config.web_app_headers)
        fullSync = FullSync(parts.backend, lister, reactor, not config.no_start_sync, config.reconcile_interval)
        return parts, fullSync


def leaderTerm(shared: Shared, state: SyncState, leading: Callable[[], bool]) -> Term:
    """
    What the leader runs, over one state: C{backend} (cache, fetcher,
    sync), C{roster-sync} (ejabberd's API only), C{component} (the XMPP
    side), C{sessions} (ejabberd's session list, with its API only),
    C{sync} (full syncs), C{online-check}, C{requests} (applies what
    standbys recorded) and C{events} (what users tried, to the web app,
    with C{--events-url}), and the API's resources over them.  Every
    part is new: a process leading again builds them anew
    (L{rosteradmin.leadership.LeaderOnly}).

    @param leading: Whether this process still leads, asked by the API
        on every request.
    """
    config, reactor = shared.config, shared.reactor
    events = makeEvents(config, state, reactor)
    parts, fullSync = shared.parts(state, events.record if events is not None else None)
    backend = parts.backend
    backend.setName("backend")
    services: list[service.IService] = [backend]
    syncService = service.IService(backend.sync, None)
    if syncService is not None:
        # ejabberd's API: it probes the API at start and while it refuses.
        syncService.setName("roster-sync")
        services.append(syncService)
    parts.component.setName("component")
    services.append(parts.component)
    sessions = service.IService(parts.online, None)
    if sessions is not None:
        # ejabberd's session list: read at start (the users to catch up)
        # and every few seconds.
        sessions.setName("sessions")
        services.append(sessions)
    fullSync.setName("sync")
    online = parts.online
    onlineCheck = OnlineCheck(backend, lambda: online.online, reactor, config.online_check_interval)
    onlineCheck.setName("online-check")
    applier = makeApplier(config, parts, fullSync, shared.intake, reactor)
    applier.setName("requests")
    services += [fullSync, onlineCheck, applier]
    if events is not None:
        # Kept in the state's outbox, sent by the leader alone.
        events.setName("events")
        services.append(events)
    handoff = Handoff(shared.intake, leading, reactor)
    root = makeAPI(config, parts, fullSync, shared.drain, onlineCheck, handoff, shared.role, events)
    return Term(services, root, parts.component.abandon, state.close)


def standbyRoot(shared: Shared) -> Resource:
    """
    The API of a process that does not lead: the leader's tree, over
    parts of its own that never start (a state in memory, no stream),
    which hands every refresh, sync and kick over to the leader; its
    C{/healthz} and C{/metrics} say it stands by.
    """
    parts, fullSync = shared.parts(SyncState(clock=shared.reactor))
    handoff = Handoff(shared.intake, lambda: False, shared.reactor)
    return makeAPI(shared.config, parts, fullSync, shared.drain, None, handoff, shared.role)


def _refuse(e: StateError) -> None:
    """
    End start-up for a state that cannot be opened: another process
    holding the file's lock throughout start-up, or a database that does
    not answer, may let go; another schema or an unusable path will not.
    """
    refuseToStart(f"--state: {e}", 1 if e.transient else EX_CONFIG)


class _Closing(service.Service):
    """
    Closes something when the service tree stops.
    """

    def __init__(self, close: Callable[[], Deferred[None]]) -> None:
        self.close = close

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return self.close()


def _single(top: service.MultiService, config: Config, reactor: Any, drain: Drain, verbose: bool) -> Resource:
    """
    The parts of the only process (an SQLite state, or none), which
    always leads, under C{top}; the API's tree.
    """
    try:
        state = SyncState(config.state, reactor) if config.state is not None else SyncState(clock=reactor)
    except StateError as e:
        _refuse(e)
    shared = Shared(config, reactor, drain, Intake(state.storage), AlwaysLeader(), verbose)
    term = leaderTerm(shared, state, lambda: True)
    for part in term.services:
        part.setServiceParent(top)
    return term.root


def _shared(top: service.MultiService, config: Config, url: str, reactor: Any, drain: Drain, verbose: bool,
            site: Site) -> None:
    """
    The processes sharing a PostgreSQL state (L{rosteradmin.leadership}),
    under C{top}: C{intake} (closes the intake's connection), C{leadership}
    (the lock's session; both opened now: start-up ends if the database
    refuses us), then C{leader},
    which holds the leader's parts while this process leads, the state
    opened afresh each time.
    """
    # Imported here: the driver is an optional dependency.
    from rosteradmin.statepg import PostgreSQLLock, PostgreSQLRequests

    try:
        requests = PostgreSQLRequests(url, reactor)
        lock = PostgreSQLLock(url, Timings().timeout, reactor)
    except StateError as e:
        _refuse(e)
    closing = _Closing(requests.close)
    closing.setName("intake")
    closing.setServiceParent(top)
    leadership = Leadership(lock, reactor)
    shared = Shared(config, reactor, drain, Intake(requests), leadership, verbose)

    async def begin() -> Term:
        # Its reading waits on the network: not in the reactor's thread.
        storage = await deferToThread(openStorage, url, reactor)
        return leaderTerm(shared, SyncState(url, reactor, storage=storage), lambda: leadership.leading)

    leader = LeaderOnly(leadership, lambda: ensureDeferred(begin()), site, standbyRoot(shared))
    leadership.setName("leadership")
    leadership.setServiceParent(top)
    leader.setName("leader")
    leader.setServiceParent(top)


def makeService(options: Options, reactor: Any = None) -> service.MultiService:
    """
    The whole service tree.  One process (an SQLite state, or none):
    L{leaderTerm}'s parts, then C{http} (the API).  With a PostgreSQL
    state, several processes may share it and one leads
    (L{rosteradmin.leadership}): C{leadership}, then C{leader} (the same
    parts, while this process leads), then C{http}.  Stopped in the
    reverse order: the API drains, the parts stop (the state closes),
    then the lock is let go.
    """
    if reactor is None:
        from twisted.internet import reactor as globalReactor

        reactor = globalReactor
    config = options.config
    verbose = bool(options["verbose"])
    top = SequentialService(config.http)
    drain = Drain()
    site = makeSite(Resource(), config.max_body_bytes, config.http_timeout, reactor)
    if config.state is not None and isPostgreSQL(config.state):
        _shared(top, config, config.state, reactor, drain, verbose, site)
    else:
        site.resource = _single(top, config, reactor, drain, verbose)
    # Requests in flight may wait for a fetch and an XMPP round trip.
    drainTimeout = config.fetch_timeout + config.iq_timeout
    web = DrainingService(endpoints.serverFromString(reactor, config.http), site, drain, reactor, drainTimeout,
                          config.http_max_connections)
    web.setName("http")
    web.setServiceParent(top)
    return top
