"""
Two rosteradmin instances on one PostgreSQL state against Debian 13's
ejabberd in C{--roster-sync ejabberd-api} mode (the module's server of
L{tests.integration.test_ejabberd24}): a clean hand-over in this process,
and a C{kill -9} of the leader in the middle of a refresh with real
C{twistd} processes.  ejabberd takes several connections for one
component, and drops every delegation of the component when any of them
closes: only the leader may connect, and the next leader must get the
delegation anew once the old one is gone.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import treq
from twisted.internet import defer, reactor
from twisted.web.client import HTTPConnectionPool

from rosteradmin.ejabberdapi import EjabberdAPISync
from tests.integration.ejabberd import LocalEjabberd
from tests.integration.harness import ClientFactory, WebAppStub, XMPPTestClient
from tests.integration.service import RunningService
from tests.integration.test_convergence import (
    ANSWERED, BULK_USERS, KILL_AT, NEW_ROSTER, UsersWebApp, expected,
    webapp as webapp,  # this module's web app: UsersWebApp
)
from tests.integration.test_ejabberd24 import ejabberd24 as ejabberd24  # this module's server
from tests.integration.test_failover import stateCounts
from tests.integration.test_leadership import TAKEOVER_BOUND, Pair, health, leaderAndStandby, waitForRole
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


async def storedRosters(server: LocalEjabberd, users: list[str]) -> dict[str, Any]:
    """
    What ejabberd stores for each of C{users}, read with its own API
    (C{get_roster}), twenty at a time: user to contact to (nick,
    subscription, sorted groups).
    """
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = 20
    limit = defer.DeferredSemaphore(20)
    found: dict[str, Any] = {}

    async def read(user: str) -> None:
        response = await treq.post(f"{server.apiURL}/get_roster", json={"user": user, "host": server.domain},
                                   pool=pool)
        assert response.code == 200, await response.text()
        found[user] = {c["jid"]: (c["nick"], c["subscription"], sorted(c["groups"])) for c in await response.json()}

    try:
        await defer.gatherResults([limit.run(lambda u=user: defer.ensureDeferred(read(u))) for user in users],
                                  consumeErrors=True)
    finally:
        await pool.closeCachedConnections()
    return found


def normalised(roster: dict[str, Any]) -> dict[str, Any]:
    """
    L{expected}'s form as ejabberd's API says it: no name is an empty nick.
    """
    return {jid: (name or "", subscription, groups) for jid, (name, subscription, groups) in roster.items()}


async def askUntil(client: XMPPTestClient, want: set[str], until: list[bool],
                   outcomes: list[tuple[float, str]]) -> None:
    """
    Ask for the roster every 0.1 s until C{until} holds a value, recording
    each answer's time and what it was: C{"ok"} (the web app's
    contacts), C{"wrong"}, the error's condition or C{"timeout"} (3 s).
    """
    while not until:
        try:
            reply = await client.rosterGet(timeout=3)
        except Exception:
            outcomes.append((time.monotonic(), "timeout"))
            continue
        if reply["type"] != "result":
            error = next((e for e in reply.elements() if e.name == "error"), None)
            condition = next((c.name for c in error.elements()), "error") if error is not None else "error"
            outcomes.append((time.monotonic(), condition))
        else:
            outcomes.append((time.monotonic(), "ok" if set(items(reply)) == want else "wrong"))
        await RunningService.sleep(0.1)


@pytest_twisted.ensureDeferred
async def test_killLeaderDuringRefreshOnEjabberd(ejabberd24: LocalEjabberd, webapp: UsersWebApp,
                                                 clients: ClientFactory, postgresql: PostgreSQLServer,
                                                 tmp_path: Path) -> None:
    """
    Two real C{twistd} processes.  A refresh of 1,000 users whose web-app
    rosters changed, sent to the leader, is cut by C{kill -9} once some
    but not all are stored (the web app answers only L{ANSWERED} fetches
    before the kill), while alice asks for her roster every 0.1 s.  The
    standby leads within L{TAKEOVER_BOUND} seconds with the roster
    delegated to it anew (alice's gets reach it), stores every user's
    web-app roster with no request made to it (each read back with
    ejabberd's C{get_roster}) and leaves nothing pending.  The roster gets
    that fail meanwhile are counted: while no instance holds the
    delegation, ejabberd answers them C{service-unavailable} (it does not
    fall back on its own store), and none may fail once the new leader
    holds it.
    """
    webapp.rosters["alice"] = ROSTER
    # The API settings come with the server (tests.integration.servers.serverSettings).
    pair = Pair(ejabberd24, webapp, tmp_path, postgresql.newDatabase())
    try:
        pair.start()
        pair.start()
        leader, standby = await leaderAndStandby(pair)
        alice = await clients("alice")
        reply = await alice.rosterGet()
        assert reply["type"] == "result" and set(items(reply)) == set(ROSTER)
        before = webapp.requests["alice"]

        for user in BULK_USERS:
            webapp.rosters[user] = NEW_ROSTER
        want = normalised(expected(NEW_ROSTER))
        webapp.holdAfter(ANSWERED)
        started = time.monotonic()
        outcome: list[object] = []
        leader.refresh(BULK_USERS).addBoth(outcome.append)
        atKill = 0
        while atKill < KILL_AT and time.monotonic() - started < 90:
            await RunningService.sleep(0.2)
            if sum(webapp.requests.values()) - before >= KILL_AT:
                rosters = await storedRosters(ejabberd24, BULK_USERS)
                atKill = sum(roster == want for roster in rosters.values())
        assert atKill >= KILL_AT, f"only {atKill} users stored new within 90 s"

        until: list[bool] = []
        outcomes: list[tuple[float, str]] = []
        asking = defer.ensureDeferred(askUntil(alice, set(ROSTER), until, outcomes))
        await RunningService.sleep(0.5)
        killedAt = time.monotonic()
        leader.kill()
        webapp.release()
        fetchedBefore = sum(webapp.requests.values())
        takeover = await waitForRole(standby, "leader") - killedAt
        answered = len([at for at, _ in outcomes if at > killedAt])
        while not ((await health(standby)) or (0, {}))[1].get("delegated"):
            assert time.monotonic() - killedAt < TAKEOVER_BOUND, f"not delegated: {await health(standby)}"
            await RunningService.sleep(0.05)
        delegated = time.monotonic() - killedAt

        deadline = time.monotonic() + 90
        left = list(BULK_USERS)
        while left and time.monotonic() < deadline:
            await RunningService.sleep(0.5)
            rosters = await storedRosters(ejabberd24, left)
            left = [user for user in left if rosters[user] != want]
        converged = time.monotonic() - killedAt
        while stateCounts(pair.state)[0] and time.monotonic() < deadline:
            await RunningService.sleep(0.1)
        pending, known = stateCounts(pair.state)
        fetched = sum(webapp.requests.values()) - fetchedBefore
        await RunningService.sleep(1)
        until.append(True)
        await asking
        after = [(round(at - killedAt, 2), what) for at, what in outcomes if at >= killedAt]
        failed = [(at, what) for at, what in after if what != "ok"]
        kinds = Counter(what for _, what in failed)
        print(f"\nejabberd {ejabberd24.version()}: kill -9 of the leader {killedAt - started:.2f} s into a refresh "
              f"of 1,000 users, {atKill} stored new; the standby led after {takeover:.2f} s, delegated "
              f"after {delegated:.2f} s; every roster stored (get_roster) as the web app serves after "
              f"{converged:.2f} s, with {fetched} web-app fetches and no request; state: {pending} pending, "
              f"{known} known; alice's roster gets from the kill on: {len(after)}, {answered} before the standby "
              f"led, failed: {len(failed)} ({dict(kinds)}), from {failed[0][0] if failed else '-'} s to "
              f"{failed[-1][0] if failed else '-'} s after the kill")
        assert len(outcome) == 1 and not hasattr(outcome[0], "code"), f"the refresh was answered: {outcome}"
        assert left == [], f"{len(left)} users stored otherwise, e.g. {left[:3]}"
        assert pending == 0 and known >= 1000
        assert takeover < TAKEOVER_BOUND and delegated < TAKEOVER_BOUND
        # Failures only while no instance holds the delegation.
        assert all(at < delegated + 0.5 for at, _ in failed), failed
        output = standby.stop()
        assert "unfinished refreshes and writes" in output
    finally:
        pair.stopAll()
