# -*- test-case-name: tests.test_intake -*-
"""
The durable intake: API requests (a refresh, a sync, a kick) that an
instance accepted while another one leads, in the shared state's
C{requests} table, for the leader to apply (L{rosteradmin.applier}) and
the web app to look up (L{rosteradmin.handoff}).

Unlike L{rosteradmin.state.SyncState}'s facts, which are written behind
and may be rebuilt from the server, an accepted request exists nowhere
else: the API answers C{202} only once its row is committed.  So every
operation here is one transaction through
L{IStateStorage.transact<rosteradmin.statestorage.IStateStorage.transact>},
firing once committed, bounded by L{WRITE_TIMEOUT}.

A request's life: C{accepted} (inserted), C{claimed} (a leader took it,
C{attempts} counts how often), C{done} (its outcome recorded).  The
leader claims the oldest accepted request first, in the order the
database committed them (C{seq}).  A claim is not a lease: a leader that
dies leaves its claims, and the next leader, at the start of its term,
hands every claim back (L{Intake.recover}) and applies them again, since
only one instance leads at a time.  A claimer completes a request only
while it still holds the claim, so a former leader that was slow, not
dead, cannot overwrite the outcome of the next one.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from twisted.internet.defer import Deferred

from rosteradmin.statestorage import Cursor, Dialect

T = TypeVar("T")

#: Seconds an intake transaction may take (the API answers 503 past it).
WRITE_TIMEOUT = 5.0

#: What a request may ask.
KINDS = ("refresh", "sync", "kick")

#: A request's status in the table.
ACCEPTED, CLAIMED, DONE = "accepted", "claimed", "done"

_COLUMNS = "id, kind, body, accepted_at, status, attempts, outcome"


@dataclass(frozen=True)
class Outcome:
    """
    What the leader answered, or would have: its status and JSON body.
    """

    code: int
    body: dict[str, Any]


@dataclass(frozen=True)
class Request:
    """
    One row of the intake.

    @ivar id: The request's name in the API (random: not guessable).
    @ivar kind: One of L{KINDS}.
    @ivar body: What to apply, as the accepting instance validated it.
    @ivar acceptedAt: When it was committed, in seconds since the epoch.
    @ivar outcome: Once L{DONE}, what the leader answered.
    """

    id: str
    kind: str
    body: dict[str, Any]
    acceptedAt: float
    status: str
    attempts: int
    outcome: Outcome | None

    @classmethod
    def fromRow(cls, row: Any) -> Request:
        id, kind, body, acceptedAt, status, attempts, outcome = row
        done = None
        if outcome is not None:
            recorded = json.loads(outcome)
            done = Outcome(int(recorded["code"]), recorded["body"])
        return cls(str(id), str(kind), json.loads(body), float(acceptedAt), str(status), int(attempts), done)


class Transactions(Protocol):
    """
    What the intake needs of a storage: its transactions.  The state's
    own storage
    (L{IStateStorage<rosteradmin.statestorage.IStateStorage>}) for a
    single process; with a PostgreSQL state, a connection of the
    process's own (L{rosteradmin.statepg.PostgreSQLRequests}), since a
    standby does not open the state.
    """

    def transact(self, work: Callable[[Cursor, Dialect], T], timeout: float) -> Deferred[T]: ...


class Intake:
    """
    The C{requests} table of one storage, each call one committed
    transaction (or a failure: the driver's error, a
    L{rosteradmin.statestorage.StateError}, or a timeout).
    """

    def __init__(self, storage: Transactions, timeout: float = WRITE_TIMEOUT) -> None:
        """
        @param timeout: Seconds each transaction may take.
        """
        self.storage = storage
        self.timeout = timeout

    def accept(self, kind: str, body: dict[str, Any]) -> Deferred[Request]:
        """
        Record a request; fires once it is committed.
        """
        assert kind in KINDS, kind
        request = Request(secrets.token_urlsafe(12), kind, body, time.time(), ACCEPTED, 0, None)

        def insert(db: Cursor, dialect: Dialect) -> Request:
            marks = ", ".join([dialect.placeholder] * 5)
            db.execute(f"INSERT INTO requests (id, kind, body, accepted_at, status) VALUES ({marks})",
                       (request.id, kind, json.dumps(body), request.acceptedAt, ACCEPTED))
            return request

        return self.storage.transact(insert, self.timeout)

    def get(self, id: str) -> Deferred[Request | None]:
        """
        The request of this id, or C{None}.
        """

        def select(db: Cursor, dialect: Dialect) -> Request | None:
            row = db.execute(f"SELECT {_COLUMNS} FROM requests WHERE id = {dialect.placeholder}", (id,)).fetchone()
            return None if row is None else Request.fromRow(row)

        return self.storage.transact(select, self.timeout)

    def claim(self, claimer: str) -> Deferred[Request | None]:
        """
        Take the oldest accepted request for C{claimer}, or C{None} when
        none waits.  On PostgreSQL the row is locked while it is taken
        (C{SKIP LOCKED}: a second claimer takes the next one, never the
        same); SQLite's C{BEGIN IMMEDIATE} serialises claimers.
        """

        def take(db: Cursor, dialect: Dialect) -> Request | None:
            mark = dialect.placeholder
            lock = " FOR UPDATE SKIP LOCKED" if dialect.name == "postgresql" else ""
            row = db.execute(f"SELECT seq FROM requests WHERE status = {mark} ORDER BY seq LIMIT 1{lock}",
                             (ACCEPTED,)).fetchone()
            if row is None:
                return None
            db.execute(f"UPDATE requests SET status = {mark}, claimed_by = {mark}, attempts = attempts + 1 "
                       f"WHERE seq = {mark}", (CLAIMED, claimer, row[0]))
            return Request.fromRow(db.execute(f"SELECT {_COLUMNS} FROM requests WHERE seq = {mark}",
                                              (row[0],)).fetchone())

        return self.storage.transact(take, self.timeout)

    def complete(self, id: str, claimer: str, outcome: Outcome) -> Deferred[bool]:
        """
        Record the outcome of a request C{claimer} holds; fires with
        whether it still held it (if not, nothing is recorded: the next
        leader took it back and applies it).
        """

        def record(db: Cursor, dialect: Dialect) -> bool:
            mark = dialect.placeholder
            done = db.execute(
                f"UPDATE requests SET status = {mark}, outcome = {mark}, finished_at = {mark} "
                f"WHERE id = {mark} AND status = {mark} AND claimed_by = {mark}",
                (DONE, json.dumps({"code": outcome.code, "body": outcome.body}), time.time(), id, CLAIMED, claimer))
            return bool(done.rowcount)

        return self.storage.transact(record, self.timeout)

    def recover(self) -> Deferred[int]:
        """
        Hand every claimed request back, to be claimed and applied again:
        called by a leader at the start of its term, when whoever claimed
        them no longer leads (dead, or stepped down mid-way).  Fires with
        how many.
        """

        def release(db: Cursor, dialect: Dialect) -> int:
            mark = dialect.placeholder
            released = db.execute(f"UPDATE requests SET status = {mark}, claimed_by = NULL WHERE status = {mark}",
                                  (ACCEPTED, CLAIMED))
            return int(released.rowcount)

        return self.storage.transact(release, self.timeout)

    def purge(self, before: float) -> Deferred[int]:
        """
        Forget the requests done before C{before} (seconds since the
        epoch); fires with how many.
        """

        def delete(db: Cursor, dialect: Dialect) -> int:
            mark = dialect.placeholder
            deleted = db.execute(f"DELETE FROM requests WHERE status = {mark} AND finished_at < {mark}",
                                 (DONE, before))
            return int(deleted.rowcount)

        return self.storage.transact(delete, self.timeout)
