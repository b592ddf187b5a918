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

from tests.integration.harness import ProsodyServer
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
    return {"alice": {"bob@example.org": {"name": "Bob"}}, "bob": {"alice@example.org": {"name": "Alice"}}}


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
    repaired = dict(service.backend.driftRepaired)
    print(f"repaired: {repaired}; alice stores {xmppServer.storedRoster('alice').strip()!r}")
    assert repaired.get("subscription", 0) >= 2
    await RunningService.waitUntil(
        lambda: any(p.query.item.getAttribute("jid") == "bob@example.org"
                    and p.query.item.getAttribute("subscription") == "both" for p in alice.pushes[pushesBefore:]),
        5, "a push of bob with both to alice")
