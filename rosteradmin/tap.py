# -*- test-case-name: tests.test_config,tests.test_web,tests.integration.test_twistd -*-
"""
C{twistd rosteradmin}: the service tree, composed from its parts.

twistd's C{ServiceMaker} (C{twisted/plugins/rosteradmin_plugin.py}) reads
L{Options} (L{rosteradmin.options}) and L{makeService} from this module.
How start-up ends when it cannot succeed, and the top service, are
L{rosteradmin.startup}'s; the open file limit is L{rosteradmin.filelimit}'s.

Whether this instance leads (holds the XMPP stream and does the roster
work, another instance on the same PostgreSQL state standing by) is
asked of L{leadership}, a stand-in until instances elect a leader: it
always leads, so a single instance behaves as it always did.  What a
standby's API does is L{rosteradmin.handoff}'s; what the leader does with
the requests standbys recorded, L{rosteradmin.applier}'s.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.application import service
from twisted.internet import endpoints
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.web.client import HTTPConnectionPool
from twisted.web.resource import Resource

from rosteradmin.api import KickRoute, LeaderCalls, buildRoot
from rosteradmin.applier import RequestApplier
from rosteradmin.backend import RosterBackend
from rosteradmin.cache import RosterCache
from rosteradmin.component import ConnectionMonitor, Handlers, RosterComponent
from rosteradmin.config import Config
from rosteradmin.delegation import DelegationHandler
from rosteradmin.devices import DeviceViews
from rosteradmin.disco import DiscoHandler
from rosteradmin.ejabberdapi import EjabberdAPISync
from rosteradmin.ejabberdsessions import EjabberdSessions
from rosteradmin.fairness import QueryGate
from rosteradmin.fetcher import RosterFetcher
from rosteradmin.fullsync import FullSync
from rosteradmin.handoff import Handoff
from rosteradmin.httpclient import makeHTTPClient
from rosteradmin.inspection import Inspector, Schedule
from rosteradmin.intake import Intake
from rosteradmin.interfaces import IOnlineUsers, IRosterSync
from rosteradmin.metrics import FetchLatency, Metrics
from rosteradmin.muc import RoomKicker
from rosteradmin.onlinecheck import OnlineCheck
from rosteradmin.options import Options as Options  # twistd reads it here
from rosteradmin.permissions import PermissionTracker
from rosteradmin.presence import PresenceTracker
from rosteradmin.privilege import PrivilegeHandler
from rosteradmin.roster import NS_ROSTER
from rosteradmin.rosterserver import RosterServer
from rosteradmin.slots import MAX_SYNC_IN_FLIGHT
from rosteradmin.snapshot import Snapshots
from rosteradmin.stanzalimit import StanzaLimit
from rosteradmin.startup import EX_CONFIG, SequentialService, refuseToStart
from rosteradmin.state import StateError, SyncState
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
              verbose: bool = False) -> Parts:
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
    rosterServer = RosterServer(backend, config.domain, config.jid, limit,
                                QueryGate(clock, config.queries_per_user, config.query_rate))
    delegation = DelegationHandler(config.domain, config.jid, {NS_ROSTER: rosterServer.answerDelegated}, limit,
                                   clock, config.iq_timeout, expected=config.delegation == "expected")
    kicker = RoomKicker(config.jid, status, clock, config.iq_timeout, config.kick_nick, config.stay_in_rooms)
    handlers = Handlers(status, grants, presence, privileges, rosterServer, delegation, kicker,
                        DiscoHandler(config.jid))
    component = RosterComponent(config, clock, xmppServer, handlers, verbose=verbose)
    return Parts(backend, component, fetchLatency, online)


#: The test-only environment variable that makes L{leadership}'s
#: stand-in answer "not leading" (C{1}), so that tests can run a standby
#: before instances elect a leader.
STANDBY_FOR_TESTS = "ROSTERADMIN_TEST_STANDBY"


def leadership() -> Callable[[], bool]:
    """
    Whether this instance leads, asked on every API request: a stand-in
    until instances elect a leader, which always leads (a single
    instance, on SQLite or PostgreSQL alone, behaves as it always did),
    unless the tests set L{STANDBY_FOR_TESTS}.
    """
    standby = os.environ.get(STANDBY_FOR_TESTS) == "1"
    return lambda: not standby


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


def makeAPI(config: Config, parts: Parts, fullSync: FullSync, drain: Drain,
            onlineCheck: OnlineCheck | None = None, handoff: Handoff | None = None) -> Resource:
    """
    The HTTP API's resource tree, with health and metrics read from one
    snapshot of the backend, the component and the full sync, and one
    user's picture from the backend, the component and when the repairing
    passes run next.

    @param drain: Counts the requests in flight, for the HTTP service.
    @param onlineCheck: Whose counts the metrics show, if it runs.
    @param handoff: Takes the requests while this instance does not lead.
    """
    comp = parts.component
    kickOutcomes: Counter[str] = Counter()
    kick = None
    if not config.no_kick and config.kick_authorization is not None:
        kick = KickRoute(comp.kicker, comp.status, config.kick_authorization, kickOutcomes)
    snapshots = Snapshots(parts.backend.snapshot, comp.snapshot, fullSync.snapshot, kickOutcomes,
                          lambda: onlineCheck.checked if onlineCheck is not None else 0)
    # The fetch and the server's read run together: their two deadlines
    # added leave time to wait for the user's lock too.
    inspector = Inspector(parts.backend, comp.resources, config.fetch_timeout + config.iq_timeout,
                          Schedule(fullSync.nextReconciliation,
                                   onlineCheck.nextCheck if onlineCheck is not None else lambda: None))
    return buildRoot(drain, parts.backend, fullSync, config.refresh_authorization, kick, snapshots,
                     Metrics(snapshots, parts.fetchLatency), inspector, handoff)


def makeService(options: Options, reactor: Any = None) -> service.MultiService:
    """
    The whole service tree: C{backend} (cache, fetcher, sync),
    C{roster-sync} (ejabberd's API only), C{component} (the XMPP side),
    C{sessions} (ejabberd's session list, with its API only), C{sync}
    (full syncs), C{online-check}, C{requests} (applies what
    standbys recorded, while leading) and C{http} (the API), sharing the
    backend.
    """
    if reactor is None:
        from twisted.internet import reactor as globalReactor

        reactor = globalReactor
    config = options.config
    top = SequentialService(config.http)

    try:
        state = SyncState(config.state, reactor) if config.state is not None else SyncState(clock=reactor)
    except StateError as e:
        # Another process holding the file's lock throughout start-up may
        # let go; another schema or an unusable path will not.
        refuseToStart(f"--state: {e}", 1 if e.transient else EX_CONFIG)
    # The web app's, for the fetcher (which closes the pool) and the users
    # lister: every fetch in flight may reuse a kept-alive connection.
    http, pool = makeHTTPClient(reactor, config.fetch_timeout, config.fetch_concurrency)
    xmppServer = endpoints.HostnameEndpoint(reactor, config.xmpp_host, config.xmpp_port)
    parts = wireParts(config, reactor, http, xmppServer, pool, state, verbose=bool(options["verbose"]))
    backend = parts.backend
    backend.setName("backend")
    backend.setServiceParent(top)
    syncService = service.IService(backend.sync, None)
    if syncService is not None:
        # ejabberd's API: it probes the API at start and while it refuses.
        syncService.setName("roster-sync")
        syncService.setServiceParent(top)
    parts.component.setName("component")
    parts.component.setServiceParent(top)
    sessions = service.IService(parts.online, None)
    if sessions is not None:
        # ejabberd's session list: read at start (the users to catch up)
        # and every few seconds.
        sessions.setName("sessions")
        sessions.setServiceParent(top)

    lister = None
    if config.users_url is not None:
        lister = UserLister(config.users_url, reactor, http=http, timeout=config.fetch_timeout,
                            maxBytes=config.max_roster_bytes, headers=config.web_app_headers)
    fullSync = FullSync(backend, lister, reactor, not config.no_start_sync, config.reconcile_interval)
    fullSync.setName("sync")
    fullSync.setServiceParent(top)
    online = parts.online
    onlineCheck = OnlineCheck(backend, lambda: online.online, reactor, config.online_check_interval)
    onlineCheck.setName("online-check")
    onlineCheck.setServiceParent(top)

    leading = leadership()
    intake = Intake(state.storage)
    applier = makeApplier(config, parts, fullSync, intake, reactor)
    applier.setName("requests")
    if leading():
        # Until instances elect a leader, it leads from start to stop.
        applier.setServiceParent(top)

    drain = Drain()
    handoff = Handoff(intake, leading, reactor)
    site = makeSite(makeAPI(config, parts, fullSync, drain, onlineCheck, handoff), config.max_body_bytes,
                    config.http_timeout, reactor)
    # Requests in flight may wait for a fetch and an XMPP round trip.
    drainTimeout = config.fetch_timeout + config.iq_timeout
    web = DrainingService(endpoints.serverFromString(reactor, config.http), site, drain, reactor, drainTimeout,
                          config.http_max_connections)
    web.setName("http")
    web.setServiceParent(top)
    return top
