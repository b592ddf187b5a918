"""
Tests for what /healthz says about wedged work, refused and parked users.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.logger import capturedLogs

from rosteradmin.api import HealthResource
from rosteradmin.fullsync import FullSync
from rosteradmin.slots import PrioritySlots
from rosteradmin.snapshot import Snapshots
from rosteradmin.web import Drain
from tests.helpers import PERMISSIONS_2, ComponentOnWire, WebApp
from tests.test_component import envelope, ownRosterSet, serverAnswers


def test_stalledOnlyWithWorkWaitingAndNoProgress() -> None:
    """
    A queue is stalled when work waits and nothing started or finished for
    the bound; running work alone is not stalled.
    """
    now = [0.0]
    slots = PrioritySlots(1, now=lambda: now[0])
    slots.run("a", False, Deferred)
    now[0] = 100.0
    assert slots.stalled(10) is None
    slots.run("b", False, lambda: None)
    assert slots.stalled(10) is not None and "1 running, 1 waiting" in (slots.stalled(10) or "")


def health(wire: ComponentOnWire) -> tuple[int, dict[str, object]]:
    fullSync = FullSync(wire.backend, None, wire.clock, False, 60)
    resource = HealthResource(Drain(), Snapshots(wire.backend.snapshot, wire.component.snapshot, fullSync.snapshot,
                                                 Counter()))
    result: tuple[int, dict[str, object]] = ensureDeferred(resource._get(None)).result
    return result


def test_healthz503WhenPrivilegedRequestsAreWedged() -> None:
    """
    Every privileged slot is held by work that never finishes (every
    request has a timeout, so only a bug gets here: a leaked slot) and more
    waits: once nothing moved for twice the iq timeout, /healthz is 503
    "stuck" with the reason; when the work finishes, it is 200 again.
    """
    wire = ComponentOnWire(WebApp())
    wire.handshake(PERMISSIONS_2)
    slots = wire.component.privileges._sync
    held: list[Deferred[None]] = []
    for n in range(slots.limit + 5):
        slots.run(f"u{n}", True, lambda: held.append(Deferred()) or held[-1])
    assert health(wire)[0] == 200
    wire.clock.advance(2 * wire.config.iq_timeout + 1.5)
    code, body = health(wire)
    assert code == 503 and body["status"] == "stuck" and "privileged roster requests" in str(body["stuck"])
    while held:
        held.pop(0).callback(None)
    assert health(wire)[0] == 200


def test_healthzListsRefusedUsers() -> None:
    """
    A user whose roster is over the stanza limit is counted and named, with
    why; the service is still healthy.
    """
    huge = {"bob@example.org": {"groups": [f"g{n}" for n in range(40_000)]}}
    wire = ComponentOnWire(WebApp({"alice": huge}))
    wire.handshake(PERMISSIONS_2)
    with capturedLogs():
        wire.backend.refresh(["alice"])
        wire.answerRequests(serverAnswers())
    code, body = health(wire)
    assert code == 200 and body["refused_users"] == 1 and "cannot be stored" in body["refused"]["alice"]


DELEGATION_2 = (f"<message from='example.org' to='roster.example.org'><delegation xmlns='urn:xmpp:delegation:2'>"
                f"<delegated namespace='jabber:iq:roster'/></delegation></message>")


def test_healthzSaysWhenDelegationNeverArrives() -> None:
    """
    The server grants privileges but delegates nothing (ejabberd 24.12
    with mod_privilege loaded): once the iq timeout has passed since the
    handshake, /healthz is 200 "degraded" with a delegation_error naming
    the namespace; with the delegation, "ok" and no error.
    """
    wire = ComponentOnWire(WebApp())
    wire.handshake(PERMISSIONS_2)
    assert health(wire)[1]["status"] == "ok"
    with capturedLogs():
        wire.clock.advance(wire.config.iq_timeout)
    code, body = health(wire)
    assert (code, body["status"]) == (200, "degraded")
    assert "jabber:iq:roster" in str(body["delegation_error"]) and body["roster_sync_error"] is None

    delegated = ComponentOnWire(WebApp())
    delegated.handshake(PERMISSIONS_2 + DELEGATION_2)
    delegated.clock.advance(delegated.config.iq_timeout)
    code, body = health(delegated)
    assert (code, body["status"], body["delegation_error"]) == (200, "ok", None)


def test_healthzSaysWhetherDelegationIsInPlace() -> None:
    """
    /healthz's C{delegated} is false from the handshake until the server's
    delegation arrives (no error yet: it may still come), true once it
    has, and false again on a new connection until it arrives again.
    """
    wire = ComponentOnWire(WebApp())
    wire.handshake(PERMISSIONS_2)
    code, body = health(wire)
    assert (code, body["status"], body["delegated"], body["delegation_error"]) == (200, "ok", False, None)
    wire.receive(DELEGATION_2)
    assert health(wire)[1]["delegated"] is True
    with capturedLogs():
        wire.reconnect(PERMISSIONS_2)
    assert health(wire)[1]["delegated"] is False
    wire.receive(DELEGATION_2)
    assert health(wire)[1]["delegated"] is True


def test_healthzDegradedWhenWritesCannotWork() -> None:
    """
    The server delegates our own roster writes back to us (ejabberd
    #1737): 200 "degraded", and roster_sync_error says why.
    """
    wire = ComponentOnWire(WebApp())
    wire.handshake(PERMISSIONS_2 + DELEGATION_2)
    with capturedLogs():
        wire.receive(envelope(ownRosterSet(), version=1))
    code, body = health(wire)
    assert (code, body["status"]) == (200, "degraded") and "mod_delegation" in str(body["roster_sync_error"])


def test_rosterAccessTooSmallIsSaid() -> None:
    """
    The server grants roster access 'get' only: writes cannot work, so
    /healthz is "degraded" and says what to set, and a refresh reports the
    user as failed with that reason instead of success.
    """
    wire = ComponentOnWire(WebApp({"alice": {"bob@example.org": {"name": "Bob"}}}))
    wire.handshake(PERMISSIONS_2.replace("type='both'", "type='get'", 1) + DELEGATION_2)
    code, body = health(wire)
    assert (code, body["status"]) == (200, "degraded")
    assert "'get'" in str(body["roster_sync_error"]) and "privileged_entities" in str(body["roster_sync_error"])
    with capturedLogs():
        refresh = wire.backend.refresh(["alice"])
    assert refresh.called and refresh.result.errors == 1
    assert "'get'" in refresh.result.failures["alice"]


@dataclass
class Standing:
    """
    A role as the leadership shows it to the snapshots.
    """

    role: str
    since: float
    problem: str | None = None


def test_healthzSaysTheRole() -> None:
    """
    A single instance leads since it started; a standby (another instance
    sharing the state leads) is healthy though not connected, unless it
    cannot reach the state's database, and says since when it stands by.
    """
    wire = ComponentOnWire()
    code, body = health(wire)
    assert body["role"] == "leader" and isinstance(body["since"], str)
    fullSync = FullSync(wire.backend, None, wire.clock, False, 60)
    standing = Standing("standby", 1796625600.0)

    def standby() -> tuple[int, dict[str, object]]:
        resource = HealthResource(Drain(), Snapshots(wire.backend.snapshot, wire.component.snapshot,
                                                     fullSync.snapshot, Counter(), role=standing))
        result: tuple[int, dict[str, object]] = ensureDeferred(resource._get(None)).result
        return result

    code, body = standby()
    assert (code, body["status"], body["role"], body["since"], body["connected"], body["leadership_error"]) == (
        200, "standby", "standby", "2026-12-07T06:40:00Z", False, None)
    standing.problem = "connection refused"
    code, body = standby()
    assert (code, body["status"], body["leadership_error"]) == (503, "unavailable", "connection refused")


def test_metricsSayTheRole() -> None:
    """
    C{/metrics} shows C{rosteradmin_leader} (1 or 0) and since when.
    """
    from prometheus_client import generate_latest

    from rosteradmin.metrics import FetchLatency, Metrics

    wire = ComponentOnWire()
    fullSync = FullSync(wire.backend, None, wire.clock, False, 60)
    for standing, leader in ((Standing("leader", 1796625600.0), 1.0), (Standing("standby", 1796625601.0), 0.0)):
        snapshots = Snapshots(wire.backend.snapshot, wire.component.snapshot, fullSync.snapshot, Counter(),
                              role=standing)
        text = generate_latest(Metrics(snapshots, FetchLatency()).registry).decode()
        values = dict(line.split(" ", 1) for line in text.splitlines() if line.startswith("rosteradmin_role_since")
                      or line.startswith("rosteradmin_leader "))
        assert float(values["rosteradmin_leader"]) == leader
        assert float(values["rosteradmin_role_since_seconds"]) == standing.since
