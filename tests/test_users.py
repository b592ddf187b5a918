"""
Tests for L{rosteradmin.users}: the users list and its pages.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import pytest
from twisted.internet.defer import ensureDeferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import Request
from treq.testing import StubTreq

from rosteradmin import slicing, users
from rosteradmin.users import UserLister, UsersUnavailable, nextPage, parsePage


class UsersApp(Resource):
    """
    A users endpoint serving C{pages}, each linking to the next.
    """

    isLeaf = True

    def __init__(self, pages: list[Any], status: int = 200) -> None:
        super().__init__()
        self.pages = pages
        self.status = status

    def render_GET(self, request: Request) -> bytes:
        index = int(request.args.get(b"page", [b"0"])[0])
        request.setResponseCode(self.status)
        if index + 1 < len(self.pages):
            request.setHeader("link", f'<?page={index + 1}>; rel="next", </other>; rel="prev"')
        return json.dumps(self.pages[index]).encode()


def collect(lister: UserLister, http: StubTreq) -> list[list[str]]:
    async def run() -> list[list[str]]:
        return [page async for page, last in lister.pages()]
    outcome: list[Any] = []
    ensureDeferred(run()).addBoth(outcome.append)
    http.flush()
    [result] = outcome
    if isinstance(result, Failure):
        result.raiseException()
    return result  # type: ignore[no-any-return]


def test_pagesFollowTheNextLink() -> None:
    """
    Pages are read in order, following each rel="next" link relative to
    the page's URL, until a page has none; usernames are nodeprepped.
    """
    http = StubTreq(UsersApp([["alice", "Bob"], ["carol"], []]))
    lister = UserLister("http://webapp.invalid/users", Clock(), http=http)
    assert collect(lister, http) == [["alice", "bob"], ["carol"], []]


def test_badPageStopsTheListing() -> None:
    """
    A page that is not a JSON array of strings, or an error status, stops
    the listing with why.
    """
    http = StubTreq(UsersApp([{"not": "a list"}]))
    with pytest.raises(UsersUnavailable, match="JSON array"):
        collect(UserLister("http://webapp.invalid/users", Clock(), http=http), http)
    http = StubTreq(UsersApp([[]], status=500))
    with pytest.raises(UsersUnavailable, match="HTTP 500"):
        collect(UserLister("http://webapp.invalid/users", Clock(), http=http), http)


def parsed(body: bytes, clock: Clock | None = None) -> tuple[list[str], list[str], int]:
    """
    L{parsePage} of a page, given the reactor's turns between its slices.
    """
    clock = clock or Clock()
    outcome: list[Any] = []
    ensureDeferred(parsePage(body, clock)).addBoth(outcome.append)
    while not outcome:
        clock.advance(0)
    [result] = outcome
    if isinstance(result, Failure):
        result.raiseException()
    return result  # type: ignore[no-any-return]


def test_parsePageSkipsWhatIsNoUsername() -> None:
    """
    Entries that cannot be usernames are returned apart, not synced.
    """
    assert parsed(b'["alice", 3, "", "a@b"]') == (["alice"], ["3", "''", "'a@b'"], 3)


def test_refusedEntriesAreCountedNotAllKept() -> None:
    """
    Of a page's entries that are not usernames, all are counted and the
    first few kept to show: a page of millions would otherwise keep a
    string for each.
    """
    assert parsed(json.dumps([7] * 1000 + ["alice"]).encode()) == (["alice"], ["7"] * users.REFUSED_KEPT, 1000)


@pytest.mark.parametrize("headers, expected", [
    (['<https://a/u?p=2>; rel="next"'], "https://a/u?p=2"),
    (['<p2>; rel=next'], "https://a/u/p2"),
    (['</first>; rel="first", <?after=bob>; rel="next prefetch"'], "https://a/u/list?after=bob"),
    (['<https://a/x>; rel="prev"'], None),
    ([], None),
])
def test_nextPage(headers: list[str], expected: str | None) -> None:
    """
    RFC 8288 Link headers: the rel="next" target, resolved against the
    page's URL.
    """
    base = "https://a/u/list" if "after" in "".join(headers) else "https://a/u/"
    assert nextPage(headers, base) == expected


def test_pagesThatLoopAreRefused() -> None:
    """
    A next link back to a page already read stops the listing.
    """
    class Loop(Resource):
        isLeaf = True

        def render_GET(self, request: Request) -> bytes:
            request.setHeader("link", '</users>; rel="next"')
            return b'["alice"]'

    http = StubTreq(Loop())
    with pytest.raises(UsersUnavailable, match="loop"):
        collect(UserLister("http://webapp.invalid/users", Clock(), http=http), http)


def test_lastPageIsMarked() -> None:
    """
    Each page says whether it is the last, so a sync knows its total as
    soon as the last page is read, before its users are synced.
    """
    http = StubTreq(UsersApp([["alice"], ["bob"]]))
    lister = UserLister("http://webapp.invalid/users", Clock(), http=http)

    async def run() -> list[bool]:
        return [last async for page, last in lister.pages()]

    outcome: list[Any] = []
    ensureDeferred(run()).addBoth(outcome.append)
    http.flush()
    assert outcome == [[False, True]]


@pytest.mark.parametrize("body", [
    b' [ "alice" , "B\\u00e9a" ,"c\\"d", 7, null, ["x"], {"y": 1} ] \n',
    b'[]', b' [ ] ', b'["alice"]', b'\xef\xbb\xbf["alice"]', "[\"\u00e9mile\"]".encode("utf-16"),
])
def test_parsePageDecodesAsJSONDoes(body: bytes) -> None:
    """
    The page, decoded a value at a time, gives what C{json.loads} would.
    """
    values = json.loads(body)
    refused = [repr(v)[:100] for v in values if not isinstance(v, str) or '"' in v]
    assert parsed(body) == ([v.lower() for v in values if isinstance(v, str) and '"' not in v], refused,
                            len(refused))


@pytest.mark.parametrize("body, error", [
    (b'{"not": "a list"}', "JSON array, got dict"), (b'"alice"', "JSON array, got str"),
    (b'["alice"', "not JSON"), (b'["alice",]', "not JSON"), (b'["alice" "bob"]', "not JSON"),
    (b'["alice"] []', "not JSON"), (b'', "not JSON"), (b'[\xff]', "not JSON"), (b'[' * 100_000, "not JSON"),
])
def test_parsePageRefusesWhatIsNoJSONArray(body: bytes, error: str) -> None:
    """
    A page that is not one JSON array is refused, with why.
    """
    with pytest.raises(UsersUnavailable, match=error):
        parsed(body)


def test_largePageIsPreparedInSlices(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    A page is decoded and its names prepared a slice at a time, the reactor
    getting a turn between slices: a page of a million names is seconds of
    work.
    """
    monkeypatch.setattr(slicing, "SLICE_SECONDS", 0.0)  # every chunk spends the budget
    clock = Clock()
    names = [f"User{i}" for i in range(1000)]
    outcome: list[Any] = []
    ensureDeferred(parsePage(json.dumps(names).encode(), clock)).addBoth(outcome.append)
    assert outcome == [] and len(clock.getDelayedCalls()) == 1
    clock.advance(0)
    assert outcome == [([name.lower() for name in names], [], 0)]


class EndlessUsers(Resource):
    """
    A users endpoint whose next links never end, each a new URL of
    C{padding} characters more.
    """

    isLeaf = True

    def __init__(self, padding: int = 0) -> None:
        super().__init__()
        self.padding = padding
        self.pages = 0

    def render_GET(self, request: Request) -> bytes:
        self.pages += 1
        request.setHeader("link", f'</users?page={self.pages}&pad={"x" * self.padding}>; rel="next"')
        return json.dumps([f"u{self.pages}a", f"u{self.pages}b"]).encode()


def test_endlessListStopsAtMaxPages(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    A list whose next links never end, each to a new URL, stops past
    MAX_PAGES pages with an error saying so, after yielding them.
    """
    monkeypatch.setattr(users, "MAX_PAGES", 30)
    app = EndlessUsers()
    http = StubTreq(app)
    lister = UserLister("http://webapp.invalid/users", Clock(), http=http)
    pages: list[list[str]] = []

    async def run() -> None:
        async for page, last in lister.pages():
            pages.append(page)

    outcome: list[Any] = []
    ensureDeferred(run()).addBoth(outcome.append)
    http.flush()
    [failure] = outcome
    assert isinstance(failure, Failure)
    assert failure.check(users.UsersListEndless)
    assert "past 30 pages" in failure.getErrorMessage()
    assert len(pages) == app.pages == 30


def test_endlessListStopsAtMaxUsers(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    A list that goes on past MAX_USERS users stops with an error saying so.
    """
    monkeypatch.setattr(users, "MAX_USERS", 5)
    http = StubTreq(EndlessUsers())
    with pytest.raises(users.UsersListEndless, match="past 5 users"):
        collect(UserLister("http://webapp.invalid/users", Clock(), http=http), http)


def test_seenPagesHoldNoURL(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    What loop detection keeps of each page read is a small digest, not its
    URL: after 300 pages of 12 KB URLs, the listing's own state holds far
    less than their 3.6 MB.
    """
    monkeypatch.setattr(users, "MAX_PAGES", 300)
    http = StubTreq(EndlessUsers(padding=12_000))
    pages = UserLister("http://webapp.invalid/users", Clock(), http=http).pages()
    held: list[int] = []

    async def walk() -> None:
        async for page, last in pages:
            if len(page) and page[0] == "u300a":
                # Suspended here: the listing's state is in its frame.
                frame = pages.ag_frame  # type: ignore[attr-defined]
                held.append(sum(_deepSize(value) for value in frame.f_locals.values()))
                return

    outcome: list[Any] = []
    ensureDeferred(walk()).addBoth(outcome.append)
    http.flush()
    assert outcome == [None]
    assert held[0] < 100_000


def _deepSize(value: object) -> int:
    """
    The size of a value and, for a container, of its items.
    """
    if isinstance(value, (set, frozenset, list, tuple)):
        return sys.getsizeof(value) + sum(sys.getsizeof(item) for item in value)
    return sys.getsizeof(value)
