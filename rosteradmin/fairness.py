# -*- test-case-name: tests.test_fairness -*-
"""
One user's roster queries cannot crowd out everyone else's.

A client that loops on roster gets (a bug, or on purpose) would otherwise
take the component's whole capacity: every query it sends is parsed,
answered and written out at once, and queries it sends for an uncached
roster pile up behind the fetch.  Each user may have a few queries in
flight and a steady rate of them; the rest are answered at once with a
cheap C{wait} error, so other users' queries keep their latency, and the
flooding client is served again as soon as it slows down.
"""

from __future__ import annotations

from collections import Counter

from twisted.internet.interfaces import IReactorTime

#: Seconds of the steady rate a user may send at once, after a pause.
BURST_SECONDS = 2.0

#: Users whose rate is remembered before idle ones are forgotten.
MAX_TRACKED_USERS = 10_000


class QueryGate:
    """
    Admits a user's query while the user has fewer than C{inFlight} in
    flight and has not sent more than C{rate} a second (a token bucket
    holding C{rate * BURST_SECONDS}).

    @ivar refusedCount: Queries refused so far, for the metrics.
    """

    def __init__(self, clock: IReactorTime, inFlight: int, rate: float) -> None:
        self.clock = clock
        self.maxInFlight = inFlight
        self.rate = rate
        self.burst = max(1.0, rate * BURST_SECONDS)
        self.refusedCount = 0
        self._inFlight: Counter[str] = Counter()
        # username -> (tokens left, when last counted)
        self._buckets: dict[str, tuple[float, float]] = {}

    def admit(self, username: str) -> bool:
        """
        Whether to answer this query of C{username} now; if so, call
        L{done} once it is answered.
        """
        if self._inFlight[username] >= self.maxInFlight or not self._take(username):
            if not self._inFlight[username]:
                del self._inFlight[username]
            self.refusedCount += 1
            return False
        self._inFlight[username] += 1
        return True

    def done(self, username: str) -> None:
        """
        A query admitted by L{admit} is answered.
        """
        self._inFlight[username] -= 1
        if self._inFlight[username] <= 0:
            del self._inFlight[username]

    def _take(self, username: str) -> bool:
        now = self.clock.seconds()
        tokens, then = self._buckets.get(username, (self.burst, now))
        tokens = min(self.burst, tokens + (now - then) * self.rate)
        if tokens < 1.0:
            self._buckets[username] = (tokens, now)
            return False
        if username not in self._buckets and len(self._buckets) >= MAX_TRACKED_USERS:
            self._forgetIdle(now)
        self._buckets[username] = (tokens - 1.0, now)
        return True

    def _forgetIdle(self, now: float) -> None:
        """
        Drop the buckets that have refilled: those users are as new.
        """
        full = [user for user, (tokens, then) in self._buckets.items()
                if tokens + (now - then) * self.rate >= self.burst]
        for user in full:
            del self._buckets[user]
        if len(self._buckets) >= MAX_TRACKED_USERS:
            # Everyone is busy: forget the oldest half rather than grow.
            for user in list(self._buckets)[: MAX_TRACKED_USERS // 2]:
                del self._buckets[user]
