"""
Subscription presences on a real Prosody with contrib's
mod_rosteradmin_subscriptions: stopped in both directions, the stored
rosters untouched, presence still flowing.
"""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted

from tests.integration.harness import ProsodyServer, XMPPTestClient
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
async def test_clientSubscriptionPresenceStopped(kind: str, prosody: ProsodyServer, service: RunningService,
                                                  clients: Any) -> None:
    """
    A client's subscription presence to a contact (profanity's /sub, or
    Converse's "remove contact", which sends unsubscribed first) is
    refused with policy-violation and a text; neither stored roster
    changes, and presence keeps flowing both ways.
    """
    alice, bob = await online(clients, "alice"), await online(clients, "bob")
    await alice.waitForPresence(lambda p: p.getAttribute("from", "").startswith("bob@") and not p.getAttribute("type"))
    before = prosody.storedRoster("alice"), prosody.storedRoster("bob")
    alice.sendPresence(to="bob@example.org", type=kind)
    refusal = await alice.waitForPresence(isError(kind, "bob@example.org"))
    print(f"\n{kind}: refused with {refusal.toXml()}")
    assert "managed by its web application" in str(refusal.error.text)
    await RunningService.sleep(0.3)
    assert (prosody.storedRoster("alice"), prosody.storedRoster("bob")) == before
    assert not [p for p in bob.presences if p.getAttribute("type") == kind]
    seen = len(alice.presences)
    bob.sendPresence(show="away")
    await alice.waitForPresence(lambda p: alice.presences.index(p) >= seen and p.show is not None)
    seenByBob = len(bob.presences)
    alice.sendPresence(show="dnd")
    await bob.waitForPresence(lambda p: bob.presences.index(p) >= seenByBob and p.show is not None)


@pytest.mark.parametrize("kind", SUBSCRIPTION_TYPES)
@pytest_twisted.ensureDeferred
async def test_inboundSubscriptionPresenceStopped(kind: str, prosody: ProsodyServer, service: RunningService,
                                                   clients: Any) -> None:
    """
    A subscription presence to a user from another domain (here from a
    component of the server, as one from another server arrives) is
    dropped before it reaches the user or the stored roster; the sender
    gets policy-violation.
    """
    alice = await online(clients, "alice")
    before = prosody.storedRoster("alice")
    errors: list[Any] = []
    xs = service.component.xmlstream
    xs.addObserver("/presence[@type='error']", errors.append)
    xs.send(f"<presence from='stranger@{prosody.componentJID}' to='alice@example.org' type='{kind}'/>")
    await RunningService.waitUntil(lambda: errors, 5, "the server's error for our subscription presence")
    xs.removeObserver("/presence[@type='error']", errors.append)
    assert errors[0].error.firstChildElement().name == "policy-violation"
    await RunningService.sleep(0.3)
    assert prosody.storedRoster("alice") == before
    assert not [p for p in alice.presences if p.getAttribute("type") == kind]
