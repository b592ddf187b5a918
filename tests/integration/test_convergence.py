# -*- test-case-name: tests.integration.test_convergence -*-
"""
Convergence, on a real server (the full sync on Prosody and ejabberd, the rest on Prosody): the server holds
every user's web-app roster before anyone logs in, and keeps converging to
it across a crash.

- After a full sync (C{--users-url}), a client that sends its initial
  presence before its roster get (as profanity does) is seen online by its
  contacts and sees them.
- A bulk refresh of 1,000 users killed (C{kill -9}) half-way is finished by
  the next process on the same C{--state} file, with no new request.  Two
  variants found product bugs, now fixed: the same kill during
  C{POST /roster_admin/sync} of a list, and a kill mid-write followed by
  the web app going back to the recorded roster.
- A user not synced yet whose client sends presence first: what stock
  Prosody (no roster load at login) then routes, and what it does not.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import treq
from twisted.internet import defer, reactor, threads
from twisted.python.failure import Failure
from twisted.web import server
from twisted.web.client import HTTPConnectionPool
from twisted.words.xish import domish

from rosteradmin_demo.devprosody import freePort
from tests.integration.harness import (
    PASSWORD, ProsodyServer, WebAppStub, XMPPTestClient, availableFrom, listenWebApp,
)
from tests.integration.servers import Held, serverArgs, serverSettings, stored, storedRoster, waitOnline
from tests.integration.service import RunningService
from tests.integration.test_blastradius import preFill
from tests.integration.test_http import call
from tests.integration.test_rosters import items

pytestmark = pytest.mark.integration

ROOT = Path(__file__).parents[2]

#: Three users whose web-app rosters list each other.
TRIAD = {
    "alice": {"bob@example.org": {"name": "Bob", "groups": ["Friends"]},
              "carol@example.org": {"name": "Carol", "groups": ["Friends"]}},
    "bob": {"alice@example.org": {"name": "Alice", "groups": ["Friends"]},
            "carol@example.org": {"name": "Carol"}},
    "carol": {"alice@example.org": {"name": "Alice"},
              "bob@example.org": {"name": "Bob", "groups": ["Work", "Friends"]}},
}


class UsersWebApp(WebAppStub):
    """
    The web app stub with its users list too: C{GET /users} answers the
    usernames in pages of C{pageSize}, each page but the last linking the
    next one by a relative URL (RFC 8288)::

        GET /users            200 ["alice", "bob"]   Link: </users?after=2>; rel="next"
        GET /users?after=2    200 ["carol"]

    @ivar users: The usernames listed.
    @ivar userPages: How many pages were asked for.
    """

    def __init__(self) -> None:
        super().__init__()
        self.users: list[str] = []
        self.pageSize = 2
        self.userPages = 0

    @property
    def usersURL(self) -> str:
        return f"http://127.0.0.1:{self.portNumber}/users"

    def render_GET(self, request: server.Request) -> bytes | int:
        if request.postpath == [b"users"]:
            return self._usersPage(request)
        return super().render_GET(request)

    def _usersPage(self, request: server.Request) -> bytes:
        self.userPages += 1
        start = int(request.args.get(b"after", [b"0"])[0])
        end = start + self.pageSize
        if end < len(self.users):
            request.setHeader(b"link", f'</users?after={end}>; rel="next"'.encode())
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(self.users[start:end]).encode()


@pytest_twisted.async_yield_fixture
async def webapp() -> AsyncIterator[UsersWebApp]:
    """
    L{UsersWebApp} on loopback (replacing conftest's stub for this module).
    """
    stub = UsersWebApp()
    stub.port, stub.url = listenWebApp(stub)
    stub.portNumber = stub.port.getHost().port
    yield stub
    await stub.port.stopListening()


def expected(webRoster: dict[str, Any]) -> Held:
    """
    What the server must hold for a web-app roster: every contact, with
    its name and groups, subscription both.
    """
    return {jid: (spec.get("name"), "both", sorted(spec.get("groups", ()))) for jid, spec in webRoster.items()}


def held(reply: domish.Element) -> Held:
    """
    The contacts of a roster result, in the form of L{stored}.
    """
    return {jid: (name, subscription, sorted(groups)) for jid, (name, subscription, groups) in items(reply).items()}


def seconds(value: float | None) -> str:
    return "never" if value is None else f"after {value:.3f} s"


async def receives(client: XMPPTestClient, bare: str, after: int, timeout: float,
                   since: float | None = None) -> float | None:
    """
    Whether C{client} receives an available presence from C{bare} (among
    the presences after the first C{after}) within C{timeout} seconds.

    @param since: The monotonic time to count from (default: now).
    @return: The seconds it took, or C{None} if none came.
    """
    started = time.monotonic() if since is None else since
    earlier = {id(p) for p in client.presences[:after]}
    available = availableFrom(bare)
    try:
        await client.waitForPresence(lambda p: id(p) not in earlier and available(p), timeout)
    except TimeoutError:
        return None
    return time.monotonic() - started


@pytest_twisted.ensureDeferred
async def test_presenceBeforeRosterGetAfterFullSync(xmppServer: Any, webapp: UsersWebApp,
                                                    clients: Any) -> None:
    """
    After the full sync at start (users listed in two pages), bob sends his
    initial presence, then carol sends hers before any roster get: each
    receives the other's available presence, and carol's roster get then
    answers the web app's roster from the cache, with no fetch.
    """
    webapp.rosters.update(TRIAD)
    webapp.users = list(TRIAD)
    running = RunningService(xmppServer, webapp.url, serverArgs(xmppServer) + ["--users-url", webapp.usersURL])
    started = time.monotonic()
    await running.start()
    try:
        async def syncFinished() -> dict[str, Any]:
            for _ in range(300):
                code, body = await call(running, "GET", "/roster_admin/sync")
                assert code == 200
                if body["sync"] is not None and not body["sync"]["running"]:
                    return dict(body["sync"])
                await RunningService.sleep(0.05)
            raise AssertionError("the full sync did not finish within 15 s")

        progress = await syncFinished()
        print(f"\nfull sync at start: {progress['synced']} synced of {progress['listed']} listed "
              f"({webapp.userPages} users pages) {time.monotonic() - started:.2f} s after start")
        assert (progress["kind"], progress["listed"], progress["listing_done"], progress["synced"],
                progress["failed"], progress["error"]) == ("full", 3, True, 3, 0, None)
        assert webapp.userPages == 2
        for user, webRoster in TRIAD.items():
            assert await storedRoster(xmppServer, user) == expected(webRoster), user
        fetchesBeforeLogin = dict(webapp.requests)

        bob = await clients("bob")
        bob.sendPresence()
        await waitOnline(running, "bob", 5)

        carol = await clients("carol")
        bobHad = len(bob.presences)
        sentAt = time.monotonic()
        carol.sendPresence()  # before any roster get, as profanity does
        reply = await carol.rosterGet()
        assert reply["type"] == "result"
        assert held(reply) == expected(TRIAD["carol"])

        bobSaw = await receives(bob, "carol@example.org", bobHad, 5, sentAt)
        carolSaw = await receives(carol, "bob@example.org", 0, 5, sentAt)
        print(f"carol's initial presence (sent before her roster get) reached bob: {seconds(bobSaw)}; "
              f"bob's presence reached carol: {seconds(carolSaw)} (both counted from carol's presence); "
              f"web-app fetches at login: {sum(webapp.requests.values()) - sum(fetchesBeforeLogin.values())}")
        assert bobSaw is not None, "bob never saw carol online"
        assert carolSaw is not None, "carol never saw bob online"
        sender = next(p for p in bob.presences[bobHad:] if availableFrom("carol@example.org")(p))
        assert sender["from"] == carol.jid.full()
        assert webapp.requests == fetchesBeforeLogin  # answered from the full sync's cache
    finally:
        await running.stop()


#: The 1,000 users of the bulk refresh, and their rosters before and after
#: the change: two privileged sets each (alice renamed and grouped, erin added).
BULK_USERS = [f"u{i:04d}" for i in range(1000)]
OLD_ROSTER = {"alice@example.org": {"name": "Alice"}}
NEW_ROSTER = {"alice@example.org": {"name": "Alice Liddell", "groups": ["Team"]}, "erin@example.org": {"name": "Erin"}}

#: Roster requests the web app answers in a refresh that is killed
#: (L{killMidWay}); it holds the rest until the kill.
ANSWERED = 500

#: Users stored new by which that refresh is killed: well below
#: L{ANSWERED}, so that writes are on their way as the kill lands.
KILL_AT = 100


class Rosteradmin:
    """
    A real C{twistd -n rosteradmin} process, configured by a TOML file with
    the secret in a file, its output in C{log} (a pipe would fill up and
    block it: a bulk refresh logs a few hundred kilobytes).
    """

    def __init__(self, server: Any, webapp: WebAppStub, directory: Path, name: str,
                 state: Path, settings: str = "") -> None:
        """
        @param server: The XMPP server: Prosody, or ejabberd (then with the
            settings its API needs, L{serverSettings}).
        @param settings: More lines of the TOML file.
        """
        self.httpPort = freePort()
        self.baseURL = f"http://127.0.0.1:{self.httpPort}"
        self.log = directory / f"{name}.log"
        (directory / "secret").write_text(server.secret + "\n")
        config = directory / f"{name}.toml"
        config.write_text(f"""
jid = "{server.componentJID}"
secret_file = "{directory / 'secret'}"
domain = "{server.domain}"
xmpp_port = {server.componentPort}
roster_url = "{webapp.url}"
http = "tcp:{self.httpPort}:interface=127.0.0.1"
no_kick = true
state = "{state}"
{serverSettings(server)}{settings}""")
        command = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
                   "-n", "--pidfile=", "rosteradmin", "--config", str(config)]
        with open(self.log, "w") as output:
            self.process = subprocess.Popen(command, cwd=ROOT, stdout=output, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL,
                                            env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    async def healthy(self, timeout: float = 15.0) -> None:
        """
        Wait until C{/healthz} answers 200 (connected to the server).
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"rosteradmin exited:\n{self.output()}"
            try:
                response = await treq.get(self.baseURL + "/healthz",
                                          pool=HTTPConnectionPool(reactor, persistent=False))
                await response.content()
                if response.code == 200:
                    return
            except Exception:
                pass
            await RunningService.sleep(0.05)
        raise AssertionError(f"rosteradmin never became healthy:\n{self.output()}")

    def refresh(self, usernames: list[str]) -> defer.Deferred[Any]:
        """
        C{POST /roster_admin/refresh} with C{usernames}, on a connection of
        its own.
        """
        return treq.post(self.baseURL + "/roster_admin/refresh", json.dumps(usernames).encode(),
                         pool=HTTPConnectionPool(reactor, persistent=False), timeout=120)

    def kill(self) -> None:
        """
        C{kill -9}, and reap it.
        """
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> str:
        """
        SIGTERM; its output, once it exited cleanly.
        """
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(30)
        output = self.output()
        assert self.process.returncode in (0, -signal.SIGTERM), output[-3000:]
        assert "Traceback" not in output
        return output

    def ensureGone(self) -> None:
        if self.process.poll() is None:
            self.kill()


def stateCounts(path: Path) -> tuple[int, int]:
    """
    The pending users and the users with a known server version in a
    state file (read-only: the process that writes it may be running).
    """
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        pending = db.execute("SELECT count(*) FROM pending").fetchone()[0]
        known = db.execute("SELECT count(*) FROM server_rosters").fetchone()[0]
    finally:
        db.close()
    return int(pending), int(known)


def countStored(prosody: ProsodyServer, webRoster: dict[str, Any]) -> int:
    """
    How many of L{BULK_USERS} Prosody stores exactly C{webRoster} for.
    """
    want = expected(webRoster)
    return sum(stored(prosody, user) == want for user in BULK_USERS)


async def storedCount(prosody: ProsodyServer, webRoster: dict[str, Any]) -> int:
    """
    L{countStored} in a thread: parsing 1,000 files must not hold up the
    web app stub, which serves the process's fetches from this reactor.
    """
    return await threads.deferToThread(countStored, prosody, webRoster)


async def bulkSetUp(prosody: ProsodyServer, webapp: UsersWebApp, tmp_path: Path,
                    before: str) -> tuple[Rosteradmin, Path]:
    """
    The 1,000 accounts with L{OLD_ROSTER} stored in the server, a first
    rosteradmin healthy, then the web app changed to L{NEW_ROSTER}.

    The web app then answers only L{ANSWERED} more roster requests and
    holds the rest until L{killMidWay} kills the process, whose fetches
    may wait that long (one that timed out would end its user's refresh,
    and the user would no longer be pending).

    @param before: C{"prefilled"}: the old rosters are written into
        Prosody's storage, the state file is empty; C{"refreshed"}: a first
        refresh through the process stored them, and the state knows them.
    @return: The process and its state file.
    """
    for user in BULK_USERS:
        prosody.addAccount(user, PASSWORD)  # Prosody refuses to store a roster of no account
        webapp.rosters[user] = OLD_ROSTER
        if before == "prefilled":
            preFill(prosody, user, OLD_ROSTER)
    state = tmp_path / "rosteradmin-state.sqlite"
    first = Rosteradmin(prosody, webapp, tmp_path, "first", state, settings="fetch_timeout = 600.0\n")
    await first.healthy()
    if before == "refreshed":
        started = time.monotonic()
        response = await first.refresh(BULK_USERS)
        body = json.loads(await response.text())
        assert (response.code, body["updated"], body["errors"]) == (200, 1000, 0), body
        print(f"\nfirst refresh: 1,000 users stored in {time.monotonic() - started:.2f} s")
    assert await storedCount(prosody, OLD_ROSTER) == 1000
    assert stateCounts(state) == (0, 1000 if before == "refreshed" else 0)
    for user in BULK_USERS:
        webapp.rosters[user] = NEW_ROSTER
    webapp.holdAfter(ANSWERED)
    return first, state


@dataclass
class Killed:
    """
    Where a bulk refresh stood once its process was killed and the server
    had stored what it had received.

    @ivar after: Seconds from the request to the kill.
    @ivar atKill: Users stored new when the kill was decided.
    @ivar held: Roster requests the web app held when the kill was decided.
    @ivar storedNew: Users stored new once the server settled.
    @ivar pending: Users pending in the state file.
    @ivar known: Users whose server version the state file knows.
    @ivar partial: Users stored neither old nor new (a write cut half-way).
    @ivar fetched: Web-app fetches the process made before the kill.
    """

    after: float
    atKill: int
    held: int
    storedNew: int
    pending: int
    known: int
    partial: int
    fetched: int


async def killMidWay(first: Rosteradmin, prosody: ProsodyServer, webapp: UsersWebApp, state: Path,
                     started: float) -> Killed:
    """
    C{kill -9} the process once at least L{KILL_AT} users are stored new.
    The web app answers only L{ANSWERED} roster requests (L{bulkSetUp})
    and holds the rest, so the kill is mid-way by construction, whatever
    the machine's speed: at most those users can be written.  Then let the
    held requests go and wait until the server's storage stops changing
    (it still stores the writes it had received).
    """
    fetchedBefore = sum(webapp.requests.values())
    atKill = 0
    while atKill < KILL_AT and time.monotonic() - started < 60:
        await RunningService.sleep(0.1)
        atKill = await storedCount(prosody, NEW_ROSTER)  # about 0.15 s of parsing
    held = len(webapp.held)
    first.kill()
    after = time.monotonic() - started
    assert atKill >= KILL_AT, f"only {atKill} users stored new within 60 s"
    settled, previous = time.monotonic(), -1
    storedNew = await storedCount(prosody, NEW_ROSTER)
    while storedNew != previous and time.monotonic() - settled < 15:
        await RunningService.sleep(0.5)
        previous, storedNew = storedNew, await storedCount(prosody, NEW_ROSTER)
    webapp.release()
    old = await storedCount(prosody, OLD_ROSTER)
    pending, known = stateCounts(state)
    killed = Killed(after, atKill, held, storedNew, pending, known, 1000 - storedNew - old,
                    sum(webapp.requests.values()) - fetchedBefore)
    print(f"\nkill -9 {after:.2f} s into the refresh, with {atKill} users stored new and {held} roster requests "
          f"held; once the server settled: {storedNew} stored new, {killed.partial} half-written, {old} old; "
          f"state: {pending} pending, {known} known; {killed.fetched} web-app fetches before the kill")
    assert 0 < storedNew < 1000, storedNew
    # Mid-way: only users the web app answered can have been written.
    assert atKill <= storedNew <= ANSWERED, storedNew
    return killed


async def converge(prosody: ProsodyServer, webapp: UsersWebApp, second: Rosteradmin, state: Path,
                   webRoster: dict[str, Any], users: list[str], timeout: float = 60.0) -> tuple[float, int]:
    """
    Wait until the server stores C{webRoster} for every one of C{users} and
    nothing is pending, at most C{timeout} seconds.

    @return: The seconds until the rosters were stored, and the web-app
        fetches meanwhile.
    """
    fetchedBefore = sum(webapp.requests.values())
    restarted = time.monotonic()
    want = expected(webRoster)

    def done() -> bool:
        return all(stored(prosody, user) == want for user in users)

    converged = False
    while not converged and time.monotonic() - restarted < timeout:
        assert second.process.poll() is None, second.output()[-3000:]
        await RunningService.sleep(0.25)
        converged = await threads.deferToThread(done)
    convergedAfter = time.monotonic() - restarted
    while stateCounts(state)[0] and time.monotonic() - restarted < timeout:
        await RunningService.sleep(0.1)
    pending, known = stateCounts(state)
    fetched = sum(webapp.requests.values()) - fetchedBefore
    wrong = {user: stored(prosody, user) for user in users if stored(prosody, user) != want}
    print(f"restarted with the same --state and no request: {len(users) - len(wrong)} of {len(users)} stored as "
          f"the web app serves {'' if converged else 'NOT '}within {convergedAfter:.2f} s; {fetched} web-app "
          f"fetches; state: {pending} pending, {known} known")
    assert wrong == {}, f"{len(wrong)} users stored otherwise, e.g. {list(wrong.items())[:2]}"
    assert (pending, known) == (0, 1000)
    return convergedAfter, fetched


@pytest.mark.parametrize("before", ["prefilled", "refreshed"])
@pytest_twisted.ensureDeferred
async def test_killDuringBulkRefreshResumes(prosody: ProsodyServer, webapp: UsersWebApp, tmp_path: Path,
                                            before: str) -> None:
    """
    A refresh of 1,000 users whose web-app rosters differ from what the
    server stores (pre-filled into Prosody's storage with an empty state,
    or stored by a first refresh the state recorded) is cut by
    C{kill -9} when some but not all are stored; a new process on the same
    C{--state} file, with no request made to it, stores every user's
    web-app roster within a bounded time, fetching only the unfinished
    users, and leaves nothing pending.
    """
    first, state = await bulkSetUp(prosody, webapp, tmp_path, before)
    second: Rosteradmin | None = None
    try:
        started = time.monotonic()
        outcome: list[object] = []
        first.refresh(BULK_USERS).addBoth(outcome.append)
        killed = await killMidWay(first, prosody, webapp, state, started)
        await RunningService.sleep(0.2)
        assert len(outcome) == 1 and isinstance(outcome[0], Failure), f"the refresh was answered: {outcome}"
        print(f"the refresh request: {outcome[0].type.__name__}")
        assert killed.pending >= 1000 - killed.storedNew

        second = Rosteradmin(prosody, webapp, tmp_path, "second", state)
        seconds, fetched = await converge(prosody, webapp, second, state, NEW_ROSTER, BULK_USERS)
        assert seconds < 60
        assert fetched == killed.pending  # the unfinished users only
        output = second.stop()
        assert f"resuming {killed.pending} unfinished refreshes and writes" in output
        assert f"resumed refreshes: {killed.pending} updated, 0 errors" in output
    finally:
        first.ensureGone()
        if second is not None:
            second.ensureGone()


@pytest_twisted.ensureDeferred
async def test_killDuringBulkSyncResumes(prosody: ProsodyServer, webapp: UsersWebApp, tmp_path: Path) -> None:
    """
    The same 1,000 users synced with C{POST /roster_admin/sync} (answered
    202 at once, the sync running in the background) and the process
    killed mid-way: the next process on the same state file stores every
    user's web-app roster, with no request.
    """
    first, state = await bulkSetUp(prosody, webapp, tmp_path, "refreshed")
    second: Rosteradmin | None = None
    try:
        started = time.monotonic()
        response = await treq.post(first.baseURL + "/roster_admin/sync", json.dumps(BULK_USERS).encode(),
                                   pool=HTTPConnectionPool(reactor, persistent=False))
        body = json.loads(await response.text())
        assert (response.code, body["status"]) == (202, "started"), body
        await killMidWay(first, prosody, webapp, state, started)
        second = Rosteradmin(prosody, webapp, tmp_path, "second", state)
        await converge(prosody, webapp, second, state, NEW_ROSTER, BULK_USERS, timeout=20)
        second.stop()
    finally:
        first.ensureGone()
        if second is not None:
            second.ensureGone()


@pytest_twisted.ensureDeferred
async def test_killMidWriteThenRevertConverges(prosody: ProsodyServer, webapp: UsersWebApp,
                                               tmp_path: Path) -> None:
    """
    A refresh to new rosters is killed mid-way, then the web app changes
    every roster back to the old one (which the state recorded the server
    as holding) before the next process starts: every user that was still
    pending ends up stored as the web app serves it.
    """
    first, state = await bulkSetUp(prosody, webapp, tmp_path, "refreshed")
    second: Rosteradmin | None = None
    try:
        started = time.monotonic()
        first.refresh(BULK_USERS).addErrback(lambda _: None)  # cut by the kill
        await killMidWay(first, prosody, webapp, state, started)
        db = sqlite3.connect(f"file:{state}?mode=ro", uri=True)
        pendingUsers = [row[0] for row in db.execute("SELECT username FROM pending ORDER BY username")]
        db.close()
        for user in BULK_USERS:
            webapp.rosters[user] = OLD_ROSTER
        second = Rosteradmin(prosody, webapp, tmp_path, "second", state)
        await converge(prosody, webapp, second, state, OLD_ROSTER, pendingUsers, timeout=20)
        second.stop()
    finally:
        first.ensureGone()
        if second is not None:
            second.ensureGone()


@pytest.mark.parametrize("prosody", ["rosteradmin_load_rosters = false"], indirect=True)
@pytest_twisted.ensureDeferred
async def test_firstLoginUnsynced(prosody: ProsodyServer, webapp: UsersWebApp, service: RunningService,
                                  clients: Any) -> None:
    """
    No full sync: bob logs in (roster get, then presence), so his server
    roster lists carol; carol, never synced (her server roster empty),
    sends her initial presence before her roster get.  Her roster get
    answers the web app's roster and stores it with subscription both; her
    next presence reaches bob, bob's next presence reaches her, and on her
    next login both see each other at once.

    What stock Prosody does not route is printed, not asserted: her initial
    presence was broadcast and probed from the empty roster, so bob does
    not see her and she does not see bob until one of them sends presence
    again, and a presence update sends no probes (RFC 6121 4.2.2, 4.4.2).
    Stock: contrib's mod_rosteradmin_roster does not hold her login for
    her roster here (C{rosteradmin_load_rosters = false};
    L{tests.integration.test_firstlogin} shows what it does).
    """
    webapp.rosters.update(TRIAD)
    bob = await clients("bob")
    assert held(await bob.rosterGet()) == expected(TRIAD["bob"])
    bob.sendPresence()
    await RunningService.waitUntil(lambda: "bob" in service.component.privileges.online, 5, "bob online")
    assert stored(prosody, "carol") == {}

    carol = await clients("carol")
    seen: dict[str, str] = {}
    bobHad = len(bob.presences)
    sentAt = time.monotonic()
    carol.sendPresence()  # initial presence from an empty server roster
    reply = await carol.rosterGet()
    gotRoster = time.monotonic() - sentAt
    assert held(reply) == expected(TRIAD["carol"])
    assert stored(prosody, "carol") == expected(TRIAD["carol"])
    seen["bob sees carol's initial presence"] = seconds(await receives(bob, "carol@example.org", bobHad, 3, sentAt))
    seen["carol sees bob after her roster get"] = seconds(await receives(carol, "bob@example.org", 0, 3, sentAt))

    bobHad, carolHad = len(bob.presences), len(carol.presences)
    againAt = time.monotonic()
    carol.sendPresence(show="chat")  # a presence update: a broadcast, no probes
    bobSawUpdate = await receives(bob, "carol@example.org", bobHad, 5, againAt)
    seen["bob sees carol's second presence"] = seconds(bobSawUpdate)
    seen["carol sees bob after her second presence"] = seconds(
        await receives(carol, "bob@example.org", carolHad, 3, againAt))

    carolHad = len(carol.presences)
    bobAt = time.monotonic()
    bob.sendPresence(show="away")
    carolSawBob = await receives(carol, "bob@example.org", carolHad, 5, bobAt)
    seen["carol sees bob's next presence"] = seconds(carolSawBob)

    await carol.disconnect()
    bobHad = len(bob.presences)
    carol = await clients("carol")
    loginAt = time.monotonic()
    carol.sendPresence()  # her next login: presence first again
    nextLogin = (await receives(bob, "carol@example.org", bobHad, 5, loginAt),
                 await receives(carol, "bob@example.org", 0, 5, loginAt))
    seen["next login: bob sees carol, carol sees bob"] = ", ".join(seconds(s) for s in nextLogin)
    assert held(await carol.rosterGet()) == expected(TRIAD["carol"])

    print(f"\ncarol's roster get answered {gotRoster:.3f} s after her initial presence; "
          f"web-app fetches of carol: {webapp.requests['carol']}")
    for what, when in seen.items():
        print(f"  {what}: {when}")
    assert bobSawUpdate is not None, "carol's presence after her roster get never reached bob"
    assert carolSawBob is not None, "bob's presence after carol's roster get never reached her"
    assert None not in nextLogin, nextLogin
