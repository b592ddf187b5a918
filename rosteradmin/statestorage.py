# -*- test-case-name: tests.test_stateengines -*-
"""
What a storage of rosteradmin's state is: the contract
(L{IStateStorage}) that L{rosteradmin.state.SyncState} writes through,
and the tables, their schema version and its upgrades, in the SQL both
storages speak (L{rosteradmin.statefile} for SQLite, the default, and
L{rosteradmin.statepg} for PostgreSQL).

The database records the version of its schema (the C{meta} row
C{schema}).  At start a storage calls L{prepare}: a new database gets the
first schema and then every upgrade, an older one the upgrades it lacks
(and any table of the first schema it lacks: earlier releases added two
while recording version 1), in the start's transaction (so a failed upgrade leaves it as it was); a
newer one is refused, untouched, since this code would misread it.  A
change of schema is therefore one function added to L{UPGRADES} (taking
version I{n} to I{n + 1}, in the SQL of both dialects) and
L{SCHEMA_VERSION} raised by one; L{TABLES} then names what the latest
schema holds for the state, read at start.

One table is not read at start: C{requests} (schema version 2), the
durable intake of API requests a standby accepted for the leader to
apply (L{rosteradmin.intake} reads and writes it, each time through
L{IStateStorage.transact}: its rows must be committed before the API
answers, which the write-behind of L{IStateStorage.changes} cannot say).
Nor is C{events} (schema version 3), the durable outbox of what users
tried for the web app (L{rosteradmin.outbox}, through
L{IStateStorage.transact} in the same way).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from zope.interface import Attribute, Interface

#: The schema this code reads and writes.
SCHEMA_VERSION = 3

T = TypeVar("T")

#: A row of one of L{TABLES}, its columns in their order.
Row = tuple[object, ...]

#: Changes to write: a row to put under its table and key, or C{None} to
#: delete it.
Changes = Mapping[tuple[str, str], "Row | None"]

#: Each table's columns, the key first: what is read at start and written.
TABLES: Mapping[str, Sequence[str]] = {
    "server_rosters": ("username", "version", "written_at"),
    "pending": ("username", "since"),
    "doubted_clients": ("username", "version"),
    "unpushed": ("username", "jids", "version", "since"),
    "meta": ("key", "value"),
}

#: The table of accepted API requests (L{rosteradmin.intake}), not read
#: at start.
INTAKE_TABLE = "requests"

#: The outbox of events for the web app (L{rosteradmin.outbox}), not
#: read at start.
EVENTS_TABLE = "events"

#: Columns not handed to L{rosteradmin.state.SyncState} at start.
_UNREAD = {"server_rosters": {"written_at"}}

#: C{meta} rows the storages keep for themselves, not handed up.
OWN_META = frozenset({"schema", "holder"})


class StateError(Exception):
    """
    The state cannot be opened or is not rosteradmin's.

    @ivar transient: Whether it may clear up by itself (another process
        held the file's lock throughout start-up, the database server did
        not answer).
    """

    def __init__(self, message: str, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


class IStateStorage(Interface):
    """
    Where L{rosteradmin.state.SyncState}'s facts are stored: read once at
    start, then written without ever making the reactor wait.

    A storage opens in its constructor, before the reactor runs: it
    creates or upgrades the schema (L{prepare}) and reads every table, or
    raises L{StateError}.  From then on memory answers every question, and
    each batch of changes is written in one transaction, batches in the
    order they were made; a batch the storage cannot write yet waits, with
    every later one, and a later change of a row replaces an earlier one.
    """

    path = Attribute("The storage as named to the user (a file, or a URL without its password).")
    tables: dict[str, list[Any]] = Attribute(
        "Every table's rows as read at start (L{readTables}), by table name.")
    marked: bool = Attribute(
        "Whether the previous run may have ended with changes this storage never took: "
        "then the versions it holds may be older than what the server holds, and none may be trusted.")
    movedAside: str | None = Attribute(
        "Where an unreadable store found at start was moved, or C{None}.")
    problem: str | None = Attribute(
        "Why changes are waiting in memory for the storage to take them, or C{None} when "
        "everything is written (C{/healthz} reports it).")
    unsaved: int = Attribute("Changes not written yet.")

    def change(table: str, key: str, row: Row | None) -> None:
        """
        Write one change: the row to put under C{key} in C{table}, or
        C{None} to delete it.
        """

    def changes(changes: Changes) -> None:
        """
        Write changes in one transaction, after every earlier batch.
        Returns at once; what cannot be written yet is kept and retried.
        """

    def transact(work: Callable[[Cursor, Dialect], T], timeout: float) -> Deferred[T]:
        """
        Run C{work} in one transaction of its own and fire with what it
        returned once committed, or fail (with the driver's error, a
        L{StateError}, or L{twisted.internet.defer.TimeoutError} after
        C{timeout} seconds): unlike L{changes}, what it writes is durable
        when the result fires.  Ordered after the L{changes} batches made
        before it only as far as the storage's own order goes (PostgreSQL:
        the same thread; SQLite: at once, on the caller's thread).

        @param work: Runs the transaction's statements; in the storage's
            thread for PostgreSQL, so it must touch nothing else.
        """

    def unmark() -> None:
        """
        The caller has acted on L{marked} (trusts no stored version) and
        its changes saying so are written: a later start need not distrust.
        """

    def close() -> Deferred[None]:
        """
        Write what waits, with a last, short chance for the storage to take
        it, and close; a loss is logged, and the next start is L{marked}.
        Fires once closed.
        """


class Retries:
    """
    A storage's writes that fail: why (L{problem}), logged once when they
    start failing and once when they succeed again, and retried with a
    backoff that doubles up to a cap.

    @ivar failure: Why the last write failed, or C{None} once one
        succeeded.
    """

    log = Logger()

    def __init__(self, clock: IReactorTime, noun: str, path: str, first: float, most: float) -> None:
        """
        @param noun: What the storage is, in log lines (C{"state file"}).
        @param path: The storage as named to the user.
        @param first: Seconds before the first retry.
        @param most: Seconds between retries at most.
        """
        self._clock = clock
        self._noun = noun
        self._path = path
        self._first = first
        self._most = most
        self._delay = first
        self._call: IDelayedCall | None = None
        self._since = 0.0
        self.failure: str | None = None

    @property
    def scheduled(self) -> bool:
        """
        Whether a retry is due: writing before it would fail again.
        """
        return self._call is not None

    def failed(self, why: str, retry: Callable[[], None] | None) -> bool:
        """
        A write failed: log it if it is the first since writes succeeded,
        and call C{retry} after the backoff (unless C{None}: no retry).

        @return: Whether writes were succeeding until this one.
        """
        first = self.failure is None
        if first:
            self._since = time.time()
            self.log.error("cannot write {noun} {path}: {why}; keeping its changes in memory until it can",
                           noun=self._noun, path=self._path, why=why)
        self.failure = why
        if retry is not None:
            self._call = self._clock.callLater(self._delay, self._retry, retry)
            self._delay = min(self._delay * 2, self._most)
        return first

    def _retry(self, retry: Callable[[], None]) -> None:
        self._call = None
        retry()

    def succeeded(self) -> None:
        """
        A write succeeded: the failures, if any, are over.
        """
        if self.failure is None:
            return
        self.log.info("{noun} {path} written again after {elapsed:.1f} s", noun=self._noun, path=self._path,
                      elapsed=time.time() - self._since)
        self.failure = None
        self._delay = self._first

    def cancel(self) -> None:
        """
        Call no retry that is due.
        """
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def problem(self, waiting: int) -> str | None:
        """
        Why C{waiting} changes are kept in memory, or C{None} while writes
        succeed.
        """
        if self.failure is None:
            return None
        since = time.strftime("%H:%M:%S", time.gmtime(self._since))
        return (f"cannot write {self._path} since {since} UTC: {self.failure}; "
                f"{waiting} changes kept in memory, retrying")


class Cursor(Protocol):
    """
    What both drivers' cursors (C{sqlite3}, C{psycopg}) offer and this
    module uses.
    """

    def execute(self, sql: str, parameters: Sequence[Any] = ..., /) -> Any: ...

    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]], /) -> Any: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


@dataclass(frozen=True)
class Dialect:
    """
    Where SQLite and PostgreSQL differ, for the statements both run.

    @ivar name: C{"sqlite"} or C{"postgresql"}, for upgrade steps that
        must tell them apart.
    @ivar placeholder: The driver's parameter marker.
    @ivar real: The type of a floating-point column.
    @ivar tableSuffix: Appended to C{CREATE TABLE} (SQLite's C{WITHOUT
        ROWID}: every table is looked up by its key).
    @ivar tablesQuery: Lists the names of the database's tables.
    """

    name: str
    placeholder: str
    real: str
    tableSuffix: str
    tablesQuery: str

    def upsert(self, table: str) -> str:
        """
        The statement putting one row of C{table}, replacing the row of
        the same key.
        """
        columns = TABLES[table]
        marks = ", ".join([self.placeholder] * len(columns))
        updates = ", ".join(f"{column} = EXCLUDED.{column}" for column in columns[1:])
        return (f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks}) "
                f"ON CONFLICT ({columns[0]}) DO UPDATE SET {updates}")


SQLITE = Dialect("sqlite", "?", "REAL", " WITHOUT ROWID",
                 "SELECT name FROM sqlite_master WHERE type = 'table'")
POSTGRESQL = Dialect("postgresql", "%s", "DOUBLE PRECISION", "",
                     "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()")


def _first(dialect: Dialect) -> dict[str, str]:
    """
    The tables of schema version 1 and their columns' definitions: never
    changed, the upgrades start from them.
    """
    real = dialect.real
    return {
        "server_rosters": f"username TEXT PRIMARY KEY, version TEXT NOT NULL, written_at {real} NOT NULL",
        "pending": f"username TEXT PRIMARY KEY, since {real} NOT NULL",
        "doubted_clients": "username TEXT PRIMARY KEY, version TEXT NOT NULL",
        "unpushed": f"username TEXT PRIMARY KEY, jids TEXT NOT NULL, version TEXT NOT NULL, since {real} NOT NULL",
        "meta": "key TEXT PRIMARY KEY, value TEXT NOT NULL",
    }


def _createFirst(db: Cursor, dialect: Dialect) -> None:
    """
    Create each table of schema version 1 that is missing.  Earlier
    releases added C{doubted_clients} and then C{unpushed} while recording
    version 1, as C{CREATE TABLE IF NOT EXISTS} at every start: a database
    they wrote may hold only the first three, whatever version it records.
    """
    for table, columns in _first(dialect).items():
        db.execute(f"CREATE TABLE IF NOT EXISTS {table} ({columns}){dialect.tableSuffix}")


def _addRequests(db: Cursor, dialect: Dialect) -> None:
    """
    Version 2: the C{requests} table (L{rosteradmin.intake}).  C{seq},
    given by the database, orders the requests as they were committed
    (both engines count up, whichever instance inserts); C{id} is what
    the API hands out, random so that it cannot be guessed.
    """
    seq = ("seq INTEGER PRIMARY KEY AUTOINCREMENT" if dialect.name == "sqlite"
           else "seq BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY")
    db.execute(f"CREATE TABLE IF NOT EXISTS requests ({seq}, id TEXT NOT NULL UNIQUE, kind TEXT NOT NULL, "
               f"body TEXT NOT NULL, accepted_at {dialect.real} NOT NULL, status TEXT NOT NULL, "
               f"attempts INTEGER NOT NULL DEFAULT 0, claimed_by TEXT, outcome TEXT, finished_at {dialect.real})")
    db.execute("CREATE INDEX IF NOT EXISTS requests_status ON requests (status, seq)")


def _addEvents(db: Cursor, dialect: Dialect) -> None:
    """
    Version 3: the C{events} table (L{rosteradmin.outbox}).  C{seq},
    given by the database, is each event's id and orders them; neither
    engine ever gives a number again, even once its row is deleted, so
    the transaction ids taken from it (C{txn}, the C{seq} of the
    transaction's last event, set when the transaction is first sent)
    only grow.
    """
    seq = ("seq INTEGER PRIMARY KEY AUTOINCREMENT" if dialect.name == "sqlite"
           else "seq BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY")
    db.execute(f"CREATE TABLE IF NOT EXISTS events ({seq}, txn BIGINT, body TEXT NOT NULL, "
               f"created_at {dialect.real} NOT NULL)")


#: Upgrade steps: the one under I{n} takes a database of schema version
#: I{n} to I{n + 1}, inside the start's transaction.
UPGRADES: dict[int, Callable[[Cursor, Dialect], None]] = {1: _addRequests, 2: _addEvents}


#: What L{schemaVersion} says of a database with our tables but no
#: recorded version: one of the first schema whose first write (of its
#: version) failed.
UNRECORDED = 0


def schemaVersion(db: Cursor, dialect: Dialect, name: str) -> int | None:
    """
    The schema version of the database, L{UNRECORDED}, or C{None} for an
    empty one.

    @param name: The database as named to the user, for errors.
    @raise StateError: It holds tables of ours without C{meta} (another
        program's), or a version that is not a number.
    """
    tables = {row[0] for row in db.execute(dialect.tablesQuery).fetchall()}
    if "meta" not in tables:
        if dialect.name == "sqlite" and tables:
            raise StateError(f"{name}: not a rosteradmin state file (it holds the tables {', '.join(sorted(tables))})")
        ours = tables & (set(TABLES) | {INTAKE_TABLE, EVENTS_TABLE})
        if ours:
            raise StateError(f"{name}: not a rosteradmin state database (it holds the tables "
                             f"{', '.join(sorted(ours))} without rosteradmin's meta table)")
        return None
    row = db.execute(f"SELECT value FROM meta WHERE key = {dialect.placeholder}", ("schema",)).fetchone()
    if row is None:
        return UNRECORDED
    try:
        return int(row[0])
    except ValueError:
        raise StateError(f"{name}: schema version {row[0]}, this rosteradmin reads {SCHEMA_VERSION}") from None


def needsWriting(db: Cursor, dialect: Dialect, found: int | None, name: str) -> bool:
    """
    Whether a database of schema C{found} (L{schemaVersion}) must be
    created, upgraded, have its version recorded, or get the tables of
    version 1 that an earlier release did not create (L{_createFirst}).

    @raise StateError: The version is newer than this code's, or older
        than any upgrade reaches.
    """
    start = 1 if found in (None, UNRECORDED) else found
    assert start is not None
    if not 1 <= start <= SCHEMA_VERSION or any(step not in UPGRADES for step in range(start, SCHEMA_VERSION)):
        raise StateError(f"{name}: schema version {found}, this rosteradmin reads {SCHEMA_VERSION}")
    if found != SCHEMA_VERSION:
        return True
    tables = {row[0] for row in db.execute(dialect.tablesQuery).fetchall()}
    return not tables >= _first(dialect).keys()


def prepare(db: Cursor, dialect: Dialect, found: int | None) -> None:
    """
    Create the missing tables of version 1, upgrade the schema from
    C{found} (L{schemaVersion}) to L{SCHEMA_VERSION} and record it, inside
    the caller's transaction.
    """
    _createFirst(db, dialect)
    start = 1 if found in (None, UNRECORDED) else found
    assert start is not None
    for step in range(start, SCHEMA_VERSION):
        UPGRADES[step](db, dialect)
    db.execute(dialect.upsert("meta"), ("schema", str(SCHEMA_VERSION)))


def readTables(db: Cursor) -> dict[str, list[Any]]:
    """
    Every table's rows, as L{rosteradmin.state.SyncState} takes them at
    start: without the columns it never reads, nor the storage's own
    C{meta} rows (L{OWN_META}).
    """
    tables: dict[str, list[Any]] = {}
    for table, columns in TABLES.items():
        selected = [column for column in columns if column not in _UNREAD.get(table, ())]
        rows = db.execute(f"SELECT {', '.join(selected)} FROM {table}").fetchall()
        tables[table] = [tuple(row) for row in rows if table != "meta" or row[0] not in OWN_META]
    return tables


def apply(db: Cursor, dialect: Dialect, changes: Changes) -> None:
    """
    Put or delete each changed row, inside the caller's transaction.
    """
    for table, columns in TABLES.items():
        rows = [row for (changed, _), row in changes.items() if changed == table and row is not None]
        deleted = [(key,) for (changed, key), row in changes.items() if changed == table and row is None]
        if rows:
            db.executemany(dialect.upsert(table), rows)
        if deleted:
            db.executemany(f"DELETE FROM {table} WHERE {columns[0]} = {dialect.placeholder}", deleted)
