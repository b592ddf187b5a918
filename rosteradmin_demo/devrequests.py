# -*- test-case-name: tests.test_devrequests -*-
"""
The sample web app's contact requests: what rosteradmin's events
(C{--events-url}, docs/webapp.md "Events: what users tried") say a user
tried to add, kept until someone approves it.

A user's "Add a contact" in a chat client is refused by the server, since
the web app owns the rosters; rosteradmin POSTs it to C{/events} as a
C{roster.set} event with an C{add} item (or, from clients that send one, a
C{subscription} event with an outbound C{subscribe}).  Each such pair of
users becomes one request.  Approving it is what a web app with friend
requests would do: add each user to the other's roster, then ask
rosteradmin to refresh both, which pushes the new contact to their open
clients.

    POST /events                       (signed by rosteradmin; any 2xx: accepted)
    GET /requests                      the pending requests
    POST /requests/<id>/approve        both rosters changed, both users refreshed

Requests and the highest transaction id taken live in a JSON file, so a
transaction rosteradmin sends again after a restart is not taken twice.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from treq.client import HTTPClient
from twisted.internet.defer import ensureDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web import server
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.resource import Resource

from rosteradmin_demo.devwebapp import RosterFileUnreadable, readRosters, writeJSON

#: How far the signed timestamp may be from our clock, in seconds: older is a replay.
TOLERANCE = 300.0


def verified(timestamp: str, signature: str, body: bytes, keys: Sequence[bytes], now: float,
             tolerance: float = TOLERANCE) -> bool:
    """
    Whether rosteradmin signed C{body} at C{timestamp} with one of C{keys},
    as docs/webapp.md tells web apps to check: HMAC-SHA256 over the
    timestamp, a dot and the raw body, one C{v1=} value per key it holds.
    """
    try:
        if abs(now - int(timestamp)) > tolerance:
            return False
    except ValueError:
        return False
    signed = timestamp.encode("ascii", "replace") + b"." + body
    offered = [part.split("=", 1)[1] for part in signature.split(",") if part.startswith("v1=")]
    return any(hmac.compare_digest(hmac.new(key, signed, hashlib.sha256).hexdigest(), sig)
               for key in keys for sig in offered)


def requestsIn(event: dict[str, Any]) -> list[dict[str, Any]]:
    """
    The contact requests one event holds: the contacts a roster set tried
    to add, or the contact an outbound C{subscribe} asked.  Renames,
    removals, answers and requests from other servers ask nothing of
    the web app's users here.
    """
    if event.get("type") == "roster.set":
        user = str(event["resource"]).split("/")[0]
        return [{"user": user, "contact": item["jid"], "name": item.get("name"), "groups": item.get("groups", [])}
                for item in event.get("items", []) if item.get("action") == "add"]
    if event.get("type") == "subscription" and event.get("direction") == "outbound" \
            and event.get("presence") == "subscribe":
        return [{"user": event["from"], "contact": event["to"], "name": None, "groups": []}]
    return []


class NotAUser(Exception):
    """
    A request names a JID that is not one of the web app's users.
    """


class ContactRequests(Resource):
    """
    Serves C{POST /events}, C{GET /requests} and
    C{POST /requests/<id>/approve}.

    Requests and responses::

        GET /requests HTTP/1.1

        HTTP/1.1 200 OK
        Content-Type: application/json

        [{"id": 7, "user": "alice@example.org", "contact": "dave@example.org",
          "name": "Dave", "groups": [], "txn_id": 7, "ts": 1796648401.5}]

        POST /requests/7/approve HTTP/1.1

        HTTP/1.1 200 OK
        Content-Type: application/json

        {"approved": {"id": 7, ...}, "refresh": {"updated": 2, ...}}

    An approval whose refresh fails answers 502 with rosteradmin's
    answer: the rosters are changed all the same, and the next refresh
    or login shows them.

    @ivar storePath: The JSON file of the requests and the highest
        transaction id taken.
    """

    isLeaf = True
    log = Logger()

    def __init__(self, rosterFile: Path, storePath: Path, keys: Sequence[bytes], refreshURL: str,
                 reactor: Any, http: Any = None) -> None:
        """
        @param rosterFile: The sample web app's rosters, changed on approval.
        @param keys: The C{--events-secret} keys a signature may use.
        @param refreshURL: rosteradmin's C{POST /roster_admin/refresh}.
        @param reactor: Tells the time signatures are checked against, and
            connects to rosteradmin.
        @param http: A treq-like client for rosteradmin's API; by default
            one that opens a connection per call, so that nothing stays
            open once the answer is in.
        """
        super().__init__()
        self.rosterFile = rosterFile
        self.storePath = storePath
        self.keys = list(keys)
        self.refreshURL = refreshURL
        self.clock: IReactorTime = reactor
        self.http = http or HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))

    def render_GET(self, request: server.Request) -> bytes:
        if request.postpath != [b"requests"]:
            return self._answer(request, 404, {"error": "use /requests"})
        return self._answer(request, 200, self._load()["requests"])

    def render_POST(self, request: server.Request) -> bytes | int:
        postpath = request.postpath or []
        if postpath == [b"events"]:
            return self._events(request)
        if len(postpath) == 3 and postpath[0] == b"requests" and postpath[2] == b"approve":
            return self._approve(request, postpath[1].decode("utf-8", "replace"))
        return self._answer(request, 404, {"error": "use /events or /requests/<id>/approve"})

    def _events(self, request: server.Request) -> bytes:
        """
        Take one transaction: refused unless signed; answered 200 and not
        stored again when its id is not above the highest taken.
        """
        assert request.content is not None
        body = request.content.read()
        timestamp = request.getHeader("x-rosteradmin-timestamp") or ""
        signature = request.getHeader("x-rosteradmin-signature") or ""
        if not verified(timestamp, signature, body, self.keys, self.clock.seconds()):
            self.log.warn("refused an events POST: not signed with our key, or too old")
            return self._answer(request, 401, {"error": "bad signature"})
        try:
            transaction = json.loads(body)
            txn, events = int(transaction["txn_id"]), list(transaction["events"])
        except (ValueError, TypeError, KeyError):
            return self._answer(request, 400, {"error": "not a transaction"})
        store = self._load()
        if txn <= store["last_txn"]:
            self.log.info("transaction {txn} taken before", txn=txn)
            return self._answer(request, 200, {})
        for event in events:
            for asked in requestsIn(event):
                self._keep(store, {"id": event["id"], **asked, "txn_id": txn, "ts": event.get("ts")})
        store["last_txn"] = txn
        self._save(store)
        return self._answer(request, 200, {})

    def _keep(self, store: dict[str, Any], asked: dict[str, Any]) -> None:
        """
        Add a request unless the same user already asked for the same contact.
        """
        pair = (asked["user"], asked["contact"])
        if any((kept["user"], kept["contact"]) == pair for kept in store["requests"]):
            return
        store["requests"].append(asked)
        self.log.info("{user} asks to add {contact} (request {id})", user=asked["user"],
                      contact=asked["contact"], id=asked["id"])

    def _approve(self, request: server.Request, requestID: str) -> bytes | int:
        """
        Add both users to each other's roster, then refresh both; the
        answer waits for rosteradmin's.
        """
        store = self._load()
        asked = next((kept for kept in store["requests"] if str(kept["id"]) == requestID), None)
        if asked is None:
            return self._answer(request, 404, {"error": "no such request"})
        try:
            usernames = self._befriend(asked)
        except NotAUser as e:
            return self._answer(request, 409, {"error": f"{e} is not a user of this web app"})
        except RosterFileUnreadable:
            return self._answer(request, 500, {"error": "roster file unreadable"})
        store["requests"].remove(asked)
        self._save(store)
        self.log.info("approved request {id}: {user} and {contact}", id=asked["id"], user=asked["user"],
                      contact=asked["contact"])
        ensureDeferred(self._refresh(request, asked, usernames))
        return server.NOT_DONE_YET

    def _befriend(self, asked: dict[str, Any]) -> list[str]:
        """
        Write each of the two users into the other's roster.

        @return: Their usernames.
        @raise NotAUser: One of them is not in the roster file.
        """
        rosters = readRosters(self.rosterFile)
        domain = asked["user"].partition("@")[2]
        user, contact = usernameOf(asked["user"], domain, rosters), usernameOf(asked["contact"], domain, rosters)
        rosters[user][asked["contact"]] = {"name": asked["name"] or contact.capitalize(),
                                          "groups": asked["groups"]}
        rosters[contact][asked["user"]] = {"name": user.capitalize(), "groups": []}
        writeJSON(self.rosterFile, rosters)
        return [user, contact]

    async def _refresh(self, request: server.Request, asked: dict[str, Any], usernames: list[str]) -> None:
        try:
            # The demo's rosteradmin has no --refresh-authorization.
            response = await self.http.post(self.refreshURL, json=usernames)
            summary = await response.json()
        except Exception as e:  # a refused connection, a timeout, an answer that is not JSON
            self.log.error("refresh of {users} failed: {why}", users=usernames, why=str(e))
            code, summary = 502, {"error": str(e)}
        else:
            code = 200 if response.code == 200 else 502
        request.setResponseCode(code)
        request.setHeader(b"content-type", b"application/json")
        request.write(json.dumps({"approved": asked, "refresh": summary}).encode("utf-8"))
        request.finish()

    def _load(self) -> dict[str, Any]:
        try:
            store: dict[str, Any] = json.loads(self.storePath.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {"last_txn": 0, "requests": []}
        return store

    def _save(self, store: dict[str, Any]) -> None:
        writeJSON(self.storePath, store)

    @staticmethod
    def _answer(request: server.Request, code: int, value: Any) -> bytes:
        request.setResponseCode(code)
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(value).encode("utf-8")


def usernameOf(jid: str, domain: str, rosters: dict[str, Any]) -> str:
    """
    The web app's username for a bare JID: its local part, if it is on
    C{domain} and the roster file lists it.

    @raise NotAUser: It is not.
    """
    username, at, host = jid.partition("@")
    if not at or host != domain or not isinstance(rosters.get(username), dict):
        raise NotAUser(jid)
    return username
