# -*- test-case-name: tests.test_handoff -*-
"""
What the HTTP API does with a refresh, a sync or a kick while this
instance does not lead: it hands the request to the leader through the
shared state, never applying it itself (a standby holds no XMPP stream,
and two instances writing rosters would race).

Every instance serves the API, so the web app may reach either.  A
standby validates and authorizes the request as the leader would, then
records it durably in the intake (L{rosteradmin.intake}): only once the
row is committed may it answer, so C{202} always means "stored, the
leader will apply it", and a write that fails or takes longer than
L{rosteradmin.intake.WRITE_TIMEOUT} is a C{503} ("try again"), never a
C{202} for something not stored.  It then waits up to L{REPLY_WAIT} for
the leader to apply it, looking every L{REPLY_POLL}: if the leader did,
the web app gets the leader's own reply (status and body) as if it had
reached the leader; if not, C{202} with the request's id and a
C{Location}, C{GET /roster_admin/requests/<id>}, which answers C{202}
while it waits and the leader's reply once applied.

Why the intake rather than forwarding the HTTP request to the leader:
the instances need not know each other's API addresses, and a forwarded
request dies with a leader that dies mid-way, while a recorded one is
applied by the next leader (L{rosteradmin.applier}).  Why polling
rather than PostgreSQL's C{LISTEN}: the same code serves SQLite, and a
few queries a second while a request waits cost little.
"""

from __future__ import annotations

from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from twisted.internet.defer import TimeoutError as DeferredTimeoutError
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.web import server

from rosteradmin.intake import DONE, Intake, Request
from rosteradmin.statestorage import StateError
from rosteradmin.web import JSON, ApiError

#: Seconds a standby waits for the leader to apply a request before
#: answering C{202}: the leader looks for requests every
#: L{rosteradmin.applier.POLL_INTERVAL}, and a refresh of a few users
#: takes a web-app fetch and a few XMPP round trips.
REPLY_WAIT = 5.0

#: Seconds between two looks at a request the standby waits for.
REPLY_POLL = 0.25

#: Where a recorded request is looked up, its id appended.
REQUESTS_PATH = "/roster_admin/requests/"


def location(id: str) -> str:
    """
    The path of a recorded request (ids are URL-safe).
    """
    return REQUESTS_PATH + id


def pendingBody(request: Request) -> JSON:
    """
    What is said of a request the leader has not applied yet.
    """
    return {"status": "accepted", "request": request.id, "kind": request.kind,
            "applying": request.attempts > 0, "attempts": request.attempts,
            "accepted_at": request.acceptedAt, "location": location(request.id),
            "message": "recorded for the leader to apply"}


class Handoff:
    """
    Records a request for the leader and answers with its outcome or
    C{202} (the module's docstring says why).

    @ivar leading: Whether this instance leads now: asked on every
        request, since leadership may change at any time.
    """

    log = Logger()

    def __init__(self, intake: Intake, leading: Callable[[], bool], clock: IReactorTime,
                 replyWait: float = REPLY_WAIT) -> None:
        """
        @param replyWait: Seconds to wait for the leader's outcome (0: do
            not wait, answer 202 at once).
        """
        self.intake = intake
        self.leading = leading
        self.clock = clock
        self.replyWait = replyWait

    async def submit(self, request: server.Request, kind: str, body: dict[str, Any]) -> tuple[int, JSON]:
        """
        Record a validated, authorized request and answer it.

        @raise ApiError: 503, it could not be recorded.
        """
        try:
            accepted = await self.intake.accept(kind, body)
        except Exception as e:
            self._cannotRecord(kind, e)
            raise ApiError(HTTPStatus.SERVICE_UNAVAILABLE,
                           "Not the leader, and the request cannot be recorded for it: try again") from None
        self.log.info("{kind} request {id} recorded for the leader", kind=kind, id=accepted.id)
        done = await self._awaitOutcome(accepted)
        if done is not None and done.outcome is not None:
            return done.outcome.code, done.outcome.body
        request.setHeader(b"location", location(accepted.id).encode("ascii"))
        return HTTPStatus.ACCEPTED, pendingBody(accepted)

    def _cannotRecord(self, kind: str, error: Exception) -> None:
        """
        Log why a request could not be recorded: one line for the
        storage's failures, a traceback for anything else.
        """
        if isinstance(error, (StateError, DeferredTimeoutError)):
            self.log.error("cannot record a {kind} request for the leader: {why}", kind=kind,
                           why=str(error) or type(error).__name__)
        else:
            self.log.failure("recording a {kind} request for the leader", kind=kind)

    async def _awaitOutcome(self, accepted: Request) -> Request | None:
        """
        The request once done, if the leader applies it within
        C{replyWait}; else C{None} (a failing look gives up waiting: the
        request is stored, and 202 says where to look).
        """
        deadline = self.clock.seconds() + self.replyWait
        while self.clock.seconds() + REPLY_POLL <= deadline:
            await deferLater(self.clock, REPLY_POLL, lambda: None)
            try:
                found = await self.intake.get(accepted.id)
            except Exception:
                return None
            if found is not None and found.status == DONE:
                return found
        return None
