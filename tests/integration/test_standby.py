"""
Requests reaching an instance that does not lead, end to end: real
C{twistd} processes on one private PostgreSQL database, against a real
Prosody.  The test holds the leadership lock at first, as a leader
would (L{rosteradmin.leadership}), so that the instance stands by with
nothing applying what it records; let go, the instance leads.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import psycopg
import pytest_twisted
import treq
from twisted.internet import reactor, threads
from twisted.web.client import HTTPConnectionPool

from rosteradmin.statepg import LEADER_LOCK
from tests.integration.service import RunningService
from tests.integration.test_rosters import items
from tests.integration.test_twistd import startTwistd, stop
from tests.postgresql import PostgreSQLServer


async def call(method: str, url: str, body: Any = None) -> tuple[int, Any, str | None]:
    """
    One API request: its status, JSON body and C{Location}.
    """
    data = json.dumps(body).encode() if body is not None else None
    response = await treq.request(method, url, data=data, pool=HTTPConnectionPool(reactor, persistent=False))
    location = response.headers.getRawHeaders("location")
    return response.code, await response.json(), location[0] if location else None


async def outcome(base: str, location: str, timeout: float = 20.0) -> tuple[int, Any]:
    """
    Look at a recorded request until the leader has applied it (a sync's
    reply is a 202 too, saying how the pass goes).
    """
    deadline = reactor.seconds() + timeout
    while True:
        code, body, _ = await call("GET", base + location)
        if code != 202 or body["status"] != "accepted":
            return code, body
        assert reactor.seconds() < deadline, f"{location} not applied within {timeout} s: {body}"
        await RunningService.sleep(0.2)


@pytest_twisted.ensureDeferred
async def test_recordedWhileStandingByAppliedOnceLeading(prosody: Any, webapp: Any, clients: Any, tmp_path: Path,
                                                        postgresql: PostgreSQLServer) -> None:
    """
    A refresh and a sync reaching a standby are answered 202 with a
    Location once recorded; the standby, once it leads, applies them,
    one of them after it died (SIGKILL) while applying it: the next
    leader applies it again, and the Location shows the leader's replies;
    the server holds the refreshed roster.
    """
    url = postgresql.newDatabase()
    settings = f'state = "{url}"'
    webapp.rosters["alice"] = {"bob@example.org": {"name": "Bob"}}
    # Another leader, as far as the instance can tell.
    lock = await threads.deferToThread(psycopg.connect, url, autocommit=True)
    lock.execute("SELECT pg_advisory_lock(%s)", (LEADER_LOCK,))
    dying, base = await startTwistd(prosody, webapp, tmp_path, settings)
    try:
        webapp.rosters["alice"]["carol@example.org"] = {"name": "Carol"}
        code, refresh, location = await call("POST", base + "/roster_admin/refresh", ["alice"])
        assert code == 202 and refresh["status"] == "accepted" and location == refresh["location"]
        code, sync, _ = await call("POST", base + "/roster_admin/sync", ["alice"])
        assert code == 202 and sync["kind"] == "sync"
        code, looked, _ = await call("GET", base + location)
        assert code == 202 and looked["attempts"] == 0
        assert webapp.requests["alice"] == 0  # a standby applies nothing
    finally:
        # The instance leads, and dies while fetching the refreshed roster.
        webapp.holdAfter(0)
        lock.close()
    try:
        await RunningService.waitUntil(lambda: webapp.requests["alice"] == 1, 10,
                                       "the first leader applies the refresh")
    finally:
        dying.send_signal(signal.SIGKILL)
        await threads.deferToThread(dying.communicate, None, 30)
        webapp.release()

    leader, leaderBase = await startTwistd(prosody, webapp, tmp_path, settings)
    try:
        code, applied = await outcome(leaderBase, location)
        assert (code, applied) == (200, {"status": "ok", "message": "roster update complete", "updated": 1,
                                         "errors": 0, "failures": {}})
        code, joined = await outcome(leaderBase, sync["location"])
        assert code == 202 and joined["status"] in ("started", "joined") and joined["sync"]["kind"] == "users"
        alice = await clients("alice")
        assert set(items(await alice.rosterGet())) == {"bob@example.org", "carol@example.org"}
    finally:
        output = await threads.deferToThread(stop, leader)
    assert "requests claimed by an earlier leader and not finished: applying them again" in output
    with psycopg.connect(url) as db:
        attempts = db.execute("SELECT attempts FROM requests WHERE id = %s", (refresh["request"],)).fetchone()
    assert attempts == (2,)
