# -*- test-case-name: tests.test_handoff -*-
"""
The leader's side of the intake: while this instance leads, it applies
the requests standbys recorded (L{rosteradmin.intake}), one at a time,
oldest first, through the same calls its own API makes
(L{rosteradmin.api.LeaderCalls}), and records each outcome for
C{GET /roster_admin/requests/<id>}.

L{RequestApplier} is a service started when this instance gains
leadership and stopped when it loses it.  Each start is a new term, with
a claimer name of its own: it first hands back every claim of earlier
terms (L{rosteradmin.intake.Intake.recover}), which only a leader that
died or stepped down mid-way can have left, so that no accepted request
is lost: it is applied again.  A refresh applied twice is the same
refresh.  A sync applied twice joins or restarts a pass, which syncs the
same users again.  A kick applied twice kicks again if the occupant came
back, and otherwise gets the room's "not found": the request's outcome
is then that 404, though the first attempt may have kicked them (its
C{attempts}, shown while it waits, says it was interrupted).

It looks for requests every L{POLL_INTERVAL} rather than being told
(PostgreSQL's C{LISTEN}): the same code serves SQLite, and one indexed
query a second costs little.  It claims nothing while the XMPP stream is
down: the requests wait for it, as the leader's API would refuse a kick
then.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from rosteradmin.intake import Intake, Outcome, Request

#: Seconds between two looks for recorded requests.
POLL_INTERVAL = 0.5

#: Seconds a done request is kept for the web app to look up.
RETENTION = 24 * 3600.0

#: Seconds between two purges of requests done longer ago than RETENTION.
PURGE_INTERVAL = 3600.0

#: What applies one request: its kind and body to the reply.
Apply = Callable[[str, dict[str, Any]], Awaitable[tuple[int, dict[str, Any]]]]


class RequestApplier(Service):
    """
    Applies recorded requests while started (while leading).

    @ivar term: This term's claimer name, new at each start.
    """

    log = Logger()

    def __init__(self, intake: Intake, apply: Apply, clock: IReactorTime, ready: Callable[[], bool],
                 interval: float = POLL_INTERVAL) -> None:
        """
        @param apply: Applies a request as the leader's API would.
        @param ready: Whether requests may be applied now (the XMPP stream
            is up).
        @param interval: Seconds between two looks for requests.
        """
        self.intake = intake
        self.apply = apply
        self.clock = clock
        self.ready = ready
        self.interval = interval
        self.term = ""
        self._loop: LoopingCall | None = None
        self._recovered = False
        self._lastPurge: float | None = None
        self._unrecorded: dict[str, Outcome] = {}
        self._failing = False

    def startService(self) -> None:
        super().startService()
        self.term = secrets.token_hex(8)
        self._recovered = False
        self._unrecorded = {}
        self._loop = LoopingCall(self._poll)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=True)

    def stopService(self) -> None:
        """
        Stop looking; a request being applied finishes, but what it
        claims after is the next term's to apply.
        """
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    def _poll(self) -> Deferred[None]:
        return ensureDeferred(self._applyWaiting())

    async def _applyWaiting(self) -> None:
        """
        Apply every request waiting, one at a time; a failure of the
        storage is logged (once until it works again) and the next look
        tries again.
        """
        try:
            await self._recover()
            await self._recordOutcomes()
            while self.running and self.ready():
                request = await self.intake.claim(self.term)
                if request is None:
                    break
                await self._applyOne(request)
            await self._purge()
        except Exception as e:
            if not self._failing:
                self._failing = True
                self.log.error("cannot apply recorded requests: {why}; trying again",
                               why=str(e) or type(e).__name__)
            return
        if self._failing:
            self._failing = False
            self.log.info("applying recorded requests again")

    async def _recover(self) -> None:
        if self._recovered:
            return
        recovered = await self.intake.recover()
        self._recovered = True
        if recovered:
            self.log.warn("{count} requests claimed by an earlier leader and not finished: applying them again",
                          count=recovered)

    async def _applyOne(self, request: Request) -> None:
        """
        Apply one claimed request and record its outcome (kept, and
        recorded at the next look, if the storage does not take it now:
        this term holds the claim).
        """
        try:
            code, body = await self.apply(request.kind, request.body)
        except Exception:
            self.log.failure("applying {kind} request {id}", kind=request.kind, id=request.id)
            code, body = 500, {"error": "Internal error"}
        self.log.info("{kind} request {id} applied → {code}", kind=request.kind, id=request.id, code=code)
        self._unrecorded[request.id] = Outcome(code, body)
        await self._recordOutcomes()

    async def _recordOutcomes(self) -> None:
        for id, outcome in list(self._unrecorded.items()):
            if not await self.intake.complete(id, self.term, outcome):
                self.log.warn("request {id}: applied, but another leader has taken it back", id=id)
            del self._unrecorded[id]

    async def _purge(self) -> None:
        now = self.clock.seconds()
        if self._lastPurge is not None and now - self._lastPurge < PURGE_INTERVAL:
            return
        self._lastPurge = now
        await self.intake.purge(time.time() - RETENTION)
