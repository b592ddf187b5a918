"""
Tests for L{rosteradmin.fullsync.FullSync}: every user converged before
anyone logs in, and drift found and repaired by reconciliation.
"""

from __future__ import annotations

from pathlib import Path

from twisted.logger import capturedLogs
from treq.testing import StubTreq
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from rosteradmin.fullsync import FullSync
from rosteradmin.state import SyncState
from rosteradmin.users import UserLister
from tests.helpers import PERMISSIONS_2, ComponentOnWire, WebApp
from tests.test_component import serverAnswers
from tests.test_users import UsersApp


def syncing(users: list[list[str]], rosters: dict[str, object]) -> tuple[ComponentOnWire, FullSync, StubTreq]:
    wire = ComponentOnWire(WebApp(rosters))
    usersHTTP = StubTreq(UsersApp(users))
    fullSync = FullSync(wire.backend, UserLister("http://webapp.invalid/users", wire.clock, http=usersHTTP),
                        wire.clock, atStart=True, reconcileInterval=3600)
    fullSync.startService()
    return wire, fullSync, usersHTTP


def runAll(wire: ComponentOnWire, usersHTTP: StubTreq, reply: object) -> list[object]:
    sent: list[object] = []
    for _ in range(20):
        usersHTTP.flush()
        more = wire.answerRequests(reply)
        if not more:
            usersHTTP.flush()
            more = wire.answerRequests(reply)
            if not more:
                return sent
        sent.extend(more)
    return sent


def test_fullSyncOnceTheServerTakesWrites() -> None:
    """
    With a users list, every user of every page is written into the server
    once it grants roster access, before any login; the progress counts
    them.
    """
    users = [["alice", "bob"], ["carol"]]
    wire, fullSync, usersHTTP = syncing(users, {u: {"dave@example.org": {}} for u in ["alice", "bob", "carol"]})
    assert fullSync.current is None  # not before the server takes writes
    with capturedLogs():
        wire.handshake(PERMISSIONS_2)
        sent = runAll(wire, usersHTTP, serverAnswers())
    written = sorted(s["to"] for s in sent if s["type"] == "set")  # type: ignore[index]
    assert written == ["alice@example.org", "bob@example.org", "carol@example.org"]
    progress = fullSync.current
    assert progress is not None and not progress.running and progress.listingDone
    assert (progress.listed, progress.synced, progress.failed) == (3, 3, 0)
    assert wire.backend.state.knownCount() == 3
    fullSync.stopService()


def test_reconcileRepairsAndCountsDrift() -> None:
    """
    After a sync, the server's copy changes behind our back (a client's
    unsubscribed presence: bob is 'to' in alice's roster, carol is gone
    and mallory appeared): the reconciliation pass, on its interval, reads
    it back, rewrites it and counts each cause.
    """
    rosters = {"alice": {"bob@example.org": {}, "carol@example.org": {}}}
    wire, fullSync, usersHTTP = syncing([["alice"]], rosters)
    with capturedLogs():
        wire.handshake(PERMISSIONS_2)
        runAll(wire, usersHTTP, serverAnswers())
        drifted = serverAnswers("<item jid='bob@example.org' subscription='to'/>"
                                "<item jid='mallory@example.org' subscription='both'/>")
        wire.clock.advance(3600)
        sent = runAll(wire, usersHTTP, drifted)
    sets = [s for s in sent if s["type"] == "set"]  # type: ignore[index]
    assert sorted(i["jid"] for s in sets for i in s.query.elements()) == [  # type: ignore[attr-defined]
        "bob@example.org", "carol@example.org", "mallory@example.org"]
    assert fullSync.current is not None and fullSync.current.kind == "reconcile"
    assert dict(wire.backend.driftRepaired) == {"missing": 1, "extra": 1, "subscription": 1}
    fullSync.stopService()


def test_secondStartJoinsTheRunningPass() -> None:
    """
    Asking for a sync while one runs answers with that one's progress.
    """
    wire, fullSync, usersHTTP = syncing([["alice"]], {"alice": {}})
    wire.webApp.hold = True
    first = fullSync.start("users", ["alice"])
    assert fullSync.start("full") is first and first.running
    wire.webApp.release()
    wire.http.flush()
    assert not first.running and first.synced == 1
    fullSync.stopService()


class NeverAnswers(Resource):
    """
    A users endpoint that never answers.
    """

    isLeaf = True

    def render_GET(self, request: Request) -> int:
        return NOT_DONE_YET


def test_interruptedFullSyncStartsAgain(tmp_path: Path) -> None:
    """
    A full sync still running when the process ends is started again by
    the next process on the same state, even with the start-up sync off; a
    named-users sync leaves its users pending from the moment it is
    accepted.
    """
    path = str(tmp_path / "state.sqlite")
    wire = ComponentOnWire(WebApp({"alice": {"bob@example.org": {}}}), state=SyncState(path))
    lister = UserLister("http://webapp.invalid/users", wire.clock, http=StubTreq(NeverAnswers()))
    first = FullSync(wire.backend, lister, wire.clock, atStart=False, reconcileInterval=3600)
    first.start("full")  # the users page never arrives: the process dies here
    first.current = None
    first.start("users", ["carol", "dave"])
    assert SyncState(path).interruptedSync() == "full"
    assert SyncState(path).pending() == ["carol", "dave"]

    usersHTTP = StubTreq(UsersApp([["alice"]]))
    restarted = ComponentOnWire(WebApp({"alice": {"bob@example.org": {}}}), state=SyncState(path))
    again = FullSync(restarted.backend, UserLister("http://webapp.invalid/users", restarted.clock, http=usersHTTP),
                     restarted.clock, atStart=False, reconcileInterval=3600)
    again.startService()
    with capturedLogs():
        restarted.handshake(PERMISSIONS_2)
        runAll(restarted, usersHTTP, serverAnswers())
    assert again.current is not None and again.current.kind == "full" and not again.current.running
    assert SyncState(path).interruptedSync() is None
    again.stopService()
