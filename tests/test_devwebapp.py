"""
The sample web app the demo ships: rosters served from an editable file.
"""

from __future__ import annotations

import json
from pathlib import Path

from twisted.web.test.requesthelper import DummyRequest

from rosteradmin.devwebapp import SAMPLE_ROSTERS, RosterFileResource, writeSample
from rosteradmin.roster import parseRoster


def get(resource: RosterFileResource, *segments: bytes) -> tuple[int, bytes]:
    request = DummyRequest(list(segments))
    body = resource.render_GET(request)
    return request.responseCode or 200, body


def test_servesEachUsersRosterFromTheFile(tmp_path: Path) -> None:
    """
    C{/rosters/<username>} answers that user's entry, URL-decoded, in the
    format rosteradmin validates; an unknown user gets an empty roster.
    """
    path = tmp_path / "rosters.json"
    writeSample(path)
    resource = RosterFileResource(path)
    code, body = get(resource, b"rosters", b"alice")
    assert code == 200 and json.loads(body) == SAMPLE_ROSTERS["alice"]
    assert len(parseRoster(body, "alice@example.org")) == 2
    path.write_text(json.dumps({"j\u00fcrgen": {"alice@example.org": {}}}))
    assert json.loads(get(resource, b"rosters", b"j%C3%BCrgen")[1]) == {"alice@example.org": {}}
    assert get(resource, b"rosters", b"nobody") == (200, b"{}")


def test_badPathAndUnreadableFile(tmp_path: Path) -> None:
    """
    Other paths get 404; a file that is not JSON gets 500, not a traceback.
    """
    path = tmp_path / "rosters.json"
    resource = RosterFileResource(path)
    assert get(resource, b"users", b"alice")[0] == 404
    assert get(resource, b"rosters")[0] == 404
    path.write_text("{not json")
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
