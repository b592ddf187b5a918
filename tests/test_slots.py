"""
Tests for L{rosteradmin.slots.PrioritySlots}: the bound, the order, and
urgent work first; and for L{rosteradmin.slots.AtMost}, the outer bound of
passes over users.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import capturedLogs
from twisted.python.failure import Failure

from rosteradmin.slots import AtMost, KeyedLock, PrioritySlots, Shared


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


class Stream:
    """
    Work that waits on a connection, and fails when it drops: at once for
    work started afterwards (not connected), like privileged iqs do.
    """

    def __init__(self) -> None:
        self.connected = True
        self.pending: list[Deferred[None]] = []

    def __call__(self) -> Deferred[None]:
        if not self.connected:
            return fail(ConnectionError("not connected"))
        d: Deferred[None] = Deferred()
        self.pending.append(d)
        return d

    def drop(self) -> None:
        self.connected = False
        pending, self.pending = self.pending, []
        for d in pending:
            d.errback(ConnectionError("connection lost"))


def test_streamLossWithTenThousandQueuedFreesEverySlot() -> None:
    """
    32 works hold the slots and 10,000 wait when the connection drops: the
    running ones fail, each queued one then fails synchronously as it
    starts.  Every Deferred fires, no slot stays held, and nothing recurses
    (a release that started the next work from inside the previous one's
    callback overflowed the stack here and stranded the queue).
    """
    slots, stream = PrioritySlots(32, reserved=8), Stream()
    outcomes: list[Any] = []
    for n in range(10_032):
        slots.run(f"user{n % 500}", n % 3 == 0, stream).addBoth(outcomes.append)
    assert slots.running == 32 and slots.waiting == 10_000
    stream.drop()
    assert len(outcomes) == 10_032 and all(f.check(ConnectionError) for f in outcomes)
    assert slots.running == 0 and slots.waiting == 0


def test_tenThousandSynchronousFailuresFreeEverySlot() -> None:
    """
    Work that fails as it is called (not connected) while others hold the
    slots: when the holders finish, all 10,000 waiting fail in turn, every
    Deferred fires and the slots are free again.
    """
    slots, work = PrioritySlots(4), Work()
    outcomes: list[Any] = []
    for name in "abcd":
        slots.run(name, False, work, name).addBoth(outcomes.append)
    for n in range(10_000):
        slots.run(f"u{n}", n % 2 == 0, lambda: fail(ValueError("not connected"))).addBoth(outcomes.append)
    for name in "abcd":
        work.finish(name)
    assert len(outcomes) == 10_004 and slots.running == 0 and slots.waiting == 0


def test_reservedSlotsAreForUrgentWork() -> None:
    """
    Background work never takes the reserved slots, so urgent work starts
    at once even while background work waits.
    """
    slots, work = PrioritySlots(3, reserved=1), Work()
    for name in ["bg1", "bg2", "bg3"]:
        slots.run(name, False, work, name)
    assert work.started == ["bg1", "bg2"] and slots.waiting == 1
    slots.run("u1", True, work, "u1")
    assert work.started == ["bg1", "bg2", "u1"]
    work.finish("u1")
    assert work.started == ["bg1", "bg2", "u1"]
    work.finish("bg1")
    assert work.started == ["bg1", "bg2", "u1", "bg3"]


def test_reservedMustLeaveASlot() -> None:
    """
    Reserving every slot would starve background work forever: refused.
    """
    with pytest.raises(ValueError):
        PrioritySlots(2, reserved=2)


def test_keyedLockSerialisesPerKey() -> None:
    """
    Work for one key runs one piece at a time, in order; other keys run
    alongside; a key is forgotten once its work is done.
    """
    lock: KeyedLock[str] = KeyedLock()
    work = Work()
    for name, key in [("a1", "a"), ("a2", "a"), ("b1", "b"), ("a3", "a")]:
        lock.run(key, work, name)
    assert work.started == ["a1", "b1"]
    work.finish("a1")
    assert work.started == ["a1", "b1", "a2"]
    work.finish("b1")
    assert "b" not in lock and "a" in lock
    work.finish("a2")
    work.finish("a3")
    assert work.started == ["a1", "b1", "a2", "a3"] and len(lock) == 0


def test_keyedLockTenThousandSynchronousWaitersDoNotRecurse() -> None:
    """
    10,000 waiters on one key whose work finishes synchronously (a cached
    roster, a failure while disconnected): all run, in order, without
    recursion, and the key is released.
    """
    lock: KeyedLock[str] = KeyedLock()
    work = Work()
    results: list[Any] = []
    lock.run("alice", work, "first")
    for n in range(10_000):
        lock.run("alice", (lambda n: succeed(n)) if n % 2 else (lambda n: fail(ValueError(n))), n).addBoth(
            results.append)
    work.finish("first")
    assert len(results) == 10_000 and results[1] == 1 and isinstance(results[0], Failure)
    assert len(lock) == 0


def test_keyedLockThirdWaiterWaitsForSecond() -> None:
    """
    With a first piece done and a second running, a third waits for the
    second (a lock dropped while held let the third run alongside it).
    """
    lock: KeyedLock[str] = KeyedLock()
    work = Work()
    lock.run("room", work, "k1")
    lock.run("room", work, "k2")
    work.finish("k1")
    lock.run("room", work, "k3")
    assert work.started == ["k1", "k2"]
    work.finish("k2")
    assert work.started == ["k1", "k2", "k3"]


def test_keysTakeTurns() -> None:
    """
    One key's many pieces of work do not take every slot in turn: keys
    alternate, each in its own order.
    """
    slots, work = PrioritySlots(1), Work()
    slots.run("x", True, work, "busy")
    for n in range(3):
        slots.run("alice", True, work, f"alice{n}")
    slots.run("bob", True, work, "bob0")
    for name in ["busy", "alice0", "bob0", "alice1"]:
        work.finish(name)
    assert work.started == ["busy", "alice0", "bob0", "alice1", "alice2"]


def test_perKeyBound() -> None:
    """
    A key holds at most perKey slots; the others stay for other keys, even
    while that key's work waits.
    """
    slots, work = PrioritySlots(8, perKey=2), Work()
    for n in range(100):
        slots.run("alice", False, work, f"alice{n}")
    assert work.started == ["alice0", "alice1"] and slots.running == 2 and slots.waiting == 98
    slots.run("bob", True, work, "bob0")
    assert work.started[-1] == "bob0"
    work.finish("alice0")
    assert work.started[-1] == "alice2" and slots.running == 3


# AtMost


def test_atMostBoundsEveryCallTogether() -> None:
    """
    Two calls share one bound: the second waits until the first's keys are
    all taken, and each call fires once its own work is done.
    """
    work, bound = Work(), AtMost[str](2)
    fired: list[str] = []
    bound.run(["a", "b", "c"], work).addCallback(lambda _: fired.append("first"))
    bound.run(["d"], work).addCallback(lambda _: fired.append("second"))
    assert work.started == ["a", "b"] and bound.running == 2
    work.finish("a")
    assert work.started == ["a", "b", "c"]
    work.finish("b")
    assert work.started == ["a", "b", "c", "d"] and fired == []
    work.finish("d")
    assert fired == ["second"]
    work.finish("c")
    assert fired == ["second", "first"] and bound.running == 0


def test_atMostTakesKeysAsItGoes() -> None:
    """
    Keys are taken from the iterable only as work finishes: a pass over a
    generator never holds more than the bound.
    """
    taken: list[int] = []

    def keys() -> Any:
        for n in range(1000):
            taken.append(n)
            yield str(n)

    work, bound = Work(), AtMost[str](3)
    bound.run(keys(), work)
    assert len(taken) == 3 and work.open == 3


def test_atMostFirstGoesBeforeWaitingCalls() -> None:
    """
    A call made C{first} starts before the keys of calls already waiting.
    """
    work, bound = Work(), AtMost[str](1)
    bound.run(["a", "b"], work)
    bound.run(["c"], work)
    bound.run(["client"], work, first=True)
    work.finish("a")
    assert work.started == ["a", "client"]


def test_atMostSynchronousWorkDoesNotRecurse() -> None:
    """
    Work that finishes at once (a user with nothing to write) starts the
    next from a loop, not from its completion: 100,000 of them neither
    overflow the stack nor leave pieces counted as running.
    """
    bound = AtMost[str](8)
    done = bound.run((str(n) for n in range(100_000)), lambda key: succeed(None))
    assert done.called and bound.running == 0


def test_atMostEmptyAndFailingWork() -> None:
    """
    A call with no keys fires at once; work that fails is logged as a bug
    and frees its place.
    """
    bound = AtMost[str](1)
    assert bound.run([], Work()).called
    with capturedLogs() as events:
        done = bound.run(["a", "b"], lambda key: fail(RuntimeError(key)))
    assert done.called and bound.running == 0
    assert len([e for e in events if "log_failure" in e]) == 2


def test_sharedRunsOnceForAllWhoAsk() -> None:
    """
    Askers while a key's work runs get its outcome without running it
    again; another key runs on its own; once done, the next ask runs anew.
    """
    work = Work()
    shared: Shared[str, str] = Shared()
    first, second = shared.run("alice", lambda: work("alice")), shared.run("alice", lambda: work("alice"))
    other = shared.run("bob", lambda: work("bob"))
    assert work.started == ["alice", "bob"] and "alice" in shared
    work.finish("alice")
    assert [first.result, second.result] == ["alice", "alice"] and "alice" not in shared
    work.finish("bob")
    assert other.result == "bob"
    shared.run("alice", lambda: work("alice"))
    assert work.started == ["alice", "bob", "alice"]


def test_sharedFailureReachesEveryAskerButTheCancelled() -> None:
    """
    A failure reaches every asker; one who cancelled is not called again,
    and the others still get the outcome.
    """
    running: Deferred[str] = Deferred()
    shared: Shared[str, str] = Shared()
    first, cancelled, third = (shared.run("alice", lambda: running) for _ in range(3))
    cancelled.addErrback(lambda f: f.trap("twisted.internet.defer.CancelledError"))
    cancelled.cancel()
    running.errback(RuntimeError("web app down"))
    for d in (first, third):
        failure = d.result
        assert isinstance(failure, Failure) and failure.check(RuntimeError)
        d.addErrback(lambda f: None)
    assert "alice" not in shared
