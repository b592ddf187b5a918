"""
Tests for C{--delegation none}: the server (an ejabberd cluster) answers
clients' roster queries from what rosteradmin keeps converged, so no
delegation is expected and none missing is a problem.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.logger import capturedLogs

from rosteradmin import ctl
from rosteradmin.config import ConfigError, buildConfig
from tests.helpers import PERMISSIONS_2, ComponentOnWire, WebApp, makeConfig
from tests.test_health import DELEGATION_2, health

BASE = {"jid": "roster.example.org", "secret": "s", "domain": "example.org", "roster_url": "http://app/%s",
        "no_kick": True}
CLUSTER = {**BASE, "roster_sync": "ejabberd-api", "ejabberd_api_url": "http://127.0.0.1:5281/api",
           "users_url": "http://app/users"}


def test_delegationExpectedByDefault() -> None:
    """
    Without the option, the server is expected to delegate; C{none} is
    accepted with ejabberd's API and a users URL; anything else is
    refused, naming the option.
    """
    assert buildConfig(BASE, environ={}).delegation == "expected"
    assert buildConfig({**CLUSTER, "delegation": "none"}, environ={}).delegation == "none"
    with pytest.raises(ConfigError, match="^--delegation: must be one of expected, none, got 'off'$"):
        buildConfig({**CLUSTER, "delegation": "off"}, environ={})


@pytest.mark.parametrize("missing, why", [
    ("roster_sync", "needs --roster-sync ejabberd-api"),
    ("users_url", "needs --users-url"),
])
def test_noDelegationNeedsAPIAndFullSyncs(missing: str, why: str) -> None:
    """
    Without delegation nobody answers a user's first roster get from the
    web app: only writes every node sees (ejabberd's API) made ahead of
    login (full syncs over the users URL) keep it right.
    """
    values: dict[str, Any] = {key: value for key, value in CLUSTER.items() if key != missing}
    with pytest.raises(ConfigError, match=f"^--delegation none: {why}"):
        buildConfig({**values, "delegation": "none"}, environ={})


def test_healthzExpectsNoDelegation() -> None:
    """
    With C{--delegation none}, /healthz says so, stays "ok" with no
    delegation_error long past the iq timeout, and says C{delegated}
    truthfully if a delegation arrives anyway (then it is answered).
    """
    wire = ComponentOnWire(WebApp(), config=makeConfig(delegation="none"))
    wire.handshake(PERMISSIONS_2)
    with capturedLogs() as logged:
        wire.clock.advance(10 * wire.config.iq_timeout)
    code, body = health(wire)
    assert (code, body["status"], body["delegation"], body["delegated"], body["delegation_error"]) == (
        200, "ok", "none", False, None)
    assert not [event for event in logged if "delegated no" in str(event.get("problem", ""))]
    wire.receive(DELEGATION_2)
    assert health(wire)[1]["delegated"] is True

    expected = ComponentOnWire(WebApp())
    expected.handshake(PERMISSIONS_2 + DELEGATION_2)
    assert health(expected)[1]["delegation"] == "expected"


def test_ctlHealthSaysTheServerAnswers() -> None:
    """
    rosteradmin-ctl health does not call a missing delegation a problem
    when none is expected, and says who answers roster queries.
    """
    reply = {"status": "ok", "connected": True, "cached_users": 3, "fetches_in_flight": 1, "unsynced_users": 0,
             "last_error": None, "delegation": "none", "delegated": False, "delegation_error": None}
    assert ctl._health(reply) == ("connected; 3 cached users, 1 fetches in flight, 0 unsynced; "
                                  "roster queries answered by the server (delegation none)")
