"""
The contract of L{rosteradmin.intake.Intake}, on both storages (the
C{backing} fixture of L{tests.test_stateengines}: an SQLite file and a
private PostgreSQL database): a request is committed when C{accept}
fires, claimed in order, completed once, and claimed again by the next
leader when its claimer is gone.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import TimeoutError as DeferredTimeoutError

from rosteradmin import statestorage
from rosteradmin.intake import ACCEPTED, CLAIMED, DONE, Intake, Outcome
from rosteradmin.state import openStorage
from rosteradmin.statestorage import StateError
from tests.test_stateengines import Backing, backing  # noqa: F401 (the fixture)


@pytest_twisted.ensureDeferred
async def test_acceptedIsCommittedWhenItFires(backing: Backing) -> None:
    """
    When C{accept} fires, the row is in the database, as another
    connection sees it, with its body; C{get} reads it back.
    """
    storage = backing.open()
    intake = Intake(storage)
    request = await intake.accept("refresh", {"usernames": ["alice", "bob"]})
    rows = backing.sql("SELECT id, kind, body, status, attempts FROM requests")
    assert rows == [(request.id, "refresh", '{"usernames": ["alice", "bob"]}', ACCEPTED, 0)]
    again = await intake.get(request.id)
    assert again == request
    assert await intake.get("no-such-request") is None
    await storage.close()


@pytest_twisted.ensureDeferred
async def test_claimedInOrderOnce(backing: Backing) -> None:
    """
    Requests are claimed oldest first, each once, whoever accepted them
    (another storage on the same database: another instance).
    """
    storage, other = backing.open(), backing.open()
    first = await Intake(storage).accept("refresh", {"usernames": ["a"]})
    second = await Intake(other).accept("kick", {"nickname": "n", "muc": "r@c.example.org", "reason": None})
    third = await Intake(storage).accept("sync", {"all": True})
    intake = Intake(storage)
    claimed = [await intake.claim("leader") for _ in range(4)]
    assert [c.id if c else None for c in claimed] == [first.id, second.id, third.id, None]
    assert all(c is not None and c.status == CLAIMED and c.attempts == 1 for c in claimed[:3])
    assert claimed[1] is not None and claimed[1].body["muc"] == "r@c.example.org"
    await storage.close()
    await other.close()


@pytest_twisted.ensureDeferred
async def test_completeRecordsTheOutcomeForItsClaimer(backing: Backing) -> None:
    """
    The claimer records the outcome, which C{get} then shows; another
    claimer cannot.
    """
    storage = backing.open()
    intake = Intake(storage)
    accepted = await intake.accept("refresh", {"usernames": ["alice"]})
    await intake.claim("leader")
    outcome = Outcome(200, {"status": "ok", "updated": 1})
    assert not await intake.complete(accepted.id, "someone-else", Outcome(500, {}))
    assert await intake.complete(accepted.id, "leader", outcome)
    done = await intake.get(accepted.id)
    assert done is not None and done.status == DONE and done.outcome == outcome
    assert not await intake.complete(accepted.id, "leader", Outcome(500, {}))
    assert (await intake.get(accepted.id)) == done
    await storage.close()


@pytest_twisted.ensureDeferred
async def test_claimOfAGoneClaimerIsClaimedAgain(backing: Backing) -> None:
    """
    A request claimed by a leader that died before completing it (its
    storage closed, no outcome) is handed back by the next leader's
    C{recover}, claimed again (a second attempt) and completed by it;
    the old claimer can no longer complete it.
    """
    old = backing.open()
    accepted = await Intake(old).accept("kick", {"nickname": "n", "muc": "r@c.example.org", "reason": None})
    unfinished = await Intake(old).accept("refresh", {"usernames": ["bob"]})
    assert (await Intake(old).claim("old-term")) is not None
    assert (await Intake(old).claim("old-term")) is not None
    await old.close()
    new = backing.open()
    intake = Intake(new)
    assert await intake.claim("new-term") is None  # claimed, not accepted, until recovered
    assert await intake.recover() == 2
    again = await intake.claim("new-term")
    assert again is not None and again.id == accepted.id and again.attempts == 2
    assert not await intake.complete(accepted.id, "old-term", Outcome(200, {}))
    assert await intake.complete(accepted.id, "new-term", Outcome(404, {"error": "Room or nickname not found"}))
    last = await intake.claim("new-term")
    assert last is not None and last.id == unfinished.id
    await new.close()


@pytest_twisted.ensureDeferred
async def test_failedWriteFailsAndStoresNothing(backing: Backing, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    While the storage refuses writes, C{accept} fails (at once for a
    locked SQLite file, within the timeout for a stopped PostgreSQL
    server), and nothing was stored.
    """
    storage = backing.open()
    intake = Intake(storage, timeout=2.0)
    backing.refuseWrites()
    try:
        started = time.monotonic()
        with pytest.raises((StateError, DeferredTimeoutError)):
            await intake.accept("refresh", {"usernames": ["alice"]})
        assert time.monotonic() - started < 4.0
    finally:
        backing.allowWrites()
    assert backing.sql("SELECT count(*) FROM requests") == [(0,)]
    accepted = await intake.accept("refresh", {"usernames": ["alice"]})  # and works again
    assert (await intake.get(accepted.id)) is not None
    await storage.close()


@pytest_twisted.ensureDeferred
async def test_purgeForgetsOldDoneRequests(backing: Backing) -> None:
    """
    C{purge} deletes the requests done before the given time, and only
    those.
    """
    storage = backing.open()
    intake = Intake(storage)
    done = await intake.accept("refresh", {"usernames": ["a"]})
    waiting = await intake.accept("refresh", {"usernames": ["b"]})
    await intake.claim("leader")
    await intake.complete(done.id, "leader", Outcome(200, {}))
    assert await intake.purge(time.time() - 60) == 0
    assert await intake.purge(time.time() + 1) == 1
    assert await intake.get(done.id) is None and await intake.get(waiting.id) is not None
    await storage.close()


@pytest_twisted.ensureDeferred
async def test_firstSchemaFileGetsTheTable(tmp_path: Path) -> None:
    """
    A state file of schema version 1 is upgraded at start: it gets the
    C{requests} table, and keeps its rows.
    """
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE server_rosters (username TEXT PRIMARY KEY, version TEXT NOT NULL,
                                     written_at REAL NOT NULL) WITHOUT ROWID;
        CREATE TABLE pending (username TEXT PRIMARY KEY, since REAL NOT NULL) WITHOUT ROWID;
        CREATE TABLE doubted_clients (username TEXT PRIMARY KEY, version TEXT NOT NULL) WITHOUT ROWID;
        CREATE TABLE unpushed (username TEXT PRIMARY KEY, jids TEXT NOT NULL, version TEXT NOT NULL,
                               since REAL NOT NULL) WITHOUT ROWID;
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
        INSERT INTO meta VALUES ('schema', '1');
        INSERT INTO server_rosters VALUES ('alice', 'v1', 1.0);
    """)
    db.commit()
    db.close()
    storage = openStorage(str(path), reactor)
    assert storage.tables["server_rosters"] == [("alice", "v1")]
    accepted = await Intake(storage).accept("sync", {"all": True})
    assert (await Intake(storage).get(accepted.id)) is not None
    await storage.close()
    assert sqlite3.connect(path).execute("SELECT value FROM meta WHERE key = 'schema'").fetchall() == [
        (str(statestorage.SCHEMA_VERSION),)]


@pytest_twisted.ensureDeferred
async def test_memoryStateHasAnIntake() -> None:
    """
    Without a state file (C{":memory:"}), the intake works in memory:
    nothing survives the process, as with the rest of such a state.
    """
    storage = openStorage(":memory:", reactor)
    intake = Intake(storage)
    accepted = await intake.accept("refresh", {"usernames": ["a"]})
    assert (await intake.claim("leader")) is not None and (await intake.get(accepted.id)) is not None
    await storage.close()
    with pytest.raises(StateError, match="closed"):
        await intake.accept("refresh", {"usernames": ["a"]})

