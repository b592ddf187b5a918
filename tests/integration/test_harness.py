# -*- test-case-name: tests.integration.test_harness -*-
"""
The integration harness on its own, without rosteradmin: Prosody runs the
contrib configuration, clients log in and talk, the web app stub answers as
scripted, and every part closes behind itself.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import pytest_twisted
import treq
from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.task import deferLater
from twisted.web.client import ResponseNeverReceived
from twisted.web.http_headers import Headers
from twisted.words.protocols.jabber import component, xmlstream
from twisted.words.protocols.jabber.jid import JID
from twisted.words.xish import domish

from tests.integration.harness import (
    CONTRIB_CONFIG, NS_ROSTER, USERS, ClientFactory, LoginFailed, ProsodyServer, WebAppStub,
    XMPPTestClient, availableFrom, connectClient,
)

NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
NS_PRIVILEGE = "urn:xmpp:privilege:2"
NS_DELEGATION = "urn:xmpp:delegation:2"


def condition(errorStanza: domish.Element) -> str:
    """
    The defined condition of an error stanza (RFC 6120 8.3.3).
    """
    return next(c.name for c in errorStanza.error.elements() if c.uri == NS_STANZAS)


def storedItem(storedRoster: str, jid: str) -> str:
    """
    The lines of one contact in a roster file of Prosody's internal storage,
    where each item is a table keyed by the contact's JID.
    """
    match = re.search(rf'^\t\["{re.escape(jid)}"\] = {{\n((?:\t\t.*\n)*)\t}};$', storedRoster, re.MULTILINE)
    return match.group(1) if match else ""


async def waitUntil(condition: Callable[[], object], what: str, timeout: float = 5.0) -> None:
    """
    Poll until C{condition} holds.

    @raise AssertionError: It did not within C{timeout} seconds.
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        await deferLater(reactor, 0.02, lambda: None)


def roundTrip(client: XMPPTestClient) -> defer.Deferred[domish.Element]:
    """
    Ping the server (XEP-0199): once answered, it has handled everything
    the client sent before.
    """
    ping = domish.Element((None, "iq"), attribs={"type": "get", "to": client.jid.host})
    ping.addElement(("urn:xmpp:ping", "ping"))
    return client.iq(ping)


def liveConnections() -> set[object]:
    """
    The TCP connections and listening ports the reactor watches.
    """
    return {s for s in {*reactor.getReaders(), *reactor.getWriters()}
            if type(s).__module__ == "twisted.internet.tcp"}


def test_contribHasNoSiteSettings() -> None:
    """
    The contrib configuration sets no ports, interfaces, paths, TLS or
    authentication: those belong to the including site.
    """
    code = "\n".join(line.split("--")[0] for line in CONTRIB_CONFIG.read_text().splitlines())
    settings = set(re.findall(r"^ {0,4}(\w+)\s*=", code, re.MULTILINE))
    assert settings == {"admins", "modules_enabled", "privileged_entities", "delegations",
                        "component_secret", "muc_room_locking", "component_admins_as_room_owners"}
    assert [line.rstrip() for line in code.splitlines() if line.startswith(("VirtualHost", "Component"))] == [
        'VirtualHost "example.org"',
        'Component "roster.example.org"',
        'Component "conference.example.org" "muc"',
    ]


def test_generatedConfigIncludesContrib(prosody: ProsodyServer) -> None:
    """
    Prosody runs the generated globals plus the contrib file, and every
    host that file defines comes up.
    """
    generated = prosody.configPath.read_text()
    assert generated.rstrip().endswith(f'Include "{CONTRIB_CONFIG}"')
    assert "VirtualHost" not in generated and "Component" not in generated
    # Prosody accepts on its ports before its log reaches the last host.
    expected = {f"Activated host: {host}\n"
                for host in (prosody.domain, prosody.componentJID, prosody.mucDomain)}
    deadline = time.monotonic() + 5
    while not all(line in prosody.logPath.read_text() for line in expected):
        assert time.monotonic() < deadline, prosody.logTail()
        time.sleep(0.05)
    assert prosody.configPath.parent == prosody.tempDir
    assert prosody.accounts == {user: "pw" for user in USERS}


def test_startFailureShowsLog(tmp_path: Path) -> None:
    """
    A Prosody that cannot start raises RuntimeError with the end of its
    output, and leaves no process behind.
    """
    server = ProsodyServer(tmp_path)
    server.includeConfig = tmp_path / "broken.cfg.lua"
    server.includeConfig.write_text('VirtualHost "example.org"\n    modules_enabled = {\n')
    with pytest.raises(RuntimeError, match="broken.cfg.lua"):
        server.start()
    assert not server.running


def test_missingProsodyExplainsSetup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    Without the prosody binary, start says how to install it.
    """
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RuntimeError, match=r"scripts/test\.sh.*apt-get install prosody prosody-modules"):
        ProsodyServer(tmp_path).start()


@pytest_twisted.ensureDeferred
async def test_componentGetsPrivilegesAndDelegation(prosody: ProsodyServer) -> None:
    """
    A component that logs in with the contrib secret is told it may use
    users' rosters, presences and roster pushes, and handles jabber:iq:roster.
    """
    received: list[domish.Element] = []
    ended: defer.Deferred[None] = defer.Deferred()
    factory = component.componentFactory(prosody.componentJID, prosody.secret)
    factory.addBootstrap(xmlstream.STREAM_CONNECTED_EVENT,
                         lambda xs: xs.addObserver("/message", received.append))
    factory.addBootstrap(xmlstream.STREAM_END_EVENT, lambda reason: ended.callback(None))
    xs = await TCP4ClientEndpoint(reactor, "127.0.0.1", prosody.componentPort).connect(factory)
    try:
        await waitUntil(lambda: len(received) == 2, "privilege and delegation advertised")
    finally:
        xs.sendFooter()
        await ended
    byChild = {m.firstChildElement().uri: m.firstChildElement() for m in received}
    perms = list(byChild[NS_PRIVILEGE].elements(NS_PRIVILEGE, "perm"))
    assert {(p["access"], p.getAttribute("type")) for p in perms} == {
        ("roster", "both"), ("presence", "managed_entity"), ("iq", None)}
    [iqPerm] = [p for p in perms if p["access"] == "iq"]
    assert [(n["ns"], n["type"]) for n in iqPerm.elements(NS_PRIVILEGE, "namespace")] == [(NS_ROSTER, "set")]
    assert [d["namespace"] for d in byChild[NS_DELEGATION].elements(NS_DELEGATION, "delegated")] == [NS_ROSTER]


# The client stack's own subscriptions: without contrib's blocker.
@pytest.mark.parametrize("prosody", [("rosteradmin_subscriptions",)], indirect=True)
@pytest_twisted.ensureDeferred
async def test_clientsExchangePresenceAndMessages(prosody: ProsodyServer, clients: ClientFactory) -> None:
    """
    Once bob approves alice's subscription request, alice sees bob's
    presence and they chat; Prosody stores the subscription in both rosters.
    """
    alice = await clients("alice")
    bob = await clients("bob")
    assert (alice.jid.userhost(), bob.jid.userhost()) == ("alice@example.org", "bob@example.org")
    assert alice.jid.resource and alice.presences == []
    alice.sendPresence()
    bob.sendPresence()

    alice.sendPresence(to="bob@example.org", type="subscribe")
    await bob.waitForPresence(lambda p: p.getAttribute("type") == "subscribe")
    bob.sendPresence(to="alice@example.org", type="subscribed")
    await alice.waitForPresence(availableFrom("bob@example.org"))
    bob.sendPresence(status="here")
    update = await alice.waitForPresence(lambda p: p.status is not None)
    assert (update["from"], str(update.status)) == (bob.jid.full(), "here")

    bob.sendMessage(alice.jid.full(), "hello")
    message = await alice.waitForMessage(lambda m: m.body is not None)
    assert (message["from"], str(message.body)) == (bob.jid.full(), "hello")

    assert '["subscription"] = "to";' in storedItem(prosody.storedRoster("alice"), "bob@example.org")
    assert '["subscription"] = "from";' in storedItem(prosody.storedRoster("bob"), "alice@example.org")
    assert prosody.storedRoster("carol") == ""
    assert any(line.startswith("SEND <message") for line in bob.transcript)
    assert any(line.startswith("RECV <message") for line in alice.transcript)


@pytest_twisted.ensureDeferred
async def test_rosterQueriesWithoutComponentFail(clients: ClientFactory) -> None:
    """
    With jabber:iq:roster delegated to a component that is not connected,
    roster gets and sets get service-unavailable at once instead of hanging.
    """
    alice = await clients("alice")
    started = time.monotonic()
    get = await alice.rosterGet(ver="", timeout=5)
    put = await alice.rosterSet("bob@example.org", name="Bob", timeout=5)
    assert time.monotonic() - started < 2
    assert (get["type"], condition(get)) == ("error", "service-unavailable")
    assert (put["type"], condition(put)) == ("error", "service-unavailable")
    assert alice.pushes == []


@pytest_twisted.ensureDeferred
async def test_clientAnswersRequestsItDoesNotKnow(clients: ClientFactory) -> None:
    """
    An iq the client does not handle is answered service-unavailable, so
    whoever asked does not wait; the generic iq returns that error reply.
    """
    alice = await clients("alice")
    bob = await clients("bob")
    request = domish.Element((None, "iq"), attribs={"type": "get", "to": bob.jid.full()})
    request.addElement(("urn:example:unknown", "query"))
    reply = await alice.iq(request)
    assert (reply["type"], reply["from"], condition(reply)) == ("error", bob.jid.full(), "service-unavailable")


@pytest_twisted.ensureDeferred
async def test_joinRoom(prosody: ProsodyServer, clients: ClientFactory) -> None:
    """
    Rooms on the contrib MUC service can be joined at once: the creator gets
    its own presence with status 110 and sees who joins after it.
    """
    room = f"lounge@{prosody.mucDomain}"
    alice = await clients("alice")
    bob = await clients("bob")
    own = await alice.joinRoom(room, "Alice")
    assert own.getAttribute("type") is None
    await bob.joinRoom(room, "Bob")
    await alice.waitForPresence(lambda p: p.getAttribute("from") == f"{room}/Bob")


@pytest_twisted.ensureDeferred
async def test_waitingTimesOutClearly(clients: ClientFactory) -> None:
    """
    Waiting for something that never comes fails with TimeoutError naming
    the client, and leaves no timer behind.
    """
    alice = await clients("alice")
    with pytest.raises(TimeoutError, match="alice@example.org/.*fewer than 1 roster pushes within 0.2s"):
        await alice.waitForPushes(1, timeout=0.2)
    with pytest.raises(TimeoutError, match="no matching presence within 0.2s"):
        await alice.waitForPresence(lambda p: False, timeout=0.2)
    assert alice._waiters == []


@pytest_twisted.ensureDeferred
async def test_wrongPasswordFailsLogin(prosody: ProsodyServer) -> None:
    """
    A wrong password fails the login with the SASL condition, and the
    connection is closed by the time it does.
    """
    before = liveConnections()
    with pytest.raises(LoginFailed, match="alice@example.org on 127.0.0.1:.*not-authorized"):
        await connectClient("alice@example.org", "wrong", prosody.c2sPort)
    assert liveConnections() == before


@pytest_twisted.ensureDeferred
async def test_refusedConnectionFailsLogin(prosody: ProsodyServer) -> None:
    """
    Nothing listening fails the login at once, naming the address.
    """
    prosody.stop()
    with pytest.raises(LoginFailed, match=f"127.0.0.1:{prosody.c2sPort}: Connection was refused"):
        await connectClient("alice@example.org", "pw", prosody.c2sPort)


@pytest_twisted.ensureDeferred
async def test_logoutLeavesNothingBehind(prosody: ProsodyServer) -> None:
    """
    After disconnect the connection is closed and no timer or reconnection
    attempt is left in the reactor.
    """
    connections, calls = liveConnections(), set(reactor.getDelayedCalls())
    alice = await connectClient("alice@example.org", "pw", prosody.c2sPort)
    alice.sendPresence()
    await alice.waitForPresence(availableFrom("alice@example.org"))
    await alice.disconnect()
    assert not alice.connected
    assert liveConnections() == connections
    assert set(reactor.getDelayedCalls()) <= calls
    await alice.disconnect()


# The client stack's own subscriptions: without contrib's blocker.
@pytest.mark.parametrize("prosody", [("rosteradmin_subscriptions",)], indirect=True)
@pytest_twisted.ensureDeferred
async def test_restartKeepsPortsAndData(prosody: ProsodyServer, clients: ClientFactory) -> None:
    """
    After a restart on the same ports and data, connected clients have seen
    the connection drop and users log in again with their stored rosters.
    """
    alice = await clients("alice")
    alice.sendPresence(to="bob@example.org", type="subscribe")
    await roundTrip(alice)
    stored = prosody.storedRoster("alice")
    assert "bob@example.org" in stored
    ports = (prosody.c2sPort, prosody.componentPort)
    prosody.restart()
    with pytest.raises(ConnectionError, match="disconnected"):
        await alice.rosterGet()
    assert not alice.connected
    again = await clients("alice")
    assert (prosody.c2sPort, prosody.componentPort) == ports
    assert prosody.storedRoster("alice") == stored
    assert again.connected


@pytest_twisted.ensureDeferred
async def test_webAppServesScriptedRosters(webapp: WebAppStub) -> None:
    """
    The stub serves each user's roster as JSON, {} for unknown users, the
    scripted failure instead when there is one, and 404 off its path; it
    counts requests and keeps their headers.
    """
    webapp.rosters["alice"] = {"bob@example.org": {"name": "Bob", "groups": ["Friends"]}}
    webapp.failures["dave"] = (503, b"maintenance")
    assert webapp.url.startswith("http://127.0.0.1:") and webapp.url.endswith("/rosters/%s")

    headers = Headers({"Authorization": ["Bearer t"]})
    response = await treq.get(webapp.url % "alice", headers=headers, persistent=False)
    assert response.code == 200
    assert response.headers.getRawHeaders("content-type") == ["application/json"]
    assert await response.json() == {"bob@example.org": {"name": "Bob", "groups": ["Friends"]}}
    assert webapp.lastHeaders["alice"].getRawHeaders("authorization") == ["Bearer t"]

    response = await treq.get(webapp.url % "j%C3%BCrgen%2Fx", persistent=False)
    assert (response.code, await response.json()) == (200, {})
    response = await treq.get(webapp.url % "dave", persistent=False)
    assert (response.code, await response.content()) == (503, b"maintenance")
    response = await treq.get(webapp.url.replace("/rosters/%s", "/other/alice"), persistent=False)
    assert response.code == 404
    await response.content()
    assert webapp.requests == {"alice": 1, "jürgen/x": 1, "dave": 1}


@pytest_twisted.ensureDeferred
async def test_webAppDelays(webapp: WebAppStub) -> None:
    """
    A delayed user is answered after the delay; when the client gives up
    first, the stub drops the answer and its timer.
    """
    webapp.delays["slow"] = 0.3
    started = time.monotonic()
    response = await treq.get(webapp.url % "slow", persistent=False)
    assert await response.json() == {}
    assert time.monotonic() - started >= 0.3

    webapp.delays["gone"] = 30
    abandoned = treq.get(webapp.url % "gone", persistent=False)
    await waitUntil(lambda: webapp.requests["gone"], "request received")
    abandoned.cancel()
    with pytest.raises(ResponseNeverReceived):
        await abandoned

    def timers() -> list[object]:
        return [c for c in reactor.getDelayedCalls() if getattr(c.func, "__self__", None) is webapp]

    await waitUntil(lambda: not timers(), "answer dropped")
