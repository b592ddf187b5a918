"""
Subscription presences on a real server with contrib's
mod_rosteradmin_subscriptions (Prosody's, or ejabberd's): stopped in both directions, the stored
rosters untouched, presence still flowing; no client gets an error for
what it did not send.
"""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted

from tests.integration.harness import XMPPTestClient
from tests.integration.servers import UNREACHABLE_COMPONENT, storedRoster, storedSnapshot, waitOnline
from tests.integration.service import RunningService

SUBSCRIPTION_TYPES = ["subscribe", "subscribed", "unsubscribe", "unsubscribed"]


@pytest.fixture
def rosters() -> dict[str, dict[str, Any]]:
    return {"alice": {"bob@example.org": {"name": "Bob"}}, "bob": {"alice@example.org": {"name": "Alice"}}}


async def online(clients: Any, user: str) -> XMPPTestClient:
    """
    A session that has its roster and has sent its initial presence.
    """
    client: XMPPTestClient = await clients(user)
    await client.rosterGet()
    client.sendPresence()
    return client


def isError(kind: str, sender: str) -> Any:
    return lambda p: (p.getAttribute("type") == "error" and p.getAttribute("from", "").startswith(sender)
                      and p.error is not None and p.error.firstChildElement().name == "policy-violation")


@pytest.mark.parametrize("kind", SUBSCRIPTION_TYPES)
@pytest_twisted.ensureDeferred
async def test_clientSubscriptionPresenceStopped(kind: str, xmppServer: Any, service: RunningService,
                                                  clients: Any) -> None:
    """
    A client's subscription presence to a contact (profanity's /sub, or
    Converse's "remove contact", which sends unsubscribed first) is
    refused with policy-violation and a text; neither stored roster
    changes, and presence keeps flowing both ways.
    """
    alice, bob = await online(clients, "alice"), await online(clients, "bob")
    await alice.waitForPresence(lambda p: p.getAttribute("from", "").startswith("bob@") and not p.getAttribute("type"))
    before = await storedSnapshot(xmppServer, "alice"), await storedSnapshot(xmppServer, "bob")
    alice.sendPresence(to="bob@example.org", type=kind)
    refusal = await alice.waitForPresence(isError(kind, "bob@example.org"))
    print(f"\n{kind}: refused with {refusal.toXml()}")
    assert "managed by its web application" in str(refusal.error.text)
    await RunningService.sleep(0.3)
    assert (await storedSnapshot(xmppServer, "alice"), await storedSnapshot(xmppServer, "bob")) == before
    assert not [p for p in bob.presences if p.getAttribute("type") == kind]
    seen = len(alice.presences)
    bob.sendPresence(show="away")
    await alice.waitForPresence(lambda p: alice.presences.index(p) >= seen and p.show is not None)
    seenByBob = len(bob.presences)
    alice.sendPresence(show="dnd")
    await bob.waitForPresence(lambda p: bob.presences.index(p) >= seenByBob and p.show is not None)


@pytest.mark.parametrize("kind", SUBSCRIPTION_TYPES)
@pytest_twisted.ensureDeferred
async def test_inboundSubscriptionPresenceStopped(kind: str, xmppServer: Any, service: RunningService,
                                                   clients: Any) -> None:
    """
    A subscription presence to a user from another domain (here from a
    component of the server, as one from another server arrives) is
    dropped before it reaches the user or the stored roster; the sender
    gets policy-violation.
    """
    alice = await online(clients, "alice")
    before = await storedSnapshot(xmppServer, "alice")
    errors: list[Any] = []
    xs = service.component.xmlstream
    xs.addObserver("/presence[@type='error']", errors.append)
    xs.send(f"<presence from='stranger@{xmppServer.componentJID}' to='alice@example.org' type='{kind}'/>")
    await RunningService.waitUntil(lambda: errors, 5, "the server's error for our subscription presence")
    xs.removeObserver("/presence[@type='error']", errors.append)
    assert errors[0].error.firstChildElement().name == "policy-violation"
    await RunningService.sleep(0.3)
    assert await storedSnapshot(xmppServer, "alice") == before
    assert not [p for p in alice.presences if p.getAttribute("type") == kind]


def errorsFrom(client: XMPPTestClient, sender: str) -> list[Any]:
    return [p for p in client.presences
            if p.getAttribute("type") == "error" and p.getAttribute("from", "").split("/")[0] == sender]


@pytest_twisted.ensureDeferred
async def test_noErrorsWhileComponentDisconnected(xmppServer: Any, service: RunningService,
                                                  clients: Any) -> None:
    """
    While rosteradmin is disconnected, users' presences (a change, a
    login) still flow between contacts, and no client gets an error for
    the copies mod_privilege sends the component (Prosody's); a presence a
    client sends the component itself is still answered with the server's
    error.
    """
    alice, bob = await online(clients, "alice"), await online(clients, "bob")
    await waitOnline(service, "alice")
    await waitOnline(service, "bob")
    service.component.stopService()
    await RunningService.waitUntil(lambda: not service.component.status.connected, 5, "component disconnected")
    seen = len(bob.presences)
    alice.sendPresence(show="away")
    await bob.waitForPresence(lambda p: bob.presences.index(p) >= seen and p.show is not None)
    carol = await clients("carol")
    carol.sendPresence()
    await RunningService.sleep(0.5)
    assert errorsFrom(alice, xmppServer.componentJID) == []
    assert errorsFrom(carol, xmppServer.componentJID) == []
    alice.sendPresence(to=xmppServer.componentJID)
    bounce = await alice.waitForPresence(lambda p: p.getAttribute("type") == "error")
    assert bounce.getAttribute("from") == xmppServer.componentJID
    assert bounce.error.firstChildElement().name == UNREACHABLE_COMPONENT


@pytest_twisted.ensureDeferred
async def test_serverSubscriptionPresenceStoppedSilently(xmppServer: Any, webapp: Any,
                                                         service: RunningService, clients: Any) -> None:
    """
    Only alice's side of the pair is stored yet: her login probes bob, and
    Prosody answers the probe with an automatic unsubscribed from bob.  The
    module stops it (alice's stored item stays "both") without an error to
    anyone: no client sent it.
    """
    webapp.rosters["bob"] = {}
    bob = await online(clients, "bob")
    alice = await online(clients, "alice")
    await waitOnline(service, "alice")
    await waitOnline(service, "bob")
    await RunningService.sleep(0.5)
    stored = await storedRoster(xmppServer, "alice")
    assert stored["bob@example.org"][1] == "both"  # not turned into "from"
    assert "alice@example.org" not in await storedRoster(xmppServer, "bob")
    assert errorsFrom(bob, "alice@example.org") == []
    assert errorsFrom(alice, "bob@example.org") == []
