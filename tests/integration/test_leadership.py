"""
Two real C{twistd rosteradmin} processes sharing one PostgreSQL state, on
one real Prosody: exactly one leads (holds the component connection);
when it dies (C{kill -9}), stops (SIGTERM) or loses its database session
(C{pg_terminate_backend}), the other leads, within a bounded time, and
the two never hold the stream at once.

Prosody's log is the witness: it logs each component handshake
("External component successfully authenticated"), and a second
connection while one is live ("Second component attempted to connect",
then a C{<conflict/>}), which must never happen.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import pytest_twisted
import treq
from twisted.web.client import HTTPConnectionPool
from twisted.internet import reactor

from rosteradmin.statepg import LEADER_LOCK
from tests.integration.harness import ProsodyServer, WebAppStub
from tests.integration.service import RunningService
from tests.integration.test_convergence import Rosteradmin
from tests.integration.test_rosters import items
from tests.postgresql import PostgreSQLServer

#: Seconds a takeover may take on loopback: the standby's retry (1 s),
#: the takeover delay (3 s), the state's reading and the handshake.
TAKEOVER_BOUND = 7.0

#: Kills measured.
KILLS = 3

AUTHENTICATED = "External component successfully authenticated"
SECOND = "Second component attempted to connect"


class Pair:
    """
    The rosteradmin processes of a test, started one after another under
    new names, all on one state.
    """

    def __init__(self, prosody: ProsodyServer, webapp: WebAppStub, directory: Path, state: str) -> None:
        self.prosody = prosody
        self.webapp = webapp
        self.directory = directory
        self.state = state
        self.started: list[Rosteradmin] = []

    def start(self) -> Rosteradmin:
        process = Rosteradmin(self.prosody, self.webapp, self.directory, f"rosteradmin{len(self.started)}",
                              self.state)  # type: ignore[arg-type]  # a URL where a path goes
        self.started.append(process)
        return process

    def live(self) -> list[Rosteradmin]:
        return [p for p in self.started if p.process.poll() is None]

    def stopAll(self) -> None:
        for process in self.started:
            process.ensureGone()


async def health(process: Rosteradmin) -> tuple[int, dict[str, Any]] | None:
    """
    C{/healthz}'s status and body, or C{None} if it does not answer.
    """
    try:
        response = await treq.get(process.baseURL + "/healthz", pool=HTTPConnectionPool(reactor, persistent=False),
                                  timeout=2)
        return response.code, await response.json()
    except Exception:
        return None


async def waitForRole(process: Rosteradmin, role: str, timeout: float = 20.0) -> float:
    """
    Wait until the process's C{/healthz} answers 200 with C{role} (and,
    for a leader, connected); the monotonic time it did.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.process.poll() is None, f"rosteradmin exited:\n{process.output()[-5000:]}"
        answer = await health(process)
        if answer is not None and answer[0] == 200 and answer[1].get("role") == role:
            return time.monotonic()
        await RunningService.sleep(0.05)
    raise AssertionError(f"{process.log.name} never became {role} (last: {await health(process)}):\n"
                         f"{process.output()[-5000:]}")


async def leaderAndStandby(pair: Pair) -> tuple[Rosteradmin, Rosteradmin]:
    """
    Which of the two live processes leads, once one does and the other
    says it stands by.
    """
    first, second = pair.live()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        roles = [await health(first), await health(second)]
        if all(r is not None and r[0] == 200 for r in roles):
            byRole = {r[1]["role"]: p for r, p in zip(roles, (first, second)) if r is not None}
            if set(byRole) == {"leader", "standby"}:
                return byRole["leader"], byRole["standby"]
        await RunningService.sleep(0.05)
    raise AssertionError(f"no leader and standby: {roles}")


def prosodyLog(prosody: ProsodyServer) -> str:
    return prosody.logPath.read_text(errors="replace")


async def rosterServed(prosody: ProsodyServer, clients: Any, webapp: WebAppStub) -> None:
    """
    A new session of alice gets the web app's roster, through whoever
    leads.
    """
    client = await clients("alice")
    reply = await client.rosterGet()
    if reply["type"] != "result":
        components = [line for line in prosodyLog(prosody).splitlines()
                      if "omponent" in line or "delegat" in line.lower()]
        raise AssertionError(reply.toXml() + "\n" + "\n".join(components[-40:]))
    assert set(items(reply)) == set(webapp.rosters["alice"])


@pytest.fixture
def pair(prosody: ProsodyServer, webapp: WebAppStub, tmp_path: Path,
         postgresql: PostgreSQLServer) -> Iterator[Pair]:
    webapp.rosters["alice"] = {"bob@example.org": {"name": "Bob"}}
    both = Pair(prosody, webapp, tmp_path, postgresql.newDatabase())
    yield both
    both.stopAll()


def terminateLeaderSession(url: str) -> int:
    """
    End the database session holding the leader's lock, as a partition
    or an administrator would; how many were ended.
    """
    with psycopg.connect(url, autocommit=True) as db:
        rows = db.execute("SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND granted "
                          "AND classid = %s AND objid = %s",
                          (LEADER_LOCK >> 32, LEADER_LOCK & 0xFFFFFFFF)).fetchall()
    return len(rows)


@pytest_twisted.ensureDeferred
async def test_oneLeaderAndTakeovers(pair: Pair, prosody: ProsodyServer, webapp: WebAppStub, clients: Any) -> None:
    """
    Two processes: one leads, one stands by (it never connects).  Killed
    with C{kill -9} (three times, a new standby started each time), the
    leader is replaced within L{TAKEOVER_BOUND} seconds and clients' roster
    gets work again; stopped with SIGTERM, it hands over the same way;
    its database session terminated while its stream lives, it steps
    down and the other leads.  Prosody never sees a second connection.
    """
    pair.start()
    pair.start()
    leader, standby = await leaderAndStandby(pair)
    await rosterServed(prosody, clients, webapp)
    assert prosodyLog(prosody).count(AUTHENTICATED) == 1
    assert "connected to the XMPP server" not in standby.output()
    terms = 1

    kills: list[float] = []
    for _ in range(KILLS):
        killedAt = time.monotonic()
        leader.kill()
        kills.append(await waitForRole(standby, "leader") - killedAt)
        terms += 1
        await rosterServed(prosody, clients, webapp)
        leader, standby = standby, pair.start()
        await waitForRole(standby, "standby")

    stoppedAt = time.monotonic()
    leader.process.send_signal(15)
    handover = await waitForRole(standby, "leader") - stoppedAt
    terms += 1
    assert leader.process.wait(30) in (0, -15)
    leader, standby = standby, pair.start()
    await waitForRole(standby, "standby")

    assert terminateLeaderSession(pair.state) == 1
    terminatedAt = time.monotonic()
    partition = await waitForRole(standby, "leader") - terminatedAt
    terms += 1
    await waitForRole(leader, "standby")
    assert "leadership lost" in leader.output()
    try:
        await rosterServed(prosody, clients, webapp)
    except AssertionError:
        for process in pair.started[-2:]:
            print(f"==== {process.log.name}\n{process.output()[-6000:]}")
        raise

    log = prosodyLog(prosody)
    print(f"\ntakeover after kill -9: {', '.join(f'{k:.2f}' for k in kills)} s "
          f"(median {statistics.median(kills):.2f}, max {max(kills):.2f}); after SIGTERM {handover:.2f} s; "
          f"after the leader's session was terminated {partition:.2f} s; "
          f"component handshakes {log.count(AUTHENTICATED)}")
    assert max(kills) < TAKEOVER_BOUND and handover < TAKEOVER_BOUND and partition < TAKEOVER_BOUND
    assert SECOND not in log
    assert log.count(AUTHENTICATED) == terms
    for process in pair.live():
        assert "Traceback" not in process.output()


@pytest_twisted.ensureDeferred
async def test_databaseRestartedUnderThePair(pair: Pair, prosody: ProsodyServer, webapp: WebAppStub, clients: Any,
                                             postgresql: PostgreSQLServer) -> None:
    """
    The PostgreSQL server stopped under a running pair: the leader, its
    hold unconfirmed, steps down (its stream closed) and both say they
    cannot reach the database; started again, one of them leads again
    with no help, and the roster refreshed before the restart is served.
    Never two connections.
    """
    pair.start()
    pair.start()
    leader, standby = await leaderAndStandby(pair)
    await rosterServed(prosody, clients, webapp)
    webapp.rosters["alice"]["carol@example.org"] = {"name": "Carol"}
    code = (await treq.post(leader.baseURL + "/roster_admin/refresh", b'["alice"]',
                            pool=HTTPConnectionPool(reactor, persistent=False))).code
    assert code == 200
    try:
        postgresql.stop()
        stoppedAt = time.monotonic()
        for process in (leader, standby):
            while True:
                answer = await health(process)
                if answer is not None and answer[0] == 503 and answer[1].get("role") == "standby":
                    break
                assert time.monotonic() - stoppedAt < 15, f"{process.log.name}: {answer}"
                await RunningService.sleep(0.1)
        down = time.monotonic() - stoppedAt
    finally:
        postgresql.start()
    startedAt = time.monotonic()
    first = await leaderAndStandby(pair)
    back = time.monotonic() - startedAt
    await rosterServed(prosody, clients, webapp)
    log = prosodyLog(prosody)
    print(f"\nPostgreSQL stopped: both instances stood by within {down:.2f} s; started again: one led after "
          f"{back:.2f} s (the {'same' if first[0] is leader else 'other'} one)")
    assert SECOND not in log
    assert "leadership lost" in leader.output()
