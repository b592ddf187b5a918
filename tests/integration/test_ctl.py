"""
rosteradmin-ctl, run as a process against a running service.
"""

from __future__ import annotations

import sys
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.utils import getProcessOutputAndValue

from tests.integration.service import KICK_AUTHORIZATION, RunningService


async def ctl(*args: str) -> tuple[int, str, str]:
    out, err, code = await getProcessOutputAndValue(sys.executable, ["-m", "rosteradmin.ctl", *args])
    print(f"$ rosteradmin-ctl {' '.join(args)}\n{out.decode()}{err.decode()}[exit {code}]")
    return code, out.decode(), err.decode()


@pytest.fixture
def rosters() -> dict[str, Any]:
    return {"alice": {"bob@example.org": {"name": "Bob"}}}


@pytest_twisted.ensureDeferred
async def test_ctlSession(webapp: Any, service: RunningService, clients: Any) -> None:
    """
    health, refresh and kick report their outcome and exit 0 on success,
    1 when the service refuses, 2 on bad usage and 3 when unreachable.
    """
    url = ["--url", service.baseURL]
    code, out, _ = await ctl(*url, "health")
    assert code == 0 and out.startswith("connected; ")

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
