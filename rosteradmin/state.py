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
rosters.  Writes are small and frequent, so the database runs in WAL mode
with C{synchronous=NORMAL}: a committed write survives the process being
killed (only a power loss may lose the last ones, which the next sync
repairs).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable

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
    username TEXT NOT NULL,
    jid TEXT NOT NULL,
    version TEXT NOT NULL,
    since REAL NOT NULL,
    PRIMARY KEY (username, jid)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
"""


class StateError(Exception):
    """
    The state file cannot be opened or is not rosteradmin's.
    """


class SyncState:
    """
    The server roster versions and the pending users, in one SQLite file
    (or in memory, when no file is named: nothing then survives a restart).

    @ivar path: The database file, or C{":memory:"}.
    @ivar remembersServer: Whether the file held server roster versions
        when it was opened: what the server stores is known from an
        earlier run.
    """

    def __init__(self, path: str = ":memory:") -> None:
        """
        @raise StateError: The file cannot be opened, or holds another
            schema.
        """
        self.path = path
        try:
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            if path != ":memory:":
                self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            row = self._db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
            if row is None:
                self._db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
            elif row[0] != str(SCHEMA_VERSION):
                raise StateError(f"{path}: schema version {row[0]}, this rosteradmin reads {SCHEMA_VERSION}")
            self._doubted = dict(self._db.execute("SELECT username, version FROM doubted_clients"))
            self.remembersServer = self._db.execute("SELECT 1 FROM server_rosters LIMIT 1").fetchone() is not None
        except sqlite3.Error as e:
            raise StateError(f"{path}: {e}") from None

    def close(self) -> None:
        self._db.close()

    def serverVersion(self, username: str) -> str | None:
        """
        The version of the roster the server was last made to hold for
        C{username}, or C{None} if unknown.
        """
        row = self._db.execute("SELECT version FROM server_rosters WHERE username = ?", (username,)).fetchone()
        return row[0] if row is not None else None

    def recordServer(self, username: str, version: str) -> None:
        """
        The server now holds the roster of this version for C{username}, and
        the user is no longer pending.
        """
        with self._db:
            self._db.execute("INSERT OR REPLACE INTO server_rosters VALUES (?, ?, ?)",
                             (username, version, time.time()))
            self._db.execute("DELETE FROM pending WHERE username = ?", (username,))

    def forgetServer(self, username: str) -> None:
        """
        What the server holds for C{username} is no longer known (a write
        failed half-way, or drift was seen).
        """
        self._db.execute("DELETE FROM server_rosters WHERE username = ?", (username,))

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
            self._db.execute("INSERT OR REPLACE INTO doubted_clients VALUES (?, ?)", (username, version))

    def clientsDoubted(self, username: str, version: str) -> bool:
        """
        Whether L{doubtClients} was told of this user and version.  Kept in
        memory too: it is asked on every query that holds a current version.
        """
        doubted = self._doubted.get(username)
        if doubted is not None and doubted != version:
            # The roster has changed since: a client holding the doubted
            # version is answered in full anyway.
            del self._doubted[username]
            self._db.execute("DELETE FROM doubted_clients WHERE username = ?", (username,))
        return doubted == version

    def addPending(self, usernames: Iterable[str]) -> None:
        """
        These users' server rosters may be behind the web app until they
        are synced (L{recordServer}) or L{done}.
        """
        now = time.time()
        with self._db:
            self._db.executemany("INSERT OR IGNORE INTO pending VALUES (?, ?)", ((u, now) for u in usernames))

    def done(self, username: str) -> None:
        """
        C{username} is no longer pending (its refresh finished, for better
        or worse, and was reported).
        """
        self._db.execute("DELETE FROM pending WHERE username = ?", (username,))

    def pending(self) -> list[str]:
        """
        The pending users, the oldest first.
        """
        return [row[0] for row in self._db.execute("SELECT username FROM pending ORDER BY since, username")]

    def pendingCount(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM pending").fetchone()[0])

    def interruptedSync(self) -> str | None:
        """
        The kind of full sync or reconciliation pass that was running when
        the previous process ended, if it did not finish.
        """
        row = self._db.execute("SELECT value FROM meta WHERE key = 'sync_running'").fetchone()
        return row[0] if row is not None else None

    def syncRunning(self, kind: str | None) -> None:
        """
        A pass of this kind runs now (C{None}: none does).
        """
        if kind is None:
            self._db.execute("DELETE FROM meta WHERE key = 'sync_running'")
        else:
            self._db.execute("INSERT OR REPLACE INTO meta VALUES ('sync_running', ?)", (kind,))

    def knownUsers(self) -> list[str]:
        """
        The users whose server roster version is known.
        """
        return [row[0] for row in self._db.execute("SELECT username FROM server_rosters ORDER BY username")]

    def knownCount(self) -> int:
        """
        Users whose server roster version is known.
        """
        return int(self._db.execute("SELECT count(*) FROM server_rosters").fetchone()[0])

    def addUnpushed(self, username: str, jids: Iterable[str], version: str) -> None:
        """
        Pushes of these contacts of C{username}, toward the roster of
        C{version} (C{""}: not sent yet), are on their way to some of the
        user's devices.
        """
        now = time.time()
        with self._db:
            self._db.executemany("INSERT OR REPLACE INTO unpushed VALUES (?, ?, ?, ?)",
                                 ((username, jid, version, now) for jid in jids))

    def unpushed(self, username: str) -> frozenset[str]:
        """
        The contacts of C{username} whose pushes are not known to have
        reached every device (L{addUnpushed}).
        """
        return frozenset(row[0] for row in self._db.execute("SELECT jid FROM unpushed WHERE username = ?",
                                                             (username,)))

    def unpushedVersions(self) -> dict[str, str]:
        """
        The users with unpushed contacts, each with the version of the
        roster its latest pushes were bringing its devices to.
        """
        rows = self._db.execute("SELECT username, version FROM unpushed ORDER BY version != '', since")
        return dict(rows)

    def pushed(self, username: str) -> None:
        """
        Every device of C{username} holds what it was pushed, or none is
        left online.
        """
        self._db.execute("DELETE FROM unpushed WHERE username = ?", (username,))
