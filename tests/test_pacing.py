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
    """
    clock = Clock()
    slots = PrioritySlots(32, reserved=8)
    pacer = LatencyPacer(slots, clock, target=0.05)
    assert slots.backgroundLimit == 24
    for _ in range(50):
        clock.advance(0.2)
        pacer.observe(0.2)
    assert slots.backgroundLimit == 1
    for _ in range(200):
        pacer.observe(0.001)
    assert 5 < slots.backgroundLimit <= 24


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
