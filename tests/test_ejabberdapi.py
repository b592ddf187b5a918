"""
Tests for L{rosteradmin.ejabberdapi}: rosters read and written through
ejabberd's mod_http_api, against a stand-in for the API served by a real
twisted.web C{Site} (in memory with C{StubTreq}, or on loopback).
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pytest
import pytest_twisted
import treq
from treq.testing import StubTreq
from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface import implementer

from rosteradmin.backend import RosterBackend
from rosteradmin.cache import RosterCache
from rosteradmin.config import ConfigError, buildConfig
from rosteradmin_demo.devprosody import freePort
from rosteradmin.ejabberdapi import MAX_PUT_BACK, PROBE_AFTER_CONNECT, PROBE_INTERVAL, PROBE_USER, EjabberdAPISync
from rosteradmin.errors import NotConnected, SyncFailed
from rosteradmin.fetcher import RosterFetcher
from rosteradmin.interfaces import IServerObserver
from rosteradmin.roster import Contact, Roster, RosterDiff
from rosteradmin.slots import PER_USER_IN_FLIGHT
from rosteradmin.options import Options
from rosteradmin.tap import makeService
from tests.helpers import DOMAIN, ComponentOnWire, WebApp, makeConfig

API = "http://127.0.0.1:5281/api"


class FakeAPI(Resource):
    """
    ejabberd's C{/api} for the three roster commands, over rosters in
    memory, and the session list, answering as ejabberd 24.12 does
    (measured).

    @ivar rosters: Each user's items by contact JID, as get_roster lists them.
    @ivar sessions: The full JIDs connected_users_vhost lists.
    @ivar calls: Each call's command (with its version) and arguments.
    @ivar refuse: A status and error message to answer every call with.
    @ivar hold: Leave calls unanswered (in C{held}).
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.rosters: dict[str, dict[str, dict[str, Any]]] = {}
        self.sessions: list[str] = []
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.headers: list[dict[bytes, list[bytes]]] = []
        self.refuse: tuple[int, str] | None = None
        self.hold = False
        self.held: list[tuple[Request, str, dict[str, Any]]] = []
        self.open = 0
        self.mostOpen: Counter[str] = Counter()

    def render_POST(self, request: Request) -> bytes | int:
        command = "/".join(segment.decode() for segment in request.postpath[1:])  # after /api
        arguments = json.loads(request.content.read())
        self.calls.append((command, arguments))
        self.headers.append(dict(request.requestHeaders.getAllRawHeaders()))
        if self.refuse is not None:
            code, message = self.refuse
            request.setResponseCode(code)
            return json.dumps({"status": "error", "code": 32 if code == 403 else 40, "message": message}).encode()
        if self.hold:
            self.held.append((request, command, arguments))
            user = arguments.get("localuser", arguments.get("user"))
            self.open += 1
            self.mostOpen[user] = max(self.mostOpen[user], sum(
                1 for _, _, a in self.held if a.get("localuser", a.get("user")) == user))
            return NOT_DONE_YET
        return self.answer(command, arguments)

    def answer(self, command: str, arguments: dict[str, Any]) -> bytes:
        if command == "get_roster":
            return json.dumps(list(self.rosters.get(arguments["user"], {}).values())).encode()
        if command == "connected_users_vhost":
            return json.dumps(self.sessions).encode()
        jid = f"{arguments['user']}@{arguments['host']}"
        roster = self.rosters.setdefault(arguments["localuser"], {})
        if command == "add_rosteritem/v1":
            roster[jid] = {"jid": jid, "nick": arguments["nick"], "subscription": arguments["subs"],
                           "pending": "undefined", "groups": arguments["groups"]}
        elif command == "delete_rosteritem":
            roster.pop(jid, None)
        else:
            return b"1"
        return b"0"

    def release(self) -> None:
        held, self.held, self.hold = self.held, [], False
        for request, command, arguments in held:
            request.write(self.answer(command, arguments))
            request.finish()


@implementer(IServerObserver)
class Observer:
    """
    Counts what the backend would be told.
    """

    def __init__(self) -> None:
        self.restored = 0

    def warm(self, username: str) -> None:
        pass

    def catchUp(self, username: str) -> None:
        pass

    def writesRestored(self) -> None:
        self.restored += 1

    def userWritable(self, username: str) -> None:
        pass


def apiSync(api: Resource, **kwargs: Any) -> tuple[EjabberdAPISync, Clock]:
    clock = Clock()
    return EjabberdAPISync(API, DOMAIN, clock, http=StubTreq(api), timeout=5.0, **kwargs), clock


def failure(d: Deferred[Any]) -> Failure:
    results: list[Any] = []
    d.addBoth(results.append)
    assert results and isinstance(results[0], Failure), results
    return results[0]


def result(d: Deferred[Any]) -> Any:
    results: list[Any] = []
    d.addBoth(results.append)
    assert results and not isinstance(results[0], Failure), results
    return results[0]


BOB = Contact("bob@example.org", "Bob", ("Friends", "A;B"))
CAROL = Contact("carol@example.org", None, ())


def test_readStoredParsesGetRoster() -> None:
    """
    get_roster's contacts become a roster; contacts whose subscription is
    not both, or with a request pending, are marked to be rewritten.
    """
    api = FakeAPI()
    api.rosters["alice"] = {
        "bob@example.org": {"jid": "bob@example.org", "nick": "Bob", "subscription": "both", "pending": "none",
                            "groups": ["Friends", "A;B"]},
        "carol@example.org": {"jid": "carol@example.org", "nick": "", "subscription": "none",
                              "pending": "undefined", "groups": []},
        "dave@example.org": {"jid": "dave@example.org", "nick": "", "subscription": "both", "pending": "out",
                             "groups": []},
    }
    sync, _ = apiSync(api)
    stored = result(sync.readStored("alice", True))
    assert stored.roster == Roster([BOB, CAROL, Contact("dave@example.org", None, ())])
    assert stored.notBoth == {"carol@example.org", "dave@example.org"}
    assert api.calls == [("get_roster", {"user": "alice", "host": DOMAIN})]


def test_writeAddsWithBothAndDeletes() -> None:
    """
    A diff is one add_rosteritem (version 1: groups as a list, so a ";" in
    a group stays) with subscription both per changed contact and one
    delete_rosteritem per removed one; read back, ejabberd holds the roster.
    """
    api = FakeAPI()
    api.rosters["alice"] = {"dave@example.org": {"jid": "dave@example.org", "nick": "", "subscription": "both",
                                                 "pending": "none", "groups": []}}
    sync, _ = apiSync(api)
    result(sync.write("alice", RosterDiff((BOB, CAROL), ("dave@example.org",)), True))
    assert api.calls == [
        ("add_rosteritem/v1", {"localuser": "alice", "localhost": DOMAIN, "user": "bob", "host": DOMAIN,
                               "nick": "Bob", "groups": ["Friends", "A;B"], "subs": "both"}),
        ("add_rosteritem/v1", {"localuser": "alice", "localhost": DOMAIN, "user": "carol", "host": DOMAIN,
                               "nick": "", "groups": [], "subs": "both"}),
        ("delete_rosteritem", {"localuser": "alice", "localhost": DOMAIN, "user": "dave", "host": DOMAIN}),
    ]
    stored = result(sync.readStored("alice", True))
    assert stored.roster == Roster([BOB, CAROL]) and not stored.notBoth


def test_notDoneFailsTheWrite() -> None:
    """
    A command answering 1 (not done) fails the user's write, naming how
    many of its calls failed.
    """
    api = FakeAPI()
    sync, _ = apiSync(api)
    real = api.answer
    api.answer = lambda command, arguments: b"1" if arguments.get("user") == "carol" else real(command, arguments)  # type: ignore[method-assign]
    f = failure(sync.write("alice", RosterDiff((BOB, CAROL), ()), True))
    assert f.check(SyncFailed)
    assert "1 of 2 roster writes for 'alice' failed" in f.getErrorMessage()
    assert "answered 1: not done" in f.getErrorMessage()
    assert sync.canSync() and sync.syncRefusal is None


def test_oneUsersWritesAreBounded() -> None:
    """
    One user's writes hold at most a few slots: another user's urgent read
    goes to the API while a large write is under way.
    """
    api = FakeAPI()
    api.hold = True
    sync, _ = apiSync(api)
    contacts = tuple(Contact(f"user{i}@example.org", None, ()) for i in range(40))
    written = sync.write("alice", RosterDiff(contacts, ()), False)
    read = sync.readStored("bob", True)
    assert api.mostOpen["alice"] == PER_USER_IN_FLIGHT
    assert ("get_roster", {"user": "bob", "host": DOMAIN}) in [(c, a) for _, c, a in api.held]
    while api.held:
        api.release()
        sync.poster.http.flush()
        api.hold = True
    result(written)
    assert result(read).roster == Roster([])
    assert len(api.rosters["alice"]) == 40


def test_unansweredCallTimesOut() -> None:
    """
    A call the API does not answer fails after the timeout, and the slot
    is freed: nothing stays stuck.
    """
    api = FakeAPI()
    api.hold = True
    sync, clock = apiSync(api)
    d = sync.readStored("alice", True)
    clock.advance(5.0)
    f = failure(d)
    assert f.check(SyncFailed)
    assert f.getErrorMessage() == "ejabberd's HTTP API call get_roster for 'alice' had no answer within 5s"
    assert sync.stuck() is None and sync.canSync()


def test_refusalTurnsWritesOffUntilProbeAnswers() -> None:
    """
    A 403 from the API's permissions fails the call with a reason that
    says where to look, turns writes off (C{syncRefusal}, for /healthz and
    refreshes), and a probe every L{PROBE_INTERVAL} seconds turns them on
    again once the API answers, telling the backend.
    """
    observer = Observer()
    api = FakeAPI()
    api.refuse = (403, "AccessRules: Account does not have the right to perform the operation.")
    sync, clock = apiSync(api)
    sync.observe(observer)
    sync.startService()
    assert api.calls == [("get_roster", {"user": PROBE_USER, "host": DOMAIN})]
    assert not sync.canSync()
    assert sync.syncRefusal == (
        f"ejabberd's HTTP API at {API} refuses get_roster (HTTP 403: AccessRules: Account does not have the "
        "right to perform the operation.): see api_permissions and mod_admin_extra in "
        "contrib/ejabberd/rosteradmin.yml")
    f = failure(sync.write("alice", RosterDiff((BOB,), ()), True))
    assert f.getErrorMessage().startswith("1 of 1 roster writes for 'alice' failed: ejabberd's HTTP API at")
    clock.advance(PROBE_INTERVAL)
    assert not sync.canSync() and not observer.restored
    api.refuse = None
    clock.advance(PROBE_INTERVAL)
    assert sync.canSync() and sync.syncRefusal is None
    assert observer.restored == 1
    sync.stopService()
    assert not clock.getDelayedCalls()


def test_firstAnswerGrantsAccess() -> None:
    """
    The first probe that is answered tells the backend that writes work
    (it then resumes unfinished work); later answers do not again.
    """
    observer = Observer()
    sync, _ = apiSync(FakeAPI())
    sync.observe(observer)
    sync.startService()
    result(sync.readStored("alice", True))
    assert observer.restored == 1


def test_missingCommandIsARefusal() -> None:
    """
    ejabberd's "Endpoint not found" (no mod_admin_extra, or a wrong URL)
    refuses every write.
    """
    api = FakeAPI()
    api.refuse = (404, "Endpoint not found.")
    sync, _ = apiSync(api)
    assert failure(sync.readStored("alice", True)).check(SyncFailed)
    assert "refuses get_roster (HTTP 404: Endpoint not found.)" in (sync.syncRefusal or "")


def test_authorizationSent() -> None:
    """
    The configured credential goes in every call's Authorization header.
    """
    api = FakeAPI()
    sync, _ = apiSync(api, authorization="Basic YXBpQGV4YW1wbGUub3JnOnB3")
    result(sync.readStored("alice", True))
    assert api.headers[0][b"Authorization"] == [b"Basic YXBpQGV4YW1wbGUub3JnOnB3"]
    assert api.headers[0][b"Content-Type"] == [b"application/json"]


def test_pushIsLeftToEjabberd() -> None:
    """
    Nothing is pushed: ejabberd pushes each change as it stores it.
    """
    sync, _ = apiSync(FakeAPI())
    assert sync.push("alice", Roster([]), Roster([BOB]), frozenset()) == 0


def test_putBackRewritesTheRefusedItems() -> None:
    """
    A refused roster set naming bob (listed) and mallory (not listed) is
    put back by writing bob again as the roster has him, with both, and
    deleting mallory: ejabberd pushes both writes to the user's clients.
    """
    api = FakeAPI()
    api.rosters["alice"] = {"bob@example.org": {"jid": "bob@example.org", "nick": "Bobby", "subscription": "to",
                                                "pending": "undefined", "groups": []}}
    sync, _ = apiSync(api)
    sync.putBack("alice", "alice@example.org/phone", frozenset({"bob@example.org", "mallory@example.org"}),
                 Roster([BOB, CAROL]))
    sync.poster.http.flush()
    assert sorted(api.calls) == [
        ("add_rosteritem/v1", {"localuser": "alice", "localhost": DOMAIN, "user": "bob", "host": DOMAIN,
                               "nick": "Bob", "groups": ["Friends", "A;B"], "subs": "both"}),
        ("delete_rosteritem", {"localuser": "alice", "localhost": DOMAIN, "user": "mallory", "host": DOMAIN})]
    assert api.rosters["alice"]["bob@example.org"]["subscription"] == "both"


def test_putBackFloodIsCoalesced() -> None:
    """
    While one pass of alice's put-backs is written, 100 more refused sets
    (bob renamed again and again, 2,000 made-up contacts) merge into one
    next pass of at most MAX_PUT_BACK contacts, written with the latest
    roster once the first is answered; then nothing is left.
    """
    api = FakeAPI()
    sync, _ = apiSync(api)
    api.hold = True
    sync.putBack("alice", "alice@example.org/a", frozenset({"bob@example.org"}), Roster([BOB]))
    sync.poster.http.flush()
    assert len(api.held) == 1
    for n in range(100):
        made = frozenset(f"m{n}x{k}@example.org" for k in range(20))
        sync.putBack("alice", "alice@example.org/a", made | {"bob@example.org"}, Roster([BOB, CAROL]))
    sync.poster.http.flush()
    assert len(api.held) == 1
    api.hold = True
    api.release()
    api.hold = True
    sync.poster.http.flush()
    while api.held:
        api.release()
        api.hold = True
        sync.poster.http.flush()
    written = api.calls[1:]
    assert len(written) == MAX_PUT_BACK
    assert ("add_rosteritem/v1", {"localuser": "alice", "localhost": DOMAIN, "user": "bob", "host": DOMAIN,
                                  "nick": "Bob", "groups": ["Friends", "A;B"], "subs": "both"}) in written
    assert not sync._putBacks._next and not sync._putBacks._writing


def test_askLeavesWritesOn() -> None:
    """
    A command refused outside the roster writes (a session list the API's
    permissions leave out) fails with the refusal, and writes stay on.
    """
    api = FakeAPI()
    sync, _ = apiSync(api)
    result(sync.readStored("alice", True))
    api.refuse = (403, "You are not authorized to call this command.")
    error = failure(sync.poster.ask("connected_users_vhost", {"host": DOMAIN}))
    assert error.check(SyncFailed)
    assert "connected_users_vhost failed: HTTP 403: You are not authorized" in error.getErrorMessage()
    assert sync.canSync() and sync.syncRefusal is None


def test_loginWritesBeforeAnswering() -> None:
    """
    Through the backend, a login's roster is stored in ejabberd (with
    both) before the client's roster is returned.
    """
    api = FakeAPI()
    sync, clock = apiSync(api)
    webApp = WebApp({"alice": {"bob@example.org": {"name": "Bob", "groups": ["Friends", "A;B"]}}})
    fetcher = RosterFetcher("http://webapp.invalid/rosters/%s", DOMAIN, clock, http=StubTreq(webApp))
    backend = RosterBackend(RosterCache(), fetcher, sync=sync)
    api.hold = True
    d = backend.getRoster("alice")
    while api.held:
        assert not d.called
        api.release()
        sync.poster.http.flush()
        api.hold = True
    assert result(d) == Roster([BOB])
    assert api.rosters["alice"]["bob@example.org"]["subscription"] == "both"


@pytest_twisted.ensureDeferred
async def test_unreachableAPIKeepsWritesWaiting() -> None:
    """
    Over real TCP, an API nobody listens on refuses the connection: writes
    are off, and say the API cannot be reached; it refuses nothing (as a
    dropped stream does not), so the read fails with L{NotConnected}.
    """
    from twisted.internet import reactor

    url = f"http://127.0.0.1:{freePort()}/api"
    sync = EjabberdAPISync(url, DOMAIN, reactor, http=treq, timeout=5.0)
    with pytest.raises(NotConnected, match="cannot be reached"):
        await sync.readStored("alice", True)
    assert not sync.canSync() and sync.syncRefusal is None
    assert (sync.unreachable or "").startswith(f"ejabberd's HTTP API at {url} cannot be reached")


class Restarting:
    """
    A treq-like client of L{FakeAPI} whose connections are refused while
    C{down}, as ejabberd's listener refuses them while it restarts.
    """

    def __init__(self, api: FakeAPI) -> None:
        self.api = api
        self.stub = StubTreq(api)
        self.down = False

    def post(self, url: str, **kwargs: Any) -> Deferred[Any]:
        if self.down:
            return fail(ConnectionRefusedError("Connection refused"))
        return self.stub.post(url, **kwargs)


def restartingSync(api: FakeAPI) -> tuple[EjabberdAPISync, Clock, Restarting, Observer]:
    """
    A started sync whose API is down (its start-up probe not answered).
    """
    http = Restarting(api)
    http.down = True
    clock = Clock()
    sync = EjabberdAPISync(API, DOMAIN, clock, http=http, timeout=5.0)
    observer = Observer()
    sync.observe(observer)
    sync.startService()
    assert not sync.canSync() and sync.syncRefusal is None and sync.unreachable is not None
    return sync, clock, http, observer


def test_writesWhileUnreachableWait() -> None:
    """
    A write while the API cannot be reached fails with L{NotConnected}:
    nothing was refused, the write waits for the API.
    """
    sync, clock, _, _ = restartingSync(FakeAPI())
    f = failure(sync.write("alice", RosterDiff((BOB, CAROL), ()), True))
    assert f.check(NotConnected) and not f.check(SyncFailed)
    assert f.getErrorMessage().startswith(f"2 of 2 roster writes for 'alice' wait: ejabberd's HTTP API at {API} "
                                          "cannot be reached")
    sync.stopService()
    assert not clock.getDelayedCalls()


def test_streamConnectedProbesAtOnce() -> None:
    """
    When the component's stream comes up (ejabberd restarted), an API that
    could not be reached is probed at once, not at the next probe: once it
    answers, writes are on and the backend is told; the scheduled probe
    is dropped.
    """
    api = FakeAPI()
    sync, clock, http, observer = restartingSync(api)
    assert [call.getTime() for call in clock.getDelayedCalls()] == [PROBE_INTERVAL]
    sync.availability.streamConnected()  # still down: probed again a moment later
    assert not sync.canSync() and len(api.calls) == 0
    assert [call.getTime() for call in clock.getDelayedCalls()] == [PROBE_AFTER_CONNECT]
    http.down = False
    sync.availability.streamConnected()
    assert api.calls == [("get_roster", {"user": PROBE_USER, "host": DOMAIN})]
    assert sync.canSync() and sync.unreachable is None and observer.restored == 1
    assert not clock.getDelayedCalls()
    sync.availability.streamConnected()  # answering: nothing to probe
    assert len(api.calls) == 1
    sync.stopService()


def test_httpListenerLaterThanTheStream() -> None:
    """
    ejabberd took the component's handshake before its HTTP listener came
    up: the API is probed again after 1, 2, 4, 8 and 16 seconds, then every
    L{PROBE_INTERVAL}, and answers the first probe after it is up; the
    next outage, with the stream up throughout, is probed every
    L{PROBE_INTERVAL} again.
    """
    api = FakeAPI()
    sync, clock, http, observer = restartingSync(api)
    sync.availability.streamConnected()
    probed = []
    for _ in range(7):
        delay = min(call.getTime() for call in clock.getDelayedCalls()) - clock.seconds()
        probed.append(delay)
        clock.advance(delay)
    assert probed == [1.0, 2.0, 4.0, 8.0, 16.0, PROBE_INTERVAL, PROBE_INTERVAL]
    assert not sync.canSync() and observer.restored == 0
    http.down = False
    clock.advance(PROBE_INTERVAL)
    assert sync.canSync() and observer.restored == 1 and not clock.getDelayedCalls()
    http.down = True
    failure(sync.write("alice", RosterDiff((BOB,), ()), True))
    assert not sync.canSync()
    assert [call.getTime() - clock.seconds() for call in clock.getDelayedCalls()] == [PROBE_INTERVAL]
    sync.stopService()


def test_restartForgetsTheShortProbes() -> None:
    """
    Stopped in the middle of the short probes after a handshake and
    started again with the API still down, the sync probes every
    L{PROBE_INTERVAL}: the short ones belong to a handshake.
    """
    api = FakeAPI()
    sync, clock, _, _ = restartingSync(api)
    sync.availability.streamConnected()
    sync.stopService()
    sync.startService()
    assert not sync.canSync()
    assert [call.getTime() - clock.seconds() for call in clock.getDelayedCalls()] == [PROBE_INTERVAL]
    sync.stopService()


def test_probeKeepsItsIntervalWithoutAStream() -> None:
    """
    While the component's stream does not drop (the API alone went down),
    the API is probed every L{PROBE_INTERVAL} seconds.
    """
    api = FakeAPI()
    sync, clock, http, observer = restartingSync(api)
    http.down = False
    clock.advance(PROBE_INTERVAL - 1)
    assert not sync.canSync() and not api.calls
    clock.advance(1)
    assert sync.canSync() and observer.restored == 1
    sync.stopService()


def test_refreshWhileUnreachableIsPendingThenWritten() -> None:
    """
    Through the backend, a refresh while ejabberd is down updates the
    user (served and cached): the write is pending, not an error, and the
    user unsynced; once the stream is back, the API answers the probe and
    the roster is written.
    """
    api = FakeAPI()
    sync, clock, http, _ = restartingSync(api)
    webApp = WebApp({"alice": {"bob@example.org": {"name": "Bob", "groups": ["Friends", "A;B"]}}})
    fetcher = RosterFetcher("http://webapp.invalid/rosters/%s", DOMAIN, clock, http=StubTreq(webApp))
    backend = RosterBackend(RosterCache(), fetcher, sync=sync)
    sync.observe(backend)
    summary = result(backend.refresh(["alice"]))
    assert (summary.updated, summary.failures) == (1, {})
    assert backend.unsynced == {"alice"} and "alice" not in api.rosters
    http.down = False
    sync.availability.streamConnected()
    assert not backend.unsynced
    assert api.rosters["alice"]["bob@example.org"]["subscription"] == "both"
    sync.stopService()


def test_handshakeProbesTheAPI() -> None:
    """
    The composition root has each handshake of the component tell the
    ejabberd API sync that the stream is up (L{rosteradmin.ejabberdapi.APIAvailability.streamConnected}).
    """
    wire = ComponentOnWire(config=makeConfig(roster_sync="ejabberd-api", ejabberd_api_url=API))
    sync = wire.backend.sync
    assert isinstance(sync, EjabberdAPISync)
    api = FakeAPI()
    http = Restarting(api)
    http.down = True
    sync.poster.http = http
    sync.startService()
    assert not sync.canSync()
    http.down = False
    wire.handshake()
    assert sync.canSync() and len(api.calls) == 1
    sync.stopService()


def test_configChoosesRosterSync() -> None:
    """
    C{roster-sync} is privilege by default; ejabberd-api needs an http(s)
    C{ejabberd-api-url}; anything else is refused, naming the option.
    """
    base = {"jid": "roster.example.org", "secret": "s", "domain": DOMAIN,
            "roster_url": "http://app/%s", "no_kick": True}
    assert buildConfig(base, environ={}).roster_sync == "privilege"
    config = buildConfig({**base, "roster_sync": "ejabberd-api", "ejabberd_api_url": API},
                         environ={"ROSTERADMIN_EJABBERD_API_AUTHORIZATION": "Basic x"})
    assert (config.roster_sync, config.ejabberd_api_url, config.ejabberd_api_authorization) == (
        "ejabberd-api", API, "Basic x")
    with pytest.raises(ConfigError, match="^--ejabberd-api-url: is required with --roster-sync ejabberd-api$"):
        buildConfig({**base, "roster_sync": "ejabberd-api"}, environ={})
    with pytest.raises(ConfigError, match="^--ejabberd-api-url: must be an http"):
        buildConfig({**base, "roster_sync": "ejabberd-api", "ejabberd_api_url": "127.0.0.1:5281"}, environ={})
    with pytest.raises(ConfigError, match="^--roster-sync: must be one of privilege, ejabberd-api"):
        buildConfig({**base, "roster_sync": "http"}, environ={})


def test_compositionRootChoosesAPISync() -> None:
    """
    With C{roster-sync = "ejabberd-api"}, the composition root gives the
    backend an L{EjabberdAPISync} for the configured URL, which tells that
    backend when the API takes writes; by default the backend writes with
    XEP-0356.
    """
    wire = ComponentOnWire(config=makeConfig(roster_sync="ejabberd-api", ejabberd_api_url=API,
                                             ejabberd_api_authorization="Basic x"))
    sync = wire.backend.sync
    assert isinstance(sync, EjabberdAPISync)
    assert (sync.url, sync.headers["Authorization"], sync.observer) == (API, ["Basic x"], wire.backend)
    assert not isinstance(ComponentOnWire().backend.sync, EjabberdAPISync)


def test_serviceTreeRunsTheAPISync() -> None:
    """
    In the service twistd runs, the API sync is a named service started
    after the backend and stopped before it, so its probe can tell a
    running backend that writes work.
    """
    options = Options()
    options.parseOptions(["--jid", "roster.example.org", "--secret", "s", "--domain", DOMAIN,
                          "--roster-url", "http://app/%s", "--no-kick", "--http", "tcp:0:interface=127.0.0.1",
                          "--roster-sync", "ejabberd-api", "--ejabberd-api-url", API])
    top = makeService(options)
    names = [s.name for s in top]
    assert names.index("backend") + 1 == names.index("roster-sync")
    assert top.getServiceNamed("roster-sync") is top.getServiceNamed("backend").sync
    assert not top.running

