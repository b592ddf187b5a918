# -*- test-case-name: tests.test_pacing -*-
"""
Pacing background writes by the server's reply latency.

Prosody handles one stanza at a time: every privileged write waiting in its
queue delays every other user's messages and logins by that write's cost.
And the cost varies: a roster set into an empty roster takes a fraction of
a millisecond, the same set into an 8,000-contact roster tens of
milliseconds (Prosody's internal storage rewrites the whole roster).  A
fixed bound is either too slow for the first or too heavy for the second.

So the bound on background privileged requests adapts, as TCP's window
does: while the smoothed reply latency stays under a target, one more may
be in flight per round; once it passes the target, the bound is cut by
a third.  Urgent work (a login) is not paced: it goes first anyway.
"""

from __future__ import annotations

from twisted.internet.interfaces import IReactorTime

from rosteradmin.slots import PrioritySlots

#: Weight of the newest sample in the smoothed latency.
SMOOTHING = 0.2

#: Share of the bound kept when the latency passes the target.
DECREASE = 2 / 3


class LatencyPacer:
    """
    Adjusts C{slots.backgroundLimit} from observed reply latencies.

    @ivar smoothed: The smoothed reply latency, in seconds.
    """

    def __init__(self, slots: PrioritySlots, clock: IReactorTime, target: float) -> None:
        """
        @param target: The reply latency, in seconds, background work may
            push the server to.
        """
        self.slots = slots
        self.clock = clock
        self.target = target
        self.smoothed = 0.0
        self._sinceIncrease = 0
        self._lastDecrease = float("-inf")

    def observe(self, seconds: float) -> None:
        """
        A privileged request was answered after C{seconds}.
        """
        self.smoothed += SMOOTHING * (seconds - self.smoothed)
        limit = self.slots.backgroundLimit
        now = self.clock.seconds()
        if self.smoothed > self.target:
            # At most once per latency: the answers still arriving were
            # sent under the old bound.
            if now - self._lastDecrease >= self.smoothed:
                self._lastDecrease = now
                self.slots.setBackgroundLimit(int(limit * DECREASE))
            self._sinceIncrease = 0
            return
        self._sinceIncrease += 1
        if self._sinceIncrease >= limit:
            # One more per round of answers under the target.
            self._sinceIncrease = 0
            self.slots.setBackgroundLimit(limit + 1)
