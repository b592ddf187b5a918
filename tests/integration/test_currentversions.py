"""
Roster queries answered by Prosody itself: contrib's mod_rosteradmin_roster
keeps the version rosteradmin promised for a stored roster, and answers
the user's gets before mod_delegation would forward them (empty for that
version, else the stored roster with it), until the stored roster changes,
the client tries a roster set, or rosteradmin revokes it.  Every answer a
client gets is still right, and a client flooding them is answered a
wait error beyond its rate, as rosteradmin answers one.
"""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer

from tests.integration.harness import ProsodyServer, WebAppStub
from tests.integration.service import RunningService
from tests.integration.test_rosters import items

pytestmark = pytest.mark.integration


@pytest.fixture
def rosters() -> dict[str, dict[str, Any]]:
    return {"alice": {"bob@example.org": {"name": "Bob", "groups": ["Friends"]}},
            "bob": {"alice@example.org": {"name": "Alice"}}}


def isEmptyResult(reply: Any) -> bool:
    return reply["type"] == "result" and reply.firstChildElement() is None


def contacts(reply: Any) -> set[str]:
    return {item["jid"] for item in reply.query.elements() if item.name == "item"}


async def promised(service: RunningService, client: Any) -> str:
    """
    Log a client in; return the version it was given, promised to the
    server by the time it is answered: with the write of the roster
    (contrib's load at login stores it before the bind), else with the
    answer (it goes first on the component stream).
    """
    first = await client.rosterGet(ver="")
    assert first.query is not None
    version = str(first.query["ver"])
    assert service.backend.promises.promisedVersion(client.jid.user) == version
    return version


@pytest_twisted.ensureDeferred
async def test_currentVersionAnsweredByProsody(service: RunningService, webapp: WebAppStub,
                                               clients: Any) -> None:
    """
    After one delegated answer, gets with its version are answered by
    Prosody: empty results, and rosteradmin sees none of them.
    """
    alice = await clients("alice")
    version = await promised(service, alice)
    answered, fetches = service.component.rosterServer.answered, dict(webapp.requests)
    replies = [await alice.rosterGet(ver=version) for _ in range(5)]
    print(f"\n5 gets with ver={version}: rosteradmin answered {service.component.rosterServer.answered - answered}")
    assert all(isEmptyResult(r) for r in replies)
    assert service.component.rosterServer.answered == answered
    assert dict(webapp.requests) == fetches
    # A get without a version, or with another one: the stored roster,
    # as rosteradmin answered it, with its version.
    full = await alice.rosterGet()
    stale = await alice.rosterGet(ver="123")
    for reply in (full, stale):
        assert items(reply) == {"bob@example.org": ("Bob", "both", ["Friends"])}
        assert reply.query["ver"] == version
    assert service.component.rosterServer.answered == answered


@pytest_twisted.ensureDeferred
async def test_answerFromPromiseCarriesEveryValueEscaped(service: RunningService, webapp: WebAppStub,
                                                         clients: Any) -> None:
    """
    Prosody builds its answer from the stored roster without re-checking
    each value, and escapes them as it serialises the answer: names and
    groups with XML's special characters and beyond ASCII, an item without
    a name and one in several groups arrive as the web app gave them.
    """
    webapp.rosters["alice"] = {
        "bob@example.org": {"name": "Bob & <Co> \"O'Brien\"", "groups": ["Friends & Family", "<b>"]},
        "carol@example.org": {"groups": []},
        "dave@example.org": {"name": "Dav\u00e9 \u65e5\u672c \U0001f600", "groups": ["\u00dcber", "x > y", "Work"]},
    }
    expected = {
        "bob@example.org": ("Bob & <Co> \"O'Brien\"", "both", ["<b>", "Friends & Family"]),
        "carol@example.org": (None, "both", []),
        "dave@example.org": ("Dav\u00e9 \u65e5\u672c \U0001f600", "both", ["Work", "x > y", "\u00dcber"]),
    }
    alice = await clients("alice")
    version = await promised(service, alice)
    answered = service.component.rosterServer.answered
    replies = [await alice.rosterGet(), await alice.rosterGet(ver="stale")]
    assert service.component.rosterServer.answered == answered
    for reply in replies:
        assert items(reply) == expected
        assert reply.query["ver"] == version


@pytest_twisted.ensureDeferred
async def test_promiseOutlivesRosteradminRestartWithState(xmppServer: ProsodyServer, webapp: WebAppStub,
                                                           clients: Any, tmp_path: Any) -> None:
    """
    With a state file, rosteradmin restarted keeps the server's promises:
    alice's next login is answered by Prosody, without a fetch, while the
    web app is still asked when she comes online.
    """
    webapp.rosters.update({"alice": {"bob@example.org": {"name": "Bob"}}})
    args = ["--state", str(tmp_path / "state.sqlite")]
    first = RunningService(xmppServer, webapp.url, args)
    await first.start()
    alice = await clients("alice")
    version = await promised(first, alice)
    await alice.disconnect()
    await first.stop()
    again = RunningService(xmppServer, webapp.url, args)
    await again.start()
    try:
        fetches = webapp.requests["alice"]
        alice = await clients("alice")
        reply = await alice.rosterGet()
        assert items(reply) == {"bob@example.org": ("Bob", "both", [])} and reply.query["ver"] == version
        assert again.component.rosterServer.answered == 0 and webapp.requests["alice"] == fetches
        # Online, she is fetched; a change made meanwhile is written and pushed.
        webapp.rosters["alice"] = {"bob@example.org": {"name": "Bob"}, "carol@example.org": {"name": "Carol"}}
        alice.sendPresence()
        [push] = await alice.waitForPushes(1)
        assert push.query.item["jid"] == "carol@example.org"
        await RunningService.waitUntil(lambda: "carol" in xmppServer.storedRoster("alice"), 5, "carol stored")
    finally:
        await again.stop()


async def syncedThenRestarted(xmppServer: ProsodyServer, webapp: WebAppStub, tmp_path: Any,
                              prosodyToo: bool) -> RunningService:
    """
    As deployed: a sync writes alice's and bob's rosters, no client of
    theirs asks, and rosteradmin restarts on its state (and Prosody too,
    if C{prosodyToo}: the promises it held are gone, its store stays).
    """
    webapp.rosters.update({"alice": {"bob@example.org": {"name": "Bob"}},
                           "bob": {"alice@example.org": {"name": "Alice"}}})
    args = ["--state", str(tmp_path / "state.sqlite")]
    first = RunningService(xmppServer, webapp.url, args)
    await first.start()
    summary = await first.backend.refresh(["alice", "bob"])
    assert not summary.errors and "Bob" in xmppServer.storedRoster("alice")
    await first.stop()
    if prosodyToo:
        xmppServer.restart()
    again = RunningService(xmppServer, webapp.url, args)
    await again.start()
    return again


async def getsReachingRosteradmin(service: RunningService, sessions: list[Any], versions: list[str]) -> int:
    """
    Five gets with the version and five without from each session: how
    many reached rosteradmin.  Every answer is checked.
    """
    answered, replies = service.component.rosterServer.answered, []
    for session, version in zip(sessions, versions):
        for _ in range(5):
            replies += [await session.rosterGet(ver=version), await session.rosterGet()]
    assert sum(isEmptyResult(r) for r in replies) == 5 * len(sessions)
    assert [contacts(r) for r in replies if not isEmptyResult(r)] == (
        [{"bob@example.org"}] * 5 + [{"alice@example.org"}] * 5)
    return service.component.rosterServer.answered - answered


@pytest_twisted.ensureDeferred
async def test_usersSyncedBeforeRestartWithStateAreAnsweredByProsody(xmppServer: ProsodyServer, webapp: WebAppStub,
                                                                     clients: Any, tmp_path: Any) -> None:
    """
    The sync promised what it wrote, and the promises outlive
    rosteradmin's restart: none of the gets of alice's and bob's clients
    (with presence) reaches rosteradmin, their first ones neither.
    """
    again = await syncedThenRestarted(xmppServer, webapp, tmp_path, prosodyToo=False)
    try:
        sessions, versions = [await clients("alice"), await clients("bob")], []
        for session in sessions:
            reply = await session.rosterGet(ver="")
            session.sendPresence()
            versions.append(str(reply.query["ver"]))
        reached = again.component.rosterServer.answered + await getsReachingRosteradmin(again, sessions, versions)
        print(f"\n22 gets after the restart: {reached} reached rosteradmin")
        assert reached == 0
    finally:
        await again.stop()


@pytest_twisted.ensureDeferred
async def test_usersSyncedBeforeBothRestartedArePromisedAgain(xmppServer: ProsodyServer, webapp: WebAppStub,
                                                              clients: Any, tmp_path: Any) -> None:
    """
    Prosody restarted too, so it holds no promise; the state records what
    it stores, which this run has not verified.  Each user's first two
    answers are rosteradmin's, which reads the stored roster back at the
    second and promises it: none of the later gets reaches rosteradmin.
    """
    again = await syncedThenRestarted(xmppServer, webapp, tmp_path, prosodyToo=True)
    try:
        sessions, versions = [await clients("alice"), await clients("bob")], []
        for session in sessions:
            reply = await session.rosterGet(ver="")
            session.sendPresence()
            versions.append(str(reply.query["ver"]))
            assert isEmptyResult(await session.rosterGet(ver=versions[-1]))
        assert again.component.rosterServer.answered == 4
        await RunningService.waitUntil(lambda: again.backend.snapshot().promised == 2, 5, "both versions promised")
        reached = await getsReachingRosteradmin(again, sessions, versions)
        print(f"\n20 gets after the first two answers of each user: {reached} reached rosteradmin")
        assert reached == 0
    finally:
        await again.stop()


def addedBehindProsodysBack(xmppServer: ProsodyServer, username: str, contact: str) -> None:
    """
    Add a contact to a user's stored roster file, keeping the roster's
    version: only a Prosody that loads the roster from its store again sees
    it, and rosteradmin's promise of that version still holds.
    """
    path = xmppServer.storedRosterPath(username)
    text = path.read_text()
    assert text.startswith("return {")
    path.write_text(text.replace("return {", f'return {{\n["{contact}"] = {{ ["subscription"] = "both"; ["groups"] = {{}}; }};', 1))


@pytest_twisted.ensureDeferred
async def test_rostersOfOfflineUsersAreNotKeptInProsody(xmppServer: ProsodyServer, webapp: WebAppStub,
                                                         clients: Any) -> None:
    """
    Prosody keeps a roster it loads for an offline user in a cache; a full
    sync reads and writes every user's.  rosteradmin's writes (alice's and
    bob's rosters differ from the web app's: contrib's bulk write) and
    reads (bob's again, by a rosteradmin without a state: equal, a
    privileged get) leave none there: each user's
    login loads the roster from the store, as if rosteradmin had never
    touched it.  Seen through a contact added to the stored file behind
    Prosody's back, its version kept: Prosody answers the user's get from
    the promise, with the roster it loaded at the login.
    """
    webapp.rosters.update({"alice": {"bob@example.org": {"name": "Bob"}},
                           "bob": {"alice@example.org": {"name": "Alice"}}})
    seen: dict[str, set[str]] = {}

    async def login(service: RunningService, username: str) -> None:
        addedBehindProsodysBack(xmppServer, username, "dave@example.org")
        answered = service.component.rosterServer.answered
        client = await clients(username)
        seen[username] = contacts(await client.rosterGet(ver=""))
        assert service.component.rosterServer.answered == answered  # Prosody answered

    writer = RunningService(xmppServer, webapp.url)
    await writer.start()
    try:
        assert not (await writer.backend.refresh(["alice", "bob"])).errors
        await login(writer, "alice")
    finally:
        await writer.stop()
    reader = RunningService(xmppServer, webapp.url)  # revokes every promise
    await reader.start()
    try:
        stored = xmppServer.storedRoster("bob")
        assert not (await reader.backend.refresh(["bob"])).errors
        assert xmppServer.storedRoster("bob") == stored  # read, not written
        await RunningService.waitUntil(lambda: reader.backend.promises.promisedVersion("bob") is not None, 5,
                                       "bob's stored roster read back and promised")
        await login(reader, "bob")
    finally:
        await reader.stop()
    print(f"\nafter rosteradmin wrote alice's and read bob's roster, their logins loaded {seen}")
    assert seen == {"alice": {"bob@example.org", "dave@example.org"},
                    "bob": {"alice@example.org", "dave@example.org"}}


@pytest_twisted.ensureDeferred
async def test_promisesRevokedByRosteradminWithoutState(xmppServer: ProsodyServer, webapp: WebAppStub,
                                                        clients: Any) -> None:
    """
    rosteradmin restarted without a state cannot know what the server
    stores: it revokes every promise at its first connection, and answers
    alice's next login itself.
    """
    webapp.rosters.update({"alice": {"bob@example.org": {"name": "Bob"}}})
    first = RunningService(xmppServer, webapp.url)
    await first.start()
    alice = await clients("alice")
    await promised(first, alice)
    await first.stop()
    again = RunningService(xmppServer, webapp.url)
    await again.start()
    try:
        await RunningService.sleep(0.5)  # the revocation answered
        reply = await alice.rosterGet()
        assert contacts(reply) == {"bob@example.org"}
        assert again.component.rosterServer.answered == 1
    finally:
        await again.stop()


@pytest_twisted.ensureDeferred
async def test_changedRosterIsNotCurrent(service: RunningService, webapp: WebAppStub, clients: Any) -> None:
    """
    A refresh writes the new roster into the server, which ends the
    promise, and promises the new version in turn, once written: the old
    version gets the whole new roster (from Prosody, with the new
    version), the new one an empty result; neither reaches rosteradmin.
    """
    alice = await clients("alice")
    old = await promised(service, alice)
    webapp.rosters["alice"] = {"bob@example.org": {"name": "Bob"}, "carol@example.org": {"name": "Carol"}}
    answered, promises = service.component.rosterServer.answered, service.backend.snapshot().promised
    pushes = len(alice.pushes)
    await service.backend.refresh(["alice"])
    assert service.backend.snapshot().promised == promises + 1
    # A get racing the refresh's push of carol to this very client may
    # still be delegated (measured: about half the runs, since the module
    # follows our pushes to each device); once the client has the push,
    # the server answers.
    await alice.waitForPushes(pushes + 1, timeout=5)
    reply = await alice.rosterGet(ver=old)
    assert contacts(reply) == {"bob@example.org", "carol@example.org"}
    new = str(reply.query["ver"])
    assert new != old and new == service.backend.cache.peek("alice").version  # type: ignore[union-attr]
    assert isEmptyResult(await alice.rosterGet(ver=new))
    assert service.component.rosterServer.answered == answered


@pytest_twisted.ensureDeferred
async def test_rosterSetEndsPromise(service: RunningService, clients: Any) -> None:
    """
    A client that tried a roster set may show its refused change: its
    next get is delegated, and rosteradmin sends it the whole roster.
    """
    alice = await clients("alice")
    version = await promised(service, alice)
    refused = await alice.rosterSet("mallory@example.org", name="Mallory")
    assert refused["type"] == "error"
    answered = service.component.rosterServer.answered
    reply = await alice.rosterGet(ver=version)
    assert service.component.rosterServer.answered == answered + 1
    assert contacts(reply) == {"bob@example.org"}


@pytest.mark.parametrize("prosody", [("rosteradmin_subscriptions",)], indirect=True)
@pytest_twisted.ensureDeferred
async def test_storedRosterChangedByServerEndsPromise(xmppServer: ProsodyServer, service: RunningService,
                                                      clients: Any) -> None:
    """
    Without the subscription blocker, Prosody applies alice's unsubscribed
    to her stored roster: the saved roster is no longer the promised one,
    so her next get goes to rosteradmin again.
    """
    alice = await clients("alice")
    version = await promised(service, alice)
    alice.sendPresence(to="bob@example.org", type="unsubscribed")
    await RunningService.waitUntil(lambda: '"to"' in xmppServer.storedRoster("alice"), 5,
                                   "Prosody applying alice's unsubscribed")
    answered = service.component.rosterServer.answered
    await alice.rosterGet(ver=version)
    assert service.component.rosterServer.answered == answered + 1


@pytest_twisted.ensureDeferred
async def test_failedWriteRevokesPromise(service: RunningService, webapp: WebAppStub, clients: Any) -> None:
    """
    A refresh whose write the server refuses leaves the stored roster as it
    was: rosteradmin revokes the promise, so the client asking with the
    old version gets the refreshed roster from rosteradmin, not "current".
    """
    alice = await clients("alice")
    old = await promised(service, alice)
    webapp.rosters["alice"] = {"bob@example.org": {"name": "Bob"}, "carol@example.org": {"name": "Carol"}}
    # Parked, as after two stream losses during her writes: every write
    # of hers fails before it is sent.
    service.component.privileges.parked["alice"] = "test: writes held back"
    summary = await service.backend.refresh(["alice"])
    assert summary.errors, "the refresh reports the refused write"
    answered = service.component.rosterServer.answered
    reply = await alice.rosterGet(ver=old)
    assert service.component.rosterServer.answered == answered + 1
    assert contacts(reply) == {"bob@example.org", "carol@example.org"}


@pytest.mark.parametrize("prosody", ["rosteradmin_answer_rosters = false"], indirect=True)
@pytest_twisted.ensureDeferred
async def test_switchedOffEveryQueryIsDelegated(service: RunningService, clients: Any) -> None:
    """
    With rosteradmin_answer_rosters = false, Prosody takes the promise
    and answers nothing itself: rosteradmin answers every query.
    """
    alice = await clients("alice")
    version = await promised(service, alice)
    answered = service.component.rosterServer.answered
    assert isEmptyResult(await alice.rosterGet(ver=version))
    assert contacts(await alice.rosterGet()) == {"bob@example.org"}
    assert service.component.rosterServer.answered == answered + 2


def isWait(reply: Any) -> bool:
    return (reply["type"] == "error" and reply.error["type"] == "wait"
            and reply.error.firstChildElement().name == "resource-constraint")


@pytest_twisted.ensureDeferred
async def test_floodOfGetsAnsweredByProsodyIsBounded(service: RunningService, clients: Any) -> None:
    """
    A client that floods roster gets Prosody answers itself gets its
    burst (two seconds of rosteradmin_roster_get_rate, 20 a second by
    default) and then a resource-constraint wait error for each, as
    rosteradmin answers a flood; rosteradmin sees none of them.  Another
    user is answered meanwhile, and the flooding client is answered again
    once it slows down.
    """
    alice, bob = await clients("alice"), await clients("bob")
    version = await promised(service, alice)
    bobVersion = await promised(service, bob)
    # Prosody answered those first gets too (their rosters were promised
    # at the login's write): the token each took is back within 50 ms.
    await RunningService.sleep(0.1)
    answered = service.component.rosterServer.answered
    replies = await defer.gatherResults([alice.rosterGet(ver=version) for _ in range(200)])
    results, waits = sum(isEmptyResult(r) for r in replies), sum(isWait(r) for r in replies)
    print(f"\n200 gets at once: {results} answered, {waits} refused with wait")
    assert results + waits == 200
    assert 40 <= results <= 60
    assert isEmptyResult(await bob.rosterGet(ver=bobVersion))
    await RunningService.sleep(1.0)
    assert isEmptyResult(await alice.rosterGet(ver=version))
    assert service.component.rosterServer.answered == answered


@pytest.mark.parametrize("prosody", ["rosteradmin_roster_get_rate = 1"], indirect=True)
@pytest_twisted.ensureDeferred
async def test_getRateIsAnOption(service: RunningService, clients: Any) -> None:
    """
    rosteradmin_roster_get_rate = 1: a burst of two gets, then one a
    second.
    """
    alice = await clients("alice")
    version = await promised(service, alice)
    await RunningService.sleep(1.1)  # the token Prosody's answer of that first get took is back
    replies = await defer.gatherResults([alice.rosterGet(ver=version) for _ in range(20)])
    assert [isEmptyResult(r) for r in replies[:2]] == [True, True]
    assert sum(isWait(r) for r in replies) >= 17
    await RunningService.sleep(1.1)
    assert isEmptyResult(await alice.rosterGet(ver=version))
    assert isWait(await alice.rosterGet(ver=version))
