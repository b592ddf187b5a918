"""
Drift repaired on a real Prosody without mod_rosteradmin_subscriptions:
a client's subscription presence changes the stored rosters, and the
reconciliation pass rewrites them and pushes the repaired items.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from tests.integration.harness import ProsodyServer, WebAppStub
from tests.integration.service import RunningService

INTERVAL = 3.0


@pytest.fixture
def prosody(tmp_path: Path) -> Iterator[ProsodyServer]:
    """
    Prosody with the contrib configuration less the subscription blocker.
    """
    server = ProsodyServer(tmp_path, without=("rosteradmin_subscriptions",))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def rosters() -> dict[str, dict[str, Any]]:
    return {"alice": {"bob@example.org": {"name": "Bob"}}, "bob": {"alice@example.org": {"name": "Alice"}},
            "dave": {}}


@pytest.fixture
def serviceArgs() -> list[str]:
    return ["--reconcile-interval", str(INTERVAL)]


@pytest_twisted.ensureDeferred
async def test_unsubscribedIsRepairedAndPushed(xmppServer: ProsodyServer, service: RunningService,
                                                clients: Any) -> None:
    """
    Converse's "remove contact" sends unsubscribed: Prosody applies it to
    both stored rosters (alice: bob 'to'; bob: alice 'from') and pushes it.
    Within the reconciliation interval both are 'both' again, the drift is
    counted, and alice's client is pushed bob with 'both'.
    """
    alice, bob = await clients("alice"), await clients("bob")
    for client in (alice, bob):
        await client.rosterGet()
        client.sendPresence()
    assert '"both"' in xmppServer.storedRoster("alice") and '"both"' in xmppServer.storedRoster("bob")
    pushesBefore = len(alice.pushes)
    alice.sendPresence(to="bob@example.org", type="unsubscribed")
    await RunningService.waitUntil(lambda: '"to"' in xmppServer.storedRoster("alice"), 5,
                                   "Prosody applying alice's unsubscribed")
    print(f"\nafter unsubscribed: alice stores {xmppServer.storedRoster('alice').strip()!r}")
    await RunningService.waitUntil(
        lambda: '"both"' in xmppServer.storedRoster("alice") and '"both"' in xmppServer.storedRoster("bob"),
        INTERVAL + 10, "the reconciliation pass repairing both rosters")
    repaired = dict(service.backend.snapshot().driftRepaired)
    print(f"repaired: {repaired}; alice stores {xmppServer.storedRoster('alice').strip()!r}")
    assert repaired.get("subscription", 0) >= 2
    await RunningService.waitUntil(
        lambda: any(p.query.item.getAttribute("jid") == "bob@example.org"
                    and p.query.item.getAttribute("subscription") == "both" for p in alice.pushes[pushesBefore:]),
        5, "a push of bob with both to alice")


@pytest.mark.parametrize("serviceArgs", [["--reconcile-interval", "3600", "--online-check-interval", str(INTERVAL)]])
@pytest_twisted.ensureDeferred
async def test_onlineUsersRepairedWithoutPass(xmppServer: ProsodyServer, service: RunningService,
                                             webapp: WebAppStub, clients: Any) -> None:
    """
    Prosody applies alice's unsubscribed to both stored rosters and pushes
    it to neither client (they asked us, not Prosody, for their rosters).
    Both users are online, so the online check repairs both within its
    interval, long before the (hour-long) reconciliation pass, without a
    web-app fetch, and pushes bob with both to alice.
    """
    alice, bob = await clients("alice"), await clients("bob")
    for client in (alice, bob):
        await client.rosterGet(ver="")
        client.sendPresence()
    fetches = dict(webapp.requests)
    pushesBefore = len(alice.pushes), len(bob.pushes)
    alice.sendPresence(to="bob@example.org", type="unsubscribed")
    await RunningService.waitUntil(lambda: '"to"' in xmppServer.storedRoster("alice"), 5,
                                   "Prosody applying alice's unsubscribed")
    assert '"from"' in xmppServer.storedRoster("bob")
    print(f"\nafter unsubscribed: bob stores {xmppServer.storedRoster('bob').strip()!r}")
    await RunningService.waitUntil(
        lambda: '"both"' in xmppServer.storedRoster("alice") and '"both"' in xmppServer.storedRoster("bob"),
        INTERVAL + 5, "the online check repairing both rosters")
    print(f"repaired: {dict(service.backend.snapshot().driftRepaired)}; bob stores {xmppServer.storedRoster('bob').strip()!r}")
    assert service.backend.snapshot().driftRepaired.get("subscription", 0) >= 2
    await RunningService.waitUntil(
        lambda: any(p.query.item.getAttribute("jid") == "bob@example.org"
                    and p.query.item.getAttribute("subscription") == "both" for p in alice.pushes[pushesBefore[0]:]),
        5, "a push of bob with both to alice")
    assert dict(webapp.requests) == fetches
    # Every push either client got is ours: Prosody pushed nothing.
    assert all(p["id"].startswith("push-") for p in alice.pushes + bob.pushes)


def asTheWebAppHasIt(stored: str, contacts: set[str]) -> bool:
    """
    Whether a stored roster (Prosody's Lua file) holds exactly C{contacts},
    each with both, and nothing asked.
    """
    subscriptions = stored.count('["subscription"]')
    return (subscriptions == stored.count('["subscription"] = "both"') == len(contacts)
            and all(f'["{jid}"]' in stored for jid in contacts) and '["ask"]' not in stored)


@pytest.mark.parametrize("serviceArgs", [["--reconcile-interval", "3600", "--online-check-interval", str(INTERVAL)]])
@pytest.mark.parametrize("target", ["bob@example.org", "dave@example.org"], ids=["contact", "stranger"])
@pytest.mark.parametrize("kind", ["subscribe", "subscribed", "unsubscribe", "unsubscribed"])
@pytest_twisted.ensureDeferred
async def test_eachSubscriptionPresenceRepaired(kind: str, target: str, xmppServer: ProsodyServer,
                                                service: RunningService, clients: Any) -> None:
    """
    Each subscription presence alice's client can send, to a contact or
    to a user the web app does not list for her: whatever Prosody applies
    to alice's and bob's stored rosters is undone by the online check
    within its interval.  dave's roster gets no item; a subscribe leaves
    alice's request pending in his storage, which is not a roster item: no
    roster query shows it, no privileged write removes it (Prosody offers
    it to his client at login; only the blocking module prevents that).
    """
    alice, bob = await clients("alice"), await clients("bob")
    for client in (alice, bob):
        await client.rosterGet(ver="")
        client.sendPresence()
    webApp = {"alice": {"bob@example.org"}, "bob": {"alice@example.org"}, "dave": set()}
    alice.sendPresence(to=target, type=kind)
    await RunningService.sleep(0.5)
    applied = {user: xmppServer.storedRoster(user) for user in webApp}
    print(f"\n{kind} to {target}: Prosody changed "
          f"{[u for u, stored in applied.items() if not asTheWebAppHasIt(stored, webApp[u])] or 'nothing'}")
    await RunningService.waitUntil(
        lambda: all(asTheWebAppHasIt(xmppServer.storedRoster(u), webApp[u]) for u in ("alice", "bob")),
        INTERVAL + 5, f"alice's and bob's stored rosters as the web app has them after {kind}")
    assert '["subscription"]' not in xmppServer.storedRoster("dave")
