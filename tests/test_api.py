"""
Tests for the HTTP API: each route through a real Site (StubTreq) over the
real backend and component, the component's stream on a StringTransport.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest
from treq.testing import StubTreq
from twisted.logger import capturedLogs
from twisted.words.xish import domish

from rosteradmin import __version__, slicing
from rosteradmin.fullsync import FullSync
from rosteradmin.handoff import Handoff
from rosteradmin.intake import Intake
from rosteradmin.tap import makeAPI
from rosteradmin.roster import NS_ROSTER
from rosteradmin import web
from rosteradmin.web import Drain, makeSite
from twisted.web.resource import Resource
from twisted.web.test.requesthelper import DummyChannel

from tests.helpers import COMPONENT, PERMISSIONS_2, ComponentOnWire, WebApp
from tests.test_component import ALICE_ROSTER, StoringServer, serverAnswers

KICK_AUTH = "Bearer kick-secret"
ROOM = "room@conference.example.org"


class Api:
    """
    The API of one service, driven through StubTreq.

    @ivar leading: Whether the service leads (L{rosteradmin.handoff}):
        it does unless a test says otherwise.
    """

    def __init__(self, wire: ComponentOnWire, refreshAuthorization: str | None = None,
                 replyWait: float = 0.0) -> None:
        """
        @param replyWait: Seconds a standby waits for the leader's outcome.
        """
        self.wire = wire
        self.config = replace(wire.config, refresh_authorization=refreshAuthorization,
                              kick_authorization=KICK_AUTH, no_kick=False)
        self.fullSync = FullSync(wire.backend, None, wire.clock, False, 3600)
        self.drain = Drain()
        self.leading = True
        self.intake = Intake(wire.backend.state.storage)
        self.handoff = Handoff(self.intake, lambda: self.leading, wire.clock, replyWait)
        self.http = StubTreq(makeAPI(self.config, wire.parts, self.fullSync, self.drain, handoff=self.handoff))

    def request(self, method: str, path: str, body: Any = None, raw: bytes | None = None,
                headers: dict[Any, Any] | None = None, server: Any = None) -> tuple[int, Any]:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        d = self.http.request(method, "http://api.invalid" + path, data=data, headers=headers or {})
        self.http.flush()
        if server is not None:
            self.wire.answerRequests(server)
            self.http.flush()
        response = self.result(d)
        content = self.result(response.content())
        return response.code, json.loads(content) if content else None

    @staticmethod
    def result(d: Any) -> Any:
        results: list[Any] = []
        d.addBoth(results.append)
        assert results, "request did not complete"
        if hasattr(results[0], "raiseException"):
            results[0].raiseException()
        return results[0]


def makeApi(rosters: dict[str, Any] | None = None, burst: str = PERMISSIONS_2, **kw: Any) -> Api:
    wire = ComponentOnWire(WebApp(rosters if rosters is not None else {"alice": ALICE_ROSTER}))
    wire.handshake(burst)
    return Api(wire, **kw)


def test_refreshSyncsAndPushes() -> None:
    """
    A refresh re-fetches, writes the difference into the server and pushes
    each change to the user's online resources from the bare JID.
    """
    api = makeApi()
    api.wire.receive("<presence from='alice@example.org/phone'/>")
    api.wire.answerRequests(serverAnswers())
    api.wire.webApp.rosters["alice"] = {
        "bob@example.org": {"name": "Bobby", "groups": ["Friends"]},
        "dave@example.org": {},
    }
    code, body = api.request("POST", "/roster_admin/refresh", ["alice"], server=serverAnswers(
        "<item jid='bob@example.org' name='Bob' subscription='both'><group>Friends</group></item>"
        "<item jid='carol@example.org' name='Carol' subscription='both'/>"))
    assert code == 200
    assert body == {"status": "ok", "message": "roster update complete", "updated": 1, "errors": 0,
                    "failures": {}}
    assert api.wire.webApp.requests["alice"] == 2


def test_refreshPushesExactlyTheChanges() -> None:
    """
    The pushes name exactly the changed, added and removed contacts, each
    with the version of the roster once it is applied: the last one's is
    the new roster's.
    """
    api, server = makeApi(), StoringServer()
    api.wire.receive("<presence from='alice@example.org/phone'/>")
    api.wire.answerRequests(server)
    api.wire.webApp.rosters["alice"] = {"bob@example.org": {"name": "Bobby"}, "dave@example.org": {}}
    d = api.http.post("http://api.invalid/roster_admin/refresh", data=b'["alice"]')
    sent = api.wire.answerRequests(server)
    api.http.flush()
    assert d.called
    pushes = [s for s in sent if s.firstChildElement() is not None and s.firstChildElement().name == "privileged_iq"]
    inner = [p.firstChildElement().firstChildElement() for p in pushes]
    assert {i["to"] for i in inner} == {"alice@example.org/phone"}
    assert {p["to"] for p in pushes} == {"alice@example.org"}
    changes = {i.query.item["jid"]: i.query.item["subscription"] for i in inner}
    assert changes == {"bob@example.org": "both", "dave@example.org": "both", "carol@example.org": "remove"}
    versions = [i.query.getAttribute("ver") for i in inner]
    assert all(versions) and len(set(versions)) == 3
    assert versions[-1] == api.wire.backend.cache.peek("alice").version


@pytest.mark.parametrize("raw, message", [
    (b"not json", "Request body is not valid JSON"),
    (b"{}", "Request body must be a JSON array of usernames"),
    (b'["alice", 3]', "Every username must be a string"),
    (b"\xff\xfe", "Request body is not valid JSON"),
])
def test_refreshBadBodies(raw: bytes, message: str) -> None:
    """
    Malformed refresh bodies get 400 with a message, and nothing is fetched.
    """
    api = makeApi()
    code, body = api.request("POST", "/roster_admin/refresh", raw=raw)
    assert (code, body) == (400, {"status": "error", "message": message})
    assert api.wire.webApp.requests == {}


def test_oversizeBodyNotStored() -> None:
    """
    A request stops storing its body past the cap and is marked too large,
    and a declared length over the cap is refused before any byte arrives.
    """
    site = makeSite(Resource(), 10)
    streamed = site.requestFactory(DummyChannel(), False)
    streamed.gotLength(None)
    streamed.handleContentChunk(b"x" * 6)
    assert not streamed.tooLarge
    streamed.handleContentChunk(b"x" * 6)
    streamed.content.seek(0)
    assert streamed.tooLarge and streamed.content.read() == b""
    declared = site.requestFactory(DummyChannel(), False)
    declared.gotLength(11)
    assert declared.tooLarge
    streamed.content.close()
    declared.content.close()


def test_refreshEmptyArray() -> None:
    """
    An empty array answers 200 at once.
    """
    api = makeApi()
    code, body = api.request("POST", "/roster_admin/refresh", [])
    assert code == 200 and body["updated"] == 0 and body["errors"] == 0


def test_refreshCountsFailures() -> None:
    """
    Invalid usernames and failed fetches count as errors; all failed is 500.
    """
    api = makeApi()
    api.wire.webApp.failures["bob"] = (500, b"down")
    code, body = api.request("POST", "/roster_admin/refresh", ["alice", "bad@name", "bob"], server=serverAnswers())
    assert code == 200 and body["updated"] == 1 and body["errors"] == 2
    assert set(body["failures"]) == {"bad@name", "bob"}
    code, body = api.request("POST", "/roster_admin/refresh", ["bob"])
    assert code == 500 and body["status"] == "error" and body["errors"] == 1


def test_refreshReportsRefusedServerWrite() -> None:
    """
    A roster the web app served but the server refused to store is an
    error of the refresh, not an update: it is cached and served, and
    remembered as unsynced for the next login or reconnection.
    """
    api = makeApi()

    def refuseWrites(iq: domish.Element) -> str | None:
        if iq.name == "iq" and iq.getAttribute("type") == "set":
            return (f"<iq type='error' from='{iq['to']}' to='{COMPONENT}' id='{iq['id']}'>"
                    "<error type='cancel'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>"
                    "</error></iq>")
        return serverAnswers()(iq)  # type: ignore[operator]

    code, body = api.request("POST", "/roster_admin/refresh", ["alice"], server=refuseWrites)
    assert (code, body["updated"], body["errors"]) == (500, 0, 1)
    assert body["failures"]["alice"].startswith("fetched and served, but the server did not store it: ")
    assert api.wire.backend.cache.peek("alice") is not None
    assert "alice" in api.wire.backend.unsynced


def test_failedFetchKeepsCachedRoster() -> None:
    """
    A refresh whose fetch fails leaves the cached roster as it was.
    """
    api = makeApi(burst="")
    api.wire.backend.getRoster("alice")
    api.wire.sent()
    before = api.wire.backend.cache.peek("alice")
    api.wire.webApp.failures["alice"] = (200, b"[1, 2]")
    code, _ = api.request("POST", "/roster_admin/refresh/alice")
    assert code == 500
    assert api.wire.backend.cache.peek("alice") is before


def test_refreshAuthorization() -> None:
    """
    With a refresh secret configured, a missing or wrong Authorization gets
    401, and is logged.
    """
    api = makeApi(refreshAuthorization="s3")
    with capturedLogs() as events:
        assert api.request("POST", "/roster_admin/refresh", ["alice"])[0] == 401
        assert api.request("POST", "/roster_admin/refresh", ["alice"], headers={"Authorization": "s4"})[0] == 401
    assert [(e["what"], e["presence"]) for e in events if e.get("outcome") == "unauthorized"] == [
        ("refresh", "missing"), ("refresh", "wrong")]
    code, _ = api.request("GET", "/roster_admin/refresh/alice", headers={"Authorization": "s3"},
                          server=serverAnswers())
    assert code == 200


@pytest.mark.parametrize("given", [
    "Bearer  s3cret", "Bearers3cret", "bearer s3cret", "Bearer s3cre", "Bearer s3cret4", "Bearer S3cret", "",
])
def test_refreshAuthorizationNearMisses(given: str) -> None:
    """
    Headers that differ from the configured value by one character, case
    or inner whitespace are refused like any wrong one.  (Whitespace around
    the value is not part of it in HTTP: the parser strips it.)
    """
    api = makeApi(refreshAuthorization="Bearer s3cret")
    code, body = api.request("POST", "/roster_admin/refresh", ["alice"], headers={"Authorization": given})
    assert (code, body) == (401, {"status": "error", "message": "Authorization failed"})


def test_authorizationComparedInConstantTime(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    Authorization headers are compared with C{hmac.compare_digest}, whose
    time does not depend on where the first difference is.
    """
    compared: list[tuple[bytes, bytes]] = []
    real = web.hmac.compare_digest
    monkeypatch.setattr(web.hmac, "compare_digest", lambda a, b: compared.append((a, b)) or real(a, b))
    api = makeApi(refreshAuthorization="Bearer s3cret")
    assert api.request("POST", "/roster_admin/refresh", ["alice"], headers={"Authorization": "Bearer x"})[0] == 401
    assert compared == [(b"Bearer x", b"Bearer s3cret")]


SECRET_UTF8 = "Bearer s\u00e9cret".encode("utf-8")


@pytest.mark.parametrize("values, presence", [
    ([SECRET_UTF8.decode("utf-8").encode("latin-1")], "wrong"),
    ([b"\xff\xfe\x80 \xc3"], "wrong"),
    ([SECRET_UTF8, SECRET_UTF8], "repeated"),
    ([b"Bearer x", SECRET_UTF8], "repeated"),
    ([SECRET_UTF8, b"Bearer x"], "repeated"),
    ([SECRET_UTF8, b""], "repeated"),
])
def test_badAuthorizationBytesRefused(values: list[bytes], presence: str) -> None:
    """
    An Authorization header that is not UTF-8 (Latin-1, or no text at all)
    is a 401 like any wrong one, and two or more are a 401 whatever they
    hold (the last one no longer wins): one warning each, never a 500 or a
    traceback.
    """
    api = makeApi(refreshAuthorization=SECRET_UTF8.decode("utf-8"))
    with capturedLogs() as events:
        code, body = api.request("POST", "/roster_admin/refresh", ["alice"], headers={b"Authorization": values})
    assert (code, body) == (401, {"status": "error", "message": "Authorization failed"})
    assert [(e["log_level"].name, e.get("presence")) for e in events] == [("warn", presence)]
    assert api.wire.webApp.requests == {}


def test_nonASCIIAuthorizationAccepted() -> None:
    """
    A configured secret that is not ASCII matches the same text sent as
    UTF-8 bytes.
    """
    api = makeApi(refreshAuthorization=SECRET_UTF8.decode("utf-8"))
    code, _ = api.request("POST", "/roster_admin/refresh", ["alice"], headers={b"Authorization": [SECRET_UTF8]},
                          server=serverAnswers())
    assert code == 200


@pytest.mark.parametrize("values", [[b"Bearer kick-secr\xe9t"], [KICK_AUTH.encode(), KICK_AUTH.encode()]])
def test_kickBadAuthorizationBytesRefused(values: list[bytes]) -> None:
    """
    The kick endpoint refuses bad bytes and repeated Authorization headers
    with a 401 too, counted as such, and sends nothing.
    """
    api = makeApi()
    code, body = api.request("POST", "/muc_kick", {"nickname": "x", "muc": ROOM}, headers={b"Authorization": values})
    assert (code, body) == (401, {"error": "Authorization failed"})
    assert api.wire.sent() == []
    assert api.http._agent._rootResource.children[b"muc_kick"].outcomes == {"401": 1}


def kickAnswers(*conditions: str | None) -> Any:
    """
    Answer kick iqs in turn with these error conditions (None: success),
    and joins with a self-presence, as a room whose service lets occupants
    moderate.
    """
    remaining = list(conditions)

    def reply(iq: domish.Element) -> str | None:
        if iq.name == "presence":
            if iq.getAttribute("type") is not None:
                return None
            return (f"<presence from='{iq['to']}' to='{COMPONENT}'><x xmlns='http://jabber.org/protocol/muc#user'>"
                    "<item role='moderator'/><status code='110'/></x></presence>")
        condition = remaining.pop(0)
        if condition is None:
            return f"<iq type='result' from='{iq['to']}' to='{COMPONENT}' id='{iq['id']}'/>"
        kind = "modify" if condition == "bad-request" else "cancel"
        return (f"<iq type='error' from='{iq['to']}' to='{COMPONENT}' id='{iq['id']}'><error type='{kind}'>"
                f"<{condition} xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>")

    return reply


def test_kickSuccess() -> None:
    """
    A kick sends role='none' with the nick and reason, and answers 200.
    """
    api = makeApi()
    d = api.http.post("http://api.invalid/muc_kick", headers={"Authorization": KICK_AUTH},
                      data=json.dumps({"nickname": "Alice", "muc": ROOM, "reason": "spam"}).encode())
    api.http.flush()
    [iq] = api.wire.sent()
    assert iq["to"] == ROOM
    item = iq.query.item
    assert (iq.query.uri, item["nick"], item["role"], str(item.reason)) == (
        "http://jabber.org/protocol/muc#admin", "Alice", "none", "spam")
    api.wire.receive(kickAnswers(None)(iq))
    api.http.flush()
    response = Api.result(d)
    assert response.code == 200


def test_kickJoinsWhenRefusedThenLeaves() -> None:
    """
    Refused as a non-occupant, the component joins the room, kicks again,
    and leaves.
    """
    api = makeApi()
    d = api.http.post("http://api.invalid/muc_kick", headers={"Authorization": KICK_AUTH},
                      data=json.dumps({"nickname": "Alice", "muc": ROOM}).encode())
    api.http.flush()
    [kick] = api.wire.sent()
    api.wire.receive(kickAnswers("not-allowed")(kick))
    [join] = api.wire.sent()
    assert join.name == "presence" and join["to"] == f"{ROOM}/rosteradmin"
    api.wire.receive(f"<presence from='{ROOM}/rosteradmin' to='{COMPONENT}'>"
                     "<x xmlns='http://jabber.org/protocol/muc#user'><item role='moderator'/>"
                     "<status code='110'/></x></presence>")
    [retry] = api.wire.sent()
    api.wire.receive(kickAnswers(None)(retry))
    [leave] = api.wire.sent()
    assert leave.name == "presence" and leave["type"] == "unavailable"
    api.http.flush()
    assert Api.result(d).code == 200


@pytest.mark.parametrize("condition, status", [("item-not-found", 404), ("not-acceptable", 404),
                                               ("bad-request", 502)])
def test_kickErrorsMapped(condition: str, status: int) -> None:
    """
    The room's error conditions map to the status codes of the API table
    of docs/webapp.md (ejabberd answers a nickname the room does not hold with
    not-acceptable).
    """
    api = makeApi()
    code, body = api.request("POST", "/muc_kick", {"nickname": "x", "muc": ROOM},
                             headers={"Authorization": KICK_AUTH}, server=kickAnswers(condition))
    assert code == status and "error" in body


def test_kickRefusedEvenAsOccupant() -> None:
    """
    A kick still refused after joining the room gets 403, and the component
    leaves the room.
    """
    api = makeApi()
    code, body = api.request("POST", "/muc_kick", {"nickname": "x", "muc": ROOM},
                             headers={"Authorization": KICK_AUTH}, server=kickAnswers("forbidden", "forbidden"))
    assert (code, body) == (403, {"error": "Kick refused: forbidden"})
    assert api.wire.component.kicker.joined == set()


def test_kickTimeout() -> None:
    """
    A room that never answers gets 504 after the IQ timeout.
    """
    api = makeApi()
    d = api.http.post("http://api.invalid/muc_kick", headers={"Authorization": KICK_AUTH},
                      data=json.dumps({"nickname": "x", "muc": ROOM}).encode())
    api.http.flush()
    api.wire.sent()
    api.wire.clock.advance(api.wire.config.iq_timeout + 1)
    api.http.flush()
    response = Api.result(d)
    assert response.code == 504


@pytest.mark.parametrize("headers, body, status, expected", [
    ({}, {"nickname": "x", "muc": ROOM}, 401, {"error": "Authorization failed"}),
    ({"Authorization": KICK_AUTH[:-1] + "T"}, {"nickname": "x", "muc": ROOM}, 401, {"error": "Authorization failed"}),
    ({"Authorization": KICK_AUTH.lower()}, {"nickname": "x", "muc": ROOM}, 401, {"error": "Authorization failed"}),
    ({"Authorization": KICK_AUTH}, {"muc": ROOM}, 400, {"error": "Missing nickname and/or MUC"}),
    ({"Authorization": KICK_AUTH}, {"nickname": "x"}, 400, {"error": "Missing nickname and/or MUC"}),
    ({"Authorization": KICK_AUTH}, ["x"], 400, {"error": "Request body must be a JSON object"}),
    ({"Authorization": KICK_AUTH}, {"nickname": "x", "muc": "room@conf/nick"}, 400,
     {"error": "muc must be the bare JID of a room"}),
])
def test_kickBadRequests(headers: dict[str, str], body: Any, status: int, expected: Any) -> None:
    """
    Bad kick requests get their status and error body, and nothing is sent.
    """
    api = makeApi()
    assert api.request("POST", "/muc_kick", body, headers=headers) == (status, expected)
    assert api.wire.sent() == []


@pytest.mark.parametrize("raw, expected", [
    (b'{"nickname": "bo\\u0000b", "muc": "%s"}', "nickname is not a valid room nickname"),
    (b'{"nickname": "bob\\ud800", "muc": "%s"}', "nickname is not a valid room nickname"),
    (b'{"nickname": "bob\\ufffe", "muc": "%s"}', "nickname is not a valid room nickname"),
    (b'{"nickname": "bob", "muc": "%s", "reason": "spam\\u0007"}',
     "reason must be at most 1024 characters of text XML can carry"),
    (b'{"nickname": "bob", "muc": "%s", "reason": "\\udfff"}',
     "reason must be at most 1024 characters of text XML can carry"),
    (b'{"nickname": "bob", "muc": "%s", "reason": "' + b"x" * 1025 + b'"}',
     "reason must be at most 1024 characters of text XML can carry"),
])
def test_kickTextXMLCannotCarry(raw: bytes, expected: str) -> None:
    """
    A nickname or reason that no stanza can carry (control characters, lone
    surrogates, U+FFFE) or an overlong reason is a 400: sent on, it would
    make the server close the component's stream.
    """
    api = makeApi()
    assert api.request("POST", "/muc_kick", raw=raw.replace(b"%s", ROOM.encode()),
                       headers={"Authorization": KICK_AUTH}) == (400, {"error": expected})
    assert api.wire.sent() == []


def test_kickNicknameResourceprepped() -> None:
    """
    The nickname is kicked as the room knows it, after resourceprep
    (XEP-0045 §7.2): a zero-width space is dropped.
    """
    api = makeApi()
    api.http.post("http://api.invalid/muc_kick", headers={"Authorization": KICK_AUTH},
                  data=json.dumps({"nickname": "Bob\u200b", "muc": ROOM}).encode())
    api.http.flush()
    [iq] = api.wire.sent()
    assert iq.query.item["nick"] == "Bob"


def brokenKick(api: Api) -> tuple[int, Any]:
    """
    A kick request whose kicker fails unexpectedly (a bug, not a room's
    refusal).
    """

    def broken(room: str, nick: str, reason: str | None) -> None:
        raise RuntimeError("bug")

    api.wire.component.kicker.kick = broken
    return api.request("POST", "/muc_kick", {"nickname": "x", "muc": ROOM}, headers={"Authorization": KICK_AUTH})


def test_kickInternalErrorCounted() -> None:
    """
    A kick that fails unexpectedly answers a JSON 500 and is counted under
    status 500 in the metrics.
    """
    api = makeApi()
    code, body = brokenKick(api)
    assert (code, body) == (500, {"error": "Internal error"})
    d = api.http.get("http://api.invalid/metrics")
    api.http.flush()
    assert 'rosteradmin_kicks_total{status="500"} 1.0' in Api.result(Api.result(d).text())


def test_kickWhileDisconnected() -> None:
    """
    A kick while the component is disconnected gets 503 at once.
    """
    wire = ComponentOnWire(WebApp())
    api = Api(wire)
    code, body = api.request("POST", "/muc_kick", {"nickname": "x", "muc": ROOM},
                             headers={"Authorization": KICK_AUTH})
    assert code == 503 and body == {"error": "Not connected to the XMPP server"}


def test_healthz() -> None:
    """
    healthz is 503 before the handshake and 200 after, with details.
    """
    wire = ComponentOnWire(WebApp())
    api = Api(wire)
    code, body = api.request("GET", "/healthz")
    assert code == 503 and body["connected"] is False
    wire.handshake()
    code, body = api.request("GET", "/healthz")
    assert code == 200 and body["connected"] is True and body["cached_users"] == 0
    assert body["roster_sync_error"] is None


def test_metrics() -> None:
    """
    /metrics serves Prometheus text with the live counters, and the release
    running.
    """
    api = makeApi(burst="")
    api.wire.receive(f"<iq type='get' from='alice@example.org/r' to='{COMPONENT}' id='q'>"
                     f"<query xmlns='{NS_ROSTER}'/></iq>")
    api.wire.sent()
    api.wire.receive("<presence from='alice@example.org/phone'/>")
    d = api.http.get("http://api.invalid/metrics")
    api.http.flush()
    text = Api.result(Api.result(d).text())
    assert "rosteradmin_cache_misses_total 1.0" in text
    assert "rosteradmin_roster_queries_total 1.0" in text
    assert 'rosteradmin_fetch_seconds_count{outcome="ok"} 1.0' in text
    assert "rosteradmin_connected 1.0" in text
    assert "rosteradmin_online_resources 1.0" in text
    assert f'rosteradmin_build_info{{version="{__version__}"}} 1.0' in text


def test_unknownPathAndMethod() -> None:
    """
    Unknown paths get a JSON 404 and wrong methods a JSON 405.
    """
    api = makeApi()
    assert api.request("GET", "/nope") == (404, {"error": "No such resource"})
    assert api.request("DELETE", "/muc_kick")[0] == 405


@pytest.mark.parametrize("method, path, allowed", [
    ("GET", "/roster_admin/refresh", "POST"), ("HEAD", "/roster_admin/refresh", "POST"),
    ("DELETE", "/roster_admin/refresh", "POST"), ("GET", "/roster_admin/refresh/", "POST"),
    ("DELETE", "/roster_admin/refresh/alice", "GET, POST"), ("GET", "/muc_kick", "POST"),
    ("PUT", "/roster_admin/sync", "DELETE, GET, HEAD, POST"), ("POST", "/healthz", "GET, HEAD"),
    ("POST", "/metrics", "GET, HEAD"), ("OPTIONS", "/nope", "DELETE, GET, HEAD, PATCH, POST, PUT"),
])
def test_methodNotAllowedSaysWhatIs(method: str, path: str, allowed: str) -> None:
    """
    Every 405 lists in C{Allow} the methods its path takes (RFC 9110
    15.5.6): a list of users is refreshed only with C{POST}, one user also
    with C{GET}.  Nothing is refreshed, authorized or not.
    """
    api = makeApi(refreshAuthorization="s3")
    for headers in ({"Authorization": "s3"}, {}):
        d = api.http.request(method, "http://api.invalid" + path, data=b'["alice"]', headers=headers)
        api.http.flush()
        response = Api.result(d)
        assert (response.code, response.headers.getRawHeaders("allow")) == (405, [allowed])
    assert api.wire.webApp.requests == {} and api.wire.sent() == []


def test_refreshBelowUserIsNotFound() -> None:
    """
    A path below a user's is no resource, whatever the method: a 404 for
    C{GET} as for C{POST}, not a 405 whose C{Allow} could name nothing.
    """
    api = makeApi()
    for method in ("GET", "POST"):
        assert api.request(method, "/roster_admin/refresh/alice/x") == (
            404, {"status": "error", "message": "No such resource"})
    assert api.wire.webApp.requests == {}


def test_refreshPathUsernameDecodedOnce() -> None:
    """
    C{/roster_admin/refresh/<username>} takes the path segment as UTF-8
    after one percent-decoding: C{j%C3%BCrgen} is jürgen, and C{a%2541}
    is the user C{a%41}, not C{aa}.
    """
    api = makeApi({"j\u00fcrgen": {"bob@example.org": {}}, "a%41": {"bob@example.org": {}}})
    assert api.request("GET", "/roster_admin/refresh/j%C3%BCrgen", server=serverAnswers())[0] == 200
    assert api.request("GET", "/roster_admin/refresh/a%2541", server=serverAnswers())[0] == 200
    assert api.wire.webApp.requests == {"j\u00fcrgen": 1, "a%41": 1}
    assert api.request("GET", "/roster_admin/refresh/%FF") == (
        400, {"status": "error", "message": "Username is not valid UTF-8"})


@pytest.mark.parametrize("method, path, status", [
    ("GET", "/", 404), ("HEAD", "/", 404), ("POST", "/", 404),
    ("GET", "/roster_admin", 404), ("HEAD", "/roster_admin", 404), ("POST", "/roster_admin", 404),
    ("POST", "/metrics", 405), ("OPTIONS", "/metrics", 405), ("GET", "/metrics/x", 404),
    ("GET", "/healthz/foo", 404), ("POST", "/muc_kick/zzz", 404), ("PUT", "/healthz", 405),
])
def test_everyErrorIsJSON(method: str, path: str, status: int) -> None:
    """
    Every path and method outside the routes gets its status as JSON, never
    twisted.web's HTML page (or, for HEAD, a 500), and nothing is kicked.
    """
    api = makeApi()
    d = api.http.request(method, "http://api.invalid" + path, headers={"Authorization": KICK_AUTH},
                         data=json.dumps({"nickname": "x", "muc": ROOM}).encode())
    api.http.flush()
    response = Api.result(d)
    assert response.code == status
    assert response.headers.getRawHeaders("content-type") == ["application/json"]
    body = Api.result(response.content())
    if method != "HEAD":
        assert json.loads(body) == {"error": {404: "No such resource", 405: "Method not allowed"}[status]}
    assert api.wire.sent() == []


def test_headWhereGetIsSafe() -> None:
    """
    HEAD is answered where GET only reads (health, metrics), with GET's
    status and no body.  It refreshes nothing (HEAD must be safe): the
    405 lists what the route allows.
    """
    api = makeApi()
    for path in ["/healthz", "/metrics"]:
        d = api.http.head("http://api.invalid" + path)
        api.http.flush()
        response = Api.result(d)
        assert (path, response.code, Api.result(response.content())) == (path, 200, b"")
    for path, allowed in [("/roster_admin/refresh/alice", "GET, POST"), ("/muc_kick", "POST")]:
        d = api.http.head("http://api.invalid" + path)
        api.http.flush()
        response = Api.result(d)
        assert (response.code, response.headers.getRawHeaders("allow")) == (405, [allowed])
    assert api.wire.webApp.requests == {} and api.wire.sent() == []


def test_syncOfUsersJoinsTheRunningPass() -> None:
    """
    POST /roster_admin/sync with usernames while a pass runs answers
    "joined": they are part of that pass, counted in its progress, and
    synced.
    """
    api = makeApi({"alice": ALICE_ROSTER, "newcomer": ALICE_ROSTER}, refreshAuthorization="s3")
    api.wire.webApp.hold = True
    auth = {"Authorization": "s3"}
    code, body = api.request("POST", "/roster_admin/sync", ["alice"], headers=auth)
    assert (code, body["status"], body["sync"]["listed"]) == (202, "started", 1)
    code, body = api.request("POST", "/roster_admin/sync", ["newcomer"], headers=auth)
    assert (code, body["status"], body["sync"]["kind"], body["sync"]["listed"]) == (202, "joined", "users", 2)
    assert api.wire.webApp.requests["newcomer"] == 1
    api.wire.webApp.release()
    api.wire.answerRequests(serverAnswers())
    code, body = api.request("GET", "/roster_admin/sync", headers=auth)
    assert body["status"] == "idle" and (body["sync"]["synced"], body["sync"]["failed"]) == (2, 0)


def test_refreshOfManyUsersPreparesThemInSlices(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    A refresh naming many users prepares them (nodeprep) and records them
    as pending a slice at a time, the reactor getting a turn between
    slices: a refresh of 100,000 users is seconds of that work.
    """
    monkeypatch.setattr(slicing, "SLICE_SECONDS", 0.0)  # every chunk spends the budget
    api = makeApi({})
    backend = api.wire.backend
    names = [f"User{i}" for i in range(200)]
    d = backend.refresh(names)
    assert backend.state.pendingCount() == 64 and sum(api.wire.webApp.requests.values()) == 0
    api.wire.clock.advance(0)
    assert backend.state.pendingCount() == 200
    api.wire.answerRequests(serverAnswers())
    assert Api.result(d).updated == 200
    assert sorted(api.wire.webApp.requests) == sorted(name.lower() for name in names)


def test_syncOfManyUsersRecordsThemInSlices(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    POST /roster_admin/sync with many usernames records them as pending a
    slice at a time, the reactor getting a turn between slices, and
    answers once every one is recorded (synced even if the process dies
    next).
    """
    monkeypatch.setattr(slicing, "SLICE_SECONDS", 0.0)  # every chunk spends the budget
    api = makeApi({}, refreshAuthorization="s3")
    api.wire.webApp.hold = True
    names = [f"user{i}" for i in range(200)]
    answers: list[Any] = []
    api.http.post("http://api.invalid/roster_admin/sync", data=json.dumps(names).encode(),
                  headers={"Authorization": "s3"}).addBoth(answers.append)
    api.http.flush()
    assert answers == [] and api.wire.backend.state.pendingCount() == 64
    api.wire.clock.advance(0)
    api.http.flush()
    assert api.wire.backend.state.pendingCount() == 200
    [response] = answers
    body = json.loads(Api.result(response.content()))
    assert (response.code, body["status"], body["sync"]["listed"]) == (202, "started", 200)
