"""
Failover during work: two real C{twistd rosteradmin} processes on one
private PostgreSQL state and one real Prosody.

- The leader killed (C{kill -9}) in the middle of a refresh of 1,000
  users: the standby leads within L{TAKEOVER_BOUND} seconds (the 5 s
  target on loopback is measured in bench/takeover.py) and finishes the refresh with no new request: every roster Prosody stores
  is then the web app's, and the state has nothing pending.
- The leader stopped (SIGTERM) while clients ask for their rosters: the
  standby leads, and no roster get fails meanwhile (Prosody answers the
  users rosteradmin promised from its store).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import pytest_twisted
import treq
from twisted.internet import defer, reactor, threads
from twisted.python.failure import Failure
from twisted.web.client import HTTPConnectionPool

from tests.integration.harness import PASSWORD, ProsodyServer, XMPPTestClient
from tests.integration.service import RunningService
from tests.integration.test_blastradius import preFill
from tests.integration.test_convergence import (
    ANSWERED, BULK_USERS, KILL_AT, NEW_ROSTER, OLD_ROSTER, TRIAD, Rosteradmin, UsersWebApp, expected, stored,
    storedCount,
    webapp as webapp,  # this module's web app: UsersWebApp
)
from tests.integration.test_leadership import TAKEOVER_BOUND, Pair, leaderAndStandby, waitForRole
from tests.integration.test_rosters import items
from tests.postgresql import PostgreSQLServer

pytestmark = pytest.mark.integration



def stateCounts(url: str) -> tuple[int, int]:
    """
    The pending users and the users with a known server version in a
    PostgreSQL state.
    """
    with psycopg.connect(url, autocommit=True) as db:
        pending = db.execute("SELECT count(*) FROM pending").fetchone()
        known = db.execute("SELECT count(*) FROM server_rosters").fetchone()
    assert pending is not None and known is not None
    return int(pending[0]), int(known[0])


@pytest.fixture
def bulkPair(prosody: ProsodyServer, webapp: UsersWebApp, tmp_path: Path,
             postgresql: PostgreSQLServer) -> Iterator[Pair]:
    """
    The 1,000 accounts with L{OLD_ROSTER} stored in the server (and served
    by the web app), and an empty PostgreSQL state for two processes.
    """
    for user in BULK_USERS:
        prosody.addAccount(user, PASSWORD)  # Prosody refuses to store a roster of no account
        webapp.rosters[user] = OLD_ROSTER
        preFill(prosody, user, OLD_ROSTER)
    both = Pair(prosody, webapp, tmp_path, postgresql.newDatabase())
    yield both
    both.stopAll()


@pytest_twisted.ensureDeferred
async def test_killLeaderDuringBulkRefresh(bulkPair: Pair, prosody: ProsodyServer, webapp: UsersWebApp) -> None:
    """
    A refresh of 1,000 users whose web-app rosters changed, sent to the
    leader, is cut by C{kill -9} once some but not all are stored (the
    web app answers only L{ANSWERED} fetches before the kill, so it is
    mid-way by construction).  The standby leads within
    L{TAKEOVER_BOUND} seconds and, with no request made to it, stores
    every user's web-app roster and leaves nothing pending.
    """
    bulkPair.start()
    bulkPair.start()
    leader, standby = await leaderAndStandby(bulkPair)
    for user in BULK_USERS:
        webapp.rosters[user] = NEW_ROSTER
    webapp.holdAfter(ANSWERED)
    started = time.monotonic()
    outcome: list[object] = []
    leader.refresh(BULK_USERS).addBoth(outcome.append)
    atKill = 0
    while atKill < KILL_AT and time.monotonic() - started < 60:
        await RunningService.sleep(0.1)
        atKill = await storedCount(prosody, NEW_ROSTER)
    assert atKill >= KILL_AT, f"only {atKill} users stored new within 60 s"
    killedAt = time.monotonic()
    leader.kill()
    webapp.release()
    fetchedBefore = sum(webapp.requests.values())
    takeover = await waitForRole(standby, "leader") - killedAt

    want = expected(NEW_ROSTER)

    def wrong() -> list[str]:
        return [user for user in BULK_USERS if stored(prosody, user) != want]

    deadline = time.monotonic() + 60
    left = await threads.deferToThread(wrong)
    while left and time.monotonic() < deadline:
        await RunningService.sleep(0.25)
        left = await threads.deferToThread(wrong)
    converged = time.monotonic() - killedAt
    while stateCounts(bulkPair.state)[0] and time.monotonic() < deadline:
        await RunningService.sleep(0.1)
    pending, known = stateCounts(bulkPair.state)
    fetched = sum(webapp.requests.values()) - fetchedBefore
    print(f"\nkill -9 of the leader {killedAt - started:.2f} s into a refresh of 1,000 users, {atKill} stored new; "
          f"the standby led after {takeover:.2f} s; every roster stored as the web app serves after "
          f"{converged:.2f} s, with {fetched} web-app fetches and no request; state: {pending} pending, "
          f"{known} known")
    assert len(outcome) == 1 and isinstance(outcome[0], Failure), f"the refresh was answered: {outcome}"
    assert left == [], f"{len(left)} users stored otherwise, e.g. {left[:3]}"
    assert (pending, known) == (0, 1000)
    assert takeover < TAKEOVER_BOUND
    output = standby.stop()
    assert "unfinished refreshes and writes" in output


async def promised(process: Rosteradmin) -> int:
    """
    How many versions the process has promised Prosody (C{/metrics}).
    """
    response = await treq.get(process.baseURL + "/metrics", pool=HTTPConnectionPool(reactor, persistent=False))
    match = re.search(r"^rosteradmin_versions_promised_total (\S+)$", await response.text(), re.M)
    return int(float(match.group(1))) if match else 0


async def askRepeatedly(client: XMPPTestClient, user: str, until: list[bool],
                        outcomes: list[tuple[float, str, bool]]) -> None:
    """
    Ask for C{user}'s roster every 0.1 s until C{until} holds a value,
    recording each answer's time and whether it was the web app's roster.
    """
    want = set(TRIAD[user])
    while not until:
        reply = await client.rosterGet(timeout=3)
        good = reply["type"] == "result" and set(items(reply)) == want
        outcomes.append((time.monotonic(), user, good))
        await RunningService.sleep(0.1)


@pytest.fixture
def pair(prosody: ProsodyServer, webapp: UsersWebApp, tmp_path: Path,
         postgresql: PostgreSQLServer) -> Iterator[Pair]:
    """
    The three users of L{TRIAD} in the web app, and an empty PostgreSQL
    state for two processes.
    """
    webapp.rosters.update(TRIAD)
    both = Pair(prosody, webapp, tmp_path, postgresql.newDatabase())
    yield both
    both.stopAll()


@pytest_twisted.ensureDeferred
async def test_sigtermHandsOverWithNoRosterGetFailing(pair: Pair, clients: Any) -> None:
    """
    Three users online, each asking for their roster every 0.1 s; the
    leader, which promised their versions, stopped with SIGTERM: the
    standby leads within L{TAKEOVER_BOUND} seconds, and every roster get
    before, during and after the hand-over is answered with the web app's
    roster.
    """
    pair.start()
    pair.start()
    leader, standby = await leaderAndStandby(pair)
    sessions = {user: await clients(user) for user in TRIAD}
    for user, client in sessions.items():
        assert set(items(await client.rosterGet())) == set(TRIAD[user])
    deadline = time.monotonic() + 15
    while await promised(leader) < len(TRIAD) and time.monotonic() < deadline:
        await RunningService.sleep(0.1)
    assert await promised(leader) >= len(TRIAD)

    until: list[bool] = []
    outcomes: list[tuple[float, str, bool]] = []
    asking = [askRepeatedly(client, user, until, outcomes) for user, client in sessions.items()]
    running = [defer.ensureDeferred(a) for a in asking]
    await RunningService.sleep(1)
    stoppedAt = time.monotonic()
    await threads.deferToThread(leader.stop)
    handover = await waitForRole(standby, "leader") - stoppedAt
    await RunningService.sleep(1)
    until.append(True)
    for d in running:
        await d
    during = [good for at, _, good in outcomes if stoppedAt <= at <= stoppedAt + handover]
    failed = [(round(at - stoppedAt, 2), user) for at, user, good in outcomes if not good]
    print(f"\nSIGTERM of the leader: the standby led after {handover:.2f} s; {len(outcomes)} roster gets, "
          f"{len(during)} of them during the hand-over, {len(failed)} failed")
    assert failed == []
    assert handover < TAKEOVER_BOUND
