"""
Tests for L{rosteradmin.pacing.LatencyPacer}: background writes slow down
while the server is slow, and speed up again once it is not.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from rosteradmin.pacing import LatencyPacer
from rosteradmin.slots import PrioritySlots


def test_slowRepliesCutTheBoundFastOnesGrowIt() -> None:
    """
    Replies over the target cut the background bound by a third at most
    once per latency, down to one; replies under it add one per round.

    Slow replies 0.2 s apart: the smoothed latency passes the 0.05 s target
    at the second (0.04, then 0.072), and each later one, a latency apart,
    cuts the bound, 24 to 1.  Then fast replies at once: the smoothed
    latency stays over the target for 6 more (no cut: none is a latency
    after the last), and from the 7th a round of C{limit} replies under it
    adds one, so the bound is C{m} after 6 + (1 + 2 + ... + (m - 1)).
    """
    clock = Clock()
    slots = PrioritySlots(32, reserved=8)
    pacer = LatencyPacer(slots, clock, target=0.05)
    assert slots.backgroundLimit == 24

    def replies(count: int, latency: float, apart: float) -> list[tuple[int, int]]:
        """
        The bound after each reply that changed it: reply number, bound.
        """
        changes = []
        for n in range(1, count + 1):
            clock.advance(apart)
            before = slots.backgroundLimit
            pacer.observe(latency)
            if slots.backgroundLimit != before:
                changes.append((n, slots.backgroundLimit))
        return changes

    assert replies(50, 0.2, 0.2) == [(2, 16), (3, 10), (4, 6), (5, 4), (6, 2), (7, 1)]
    assert slots.backgroundLimit == 1
    assert replies(200, 0.001, 0) == [(6 + m * (m - 1) // 2, m) for m in range(2, 21)]
    assert slots.backgroundLimit == 20


def test_boundAppliesToBackgroundOnly() -> None:
    """
    With the background bound at one, one background piece runs while
    urgent work still takes the free slots.
    """
    slots = PrioritySlots(8, reserved=2)
    slots.setBackgroundLimit(1)
    started: list[str] = []

    def work(name: str) -> Deferred[None]:
        started.append(name)
        return Deferred()

    for n in range(3):
        slots.run(f"bg{n}", False, work, f"bg{n}")
    for n in range(3):
        slots.run(f"u{n}", True, work, f"u{n}")
    assert started == ["bg0", "u0", "u1", "u2"]
    slots.setBackgroundLimit(3)
    assert started == ["bg0", "u0", "u1", "u2", "bg1", "bg2"]
