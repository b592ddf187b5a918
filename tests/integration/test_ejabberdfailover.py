"""
Two rosteradmin instances on one PostgreSQL state against Debian 13's
ejabberd in C{--roster-sync ejabberd-api} mode (the module's server of
L{tests.integration.test_ejabberd24}), in this process.  ejabberd takes
several connections for one component, and drops every delegation of the
component when any of them closes: only the leader may connect, and the
next leader must get the delegation anew once the old one is gone.
"""

from __future__ import annotations

import time

import pytest
import pytest_twisted

from rosteradmin.ejabberdapi import EjabberdAPISync
from tests.integration.ejabberd import LocalEjabberd
from tests.integration.harness import ClientFactory, WebAppStub
from tests.integration.service import RunningService
from tests.integration.test_ejabberd24 import ejabberd24 as ejabberd24  # this module's server
from tests.integration.test_rosters import items
from tests.postgresql import PostgreSQLServer

pytestmark = pytest.mark.integration

@pytest.fixture
def xmppServer(ejabberd24: LocalEjabberd) -> LocalEjabberd:
    return ejabberd24


ROSTER = {"bob@example.org": {"name": "Bob", "groups": ["Friends"]}, "carol@example.org": {"name": "Carol"}}


def leads(running: RunningService) -> bool:
    """
    Whether the instance leads with its stream up, the roster delegated
    and ejabberd's API taking writes.
    """
    if "component" not in running.top.getServiceNamed("leader").namedServices:
        return False
    sync = running.backend.sync
    assert isinstance(sync, EjabberdAPISync)
    component = running.component
    return bool(component.status.connected and component.delegation.delegated and sync.canSync())


@pytest_twisted.ensureDeferred
async def test_handOverOnEjabberd(ejabberd24: LocalEjabberd, webapp: WebAppStub, clients: ClientFactory,
                                  postgresql: PostgreSQLServer) -> None:
    """
    The first instance leads and serves alice's roster; the second stands
    by, never connected.  The leader stopped (as SIGTERM stops it), the
    standby leads, ejabberd delegates the roster to it, and alice's next
    roster get is answered with the web app's roster.
    """
    webapp.rosters["alice"] = ROSTER
    args = ["--roster-sync", "ejabberd-api", "--ejabberd-api-url", ejabberd24.apiURL,
            "--state", postgresql.newDatabase()]
    first = RunningService(ejabberd24, webapp.url, args)
    second = RunningService(ejabberd24, webapp.url, args)
    first.top.startService()
    stopped: list[RunningService] = []
    try:
        await RunningService.waitUntil(lambda: leads(first), 20, "the first instance leads")
        second.top.startService()
        await RunningService.sleep(2)  # it tried the lock, and stands by
        assert "component" not in second.top.getServiceNamed("leader").namedServices
        alice = await clients("alice")
        assert set(items(await alice.rosterGet())) == set(ROSTER)

        stoppedAt = time.monotonic()
        await first.stop()
        stopped.append(first)
        await RunningService.waitUntil(lambda: leads(second), 20, "the second instance leads, delegated")
        handover = time.monotonic() - stoppedAt
        reply = await alice.rosterGet()
        print(f"\nejabberd {ejabberd24.version()}: hand-over after a stop in {handover:.2f} s; alice's roster get "
              f"after it: {reply['type']}")
        assert reply["type"] == "result" and set(items(reply)) == set(ROSTER)
    finally:
        for running in (first, second):
            if running not in stopped:
                await running.stop()
