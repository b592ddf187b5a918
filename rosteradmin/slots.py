# -*- test-case-name: tests.test_slots -*-
"""
Bounds on concurrent work: a client's wait goes first, and nothing recurses.

Roster fetches from the web app and privileged roster writes into the
server are both bounded.  A bulk refresh queues thousands of each; a user
who logs in meanwhile must not wait behind them, so work is either urgent
(a client waits on it) or background (refreshes), and urgent work starts
first.  Background work that a client starts waiting on is made urgent.

Work for one key (a user, a room) can also be serialised (L{KeyedLock}),
or run once for all who ask while it runs (L{Shared}).
A pass over many users (a refresh, a re-sync, a check of online users) is
bounded once more, outside the slots and the locks (L{AtMost}): what it
holds alive at once, not what reaches the web app or the server.

All three start waiting work from a loop, never from inside the
completion of the work before it: when the stream to the server drops,
thousands of queued writes fail synchronously one after the other, and
starting each from its predecessor's callback (as C{DeferredLock} and
C{DeferredSemaphore} do) overflows the stack, leaves slots counted as held
and strands the rest of the queue.
"""

from __future__ import annotations

import time
from collections import Counter, OrderedDict, deque
from collections.abc import Iterable, Iterator
from typing import Any, Callable, Generic, Hashable, TypeVar

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure

T = TypeVar("T")
K = TypeVar("K", bound=Hashable)

# The bounds of requests into the server, the same for either writer
# (rosteradmin.privilege over XEP-0356, rosteradmin.ejabberdapi over HTTP).

#: Most roster reads, writes and pushes in flight at once, over all users.
MAX_SYNC_IN_FLIGHT = 32

#: Of those, how many only work a client waits for may hold.
RESERVED_FOR_CLIENTS = 8

#: Of those, how many one user's work may hold: a user whose first sync
#: writes thousands of items leaves the rest to other users' logins.
PER_USER_IN_FLIGHT = 4


class _Work:
    """
    One queued piece of work and the Deferred its caller holds.
    """

    __slots__ = ("work", "args", "result", "urgent")

    def __init__(self, work: Callable[..., Any], args: tuple[Any, ...], urgent: bool = True) -> None:
        self.work = work
        self.args = args
        self.urgent = urgent
        self.result: Deferred[Any] = Deferred()

    def start(self, finished: Callable[[object, _Work], object]) -> None:
        """
        Run the work; C{finished} gets its outcome, perhaps at once.
        """
        maybeDeferred(self.work, *self.args).addBoth(finished, self)


class _Drain:
    """
    Runs a start function in a loop until it has nothing more to start;
    calls made while the loop runs only ask it to go round again.
    """

    __slots__ = ("_startOne", "_looping", "_again")

    def __init__(self, startOne: Callable[[], bool]) -> None:
        """
        @param startOne: Starts one waiting piece of work if it may, and
            says whether it did.
        """
        self._startOne = startOne
        self._looping = False
        self._again = False

    def __call__(self) -> None:
        if self._looping:
            self._again = True
            return
        self._looping = True
        try:
            while True:
                self._again = False
                while self._startOne():
                    pass
                if not self._again:
                    return
        finally:
            self._looping = False


class PrioritySlots:
    """
    At most C{limit} pieces of work at once, and at most C{perKey} for one
    key (a user).  Urgent work starts before any background work, and
    background work never takes the last C{reserved} slots: a login finds a
    slot free even while a bulk refresh has filled the queue.

    Within each class, keys take turns (round robin), each key's work in
    the order it came: a user whose first sync queues 8,000 writes gets one
    turn in each round, not the next 8,000 slots, so another user's login
    waits for a few writes, not for all of them.

    @ivar running: Slots held now.
    @ivar waiting: Pieces of work queued for a slot.
    @ivar backgroundLimit: Most background pieces running at once (at most
        C{limit - reserved}); a pacer lowers it while the server is slow.
    """

    def __init__(self, limit: int, reserved: int = 0, perKey: int | None = None,
                 now: Callable[[], float] = time.monotonic) -> None:
        """
        @param reserved: Slots only urgent work may hold (less than
            C{limit}).
        @param perKey: Most slots one key may hold; by default C{limit}.
        @param now: The time, for L{stalled}.
        """
        if not 0 <= reserved < limit:
            raise ValueError(f"reserved slots ({reserved}) must be fewer than the limit ({limit})")
        self.limit = limit
        self.reserved = reserved
        self.perKey = perKey if perKey is not None else limit
        self.running = 0
        self.waiting = 0
        self.backgroundLimit = limit - reserved
        self._backgroundRunning = 0
        # Waiting work by key, in the order the keys take their turns.
        self._urgent: OrderedDict[str, deque[_Work]] = OrderedDict()
        self._background: OrderedDict[str, deque[_Work]] = OrderedDict()
        self._runningByKey: Counter[str] = Counter()
        self._drain = _Drain(self._startOne)
        self._now = now
        self._lastProgress = now()

    def run(self, key: str, urgent: bool, work: Callable[..., Deferred[T]], *args: Any) -> Deferred[T]:
        """
        Run C{work(*args)} in a slot, once one is free.

        @param key: Whom the work is for; L{promote} finds it by this.
        @param urgent: A client waits on it.
        @return: C{work}'s result.
        """
        queued = _Work(work, args, urgent)
        (self._urgent if urgent else self._background).setdefault(key, deque()).append(queued)
        self.waiting += 1
        self._drain()
        return queued.result

    def setBackgroundLimit(self, limit: int) -> None:
        """
        Let C{limit} background pieces run at once (1 to C{limit - reserved}).
        """
        self.backgroundLimit = max(1, min(limit, self.limit - self.reserved))
        self._drain()

    def stalled(self, bound: float) -> str | None:
        """
        Why this queue is stuck: work waits, and no work started or finished
        for C{bound} seconds; else C{None}.
        """
        idle = self._now() - self._lastProgress
        if not self.waiting or idle < bound:
            return None
        return f"{self.running} running, {self.waiting} waiting, none started or finished for {idle:.0f} s"

    def promote(self, key: str) -> None:
        """
        A client now waits on C{key}'s background work: it becomes urgent,
        after the key's urgent work already waiting.
        """
        waiting = self._background.pop(key, None)
        if waiting:
            for queued in waiting:
                queued.urgent = True
            self._urgent.setdefault(key, deque()).extend(waiting)
            self._drain()

    def _startOne(self) -> bool:
        if self.running >= self.limit:
            return False
        key = self._nextKey(self._urgent)
        queue = self._urgent
        if (key is None and self.running < self.limit - self.reserved
                and self._backgroundRunning < self.backgroundLimit):
            key, queue = self._nextKey(self._background), self._background
        if key is None:
            return False
        waiting = queue[key]
        queued = waiting.popleft()
        if waiting:
            queue.move_to_end(key)
        else:
            del queue[key]
        self.waiting -= 1
        self.running += 1
        self._backgroundRunning += not queued.urgent
        self._runningByKey[key] += 1
        self._lastProgress = self._now()
        queued.start(lambda result, q: self._finished(result, q, key))
        return True

    def _nextKey(self, queue: OrderedDict[str, deque[_Work]]) -> str | None:
        """
        The first key in turn that holds fewer than C{perKey} slots.  Keys
        at their bound hold C{perKey} slots each, so at most
        C{limit // perKey} are skipped.
        """
        for key in queue:
            if self._runningByKey[key] < self.perKey:
                return key
        return None

    def _finished(self, result: object, queued: _Work, key: str) -> None:
        self.running -= 1
        self._backgroundRunning -= not queued.urgent
        self._runningByKey[key] -= 1
        if not self._runningByKey[key]:
            del self._runningByKey[key]
        self._lastProgress = self._now()
        _deliver(queued, result)
        self._drain()


class KeyedLock(Generic[K]):
    """
    One piece of work at a time per key, in the order asked; different keys
    run in parallel.  A key's queue exists only while in use, so a million
    users leave no million locks behind.
    """

    def __init__(self) -> None:
        self._queues: dict[K, deque[_Work]] = {}
        self._busy: set[K] = set()
        self._ready: deque[K] = deque()
        self._drain = _Drain(self._startOne)

    def __contains__(self, key: K) -> bool:
        """
        Whether work for C{key} runs or waits.
        """
        return key in self._queues

    def __len__(self) -> int:
        """
        Keys with work running or waiting.
        """
        return len(self._queues)

    def run(self, key: K, work: Callable[..., Deferred[T]], *args: Any) -> Deferred[T]:
        """
        Run C{work(*args)} once the work queued before it for C{key} is done.
        """
        queued = _Work(work, args)
        self._queues.setdefault(key, deque()).append(queued)
        if key not in self._busy:
            self._ready.append(key)
            self._drain()
        return queued.result

    def _startOne(self) -> bool:
        while self._ready:
            key = self._ready.popleft()
            queue = self._queues.get(key)
            if key in self._busy or not queue:
                continue
            self._busy.add(key)
            queued = queue.popleft()
            queued.start(lambda result, q: self._finished(result, q, key))
            return True
        return False

    def _finished(self, result: object, queued: _Work, key: K) -> None:
        self._busy.discard(key)
        if self._queues.get(key):
            self._ready.append(key)
        else:
            self._queues.pop(key, None)
        _deliver(queued, result)
        self._drain()


class Shared(Generic[K, T]):
    """
    One run of work per key for everyone who asks while it runs: each
    asker gets the outcome, a failure too, so a second device logging in
    while the web app hangs waits for one deadline, not for two in turn.
    """

    def __init__(self) -> None:
        self._waiting: dict[K, list[Deferred[T]]] = {}

    def __contains__(self, key: K) -> bool:
        """
        Whether work for C{key} runs.
        """
        return key in self._waiting

    def run(self, key: K, work: Callable[[], Deferred[T]]) -> Deferred[T]:
        """
        Run C{work()} unless it runs for C{key} already; either way, a
        Deferred of its outcome, which the asker may cancel alone.
        """
        mine: Deferred[T] = Deferred()
        waiting = self._waiting.get(key)
        if waiting is not None:
            waiting.append(mine)
            return mine
        self._waiting[key] = [mine]
        work().addBoth(self._deliver, key)
        return mine

    def _deliver(self, outcome: T | Failure, key: K) -> None:
        for d in self._waiting.pop(key):
            if d.called:  # cancelled by its asker
                continue
            if isinstance(outcome, Failure):
                d.errback(outcome)
            else:
                d.callback(outcome)


class _Pass(Generic[K]):
    """
    One call of L{AtMost.run}: its keys not taken yet, its work, its pieces
    running, and the Deferred fired once all are done.
    """

    __slots__ = ("keys", "work", "running", "taken", "done")

    def __init__(self, keys: Iterable[K], work: Callable[[K], Deferred[Any]]) -> None:
        self.keys: Iterator[K] = iter(keys)
        self.work = work
        self.running = 0
        self.taken = False
        self.done: Deferred[None] = Deferred()

    def finishIfDone(self) -> None:
        if self.taken and not self.running and not self.done.called:
            self.done.callback(None)


class AtMost(Generic[K]):
    """
    Work on many keys (users) with at most C{limit} pieces alive at once,
    over every call: the outer bound of the passes over users.

    It is not a bound on requests: fetches, privileged requests and their
    pacing have their own (L{PrioritySlots}), and so has each user's work
    (L{KeyedLock}).  It bounds what a pass holds at once: the coroutines
    and Deferreds of 100,000 users started together would all wait in
    those queues, each user's lock held while its request waits for a
    slot (so that user's refresh waits behind the whole pass).  Keys are
    taken from a call's iterable only as pieces finish, so a pass over a
    generator never holds all of it either.

    Calls take turns in the order they came: a call made while another
    runs waits until the keys of the first are all taken.

    @ivar running: Pieces of work running now, over all calls.
    """

    log = Logger()

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.running = 0
        self._passes: deque[_Pass[K]] = deque()
        self._drain = _Drain(self._startOne)

    def run(self, keys: Iterable[K], work: Callable[[K], Deferred[Any]], first: bool = False) -> Deferred[None]:
        """
        Run C{work(key)} for each key, within the bound.  C{work} handles
        its own failures: one it lets through is logged as a bug.

        @param first: Go before the calls already waiting (work a client
            started).
        @return: Fires once this call's work is all done.
        """
        queued: _Pass[K] = _Pass(keys, work)
        if first:
            self._passes.appendleft(queued)
        else:
            self._passes.append(queued)
        self._drain()
        return queued.done

    def _startOne(self) -> bool:
        while self.running < self.limit and self._passes:
            queued = self._passes[0]
            key = next(queued.keys, _END)
            if key is _END:
                self._passes.popleft()
                queued.taken = True
                queued.finishIfDone()
                continue
            self.running += 1
            queued.running += 1
            d = maybeDeferred(queued.work, key)
            d.addErrback(lambda f: self.log.failure("unhandled failure of bounded work", f))
            d.addBoth(self._finished, queued)
            return True
        return False

    def _finished(self, result: object, queued: _Pass[K]) -> None:
        self.running -= 1
        queued.running -= 1
        queued.finishIfDone()
        self._drain()


#: The end of a call's keys.
_END: Any = object()


def _deliver(queued: _Work, result: object) -> None:
    """
    Hand finished work's outcome to its caller.
    """
    if isinstance(result, Failure):
        queued.result.errback(result)
    else:
        queued.result.callback(result)
