"""
Tests for the roster versions rosteradmin promises to contrib's
mod_rosteradmin_roster (L{rosteradmin.privilege.PrivilegeHandler.promiseCurrent}),
which then answers current-version queries itself: a version is promised
only when the server stores exactly that roster, once per connection, and
revoked when a write fails.
"""

from __future__ import annotations

import copy
from typing import Any

from twisted.words.xish import domish

from rosteradmin.privilege import NS_BULK_ROSTER
from tests.helpers import PERMISSIONS_2, ComponentOnWire, WebApp
from tests.test_bulkwrites import bulkServer
from tests.test_component import envelope, innerIQ, noBulk, rosterGet, serverAnswers

ROSTERS = {"alice": {"bob@example.org": {"name": "Bob"}}, "carol": {"bob@example.org": {"name": "Bob"}}}
STORED = "<item jid='bob@example.org' name='Bob' subscription='both'/>"


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
    wire = ComponentOnWire(WebApp(copy.deepcopy(ROSTERS)), bulk=True)
    wire.handshake(PERMISSIONS_2)
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
    assert wire.component.privileges.promises == 1


def test_clientWithoutVersionsGetsNoPromise() -> None:
    """
    A client that does not keep versions would never ask with one.
    """
    wire = loggedIn()
    wire.receive(envelope(rosterGet()))
    sent = wire.answerRequests(bulkServer)
    assert answers(sent) and promises(sent) == []


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
