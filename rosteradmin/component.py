# -*- test-case-name: tests.test_component -*-
"""
The XEP-0114 external component: connection, reconnection, keepalive, and
the stream its XMPP handlers share.

wokkel's L{Component} handles the handshake; Twisted's L{ClientService}
reconnects, with a capped backoff that only a completed handshake resets (so
it keeps backing off while the server refuses the handshake).  This module
gives IQ requests a timeout, sends whitespace keepalives, and says why a
connection failed where Twisted would only retry: an unreachable server, a
wrong secret, a second component with our JID.  It builds none of its
handlers: L{rosteradmin.tap.wireParts} does.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass

from twisted.application import service
from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import (
    IConsumer, IProtocol, IProtocolFactory, IPushProducer, IReactorTime, IStreamClientEndpoint,
)
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.words.protocols.jabber import xmlstream
from twisted.words.protocols.jabber.error import StreamError
from wokkel import component
from wokkel.subprotocols import XMPPHandler
from zope.interface import implementer

from rosteradmin.attempts import Attempts
from rosteradmin.config import Config
from rosteradmin.delegation import DelegationHandler
from rosteradmin.disco import DiscoHandler
from rosteradmin.interfaces import IConnectionStatus, IOnlineUsers
from rosteradmin.muc import RoomKicker
from rosteradmin.permissions import PermissionTracker
from rosteradmin.presence import PresenceTracker
from rosteradmin.privilege import PrivilegeHandler
from rosteradmin.rosterserver import RosterServer
from rosteradmin.snapshot import ResourcesSnapshot, StreamSnapshot


@implementer(IPushProducer)
class ReadOnlyWhileDrained:
    """
    Backpressure on the component stream: while the server does not read
    what we write (the transport's write buffer is full), stop reading its
    requests, so that a flood of queries cannot pile up answers in memory
    without bound.  The transport pauses and resumes its producer as its
    buffer fills and drains.

    @ivar pauses: How often reading was paused.
    """

    def __init__(self, transport: IPushProducer) -> None:
        """
        @param transport: The component stream's transport, whose reading
            is paused and resumed.
        """
        self.transport = transport
        self.pauses = 0

    def pauseProducing(self) -> None:
        self.pauses += 1
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self.transport.resumeProducing()

    def stopProducing(self) -> None:
        pass


@implementer(IConnectionStatus)
class ConnectionMonitor(XMPPHandler):
    """
    Knows whether the component is connected, keeps the stream alive, and
    reports why the server closed it.

    @ivar connected: C{True} from the handshake until the stream closes.
    @ivar lastError: The last stream error or connection loss, or C{None}.
    @ivar connections: How many times the handshake succeeded.
    @ivar onConnected: Called after each handshake: a server restart is
        over, which a sync that does not write over the stream (ejabberd's
        API) learns only from it.
    """

    log = Logger()

    def __init__(self, clock: IReactorTime, keepaliveInterval: float) -> None:
        super().__init__()
        self.clock = clock
        self.keepaliveInterval = keepaliveInterval
        self.connected = False
        self.lastError: str | None = None
        self.connections = 0
        self.onConnected: Callable[[], None] = lambda: None
        self.backpressure: ReadOnlyWhileDrained | None = None
        self._keepalive: LoopingCall | None = None
        # Conflicts in a row (another instance connected), and whether
        # the current stream ends with one.
        self._conflicts = 0
        self._conflict = False

    def connectionMade(self) -> None:
        self.xmlstream.addObserver(xmlstream.STREAM_ERROR_EVENT, self._onStreamError)
        transport = self.xmlstream.transport
        if IConsumer.providedBy(transport) and IPushProducer.providedBy(transport):
            self.backpressure = ReadOnlyWhileDrained(transport)
            transport.registerProducer(self.backpressure, True)

    def connectionInitialized(self) -> None:
        self.connected = True
        self.connections += 1
        self.lastError = None
        self.log.info("connected to the XMPP server as {jid}", jid=self.xmlstream.thisEntity.full())
        self._keepalive = LoopingCall(self._sendKeepalive)
        self._keepalive.clock = self.clock
        self._keepalive.start(self.keepaliveInterval, now=False)
        self.onConnected()

    def connectionLost(self, reason: Failure) -> None:
        if self._keepalive is not None and self._keepalive.running:
            self._keepalive.stop()
        self._keepalive = None
        if self.connected and not self.parent.running:
            self.log.info("disconnected from the XMPP server: the service is stopping")
        elif self._conflict:
            self.log.info("disconnected from the XMPP server: another connection holds our JID")
        elif self.connected:
            self.log.error("lost the XMPP server connection: {why}", why=reason.getErrorMessage())
            if self.lastError is None:
                self.lastError = f"connection lost: {reason.getErrorMessage()}"
        elif self.lastError is None:
            # Closed before the handshake without a stream error to say why.
            self.lastError = f"connection closed before the handshake: {reason.getErrorMessage()}"
            self.log.error("the XMPP server closed the connection before the handshake: {why}",
                           why=reason.getErrorMessage())
        if not self._conflict:
            self._conflicts = 0
        self._conflict = False
        self.connected = False

    def connectFailed(self, address: str, reason: Failure, retryIn: float) -> None:
        """
        No TCP connection to the XMPP server could be made.

        @param retryIn: Seconds until the next attempt.
        """
        self.lastError = f"cannot connect to {address}: {reason.getErrorMessage()}"
        self.log.error("cannot connect to the XMPP server at {address}: {why}; {next}",
                       address=address, why=reason.getErrorMessage(), next=f"retrying in {retryIn:.1f} s")

    def _onStreamError(self, reason: Failure) -> None:
        error = reason.value
        condition = error.condition if isinstance(error, StreamError) else str(error)
        self.lastError = f"stream error: {condition}"
        if condition == "conflict":
            self._conflicted()
            return
        hint = {
            "not-authorized": " (is --secret the component_secret of the server?)",
            "host-unknown": " (does the server define a Component for --jid?)",
        }.get(condition, "")
        self.log.error("the XMPP server closed the stream: {condition}{hint}", condition=condition, hint=hint)

    def _conflicted(self) -> None:
        """
        Another connection holds our JID: another instance leads, or two
        instances do not share one state.  Said once (at info while it
        goes on), until a stream ends otherwise; the component waits the
        longest between attempts (L{HandshakeBackoff.conflicted}).
        """
        self._conflict = True
        self._conflicts += 1
        if self._conflicts == 1:
            self.log.error("the XMPP server closed the stream: conflict: another rosteradmin instance holds the "
                           "component connection for this --jid; not connecting again for "
                           "--reconnect-max-delay (instances sharing a PostgreSQL --state never do this: do they "
                           "share one?)")
        else:
            self.log.info("the XMPP server closed the stream again: conflict ({count} in a row)",
                          count=self._conflicts)

    def _sendKeepalive(self) -> None:
        if self.xmlstream is not None:
            self.xmlstream.send(" ")


#: How much longer each wait for a reconnection is than the one before
#: (Twisted's ReconnectingClientFactory grows it by e as well).
BACKOFF_FACTOR = math.e

#: The first wait, in seconds.
BACKOFF_INITIAL_DELAY = 1.0

#: At most this many seconds are added to each wait at random, so that
#: components restarted together do not reconnect in step.
BACKOFF_JITTER = 0.25

#: The failures a conflict counts as: enough to wait the longest.
CONFLICT_FAILURES = 20


class HandshakeBackoff:
    """
    The retry policy of the component's L{ClientService}: an exponential
    backoff, capped, that a completed handshake resets, not a TCP
    connection.

    C{ClientService} counts failed connection attempts and starts over at
    each TCP connection, so a server that accepts the connection and refuses
    the handshake (a wrong secret) would be retried about every second,
    forever.  Its C{prepareConnection} could hold the connection until the
    handshake, but on Twisted 26.10 a connection lost while it is pending
    raises C{NoTransition} from the state machine (C{_clientDisconnected} in
    C{Connecting}), which is how every refused handshake ends.  So this
    policy keeps its own count of attempts since the last handshake, which
    the component resets on C{STREAM_AUTHD_EVENT}, and ignores
    C{ClientService}'s.

    @ivar failures: Attempts since the last completed handshake.
    @ivar nextDelay: The wait after the next failed attempt, with its
        jitter (known before it happens, to say it when it happens).
    """

    def __init__(self, maxDelay: float, jitter: Callable[[], float] = lambda: random.random() * BACKOFF_JITTER) -> None:
        """
        @param maxDelay: The longest wait, before jitter
            (C{--reconnect-max-delay}).
        @param jitter: Seconds to add to a wait.
        """
        self._policy = backoffPolicy(BACKOFF_INITIAL_DELAY, maxDelay, BACKOFF_FACTOR, jitter)
        self.reset()

    def reset(self) -> None:
        """
        A handshake completed: the next failure waits the shortest time.
        """
        self.failures = 0
        self.nextDelay = self._policy(0)

    def conflicted(self) -> None:
        """
        The server closed the stream, after its handshake, for another
        connection holding our JID (Prosody's C{<conflict/>}): another
        instance is connected, which will not change in a second.  Wait
        the longest, as if the handshake had never completed.
        """
        self.failures = max(self.failures, CONFLICT_FAILURES)
        self.nextDelay = self._policy(self.failures)

    def __call__(self, attempt: int) -> float:
        """
        An attempt failed, before or after its handshake: how long to wait.

        @param attempt: C{ClientService}'s count, unused (see above).
        """
        delay = self.nextDelay
        self.failures += 1
        self.nextDelay = self._policy(self.failures)
        return delay


@implementer(IStreamClientEndpoint)
class ReportingEndpoint:
    """
    An endpoint that reports each failed connection attempt, with its
    cause and the wait before the next, where C{ClientService} would only
    log that it retries.
    """

    def __init__(self, endpoint: IStreamClientEndpoint, address: str, backoff: HandshakeBackoff,
                 connectFailed: Callable[[str, Failure, float], None]) -> None:
        """
        @param address: Where it connects, as the log and C{/healthz} name it.
        @param connectFailed: Told the address, why, and the seconds until
            the next attempt.
        """
        self.endpoint = endpoint
        self.address = address
        self.backoff = backoff
        self.connectFailed = connectFailed

    def __repr__(self) -> str:
        # ClientService names the endpoint in its "Scheduling retry" line.
        return f"the XMPP server at {self.address}"

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        d = self.endpoint.connect(protocolFactory)

        def failed(reason: Failure) -> Failure:
            # A cancelled attempt is the service stopping: no retry follows.
            if not reason.check(CancelledError):
                self.connectFailed(self.address, reason, self.backoff.nextDelay)
            return reason

        return d.addErrback(failed)


@dataclass(frozen=True)
class Handlers:
    """
    The component's XMPP handlers, each built and given its collaborators
    by the composition root (L{rosteradmin.tap.wireParts}).

    @ivar status: Whether we are connected (the L{IConnectionStatus}).
    @ivar grants: What the server lets us do.
    @ivar presence: The users' online resources.
    @ivar privileges: Privileged reads, writes and pushes (with the
        permissions and the online users).
    @ivar rosterServer: Answers roster queries.
    @ivar delegation: Unwraps and answers delegated requests.
    @ivar kicker: Kicks room occupants (the L{IRoomKicker}).
    @ivar disco: Answers service discovery and pings.
    @ivar attempts: Tells the web app what users tried, with
        C{--events-url}.
    """

    status: ConnectionMonitor
    grants: PermissionTracker
    presence: PresenceTracker
    privileges: PrivilegeHandler
    rosterServer: RosterServer
    delegation: DelegationHandler
    kicker: RoomKicker
    disco: DiscoHandler
    attempts: Attempts | None = None

    def inOrder(self) -> tuple[XMPPHandler, ...]:
        """
        The handlers in the order they join the stream, and are told of
        it: the status first, so that those told after it see the stream
        connected.
        """
        handlers: tuple[XMPPHandler, ...] = (self.status, self.grants, self.presence, self.privileges,
                                             self.rosterServer, self.delegation, self.kicker, self.disco)
        return handlers + ((self.attempts,) if self.attempts is not None else ())


class RosterComponent(component.Component):
    """
    The wokkel component with rosteradmin's handlers, connected and
    reconnected by a L{ClientService}.  Nothing connects until the service
    starts.

    @ivar status: Whether we are connected (the L{IConnectionStatus}).
    @ivar privileges: Privileged reads, writes and pushes (with the
        permissions and the online users).
    @ivar rosterServer: Answers roster queries.
    @ivar delegation: Unwraps and answers delegated requests.
    @ivar kicker: Kicks room occupants (the L{IRoomKicker}).
    @ivar backoff: How long to wait before reconnecting.
    @ivar connection: Keeps the stream connected.
    """

    def __init__(self, config: Config, clock: IReactorTime, endpoint: IStreamClientEndpoint, handlers: Handlers,
                 verbose: bool = False, online: IOnlineUsers | None = None) -> None:
        """
        @param endpoint: Connects to the server's component port.
        @param verbose: Log every stanza sent and received.
        @param online: Who is online, as C{/healthz}, C{/metrics} and
            C{inspect} show it: by default the presences the server shares;
            ejabberd's session list where the server shares none.
        """
        super().__init__(config.xmpp_host, config.xmpp_port, config.jid, config.secret)
        # wokkel's Component gives its StreamManager no reactor; this one
        # times IQ requests out.
        self._reactor = clock
        self.timeout = config.iq_timeout
        self.logTraffic = verbose
        # Twisted's "Starting factory" would repeat each attempt.
        self.factory.noisy = False
        self.status = status = handlers.status
        self.privileges = handlers.privileges
        self.rosterServer = handlers.rosterServer
        self.delegation = handlers.delegation
        self.kicker = handlers.kicker
        self.online: IOnlineUsers = online if online is not None else handlers.presence
        for handler in handlers.inOrder():
            handler.setHandlerParent(self)
        self.backoff = HandshakeBackoff(config.reconnect_max_delay)
        self.factory.addBootstrap(xmlstream.STREAM_AUTHD_EVENT, lambda stream: self.backoff.reset())
        # After the handshake's reset: the conflict comes once it completed.
        self.factory.addBootstrap(xmlstream.STREAM_ERROR_EVENT, self._onStreamError)
        address = f"{config.xmpp_host}:{config.xmpp_port}"
        self.connection = ClientService(ReportingEndpoint(endpoint, address, self.backoff, status.connectFailed),
                                        self.factory, retryPolicy=self.backoff, clock=clock)

    def startService(self) -> None:
        service.Service.startService(self)
        self.connection.startService()

    def stopService(self) -> Deferred[None]:
        """
        Stop reconnecting and close the stream.
        """
        self.privileges.stopRetrying()
        service.Service.stopService(self)
        return self.connection.stopService()

    def abandon(self) -> None:
        """
        Close the stream at once, without waiting for what it has not
        sent, and connect no more: this process stopped leading, and
        another will connect soon (L{rosteradmin.leadership}).
        """
        stream = self.xmlstream
        self.connection.stopService()
        if stream is not None and stream.transport is not None:
            stream.transport.abortConnection()

    def _onStreamError(self, reason: Failure) -> None:
        if isinstance(reason.value, StreamError) and reason.value.condition == "conflict":
            self.backoff.conflicted()

    def snapshot(self) -> StreamSnapshot:
        """
        What C{/healthz} and C{/metrics} show of the XMPP side, read at
        once.
        """
        devices = self.privileges.devices
        return StreamSnapshot(
            connected=bool(self.status.connected), lastError=self.status.lastError,
            queriesAnswered=self.rosterServer.answered, queriesRefused=self.rosterServer.gate.refusedCount,
            onlineResources=sum(len(resources) for resources in self.online.online.values()),
            delegated=self.delegation.inPlace, delegationMissing=self.delegation.missing,
            delegationExpected=self.delegation.expected,
            interestedResources=devices.resources(), rosterPushes=devices.pushes, devicesGivenUp=devices.givenUp)

    def resources(self, username: str) -> ResourcesSnapshot:
        """
        A user's online resources and pushed clients, as the XMPP side
        knows them now.
        """
        privileges = self.privileges
        return ResourcesSnapshot(
            presenceShared=bool(self.status.connected) and privileges.permissions.seesPresence,
            online=tuple(sorted(self.online.online.get(username, ()))),
            devices=privileges.devices.describe(username))
