"""
Many roster items per iq on a real Prosody with contrib's
mod_rosteradmin_roster: a large first sync is a few saves, not thousands.
"""

from __future__ import annotations

import re
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


def saves(prosody: ProsodyServer, username: str) -> int:
    """
    How many times Prosody saved C{username}'s roster since it had none:
    its stored version, which every save bumps.
    """
    found = re.search(r'\["version"\] = (\d+);', prosody.storedRoster(username))
    assert found is not None, prosody.storedRoster(username)[:200]
    return int(found.group(1))


@pytest.mark.parametrize("prosody", ["rosteradmin_load_rosters = false"], indirect=True)
@pytest_twisted.ensureDeferred
async def test_largeFirstSyncsAreFewSaves(prosody: ProsodyServer, service: RunningService, clients: Any) -> None:
    """
    bob's cold first login with 3,000 contacts is answered with all of them
    after a handful of iqs; alice's with 8,000 stores all 8,000 (her answer
    is too large for one stanza: resource-constraint) in a handful of saves,
    not one per contact; carol's login meanwhile is answered before alice's.
    (One item per privileged set, without the module, took 276 s for 8,000;
    how long a large first sync takes, and what it does to other logins, is
    scenario 6 of the benchmarks.)  The syncs happen at the roster gets
    here: the module's roster load at login is off (with it, they happen
    at the logins: L{tests.integration.test_firstlogin}).
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
    aliceAnsweredFirst = aliceGet.called
    aliceReply = await aliceGet
    aliceSeconds = time.monotonic() - started
    print(f"\nbob (3,000 contacts): {len(items(bobReply))} items in {bobSeconds:.2f} s; alice (8,000): "
          f"{errorType(aliceReply)} after {aliceSeconds:.2f} s, {prosody.storedRoster('alice').count('both')} "
          f"stored; carol meanwhile {carolSeconds:.2f} s; bulk={service.component.privileges.bulk}; saves of "
          f"bob's roster {saves(prosody, 'bob')}, of alice's {saves(prosody, 'alice')}")
    assert len(items(bobReply)) == 3000 and prosody.storedRoster("bob").count('"both"') == 3000
    assert errorType(aliceReply) == ("resource-constraint", "cancel")
    assert prosody.storedRoster("alice").count('"both"') == 8000
    assert carolReply["type"] == "result" and service.component.privileges.bulk is True
    assert saves(prosody, "bob") <= 5 and saves(prosody, "alice") <= 5
    assert not aliceAnsweredFirst, "carol's login waited behind alice's sync"
    assert service.component.status.connections == 1
