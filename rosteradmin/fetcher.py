# -*- test-case-name: tests.test_fetcher -*-
"""
Fetching rosters from the web app with treq.

One C{GET roster_url} per user, URL-encoded username in place of C{%s}.
Every fetch has a deadline (retries included), the number in flight is
bounded, and replies are size-capped and validated.  Fetches a client waits
on go before background ones (refreshes), so a bulk refresh never makes a
login wait.  Two fetches of one user are never asked for at once: the
backend fetches under the user's lock, and a client's load waiting behind
another finds the roster cached.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Mapping, cast
from urllib.parse import quote

from twisted.internet import error as netError
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    TimeoutError,
    ensureDeferred,
    succeed,
)
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import HTTPConnectionPool, ResponseDone, ResponseFailed
from twisted.web.http import PotentialDataLoss

import treq

from rosteradmin.errors import FetchFailed, InvalidRoster, UserUnknown
from rosteradmin.roster import Roster, parseRosterInSlices
from rosteradmin.slots import PrioritySlots

#: Errors after which nothing reached the web app, so a retry is safe.
RETRYABLE = (
    netError.ConnectError,
    netError.ConnectionRefusedError,
    netError.DNSLookupError,
)

#: First pause between retries; it doubles each time, within the deadline.
RETRY_DELAY = 0.1


class ReplyTooLarge(Exception):
    """
    The web app's reply is over the configured cap.
    """


class RosterFetcher:
    """
    Fetches and validates rosters from the web app.

    @ivar inFlight: The number of fetches running now.
    """

    log = Logger()

    def __init__(
        self,
        urlTemplate: str,
        domain: str,
        clock: IReactorTime,
        http: Any = treq,
        timeout: float = 10.0,
        concurrency: int = 64,
        maxBytes: int = 16 * 1024 * 1024,
        headers: Mapping[str, str] | None = None,
        pool: HTTPConnectionPool | None = None,
        observeFetch: Callable[[str, float], object] = lambda outcome, seconds: None,
    ) -> None:
        """
        @param urlTemplate: The roster URL with one C{%s} for the username.
        @param domain: The user domain; a user's bare JID is C{user@domain}.
        @param clock: Time for deadlines and retry pauses.
        @param http: A treq-like client (C{treq} or a C{treq.testing.StubTreq}).
        @param pool: The connection pool under C{http}, closed by L{close}.
        @param observeFetch: Told each fetch's outcome (C{"ok"} or
            C{"failed"}) and duration (the metrics).
        """
        self.urlTemplate = urlTemplate
        self.domain = domain
        self.clock = clock
        self.http = http
        self.timeout = timeout
        self.maxBytes = maxBytes
        self.headers = webAppHeaders(headers)
        self.pool = pool
        self.inFlight = 0
        self.failures = 0
        self.observeFetch = observeFetch
        # A quarter of the slots stays free for fetches a client waits on,
        # so a login never queues behind a refresh's hanging fetches.
        self._slots = PrioritySlots(concurrency, reserved=concurrency // 4, now=clock.seconds)

    def close(self) -> Deferred[None]:
        """
        Close the kept-alive connections to the web app.
        """
        if self.pool is None:
            return succeed(None)
        return self.pool.closeCachedConnections()

    def urlFor(self, username: str) -> str:
        """
        The web app URL of a user's roster.
        """
        return self.urlTemplate.replace("%s", quote(username, safe=""))

    def fetch(self, username: str, urgent: bool = True) -> Deferred[Roster]:
        """
        Fetch a user's roster (under the user's lock: see the module
        docstring).

        @param username: A nodeprepped username.
        @param urgent: A client waits for it (a roster query), rather than
            a background job (a refresh): it starts before background ones.
        @return: A Deferred firing with the L{Roster}, or failing with
            L{FetchFailed} (L{UserUnknown} when the web app answers 404).
        """
        return self._slots.run(username, urgent, self._fetchWithDeadline, username)

    def stuck(self) -> str | None:
        """
        Why fetches make no progress (each has a deadline, so a queue that
        has not moved for twice that is wedged), or C{None}.
        """
        stalled = self._slots.stalled(2 * self.timeout + 1)
        return f"roster fetches: {stalled}" if stalled is not None else None

    def hurry(self, username: str) -> None:
        """
        A client now waits for this user's roster: if a background fetch of
        it waits for a slot, it goes before the other background ones.
        """
        self._slots.promote(username)

    def _fetchWithDeadline(self, username: str) -> Deferred[Roster]:
        """
        Run one fetch under the deadline, turning every failure into
        L{FetchFailed}.
        """
        started = time.monotonic()
        self.inFlight += 1
        d = ensureDeferred(self._fetch(username))
        # Cancelling the request surfaces as whatever treq makes of it
        # (ResponseNeverReceived, ...): report any outcome of a timed-out
        # fetch as the timeout it was.
        d.addTimeout(self.timeout, self.clock, onTimeoutCancel=_timedOut)

        def done(result: Roster | Failure) -> Roster | Failure:
            self.inFlight -= 1
            elapsed = time.monotonic() - started
            self.observeFetch("failed" if isinstance(result, Failure) else "ok", elapsed)
            if isinstance(result, Failure):
                self.failures += 1
                reason = self._describe(result)
                self.log.warn(
                    "roster fetch {user} failed in {elapsed:.3f}s: {reason}",
                    user=username, outcome="failed", elapsed=elapsed, reason=reason,
                )
                if result.check(FetchFailed):  # UserUnknown keeps its type
                    return result
                return Failure(FetchFailed(username, reason))
            self.log.info(
                "roster fetch {user} ok in {elapsed:.3f}s: {count} contacts",
                user=username, outcome="ok", elapsed=elapsed, count=len(result),
            )
            return result

        return d.addBoth(done)

    def _describe(self, failure: Failure) -> str:
        """
        Say in one line why a fetch failed.
        """
        if failure.check(TimeoutError, CancelledError):
            return f"no complete reply within {self.timeout:g}s"
        error = failure.value
        if isinstance(error, FetchFailed):
            return error.reason
        if failure.check(InvalidRoster, ReplyTooLarge):
            return str(failure.value)
        if failure.check(*RETRYABLE):
            return f"cannot connect: {failure.value}"
        if failure.check(ResponseFailed):
            return "connection lost while reading the reply"
        return f"{type(error).__name__}: {error}"

    async def _fetch(self, username: str) -> Roster:
        """
        GET the roster, retrying connection failures, then read and parse it.
        """
        url = self.urlFor(username)
        delay = RETRY_DELAY
        while True:
            try:
                response = await self.http.get(
                    url, headers=self.headers, allow_redirects=False,
                    # The body is read once, capped: no second copy in treq.
                    unbuffered=True,
                )
                break
            except RETRYABLE as e:
                self.log.info(
                    "roster fetch {user}: {error}; retrying in {delay:.1f}s",
                    user=username, error=str(e), delay=delay,
                )
                await deferLater(self.clock, delay)
                delay *= 2
        body = await self._readBody(response)
        if response.code == 404:
            raise UserUnknown(
                username, f"the web app does not know this user (HTTP 404): {preview(body)}"
            )
        if response.code != 200:
            raise FetchFailed(
                username, f"web app answered HTTP {response.code}: {preview(body)}"
            )
        try:
            # A large roster is a second of work: in slices, the reactor
            # serves everyone else meanwhile.
            return await parseRosterInSlices(body, f"{username}@{self.domain}", self.clock)
        except InvalidRoster as e:
            raise InvalidRoster(f"{e} (body starts {preview(body)})") from None

    async def _readBody(self, response: Any) -> bytes:
        return await readCapped(response, self.maxBytes)


def webAppHeaders(extra: Mapping[str, str] | None) -> dict[str, list[str]]:
    """
    The headers of every request to the web app: JSON accepted, and the
    operator's C{web_app_headers}.
    """
    headers = {"Accept": ["application/json"]}
    for name, value in (extra or {}).items():
        headers[name] = [value]
    return headers


async def readCapped(response: Any, maxBytes: int) -> bytes:
    """
    Read a treq response's body, dropping the connection once it passes
    C{maxBytes}.

    @raise ReplyTooLarge: The body is over the cap.
    """
    length = response.length
    if isinstance(length, int) and length > maxBytes:
        response.deliverBody(_Discard())
        raise ReplyTooLarge(f"reply of {length} bytes is over the {maxBytes}-byte cap")
    if length == 0:
        return b""
    reader = _BodyReader(maxBytes)
    response.deliverBody(reader)
    return await reader.done


def _timedOut(result: object, timeout: float) -> Failure:
    return Failure(TimeoutError(timeout, "roster fetch"))


class _BodyReader(Protocol):
    """
    Collects a reply body up to a cap.

    Unlike C{treq.collect}, cancelling its Deferred (when the deadline
    passes while the body trickles in) drops the connection, so a stalled
    web app cannot hold sockets after its fetches have failed.

    @ivar done: Fires with the body, or fails with L{ReplyTooLarge} or why
        the connection was lost.
    """

    def __init__(self, maxBytes: int) -> None:
        self.maxBytes = maxBytes
        self.received = 0
        self.chunks: list[bytes] = []
        self.done: Deferred[bytes] = Deferred(lambda d: self._drop())

    def _drop(self) -> None:
        _stopBody(self)

    def dataReceived(self, data: bytes) -> None:
        if self.done.called:
            return
        self.received += len(data)
        if self.received > self.maxBytes:
            self.done.errback(ReplyTooLarge(f"reply is over the {self.maxBytes}-byte cap"))
            self._drop()
            return
        self.chunks.append(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.done.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(b"".join(self.chunks))
        else:
            self.done.errback(reason)


class _Discard(Protocol):
    """
    A body protocol that closes the connection at once.
    """

    def connectionMade(self) -> None:
        _stopBody(self)


def _stopBody(body: Protocol) -> None:
    """
    Stop the delivery of a response body (it closes the connection).
    """
    # IResponse.deliverBody connects the body protocol to an IPushProducer;
    # Protocol.transport is typed as an ITransport, which cannot stop.
    producer = cast("IPushProducer | None", body.transport)
    if producer is not None:
        producer.stopProducing()


def preview(body: bytes) -> str:
    """
    The start of a reply body, quoted, for a log line or an error message.
    """
    return repr(body[:80].decode("utf-8", "replace"))
