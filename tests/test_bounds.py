"""
What the service keeps of each user stays within bounds, whatever names a
refresh is given, and /healthz says when a bound is past or saturated.
"""

from __future__ import annotations

import pytest
from twisted.logger import LogLevel, capturedLogs, formatEvent

from rosteradmin import refusals as refusalsModule
from rosteradmin.cache import USER_CHARGE
from tests.helpers import PERMISSIONS_2, ComponentOnWire, WebApp, makeConfig
from tests.test_component import StoringServer
from tests.test_health import health


def wired(webApp: WebApp, maxContacts: int) -> ComponentOnWire:
    wire = ComponentOnWire(webApp, makeConfig(cache_max_contacts=maxContacts))
    wire.handshake(PERMISSIONS_2)
    return wire


def test_refreshOfUnknownNamesStaysWithinTheBound() -> None:
    """
    The web app answers C{{}} for names it does not know: a refresh of 100
    of them caches what the bound allows (each user is charged
    USER_CHARGE contacts), and the backend forgets what it verified of the
    users evicted.
    """
    wire = wired(WebApp(), 10 * USER_CHARGE)
    server = StoringServer()
    d = wire.backend.refresh([f"nobody{n}" for n in range(100)])
    wire.answerRequests(server)
    assert d.result.updated == 100
    cache = wire.backend.cache
    assert len(cache) == 10 and cache.evictions == 90 and cache.charge == 10 * USER_CHARGE
    assert sorted(wire.backend.promises._verified) == sorted(cache)
    code, body = health(wire)
    assert (code, body["status"], body["saturated"]) == (200, "ok", [])


def test_onlineUsersOverTheBoundMakeHealthzDegraded() -> None:
    """
    Online users' rosters stay cached over the bound; /healthz then says
    "degraded", and why.  Once they are gone offline and the cache is
    back within its bound, it is "ok" again.
    """
    rosters = {u: {f"c{n}@example.org": {} for n in range(5)} for u in ("alice", "bob")}
    wire = wired(WebApp(rosters), 5 + USER_CHARGE)
    server = StoringServer()
    for user in ("alice", "bob"):
        wire.receive(f"<presence from='{user}@example.org/phone'/>")
        wire.answerRequests(server)
    assert sorted(wire.backend.cache) == ["alice", "bob"]
    code, body = health(wire)
    assert (code, body["status"]) == (200, "degraded")
    [why] = body["saturated"]
    assert "over its bound" in why and "online users" in why and "--cache-max-contacts 8" in why
    for user in ("alice", "bob"):
        wire.receive(f"<presence from='{user}@example.org/phone' type='unavailable'/>")
    d = wire.backend.refresh(["carol"])
    wire.answerRequests(server)
    assert d.called and list(wire.backend.cache) == ["carol"]
    assert health(wire)[1]["status"] == "ok"


def test_refusalsAreBounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    A refresh of many names the web app serves oversized rosters for keeps
    at most MAX_REFUSED refusals, forgetting the oldest, and /healthz says
    "degraded" while the bound is reached.
    """
    monkeypatch.setattr(refusalsModule, "MAX_REFUSED", 3)
    huge = {"bob@example.org": {"groups": [f"g{n}" for n in range(40_000)]}}
    names = [f"big{n}" for n in range(10)]
    wire = wired(WebApp({name: huge for name in names}), 1000)
    with capturedLogs():
        d = wire.backend.refresh(names)
        wire.answerRequests(StoringServer())
    assert d.result.errors == 10
    assert list(wire.backend.snapshot().refused) == names[-3:] and wire.backend.refusals.forgotten == 7
    code, body = health(wire)
    assert (code, body["status"]) == (200, "degraded") and body["refused_users"] == 3
    assert any("refused users" in why and "7 forgotten" in why for why in body["saturated"])


def aliceInTwoGroups() -> tuple[ComponentOnWire, WebApp, StoringServer]:
    """
    alice online, with bob in two groups and carol in two, written into
    the server.
    """
    webApp = WebApp({"alice": {"bob@example.org": {"name": "Bob", "groups": ["Work", "Friends"]},
                               "carol@example.org": {"name": "Carol", "groups": ["Chess", "Work"]}}})
    wire = wired(webApp, 1000)
    server = StoringServer()
    wire.receive("<presence from='alice@example.org/phone'/>")
    wire.answerRequests(server)
    return wire, webApp, server


def test_webAppGroupOrderIsNoChange() -> None:
    """
    The web app lists a contact's two groups in the other order: the same
    roster and version, so no server read, nothing pushed, no drift
    counted or logged.
    """
    wire, webApp, server = aliceInTwoGroups()
    before = wire.backend.cache.peek("alice")
    assert before is not None
    webApp.rosters["alice"]["bob@example.org"]["groups"] = ["Friends", "Work"]
    with capturedLogs() as events:
        d = wire.backend.refresh(["alice"])
        sent = wire.answerRequests(server)
    after = wire.backend.cache.peek("alice")
    assert d.result.updated == 1 and sent == []
    assert after == before and after is not None and after.version == before.version
    assert sum(wire.backend.snapshot().driftRepaired.values()) == 0
    assert not [formatEvent(e) for e in events if e["log_level"] == LogLevel.warn]


def test_renameWithGroupsReorderedIsNoDrift() -> None:
    """
    The web app renames a contact in two groups, and lists its groups in
    another order as it does: the rename is written into the server, and
    nothing is counted or logged as drift.
    """
    wire, webApp, server = aliceInTwoGroups()
    webApp.rosters["alice"]["carol@example.org"] = {"name": "Carol K", "groups": ["Work", "Chess"]}
    with capturedLogs() as events:
        d = wire.backend.refresh(["alice"])
        wire.answerRequests(server)
    assert d.result.updated == 1
    assert "name='Carol K'" in server.items["alice@example.org"]["carol@example.org"]
    assert sum(wire.backend.snapshot().driftRepaired.values()) == 0
    warnings = [formatEvent(e) for e in events if e["log_level"] == LogLevel.warn]
    assert not [w for w in warnings if "drift" in w], warnings


def test_driftCountsOnlyWhatTheServerChanged() -> None:
    """
    The server gained a contact behind our back while the web app renamed
    another: only the server's change is counted as drift (against the
    roster we wrote, still cached), though both are written.
    """
    webApp = WebApp({"alice": {"bob@example.org": {"name": "Bob"}, "carol@example.org": {"name": "Carol"}}})
    wire = wired(webApp, 1000)
    server = StoringServer()
    wire.receive("<presence from='alice@example.org/phone'/>")
    wire.answerRequests(server)
    server.items["alice@example.org"]["eve@example.org"] = (
        "<item xmlns='jabber:iq:roster' jid='eve@example.org' subscription='both'/>")
    webApp.rosters["alice"]["carol@example.org"]["name"] = "Carol K"
    with capturedLogs():
        d = wire.backend.refresh(["alice"])
        wire.answerRequests(server)
    assert d.result.updated == 1
    assert sorted(server.items["alice@example.org"]) == ["bob@example.org", "carol@example.org"]
    assert "name='Carol K'" in server.items["alice@example.org"]["carol@example.org"]
    assert dict(wire.backend.snapshot().driftRepaired) == {"extra": 1}
