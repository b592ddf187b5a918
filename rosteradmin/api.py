# -*- test-case-name: tests.test_api -*-
"""
The HTTP API: roster refresh, one user's picture, MUC kick, health and
metrics.

Each resource parses, calls the backend or the kicker, and maps domain
errors to status codes; the routes and codes are documented in
C{docs/openapi.json}, which a test checks against this tree.

A refresh, a sync or a kick reaching an instance that does not lead is
parsed and authorized the same way, then handed to the leader
(L{rosteradmin.handoff}); C{GET /roster_admin/requests/<id>}
(L{RequestsResource}) tells how it went.  What the leader does with one,
directly or recorded, is one function per route (L{refreshOutcome},
L{syncOutcome}, L{cancelOutcome}, L{kickOutcome}), which both its own
resources and L{LeaderCalls} (for L{rosteradmin.applier}) call: the web
app gets the same reply either way.
"""

from __future__ import annotations

import itertools
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus

from twisted.logger import Logger
from twisted.web import server
from twisted.web.resource import Resource
from twisted.words.protocols.jabber.jid import JID

from rosteradmin.errors import InvalidUsername, KickFailed, NotConnected
from rosteradmin.fullsync import FullSync
from rosteradmin.handoff import Handoff, pendingBody
from rosteradmin.inspection import Inspector
from rosteradmin.intake import Intake
from rosteradmin.interfaces import IConnectionStatus, IRoomKicker, IRosterBackend
from rosteradmin.metrics import Metrics, MetricsResource
from rosteradmin.snapshot import ServiceSnapshot, SyncSnapshot
from rosteradmin.stanzas import parseJID, roomNickname
from rosteradmin.web import (JSON, ApiError, Drain, JsonLeaf, JsonResource, authorizationProblem, methodNotAllowed,
                             readJSON, writeJSON)
from rosteradmin.xmltext import carriesInXML

#: The longest kick reason passed on to the room, in characters.
MAX_REASON_LENGTH = 1024

#: Most refused or parked users /healthz names (the counts are complete).
MAX_LISTED_USERS = 20

#: How each kick failure condition reaches the HTTP caller.
KICK_STATUS = {
    "item-not-found": HTTPStatus.NOT_FOUND,
    # ejabberd's answer for a nickname the room does not hold ("Nickname
    # ... does not exist in the room"); in a kick, nothing else earns it
    # there or on Prosody.
    "not-acceptable": HTTPStatus.NOT_FOUND,
    "not-allowed": HTTPStatus.FORBIDDEN,
    "forbidden": HTTPStatus.FORBIDDEN,
    "registration-required": HTTPStatus.FORBIDDEN,
    "not-authorized": HTTPStatus.FORBIDDEN,
    "timeout": HTTPStatus.GATEWAY_TIMEOUT,
    "remote-server-not-found": HTTPStatus.NOT_FOUND,
}


class AdminResource(JsonResource):
    """
    A C{/roster_admin} resource: the error body of the refresh API, and the
    refresh secret (C{--refresh-authorization}) checked on every request.

    @cvar what: What the resource does, for the log of a refused request.
    """

    what = "refresh"

    def __init__(self, drain: Drain, authorization: str | None, handoff: Handoff | None = None) -> None:
        """
        @param handoff: Takes the requests while this instance does not
            lead; C{None}: it always leads.
        """
        super().__init__(drain)
        self.authorization = authorization
        self.handoff = handoff

    def standby(self) -> Handoff | None:
        """
        Where to hand a request over, while this instance does not lead.
        """
        if self.handoff is not None and not self.handoff.leading():
            return self.handoff
        return None

    @staticmethod
    def errorBody(message: str) -> JSON:
        return {"status": "error", "message": message}

    def _checkAuthorization(self, request: server.Request) -> None:
        _requireAuthorization(self.log, self.what, request, self.authorization)


class RefreshResource(AdminResource):
    """
    C{POST /roster_admin/refresh} with a JSON array of usernames, and
    C{GET|POST /roster_admin/refresh/<username>} for one user::

        POST /roster_admin/refresh   ["john", "aaron"]
        200 {"status": "ok", "message": "roster update complete",
             "updated": 2, "errors": 0, "failures": {}}
    """

    allowedMethods = (b"GET", b"POST")
    hasSubpaths = True

    def __init__(self, drain: Drain, backend: IRosterBackend, authorization: str | None,
                 handoff: Handoff | None = None) -> None:
        super().__init__(drain, authorization, handoff)
        self.backend = backend

    def render(self, request: server.Request) -> bytes | int:
        # The list of users (no username below) takes only POST.
        if request.postpath in ([], [b""]) and request.method != b"POST":
            methodNotAllowed(request, (b"POST",), self.errorBody("Use POST with a JSON array of usernames"))
            return server.NOT_DONE_YET
        return super().render(request)

    def render_GET(self, request: server.Request) -> int:
        return self.respond(request, self._get)

    def render_POST(self, request: server.Request) -> int:
        return self.respond(request, self._post)

    async def _get(self, request: server.Request) -> tuple[int, JSON]:
        self._checkAuthorization(request)
        postpath = request.postpath or []  # None only before traversal
        if len(postpath) != 1:
            raise ApiError(HTTPStatus.NOT_FOUND, "No such resource")
        return await self._refresh(request, [self._username(postpath[0])])

    async def _post(self, request: server.Request) -> tuple[int, JSON]:
        self._checkAuthorization(request)
        if request.postpath and request.postpath != [b""]:
            if len(request.postpath) != 1:
                raise ApiError(HTTPStatus.NOT_FOUND, "No such resource")
            return await self._refresh(request, [self._username(request.postpath[0])])
        usernames = readJSON(request)
        if not isinstance(usernames, list):
            raise ApiError(HTTPStatus.BAD_REQUEST, "Request body must be a JSON array of usernames")
        if not all(isinstance(u, str) for u in usernames):
            raise ApiError(HTTPStatus.BAD_REQUEST, "Every username must be a string")
        return await self._refresh(request, usernames)

    @staticmethod
    def _username(segment: bytes) -> str:
        return _segmentUsername(segment)

    async def _refresh(self, request: server.Request, usernames: list[str]) -> tuple[int, JSON]:
        if not usernames:
            return HTTPStatus.OK, _summary("ok", "nothing to refresh", 0, {})
        standby = self.standby()
        if standby is not None:
            return await standby.submit(request, "refresh", {"usernames": usernames})
        return await refreshOutcome(self.log, self.backend, usernames)


def _segmentUsername(segment: bytes) -> str:
    """
    The username a path segment names.

    @raise ApiError: 400, it is not UTF-8.
    """
    # twisted.web has already percent-decoded the segment.
    try:
        return segment.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(HTTPStatus.BAD_REQUEST, "Username is not valid UTF-8") from None


class UsersResource(AdminResource):
    """
    C{GET /roster_admin/users/<username>}: everything known of one user
    (L{rosteradmin.inspection}), with a verdict::

        GET /roster_admin/users/alice
        200 {"username": "alice", "status": "problem",
             "verdict": "the web app changed the roster since rosteradmin last fetched it (1 to add): ...",
             "findings": [...], "web_app": {"status": "fetched", "roster": {...}},
             "cache": {"status": "cached", "roster": {...}}, "server": {"status": "read", ...},
             "resources": {...}, "state": {...}, "differences": {...}, "schedule": {...}, "leading": true}

    The web app or the server not answering is a section that says so,
    still 200; a username that cannot be one, or that nobody knows (the
    web app answers 404 and nothing is held of it), is a 400.  On an
    instance that does not lead, the picture is that instance's own.
    """

    allowedMethods = (b"GET",)
    hasSubpaths = True
    what = "inspection"

    def __init__(self, drain: Drain, inspector: Inspector, authorization: str | None,
                 handoff: Handoff | None = None) -> None:
        super().__init__(drain, authorization, handoff)
        self.inspector = inspector

    def render_GET(self, request: server.Request) -> int:
        return self.respond(request, self._get)

    async def _get(self, request: server.Request) -> tuple[int, JSON]:
        self._checkAuthorization(request)
        postpath = request.postpath or []
        if len(postpath) != 1 or not postpath[0]:
            raise ApiError(HTTPStatus.NOT_FOUND, "No such resource: GET /roster_admin/users/<username>")
        try:
            inspection = await self.inspector.inspect(_segmentUsername(postpath[0]))
        except InvalidUsername as e:
            raise ApiError(HTTPStatus.BAD_REQUEST, str(e)) from None
        if inspection.unknown:
            raise ApiError(HTTPStatus.BAD_REQUEST, f"unknown user {inspection.username!r}: the web app does not "
                           "know it, and neither rosteradmin nor the server holds anything of it")
        body = inspection.toJSON()
        body["leading"] = self.standby() is None
        self.log.info("inspected {user}: {verdict}", user=inspection.username, verdict=body["verdict"])
        return HTTPStatus.OK, body


async def refreshOutcome(log: Logger, backend: IRosterBackend, usernames: list[str]) -> tuple[int, JSON]:
    """
    Refresh these users, and the reply that says how it went.
    """
    started = time.monotonic()
    summary = await backend.refresh(usernames)
    log.info("refresh of {count} users: {updated} updated, {errors} errors in {elapsed:.3f} s",
             count=len(usernames), updated=summary.updated, errors=summary.errors,
             elapsed=time.monotonic() - started, outcome="ok" if summary.updated else "failed")
    if summary.updated == 0:
        return HTTPStatus.INTERNAL_SERVER_ERROR, _summary(
            "error", "roster update failed for every user", 0, summary.failures)
    return HTTPStatus.OK, _summary("ok", "roster update complete", summary.updated, summary.failures)


class SyncResource(AdminResource):
    """
    C{POST /roster_admin/sync} starts a sync in the background and answers
    at once with its progress; C{GET} shows the progress; C{DELETE}
    cancels it::

        POST /roster_admin/sync   {"all": true}      (every user of --users-url)
        POST /roster_admin/sync   ["john", "aaron"]  (these users)
        202 {"status": "started", "sync": {"kind": "full", "running": true,
             "listed": 500, "listing_done": false, "synced": 120, "failed": 0, ...}}

        DELETE /roster_admin/sync
        202 {"status": "cancelling", "sync": {"kind": "full", "running": true,
             "error": "cancelled (DELETE /roster_admin/sync)", ...}}

    While a pass runs, another is not started: the answer is its progress,
    with C{"status": "running"}; users named then join it (C{"status":
    "joined"}): they are synced at once, and the pass ends once they are.
    """

    allowedMethods = (b"DELETE", b"GET", b"HEAD", b"POST")
    what = "sync"

    def __init__(self, drain: Drain, fullSync: FullSync, authorization: str | None,
                 handoff: Handoff | None = None) -> None:
        super().__init__(drain, authorization, handoff)
        self.fullSync = fullSync

    def render_GET(self, request: server.Request) -> int:
        return self.respond(request, self._get)

    def render_POST(self, request: server.Request) -> int:
        return self.respond(request, self._post)

    def render_DELETE(self, request: server.Request) -> int:
        return self.respond(request, self._delete)

    async def _get(self, request: server.Request) -> tuple[int, JSON]:
        self._checkAuthorization(request)
        current = self.fullSync.current
        return HTTPStatus.OK, {"status": "running" if current is not None and current.running else "idle",
                               "sync": current.toJSON() if current is not None else None}

    async def _post(self, request: server.Request) -> tuple[int, JSON]:
        self._checkAuthorization(request)
        body = readJSON(request)
        if body == {"all": True}:
            if self.fullSync.lister is None:
                raise ApiError(HTTPStatus.BAD_REQUEST, "No --users-url is configured: name the users to sync")
            usernames = None
        elif isinstance(body, list) and body and all(isinstance(u, str) for u in body):
            usernames = body
        else:
            raise ApiError(HTTPStatus.BAD_REQUEST, 'Request body must be {"all": true} or a JSON array of usernames')
        standby = self.standby()
        if standby is not None:
            return await standby.submit(request, "sync", {"all": True} if usernames is None else {"usernames": usernames})
        return await syncOutcome(self.fullSync, usernames)

    async def _delete(self, request: server.Request) -> tuple[int, JSON]:
        self._checkAuthorization(request)
        standby = self.standby()
        if standby is not None:
            return await standby.submit(request, "sync", {"cancel": True})
        return cancelOutcome(self.fullSync)


async def syncOutcome(fullSync: FullSync, usernames: list[str] | None) -> tuple[int, JSON]:
    """
    Start a full sync (C{usernames} C{None}), or sync these users, joining
    the pass that runs; the reply shows its progress.
    """
    if usernames is None:
        if fullSync.lister is None:
            raise ApiError(HTTPStatus.BAD_REQUEST, "No --users-url is configured: name the users to sync")
        already = fullSync.current is not None and fullSync.current.running
        progress = fullSync.start("full")
        return HTTPStatus.ACCEPTED, {"status": "running" if already else "started", "sync": progress.toJSON()}
    progress, joined = await fullSync.accept(usernames)
    return HTTPStatus.ACCEPTED, {"status": "joined" if joined else "started", "sync": progress.toJSON()}


def cancelOutcome(fullSync: FullSync) -> tuple[int, JSON]:
    """
    Cancel the running pass.

    @raise ApiError: 409, none runs.
    """
    progress = fullSync.cancel()
    if progress is None:
        raise ApiError(HTTPStatus.CONFLICT, "No sync is running")
    if progress.running:
        return HTTPStatus.ACCEPTED, {"status": "cancelling", "sync": progress.toJSON()}
    return HTTPStatus.OK, {"status": "cancelled", "sync": progress.toJSON()}


@dataclass(frozen=True)
class KickRoute:
    """
    What C{POST /muc_kick} needs, given when kicking is enabled.

    @ivar status: Whether we are connected: a kick is refused at once
        while we are not.
    @ivar authorization: The C{Authorization} a kick must carry.
    @ivar outcomes: Counts kicks by HTTP status; the metrics read it.
    """

    kicker: IRoomKicker
    status: IConnectionStatus
    authorization: str
    outcomes: Counter[str]


class KickResource(JsonResource):
    """
    C{POST /muc_kick}: kick an occupant out of a room::

        POST /muc_kick   Authorization: <secret>
        {"nickname": "Bob", "muc": "room@conference.example.org", "reason": "spam"}
        200 {"status": "ok", "message": "Bob kicked from room@conference.example.org"}

    @ivar outcomes: Kicks by outcome, for the metrics.
    """

    allowedMethods = (b"POST",)

    def __init__(self, drain: Drain, route: KickRoute, handoff: Handoff | None = None) -> None:
        """
        @param handoff: Takes the kicks while this instance does not lead;
            C{None}: it always leads.
        """
        super().__init__(drain)
        self.kicker = route.kicker
        self.status = route.status
        self.authorization = route.authorization
        self.outcomes = route.outcomes
        self.handoff = handoff

    def render_POST(self, request: server.Request) -> int:
        return self.respond(request, self._post)

    async def _post(self, request: server.Request) -> tuple[int, JSON]:
        try:
            result = await self._kick(request)
        except ApiError as e:
            self.outcomes[str(int(e.code))] += 1
            raise
        except Exception:
            self.outcomes[str(int(HTTPStatus.INTERNAL_SERVER_ERROR))] += 1
            raise
        self.outcomes[str(int(result[0]))] += 1
        return result

    async def _kick(self, request: server.Request) -> tuple[int, JSON]:
        _requireAuthorization(self.log, "kick", request, self.authorization)
        nick, room, reason = _kickRequest(readJSON(request))
        if self.handoff is not None and not self.handoff.leading():
            # Only the leader holds the XMPP stream: whether this one is
            # connected says nothing.
            return await self.handoff.submit(request, "kick", {"nickname": nick, "muc": room.userhost(),
                                                               "reason": reason})
        return await kickOutcome(self.log, self.kicker, self.status, nick, room, reason)


async def kickOutcome(log: Logger, kicker: IRoomKicker, status: IConnectionStatus, nick: str, room: JID,
                      reason: str | None) -> tuple[int, JSON]:
    """
    Kick C{nick} out of C{room}, and the reply that says so.

    @raise ApiError: Not connected, or the room refused (L{KICK_STATUS}).
    """
    if not status.connected:
        raise ApiError(HTTPStatus.SERVICE_UNAVAILABLE, "Not connected to the XMPP server")
    try:
        await kicker.kick(room.userhost(), nick, reason)
    except NotConnected:
        raise ApiError(HTTPStatus.SERVICE_UNAVAILABLE, "Not connected to the XMPP server") from None
    except KickFailed as e:
        log.warn("kick {nick} from {room} → {condition}", nick=nick, room=room.userhost(),
                 condition=e.condition, outcome=e.condition)
        raise ApiError(KICK_STATUS.get(e.condition, HTTPStatus.BAD_GATEWAY), _kickError(e)) from None
    log.info("kick {nick} from {room} → done", nick=nick, room=room.userhost(), outcome="ok")
    return HTTPStatus.OK, {"status": "ok", "message": f"{nick} kicked from {room.userhost()}"}


@dataclass(frozen=True)
class LeaderCalls:
    """
    What the leader does with a request a standby recorded
    (L{rosteradmin.applier}): the same call as its own route's, and the
    reply that route would have given, errors included.

    @ivar kick: The kicker and the stream's status; C{None} when kicking
        is disabled here (C{--no-kick}): a recorded kick is then a 404, as
        the route would be.
    """

    backend: IRosterBackend
    fullSync: FullSync
    kick: tuple[IRoomKicker, IConnectionStatus] | None
    log = Logger()

    async def apply(self, kind: str, body: JSON) -> tuple[int, JSON]:
        """
        Apply a recorded request of this kind and body.
        """
        errorBody = JsonLeaf.errorBody if kind == "kick" else AdminResource.errorBody
        try:
            return await self._call(kind, body)
        except ApiError as e:
            return e.code, errorBody(e.message)

    async def _call(self, kind: str, body: JSON) -> tuple[int, JSON]:
        if kind == "refresh":
            return await refreshOutcome(self.log, self.backend, body["usernames"])
        if kind == "sync":
            if body.get("cancel"):
                return cancelOutcome(self.fullSync)
            return await syncOutcome(self.fullSync, body.get("usernames"))
        if self.kick is None:
            raise ApiError(HTTPStatus.NOT_FOUND, "No such resource")
        kicker, status = self.kick
        room = JID(body["muc"])
        return await kickOutcome(self.log, kicker, status, body["nickname"], room, body["reason"])


class RequestsResource(JsonResource):
    """
    C{GET /roster_admin/requests/<id>}: a request a standby recorded for
    the leader (L{rosteradmin.handoff}).  While the leader has not applied
    it, C{202} and what is known of it; once applied, the leader's reply
    to it, its status code included, as if the web app had reached the
    leader::

        GET /roster_admin/requests/q3Jx0nV2c5b1aQ7d
        202 {"status": "accepted", "request": "q3Jx0nV2c5b1aQ7d", "kind": "refresh",
             "applying": false, "attempts": 0, ...}
        200 {"status": "ok", "message": "roster update complete", "updated": 2, ...}

    Each request takes its own route's authorization (a kick's is the
    kick secret); an unknown id (never recorded, or done and forgotten
    after L{rosteradmin.applier.RETENTION}) is a 404 to a caller holding
    either secret.
    """

    allowedMethods = (b"GET",)
    hasSubpaths = True

    def __init__(self, drain: Drain, intake: Intake, authorizations: Mapping[str, str | None]) -> None:
        """
        @param authorizations: The C{Authorization} each kind requires, by
            kind; a kind not listed (kicks with C{--no-kick}) is unknown.
        """
        super().__init__(drain)
        self.intake = intake
        self.authorizations = authorizations

    errorBody = staticmethod(AdminResource.errorBody)

    def render_GET(self, request: server.Request) -> int:
        return self.respond(request, self._get)

    async def _get(self, request: server.Request) -> tuple[int, JSON]:
        postpath = request.postpath or []
        if len(postpath) != 1 or not postpath[0]:
            raise ApiError(HTTPStatus.NOT_FOUND, "No such resource")
        try:
            found = await self.intake.get(postpath[0].decode("ascii", "replace"))
        except Exception as e:
            self.log.error("cannot read a recorded request: {why}", why=str(e) or type(e).__name__)
            raise ApiError(HTTPStatus.SERVICE_UNAVAILABLE, "The shared state cannot be read: try again") from None
        if found is None or found.kind not in self.authorizations:
            self._requireEitherAuthorization(request)
            raise ApiError(HTTPStatus.NOT_FOUND, "No such request")
        _requireAuthorization(self.log, found.kind, request, self.authorizations[found.kind])
        if found.outcome is not None:
            return found.outcome.code, found.outcome.body
        return HTTPStatus.ACCEPTED, pendingBody(found)

    def _requireEitherAuthorization(self, request: server.Request) -> None:
        """
        Refuse a request holding none of the secrets: a caller that may
        look at no request learns nothing of which ids exist.

        @raise ApiError: 401.
        """
        secrets = list(self.authorizations.values())
        if all(authorizationProblem(request, expected) is not None for expected in secrets):
            _requireAuthorization(self.log, "request lookup", request, secrets[0])


class HealthResource(JsonResource):
    """
    C{GET /healthz}: 200 while connected to the XMPP server, else 503::

        200 {"status": "ok", "connected": true, "delegation": "expected", "delegated": true, "cached_users": 3,
             "fetches_in_flight": 0, "unsynced_users": 0, "last_error": null,
             "roster_sync_error": null, "state_error": null}

    C{"degraded"} (still 200) when the server refuses roster writes, does
    not delegate roster queries, or the state file does not take writes
    (C{state_error} says why: rosters are still served and written, but a
    crash would lose what the file has not taken), or the web app has not
    accepted events for longer than C{--events-stale-after}
    (C{events_error} says since when).  C{delegation} says whether the
    server is meant to delegate (C{"expected"}) or answers roster queries
    itself (C{"none"}, a cluster): then no delegation is no problem.

    C{role} says whether this process leads (C{"leader"}) or stands by
    (C{"standby"}, another process sharing its PostgreSQL state leads),
    and C{since} since when.  A standby is not connected by design: it
    answers 200, C{"status": "standby"}, while it could take over, and 503
    when the state's database cannot be reached (C{leadership_error}).
    """

    allowedMethods = (b"GET", b"HEAD")

    def __init__(self, drain: Drain, snapshots: Callable[[], ServiceSnapshot]) -> None:
        """
        @param snapshots: Takes the figures to show (L{rosteradmin.snapshot.Snapshots}).
        """
        super().__init__(drain)
        self.snapshots = snapshots

    def render_GET(self, request: server.Request) -> int:
        return self.respond(request, self._get)

    async def _get(self, request: server.Request) -> tuple[int, JSON]:
        snapshot = self.snapshots()
        backend, stream = snapshot.backend, snapshot.stream
        connected = stream.connected
        stuck = backend.stuck
        delegationProblem = stream.delegationMissing if connected else None
        eventsProblem = snapshot.events.problem if snapshot.events is not None else None
        status = _healthStatus(snapshot, delegationProblem, eventsProblem)
        standby = snapshot.role == "standby"
        body = {
            "status": status,
            "connected": connected,
            "delegation": "expected" if stream.delegationExpected else "none",
            "delegated": connected and stream.delegated,
            "cached_users": backend.cachedUsers,
            "fetches_in_flight": backend.fetchesInFlight,
            "unsynced_users": backend.unsyncedUsers,
            "last_error": stream.lastError,
            "roster_sync_error": backend.syncRefusal,
            "delegation_error": delegationProblem,
            "state_error": backend.stateProblem,
            "events_error": eventsProblem,
            "stuck": stuck,
            "saturated": list(backend.saturated),
            "refused_users": len(backend.refused),
            "refused": _firstListed(backend.refused),
            "parked_users": _firstListed(backend.parked),
            "pending_users": backend.pendingUsers,
            "sync": _syncSummary(snapshot.sync),
            "role": snapshot.role,
            "since": isoTime(snapshot.roleSince),
            "leadership_error": snapshot.roleProblem,
        }
        healthy = status == "standby" if standby else connected and stuck is None
        return (HTTPStatus.OK if healthy else HTTPStatus.SERVICE_UNAVAILABLE), body


def _healthStatus(snapshot: ServiceSnapshot, delegationProblem: str | None, eventsProblem: str | None) -> str:
    """
    C{/healthz}'s status.  A standby is not connected by design: healthy
    while it could take over.  A leader connected and moving, but
    misconfigured, unable to save its state, holding more of its users
    than its bounds or not rid of its events works only in part: still
    200 (a restart would not help), and the status says so.
    """
    backend, stream = snapshot.backend, snapshot.stream
    if snapshot.role == "standby":
        return "standby" if snapshot.roleProblem is None else "unavailable"
    if not stream.connected:
        return "unavailable"
    if backend.stuck is not None:
        return "stuck"
    degraded = (backend.syncRefusal is not None or delegationProblem is not None
                or backend.stateProblem is not None or bool(backend.saturated) or eventsProblem is not None)
    return "degraded" if degraded else "ok"


def isoTime(when: float) -> str:
    """
    A UNIX time as C{/healthz} shows it: ISO 8601 in UTC, to the second.
    """
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))


def _firstListed(reasons: Mapping[str, str]) -> dict[str, str]:
    """
    The first L{MAX_LISTED_USERS} users by name, with why: the counts are
    complete, the lists need not be.
    """
    return dict(itertools.islice(sorted(reasons.items()), MAX_LISTED_USERS))


def _syncSummary(sync: SyncSnapshot | None) -> JSON | None:
    """
    What C{/healthz} shows of the current or last sync
    (C{GET /roster_admin/sync} shows it all).
    """
    if sync is None:
        return None
    return {"kind": sync.kind, "running": sync.running, "listed": sync.listed, "listing_done": sync.listingDone,
            "synced": sync.synced, "failed": sync.failed, "error": sync.error}


class NotFoundResource(JsonResource):
    """
    Every path that is not a route: a JSON 404 for the usual methods, a
    JSON 405 for the others.
    """

    allowedMethods = (b"DELETE", b"GET", b"HEAD", b"PATCH", b"POST", b"PUT")

    def render(self, request: server.Request) -> bytes | int:
        if request.method in self.allowedMethods and request.postpath in ([], [b""]):
            return self.respond(request, self._notFound)
        return super().render(request)

    async def _notFound(self, request: server.Request) -> tuple[int, JSON]:
        raise ApiError(HTTPStatus.NOT_FOUND, "No such resource")


class ApiRoot(Resource):
    """
    The root: named children, and a JSON 404 for anything else, itself
    included.
    """

    def __init__(self, drain: Drain) -> None:
        """
        @param drain: The requests in flight, which a 404 counts too.
        """
        super().__init__()
        self.drain = drain

    def getChild(self, path: bytes, request: server.Request) -> Resource:
        return NotFoundResource(self.drain)

    def render(self, request: server.Request) -> int:
        writeJSON(request, HTTPStatus.NOT_FOUND, {"error": "No such resource"})
        return server.NOT_DONE_YET


def buildRoot(drain: Drain, backend: IRosterBackend, fullSync: FullSync, refreshAuthorization: str | None,
              kick: KickRoute | None, snapshots: Callable[[], ServiceSnapshot], metrics: Metrics,
              inspector: Inspector, handoff: Handoff | None = None) -> Resource:
    """
    The resource tree of the API.

    @param drain: The requests in flight, shared with the HTTP service.
    @param refreshAuthorization: What the C{/roster_admin} routes require.
    @param kick: None when kicking is disabled (C{--no-kick}).
    @param snapshots: What C{/healthz} shows.
    @param metrics: The metrics to serve.
    @param inspector: Tells everything known of one user.
    @param handoff: Takes refreshes, syncs and kicks while this instance
        does not lead, and C{/roster_admin/requests} tells how they went;
        C{None}: it always leads, and that route does not exist.
    """
    root = ApiRoot(drain)
    admin = ApiRoot(drain)
    root.putChild(b"roster_admin", admin)
    admin.putChild(b"refresh", RefreshResource(drain, backend, refreshAuthorization, handoff))
    admin.putChild(b"sync", SyncResource(drain, fullSync, refreshAuthorization, handoff))
    admin.putChild(b"users", UsersResource(drain, inspector, refreshAuthorization, handoff))
    if handoff is not None:
        authorizations = {"refresh": refreshAuthorization, "sync": refreshAuthorization}
        if kick is not None:
            authorizations["kick"] = kick.authorization
        admin.putChild(b"requests", RequestsResource(drain, handoff.intake, authorizations))
    if kick is not None:
        root.putChild(b"muc_kick", KickResource(drain, kick, handoff))
    root.putChild(b"healthz", HealthResource(drain, snapshots))
    root.putChild(b"metrics", MetricsResource(metrics))
    return root


def _summary(status: str, message: str, updated: int, failures: dict[str, str]) -> JSON:
    return {"status": status, "message": message, "updated": updated, "errors": len(failures),
            "failures": failures}


def _requireAuthorization(log: Logger, what: str, request: server.Request, expected: str | None) -> None:
    """
    Refuse, and log in one line, a request whose C{Authorization} header is
    not C{expected}, or that has several: whatever its bytes, the answer is
    a 401.

    @raise ApiError: 401.
    """
    problem = authorizationProblem(request, expected)
    if problem is not None:
        log.warn("{what} refused: authorization {presence}", what=what, outcome="unauthorized", presence=problem)
        raise ApiError(HTTPStatus.UNAUTHORIZED, "Authorization failed")


def _roomNickname(nick: str) -> str:
    """
    The nickname as the room knows it (XEP-0045 §7.2: resourceprep).

    @raise ApiError: 400, it cannot be a room nickname.
    """
    prepared = roomNickname(nick)
    if prepared is None:
        raise ApiError(HTTPStatus.BAD_REQUEST, "nickname is not a valid room nickname")
    return prepared


def _kickRequest(body: JSON) -> tuple[str, JID, str | None]:
    """
    The nickname, room and reason of a kick request's body.

    @raise ApiError: 400, saying what is wrong with it.
    """
    if not isinstance(body, dict):
        raise ApiError(HTTPStatus.BAD_REQUEST, "Request body must be a JSON object")
    nick, muc, reason = body.get("nickname"), body.get("muc"), body.get("reason")
    if not isinstance(nick, str) or not nick or not isinstance(muc, str) or not muc:
        raise ApiError(HTTPStatus.BAD_REQUEST, "Missing nickname and/or MUC")
    if reason is not None and not isinstance(reason, str):
        raise ApiError(HTTPStatus.BAD_REQUEST, "reason must be a string")
    nick = _roomNickname(nick)
    if reason is not None and (len(reason) > MAX_REASON_LENGTH or not carriesInXML(reason)):
        raise ApiError(HTTPStatus.BAD_REQUEST,
                       f"reason must be at most {MAX_REASON_LENGTH} characters of text XML can carry")
    room = parseJID(muc)
    if room is None or not room.user or room.resource is not None:
        raise ApiError(HTTPStatus.BAD_REQUEST, "muc must be the bare JID of a room")
    return nick, room, reason


def _kickError(error: KickFailed) -> str:
    return {
        "item-not-found": "Room or nickname not found",
        "not-acceptable": "Room or nickname not found",
        "timeout": "The room did not answer in time",
    }.get(error.condition, f"Kick refused: {error.condition}" + (f" ({error.text})" if error.text else ""))
