# -*- test-case-name: tests.test_leadership -*-
"""
Which of the rosteradmin processes sharing one state leads: holds the
component connection and does the background work.

Why a leader at all: the XMPP servers take one component connection per
JID, and not safely two.  Prosody keeps one session per component JID and
closes a second with a C{<conflict/>} stream error (after its handshake);
ejabberd takes several, but its mod_delegation and mod_privilege drop every
delegation of the component when any one of them closes, and nothing there
stops a second.  So exactly one process may connect, and it must know it
from the shared state, not from the server.

How: with an SQLite state there is one process (the file's lock refuses a
second), and it always leads (L{AlwaysLeader}).  With a PostgreSQL state,
leadership is an advisory lock (L{LEADER_LOCK}) held by a session of its
own (L{rosteradmin.statepg.PostgreSQLLock}, on a connection apart from the
one that writes the state, in a thread of its own).  PostgreSQL releases
it when that session ends, whatever ended it: a clean close, a crash or
C{kill -9} (the socket closes), C{pg_terminate_backend}, or the server
seeing the connection dead (TCP keepalives).  A standby tries to take it
every L{STANDBY_RETRY} seconds.  Not a lease row with an expiry: that
would trust both hosts' clocks, and the lock ends with its holder without
waiting for an expiry.

The hard part is the moment between the lock's release and the old
leader's knowing it: "when the leader loses its hold it closes its stream
before anyone else can take over."  A leader confirms its hold every
L{HEARTBEAT_INTERVAL} seconds (a statement on the lock's session, bounded
by L{HEARTBEAT_TIMEOUT} on the server, on the wire and here), and steps
down (closes its stream first, then stops its background work) as soon as
one fails, says the lock is gone, or the last confirmed hold is older than
the lease (interval plus timeout): a heartbeat that hangs is a lost hold,
judged by the reactor's timer, not by the network.  The lock cannot have
been released before the last confirming statement was sent, so the old
leader has closed its stream within one lease of any release.  A new
leader, having taken the lock, therefore waits one lease plus
L{TAKEOVER_MARGIN} (L{Timings.takeover}) before it connects: the two never
hold the stream at once, on any server.  On loopback a takeover after a
crash takes at most L{STANDBY_RETRY} plus L{Timings.takeover} plus the
state's reading and the handshake: about 4 to 5 seconds.

A process that stepped down is a standby again: it tries to take the lock
anew, and, leading again, starts the leader's parts afresh (their memory
of the state is stale: the other instance wrote it meanwhile).

What the rest of the process sees: L{Leadership.leading} and
L{Leadership.since}, and observers told when it starts and stops leading
(L{Leadership.observe}), the stop synchronously, before anything else
runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from twisted.application import service
from twisted.internet.defer import Deferred, ensureDeferred, maybeDeferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import Site

from rosteradmin.statestorage import StateError

#: Seconds between two confirmations of a leader's hold.
HEARTBEAT_INTERVAL = 1.0

#: Seconds one confirmation may take (on the server, on the wire, and
#: here) before the hold counts as lost.
HEARTBEAT_TIMEOUT = 1.0

#: Seconds a new leader waits, beyond the old leader's longest time to
#: notice its loss (a lease), for delays of the old leader's reactor.
TAKEOVER_MARGIN = 1.0

#: Seconds between a standby's attempts to take the lock.
STANDBY_RETRY = 1.0


@dataclass(frozen=True)
class Timings:
    """
    The timings of leadership, in seconds: the module's constants unless
    a test gives others.
    """

    heartbeat: float = HEARTBEAT_INTERVAL
    timeout: float = HEARTBEAT_TIMEOUT
    margin: float = TAKEOVER_MARGIN
    retry: float = STANDBY_RETRY

    @property
    def lease(self) -> float:
        """
        How long a confirmed hold is trusted: the longest a leader may
        take to notice that it lost the lock.
        """
        return self.heartbeat + self.timeout

    @property
    def takeover(self) -> float:
        """
        How long a process that took the lock waits before it leads.
        """
        return self.lease + self.margin


class LockSource(Protocol):
    """
    The lock leadership is, on a session of its own; each call runs on
    that session, one at a time, in order.
    """

    def acquire(self) -> Deferred[bool]:
        """
        Try to take the lock: whether it was taken (C{False}: another
        session holds it).  Fails when the database cannot be reached.
        """

    def check(self) -> Deferred[bool]:
        """
        Whether the lock is still held by this session.  Fails when the
        session is lost (which released it).
        """

    def release(self) -> Deferred[None]:
        """
        Let the lock go (end the session): the next L{acquire} starts a
        new one.
        """


class Leadership(service.Service):
    """
    Whether this process leads, from a L{LockSource}: standby, then
    taking over (the lock taken, waiting L{Timings.takeover}), then
    leading, until the hold is lost or the service stops.

    @ivar leading: Whether this process leads now.
    @ivar since: When (UNIX time) it took its current role.
    @ivar problem: Why the lock's database cannot be reached, or C{None}.
    """

    log = Logger()

    def __init__(self, source: LockSource, clock: IReactorTime, timings: Timings = Timings(),
                 wallClock: Callable[[], float] = time.time) -> None:
        """
        @param clock: Schedules the attempts, heartbeats and deadlines.
        @param wallClock: Says L{since}.
        """
        self.source = source
        self.clock = clock
        self.timings = timings
        self.wallClock = wallClock
        self.leading = False
        self.since = wallClock()
        self.problem: str | None = None
        self._observers: list[tuple[Callable[[], object], Callable[[], object]]] = []
        # Results of calls made before the last change of hold are stale.
        self._term = 0
        self._held = False
        self._timers: dict[str, IDelayedCall] = {}

    def observe(self, gained: Callable[[], object], lost: Callable[[], object]) -> None:
        """
        Be told when this process starts leading and when it stops (its
        hold lost, or the service stopping while it leads).  C{lost} is
        called before anything else runs: it closes the stream.
        """
        self._observers.append((gained, lost))

    @property
    def role(self) -> str:
        """
        C{"leader"} or C{"standby"}.
        """
        return "leader" if self.leading else "standby"

    def startService(self) -> None:
        super().startService()
        self._attempt()

    def stopService(self) -> Deferred[None]:
        """
        Stop leading (the observers are told) and let the lock go.
        """
        super().stopService()
        self._drop()
        return self.source.release()

    def _later(self, name: str, delay: float, f: Callable[[], None]) -> None:
        timer = self._timers.pop(name, None)
        if timer is not None and timer.active():
            timer.cancel()
        self._timers[name] = self.clock.callLater(max(delay, 0.0), f)

    def _cancelTimers(self) -> None:
        for timer in self._timers.values():
            if timer.active():
                timer.cancel()
        self._timers.clear()

    def _attempt(self) -> None:
        term = self._term
        self.source.acquire().addCallbacks(self._acquired, self._unreachable, callbackArgs=(term, self.clock.seconds()),
                                           errbackArgs=(term,))

    def _acquired(self, taken: bool, term: int, sent: float) -> None:
        if term != self._term or not self.running:
            return
        if self.problem is not None:
            self.log.info("state database reachable again for leadership")
            self.problem = None
        if not taken:
            self._later("attempt", self.timings.retry, self._attempt)
            return
        self._held = True
        self.log.info("took the leadership lock; leading in {delay:.1f} s, once a previous leader has surely "
                      "stepped down", delay=self.timings.takeover)
        self._confirmed(True, term, sent)
        self._later("takeover", self.timings.takeover, self._lead)

    def _unreachable(self, failure: Failure, term: int) -> None:
        if term != self._term or not self.running:
            return
        why = failure.getErrorMessage()
        if self.problem is None:
            self.log.error("cannot reach the state database for leadership: {why}; retrying", why=why)
        self.problem = why
        self._later("attempt", self.timings.retry, self._attempt)

    def _lead(self) -> None:
        self.leading = True
        self.since = self.wallClock()
        self.log.info("leading: connecting to the XMPP server and starting background work")
        for gained, _ in list(self._observers):
            gained()

    def _beat(self) -> None:
        term = self._term
        sent = self.clock.seconds()
        self.source.check().addCallbacks(self._confirmed, self._checkFailed, callbackArgs=(term, sent),
                                         errbackArgs=(term,))

    def _confirmed(self, held: bool, term: int, sent: float) -> None:
        if term != self._term:
            return
        if not held:
            self._lose("the lock is no longer held")
            return
        now = self.clock.seconds()
        # Released at the earliest once this statement was sent.
        self._later("deadline", sent + self.timings.lease - now, lambda: self._lose(
            f"no confirmation of the hold for {self.timings.lease:.1f} s"))
        self._later("beat", sent + self.timings.heartbeat - now, self._beat)

    def stepDown(self, why: str) -> None:
        """
        Stop leading (or taking over) although the hold may be sound: this
        process cannot lead now.  It tries again as a standby.
        """
        self._lose(why)

    def _checkFailed(self, failure: Failure, term: int) -> None:
        if term == self._term:
            self._lose(f"its session failed: {failure.getErrorMessage()}")

    def _lose(self, why: str) -> None:
        """
        The hold is lost or in doubt: stop leading at once, let the lock's
        session go, and try again as a standby.
        """
        if not self._held:
            return
        wasLeading = self.leading
        self._drop()
        self.log.error("leadership lost ({why}){what}; standby now", why=why,
                       what=": closed the XMPP stream and stopped background work" if wasLeading else "")
        term = self._term
        self.source.release().addBoth(lambda _: self._retryAfterLoss(term))

    def _retryAfterLoss(self, term: int) -> None:
        if term == self._term and self.running:
            self._later("attempt", self.timings.retry, self._attempt)

    def _drop(self) -> None:
        """
        Forget the hold: no timer or result of a call already made acts
        any more, and observers of a leader are told it stopped.
        """
        self._term += 1
        self._cancelTimers()
        self._held = False
        if self.leading:
            self.leading = False
            self.since = self.wallClock()
            for _, lost in list(self._observers):
                lost()


class AlwaysLeader:
    """
    The leadership of the only process (an SQLite state, or none): it
    leads from start to end.

    @ivar since: When the process started.
    """

    leading = True
    role = "leader"
    problem: str | None = None

    def __init__(self, wallClock: Callable[[], float] = time.time) -> None:
        self.since = wallClock()

    def observe(self, gained: Callable[[], object], lost: Callable[[], object]) -> None:
        """
        Nothing to tell: the process leads throughout.
        """



@dataclass(frozen=True)
class Term:
    """
    What a process runs while it leads, built afresh each time it starts
    leading (L{LeaderOnly}).

    @ivar services: Started in this order, stopped in the reverse.
    @ivar root: The HTTP API's resource tree while leading.
    @ivar abandon: Closes the component stream at once, for good.
    @ivar discard: Closes what was opened for a term that never started
        (the hold was lost meanwhile).
    """

    services: Sequence[service.IService]
    root: Resource
    abandon: Callable[[], None]
    discard: Callable[[], Deferred[None]]


class LeaderOnly(service.MultiService):
    """
    The parts only the leader runs (the component, the backend and the
    state's memory, the full sync, the online check), started when the
    process starts leading and stopped when it stops; meanwhile the HTTP
    API serves a standby's resources (L{rosteradmin.tap.standbyRoot}).

    Stepping down closes the component stream first, synchronously, then
    stops the rest, last started first, and drops it: leading again builds
    everything anew, reading the state the other instance wrote meanwhile.
    """

    log = Logger()

    def __init__(self, leadership: Leadership, begin: Callable[[], Deferred[Term]], site: Site,
                 standby: Resource) -> None:
        """
        @param begin: Opens the state and builds a term's parts.
        @param site: The HTTP API's site, whose resource tree follows the
            role.
        @param standby: The tree while not leading.
        """
        super().__init__()
        self.leadership = leadership
        self.begin = begin
        self.site = site
        self.standby = standby
        site.resource = standby
        self._term: Term | None = None
        self._count = 0
        self._stopping: Deferred[None] | None = None
        # The service is stopping: no term starts any more.
        self._closing = False
        leadership.observe(self._gained, self._lost)

    def _gained(self) -> None:
        if self._closing:
            return
        count = self._count = self._count + 1
        self.begin().addCallbacks(self._begun, self._notBegun, callbackArgs=(count,))

    def _notBegun(self, failure: Failure) -> None:
        """
        The state could not be opened: let another process (or a later
        attempt) lead.
        """
        if not failure.check(StateError):
            self.log.failure("starting to lead failed", failure)
        self.leadership.stepDown(f"cannot open the state: {failure.getErrorMessage()}")

    def _begun(self, term: Term, count: int) -> Deferred[None] | None:
        if count != self._count or not self.running or self._closing:
            return term.discard()
        if self._stopping is not None:
            # The last term's parts are still stopping (their state closing).
            return self._stopping.addCallback(lambda _: self._start(term, count))
        self._start(term, count)
        return None

    def _start(self, term: Term, count: int) -> Deferred[None] | None:
        if count != self._count or not self.running or self._closing:
            return term.discard()
        self._term = term
        for part in term.services:
            part.setServiceParent(self)
        self.site.resource = term.root
        return None

    def _lost(self) -> None:
        self._count += 1
        self.site.resource = self.standby
        term, self._term = self._term, None
        if term is not None:
            term.abandon()
            self._stopping = stopping = ensureDeferred(self._stopParts())
            stopping.addCallback(lambda _: setattr(self, "_stopping", None))

    async def _stopParts(self) -> None:
        # While this service runs, a part leaving it is stopped.
        for part in reversed(list(self)):
            await maybeDeferred(part.disownServiceParent)

    def stopService(self) -> Deferred[None]:
        """
        Stop the parts of the term under way, last started first (their
        stream closed cleanly and their state written: a clean hand-over).
        """
        self._closing = True
        self._count += 1
        self._term = None
        return ensureDeferred(self._stop())

    async def _stop(self) -> None:
        if self._stopping is not None:
            await self._stopping
        await self._stopParts()
        service.Service.stopService(self)
