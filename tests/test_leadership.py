"""
Tests for L{rosteradmin.leadership}: the state machine of leadership on a
fake lock whose answers the tests give, with a L{task.Clock}; the parts
only the leader runs (L{LeaderOnly}); and, on the C{postgresql} fixture's
server, the advisory lock of L{rosteradmin.statepg.PostgreSQLLock} and the
C{holder} row that keeps a superseded leader from writing the state.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import pytest_twisted
from twisted.application import service
from twisted.internet import reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock, deferLater
from twisted.logger import capturedLogs, formatEvent
from twisted.web.resource import Resource
from twisted.web.server import Site

from rosteradmin.leadership import AlwaysLeader, Leadership, LeaderOnly, Term, Timings
from rosteradmin.state import openStorage
from tests.postgresql import PostgreSQLServer

TIMINGS = Timings(heartbeat=1.0, timeout=1.0, margin=1.0, retry=1.0)


class FakeLock:
    """
    A lock source whose every call waits for the test to answer it.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[str, Deferred[Any]]] = []

    def _call(self, name: str) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.calls.append((name, d))
        return d

    def acquire(self) -> Deferred[bool]:
        return self._call("acquire")

    def check(self) -> Deferred[bool]:
        return self._call("check")

    def release(self) -> Deferred[None]:
        self.calls.append(("release", succeed(None)))
        return succeed(None)

    def answer(self, name: str, result: Any) -> None:
        """
        Answer the oldest unanswered call, which must be C{name}.
        """
        pending = [(n, d) for n, d in self.calls if not d.called]
        assert pending and pending[0][0] == name, f"expected {name}, pending {[n for n, _ in pending]}"
        if isinstance(result, Exception):
            pending[0][1].errback(result)
        else:
            pending[0][1].callback(result)

    def pending(self) -> list[str]:
        return [n for n, d in self.calls if not d.called]


class Observer:
    def __init__(self, leadership: Leadership) -> None:
        self.events: list[tuple[str, float]] = []
        leadership.observe(lambda: self.events.append(("gained", leadership.clock.seconds())),
                           lambda: self.events.append(("lost", leadership.clock.seconds())))


def hold(lock: FakeLock, clock: Clock, seconds: float, step: float = 1 / 16) -> None:
    """
    Let C{seconds} pass, every heartbeat answered at once: the lock holds.
    (Steps of a binary fraction keep the clock's sums exact.)
    """
    for _ in range(round(seconds / step)):
        clock.advance(step)
        while "check" in lock.pending():
            lock.answer("check", True)


def started() -> tuple[Leadership, FakeLock, Clock, Observer]:
    clock = Clock()
    lock = FakeLock()
    leadership = Leadership(lock, clock, TIMINGS, wallClock=clock.seconds)
    observer = Observer(leadership)
    leadership.startService()
    return leadership, lock, clock, observer


def leading() -> tuple[Leadership, FakeLock, Clock, Observer]:
    """
    A leadership that took the lock at 0 and leads from the takeover
    delay on, every heartbeat meanwhile answered.
    """
    leadership, lock, clock, observer = started()
    lock.answer("acquire", True)
    hold(lock, clock, TIMINGS.takeover)
    assert leadership.leading
    return leadership, lock, clock, observer


def test_timings() -> None:
    """
    The lease is a heartbeat's interval plus its timeout; a new leader
    waits a lease plus the margin; by default about 3 s, for a takeover
    of about 5 s on loopback.
    """
    assert TIMINGS.lease == 2.0 and TIMINGS.takeover == 3.0
    assert Timings().takeover <= 3.0


def test_standbyRetriesUntilTheLockIsFree() -> None:
    """
    While another process holds the lock, a standby asks again every
    retry interval, and says it is a standby, reachable, since it started.
    """
    leadership, lock, clock, observer = started()
    for _ in range(3):
        lock.answer("acquire", False)
        assert lock.pending() == []
        clock.advance(TIMINGS.retry)
    assert lock.pending() == ["acquire"]
    assert (leadership.leading, leadership.role, leadership.since, leadership.problem) == (False, "standby", 0, None)
    assert observer.events == []


def test_leadsOnlyAfterTheTakeoverDelay() -> None:
    """
    A process that takes the lock leads only a takeover delay later (the
    old leader has surely stepped down by then), and says since when.
    """
    leadership, lock, clock, observer = started()
    clock.advance(0.5)
    lock.answer("acquire", True)
    hold(lock, clock, TIMINGS.takeover - 0.0625)
    assert not leadership.leading and observer.events == []
    hold(lock, clock, 0.0625)
    assert leadership.leading and leadership.role == "leader"
    assert observer.events == [("gained", pytest.approx(0.5 + TIMINGS.takeover))]
    assert leadership.since == pytest.approx(0.5 + TIMINGS.takeover)


def test_heartbeatFailureStepsDownAtOnce() -> None:
    """
    A heartbeat that fails (the lock's session was terminated) makes the
    leader step down at once: observers told, the session let go, and a
    new attempt to take the lock after the retry interval.
    """
    leadership, lock, clock, observer = leading()
    while "check" not in lock.pending():
        clock.advance(0.0625)
    with capturedLogs() as events:
        lock.answer("check", ConnectionError("terminating connection due to administrator command"))
    assert not leadership.leading and observer.events[-1] == ("lost", clock.seconds())
    assert lock.calls[-1][0] == "release"
    assert any("leadership lost" in formatEvent(e) and "administrator command" in formatEvent(e) for e in events)
    clock.advance(TIMINGS.retry)
    assert lock.pending() == ["acquire"]


def test_lockNoLongerHeldStepsDown() -> None:
    """
    A heartbeat saying the session no longer holds the lock is a loss.
    """
    leadership, lock, clock, observer = leading()
    while "check" not in lock.pending():
        clock.advance(0.0625)
    with capturedLogs():
        lock.answer("check", False)
    assert not leadership.leading and observer.events[-1][0] == "lost"


def test_hungHeartbeatStepsDownWithinTheLease() -> None:
    """
    A heartbeat that never answers (the network is gone) is a loss once
    the last confirmed hold is a lease old, judged by the clock: the old
    leader has stepped down before any new one, which waits longer, leads.
    """
    leadership, lock, clock, observer = leading()
    while "check" not in lock.pending():
        clock.advance(0.0625)
    confirmedAt = clock.seconds()
    clock.advance(0.5)
    lock.answer("check", True)  # sent at confirmedAt, answered later
    while "check" not in lock.pending():  # the next one hangs
        clock.advance(0.0625)
    with capturedLogs():
        clock.advance(confirmedAt + TIMINGS.lease - 0.0625 - clock.seconds())
        assert leadership.leading
        clock.advance(0.0625)
    assert not leadership.leading
    lostAt = observer.events[-1][1]
    assert lostAt == pytest.approx(confirmedAt + TIMINGS.lease)
    # A lock released right after that confirmation, taken at once by
    # another process: it leads at confirmedAt + takeover, later.
    assert confirmedAt + TIMINGS.takeover > lostAt
    # The hung heartbeat's late answer changes nothing.
    lock.answer("check", True)
    assert not leadership.leading


def test_slowHeartbeatWithinTheTimeoutKeepsLeading() -> None:
    """
    A heartbeat answered late but within its timeout confirms the hold:
    the deadline counts from when it was sent.
    """
    leadership, lock, clock, observer = leading()
    for _ in range(5):
        while "check" not in lock.pending():
            clock.advance(0.0625)
        clock.advance(TIMINGS.timeout - 0.125)
        lock.answer("check", True)
    assert leadership.leading and [event for event, _ in observer.events] == ["gained"]


def test_lossDuringTakeoverNeverLeads() -> None:
    """
    A hold lost while waiting to take over never leads, and tells no
    observer.
    """
    leadership, lock, clock, observer = started()
    lock.answer("acquire", True)
    clock.advance(TIMINGS.heartbeat)
    with capturedLogs():
        lock.answer("check", ConnectionError("gone"))
    clock.advance(TIMINGS.takeover)
    assert not leadership.leading and observer.events == []


def test_unreachableDatabaseSaidOnceThenRetried() -> None:
    """
    A standby that cannot reach the database says why (for /healthz),
    logs it once, and keeps trying; reachable again, the problem clears.
    """
    leadership, lock, clock, _ = started()
    with capturedLogs() as events:
        for _ in range(3):
            lock.answer("acquire", ConnectionError("connection refused"))
            clock.advance(TIMINGS.retry)
    assert leadership.problem == "connection refused"
    assert sum("cannot reach the state database" in formatEvent(e) for e in events) == 1
    lock.answer("acquire", False)
    assert leadership.problem is None


def test_stopWhileLeadingTellsObserversAndReleases() -> None:
    """
    Stopping the service while leading tells the observers and lets the
    lock go; no timer is left.
    """
    leadership, lock, clock, observer = leading()
    leadership.stopService()
    assert observer.events[-1][0] == "lost" and lock.calls[-1][0] == "release"
    assert clock.getDelayedCalls() == []


def test_stepDownRetriesAsStandby() -> None:
    """
    A leader that cannot lead (its state would not open) steps down and
    tries again later.
    """
    leadership, lock, clock, observer = leading()
    with capturedLogs():
        leadership.stepDown("cannot open the state")
    assert not leadership.leading and observer.events[-1][0] == "lost"
    clock.advance(TIMINGS.retry)
    assert "acquire" in lock.pending()


def test_alwaysLeader() -> None:
    """
    A single process (SQLite) leads from its start.
    """
    leader = AlwaysLeader(lambda: 42.0)
    assert (leader.leading, leader.role, leader.since) == (True, "leader", 42.0)


class Part(service.Service):
    def __init__(self, name: str, log: list[str]) -> None:
        self.setName(name)
        self.log = log

    def startService(self) -> None:
        super().startService()
        self.log.append(f"start {self.name}")

    def stopService(self) -> None:
        super().stopService()
        self.log.append(f"stop {self.name}")


def test_leaderOnlyFollowsTheRole() -> None:
    """
    The leader's parts start when leading, in order, with the leader's
    API; stepping down closes the stream first, then stops them last
    first, back to the standby's API; leading again builds new parts.
    """
    leadership, lock, clock, _ = started()
    log: list[str] = []
    standby, leaderRoot = Resource(), Resource()
    site = Site(Resource())
    terms: list[Term] = []

    def begin() -> Deferred[Term]:
        term = Term([Part("backend", log), Part("component", log)], leaderRoot, lambda: log.append("abandon"),
                     lambda: succeed(None))
        terms.append(term)
        return succeed(term)

    parts = LeaderOnly(leadership, begin, site, standby)
    parts.startService()
    assert site.resource is standby
    lock.answer("acquire", True)
    hold(lock, clock, TIMINGS.takeover - 0.0625)
    assert log == []
    hold(lock, clock, 0.0625)
    assert log == ["start backend", "start component"] and site.resource is leaderRoot
    while "check" not in lock.pending():
        clock.advance(0.0625)
    with capturedLogs():
        lock.answer("check", ConnectionError("gone"))
    assert log[2:] == ["abandon", "stop component", "stop backend"] and site.resource is standby
    assert list(parts) == []
    clock.advance(TIMINGS.retry)
    lock.answer("acquire", True)
    hold(lock, clock, TIMINGS.takeover)
    assert len(terms) == 2 and [p.running for p in terms[1].services] == [True, True]
    assert [p.running for p in terms[0].services] == [False, False]


def test_leaderOnlyStopsThePartsOfItsTerm() -> None:
    """
    Stopping the service (SIGTERM) stops the leader's parts, last started
    first, without abandoning the stream: a clean stop closes it and
    writes the state; a hold gained meanwhile starts nothing.
    """
    leadership, lock, clock, _ = started()
    log: list[str] = []
    begun: list[Term] = []

    def begin() -> Deferred[Term]:
        begun.append(Term([Part("backend", log), Part("component", log)], Resource(),
                          lambda: log.append("abandon"), lambda: succeed(None)))
        return succeed(begun[-1])

    parts = LeaderOnly(leadership, begin, Site(Resource()), Resource())
    parts.startService()
    lock.answer("acquire", True)
    hold(lock, clock, TIMINGS.takeover)
    stopped = parts.stopService()
    assert log == ["start backend", "start component", "stop component", "stop backend"]
    assert [p.running for p in begun[0].services] == [False, False] and list(parts) == []
    assert stopped.called and not parts.running
    parts._gained()
    assert len(begun) == 1


def test_leaderOnlyDiscardsATermLostWhileOpening() -> None:
    """
    A term whose state is still opening when the hold is lost is never
    started: what it opened is closed.
    """
    leadership, lock, clock, _ = started()
    log: list[str] = []
    opening: Deferred[Term] = Deferred()
    parts = LeaderOnly(leadership, lambda: opening, Site(Resource()), Resource())
    parts.startService()
    lock.answer("acquire", True)
    hold(lock, clock, TIMINGS.takeover)
    assert leadership.leading
    with capturedLogs():
        leadership.stepDown("test")

    def discard() -> Deferred[None]:
        log.append("discard")
        return succeed(None)

    opening.callback(Term([Part("component", log)], Resource(), lambda: log.append("abandon"), discard))
    assert log == ["discard"] and list(parts) == []


# The real lock, on PostgreSQL.


@pytest_twisted.ensureDeferred
async def test_postgresqlLockHeldByOneSession(postgresql: PostgreSQLServer) -> None:
    """
    Of two sessions, one takes the lock; the other cannot until the first
    is terminated (as C{kill -9} or C{pg_terminate_backend} end it), whose
    next heartbeat then fails.
    """
    import psycopg

    from rosteradmin.statepg import PostgreSQLLock

    url = postgresql.newDatabase()
    first, second = PostgreSQLLock(url, 1.0, reactor), PostgreSQLLock(url, 1.0, reactor)
    try:
        assert await first.acquire() is True
        assert await second.acquire() is False
        assert await first.check() is True
        with psycopg.connect(url, autocommit=True) as db:
            db.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                       "WHERE application_name = 'rosteradmin leadership' AND pid IN "
                       "(SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted)")
        with pytest.raises(Exception):
            await first.check()
        assert await second.acquire() is True
        assert await first.acquire() is False
    finally:
        await first.release()
        await second.release()


@pytest_twisted.ensureDeferred
async def test_postgresqlLeadershipTakesOver(postgresql: PostgreSQLServer) -> None:
    """
    Two leaderships on one database, with short timings: one leads; when
    its session is terminated it steps down, and the other leads a
    takeover delay after taking the lock, never before the first stepped
    down.
    """
    import psycopg

    from rosteradmin.statepg import PostgreSQLLock

    url = postgresql.newDatabase()
    timings = Timings(heartbeat=0.2, timeout=0.2, margin=0.2, retry=0.2)
    events: list[tuple[str, str, float]] = []
    leaderships = {}
    for name in ("a", "b"):
        leaderships[name] = leadership = Leadership(PostgreSQLLock(url, timings.timeout, reactor), reactor, timings)
        leadership.observe(lambda name=name: events.append((name, "gained", time.monotonic())),
                           lambda name=name: events.append((name, "lost", time.monotonic())))
        leadership.startService()
    try:
        deadline = time.monotonic() + 10
        while not any(event == "gained" for _, event, _ in events) and time.monotonic() < deadline:
            await deferLater(reactor, 0.0625, lambda: None)
        (first, _, _), = events
        assert sum(leadership.leading for leadership in leaderships.values()) == 1
        with capturedLogs():
            with psycopg.connect(url, autocommit=True) as db:
                db.execute("SELECT pg_terminate_backend(l.pid) FROM pg_locks l WHERE locktype = 'advisory' "
                           "AND granted")
            while len(events) < 2 + 1 and time.monotonic() < deadline:
                await deferLater(reactor, 0.0625, lambda: None)
        lost, gained = events[1], events[2]
        assert lost[:2] == (first, "lost") and gained[1] == "gained"
        assert gained[2] - lost[2] >= timings.margin
    finally:
        for leadership in leaderships.values():
            await leadership.stopService()


@pytest_twisted.ensureDeferred
async def test_postgresqlSupersededHolderWritesNothing(postgresql: PostgreSQLServer) -> None:
    """
    Once another process opened the state (a new leader: its C{holder}
    row replaced ours), this one writes nothing more: its changes would
    overwrite what the new leader read.  It says so.
    """
    import psycopg

    url = postgresql.newDatabase()
    old = openStorage(url, reactor)
    new = openStorage(url, reactor)
    assert new.marked
    with capturedLogs() as events:
        old.change("server_rosters", "alice", ("alice", "old", 1.0))
        for _ in range(100):
            if old.unsaved == 0:
                break
            await deferLater(reactor, 0.02, lambda: None)
        await old.close()
    assert any("another process holds the state now" in formatEvent(e) for e in events)
    with psycopg.connect(url, autocommit=True) as db:
        assert db.execute("SELECT * FROM server_rosters").fetchall() == []
    await new.close()
    with psycopg.connect(url, autocommit=True) as db:
        assert db.execute("SELECT key FROM meta ORDER BY key").fetchall() == [("schema",)]


@pytest_twisted.ensureDeferred
async def test_makeServiceOnPostgreSQL(postgresql: PostgreSQLServer) -> None:
    """
    On a PostgreSQL state the service tree is C{intake}, C{leadership},
    C{leader} and C{http}: a standby's API until the process leads, then
    (the state opened in a thread) the leader's parts under C{leader} and
    its API; a second tree on the same database stays a standby.
    """
    from rosteradmin import tap
    from rosteradmin.options import Options

    def tree() -> service.MultiService:
        options = Options()
        options.parseOptions(["--jid", "roster.example.org", "--secret", "s", "--domain", "example.org",
                              "--roster-url", "http://127.0.0.1:9/%s", "--xmpp-port", "9", "--no-start-sync",
                              "--no-kick", "--http", "tcp:0:interface=127.0.0.1", "--state", url])
        return tap.makeService(options, reactor)

    url = postgresql.newDatabase()
    first, second = tree(), tree()
    assert [s.name for s in first] == ["intake", "leadership", "leader", "http"]
    standbyRoots = {top: top.getServiceNamed("http").site.resource for top in (first, second)}
    with capturedLogs():
        for top in (first, second):
            for name in ("leadership", "leader"):
                top.getServiceNamed(name).startService()
        deadline = time.monotonic() + 10
        leaders: list[service.MultiService] = []
        while time.monotonic() < deadline and not leaders:
            await deferLater(reactor, 0.1, lambda: None)
            leaders = [top for top in (first, second) if "backend" in top.getServiceNamed("leader").namedServices]
        assert len(leaders) == 1
        leader = leaders[0].getServiceNamed("leader")
        assert [s.name for s in leader] == ["backend", "component", "sync", "online-check", "requests"]
        for top in (first, second):
            root = top.getServiceNamed("http").site.resource
            assert (root is standbyRoots[top]) == (top not in leaders)
        for top in (first, second):
            for name in ("leader", "leadership", "intake"):
                await top.getServiceNamed(name).stopService()
    assert list(leader) == []
