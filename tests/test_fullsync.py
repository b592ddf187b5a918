"""
Tests for L{rosteradmin.fullsync.FullSync}: every user converged before
anyone logs in, and drift found and repaired by reconciliation.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.logger import capturedLogs
from treq.testing import StubTreq
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from rosteradmin import users
from rosteradmin.fullsync import CANCELLED, FullSync
from rosteradmin.state import SyncState
from rosteradmin.users import UserLister
from tests.helpers import PERMISSIONS_2, ComponentOnWire, WebApp
from tests.test_component import serverAnswers
from tests.test_users import EndlessUsers, UsersApp


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
    assert len(wire.backend.state.knownUsers()) == 3
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
    assert dict(wire.backend.snapshot().driftRepaired) == {"missing": 1, "extra": 1, "subscription": 1}
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


def test_namedUsersJoinTheRunningPass() -> None:
    """
    Users named while a full sync runs (a user the web app has just
    created) join it: they are synced at once, not after the whole list,
    counted in its progress, and the pass ends once they are done too.
    """
    users = [["alice"], ["bob"]]
    rosters = {u: {"dave@example.org": {}} for u in ["alice", "bob", "newcomer"]}
    wire, fullSync, usersHTTP = syncing(users, rosters)
    wire.webApp.hold = True
    with capturedLogs():
        wire.handshake(PERMISSIONS_2)
        usersHTTP.flush()  # the full sync refreshes its first page: alice's fetch is held
        full = fullSync.current
        assert full is not None and full.kind == "full" and wire.webApp.requests["alice"] == 1
        joined = fullSync.start("users", ["newcomer"])
        assert joined is full and full.listed == 2
        assert wire.webApp.requests["newcomer"] == 1  # at once, while alice's batch is held
        wire.webApp.release()
        sent = runAll(wire, usersHTTP, serverAnswers())
    written = sorted(s["to"] for s in sent if s["type"] == "set")  # type: ignore[index]
    assert written == ["alice@example.org", "bob@example.org", "newcomer@example.org"]
    assert not full.running and (full.listed, full.synced, full.failed) == (3, 3, 0)
    fullSync.stopService()


def test_namedUsersDoNotWaitForAStalledList() -> None:
    """
    Users who join a pass waiting for a page of the users list are synced
    meanwhile; the pass ends once the list is done, or cancelled.
    """
    wire = ComponentOnWire(WebApp({"newcomer": {"dave@example.org": {}}}))
    lister = UserLister("http://webapp.invalid/users", wire.clock, http=StubTreq(NeverAnswers()))
    fullSync = FullSync(wire.backend, lister, wire.clock, atStart=False, reconcileInterval=3600)
    with capturedLogs():
        wire.handshake(PERMISSIONS_2)
        full = fullSync.start("full")
        assert fullSync.start("users", ["newcomer"]) is full
        sent = wire.answerRequests(serverAnswers())
        assert [s["to"] for s in sent if s["type"] == "set"] == ["newcomer@example.org"]  # type: ignore[index]
        assert full.running and full.synced == 1
        fullSync.cancel()
    assert not full.running and full.synced == 1 and full.error == CANCELLED


def test_cancelStopsThePassForGood(tmp_path: Path) -> None:
    """
    A full sync cancelled while it waits for a page of the users list ends
    at once, and the next process does not start it again.
    """
    path = str(tmp_path / "state.sqlite")
    wire = ComponentOnWire(WebApp({}), state=SyncState(path))
    lister = UserLister("http://webapp.invalid/users", wire.clock, http=StubTreq(NeverAnswers()))
    fullSync = FullSync(wire.backend, lister, wire.clock, atStart=False, reconcileInterval=3600)
    with capturedLogs():
        progress = fullSync.start("full")
        assert SyncState(path).interruptedSync() == "full"
        assert fullSync.cancel() is progress
    assert not progress.running and progress.error == CANCELLED and progress.toJSON()["error"] == CANCELLED
    assert fullSync.cancel() is None  # nothing runs any more
    assert SyncState(path).interruptedSync() is None

    restarted = ComponentOnWire(WebApp({}), state=SyncState(path))
    again = FullSync(restarted.backend, lister, restarted.clock, atStart=False, reconcileInterval=3600)
    again.startService()
    with capturedLogs():
        restarted.handshake(PERMISSIONS_2)
    assert again.current is None
    again.stopService()


def test_cancelLetsTheBatchUnderWayFinish() -> None:
    """
    A pass cancelled while it refreshes a batch finishes that batch (its
    users' work is under way) and reads no further page.
    """
    users = [["alice"], ["bob"]]
    wire, fullSync, usersHTTP = syncing(users, {"alice": {}, "bob": {}})
    wire.webApp.hold = True
    with capturedLogs():
        wire.handshake(PERMISSIONS_2)
        usersHTTP.flush()
        progress = fullSync.cancel()
        assert progress is not None and progress.running and progress.error == CANCELLED
        wire.webApp.release()
        runAll(wire, usersHTTP, serverAnswers())
    assert not progress.running and progress.synced == 1 and progress.listed == 1
    assert wire.webApp.requests["bob"] == 0
    fullSync.stopService()


def test_endlessListIsNotStartedAgain(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    A full sync stopped on a users list that does not end says why, and is
    not started again by the next process (it would not end either).
    """
    monkeypatch.setattr(users, "MAX_PAGES", 5)
    path = str(tmp_path / "state.sqlite")
    wire = ComponentOnWire(WebApp({}), state=SyncState(path))
    usersHTTP = StubTreq(EndlessUsers())
    lister = UserLister("http://webapp.invalid/users", wire.clock, http=usersHTTP)
    fullSync = FullSync(wire.backend, lister, wire.clock, atStart=True, reconcileInterval=3600)
    fullSync.startService()
    with capturedLogs():
        wire.handshake(PERMISSIONS_2)
        runAll(wire, usersHTTP, serverAnswers())
    progress = fullSync.current
    assert progress is not None and not progress.running
    assert progress.error is not None and "past 5 pages" in progress.error
    assert progress.listed == 10
    assert SyncState(path).interruptedSync() is None
    fullSync.stopService()
