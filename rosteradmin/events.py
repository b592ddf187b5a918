# -*- test-case-name: tests.test_events -*-
"""
Delivering the outbox (L{rosteradmin.outbox}) to the web app, as Matrix
homeservers deliver to application services: one transaction at a time,
in order, each POSTed until the web app answers 2xx, then the next.

A transaction the web app does not accept (an error status, a timeout, a
refused connection) is sent again, the same events under the same id,
after a pause that doubles from L{FIRST_DELAY} up to
C{--events-retry-max-delay}; nothing later goes out before it.  So the
web app sees transaction ids only grow, and may see one again (its
answer was lost): it deduplicates by the id (docs/webapp.md, "Events: what
users tried").

Each POST is signed: C{X-Rosteradmin-Signature} holds
C{v1=HMAC-SHA256(key, timestamp + "." + body)} in hex for every key of
C{--events-secret}, comma-separated, so that a key can be rotated
without a gap (add the new one here, then to the web app, then drop the
old one here); C{X-Rosteradmin-Timestamp} is the timestamp signed, in
seconds since the epoch, fresh at each attempt, so the web app can
refuse old replays.

Only the instance that holds the component stream records and delivers
events (the L{EventDelivery} service runs while it leads).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

from twisted.application import service
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.web.client import HTTPConnectionPool

from rosteradmin.outbox import Outbox, Transaction
from rosteradmin.snapshot import EventsSnapshot

#: Seconds before the first retry of a transaction; each retry doubles it.
FIRST_DELAY = 1.0

#: The version of the signature scheme, its prefix in the header.
SIGNATURE_SCHEME = "v1"


def sign(secrets: Sequence[str], timestamp: int, body: bytes) -> str:
    """
    The C{X-Rosteradmin-Signature} value: C{v1=<hex>} for each key,
    comma-separated, over C{b"<timestamp>." + body}.
    """
    signed = f"{timestamp}.".encode("ascii") + body
    return ",".join(f"{SIGNATURE_SCHEME}={hmac.new(secret.encode('utf-8'), signed, hashlib.sha256).hexdigest()}"
                    for secret in secrets)


class EventDelivery(service.Service):
    """
    Records events in the outbox and sends its transactions to the web
    app while running.

    @ivar delivered: Events the web app accepted since start.
    @ivar dropped: Events not kept since start.
    """

    log = Logger()

    def __init__(self, outbox: Outbox, url: str, secrets: Sequence[str], http: Any, clock: IReactorTime,
                 timeout: float, maxDelay: float, staleAfter: float,
                 headers: Mapping[str, str] | None = None, pool: HTTPConnectionPool | None = None) -> None:
        """
        @param http: A treq-like client for the web app.
        @param timeout: Seconds one POST may take.
        @param maxDelay: Longest pause between attempts.
        @param staleAfter: Seconds an event may wait before L{snapshot}
            says there is a problem.
        @param headers: Extra headers for the web app (C{web_app_headers}).
        @param pool: The connection pool under C{http}, closed at stop.
        """
        self.outbox = outbox
        self.url = url
        self.secrets = tuple(secrets)
        self.http = http
        self.clock = clock
        self.timeout = timeout
        self.maxDelay = maxDelay
        self.staleAfter = staleAfter
        self.headers = dict(headers or {})
        self.pool = pool
        self.delivered = 0
        self.dropped = 0
        self._queued = 0
        self._oldest: float | None = None
        self._lastTransaction: int | None = None
        self._lastError: str | None = None
        self._recorded = False
        self._wake: Deferred[None] | None = None
        self._loop: Deferred[None] | None = None
        self._pause: Deferred[None] | None = None

    def record(self, event: dict[str, Any]) -> None:
        """
        Keep an event for the web app (its C{type} and fields; C{id} and
        C{ts} are added), then wake the sender.  Returns at once; an event
        the outbox cannot keep is logged and counted, never raised: what
        the user tried was refused anyway.
        """
        event = {**event, "ts": round(time.time(), 3)}
        d = self.outbox.add(event)
        d.addCallbacks(self._added, self._notAdded, callbackArgs=(event,), errbackArgs=(event,))

    def _added(self, id: int | None, event: dict[str, Any]) -> None:
        if id is None:
            self.dropped += 1
            self.log.warn("event {type} dropped: {bound} events wait for the web app already",
                          type=event["type"], bound=self.outbox.bound)
            return
        self._queued += 1
        self._recorded = True
        if self._oldest is None:
            self._oldest = event["ts"]
        if self._wake is not None:
            wake, self._wake = self._wake, None
            wake.callback(None)

    def _notAdded(self, failure: Any, event: dict[str, Any]) -> None:
        self.dropped += 1
        self.log.error("event {type} dropped: the state did not take it: {why}", type=event["type"],
                       why=failure.getErrorMessage())

    def startService(self) -> None:
        super().startService()
        self._loop = ensureDeferred(self._run())

    def stopService(self) -> Deferred[None]:
        super().stopService()
        for waiting in (self._wake, self._pause):
            if waiting is not None:
                waiting.cancel()
        loop, self._loop = self._loop, None
        done: Deferred[None] = loop if loop is not None else succeed(None)
        if self.pool is not None:
            pool = self.pool
            done.addCallback(lambda _: pool.closeCachedConnections())
        return done

    def snapshot(self) -> EventsSnapshot:
        age = None if self._oldest is None else max(0.0, time.time() - self._oldest)
        problem = None
        if age is not None and age > self.staleAfter:
            problem = (f"the web app has not accepted events for {age:.0f} s ({self._queued} waiting)"
                       + (f": {self._lastError}" if self._lastError else ""))
        return EventsSnapshot(self._queued, age, self.delivered, self.dropped, self._lastTransaction, problem)

    async def _run(self) -> None:
        """
        Send transaction after transaction while running; when none waits,
        sleep until an event is recorded.  A transaction the web app did
        not take, or an outbox the state could not read, is tried again
        after the backoff.
        """
        delay = FIRST_DELAY
        try:
            while self.running:
                try:
                    self._recorded = False
                    self._queued, self._oldest = await self.outbox.measure()
                    transaction = await self.outbox.next()
                    if transaction is None:
                        if not self._recorded:
                            self._wake = Deferred()
                            await self._wake
                        continue
                    if await self._post(transaction):
                        await self._accepted(transaction)
                        delay = FIRST_DELAY
                        continue
                except CancelledError:
                    raise
                except Exception as e:
                    self.log.error("cannot use the events outbox: {why}", why=str(e))
                await self._sleep(delay)
                delay = min(delay * 2, self.maxDelay)
        except CancelledError:
            pass

    async def _sleep(self, seconds: float) -> None:
        self._pause = deferLater(self.clock, seconds)
        try:
            await self._pause
        finally:
            self._pause = None

    async def _post(self, transaction: Transaction) -> bool:
        """
        POST one transaction.

        @return: Whether the web app accepted it.
        """
        body = json.dumps({"txn_id": transaction.id, "events": transaction.events},
                          separators=(",", ":")).encode("utf-8")
        timestamp = int(time.time())
        headers = {**self.headers, "Content-Type": "application/json",
                   "X-Rosteradmin-Transaction": str(transaction.id),
                   "X-Rosteradmin-Timestamp": str(timestamp),
                   "X-Rosteradmin-Signature": sign(self.secrets, timestamp, body)}
        try:
            response = await self.http.post(self.url, data=body, headers=headers, timeout=self.timeout)
            await response.content()
        except CancelledError:
            raise
        except Exception as e:
            return self._refused(transaction, f"{type(e).__name__}: {e}")
        if not 200 <= response.code < 300:
            return self._refused(transaction, f"HTTP {response.code}")
        return True

    async def _accepted(self, transaction: Transaction) -> None:
        """
        The web app took C{transaction}: forget its events.
        """
        accepted = await self.outbox.accepted(transaction.id)
        if self._lastError is not None:
            self.log.info("the web app accepts events again")
        self._lastError = None
        self.delivered += accepted
        self._lastTransaction = transaction.id
        self.log.debug("events transaction {txn} accepted ({count} events)", txn=transaction.id,
                       count=len(transaction.events))

    def _refused(self, transaction: Transaction, why: str) -> bool:
        self.log.debug("events transaction {txn} not accepted: {why}", txn=transaction.id, why=why)
        if self._lastError is None:
            self.log.warn("the web app did not accept events transaction {txn}: {why}", txn=transaction.id, why=why)
        self._lastError = why
        return False
