"""
Rosters end to end on a real server: Prosody with mod_delegation and
mod_privilege, or ejabberd with mod_delegation and its HTTP API; real XMPP
clients, a web app over HTTP on loopback, and rosteradmin started through
the same code path as twistd.
"""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted

from rosteradmin.roster import NS_ROSTER
from tests.integration.servers import storedRoster
from tests.integration.service import RunningService

pytestmark = pytest.mark.integration

ROSTERS = {
    "alice": {
        "bob@example.org": {"name": "Bob", "groups": ["Friends", "Work"]},
        "carol@example.org": {"name": "Carol"},
    },
    "bob": {"alice@example.org": {"name": "Alice", "groups": ["Friends"]}},
}


@pytest.fixture
def rosters() -> dict[str, Any]:
    return ROSTERS


def items(result: Any) -> dict[str, Any]:
    """
    Each item's name, subscription and groups, sorted: a roster item's
    groups are a set, and Prosody, which answers a user's later gets from
    its store (contrib's mod_rosteradmin_roster), keeps them as one.
    """
    query = result.query
    return {
        item["jid"]: (item.getAttribute("name"), item["subscription"],
                      sorted(str(g) for g in item.elements() if g.name == "group"))
        for item in query.elements() if item.name == "item"
    }


def condition(errorIQ: Any) -> str:
    return next(c.name for c in errorIQ.error.elements() if c.uri == "urn:ietf:params:xml:ns:xmpp-stanzas")


@pytest.mark.parametrize("prosody", ["rosteradmin_load_rosters = false"], indirect=True)
@pytest_twisted.ensureDeferred
async def test_clientGetsWebAppRoster(xmppServer: Any, webapp: Any, service: RunningService, clients: Any) -> None:
    """
    alice's client gets the web app's roster with names, groups and
    subscription both, answered by rosteradmin (her roster is not loaded
    at login here: L{test_firstGetAfterTheLoginLoadIsProsodys}); the
    server stores the same items as both.
    """
    alice = await clients("alice")
    result = await alice.rosterGet(ver="")
    print("\n--- client-side transcript (alice) ---")
    for line in alice.transcript:
        if NS_ROSTER in line:
            print(line)
    assert result["type"] == "result"
    assert items(result) == {
        "bob@example.org": ("Bob", "both", ["Friends", "Work"]),
        "carol@example.org": ("Carol", "both", []),
    }
    assert result.query.getAttribute("ver")
    assert result.getAttribute("from") == "alice@example.org"  # the server delivers our inner from
    stored = await storedRoster(xmppServer, "alice")
    assert "bob@example.org" in stored and "carol@example.org" in stored
    assert {subscription for _, subscription, _ in stored.values()} == {"both"}


@pytest_twisted.ensureDeferred
async def test_firstGetAfterTheLoginLoadIsProsodys(prosody: Any, webapp: Any, service: RunningService,
                                                  clients: Any) -> None:
    """
    With contrib's load at login, alice's roster is written and promised
    before her bind returns: her first get is answered by Prosody from its
    store, with the web app's items and the version rosteradmin promised,
    and never reaches rosteradmin.
    """
    answered = service.component.rosterServer.answered
    alice = await clients("alice")
    result = await alice.rosterGet(ver="")
    assert result["type"] == "result" and result.getAttribute("from") is None  # Prosody's own answer
    assert items(result) == {
        "bob@example.org": ("Bob", "both", ["Friends", "Work"]),
        "carol@example.org": ("Carol", "both", []),
    }
    assert result.query.getAttribute("ver") == service.backend.promises.promisedVersion("alice")
    assert service.component.rosterServer.answered == answered


@pytest_twisted.ensureDeferred
async def test_secondGetServedFromCache(webapp: Any, service: RunningService, clients: Any) -> None:
    """
    A second roster get is answered without a second HTTP fetch.
    """
    alice = await clients("alice")
    first = await alice.rosterGet()
    second = await alice.rosterGet()
    assert items(first) == items(second)
    assert webapp.requests["alice"] == 1


@pytest_twisted.ensureDeferred
async def test_currentVersionGetsEmptyResult(service: RunningService, clients: Any) -> None:
    """
    A roster get with the current ver gets an empty result (XEP-0237).
    """
    alice = await clients("alice")
    first = await alice.rosterGet(ver="")
    again = await alice.rosterGet(ver=first.query["ver"])
    assert again["type"] == "result" and again.firstChildElement() is None


@pytest_twisted.ensureDeferred
async def test_rosterSetRefused(xmppServer: Any, service: RunningService, clients: Any) -> None:
    """
    A roster set is refused with not-allowed and changes nothing.
    """
    alice = await clients("alice")
    await alice.rosterGet()
    reply = await alice.rosterSet("mallory@example.org", name="Mallory")
    assert reply["type"] == "error" and condition(reply) == "not-allowed"
    assert "web application" in str(reply.error.text)
    stored = await storedRoster(xmppServer, "alice")
    assert not any("mallory" in f"{jid} {name}" for jid, (name, _, _) in stored.items())
    assert "mallory@example.org" not in items(await alice.rosterGet())


@pytest_twisted.ensureDeferred
async def test_otherUsersRosterForbidden(webapp: Any, service: RunningService, clients: Any) -> None:
    """
    bob asking for alice's roster gets forbidden, and alice's roster is
    not even fetched.
    """
    bob = await clients("bob")
    reply = await bob.rosterGet(to="alice@example.org")
    assert reply["type"] == "error" and condition(reply) == "forbidden"
    assert webapp.requests["alice"] == 0


@pytest_twisted.ensureDeferred
async def test_contactsSeeEachOthersPresence(service: RunningService, clients: Any) -> None:
    """
    With the rosters synced before the roster gets are answered, alice and
    bob see each other's presence at login.
    """
    alice = await clients("alice")
    await alice.rosterGet()
    alice.sendPresence()
    bob = await clients("bob")
    await bob.rosterGet()
    bob.sendPresence()
    seenByAlice = await alice.waitForPresence(lambda p: p.getAttribute("from", "").startswith("bob@example.org/"))
    seenByBob = await bob.waitForPresence(lambda p: p.getAttribute("from", "").startswith("alice@example.org/"))
    assert seenByAlice.getAttribute("type") is None
    assert seenByBob.getAttribute("type") is None


@pytest.mark.parametrize("prosody", ["rosteradmin_load_rosters = false"], indirect=True)
@pytest_twisted.ensureDeferred
async def test_presenceWarmsCache(webapp: Any, service: RunningService, clients: Any) -> None:
    """
    A user's initial presence makes the component fetch the roster before
    the client asks, and its full JID is tracked as online.  (With the
    server's roster load at login, the login has fetched it already: that
    is off here, as on a server without it.)
    """
    carol = await clients("carol")
    carol.sendPresence()
    await RunningService.waitUntil(lambda: "carol" in service.backend.cache, 10, "carol's roster cached")
    assert webapp.requests["carol"] == 1
    assert service.component.privileges.online["carol"] == {carol.jid.full()}


@pytest_twisted.ensureDeferred
async def test_everyPushCarriesItsVersion(webapp: Any, service: RunningService, clients: Any) -> None:
    """
    After a refresh each push carries the version of the roster once it is
    applied: asking with the first push's version gets the full roster,
    with the last push's an empty result (RFC 6121 §2.6.3, XEP-0237).
    """
    alice = await clients("alice")
    await alice.rosterGet(ver="")
    alice.sendPresence()
    await RunningService.waitUntil(lambda: "alice" in service.component.privileges.online, 10, "alice online")
    webapp.rosters["alice"] = {"bob@example.org": {"name": "Bob"}, "dave@example.org": {"name": "Dave"}}
    await service.backend.refresh(["alice"])
    pushes = await alice.waitForPushes(3)
    versions = [p.query.getAttribute("ver") for p in pushes]
    assert all(versions) and len(set(versions)) == 3
    stale = await alice.rosterGet(ver=versions[0])
    assert items(stale) == {"bob@example.org": ("Bob", "both", []), "dave@example.org": ("Dave", "both", [])}
    assert stale.query["ver"] == versions[-1]
    current = await alice.rosterGet(ver=versions[-1])
    assert current["type"] == "result" and current.firstChildElement() is None
