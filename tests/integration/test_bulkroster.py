"""
Many roster items per iq on a real Prosody with contrib's
mod_rosteradmin_roster: a large first sync is a few saves, not thousands.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import pytest_twisted

from tests.integration.harness import ProsodyServer
from tests.integration.service import RunningService
from tests.integration.test_blastradius import contactsOf, errorType
from tests.integration.test_rosters import items


@pytest.fixture
def rosters() -> dict[str, dict[str, Any]]:
    return {"alice": contactsOf(8000), "bob": contactsOf(3000), "carol": {"alice@example.org": {"name": "Alice"}}}


@pytest_twisted.ensureDeferred
async def test_largeFirstSyncsAreFewSaves(prosody: ProsodyServer, service: RunningService, clients: Any) -> None:
    """
    bob's cold first login with 3,000 contacts is answered with all of them
    after a handful of iqs; alice's with 8,000 stores all 8,000 (her answer
    is too large for one stanza: resource-constraint) in seconds; carol's
    login meanwhile is answered at once.  (One item per privileged set,
    without the module, took 276 s for 8,000.)
    """
    bob, alice, carol = await clients("bob"), await clients("alice"), await clients("carol")
    started = time.monotonic()
    bobReply = await bob.rosterGet(timeout=30)
    bobSeconds = time.monotonic() - started
    started = time.monotonic()
    aliceGet = alice.rosterGet(timeout=30)
    carolStarted = time.monotonic()
    carolReply = await carol.rosterGet(timeout=30)
    carolSeconds = time.monotonic() - carolStarted
    aliceReply = await aliceGet
    aliceSeconds = time.monotonic() - started
    print(f"\nbob (3,000 contacts): {len(items(bobReply))} items in {bobSeconds:.2f} s; alice (8,000): "
          f"{errorType(aliceReply)} after {aliceSeconds:.2f} s, {prosody.storedRoster('alice').count('both')} "
          f"stored; carol meanwhile {carolSeconds:.2f} s; bulk={service.component.privileges.bulk}")
    assert len(items(bobReply)) == 3000 and prosody.storedRoster("bob").count('"both"') == 3000
    assert errorType(aliceReply) == ("resource-constraint", "cancel")
    assert prosody.storedRoster("alice").count('"both"') == 8000
    assert carolReply["type"] == "result" and service.component.privileges.bulk is True
    assert aliceSeconds < 20 and bobSeconds < 20 and carolSeconds < 5
    assert service.component.status.connections == 1
