"""
Tests for L{rosteradmin.slots.PrioritySlots}: the bound, the order, and
urgent work first.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, fail

from rosteradmin.slots import PrioritySlots


class Work:
    """
    Work items held open until the test finishes them, in start order.
    """

    def __init__(self) -> None:
        self.started: list[str] = []
        self._open: dict[str, Deferred[str]] = {}

    def __call__(self, name: str) -> Deferred[str]:
        self.started.append(name)
        d: Deferred[str] = Deferred()
        self._open[name] = d
        return d

    def finish(self, name: str) -> None:
        self._open.pop(name).callback(name)

    @property
    def open(self) -> int:
        return len(self._open)


def test_boundAndOrder() -> None:
    """
    No more than the limit run; the rest start in order as slots free.
    """
    slots, work = PrioritySlots(2), Work()
    results: list[Any] = []
    for name in ["a", "b", "c", "d"]:
        slots.run(name, False, work, name).addBoth(results.append)
    assert work.started == ["a", "b"] and slots.running == 2
    work.finish("b")
    assert work.started == ["a", "b", "c"] and work.open == 2
    for name in ["a", "c", "d"]:
        work.finish(name)
    assert results == ["b", "a", "c", "d"] and slots.running == 0


def test_urgentFirst() -> None:
    """
    Urgent work waiting starts before background work that came earlier,
    and urgent pieces keep their own order.
    """
    slots, work = PrioritySlots(1), Work()
    for name, urgent in [("busy", False), ("bg1", False), ("bg2", False), ("u1", True), ("u2", True)]:
        slots.run(name, urgent, work, name)
    for name in ["busy", "u1", "u2", "bg1"]:
        work.finish(name)
    assert work.started == ["busy", "u1", "u2", "bg1", "bg2"]


def test_promoteMovesAllOfAKeysWork() -> None:
    """
    Promoting a key makes all its waiting background work urgent, in
    order, after the urgent work already waiting; other keys keep theirs.
    """
    slots, work = PrioritySlots(1), Work()
    slots.run("x", False, work, "busy")
    slots.run("alice", False, work, "alice1")
    slots.run("bob", False, work, "bob1")
    slots.run("bob", False, work, "bob2")
    slots.run("carol", True, work, "carol1")
    slots.promote("bob")
    slots.promote("nobody")
    for name in ["busy", "carol1", "bob1", "bob2"]:
        work.finish(name)
    assert work.started == ["busy", "carol1", "bob1", "bob2", "alice1"]


def test_failuresAndSynchronousWorkFreeTheirSlot() -> None:
    """
    Work that fails, or finishes at once, gives its slot back; the failure
    reaches the caller.
    """
    slots = PrioritySlots(1)
    failures: list[Any] = []
    slots.run("a", True, lambda: fail(ValueError("boom"))).addErrback(failures.append)
    assert [f.type for f in failures] == [ValueError] and slots.running == 0
    assert [slots.run("b", False, lambda n: n, n).result for n in range(3)] == [0, 1, 2]
    assert slots.running == 0
