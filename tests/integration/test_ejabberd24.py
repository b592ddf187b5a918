"""
rosteradmin on Debian 13's ejabberd 24.12, run under C{chroot} from the
root C{scripts/debian13.sh} builds, with C{contrib/ejabberd/rosteradmin.yml}
as it ships: delegation without mod_privilege, rosters written with
C{--roster-sync ejabberd-api} through mod_http_api on loopback.

One ejabberd serves the whole module (it takes seconds to start); each test
gets its own rosteradmin, through the same code path as twistd, and real
client sessions.  Run with C{-s} to see alice's side of each test (the
stanzas her client sent and received).
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.web.client import HTTPConnectionPool

from rosteradmin.delegation import NS_DELEGATION_1
from rosteradmin.ejabberdapi import EjabberdAPISync
from rosteradmin.roster import NS_ROSTER
from tests.integration.debianroot import STAMP, DebianRoot, debian13Root
from tests.integration.ejabberd import EjabberdNotAvailable, LocalEjabberd
from tests.integration.harness import PASSWORD, ClientFactory, WebAppStub, XMPPTestClient, startedOrFail
from tests.integration.service import KICK_AUTHORIZATION, RunningService
from tests.integration.test_http import call
from tests.integration.test_refreshpresence import pushedFirst
from tests.integration.test_rosters import items

pytestmark = pytest.mark.integration

#: The ejabberd configuration operators are told to include; the tests run exactly it.
CONTRIB_EJABBERD = Path(__file__).resolve().parents[2] / "contrib" / "ejabberd" / "rosteradmin.yml"
ROOM = "room@conference.example.org"
NS_MUC_USER = "http://jabber.org/protocol/muc#user"


@pytest.fixture(scope="module")
def ejabberd24() -> Iterator[LocalEjabberd]:
    """
    A started ejabberd 24.12 with the accounts alice, bob, carol and dave
    (password C{pw}), shared by the module's tests.  When it cannot run,
    every test fails: a green run must have run it.
    """
    server = LocalEjabberd({user: PASSWORD for user in ("alice", "bob", "carol", "dave")},
                           root=debian13Root(), include=CONTRIB_EJABBERD)
    startedOrFail(server)
    yield server
    server.stop()


@pytest.fixture
def xmppServer(ejabberd24: LocalEjabberd) -> LocalEjabberd:
    return ejabberd24


@pytest.fixture
def serviceArgs(ejabberd24: LocalEjabberd) -> list[str]:
    return ["--roster-sync", "ejabberd-api", "--ejabberd-api-url", ejabberd24.apiURL]


@pytest.fixture
def rosters() -> dict[str, Any]:
    return {
        "alice": {"bob@example.org": {"name": "Bob", "groups": ["Friends"]},
                  "carol@example.org": {"name": "Carol"}},
        "bob": {"alice@example.org": {"name": "Alice"}},
        "carol": {"alice@example.org": {"name": "Alice"}},
    }


async def startService(xmppServer: LocalEjabberd, webapp: WebAppStub, rosters: dict[str, Any],
                       args: list[str], writable: bool = True) -> RunningService:
    """
    rosteradmin against the module's ejabberd, started once it is connected,
    the roster namespace is delegated to it, and (if C{writable}) the API
    has answered its probe.
    """
    webapp.rosters.update(rosters)
    running = RunningService(xmppServer, webapp.url, args)
    sync = running.backend.sync
    assert isinstance(sync, EjabberdAPISync)
    running.top.startService()
    await running.waitUntil(
        lambda: running.component.status.connected and bool(running.component.delegation.delegated)
        and (sync.canSync() if writable else sync.syncRefusal is not None), 15,
        "component connected, roster delegated, the API probed")
    return running


@pytest_twisted.async_yield_fixture
async def service(xmppServer: LocalEjabberd, webapp: WebAppStub, rosters: dict[str, Any],
                  serviceArgs: list[str]) -> AsyncIterator[RunningService]:
    running = await startService(xmppServer, webapp, rosters, serviceArgs)
    yield running
    await running.stop()


async def storedRoster(server: LocalEjabberd, user: str) -> dict[str, tuple[str, str, list[str]]]:
    """
    What ejabberd stores for a user, read with its own API: contact to
    (nick, subscription, groups).
    """
    response = await treq.post(f"{server.apiURL}/get_roster", json={"user": user, "host": server.domain},
                               pool=HTTPConnectionPool(reactor, persistent=False))
    assert response.code == 200
    return {c["jid"]: (c["nick"], c["subscription"], c["groups"]) for c in json.loads(await response.text())}


def transcript(client: XMPPTestClient, title: str) -> None:
    """
    Print a client's side of a test (shown with -s).
    """
    print(f"--- {title}: {client.jid.full()}")
    for line in client.transcript:
        print(line)


def available(sender: str) -> Any:
    return lambda p: p.getAttribute("from", "").startswith(sender + "/") and p.getAttribute("type") is None


@pytest_twisted.ensureDeferred
async def test_webAppRosterWithPresence(ejabberd24: LocalEjabberd, service: RunningService,
                                        clients: ClientFactory) -> None:
    """
    Over ejabberd 24.12's delegation (C{:1}), alice's client gets the web
    app's roster with subscription both, which is stored in ejabberd by
    then; bob's presence reaches her once he logs in, and hers him.
    """
    assert service.component.delegation.delegated == {NS_ROSTER: NS_DELEGATION_1}
    alice = await clients("alice")
    result = await alice.rosterGet(ver="")
    assert result["type"] == "result"
    assert items(result) == {"bob@example.org": ("Bob", "both", ["Friends"]),
                             "carol@example.org": ("Carol", "both", [])}
    assert (await storedRoster(ejabberd24, "alice")) == {
        "bob@example.org": ("Bob", "both", ["Friends"]), "carol@example.org": ("Carol", "both", [])}
    alice.sendPresence()
    bob = await clients("bob")
    assert (await bob.rosterGet())["type"] == "result"
    bob.sendPresence(status="hello from bob")
    fromBob = await alice.waitForPresence(available("bob@example.org"))
    assert str(fromBob.status) == "hello from bob"
    await bob.waitForPresence(available("alice@example.org"))
    transcript(alice, "roster from the web app, presence from bob")


@pytest_twisted.ensureDeferred
async def test_refreshIsPushedByEjabberd(ejabberd24: LocalEjabberd, webapp: WebAppStub, service: RunningService,
                                         clients: ClientFactory) -> None:
    """
    The web app adds dave, renames bob and drops carol; the refresh writes
    that through the API while C{jabber:iq:roster} is delegated, and
    ejabberd itself pushes each change to alice's online client (rosteradmin
    pushes nothing), from her bare JID; dave's presence then reaches her.
    """
    alice = await clients("alice")
    await alice.rosterGet(ver="")
    alice.sendPresence()
    webapp.rosters["alice"] = {"bob@example.org": {"name": "Bobby", "groups": ["Friends"]},
                               "dave@example.org": {"name": "Dave"}}
    webapp.rosters["dave"] = {"alice@example.org": {"name": "Alice"}}
    before = len(alice.pushes)
    code, body = await call(service, "POST", "/roster_admin/refresh", ["alice"])
    assert (code, body["updated"], body["errors"]) == (200, 1, 0)
    pushes = (await alice.waitForPushes(before + 3))[before:]
    assert {p.getAttribute("from") for p in pushes} == {"alice@example.org"}
    pushed = {}
    for push in pushes:
        pushed.update(items(push))
    assert pushed == {"bob@example.org": ("Bobby", "both", ["Friends"]),
                      "dave@example.org": ("Dave", "both", []),
                      "carol@example.org": (None, "remove", [])}
    assert (await storedRoster(ejabberd24, "alice")) == {
        "bob@example.org": ("Bobby", "both", ["Friends"]), "dave@example.org": ("Dave", "both", [])}
    dave = await clients("dave")
    await dave.rosterGet()
    dave.sendPresence()
    await alice.waitForPresence(available("dave@example.org"))
    transcript(alice, "refresh pushed by ejabberd")


def presenceTypes(client: XMPPTestClient, after: int, sender: str) -> list[str]:
    """
    The type of each presence C{client} received from C{sender}'s JIDs after
    the first C{after} ("available" for none).
    """
    return [p.getAttribute("type", "available") for p in client.presences[after:]
            if p.getAttribute("from", "").split("/")[0] == sender]


@pytest_twisted.ensureDeferred
async def test_pairRefreshPresence(ejabberd24: LocalEjabberd, webapp: WebAppStub, service: RunningService,
                                   clients: ClientFactory) -> None:
    """
    carol and dave are online, not contacts.  One refresh makes them
    contacts: each C{add_rosteritem} sends the user's presence to the new
    contact (C{mod_roster:route_presence_change}, for a contact who gains a
    subscription to the user), and before ejabberd's push of the item; so
    the one written first reaches the other before the other's push of
    her.  Another refresh separates them: each sees the other unavailable;
    C{delete_rosteritem} also routes C{unsubscribe} and C{unsubscribed}
    from the user's bare JID, which reach the other's client when its own
    roster still lists the user (it depends on which write comes first).
    """
    carol = await clients("carol")
    await carol.rosterGet()
    carol.sendPresence()
    dave = await clients("dave")
    await dave.rosterGet()
    dave.sendPresence()
    await carol.waitForPresence(available("carol@example.org"))
    await dave.waitForPresence(available("dave@example.org"))
    had = {c: len(c.presences) for c in (carol, dave)}
    webapp.rosters["carol"] = {"alice@example.org": {"name": "Alice"}, "dave@example.org": {"name": "Dave"}}
    webapp.rosters["dave"] = {"carol@example.org": {"name": "Carol"}}
    started = time.monotonic()
    code, _ = await call(service, "POST", "/roster_admin/refresh", ["carol", "dave"])
    assert code == 200
    await carol.waitForPresence(lambda p: p in carol.presences[had[carol]:] and available("dave@example.org")(p), 5)
    carolSaw = time.monotonic() - started
    await dave.waitForPresence(lambda p: p in dave.presences[had[dave]:] and available("carol@example.org")(p), 5)
    daveSaw = time.monotonic() - started
    await RunningService.sleep(0.5)
    made = (presenceTypes(carol, had[carol], "dave@example.org"), presenceTypes(dave, had[dave], "carol@example.org"))
    first = (pushedFirst(carol, "dave@example.org"), pushedFirst(dave, "carol@example.org"))

    had = {c: len(c.presences) for c in (carol, dave)}
    webapp.rosters["carol"] = {"alice@example.org": {"name": "Alice"}}
    webapp.rosters["dave"] = {}
    code, _ = await call(service, "POST", "/roster_admin/refresh", ["carol", "dave"])
    assert code == 200
    await RunningService.sleep(1.0)
    separated = (presenceTypes(carol, had[carol], "dave@example.org"),
                 presenceTypes(dave, had[dave], "carol@example.org"))
    print(f"\nmade contacts: carol saw dave after {carolSaw:.3f} s, dave saw carol after {daveSaw:.3f} s; "
          f"presences carol got from dave, dave from carol: {made}, each pushed the other first: {first}; "
          f"after separating them: {separated}")
    transcript(dave, "a pair made contacts, then separated")
    assert carolSaw < 1.0 and daveSaw < 1.0
    assert made == (["available"], ["available"])
    assert sorted(first) == [False, True]
    for types in separated:
        assert types[0] == "unavailable" and set(types[1:]) <= {"unsubscribe", "unsubscribed"}, separated


@pytest_twisted.ensureDeferred
async def test_kickAnsweredWith307(service: RunningService, clients: ClientFactory) -> None:
    """
    bob makes a room and alice joins it; POST /muc_kick makes ejabberd's
    MUC kick her, with status 307 and the reason: without mod_privilege,
    the component's plain iqs are answered.  (ejabberd lets nobody kick a
    room's owner, its creator.)
    """
    bob = await clients("bob")
    assert (await bob.joinRoom(ROOM, "Bob")).getAttribute("type") is None
    alice = await clients("alice")
    joined = await alice.joinRoom(ROOM, "Alice")
    assert joined.getAttribute("type") is None
    code, body = await call(service, "POST", "/muc_kick",
                            {"nickname": "Alice", "muc": ROOM, "reason": "spam"},
                            headers={"Authorization": KICK_AUTHORIZATION})
    assert (code, body["status"]) == (200, "ok")
    kicked = await alice.waitForPresence(
        lambda p: p.getAttribute("from") == f"{ROOM}/Alice" and p.getAttribute("type") == "unavailable")
    x = next(e for e in kicked.elements() if e.name == "x" and e.uri == NS_MUC_USER)
    assert "307" in [s.getAttribute("code") for s in x.elements() if s.name == "status"]
    reason = [e for item in x.elements() if item.name == "item" for e in item.elements() if e.name == "reason"]
    assert [str(r) for r in reason] == ["spam"]
    transcript(alice, "kicked")


@pytest_twisted.ensureDeferred
async def test_refusedAPIIsReported(ejabberd24: LocalEjabberd, webapp: WebAppStub, rosters: dict[str, Any],
                                    clients: ClientFactory) -> None:
    """
    With a credential ejabberd does not accept, the API refuses every call:
    /healthz names the refusal, a refresh fails for the user with it, and
    carol's login is still answered from the web app.
    """
    wrong = "Basic " + base64.b64encode(b"nobody@example.org:wrong").decode()
    running = await startService(ejabberd24, webapp, rosters, [
        "--roster-sync", "ejabberd-api", "--ejabberd-api-url", ejabberd24.apiURL,
        "--ejabberd-api-authorization", wrong], writable=False)
    try:
        code, body = await call(running, "GET", "/healthz")
        assert body["connected"] is True
        assert "refuses get_roster (HTTP 401: You are not authorized to call this command.)" in (
            body["roster_sync_error"])
        print(f"healthz with a wrong API credential: {code} {body['roster_sync_error']}")
        code, body = await call(running, "POST", "/roster_admin/refresh", ["carol"])
        assert (code, body["errors"]) == (500, 1)
        assert "HTTP 401" in body["failures"]["carol"]
        carol = await clients("carol")
        result = await carol.rosterGet()
        assert items(result) == {"alice@example.org": ("Alice", "both", [])}
    finally:
        await running.stop()


@pytest_twisted.ensureDeferred
async def test_privilegeModeSaysDelegationNeverArrives(webapp: WebAppStub, rosters: dict[str, Any]) -> None:
    """
    The first design on ejabberd 24.12 (mod_privilege and mod_delegation
    for the component, rosteradmin in privilege mode): ejabberd advertises
    privileges, drops the component's answers to its disco queries, and so
    never delegates the roster.  Once --iq-timeout has passed, /healthz
    says so: 200 "degraded" with a delegation_error.
    """
    privileged = startedOrFail(LocalEjabberd({"alice": PASSWORD}, root=debian13Root()))
    running = RunningService(privileged, webapp.url, ["--iq-timeout", "2"])
    try:
        running.top.startService()
        await running.waitUntil(lambda: running.component.status.connected
                                and running.component.privileges.permissions.roster != "none", 15,
                                "component connected, privileges advertised")
        await running.waitUntil(lambda: running.component.delegation.missing is not None, 5,
                                "the missing delegation noticed")
        code, body = await call(running, "GET", "/healthz")
        print(f"\nhealthz, ejabberd 24.12 with mod_privilege: {code} {body['status']}: {body['delegation_error']}")
        assert (code, body["status"]) == (200, "degraded")
        assert NS_ROSTER in body["delegation_error"] and "mod_privilege" in body["delegation_error"]
        assert running.component.delegation.delegated == {}
    finally:
        await running.stop()
        privileged.stop()


def test_unbuiltRootExplainsSetup(tmp_path: Path) -> None:
    """
    A root without the stamp scripts/debian13.sh writes last fails the
    start, naming the script, before anything is made in it.
    """
    root = tmp_path / "root"
    root.mkdir()
    server = LocalEjabberd({"alice": PASSWORD}, root=root, include=CONTRIB_EJABBERD)
    with pytest.raises(EjabberdNotAvailable, match=r"no Debian 13 root in .*root: run `bash scripts/debian13\.sh`"):
        server.start()
    assert not server.running
    assert list(root.iterdir()) == []


def test_rootRunsAsItsOwnUser(tmp_path: Path) -> None:
    """
    A program in the root runs with the ids the root's /etc/passwd gives
    its user, through chroot, with the root's PATH; host paths inside the
    root map both ways.
    """
    (tmp_path / "etc").mkdir()
    (tmp_path / STAMP).write_text("test\n")
    (tmp_path / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\nejabberd:x:102:104::/var/lib/ejabberd:/bin/sh\n")
    root = DebianRoot(tmp_path)
    assert root.built() and root.user("ejabberd") == (102, 104)
    with pytest.raises(KeyError):
        root.user("prosody")
    command = root.command(["/usr/sbin/ejabberdctl", "foreground"], (102, 104))
    assert command[1:] == ["--userspec=102:104", str(tmp_path.resolve()), "/usr/bin/env",
                           "PATH=/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin",
                           "/usr/sbin/ejabberdctl", "foreground"]
    inside = root.inRoot(Path("/tmp/x"))
    assert inside == tmp_path.resolve() / "tmp" / "x" and root.fromRoot(inside) == Path("/tmp/x")
