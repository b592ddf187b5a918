"""
Test helpers: a component stream over a StringTransport, stanza parsing,
and an in-memory web app for C{treq.testing.StubTreq}.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IStreamClientEndpoint
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import Request
from twisted.words.xish import domish
from treq.testing import StubTreq
from zope.interface import implementer

from rosteradmin.component import ConnectionMonitor
from rosteradmin.config import Config
from rosteradmin.devices import DeviceViews
from rosteradmin.permissions import PermissionTracker
from rosteradmin.presence import NS_SESSION_NOTICE, PresenceTracker
from rosteradmin.privilege import PrivilegeHandler
from rosteradmin.stanzalimit import StanzaLimit
from rosteradmin.state import SyncState
from rosteradmin.tap import wireParts

DOMAIN = "example.org"
COMPONENT = "roster.example.org"

STREAM_HEADER = (
    "<stream:stream xmlns='jabber:component:accept' "
    "xmlns:stream='http://etherx.jabber.org/streams' "
    f"from='{COMPONENT}' id='s1'>"
)

PERMISSIONS_2 = (
    f"<message from='{DOMAIN}' to='{COMPONENT}'><privilege xmlns='urn:xmpp:privilege:2'>"
    "<perm access='roster' type='both'/><perm access='presence' type='managed_entity'/>"
    "<perm access='iq'><namespace ns='jabber:iq:roster' type='set'/></perm>"
    "</privilege></message>"
)


def parseStanzas(data: bytes | str, namespace: str = "jabber:component:accept") -> list[domish.Element]:
    """
    Parse stanzas (as a component wrote them, by default), in order.
    """
    if isinstance(data, str):
        data = data.encode("utf-8")
    elements: list[domish.Element] = []
    stream = domish.elementStream()
    stream.DocumentStartEvent = lambda root: None
    stream.ElementEvent = elements.append
    stream.DocumentEndEvent = lambda: None
    stream.parse(b"<root xmlns='" + namespace.encode() + b"'>" + data + b"</root>")
    return elements


def parseXML(text: str, namespace: str = "jabber:component:accept") -> domish.Element:
    """
    Parse one stanza.
    """
    [element] = parseStanzas(text, namespace)
    return element


class WebApp(Resource):
    """
    The web app's roster endpoint, in memory: C{GET /rosters/<username>}.

    @ivar rosters: The JSON object served for each user.
    @ivar failures: A status and body to answer instead, per user.
    @ivar requests: How often each user's roster was fetched.
    @ivar held: Requests left unanswered while C{hold} is true.
    """

    isLeaf = True

    def __init__(self, rosters: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.rosters: dict[str, Any] = rosters or {}
        self.failures: dict[str, tuple[int, bytes]] = {}
        self.requests: Counter[str] = Counter()
        self.hold = False
        self.held: list[tuple[Request, str]] = []

    def render_GET(self, request: Request) -> bytes | int:
        username = request.postpath[-1].decode("utf-8")
        self.requests[username] += 1
        if self.hold:
            self.held.append((request, username))
            return 1  # NOT_DONE_YET
        return self.answer(request, username)

    def answer(self, request: Request, username: str) -> bytes:
        if username in self.failures:
            code, body = self.failures[username]
            request.setResponseCode(code)
            return body
        request.setHeader("content-type", "application/json")
        return json.dumps(self.rosters.get(username, {})).encode("utf-8")

    def release(self) -> None:
        """
        Answer the held requests.
        """
        held, self.held, self.hold = self.held, [], False
        for request, username in held:
            request.write(self.answer(request, username))
            request.finish()


def standalonePrivileges(status: ConnectionMonitor) -> PrivilegeHandler:
    """
    A privilege handler with its own trackers, on no stream yet.
    """
    grants, clock = PermissionTracker(DOMAIN, status), Clock()
    devices = DeviceViews(status, grants, SyncState(), clock)
    handler = PrivilegeHandler(DOMAIN, status, grants, PresenceTracker(DOMAIN, devices), devices, clock, 5.0,
                               StanzaLimit())
    devices.wire.sendThrough(handler.pushRequest)
    return handler


def offlineSync() -> PrivilegeHandler:
    """
    The L{IRosterSync} of a component that never connects: the backend
    cannot write into the server, and remembers its users as unsynced.
    """
    return standalonePrivileges(ConnectionMonitor(Clock(), 30.0))


def makeConfig(**overrides: Any) -> Config:
    values: dict[str, Any] = dict(
        jid=COMPONENT, secret="s3cret", domain=DOMAIN,
        roster_url="http://webapp.invalid/rosters/%s", no_kick=True,
    )
    values.update(overrides)
    return Config(**values)


class RecordingTransport(StringTransport):
    """
    A L{StringTransport} that remembers its largest single write (one
    stanza, as the component sends them).
    """

    largestWrite = 0

    def write(self, data: bytes) -> None:
        self.largestWrite = max(self.largestWrite, len(data))
        super().write(data)


@implementer(IStreamClientEndpoint)
class ServerEndpoint:
    """
    Stands for the XMPP server's component port: each connection attempt
    waits in C{attempts} until the test makes it succeed or fail.
    """

    def __init__(self) -> None:
        self.attempts: list[tuple[IProtocolFactory, Deferred[IProtocol]]] = []

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        d: Deferred[IProtocol] = Deferred()
        self.attempts.append((protocolFactory, d))
        return d


class ComponentOnWire:
    """
    A L{rosteradmin.component.RosterComponent} connected over a
    L{StringTransport}, after the real XEP-0114 handshake, with its backend
    fetching from a L{WebApp}; wired by L{wireParts}, as the service is.
    """

    def __init__(self, webApp: WebApp | None = None, config: Config | None = None,
                 state: SyncState | None = None, bulk: bool | None = False,
                 record: Callable[[dict[str, Any]], None] | None = None) -> None:
        """
        @param record: Keeps the events for the web app (what users
            tried), if the test wants them.
        @param bulk: What the component knows of the server's many-items
            roster writes (contrib's mod_rosteradmin_roster) at each
            handshake: C{False}, the default, writes one item per set, as
            with mod_privilege alone; C{None} tries them first.
        """
        self.bulk = bulk
        self.clock = Clock()
        self.config = config or makeConfig()
        self.webApp = webApp or WebApp()
        self.http = StubTreq(self.webApp)
        self.server = ServerEndpoint()
        self.parts = wireParts(self.config, self.clock, self.http, self.server, state=state, record=record)
        self.backend = self.parts.backend
        self.fetcher = self.backend.fetcher
        self.limit = self.backend.limit
        self.component = self.parts.component
        self.transport = RecordingTransport()
        self.xmlstream = self.component.factory.buildProtocol(None)
        self.xmlstream.makeConnection(self.transport)

    def handshake(self, burst: str = "") -> None:
        """
        Complete the handshake; C{burst} arrives in the same read, as
        Prosody sends its advertisements.
        """
        self.xmlstream.dataReceived(STREAM_HEADER)
        assert b"<handshake>" in self.transport.value()
        self.transport.clear()
        self.component.privileges.bulk = self.bulk
        self.xmlstream.dataReceived("<handshake/>" + burst)
        self._answerSessionsQuery()

    def _answerSessionsQuery(self) -> None:
        """
        Answer the query for the sessions that asked for their roster
        without presence, which the component sends once connected, as the
        server does: with none where it has contrib's
        mod_rosteradmin_roster (C{bulk} not C{False}), else an error.  The
        rest of what was sent stays to be read.
        """
        sent = parseStanzas(self.transport.value())
        self.transport.clear()
        for stanza in sent:
            query = stanza.firstChildElement()
            if stanza.name == "iq" and query is not None and query.uri == NS_SESSION_NOTICE:
                answer = (f"<sessions xmlns='{NS_SESSION_NOTICE}'/>" if self.bulk is not False else
                          "<error type='cancel'><service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>"
                          "</error>")
                kind = "result" if self.bulk is not False else "error"
                self.xmlstream.dataReceived(f"<iq type='{kind}' from='{stanza['to']}' to='{stanza['from']}' "
                                            f"id='{stanza['id']}'>{answer}</iq>")
            else:
                self.transport.write(stanza.toXml().encode("utf-8"))

    def reconnect(self, burst: str = "") -> None:
        """
        Lose the stream, as when the server closes it, and connect again on
        a new transport, up to the handshake with C{burst}.
        """
        self.xmlstream.connectionLost(Failure(ConnectionLost("closed by the server")))
        self.transport = RecordingTransport()
        self.xmlstream = self.component.factory.buildProtocol(None)
        self.xmlstream.makeConnection(self.transport)
        self.handshake(burst)

    def receive(self, xml: str) -> None:
        self.xmlstream.dataReceived(xml)

    def sent(self) -> list[domish.Element]:
        """
        The stanzas written since the last call, once the work waiting for
        a turn of the reactor (L{rosteradmin.slicing}: a slice of CPU work
        that took longer than its budget on a loaded machine) has had it.
        """
        self.http.flush()
        while any(call.getTime() <= self.clock.seconds() for call in self.clock.getDelayedCalls()):
            self.clock.advance(0)
            self.http.flush()
        data = self.transport.value()
        self.transport.clear()
        return parseStanzas(data)

    def answerRequests(self, reply: Any) -> list[domish.Element]:
        """
        Answer every stanza the component sends with C{reply(stanza)} (XML,
        or C{None} for no answer), until it sends no more; return all sent.
        """
        everything: list[domish.Element] = []
        while True:
            sent = self.sent()
            if not sent:
                return everything
            everything.extend(sent)
            for stanza in sent:
                answer = reply(stanza)
                if answer is not None:
                    self.receive(answer)
