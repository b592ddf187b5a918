"""
rosteradmin-ctl, run as a process against a running service.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.utils import getProcessOutputAndValue
from twisted.web.server import Site

from rosteradmin_demo.devwebapp import RosterFileResource
from tests.integration.harness import ProsodyServer, WebAppStub
from tests.integration.service import KICK_AUTHORIZATION, RunningService

#: The users the web app lists: every account of the test Prosody.
USERS = ["alice", "bob", "carol", "dave", "erin"]


async def ctl(*args: str) -> tuple[int, str, str]:
    out, err, code = await getProcessOutputAndValue(sys.executable, ["-m", "rosteradmin.ctl", *args])
    print(f"$ rosteradmin-ctl {' '.join(args)}\n{out.decode()}{err.decode()}[exit {code}]")
    return code, out.decode(), err.decode()


@pytest.fixture
def rosters() -> dict[str, Any]:
    return {"alice": {"bob@example.org": {"name": "Bob"}}, "carol": {"alice@example.org": {"name": "Alice"}}}


@pytest_twisted.async_yield_fixture
async def usersURL(tmp_path: Path) -> AsyncIterator[str]:
    """
    The users list of the sample web app, two usernames a page, so that a
    full sync follows C{Link: rel="next"} twice.
    """
    path = tmp_path / "webapp-users.json"
    path.write_text(json.dumps({user: {} for user in USERS}))
    port = reactor.listenTCP(0, Site(RosterFileResource(path, pageSize=2)), interface="127.0.0.1")
    yield f"http://127.0.0.1:{port.getHost().port}/users"
    await port.stopListening()


@pytest.fixture
def serviceArgs(usersURL: str) -> list[str]:
    # No sync at start: each test starts the ones it looks at.
    return ["--users-url", usersURL, "--no-start-sync"]


@pytest_twisted.ensureDeferred
async def test_ctlSession(webapp: Any, service: RunningService, clients: Any) -> None:
    """
    health, refresh and kick report their outcome and exit 0 on success,
    1 when the service refuses, 2 on bad usage and 3 when unreachable.
    """
    url = ["--url", service.baseURL]
    code, out, _ = await ctl(*url, "health")
    assert code == 0 and out.startswith("leader since ") and "; connected; " in out

    code, out, _ = await ctl(*url, "refresh", "alice", "bob")
    assert code == 0 and out.strip() == "roster update complete: 2 updated, 0 errors"

    webapp.failures["dave"] = (503, b"maintenance")
    code, _, err = await ctl(*url, "refresh", "dave")
    assert code == 1 and "HTTP 500" in err and "dave: " in err

    alice = await clients("alice")
    await alice.joinRoom("room@conference.example.org", "Alice")
    code, out, _ = await ctl(*url, "--authorization", KICK_AUTHORIZATION,
                             "kick", "room@conference.example.org", "Alice", "--reason", "bye")
    assert code == 0 and out.strip() == "Alice kicked from room@conference.example.org"

    code, _, err = await ctl(*url, "--authorization", KICK_AUTHORIZATION, "kick", "nosuch@conference.example.org", "X")
    assert code == 1 and "HTTP 404" in err and "Room or nickname not found" in err

    code, _, err = await ctl(*url, "kick", "room@conference.example.org", "Alice")
    assert code == 1 and "HTTP 401" in err

    code, _, err = await ctl(*url, "frobnicate")
    assert code == 2

    code, _, err = await ctl("--url", "http://127.0.0.1:1", "health")
    assert code == 3 and "cannot reach" in err


@pytest_twisted.ensureDeferred
async def test_ctlSync(webapp: WebAppStub, service: RunningService, prosody: ProsodyServer) -> None:
    """
    sync of named users, and of every user of the web app's paged list,
    writes their rosters into Prosody and exits 0; a user the web app
    fails makes the pass exit 1 naming it; a sync of users asked for while
    a full sync runs joins it; a running sync can be cancelled.
    """
    url = ["--url", service.baseURL]
    code, out, err = await ctl(*url, "sync", "alice", "bob", "--interval", "0.1")
    assert code == 0 and re.fullmatch(r"sync done: 2 of 2 users synced in \d+\.\d s\n", out), (out, err)
    assert "bob@example.org" in prosody.storedRoster("alice")
    assert prosody.storedRoster("carol") == ""

    code, out, err = await ctl(*url, "--json", "sync", "--all", "--interval", "0.1")
    assert code == 0, err
    document = json.loads(out)
    assert document["status"] == "idle"
    assert {k: document["sync"][k] for k in ("kind", "running", "listed", "listing_done", "synced", "failed")} == {
        "kind": "full", "running": False, "listed": 5, "listing_done": True, "synced": 5, "failed": 0}
    assert "alice@example.org" in prosody.storedRoster("carol")

    webapp.failures["dave"] = (503, b"maintenance")
    code, out, err = await ctl(*url, "sync", "--all", "--interval", "0.1")
    assert (code, out) == (1, "")
    assert "full sync done with errors" in err and "4 of 5 users synced, 1 failed; errors:\n  dave: " in err

    # alice's roster takes seconds: the full sync still runs when the
    # sync of bob is asked for, which joins it and follows it to its end
    # (bob counted twice: named, and listed).
    del webapp.failures["dave"]
    webapp.delays["alice"] = 2.5
    code, out, _ = await ctl(*url, "sync", "--all", "--no-wait")
    assert code == 0 and out.startswith("full sync started; ")
    code, out, err = await ctl(*url, "sync", "bob", "--interval", "0.1")
    assert "a full sync is running; these users joined it (synced now, as part of it)" in err
    assert code == 0 and out.startswith("full sync done: 6 of 6 users synced in "), err

    # Cancelled while alice's fetch holds its first batch: that batch
    # finishes, and the pass ends there.
    code, out, _ = await ctl(*url, "sync", "--all", "--no-wait")
    assert code == 0 and out.startswith("full sync started; ")
    code, out, err = await ctl(*url, "--json", "sync", "--cancel", "--interval", "0.1")
    assert code == 0, err
    document = json.loads(out)["sync"]
    assert (document["running"], document["error"]) == (False, "cancelled (DELETE /roster_admin/sync)")
    code, out, err = await ctl(*url, "sync", "--cancel")
    assert (code, err) == (1, "rosteradmin-ctl: sync failed: HTTP 409: No sync is running\n")
