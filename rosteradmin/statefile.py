# -*- test-case-name: tests.test_state -*-
"""
The state file: rows in SQLite, read once at start and written without
ever making the reactor wait (L{rosteradmin.state.SyncState} keeps the
facts; this module, the default L{IStateStorage}, how they are stored;
L{rosteradmin.statestorage}, the tables and their schema upgrades).

The reactor never waits on the file.  Everything is read once, at start,
into memory, which answers every question from then on.  Each change is
written at once, in one transaction, without waiting for SQLite's lock
(another process may hold it: a backup, an operator's C{sqlite3} shell):
when the file cannot take it (locked, disk full, read-only), the change
stays in memory with every later one, and all are written together once
it can, retried with a capped backoff.  Meanwhile L{StateFile.problem} says why
(C{/healthz} reports it).  A crash meanwhile loses what is not written:
then the file may record a version the server no longer holds, which the
cheap path would trust.  So a marker file beside it (C{<file>.unsaved})
exists while changes wait, and a start that finds it trusts no version
and refreshes every user the file knew.  WAL checkpoints, which C{fsync},
run in a thread of their own.

Writes are small and frequent, so the database runs in WAL mode with
C{synchronous=NORMAL}: a committed write survives the process being killed
(only a power loss may lose the last ones, which the next sync repairs).
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar, cast

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from rosteradmin.statestorage import (
    SQLITE, TABLES, Cursor, Dialect, IStateStorage, Changes, Retries, Row, StateError, apply, needsWriting,
    prepare, readTables, schemaVersion,
)

T = TypeVar("T")

#: Seconds start-up waits for another process's lock on the file.
OPEN_TIMEOUT = 5.0

#: Seconds between attempts to write changes the file did not take, at
#: first and at most: a file free again is written within the latter.
RETRY_DELAY = 0.1
RETRY_MAX_DELAY = 1.0

#: Seconds the last attempt at shutdown may wait for the lock.
CLOSE_TIMEOUT = 1.0

#: Commits between WAL checkpoints (each adds a page or more to the WAL:
#: about SQLite's own default of 1,000 pages).
CHECKPOINT_COMMITS = 1000

#: What SQLite says of a file it cannot read as a database.
_UNREADABLE = frozenset({"SQLITE_NOTADB", "SQLITE_CORRUPT"})

#: What SQLite says while another connection holds the lock.
_LOCKED = frozenset({"SQLITE_BUSY", "SQLITE_LOCKED"})

@implementer(IStateStorage)
class StateFile:
    """
    The rows of rosteradmin's tables, in one SQLite file (or in no file at
    all, for C{":memory:"}: then nothing is written).

    @ivar path: The database file, or C{":memory:"}.
    @ivar tables: Every table's rows as read at start.
    @ivar marked: Whether the marker of unwritten changes exists (found at
        start: the previous run ended without writing some).
    @ivar movedAside: Where an unreadable file found at start was moved,
        or C{None}.
    """

    log = Logger()

    def __init__(self, path: str = ":memory:", clock: IReactorTime | None = None) -> None:
        """
        @param clock: Schedules retries of writes the file did not take;
            the global reactor if not given.
        @raise StateError: The file cannot be opened, or holds a newer
            schema or another program's tables.
        """
        self.path = path
        if clock is None:
            from twisted.internet import reactor

            clock = cast(IReactorTime, reactor)
        self._unsaved: dict[tuple[str, str], Row | None] = {}
        self._retries = Retries(clock, "state file", path, RETRY_DELAY, RETRY_MAX_DELAY)
        self._commits = 0
        self._checkpointer: threading.Thread | None = None
        self.movedAside: str | None = None
        self._db: sqlite3.Connection | None = None
        self._closed = False
        self._memory: sqlite3.Connection | None = None
        if path != ":memory:":
            self._db = self._open()
        self.tables = self._read()
        self.marked = self._db is not None and os.path.exists(self._marker)

    @property
    def _marker(self) -> str:
        """
        A file that exists while the state file lacks changes made in
        memory: created when a write first fails, removed once all are
        written.  Found at start, it says the previous run ended without
        writing them.
        """
        return self.path + ".unsaved"

    def _open(self) -> sqlite3.Connection:
        """
        Open the file, moving it aside first if SQLite cannot read it.
        """
        try:
            return _connect(self.path)
        except _Unreadable as e:
            reason = str(e)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        aside = f"{self.path}.unreadable-{stamp}"
        try:
            for suffix in ("", "-wal", "-shm", "-journal"):
                if os.path.exists(self.path + suffix):
                    os.replace(self.path + suffix, aside + suffix)
        except OSError as e:
            raise StateError(f"{self.path}: unreadable ({reason}), and cannot be moved aside: {e.strerror}") from None
        self.movedAside = aside
        self.log.error(
            "state file {path} is unreadable ({reason}): moved it to {aside} and started a new one; "
            "every user's server roster is unknown until the next sync reads it back",
            path=self.path, reason=reason, aside=aside)
        try:
            return _connect(self.path)
        except _Unreadable as e:
            raise StateError(f"{self.path}: {e}") from None

    def _read(self) -> dict[str, list[Any]]:
        """
        Every table's rows, once, at start: memory answers from then on.
        """
        if self._db is None:
            return {table: [] for table in TABLES}
        try:
            return readTables(self._db.cursor())
        except sqlite3.Error as e:
            raise StateError(f"{self.path}: {e}") from None

    def close(self) -> Deferred[None]:
        """
        Write what the file has not taken yet, waiting a little for its
        lock (this runs at shutdown), and close it: done when this returns.
        """
        self._retries.cancel()
        self._closed = True
        if self._db is None:
            return succeed(None)
        if self._unsaved:
            self._db.execute(f"PRAGMA busy_timeout = {int(CLOSE_TIMEOUT * 1000)}")
            self._save()
            self._retries.cancel()
        if self._unsaved:
            self.log.error("state file {path}: {count} changes not written at shutdown ({why}); "
                           "the next start refreshes every user", path=self.path, count=len(self._unsaved),
                           why=self._retries.failure)
        self._db.close()
        self._db = None
        return succeed(None)

    def transact(self, work: Callable[[Cursor, Dialect], T], timeout: float) -> Deferred[T]:
        """
        Run C{work} in one transaction now, on the reactor's thread, and
        return its result committed (C{synchronous=NORMAL}: a commit
        survives the process being killed), or a failure.  It never
        waits for the lock, so C{timeout} is moot: a file another process
        holds fails at once.  Without a file (C{":memory:"}) the
        transaction runs in a database in memory, created on first use:
        nothing survives the process, as with the rest of such a state.
        """
        if self._closed:
            return fail(StateError(f"{self.path}: closed"))
        db = self._db if self._db is not None else self._memoryDatabase()
        before = db.total_changes
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                result = work(db.cursor(), SQLITE)
                db.execute("COMMIT")
            finally:
                if db.in_transaction:
                    db.execute("ROLLBACK")
        except sqlite3.Error as e:
            return fail(StateError(f"{self.path}: {e}", transient=e.sqlite_errorname in _LOCKED))
        except Exception:
            return fail()
        if db is self._db and db.total_changes != before:
            self._committed()
        return succeed(result)

    def _memoryDatabase(self) -> sqlite3.Connection:
        """
        The database in memory that L{transact} writes when there is no
        file, with the latest schema.
        """
        if self._memory is None:
            self._memory = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
            prepare(self._memory.cursor(), SQLITE, None)
        return self._memory

    @property
    def problem(self) -> str | None:
        """
        Why changes are waiting in memory for the file to take them, or
        C{None} when everything is written.
        """
        return self._retries.problem(len(self._unsaved))

    @property
    def unsaved(self) -> int:
        """
        Changes not written to the file yet.
        """
        return len(self._unsaved)

    def change(self, table: str, key: str, row: Row | None) -> None:
        """
        Write one change (a row for C{key}, or C{None} to delete it) now,
        or with the others waiting if the file does not take writes.
        """
        self.changes({(table, key): row})

    def changes(self, changes: Changes) -> None:
        """
        Write changes in one transaction, or keep them with the others
        waiting: a later change of the same row replaces an earlier one.
        """
        if self._db is None or not changes:
            return
        self._unsaved.update(changes)
        if not self._retries.scheduled:
            self._save()

    def _save(self) -> None:
        """
        Write every waiting change in one transaction, without waiting for
        the lock; if the file does not take it, try again later.
        """
        assert self._db is not None
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                apply(self._db.cursor(), SQLITE, self._unsaved)
                self._db.execute("COMMIT")
            finally:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
        except sqlite3.Error as e:
            if self._retries.failed(str(e), self._retrySave):
                self._mark()
            return
        self._unsaved.clear()
        if self.marked:
            self.unmark()
        self._retries.succeeded()
        self._committed()

    def _committed(self) -> None:
        """
        Count a commit that wrote, and checkpoint after enough of them.
        """
        self._commits += 1
        if self._commits >= CHECKPOINT_COMMITS:
            self._checkpoint()

    def _mark(self) -> None:
        try:
            os.close(os.open(self._marker, os.O_WRONLY | os.O_CREAT, 0o600))
        except OSError as e:
            self.log.warn("cannot create {marker}: {why}; a crash now would leave the state file's "
                          "versions trusted though changes are missing", marker=self._marker, why=e.strerror)
            return
        self.marked = True

    def unmark(self) -> None:
        try:
            os.unlink(self._marker)
        except FileNotFoundError:
            pass
        except OSError as e:
            self.log.warn("cannot remove {marker}: {why}; the next start refreshes every user",
                          marker=self._marker, why=e.strerror)
            return
        self.marked = False

    def _retrySave(self) -> None:
        if self._unsaved and self._db is not None:
            self._save()

    def _checkpoint(self) -> None:
        """
        Copy the WAL into the database in a thread of its own: it
        C{fsync}s, which may take long on a busy disk.
        """
        if self._checkpointer is not None and self._checkpointer.is_alive():
            return
        self._commits = 0
        self._checkpointer = threading.Thread(target=_checkpoint, args=(self.path,), daemon=True,
                                              name="rosteradmin-state-checkpoint")
        self._checkpointer.start()


class _Unreadable(Exception):
    """
    SQLite cannot read the file as a database.
    """


def _connect(path: str) -> sqlite3.Connection:
    """
    Open the file (creating it if need be), check that it is a readable
    database of our schema, and make its connection never wait for a lock.

    @raise _Unreadable: SQLite cannot read it as a database.
    @raise StateError: It cannot be opened or created, holds a newer
        schema, or is not ours.
    """
    try:
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=OPEN_TIMEOUT)
    except sqlite3.Error as e:
        raise StateError(f"{path}: {e}") from None
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        # Checkpoints run in a thread (StateFile._checkpoint).
        db.execute("PRAGMA wal_autocheckpoint=0")
        check = [str(row[0]) for row in db.execute("PRAGMA quick_check")]
        if check != ["ok"]:
            raise _Unreadable("; ".join(check[:3]))
        if needsWriting(db.cursor(), SQLITE, schemaVersion(db.cursor(), SQLITE, path), path):
            _prepare(db, path)
        db.execute("PRAGMA busy_timeout = 0")
    except sqlite3.Error as e:
        db.close()
        if e.sqlite_errorname in _UNREADABLE:
            raise _Unreadable(str(e)) from None
        raise StateError(f"{path}: {e}", transient=e.sqlite_errorname in _LOCKED) from None
    except BaseException:
        db.close()
        raise
    return db


def _prepare(db: sqlite3.Connection, path: str) -> None:
    """
    Create or upgrade the file's schema, in one transaction that waits for
    the lock (another process creating or upgrading it at the same time
    is then seen to have done it).
    """
    db.execute("BEGIN IMMEDIATE")
    try:
        cursor = db.cursor()
        found = schemaVersion(cursor, SQLITE, path)
        if needsWriting(cursor, SQLITE, found, path):
            prepare(cursor, SQLITE, found)
        db.execute("COMMIT")
    finally:
        if db.in_transaction:
            db.execute("ROLLBACK")


def _checkpoint(path: str) -> None:
    """
    Copy the WAL into the database without blocking writers (a passive
    checkpoint), on a connection of this thread.
    """
    try:
        db = sqlite3.connect(path, timeout=OPEN_TIMEOUT)
        try:
            db.execute("PRAGMA wal_checkpoint(PASSIVE)")
        finally:
            db.close()
    except sqlite3.Error:
        pass  # the next checkpoint copies what this one did not
