# -*- test-case-name: tests.test_events,tests.test_stateengines -*-
"""
The durable outbox of events for the web app: what users tried
(L{rosteradmin.attempts}), in the state's C{events} table, until the web
app accepts them (L{rosteradmin.events} delivers them).

Each event's id is its row's C{seq}, given by the database.  Events go
out in numbered transactions, as Matrix application services get them:
a transaction is the oldest events, up to a batch, and its id is the id
of its last event.  The id is written on the rows when the transaction
is first taken (L{Outbox.next}), so a retry, even after a restart, sends
the same events under the same id; ids only grow, since neither engine
gives a C{seq} twice.  Rows are deleted once the web app accepted their
transaction.

Every operation is one transaction through
L{IStateStorage.transact<rosteradmin.statestorage.IStateStorage.transact>},
firing once committed: an event the outbox took survives a crash.

The outbox is bounded: past C{bound} events, a new one is refused (and
counted by the caller), never an old one dropped: the events waiting
keep their order and their transaction ids, and the web app, once back,
gets the oldest of what users tried rather than a gap at the start.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred

from rosteradmin.statestorage import Cursor, Dialect, IStateStorage

#: Seconds an outbox transaction may take.
WRITE_TIMEOUT = 5.0

#: Most events in one transaction to the web app.
BATCH = 100


@dataclass(frozen=True)
class Transaction:
    """
    Events sent together, accepted or refused together.

    @ivar id: The transaction id: its last event's id, the same for every
        attempt.
    @ivar events: Each event's JSON object, its C{id} included, in order.
    @ivar oldest: When the first of them was recorded (seconds since the
        epoch).
    """

    id: int
    events: list[dict[str, Any]]
    oldest: float


def _event(seq: Any, body: Any) -> dict[str, Any]:
    return {"id": int(seq), **json.loads(body)}


class Outbox:
    """
    The C{events} table of one storage.
    """

    def __init__(self, storage: IStateStorage, bound: int, timeout: float = WRITE_TIMEOUT) -> None:
        """
        @param bound: Most events kept; past it a new one is refused.
        @param timeout: Seconds each transaction may take.
        """
        self.storage = storage
        self.bound = bound
        self.timeout = timeout

    def add(self, event: dict[str, Any]) -> Deferred[int | None]:
        """
        Keep an event; fires once committed with its id, or with C{None}
        when the outbox is full (the event is not kept).
        """
        body = json.dumps(event, separators=(",", ":"))

        def insert(db: Cursor, dialect: Dialect) -> int | None:
            if int(db.execute("SELECT COUNT(*) FROM events").fetchone()[0]) >= self.bound:
                return None
            marks = f"{dialect.placeholder}, {dialect.placeholder}"
            row = db.execute(f"INSERT INTO events (body, created_at) VALUES ({marks}) RETURNING seq",
                             (body, time.time())).fetchone()
            return int(row[0])

        return self.storage.transact(insert, self.timeout)

    def next(self, most: int = BATCH) -> Deferred[Transaction | None]:
        """
        The transaction to send: the one already taken and not accepted,
        if any, else a new one of the oldest C{most} events; C{None} when
        no event waits.
        """

        def take(db: Cursor, dialect: Dialect) -> Transaction | None:
            mark = dialect.placeholder
            txn = db.execute("SELECT MIN(txn) FROM events").fetchone()[0]
            if txn is None:
                seqs = db.execute(f"SELECT seq FROM events ORDER BY seq LIMIT {int(most)}").fetchall()
                if not seqs:
                    return None
                txn = seqs[-1][0]
                db.execute(f"UPDATE events SET txn = {mark} WHERE seq <= {mark} AND txn IS NULL", (txn, txn))
            rows = db.execute(f"SELECT seq, body, created_at FROM events WHERE txn = {mark} ORDER BY seq",
                              (txn,)).fetchall()
            return Transaction(int(txn), [_event(seq, body) for seq, body, _ in rows], float(rows[0][2]))

        return self.storage.transact(take, self.timeout)

    def accepted(self, txn: int) -> Deferred[int]:
        """
        The web app accepted transaction C{txn}: forget its events; fires
        with how many.
        """

        def delete(db: Cursor, dialect: Dialect) -> int:
            return int(db.execute(f"DELETE FROM events WHERE txn = {dialect.placeholder}", (txn,)).rowcount)

        return self.storage.transact(delete, self.timeout)

    def measure(self) -> Deferred[tuple[int, float | None]]:
        """
        How many events wait, and when the oldest was recorded (C{None}
        when none waits).
        """

        def count(db: Cursor, dialect: Dialect) -> tuple[int, float | None]:
            depth, oldest = db.execute("SELECT COUNT(*), MIN(created_at) FROM events").fetchone()
            return int(depth), None if oldest is None else float(oldest)

        return self.storage.transact(count, self.timeout)
