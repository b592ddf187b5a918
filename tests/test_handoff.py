"""
The API of an instance that does not lead (L{rosteradmin.handoff}), and
the leader applying what it recorded (L{rosteradmin.applier}): through a
real Site (StubTreq) over the real backend and component, the intake in
a real SQLite file.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from twisted.logger import capturedLogs

from rosteradmin.applier import RequestApplier
from rosteradmin.intake import ACCEPTED, CLAIMED, DONE
from rosteradmin.state import SyncState
from rosteradmin.tap import makeApplier
from tests.helpers import PERMISSIONS_2, ComponentOnWire, WebApp
from tests.test_api import KICK_AUTH, ROOM, Api, kickAnswers
from tests.test_component import ALICE_ROSTER, serverAnswers


def standby(tmp_path: Path, replyWait: float = 0.0, refreshAuthorization: str | None = "s3") -> Api:
    """
    The API of an instance that does not lead, its state (and intake) in
    a file, its component connected (it serves as the leader's side too).
    """
    wire = ComponentOnWire(WebApp({"alice": ALICE_ROSTER}), state=SyncState(str(tmp_path / "state.sqlite")))
    wire.handshake(PERMISSIONS_2)
    api = Api(wire, refreshAuthorization=refreshAuthorization, replyWait=replyWait)
    api.leading = False
    return api


def post(api: Api, path: str, body: Any, auth: str = "s3") -> tuple[int, Any, str | None]:
    """
    POST, and the answer's status, JSON body and C{Location}.
    """
    d = api.http.post("http://api.invalid" + path, data=json.dumps(body).encode(), headers={"Authorization": auth})
    api.http.flush()
    response = Api.result(d)
    location = response.headers.getRawHeaders("location")
    return response.code, json.loads(Api.result(response.content())), location[0] if location else None


def leader(api: Api) -> RequestApplier:
    """
    The leader's side, on the same component, started (it looks at once).
    """
    applier = makeApplier(api.config, api.wire.parts, api.fullSync, api.intake, api.wire.clock)
    applier.startService()
    return applier


def rows(tmp_path: Path) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(tmp_path / "state.sqlite")
    try:
        return list(db.execute("SELECT id, kind, body, status FROM requests ORDER BY seq"))
    finally:
        db.close()


def test_standbyRecordsARefreshAndAnswers202(tmp_path: Path) -> None:
    """
    A refresh reaching a standby is in the table when it answers 202 with
    the request's id and a Location to look at, which answers 202 until
    the leader applies it; the standby itself fetched nothing and sent
    nothing.
    """
    api = standby(tmp_path)
    code, body, location = post(api, "/roster_admin/refresh", ["alice"])
    assert code == 202 and body["status"] == "accepted" and body["kind"] == "refresh"
    assert location == f"/roster_admin/requests/{body['request']}" == body["location"]
    assert rows(tmp_path) == [(body["request"], "refresh", '{"usernames": ["alice"]}', ACCEPTED)]
    assert api.wire.webApp.requests.get("alice", 0) == 0 and api.wire.sent() == []
    code, looked = api.request("GET", location, headers={"Authorization": "s3"})
    assert code == 202 and looked["request"] == body["request"] and looked["applying"] is False


def test_leaderAppliesAndTheLocationShowsItsReply(tmp_path: Path) -> None:
    """
    Once the leader's side applied a recorded refresh, the Location
    answers what the leader's own API would have: the refresh summary,
    with its status.
    """
    api = standby(tmp_path)
    _, body, location = post(api, "/roster_admin/refresh", ["alice"])
    assert location is not None
    applier = leader(api)
    api.wire.answerRequests(serverAnswers())
    assert rows(tmp_path)[0][3] == DONE
    code, looked = api.request("GET", location, headers={"Authorization": "s3"})
    assert (code, looked) == (200, {"status": "ok", "message": "roster update complete", "updated": 1,
                                    "errors": 0, "failures": {}})
    assert api.wire.webApp.requests["alice"] == 1
    applier.stopService()


def test_requestsAppliedInOrder(tmp_path: Path) -> None:
    """
    The leader applies recorded requests oldest first: a sync of users,
    then a cancel of the pass, each outcome as the sync route answers.
    """
    api = standby(tmp_path)
    api.wire.webApp.hold = True  # the pass stays running until cancelled
    _, first, _ = post(api, "/roster_admin/sync", ["alice"])
    d = api.http.delete("http://api.invalid/roster_admin/sync", headers={"Authorization": "s3"})
    api.http.flush()
    response = Api.result(d)
    second = json.loads(Api.result(response.content()))
    assert response.code == 202 and [r[2] for r in rows(tmp_path)] == ['{"usernames": ["alice"]}',
                                                                      '{"cancel": true}']
    leader(api).stopService()
    code, started = api.request("GET", first["location"], headers={"Authorization": "s3"})
    assert code == 202 and started["status"] == "started" and started["sync"]["kind"] == "users"
    code, cancelled = api.request("GET", second["location"], headers={"Authorization": "s3"})
    assert code == 202 and cancelled["status"] == "cancelling"


def test_kickRecordedAndApplied(tmp_path: Path) -> None:
    """
    A kick reaching a standby takes the kick secret, is recorded (the
    standby's own stream is no matter), and once the leader kicked, its
    Location answers the kick's reply; looking at it takes the kick
    secret too.
    """
    api = standby(tmp_path)
    code, body, location = post(api, "/muc_kick", {"nickname": "Bob", "muc": ROOM}, auth="s3")
    assert code == 401 and rows(tmp_path) == []
    code, body, location = post(api, "/muc_kick", {"nickname": "Bob", "muc": ROOM, "reason": "spam"},
                                auth=KICK_AUTH)
    assert code == 202 and location is not None and api.wire.sent() == []
    assert api.http._agent._rootResource.children[b"muc_kick"].outcomes == {"401": 1, "202": 1}
    leader(api)
    [iq] = api.wire.sent()
    assert (iq["to"], iq.query.item["nick"], str(iq.query.item.reason)) == (ROOM, "Bob", "spam")
    api.wire.receive(kickAnswers(None)(iq))
    assert api.request("GET", location, headers={"Authorization": "s3"})[0] == 401
    assert api.request("GET", location, headers={"Authorization": KICK_AUTH}) == (
        200, {"status": "ok", "message": f"Bob kicked from {ROOM}"})


def test_replyWhenTheLeaderAnswersInTime(tmp_path: Path) -> None:
    """
    A standby waiting for the outcome answers the leader's reply itself
    when the leader applies the request in time, without a Location.
    """
    api = standby(tmp_path, replyWait=2.0)
    applier = leader(api)
    d = api.http.post("http://api.invalid/roster_admin/refresh/alice", headers={"Authorization": "s3"})
    api.http.flush()
    api.wire.clock.advance(applier.interval)
    api.wire.answerRequests(serverAnswers())
    api.wire.clock.advance(0.5)
    api.http.flush()
    response = Api.result(d)
    assert response.code == 200 and response.headers.getRawHeaders("location") is None
    assert json.loads(Api.result(response.content()))["message"] == "roster update complete"


def test_notInTimeIs202(tmp_path: Path) -> None:
    """
    A standby waiting for an outcome that does not come in time answers
    202 when the wait is over.
    """
    api = standby(tmp_path, replyWait=1.0)
    d = api.http.post("http://api.invalid/roster_admin/refresh/alice", headers={"Authorization": "s3"})
    api.http.flush()
    answered: list[Any] = []
    d.addBoth(answered.append)
    assert answered == []
    api.wire.clock.advance(1.0)
    api.http.flush()
    assert answered[0].code == 202


def test_failingDurableWriteAnswers503(tmp_path: Path) -> None:
    """
    When the state cannot take the request (another process holds the
    file's lock), the standby answers 503, never 202, and logs why; the
    same request is accepted once the file is free.
    """
    api = standby(tmp_path)
    holder = sqlite3.connect(tmp_path / "state.sqlite", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    with capturedLogs() as events:
        code, body, location = post(api, "/roster_admin/refresh", ["alice"])
    holder.rollback()
    holder.close()
    assert (code, location) == (503, None)
    assert body == {"status": "error", "message": "Not the leader, and the request cannot be recorded for it: "
                                                  "try again"}
    assert any(e["log_format"].startswith("cannot record a {kind} request") and e["kind"] == "refresh" for e in events)
    assert rows(tmp_path) == []
    assert post(api, "/roster_admin/refresh", ["alice"])[0] == 202


def test_badRequestsAreAnsweredByTheStandby(tmp_path: Path) -> None:
    """
    A standby parses and authorizes as the leader does: a wrong secret or
    a bad body is answered at once and nothing is recorded.
    """
    api = standby(tmp_path)
    assert post(api, "/roster_admin/refresh", ["alice"], auth="wrong")[0] == 401
    assert post(api, "/roster_admin/refresh", {"not": "a list"})[0] == 400
    assert post(api, "/roster_admin/sync", {"all": True})[0] == 400  # no --users-url
    assert post(api, "/muc_kick", {"muc": ROOM}, auth=KICK_AUTH)[0] == 400
    assert rows(tmp_path) == []


def test_unknownRequest(tmp_path: Path) -> None:
    """
    An unknown request id is a 404 to a caller holding either secret,
    and a 401 to one holding neither.
    """
    api = standby(tmp_path)
    path = "/roster_admin/requests/no-such-id"
    assert api.request("GET", path, headers={"Authorization": "s3"}) == (
        404, {"status": "error", "message": "No such request"})
    assert api.request("GET", path, headers={"Authorization": KICK_AUTH})[0] == 404
    assert api.request("GET", path, headers={"Authorization": "wrong"})[0] == 401
    assert api.request("GET", "/roster_admin/requests", headers={"Authorization": "s3"})[0] == 404


def test_leaderUnchanged(tmp_path: Path) -> None:
    """
    A leader's API answers directly, as it always did, and records
    nothing.
    """
    api = standby(tmp_path)
    api.leading = True
    code, body = api.request("POST", "/roster_admin/refresh", ["alice"], headers={"Authorization": "s3"},
                             server=serverAnswers())
    assert code == 200 and body["updated"] == 1 and rows(tmp_path) == []


def test_newTermAppliesAnInterruptedRequestAgain(tmp_path: Path) -> None:
    """
    A request claimed by a leader that lost leadership mid-way (its
    server read never answered) is applied by the next term: the claim
    is handed back, the request applied again, the new term's outcome
    recorded; the first attempt, ending later, records nothing.
    """
    api = standby(tmp_path)
    _, body, location = post(api, "/roster_admin/refresh", ["alice"])
    first = leader(api)
    api.wire.sent()  # the server never answers the first attempt
    first.stopService()
    assert rows(tmp_path)[0][3] == CLAIMED
    with capturedLogs() as events:
        second = leader(api)
        api.wire.clock.advance(api.wire.config.iq_timeout + 1)
        api.wire.answerRequests(serverAnswers())
    assert any("applying them again" in e["log_format"] for e in events)
    assert any("another leader has taken it back" in e["log_format"] for e in events)
    code, looked = api.request("GET", location, headers={"Authorization": "s3"})
    assert code == 200 and looked["updated"] == 1
    second.stopService()


def test_leaderAppliesNothingWhileItsStreamIsDown(tmp_path: Path) -> None:
    """
    The leader claims no recorded request while its XMPP stream is down:
    they wait, and are applied at the next look once it is up.
    """
    wire = ComponentOnWire(WebApp({"alice": ALICE_ROSTER}), state=SyncState(str(tmp_path / "state.sqlite")))
    api = Api(wire, refreshAuthorization="s3")
    api.leading = False
    _, body, location = post(api, "/roster_admin/refresh", ["alice"])
    applier = leader(api)
    assert rows(tmp_path)[0][3] == ACCEPTED and wire.webApp.requests.get("alice", 0) == 0
    wire.handshake(PERMISSIONS_2)
    wire.clock.advance(applier.interval)
    wire.answerRequests(serverAnswers())
    assert rows(tmp_path)[0][3] == DONE
    assert api.request("GET", location, headers={"Authorization": "s3"})[0] == 200
    applier.stopService()
