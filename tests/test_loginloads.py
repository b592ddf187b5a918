"""
Tests for the server's roster loads at login (contrib's
mod_rosteradmin_roster asks before a login loads the user's roster): on
the real component stream over a StringTransport.
"""

from __future__ import annotations

from twisted.logger import capturedLogs
from twisted.words.xish import domish

from rosteradmin.rosterwrites import NS_BULK_ROSTER
from tests.helpers import COMPONENT, DOMAIN, WebApp
from tests.test_component import connected, serverAnswers


def load(user: str = "alice", sender: str = DOMAIN, stanzaID: str = "l1") -> str:
    return (f"<iq type='get' from='{sender}' to='{COMPONENT}' id='{stanzaID}'>"
            f"<query xmlns='{NS_BULK_ROSTER}'><load user='{user}'/></query></iq>")


def answers(sent: list[domish.Element]) -> list[domish.Element]:
    return [s for s in sent if s.getAttribute("to") == DOMAIN]


def test_unsyncedUserFetchedAndWrittenBeforeTheAnswer() -> None:
    """
    A user the state does not know: the roster is fetched, the stored
    roster read and each item written, and only then is the load answered
    (an empty result), so the login that waits for it loads the web app's
    roster.
    """
    wire = connected()
    wire.receive(load())
    sent = wire.answerRequests(serverAnswers())
    assert [(s["type"], s["to"]) for s in sent] == [
        ("get", "alice@example.org"), ("set", "alice@example.org"), ("set", "alice@example.org"),
        ("result", DOMAIN)]
    reply = sent[-1]
    assert (reply["id"], reply["from"], reply.firstChildElement()) == ("l1", COMPONENT, None)
    assert wire.webApp.requests["alice"] == 1
    assert wire.backend.state.serverVersion("alice") == wire.backend.cache.peek("alice").version


def test_syncedUserAnsweredAtOnce() -> None:
    """
    A user whose stored roster the state records (written by an earlier
    run, say): answered at once, with no fetch and no read.
    """
    wire = connected()
    wire.backend.state.recordServer("alice", "v1")
    wire.receive(load())
    [reply] = wire.sent()
    assert (reply["type"], reply["to"], reply["id"]) == ("result", DOMAIN, "l1")
    assert wire.webApp.requests["alice"] == 0


def test_fetchFailureAnswersAnError() -> None:
    """
    The web app fails: the load gets internal-server-error (type wait), and
    the login goes on with what the server stores.
    """
    webApp = WebApp()
    webApp.failures["alice"] = (500, b"oops")
    wire = connected(webApp)
    with capturedLogs():
        wire.receive(load())
        [reply] = answers(wire.answerRequests(serverAnswers()))
    assert reply["type"] == "error" and reply.error["type"] == "wait"
    assert reply.error.firstChildElement().name == "internal-server-error"


def test_onlyTheDomainAsks() -> None:
    """
    A load from anyone but the managed domain itself (a user's client) is
    no load: nothing is fetched.
    """
    wire = connected()
    wire.receive(load(sender="mallory@example.org/x"))
    assert all(s.getAttribute("type") != "result" for s in wire.sent())
    assert wire.webApp.requests["alice"] == 0


def test_invalidUserRefused() -> None:
    """
    A username that is not a valid JID localpart is a bad request.
    """
    wire = connected()
    wire.receive(load(user="a@b"))
    [reply] = wire.sent()
    assert reply["type"] == "error" and reply.error.firstChildElement().name == "bad-request"


def test_loadsOfOneUserBounded() -> None:
    """
    Loads of one user share its query bounds: beyond them, a
    resource-constraint error (wait) at once; the first load is answered.
    """
    wire = connected()
    bound = wire.config.queries_per_user
    for i in range(bound + 1):
        wire.receive(load(stanzaID=f"l{i}"))
    sent = wire.answerRequests(serverAnswers())
    refused = [s for s in answers(sent) if s["type"] == "error"]
    assert [s["id"] for s in refused] == [f"l{bound}"]
    assert refused[0].error.firstChildElement().name == "resource-constraint"
    assert sorted(s["id"] for s in answers(sent) if s["type"] == "result") == [f"l{i}" for i in range(bound)]
    assert wire.webApp.requests["alice"] == 1
