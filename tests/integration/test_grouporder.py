"""
A contact's groups are a set: the web app listing them in another order,
and Prosody storing and answering them in its own, is no drift, on a real
Prosody.
"""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.web.client import HTTPConnectionPool
from twisted.words.xish import domish

from tests.integration.harness import ProsodyServer, WebAppStub
from tests.integration.service import RunningService
from tests.integration.test_http import call

#: Seconds between the online checks: each reads alice's stored roster
#: back (Prosody answers her contacts' groups in its own order).
CHECK_INTERVAL = 1.0


@pytest.fixture
def rosters() -> dict[str, dict[str, Any]]:
    return {"alice": {"bob@example.org": {"name": "Bob", "groups": ["Work", "Friends"]},
                      "carol@example.org": {"name": "Carol", "groups": ["Chess", "Work", "Family"]}}}


@pytest.fixture
def serviceArgs() -> list[str]:
    return ["--online-check-interval", str(CHECK_INTERVAL)]


def groups(reply: domish.Element) -> dict[str, tuple[str | None, frozenset[str]]]:
    """
    Each item of a roster result or push: its name and its groups, as a set.
    """
    return {item["jid"]: (item.getAttribute("name"), frozenset(str(g) for g in item.elements() if g.name == "group"))
            for item in reply.query.elements() if item.name == "item"}


async def driftLines(service: RunningService) -> list[str]:
    response = await treq.get(service.baseURL + "/metrics", pool=HTTPConnectionPool(reactor, persistent=False))
    text = await response.text()
    assert "rosteradmin_connected 1.0" in text
    return [line for line in text.splitlines() if line.startswith("rosteradmin_drift_repaired_total")]


@pytest_twisted.ensureDeferred
async def test_groupOrderOfTheWebAppIsNoDrift(xmppServer: ProsodyServer, webapp: WebAppStub, service: RunningService,
                                              clients: Any) -> None:
    """
    alice is online.  The web app lists bob's groups in another order, and
    renames carol while listing her three groups in another order: after a
    refresh and a few online checks (each reading back what Prosody
    stores), /metrics counts no drift, Prosody stores carol's new name,
    and alice's client, pushed the rename, holds the same groups as a
    client logging in afresh.
    """
    alice = await clients("alice")
    first = await alice.rosterGet(ver="")
    alice.sendPresence()
    await RunningService.waitUntil(lambda: "alice" in service.component.privileges.online, 10, "alice online")
    await RunningService.sleep(2 * CHECK_INTERVAL)
    assert await driftLines(service) == []
    pushesBefore = len(alice.pushes)

    webapp.rosters["alice"] = {"bob@example.org": {"name": "Bob", "groups": ["Friends", "Work"]},
                               "carol@example.org": {"name": "Carol K", "groups": ["Family", "Work", "Chess"]}}
    code, body = await call(service, "POST", "/roster_admin/refresh", ["alice"])
    assert (code, body["updated"]) == (200, 1)
    pushes = await alice.waitForPushes(pushesBefore + 1)
    await RunningService.sleep(3 * CHECK_INTERVAL)

    assert await driftLines(service) == []
    assert dict(service.backend.snapshot().driftRepaired) == {}
    assert "Carol K" in xmppServer.storedRoster("alice")
    pushed = [groups(p) for p in pushes[pushesBefore:]]
    assert pushed == [{"carol@example.org": ("Carol K", frozenset({"Chess", "Work", "Family"}))}]
    afresh = await (await clients("alice")).rosterGet(ver="")
    held = groups(first)
    held.update(pushed[0])
    assert held == groups(afresh) == {"bob@example.org": ("Bob", frozenset({"Work", "Friends"})),
                                      "carol@example.org": ("Carol K", frozenset({"Chess", "Work", "Family"}))}
