"""
The contract of L{rosteradmin.statestorage.IStateStorage}, run against
both storages: an SQLite file (L{rosteradmin.statefile}) and a private
PostgreSQL database (L{rosteradmin.statepg}, on the C{postgresql}
fixture's server).  A storage that "refuses writes" is, for SQLite, a
file whose lock another connection holds, and for PostgreSQL a stopped
server.  Then the tests of what only one of them does.
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.logger import capturedLogs, formatEvent

from rosteradmin import statefile, statepg, statestorage
from rosteradmin.outbox import Outbox
from rosteradmin.state import SyncState, openStorage
from rosteradmin.statestorage import IStateStorage, StateError
from tests.postgresql import PostgreSQLServer


class Backing:
    """
    Where a storage under test keeps its rows, and how to make it refuse
    writes.

    @ivar url: What C{--state} would say.
    """

    url: str

    def sql(self, statement: str, parameters: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        """
        Run one statement on a connection of the test's own, committed.
        """
        raise NotImplementedError

    def refuseWrites(self) -> None:
        raise NotImplementedError

    def allowWrites(self) -> None:
        raise NotImplementedError

    def open(self) -> IStateStorage:
        return openStorage(self.url, reactor)


class SQLiteBacking(Backing):
    def __init__(self, path: Path) -> None:
        self.url = str(path)
        self._holder: sqlite3.Connection | None = None

    def sql(self, statement: str, parameters: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        db = sqlite3.connect(self.url, isolation_level=None)
        try:
            return list(db.execute(statement.replace("%s", "?"), parameters))
        finally:
            db.close()

    def refuseWrites(self) -> None:
        self._holder = sqlite3.connect(self.url, isolation_level=None)
        self._holder.execute("BEGIN IMMEDIATE")

    def allowWrites(self) -> None:
        assert self._holder is not None
        self._holder.rollback()
        self._holder.close()


class PostgreSQLBacking(Backing):
    def __init__(self, server: PostgreSQLServer) -> None:
        self.server = server
        self.url = server.newDatabase()

    def sql(self, statement: str, parameters: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as db:
            cursor = db.execute(statement, parameters)
            return list(cursor.fetchall()) if cursor.description else []

    def refuseWrites(self) -> None:
        self.server.stop()

    def allowWrites(self) -> None:
        self.server.start()


@pytest.fixture(params=["sqlite", "postgresql"])
def backing(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Backing]:
    """
    Each storage in turn, new and empty, retrying every 0.1 s at most.
    """
    for module in (statefile, statepg):
        monkeypatch.setattr(module, "RETRY_DELAY", 0.05)
        monkeypatch.setattr(module, "RETRY_MAX_DELAY", 0.1)
    if request.param == "sqlite":
        yield SQLiteBacking(tmp_path / "state.sqlite")
    else:
        server: PostgreSQLServer = request.getfixturevalue("postgresql")
        yield PostgreSQLBacking(server)
        if not (server.directory / "data" / "postmaster.pid").exists():
            server.start()  # a failed test left it stopped


async def until(condition: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    """
    Let the reactor run until C{condition} holds.
    """
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not {what} within {timeout} s"
        await deferLater(reactor, 0.02)


def idle(storage: IStateStorage) -> bool:
    """
    Whether no write is under way or waiting: C{unsaved} counts neither
    while writes succeed, and PostgreSQL's take a moment in flight.
    """
    return not getattr(storage, "_written", None) and not getattr(storage, "_unsaved", None)


async def written(storage: IStateStorage) -> None:
    await until(lambda: storage.unsaved == 0 and storage.problem is None and idle(storage), "written")


EVERY_TABLE: dict[tuple[str, str], statestorage.Row | None] = {
    ("server_rosters", "alice"): ("alice", "v1", 1.5),
    ("pending", "bob"): ("bob", 2.25),
    ("doubted_clients", "carol"): ("carol", "v3"),
    ("unpushed", "dave"): ("dave", "a@example.org\nb@example.org", "v4", 3.0),
    ("meta", "sync_running"): ("sync_running", "full"),
}

READ_BACK = {
    "server_rosters": [("alice", "v1")],
    "pending": [("bob", 2.25)],
    "doubted_clients": [("carol", "v3")],
    "unpushed": [("dave", "a@example.org\nb@example.org", "v4", 3.0)],
    "meta": [("sync_running", "full")],
}


@pytest_twisted.ensureDeferred
async def test_everyTableReadBackAfterRestart(backing: Backing) -> None:
    """
    A row of every table, written in one batch, is what a new storage on
    the same database reads at start; the storage's own rows (the schema
    version, PostgreSQL's holder) are not handed up.
    """
    storage = backing.open()
    assert storage.tables == {table: [] for table in statestorage.TABLES} and not storage.marked
    storage.changes(EVERY_TABLE)
    await written(storage)
    await storage.close()
    again = backing.open()
    assert again.tables == READ_BACK and not again.marked and again.movedAside is None
    assert backing.sql("SELECT value FROM meta WHERE key = 'schema'") == [(str(statestorage.SCHEMA_VERSION),)]
    await again.close()


@pytest_twisted.ensureDeferred
async def test_laterChangeReplacesEarlier(backing: Backing) -> None:
    """
    Batches are written in order: a later change of a row wins over an
    earlier one, a deletion included, whether each was written at once or
    all waited together.
    """
    storage = backing.open()
    storage.change("server_rosters", "alice", ("alice", "v1", 1.0))
    storage.change("server_rosters", "bob", ("bob", "v1", 1.0))
    storage.change("server_rosters", "alice", ("alice", "v2", 2.0))
    storage.change("server_rosters", "bob", None)
    storage.changes({("pending", "carol"): ("carol", 1.0), ("pending", "dave"): ("dave", 1.0)})
    storage.change("pending", "carol", None)
    await written(storage)
    await storage.close()
    again = backing.open()
    assert again.tables["server_rosters"] == [("alice", "v2")] and again.tables["pending"] == [("dave", 1.0)]
    await again.close()


@pytest_twisted.ensureDeferred
async def test_refusedWritesKeptThenWrittenInOrder(backing: Backing) -> None:
    """
    While the storage refuses writes, changes return at once, are kept
    and counted, and C{problem} says why, logged once; once it takes
    writes again everything is written, the latest change of each row
    winning, and the problem clears with a log line.
    """
    storage = backing.open()
    storage.change("server_rosters", "carol", ("carol", "v0", 0.0))
    await written(storage)
    backing.refuseWrites()
    try:
        started = time.monotonic()
        with capturedLogs() as events:
            for n in range(50):
                storage.change("pending", f"user{n}", (f"user{n}", float(n)))
                storage.change("server_rosters", "alice", ("alice", f"v{n}", float(n)))
            storage.change("server_rosters", "carol", None)
            storage.change("pending", "user7", None)
            elapsed = time.monotonic() - started
            await until(lambda: storage.problem is not None, "a problem")
            await deferLater(reactor, 0.3)  # a few retries, all refused
        assert elapsed < 0.2, f"changes took {elapsed:.3f} s while writes were refused"
        assert storage.unsaved >= 50 and storage.problem is not None
        assert f"{storage.unsaved} changes kept in memory, retrying" in storage.problem
        assert len([e for e in events if "cannot write state" in formatEvent(e)]) == 1
    finally:
        backing.allowWrites()
    with capturedLogs() as events:
        await written(storage)
    assert any("written again after" in formatEvent(e) for e in events)
    await storage.close()
    again = backing.open()
    assert again.tables["server_rosters"] == [("alice", "v49")]
    assert sorted(again.tables["pending"]) == sorted((f"user{n}", float(n)) for n in range(50) if n != 7)
    await again.close()


@pytest_twisted.ensureDeferred
async def test_closeWithUnsavedChanges(backing: Backing) -> None:
    """
    Closing while the storage refuses writes ends at once, logs what is
    lost and leaves the mark: the next start is C{marked}, and a
    L{SyncState} on it trusts no stored version and makes every user it
    knew pending.  A clean close after that leaves no mark.
    """
    state = SyncState(backing.url, reactor)
    state.recordServer("alice", "v1")
    state.recordServer("bob", "v1")
    await until(lambda: state.unsaved == 0 and idle(state._storage), "written")
    backing.refuseWrites()
    try:
        with capturedLogs() as events:
            state.forgetServer("alice")
            started = time.monotonic()
            await state.close()
        assert time.monotonic() - started < statepg.CLOSE_CONNECT_TIMEOUT + 1
        assert any("1 changes not written at shutdown" in formatEvent(e) for e in events)
        assert state.unsaved == 1
    finally:
        backing.allowWrites()
    with capturedLogs() as events:
        again = SyncState(backing.url, reactor)
    assert again.serverVersion("alice") is None and again.serverVersion("bob") is None
    assert not again.remembersServer and again.pending() == ["alice", "bob"]
    assert any("refreshing and reading back every user it knew (2)" in formatEvent(e) for e in events)
    await until(lambda: again.unsaved == 0 and idle(again._storage), "written")
    await again.close()
    last = backing.open()
    assert not last.marked and sorted(row[0] for row in last.tables["pending"]) == ["alice", "bob"]
    await last.close()


Step = Callable[[statestorage.Cursor, statestorage.Dialect], None]


#: The schema version the code under test writes, before L{upgradeOnce}.
CURRENT = statestorage.SCHEMA_VERSION


def upgradeOnce(monkeypatch: pytest.MonkeyPatch, step: Step) -> None:
    """
    Make this code's schema one version newer (C{CURRENT + 1}), reached
    from C{CURRENT} by C{step}.
    """
    monkeypatch.setattr(statestorage, "SCHEMA_VERSION", CURRENT + 1)
    monkeypatch.setattr(statestorage, "UPGRADES", {**statestorage.UPGRADES, CURRENT: step})


def addNotes(db: statestorage.Cursor, dialect: statestorage.Dialect) -> None:
    db.execute("CREATE TABLE notes (username TEXT PRIMARY KEY, note TEXT NOT NULL)")
    db.execute(f"INSERT INTO notes VALUES ({dialect.placeholder}, {dialect.placeholder})", ("alice", dialect.name))


@pytest_twisted.ensureDeferred
async def test_olderSchemaUpgradedOnce(backing: Backing, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    A database of the current schema version, opened by code one version
    newer, gets the upgrade step once, at start, keeping its rows; the version is
    recorded.
    """
    storage = backing.open()
    storage.changes(EVERY_TABLE)
    await written(storage)
    await storage.close()
    upgradeOnce(monkeypatch, addNotes)
    upgraded = backing.open()
    assert upgraded.tables == READ_BACK
    await upgraded.close()
    assert backing.sql("SELECT value FROM meta WHERE key = 'schema'") == [(str(CURRENT + 1),)]
    kind = "sqlite" if isinstance(backing, SQLiteBacking) else "postgresql"
    assert backing.sql("SELECT username, note FROM notes") == [("alice", kind)]
    await backing.open().close()  # the step would fail if run again: the table exists
    assert backing.sql("SELECT count(*) FROM notes") == [(1,)]


@pytest_twisted.ensureDeferred
async def test_failedUpgradeChangesNothing(backing: Backing, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    An upgrade step that fails half-way stops start-up and leaves the
    database as it was: the step runs in the start's transaction.
    """
    await backing.open().close()

    def halfway(db: statestorage.Cursor, dialect: statestorage.Dialect) -> None:
        addNotes(db, dialect)
        db.execute("SELECT * FROM no_such_table")

    upgradeOnce(monkeypatch, halfway)
    with pytest.raises(StateError, match="no_such_table"):
        backing.open()
    assert backing.sql("SELECT value FROM meta WHERE key = 'schema'") == [(str(CURRENT),)]
    with pytest.raises(Exception, match="notes"):
        backing.sql("SELECT * FROM notes")


@pytest_twisted.ensureDeferred
async def test_newerSchemaRefused(backing: Backing) -> None:
    """
    A database of a newer schema version is refused with its version,
    not transient, and left untouched.
    """
    await backing.open().close()
    backing.sql(f"UPDATE meta SET value = '{CURRENT + 1}' WHERE key = 'schema'")
    before = backing.sql("SELECT key, value FROM meta ORDER BY key")
    with pytest.raises(StateError, match=f"schema version {CURRENT + 1}, this rosteradmin reads {CURRENT}") as caught:
        backing.open()
    assert not caught.value.transient
    assert backing.sql("SELECT key, value FROM meta ORDER BY key") == before


#: The tables of the first schema as each earlier release created them,
#: all recording schema version 1: the first (rosters, pending users and
#: meta), then with the doubted clients, then with the unpushed contacts.
@pytest_twisted.ensureDeferred
async def test_outboxTransactionsKeepTheirIdsAndOrder(backing: Backing) -> None:
    """
    The events outbox: events get growing ids; a transaction is the oldest
    events up to the batch, named by its last event's id, and until it is
    accepted the same events come back under the same id, events added
    since and a restart notwithstanding; once accepted, the next one
    follows, and ids are never given again, even with the table emptied.
    """
    storage = backing.open()
    outbox = Outbox(storage, bound=100)
    ids = [await outbox.add({"type": "t", "n": n}) for n in range(5)]
    assert all(isinstance(id, int) for id in ids) and ids == sorted(set(ids))  # type: ignore[type-var]
    first = await outbox.next(3)
    assert first is not None and first.id == ids[2]
    assert [(e["id"], e["n"]) for e in first.events] == list(zip(ids[:3], range(3)))
    await outbox.add({"type": "t", "n": 5})
    assert await outbox.next(3) == first
    await storage.close()
    storage = backing.open()
    outbox = Outbox(storage, bound=100)
    assert await outbox.next(10) == first
    assert await outbox.measure() == (6, first.oldest)
    assert await outbox.accepted(first.id) == 3
    second = await outbox.next(10)
    assert second is not None and second.id > first.id and [e["n"] for e in second.events] == [3, 4, 5]
    assert await outbox.accepted(second.id) == 3
    assert await outbox.next(10) is None and await outbox.measure() == (0, None)
    later = await outbox.add({"type": "t"})
    assert later is not None and later > second.id
    await storage.close()


@pytest_twisted.ensureDeferred
async def test_outboxBoundRefusesNewEvents(backing: Backing) -> None:
    """
    Past its bound the outbox refuses new events and keeps the old ones.
    """
    storage = backing.open()
    outbox = Outbox(storage, bound=2)
    kept = [await outbox.add({"type": "t", "n": n}) for n in range(3)]
    assert kept[2] is None and None not in kept[:2]
    transaction = await outbox.next(10)
    assert transaction is not None and [e["n"] for e in transaction.events] == [0, 1]
    await storage.close()


@pytest_twisted.ensureDeferred
async def test_schemaTwoGainsTheOutbox(backing: Backing) -> None:
    """
    A database of schema version 2 (before the outbox) is upgraded at
    start: the C{events} table is created, the rows kept.
    """
    storage = backing.open()
    storage.changes(EVERY_TABLE)
    await written(storage)
    await storage.close()
    backing.sql("DROP TABLE events")
    backing.sql("UPDATE meta SET value = '2' WHERE key = 'schema'")
    upgraded = backing.open()
    assert upgraded.tables == READ_BACK
    assert await Outbox(upgraded, bound=10).add({"type": "t"}) is not None
    await upgraded.close()
    assert backing.sql("SELECT value FROM meta WHERE key = 'schema'") == [(str(CURRENT),)]


EARLIER_RELEASES = {
    "first": """
        CREATE TABLE IF NOT EXISTS server_rosters (username TEXT PRIMARY KEY, version TEXT NOT NULL,
                                                   written_at REAL NOT NULL) WITHOUT ROWID;
        CREATE TABLE IF NOT EXISTS pending (username TEXT PRIMARY KEY, since REAL NOT NULL) WITHOUT ROWID;
        CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
    """,
    "doubted": """
        CREATE TABLE IF NOT EXISTS doubted_clients (username TEXT PRIMARY KEY, version TEXT NOT NULL) WITHOUT ROWID;
    """,
    "unpushed": """
        CREATE TABLE IF NOT EXISTS unpushed (username TEXT PRIMARY KEY, jids TEXT NOT NULL, version TEXT NOT NULL,
                                             since REAL NOT NULL) WITHOUT ROWID;
    """,
}


@pytest.mark.parametrize("release", ["first", "doubted", "unpushed"])
def test_sqliteFileOfTheFirstSchemaOpens(tmp_path: Path, release: str) -> None:
    """
    A file as each earlier release wrote it (its tables, C{INSERT OR
    REPLACE}, the schema row written by the state, or missing when that
    write failed) opens and reads, upgraded from version 1 to the current
    one: the tables added while the version stayed 1 are created at
    start, and written.
    """
    releases = list(EARLIER_RELEASES)
    ddl = "".join(EARLIER_RELEASES[name] for name in releases[:releases.index(release) + 1])
    for schemaRow in (True, False):
        path = tmp_path / f"old-{schemaRow}.sqlite"
        db = sqlite3.connect(path)
        db.executescript(ddl + """
            INSERT OR REPLACE INTO server_rosters VALUES ('alice', 'v1', 1.0);
            INSERT OR REPLACE INTO pending VALUES ('bob', 2.0);
        """)
        if schemaRow:
            db.execute("INSERT OR REPLACE INTO meta VALUES ('schema', '1')")
        db.commit()
        db.close()
        state = SyncState(str(path))
        assert state.serverVersion("alice") == "v1" and state.pending() == ["bob"]
        state.doubtClients("carol", "v3")
        assert state.unsaved == 0
        state.close()
        assert sqlite3.connect(path).execute("SELECT value FROM meta WHERE key = 'schema'").fetchall() == [
            (str(CURRENT),)]
        assert sqlite3.connect(path).execute("SELECT * FROM doubted_clients").fetchall() == [("carol", "v3")]
        assert sqlite3.connect(path).execute("SELECT count(*) FROM unpushed").fetchall() == [(0,)]


@pytest_twisted.ensureDeferred
async def test_postgresqlCrashLeavesItsHold(postgresql: PostgreSQLServer) -> None:
    """
    A process that ends without closing (killed, with every change
    written as far as it knows) leaves its C{holder} row: a write may
    have been in flight, so the next start is C{marked}.  The holder is
    named in the warning.
    """
    backing = PostgreSQLBacking(postgresql)
    storage = backing.open()
    storage.change("server_rosters", "alice", ("alice", "v1", 1.0))
    await written(storage)
    assert [row[0] for row in backing.sql("SELECT key FROM meta ORDER BY key")] == ["holder", "schema"]
    backing.sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'rosteradmin'")
    with capturedLogs() as events:
        again = backing.open()
    assert again.marked and again.tables["server_rosters"] == [("alice", "v1")]
    assert any(" pid " in formatEvent(e) and "did not close it cleanly" in formatEvent(e) for e in events)
    await again.close()
    last = backing.open()
    assert not last.marked
    await last.close()
    with capturedLogs():
        await storage.close()  # the killed process's thread, stopped here


@pytest_twisted.ensureDeferred
async def test_postgresqlStatementTimeout(postgresql: PostgreSQLServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    A write stuck behind another session's lock is cancelled by the
    statement timeout, kept and retried, and written once the lock goes.
    """
    import psycopg

    monkeypatch.setattr(statepg, "STATEMENT_TIMEOUT", 0.3)
    monkeypatch.setattr(statepg, "RETRY_MAX_DELAY", 0.1)
    backing = PostgreSQLBacking(postgresql)
    storage = backing.open()
    holder = psycopg.connect(backing.url)
    holder.execute("LOCK TABLE pending IN ACCESS EXCLUSIVE MODE")
    try:
        with capturedLogs():
            storage.change("pending", "alice", ("alice", 1.0))
            await until(lambda: storage.problem is not None, "a problem")
        assert "statement timeout" in (storage.problem or "") and storage.unsaved == 1
    finally:
        holder.rollback()
        holder.close()
    with capturedLogs():
        await written(storage)
    await storage.close()
    assert backing.sql("SELECT username FROM pending") == [("alice",)]


def test_postgresqlConnectTimeout(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    A server that accepts the connection and never answers is given up
    after the connect timeout, as a transient error (systemd restarts).
    """
    monkeypatch.setattr(statepg, "CONNECT_TIMEOUT", 2)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        started = time.monotonic()
        with pytest.raises(StateError, match="timeout") as caught:
            openStorage(f"postgresql://nobody@127.0.0.1:{silent.getsockname()[1]}/db", reactor)
    assert caught.value.transient and time.monotonic() - started < 4


def test_postgresqlRefusalsNameTheDatabaseWithoutPassword(postgresql: PostgreSQLServer) -> None:
    """
    A database that does not exist is a configuration error (not
    transient), and the URL named in it has no password.
    """
    url = postgresql.url("missing").replace("rosteradmin@", "rosteradmin:s3cret@") + "?password=s3cret"
    with pytest.raises(StateError, match="missing") as caught:
        openStorage(url, reactor)
    assert not caught.value.transient and "s3cret" not in str(caught.value)
    assert statepg.redacted(url) == postgresql.url("missing")


def backendPids(backing: PostgreSQLBacking) -> list[int]:
    """
    The server processes of the storages' connections.
    """
    return [row[0] for row in backing.sql("SELECT pid FROM pg_stat_activity "
                                          "WHERE application_name = 'rosteradmin' AND datname = current_database()")]


@pytest_twisted.ensureDeferred
async def test_postgresqlCloseBoundedWithAWriteInFlight(postgresql: PostgreSQLServer) -> None:
    """
    Closing while a write waits on a server that stopped answering (its
    processes frozen: the kernel still acknowledges every packet, so no
    socket timeout fires) ends within a few seconds: the write is
    interrupted, the loss logged, and the next start is marked.
    """
    backing = PostgreSQLBacking(postgresql)
    storage = backing.open()
    storage.change("pending", "alice", ("alice", 1.0))
    await written(storage)
    postmaster = int((postgresql.directory / "data" / "postmaster.pid").read_text().split()[0])
    frozen = [*backendPids(backing), postmaster]
    for pid in frozen:
        os.kill(pid, signal.SIGSTOP)
    try:
        with capturedLogs() as events:
            storage.change("pending", "bob", ("bob", 2.0))
            await deferLater(reactor, 0.2)  # the write is sent, and waits for an answer
            started = time.monotonic()
            closed = storage.close()
            await until(lambda: closed.called, "closed", timeout=10)
        assert time.monotonic() - started < 5
        assert any("1 changes not written at shutdown" in formatEvent(e) for e in events)
    finally:
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)
    again = backing.open()
    assert again.marked
    await again.close()


@pytest_twisted.ensureDeferred
async def test_postgresqlCleanCloseLeavesAnotherHolder(postgresql: PostgreSQLServer) -> None:
    """
    Of two processes on one database, the one that closes cleanly ends
    only its own hold: the other's C{holder} row, which replaced its own
    when the other started, stays, so a crash of the other still marks
    the next start.
    """
    backing = PostgreSQLBacking(postgresql)
    first = backing.open()
    other = "db2.example.org pid 4242 since 2026-01-01T00:00:00Z"
    backing.sql("UPDATE meta SET value = %s WHERE key = 'holder'", (other,))
    await first.close()
    assert backing.sql("SELECT value FROM meta WHERE key = 'holder'") == [(other,)]
    with capturedLogs():
        again = backing.open()
    assert again.marked
    await again.close()


def test_postgresqlFailedSetUpClosesTheConnection(postgresql: PostgreSQLServer,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """
    A connection whose set-up fails (the server refuses its statement
    timeout) is closed, not left open behind the error.
    """
    monkeypatch.setattr(statepg, "STATEMENT_TIMEOUT", -1.0)
    backing = PostgreSQLBacking(postgresql)
    with pytest.raises(StateError, match="statement_timeout") as caught:
        backing.open()
    assert not caught.value.transient
    assert backendPids(backing) == []


@pytest_twisted.ensureDeferred
async def test_postgresqlUnsavedOnlyWhileWritesFail(postgresql: PostgreSQLServer) -> None:
    """
    A change in flight while the server takes writes is not unsaved (an
    alert on C{rosteradmin_state_unsaved > 0} would fire on every
    change): like the file's, the count is what waits while writes fail.
    """
    backing = PostgreSQLBacking(postgresql)
    storage = backing.open()
    storage.change("pending", "alice", ("alice", 1.0))
    assert storage.unsaved == 0 and storage.problem is None
    await written(storage)
    await storage.close()


@pytest.mark.parametrize("query", ["sslmode=bogus", "port=abc", "connect_timeout=soon", "target_session_attrs=any-of"])
def test_postgresqlBadOptionIsAConfigurationError(query: str) -> None:
    """
    A URL libpq reads but whose options it refuses is a configuration
    error, not a transient one: restarting cannot fix it.
    """
    with pytest.raises(StateError) as caught:
        openStorage(f"postgresql://nobody:s3cret@127.0.0.1:1/db?{query}", reactor)
    assert not caught.value.transient and "s3cret" not in str(caught.value)


def test_redactedDropsEveryPassword() -> None:
    """
    Every password of the URL is left out: the user's, and any option
    naming one (the client key's C{sslpassword}).
    """
    url = "postgresql://u:s3cret@h/db?sslpassword=k3y&password=s3cret&sslmode=require&PassWordX=p"
    assert statepg.redacted(url) == "postgresql://u@h/db?sslmode=require"
