"""
Tests for L{rosteradmin.state.SyncState} and for what the backend does
with it: the cheap login path, and unfinished work resumed after a restart.
"""

from __future__ import annotations

import random
import sqlite3
import time
from pathlib import Path

import pytest
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs, formatEvent

from rosteradmin import statefile as statefileModule
from rosteradmin.state import StateError, SyncState
from rosteradmin.statefile import RETRY_MAX_DELAY
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
    assert again.pending() == ["carol"] and again.pendingCount() == 1 and len(again.knownUsers()) == 1
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


def test_unpushedContactsSurviveReopeningUntilPushed(tmp_path: Path) -> None:
    """
    The contacts written and pushed toward a version are remembered across
    restarts, merged per user, with the version of the latest pushes (a
    later write that pushed nothing yet keeps it), until L{SyncState.pushed}.
    """
    path = str(tmp_path / "state.sqlite")
    state = SyncState(path)
    state.addUnpushed("alice", ["bob@example.org", "carol@example.org"], "v1")
    state.addUnpushed("alice", ["dave@example.org"], "")
    state.addUnpushed("bob", ["alice@example.org"], "")
    state.close()
    again = SyncState(path)
    assert again.unpushed("alice") == {"bob@example.org", "carol@example.org", "dave@example.org"}
    assert again.unpushedVersions() == {"alice": "v1", "bob": ""}
    again.pushed("alice")
    again.close()
    last = SyncState(path)
    assert last.unpushed("alice") == frozenset() and last.unpushedVersions() == {"bob": ""}


def holdLock(path: str) -> sqlite3.Connection:
    """
    Take the file's write lock on a connection of our own, as another
    process (a backup, an operator's C{sqlite3} shell) does with C{BEGIN
    IMMEDIATE}: it holds it until rolled back.
    """
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    return holder


def test_unreadableFileMovedAside(tmp_path: Path) -> None:
    """
    A file that is not an SQLite database (random bytes) is moved aside
    under a timestamped name, with an error naming both files, and a new
    state starts in its place: the file is disposable, and refusing to
    start would stop the service for good.
    """
    path = tmp_path / "state.sqlite"
    garbage = random.Random(7).randbytes(100_000)
    path.write_bytes(garbage)
    with capturedLogs() as events:
        state = SyncState(str(path), Clock())
    assert state.movedAside is not None and state.movedAside.startswith(f"{path}.unreadable-")
    assert Path(state.movedAside).read_bytes() == garbage
    [error] = [e for e in events if e["log_level"] == LogLevel.error]
    assert "unreadable" in formatEvent(error) and state.movedAside in formatEvent(error)
    assert state.pending() == [] and not state.remembersServer
    state.addPending(["alice"])
    state.close()
    assert SyncState(str(path)).pending() == ["alice"]


def test_corruptPagesMovedAside(tmp_path: Path) -> None:
    """
    A database whose header is intact but whose pages are damaged is found
    at start (SQLite's quick check), not at some later read, and moved
    aside with its WAL.
    """
    path = tmp_path / "state.sqlite"
    state = SyncState(str(path))
    state.addPending(f"user{n}-{'x' * 50}" for n in range(2000))
    state.close()
    damaged = bytearray(path.read_bytes())
    damaged[3 * 4096:3 * 4096 + 2000] = random.Random(1).randbytes(2000)
    path.write_bytes(bytes(damaged))
    with capturedLogs():
        again = SyncState(str(path))
    assert again.movedAside is not None and again.pending() == []


def test_otherSchemaRefused(tmp_path: Path) -> None:
    """
    A state file of another schema version is not moved aside: it is
    refused with its name and version, untouched (a newer rosteradmin's
    file survives a downgrade attempt).
    """
    path = tmp_path / "state.sqlite"
    SyncState(str(path)).close()
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("UPDATE meta SET value = '4' WHERE key = 'schema'")
    db.close()
    before = path.read_bytes()
    with pytest.raises(StateError, match="state.sqlite: schema version 4, this rosteradmin reads 3") as caught:
        SyncState(str(path))
    assert not caught.value.transient and path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if "unreadable" in p.name] == []


def test_anotherProgramsDatabaseRefused(tmp_path: Path) -> None:
    """
    A readable SQLite database without rosteradmin's tables (C{--state}
    pointed at another program's file) is refused, neither written into
    nor moved aside.
    """
    path = tmp_path / "prosody.sqlite"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE prosody (host TEXT)")
    db.commit()
    db.close()
    with pytest.raises(StateError, match="not a rosteradmin state file .*prosody"):
        SyncState(str(path))
    assert {row[0] for row in sqlite3.connect(path).execute("SELECT name FROM sqlite_master")} == {"prosody"}


def test_uncreatablePathRefused(tmp_path: Path) -> None:
    """
    A path SQLite cannot create is refused with its name, as a
    configuration error (not transient).
    """
    with pytest.raises(StateError, match="missing/state.sqlite: unable to open database file") as caught:
        SyncState(str(tmp_path / "missing" / "state.sqlite"))
    assert not caught.value.transient


def test_lockedAtStartIsTransient(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    A new file whose lock another process holds throughout start-up (its
    tables cannot be created) is refused as transient: systemd restarts
    that exit code.
    """
    monkeypatch.setattr(statefileModule, "OPEN_TIMEOUT", 0.05)
    path = str(tmp_path / "state.sqlite")
    holder = holdLock(path)
    with pytest.raises(StateError, match="database is locked") as caught:
        SyncState(path)
    holder.rollback()
    assert caught.value.transient


def test_existingFileLockedAtStartOpensAtOnce(tmp_path: Path) -> None:
    """
    An existing state file whose lock another process holds is read at
    start without waiting for it: reading needs no lock in WAL mode.
    """
    path = str(tmp_path / "state.sqlite")
    state = SyncState(path)
    state.recordServer("alice", "v1")
    state.close()
    holder = holdLock(path)
    started = time.monotonic()
    again = SyncState(path, Clock())
    assert time.monotonic() - started < 0.5
    holder.rollback()
    assert again.serverVersion("alice") == "v1" and again.problem is None


def test_lockedFileNeverBlocksAndLosesNothing(tmp_path: Path) -> None:
    """
    While another connection holds the file's write lock, every change
    returns at once (the old code waited 5 s for the lock, then raised),
    reads see it, and L{SyncState.problem} says why; once the lock is
    released, the next retry writes all of them in order and the problem
    clears.
    """
    path = str(tmp_path / "state.sqlite")
    clock = Clock()
    state = SyncState(path, clock)
    state.recordServer("carol", "v0")
    holder = holdLock(path)
    started = time.monotonic()
    with capturedLogs() as events:
        state.addPending(["alice", "bob", "carol"])
        state.recordServer("alice", "v1")
        state.forgetServer("carol")
        state.done("bob")
        state.doubtClients("alice", "v1")
        state.syncRunning("full")
    elapsed = time.monotonic() - started
    assert elapsed < 0.5, f"changes took {elapsed:.3f} s with the lock held"
    assert state.serverVersion("alice") == "v1" and state.serverVersion("carol") is None
    assert state.pending() == ["carol"] and state.interruptedSync() == "full"
    assert "database is locked" in (state.problem or "") and state.unsaved > 0
    assert len([e for e in events if e["log_level"] == LogLevel.error]) == 1  # once, not per change
    assert Path(path + ".unsaved").exists()
    clock.advance(RETRY_MAX_DELAY)
    assert state.problem is not None  # still held
    holder.rollback()
    with capturedLogs() as events:
        clock.advance(RETRY_MAX_DELAY)
    assert state.problem is None and state.unsaved == 0
    assert any("written again" in formatEvent(e) for e in events)
    assert not Path(path + ".unsaved").exists()
    again = SyncState(path)
    assert again.serverVersion("alice") == "v1" and again.serverVersion("carol") is None
    assert again.pending() == ["carol"] and again.interruptedSync() == "full"
    assert again.clientsDoubted("alice", "v1")


def test_changesWaitingAtCloseGetALastChance(tmp_path: Path) -> None:
    """
    Closing (at shutdown) writes what waits, waiting a little for the lock;
    if it is still held, the loss is logged.
    """
    path = str(tmp_path / "state.sqlite")
    state = SyncState(path, Clock())
    holder = holdLock(path)
    with capturedLogs():
        state.addPending(["alice"])
    holder.rollback()
    state.close()
    assert SyncState(path).pending() == ["alice"]

    state = SyncState(path, Clock())
    holder = holdLock(path)
    with capturedLogs() as events:
        state.addPending(["bob"])
        state.close()
    holder.rollback()
    assert any("1 changes not written at shutdown" in formatEvent(e) for e in events)
    assert Path(path + ".unsaved").exists()


def test_startAfterUnwrittenChangesTrustsNoVersion(tmp_path: Path) -> None:
    """
    A process that ends while the file holds back its changes (here a
    forgotten version: a write into the server was under way) leaves a
    marker; the next start trusts none of the file's versions and makes
    every user it knew pending, so each is read back and rewritten.  A
    clean run leaves no marker.
    """
    path = str(tmp_path / "state.sqlite")
    state = SyncState(path, Clock())
    state.recordServer("alice", "v1")
    state.recordServer("bob", "v1")
    holder = holdLock(path)
    with capturedLogs():
        state.forgetServer("alice")
        state.close()
    holder.rollback()
    with capturedLogs() as events:
        again = SyncState(path, Clock())
    assert again.serverVersion("alice") is None and again.serverVersion("bob") is None
    assert not again.remembersServer and again.pending() == ["alice", "bob"]
    assert any("refreshing and reading back every user it knew (2)" in formatEvent(e) for e in events)
    assert not Path(path + ".unsaved").exists()
    again.close()
    assert SyncState(path).pending() == again.pending() and not Path(path + ".unsaved").exists()


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


def test_refreshWhileTheFileIsLockedKeepsItsPendingUsers(tmp_path: Path) -> None:
    """
    A refresh of 100 users while another connection holds the file's lock
    (on c8552a8: 5 s per write, then a 500 with nothing pending or
    stored): every user is updated, /healthz is 200 "degraded" with the
    reason and /metrics counts what waits; once the lock is released all
    of it is written, and /healthz is "ok" again.
    """
    from tests.test_api import Api

    path = str(tmp_path / "state.sqlite")
    clock = Clock()
    users = [f"u{n}" for n in range(100)]
    wire = ComponentOnWire(WebApp({u: {"bob@example.org": {}} for u in users}), makeConfig(),
                           state=SyncState(path, clock))
    wire.handshake(PERMISSIONS_2)
    api = Api(wire)
    holder = holdLock(path)
    started = time.monotonic()
    with capturedLogs():
        refreshed = wire.backend.refresh(users)
        wire.answerRequests(serverAnswers())
        code, body = api.request("GET", "/healthz")
    elapsed = time.monotonic() - started
    assert elapsed < 2, f"the refresh took {elapsed:.3f} s with the lock held"
    summary = Api.result(refreshed)
    assert (summary.updated, summary.failures) == (100, {})
    assert (code, body["status"]) == (200, "degraded") and "database is locked" in body["state_error"]
    metrics = Api.result(Api.result(api.http.get("http://api.invalid/metrics")).text())
    unsaved = wire.backend.state.unsaved
    assert unsaved >= 100 and f"rosteradmin_state_unsaved {float(unsaved)}" in metrics
    # Nothing reached the file yet: a second reader sees none of it.
    assert len(SyncState(path).knownUsers()) == 0

    holder.rollback()
    with capturedLogs():
        clock.advance(RETRY_MAX_DELAY)
    code, body = api.request("GET", "/healthz")
    assert (code, body["status"], body["state_error"]) == (200, "ok", None)
    again = SyncState(path)
    assert len(again.knownUsers()) == 100 and again.pending() == []


def test_refreshInterruptedWhileTheFileIsLockedResumes(tmp_path: Path) -> None:
    """
    Users of a refresh accepted while the file is locked and the server
    takes no writes stay pending in memory, reach the file once it is free,
    and a restarted process resumes them.
    """
    path = str(tmp_path / "state.sqlite")
    clock = Clock()
    rosters = {u: {"bob@example.org": {}} for u in ["alice", "carol"]}
    wire = ComponentOnWire(WebApp(rosters), makeConfig(), state=SyncState(path, clock))
    wire.handshake()  # no privileges: writes wait
    holder = holdLock(path)
    with capturedLogs():
        wire.backend.refresh(["alice", "carol"])
        wire.sent()
    assert wire.backend.state.pending() == ["alice", "carol"] and SyncState(path).pending() == []
    holder.rollback()
    with capturedLogs():
        clock.advance(RETRY_MAX_DELAY)
    assert SyncState(path).pending() == ["alice", "carol"]


def test_checkpointsKeepTheWALSmall(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    SQLite's own checkpoints are off (they C{fsync} in the committing
    thread, the reactor's); the state's checkpoint thread keeps the WAL
    from growing with every commit.
    """
    monkeypatch.setattr(statefileModule, "CHECKPOINT_COMMITS", 50)
    path = str(tmp_path / "state.sqlite")
    state = SyncState(path)
    for n in range(2000):
        state.recordServer(f"user{n}", "v1")
        checkpointer = state._storage._checkpointer
        if checkpointer is not None:
            checkpointer.join()  # as a slow disk would, once in a while
    # Each commit appends at least a page (4 KiB): 2,000 would make 8 MB.
    assert Path(path + "-wal").stat().st_size < 1_000_000
    state.close()
    assert len(SyncState(path).knownUsers()) == 2000
