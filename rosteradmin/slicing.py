# -*- test-case-name: tests.test_slicing -*-
"""
Long CPU work on the reactor, in slices.

Some work grows with what the web app sends: a users page of a million
names (each prepared with nodeprep), a refresh naming 100,000 users, a
roster of 20,000 contacts.  Done in one go, it stops the reactor for
seconds: no API request, stanza or timer is served meanwhile (logins time
out, C{/healthz} does not answer).  L{inSlices} hands such work its items a
few at a time and gives the reactor a turn whenever L{SLICE_SECONDS} have
passed, so everything else waits tens of milliseconds at most.

Not a thread: the work is pure Python, so a thread would hold the GIL in
turns with the reactor all the same, and small inputs (nearly all) would pay
a thread hop.  Here the first slice runs at once: work that fits in one
slice costs no reactor turn at all.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterable
from itertools import islice
from typing import TypeVar

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater

T = TypeVar("T")

#: Seconds of work (CPU time) before the reactor gets a turn.
SLICE_SECONDS = 0.01

#: Items handed out at a time: the time is looked at between chunks.  The
#: slowest item known (a non-ASCII username's nodeprep, about 0.3 ms) makes
#: a chunk about 20 ms.
CHUNK = 64


async def inSlices(items: Iterable[T], clock: IReactorTime, chunk: int = CHUNK,
                   budget: float | None = None,
                   timer: Callable[[], float] = time.thread_time) -> AsyncIterator[list[T]]:
    """
    C{items} in lists of up to C{chunk}; once the caller's work on them (and
    the iterator's, taking them) has taken C{budget} seconds
    (L{SLICE_SECONDS}) since the last turn, the reactor gets one before the
    next list (C{clock.callLater(0)}: the I/O and timers due run first).

    @param timer: Measures the work: by default the CPU time of the thread
        (not C{clock}, whose time does not move while the work stops the
        reactor; not the wall clock, which also counts the time the system
        gives other processes, which no turn of the reactor would shorten).
    """
    if budget is None:
        budget = SLICE_SECONDS
    iterator = iter(items)
    started = timer()
    part = list(islice(iterator, chunk))
    while part:
        yield part
        part = list(islice(iterator, chunk))
        # No turn once the work is done: its caller goes on at once.
        if part and timer() - started >= budget:
            await deferLater(clock, 0)
            started = timer()
