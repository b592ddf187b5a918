# -*- test-case-name: tests.test_state -*-
"""
What rosteradmin must remember across restarts, in SQLite or PostgreSQL.

The web app owns the rosters and the server stores them; rosteradmin holds
only three facts of its own, and all must survive a crash:

- for each user, the version (digest) of the roster the server was last
  made to hold: a login whose web-app roster has that version needs no
  privileged read or write, the cheap path;
- the users whose server roster may be behind the web app: refreshes
  accepted and not finished, and writes that failed.  After a crash, or a
  restart, they are finished without the web app asking again.  Those
  whose write failed in this run (the unsynced) are also known apart, in
  memory: their cached roster is written once the server takes writes;
- the contacts whose roster pushes some online device of their user has
  not answered yet (L{rosteradmin.devices}): after a crash mid-refresh the
  server is current, so nothing else would push them again to the devices
  still online.

Losing the file loses no data: every user is then unknown, and the next
full sync (or each user's next login) reads and rewrites the server's
rosters.  So a file SQLite cannot read (corrupt, or not a database at all)
is moved aside, loudly, and a new one started; only a file of a newer
schema version, one holding another program's tables, or a path that
cannot be opened stops start-up (an older schema is upgraded).

How the facts are stored, memory in front of a storage that never makes
the reactor wait, is an L{IStateStorage}'s job: an SQLite file
(L{rosteradmin.statefile}) or a PostgreSQL database
(L{rosteradmin.statepg}), which L{openStorage} picks by C{--state}.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from rosteradmin.statefile import StateFile
from rosteradmin.statestorage import Cursor, Dialect, IStateStorage, Row, StateError

__all__ = ["StateError", "SyncState", "isPostgreSQL", "openStorage"]


def isPostgreSQL(path: str) -> bool:
    """
    Whether C{--state} names a PostgreSQL database (a C{postgresql://}
    URL) rather than an SQLite file.
    """
    return path.startswith(("postgresql://", "postgres://"))


def openStorage(path: str, clock: IReactorTime | None = None) -> IStateStorage:
    """
    The storage C{--state} names: a PostgreSQL database for a
    C{postgresql://} URL (L{rosteradmin.statepg}), else an SQLite file
    (L{rosteradmin.statefile}; C{":memory:"}: none).

    @raise StateError: It cannot be opened.
    """
    if isPostgreSQL(path):
        # Imported here: the driver is an optional dependency.
        from rosteradmin.statepg import PostgreSQLState

        return PostgreSQLState(path, clock)
    return StateFile(path, clock)


class SyncState:
    """
    The server roster versions and the pending users, in memory and in one
    storage (or in memory only, when none is named: nothing then survives
    a restart).

    @ivar remembersServer: Whether the file held server roster versions
        when it was opened: what the server stores is known from an
        earlier run.
    @ivar unsynced: The pending users whose write failed in this run: the
        server may not hold their cached roster (L{markUnsynced}).
    """

    log = Logger()

    def __init__(self, path: str = ":memory:", clock: IReactorTime | None = None,
                 storage: IStateStorage | None = None) -> None:
        """
        @param path: The file or database, as L{openStorage} opens it.
        @param clock: Retries what the storage does not take (and, for
            PostgreSQL, the reactor whose threads write).
        @param storage: The storage, already opened (by L{openStorage}, in
            a thread: a new leader opens it while the reactor runs);
            C{path} is then unused.
        @raise StateError: The storage cannot be opened.
        """
        self._storage = storage if storage is not None else openStorage(path, clock)
        tables = self._storage.tables
        self._server: dict[str, str] = dict(tables["server_rosters"])
        self._pending: dict[str, float] = dict(tables["pending"])
        self._doubted: dict[str, str] = dict(tables["doubted_clients"])
        # Contacts (newline-separated bare JIDs in the file), version, since.
        self._unpushed: dict[str, tuple[frozenset[str], str, float]] = {
            username: (frozenset(jids.split("\n")) if jids else frozenset(), version, since)
            for username, jids, version, since in tables["unpushed"]}
        self._meta: dict[str, str] = dict(tables["meta"])
        self.unsynced: set[str] = set()
        if self._storage.marked:
            self._distrust()
            if not self._storage.unsaved:
                self._storage.unmark()  # nothing to forget: nothing was missing
        self.remembersServer = bool(self._server)

    def _distrust(self) -> None:
        """
        The previous run may have ended with changes the storage never
        took (they failed, or, for PostgreSQL, it did not close cleanly):
        a version it recorded may be older than what the server holds
        since, and users it made pending may be missing.  Forget every
        version and make every user it knew pending: they are all read
        back and rewritten once the server takes writes.
        """
        self.log.warn("state {path}: the previous run may have ended with changes not written to it; "
                      "refreshing and reading back every user it knew ({count})", path=self.path,
                      count=len(self._server))
        now = time.time()
        changes: dict[tuple[str, str], Row | None] = {}
        for username in self._server:
            since = self._pending.setdefault(username, now)
            changes["pending", username] = (username, since)
            changes["server_rosters", username] = None
        self._server.clear()
        self._storage.changes(changes)  # in one transaction: no version outlives its user's pending mark

    @property
    def path(self) -> str:
        return self._storage.path

    @property
    def storage(self) -> IStateStorage:
        """
        The storage, for what keeps tables of its own in it (the
        intake, L{rosteradmin.intake}).
        """
        return self._storage

    @property
    def movedAside(self) -> str | None:
        """
        Where an unreadable file found at start was moved, or C{None}.
        """
        return self._storage.movedAside

    @property
    def problem(self) -> str | None:
        """
        Why changes are waiting in memory for the file to take them, or
        C{None} when everything is written.
        """
        return self._storage.problem

    @property
    def unsaved(self) -> int:
        """
        Changes not written to the file yet.
        """
        return self._storage.unsaved

    def close(self) -> Deferred[None]:
        """
        Write what the storage has not taken yet, and close it (a network
        storage may take a moment: the result fires once it is closed).
        """
        return self._storage.close()

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
        self.unsynced.discard(username)
        self._storage.changes({("server_rosters", username): (username, version, time.time()),
                       ("pending", username): None})

    def forgetServer(self, username: str) -> None:
        """
        What the server holds for C{username} is no longer known (a write
        failed half-way, or drift was seen).
        """
        if self._server.pop(username, None) is not None:
            self._storage.change("server_rosters", username, None)

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
            self._storage.change("doubted_clients", username, (username, version))

    def clientsDoubted(self, username: str, version: str) -> bool:
        """
        Whether L{doubtClients} was told of this user and version.
        """
        doubted = self._doubted.get(username)
        if doubted is not None and doubted != version:
            # The roster has changed since: a client holding the doubted
            # version is answered in full anyway.
            del self._doubted[username]
            self._storage.change("doubted_clients", username, None)
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
        self._storage.changes(added)

    def markUnsynced(self, username: str) -> None:
        """
        A write of C{username}'s roster could not be done: it stays pending
        until one is (L{recordServer}), after a restart too.
        """
        self.unsynced.add(username)
        self.addPending((username,))

    def caughtUp(self, username: str) -> None:
        """
        The server is known to hold C{username}'s cached roster (the
        version it was last made to hold): it is no longer unsynced.
        """
        self.unsynced.discard(username)

    def done(self, username: str) -> None:
        """
        C{username}'s refresh finished, for better or worse, and was
        reported: it is no longer pending, unless unsynced (then until its
        write is done).
        """
        if username not in self.unsynced and self._pending.pop(username, None) is not None:
            self._storage.change("pending", username, None)

    def pending(self) -> list[str]:
        """
        The pending users, the oldest first.
        """
        return sorted(self._pending, key=lambda username: (self._pending[username], username))

    def pendingCount(self) -> int:
        return len(self._pending)

    def pendingSince(self, username: str) -> float | None:
        """
        Since when C{username} is pending (seconds since the epoch), or
        C{None} when it is not.
        """
        return self._pending.get(username)

    def writtenAt(self, username: str, timeout: float) -> Deferred[float | None]:
        """
        When the storage last recorded the version of C{username}'s server
        roster (seconds since the epoch), read from the storage: the time
        is not kept in memory, and is the one of the last change the
        storage took.  C{None} when it holds none (or, without a file,
        ever).

        @param timeout: Seconds the storage may take (PostgreSQL).
        """

        def select(db: Cursor, dialect: Dialect) -> float | None:
            row = db.execute(f"SELECT written_at FROM server_rosters WHERE username = {dialect.placeholder}",
                             (username,)).fetchone()
            return None if row is None else float(row[0])

        return self._storage.transact(select, timeout)

    def doubtedVersion(self, username: str) -> str | None:
        """
        The version L{doubtClients} was last told of for C{username}, or
        C{None}; unlike L{clientsDoubted}, forgets nothing.
        """
        return self._doubted.get(username)

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
                self._storage.change("meta", "sync_running", None)
        else:
            self._meta["sync_running"] = kind
            self._storage.change("meta", "sync_running", ("sync_running", kind))

    def knownUsers(self) -> list[str]:
        """
        The users whose server roster version is known.
        """
        return sorted(self._server)

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
            self._storage.change("unpushed", username, (username, "\n".join(sorted(merged)), version, since))

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
            self._storage.change("unpushed", username, None)
