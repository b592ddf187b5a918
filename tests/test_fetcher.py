"""
Tests for the roster fetcher: URLs and headers, validation, coalescing,
the concurrency bound, deadlines, retries and the size cap.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from treq.testing import HasHeaders, RequestSequence, StringStubbingResource, StubTreq
from twisted.internet import error
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs
from twisted.python.failure import Failure
from twisted.web.client import ResponseFailed, ResponseNeverReceived
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from rosteradmin.backend import RosterBackend
from rosteradmin.cache import RosterCache
from rosteradmin.errors import FetchFailed, UserUnknown
from rosteradmin.fetcher import RETRY_DELAY, RosterFetcher
from rosteradmin import slicing
from rosteradmin.roster import Contact, Roster, parseRoster
from tests.helpers import WebApp, offlineSync

URL = "http://webapp.invalid/rosters/%s"
DOMAIN = "example.org"
BOB = {"bob@example.org": {"name": "Bob", "groups": ["Friends"]}}


def result(d: Deferred[Any]) -> Any:
    """
    What a fired Deferred holds (a Failure included), consuming it.
    """
    outcome: list[Any] = []
    d.addBoth(outcome.append)
    assert outcome, "not fired"
    return outcome[0]


def fetchFailure(d: Deferred[Any]) -> FetchFailed:
    """
    The FetchFailed a fired Deferred failed with.
    """
    failure = result(d)
    assert isinstance(failure, Failure), failure
    assert failure.check(FetchFailed), failure
    assert isinstance(failure.value, FetchFailed)
    return failure.value


def notFired(d: Deferred[Any]) -> bool:
    """
    Whether a Deferred has not fired yet, leaving its result in place.
    """
    return not d.called


def fetcher(webApp: Resource, **kw: Any) -> tuple[RosterFetcher, StubTreq, Clock]:
    """
    A fetcher of L{URL} against C{webApp} in memory, with its own clock.
    """
    clock = Clock()
    http = StubTreq(webApp)
    return RosterFetcher(URL, DOMAIN, clock, http=http, **kw), http, clock


class HeldWebApp(Resource):
    """
    A web app that holds every request open until the test answers it, and
    tracks how many are open at once and which the client dropped.

    @ivar pending: The requests not answered yet, with their usernames.
    @ivar mostOpen: The most requests open at once.
    @ivar dropped: Usernames whose request the client went away from.
    """

    isLeaf = True

    def __init__(self, rosters: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.rosters = rosters or {}
        self.pending: list[tuple[Request, str]] = []
        self.seen: list[str] = []
        self.open = 0
        self.mostOpen = 0
        self.dropped: list[str] = []

    def render_GET(self, request: Request) -> int:
        assert request.postpath is not None
        username = request.postpath[-1].decode("utf-8")
        self.seen.append(username)
        self.open += 1
        self.mostOpen = max(self.mostOpen, self.open)

        def finished(outcome: object) -> None:
            self.open -= 1
            if isinstance(outcome, Failure):
                self.dropped.append(username)

        request.notifyFinish().addBoth(finished)
        self.pending.append((request, username))
        return NOT_DONE_YET

    def answer(self, username: str | None = None, status: int = 200, body: bytes | None = None) -> None:
        """
        Answer the oldest pending request (of C{username}, if given).
        """
        index = 0 if username is None else [u for _, u in self.pending].index(username)
        request, name = self.pending.pop(index)
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json")
        request.write(body if body is not None else json.dumps(self.rosters.get(name, {})).encode("utf-8"))
        request.finish()


# URLs and headers


@pytest.mark.parametrize("username, path", [
    ("alice", "alice"),
    ("a b/c", "a%20b%2Fc"),
    ("a b/c?d", "a%20b%2Fc%3Fd"),
    ("a#b&c=d;e", "a%23b%26c%3Dd%3Be"),
    ("../admin", "..%2Fadmin"),
    ("%s", "%25s"),
    ("zoë", "zo%C3%AB"),
    ("a+b", "a%2Bb"),
])
def test_urlEncodesUsername(username: str, path: str) -> None:
    """
    The username is URL-encoded into the template, so no character of it
    can change the URL's path, query or fragment.
    """
    f, _, _ = fetcher(WebApp())
    assert f.urlFor(username) == f"http://webapp.invalid/rosters/{path}"


@pytest.mark.parametrize("username", ["a b/c", "../admin", "x?y=1#z", "zoë", "%s"])
def test_webAppSeesOneSegment(username: str) -> None:
    """
    The web app receives the username as exactly one path segment, decoded
    back to what it was.
    """
    webApp = HeldWebApp()
    f, http, _ = fetcher(webApp)
    f.fetch(username)
    http.flush()
    [(request, _)] = webApp.pending
    assert request.args == {}
    assert request.postpath == [b"rosters", username.encode("utf-8")]
    assert request.path == f"/rosters/{f.urlFor(username).rsplit('/', 1)[1]}".encode("ascii")


def test_templateWithQuery() -> None:
    """
    The username may go into a query string of the template, still encoded.
    """
    f = RosterFetcher("https://app.example.org/api/roster?user=%s&v=1", DOMAIN, Clock(), http=None)
    assert f.urlFor("a&b=c") == "https://app.example.org/api/roster?user=a%26b%3Dc&v=1"


def test_requestAsScripted() -> None:
    """
    A fetch is one GET of the user's URL, with no body, asking for JSON
    and carrying the configured extra headers.
    """
    asyncFailures: list[str] = []
    sequence = RequestSequence([
        ((b"get", "http://webapp.invalid/rosters/alice", {},
          HasHeaders({"Accept": ["application/json"], "Authorization": ["Bearer app"], "X-Tenant": ["t1"]}), b""),
         (200, {"Content-Type": "application/json"}, json.dumps(BOB).encode())),
    ], asyncFailures.append)
    http = StubTreq(StringStubbingResource(sequence))
    f = RosterFetcher(URL, DOMAIN, Clock(), http=http, headers={"Authorization": "Bearer app", "X-Tenant": "t1"})

    def syncFailure(message: str) -> None:
        raise AssertionError(message)

    with sequence.consume(syncFailure):
        d = f.fetch("alice")
        http.flush()
    assert asyncFailures == []
    assert result(d) == Roster([Contact("bob@example.org", "Bob", ("Friends",))])


def test_defaultHeaders() -> None:
    """
    Without extra headers a fetch sends Accept: application/json and no
    Authorization.
    """
    webApp = HeldWebApp()
    f, http, _ = fetcher(webApp)
    f.fetch("alice")
    http.flush()
    [(request, _)] = webApp.pending
    assert request.method == b"GET"
    assert request.requestHeaders.getRawHeaders(b"accept") == [b"application/json"]
    assert not request.requestHeaders.hasHeader(b"authorization")


def test_extraHeadersCopied() -> None:
    """
    The fetcher keeps its own copy of the extra headers.
    """
    headers = {"Authorization": "Bearer app"}
    f = RosterFetcher(URL, DOMAIN, Clock(), http=None, headers=headers)
    headers["Authorization"] = "changed"
    assert f.headers["Authorization"] == ["Bearer app"]


# Replies


def test_fetchParsesRoster() -> None:
    """
    A 200 reply with a valid roster fires with the parsed roster.
    """
    f, http, _ = fetcher(WebApp({"alice": BOB}))
    d = f.fetch("alice")
    http.flush()
    assert result(d) == Roster([Contact("bob@example.org", "Bob", ("Friends",))])
    assert (f.inFlight, f.failures) == (0, 0)


def test_ownerIsUserAtDomain() -> None:
    """
    A reply is checked against its own user's JID: a contact that is the
    user is refused, the same contact in another user's roster is fine.
    """
    reply: dict[str, Any] = {"alice@example.org": {}}
    f, http, _ = fetcher(WebApp({"alice": reply, "bob": reply}))
    alice, bob = f.fetch("alice"), f.fetch("bob")
    http.flush()
    assert "roster's owner" in fetchFailure(alice).reason
    assert [c.jid for c in result(bob)] == ["alice@example.org"]


@pytest.mark.parametrize("status, body, reason", [
    (500, b"boom", "web app answered HTTP 500: 'boom'"),
    (404, b"no such user", "the web app does not know this user (HTTP 404): 'no such user'"),
    (410, b"gone", "web app answered HTTP 410: 'gone'"),
    (503, b"", "web app answered HTTP 503: ''"),
    (204, b"", "HTTP 204"),
    (201, b"{}", "HTTP 201"),
    (302, b"", "HTTP 302"),
    (200, b"[1]", "body must be a JSON object, got list (body starts '[1]')"),
    (200, b"{", "body is not JSON"),
    (200, b"<html>maintenance</html>", "body is not JSON"),
    (200, b"", "body is not JSON"),
    (200, b'{"alice@example.org": {}}', "roster's owner"),
    (200, b'{"bob@example.org": {"name": 3}}', "name must be a string"),
])
def test_badRepliesFail(status: int, body: bytes, reason: str) -> None:
    """
    A bad reply is a FetchFailed naming the reason, and is counted.
    """
    webApp = WebApp()
    webApp.failures["alice"] = (status, body)
    f, http, _ = fetcher(webApp)
    d = f.fetch("alice")
    http.flush()
    failure = fetchFailure(d)
    assert reason in failure.reason
    assert failure.username == "alice"
    assert f.failures == 1 and f.inFlight == 0


def test_notFoundIsUserUnknown() -> None:
    """
    A 404 fails with UserUnknown, a FetchFailed the backend can tell from
    an outage; any other bad status is a plain FetchFailed.
    """
    webApp = WebApp()
    webApp.failures["alice"] = (404, b'{"error": "no such user"}')
    webApp.failures["bob"] = (500, b"boom")
    f, http, _ = fetcher(webApp)
    alice, bob = f.fetch("alice"), f.fetch("bob")
    http.flush()
    unknown = fetchFailure(alice)
    assert isinstance(unknown, UserUnknown) and unknown.username == "alice"
    assert unknown.reason == """the web app does not know this user (HTTP 404): '{"error": "no such user"}'"""
    assert str(unknown) == f"roster fetch for 'alice' failed: {unknown.reason}"
    assert type(fetchFailure(bob)) is FetchFailed


def test_redirectsNotFollowed() -> None:
    """
    A redirect is a failed fetch; the fetcher never follows it elsewhere.
    """
    class Redirecting(WebApp):
        def render_GET(self, request: Request) -> bytes:
            self.requests[request.path.decode()] += 1
            request.redirect(b"http://webapp.invalid/elsewhere/alice")
            return b""

    webApp = Redirecting()
    f, http, _ = fetcher(webApp)
    d = f.fetch("alice")
    http.flush()
    assert "HTTP 302" in fetchFailure(d).reason
    assert list(webApp.requests) == ["/rosters/alice"]


def test_reasonQuotesOnlyTheStartOfTheBody() -> None:
    """
    The reason shows the first 80 bytes of a bad body, not all of it.
    """
    webApp = WebApp()
    webApp.failures["alice"] = (500, b"A" * 80 + b"B" * 1000)
    f, http, _ = fetcher(webApp)
    d = f.fetch("alice")
    http.flush()
    reason = fetchFailure(d).reason
    assert "A" * 80 in reason and "B" not in reason


def test_failureNotRemembered() -> None:
    """
    After a failed fetch the next one asks the web app again.
    """
    webApp = WebApp({"alice": BOB})
    webApp.failures["alice"] = (200, b"not json")
    f, http, _ = fetcher(webApp)
    first = f.fetch("alice")
    http.flush()
    assert "not JSON" in fetchFailure(first).reason
    del webApp.failures["alice"]
    second = f.fetch("alice")
    http.flush()
    assert isinstance(result(second), Roster)
    assert webApp.requests["alice"] == 2


def test_invalidReplyKeepsCachedRoster() -> None:
    """
    A refresh whose reply is not JSON fails for that user and leaves the
    cached roster in place, still served.
    """
    webApp = WebApp()
    webApp.failures["alice"] = (200, b'{"bob@example.org": ')
    f, http, _ = fetcher(webApp)
    cache = RosterCache()
    old = Roster([Contact("carol@example.org", "Carol", ())])
    cache.put("alice", old)
    backend = RosterBackend(cache, f, offlineSync())
    d = backend.refresh(["alice"])
    http.flush()
    summary = result(d)
    assert (summary.updated, summary.errors) == (0, 1)
    assert "not JSON" in summary.failures["alice"]
    assert cache.peek("alice") is old
    assert result(backend.getRoster("alice")) is old
    assert webApp.requests["alice"] == 1


def test_invalidReplyCachesNothing() -> None:
    """
    An invalid first reply leaves nothing in the cache.
    """
    webApp = WebApp()
    webApp.failures["alice"] = (200, b"[]")
    f, http, _ = fetcher(webApp)
    cache = RosterCache()
    d = RosterBackend(cache, f, offlineSync()).getRoster("alice")
    http.flush()
    fetchFailure(d)
    assert "alice" not in cache and len(cache) == 0


def test_failureLogged() -> None:
    """
    A failed fetch logs one warning with the user, the status and the start
    of the body, and never the extra headers' secrets.
    """
    webApp = WebApp()
    webApp.failures["alice"] = (500, b"database down")
    f, http, _ = fetcher(webApp, headers={"Authorization": "Bearer s3cret"})
    with capturedLogs() as events:
        d = f.fetch("alice")
        http.flush()
    fetchFailure(d)
    [warning] = [e for e in events if e["log_level"] == LogLevel.warn]
    assert warning["user"] == "alice" and warning["outcome"] == "failed"
    assert "HTTP 500" in warning["reason"] and "database down" in warning["reason"]
    assert "s3cret" not in repr(events)


def test_successLogged() -> None:
    """
    A fetch logs one info event with the user and the number of contacts.
    """
    f, http, _ = fetcher(WebApp({"alice": BOB}))
    with capturedLogs() as events:
        d = f.fetch("alice")
        http.flush()
    result(d)
    [info] = [e for e in events if e.get("outcome") == "ok"]
    assert (info["log_level"], info["user"], info["count"]) == (LogLevel.info, "alice", 1)


def test_observeFetch() -> None:
    """
    Each fetch's outcome and duration is handed to the observer.
    """
    webApp = WebApp({"alice": BOB})
    webApp.failures["bob"] = (500, b"")
    f, http, _ = fetcher(webApp)
    seen: list[tuple[str, float]] = []
    f.observeFetch = lambda outcome, seconds: seen.append((outcome, seconds))
    f.fetch("alice").addErrback(lambda _: None)
    f.fetch("bob").addErrback(lambda _: None)
    http.flush()
    assert sorted(outcome for outcome, _ in seen) == ["failed", "ok"]
    assert all(seconds >= 0 for _, seconds in seen)


# Coalescing


def test_concurrentFetchesShareOne() -> None:
    """
    Concurrent loads of one user make one request and all get the roster:
    the backend fetches under the user's lock, and the loads waiting behind
    the first find its roster cached.
    """
    webApp = HeldWebApp({"alice": BOB})
    f, http, _ = fetcher(webApp)
    backend = RosterBackend(RosterCache(), f, offlineSync())
    first, second, third = backend.getRoster("alice"), backend.getRoster("alice"), backend.getRoster("alice")
    http.flush()
    assert webApp.seen == ["alice"]
    assert notFired(first) and notFired(second)
    webApp.answer()
    http.flush()
    roster = result(first)
    assert isinstance(roster, Roster) and len(roster) == 1
    assert result(second) is roster and result(third) is roster
    assert webApp.seen == ["alice"]


def test_concurrentLoadsShareFailure() -> None:
    """
    Concurrent loads of one user's roster for its clients share a failure
    too, counted once: a second device does not wait for a second fetch
    deadline behind the first.
    """
    webApp = HeldWebApp({"alice": BOB})
    f, http, _ = fetcher(webApp)
    backend = RosterBackend(RosterCache(), f, offlineSync())
    first, second = backend.getRoster("alice"), backend.getRoster("alice")
    http.flush()
    webApp.answer(status=500, body=b"boom")
    http.flush()
    assert "HTTP 500" in fetchFailure(first).reason
    assert "HTTP 500" in fetchFailure(second).reason
    assert webApp.seen == ["alice"] and f.failures == 1


def test_laterFetchAsksAgain() -> None:
    """
    Only fetches under way are shared: once one is done, the next fetch of
    the same user asks the web app again.
    """
    webApp = HeldWebApp({"alice": BOB})
    f, http, _ = fetcher(webApp)
    first = f.fetch("alice")
    http.flush()
    webApp.answer()
    http.flush()
    result(first)
    second = f.fetch("alice")
    http.flush()
    assert webApp.seen == ["alice", "alice"]
    webApp.answer()
    http.flush()
    assert isinstance(result(second), Roster)


def test_usersNotShared() -> None:
    """
    Fetches of different users are separate requests with their own rosters.
    """
    webApp = HeldWebApp({"alice": BOB, "dave": {}})
    f, http, _ = fetcher(webApp)
    alice, dave = f.fetch("alice"), f.fetch("dave")
    http.flush()
    assert sorted(webApp.seen) == ["alice", "dave"]
    webApp.answer("dave")
    webApp.answer("alice")
    http.flush()
    assert len(result(alice)) == 1 and len(result(dave)) == 0


def test_cancelledWaiterLeavesOthers() -> None:
    """
    Cancelling one client's load does not stop the fetch or the other
    clients' result.
    """
    webApp = HeldWebApp({"alice": BOB})
    f, http, _ = fetcher(webApp)
    backend = RosterBackend(RosterCache(), f, offlineSync())
    first, second = backend.getRoster("alice"), backend.getRoster("alice")
    http.flush()
    first.cancel()
    assert result(first).check(Exception)
    webApp.answer()
    http.flush()
    assert isinstance(result(second), Roster)
    assert webApp.dropped == [] and f.inFlight == 0


# The concurrency bound


def test_concurrencyIsBounded() -> None:
    """
    With more users than the bound, no more than the bound are fetched at
    once; the rest wait their turn, in order, and all get their roster.
    """
    webApp = HeldWebApp()
    f, http, _ = fetcher(webApp, concurrency=3)
    users = [f"user{i}" for i in range(10)]
    results = [f.fetch(u) for u in users]
    http.flush()
    assert webApp.seen == users[:3]
    assert webApp.open == 3 and f.inFlight == 3
    while webApp.pending:
        webApp.answer()
        http.flush()
        assert webApp.open <= 3 and f.inFlight <= 3
    assert webApp.mostOpen == 3
    assert webApp.seen == users
    assert all(isinstance(result(d), Roster) for d in results)
    assert f.inFlight == 0


def test_slotFreedAsSoonAsOneFinishes() -> None:
    """
    When one fetch finishes, exactly one waiting fetch starts.
    """
    webApp = HeldWebApp()
    f, http, _ = fetcher(webApp, concurrency=2)
    for user in ["a", "b", "c", "d"]:
        f.fetch(user)
    http.flush()
    assert webApp.seen == ["a", "b"]
    webApp.answer("b")
    http.flush()
    assert webApp.seen == ["a", "b", "c"] and webApp.open == 2


def test_failuresFreeTheirSlot() -> None:
    """
    A failed fetch gives its slot back like a successful one.
    """
    webApp = HeldWebApp()
    f, http, _ = fetcher(webApp, concurrency=1)
    first, second = f.fetch("a"), f.fetch("b")
    http.flush()
    webApp.answer(status=500, body=b"")
    http.flush()
    fetchFailure(first)
    assert webApp.seen == ["a", "b"]
    webApp.answer()
    http.flush()
    assert isinstance(result(second), Roster)


def test_sharedFetchesTakeOneSlot() -> None:
    """
    Many clients' loads of one user take a single slot of the bound.
    """
    webApp = HeldWebApp()
    f, http, _ = fetcher(webApp, concurrency=2)
    backend = RosterBackend(RosterCache(), f, offlineSync())
    for _ in range(5):
        backend.getRoster("alice")
    backend.getRoster("bob")
    http.flush()
    assert sorted(webApp.seen) == ["alice", "bob"] and f.inFlight == 2


def test_clientFetchesGoBeforeBackgroundOnes() -> None:
    """
    Waiting fetches a client waits on start before waiting background ones
    (refreshes), which keep their order.
    """
    webApp = HeldWebApp()
    f, http, _ = fetcher(webApp, concurrency=1)
    background = [f.fetch(u, urgent=False) for u in ["r1", "r2", "r3"]]
    login = f.fetch("alice")
    http.flush()
    for _ in range(4):
        webApp.answer()
        http.flush()
    assert webApp.seen == ["r1", "alice", "r2", "r3"]
    assert all(isinstance(result(d), Roster) for d in [*background, login])
    assert f.inFlight == 0 and webApp.mostOpen == 1


def test_clientJoiningABackgroundFetchHurriesIt() -> None:
    """
    A client asking for a user whose background fetch (a refresh's) waits
    for a slot gets that fetch's roster, and the fetch then goes before
    the other background ones.
    """
    webApp = HeldWebApp({"r3": BOB})
    f, http, _ = fetcher(webApp, concurrency=1)
    backend = RosterBackend(RosterCache(), f, offlineSync())
    refresh = backend.refresh(["r1", "r2", "r3"])
    login = backend.getRoster("r3")
    http.flush()
    for _ in range(3):
        webApp.answer()
        http.flush()
    assert webApp.seen == ["r1", "r3", "r2"]
    roster = result(login)
    assert result(refresh).updated == 3
    assert isinstance(roster, Roster) and len(roster) == 1 and roster is backend.cache.peek("r3")


def test_loginDuringBulkRefreshIsNotQueuedBehindIt() -> None:
    """
    A user logs in while a bulk refresh holds that user's lock, waiting for
    a fetch slot: the refresh's fetch is hurried, and the login gets the
    refreshed roster after one fetch, not after the whole refresh.
    """
    webApp = HeldWebApp({"u3": BOB})
    f, http, _ = fetcher(webApp, concurrency=1)
    backend = RosterBackend(RosterCache(), f, offlineSync())
    refresh = backend.refresh([f"u{i}" for i in range(6)])
    login = backend.getRoster("u3")
    http.flush()
    assert webApp.seen == ["u0"]
    webApp.answer()
    http.flush()
    assert webApp.seen == ["u0", "u3"]
    webApp.answer()
    http.flush()
    assert len(result(login)) == 1
    assert webApp.seen == ["u0", "u3", "u1"]
    while webApp.pending:
        webApp.answer()
        http.flush()
    assert result(refresh).updated == 6 and webApp.seen.count("u3") == 1


# The deadline


def test_deadline() -> None:
    """
    A fetch with no reply within the timeout fails naming the timeout, and
    its request is cancelled: the web app sees the client go away.
    """
    webApp = HeldWebApp()
    f, http, clock = fetcher(webApp, timeout=5)
    d = f.fetch("alice")
    http.flush()
    clock.advance(4.9)
    assert notFired(d)
    clock.advance(0.1)
    assert fetchFailure(d).reason == "no complete reply within 5s"
    http.flush()
    assert webApp.dropped == ["alice"] and webApp.open == 0
    assert (f.inFlight, f.failures) == (0, 1)
    assert clock.getDelayedCalls() == []


def test_deadlineCoversTheBody() -> None:
    """
    A reply whose body stalls after the headers also times out.
    """
    class Stalling(HeldWebApp):
        def render_GET(self, request: Request) -> int:
            outcome = super().render_GET(request)
            request.setHeader(b"content-type", b"application/json")
            request.write(b'{"bob@example.org": ')
            return outcome

    webApp = Stalling()
    f, http, clock = fetcher(webApp, timeout=2)
    d = f.fetch("alice")
    http.flush()
    assert notFired(d)
    clock.advance(2)
    assert "within 2s" in fetchFailure(d).reason
    http.flush()
    assert webApp.dropped == ["alice"]


def test_answerInTimeCancelsDeadline() -> None:
    """
    A reply within the timeout leaves no timer behind.
    """
    webApp = HeldWebApp()
    f, http, clock = fetcher(webApp, timeout=5)
    d = f.fetch("alice")
    http.flush()
    clock.advance(4)
    webApp.answer()
    http.flush()
    assert isinstance(result(d), Roster)
    assert clock.getDelayedCalls() == []
    clock.advance(10)
    assert f.failures == 0


def test_timeoutFreesTheSlot() -> None:
    """
    A hung web app cannot block the queue: a timed-out fetch frees its slot,
    and the next fetch then gets its own full timeout.
    """
    webApp = HeldWebApp()
    f, http, clock = fetcher(webApp, timeout=5, concurrency=1)
    alice, bob = f.fetch("alice"), f.fetch("bob")
    http.flush()
    assert webApp.seen == ["alice"]
    clock.advance(5)
    http.flush()
    fetchFailure(alice)
    assert webApp.seen == ["alice", "bob"]
    clock.advance(4.9)
    assert notFired(bob)
    webApp.answer("bob")
    http.flush()
    assert isinstance(result(bob), Roster)


# Retries


class Flaky:
    """
    A treq-like client whose first C{errors} requests fail with the given
    exceptions before any reply, then pass through to C{then}.

    @ivar times: When each request was made, by the clock.
    """

    def __init__(self, clock: Clock, errors: list[Exception], then: Any = None) -> None:
        self.clock = clock
        self.errors = list(errors)
        self.then = then
        self.times: list[float] = []
        self.urls: list[str] = []

    def get(self, url: str, **kw: Any) -> Deferred[Any]:
        self.times.append(self.clock.seconds())
        self.urls.append(url)
        if self.errors:
            return fail(self.errors.pop(0))
        if self.then is None:
            return Deferred()
        return self.then.get(url, **kw)


class Refusing(Flaky):
    """
    A treq-like client that is always refused.
    """

    def get(self, url: str, **kw: Any) -> Deferred[Any]:
        self.times.append(self.clock.seconds())
        return fail(error.ConnectionRefusedError())


def test_connectionRefusedRetriedThenSucceeds() -> None:
    """
    Refused connections are retried after doubling pauses; the fetch then
    succeeds.
    """
    clock = Clock()
    stub = StubTreq(WebApp({"alice": BOB}))
    http = Flaky(clock, [error.ConnectionRefusedError(), error.ConnectionRefusedError()], stub)
    f = RosterFetcher(URL, DOMAIN, clock, http=http, timeout=10)
    d = f.fetch("alice")
    assert http.times == [0]
    clock.advance(RETRY_DELAY)
    assert http.times == [0, RETRY_DELAY]
    clock.advance(RETRY_DELAY * 2)
    stub.flush()
    assert http.times == pytest.approx([0, RETRY_DELAY, RETRY_DELAY * 3])
    assert set(http.urls) == {"http://webapp.invalid/rosters/alice"}
    assert result(d) == Roster([Contact("bob@example.org", "Bob", ("Friends",))])
    assert (f.failures, f.inFlight) == (0, 0)


@pytest.mark.parametrize("exception", [
    error.ConnectionRefusedError(),
    error.ConnectError(),
    error.TCPTimedOutError(),
    error.DNSLookupError("webapp.invalid"),
])
def test_connectErrorsRetried(exception: Exception) -> None:
    """
    Every error after which nothing reached the web app is retried.
    """
    clock = Clock()
    stub = StubTreq(WebApp({"alice": {}}))
    http = Flaky(clock, [exception], stub)
    f = RosterFetcher(URL, DOMAIN, clock, http=http)
    d = f.fetch("alice")
    clock.advance(RETRY_DELAY)
    stub.flush()
    assert len(http.times) == 2
    assert isinstance(result(d), Roster)


@pytest.mark.parametrize("exception, reason", [
    (ResponseNeverReceived([Failure(error.ConnectionLost())]), "connection lost"),
    (ResponseFailed([Failure(error.ConnectionLost())]), "connection lost while reading the reply"),
    (error.ConnectionLost(), "ConnectionLost"),
    (ValueError("bad URL"), "ValueError: bad URL"),
])
def test_otherErrorsNotRetried(exception: Exception, reason: str) -> None:
    """
    Errors after which the request may have reached the web app are not
    retried: the fetch fails at once.
    """
    clock = Clock()
    http = Flaky(clock, [exception], StubTreq(WebApp({"alice": {}})))
    f = RosterFetcher(URL, DOMAIN, clock, http=http)
    d = f.fetch("alice")
    assert reason in fetchFailure(d).reason
    clock.advance(60)
    assert http.times == [0]
    assert clock.getDelayedCalls() == []


def test_refusedUntilDeadline() -> None:
    """
    A web app that stays down fails the fetch at the deadline, with the
    timeout as the reason, and no retry is left scheduled.
    """
    clock = Clock()
    http = Refusing(clock, [])
    f = RosterFetcher(URL, DOMAIN, clock, http=http, timeout=2)
    d = f.fetch("alice")
    for pause in [0.1, 0.2, 0.4, 0.8]:
        clock.advance(pause)
    assert http.times == pytest.approx([0, 0.1, 0.3, 0.7, 1.5])
    clock.advance(0.49)
    assert notFired(d)
    clock.advance(0.01)
    assert fetchFailure(d).reason == "no complete reply within 2s"
    assert clock.getDelayedCalls() == []
    clock.advance(60)
    assert len(http.times) == 5


def test_serverErrorsNotRetried() -> None:
    """
    A 500 is not retried: the web app answered.
    """
    webApp = WebApp()
    webApp.failures["alice"] = (500, b"")
    f, http, clock = fetcher(webApp)
    d = f.fetch("alice")
    http.flush()
    clock.advance(10)
    http.flush()
    fetchFailure(d)
    assert webApp.requests["alice"] == 1


def test_connectionLostMidBody() -> None:
    """
    A reply cut off before its declared length is a failed fetch, not a
    short roster.
    """
    webApp = HeldWebApp()
    f, http, _ = fetcher(webApp)
    d = f.fetch("alice")
    http.flush()
    [(request, _)] = webApp.pending
    request.setHeader(b"content-length", b"100")
    request.write(b'{"bob@example.org": {}}')
    http.flush()
    assert notFired(d)
    request.channel.transport.loseConnection()  # type: ignore[union-attr,misc]
    http.flush()
    assert fetchFailure(d).reason == "connection lost while reading the reply"
    assert f.inFlight == 0


def test_requestOptions() -> None:
    """
    Requests follow no redirects and ask treq not to keep a second copy of
    the body.
    """
    seen: dict[str, Any] = {}

    class Recording:
        def get(self, url: str, **kw: Any) -> Deferred[Any]:
            seen.update(kw, url=url)
            return Deferred()

    f = RosterFetcher(URL, DOMAIN, Clock(), http=Recording())
    f.fetch("alice")
    assert seen["url"] == "http://webapp.invalid/rosters/alice"
    assert (seen["allow_redirects"], seen["unbuffered"]) == (False, True)
    assert seen["headers"] == {"Accept": ["application/json"]}


# The size cap


def exactBody(size: int) -> bytes:
    """
    A valid roster reply of exactly C{size} bytes.
    """
    head, tail = b'{"bob@example.org": {"name": "', b'"}}'
    return head + b"x" * (size - len(head) - len(tail)) + tail


def test_replyAtCapAccepted() -> None:
    """
    A reply of exactly the cap is accepted, declared or streamed.
    """
    body = exactBody(100)
    assert len(body) == 100
    webApp = WebApp()
    webApp.failures["alice"] = (200, body)
    f, http, _ = fetcher(webApp, maxBytes=100)
    d = f.fetch("alice")
    http.flush()
    assert result(d).contacts[0].name == "x" * (100 - 33)

    streamed = HeldWebApp()
    f, http, _ = fetcher(streamed, maxBytes=100)
    d = f.fetch("alice")
    http.flush()
    [(request, _)] = streamed.pending
    request.write(body[:50])
    request.write(body[50:])
    request.finish()
    http.flush()
    assert isinstance(result(d), Roster)


def test_declaredLengthOverCap() -> None:
    """
    A reply whose Content-Length is over the cap fails as soon as the
    headers arrive, without reading the body, and the connection is dropped.
    """
    class Declaring(HeldWebApp):
        def render_GET(self, request: Request) -> int:
            outcome = super().render_GET(request)
            request.setHeader(b"content-length", b"1000")
            request.write(b"{" + b" " * 9)
            return outcome

    webApp = Declaring()
    f, http, _ = fetcher(webApp, maxBytes=100)
    d = f.fetch("alice")
    http.flush()
    assert fetchFailure(d).reason == "reply of 1000 bytes is over the 100-byte cap"
    assert webApp.dropped == ["alice"]
    assert (f.inFlight, f.failures) == (0, 1)


def test_declaredLengthOverCapComplete() -> None:
    """
    A complete reply longer than the cap fails too.
    """
    webApp = WebApp({"alice": {f"u{i}@example.org": {} for i in range(100)}})
    f, http, _ = fetcher(webApp, maxBytes=100)
    d = f.fetch("alice")
    http.flush()
    assert "over the 100-byte cap" in fetchFailure(d).reason


def test_streamedBodyOverCap() -> None:
    """
    A reply without a declared length fails as soon as its body passes the
    cap, and the connection is dropped before the body ends.
    """
    webApp = HeldWebApp()
    f, http, _ = fetcher(webApp, maxBytes=100)
    d = f.fetch("alice")
    http.flush()
    [(request, _)] = webApp.pending
    request.write(b'{"' + b"x" * 60)
    http.flush()
    assert notFired(d)
    request.write(b"y" * 60)
    http.flush()
    assert fetchFailure(d).reason == "reply is over the 100-byte cap"
    assert webApp.dropped == ["alice"]
    assert f.inFlight == 0


def test_capAppliesToErrorReplies() -> None:
    """
    The cap also holds for the body of a non-200 reply.
    """
    webApp = WebApp()
    webApp.failures["alice"] = (500, b"e" * 500)
    f, http, _ = fetcher(webApp, maxBytes=100)
    d = f.fetch("alice")
    http.flush()
    assert "over the 100-byte cap" in fetchFailure(d).reason


# Closing


def test_closeWithoutPool() -> None:
    """
    Closing a fetcher without a pool of its own does nothing, at once.
    """
    f = RosterFetcher(URL, DOMAIN, Clock(), http=None)
    assert result(f.close()) is None


def test_closeClosesPool() -> None:
    """
    Closing a fetcher closes its pool's kept-alive connections.
    """
    class Pool:
        closed = 0

        def closeCachedConnections(self) -> Deferred[None]:
            self.closed += 1
            return succeed(None)

    pool = Pool()
    f = RosterFetcher(URL, DOMAIN, Clock(), http=None, pool=pool)  # type: ignore[arg-type]
    assert result(f.close()) is None
    assert pool.closed == 1


def test_largeRosterParsedInSlices(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    A roster is validated a slice of contacts at a time, the reactor
    getting a turn between slices (a roster of 20,000 contacts is a second
    of work); the roster is the one L{parseRoster} builds.
    """
    monkeypatch.setattr(slicing, "SLICE_SECONDS", 0.0)  # every chunk spends the budget
    contacts = {f"Contact{i}@example.org": {"name": f"C{i}", "groups": ["Team"]} for i in range(200)}
    clock = Clock()
    http = StubTreq(WebApp({"alice": contacts}))
    d = RosterFetcher(URL, DOMAIN, clock, http=http).fetch("alice")
    http.flush()
    assert notFired(d) and len(clock.getDelayedCalls()) == 2  # the next slice, and the deadline
    clock.advance(0)
    roster, expected = result(d), parseRoster(json.dumps(contacts).encode(), "alice@example.org")
    assert (roster, roster.version, len(roster)) == (expected, expected.version, 200)
