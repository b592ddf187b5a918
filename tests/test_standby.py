"""
Tests for L{rosteradmin.standby}: a standby's API through a real Site
(StubTreq), and the role a leader's C{/healthz} and C{/metrics} show.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest
from treq.testing import StubTreq

from rosteradmin.standby import NOT_LEADER, standbyRoot
from rosteradmin.web import Drain
from tests.test_api import Api, makeApi

SINCE = 1796625600.0  # 2026-12-07T06:40:00Z


@dataclass
class Role:
    role: str = "standby"
    since: float = SINCE
    problem: str | None = None


def request(http: StubTreq, method: str, path: str, body: Any = None) -> tuple[int, Any, bytes]:
    d = http.request(method, "http://api.invalid" + path, data=json.dumps(body).encode() if body else None)
    http.flush()
    response = Api.result(d)
    content = Api.result(response.content())
    try:
        return response.code, json.loads(content), content
    except ValueError:
        return response.code, None, content


def test_standbyHealthy() -> None:
    """
    A standby that reaches the state says so, 200, with its role and
    since when, and the counters rosteradmin-ctl reads (all zero).
    """
    http = StubTreq(standbyRoot(Drain(), Role(), kick=True))
    code, body, _ = request(http, "GET", "/healthz")
    assert code == 200
    assert body == {"status": "standby", "role": "standby", "since": "2026-12-07T06:40:00Z", "connected": False,
                    "cached_users": 0, "fetches_in_flight": 0, "unsynced_users": 0, "last_error": None,
                    "state_error": None}


def test_leaderStartingIsNotHealthy() -> None:
    """
    Leading, before its parts run (the state opening), a process is not
    connected: 503, starting, role leader.
    """
    http = StubTreq(standbyRoot(Drain(), Role(role="leader"), kick=True))
    code, body, _ = request(http, "GET", "/healthz")
    assert code == 503 and (body["status"], body["role"], body["connected"]) == ("starting", "leader", False)


def test_standbyUnreachableState() -> None:
    """
    A standby that cannot reach the state could not take over: 503, why.
    """
    http = StubTreq(standbyRoot(Drain(), Role(problem="connection refused"), kick=True))
    code, body, _ = request(http, "GET", "/healthz")
    assert code == 503 and body["status"] == "unavailable" and body["state_error"] == "connection refused"


@pytest.mark.parametrize("method, path, key", [
    ("POST", "/roster_admin/refresh", "message"), ("GET", "/roster_admin/refresh/alice", "message"),
    ("POST", "/roster_admin/sync", "message"), ("DELETE", "/roster_admin/sync", "message"),
    ("POST", "/muc_kick", "error"),
])
def test_leaderRoutesRefused(method: str, path: str, key: str) -> None:
    """
    The routes only the leader serves answer 503 on a standby, saying it
    is one, in each route's error body.
    """
    http = StubTreq(standbyRoot(Drain(), Role(), kick=True))
    code, body, _ = request(http, method, path, ["alice"])
    assert code == 503 and body[key] == NOT_LEADER


def test_kickAbsentWhenDisabled() -> None:
    """
    With kicking disabled, C{/muc_kick} is a 404 on a standby as on a
    leader.
    """
    http = StubTreq(standbyRoot(Drain(), Role(), kick=False))
    code, _, _ = request(http, "POST", "/muc_kick", {})
    assert code == 404


def test_standbyMetrics() -> None:
    """
    A standby's metrics say it does not lead, and since when.
    """
    http = StubTreq(standbyRoot(Drain(), Role(), kick=True))
    code, _, text = request(http, "GET", "/metrics")
    assert code == 200
    assert b"rosteradmin_leader 0.0" in text and b"rosteradmin_role_since_seconds 1.7966256e+09" in text


def test_leaderShowsItsRole() -> None:
    """
    A single process's /healthz and /metrics say it leads, since it
    started; the keys it had are all still there.
    """
    api = makeApi()
    code, body = api.request("GET", "/healthz")
    assert code == 200 and body["role"] == "leader" and body["since"].endswith("Z")
    assert {"status", "connected", "cached_users", "fetches_in_flight", "unsynced_users", "last_error",
            "state_error"} <= body.keys()
    d = api.http.get("http://api.invalid/metrics")
    api.http.flush()
    text = Api.result(Api.result(d).text())
    assert "rosteradmin_leader 1.0" in text and "rosteradmin_role_since_seconds" in text
