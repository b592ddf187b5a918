"""
Tests for the roster versions rosteradmin promises to contrib's
mod_rosteradmin_roster (L{rosteradmin.promises}),
which then answers current-version queries itself: a version is promised
only when the server stores exactly that roster, once per connection, and
revoked when a write fails.
"""

from __future__ import annotations

import copy
from typing import Any

from twisted.words.xish import domish

from rosteradmin.rosterwrites import NS_BULK_ROSTER
from rosteradmin.state import SyncState
from tests.helpers import PERMISSIONS_2, ComponentOnWire, WebApp
from tests.test_bulkwrites import bulkServer
from tests.test_component import envelope, innerIQ, noBulk, rosterGet, serverAnswers
from tests.test_putback import pushes

ROSTERS = {"alice": {"bob@example.org": {"name": "Bob"}}, "carol": {"bob@example.org": {"name": "Bob"}}}
STORED = "<item jid='bob@example.org' name='Bob' subscription='both'/>"
#: erin in two groups, stored in the other order (Prosody keeps a set).
STORED_TWO_GROUPS = STORED + ("<item jid='erin@example.org' subscription='both'>"
                              "<group>Work</group><group>Friends</group></item>")


def promises(sent: list[domish.Element]) -> list[tuple[str, str]]:
    """
    The (user, version) of every promise or revocation sent: bulk iqs
    with a C{ver} and no items.
    """
    return [(s["to"], s.query["ver"]) for s in sent
            if s.name == "iq" and s.query is not None and s.query.uri == NS_BULK_ROSTER
            and s.query.hasAttribute("ver") and not list(s.query.elements())]


def answers(sent: list[domish.Element]) -> list[domish.Element]:
    return [innerIQ(s) for s in sent if s.name == "iq" and s.getAttribute("id") == "env1"]


def loggedIn() -> ComponentOnWire:
    """
    Connected to a server with the module, the revocation of earlier
    promises answered.
    """
    wire = ComponentOnWire(WebApp(copy.deepcopy(ROSTERS)), bulk=True)
    wire.handshake(PERMISSIONS_2)
    wire.answerRequests(bulkServer)
    return wire


def test_versioningClientsVersionIsPromisedOnce() -> None:
    """
    A client asking with C{ver} is answered, and the version is promised
    once the server stores that roster (after our write); a second query
    with it does not promise it again.
    """
    wire = loggedIn()
    wire.receive(envelope(rosterGet(ver="")))
    sent = wire.answerRequests(bulkServer)
    [answer] = answers(sent)
    version = answer.query["ver"]
    assert promises(sent) == [("alice@example.org", version)]
    wire.receive(envelope(rosterGet(ver=version)))
    again = wire.answerRequests(bulkServer)
    assert [a.firstChildElement() for a in answers(again)] == [None] and promises(again) == []
    assert wire.backend.snapshot().promised == 1


def test_clientWithoutVersionsIsPromisedToo() -> None:
    """
    The server answers a get without a version from its store: that is
    promised too.
    """
    wire = loggedIn()
    wire.receive(envelope(rosterGet()))
    sent = wire.answerRequests(bulkServer)
    [answer] = answers(sent)
    assert promises(sent) == [("alice@example.org", answer.query["ver"])]


def test_firstConnectionWithoutRememberedStateRevokesEveryPromise() -> None:
    """
    The server may hold promises of an earlier run, which this one cannot
    check without that run's state: the first connection revokes them
    all, at the domain, and the next one again if the stream was lost
    before the server answered; once answered, never again.
    """
    wire = ComponentOnWire(WebApp(copy.deepcopy(ROSTERS)), bulk=True)
    wire.handshake(PERMISSIONS_2)
    assert promises(wire.sent()) == [("example.org", "")]
    wire.reconnect(PERMISSIONS_2)
    [revocation] = wire.sent()
    assert promises([revocation]) == [("example.org", "")]
    wire.receive(str(bulkServer(revocation)))
    wire.reconnect(PERMISSIONS_2)
    assert promises(wire.sent()) == []


def test_rememberedStateKeepsThePromises(tmp_path: Any) -> None:
    """
    With a state file that knows what the server stores, the server's
    promises stay true across our restart: none is revoked.  The state's
    record alone promises nothing new: a change made behind our back since
    would be vouched for; the user's stored roster must have been read
    back or written in this run.
    """
    path = str(tmp_path / "state.sqlite")
    first = ComponentOnWire(WebApp(copy.deepcopy(ROSTERS)), bulk=True, state=SyncState(path))
    first.handshake(PERMISSIONS_2)
    first.receive(envelope(rosterGet()))
    first.answerRequests(bulkServer)
    again = ComponentOnWire(WebApp(copy.deepcopy(ROSTERS)), bulk=True, state=SyncState(path))
    again.handshake(PERMISSIONS_2)
    assert promises(again.sent()) == []
    again.receive(envelope(rosterGet()))
    sent = again.answerRequests(bulkServer)
    assert answers(sent) and promises(sent) == []


def test_versionOnlyTheStateRecordsIsReadBackThenPromised(tmp_path: Any) -> None:
    """
    After a restart on the state, a version only the state's record vouches
    for is answered without a read (a user may ask once); answered again, it
    is read back once, and promised when the server holds it: the user's
    later gets are the server's.  Nothing is written, and the next answer
    reads nothing again.
    """
    path = str(tmp_path / "state.sqlite")
    first = ComponentOnWire(WebApp(copy.deepcopy(ROSTERS)), bulk=True, state=SyncState(path))
    first.handshake(PERMISSIONS_2)
    first.backend.refresh(["alice"])
    first.answerRequests(bulkServer)
    assert promises(first.sent()) == [] and SyncState(path).serverVersion("alice") is not None
    again = ComponentOnWire(WebApp(copy.deepcopy(ROSTERS)), bulk=True, state=SyncState(path))
    again.handshake(PERMISSIONS_2)
    again.sent()
    server = serverAnswers(stored=STORED)

    def reply(iq: domish.Element) -> str | None:
        return bulkServer(iq) if promises([iq]) else server(iq)  # type: ignore[operator, no-any-return]

    again.receive(envelope(rosterGet()))
    once = again.answerRequests(reply)
    assert [s.getAttribute("to") for s in once] == ["example.org"]  # the answer alone
    again.receive(envelope(rosterGet()))
    twice = again.answerRequests(reply)
    [answer] = answers(twice)
    reads = [s for s in twice if s.name == "iq" and s["to"] == "alice@example.org" and s["type"] == "get"]
    assert len(reads) == 1 and reads[0].query.uri == "jabber:iq:roster"
    assert promises(twice) == [("alice@example.org", answer.query["ver"])]
    assert not [s for s in twice if s.name == "iq" and s["type"] == "set" and not promises([s])]
    again.receive(envelope(rosterGet()))
    assert [s.getAttribute("to") for s in again.answerRequests(reply)] == ["example.org"]


def test_writtenRosterIsPromisedBeforeAnyClientAsks() -> None:
    """
    A refresh (a sync) writes a user's roster with no client asking: the
    version is promised once the write is answered, so the server answers
    that user's first get too, after our restart as well.
    """
    wire = loggedIn()
    refresh = wire.backend.refresh(["alice"])
    sent = wire.answerRequests(bulkServer)
    writes = [s for s in sent if s.name == "iq" and s["type"] == "set" and not promises([s])]
    assert len(writes) == 1 and not answers(sent)
    version = wire.backend.cache.peek("alice")
    assert version is not None and promises(sent) == [("alice@example.org", version.version)]
    assert sent.index(writes[0]) < sent.index(next(s for s in sent if promises([s])))
    assert refresh.called and wire.backend.snapshot().promised == 1
    wire.receive(envelope(rosterGet()))
    assert promises(wire.answerRequests(bulkServer)) == []


def test_rosterSetRevokesThePromise() -> None:
    """
    A client's roster set may have crossed the promise on its way to the
    server, which would then tell that client "current": it is revoked.
    """
    wire = loggedIn()
    wire.receive(envelope(rosterGet()))
    wire.answerRequests(bulkServer)
    wire.receive(envelope(rosterGet(iqType="set")))
    assert ("alice@example.org", "") in promises(wire.answerRequests(bulkServer))


def test_changeFoundAtLoginIsPushed() -> None:
    """
    After our restart the server answers a promised user from its store;
    when the user comes online, the web app is asked, and a change it
    made meanwhile is written and pushed to the user's client.
    """
    rosters = {"alice": {"bob@example.org": {"name": "Bob"}, "erin@example.org": {"groups": ["Friends", "Work"]}}}
    state = SyncState()
    first = ComponentOnWire(WebApp(copy.deepcopy(rosters)), bulk=True, state=state)
    first.handshake(PERMISSIONS_2)
    first.receive(envelope(rosterGet()))
    first.answerRequests(bulkServer)
    # Meanwhile the web app added dave and dropped erin.
    webApp = WebApp({"alice": {"bob@example.org": {"name": "Bob"}, "dave@example.org": {}}})
    wire = ComponentOnWire(webApp, bulk=True, state=state)
    wire.handshake(PERMISSIONS_2)
    wire.sent()
    wire.receive("<presence from='alice@example.org/res' to='roster.example.org'/>")
    server = serverAnswers(stored=STORED_TWO_GROUPS)
    sent = wire.answerRequests(lambda iq: bulkServer(iq) if iq.query is not None and iq.query.uri == NS_BULK_ROSTER
                               else server(iq))  # type: ignore[operator]
    assert sorted(pushes(sent)) == [("dave@example.org", "both", None), ("erin@example.org", "remove", None)]


def test_eachConnectionPromisesAgain() -> None:
    """
    After a reconnection (the server may have restarted, forgetting all
    promises), the same version is promised again.
    """
    wire = loggedIn()
    wire.receive(envelope(rosterGet(ver="")))
    version = answers(wire.answerRequests(bulkServer))[0].query["ver"]
    wire.reconnect(PERMISSIONS_2)
    wire.receive(envelope(rosterGet(ver=version)))
    assert promises(wire.answerRequests(bulkServer)) == [("alice@example.org", version)]


def test_failedWriteRevokesBeforeTheRefreshReports() -> None:
    """
    A refresh whose write fails revokes the promise (C{ver=''}), and
    reports only once the server took the revocation: a client asking
    with the old version afterwards is delegated to us.
    """
    wire = loggedIn()
    wire.receive(envelope(rosterGet(ver="")))
    wire.answerRequests(bulkServer)
    wire.webApp.rosters["alice"] = {"dave@example.org": {}}
    wire.component.privileges.parked["alice"] = "test"
    refresh = wire.backend.refresh(["alice"])
    sent = wire.answerRequests(lambda iq: None if promises([iq]) else bulkServer(iq))
    [revocation] = [s for s in sent if promises([s])]
    assert promises([revocation]) == [("alice@example.org", "")]
    assert not refresh.called
    wire.receive(str(bulkServer(revocation)))
    assert refresh.result.errors == 1


def test_serverWithoutTheModuleIsNotPromised() -> None:
    """
    A server that refuses the bulk iq refuses the promise: nothing is
    promised on this connection again, and writes go one item per set.
    """
    wire = ComponentOnWire(WebApp(copy.deepcopy(ROSTERS)), bulk=None)
    wire.handshake(PERMISSIONS_2)
    server = serverAnswers(stored=STORED)
    wire.receive(envelope(rosterGet(ver="")))
    sent = wire.answerRequests(lambda iq: noBulk(iq) if promises([iq]) else server(iq))  # type: ignore[operator]
    assert len(promises(sent)) == 1 and wire.component.privileges.bulk is False
    wire.receive(envelope(rosterGet(sender="carol@example.org/res", ver="")))
    assert promises(wire.answerRequests(server)) == []


def test_doubtedClientsGetNoPromise() -> None:
    """
    After a refused roster set, a client holding the current version may
    show its own change: its queries must reach us, so nothing is promised.
    """
    wire = loggedIn()
    wire.receive(envelope(rosterGet()))
    wire.answerRequests(bulkServer)
    wire.receive(envelope(rosterGet(iqType="set")))
    wire.answerRequests(bulkServer)
    wire.receive(envelope(rosterGet(ver="")))
    sent = wire.answerRequests(bulkServer)
    assert answers(sent) and promises(sent) == []
