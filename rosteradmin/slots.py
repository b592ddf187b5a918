# -*- test-case-name: tests.test_slots -*-
"""
A bound on concurrent work where a client's wait goes first.

Roster fetches from the web app and privileged roster writes into the
server are both bounded.  A bulk refresh queues thousands of each; a user
who logs in meanwhile must not wait behind them, so work is either urgent
(a client waits on it) or background (refreshes), and urgent work starts
first.  Background work that a client starts waiting on is made urgent.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from typing import Any, Callable, TypeVar

from twisted.internet.defer import Deferred, maybeDeferred, succeed

T = TypeVar("T")


class PrioritySlots:
    """
    At most C{limit} pieces of work at once.  Waiting work starts in the
    order it came, every urgent piece before any background one.

    @ivar running: Slots held now.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.running = 0
        self._urgent: deque[Deferred[None]] = deque()
        # Background waiters by key (a username), the oldest key first.
        self._background: OrderedDict[str, deque[Deferred[None]]] = OrderedDict()

    def run(self, key: str, urgent: bool, work: Callable[..., Deferred[T]], *args: Any) -> Deferred[T]:
        """
        Run C{work(*args)} in a slot, once one is free.

        @param key: Whom the work is for; L{promote} finds it by this.
        @param urgent: A client waits on it.
        @return: C{work}'s result.
        """
        def start(_: None) -> Deferred[T]:
            return maybeDeferred(work, *args).addBoth(self._released)

        return self._acquire(key, urgent).addCallback(start)

    def promote(self, key: str) -> None:
        """
        A client now waits on C{key}'s background work: it becomes urgent,
        behind the urgent work already waiting.
        """
        waiting = self._background.pop(key, None)
        if waiting:
            self._urgent.extend(waiting)

    def _acquire(self, key: str, urgent: bool) -> Deferred[None]:
        if self.running < self.limit:
            self.running += 1
            return succeed(None)
        d: Deferred[None] = Deferred()
        if urgent:
            self._urgent.append(d)
        else:
            self._background.setdefault(key, deque()).append(d)
        return d

    def _released(self, result: T) -> T:
        """
        Hand the slot to the next waiting work, if any.
        """
        if self._urgent:
            self._urgent.popleft().callback(None)
        elif self._background:
            key, waiting = next(iter(self._background.items()))
            d = waiting.popleft()
            if not waiting:
                del self._background[key]
            d.callback(None)
        else:
            self.running -= 1
        return result
