# -*- test-case-name: tests.test_component -*-
"""
The XEP-0114 external component: connection, reconnection, keepalive, and
the wiring of the XMPP handlers.

wokkel's L{Component} handles the handshake and reconnects; this module caps
its backoff (and keeps backing off while the server refuses the handshake),
gives IQ requests a timeout, sends whitespace keepalives, and says why a
connection failed where wokkel would only retry: an unreachable server, a
wrong secret, a second component with our JID.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.interfaces import IAddress, IConnector, IConsumer, IPushProducer, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.words.protocols.jabber import xmlstream
from twisted.words.protocols.jabber.component import ConnectComponentAuthenticator
from twisted.words.protocols.jabber.error import StreamError
from twisted.words.xish.xmlstream import XmlStreamFactoryMixin
from wokkel import component
from wokkel.subprotocols import StreamManager, XMPPHandler
from zope.interface import implementer

from rosteradmin.config import Config
from rosteradmin.delegation import DelegationHandler
from rosteradmin.disco import DiscoHandler
from rosteradmin.fairness import QueryGate
from rosteradmin.interfaces import IConnectionStatus, IRosterBackend
from rosteradmin.muc import RoomKicker
from rosteradmin.privilege import PrivilegeHandler
from rosteradmin.roster import NS_ROSTER
from rosteradmin.rosterserver import RosterServer
from rosteradmin.stanzalimit import StanzaLimit


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
    """

    log = Logger()

    def __init__(self, clock: IReactorTime, keepaliveInterval: float) -> None:
        super().__init__()
        self.clock = clock
        self.keepaliveInterval = keepaliveInterval
        self.connected = False
        self.lastError: str | None = None
        self.connections = 0
        self.backpressure: ReadOnlyWhileDrained | None = None
        self._keepalive: LoopingCall | None = None

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
        self.parent.factory.resetDelay()
        self.log.info("connected to the XMPP server as {jid}", jid=self.xmlstream.thisEntity.full())
        self._keepalive = LoopingCall(self._sendKeepalive)
        self._keepalive.clock = self.clock
        self._keepalive.start(self.keepaliveInterval, now=False)

    def connectionLost(self, reason: Failure) -> None:
        if self._keepalive is not None and self._keepalive.running:
            self._keepalive.stop()
        self._keepalive = None
        if self.connected and not self.parent.running:
            self.log.info("disconnected from the XMPP server: the service is stopping")
        elif self.connected:
            self.log.error("lost the XMPP server connection: {why}", why=reason.getErrorMessage())
            if self.lastError is None:
                self.lastError = f"connection lost: {reason.getErrorMessage()}"
        elif self.lastError is None:
            # Closed before the handshake without a stream error to say why.
            self.lastError = f"connection closed before the handshake: {reason.getErrorMessage()}"
            self.log.error("the XMPP server closed the connection before the handshake: {why}",
                           why=reason.getErrorMessage())
        self.connected = False

    def connectFailed(self, address: str, reason: Failure, retryIn: float | None) -> None:
        """
        No TCP connection to the XMPP server could be made.

        @param retryIn: Seconds until the next attempt (C{None}: no retry).
        """
        self.lastError = f"cannot connect to {address}: {reason.getErrorMessage()}"
        self.log.error("cannot connect to the XMPP server at {address}: {why}; {next}",
                       address=address, why=reason.getErrorMessage(),
                       next=f"retrying in {retryIn:.1f} s" if retryIn is not None else "not retrying")

    def _onStreamError(self, reason: Failure) -> None:
        error = reason.value
        condition = error.condition if isinstance(error, StreamError) else str(error)
        self.lastError = f"stream error: {condition}"
        hint = {
            "not-authorized": " (is --secret the component_secret of the server?)",
            "conflict": " (is another rosteradmin connected with the same --jid?)",
            "host-unknown": " (does the server define a Component for --jid?)",
        }.get(condition, "")
        self.log.error("the XMPP server closed the stream: {condition}{hint}", condition=condition, hint=hint)

    def _sendKeepalive(self) -> None:
        if self.xmlstream is not None:
            self.xmlstream.send(" ")


class HandshakeBackoffFactory(xmlstream.XmlStreamFactory):
    """
    Reconnects with a backoff that a completed handshake resets, not a TCP
    connection: Twisted's factory resets it on connect, so a server that
    accepts the connection and refuses the handshake (a wrong secret) was
    retried about every second, forever.

    @ivar connectFailed: Told of each failed TCP connection attempt.
    """

    #: Twisted's own lines ("Starting factory", "will retry in") would
    #: repeat each attempt; rosteradmin logs the failures with their cause.
    noisy = False

    def __init__(self, authenticator: ConnectComponentAuthenticator,
                 connectFailed: Callable[[str, Failure, float | None], None]) -> None:
        super().__init__(authenticator)
        self.connectFailed = connectFailed

    def buildProtocol(self, addr: IAddress | None) -> xmlstream.XmlStream:
        return XmlStreamFactoryMixin.buildProtocol(self, addr)

    def clientConnectionFailed(self, connector: IConnector, reason: Failure) -> None:
        super().clientConnectionFailed(connector, reason)
        destination = connector.getDestination()
        address = f"{getattr(destination, 'host', '?')}:{getattr(destination, 'port', '?')}"
        # retry() has scheduled the next attempt and already grown the delay
        # for the one after it.
        scheduled, clock = self._callID, self.clock
        # retry() sets the clock (the global reactor unless given) as it schedules.
        self.connectFailed(address, reason,
                           scheduled.getTime() - clock.seconds() if scheduled is not None and clock is not None
                           else None)


class RosterComponent(component.Component):
    """
    The wokkel component with rosteradmin's handlers.  Nothing connects
    until the service starts.

    @ivar status: Whether we are connected (the L{IConnectionStatus}).
    @ivar privileges: Permissions, online users, privileged writes (the
        backend's L{IRosterSync}).
    @ivar rosterServer: Answers roster queries.
    @ivar delegation: Unwraps and answers delegated requests.
    @ivar kicker: Kicks room occupants (the L{IRoomKicker}).
    """

    def __init__(self, config: Config, backend: IRosterBackend, clock: IReactorTime, verbose: bool = False,
                 limit: StanzaLimit | None = None) -> None:
        """
        @param limit: The server's stanza size limit, shared with the
            backend; by default from C{config.max_stanza_bytes}.
        """
        if limit is None:
            limit = StanzaLimit(config.max_stanza_bytes)
        self.status = ConnectionMonitor(clock, config.keepalive_interval)
        # What wokkel's Component.__init__ does, with our factory.
        self.host, self.port = config.xmpp_host, config.xmpp_port
        StreamManager.__init__(self, HandshakeBackoffFactory(
            ConnectComponentAuthenticator(config.jid, config.secret), self.status.connectFailed))
        self.logTraffic = verbose
        self._reactor = clock
        self.timeout = config.iq_timeout
        # ReconnectingClientFactory backs off with jitter up to an hour by
        # default; the server is usually back within seconds.
        self.factory.maxDelay = config.reconnect_max_delay
        self.privileges = PrivilegeHandler(
            config.domain, self.status, clock, config.iq_timeout, limit, config.sync_latency_target,
            userOnline=backend.warm, rosterAccessGranted=backend.connectionRestored,
            userWasOnline=backend.catchUp,
        )
        self.rosterServer = RosterServer(backend, config.domain, config.jid, limit,
                                         QueryGate(clock, config.queries_per_user, config.query_rate))
        self.delegation = DelegationHandler(
            config.domain, config.jid, {NS_ROSTER: self.rosterServer.answerDelegated}, limit
        )
        self.kicker = RoomKicker(config.jid, self.status, clock, config.iq_timeout,
                                 config.kick_nick, config.stay_in_rooms)
        for handler in (self.status, self.privileges, self.rosterServer, self.delegation,
                        self.kicker, DiscoHandler(config.jid)):
            handler.setHandlerParent(self)
        backend.sync = self.privileges

    def stopService(self) -> object:
        self.privileges.stopRetrying()
        return super().stopService()
