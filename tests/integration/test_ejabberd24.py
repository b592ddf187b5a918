"""
rosteradmin on Debian 13's ejabberd (24.12, and 26.07 from trixie-backports), run under C{chroot} from the
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
import re
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
from rosteradmin.ejabberdsessions import EjabberdSessions
from rosteradmin.roster import NS_ROSTER
from tests.integration.debianroot import STAMP, DebianRoot, debian13Root
from tests.integration.ejabberd import EjabberdNotAvailable, LocalEjabberd
from tests.integration.harness import (
    PASSWORD, ClientFactory, WebAppStub, XMPPTestClient, availableFrom, startedOrFail,
)
from tests.integration.service import KICK_AUTHORIZATION, RunningService
from tests.integration.test_http import call
from tests.integration.test_refreshpresence import pushedFirst
from tests.integration.test_rosters import condition, items

pytestmark = pytest.mark.integration

#: The ejabberd configuration operators are told to include; the tests run exactly it.
CONTRIB_EJABBERD = Path(__file__).resolve().parents[2] / "contrib" / "ejabberd" / "rosteradmin.yml"
#: contrib's module that stops subscription presences, installed as operators are told.
SUBSCRIPTIONS_MODULE = CONTRIB_EJABBERD.parent / "mod_rosteradmin_subscriptions"
SUBSCRIPTION_TYPES = ["subscribe", "subscribed", "unsubscribe", "unsubscribed"]
ROOM = "room@conference.example.org"
NS_MUC_USER = "http://jabber.org/protocol/muc#user"


@pytest.fixture(scope="module")
def ejabberd24() -> Iterator[LocalEjabberd]:
    """
    A started ejabberd with the accounts alice, bob, carol and dave
    (password C{pw}), contrib's configuration and subscription module,
    shared by the module's tests.  When it cannot run, every test fails: a
    green run must have run it.
    """
    server = LocalEjabberd({user: PASSWORD for user in ("alice", "bob", "carol", "dave")},
                           root=debian13Root(), include=CONTRIB_EJABBERD, contribModules=(SUBSCRIPTIONS_MODULE,))
    startedOrFail(server)
    yield server
    server.stop()


@pytest.fixture
def xmppServer(ejabberd24: LocalEjabberd) -> LocalEjabberd:
    return ejabberd24


@pytest.fixture
def extraArgs() -> list[str]:
    """
    More of rosteradmin's arguments, for a test to parametrize.
    """
    return []


@pytest.fixture
def serviceArgs(ejabberd24: LocalEjabberd, extraArgs: list[str]) -> list[str]:
    return ["--roster-sync", "ejabberd-api", "--ejabberd-api-url", ejabberd24.apiURL, *extraArgs]


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


async def apiCall(server: LocalEjabberd, command: str, arguments: dict[str, Any]) -> Any:
    """
    Call ejabberd's API as an admin tool would, behind rosteradmin's back.
    """
    response = await treq.post(f"{server.apiURL}/{command}", json=arguments,
                               pool=HTTPConnectionPool(reactor, persistent=False))
    assert response.code == 200, await response.text()
    return json.loads(await response.text())


def sessionsOf(running: RunningService) -> EjabberdSessions:
    sessions = running.top.getServiceNamed("sessions")
    assert isinstance(sessions, EjabberdSessions)
    return sessions


async def listedOnline(running: RunningService, online: dict[str, set[str]]) -> None:
    """
    Read ejabberd's session list now until it names exactly these
    sessions (a login is listed once bound).
    """
    sessions = sessionsOf(running)

    async def listed() -> bool:
        await sessions.poll()
        return sessions.online == online

    for _ in range(50):
        if await listed():
            return
        await RunningService.sleep(0.1)
    raise AssertionError(f"ejabberd lists {sessions.online} online (problem: {sessions.problem}), not {online}")


def pushed(client: XMPPTestClient, start: int) -> dict[str, tuple[str | None, str, list[str]]]:
    """
    The items of the roster pushes a client got since C{start}, the last
    push of each contact winning.
    """
    found: dict[str, tuple[str | None, str, list[str]]] = {}
    for push in client.pushes[start:]:
        found.update(items(push))
    return found


def transcript(client: XMPPTestClient, title: str) -> None:
    """
    Print a client's side of a test (shown with -s).
    """
    print(f"--- {title}: {client.jid.full()}")
    for line in client.transcript:
        print(line)


@pytest_twisted.ensureDeferred
async def test_webAppRosterWithPresence(ejabberd24: LocalEjabberd, service: RunningService,
                                        clients: ClientFactory) -> None:
    """
    Over ejabberd 24.12's delegation (C{:1}), alice's client gets the web
    app's roster with subscription both, which is stored in ejabberd by
    then; bob's presence reaches her once he logs in, and hers him.
    """
    assert service.component.delegation.delegated == {NS_ROSTER: NS_DELEGATION_1}
    code, body = await call(service, "GET", "/healthz")
    assert (code, body["status"], body["delegated"]) == (200, "ok", True)
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
    fromBob = await alice.waitForPresence(availableFrom("bob@example.org"))
    assert str(fromBob.status) == "hello from bob"
    await bob.waitForPresence(availableFrom("alice@example.org"))
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
    await alice.waitForPresence(availableFrom("dave@example.org"))
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
    carol and dave are online, not contacts.  Two refreshes in turn, carol
    then dave, make them contacts: each C{add_rosteritem} sends the user's
    presence to the new contact (C{mod_roster:route_presence_change}, for a
    contact who gains a subscription to the user), and before ejabberd's
    push of the item; so carol's, written first, reaches dave before his
    push of her, and dave's reaches carol after hers.  (One refresh of both
    writes them at once, and then either may come first, or neither.)
    Another refresh separates them: each sees the other unavailable;
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
    await carol.waitForPresence(availableFrom("carol@example.org"))
    await dave.waitForPresence(availableFrom("dave@example.org"))
    had = {c: len(c.presences) for c in (carol, dave)}
    webapp.rosters["carol"] = {"alice@example.org": {"name": "Alice"}, "dave@example.org": {"name": "Dave"}}
    webapp.rosters["dave"] = {"carol@example.org": {"name": "Carol"}}
    started = time.monotonic()
    for username in ("carol", "dave"):
        code, _ = await call(service, "POST", "/roster_admin/refresh", [username])
        assert code == 200
    await carol.waitForPresence(lambda p: p in carol.presences[had[carol]:] and availableFrom("dave@example.org")(p), 5)
    carolSaw = time.monotonic() - started
    await dave.waitForPresence(lambda p: p in dave.presences[had[dave]:] and availableFrom("carol@example.org")(p), 5)
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
    assert first == (True, False)
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
async def test_inspectShowsAnAdminToolsDrift(ejabberd24: LocalEjabberd, webapp: WebAppStub,
                                              service: RunningService) -> None:
    """
    dave's roster is synced into ejabberd, then an admin removes carol from
    it with ejabberd's own API: GET /roster_admin/users/dave reads the
    stored roster through the API (get_roster), shows carol missing
    against the cache and the web app, and says the next reconciliation
    pass repairs it, and when; after that pass, all agree.
    """
    webapp.rosters["dave"] = {"bob@example.org": {"name": "Bob"}, "carol@example.org": {"name": "Carol"}}
    code, _ = await call(service, "POST", "/roster_admin/refresh/dave")
    assert code == 200
    assert set(await storedRoster(ejabberd24, "dave")) == {"bob@example.org", "carol@example.org"}
    response = await treq.post(f"{ejabberd24.apiURL}/delete_rosteritem",
                               json={"localuser": "dave", "localhost": ejabberd24.domain, "user": "carol",
                                     "host": ejabberd24.domain},
                               pool=HTTPConnectionPool(reactor, persistent=False))
    assert response.code == 200
    assert set(await storedRoster(ejabberd24, "dave")) == {"bob@example.org"}

    code, body = await call(service, "GET", "/roster_admin/users/dave")
    print(f"\ninspect dave on ejabberd 24.12: {body['verdict']}")
    assert code == 200 and body["status"] == "problem"
    assert body["server"]["status"] == "read" and body["server"]["roster"]["count"] == 1
    carol = {"jid": "carol@example.org", "name": "Carol", "groups": []}
    assert body["differences"]["server_to_cache"] == {"added": [carol], "removed": [], "changed": []}
    assert body["differences"]["server_to_web_app"] == {"added": [carol], "removed": [], "changed": []}
    assert re.fullmatch(
        r"the server does not store the roster served \(1 to add\): presence follows the server's roster; the next "
        r"reconciliation pass repairs it in (6 h|5 h 59 min) \(a refresh does not: the state records the server as "
        r"holding the web app's roster\)", body["verdict"]), body["verdict"]

    service.top.getServiceNamed("sync").start("reconcile")
    await RunningService.waitUntil(lambda: service.top.getServiceNamed("sync").current.finishedAt is not None, 10,
                                   "the reconciliation pass")
    code, body = await call(service, "GET", "/roster_admin/users/dave")
    assert code == 200 and body["status"] == "ok", body["verdict"]
    assert set(await storedRoster(ejabberd24, "dave")) == {"bob@example.org", "carol@example.org"}


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
async def test_privilegeModeSaysWhyItCannotWork(webapp: WebAppStub, rosters: dict[str, Any]) -> None:
    """
    The first design (mod_privilege and mod_delegation for the component,
    rosteradmin in privilege mode).  ejabberd 24.12 advertises privileges,
    drops the component's answers to its disco queries, and so never
    delegates the roster: once --iq-timeout has passed, /healthz says so,
    200 "degraded" with a delegation_error.  26.07 delegates the roster
    with mod_privilege loaded, but still sends rosteradmin's own
    privileged roster iqs back to it: a refresh is refused, and /healthz
    says why in roster_sync_error.  Either way, rosters are written with
    --roster-sync ejabberd-api.
    """
    privileged = startedOrFail(LocalEjabberd({"alice": PASSWORD}, root=debian13Root()))
    running = RunningService(privileged, webapp.url, ["--iq-timeout", "2"])
    release = privileged.release()
    try:
        running.top.startService()
        await running.waitUntil(lambda: running.component.status.connected
                                and running.component.privileges.permissions.roster != "none", 15,
                                "component connected, privileges advertised")
        if release < "25":
            await running.waitUntil(lambda: running.component.delegation.missing is not None, 5,
                                    "the missing delegation noticed")
            code, body = await call(running, "GET", "/healthz")
            print(f"\nhealthz, ejabberd {release} with mod_privilege: {code} {body['status']}: "
                  f"{body['delegation_error']}")
            assert (code, body["status"], body["delegated"]) == (200, "degraded", False)
            assert NS_ROSTER in body["delegation_error"] and "mod_privilege" in body["delegation_error"]
            assert running.component.delegation.delegated == {}
            return
        await running.waitUntil(lambda: bool(running.component.delegation.delegated), 5, "the roster delegated")
        assert running.component.privileges.permissions.namespace == "urn:xmpp:privilege:2"
        webapp.rosters.update(rosters)
        code, body = await call(running, "POST", "/roster_admin/refresh", ["alice"])
        assert (code, body["updated"]) == (500, 0)
        code, body = await call(running, "GET", "/healthz")
        print(f"\nhealthz, ejabberd {release} with mod_privilege: {code} {body['status']}: "
              f"{body['roster_sync_error']}")
        assert (code, body["status"], body["delegation_error"], body["delegated"]) == (200, "degraded", None, True)
        assert "own roster requests back" in body["roster_sync_error"]
    finally:
        await running.stop()
        privileged.stop()


@pytest_twisted.ensureDeferred
async def test_onlineUsersCaughtUpAfterRestart(ejabberd24: LocalEjabberd, webapp: WebAppStub,
                                              rosters: dict[str, Any], clients: ClientFactory) -> None:
    """
    Without mod_privilege no presence tells rosteradmin who is online:
    ejabberd's session list (connected_users_vhost) does.  alice and bob
    are listed; rosteradmin stops, the web app adds dave to alice's roster
    meanwhile (no refresh reaches anyone), and the next rosteradmin's
    first read of the sessions catches alice up: ejabberd pushes dave to
    her client, with both, and stores him.
    """
    first = await startService(ejabberd24, webapp, rosters, ["--roster-sync", "ejabberd-api",
                                                             "--ejabberd-api-url", ejabberd24.apiURL])
    try:
        alice, bob = await clients("alice"), await clients("bob")
        for client in (alice, bob):
            await client.rosterGet(ver="")
            client.sendPresence()
        await listedOnline(first, {"alice": {alice.jid.full()}, "bob": {bob.jid.full()}})
    finally:
        await first.stop()
    webapp.rosters["alice"] = {**rosters["alice"], "dave@example.org": {"name": "Dave"}}
    before = len(alice.pushes)
    second = await startService(ejabberd24, webapp, {}, ["--roster-sync", "ejabberd-api",
                                                         "--ejabberd-api-url", ejabberd24.apiURL])
    try:
        await alice.waitForPushes(before + 1)
        assert pushed(alice, before) == {"dave@example.org": ("Dave", "both", [])}
        assert sessionsOf(second).online == {"alice": {alice.jid.full()}, "bob": {bob.jid.full()}}
        assert (await storedRoster(ejabberd24, "alice"))["dave@example.org"] == ("Dave", "both", [])
        transcript(alice, "caught up after rosteradmin's restart")
    finally:
        await second.stop()


@pytest.mark.parametrize("extraArgs", [["--cache-max-contacts", "6"]])
@pytest_twisted.ensureDeferred
async def test_onlineUsersRosterStaysCached(ejabberd24: LocalEjabberd, service: RunningService,
                                            clients: ClientFactory) -> None:
    """
    With a cache bound that holds one roster (alice's two contacts count
    5, bob's and carol's one 4 each), alice, listed online by ejabberd,
    keeps her roster cached while bob's and carol's are loaded; bob,
    offline, is dropped for carol.  /metrics and inspect show her online
    resource from the same session list.
    """
    alice = await clients("alice")
    await alice.rosterGet(ver="")
    await listedOnline(service, {"alice": {alice.jid.full()}})
    assert service.component.snapshot().onlineResources == 1
    assert service.component.resources("alice").online == (alice.jid.full(),)
    for user in ("bob", "carol"):
        code, body = await call(service, "POST", "/roster_admin/refresh", [user])
        assert (code, body["updated"]) == (200, 1)
    cache = service.backend.cache
    assert cache.peek("alice") is not None and cache.peek("bob") is None and cache.peek("carol") is not None
    assert cache.evictions >= 1


@pytest.mark.parametrize("extraArgs", [["--online-check-interval", "2"]])
@pytest_twisted.ensureDeferred
async def test_onlineCheckRepairsWhatAnAdminChanged(ejabberd24: LocalEjabberd, service: RunningService,
                                                    webapp: WebAppStub, clients: ClientFactory) -> None:
    """
    An admin tool deletes bob from alice's stored roster behind
    rosteradmin's back (ejabberd pushes the removal to her client).
    alice is listed online, so the online check reads her stored roster
    back within its interval, without a web-app fetch, and writes bob
    again: ejabberd pushes him to her with both.
    """
    alice = await clients("alice")
    await alice.rosterGet(ver="")
    alice.sendPresence()
    await listedOnline(service, {"alice": {alice.jid.full()}})
    fetches = dict(webapp.requests)
    before = len(alice.pushes)
    assert await apiCall(ejabberd24, "delete_rosteritem", {"localuser": "alice", "localhost": "example.org",
                                                           "user": "bob", "host": "example.org"}) == 0
    await alice.waitForPushes(before + 2, timeout=10)
    assert [items(p) for p in alice.pushes[before:before + 2]] == [
        {"bob@example.org": (None, "remove", [])}, {"bob@example.org": ("Bob", "both", ["Friends"])}]
    assert (await storedRoster(ejabberd24, "alice"))["bob@example.org"] == ("Bob", "both", ["Friends"])
    assert service.backend.snapshot().driftRepaired
    assert dict(webapp.requests) == fetches
    transcript(alice, "an admin's removal repaired by the online check")


@pytest_twisted.ensureDeferred
async def test_refusedSetsPutBack(ejabberd24: LocalEjabberd, service: RunningService,
                                  clients: ClientFactory) -> None:
    """
    alice's client adds mallory and renames bob; both sets are refused
    (not-allowed), and her client is pushed the roster's items back: a
    removal of mallory, bob as the web app has him.  ejabberd stores
    nothing of her edits.
    """
    alice = await clients("alice")
    await alice.rosterGet(ver="")
    before = len(alice.pushes)
    added = await alice.rosterSet("mallory@example.org", name="Mallory")
    assert added["type"] == "error" and condition(added) == "not-allowed"
    await alice.waitForPushes(before + 1)
    renamed = await alice.rosterSet("bob@example.org", name="Robert")
    assert renamed["type"] == "error" and condition(renamed) == "not-allowed"
    await alice.waitForPushes(before + 2)
    assert pushed(alice, before) == {"mallory@example.org": (None, "remove", []),
                                     "bob@example.org": ("Bob", "both", ["Friends"])}
    assert (await storedRoster(ejabberd24, "alice")) == {
        "bob@example.org": ("Bob", "both", ["Friends"]), "carol@example.org": ("Carol", "both", [])}
    transcript(alice, "refused sets put back")


@pytest_twisted.ensureDeferred
async def test_kickRefusalsMapped(service: RunningService, clients: ClientFactory) -> None:
    """
    ejabberd's refusals get the statuses of docs/webapp.md: a room that does not
    exist 404 (item-not-found), a nickname the room does not hold 404
    (ejabberd says not-acceptable), the room's owner 403 (not-allowed,
    also once rosteradmin has joined); nobody is kicked.
    """
    bob = await clients("bob")
    assert (await bob.joinRoom(ROOM, "Bob")).getAttribute("type") is None
    alice = await clients("alice")
    assert (await alice.joinRoom(ROOM, "Alice")).getAttribute("type") is None
    outcomes = {}
    for what, nick, room in [("no room", "Alice", "nosuchroom@conference.example.org"),
                             ("no nick", "Nobody", ROOM), ("owner", "Bob", ROOM)]:
        outcomes[what] = await call(service, "POST", "/muc_kick", {"nickname": nick, "muc": room},
                                    headers={"Authorization": KICK_AUTHORIZATION})
    print(f"\nkick outcomes on ejabberd 24.12: {outcomes}")
    assert outcomes["no room"] == (404, {"error": "Room or nickname not found"})
    assert outcomes["no nick"] == (404, {"error": "Room or nickname not found"})
    assert outcomes["owner"][0] == 403
    gone = [p for c in (alice, bob) for p in c.presences
            if p.getAttribute("type") == "unavailable" and p.getAttribute("from") in (f"{ROOM}/Alice", f"{ROOM}/Bob")]
    assert gone == []


async def online(clients: ClientFactory, user: str) -> XMPPTestClient:
    """
    A session that has its roster and has sent its initial presence.
    """
    client = await clients(user)
    await client.rosterGet()
    client.sendPresence()
    return client


def policyViolation(sender: str) -> Any:
    return lambda p: (p.getAttribute("type") == "error" and p.getAttribute("from", "").startswith(sender)
                      and p.error is not None and p.error.firstChildElement().name == "policy-violation")


@pytest.mark.parametrize("kind", SUBSCRIPTION_TYPES)
@pytest_twisted.ensureDeferred
async def test_clientSubscriptionPresenceStopped(kind: str, ejabberd24: LocalEjabberd, service: RunningService,
                                                  clients: ClientFactory) -> None:
    """
    With contrib's mod_rosteradmin_subscriptions, a client's subscription
    presence to a contact is refused with policy-violation and a text;
    neither stored roster changes, the contact gets nothing, and presence
    keeps flowing both ways.
    """
    alice, bob = await online(clients, "alice"), await online(clients, "bob")
    await alice.waitForPresence(availableFrom("bob@example.org"))
    before = await storedRoster(ejabberd24, "alice"), await storedRoster(ejabberd24, "bob")
    alice.sendPresence(to="bob@example.org", type=kind)
    refusal = await alice.waitForPresence(policyViolation("bob@example.org"))
    print(f"\n{kind}: refused with {refusal.toXml()}")
    assert "managed by its web application" in str(refusal.error.text)
    await RunningService.sleep(0.3)
    assert (await storedRoster(ejabberd24, "alice"), await storedRoster(ejabberd24, "bob")) == before
    assert before[0]["bob@example.org"][1] == before[1]["alice@example.org"][1] == "both"
    assert not [p for p in bob.presences if p.getAttribute("type") == kind]
    seen = len(alice.presences)
    bob.sendPresence(show="away")
    await alice.waitForPresence(lambda p: alice.presences.index(p) >= seen and p.show is not None)
    seenByBob = len(bob.presences)
    alice.sendPresence(show="dnd")
    await bob.waitForPresence(lambda p: bob.presences.index(p) >= seenByBob and p.show is not None)


@pytest.mark.parametrize("kind", SUBSCRIPTION_TYPES)
@pytest_twisted.ensureDeferred
async def test_inboundSubscriptionPresenceStopped(kind: str, ejabberd24: LocalEjabberd, service: RunningService,
                                                   clients: ClientFactory) -> None:
    """
    A subscription presence to alice from another domain (a component of
    the server, as one from another server arrives) is dropped before it
    reaches her or her stored roster; the sender gets policy-violation.
    """
    alice = await online(clients, "alice")
    before = await storedRoster(ejabberd24, "alice")
    errors: list[Any] = []
    xs = service.component.xmlstream
    xs.addObserver("/presence[@type='error']", errors.append)
    xs.send(f"<presence from='stranger@{ejabberd24.componentJID}' to='alice@example.org' type='{kind}'/>")
    await RunningService.waitUntil(lambda: errors, 5, "the server's error for our subscription presence")
    xs.removeObserver("/presence[@type='error']", errors.append)
    print(f"\n{kind} to alice: {errors[0].toXml()}")
    assert errors[0].error.firstChildElement().name == "policy-violation"
    await RunningService.sleep(0.3)
    assert await storedRoster(ejabberd24, "alice") == before
    assert not [p for p in alice.presences if p.getAttribute("type") == kind]


@pytest_twisted.ensureDeferred
async def test_serverSubscriptionPresenceStoppedSilently(ejabberd24: LocalEjabberd, webapp: WebAppStub,
                                                         service: RunningService, clients: ClientFactory) -> None:
    """
    A refresh drops carol from alice's roster: deleting her through the
    API, ejabberd sends carol unsubscribe and unsubscribed from alice.  The
    module drops them silently: carol's stored roster keeps alice with
    both (the web app still lists her there), and nobody gets an error.
    """
    alice, carol = await online(clients, "alice"), await online(clients, "carol")
    assert (await storedRoster(ejabberd24, "carol"))["alice@example.org"][1] == "both"
    webapp.rosters["alice"] = {"bob@example.org": {"name": "Bob", "groups": ["Friends"]}}
    code, body = await call(service, "POST", "/roster_admin/refresh", ["alice"])
    assert (code, body["updated"]) == (200, 1)
    await RunningService.sleep(0.5)
    assert "carol@example.org" not in await storedRoster(ejabberd24, "alice")
    assert (await storedRoster(ejabberd24, "carol"))["alice@example.org"] == ("Alice", "both", [])
    assert not [p for c in (alice, carol) for p in c.presences
                if p.getAttribute("type") in ("error", *SUBSCRIPTION_TYPES)]


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
