"""
The demo web app's contact requests: rosteradmin's signed events in, a
list out, and an approval that changes both rosters and refreshes both
users.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.web import server
from twisted.web.resource import Resource

from rosteradmin.events import sign
from rosteradmin_demo.devrequests import ContactRequests, requestsIn, verified
from rosteradmin_demo.devwebapp import SAMPLE_ROSTERS, RosterFileResource, readRosters, writeJSON

NOW = 1_796_648_402
KEY = "events-key"


class Refresh(Resource):
    """
    rosteradmin's refresh endpoint: records the usernames, answers C{code}.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[list[str]] = []
        self.code = 200

    def render_POST(self, request: server.Request) -> bytes:
        assert request.content is not None
        self.asked.append(json.loads(request.content.read()))
        request.setResponseCode(self.code)
        return json.dumps({"status": "ok", "updated": len(self.asked[-1]), "errors": 0, "failures": {}}).encode()


class WebApp:
    """
    The demo's web app over HTTP in memory, as rosteradmin and its
    operator reach it.
    """

    def __init__(self, tmp_path: Path) -> None:
        self.rosterFile = tmp_path / "rosters.json"
        writeJSON(self.rosterFile, {**SAMPLE_ROSTERS, "dave": {}})
        self.refresh = Refresh()
        clock = Clock()
        clock.advance(NOW)
        self.requests = ContactRequests(self.rosterFile, tmp_path / "requests.json", [KEY.encode()],
                                        "http://rosteradmin.invalid/roster_admin/refresh", clock,
                                        http=StubTreq(self.refresh))
        self.http = StubTreq(RosterFileResource(self.rosterFile, routes={
            b"events": self.requests, b"requests": self.requests}))

    def call(self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None,
             ) -> tuple[int, Any]:
        d = self.http.request(method, "http://webapp.invalid" + path, data=body, headers=headers or {})
        self.http.flush()
        self.requests.http.flush()
        self.http.flush()
        responses: list[Any] = []
        d.addCallback(responses.append)
        [response] = responses
        content: list[bytes] = []
        response.content().addCallback(content.append)
        self.http.flush()
        return response.code, json.loads(content[0])

    def post(self, txn: int, events: list[dict[str, Any]], key: str = KEY, at: int = NOW) -> int:
        body = json.dumps({"txn_id": txn, "events": events}).encode()
        return self.call("POST", "/events", body, {
            "X-Rosteradmin-Timestamp": str(at), "X-Rosteradmin-Signature": sign([key], at, body)})[0]


def adds(eventID: int, user: str, contact: str, name: str | None = None) -> dict[str, Any]:
    return {"id": eventID, "type": "roster.set", "user": user, "resource": f"{user}@example.org/phone",
            "ts": NOW, "items": [{"jid": contact, "action": "add", "name": name, "groups": []}]}


def subscribes(eventID: int, user: str, contact: str, direction: str = "outbound") -> dict[str, Any]:
    return {"id": eventID, "type": "subscription", "user": user, "direction": direction, "presence": "subscribe",
            "from": f"{user}@example.org", "to": contact, "ts": NOW}


@pytest.fixture
def webapp(tmp_path: Path) -> WebApp:
    return WebApp(tmp_path)


def pairs(webapp: WebApp) -> list[tuple[int, str, str]]:
    code, listed = webapp.call("GET", "/requests")
    assert code == 200
    return [(r["id"], r["user"], r["contact"]) for r in listed]


def test_addsBecomeRequestsOnceEach(webapp: WebApp) -> None:
    """
    An added contact and an outbound C{subscribe} are requests; the same
    pair asked again, a transaction sent again, renames, removals and
    inbound requests add none.
    """
    rename = {**adds(3, "alice", "bob@example.org"), "items": [
        {"jid": "bob@example.org", "action": "rename", "name": "Bobby", "groups": []},
        {"jid": "carol@example.org", "action": "remove"}]}
    assert webapp.post(2, [adds(1, "alice", "dave@example.org", "Dave"), subscribes(2, "bob", "carol@example.org")]) == 200
    assert webapp.post(2, [adds(1, "alice", "erin@example.org")]) == 200  # sent again: not taken twice
    assert webapp.post(5, [rename, subscribes(4, "alice", "dave@example.org"),
                           subscribes(5, "carol", "bob@example.org", "inbound")]) == 200
    assert pairs(webapp) == [(1, "alice@example.org", "dave@example.org"), (2, "bob@example.org", "carol@example.org")]
    assert webapp.call("GET", "/requests")[1][0]["name"] == "Dave"


@pytest.mark.parametrize("key, at", [("other-key", NOW), (KEY, NOW - 301)], ids=["wrongKey", "replayed"])
def test_unsignedEventsRefused(webapp: WebApp, key: str, at: int) -> None:
    """
    A transaction not signed with the web app's key, or signed too long
    ago, is refused and kept nowhere (rosteradmin sends it again).
    """
    assert webapp.post(1, [adds(1, "alice", "dave@example.org")], key=key, at=at) == 401
    assert webapp.call("POST", "/events", b"{}")[0] == 401
    assert pairs(webapp) == []
    assert webapp.post(1, [adds(1, "alice", "dave@example.org")]) == 200
    assert pairs(webapp) == [(1, "alice@example.org", "dave@example.org")]


def test_verifiedAsTheDocsSay() -> None:
    """
    One matching C{v1=} value of several is enough; a timestamp that is
    not a number is refused.
    """
    body = b'{"txn_id": 1}'
    signature = sign(["new", "old"], NOW, body)
    assert verified(str(NOW), signature, body, [b"old"], NOW)
    assert not verified(str(NOW), signature, body + b" ", [b"old"], NOW)
    assert not verified("soon", signature, body, [b"old"], NOW)
    assert requestsIn({"type": "kick"}) == []


def test_approveWritesBothRostersAndRefreshesBoth(webapp: WebApp) -> None:
    """
    Approving adds each user to the other's roster (the name alice gave,
    hers from her username) and refreshes both; the request is gone.
    """
    webapp.post(1, [adds(1, "alice", "dave@example.org", "Dave")])
    code, answer = webapp.call("POST", "/requests/1/approve")
    assert (code, answer["approved"]["contact"], answer["refresh"]) == (
        200, "dave@example.org", {"status": "ok", "updated": 2, "errors": 0, "failures": {}})
    assert webapp.refresh.asked == [["alice", "dave"]]
    rosters = readRosters(webapp.rosterFile)
    assert rosters["alice"] == {**SAMPLE_ROSTERS["alice"], "dave@example.org": {"name": "Dave", "groups": []}}
    assert rosters["dave"] == {"alice@example.org": {"name": "Alice", "groups": []}}
    assert pairs(webapp) == []
    assert webapp.call("POST", "/requests/1/approve")[0] == 404


def test_approveRefusedForStrangers(webapp: WebApp, tmp_path: Path) -> None:
    """
    A contact the roster file does not list (or on another domain) is
    not a user to befriend: 409, nothing written, the request kept.
    """
    webapp.post(2, [adds(1, "alice", "mallory@example.org"), adds(2, "alice", "dave@elsewhere.example")])
    before = webapp.rosterFile.read_bytes()
    for requestID, jid in [(1, "mallory@example.org"), (2, "dave@elsewhere.example")]:
        assert webapp.call("POST", f"/requests/{requestID}/approve") == (
            409, {"error": f"{jid} is not a user of this web app"})
    assert webapp.rosterFile.read_bytes() == before and webapp.refresh.asked == []
    assert len(pairs(webapp)) == 2


def test_failedRefreshIs502(webapp: WebApp) -> None:
    """
    When rosteradmin does not refresh them, the approval says so (502,
    with its answer); the rosters are written all the same.
    """
    webapp.refresh.code = 500
    webapp.post(1, [adds(1, "alice", "dave@example.org", "Dave")])
    code, answer = webapp.call("POST", "/requests/1/approve")
    assert code == 502 and answer["refresh"]["updated"] == 2
    assert "dave@example.org" in readRosters(webapp.rosterFile)["alice"]


def test_rostersServedBesideTheRoutes(webapp: WebApp) -> None:
    """
    The routes take only their own paths: rosters and the users list
    answer as before.
    """
    assert webapp.call("GET", "/rosters/dave") == (200, {})
    assert webapp.call("GET", "/users")[1] == ["alice", "bob", "carol", "dave"]
    assert webapp.call("GET", "/events")[0] == 404
