"""
The sample web app the demo ships: rosters served from an editable file.
"""

from __future__ import annotations

import json
from pathlib import Path

import treq
from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.web.test.requesthelper import DummyRequest

from rosteradmin.devwebapp import SAMPLE_ROSTERS, RosterFileResource, writeSample
from rosteradmin.errors import UserUnknown
from rosteradmin.fetcher import RosterFetcher
from rosteradmin.roster import parseRoster


def get(resource: RosterFileResource, *segments: bytes) -> tuple[int, bytes]:
    request = DummyRequest(list(segments))
    body = resource.render_GET(request)
    return request.responseCode or 200, body


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


def test_sampleNeverOverwritesEdits(tmp_path: Path) -> None:
    """
    The demo writes the sample only once: the user's edits survive restarts.
    """
    path = tmp_path / "rosters.json"
    writeSample(path)
    path.write_text('{"alice": {}}')
    writeSample(path)
    assert path.read_text() == '{"alice": {}}'
