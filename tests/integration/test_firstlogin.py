# -*- test-case-name: tests.integration.test_firstlogin -*-
"""
A user no sync has reached, on a real Prosody with contrib's
mod_rosteradmin_roster: her login waits until rosteradmin has fetched her
roster and written it into the server's store, so the initial presence of
a client that sends it before its roster get (as profanity does) reaches
her contacts and probes them, as with mod_http_roster_admin.  And what a
login gets when rosteradmin is stopped or hangs: the stored roster, at
once or after C{rosteradmin_load_timeout}.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer

from tests.integration.harness import ProsodyServer, WebAppStub, XMPPTestClient
from tests.integration.test_blastradius import contactsOf
from tests.integration.service import RunningService
from tests.integration.servers import stored
from tests.integration.test_convergence import TRIAD, Rosteradmin, expected, held, receives, seconds

pytestmark = pytest.mark.integration

#: The deadline the Prosody of the hung-rosteradmin test waits for a load.
LOAD_TIMEOUT = 2.0


async def timedLogin(clients: Any, user: str) -> tuple[XMPPTestClient, float]:
    """
    Log C{user} in; the client and the seconds the login (to the bound
    resource) took.
    """
    started = time.monotonic()
    client = await clients(user)
    return client, time.monotonic() - started


async def bobOnline(clients: Any, online: Any) -> XMPPTestClient:
    """
    bob, never synced either, logs in and sends presence before any roster
    get; C{online()} tells when rosteradmin has seen him.
    """
    bob = await clients("bob")
    bob.sendPresence()
    await RunningService.waitUntil(online, 5, "bob online")
    return bob


@pytest_twisted.ensureDeferred
async def test_presenceFirstNeverSynced(prosody: ProsodyServer, webapp: WebAppStub, service: RunningService,
                                        clients: Any) -> None:
    """
    carol, unknown to rosteradmin's state and never refreshed, logs in:
    her web-app roster is in the server's store when her resource is bound,
    before she sends anything.  She sends her initial presence before her
    roster get: bob sees her online and she sees bob.  Her roster get is
    answered the web app's roster, with the one fetch of her login.
    """
    webapp.rosters.update(TRIAD)
    bob = await bobOnline(clients, lambda: "bob" in service.component.privileges.online)
    assert service.backend.state.serverVersion("carol") is None
    assert webapp.requests["carol"] == 0

    carol, login = await timedLogin(clients, "carol")
    assert stored(prosody, "carol") == expected(TRIAD["carol"])
    bobHad = len(bob.presences)
    sentAt = time.monotonic()
    carol.sendPresence()  # before any roster get, as profanity does
    bobSaw = await receives(bob, "carol@example.org", bobHad, 5, sentAt)
    carolSaw = await receives(carol, "bob@example.org", 0, 5, sentAt)
    reply = await carol.rosterGet()
    print(f"\ncarol's login (roster fetched and stored at bind) took {login:.3f} s; after her initial "
          f"presence bob saw her {seconds(bobSaw)}, she saw bob {seconds(carolSaw)}")
    assert bobSaw is not None, "bob never saw carol's initial presence"
    assert carolSaw is not None, "carol never saw bob after her initial presence"
    sender = next(p for p in bob.presences[bobHad:] if p.getAttribute("from") == carol.jid.full())
    assert sender.getAttribute("type") is None
    assert held(reply) == expected(TRIAD["carol"])
    assert webapp.requests["carol"] == 1


@pytest_twisted.ensureDeferred
async def test_rosteradminStoppedLoginGoesOn(prosody: ProsodyServer, webapp: WebAppStub, clients: Any) -> None:
    """
    rosteradmin stopped (its component stream closed): Prosody bounces the
    load at once, and carol's login goes on with what the server stores,
    nothing; her initial presence reaches no one.  Once rosteradmin is
    back, her next login gets her roster.
    """
    webapp.rosters.update(TRIAD)
    running = RunningService(prosody, webapp.url)
    await running.start()
    stopped = False
    try:
        bob = await bobOnline(clients, lambda: "bob" in running.component.privileges.online)
        await running.stop()
        stopped = True
        carol, login = await timedLogin(clients, "carol")
        assert stored(prosody, "carol") == {}
        bobHad = len(bob.presences)
        carol.sendPresence()
        bobSaw = await receives(bob, "carol@example.org", bobHad, 1)
        print(f"\nrosteradmin stopped: carol's login took {login:.3f} s, with her stored roster (empty); "
              f"bob saw her initial presence: {seconds(bobSaw)}")
        assert login < 1.0
        assert bobSaw is None
        await carol.disconnect()
    finally:
        if stopped:
            running = RunningService(prosody, webapp.url)
            await running.start()
    try:
        carol, login = await timedLogin(clients, "carol")
        assert stored(prosody, "carol") == expected(TRIAD["carol"])
        print(f"rosteradmin back: carol's next login took {login:.3f} s, her roster stored at bind")
    finally:
        await running.stop()


@pytest.mark.parametrize("prosody", [f"rosteradmin_load_timeout = {LOAD_TIMEOUT}"], indirect=True)
@pytest_twisted.ensureDeferred
async def test_rosteradminHungLoginWaitsTheDeadline(prosody: ProsodyServer, webapp: WebAppStub, clients: Any,
                                                    tmp_path: Path) -> None:
    """
    rosteradmin hung (a twistd process stopped with SIGSTOP, its stream
    open): carol's login waits C{rosteradmin_load_timeout}, then goes on
    with the stored roster (empty), while a second login of bob, whose
    roster rosteradmin wrote before, is bound at once.  Resumed, rosteradmin answers the late load: her
    roster is fetched and stored, too late for that login's presence.
    """
    webapp.rosters.update(TRIAD)
    process = Rosteradmin(prosody, webapp, tmp_path, "hung", tmp_path / "state.sqlite")
    try:
        await process.healthy()
        bob, bobLogin = await timedLogin(clients, "bob")
        assert stored(prosody, "bob") == expected(TRIAD["bob"])
        process.process.send_signal(signal.SIGSTOP)
        try:
            carolLogin = defer.ensureDeferred(timedLogin(clients, "carol"))
            _, again = await timedLogin(clients, "bob")  # vouched for: no wait
            waiting = not carolLogin.called
            carol, login = await carolLogin
            assert stored(prosody, "carol") == {}
        finally:
            process.process.send_signal(signal.SIGCONT)
        print(f"\nrosteradmin hung: carol's login took {login:.3f} s (deadline {LOAD_TIMEOUT} s); "
              f"bob's first login took {bobLogin:.3f} s, his second, meanwhile, {again:.3f} s")
        assert LOAD_TIMEOUT <= login < LOAD_TIMEOUT + 1.0
        assert waiting and again < 0.5
        deadline = time.monotonic() + 10
        while stored(prosody, "carol") != expected(TRIAD["carol"]):
            assert time.monotonic() < deadline, "the late load never stored carol's roster"
            await RunningService.sleep(0.05)
        process.stop()
    finally:
        process.ensureGone()


@pytest_twisted.ensureDeferred
async def test_largeUnsyncedLoginStallsNoOther(prosody: ProsodyServer, webapp: WebAppStub, service: RunningService,
                                               clients: Any) -> None:
    """
    alice, unsynced with 8,000 contacts that her web app is slow to
    answer, and carol, unsynced with one, log in at once: carol's login is
    bound while alice's waits, and alice's only once her 8,000 contacts
    are stored.  (The CPU the 8,000 contacts cost rosteradmin, in this
    process shared with the clients, is bench scenario 9's subject; the
    web app's delay makes the order independent of the machine's load.)
    """
    webapp.rosters.update({"alice": contactsOf(8000), "carol": {"alice@example.org": {"name": "Alice"}}})
    webapp.delays["alice"] = 0.5
    aliceLogin = defer.ensureDeferred(timedLogin(clients, "alice"))
    await RunningService.sleep(0.05)  # alice's load goes first
    _, carolSeconds = await timedLogin(clients, "carol")
    aliceFirst = aliceLogin.called
    _, aliceSeconds = await aliceLogin
    print(f"\nalice's login (8,000 contacts stored at bind) took {aliceSeconds:.3f} s; carol's, meanwhile, "
          f"{carolSeconds:.3f} s")
    assert not aliceFirst, "carol's login waited behind alice's"
    assert prosody.storedRoster("alice").count('"both"') == 8000
    assert stored(prosody, "carol") == {"alice@example.org": ("Alice", "both", [])}
