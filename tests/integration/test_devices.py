# -*- test-case-name: tests.integration.test_devices -*-
"""
What users' devices show, on a real server (Prosody with both contrib
modules, or ejabberd with contrib's configuration) and real client
sessions: several devices of one user each see every change,
a device that asked for its roster before sending presence is pushed (its
get answered by rosteradmin, or by Prosody itself from a promise), a
device whose view went stale is answered in full at its next login, a
flood of refused edits leaves a bounded queue, and a kill -9 of
rosteradmin in the middle of a refresh leaves no device with a mix of old
and new contacts once the next process runs.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, task
from twisted.words.xish import domish

from rosteradmin.roster import NS_ROSTER
from tests.integration.harness import PASSWORD, ProsodyServer, WebAppStub, XMPPTestClient, connectClient
from tests.integration.servers import addAccounts, waitOnline
from tests.integration.service import RunningService
from tests.integration.test_convergence import Rosteradmin

pytestmark = pytest.mark.integration

ALICE = {"bob@example.org": {"name": "Bob", "groups": ["Friends"]},
         "carol@example.org": {"name": "Carol", "groups": ["Friends", "Work"]},
         "dave@example.org": {"name": "Dave"}}

#: Three changes: a rename, a removal and an addition.
ALICE_CHANGED = {"bob@example.org": {"name": "Robert", "groups": ["Friends"]},
                 "carol@example.org": {"name": "Carol", "groups": ["Friends", "Work"]},
                 "erin@example.org": {"name": "Erin", "groups": ["Work"]}}


@pytest.fixture
def rosters() -> dict[str, dict[str, Any]]:
    return {"alice": ALICE}


def shown(webRoster: dict[str, Any]) -> dict[str, tuple[str | None, list[str]]]:
    """
    What a device shows of a web-app roster (L{XMPPTestClient.view}).
    """
    return {jid: (value.get("name"), sorted(value.get("groups", []))) for jid, value in webRoster.items()}


async def viewsConverge(devices: list[XMPPTestClient], webRoster: dict[str, Any], timeout: float = 10.0) -> None:
    want = shown(webRoster)
    await RunningService.waitUntil(lambda: all(d.view == want for d in devices), timeout,
                                   f"every device to show {want}: {[d.view for d in devices]}")


async def loggedIn(clients: Any, user: str, presence: bool = True) -> XMPPTestClient:
    """
    A session of C{user} that asked for its roster, then (unless not
    C{presence}) sent its initial presence, as RFC 6121 §2.2 suggests.
    """
    client: XMPPTestClient = await clients(user)
    reply = await client.rosterGet(ver="")
    assert reply["type"] == "result"
    if presence:
        client.sendPresence()
    return client


@pytest_twisted.ensureDeferred
async def test_severalDevicesEachSeeEveryChange(service: RunningService, webapp: WebAppStub, clients: Any) -> None:
    """
    Three devices of alice, one refresh changing three contacts: each device
    shows the new roster, none got an error in place of a push; and each
    logging in again with the version it holds gets a roster equal to the
    web app's (before, copies of one push shared an iq id: Prosody refused
    all but one while it was unanswered, and the device that missed the
    rename then held the latest version without it).
    """
    devices = [await loggedIn(clients, "alice") for _ in range(3)]
    await waitOnline(service, "alice", sessions=3)
    # ejabberd pushes every write of its API, those made before the first
    # device's answer too: the refresh's pushes are the ones after.
    earlier = [len(d.pushes) for d in devices]
    webapp.rosters["alice"] = ALICE_CHANGED
    summary = await service.backend.refresh(["alice"])
    assert summary.updated == 1
    await viewsConverge(devices, ALICE_CHANGED)
    assert [len(d.pushes) - before for d, before in zip(devices, earlier)] == [3, 3, 3]
    again = []
    for device in devices:
        version = device.viewVersion
        await device.disconnect()
        later = await clients("alice")
        later.view = dict(device.view or {})
        reply = await later.rosterGet(ver=version)
        assert reply["type"] == "result"
        again.append(later)
    await viewsConverge(again, ALICE_CHANGED, timeout=1)


@pytest_twisted.ensureDeferred
async def test_deviceThatAskedBeforePresenceIsPushed(service: RunningService, webapp: WebAppStub,
                                                     clients: Any) -> None:
    """
    RFC 6121 §2.1.6: every resource that asked for its roster is pushed,
    presence or not: one answered by rosteradmin, and one answered by
    Prosody itself from the version rosteradmin promised (the module tells
    rosteradmin of it); a session that ended is pushed no more.
    """
    first = await loggedIn(clients, "alice", presence=False)
    answered = service.component.rosterServer.answered
    second = await loggedIn(clients, "alice", presence=False)
    assert service.component.rosterServer.answered == answered, "the second get was answered by Prosody"
    await RunningService.waitUntil(lambda: len(service.component.privileges.devices.views("alice")) == 2, 5,
                                   "both sessions known to rosteradmin")
    webapp.rosters["alice"] = ALICE_CHANGED
    await service.backend.refresh(["alice"])
    await viewsConverge([first, second], ALICE_CHANGED)
    await second.disconnect()
    await RunningService.waitUntil(lambda: len(service.component.privileges.devices.views("alice")) == 1, 5,
                                   "the ended session forgotten")


def renameAll(contacts: list[str]) -> domish.Element:
    """
    A roster set renaming every one of C{contacts} (a client may send up
    to rosteradmin's put-back bound, 16, in one set).
    """
    iq = domish.Element((None, "iq"), attribs={"type": "set"})
    query = iq.addElement((NS_ROSTER, "query"))
    for contact in contacts:
        item = query.addElement("item")
        item["jid"], item["name"] = contact, "Mallory"
    return iq


def residentMegabytes() -> float:
    with open("/proc/self/status") as status:
        kilobytes = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    return kilobytes / 1024


@pytest_twisted.ensureDeferred
async def test_putBackFloodLeavesABoundedQueue(service: RunningService, webapp: WebAppStub, clients: Any) -> None:
    """
    Ten sessions of alice send refused roster sets renaming her 16 contacts,
    200 sets a second in all for 10 s: each set is put back to the session
    that sent it, but pushes to one session coalesce, so the privileged
    requests waiting stay bounded by sessions and contacts, and none is left
    once the sessions are gone (before: each admitted set queued 16 pushes
    for each of the 10 sessions, 74,000-80,000 still queued 85 s after the
    attacker left, RSS 61 -> 190 MB).
    """
    contacts = [f"friend{n}@example.org" for n in range(16)]
    webapp.rosters["alice"] = {jid: {"name": f"Friend {n}"} for n, jid in enumerate(contacts)}
    sessions = [await loggedIn(clients, "alice") for _ in range(10)]
    slots = service.component.privileges._sync
    deepest = 0

    def sample() -> None:
        nonlocal deepest
        deepest = max(deepest, slots.waiting)

    sampler = task.LoopingCall(sample)
    sampler.start(0.01)
    replies: list[defer.Deferred[Any]] = []
    rssBefore = residentMegabytes()
    try:
        started = time.monotonic()
        while time.monotonic() - started < 10:
            for session in sessions:
                for _ in range(2):
                    replies.append(session.iq(renameAll(contacts), timeout=30))
            await RunningService.sleep(0.1)
        results = await defer.gatherResults(replies)
        rssAfter = residentMegabytes()
        pushes = service.component.privileges.devices.pushes
        refused = service.component.rosterServer.gate.refusedCount
        print(f"\n{len(replies)} refused sets of 16 items from 10 sessions in 10 s ({refused} over the query "
              f"bounds): {pushes} pushes, at most {deepest} privileged requests waiting; RSS of the process "
              f"(rosteradmin and the test's clients) {rssBefore:.0f} -> {rssAfter:.0f} MB")
        assert all(r["type"] == "error" for r in results)
        assert deepest <= len(sessions) * len(contacts) * 2
        for session in sessions:
            await session.disconnect()
        await RunningService.waitUntil(lambda: slots.waiting == 0 and slots.running == 0, 10, "queue drained")
    finally:
        sampler.stop()


@pytest.fixture
def thirty(xmppServer: Any) -> list[str]:
    users = [f"user{n:02d}" for n in range(30)]
    addAccounts(xmppServer, users, PASSWORD)
    return users


def contactsOf(user: str, names: range) -> dict[str, Any]:
    return {f"contact{n}@example.org": {"name": f"{user} {n}", "groups": [f"g{n % 3}"]} for n in names}


@pytest_twisted.ensureDeferred
async def test_killDuringRefreshLeavesNoDeviceStale(xmppServer: Any, webapp: WebAppStub, thirty: list[str],
                                                    tmp_path: Path) -> None:
    """
    thirty online users, each of whose 34 contacts change: rosteradmin is
    killed (kill -9) once the first pushes reached a device, before all
    did.  On Prosody the server is then current, so the refresh resumed by
    the next process changes nothing; yet every device ends showing the web
    app's roster (before, 30 of 30 kept a mix of old and new contacts until
    they reconnected).  On ejabberd, which pushes each API write as it
    stores it, the next process writes what the first did not, and every
    device ends showing the web app's roster there too.
    """
    for user in thirty:
        webapp.rosters[user] = contactsOf(user, range(0, 34))
    state = tmp_path / "state.sqlite"
    first = Rosteradmin(xmppServer, webapp, tmp_path, "first", state)
    devices: list[XMPPTestClient] = []
    second = None
    try:
        await first.healthy()
        for user in thirty:
            device = await connectClient(f"{user}@{xmppServer.domain}", PASSWORD, xmppServer.c2sPort)
            devices.append(device)
            assert (await device.rosterGet(ver=""))["type"] == "result"
            device.sendPresence()
        await viewsConvergeEach(devices, thirty, webapp)
        # ejabberd pushed the first rosters as they were written, before
        # each get was answered (Prosody pushes none): the refresh's
        # pushes are counted from here.
        for device in devices:
            device.pushes.clear()
        for user in thirty:
            webapp.rosters[user] = contactsOf(user, range(17, 51))
        expected = 30 * 34
        refresh = first.refresh(thirty)
        refresh.addErrback(lambda failure: None)  # cut off by the kill
        await RunningService.waitUntil(lambda: any(d.pushes for d in devices), 30, "a first push")
        first.kill()
        received = sum(len(d.pushes) for d in devices)
        print(f"\nkill -9 with {received} of {expected} pushes received")
        assert received < expected, "the kill landed after every push: nothing left to show"
        second = Rosteradmin(xmppServer, webapp, tmp_path, "second", state)
        await second.healthy()
        await viewsConvergeEach(devices, thirty, webapp, timeout=60)
        print(f"after the restart: {sum(len(d.pushes) for d in devices) - received} more pushes")
    finally:
        await defer.gatherResults([d.disconnect() for d in devices])
        if second is not None:
            second.stop()
        if first.process.poll() is None:
            first.stop()


async def viewsConvergeEach(devices: list[XMPPTestClient], users: list[str], webapp: WebAppStub,
                            timeout: float = 20.0) -> None:
    def stale() -> list[str]:
        return [user for device, user in zip(devices, users) if device.view != shown(webapp.rosters[user])]

    await RunningService.waitUntil(lambda: not stale(), timeout, "every device to show its web-app roster")


@pytest_twisted.ensureDeferred
async def test_sessionWithoutPresenceFollowedAcrossARestart(xmppServer: ProsodyServer, webapp: WebAppStub,
                                                            clients: Any) -> None:
    """
    A session that asked for its roster and sent no presence is not
    replayed by the server after rosteradmin restarts: contrib's
    mod_rosteradmin_roster lists it when the new process asks, and it is
    pushed the next change.
    """
    webapp.rosters["alice"] = ALICE
    first = RunningService(xmppServer, webapp.url)
    await first.start()
    device = await loggedIn(clients, "alice", presence=False)
    await first.stop()
    second = RunningService(xmppServer, webapp.url)
    await second.start()
    try:
        await RunningService.waitUntil(lambda: len(second.component.privileges.devices.views("alice")) == 1, 5,
                                       "the session listed by the server")
        webapp.rosters["alice"] = ALICE_CHANGED
        await second.backend.refresh(["alice"])
        await viewsConverge([device], ALICE_CHANGED)
    finally:
        await second.stop()
