# -*- test-case-name: tests.test_config,tests.test_web,tests.integration.test_twistd -*-
"""
C{twistd rosteradmin}: the command-line options and the service tree.

    twistd -n --pidfile= rosteradmin --config /etc/rosteradmin/rosteradmin.toml

Every option of L{rosteradmin.config.SETTINGS} is a command-line option, a
TOML key and, for secrets, an environment variable and a C{--<name>-file}.
All validation happens in L{Options.postOptions}, so a bad configuration
stops start-up with one line naming the option, before anything connects.

Exit codes: a configuration error (a bad or unknown option, a bad file, an
C{--http} endpoint that can never listen) exits with L{EX_CONFIG}, which the
systemd unit lists in C{RestartPreventExitStatus=} so that a broken
configuration is not restarted in a loop; a failure that may clear up by
itself (the HTTP port still held by another process) exits with 1, which
C{Restart=on-failure} retries.  So does a C{--state} file whose lock
another process held throughout start-up; an unreadable one is moved aside
and a new one started (L{rosteradmin.state}), while one of another schema or
a path that cannot be created is a configuration error.

Open files: starting raises the soft C{RLIMIT_NOFILE} to the hard limit
(L{raiseFileLimit}), and C{--http-max-connections} must leave room under it
for everything else (L{checkFileLimit}).
"""

from __future__ import annotations

import errno
import getopt
import resource
import sys
from collections import Counter
from dataclasses import dataclass
from typing import Any, NoReturn

from twisted.application import service
from twisted.internet import endpoints
from twisted.internet.defer import Deferred, ensureDeferred, maybeDeferred
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.logger import Logger
from twisted.python import usage
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.resource import Resource

import treq

from rosteradmin.api import buildRoot
from rosteradmin.backend import RosterBackend
from rosteradmin.cache import RosterCache
from rosteradmin.component import ConnectionMonitor, RosterComponent
from rosteradmin.config import SETTINGS, Config, ConfigError, buildConfig
from rosteradmin.delegation import DelegationHandler
from rosteradmin.devices import DeviceViews
from rosteradmin.disco import DiscoHandler
from rosteradmin.ejabberdapi import EjabberdAPISync
from rosteradmin.fairness import QueryGate
from rosteradmin.fetcher import RosterFetcher
from rosteradmin.fullsync import FullSync
from rosteradmin.interfaces import IRosterSync
from rosteradmin.metrics import FetchLatency, Metrics
from rosteradmin.muc import RoomKicker
from rosteradmin.onlinecheck import OnlineCheck
from rosteradmin.permissions import PermissionTracker
from rosteradmin.presence import PresenceTracker
from rosteradmin.privilege import PrivilegeHandler
from rosteradmin.roster import NS_ROSTER
from rosteradmin.rosterserver import RosterServer
from rosteradmin.slots import MAX_SYNC_IN_FLIGHT
from rosteradmin.stanzalimit import StanzaLimit
from rosteradmin.state import StateError, SyncState
from rosteradmin.users import UserLister
from rosteradmin.web import Drain, DrainingService, makeSite


#: C{EX_CONFIG} of C{sysexits.h}: the configuration is wrong, so restarting
#: with the same configuration cannot help.
EX_CONFIG = 78

#: Listening errors that may clear up by themselves: the port is still held
#: by another process, or the interface's address is not up yet.
TRANSIENT_LISTEN_ERRORS = frozenset({errno.EADDRINUSE, errno.EADDRNOTAVAIL})

#: Open files kept for all but the HTTP API's connections and the web-app
#: fetches: the XMPP stream, the listening socket, the reactor's own
#: descriptors, log files, and the socket of a connection being refused.
FILE_RESERVE = 128

log = Logger()


def refuseToStart(message: str, code: int = EX_CONFIG) -> NoReturn:
    """
    End start-up with one line on standard error instead of a usage page or
    a traceback, and an exit code that tells systemd whether restarting can
    help.

    @param message: What is wrong, starting with the option it is about.
    @param code: L{EX_CONFIG}, or 1 for a failure that may clear up by itself.
    """
    print(f"rosteradmin: {message}", file=sys.stderr)
    raise SystemExit(code)


def _optionTables() -> tuple[list[list[Any]], list[list[Any]]]:
    """
    The C{optParameters} and C{optFlags} tables, built from L{SETTINGS} so
    options, TOML keys and docs cannot drift apart.
    """
    parameters: list[list[Any]] = [
        ["config", "c", None, "TOML configuration file; a relative secret file path in it is read from its directory"],
        ["log-format", None, "text", "text, or json: one JSON object per event and line, for log shippers"],
    ]
    flags: list[list[Any]] = [["verbose", "v", "log every stanza sent and received"]]
    for setting in SETTINGS:
        if not setting.cli:
            continue
        if setting.kind is bool:
            flags.append([setting.name, None, setting.help])
            continue
        default = "" if setting.default is None else f" [default: {setting.default}]"
        parameters.append([setting.name, None, None, setting.help + default])
        if setting.secret:
            parameters.append([
                setting.name + "-file", None, None,
                f"file holding the {setting.name} (or set {setting.environmentVariable})",
            ])
    return parameters, flags


class Options(usage.Options):
    """
    The options of C{twistd rosteradmin}.

    @ivar config: The validated L{Config}, after parsing.
    """

    synopsis = "[options]"
    longdesc = (
        "An XMPP external component (XEP-0114) that serves users' rosters from a web "
        "application, with an HTTP API to refresh them and to kick users from rooms. "
        "Options may also come from a TOML file (--config); secrets also from files "
        "or the environment."
    )
    optParameters, optFlags = _optionTables()

    config: Config

    def parseOptions(self, options: list[str] | None = None) -> None:
        """
        Parse and validate the options.  Under twistd (our parent is its
        C{ServerOptions}), a usage error ends start-up with one line and
        L{EX_CONFIG}: twistd itself would print its whole usage page before
        the message and exit 1, which systemd restarts.

        @raise usage.UsageError: A bad or missing option, when not run by
            twistd (the tac file, tests).
        """
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            if self.parent is None:
                raise
            if isinstance(e.__context__, getopt.GetoptError):
                # An unknown option, or a value missing or given to a flag.
                refuseToStart(f"{e}; `twistd rosteradmin --help` lists the options")
            refuseToStart(str(e))

    def parseArgs(self, *args: str) -> None:
        """
        Refuse words that are not options, naming the first: usually a value
        given to a flag (C{--no-kick true}).
        """
        if args:
            raise usage.UsageError(f"unexpected argument {args[0]!r}: flags such as --no-kick take no value")

    def postOptions(self) -> None:
        commandLine: dict[str, Any] = {}
        for setting in SETTINGS:
            if not setting.cli:
                continue
            value = self[setting.name]
            if setting.kind is bool:
                value = True if value else None
            commandLine[setting.key] = value
            if setting.secret:
                commandLine[setting.key + "_file"] = self[setting.name + "-file"]
        commandLine["config"] = self["config"]
        try:
            self.config = buildConfig(commandLine)
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None
        self._checkEndpoint()
        checkFileLimit(self.config, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
        self._chooseLogFormat()

    def _chooseLogFormat(self) -> None:
        """
        twistd creates its log observer after parsing our options, from its
        own C{--logger}; C{--log-format json} sets that.
        """
        if self["log-format"] not in ("text", "json"):
            raise usage.UsageError(f"--log-format: must be text or json, got {self['log-format']!r}")
        if self["log-format"] == "json" and self.parent is not None:
            self.parent["logger"] = "rosteradmin.logs.jsonLogObserver"

    def _checkEndpoint(self) -> None:
        """
        Build the C{--http} endpoint once, so that what its parser checks
        (the syntax, C{ssl:}'s certificate and key files, C{systemd:}'s
        inherited socket) is a configuration error here, not a traceback
        later.
        """
        from twisted.internet import reactor

        http = self.config.http
        try:
            endpoints.serverFromString(reactor, http)
        except OSError as e:
            # ssl: reads its certificate and key when parsed.
            raise usage.UsageError(f"--http: {http!r}: cannot read {e.filename}: {e.strerror}") from None
        except Exception as e:
            # Endpoint parsers are plugins: a bad description raises
            # ValueError, TypeError, or whatever their libraries raise
            # (OpenSSL on a malformed certificate).
            if http.startswith("systemd:") and isinstance(e, (IndexError, KeyError)):
                # An index or a name beyond the sockets systemd passed.
                raise usage.UsageError(
                    f"--http: {http!r}: systemd passed no such socket "
                    "(start rosteradmin from a .socket unit, or listen on tcp: or unix:)") from None
            raise usage.UsageError(f"--http: {http!r} is not a Twisted endpoint: {e}") from None


def checkFileLimit(config: Config, limit: int) -> None:
    """
    Refuse an C{--http-max-connections} that would leave fewer than
    C{--fetch-concurrency} + L{FILE_RESERVE} of the process's open files to
    the rest: at the cap, the XMPP side and the fetches would fail for want
    of descriptors.  Refusing to start says so at once, where lowering the
    cap behind the operator's back would only show in a log.

    @param limit: The hard C{RLIMIT_NOFILE}, which L{raiseFileLimit} raises
        the soft limit to at start; C{RLIM_INFINITY} for none.
    @raise usage.UsageError: The cap is too high for the limit.
    """
    if limit == resource.RLIM_INFINITY:
        return
    most = limit - config.fetch_concurrency - FILE_RESERVE
    if config.http_max_connections > most:
        raise usage.UsageError(
            f"--http-max-connections: {config.http_max_connections} leaves too few of the {limit} open files "
            f"the process may have (RLIMIT_NOFILE) for the XMPP stream and {config.fetch_concurrency} "
            f"web-app fetches; at most {max(most, 0)} here (or raise LimitNOFILE= / ulimit -Hn)")


def raiseFileLimit(getrlimit: Any = resource.getrlimit, setrlimit: Any = resource.setrlimit) -> int:
    """
    Raise the soft limit on open files (C{RLIMIT_NOFILE}) to the hard
    limit, which needs no privilege, and log it: the usual soft limit,
    1024, is less than a busy HTTP API and the XMPP side may need together.

    @param getrlimit: L{resource.getrlimit}, injectable for tests.
    @param setrlimit: L{resource.setrlimit}, injectable for tests.
    @return: The soft limit now in effect.
    """
    soft, hard = getrlimit(resource.RLIMIT_NOFILE)
    if soft == hard:
        log.info("open file limit (RLIMIT_NOFILE): {limit}", limit=soft)
        return soft
    try:
        setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (OSError, ValueError) as e:
        # The hard limit may be RLIM_INFINITY, which Linux refuses as a
        # soft limit on open files.
        log.warn("open file limit (RLIMIT_NOFILE): {limit}; cannot raise it to the hard limit {hard}: {error}",
                 limit=soft, hard=hard, error=e)
        return soft
    log.info("open file limit (RLIMIT_NOFILE): raised from {soft} to the hard limit, {limit}", soft=soft, limit=hard)
    return hard


def makeWebAppClient(config: Config, reactor: Any) -> tuple[treq.client.HTTPClient, HTTPConnectionPool]:
    """
    The HTTP client for the web app, with a connection pool of its own sized
    so that every fetch in flight can reuse a kept-alive connection.

    @return: The client, and the pool under it (the fetcher closes it).
    """
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = config.fetch_concurrency
    return treq.client.HTTPClient(Agent(reactor, connectTimeout=config.fetch_timeout, pool=pool)), pool


@dataclass(frozen=True)
class Parts:
    """
    The wired parts of one service, with the handles the HTTP API (and the
    tests) need.

    @ivar fetchLatency: The fetch histogram the fetcher reports to, for the
        metrics.
    """

    backend: RosterBackend
    component: RosterComponent
    fetchLatency: FetchLatency


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
    pool = HTTPConnectionPool(clock, persistent=True)
    pool.maxPersistentPerHost = MAX_SYNC_IN_FLIGHT  # one kept connection per call in flight
    http = treq.client.HTTPClient(Agent(clock, connectTimeout=config.iq_timeout, pool=pool))
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
    # An online user's roster is what its clients hold: it stays cached.
    cache = RosterCache(config.cache_max_contacts, pinned=presence.isOnline)
    sync = chooseRosterSync(config, privileges, clock)
    backend = RosterBackend(cache, fetcher, sync, limit=limit, state=state)
    # The XMPP side tells the backend of the server's users and of roster
    # access whichever sync writes: who comes online, what the server
    # grants, when a parked user may be written again; the sync (that
    # handler again, or ejabberd's API) says when writes work.
    presence.observer = backend
    grants.observer = backend
    privileges.observe(backend)
    sync.observe(backend)
    rosterServer = RosterServer(backend, config.domain, config.jid, limit,
                                QueryGate(clock, config.queries_per_user, config.query_rate))
    delegation = DelegationHandler(config.domain, config.jid, {NS_ROSTER: rosterServer.answerDelegated}, limit,
                                   clock, config.iq_timeout)
    kicker = RoomKicker(config.jid, status, clock, config.iq_timeout, config.kick_nick, config.stay_in_rooms)
    component = RosterComponent(config, clock, xmppServer, status, grants, presence, privileges, rosterServer,
                                delegation, kicker, DiscoHandler(config.jid), verbose=verbose)
    return Parts(backend, component, fetchLatency)


class SequentialService(service.MultiService):
    """
    The top service.  It refuses to start when the HTTP API cannot listen,
    and stops its children one after the other, last started first: the
    HTTP API drains its requests while the component and the backend still
    serve them.

    @ivar http: The C{--http} endpoint, named when it cannot listen.
    """

    def __init__(self, http: str) -> None:
        super().__init__()
        self.http = http

    def privilegedStartService(self) -> None:
        """
        Bind the HTTP API's port first thing (twistd calls this before the
        reactor runs, and before it drops privileges).  If it cannot, end
        the process with one line instead of a service that looks alive
        without its API: exit code 1 when the cause may clear up by itself
        (a port in use), so systemd restarts it, L{EX_CONFIG} otherwise.
        """
        try:
            super().privilegedStartService()
        except CannotListenError as e:
            # UNIX sockets have no interface; their port is the path.
            where = f"{e.interface or '*'}:{e.port}" if e.interface is not None else repr(self.http)
            cause = e.socketError
            # A cause that is not an OSError is a UNIX socket's lock held
            # by a live process: like a port in use.
            transient = not isinstance(cause, OSError) or cause.errno in TRANSIENT_LISTEN_ERRORS
            refuseToStart(f"--http: cannot listen on {where}: {cause}", 1 if transient else EX_CONFIG)
        except OSError as e:
            # A UNIX socket's lock file, next to it, cannot be created (its
            # directory is missing or not writable).
            refuseToStart(f"--http: cannot listen on {self.http!r}: {e.strerror}")
        except OverflowError as e:
            # A TCP port above 65535: bind() refuses it.
            refuseToStart(f"--http: cannot listen on {self.http!r}: {e}")

    def startService(self) -> None:
        """
        Raise the open file limit, then start the children.
        """
        raiseFileLimit()
        super().startService()

    async def _stopInOrder(self) -> None:
        for child in reversed(list(self)):
            await maybeDeferred(child.stopService)

    def stopService(self) -> Deferred[None]:
        service.Service.stopService(self)
        return ensureDeferred(self._stopInOrder())


def makeAPI(config: Config, parts: Parts, fullSync: FullSync, drain: Drain,
            onlineCheck: OnlineCheck | None = None) -> Resource:
    """
    The HTTP API's resource tree, with metrics over the backend and the
    component.

    @param drain: Counts the requests in flight, for the HTTP service.
    @param onlineCheck: Whose counts the metrics show, if it runs.
    """
    comp = parts.component
    kickOutcomes: Counter[str] = Counter()
    metrics = Metrics(parts.backend, comp.status, parts.fetchLatency, lambda: comp.rosterServer.answered,
                      kickOutcomes, lambda: sum(len(resources) for resources in comp.privileges.online.values()),
                      lambda: comp.rosterServer.gate.refusedCount, lambda: fullSync.current,
                      lambda: onlineCheck.checked if onlineCheck is not None else 0, comp.privileges.devices)
    return buildRoot(
        parts.backend, comp.status, None if config.no_kick else comp.kicker,
        config.refresh_authorization, config.kick_authorization, kickOutcomes, metrics, fullSync, drain,
        lambda: comp.delegation.missing,
    )


def makeService(options: Options, reactor: Any = None) -> service.MultiService:
    """
    The whole service tree: C{backend} (cache, fetcher, sync),
    C{roster-sync} (ejabberd's API only), C{component} (the XMPP side),
    C{sync} (full syncs), C{online-check} and C{http} (the API), sharing
    the backend.
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
    http, pool = makeWebAppClient(config, reactor)
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

    lister = None
    if config.users_url is not None:
        lister = UserLister(config.users_url, reactor, http=http, timeout=config.fetch_timeout,
                            maxBytes=config.max_roster_bytes, headers=config.web_app_headers)
    fullSync = FullSync(backend, lister, reactor, not config.no_start_sync, config.reconcile_interval)
    fullSync.setName("sync")
    fullSync.setServiceParent(top)
    privileges = parts.component.privileges
    onlineCheck = OnlineCheck(backend, lambda: privileges.online, reactor, config.online_check_interval)
    onlineCheck.setName("online-check")
    onlineCheck.setServiceParent(top)

    drain = Drain()
    site = makeSite(makeAPI(config, parts, fullSync, drain, onlineCheck), config.max_body_bytes, config.http_timeout, reactor)
    # Requests in flight may wait for a fetch and an XMPP round trip.
    drainTimeout = config.fetch_timeout + config.iq_timeout
    web = DrainingService(endpoints.serverFromString(reactor, config.http), site, drain, reactor, drainTimeout,
                          config.http_max_connections)
    web.setName("http")
    web.setServiceParent(top)
    return top
