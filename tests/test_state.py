"""
Tests for L{rosteradmin.state.SyncState} and for what the backend does
with it: the cheap login path, and unfinished work resumed after a restart.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.logger import capturedLogs

from rosteradmin.state import SyncState, StateError
from tests.helpers import PERMISSIONS_2, ComponentOnWire, WebApp, makeConfig
from tests.test_component import envelope, rosterGet, serverAnswers


def test_versionsAndPendingSurviveReopening(tmp_path: Path) -> None:
    """
    What is recorded is there after the file is opened again; recording a
    user's server roster ends its pending state.
    """
    path = str(tmp_path / "state.sqlite")
    state = SyncState(path)
    state.addPending(["alice", "bob", "carol"])
    state.recordServer("alice", "v1")
    state.done("bob")
    state.close()
    again = SyncState(path)
    assert again.serverVersion("alice") == "v1" and again.serverVersion("bob") is None
    assert again.pending() == ["carol"] and again.pendingCount() == 1 and again.knownCount() == 1
    again.forgetServer("alice")
    assert again.serverVersion("alice") is None


def test_doubtedClientsSurviveReopeningUntilTheRosterChanges(tmp_path: Path) -> None:
    """
    A doubted version is remembered across restarts, for that version
    only; asked with another (the roster changed), it is forgotten.
    """
    path = str(tmp_path / "state.sqlite")
    state = SyncState(path)
    state.doubtClients("alice", "v1")
    state.doubtClients("alice", "v1")
    state.close()
    again = SyncState(path)
    assert again.clientsDoubted("alice", "v1") and not again.clientsDoubted("bob", "v1")
    assert not again.clientsDoubted("alice", "v2")
    assert not again.clientsDoubted("alice", "v1")
    again.close()
    assert not SyncState(path).clientsDoubted("alice", "v1")


def test_notOurFileRefused(tmp_path: Path) -> None:
    """
    A file that is not an SQLite database is refused with its name.
    """
    path = tmp_path / "state.sqlite"
    path.write_bytes(b"not a database" * 100)
    with pytest.raises(StateError, match="state.sqlite"):
        SyncState(str(path))


def wireWith(state: SyncState, rosters: dict[str, object]) -> ComponentOnWire:
    wire = ComponentOnWire(WebApp(rosters), makeConfig(), state=state)
    wire.handshake(PERMISSIONS_2)
    return wire


def test_loginWhoseServerRosterIsCurrentCostsNoPrivilegedRequest() -> None:
    """
    Once a user's roster was written, a later cache miss (a restart) whose
    web-app roster is unchanged is answered without any privileged read or
    write; a changed one is read and written.
    """
    state = SyncState()
    rosters = {"alice": {"bob@example.org": {"name": "Bob"}}}
    first = wireWith(state, rosters)
    first.receive(envelope(rosterGet()))
    sent = first.answerRequests(serverAnswers())
    assert {s["type"] for s in sent if s.getAttribute("to") == "alice@example.org"} == {"get", "set"}
    assert state.serverVersion("alice") is not None

    restarted = wireWith(state, rosters)
    restarted.receive(envelope(rosterGet()))
    sent = restarted.answerRequests(serverAnswers())
    assert [s.getAttribute("to") for s in sent] == ["example.org"]  # the answer alone

    rosters["alice"] = {"carol@example.org": {}}
    changed = wireWith(state, rosters)
    changed.receive(envelope(rosterGet()))
    sent = changed.answerRequests(serverAnswers("<item jid='bob@example.org' subscription='both'/>"))
    assert sorted(s["type"] for s in sent if s.getAttribute("to") == "alice@example.org") == ["get", "set", "set"]


def test_unfinishedRefreshResumedAfterRestart(tmp_path: Path) -> None:
    """
    A refresh accepted while the server took no writes (as when the process
    dies mid-way) leaves its users pending in the file; a new process on the
    same file refreshes them once it may write, without being asked.
    """
    path = str(tmp_path / "state.sqlite")
    rosters = {u: {"bob@example.org": {}} for u in ["alice", "carol"]}
    wire = ComponentOnWire(WebApp(rosters), makeConfig(), state=SyncState(path))
    wire.handshake()  # no privileges: writes wait
    with capturedLogs():
        wire.backend.refresh(["alice", "carol"])
        wire.sent()
    assert SyncState(path).pending() == ["alice", "carol"]

    restarted = ComponentOnWire(WebApp(rosters), makeConfig(), state=SyncState(path))
    with capturedLogs() as events:
        restarted.handshake(PERMISSIONS_2)
        sent = restarted.answerRequests(serverAnswers())
    assert sorted(s["to"] for s in sent if s["type"] == "set") == ["alice@example.org", "carol@example.org"]
    assert SyncState(path).pending() == []
    assert any("resuming 2 unfinished" in str(e.get("log_format", "")).replace("{count}", "2") for e in events)
