# -*- test-case-name: tests.test_state -*-
"""
What rosteradmin must remember across restarts, in SQLite.

The web app owns the rosters and the server stores them; rosteradmin holds
only three facts of its own, and all must survive a crash:

- for each user, the version (digest) of the roster the server was last
  made to hold: a login whose web-app roster has that version needs no
  privileged read or write, the cheap path;
- the users whose server roster may be behind the web app: refreshes
  accepted and not finished, and writes that failed.  After a crash, or a
  restart, they are finished without the web app asking again;
- the contacts whose roster pushes some online device of their user has
  not answered yet (L{rosteradmin.devices}): after a crash mid-refresh the
  server is current, so nothing else would push them again to the devices
  still online.

Losing the file loses no data: every user is then unknown, and the next
full sync (or each user's next login) reads and rewrites the server's
rosters.  So a file SQLite cannot read (corrupt, or not a database at all)
is moved aside, loudly, and a new one started; only a file of another
schema version, one holding another program's tables, or a path that
cannot be opened stops start-up.

The reactor never waits on the file.  Everything is read once, at start,
into memory, which answers every question from then on.  Each change is
written at once, in one transaction, without waiting for SQLite's lock
(another process may hold it: a backup, an operator's C{sqlite3} shell):
when the file cannot take it (locked, disk full, read-only), the change
stays in memory with every later one, and all are written together once
it can, retried with a capped backoff.  Meanwhile L{problem} says why
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
from collections.abc import Iterable
from typing import Any, cast

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS server_rosters (
    username TEXT PRIMARY KEY,
    version TEXT NOT NULL,
    written_at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS pending (
    username TEXT PRIMARY KEY,
    since REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS doubted_clients (
    username TEXT PRIMARY KEY,
    version TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS unpushed (
    username TEXT PRIMARY KEY,
    jids TEXT NOT NULL,
    version TEXT NOT NULL,
    since REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
"""

#: Each table's key column: a change is a row to put under its key, or
#: C{None} to delete it.
_KEYS = {"server_rosters": "username", "pending": "username", "doubted_clients": "username",
         "unpushed": "username", "meta": "key"}

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

Row = tuple[object, ...]


class StateError(Exception):
    """
    The state file cannot be opened or is not rosteradmin's.

    @ivar transient: Whether it may clear up by itself (another process
        held the lock throughout start-up).
    """

    def __init__(self, message: str, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


class SyncState:
    """
    The server roster versions and the pending users, in memory and in one
    SQLite file (or in memory only, when no file is named: nothing then
    survives a restart).

    @ivar path: The database file, or C{":memory:"}.
    @ivar remembersServer: Whether the file held server roster versions
        when it was opened: what the server stores is known from an
        earlier run.
    @ivar movedAside: Where an unreadable file found at start was moved,
        or C{None}.
    """

    log = Logger()

    def __init__(self, path: str = ":memory:", clock: IReactorTime | None = None) -> None:
        """
        @param clock: Schedules retries of writes the file did not take;
            the global reactor if not given.
        @raise StateError: The file cannot be opened, or holds another
            schema or another program's tables.
        """
        self.path = path
        if clock is None:
            from twisted.internet import reactor

            clock = cast(IReactorTime, reactor)
        self._clock = clock
        self._unsaved: dict[tuple[str, str], Row | None] = {}
        self._retry: IDelayedCall | None = None
        self._retryDelay = RETRY_DELAY
        self._failure: str | None = None
        self._failingSince = 0.0
        self._commits = 0
        self._checkpointer: threading.Thread | None = None
        self.movedAside: str | None = None
        self._db: sqlite3.Connection | None = None
        if path != ":memory:":
            self._db = self._open()
        tables = self._read()
        self._server: dict[str, str] = dict(tables["server_rosters"])
        self._pending: dict[str, float] = dict(tables["pending"])
        self._doubted: dict[str, str] = dict(tables["doubted_clients"])
        # Contacts (newline-separated bare JIDs in the file), version, since.
        self._unpushed: dict[str, tuple[frozenset[str], str, float]] = {
            username: (frozenset(jids.split("\n")) if jids else frozenset(), version, since)
            for username, jids, version, since in tables["unpushed"]}
        self._meta: dict[str, str] = dict(tables["meta"])
        self._marked = self._db is not None and os.path.exists(self._marker)
        if "schema" not in self._meta:
            self._meta["schema"] = str(SCHEMA_VERSION)
            self._change("meta", "schema", ("schema", str(SCHEMA_VERSION)))
        if self._marked:
            self._distrust()
            if not self._unsaved:
                self._unmark()  # nothing to forget: nothing was missing
        self.remembersServer = bool(self._server)

    @property
    def _marker(self) -> str:
        """
        A file that exists while the state file lacks changes made in
        memory: created when a write first fails, removed once all are
        written.  Found at start, it says the previous run ended without
        writing them.
        """
        return self.path + ".unsaved"

    def _distrust(self) -> None:
        """
        The previous run ended with changes the file never took: a version
        it recorded may be older than what the server holds since, and
        users it made pending may be missing.  Forget every version and
        make every user it knew pending: they are all read back and
        rewritten once the server takes writes.
        """
        self.log.warn("state file {path}: the previous run ended with changes it could not write; "
                      "refreshing and reading back every user it knew ({count})", path=self.path,
                      count=len(self._server))
        now = time.time()
        changes: dict[tuple[str, str], Row | None] = {}
        for username in self._server:
            since = self._pending.setdefault(username, now)
            changes["pending", username] = (username, since)
            changes["server_rosters", username] = None
        self._server.clear()
        self._changes(changes)  # in one transaction: no version outlives its user's pending mark

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
        tables: dict[str, list[Any]] = {table: [] for table in _KEYS}
        if self._db is None:
            return tables
        columns = {"server_rosters": "username, version", "pending": "username, since",
                   "doubted_clients": "username, version", "unpushed": "username, jids, version, since",
                   "meta": "key, value"}
        try:
            for table, selected in columns.items():
                tables[table] = list(self._db.execute(f"SELECT {selected} FROM {table}"))
        except sqlite3.Error as e:
            raise StateError(f"{self.path}: {e}") from None
        return tables

    def close(self) -> None:
        """
        Write what the file has not taken yet, waiting a little for its
        lock (this runs at shutdown), and close it.
        """
        self._stopRetrying()
        if self._db is None:
            return
        if self._unsaved:
            self._db.execute(f"PRAGMA busy_timeout = {int(CLOSE_TIMEOUT * 1000)}")
            self._save()
            self._stopRetrying()
        if self._unsaved:
            self.log.error("state file {path}: {count} changes not written at shutdown ({why}); "
                           "the next start refreshes every user", path=self.path, count=len(self._unsaved),
                           why=self._failure)
        self._db.close()
        self._db = None

    def _stopRetrying(self) -> None:
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None

    @property
    def problem(self) -> str | None:
        """
        Why changes are waiting in memory for the file to take them, or
        C{None} when everything is written.
        """
        if self._failure is None:
            return None
        since = time.strftime("%H:%M:%S", time.gmtime(self._failingSince))
        return (f"cannot write {self.path} since {since} UTC: {self._failure}; "
                f"{len(self._unsaved)} changes kept in memory, retrying")

    @property
    def unsaved(self) -> int:
        """
        Changes not written to the file yet.
        """
        return len(self._unsaved)

    def _change(self, table: str, key: str, row: Row | None) -> None:
        """
        Write one change (a row for C{key}, or C{None} to delete it) now,
        or with the others waiting if the file does not take writes.
        """
        self._changes({(table, key): row})

    def _changes(self, changes: dict[tuple[str, str], Row | None]) -> None:
        """
        Write changes in one transaction, or keep them with the others
        waiting: a later change of the same row replaces an earlier one.
        """
        if self._db is None or not changes:
            return
        self._unsaved.update(changes)
        if self._retry is None:
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
                _apply(self._db, self._unsaved)
                self._db.execute("COMMIT")
            finally:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
        except sqlite3.Error as e:
            self._failed(str(e))
            return
        self._unsaved.clear()
        if self._marked:
            self._unmark()
        if self._failure is not None:
            self.log.info("state file {path} written again after {elapsed:.1f} s", path=self.path,
                          elapsed=time.time() - self._failingSince)
            self._failure = None
            self._retryDelay = RETRY_DELAY
        self._commits += 1
        if self._commits >= CHECKPOINT_COMMITS:
            self._checkpoint()

    def _failed(self, why: str) -> None:
        if self._failure is None:
            self._failingSince = time.time()
            self.log.error("cannot write state file {path}: {why}; keeping its changes in memory until it can",
                           path=self.path, why=why)
            self._mark()
        self._failure = why
        self._retry = self._clock.callLater(self._retryDelay, self._retrySave)
        self._retryDelay = min(self._retryDelay * 2, RETRY_MAX_DELAY)

    def _mark(self) -> None:
        try:
            os.close(os.open(self._marker, os.O_WRONLY | os.O_CREAT, 0o600))
        except OSError as e:
            self.log.warn("cannot create {marker}: {why}; a crash now would leave the state file's "
                          "versions trusted though changes are missing", marker=self._marker, why=e.strerror)
            return
        self._marked = True

    def _unmark(self) -> None:
        try:
            os.unlink(self._marker)
        except FileNotFoundError:
            pass
        except OSError as e:
            self.log.warn("cannot remove {marker}: {why}; the next start refreshes every user",
                          marker=self._marker, why=e.strerror)
            return
        self._marked = False

    def _retrySave(self) -> None:
        self._retry = None
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

    def serverVersion(self, username: str) -> str | None:
        """
        The version of the roster the server was last made to hold for
        C{username}, or C{None} if unknown.
        """
        return self._server.get(username)

    def recordServer(self, username: str, version: str) -> None:
        """
        The server now holds the roster of this version for C{username}, and
        the user is no longer pending.
        """
        self._server[username] = version
        self._pending.pop(username, None)
        self._changes({("server_rosters", username): (username, version, time.time()),
                       ("pending", username): None})

    def forgetServer(self, username: str) -> None:
        """
        What the server holds for C{username} is no longer known (a write
        failed half-way, or drift was seen).
        """
        if self._server.pop(username, None) is not None:
            self._change("server_rosters", username, None)

    def doubtClients(self, username: str, version: str) -> None:
        """
        The clients of C{username} may hold something else than the roster
        of this version while holding this version: one changed its view
        and was refused, or the server changed the user's roster behind
        us.  A query with the version then gets the whole roster, not
        "current", until the roster changes.
        """
        if self._doubted.get(username) != version:
            self._doubted[username] = version
            self._change("doubted_clients", username, (username, version))

    def clientsDoubted(self, username: str, version: str) -> bool:
        """
        Whether L{doubtClients} was told of this user and version.
        """
        doubted = self._doubted.get(username)
        if doubted is not None and doubted != version:
            # The roster has changed since: a client holding the doubted
            # version is answered in full anyway.
            del self._doubted[username]
            self._change("doubted_clients", username, None)
        return doubted == version

    def addPending(self, usernames: Iterable[str]) -> None:
        """
        These users' server rosters may be behind the web app until they
        are synced (L{recordServer}) or L{done}.
        """
        now = time.time()
        added: dict[tuple[str, str], Row | None] = {}
        for username in usernames:
            if username not in self._pending:
                self._pending[username] = now
                added["pending", username] = (username, now)
        self._changes(added)

    def done(self, username: str) -> None:
        """
        C{username} is no longer pending (its refresh finished, for better
        or worse, and was reported).
        """
        if self._pending.pop(username, None) is not None:
            self._change("pending", username, None)

    def pending(self) -> list[str]:
        """
        The pending users, the oldest first.
        """
        return sorted(self._pending, key=lambda username: (self._pending[username], username))

    def pendingCount(self) -> int:
        return len(self._pending)

    def interruptedSync(self) -> str | None:
        """
        The kind of full sync or reconciliation pass that was running when
        the previous process ended, if it did not finish.
        """
        return self._meta.get("sync_running")

    def syncRunning(self, kind: str | None) -> None:
        """
        A pass of this kind runs now (C{None}: none does).
        """
        if kind is None:
            if self._meta.pop("sync_running", None) is not None:
                self._change("meta", "sync_running", None)
        else:
            self._meta["sync_running"] = kind
            self._change("meta", "sync_running", ("sync_running", kind))

    def knownUsers(self) -> list[str]:
        """
        The users whose server roster version is known.
        """
        return sorted(self._server)

    def knownCount(self) -> int:
        """
        Users whose server roster version is known.
        """
        return len(self._server)

    def addUnpushed(self, username: str, jids: Iterable[str], version: str) -> None:
        """
        Pushes of these contacts of C{username}, toward the roster of
        C{version} (C{""}: written into the server, not pushed yet), are on
        their way to some of the user's devices.
        """
        held, heldVersion, since = self._unpushed.get(username, (frozenset(), "", time.time()))
        merged = held | frozenset(jids)
        version = version or heldVersion
        if (merged, version) != (held, heldVersion) or username not in self._unpushed:
            self._unpushed[username] = (merged, version, since)
            self._change("unpushed", username, (username, "\n".join(sorted(merged)), version, since))

    def unpushed(self, username: str) -> frozenset[str]:
        """
        The contacts of C{username} whose pushes are not known to have
        reached every device (L{addUnpushed}).
        """
        return self._unpushed.get(username, (frozenset(), "", 0.0))[0]

    def unpushedVersions(self) -> dict[str, str]:
        """
        The users with unpushed contacts, each with the version of the
        roster its latest pushes were bringing its devices to (C{""}: none
        was sent).
        """
        return {username: version for username, (_, version, _) in self._unpushed.items()}

    def pushed(self, username: str) -> None:
        """
        Every device of C{username} holds what it was pushed, or none is
        left online.
        """
        if self._unpushed.pop(username, None) is not None:
            self._change("unpushed", username, None)


class _Unreadable(Exception):
    """
    SQLite cannot read the file as a database.
    """


def _connect(path: str) -> sqlite3.Connection:
    """
    Open the file (creating it if need be), check that it is a readable
    database of our schema, and make its connection never wait for a lock.

    @raise _Unreadable: SQLite cannot read it as a database.
    @raise StateError: It cannot be opened or created, holds another
        schema, or is not ours.
    """
    try:
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=OPEN_TIMEOUT)
    except sqlite3.Error as e:
        raise StateError(f"{path}: {e}") from None
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        # Checkpoints run in a thread (SyncState._checkpoint).
        db.execute("PRAGMA wal_autocheckpoint=0")
        check = [str(row[0]) for row in db.execute("PRAGMA quick_check")]
        if check != ["ok"]:
            raise _Unreadable("; ".join(check[:3]))
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if tables and "meta" not in tables:
            raise StateError(f"{path}: not a rosteradmin state file (it holds the tables {', '.join(sorted(tables))})")
        if "meta" in tables:
            row = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
            if row is not None and row[0] != str(SCHEMA_VERSION):
                raise StateError(f"{path}: schema version {row[0]}, this rosteradmin reads {SCHEMA_VERSION}")
        db.executescript(_SCHEMA)
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


def _apply(db: sqlite3.Connection, changes: dict[tuple[str, str], Row | None]) -> None:
    """
    Put or delete each changed row, inside the caller's transaction.
    """
    for table, keyColumn in _KEYS.items():
        rows = [row for (changed, _), row in changes.items() if changed == table and row is not None]
        deleted = [(key,) for (changed, key), row in changes.items() if changed == table and row is None]
        if rows:
            db.executemany(f"INSERT OR REPLACE INTO {table} VALUES ({', '.join('?' * len(rows[0]))})", rows)
        if deleted:
            db.executemany(f"DELETE FROM {table} WHERE {keyColumn} = ?", deleted)


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
