# -*- test-case-name: tests.test_stateengines -*-
"""
The state in a PostgreSQL database (C{--state postgresql://...}), written
without ever making the reactor wait on the network.

The driver is psycopg 3: the maintained successor of psycopg2 (which only
gets fixes now), typed, with its own libpq in the C{psycopg[binary]} wheel
(Debian packages it too, as C{python3-psycopg}).  It is used blocking, from
one thread of our own (a one-thread L{ThreadPool} through
L{deferToThreadPool}), on one connection: that keeps batches in order,
one transaction each, with nothing to coordinate.  Its asyncio mode would
need Twisted's asyncio reactor, and the Twisted-native drivers (txpostgres
over psycopg2's async mode) are unmaintained; L{twisted.enterprise.adbapi}
spreads its work over a pool of threads, which would reorder batches.

Start-up, in L{PostgreSQLState}'s constructor before the reactor runs,
connects, creates or upgrades the schema
(L{rosteradmin.statestorage.prepare}) under an advisory lock, and reads
every table, all bounded by L{CONNECT_TIMEOUT} and L{STATEMENT_TIMEOUT};
a server that does not answer is a transient L{StateError} (systemd
restarts us), a refused login or a missing database a configuration one.
From then on each batch of changes is queued in memory and written in the
background, in order; while the server is down or refuses, the changes
wait (a later change of a row replacing an earlier one), are retried with
a backoff capped at L{RETRY_MAX_DELAY} on a new connection, and
L{PostgreSQLState.problem} says why.

What replaces the SQLite file's C{.unsaved} marker: the C{meta} row
C{holder}, written in the start-up transaction and deleted (if it is
still this process's) in the same transaction as the last changes at a
clean close.  A marker written only
once a write fails, as the file's, cannot work here: the writes it would
mark are the ones the server is not taking, and every change spends a
moment in flight, so a crash (or a C{kill -9}) may lose changes whatever
was written.  So the row says "a process may have changes of its own not
written yet", from start to a close that wrote them all; a start that
finds it (the previous process crashed, or closed with changes the
server never took) is L{PostgreSQLState.marked}: it trusts no stored
version and refreshes every user, as after an unsaved SQLite file.  The
cost is that refresh after every crash, even one that lost nothing.
"""

from __future__ import annotations

import os
import re
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar, cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from twisted.internet.defer import Deferred, ensureDeferred, fail
from twisted.internet.interfaces import IReactorFromThreads, IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from rosteradmin.statestorage import (
    POSTGRESQL, Cursor, Dialect, IStateStorage, Changes, Retries, Row, StateError, apply, needsWriting, prepare,
    readTables, schemaVersion,
)

T = TypeVar("T")

#: Seconds to wait for the server to accept a connection, and at shutdown.
CONNECT_TIMEOUT = 5
CLOSE_CONNECT_TIMEOUT = 2  # libpq's least

#: Seconds a close waits for the transaction under way and its last one
#: before cutting the connection: a server that stopped answering (its
#: host's kernel still acknowledging every packet) trips no timeout.
CLOSE_TIMEOUT = 3.0

#: Seconds one statement (the server's C{statement_timeout}, C{COMMIT}
#: included) or unacknowledged data on the wire (C{tcp_user_timeout}) may
#: take before the write is given up and retried.
STATEMENT_TIMEOUT = 10.0

#: Seconds between attempts to write changes the server did not take, at
#: first and at most.
RETRY_DELAY = 0.5
RETRY_MAX_DELAY = 5.0

#: The advisory lock held while the schema is created or upgraded, so
#: that two processes starting at once do it once.
SCHEMA_LOCK = 0x726F7374  # "rost"

#: Connection parameters the URL may override.
_DEFAULTS = {"application_name": "rosteradmin",
             "keepalives": "1", "keepalives_idle": "5", "keepalives_interval": "2", "keepalives_count": "3",
             "tcp_user_timeout": str(int(STATEMENT_TIMEOUT * 1000))}

#: SQLSTATE classes of errors that may clear up by themselves: connection
#: exceptions, rolled-back transactions (deadlock, serialization),
#: insufficient resources, a lock not available, a statement cancelled
#: (our timeout: another process holds the schema lock) or the server
#: starting or stopping.
_TRANSIENT = ("08", "40", "53", "55P03", "57")

#: What the server says, refusing a connection, of refusals that pass
#: (in its default English): starting, stopping, recovering, full.
_PASSING = ("the database system is", "too many clients", "remaining connection slots")


#: Options libpq refuses unless they hold one of these values, which it
#: checks only when connecting.
_CHOICES = {
    "sslmode": ("disable", "allow", "prefer", "require", "verify-ca", "verify-full"),
    "gssencmode": ("disable", "prefer", "require"),
    "channel_binding": ("disable", "prefer", "require"),
    "target_session_attrs": ("any", "read-write", "read-only", "primary", "standby", "prefer-standby"),
    "load_balance_hosts": ("disable", "random"),
    "sslnegotiation": ("postgres", "direct"),
}

#: Options libpq refuses unless they hold a whole number.
_NUMBERS = ("connect_timeout", "keepalives", "keepalives_idle", "keepalives_interval", "keepalives_count",
            "tcp_user_timeout")


def unusableOption(url: str) -> str | None:
    """
    Why libpq would refuse to connect with this URL whatever the server
    (it checks these options only then), or C{None}.  Only the option's
    name is said: its value may be, or hold, a password.

    @raise psycopg.ProgrammingError: libpq cannot read the URL.
    """
    given = psycopg.conninfo.conninfo_to_dict(url)
    for option, choices in _CHOICES.items():
        if option in given and str(given[option]) not in choices:
            return f"its {option} is not one of {', '.join(choices)}"
    for option in _NUMBERS:
        if option in given and not re.fullmatch(r"\s*-?\d+\s*", str(given[option])):
            return f"its {option} is not a whole number"
    for port in str(given.get("port", "")).split(","):
        if port and not (port.isdigit() and 1 <= int(port) <= 65535):
            return "its port is not a port number"
    return None


def redacted(url: str) -> str:
    """
    The URL without its passwords (the user's, and any option naming one:
    C{sslpassword}), to name the database in logs and errors.
    """
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")
    if netloc[1]:
        netloc = (netloc[0].partition(":")[0], "@", netloc[2])
    query = urlencode([(k, v) for k, v in parse_qsl(parts.query) if "password" not in k.lower()])
    return urlunsplit(parts._replace(netloc="".join(netloc), query=query))


def _reason(e: BaseException) -> str:
    """
    The first line of a driver error (libpq adds hints on further lines).
    """
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _connect(url: str, name: str, connectTimeout: int | None = None) -> psycopg.Connection[Any]:
    """
    A connection whose every statement is bounded by L{STATEMENT_TIMEOUT}.

    @param connectTimeout: Seconds to wait for it; L{CONNECT_TIMEOUT} if
        not given.
    @raise StateError: The server cannot be reached or refuses us.
    """
    given = psycopg.conninfo.conninfo_to_dict(url)
    defaults = {**_DEFAULTS, "connect_timeout": str(connectTimeout or CONNECT_TIMEOUT)}
    try:
        conninfo = psycopg.conninfo.make_conninfo(url, **{k: v for k, v in defaults.items() if k not in given})
        db = psycopg.connect(conninfo, autocommit=True)
    except psycopg.Error as e:
        raise StateError(f"{name}: {_reason(e)}", transient=_isTransient(e)) from None
    try:
        db.execute(f"SET statement_timeout = {int(STATEMENT_TIMEOUT * 1000)}")
    except psycopg.Error as e:
        db.close()
        raise StateError(f"{name}: {_reason(e)}", transient=_isTransient(e)) from None
    return db


def _isTransient(e: psycopg.Error) -> bool:
    """
    Whether an error may clear up by itself: one of L{_TRANSIENT}'s, or,
    at connection time (libpq gives no SQLSTATE then), no answer from the
    server or a refusal of L{_PASSING}'s; a refused login, a missing
    database or an option libpq cannot use (the driver's
    C{ProgrammingError}, libpq's "invalid ...") will not.
    """
    if e.sqlstate is not None:
        return e.sqlstate.startswith(_TRANSIENT)
    message = str(e)
    if isinstance(e, psycopg.ProgrammingError) or "invalid " in message or "bad value" in message:
        return False
    return "FATAL:" not in message or any(passing in message for passing in _PASSING)


def _transaction(db: psycopg.Connection[Any], batch: Changes, holder: str | None) -> None:
    """
    Write a batch in one transaction; the last one also deletes this
    process's C{holder} row (not another's that replaced it).
    """
    with db.transaction():
        cursor = db.cursor()
        apply(cursor, POSTGRESQL, batch)
        if holder is not None:
            cursor.execute("DELETE FROM meta WHERE key = 'holder' AND value = %s", (holder,))


class _DaemonThread(threading.Thread):
    """
    The writing thread, which never keeps the process alive: an exit that
    does not close the storage (start-up refused after it opened) is not
    held up by it.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, daemon=True, **kwargs)


@implementer(IStateStorage)
class PostgreSQLState:
    """
    The rows of rosteradmin's tables, in a PostgreSQL database.

    @ivar path: The database URL, without its password.
    @ivar tables: Every table's rows as read at start.
    @ivar marked: Whether a C{holder} row was found at start: the previous
        process did not close cleanly.
    @ivar movedAside: Always C{None}: a database is never moved aside.
    """

    log = Logger()
    movedAside = None

    def __init__(self, url: str, reactor: IReactorTime | None = None) -> None:
        """
        @param url: A C{postgresql://} URL, as libpq reads it (a password
            is better kept in C{PGPASSFILE} or C{~/.pgpass} than here).
        @param reactor: Schedules retries and runs the writing thread's
            results (a reactor that runs threads: every reactor
            providing L{IReactorTime} does); the global reactor if not
            given.
        @raise StateError: The database cannot be reached, refuses us,
            holds a newer schema or tables of another program.
        """
        if reactor is None:
            from twisted.internet import reactor as globalReactor

            reactor = cast(IReactorTime, globalReactor)
        self.path = redacted(url)
        self._url = url
        self._reactor = reactor
        self._unsaved: dict[tuple[str, str], Row | None] = {}
        self._writing: Changes = {}
        self._written: Deferred[None] | None = None
        self._retries = Retries(reactor, "state database", self.path, RETRY_DELAY, RETRY_MAX_DELAY)
        self._closed = False
        # Guards _db and _cut between the writing thread and a close
        # that cuts the connection from the reactor's (_cutConnection).
        self._lock = threading.Lock()
        self._cut = False
        self._db: psycopg.Connection[Any] | None = _connect(url, self.path)
        try:
            self.tables, self._holder, previous = self._start(self._db)
        except BaseException:
            self._db.close()
            raise
        self.marked = previous is not None
        if previous is not None:
            self.log.warn("state database {path}: its previous holder ({holder}) did not close it cleanly; "
                          "changes it made may be missing", path=self.path, holder=previous)
        self._pool = ThreadPool(1, 1, "rosteradmin-state-postgresql")
        self._pool.threadFactory = _DaemonThread
        self._pool.start()

    def _start(self, db: psycopg.Connection[Any]) -> tuple[dict[str, list[Any]], str, str | None]:
        """
        Create or upgrade the schema, read every table and the previous
        holder, and become the holder, in one transaction.

        @return: The tables, this process's C{holder} row and the
            previous one's, if any.
        """
        try:
            with db.transaction():
                cursor = db.cursor()
                cursor.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
                found = schemaVersion(cursor, POSTGRESQL, self.path)
                if needsWriting(cursor, POSTGRESQL, found, self.path):
                    prepare(cursor, POSTGRESQL, found)
                tables = readTables(cursor)
                row = cursor.execute("SELECT value FROM meta WHERE key = 'holder'").fetchone()
                since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
                holder = f"{socket.gethostname()} pid {os.getpid()} since {since}"
                cursor.execute(POSTGRESQL.upsert("meta"), ("holder", holder))
        except psycopg.Error as e:
            raise StateError(f"{self.path}: {_reason(e)}", transient=_isTransient(e)) from None
        return tables, holder, None if row is None else str(row[0])

    @property
    def problem(self) -> str | None:
        """
        Why changes are waiting in memory for the server to take them, or
        C{None} when everything is written.
        """
        return self._retries.problem(self.unsaved)

    @property
    def unsaved(self) -> int:
        """
        Changes not written yet while writes fail: waiting, or in the
        transaction under way.  While the server takes writes, none: a
        change spends a moment in flight, as with the file's, which is
        not counted either.
        """
        if self._retries.failure is None:
            return 0
        return len(self._writing.keys() | self._unsaved.keys())

    def change(self, table: str, key: str, row: Row | None) -> None:
        """
        Queue one change (L{changes}).
        """
        self.changes({(table, key): row})

    def changes(self, changes: Changes) -> None:
        """
        Queue changes; they are written in the background, in order.
        """
        if self._closed or not changes:
            return
        self._unsaved.update(changes)
        self._flush()

    def unmark(self) -> None:
        """
        Nothing to remove: this process's own C{holder} row replaced the
        previous one at start.
        """
        self.marked = False

    def _flush(self) -> None:
        """
        Write everything waiting in one transaction, unless one is under way
        (its end writes what came meanwhile) or a retry is due.
        """
        if self._written is not None or self._retries.scheduled or not self._unsaved:
            return
        batch, self._unsaved = self._unsaved, {}
        self._writing = batch
        written = self._inThread(self._write, batch, final=False)
        self._written = written.addCallbacks(self._wrote, self._notWritten, errbackArgs=(batch,))

    def _inThread(self, work: Callable[..., None], *args: Any, **kwargs: Any) -> Deferred[None]:
        """
        Run C{work} in the writing thread.
        """
        return deferToThreadPool(cast(IReactorFromThreads, self._reactor), self._pool, work, *args, **kwargs)

    def _write(self, batch: Changes, final: bool) -> None:
        """
        In the writing thread: write a batch in one transaction (the last
        one, at close, also ends this process's hold), on a new connection
        if there is none.  A connection found lost (the server restarted
        since the last write) is replaced and the batch written again at
        once: a batch puts and deletes rows to their final values, so
        writing it twice (its first C{COMMIT} may have reached the server)
        changes nothing.
        """
        holder = self._holder if final else None
        fresh = self._db is None or self._db.closed
        db = self._reconnect() if fresh else self._db
        assert db is not None
        try:
            _transaction(db, batch, holder)
        except psycopg.OperationalError:
            if not db.broken:
                raise
            self._disconnect()
            if fresh:
                raise
            _transaction(self._reconnect(), batch, holder)

    def _reconnect(self) -> psycopg.Connection[Any]:
        """
        In the writing thread: a new connection, within
        L{CLOSE_CONNECT_TIMEOUT} once closing, unless the close has cut
        the connections (L{_cutConnection}).
        """
        self._disconnect()
        if not self._cut:
            db = _connect(self._url, self.path, CLOSE_CONNECT_TIMEOUT if self._closed else None)
            if self._keep(db):
                return db
            db.close()
        raise StateError(f"closing took over {CLOSE_TIMEOUT:g} s")

    def _keep(self, db: psycopg.Connection[Any]) -> bool:
        """
        Make C{db} the connection, unless the close cut them meanwhile.
        """
        with self._lock:
            if self._cut:
                return False
            self._db = db
            return True

    def _disconnect(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def _cutConnection(self) -> None:
        """
        In the reactor's thread, once a close took L{CLOSE_TIMEOUT}: make
        the statement under way fail at once (its socket shut down: a
        cancel request would wait on the server that does not answer) and
        no new connection be made.
        """
        with self._lock:
            self._cut = True
            if self._db is None or self._db.closed:
                return
            try:
                with socket.socket(fileno=os.dup(self._db.fileno())) as connection:
                    connection.shutdown(socket.SHUT_RDWR)
            except (OSError, psycopg.Error):
                pass  # closed meanwhile: nothing under way to cut

    def transact(self, work: Callable[[Cursor, Dialect], T], timeout: float) -> Deferred[T]:
        """
        Run C{work} in one transaction in the writing thread, after the
        batches queued before it, and fire with its result once
        committed; or fail, after C{timeout} seconds at most (the thread
        may still commit it later: a caller that gave up must not assume
        it was not written).  A connection found broken is closed for the
        next use to replace; the work is not run again, since it need not
        be idempotent.
        """
        if self._closed:
            return fail(StateError(f"{self.path}: closed"))
        done = deferToThreadPool(cast(IReactorFromThreads, self._reactor), self._pool, self._transact, work)
        return done.addTimeout(timeout, self._reactor)

    def _transact(self, work: Callable[[Cursor, Dialect], T]) -> T:
        """
        In the writing thread: L{transact}'s transaction.
        """
        db = self._reconnect() if self._db is None or self._db.closed else self._db
        try:
            with db.transaction():
                return work(db.cursor(), POSTGRESQL)
        except psycopg.Error as e:
            if db.broken:
                self._disconnect()
            raise StateError(f"{self.path}: {_reason(e)}", transient=_isTransient(e)) from None

    def _wrote(self, _: None) -> None:
        self._written = None
        self._writing = {}
        self._retries.succeeded()
        if not self._closed:
            self._flush()

    def _notWritten(self, failure: Failure, batch: Changes) -> None:
        """
        Keep the batch, under what came meanwhile, and try again later.
        """
        self._written = None
        self._writing = {}
        self._unsaved = {**batch, **self._unsaved}
        if not failure.check(psycopg.Error, StateError):
            self.log.failure("writing state database {path}", failure, path=self.path)
        self._retries.failed(_reason(cast(BaseException, failure.value)), None if self._closed else self._flush)

    def close(self) -> Deferred[None]:
        """
        Let the transaction under way end, write what waits with a last
        chance (connecting within L{CLOSE_CONNECT_TIMEOUT}) and end this
        process's hold in the same transaction, then close, all within
        L{CLOSE_TIMEOUT} (then the connection is cut).  If the server
        does not take it, the loss is logged and the C{holder} row stays:
        the next start trusts no version.
        """
        return ensureDeferred(self._close())

    async def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._retries.cancel()
        deadline = self._reactor.callLater(CLOSE_TIMEOUT, self._cutConnection)
        try:
            if self._written is not None:
                await self._written
            batch = self._unsaved
            try:
                await self._inThread(self._finish, batch)
            except (psycopg.Error, StateError) as e:
                self._retries.failed(_reason(e), None)
                self.log.error("state database {path}: {count} changes not written at shutdown ({why}); "
                               "the next start refreshes every user", path=self.path, count=len(batch),
                               why=_reason(e))
            else:
                self._unsaved = {}
        finally:
            if deadline.active():
                deadline.cancel()
            self._pool.stop()

    def _finish(self, batch: Changes) -> None:
        """
        In the writing thread: the last transaction, then the connection's
        end.
        """
        try:
            self._write(batch, final=True)
        finally:
            self._disconnect()
