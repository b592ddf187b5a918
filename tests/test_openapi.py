"""
The OpenAPI document (docs/openapi.json) is kept true: every route, method
and status code it lists is produced by the running resource tree, and the
tree produces no route or code it does not list.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.web.client import HTTPConnectionPool
from treq.testing import StubTreq

from rosteradmin.tap import makeApplier
from rosteradmin.users import UserLister
from rosteradmin.web import makeSite
from tests.helpers import ComponentOnWire, WebApp
from tests.test_api import KICK_AUTH, ROOM, Api, brokenKick, kickAnswers, makeApi
from tests.test_component import serverAnswers
from tests.test_fullsync import NeverAnswers

OPENAPI = Path(__file__).parent.parent / "docs" / "openapi.json"

Scenario = Callable[[], tuple[int, Any]]


def documented() -> set[tuple[str, str, int]]:
    doc = json.loads(OPENAPI.read_text())
    return {
        (path, method.upper(), int(code))
        for path, item in doc["paths"].items()
        for method, operation in item.items() if method != "parameters"
        for code in operation["responses"]
    }


def kick(body: Any, server: Any = None, auth: str = KICK_AUTH) -> Scenario:
    return lambda: makeApi().request("POST", "/muc_kick", body, headers={"Authorization": auth}, server=server)


def kickTimeout() -> tuple[int, Any]:
    api = makeApi()
    d = api.http.post("http://api.invalid/muc_kick", headers={"Authorization": KICK_AUTH},
                      data=json.dumps({"nickname": "x", "muc": ROOM}).encode())
    api.http.flush()
    api.wire.clock.advance(api.wire.config.iq_timeout + 1)
    api.http.flush()
    return Api.result(d).code, None


def refresh(path: str, method: str, body: Any = None, auth: str | None = None, failing: bool = False) -> Scenario:
    def run() -> tuple[int, Any]:
        api = makeApi(refreshAuthorization="s3")
        if failing:
            api.wire.webApp.failures["alice"] = (500, b"")
        headers = {"Authorization": auth} if auth else {"Authorization": "s3"}
        return api.request(method, path, body, headers=headers, server=serverAnswers())
    return run


def stopping(path: str, method: str) -> Scenario:
    def run() -> tuple[int, Any]:
        api = makeApi()
        api.drain.stopping = True
        return api.request(method, path, ["alice"])
    return run


def head(path: str, connected: bool = True) -> Scenario:
    def run() -> tuple[int, Any]:
        wire = ComponentOnWire(WebApp())
        if connected:
            wire.handshake()
        return Api(wire).request("HEAD", path)
    return run


def disconnectedKick() -> tuple[int, Any]:
    api = Api(ComponentOnWire(WebApp()))
    return api.request("POST", "/muc_kick", {"nickname": "x", "muc": ROOM}, headers={"Authorization": KICK_AUTH})


def health(connected: bool) -> Scenario:
    def run() -> tuple[int, Any]:
        wire = ComponentOnWire(WebApp())
        if connected:
            wire.handshake()
        return Api(wire).request("GET", "/healthz")
    return run


def metrics() -> tuple[int, Any]:
    api = makeApi()
    d = api.http.get("http://api.invalid/metrics")
    api.http.flush()
    return Api.result(d).code, None


R, ONE, S = "/roster_admin/refresh", "/roster_admin/refresh/{username}", "/roster_admin/sync"


def sync(method: str, body: Any = None, auth: str = "s3") -> Scenario:
    def run() -> tuple[int, Any]:
        api = makeApi(refreshAuthorization="s3")
        return api.request(method, S, body, headers={"Authorization": auth}, server=serverAnswers())
    return run


def cancel(whileRefreshing: bool) -> Scenario:
    """
    DELETE of a running pass: one refreshing a batch (it finishes it
    first), or one waiting for a page of the users list (it ends at once).
    """
    def run() -> tuple[int, Any]:
        api = makeApi(refreshAuthorization="s3")
        if whileRefreshing:
            api.wire.webApp.hold = True
            api.fullSync.start("users", ["alice"])
        else:
            api.fullSync.lister = UserLister("http://webapp.invalid/users", api.wire.clock,
                                             http=StubTreq(NeverAnswers()))
            api.fullSync.start("full")
        return api.request("DELETE", S, headers={"Authorization": "s3"})
    return run

REQ = "/roster_admin/requests/{id}"
USER = "/roster_admin/users/{username}"


def inspect(username: str, auth: str = "s3") -> Scenario:
    def run() -> tuple[int, Any]:
        api = makeApi(refreshAuthorization="s3")
        return api.request("GET", f"/roster_admin/users/{username}", headers={"Authorization": auth},
                           server=serverAnswers())
    return run


def standby(path: str, method: str, body: Any = None, auth: str = "s3") -> Scenario:
    """
    A request reaching an instance that does not lead: recorded, 202.
    """
    def run() -> tuple[int, Any]:
        api = makeApi(refreshAuthorization="s3")
        api.leading = False
        return api.request(method, path, body, headers={"Authorization": auth})
    return run


def lookup(applied: bool = False, auth: str = "s3", known: bool = True) -> Scenario:
    """
    GET of a refresh recorded by a standby: before or after the leader's
    side applied it, or of an id never recorded.
    """
    def run() -> tuple[int, Any]:
        api = makeApi(refreshAuthorization="s3")
        api.leading = False
        _, accepted = api.request("POST", R, ["alice"], headers={"Authorization": "s3"})
        if applied:
            applier = makeApplier(api.config, api.wire.parts, api.fullSync, api.intake, api.wire.clock)
            applier.startService()
            api.wire.answerRequests(serverAnswers())
            applier.stopService()
        path = accepted["location"] if known else "/roster_admin/requests/unknown"
        return api.request("GET", path, headers={"Authorization": auth})
    return run


#: One scenario per documented (route, method, status).
SCENARIOS: dict[tuple[str, str, int], Scenario] = {
    (R, "POST", 200): refresh(R, "POST", ["alice"]),
    (R, "POST", 400): refresh(R, "POST", {"not": "an array"}),
    (R, "POST", 401): refresh(R, "POST", ["alice"], auth="wrong"),
    (R, "POST", 500): refresh(R, "POST", ["alice"], failing=True),
    (R, "POST", 503): stopping(R, "POST"),
    (R, "GET", 405): refresh(R, "GET"),
    (ONE, "GET", 503): stopping(R + "/alice", "GET"),
    (ONE, "POST", 503): stopping(R + "/alice", "POST"),
    ("/muc_kick", "POST", 500): lambda: brokenKick(makeApi()),
    ("/healthz", "HEAD", 200): head("/healthz"),
    ("/healthz", "HEAD", 503): head("/healthz", connected=False),
    ("/metrics", "HEAD", 200): head("/metrics"),
    (ONE, "GET", 200): refresh(R + "/alice", "GET"),
    (ONE, "GET", 400): refresh(R + "/%FF", "GET"),
    (ONE, "POST", 400): refresh(R + "/%FF", "POST"),
    (ONE, "GET", 401): refresh(R + "/alice", "GET", auth="wrong"),
    (ONE, "GET", 500): refresh(R + "/alice", "GET", failing=True),
    (ONE, "POST", 200): refresh(R + "/alice", "POST"),
    (ONE, "POST", 401): refresh(R + "/alice", "POST", auth="wrong"),
    (ONE, "POST", 500): refresh(R + "/alice", "POST", failing=True),
    ("/muc_kick", "POST", 200): kick({"nickname": "x", "muc": ROOM}, kickAnswers(None)),
    ("/muc_kick", "POST", 400): kick({"muc": ROOM}),
    ("/muc_kick", "POST", 401): kick({"nickname": "x", "muc": ROOM}, auth="nope"),
    ("/muc_kick", "POST", 403): kick({"nickname": "x", "muc": ROOM}, kickAnswers("forbidden", "forbidden")),
    ("/muc_kick", "POST", 404): kick({"nickname": "x", "muc": ROOM}, kickAnswers("item-not-found")),
    ("/muc_kick", "POST", 502): kick({"nickname": "x", "muc": ROOM}, kickAnswers("bad-request")),
    ("/muc_kick", "POST", 503): disconnectedKick,
    ("/muc_kick", "POST", 504): kickTimeout,
    ("/healthz", "GET", 200): health(True),
    ("/healthz", "GET", 503): health(False),
    ("/metrics", "GET", 200): metrics,
    (S, "POST", 202): sync("POST", ["alice"]),
    (S, "POST", 400): sync("POST", {"all": True}),
    (S, "POST", 401): sync("POST", ["alice"], auth="wrong"),
    (S, "POST", 503): stopping(S, "POST"),
    (S, "GET", 200): sync("GET"),
    (S, "GET", 401): sync("GET", auth="wrong"),
    (S, "GET", 503): stopping(S, "GET"),
    (S, "HEAD", 200): sync("HEAD"),
    (S, "DELETE", 200): cancel(whileRefreshing=False),
    (S, "DELETE", 202): cancel(whileRefreshing=True),
    (S, "DELETE", 401): sync("DELETE", auth="wrong"),
    (S, "DELETE", 409): sync("DELETE"),
    (S, "DELETE", 503): stopping(S, "DELETE"),
    (R, "POST", 202): standby(R, "POST", ["alice"]),
    (ONE, "GET", 202): standby(R + "/alice", "GET"),
    (ONE, "POST", 202): standby(R + "/alice", "POST"),
    ("/muc_kick", "POST", 202): standby("/muc_kick", "POST", {"nickname": "x", "muc": ROOM}, auth=KICK_AUTH),
    (REQ, "GET", 200): lookup(applied=True),
    (REQ, "GET", 202): lookup(),
    (REQ, "GET", 401): lookup(auth="wrong"),
    (REQ, "GET", 404): lookup(known=False),
    (REQ, "GET", 503): stopping(REQ.replace("{id}", "any"), "GET"),
    (USER, "GET", 200): inspect("alice"),
    (USER, "GET", 400): inspect("bad@name"),
    (USER, "GET", 401): inspect("alice", auth="wrong"),
    (USER, "GET", 503): stopping(USER.replace("{username}", "alice"), "GET"),
}

#: Responses that need a real Site on a real socket (the body cap lives in
#: the Site's requests, which StubTreq does not use).
OVERSIZE = {(R, "POST", 413), (S, "POST", 413), ("/muc_kick", "POST", 413)}


def test_documentListsExactlyTheScenarios() -> None:
    """
    Every documented (route, method, status) has a scenario, and vice versa.
    """
    assert documented() == set(SCENARIOS) | OVERSIZE


def test_everyDocumentedResponseIsProduced() -> None:
    """
    Each scenario produces the status code the document promises.
    """
    produced = {key: scenario()[0] for key, scenario in SCENARIOS.items()}
    assert produced == {key: key[2] for key in SCENARIOS}


def test_treeHasNoUndocumentedRoutes() -> None:
    """
    The resource tree's routes are the documented ones (a route taking a
    path parameter, as its first segment without it).
    """
    root = makeApi().http._agent._rootResource
    routes = set()
    for name, child in root.children.items():
        if child.children:
            routes.update(f"/{name.decode()}/{sub.decode()}" for sub in child.children)
        else:
            routes.add(f"/{name.decode()}")
    assert routes == {path.partition("/{")[0] for path, _, _ in documented()}


@pytest_twisted.ensureDeferred
async def test_oversizeBodiesOnRealSocket() -> None:
    """
    Bodies over the cap get 413 from the real Site on a loopback socket.
    """
    api = makeApi()
    site = makeSite(api.http._agent._rootResource, maxBodyBytes=64)
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    try:
        base = f"http://127.0.0.1:{port.getHost().port}"
        big = json.dumps(["x" * 100]).encode()
        for path, method, status in sorted(OVERSIZE):
            response = await treq.request(method, base + path, data=big, headers={"Authorization": KICK_AUTH},
                                          pool=HTTPConnectionPool(reactor, persistent=False))
            body = await response.json()
            assert response.code == status, (path, body)
    finally:
        await port.stopListening()
