# -*- test-case-name: tests.integration.test_harness -*-
"""
Real parts for the integration tests, all on loopback: a Prosody running
C{contrib/prosody/rosteradmin.cfg.lua}, the web app's roster endpoint, and
XMPP clients on Twisted's own client stack in the test reactor.

None of it uses the component: tests see rosteradmin only as the server,
the web app and users do.  The Prosody runner is
L{rosteradmin_demo.devprosody.LocalProsody}, which the demo uses too, so both
start the same configuration.

C{ROSTERADMIN_PROSODY} selects the Prosody: unset (or C{0.12}) the host's,
Debian 12's Prosody 0.12; C{13} Debian 13's Prosody 13, run under C{chroot}
from the root C{scripts/debian13.sh} builds (L{tests.integration.prosody13}).
"""

from __future__ import annotations

import itertools
import json
import os
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import unquote_to_bytes

import pytest

from twisted.internet import defer, reactor, ssl
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ConnectError
from twisted.internet.interfaces import IDelayedCall, IListeningPort
from twisted.python.failure import Failure
from twisted.web import pages, server
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.words.protocols.jabber import client, error, xmlstream
from twisted.words.protocols.jabber.jid import JID
from twisted.words.xish import domish

from rosteradmin_demo.devprosody import freePort
from tests.integration.prosody13 import ChrootProsody, debian13Root

__all__ = [
    "CONTRIB_CONFIG", "PASSWORD", "PROSODY", "USERS", "ClientFactory", "LoginFailed", "ProsodyServer", "WebAppStub", "XMPPTestClient",
    "connectClient", "freePort", "listenWebApp", "startedOrFail",
]

#: The configuration operators are told to include; the tests run exactly it.
CONTRIB_CONFIG = Path(__file__).resolve().parents[2] / "contrib" / "prosody" / "rosteradmin.cfg.lua"
#: The accounts every test server has, all with password L{PASSWORD}.
USERS = ("alice", "bob", "carol", "dave", "erin")
PASSWORD = "pw"

#: The Prosody the tests run: "0.12" (the host's) or "13" (Debian 13's, under chroot).
PROSODY = os.environ.get("ROSTERADMIN_PROSODY") or "0.12"
if PROSODY not in ("0.12", "13"):
    raise RuntimeError(f"ROSTERADMIN_PROSODY={PROSODY!r}: use 0.12 (the host's Prosody) or 13")

NS_ROSTER = "jabber:iq:roster"
NS_MUC = "http://jabber.org/protocol/muc"
NS_MUC_USER = "http://jabber.org/protocol/muc#user"

_T = TypeVar("_T")


class ProsodyServer(ChrootProsody):
    """
    A fresh Prosody for one test, the one L{PROSODY} selects: the contrib
    configuration unchanged, behind generated globals that hold only what is
    site-specific (loopback ports, no TLS, plain passwords, data, log and
    pidfile under C{tempDir}).

    The accounts L{USERS} exist before it starts: they are written straight
    into Prosody's internal storage, because C{prosodyctl} run as root drops
    to the C{prosody} user and cannot write into a private temporary
    directory.

    @ivar tempDir: Where the configuration, data, log and pidfile live:
        the test's temporary directory, or on Prosody 13 its C{prosody}
        subdirectory (a symlink into the Debian 13 root).
    @ivar accounts: The password of each account.
    """

    def __init__(self, tempDir: Path, without: tuple[str, ...] = (), settings: str = "") -> None:
        """
        @param without: Modules of the contrib configuration's
            C{modules_enabled} to leave out (the contrib config is copied
            into C{tempDir} without them), to test a server that lacks them.
        @param settings: Global Prosody options (Lua) put before the contrib
            configuration in that copy.
        """
        config = contribConfigWithout(tempDir, without, settings) if without or settings else CONTRIB_CONFIG
        if PROSODY == "13":
            super().__init__(tempDir / "prosody", config, root=debian13Root())
        else:
            super().__init__(tempDir, config)
        self.tempDir = self.directory
        for user in USERS:
            self.addAccount(user, PASSWORD)


class StartableServer(Protocol):
    def start(self) -> None: ...


S = TypeVar("S", bound=StartableServer)


def startedOrFail(server: S) -> S:
    """
    Start a test server; if it cannot start (not installed, no Debian 13
    root, a port taken), fail the test saying why: a green run must have
    run the real server, so it never skips.
    """
    try:
        server.start()
    except RuntimeError as e:
        problem = str(e)
    else:
        return server
    pytest.fail(problem, pytrace=False)  # outside the handler: the message shows once


def contribConfigWithout(directory: Path, modules: tuple[str, ...], settings: str = "") -> Path:
    """
    A copy of the contrib configuration, in C{directory}, whose module lists
    leave out C{modules}, after the global options C{settings}; contrib's
    own Lua modules stay reachable.
    """
    text = settings + "\n" + CONTRIB_CONFIG.read_text()
    for module in modules:
        entry = f'; "{module}"'
        if entry not in text:
            raise ValueError(f"{module} is not enabled in {CONTRIB_CONFIG}")
        text = text.replace(entry, "")
    directory.mkdir(parents=True, exist_ok=True)
    copy = directory / "rosteradmin-without.cfg.lua"
    copy.write_text(text)
    for source in CONTRIB_CONFIG.parent.glob("mod_*.lua"):
        (directory / source.name).write_text(source.read_text())
    return copy


@dataclass(frozen=True)
class EventsPost:
    """
    One events transaction POSTed to the web app stub (C{/events}).

    @ivar status: What the stub answered: 200 if it accepted it.
    """

    headers: Headers
    body: bytes
    status: int

    @property
    def transaction(self) -> dict[str, Any]:
        return dict(json.loads(self.body))


class WebAppStub(Resource):
    """
    The web app's roster endpoint, scripted by the test, and its events
    endpoint (C{POST /events}).

    Request and response::

        GET /rosters/alice HTTP/1.1

        HTTP/1.1 200 OK
        Content-Type: application/json

        {"bob@example.org": {"name": "Bob", "groups": ["Friends"]}}

    @ivar rosters: The JSON value served per username; unknown users get
        C{{}}, as from a web app that knows them without contacts.
    @ivar requests: How often each username was asked for.
    @ivar failures: A status and raw body to answer instead, per username.
    @ivar delays: Seconds to wait before answering, per username; a request
        whose client goes away meanwhile is dropped.
    @ivar lastHeaders: The headers of the latest request, per username.
    @ivar held: The requests held unanswered (L{holdAfter}), with their
        usernames, while their clients stay connected.
    @ivar url: The roster URL template (C{%s} for the username), once the
        C{webapp} fixture listens.
    @ivar port: The listening port, replaced by tests that stop and start it.
    @ivar portNumber: The TCP port, kept to listen on it again.
    @ivar events: Every events transaction POSTed, accepted or not.
    @ivar refuseEvents: A status answered to events transactions instead
        of 200 (accepted), or C{None}.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.rosters: dict[str, Any] = {}
        self.requests: Counter[str] = Counter()
        self.failures: dict[str, tuple[int, bytes]] = {}
        self.delays: dict[str, float] = {}
        self.lastHeaders: dict[str, Headers] = {}
        self.held: list[tuple[server.Request, str]] = []
        self._toAnswer: int | None = None
        self.url = ""
        self.port: IListeningPort | None = None
        self.portNumber = 0
        self.events: list[EventsPost] = []
        self.refuseEvents: int | None = None

    @property
    def eventsURL(self) -> str:
        """
        Where rosteradmin POSTs events (C{--events-url}), once listening.
        """
        return self.url.replace("/rosters/%s", "/events")

    def accepted(self) -> list[dict[str, Any]]:
        """
        The transactions accepted, in the order they arrived.
        """
        return [post.transaction for post in self.events if post.status == 200]

    def render_POST(self, request: server.Request) -> bytes | int:
        if request.postpath != [b"events"]:
            return pages.notFound().render(request)
        status = self.refuseEvents or 200
        self.events.append(EventsPost(request.requestHeaders.copy(), request.content.read(), status))
        request.setResponseCode(status)
        return b"{}"

    def render_GET(self, request: server.Request) -> bytes | int:
        if len(request.postpath) != 2 or request.postpath[0] != b"rosters":
            return pages.notFound().render(request)
        username = unquote_to_bytes(request.postpath[1]).decode("utf-8", "replace")
        self.requests[username] += 1
        self.lastHeaders[username] = request.requestHeaders.copy()
        if self._toAnswer == 0:
            self.held.append((request, username))
            request.notifyFinish().addErrback(lambda _: self.held.remove((request, username)))
            return server.NOT_DONE_YET
        if self._toAnswer is not None:
            self._toAnswer -= 1
        delay = self.delays.get(username)
        if delay is None:
            return self._answer(request, username)
        call = reactor.callLater(delay, self._answerLater, request, username)
        request.notifyFinish().addErrback(lambda _: call.cancel() if call.active() else None)
        return server.NOT_DONE_YET

    def holdAfter(self, count: int) -> None:
        """
        Answer C{count} more roster requests, then hold every further one
        until L{release}: a test knows by construction how far a process
        working through many users can get.
        """
        self._toAnswer = count

    def release(self) -> None:
        """
        Answer the held requests whose clients are still connected, and
        hold no more.
        """
        self._toAnswer = None
        held, self.held = self.held, []
        for request, username in held:
            self._answerLater(request, username)

    def _answerLater(self, request: server.Request, username: str) -> None:
        request.write(self._answer(request, username))
        request.finish()

    def _answer(self, request: server.Request, username: str) -> bytes:
        if username in self.failures:
            code, body = self.failures[username]
            request.setResponseCode(code)
            return body
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(self.rosters.get(username, {})).encode("utf-8")


def listenWebApp(stub: WebAppStub) -> tuple[IListeningPort, str]:
    """
    Serve C{stub} over HTTP on a free loopback port.

    @return: The listening port (stop it at teardown) and the roster URL
        template, C{http://127.0.0.1:<port>/rosters/%s}.
    """
    port = reactor.listenTCP(0, server.Site(stub), interface="127.0.0.1")
    return port, f"http://127.0.0.1:{port.getHost().port}/rosters/%s"


class LoginFailed(Exception):
    """
    A test client could not establish a session: refused connection, failed
    authentication, stream closed or no session in time.
    """


@dataclass
class _Waiter:
    """
    A test waiting until C{check} returns something other than C{None}.
    """

    what: str
    check: Callable[[], object]
    deferred: defer.Deferred[Any]


class XMPPTestClient:
    """
    One logged-in client session (RFC 6120, RFC 6121) that records what it
    receives, so tests can wait for it or assert on it afterwards.

    Roster pushes are answered with an empty result whoever sends them (a
    real client ignores those not from its own account: tests check
    C{from} themselves); other iq requests get C{service-unavailable}.

    @ivar xs: The XML stream.
    @ivar connected: Whether the TCP connection is still open.
    @ivar presences: Every presence received.
    @ivar messages: Every message received.
    @ivar pushes: Every roster push received.
    @ivar view: The roster this client shows, as a real client keeps it:
        the last whole roster it was answered, with every push since
        applied (bare JID to name and sorted groups); C{None} before any.
    @ivar viewVersion: The version of the last roster answer or push.
    @ivar answerPushes: Whether roster pushes are answered (a client
        that drops off the network answers none).
    @ivar transcript: Every stanza sent (C{"SEND <xml>"}) and received
        (C{"RECV <xml>"}), for reports.
    """

    _ids = itertools.count(1)

    def __init__(self, xs: xmlstream.XmlStream) -> None:
        self.xs = xs
        self.connected = True
        self.presences: list[domish.Element] = []
        self.messages: list[domish.Element] = []
        self.pushes: list[domish.Element] = []
        self.view: dict[str, tuple[str | None, list[str]]] | None = None
        self.viewVersion: str | None = None
        self.answerPushes = True
        self.transcript: list[str] = []
        self._responses: dict[str, defer.Deferred[domish.Element]] = {}
        self._waiters: list[_Waiter] = []
        self._lostWaiters: list[defer.Deferred[None]] = []
        self._abortCall: IDelayedCall | None = None
        xs.addObserver("/*", self._onStanza, priority=10)
        xs.addObserver("/presence", self.presences.append)
        xs.addObserver("/message", self.messages.append)
        xs.addObserver("/iq[@type='result']", self._onResponse)
        xs.addObserver("/iq[@type='error']", self._onResponse)
        xs.addObserver("/iq[@type='get']", self._onRequest)
        xs.addObserver("/iq[@type='set']", self._onRequest)
        xs.addObserver("/*", self._checkWaiters, priority=-20)
        xs.addObserver(xmlstream.STREAM_END_EVENT, self._onLost)

    @property
    def jid(self) -> JID:
        """
        The full JID: the one the server bound once the session is up.
        """
        return self.xs.authenticator.jid

    def send(self, stanza: domish.Element | str) -> None:
        """
        Send a stanza (raw XML is sent as it is, to test hostile input).
        """
        self.transcript.append("SEND " + (stanza if isinstance(stanza, str) else stanza.toXml()))
        self.xs.send(stanza)

    def iq(self, element: domish.Element, timeout: float = 10.0) -> defer.Deferred[domish.Element]:
        """
        Send an iq request (giving it an id unless it has one).

        @return: The reply, a result or an error alike.
        @raise TimeoutError: No reply came in C{timeout} seconds.
        """
        if not element.getAttribute("id"):
            element["id"] = f"test{next(self._ids)}"
        stanzaID = element["id"]
        d: defer.Deferred[domish.Element] = defer.Deferred()
        self._responses[stanzaID] = d
        self._timeOut(d, timeout, f"no reply to iq {stanzaID}",
                      lambda: self._responses.pop(stanzaID, None))
        self.send(element)
        return d

    def rosterGet(self, ver: str | None = None, to: str | None = None,
                  timeout: float = 10.0) -> defer.Deferred[domish.Element]:
        """
        Ask for a roster (RFC 6121 2.1.3), with roster versioning if C{ver}
        is given (2.6), another account's if C{to} is.

        @return: The reply, a result or an error alike.
        """
        iq = domish.Element((None, "iq"), attribs={"type": "get"})
        if to is not None:
            iq["to"] = to
        query = iq.addElement((NS_ROSTER, "query"))
        if ver is not None:
            query["ver"] = ver
        return self.iq(iq, timeout)

    def rosterSet(self, itemJID: str, name: str | None = None, subscription: str | None = None,
                  timeout: float = 10.0) -> defer.Deferred[domish.Element]:
        """
        Add, change or (with C{subscription="remove"}) delete a roster item
        (RFC 6121 2.3 and 2.5).

        @return: The reply, a result or an error alike.
        """
        iq = domish.Element((None, "iq"), attribs={"type": "set"})
        item = iq.addElement((NS_ROSTER, "query")).addElement("item")
        item["jid"] = itemJID
        if name is not None:
            item["name"] = name
        if subscription is not None:
            item["subscription"] = subscription
        return self.iq(iq, timeout)

    def sendPresence(self, **attributes: str) -> None:
        """
        Send a presence; C{show}, C{status} and C{priority} become child
        elements, anything else (C{to}, C{type}) attributes.  Without
        arguments this is the initial presence (RFC 6121 4.2).
        """
        presence = domish.Element((None, "presence"))
        for key, value in attributes.items():
            if key in ("show", "status", "priority"):
                presence.addElement(key, content=value)
            else:
                presence[key] = value
        self.send(presence)

    def sendMessage(self, to: str, body: str) -> None:
        """
        Send a chat message.
        """
        message = domish.Element((None, "message"), attribs={"to": to, "type": "chat"})
        message.addElement("body", content=body)
        self.send(message)

    def waitForPresence(self, predicate: Callable[[domish.Element], bool],
                        timeout: float = 10.0) -> defer.Deferred[domish.Element]:
        """
        The first presence, received already or later, that C{predicate}
        accepts.

        @raise TimeoutError: None came in C{timeout} seconds.
        """
        return self._waitFor("no matching presence", timeout,
                             lambda: next((p for p in self.presences if predicate(p)), None))

    def waitForMessage(self, predicate: Callable[[domish.Element], bool],
                       timeout: float = 10.0) -> defer.Deferred[domish.Element]:
        """
        The first message, received already or later, that C{predicate}
        accepts.

        @raise TimeoutError: None came in C{timeout} seconds.
        """
        return self._waitFor("no matching message", timeout,
                             lambda: next((m for m in self.messages if predicate(m)), None))

    def waitForPushes(self, count: int, timeout: float = 10.0) -> defer.Deferred[list[domish.Element]]:
        """
        All roster pushes received, once there are at least C{count}.

        @raise TimeoutError: Fewer came in C{timeout} seconds.
        """
        return self._waitFor(f"fewer than {count} roster pushes", timeout,
                             lambda: list(self.pushes) if len(self.pushes) >= count else None)

    def joinRoom(self, roomJID: str, nick: str, timeout: float = 10.0) -> defer.Deferred[domish.Element]:
        """
        Enter a MUC room (XEP-0045 7.2).

        @return: Our own occupant presence (status 110), or the error
            presence if the room refused us.
        """
        occupant = f"{roomJID}/{nick}"
        presence = domish.Element((None, "presence"), attribs={"to": occupant})
        presence.addElement((NS_MUC, "x"))
        self.send(presence)

        def joined(p: domish.Element) -> bool:
            return p.getAttribute("from") == occupant and (
                p.getAttribute("type") == "error" or "110" in _statusCodes(p))

        return self.waitForPresence(joined, timeout)

    def disconnect(self, timeout: float = 5.0) -> defer.Deferred[None]:
        """
        Close the stream as a client logging out does (RFC 6120 4.4) and
        wait until the server has closed the connection, aborting it if the
        server has not after C{timeout} seconds.  Harmless once closed.
        """
        lost = self._whenLost()
        if self.connected and self._abortCall is None:
            self.xs.sendFooter()
            self._abortCall = reactor.callLater(timeout, self.xs.transport.abortConnection)
        return lost

    def _abort(self) -> defer.Deferred[None]:
        self.xs.transport.abortConnection()
        return self._whenLost()

    def _whenLost(self) -> defer.Deferred[None]:
        if not self.connected:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._lostWaiters.append(d)
        return d

    def _waitFor(self, what: str, timeout: float, check: Callable[[], _T | None]) -> defer.Deferred[_T]:
        found = check()
        if found is not None:
            return defer.succeed(found)
        if not self.connected:
            return defer.fail(ConnectionError(f"{self.jid.full()}: disconnected, {what}"))
        waiter = _Waiter(what, check, defer.Deferred())
        self._waiters.append(waiter)
        self._timeOut(waiter.deferred, timeout, what, lambda: self._waiters.remove(waiter))
        return waiter.deferred

    def _timeOut(self, d: defer.Deferred[Any], timeout: float, what: str,
                 forget: Callable[[], object]) -> None:
        def timedOut(result: object, seconds: float) -> object:
            if isinstance(result, Failure) and result.check(defer.CancelledError):
                forget()
                raise TimeoutError(f"{self.jid.full()}: {what} within {seconds:g}s")
            return result

        d.addTimeout(timeout, reactor, onTimeoutCancel=timedOut)

    def _onStanza(self, element: domish.Element) -> None:
        if element.name in ("iq", "message", "presence"):
            self.transcript.append("RECV " + element.toXml())

    def _checkWaiters(self, element: domish.Element) -> None:
        for waiter in list(self._waiters):
            try:
                found = waiter.check()
            except Exception:
                self._waiters.remove(waiter)
                waiter.deferred.errback()
            else:
                if found is not None:
                    self._waiters.remove(waiter)
                    waiter.deferred.callback(found)

    def _onResponse(self, iq: domish.Element) -> None:
        query = iq.firstChildElement()
        if iq["type"] == "result" and query is not None and (query.uri, query.name) == (NS_ROSTER, "query"):
            self.view = {}
            self._apply(query)
        d = self._responses.pop(iq.getAttribute("id", ""), None)
        if d is not None:
            d.callback(iq)

    def _onRequest(self, iq: domish.Element) -> None:
        query = iq.firstChildElement()
        if iq["type"] == "set" and query is not None and (query.uri, query.name) == (NS_ROSTER, "query"):
            self.pushes.append(iq)
            if self.view is not None:
                self._apply(query)
            if self.answerPushes:
                self.send(xmlstream.toResponse(iq, "result"))
        else:
            self.send(error.StanzaError("service-unavailable").toResponse(iq))

    def _apply(self, query: domish.Element) -> None:
        """
        Apply a roster result's or push's items to L{view}.
        """
        assert self.view is not None
        for item in query.elements(NS_ROSTER, "item"):
            if item.getAttribute("subscription") == "remove":
                self.view.pop(item["jid"], None)
            else:
                self.view[item["jid"]] = (item.getAttribute("name"),
                                          sorted(str(g) for g in item.elements() if g.name == "group"))
        self.viewVersion = query.getAttribute("ver", self.viewVersion)

    def _onLost(self, reason: Failure) -> None:
        self.connected = False
        if self._abortCall is not None and self._abortCall.active():
            self._abortCall.cancel()
        pending: list[tuple[str, defer.Deferred[Any]]] = [
            (f"no reply to iq {i}", d) for i, d in self._responses.items()]
        pending += [(w.what, w.deferred) for w in self._waiters]
        self._responses.clear()
        self._waiters.clear()
        for what, d in pending:
            d.errback(ConnectionError(f"{self.jid.full()}: disconnected, {what}"))
        waiters, self._lostWaiters = self._lostWaiters, []
        for d in waiters:
            d.callback(None)


def availableFrom(bare: str) -> Callable[[domish.Element], bool]:
    """
    A presence predicate: available presence from any resource of C{bare}
    (compared as text: a presence without C{from} is simply not it).
    """
    return lambda p: p.getAttribute("from", "").partition("/")[0] == bare and not p.getAttribute("type")


def _statusCodes(presence: domish.Element) -> set[str]:
    return {
        status.getAttribute("code", "")
        for x in presence.elements(NS_MUC_USER, "x")
        for status in x.elements(NS_MUC_USER, "status")
    }


class _PlainTCPAuthenticator(client.XMPPAuthenticator):
    """
    Twisted's client authenticator without STARTTLS: the test Prosody runs
    without mod_tls, and Twisted requires TLS unless told otherwise.  SASL
    then picks PLAIN, which the tests' Prosody allows unencrypted.
    """

    def associateWithStream(self, xs: xmlstream.XmlStream) -> None:
        super().associateWithStream(xs)
        xs.initializers = [i for i in xs.initializers
                           if not isinstance(i, xmlstream.TLSInitiatingInitializer)]


def connectClient(jid: str, password: str, port: int, host: str = "127.0.0.1",
                  timeout: float = 10.0, tls: bool = False) -> defer.Deferred[XMPPTestClient]:
    """
    Log in over plain TCP: SASL PLAIN, resource binding (the server picks
    the resource unless C{jid} has one), and no presence, so the session is
    invisible to contacts and to the component until the test sends one.
    With C{tls}, STARTTLS first, as a server that requires it wants, taking
    whatever certificate it shows (a test server's is self-signed).

    @raise LoginFailed: No session within C{timeout} seconds, for whatever
        reason; the connection is closed by then.
    """
    where = f"{jid} on {host}:{port}"

    def timedOut(result: XMPPTestClient | Failure, seconds: float) -> XMPPTestClient | Failure:
        if isinstance(result, Failure) and result.check(defer.CancelledError):
            raise LoginFailed(f"{where}: no session within {seconds:g}s")
        return result

    d = defer.ensureDeferred(_login(JID(jid), password, host, port, where, tls))
    return d.addTimeout(timeout, reactor, onTimeoutCancel=timedOut)


async def _login(jid: JID, password: str, host: str, port: int, where: str, tls: bool = False) -> XMPPTestClient:
    # The factory can reconnect, but only when told the connection was lost,
    # which an endpoint never does: a client that logs out stays out.
    authenticator = (client.XMPPAuthenticator(jid, password, configurationForTLS=ssl.CertificateOptions()) if tls
                     else _PlainTCPAuthenticator(jid, password))
    factory = xmlstream.XmlStreamFactory(authenticator)
    session: defer.Deferred[object] = defer.Deferred()
    factory.addBootstrap(xmlstream.STREAM_AUTHD_EVENT, session.callback)
    factory.addBootstrap(xmlstream.INIT_FAILED_EVENT, session.errback)
    factory.addBootstrap(xmlstream.STREAM_END_EVENT,
                         lambda reason: None if session.called else session.errback(reason))
    try:
        xs = await TCP4ClientEndpoint(reactor, host, port).connect(factory)
    except ConnectError as e:
        raise LoginFailed(f"{where}: {e}") from e
    testClient = XMPPTestClient(xs)
    try:
        await session
    except defer.CancelledError:
        await testClient._abort()
        raise
    except Exception as e:
        await testClient._abort()
        raise LoginFailed(f"{where}: {e}") from e
    return testClient


#: What the C{clients} fixture yields: C{await clients("alice")} logs alice in.
ClientFactory = Callable[[str], Awaitable[XMPPTestClient]]
