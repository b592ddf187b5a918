# -*- test-case-name: tests.integration.test_refreshpresence -*-
"""
Presence after a refresh changes the contacts of users who are online, on a
real Prosody with contrib's mod_rosteradmin_roster: two online users the
web app makes contacts see each other available, as after a subscription
approval, each just after the roster push that shows it the other, and a
pair it separates sees each other unavailable; nothing else reaches their
clients (no subscription presence, no error, no message).  Also: the two
halves of a pair written apart, every available device of a user, a
roster answer that shows the contact before its push does, and a contact
on another server (probed after the push).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
import pytest_twisted
from twisted.words.protocols.jabber.jid import JID
from twisted.words.xish import domish

from tests.integration.harness import ProsodyServer, WebAppStub, XMPPTestClient, availableFrom
from tests.integration.service import RunningService
from tests.integration.test_convergence import seconds
from tests.integration.test_http import call

pytestmark = pytest.mark.integration

#: alice and bob as contacts of each other, in the web app.
PAIR = {"alice": {"bob@example.org": {"name": "Bob"}}, "bob": {"alice@example.org": {"name": "Alice"}}}

#: How soon a presence must follow the refresh.
WITHIN = 1.0


def unavailableFrom(bare: str) -> Callable[[domish.Element], bool]:
    """
    A presence predicate: unavailable presence from any resource of C{bare}.
    """
    return lambda p: JID(p.getAttribute("from", "")).userhost() == bare and p.getAttribute("type") == "unavailable"


async def online(clients: Any, service: RunningService, user: str) -> XMPPTestClient:
    """
    C{user} logs in, gets her (empty) roster and sends presence; once
    rosteradmin has seen her online.
    """
    client = await clients(user)
    reply = await client.rosterGet()
    assert reply["type"] == "result"
    client.sendPresence(status=f"{user} here")
    await RunningService.waitUntil(lambda: user in service.component.privileges.online, 5, f"{user} online")
    return client


async def sees(client: XMPPTestClient, predicate: Callable[[domish.Element], bool], after: int,
               since: float) -> float | None:
    """
    Seconds from C{since} until C{client} has a presence C{predicate}
    accepts among those after the first C{after}, waiting 5 s at most;
    C{None} if none came.
    """
    try:
        await client.waitForPresence(lambda p: p in client.presences[after:] and predicate(p), 5)
    except TimeoutError:
        return None
    return time.monotonic() - since


def unexpected(client: XMPPTestClient, after: int, messages: int, pushes: int, peer: XMPPTestClient,
               kind: str | None) -> list[str]:
    """
    What C{client} received after the first C{after} presences,
    C{messages} messages and C{pushes} pushes that it did not expect: any
    presence but C{kind} (C{None}: available) from C{peer}'s session, any
    message, any roster push not from its own account.
    """
    found = [p.toXml() for p in client.presences[after:]
             if p.getAttribute("from") != peer.jid.full() or p.getAttribute("type") != kind]
    found += [m.toXml() for m in client.messages[messages:]]
    found += [i.toXml() for i in client.pushes[pushes:] if i.getAttribute("from") != client.jid.userhost()]
    return found


def pushedFirst(client: XMPPTestClient, bare: str) -> bool:
    """
    Whether C{client} received the roster push of C{bare} before any
    presence from it: a client may drop presence from someone not on its
    roster (Converse does).
    """
    received = [line for line in client.transcript if line.startswith("RECV ")]
    push = next(i for i, line in enumerate(received)
                if line.startswith("RECV <iq") and f"jid='{bare}'" in line and "jabber:iq:roster" in line)
    presence = next(i for i, line in enumerate(received)
                    if line.startswith("RECV <presence") and f"from='{bare}/" in line)
    return push < presence


async def refreshPair(service: RunningService, alice: XMPPTestClient, bob: XMPPTestClient,
                      kind: str | None) -> tuple[float | None, float | None]:
    """
    POST a refresh of alice and bob; the seconds until alice saw bob's
    presence of C{kind} and bob saw alice's, after checking that nothing
    else reached them.
    """
    had = {c: (len(c.presences), len(c.messages), len(c.pushes)) for c in (alice, bob)}
    predicate = availableFrom if kind is None else unavailableFrom
    started = time.monotonic()
    code, _ = await call(service, "POST", "/roster_admin/refresh", ["alice", "bob"])
    assert code == 200
    aliceSaw = await sees(alice, predicate("bob@example.org"), had[alice][0], started)
    bobSaw = await sees(bob, predicate("alice@example.org"), had[bob][0], started)
    await RunningService.sleep(0.5)  # anything late that should not come
    assert unexpected(alice, *had[alice], bob, kind) == []
    assert unexpected(bob, *had[bob], alice, kind) == []
    return aliceSaw, bobSaw


@pytest_twisted.ensureDeferred
async def test_pairMadeContactsSeeEachOther(webapp: WebAppStub, service: RunningService, clients: Any) -> None:
    """
    alice and bob are online, not contacts.  The web app makes them
    contacts and refreshes both: each sees the other available within a
    second, with the status the other sent, and the pushes.  It separates
    them again: each sees the other unavailable within a second.  Neither
    receives a subscription presence, an error or anything from anyone else.
    """
    alice = await online(clients, service, "alice")
    bob = await online(clients, service, "bob")

    webapp.rosters.update(PAIR)
    aliceSaw, bobSaw = await refreshPair(service, alice, bob, None)
    print(f"\nmade contacts by one refresh: alice saw bob available {seconds(aliceSaw)}, "
          f"bob saw alice {seconds(bobSaw)}")
    assert aliceSaw is not None and aliceSaw < WITHIN, "alice never saw bob available"
    assert bobSaw is not None and bobSaw < WITHIN, "bob never saw alice available"
    assert alice.view == {"bob@example.org": ("Bob", [])}
    assert bob.view == {"alice@example.org": ("Alice", [])}
    assert pushedFirst(alice, "bob@example.org") and pushedFirst(bob, "alice@example.org")
    presence = next(p for p in alice.presences if availableFrom("bob@example.org")(p))
    assert [str(e) for e in presence.elements() if e.name == "status"] == ["bob here"]

    webapp.rosters.update({"alice": {}, "bob": {}})
    aliceSaw, bobSaw = await refreshPair(service, alice, bob, "unavailable")
    print(f"separated by one refresh: alice saw bob unavailable {seconds(aliceSaw)}, "
          f"bob saw alice {seconds(bobSaw)}")
    assert aliceSaw is not None and aliceSaw < WITHIN, "alice never saw bob unavailable"
    assert bobSaw is not None and bobSaw < WITHIN, "bob never saw alice unavailable"
    assert alice.view == {} and bob.view == {}


@pytest_twisted.ensureDeferred
async def test_secondWriteOfAPairCompletesIt(webapp: WebAppStub, service: RunningService, clients: Any) -> None:
    """
    The two halves of a pair refreshed apart: once alice's roster lists
    bob, neither sees the other (his roster does not list her: bob's
    client would not know her, and he sends her nothing, as a probe of him
    would be answered).  Once bob's is refreshed too, each sees the other
    within a second.
    """
    alice = await online(clients, service, "alice")
    bob = await online(clients, service, "bob")
    had = {c: len(c.presences) for c in (alice, bob)}

    webapp.rosters["alice"] = PAIR["alice"]
    await service.backend.refresh(["alice"])
    await RunningService.sleep(0.5)
    early = [p.toXml() for c in (alice, bob) for p in c.presences[had[c]:]]

    webapp.rosters["bob"] = PAIR["bob"]
    started = time.monotonic()
    await service.backend.refresh(["bob"])
    aliceSaw = await sees(alice, availableFrom("bob@example.org"), had[alice], started)
    bobSaw = await sees(bob, availableFrom("alice@example.org"), had[bob], started)
    print(f"\nalice refreshed alone: presences exchanged {early}; bob refreshed after: she saw him "
          f"{seconds(aliceSaw)}, he saw her {seconds(bobSaw)}")
    assert early == []
    assert aliceSaw is not None and aliceSaw < WITHIN
    assert bobSaw is not None and bobSaw < WITHIN
    assert pushedFirst(alice, "bob@example.org") and pushedFirst(bob, "alice@example.org")


@pytest_twisted.ensureDeferred
async def test_everyAvailableSession(webapp: WebAppStub, service: RunningService, clients: Any) -> None:
    """
    alice on two devices that sent presence and a third that only asked
    for its roster: after the refresh that makes her and bob contacts,
    bob sees both her available devices and each of them sees him; the
    third gets the push and no presence.  Separated again, bob sees both
    devices unavailable.
    """
    phone = await online(clients, service, "alice")
    laptop = await online(clients, service, "alice")
    quiet = await clients("alice")
    assert (await quiet.rosterGet())["type"] == "result"
    bob = await online(clients, service, "bob")
    had = {c: len(c.presences) for c in (phone, laptop, quiet, bob)}
    devices = {phone.jid.full(), laptop.jid.full()}

    def fromAlice(kind: str | None) -> set[str]:
        return {p["from"] for p in bob.presences[had[bob]:]
                if p.getAttribute("type") == kind and p["from"] in devices}

    webapp.rosters.update(PAIR)
    started = time.monotonic()
    await service.backend.refresh(["alice", "bob"])
    for device in (phone, laptop):
        assert await sees(device, availableFrom("bob@example.org"), had[device], started) is not None
    await RunningService.waitUntil(lambda: fromAlice(None) == devices, 5, "bob sees both of alice's devices")
    took = time.monotonic() - started
    await RunningService.sleep(0.5)
    print(f"\nbob saw both of alice's devices after {took:.3f} s")
    assert took < WITHIN
    assert [p.toXml() for p in quiet.presences[had[quiet]:]] == []
    assert [i.toXml() for i in quiet.pushes] != []

    webapp.rosters.update({"alice": {}, "bob": {}})
    started = time.monotonic()
    await service.backend.refresh(["alice", "bob"])
    await RunningService.waitUntil(lambda: fromAlice("unavailable") == devices, 5,
                                   "bob sees both of alice's devices unavailable")
    assert time.monotonic() - started < WITHIN


@pytest_twisted.ensureDeferred
async def test_remoteContact(prosody: ProsodyServer, webapp: WebAppStub, service: RunningService,
                             clients: Any) -> None:
    """
    A contact on another server: alice's presence goes to its bare JID at
    the write, the contact is probed after the push that shows it to her,
    and removed, it gets her unavailable.  The test Prosody talks to no
    other server, so it bounces each with an error presence from the
    contact, as it bounces the presences a login sends to such contacts;
    nothing fails in the module.
    """
    alice = await online(clients, service, "alice")
    had = len(alice.transcript)
    webapp.rosters["alice"] = {"zed@remote.invalid": {"name": "Zed"}}
    await service.backend.refresh(["alice"])
    await alice.waitForPushes(1)
    await RunningService.sleep(0.5)
    webapp.rosters["alice"] = {}
    await service.backend.refresh(["alice"])
    await RunningService.sleep(0.5)
    received = [line.split(" ", 2)[1][1:] + (" error" if "type='error'" in line else "")
                for line in alice.transcript[had:] if line.startswith("RECV ")]
    print("\nalice received:", received)
    assert received == ["presence error", "iq", "presence error", "presence error", "iq"]
    log = prosody.logPath.read_text()
    assert "outbound presence probe from alice@example.org for zed@remote.invalid" in log
    assert "traceback" not in log.lower()


@pytest.mark.parametrize("prosody", ["", "rosteradmin_answer_rosters = false"], ids=["module", "delegated"],
                         indirect=True)
@pytest_twisted.ensureDeferred
async def test_rosterAnswerShowsTheContact(prosody: ProsodyServer, webapp: WebAppStub, service: RunningService,
                                           clients: Any) -> None:
    """
    alice's client leaves a push unanswered, so rosteradmin holds her next
    push; a refresh then makes her and bob contacts (his half written
    first).  He sees her at once; she asks for her roster before the push
    of bob reaches her, and gets bob's presence right after the answer
    that lists him: the module's answer, or rosteradmin's delegated one.
    """
    alice = await online(clients, service, "alice")
    bob = await online(clients, service, "bob")
    webapp.rosters["bob"] = PAIR["bob"]
    await service.backend.refresh(["bob"])
    alice.answerPushes = False
    webapp.rosters["alice"] = {"carol@example.org": {"name": "Carol"}}
    await service.backend.refresh(["alice"])
    await alice.waitForPushes(1)
    had = len(bob.presences)
    webapp.rosters["alice"] = {**PAIR["alice"], "carol@example.org": {"name": "Carol"}}
    started = time.monotonic()
    await service.backend.refresh(["alice"])
    bobSaw = await sees(bob, availableFrom("alice@example.org"), had, started)
    mark = len(alice.transcript)
    reply = await alice.rosterGet()
    aliceSaw = await sees(alice, availableFrom("bob@example.org"), 0, started)
    received = [line for line in alice.transcript[mark:] if line.startswith("RECV ")]
    print(f"\nbob saw alice {seconds(bobSaw)}; alice saw bob {seconds(aliceSaw)}, after her roster answer: "
          f"{[line[:60] for line in received]}")
    assert bobSaw is not None and bobSaw < WITHIN
    assert aliceSaw is not None and aliceSaw < WITHIN
    assert "bob@example.org" in (alice.view or {})
    assert len(alice.pushes) == 1, "the push of bob was not held"
    assert received[0].startswith("RECV <iq") and reply["id"] in received[0]
    assert received[1].startswith("RECV <presence") and "from='bob@example.org/" in received[1]
