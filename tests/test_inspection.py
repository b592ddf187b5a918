"""
Tests for one user's whole picture: C{GET /roster_admin/users/<username>}
over the real backend and component (the component's stream on a
StringTransport), and the verdict's words.
"""

from __future__ import annotations

import calendar
import time
from pathlib import Path
from typing import Any

from twisted.logger import capturedLogs
from twisted.words.xish import domish

from rosteradmin.inspection import Inspector, Schedule, _duration
from rosteradmin.state import SyncState
from tests.helpers import COMPONENT, PERMISSIONS_2, ComponentOnWire, WebApp, makeConfig
from tests.test_api import Api, makeApi
from tests.test_component import ALICE_ROSTER, StoringServer

USERS = "/roster_admin/users/"


def loggedIn(**kw: Any) -> tuple[Api, StoringServer]:
    """
    Alice online from her phone, her roster fetched, cached and stored in
    the server.
    """
    api, server = makeApi(**kw), StoringServer()
    api.wire.receive("<presence from='alice@example.org/phone'/>")
    api.wire.answerRequests(server)
    assert api.wire.backend.cache.peek("alice") is not None
    return api, server


def inspect(api: Api, server: Any, username: str = "alice", **kw: Any) -> tuple[int, Any]:
    return api.request("GET", USERS + username, server=server, **kw)


def test_agreementSaysNothingIsWrong() -> None:
    """
    When the web app, the cache and the server hold one roster, every
    section shows it, the differences are empty and the verdict says
    nothing is wrong; the online resource is listed.
    """
    api, server = loggedIn()
    code, body = inspect(api, server)
    assert code == 200
    version = api.wire.backend.cache.peek("alice").version
    assert body["status"] == "ok" and body["findings"] == []
    assert body["verdict"] == ("nothing is wrong: the web app, the cache and the server hold the same roster "
                               f"(2 contacts, version {version})")
    contacts = {"bob@example.org": {"name": "Bob", "groups": ["Friends"]},
                "carol@example.org": {"name": "Carol", "groups": []}}
    for section in ("web_app", "cache", "server"):
        assert body[section]["roster"] == {"version": version, "count": 2, "contacts": contacts}
    assert body["server"]["recorded_version"] == version and body["server"]["holds_recorded"] is True
    assert body["server"]["not_both"] == []
    empty = {"added": [], "removed": [], "changed": []}
    assert body["differences"] == {"cache_to_web_app": empty, "server_to_web_app": empty, "server_to_cache": empty}
    assert body["resources"]["online"] == ["alice@example.org/phone"]
    assert body["resources"]["presence_shared"] is True
    assert body["state"]["recorded_version"] == version and body["state"]["unsynced"] is False
    assert body["state"]["pending_since"] is None and body["leading"] is True


def test_lastSyncedFromTheStateFile(tmp_path: Path) -> None:
    """
    With a state file, the state section says when the server's roster was
    last synced (read back or written), as the file recorded it.
    """
    api = Api(ComponentOnWire(WebApp({"alice": ALICE_ROSTER}), state=SyncState(str(tmp_path / "state.sqlite"))))
    api.wire.handshake(PERMISSIONS_2)
    server = StoringServer()
    before = time.time()
    api.wire.receive("<presence from='alice@example.org/phone'/>")
    api.wire.answerRequests(server)
    code, body = inspect(api, server)
    assert code == 200
    synced = calendar.timegm(time.strptime(body["state"]["synced_at"], "%Y-%m-%dT%H:%M:%SZ"))
    assert int(before) <= synced <= time.time()
    api.wire.backend.state.close()


def test_webAppChangeWithoutRefresh() -> None:
    """
    A roster the web app changed without a refresh is shown as the
    difference between the cache and the web app, and the verdict names
    the refresh that fixes it; inspecting changes nothing (the cache keeps
    the old roster, nothing is written into the server).
    """
    api, server = loggedIn()
    before = api.wire.backend.cache.peek("alice")
    api.wire.webApp.rosters["alice"] = {"bob@example.org": {"name": "Bobby", "groups": ["Friends"]},
                                        "dave@example.org": {}}
    stored = dict(server.items["alice@example.org"])
    code, body = inspect(api, server)
    assert code == 200 and body["status"] == "problem"
    assert body["differences"]["cache_to_web_app"] == {
        "added": [{"jid": "dave@example.org", "name": None, "groups": []}],
        "removed": ["carol@example.org"],
        "changed": [{"jid": "bob@example.org", "from": {"name": "Bob", "groups": ["Friends"]},
                     "to": {"name": "Bobby", "groups": ["Friends"]}}]}
    assert body["differences"]["server_to_cache"] == {"added": [], "removed": [], "changed": []}
    assert body["verdict"] == (
        "the web app changed the roster since rosteradmin last fetched it (1 to add, 1 to change, 1 to remove): "
        "the user's clients show the old one until a refresh (POST /roster_admin/refresh/alice)")
    assert api.wire.backend.cache.peek("alice") is before
    assert server.items["alice@example.org"] == stored


def test_serverDriftAndWhatRepairsIt() -> None:
    """
    A server roster changed behind rosteradmin's back (an item removed, a
    subscription changed) is shown against the cache and the web app, and
    the verdict says the online check repairs it, and when, and that a
    refresh does not (the state records the server as current).
    """
    api, server = loggedIn()
    stored = server.items["alice@example.org"]
    del stored["carol@example.org"]
    stored["bob@example.org"] = ("<item xmlns='jabber:iq:roster' jid='bob@example.org' name='Bob' subscription='to'>"
                                 "<group>Friends</group></item>")
    inspector = Inspector(api.wire.backend, api.wire.component.resources, 20.0,
                          Schedule(lambda: 5 * 3600 + 720.0, lambda: 42.0))
    d = inspector.inspect("Alice")
    api.wire.answerRequests(server)
    inspection = Api.result(d)
    body = inspection.toJSON()
    assert body["differences"]["server_to_cache"] == {
        "added": [{"jid": "carol@example.org", "name": "Carol", "groups": []}], "removed": [], "changed": [],
        "subscription": ["bob@example.org"]}
    assert body["server"]["not_both"] == ["bob@example.org"] and body["server"]["holds_recorded"] is False
    assert inspection.verdict() == (
        "the server does not store the roster served (1 to add, 1 with a subscription other than both): "
        "presence follows the server's roster; the online check repairs it in 42 s (a refresh does not: the state "
        "records the server as holding the web app's roster)")
    assert body["schedule"] == {"reconciliation_in": 5 * 3600 + 720.0, "online_check_in": 42.0}


def test_serverDriftOfAnOfflineUserRepairedByReconciliation() -> None:
    """
    For a user not online, the verdict names the next reconciliation pass
    instead of the online check; without any scheduled pass, the verdict
    says nothing is.
    """
    api, server = loggedIn()
    api.wire.receive("<presence type='unavailable' from='alice@example.org/phone'/>")
    del server.items["alice@example.org"]["carol@example.org"]
    inspector = Inspector(api.wire.backend, api.wire.component.resources, 20.0,
                          Schedule(lambda: 5 * 3600 + 720.0, lambda: 42.0))
    d = inspector.inspect("alice")
    api.wire.answerRequests(server)
    assert Api.result(d).verdict() == (
        "the server does not store the roster served (1 to add): presence follows the server's roster; the next "
        "reconciliation pass repairs it in 5 h 12 min (a refresh does not: the state records the server as holding "
        "the web app's roster)")
    d = Inspector(api.wire.backend, api.wire.component.resources, 20.0).inspect("alice")
    api.wire.answerRequests(server)
    assert Api.result(d).verdict().endswith("roster; nothing scheduled repairs it (a refresh does not: the state "
                                            "records the server as holding the web app's roster)")


def test_serverDriftWithAWebAppChangeRepairedByARefresh() -> None:
    """
    Where the web app's roster is not the one the state records the server
    holds, a refresh reads the server back: the verdict names it first.
    """
    api, server = loggedIn()
    del server.items["alice@example.org"]["carol@example.org"]
    api.wire.webApp.rosters["alice"] = {**ALICE_ROSTER, "dave@example.org": {}}
    inspector = Inspector(api.wire.backend, api.wire.component.resources, 20.0,
                          Schedule(lambda: 3600.0, lambda: 42.0))
    d = inspector.inspect("alice")
    api.wire.answerRequests(server)
    assert Api.result(d).findings()[1] == (
        "the server does not store the roster served (1 to add): presence follows the server's roster; a refresh "
        "repairs it now, the online check in 42 s")


def test_webAppDownStillAnswers() -> None:
    """
    A web app that fails is a section saying why, and the verdict says the
    cached roster is served meanwhile; the cache and the server are still
    compared.
    """
    api, server = loggedIn()
    api.wire.webApp.failures["alice"] = (500, b"down")
    code, body = inspect(api, server)
    assert code == 200
    assert body["web_app"] == {"status": "failed", "error": "web app answered HTTP 500: 'down'"}
    assert body["verdict"].startswith("the web app's roster could not be fetched (web app answered HTTP 500: "
                                      "'down'): the user's clients are served the cached roster until it answers")
    assert body["differences"]["cache_to_web_app"] is None
    assert body["differences"]["server_to_cache"] == {"added": [], "removed": [], "changed": []}


def test_invalidUsername() -> None:
    """
    A username that cannot be a JID node is a 400, and nothing is read.
    """
    api = makeApi()
    code, body = api.request("GET", USERS + "bad@name")
    assert code == 400 and body["status"] == "error" and "invalid username 'bad@name'" in body["message"]
    code, body = api.request("GET", USERS + "%FF")
    assert (code, body["message"]) == (400, "Username is not valid UTF-8")
    assert api.wire.webApp.requests == {}


def test_unknownUser() -> None:
    """
    A user the web app does not know (404) and of whom nothing is held is
    a 400 saying so.
    """
    api = makeApi()
    api.wire.webApp.failures["zoe"] = (404, b"")
    code, body = inspect(api, StoringServer(), "zoe")
    assert code == 400
    assert body["message"].startswith("unknown user 'zoe': the web app does not know it")


def test_userTheWebAppDroppedButTheServerStores() -> None:
    """
    A user the web app no longer knows while the server stores contacts
    for it is shown, with a verdict saying rosteradmin leaves that roster
    as it is.
    """
    api, server = loggedIn()
    api.wire.webApp.failures["alice"] = (404, b"")
    code, body = inspect(api, server)
    assert code == 200 and body["web_app"]["status"] == "unknown_user"
    assert body["verdict"] == (
        "the web app does not know this user (HTTP 404): '', yet the server stores 2 contacts: rosteradmin leaves "
        "the roster of a user the web app does not know as it is; have the web app answer {} for the user, then "
        "refresh it")


def test_authorizationAsForRefresh() -> None:
    """
    The route takes the refresh secret.
    """
    api, server = loggedIn(refreshAuthorization="s3")
    code, _ = inspect(api, server, headers={"Authorization": "wrong"})
    assert code == 401
    code, body = inspect(api, server, headers={"Authorization": "s3"})
    assert code == 200 and body["status"] == "ok"


def test_notReadWithinTheDeadline() -> None:
    """
    When the rosters are not read in time (a web app that hangs), the
    inspection still comes, with what is held and a verdict saying so; the
    late reading is dropped.
    """
    api, server = loggedIn()
    api.wire.webApp.hold = True
    d = Inspector(api.wire.backend, api.wire.component.resources, 5.0).inspect("alice")
    api.wire.answerRequests(server)
    api.wire.clock.advance(5)
    body = Api.result(d).toJSON()
    assert body["web_app"] == {"status": "not_read", "error": "no answer within 5 s"}
    assert body["server"]["status"] == "not_read"
    assert body["cache"]["status"] == "cached"
    assert body["verdict"].startswith("the web app's and the server's rosters were not read within 5 s")
    api.wire.clock.advance(api.config.fetch_timeout)
    api.wire.webApp.release()


def test_disconnectedServer() -> None:
    """
    Without a connection the server's section says it was not read, and
    the verdict says so.
    """
    api = Api(ComponentOnWire(WebApp({"alice": ALICE_ROSTER})))
    code, body = api.request("GET", USERS + "alice")
    assert code == 200
    assert body["server"]["status"] == "not_read"
    assert body["cache"] == {"status": "not_cached"}
    assert "the server's stored roster could not be read" in body["verdict"]


def test_failedWriteVerdict() -> None:
    """
    A user whose write the server refused is unsynced, and the verdict
    says when rosteradmin writes it again.
    """
    api = makeApi()
    api.wire.receive("<presence from='alice@example.org/phone'/>")

    def refuseWrites(iq: domish.Element) -> str | None:
        if iq.name == "iq" and iq.getAttribute("type") == "set":
            return (f"<iq type='error' from='{iq['to']}' to='{COMPONENT}' id='{iq['id']}'>"
                    "<error type='cancel'><not-allowed xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>")
        return StoringServer()(iq)

    api.wire.answerRequests(refuseWrites)
    code, body = inspect(api, refuseWrites)
    assert code == 200 and body["state"]["unsynced"] is True
    assert body["verdict"] == (
        "the server does not store the roster served (2 to add): its write failed; rosteradmin writes it at the "
        "next connection or the user's next login, or now by a refresh")


def test_clientsBehind() -> None:
    """
    A client whose pushes are not answered yet is named in the verdict.
    """
    api, server = loggedIn()
    api.wire.webApp.rosters["alice"] = {"dave@example.org": {}}
    # The refresh's pushes to the phone stay unanswered.
    api.request("POST", "/roster_admin/refresh/alice",
                server=lambda iq: None if iq.firstChildElement().name == "privileged_iq" else server(iq))
    code, body = inspect(api, server)
    assert code == 200
    assert body["resources"]["clients"][0]["jid"] == "alice@example.org/phone"
    assert body["resources"]["clients"][0]["sending"] is True
    assert body["verdict"].startswith("1 of the user's clients do not show the roster served yet "
                                      "(alice@example.org/phone)")


def test_duration() -> None:
    """
    Delays read as seconds, minutes, or hours and minutes.
    """
    assert [_duration(s) for s in (0.4, 59, 60, 3599, 3600, 18720)] == ["0 s", "59 s", "1 min", "59 min",
                                                                          "1 h", "5 h 12 min"]


def test_refusedRoster() -> None:
    """
    A roster too large for one answer under the server's stanza limit is
    named in the state section and the verdict, with its fix.
    """
    roster = {f"user{n}@example.org": {"name": f"User {n}", "groups": ["Friends"]} for n in range(400)}
    wire = ComponentOnWire(WebApp({"alice": roster}), makeConfig(max_stanza_bytes=16 * 1024))
    wire.handshake(PERMISSIONS_2)
    api, server = Api(wire), StoringServer()
    with capturedLogs():
        api.request("POST", "/roster_admin/refresh/alice", server=server)
        code, body = inspect(api, server)
    assert code == 200 and "400 contacts" in body["state"]["refused"]
    assert body["verdict"] == (f"the web app's roster is refused: {body['state']['refused']} (raise the server's "
                               "stanza limit and --max-stanza-bytes together, or have the web app serve a smaller "
                               "one)")
