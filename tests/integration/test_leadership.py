"""
Two real C{twistd rosteradmin} processes sharing one PostgreSQL state, on
one real Prosody: exactly one leads (holds the component connection);
when it dies (C{kill -9}), stops (SIGTERM) or loses its database session
(C{pg_terminate_backend}), the other leads, within a bounded time, and
the two never hold the stream at once.

Prosody's log is the witness: it logs each component handshake
("External component successfully authenticated"), each component
connection's start and end under a name of its own (never two live at
once), and a second connection while one is live ("Second component
attempted to connect", then a C{<conflict/>}), which must never happen.
For the partition, the state is the witness too: a trigger records every
row written with its writer (L{Audit}), and the test watches when the
new leader takes the lock.
"""

from __future__ import annotations

import datetime
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
from twisted.internet import defer, reactor, threads

from rosteradmin.leadership import Timings
from rosteradmin.statepg import LEADER_LOCK
from rosteradmin.statestorage import TABLES
from tests.integration.ejabberd import LocalEjabberd
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
INCOMING = "Incoming Jabber component connection"
DISCONNECTED = "component disconnected"


def mostComponentConnections(log: str) -> int:
    """
    The most component connections Prosody held at once, from its log:
    each connection's lines carry its own name (C{jcp...}), from
    L{INCOMING} to L{DISCONNECTED}.
    """
    live: set[str] = set()
    most = 0
    for line in log.splitlines():
        name = next((word for word in line.split() if word.startswith("jcp")), None)
        if name is None:
            continue
        if INCOMING in line:
            live.add(name)
            most = max(most, len(live))
        elif DISCONNECTED in line:
            live.discard(name)
    return most


class Audit:
    """
    Every row the processes write to the state's tables, recorded in the
    same transaction by a trigger (so only committed writes): the writer
    (its session's C{application_name}, L{Pair.start}) and the server's
    clock.  Its table is in a schema of its own, which the state never
    reads.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        with psycopg.connect(url, autocommit=True) as db:
            db.execute("CREATE SCHEMA audit")
            db.execute("CREATE TABLE audit.writes (writer text, at timestamptz, tbl text, op text)")
            db.execute("CREATE FUNCTION audit.record() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                       "INSERT INTO audit.writes VALUES (current_setting('application_name'), clock_timestamp(), "
                       "TG_TABLE_NAME, TG_OP); RETURN NULL; END $$")
            for table in TABLES:
                db.execute(f"CREATE TRIGGER audit AFTER INSERT OR UPDATE OR DELETE ON public.{table} "
                           "FOR EACH ROW EXECUTE FUNCTION audit.record()")

    def writes(self) -> list[tuple[str, datetime.datetime, str, str]]:
        """
        The writes recorded: writer, time, table, operation, in time order.
        """
        with psycopg.connect(self.url, autocommit=True) as db:
            return [tuple(row) for row in db.execute("SELECT * FROM audit.writes ORDER BY at")]  # type: ignore[misc]

    def holder(self) -> str:
        with psycopg.connect(self.url, autocommit=True) as db:
            row = db.execute("SELECT value FROM meta WHERE key = 'holder'").fetchone()
        return "" if row is None else str(row[0])


def watchLock(url: str, taker: str, timeout: float = 15.0) -> tuple[datetime.datetime, datetime.datetime]:
    """
    Poll the leader's lock every 10 ms until the session of C{taker} holds
    it: the server's clock at the last look it did not and at the first
    it did (it took the lock in between).
    """
    query = ("SELECT clock_timestamp(), (SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a "
             "ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted AND l.classid = %s AND l.objid = %s)")
    deadline = time.monotonic() + timeout
    with psycopg.connect(url, autocommit=True) as db:
        before = None
        while time.monotonic() < deadline:
            row = db.execute(query, (LEADER_LOCK >> 32, LEADER_LOCK & 0xFFFFFFFF)).fetchone()
            assert row is not None
            if row[1] == taker and before is not None:
                return before, row[0]
            before = row[0]
            time.sleep(0.01)
    raise AssertionError(f"{taker} never took the lock")


class Pair:
    """
    The rosteradmin processes of a test, started one after another under
    new names, all on one state.
    """

    def __init__(self, prosody: ProsodyServer | LocalEjabberd, webapp: WebAppStub, directory: Path, state: str,
                 settings: str = "") -> None:
        """
        @param settings: More lines of each process's TOML file.
        """
        self.prosody = prosody
        self.webapp = webapp
        self.directory = directory
        self.state = state
        self.settings = settings
        self.started: list[Rosteradmin] = []

    def start(self) -> Rosteradmin:
        """
        A new process, named C{rosteradmin0}, C{rosteradmin1}... in its log's
        name and in its database sessions' C{application_name} (what the
        state's L{Audit} records as each write's writer).
        """
        name = f"rosteradmin{len(self.started)}"
        url = f"{self.state}{'&' if '?' in self.state else '?'}application_name={name}"
        process = Rosteradmin(self.prosody, self.webapp, self.directory,  # type: ignore[arg-type]  # either server
                              name, url, self.settings)  # type: ignore[arg-type]  # a URL where a path goes
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


def seconds(delta: datetime.timedelta) -> str:
    return f"{delta.total_seconds():.3f}"


async def keepRefreshing(process: Rosteradmin, webapp: WebAppStub, until: list[bool]) -> int:
    """
    Change alice's roster (bob's name) and ask C{process} to refresh her,
    every 0.1 s until C{until} holds a value, so that a leader writes the
    state all along; how many refreshes were sent, once all are answered.
    """
    sent: list[defer.Deferred[object]] = []
    while not until:
        webapp.rosters["alice"] = {"bob@example.org": {"name": f"Bob {len(sent)}"}}
        sent.append(process.refresh(["alice"]).addCallback(lambda r: r.content()).addErrback(lambda _: None))
        await RunningService.sleep(0.1)
    await defer.gatherResults(sent)
    return len(sent)


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
    its database session terminated while its stream lives (and it
    writes the state, refreshing alice every 0.1 s), it steps down and
    the other leads: the old leader's last write precedes both the
    moment the new one could lead (a takeover after it took the lock)
    and the new one's first write, and the state's holder row is the new
    one's.  Prosody never sees a second connection.
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

    # The partition, while the leader writes the state: every write is
    # audited with its writer, and the lock watched.
    audit = Audit(pair.state)
    until: list[bool] = []
    refreshing = defer.ensureDeferred(keepRefreshing(leader, webapp, until))
    await RunningService.sleep(1)
    oldName, newName = leader.log.stem, standby.log.stem
    watching = threads.deferToThread(watchLock, pair.state, newName)
    await RunningService.sleep(0.1)
    assert terminateLeaderSession(pair.state) == 1
    terminatedAt = time.monotonic()
    partition = await waitForRole(standby, "leader") - terminatedAt
    lockFree, lockTaken = await watching
    terms += 1
    await waitForRole(leader, "standby")
    await RunningService.sleep(1)
    until.append(True)
    refreshes = await refreshing
    assert "leadership lost" in leader.output()
    writes = audit.writes()
    old = [at for writer, at, _, _ in writes if writer == oldName]
    new = [at for writer, at, _, _ in writes if writer == newName]
    fenced = leader.output().count("another process holds the state now")
    holder = audit.holder()
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
          f"component handshakes {log.count(AUTHENTICATED)}, at most {mostComponentConnections(log)} "
          f"component connection(s) at once")
    print(f"partition, {refreshes} refreshes sent to the old leader every 0.1 s: it wrote {len(old)} rows, "
          f"the last {seconds(old[-1] - lockTaken)} s after the other took the lock "
          f"(taken within {seconds(lockTaken - lockFree)} s) and {seconds(min(new) - old[-1])} s before "
          f"the new leader's first of {len(new)} writes; its writes refused by the fence: {fenced}; "
          f"the state's holder: {holder}")
    assert max(kills) < TAKEOVER_BOUND and handover < TAKEOVER_BOUND and partition < TAKEOVER_BOUND
    assert SECOND not in log
    assert mostComponentConnections(log) == 1
    # The old leader was writing when cut off, and wrote nothing once the
    # new one could lead (a takeover after the lock), nor once it wrote:
    # never two writers at once.  Its session's writes are all audited:
    # any other writer would show.
    assert old and new and {writer for writer, _, _, _ in writes} == {oldName, newName}
    assert old[-1] < lockFree + datetime.timedelta(seconds=Timings().takeover)
    assert old[-1] < new[0]
    assert f" pid {standby.process.pid} " in holder
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
