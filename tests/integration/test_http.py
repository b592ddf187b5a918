"""
The HTTP API end to end on a real server: refresh with live roster pushes,
kicks from real MUC rooms, and the exact replies to bad requests.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.web.client import HTTPConnectionPool

from tests.integration.servers import storedRoster, storedSnapshot, waitOnline
from tests.integration.service import KICK_AUTHORIZATION, RunningService
from tests.integration.test_rosters import items

ROOM = "room@conference.example.org"


@pytest.fixture
def rosters() -> dict[str, Any]:
    return {
        "alice": {"carol@example.org": {"name": "Carol"}, "dave@example.org": {"name": "Dave"}},
        "bob": {"alice@example.org": {"name": "Alice"}},
    }


async def call(service: RunningService, method: str, path: str, body: Any = None, raw: bytes | None = None,
               headers: dict[str, str] | None = None) -> tuple[int, Any]:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    response = await treq.request(method, service.baseURL + path, data=data, headers=headers or {},
                                  pool=HTTPConnectionPool(reactor, persistent=False))
    text = await response.text()
    print(f"{method} {path} {data!r} -> {response.code} {text}")
    return response.code, json.loads(text)


@pytest_twisted.ensureDeferred
async def test_refreshPushesChangesToOnlineClient(webapp: Any, service: RunningService, clients: Any) -> None:
    """
    The web app adds bob, renames carol and drops dave; after the refresh
    alice's client receives exactly those three pushes, and bob's presence
    reaches alice once bob logs in.
    """
    alice = await clients("alice")
    before = await alice.rosterGet(ver="")
    alice.sendPresence()
    await waitOnline(service, "alice")
    # ejabberd pushes every write of its API, those made before her
    # answer too: the refresh's pushes are the ones after.
    earlier = len(alice.pushes)

    webapp.rosters["alice"] = {
        "bob@example.org": {"name": "Bob", "groups": ["Friends"]},
        "carol@example.org": {"name": "Caroline"},
    }
    code, body = await call(service, "POST", "/roster_admin/refresh", ["alice"])
    assert (code, body) == (200, {"status": "ok", "message": "roster update complete",
                                  "updated": 1, "errors": 0, "failures": {}})
    pushes = (await alice.waitForPushes(earlier + 3))[earlier:]
    print("\n--- roster pushes received by alice ---")
    for push in pushes:
        print(push.toXml())
    changes = {p.query.item["jid"]: (p.query.item.getAttribute("name"), p.query.item["subscription"])
               for p in pushes}
    assert changes == {
        "bob@example.org": ("Bob", "both"),
        "carol@example.org": ("Caroline", "both"),
        "dave@example.org": (None, "remove"),
    }
    assert all(p.getAttribute("from") in (None, "alice@example.org") for p in pushes)
    assert pushes[-1].query["ver"] != before.query["ver"]

    bob = await clients("bob")
    await bob.rosterGet()
    bob.sendPresence()
    seen = await alice.waitForPresence(lambda p: p.getAttribute("from", "").startswith("bob@example.org/"))
    assert seen.getAttribute("type") is None
    assert items(await alice.rosterGet()) == {
        "bob@example.org": ("Bob", "both", ["Friends"]),
        "carol@example.org": ("Caroline", "both", []),
    }


@pytest_twisted.ensureDeferred
async def test_refreshOfflineUser(xmppServer: Any, webapp: Any, service: RunningService) -> None:
    """
    An offline user's refresh updates the cache and the server's stored
    roster before the next login.
    """
    webapp.rosters["erin"] = {"alice@example.org": {"name": "Alice"}}
    code, body = await call(service, "POST", "/roster_admin/refresh/erin")
    assert code == 200 and body["updated"] == 1
    assert "alice@example.org" in await storedRoster(xmppServer, "erin")
    assert len(service.backend.cache.peek("erin")) == 1


@pytest_twisted.ensureDeferred
async def test_failedFetchChangesNothing(xmppServer: Any, webapp: Any, service: RunningService,
                                         clients: Any) -> None:
    """
    A refresh whose fetch fails leaves the cached and stored rosters as
    they were, and reports the failure.
    """
    alice = await clients("alice")
    await alice.rosterGet()
    stored = await storedSnapshot(xmppServer, "alice")
    cached = service.backend.cache.peek("alice")
    webapp.failures["alice"] = (200, b'{"not a jid": {}}')
    code, body = await call(service, "POST", "/roster_admin/refresh", ["alice"])
    assert code == 500 and body["status"] == "error" and body["errors"] == 1
    assert "not a valid JID" in body["failures"]["alice"] or "alice" in body["failures"]
    assert service.backend.cache.peek("alice") is cached
    assert await storedSnapshot(xmppServer, "alice") == stored


@pytest.mark.parametrize("owner", ["alice", "bob"])
@pytest_twisted.ensureDeferred
async def test_kickFromRealRoom(owner: str, service: RunningService, clients: Any) -> None:
    """
    alice joins a real room, made by C{owner} (herself, or bob before
    her); POST /muc_kick makes the room kick her with status 307 and the
    reason.
    """
    if owner != "alice":
        assert (await (await clients(owner)).joinRoom(ROOM, owner.title())).getAttribute("type") is None
    alice = await clients("alice")
    joined = await alice.joinRoom(ROOM, "Alice")
    assert joined.getAttribute("type") is None
    code, body = await call(service, "POST", "/muc_kick",
                            {"nickname": "Alice", "muc": ROOM, "reason": "spamming"},
                            headers={"Authorization": KICK_AUTHORIZATION})
    assert (code, body) == (200, {"status": "ok", "message": f"Alice kicked from {ROOM}"})
    kicked = await alice.waitForPresence(
        lambda p: p.getAttribute("from") == f"{ROOM}/Alice" and p.getAttribute("type") == "unavailable")
    print("\n--- kick presence received by alice ---\n" + kicked.toXml())
    x = next(e for e in kicked.elements() if e.name == "x")
    assert "307" in [s.getAttribute("code") for s in x.elements() if s.name == "status"]
    assert str(x.item.reason) == "spamming"
    await RunningService.waitUntil(lambda: not service.component.kicker.joined, 5, "component left the room")


@pytest.mark.parametrize("body, headers, expected", [
    ({"nickname": "Alice", "muc": "nosuchroom@conference.example.org"}, None,
     (404, {"error": "Room or nickname not found"})),
    ({"nickname": "Nobody", "muc": ROOM}, None, (404, {"error": "Room or nickname not found"})),
    ({"nickname": "Alice", "muc": ROOM}, {"Authorization": "Bearer wrong"}, (401, {"error": "Authorization failed"})),
    ({"nickname": "Alice", "muc": ROOM}, {}, (401, {"error": "Authorization failed"})),
    ({"muc": ROOM}, None, (400, {"error": "Missing nickname and/or MUC"})),
    (b"{nope", None, (400, {"error": "Request body is not valid JSON"})),
    (["Alice", ROOM], None, (400, {"error": "Request body must be a JSON object"})),
    ({"nickname": "Alice", "muc": f"{ROOM}/Alice"}, None, (400, {"error": "muc must be the bare JID of a room"})),
])
@pytest_twisted.ensureDeferred
async def test_kickBadRequests(body: Any, headers: dict[str, str] | None, expected: tuple[int, Any],
                               service: RunningService, clients: Any) -> None:
    """
    Each bad kick gets its exact status and body from the running service.
    """
    alice = await clients("alice")
    await alice.joinRoom(ROOM, "Alice")
    headers = {"Authorization": KICK_AUTHORIZATION} if headers is None else headers
    raw = body if isinstance(body, bytes) else None
    assert await call(service, "POST", "/muc_kick", None if raw else body, raw=raw, headers=headers) == expected
    assert not [p for p in alice.presences if p.getAttribute("type") == "unavailable"
                and p.getAttribute("from") == f"{ROOM}/Alice"]


@pytest.mark.parametrize("raw, expected", [
    (b"not json", (400, "Request body is not valid JSON")),
    (b'{"alice": 1}', (400, "Request body must be a JSON array of usernames")),
    (b'["alice", 7]', (400, "Every username must be a string")),
    (b"\xff\xfe[]", (400, "Request body is not valid JSON")),
])
@pytest_twisted.ensureDeferred
async def test_refreshBadBodies(raw: bytes, expected: tuple[int, str], service: RunningService) -> None:
    """
    Each bad refresh body gets its status and message from the running service.
    """
    code, body = await call(service, "POST", "/roster_admin/refresh", raw=raw)
    assert (code, body) == (expected[0], {"status": "error", "message": expected[1]})


@pytest_twisted.ensureDeferred
async def test_oversizeBodyRefusedAtOnce(service: RunningService) -> None:
    """
    A body declared over the cap gets 413 before it is read, with a body
    that carries both error shapes of the API.
    """
    code, body = await call(service, "POST", "/roster_admin/refresh", raw=json.dumps(["u" * 64] * 20000).encode())
    assert (code, body) == (413, {"status": "error", "message": "Request body too large",
                                  "error": "Request body too large"})


@pytest.mark.parametrize("prosody", ["rosteradmin_load_rosters = false"], indirect=True)
@pytest_twisted.ensureDeferred
async def test_healthAndMetrics(service: RunningService, clients: Any) -> None:
    """
    healthz reports the connection; metrics count the queries answered
    (alice's first get reaches rosteradmin: her roster is not loaded,
    written and promised at her login here, which would let Prosody
    answer it).
    """
    alice = await clients("alice")
    await alice.rosterGet()
    code, body = await call(service, "GET", "/healthz")
    assert code == 200 and body["connected"] is True and body["cached_users"] >= 1
    response = await treq.get(service.baseURL + "/metrics", pool=HTTPConnectionPool(reactor, persistent=False))
    text = await response.text()
    assert "rosteradmin_roster_queries_total 1.0" in text
    assert "rosteradmin_connected 1.0" in text
