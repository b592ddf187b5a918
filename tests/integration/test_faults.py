"""
Failures survived, with real faults: the web app stopped, slow or
broken, and the XMPP server (Prosody or ejabberd) stopped and restarted.  After each, the cached
and server-side rosters are compared with what the web app last served
successfully: nothing lost, nothing half-applied.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.web import server
from twisted.web.client import HTTPConnectionPool

from tests.integration.servers import READABLE_WHILE_STOPPED, stopKeepingData, storedRoster, waitOnline
from tests.integration.service import KICK_AUTHORIZATION, RunningService
from tests.integration.test_rosters import condition, items

GOOD = {"bob@example.org": {"name": "Bob", "groups": ["Friends"]}}


@pytest.fixture
def rosters() -> dict[str, Any]:
    return {"alice": GOOD, "bob": {"alice@example.org": {"name": "Alice"}}}


@pytest.fixture
def serviceArgs() -> list[str]:
    return ["--fetch-timeout", "1"]


async def call(service: RunningService, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    response = await treq.request(method, service.baseURL + path,
                                  data=json.dumps(body).encode() if body is not None else None,
                                  headers={"Authorization": KICK_AUTHORIZATION},
                                  pool=HTTPConnectionPool(reactor, persistent=False))
    return response.code, json.loads(await response.text())


async def assertIntact(server: Any, service: RunningService, username: str, expected: dict[str, Any]) -> None:
    """
    The cache and the server both hold exactly C{expected} for the user.
    """
    cached = service.backend.cache.peek(username)
    assert cached is not None
    assert {c.jid: c.name for c in cached} == {jid: v.get("name") for jid, v in expected.items()}
    stored = await storedRoster(server, username)
    assert {jid: subscription for jid, (_, subscription, _) in stored.items()} == {jid: "both" for jid in expected}


BROKEN_REPLIES = {
    "500": (500, b"Internal Server Error"),
    "not JSON": (200, b"<html>oops</html>"),
    "array": (200, b'["bob@example.org"]'),
    "key not a JID": (200, b'{"bob@@example.org": {}}'),
    "wrong types": (200, b'{"bob@example.org": {"groups": "Friends"}}'),
    "50 MB": (200, b'{"x": "' + b"a" * (50 * 1024 * 1024) + b'"}'),
}


@pytest.mark.parametrize("fault", sorted(BROKEN_REPLIES))
@pytest_twisted.ensureDeferred
async def test_brokenWebApp(fault: str, xmppServer: Any, webapp: Any, service: RunningService, clients: Any) -> None:
    """
    A broken reply: the cached user keeps the stale roster, an uncached
    user gets wait/internal-server-error and keeps a working session, the
    refresh counts the failure, and nothing cached or stored changes.
    """
    alice = await clients("alice")
    assert items(await alice.rosterGet())
    webapp.failures["alice"] = webapp.failures["carol"] = BROKEN_REPLIES[fault]
    code, body = await call(service, "POST", "/roster_admin/refresh", ["alice"])
    assert code == 500 and body["errors"] == 1, body
    assert items(await alice.rosterGet()) == {"bob@example.org": ("Bob", "both", ["Friends"])}
    await assertIntact(xmppServer, service, "alice", GOOD)

    carol = await clients("carol")
    reply = await carol.rosterGet()
    assert reply["type"] == "error" and condition(reply) == "internal-server-error"
    assert reply.error["type"] == "wait"
    del webapp.failures["carol"]
    assert (await carol.rosterGet())["type"] == "result"


@pytest_twisted.ensureDeferred
async def test_webAppDownAndSlow(xmppServer: Any, webapp: Any, service: RunningService, clients: Any) -> None:
    """
    The web app answering after the timeout, then not listening at all:
    stale rosters are served, uncached users get a wait error in about the
    timeout, and refreshes fail without changing anything.
    """
    alice = await clients("alice")
    await alice.rosterGet()
    webapp.delays["alice"] = webapp.delays["carol"] = 3.0
    code, body = await call(service, "POST", "/roster_admin/refresh", ["alice"])
    assert code == 500 and "within 1s" in body["failures"]["alice"]
    carol = await clients("carol")
    reply = await carol.rosterGet()
    assert condition(reply) == "internal-server-error"

    await webapp.port.stopListening()
    code, body = await call(service, "POST", "/roster_admin/refresh", ["alice", "bob"])
    assert code == 500 and body["errors"] == 2
    assert items(await alice.rosterGet()) == {"bob@example.org": ("Bob", "both", ["Friends"])}
    await assertIntact(xmppServer, service, "alice", GOOD)

    webapp.port = reactor.listenTCP(webapp.portNumber, server.Site(webapp), interface="127.0.0.1")
    del webapp.delays["carol"]
    assert (await carol.rosterGet())["type"] == "result"


@pytest_twisted.ensureDeferred
async def test_xmppServerRestart(xmppServer: Any, webapp: Any, service: RunningService, clients: Any) -> None:
    """
    The server stopped and restarted: health says 503 and kicks 503
    meanwhile, a refresh still updates the cache, and after the component
    reconnects by itself it re-reads its privileges (on ejabberd, probes
    the API), writes the refreshed roster into the server and serves
    clients again.
    """
    alice = await clients("alice")
    await alice.rosterGet()
    stopKeepingData(xmppServer)
    await RunningService.waitUntil(lambda: not service.component.status.connected, 5, "disconnect noticed")

    code, body = await call(service, "GET", "/healthz")
    assert code == 503 and body["connected"] is False
    code, body = await call(service, "POST", "/muc_kick", {"nickname": "a", "muc": "room@conference.example.org"})
    assert (code, body) == (503, {"error": "Not connected to the XMPP server"})
    webapp.rosters["alice"] = {**GOOD, "erin@example.org": {"name": "Erin"}}
    code, body = await call(service, "POST", "/roster_admin/refresh", ["alice"])
    assert code == 200 and body["updated"] == 1
    assert "alice" in service.backend.unsynced
    if READABLE_WHILE_STOPPED:
        assert "erin@example.org" not in await storedRoster(xmppServer, "alice")

    xmppServer.start()
    await RunningService.waitUntil(service.ready, 15, "component reconnected with privileges")
    await RunningService.waitUntil(lambda: not service.backend.unsynced, 10, "unsynced rosters written")
    assert "erin@example.org" in await storedRoster(xmppServer, "alice")
    code, _ = await call(service, "GET", "/healthz")
    assert code == 200
    again = await clients("alice")
    assert set(items(await again.rosterGet())) == {"bob@example.org", "erin@example.org"}
    assert service.component.status.connections == 2


@pytest_twisted.ensureDeferred
async def test_componentReconnectPushesMissedChanges(xmppServer: Any, webapp: Any, service: RunningService,
                                                     clients: Any) -> None:
    """
    Only the component's stream drops; alice stays online at Prosody.  A
    refresh meanwhile updates the cache; once the component is back, the
    server's roster is written and alice's client gets the push it missed
    (Prosody re-announces who is online when the component reconnects).
    """
    alice = await clients("alice")
    await alice.rosterGet()
    alice.sendPresence()
    await waitOnline(service, "alice")
    service.component.stopService()
    await RunningService.waitUntil(lambda: not service.component.status.connected, 5, "component disconnected")

    webapp.rosters["alice"] = {**GOOD, "erin@example.org": {"name": "Erin"}}
    code, body = await call(service, "POST", "/roster_admin/refresh", ["alice"])
    assert code == 200 and body["updated"] == 1
    assert "alice" in service.backend.unsynced

    service.component.startService()
    await RunningService.waitUntil(service.ready, 15, "component reconnected with privileges")
    pushes = await alice.waitForPushes(1)
    assert [(p.query.item["jid"], p.query.item["subscription"]) for p in pushes] == [("erin@example.org", "both")]
    await RunningService.waitUntil(lambda: not service.backend.unsynced, 10, "unsynced rosters written")
    await assertIntact(xmppServer, service, "alice", webapp.rosters["alice"])
