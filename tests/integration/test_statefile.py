# -*- test-case-name: tests.integration.test_statefile -*-
"""
The C{--state} file under a real C{twistd -n rosteradmin} and Prosody:
another process holding its lock must not stall the service
or lose a refresh's users, and a file SQLite cannot read must not keep the
service down.
"""

from __future__ import annotations

import json
import random
import signal
import sqlite3
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import treq
from twisted.internet import defer, reactor
from twisted.web.client import HTTPConnectionPool

from rosteradmin.startup import EX_CONFIG
from rosteradmin.statestorage import SCHEMA_VERSION
from tests.integration.harness import PASSWORD
from tests.integration.service import RunningService
from tests.integration.test_rosters import items
from tests.integration.test_twistd import REQUIRED, startTwistd, twistd

pytestmark = pytest.mark.integration

#: Users of the refresh made while the lock is held.
REFRESHED = [f"u{n}" for n in range(100)]

#: Users who log in while the lock is held: their first login writes
#: their roster into the server, and its version into the state.
LOGINS = ("alice", "bob", "carol")

#: Seconds the lock is held.
HELD = 8.0


class Output:
    """
    Everything a twistd process writes, read as it comes: a refresh of a
    hundred users logs more than a pipe holds, and a process blocked on a
    full pipe stalls its reactor.
    """

    def __init__(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        self.process = process
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self.lines.extend, args=(process.stdout,), daemon=True)
        self._reader.start()

    def stop(self) -> str:
        """
        SIGTERM, then check for a clean exit.

        @return: The output, which the caller checks for tracebacks (after
            reporting its measurements).
        """
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(30)
        self._reader.join(10)
        assert self.process.stdout is not None
        self.process.stdout.close()
        output = "".join(self.lines)
        print(output)
        assert self.process.returncode in (0, -signal.SIGTERM)
        return output


async def timedRequest(method: str, url: str, body: Any = None) -> tuple[int, Any, float]:
    """
    One request on a connection of its own.

    @return: The status, the JSON body and the seconds it took.
    """
    started = time.monotonic()
    response = await treq.request(method, url, data=json.dumps(body).encode() if body is not None else None,
                                  pool=HTTPConnectionPool(reactor, persistent=False), timeout=30)
    text = await response.text()
    return response.code, json.loads(text), time.monotonic() - started


async def pollHealth(base: str, until: defer.Deferred[None]) -> list[tuple[float, int, Any]]:
    """
    Ask /healthz every 20 ms until C{until} fires: its slowest answers
    bound how long the reactor of the service stalled.

    @return: Each answer's seconds, status and body.
    """
    answers = []
    while not until.called:
        code, body, seconds = await timedRequest("GET", base + "/healthz")
        answers.append((seconds, code, body))
        await RunningService.sleep(0.02)
    return answers


@pytest_twisted.ensureDeferred
async def test_lockedStateFileStallsNothingAndLosesNoUser(prosody: Any, webapp: Any, clients: Any,
                                                         tmp_path: Path) -> None:
    """
    While another process holds the state file's write lock (C{BEGIN
    IMMEDIATE}) for 8 s, rosteradmin under twistd answers /healthz at once
    with 200 "degraded" and the reason, logs three users in promptly, and
    answers a refresh of 100 users 200 with all of them updated and stored
    in Prosody.  Once the lock is released, /healthz is "ok" again and the
    file holds every user's server version, none left pending.  (On
    c8552a8 each state write waited 5 s for the lock and then failed.)
    """
    path = tmp_path / "state.sqlite"
    for user in REFRESHED:
        prosody.addAccount(user, PASSWORD)
        webapp.rosters[user] = {"alice@example.org": {"name": "Alice"}}
    for user in LOGINS:
        webapp.rosters[user] = {"dave@example.org": {"name": "Dave"}}
    process, base = await startTwistd(prosody, webapp, tmp_path, f'state = "{path}"')
    output = Output(process)
    try:
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        released: defer.Deferred[None] = defer.Deferred()
        polling = defer.ensureDeferred(pollHealth(base, released))
        try:
            await RunningService.sleep(0.5)

            async def login(user: str) -> tuple[float, object]:
                started = time.monotonic()
                client = await clients(user)
                try:
                    result = await client.rosterGet(ver="", timeout=20)
                except TimeoutError as e:
                    return time.monotonic() - started, str(e)
                return time.monotonic() - started, items(result) if result["type"] == "result" else result.toXml()

            refreshing = defer.ensureDeferred(timedRequest("POST", base + "/roster_admin/refresh", REFRESHED))
            logins = await defer.gatherResults([defer.ensureDeferred(login(user)) for user in LOGINS])
            refreshCode, refreshed, refreshSeconds = await refreshing
            await RunningService.sleep(max(0.0, HELD - 0.5 - refreshSeconds))
        finally:
            holder.rollback()
            releasedAt = time.monotonic()
            released.callback(None)
        during = await polling
        recovered = None
        for _ in range(100):
            code, health, _ = await timedRequest("GET", base + "/healthz")
            if health["status"] == "ok":
                recovered = time.monotonic() - releasedAt
                break
            await RunningService.sleep(0.05)
    finally:
        log = output.stop()

    slowest = max(during)
    print(f"\nlock held {HELD:g} s: {len(during)} /healthz answers, slowest {slowest[0] * 1000:.0f} ms, "
          f"median {sorted(d[0] for d in during)[len(during) // 2] * 1000:.1f} ms; "
          f"logins (connect to roster) {', '.join(f'{s * 1000:.0f} ms' for s, _ in logins)}; "
          f"refresh of 100 users {refreshSeconds:.2f} s: {refreshCode} {refreshed['message']}; "
          f"back to ok {recovered} s after the release")
    print(f"/healthz during the lock: {json.dumps(during[-1][2])}")
    assert slowest[0] < 1.0, f"/healthz took {slowest[0]:.2f} s while the lock was held"
    assert [contacts for _, contacts in logins] == [{"dave@example.org": ("Dave", "both", [])}] * len(LOGINS)
    assert max(seconds for seconds, _ in logins) < 3.0, f"logins took {logins} while the lock was held"
    assert (refreshCode, refreshed["updated"], refreshed["failures"]) == (200, 100, {}), refreshed
    degraded = [body for _, code, body in during if body["status"] == "degraded"]
    assert degraded and all(code == 200 for _, code, _ in during)
    assert "database is locked" in degraded[-1]["state_error"]
    assert recovered is not None and recovered < 3.0
    assert all("alice@example.org" in prosody.storedRoster(user) for user in REFRESHED)
    state = sqlite3.connect(path)
    known = {row[0] for row in state.execute("SELECT username FROM server_rosters")}
    pending = state.execute("SELECT count(*) FROM pending").fetchone()
    state.close()
    assert known >= {*REFRESHED, *LOGINS} and pending == (0,)
    assert not Path(f"{path}.unsaved").exists()
    assert "cannot write state file" in log and "written again" in log and "Traceback" not in log


@pytest_twisted.ensureDeferred
async def test_unreadableStateFileMovedAside(prosody: Any, webapp: Any, clients: Any, tmp_path: Path) -> None:
    """
    twistd started on a state file of random bytes moves it aside (logged
    with both names), starts a new one, and serves: the file is disposable,
    and on c8552a8 this exited 78, which the systemd unit does not restart.
    """
    path = tmp_path / "state.sqlite"
    garbage = random.Random(22).randbytes(64 * 1024)
    path.write_bytes(garbage)
    webapp.rosters["alice"] = {"bob@example.org": {"name": "Bob"}}
    process, base = await startTwistd(prosody, webapp, tmp_path, f'state = "{path}"')
    output = Output(process)
    try:
        alice = await clients("alice")
        assert items(await alice.rosterGet()) == {"bob@example.org": ("Bob", "both", [])}
        code, health, _ = await timedRequest("GET", base + "/healthz")
    finally:
        log = output.stop()
    [aside] = tmp_path.glob("state.sqlite.unreadable-*")
    assert aside.read_bytes() == garbage and "Traceback" not in log
    assert (code, health["status"], health["state_error"]) == (200, "ok", None)
    assert f"state file {path} is unreadable (file is not a database): moved it to {aside}" in log
    state = sqlite3.connect(path)
    known = state.execute("SELECT username FROM server_rosters").fetchall()
    state.close()
    assert known == [("alice",)]


def test_otherSchemaStopsStartWithOneLine(tmp_path: Path) -> None:
    """
    A state file of another schema version (a newer release's) is kept
    as it is and stops start-up with one line and the configuration-error
    exit code (the unit does not restart it: only an operator can choose).
    """
    path = tmp_path / "state.sqlite"
    newer = SCHEMA_VERSION + 1
    db = sqlite3.connect(path)
    db.executescript("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
                     f"INSERT INTO meta VALUES ('schema', '{newer}');")
    db.commit()
    db.close()
    process = twistd(*REQUIRED, "--state", str(path))
    output, _ = process.communicate(timeout=30)
    assert (process.returncode, output.splitlines()) == (
        EX_CONFIG, [f"rosteradmin: --state: {path}: schema version {newer}, this rosteradmin reads {SCHEMA_VERSION}"])


def test_uncreatableStateFileStopsStartWithOneLine(tmp_path: Path) -> None:
    """
    A state file that cannot be created stops start-up with one line and
    the configuration-error exit code.
    """
    path = tmp_path / "missing" / "state.sqlite"
    process = twistd(*REQUIRED, "--state", str(path))
    output, _ = process.communicate(timeout=30)
    assert (process.returncode, output.splitlines()) == (
        EX_CONFIG, [f"rosteradmin: --state: {path}: unable to open database file"])
