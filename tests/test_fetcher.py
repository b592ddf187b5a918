"""
Tests for the roster fetcher: URLs and headers, validation, coalescing,
the concurrency bound, deadlines, retries and the size cap.
"""

from __future__ import annotations

from typing import Any

import pytest
from treq.testing import StubTreq
from twisted.internet import error
from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from rosteradmin.errors import FetchFailed
from rosteradmin.fetcher import RosterFetcher
from rosteradmin.roster import Roster
from tests.helpers import WebApp

URL = "http://webapp.invalid/rosters/%s"


def result(d: Deferred[Any]) -> Any:
    outcome: list[Any] = []
    d.addBoth(outcome.append)
    assert outcome, "not fired"
    return outcome[0]


def fetcher(webApp: WebApp, **kw: Any) -> tuple[RosterFetcher, StubTreq, Clock]:
    clock = Clock()
    http = StubTreq(webApp)
    return RosterFetcher(URL, "example.org", clock, http=http, **kw), http, clock


def test_urlEncodesUsername() -> None:
    """
    The username is URL-encoded into the template, slashes included.
    """
    f, _, _ = fetcher(WebApp())
    assert f.urlFor("a b/c?d") == "http://webapp.invalid/rosters/a%20b%2Fc%3Fd"


def test_fetchSendsHeadersAndParses() -> None:
    """
    A fetch asks for JSON with the configured extra headers and parses the
    roster.
    """
    seen: dict[str, Any] = {}

    class Recording(WebApp):
        def render_GET(self, request: Any) -> Any:
            seen.update(accept=request.getHeader("accept"), auth=request.getHeader("authorization"))
            return super().render_GET(request)

    f, http, _ = fetcher(Recording({"alice": {"bob@example.org": {"name": "Bob"}}}),
                         headers={"Authorization": "Bearer app"})
    d = f.fetch("alice")
    http.flush()
    roster = result(d)
    assert isinstance(roster, Roster) and roster.contacts[0].name == "Bob"
    assert seen == {"accept": "application/json", "auth": "Bearer app"}


@pytest.mark.parametrize("status, body, reason", [
    (500, b"boom", "HTTP 500"),
    (200, b"[1]", "must be a JSON object"),
    (200, b"{", "not JSON"),
    (200, b'{"alice@example.org": {}}', "roster's owner"),
    (302, b"", "HTTP 302"),
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
    failure = result(d)
    assert isinstance(failure, Failure) and failure.check(FetchFailed)
    assert reason in failure.value.reason
    assert f.failures == 1 and f.inFlight == 0


def test_concurrentFetchesShareOne() -> None:
    """
    Concurrent fetches of one user make one request and all get the roster.
    """
    webApp = WebApp({"alice": {"bob@example.org": {}}})
    webApp.hold = True
    f, http, _ = fetcher(webApp)
    first, second = f.fetch("alice"), f.fetch("alice")
    http.flush()
    webApp.release()
    http.flush()
    assert result(first) is result(second)
    assert webApp.requests["alice"] == 1


def test_concurrencyIsBounded() -> None:
    """
    No more than the configured number of fetches run at once; the rest
    wait their turn.
    """
    webApp = WebApp()
    webApp.hold = True
    f, http, _ = fetcher(webApp, concurrency=3)
    results = [f.fetch(f"user{i}") for i in range(10)]
    http.flush()
    assert len(webApp.held) == 3 and f.inFlight == 3
    while webApp.held:
        webApp.hold = True
        held, webApp.held = webApp.held, []
        for request, username in held:
            request.write(webApp.answer(request, username))
            request.finish()
        http.flush()
        assert len(webApp.held) <= 3
    assert all(isinstance(result(d), Roster) for d in results)
    assert sum(webApp.requests.values()) == 10


def test_deadline() -> None:
    """
    A fetch that has no reply within the timeout fails, naming the timeout.
    """
    webApp = WebApp()
    webApp.hold = True
    f, http, clock = fetcher(webApp, timeout=5)
    d = f.fetch("alice")
    http.flush()
    clock.advance(5)
    failure = result(d)
    assert failure.check(FetchFailed) and "within 5s" in failure.value.reason
    assert f.inFlight == 0


class Refusing:
    """
    A treq-like client whose first C{refusals} connections are refused.
    """

    def __init__(self, refusals: int, then: Any) -> None:
        self.refusals = refusals
        self.then = then
        self.calls = 0

    def get(self, url: str, **kw: Any) -> Deferred[Any]:
        self.calls += 1
        if self.calls <= self.refusals:
            return fail(error.ConnectionRefusedError())
        return self.then.get(url, **kw)


def test_connectionErrorsRetriedWithinDeadline() -> None:
    """
    Refused connections are retried with doubling pauses; the fetch then
    succeeds.
    """
    stub = StubTreq(WebApp({"alice": {}}))
    http = Refusing(2, stub)
    clock = Clock()
    f = RosterFetcher(URL, "example.org", clock, http=http, timeout=10)
    d = f.fetch("alice")
    clock.advance(0.1)
    clock.advance(0.2)
    stub.flush()
    assert http.calls == 3
    assert isinstance(result(d), Roster)


def test_refusedUntilDeadline() -> None:
    """
    A web app that stays down fails the fetch at the deadline.
    """
    http = Refusing(10**6, None)
    clock = Clock()
    f = RosterFetcher(URL, "example.org", clock, http=http, timeout=2)
    d = f.fetch("alice")
    for _ in range(40):
        clock.advance(0.1)
    assert result(d).check(FetchFailed)
    assert 3 <= http.calls <= 6


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
    assert result(d).check(FetchFailed) and webApp.requests["alice"] == 1


def test_sizeCap() -> None:
    """
    A reply over the cap fails, whether its length is declared or streamed.
    """
    webApp = WebApp({"alice": {f"u{i}@example.org": {} for i in range(100)}})
    f, http, _ = fetcher(webApp, maxBytes=100)
    d = f.fetch("alice")
    http.flush()
    failure = result(d)
    assert failure.check(FetchFailed) and "cap" in failure.value.reason

    class Chunked(WebApp):
        def render_GET(self, request: Any) -> Any:
            request.write(b'{"' + b"x" * 80)
            request.write(b"y" * 80 + b'": {}}')
            request.finish()
            return 1

    f, http, _ = fetcher(Chunked(), maxBytes=100)
    d = f.fetch("alice")
    http.flush()
    failure = result(d)
    assert failure.check(FetchFailed) and "cap" in failure.value.reason
