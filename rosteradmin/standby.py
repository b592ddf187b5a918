# -*- test-case-name: tests.test_standby -*-
"""
The HTTP API of a standby: a process sharing a PostgreSQL state with a
leader (L{rosteradmin.leadership}), which holds no component connection
and runs none of the leader's parts.

It says what it is: C{/healthz} answers 200 with C{"role": "standby"}
while the state's database is reachable (it can take over), 503 when not;
C{/metrics} shows C{rosteradmin_leader 0}.  The routes that need the
leader (refresh, sync, kick) answer 503, saying the process is a standby:
the leader serves them.  When the process starts leading, the tap puts the
full API in this one's place (L{rosteradmin.tap.LeaderParts}).
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Protocol

from twisted.web import server
from twisted.web.resource import Resource

from rosteradmin.api import ApiRoot, isoTime
from rosteradmin.metrics import MetricsResource, RoleMetrics
from rosteradmin.snapshot import Role
from rosteradmin.web import JSON, ApiError, Drain, JsonResource

#: What the routes that need the leader answer on a standby.
NOT_LEADER = ("this rosteradmin is a standby: another instance sharing its state leads "
              "and serves refresh, sync and kick (its /healthz says \"role\": \"leader\")")


class Reachable(Role, Protocol):
    """
    A role that also knows whether the state's database can be reached
    (L{rosteradmin.leadership.Leadership}).
    """

    @property
    def problem(self) -> str | None: ...


class StandbyHealthResource(JsonResource):
    """
    C{GET /healthz} on a standby: 200 while it can reach the state's
    database, else 503 (and 503, C{"status": "starting"}, in the moment
    a new leader opens the state, before the leader's API replaces this
    one)::

        200 {"status": "standby", "role": "standby", "since": "2026-12-07T06:40:00Z",
             "connected": false, "cached_users": 0, "fetches_in_flight": 0,
             "unsynced_users": 0, "last_error": null, "state_error": null}
    """

    allowedMethods = (b"GET", b"HEAD")

    def __init__(self, drain: Drain, leadership: Reachable) -> None:
        super().__init__(drain)
        self.leadership = leadership

    def render_GET(self, request: server.Request) -> int:
        return self.respond(request, self._get)

    async def _get(self, request: server.Request) -> tuple[int, JSON]:
        problem = self.leadership.problem
        role = self.leadership.role
        # Leading, but its parts not started yet (the state opening): not
        # connected, so not healthy.
        starting = role == "leader"
        status = "unavailable" if problem is not None else "starting" if starting else "standby"
        body: JSON = {"status": status, "role": role, "since": isoTime(self.leadership.since),
                      "connected": False, "cached_users": 0, "fetches_in_flight": 0, "unsynced_users": 0,
                      "last_error": None, "state_error": problem}
        healthy = problem is None and not starting
        return (HTTPStatus.OK if healthy else HTTPStatus.SERVICE_UNAVAILABLE), body


class NotLeaderResource(JsonResource):
    """
    A route only the leader serves (C{/muc_kick}): 503 on a standby,
    whatever the method and path below it::

        503 {"error": "this rosteradmin is a standby: ..."}
    """

    allowedMethods = (b"DELETE", b"GET", b"HEAD", b"PATCH", b"POST", b"PUT")
    hasSubpaths = True

    def render(self, request: server.Request) -> int:
        return self.respond(request, self._refuse)

    async def _refuse(self, request: server.Request) -> tuple[int, JSON]:
        raise ApiError(HTTPStatus.SERVICE_UNAVAILABLE, NOT_LEADER)


class NotLeaderAdminResource(NotLeaderResource):
    """
    A C{/roster_admin} route on a standby, with that API's error body::

        503 {"status": "error", "message": "this rosteradmin is a standby: ..."}
    """

    @staticmethod
    def errorBody(message: str) -> JSON:
        return {"status": "error", "message": message}


def standbyRoot(drain: Drain, leadership: Reachable, kick: bool) -> Resource:
    """
    The resource tree of a standby's API.

    @param kick: Whether the leader serves C{/muc_kick} (not C{--no-kick}).
    """
    root = ApiRoot(drain)
    admin = ApiRoot(drain)
    root.putChild(b"roster_admin", admin)
    admin.putChild(b"refresh", NotLeaderAdminResource(drain))
    admin.putChild(b"sync", NotLeaderAdminResource(drain))
    if kick:
        root.putChild(b"muc_kick", NotLeaderResource(drain))
    root.putChild(b"healthz", StandbyHealthResource(drain, leadership))
    root.putChild(b"metrics", MetricsResource(RoleMetrics(leadership)))
    return root
