# -*- test-case-name: tests.test_quarantine -*-
"""
Parking the roster writes of a user whose writes keep coinciding with the
loss of the component stream.

The server closes the stream on a stanza it will not take (over a size
limit we do not know of, say), and every user is cut off until the
reconnection.  One drop with a user's writes in flight is a coincidence; a
second one in a row may be that user's data.  Its writes are then parked,
with a backoff, so that a reconnection does not send them again and
everyone else is served meanwhile.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from rosteradmin.errors import SyncFailed

T = TypeVar("T")

#: Seconds a user's writes stay parked the first time, doubling each time.
PARK_FIRST_DELAY = 30.0
PARK_MAX_DELAY = 3600.0


class WriteParking:
    """
    Counts each user's writes (and pushes) in flight, strikes the users
    who had some in flight when the stream dropped, and parks those struck
    twice in a row.

    @ivar parked: Why each parked user's writes are held back, by username.
    """

    log = Logger()

    def __init__(self, clock: IReactorTime, unparked: Callable[[str], None]) -> None:
        """
        @param clock: Time for the retries.
        @param unparked: Called with a user whose writes may be tried again.
        """
        self.clock = clock
        self.unparked = unparked
        self.parked: dict[str, str] = {}
        self._writing: Counter[str] = Counter()
        self._strikes: Counter[str] = Counter()
        self._unparkCalls: dict[str, IDelayedCall] = {}

    def inFlight(self, d: Deferred[T], username: str) -> Deferred[T]:
        """
        Count a user's write or push as in flight until it is answered: if
        the stream drops meanwhile, it may be why.
        """
        self._writing[username] += 1

        def answered(result: object) -> object:
            self._writing[username] -= 1
            if not self._writing[username]:
                del self._writing[username]
            return result

        return d.addBoth(answered)

    def stored(self, username: str) -> None:
        """
        Every item of a user's write was stored: none of them is a poison
        write.
        """
        self._strikes.pop(username, None)

    def refusal(self, username: str) -> Deferred[Any] | None:
        """
        A failure for a write of a parked user (checked again as each queued
        item starts: the user may have been parked since), else C{None}.
        """
        reason = self.parked.get(username)
        if reason is None:
            return None
        return fail(SyncFailed(f"roster writes for {username!r} are parked: {reason}"))

    def connectionLost(self) -> None:
        """
        The stream dropped: strike every user with writes in flight, and
        park those struck twice in a row.
        """
        for username in sorted(self._writing):
            self._strikes[username] += 1
            strikes = self._strikes[username]
            if strikes < 2 or username in self.parked:
                continue
            delay = min(PARK_FIRST_DELAY * 2 ** min(strikes - 2, 16), PARK_MAX_DELAY)
            self.parked[username] = (f"roster writes were in flight at {strikes} stream losses in a row; "
                                     f"parked for {delay:.0f} s")
            self.log.error("parked the roster writes of {user}: they were in flight at {strikes} losses of the "
                           "stream in a row; retrying in {delay:.0f} s", user=username, strikes=strikes, delay=delay)
            self._unparkCalls[username] = self.clock.callLater(delay, self._unpark, username)

    def stop(self) -> None:
        """
        The service stops: no parked user's writes are tried again.
        """
        calls, self._unparkCalls = self._unparkCalls, {}
        for call in calls.values():
            if call.active():
                call.cancel()

    def _unpark(self, username: str) -> None:
        self._unparkCalls.pop(username, None)
        self.parked.pop(username, None)
        self.unparked(username)
