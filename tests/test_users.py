"""
Tests for L{rosteradmin.users}: the users list and its pages.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from twisted.internet.defer import ensureDeferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import Request
from treq.testing import StubTreq

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


def test_parsePageSkipsWhatIsNoUsername() -> None:
    """
    Entries that cannot be usernames are returned apart, not synced.
    """
    assert parsePage(b'["alice", 3, "", "a@b"]') == (["alice"], ["3", "''", "'a@b'"])


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
