"""
The sample web app the demo ships: rosters served from an editable file.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import treq
from treq.testing import StubTreq
from twisted.internet.defer import ensureDeferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.web.test.requesthelper import DummyRequest

from rosteradmin_demo.devwebapp import PAGE_SIZE, SAMPLE_ROSTERS, RosterFileResource, writeSample
from rosteradmin.errors import UserUnknown
from rosteradmin.fetcher import RosterFetcher
from rosteradmin.roster import parseRoster
from rosteradmin.users import UserLister


def get(resource: RosterFileResource, *segments: bytes) -> tuple[int, bytes]:
    request = DummyRequest(list(segments))
    body = resource.render_GET(request)
    return request.responseCode or 200, body


def listUsers(resource: RosterFileResource) -> list[list[str]]:
    """
    Every page of C{/users}, read over HTTP (a real C{Site}) the way
    rosteradmin's full sync reads C{--users-url}.
    """
    http, clock = StubTreq(resource), Clock()
    lister = UserLister("http://webapp.invalid/users", clock, http=http)

    async def walk() -> list[list[str]]:
        return [page async for page, last in lister.pages()]

    results: list[object] = []
    ensureDeferred(walk()).addBoth(results.append)
    http.flush()
    while not results:  # a page parsed in more than one slice waits for the reactor's turns
        clock.advance(0)
        http.flush()
    [pages] = results
    assert isinstance(pages, list), pages
    return pages


def test_servesEachUsersRosterFromTheFile(tmp_path: Path) -> None:
    """
    C{/rosters/<username>} answers that user's entry, URL-decoded, in the
    format rosteradmin validates.
    """
    path = tmp_path / "rosters.json"
    writeSample(path)
    resource = RosterFileResource(path)
    code, body = get(resource, b"rosters", b"alice")
    assert code == 200 and json.loads(body) == SAMPLE_ROSTERS["alice"]
    assert len(parseRoster(body, "alice@example.org")) == 2


def test_unknownUserIsNotFound(tmp_path: Path) -> None:
    """
    A username the file does not list gets 404, which rosteradmin reports
    as an unknown user; one listed with no contacts gets an empty roster.
    """
    path = tmp_path / "rosters.json"
    path.write_text(json.dumps({"alice": {}}))
    resource = RosterFileResource(path)
    assert get(resource, b"rosters", b"nobody") == (404, b'{"error": "no such user"}')
    assert get(resource, b"rosters", b"alice") == (200, b"{}")
    http = StubTreq(resource)
    fetcher = RosterFetcher("http://webapp.invalid/rosters/%s", "example.org", Clock(), http=http)
    failures: list[Failure] = []
    fetcher.fetch("nobody").addErrback(failures.append)
    http.flush()
    assert failures[0].check(UserUnknown)


def test_percentEncodedUsernamesDecodedOnce(tmp_path: Path) -> None:
    """
    Through a real Site, C{/rosters/j%C3%BCrgen} is jürgen's roster, and
    C{a%2541} is the user C{a%41}, not C{aA}: the path is decoded once.
    """
    path = tmp_path / "rosters.json"
    path.write_text(json.dumps({"j\u00fcrgen": {"alice@example.org": {}}, "a%41": {"bob@example.org": {}}}))
    http = StubTreq(RosterFileResource(path))

    def roster(url: str) -> object:
        results: list[object] = []
        http.get(url).addCallback(treq.json_content).addBoth(results.append)
        http.flush()
        return results[0]

    assert roster("http://webapp.invalid/rosters/j%C3%BCrgen") == {"alice@example.org": {}}
    assert roster("http://webapp.invalid/rosters/a%2541") == {"bob@example.org": {}}


def test_badPathAndUnreadableFile(tmp_path: Path) -> None:
    """
    Other paths get 404; a file that is not JSON, or not an object of
    usernames, gets 500, not a traceback.
    """
    path = tmp_path / "rosters.json"
    resource = RosterFileResource(path)
    assert get(resource, b"users", b"alice")[0] == 404
    assert get(resource, b"rosters")[0] == 404
    for content in ["{not json", '["alice"]']:
        path.write_text(content)
        assert get(resource, b"rosters", b"alice") == (500, b'{"error": "roster file unreadable"}')
        assert get(resource, b"users") == (500, b'{"error": "roster file unreadable"}')


def test_sampleNeverOverwritesEdits(tmp_path: Path) -> None:
    """
    The demo writes the sample only once: the user's edits survive restarts.
    """
    path = tmp_path / "rosters.json"
    writeSample(path)
    path.write_text('{"alice": {}}')
    writeSample(path)
    assert path.read_text() == '{"alice": {}}'


def test_usersListedInPagesLinkedByNext(tmp_path: Path) -> None:
    """
    C{/users} lists the file's usernames in order, a page at a time; each
    page but the last links the next with C{Link: <...>; rel="next"}.
    """
    path = tmp_path / "rosters.json"
    writeSample(path)
    resource = RosterFileResource(path, pageSize=2)
    request = DummyRequest([b"users"])
    assert json.loads(resource.render_GET(request)) == ["alice", "bob"]
    assert request.responseHeaders.getRawHeaders(b"link") == [b'</users?after=bob>; rel="next"']
    request = DummyRequest([b"users"])
    request.args = {b"after": [b"bob"]}
    assert json.loads(resource.render_GET(request)) == ["carol"]
    assert request.responseHeaders.getRawHeaders(b"link") is None


def test_usersReadByTheFullSyncLister(tmp_path: Path) -> None:
    """
    rosteradmin's users-list reader follows the pages to the end, with
    usernames that need percent-encoding in the next page's URL.
    """
    path = tmp_path / "rosters.json"
    path.write_text(json.dumps({"j\u00fcrgen": {}, "a?b=c": {}, "a+b": {}, "zoe": {}, "a%41": {}, "a#b": {}}))
    assert listUsers(RosterFileResource(path, pageSize=2)) == [["a#b", "a%41"], ["a+b", "a?b=c"],
                                                               ["j\u00fcrgen", "zoe"]]
    assert listUsers(RosterFileResource(path, pageSize=6)) == [["a#b", "a%41", "a+b", "a?b=c", "j\u00fcrgen", "zoe"]]


def test_usersDefaultPageSize(tmp_path: Path) -> None:
    """
    Without a page size, pages hold L{PAGE_SIZE} usernames; an empty file
    is one empty page.
    """
    path = tmp_path / "rosters.json"
    path.write_text(json.dumps({f"user{n:03}": {} for n in range(PAGE_SIZE + 1)}))
    pages = listUsers(RosterFileResource(path))
    assert [len(page) for page in pages] == [PAGE_SIZE, 1] and pages[1] == [f"user{PAGE_SIZE:03}"]
    path.write_text("{}")
    assert listUsers(RosterFileResource(path)) == [[]]


def test_pageSizeAtLeastOne(tmp_path: Path) -> None:
    """
    A page size below 1 is refused when the resource is made.
    """
    with pytest.raises(ValueError, match="page size must be at least 1"):
        RosterFileResource(tmp_path / "rosters.json", pageSize=0)
