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
import secrets
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar, cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from twisted.internet.defer import Deferred, ensureDeferred, fail
from twisted.internet.defer import TimeoutError as DeferredTimeoutError
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

#: The advisory lock the leader holds (L{rosteradmin.leadership}).
LEADER_LOCK = 0x726F73746C656164  # "rostlead"

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


class Superseded(StateError):
    """
    Another process holds the state now (its C{holder} row replaced ours:
    a new leader started): this one's changes must not be written over
    what that one read and writes.
    """


def _transaction(db: psycopg.Connection[Any], batch: Changes, holder: str, final: bool) -> None:
    """
    Write a batch in one transaction, if this process still holds the
    state; the last one (C{final}) also deletes this process's C{holder}
    row.

    @raise Superseded: Another process's row replaced ours.
    """
    with db.transaction():
        cursor = db.cursor()
        # The row lock makes a new holder's start wait for this transaction,
        # and this one see the new holder once that start committed.
        row = cursor.execute("SELECT value FROM meta WHERE key = 'holder' FOR SHARE").fetchone()
        if row is None or row[0] != holder:
            raise Superseded(f"another process holds the state now ({row[0] if row else 'nobody'})")
        apply(cursor, POSTGRESQL, batch)
        if final:
            cursor.execute("DELETE FROM meta WHERE key = 'holder' AND value = %s", (holder,))


def _work(db: psycopg.Connection[Any], path: str, work: Callable[[Cursor, Dialect], T],
          broken: Callable[[], None]) -> T:
    """
    Run C{work} in one transaction on C{db}, the state's and the intake's
    alike (L{PostgreSQLState.transact}, L{PostgreSQLRequests.transact}).

    @param broken: Called when the connection is found broken, for the
        next transaction to make a new one.
    @raise StateError: The transaction failed.
    """
    try:
        with db.transaction():
            return work(db.cursor(), POSTGRESQL)
    except psycopg.Error as e:
        if db.broken:
            broken()
        raise StateError(f"{path}: {_reason(e)}", transient=_isTransient(e)) from None


def _prepareSchema(cursor: Cursor, path: str) -> None:
    """
    In a transaction: create or upgrade the schema, once however many
    processes start at once (the first takes L{SCHEMA_LOCK}, the others
    wait for it and find the schema current).
    """
    cursor.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
    found = schemaVersion(cursor, POSTGRESQL, path)
    if needsWriting(cursor, POSTGRESQL, found, path):
        prepare(cursor, POSTGRESQL, found)


def _hold(db: psycopg.Connection[Any], path: str) -> tuple[dict[str, list[Any]], str, str | None]:
    """
    Create or upgrade the schema, read every table and the previous
    holder, and become the holder, in one transaction.

    @return: The tables, the new C{holder} row and the previous one's, if
        any.
    """
    try:
        with db.transaction():
            cursor = db.cursor()
            _prepareSchema(cursor, path)
            tables = readTables(cursor)
            row = cursor.execute("SELECT value FROM meta WHERE key = 'holder'").fetchone()
            since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            # Unique to this opening: a process leading again opens the state again.
            holder = f"{socket.gethostname()} pid {os.getpid()} since {since} #{secrets.token_hex(4)}"
            cursor.execute(POSTGRESQL.upsert("meta"), ("holder", holder))
    except psycopg.Error as e:
        raise StateError(f"{path}: {_reason(e)}", transient=_isTransient(e)) from None
    return tables, holder, None if row is None else str(row[0])


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
        # Why another process holds the state: nothing more is written.
        self._superseded: str | None = None
        # Guards _db and _cut between the writing thread and a close
        # that cuts the connection from the reactor's (_cutConnection).
        self._lock = threading.Lock()
        self._cut = False
        self._db: psycopg.Connection[Any] | None = _connect(url, self.path)
        try:
            self.tables, self._holder, previous = _hold(self._db, self.path)
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

    @property
    def problem(self) -> str | None:
        """
        Why changes are waiting in memory for the server to take them, or
        C{None} when everything is written.
        """
        if self._superseded is not None:
            return f"{self.path}: {self._superseded}: this process writes it no more"
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
        if self._closed or self._superseded is not None or not changes:
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
        holder = self._holder
        fresh = self._db is None or self._db.closed
        db = self._reconnect() if fresh else self._db
        assert db is not None
        try:
            _transaction(db, batch, holder, final)
        except psycopg.OperationalError:
            if not db.broken:
                raise
            self._disconnect()
            if fresh:
                raise
            _transaction(self._reconnect(), batch, holder, final)

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
        return _work(db, self.path, work, self._disconnect)

    def _wrote(self, _: None) -> None:
        self._written = None
        self._writing = {}
        self._retries.succeeded()
        if not self._closed:
            self._flush()

    def _notWritten(self, failure: Failure, batch: Changes) -> None:
        """
        Keep the batch, under what came meanwhile, and try again later;
        unless another process holds the state now.
        """
        self._written = None
        self._writing = {}
        if failure.check(Superseded):
            self._supersede(_reason(cast(BaseException, failure.value)), len(batch.keys() | self._unsaved.keys()))
            return
        self._unsaved = {**batch, **self._unsaved}
        if not failure.check(psycopg.Error, StateError):
            self.log.failure("writing state database {path}", failure, path=self.path)
        self._retries.failed(_reason(cast(BaseException, failure.value)), None if self._closed else self._flush)

    def _supersede(self, why: str, count: int) -> None:
        """
        Another process took the state over (a new leader, this one having
        stepped down or been cut off): write nothing more, ever, since it
        read the state and writes it now.
        """
        self.log.error("state database {path}: {why}; this process's {count} unwritten changes are dropped",
                       path=self.path, why=why, count=count)
        self._superseded = why
        self._unsaved = {}

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
            if self._superseded is not None:
                await self._inThread(self._disconnect)
                return
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


class PostgreSQLRequests:
    """
    A process's transactions on the shared state for the intake
    (L{rosteradmin.intake}), whether it leads or stands by: a connection
    and a thread of their own.  Not the leader's L{PostgreSQLState}, which
    a standby must not open (it would become the state's holder, and the
    leader's writes would stop), and which a leader opens anew at each
    term; not the leadership lock's session (L{PostgreSQLLock}), whose
    heartbeats must not wait behind a request.

    @ivar path: The database URL, without its password.
    """

    def __init__(self, url: str, reactor: IReactorTime) -> None:
        """
        Connect, and create or upgrade the schema: a standby may be the
        first process to start on a new database.

        @raise StateError: The database cannot be reached, refuses us,
            or holds a newer schema or another program's tables.
        """
        self.path = redacted(url)
        self._url = url
        self._reactor = reactor
        self._closed = False
        self._db: psycopg.Connection[Any] | None = _connect(url, self.path)
        try:
            with self._db.transaction():
                _prepareSchema(self._db.cursor(), self.path)
        except psycopg.Error as e:
            self._db.close()
            raise StateError(f"{self.path}: {_reason(e)}", transient=_isTransient(e)) from None
        except BaseException:
            self._db.close()
            raise
        self._pool = ThreadPool(1, 1, "rosteradmin-requests-postgresql")
        self._pool.threadFactory = _DaemonThread
        self._pool.start()

    def transact(self, work: Callable[[Cursor, Dialect], T], timeout: float) -> Deferred[T]:
        """
        Run C{work} in one transaction, on a new connection if the last
        one broke, and fire with its result once committed; or fail,
        after C{timeout} seconds at most (as
        L{IStateStorage.transact<rosteradmin.statestorage.IStateStorage.transact>}).
        """
        if self._closed:
            return fail(StateError(f"{self.path}: closed"))
        done = deferToThreadPool(cast(IReactorFromThreads, self._reactor), self._pool, self._transact, work)
        return done.addTimeout(timeout, self._reactor)

    def _transact(self, work: Callable[[Cursor, Dialect], T]) -> T:
        if self._db is None or self._db.closed:
            self._db = None
            self._db = _connect(self._url, self.path)
        return _work(self._db, self.path, work, self._db.close)

    def close(self) -> Deferred[None]:
        """
        Close the connection once the transaction under way ends, within
        L{CLOSE_TIMEOUT}; past it the thread (a daemon) is left to the exit.
        """
        return ensureDeferred(self._close())

    async def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        closing = deferToThreadPool(cast(IReactorFromThreads, self._reactor), self._pool, self._disconnect)
        try:
            await closing.addTimeout(CLOSE_TIMEOUT, self._reactor)
        except DeferredTimeoutError:
            return
        self._pool.stop()

    def _disconnect(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


class PostgreSQLLock:
    """
    The leader's advisory lock (L{LEADER_LOCK}) on a session of its own,
    for L{rosteradmin.leadership.Leadership}: its own connection, apart
    from those writing the state (whose retries must not delay a
    heartbeat), used from its own thread, every statement and
    unacknowledged write on the wire bounded by the heartbeat's timeout,
    and the server told to look at the connection every second (TCP
    keepalives), so that a host gone silent loses the lock within seconds.

    @ivar path: The database URL, without its password.
    """

    def __init__(self, url: str, timeout: float, reactor: IReactorTime) -> None:
        """
        Connect once, so that a URL the server refuses stops start-up as
        the state's would.

        @param timeout: Seconds a statement (or data on the wire) may take.
        @raise StateError: The database cannot be reached or refuses us.
        """
        self.path = redacted(url)
        self._url = url
        self._timeout = timeout
        self._reactor = reactor
        self._db: psycopg.Connection[Any] | None = self._connect()
        self._pool = ThreadPool(1, 1, "rosteradmin-leadership")
        self._pool.threadFactory = _DaemonThread
        self._pool.start()

    def _connect(self) -> psycopg.Connection[Any]:
        milliseconds = int(self._timeout * 1000)
        given = psycopg.conninfo.conninfo_to_dict(self._url)
        mine = {"application_name": "rosteradmin leadership", "tcp_user_timeout": str(milliseconds),
                "keepalives_idle": "1", "keepalives_interval": "1"}
        url = psycopg.conninfo.make_conninfo(self._url, **{k: v for k, v in mine.items() if k not in given})
        db = _connect(url, self.path, CLOSE_CONNECT_TIMEOUT)
        try:
            db.execute(f"SET statement_timeout = {milliseconds}")
        except psycopg.Error as e:
            db.close()
            raise StateError(f"{self.path}: {_reason(e)}", transient=True) from None
        return db

    def _run(self, f: Callable[[], T]) -> Deferred[T]:
        return deferToThreadPool(cast(IReactorFromThreads, self._reactor), self._pool, f)

    def acquire(self) -> Deferred[bool]:
        """
        Try to take the lock, on a new session if there is none.
        """
        return self._run(self._acquire)

    def _acquire(self) -> bool:
        if self._db is None or self._db.closed:
            self._db = None
            self._db = self._connect()
        try:
            row = self._db.execute("SELECT pg_try_advisory_lock(%s)", (LEADER_LOCK,)).fetchone()
        except psycopg.Error as e:
            self._db.close()
            raise StateError(f"{self.path}: {_reason(e)}", transient=True) from None
        return bool(row and row[0])

    def check(self) -> Deferred[bool]:
        """
        Whether this session still holds the lock (a lost session fails).
        """
        return self._run(self._check)

    def _check(self) -> bool:
        if self._db is None or self._db.closed:
            return False
        try:
            row = self._db.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
                                   "AND pid = pg_backend_pid()").fetchone()
        except psycopg.Error as e:
            self._db.close()
            raise StateError(_reason(e)) from None
        return bool(row and row[0])

    def release(self) -> Deferred[None]:
        """
        End the session, which lets the lock go.
        """
        return self._run(self._release)

    def _release(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
