"""
Tests for L{rosteradmin.slicing}: long work hands the reactor a turn
between slices.
"""

from __future__ import annotations

from itertools import count
from typing import Any

from twisted.internet.defer import ensureDeferred
from twisted.internet.task import Clock

from rosteradmin.slicing import inSlices


def test_workWithinTheBudgetTakesNoTurn() -> None:
    """
    Work that fits in one slice is done at once, in chunks, without a turn
    of the reactor.
    """
    clock = Clock()
    chunks: list[list[int]] = []

    async def work() -> None:
        async for part in inSlices(range(150), clock, chunk=64, budget=60.0):
            chunks.append(part)

    done: list[Any] = []
    ensureDeferred(work()).addBoth(done.append)
    assert done == [None]
    assert [len(c) for c in chunks] == [64, 64, 22]
    assert [i for c in chunks for i in c] == list(range(150))
    assert clock.getDelayedCalls() == []


def test_reactorGetsATurnOnceTheBudgetIsSpent() -> None:
    """
    Once the work since the last turn has taken the budget, the next chunk
    waits for a turn of the reactor: timers due meanwhile run before it.
    """
    clock = Clock()
    ticks = count()
    events: list[str] = []

    async def work() -> None:
        # The timer says 1 s has passed at each look: every chunk spends the budget.
        async for part in inSlices(range(5), clock, chunk=2, budget=0.5, timer=lambda: float(next(ticks))):
            events.append(f"chunk {part}")

    done: list[Any] = []
    ensureDeferred(work()).addBoth(done.append)
    clock.callLater(0, events.append, "timer")
    assert events == ["chunk [0, 1]"] and not done
    clock.advance(0)  # the timer was due before the second turn was asked for
    assert events == ["chunk [0, 1]", "chunk [2, 3]", "timer", "chunk [4]"]
    assert done == [None]
