# -*- test-case-name: tests.integration.test_blastradius -*-
"""
The blast radius of one user's data or behaviour, on a real Prosody with its
default C{component_stanza_size_limit} (512 KiB): a contact too large for a
stanza, a roster too large for one answer, a client flooding roster gets, a
storm of concurrent refreshes, and the component stream dropping during a
bulk sync.  In each, the other users keep being served, and the component
stream stays up (or comes back by itself with nothing stranded).  The
contact too large for a stanza and the client's flood run on ejabberd too
(L{tests.integration.conftest.PROSODY_ONLY} lists why the others do not).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import pytest_twisted
import treq
from twisted.internet import defer, reactor
from twisted.web.client import HTTPConnectionPool
from twisted.words.xish import domish

from rosteradmin.roster import Contact, Roster
from rosteradmin.stanzalimit import StanzaLimit
from tests.integration.harness import ProsodyServer, WebAppStub, XMPPTestClient
from tests.integration.servers import EJABBERD, storedSnapshot
from tests.integration.service import RunningService
from tests.integration.test_rosters import condition, items

_T = TypeVar("_T")

#: Prosody's lines when it closes a component stream: a stanza over
#: C{component_stanza_size_limit} ("Received invalid XML (stanza-too-large)"),
#: a stream error, or any disconnection of the component.
STREAM_TROUBLE = ("stanza-too-large", "not-well-formed", "Disconnecting component", "component disconnected")

#: 6,000 groups of about 110 characters: one roster item of about 760 KB,
#: which no stanza of at most 512 KiB can carry.
HUGE_GROUPS = [f"Group {i:05d} " + "g" * 100 for i in range(6000)]


@pytest.fixture
def prosody(tmp_path: Path) -> Iterator[ProsodyServer | None]:
    """
    Prosody with mod_privilege alone for roster writes (no contrib
    mod_rosteradmin_roster): one item per privileged set, each a full save
    of the roster, the costliest path and the one these faults were found
    on.  On ejabberd, C{None}: C{xmppServer} is the module's ejabberd.
    """
    if EJABBERD:
        yield None
        return
    server = ProsodyServer(tmp_path, without=("rosteradmin_roster",))
    server.start()
    yield server
    server.stop()


def contactsOf(count: int, start: int = 0) -> dict[str, Any]:
    """
    A web-app roster of C{count} contacts, each with a name and one group:
    about 110 bytes of roster XML each, so 8,000 of them are about 880 KB.
    """
    return {f"contact{i:05d}@example.org": {"name": f"Contact number {i:05d}", "groups": [f"Group {i % 50:03d}"]}
            for i in range(start, start + count)}


def asRoster(webRoster: dict[str, Any]) -> Roster:
    """
    The L{Roster} the service builds from a web-app roster of
    L{contactsOf} (JIDs already normalised).
    """
    return Roster(Contact(jid, value.get("name"), tuple(value.get("groups", ())))
                  for jid, value in webRoster.items())


def _lua(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def preFill(prosody: ProsodyServer, username: str, webRoster: dict[str, Any]) -> None:
    """
    Store a roster straight into Prosody's internal storage, every item
    with subscription both, as if rosteradmin had written it.  Writing
    8,000 items one privileged set each takes Prosody minutes (it rewrites
    the user's whole roster file on each set); stored in advance, a
    roster that equals the web app's needs no write at all.

    Call it before anything makes Prosody load the user's roster: Prosody
    caches loaded rosters.
    """
    lines = ["return {", '\t[false] = { ["pending"] = {}; ["version"] = 1; };']
    for jid, value in webRoster.items():
        groups = "".join(f"[{_lua(g)}] = true; " for g in value.get("groups", ()))
        name = f'["name"] = {_lua(value["name"])}; ' if value.get("name") else ""
        lines.append(f'\t[{_lua(jid)}] = {{ ["groups"] = {{ {groups}}}; ["subscription"] = "both"; {name}}};')
    lines.append("};")
    path = prosody.storedRosterPath(username)
    path.parent.mkdir(exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def streamTrouble(prosody: ProsodyServer) -> list[str]:
    """
    The lines of Prosody's log saying it closed or lost a component stream
    since the component first authenticated (before, the fixture's probe of
    the component port connects and disconnects).
    """
    lines = prosody.logPath.read_text(errors="replace").splitlines()
    first = next(i for i, line in enumerate(lines) if "External component successfully authenticated" in line)
    return [line for line in lines[first:] if any(mark in line for mark in STREAM_TROUBLE)]


async def refresh(service: RunningService, usernames: list[str], timeout: float = 30.0) -> tuple[int, Any]:
    """
    C{POST /roster_admin/refresh} with C{usernames}, on a connection of its
    own (treq's shared pool would queue concurrent requests two at a time).

    @return: The status code and the JSON body.
    """
    response = await treq.post(service.baseURL + "/roster_admin/refresh", json.dumps(usernames).encode(),
                               pool=HTTPConnectionPool(reactor, persistent=False), timeout=timeout)
    return response.code, json.loads(await response.text())


def errorType(reply: domish.Element) -> tuple[str, str]:
    """
    The condition and type of an error iq.
    """
    return condition(reply), reply.error.getAttribute("type", "")


def errorText(reply: domish.Element) -> str:
    return next((str(t) for t in reply.error.elements() if t.name == "text"), "")


def percentile(values: list[float], fraction: float) -> float:
    """
    The nearest-rank percentile of C{values}.
    """
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


async def timed(work: Callable[[], Awaitable[_T]]) -> tuple[float, _T]:
    """
    Await C{work()}, and say how long it took in seconds.
    """
    started = time.monotonic()
    result = await work()
    return time.monotonic() - started, result


async def timedGets(client: XMPPTestClient, keepGoing: Callable[[], bool], atLeast: int, pause: float = 0.1,
                    timeout: float = 10.0) -> list[tuple[float, str, bool]]:
    """
    Sequential roster gets while C{keepGoing()}, and at least C{atLeast},
    C{pause} seconds apart: 10 a second by default, half what the service
    allows one user.

    @return: The latency and outcome (C{"result"}, an error condition, or
        C{"timeout"}) of each, and whether C{keepGoing()} still held when
        it came (it was answered in the middle of what the caller waits
        for, not after it).
    """
    outcomes: list[tuple[float, str, bool]] = []
    while len(outcomes) < atLeast or keepGoing():
        started = time.monotonic()
        try:
            reply = await client.rosterGet(timeout=timeout)
        except TimeoutError:
            outcome = "timeout"
        else:
            outcome = "result" if reply["type"] == "result" else "error " + condition(reply)
        outcomes.append((time.monotonic() - started, outcome, keepGoing()))
        await RunningService.sleep(pause)
    return outcomes


@pytest_twisted.ensureDeferred
async def test_oversizedItemDoesNotCutOthersOff(prosody: ProsodyServer | None, xmppServer: Any, webapp: WebAppStub,
                                                service: RunningService, clients: Any) -> None:
    """
    alice's web-app roster holds one contact too large for any stanza: a
    refresh of alice and bob refuses alice alone with the reason and
    updates bob, alice's own get gets a resource-constraint error, and
    bob's and carol's gets keep succeeding on a component stream that never
    drops (on Prosody, its log shows no stream closed either).
    """
    webapp.rosters.update({
        "alice": {"bob@example.org": {"name": "Bob", "groups": HUGE_GROUPS}},
        "bob": {"alice@example.org": {"name": "Alice"}},
        "carol": {"bob@example.org": {"name": "Bob"}},
    })
    bob, carol = await clients("bob"), await clients("carol")
    assert items(await bob.rosterGet()) == {"alice@example.org": ("Alice", "both", [])}
    assert (await carol.rosterGet())["type"] == "result"

    webapp.rosters["bob"] = {"alice@example.org": {"name": "Alice"}, "dave@example.org": {"name": "Dave"}}
    posted = defer.ensureDeferred(refresh(service, ["alice", "bob"]))
    connectionCounts: set[int] = set()
    replies: list[domish.Element] = []
    duringRefresh: list[int] = []
    posted.addBoth(lambda result: duringRefresh.append(len(replies)) or result)
    while len(replies) < 10 or not posted.called:
        for client in (bob, carol):
            replies.append(await client.rosterGet())
            connectionCounts.add(service.component.status.connections)
    code, body = await posted
    for _ in range(5):
        for client in (carol, bob):
            replies.append(await client.rosterGet())
            connectionCounts.add(service.component.status.connections)
    print(f"\nrefresh -> {code} updated={body['updated']} failures: {body['failures']}")
    print(f"{len(replies)} roster gets of bob and carol ({duringRefresh[0]} answered while the refresh ran): "
          f"{sum(r['type'] == 'result' for r in replies)} results")

    assert code == 200 and body["updated"] == 1 and set(body["failures"]) == {"alice"}, body
    assert "cannot be stored" in body["failures"]["alice"]
    assert "cannot be stored" in service.backend.snapshot().refused["alice"]
    assert all(r["type"] == "result" for r in replies)
    bobNow = {"alice@example.org": ("Alice", "both", []), "dave@example.org": ("Dave", "both", [])}
    assert items(replies[-1]) == bobNow  # bob's last get

    alice = await clients("alice")
    own = await alice.rosterGet()
    print(f"alice's own roster get: {errorType(own)} {errorText(own)!r}")
    assert own["type"] == "error" and errorType(own) == ("resource-constraint", "cancel")
    assert errorText(own)
    assert alice.connected and (await bob.rosterGet())["type"] == "result"
    assert "bob@example.org" not in await storedSnapshot(xmppServer, "alice")

    assert connectionCounts == {1}
    assert service.component.status.connected and service.component.status.connections == 1
    if prosody is not None:
        assert streamTrouble(prosody) == []


def largestAnswer(webRoster: dict[str, Any], limit: StanzaLimit) -> int:
    """
    The most contacts of C{webRoster} (a L{contactsOf}, taken in order) whose
    roster still fits one answer under C{limit}.
    """
    jids = list(webRoster)
    low, high = 0, len(jids)
    while low < high:
        middle = (low + high + 1) // 2
        if limit.answerRefusal(asRoster({j: webRoster[j] for j in jids[:middle]})) is None:
            low = middle
        else:
            high = middle - 1
    return low


@pytest_twisted.ensureDeferred
async def test_rosterTooLargeForOneAnswer(prosody: ProsodyServer, webapp: WebAppStub, service: RunningService,
                                          clients: Any) -> None:
    """
    alice has 8,000 contacts, about 880 KB as one roster answer (already
    stored in the server): her roster get gets a resource-constraint error
    with a text instead of a closed stream, while bob's get meanwhile and
    carol's roster of the largest size that fits are answered in full.
    """
    contacts = contactsOf(8000)
    fits = largestAnswer(contacts, StanzaLimit())
    fitting = contactsOf(fits)
    preFill(prosody, "alice", contacts)
    preFill(prosody, "carol", fitting)
    webapp.rosters.update({"alice": contacts, "carol": fitting, "bob": {"alice@example.org": {"name": "Alice"}}})
    print(f"\n8,000 contacts: {len(asRoster(contacts).queryXML())} bytes of <query/>; the largest roster that "
          f"fits one answer: {fits} contacts, {len(asRoster(fitting).queryXML())} bytes of <query/>")

    alice, bob = await clients("alice"), await clients("bob")
    started = time.monotonic()
    aliceGet = alice.rosterGet(timeout=25)
    bobSeconds, bobReply = await timed(lambda: bob.rosterGet(timeout=25))
    aliceReply = await aliceGet
    aliceSeconds = time.monotonic() - started
    print(f"alice's get after {aliceSeconds:.2f} s: {errorType(aliceReply)} {errorText(aliceReply)!r}")
    print(f"bob's get meanwhile: {bobReply['type']} after {bobSeconds:.2f} s")
    assert aliceReply["type"] == "error" and errorType(aliceReply) == ("resource-constraint", "cancel")
    assert "8000 contacts" in errorText(aliceReply)
    assert "8000 contacts" in service.backend.snapshot().refused["alice"]
    assert items(bobReply) == {"alice@example.org": ("Alice", "both", [])}
    assert '["version"] = 1;' in prosody.storedRoster("alice")  # pre-filled: nothing was written

    again = await alice.rosterGet()
    assert errorType(again) == ("resource-constraint", "cancel") and alice.connected

    carol = await clients("carol")
    carolSeconds, carolReply = await timed(lambda: carol.rosterGet(timeout=25))
    print(f"carol's roster of {fits} contacts: {carolReply['type']} after {carolSeconds:.2f} s")
    assert carolReply["type"] == "result" and len(items(carolReply)) == fits
    assert "carol" not in service.backend.snapshot().refused

    assert service.component.status.connected and service.component.status.connections == 1
    assert streamTrouble(prosody) == []


@pytest_twisted.ensureDeferred
async def test_largeSyncDoesNotHoldUpOtherLogins(prosody: ProsodyServer, webapp: WebAppStub,
                                                 service: RunningService, clients: Any) -> None:
    """
    While alice's login writes 300 new items into a server roster of 8,000
    (each set costs Prosody about 65 ms: about 20 s in all), bob logs in
    uncached: his roster get is answered while alice's writes are still
    queued or in flight, not after her whole store.  (How long bob waits,
    against how slow the busy server is for everyone meanwhile, is a target
    of the benchmarks, scenario 6.)
    """
    preFill(prosody, "alice", contactsOf(8000))
    webapp.rosters.update({"alice": contactsOf(8300), "bob": {"alice@example.org": {"name": "Alice"}}})
    sync = service.component.privileges._sync

    alice = await clients("alice")
    started = time.monotonic()
    aliceGet = alice.rosterGet(timeout=60)
    await RunningService.waitUntil(lambda: sync.waiting >= 100, 15, "alice's writes queued")
    bob = await clients("bob")
    running, queued = sync.running, sync.waiting
    bobSeconds, bobReply = await timed(lambda: bob.rosterGet(timeout=40))
    # Where alice's store was when bob got his answer.
    aliceAnswered, writesLeft = aliceGet.called, sync.running + sync.waiting
    print(f"\nbob's uncached get with {running} of alice's privileged writes in flight and {queued} queued: "
          f"{bobReply['type']} after {bobSeconds:.2f} s, with {writesLeft} of them still in flight or queued")
    aliceReply = await aliceGet
    aliceSeconds = time.monotonic() - started
    print(f"alice's get (300 writes) after {aliceSeconds:.2f} s: {errorType(aliceReply)}")

    assert bobReply["type"] == "result"
    assert errorType(aliceReply) == ("resource-constraint", "cancel")
    assert prosody.storedRoster("alice").count('"both"') == 8300
    assert service.component.status.connections == 1 and streamTrouble(prosody) == []
    assert not aliceAnswered and writesLeft > 0, f"bob's login waited behind alice's writes ({bobSeconds:.1f} s)"


async def flood(client: XMPPTestClient, atOnce: int, then: int, perSecond: float) -> list[domish.Element]:
    """
    Send C{atOnce} roster gets in one go, then C{then} more at
    C{perSecond} in bursts every 50 ms, never waiting for a reply.

    @return: All the replies, once every one has come.
    """
    sent = [client.rosterGet(timeout=60) for _ in range(atOnce)]
    burst = max(1, round(perSecond / 20))
    while len(sent) < atOnce + then:
        await RunningService.sleep(0.05)
        sent += [client.rosterGet(timeout=60) for _ in range(min(burst, atOnce + then - len(sent)))]
    return await defer.gatherResults(sent)


@pytest_twisted.ensureDeferred
async def test_oneClientFloodDoesNotStarveOthers(prosody: ProsodyServer | None, webapp: WebAppStub,
                                                 service: RunningService, clients: Any) -> None:
    """
    alice's client sends 1,000 roster gets at once, then 1,000 more over
    two seconds (25 times what one user may): bob, carol and dave, getting
    theirs one after another meanwhile and right after, all succeed, and
    each of them is answered, more than once, while alice's gets are still
    unanswered (not queued behind her flood); alice gets wait errors (resource-constraint)
    for the excess, and a few seconds later she is served normally again.
    (The others' latency during the flood against no flood is a target of
    the benchmarks, scenario 11.)
    """
    others = ("bob", "carol", "dave")
    for user in ("alice",) + others:
        webapp.rosters[user] = {"erin@example.org": {"name": "Erin"}}
    alice = await clients("alice")
    sessions = [await clients(user) for user in others]
    for client in [alice] + sessions:
        assert (await client.rosterGet())["type"] == "result"  # cached before the flood

    started = time.monotonic()
    flooded = defer.ensureDeferred(flood(alice, 1000, 1000, 500))

    def flooding() -> bool:
        return not flooded.called

    during = await defer.gatherResults([defer.ensureDeferred(timedGets(c, flooding, 5)) for c in sessions])
    floodReplies = await flooded
    floodSeconds = time.monotonic() - started
    after = await defer.gatherResults([defer.ensureDeferred(timedGets(c, lambda: False, 20)) for c in sessions])

    served = sum(r["type"] == "result" for r in floodReplies)
    refused = [errorType(r) for r in floodReplies if r["type"] == "error"]
    duringAll = [o for outcomes in during for o in outcomes]
    afterAll = [o for outcomes in after for o in outcomes]
    print(f"\nflood: 2000 gets sent and answered in {floodSeconds:.2f} s: {served} results, {len(refused)} errors "
          f"{sorted(set(refused))}")
    for label, outcomes in (("during", duringAll), ("after", afterAll)):
        latencies = [seconds for seconds, _, _ in outcomes]
        ok = sum(outcome == "result" for _, outcome, _ in outcomes)
        print(f"others {label} the flood: {ok}/{len(outcomes)} results, p50 {percentile(latencies, 0.5) * 1000:.0f}"
              f" ms, p99 {percentile(latencies, 0.99) * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms")

    await RunningService.sleep(3)
    recovered = [await alice.rosterGet() for _ in range(5)]
    print(f"alice 3 s after the flood: {[r['type'] for r in recovered]}")

    assert served + len(refused) == 2000
    # A burst of 40, then 20 a second: about 80 of 2,000 in two seconds.
    assert 40 <= served <= 40 + 20 * floodSeconds + 10, served
    assert set(refused) == {("resource-constraint", "wait")}
    assert all(outcome == "result" for _, outcome, _ in duringAll + afterAll), duringAll + afterAll
    assert len(duringAll) >= 30
    # Each of the others was served again and again in the middle of the
    # flood (one get after another), not once and then held behind it.
    assert all(sum(midFlood for _, _, midFlood in outcomes) >= 2 for outcomes in during), during
    assert all(r["type"] == "result" for r in recovered)
    assert service.component.status.connections == 1
    if prosody is not None:
        assert streamTrouble(prosody) == []


# Every user's first fetch in one round (the default, 64 with a quarter kept
# for logins, would take three rounds of the slow web app below).
@pytest.mark.parametrize("serviceArgs", [["--fetch-concurrency", "200"]], ids=["fetch-concurrency-200"])
@pytest_twisted.ensureDeferred
async def test_concurrentRefreshesCoalesce(prosody: ProsodyServer, webapp: WebAppStub,
                                           service: RunningService) -> None:
    """
    200 concurrent refreshes of the same 100 users (20,000 user refreshes
    asked for) all succeed with at most two web-app fetches per user.
    """
    users = [f"u{i}" for i in range(100)]
    for user in users:
        prosody.addAccount(user, "pw")  # Prosody refuses to store a roster of no account
        webapp.rosters[user] = {"alice@example.org": {"name": "Alice"}}
        # A web app this slow keeps every first fetch in flight until all
        # 200 requests have arrived: they are concurrent, not one after
        # another (receiving them takes the service about 1.5 s).
        webapp.delays[user] = 3.0

    started = time.monotonic()
    posted = defer.gatherResults([defer.ensureDeferred(refresh(service, users)) for _ in range(200)])
    await RunningService.waitUntil(lambda: service.backend.snapshot().refreshes == 200, 10, "200 refreshes received")
    arrived = time.monotonic() - started
    finishedBeforeLast = len(service.backend.cache)
    replies = await posted
    seconds = time.monotonic() - started
    fetches = [webapp.requests[user] for user in users]
    print(f"\n200 refreshes of 100 users: all received after {arrived:.2f} s (with {finishedBeforeLast} users "
          f"refreshed by then), answered after {seconds:.2f} s; {sum(fetches)} web-app fetches for 20,000 asked "
          f"(at most {max(fetches)} per user)")

    assert finishedBeforeLast == 0  # no refresh of any user had finished: all 200 overlapped
    assert all(code == 200 and body["updated"] == 100 and body["errors"] == 0 for code, body in replies), replies[:3]
    assert max(fetches) <= 2 and sum(fetches) <= 200
    assert min(fetches) >= 1
    assert all(prosody.storedRoster(user).count('"both"') == 1 for user in users)


@pytest_twisted.ensureDeferred
async def test_streamDropDuringBulkSync(prosody: ProsodyServer, webapp: WebAppStub, service: RunningService,
                                        clients: Any) -> None:
    """
    The component stream is cut while a refresh of 1,000 users has
    privileged writes in flight and many queued: the component reconnects,
    uncached logins afterwards are answered, the refresh is answered, no
    slot stays held or work queued, and every refreshed roster ends up
    stored in the server.
    """
    users = [f"u{i:04d}" for i in range(1000)]
    for user in users:
        prosody.addAccount(user, "pw")  # Prosody refuses to store a roster of no account
        webapp.rosters[user] = {"alice@example.org": {"name": "Alice"}, "erin@example.org": {"name": "Erin"}}
    webapp.rosters["bob"] = {"alice@example.org": {"name": "Alice"}}
    webapp.rosters["carol"] = {"dave@example.org": {"name": "Dave"}}
    sync = service.component.privileges._sync

    started = time.monotonic()
    posted = defer.ensureDeferred(refresh(service, users, timeout=60))
    await RunningService.waitUntil(lambda: len(service.backend.cache) >= 100 and sync.waiting >= 50, 20,
                                   "the refresh half-way, with privileged requests queued")
    cutAt = (len(service.backend.cache), sync.running, sync.waiting, time.monotonic() - started)
    service.component.xmlstream.transport.abortConnection()
    await RunningService.waitUntil(lambda: service.component.status.connections == 2 and service.ready(), 15,
                                   "the component reconnected")
    print(f"\ncut after {cutAt[3]:.2f} s with {cutAt[0]} users refreshed, {cutAt[1]} privileged requests in "
          f"flight and {cutAt[2]} queued; reconnected after {time.monotonic() - started:.2f} s")

    bob, carol = await clients("bob"), await clients("carol")
    bobSeconds, bobReply = await timed(lambda: bob.rosterGet(timeout=10))
    carolSeconds, carolReply = await timed(lambda: carol.rosterGet(timeout=10))
    print(f"uncached logins after the reconnect: bob {bobReply['type']} in {bobSeconds:.2f} s, "
          f"carol {carolReply['type']} in {carolSeconds:.2f} s")
    assert items(bobReply) == {"alice@example.org": ("Alice", "both", [])}
    assert items(carolReply) == {"dave@example.org": ("Dave", "both", [])}

    code, body = await posted
    print(f"refresh -> {code} after {time.monotonic() - started:.2f} s: updated={body['updated']} "
          f"errors={body['errors']} {list(body['failures'].items())[:2]}")
    assert body["updated"] + body["errors"] == 1000

    await RunningService.waitUntil(lambda: sync.running == sync.waiting == 0 and not len(service.backend._locks), 30,
                                   "no privileged request or user work left")
    await RunningService.waitUntil(lambda: not service.backend.unsynced, 30, "every refreshed roster written")
    print(f"all settled after {time.monotonic() - started:.2f} s; parked: {service.component.privileges.parked}")
    unstored = [u for u in users if prosody.storedRoster(u).count('"both"') != 2]
    assert unstored == []
    assert service.component.privileges.parked == {}
    assert service.backend.fetcher.inFlight == 0 and service.backend.snapshot().stuck is None
    assert service.component.status.connected and service.component.status.connections == 2
    assert (await bob.rosterGet())["type"] == "result"
