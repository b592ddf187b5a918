"""
Tests for the events to the web app: what users tried becomes events
(L{rosteradmin.attempts}) on the real component stream, and
L{rosteradmin.events.EventDelivery} sends the outbox
(L{rosteradmin.outbox}, on an SQLite state file) to a web app served by
StubTreq: signed, numbered transactions, retried with a capped backoff
under the same id, in order, bounded, and a problem once they wait too
long.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import pytest

from twisted.internet.task import Clock
from twisted.web.resource import Resource
from twisted.web.server import Request
from treq.testing import StubTreq

from rosteradmin.attempts import NS_SUBSCRIPTION
from rosteradmin.config import ConfigError, buildConfig, eventSecrets
from rosteradmin.events import EventDelivery, sign
from rosteradmin.outbox import Outbox
from rosteradmin.roster import NS_ROSTER, Contact, Roster
from rosteradmin.statefile import StateFile
from tests.docs import ROOT, codeBlocks
from tests.helpers import COMPONENT, DOMAIN, PERMISSIONS_2, ComponentOnWire, WebApp

class EventsApp(Resource):
    """
    The web app's events endpoint: answers each POST with the next status
    of C{answers} (then 200), keeping every request.
    """

    isLeaf = True

    def __init__(self, answers: list[int] | None = None) -> None:
        super().__init__()
        self.answers = list(answers or [])
        self.received: list[tuple[dict[str, str], bytes]] = []

    def render_POST(self, request: Request) -> bytes:
        headers = {name.decode().lower(): values[0].decode() for name, values in request.requestHeaders.getAllRawHeaders()}
        self.received.append((headers, request.content.read()))
        request.setResponseCode(self.answers.pop(0) if self.answers else 200)
        return b"{}"

    def transactions(self) -> list[tuple[int, list[Any]]]:
        """
        Each POST's transaction id and events' ids.
        """
        return [(json.loads(body)["txn_id"], [e["id"] for e in json.loads(body)["events"]])
                for _, body in self.received]


def delivery(tmp_path: Path, app: EventsApp, bound: int = 100, staleAfter: float = 300.0) -> tuple[
        EventDelivery, Clock, StubTreq]:
    clock = Clock()
    http = StubTreq(app)
    sender = EventDelivery(Outbox(StateFile(str(tmp_path / "state.sqlite"), clock), bound),
                           "http://webapp.test/events", ["new-key", "old-key"], http, clock, 5.0, 4.0, staleAfter)
    return sender, clock, http


def run(clock: Clock, http: StubTreq, seconds: float) -> None:
    """
    Let C{seconds} pass, a second at a time, answering every request.
    """
    for _ in range(int(seconds) + 1):
        http.flush()
        clock.advance(1)
        http.flush()


def test_signatureEveryKey() -> None:
    """
    The signature header has one C{v1=} HMAC-SHA256 over C{timestamp.body}
    per key, so the web app may hold either key during a rotation.
    """
    header = sign(["k1", "k2"], 1700000000, b'{"txn_id":1}')
    expected = [hmac.new(key, b'1700000000.{"txn_id":1}', hashlib.sha256).hexdigest() for key in (b"k1", b"k2")]
    assert header == f"v1={expected[0]},v1={expected[1]}"
    assert eventSecrets("a, b\nc") == ("a", "b", "c")


def test_eventsURLNeedsASecret() -> None:
    """
    Events are never sent unsigned.
    """
    required = {"jid": COMPONENT, "secret": "s", "domain": DOMAIN, "roster_url": "http://127.0.0.1/r/%s",
                "no_kick": True}
    with pytest.raises(ConfigError, match="--events-secret: is required with --events-url"):
        buildConfig({**required, "events_url": "http://127.0.0.1/events"}, environ={})
    config = buildConfig({**required, "events_url": "http://127.0.0.1/events"},
                         environ={"ROSTERADMIN_EVENTS_SECRET": "k2,k1"})
    assert eventSecrets(config.events_secret) == ("k2", "k1")


def test_refusedTransactionRetriedUnderItsIdInOrder(tmp_path: Path) -> None:
    """
    A transaction the web app refuses is sent again after 1, 2, 4, 4 s
    (capped), the same body under the same id, nothing after it before
    it; once accepted, the events recorded meanwhile follow in the next
    transaction, with a larger id.
    """
    app = EventsApp([500, 503, 500, 500])
    sender, clock, http = delivery(tmp_path, app)
    sender.startService()
    sender.record({"type": "roster.set", "user": "alice"})
    http.flush()
    assert len(app.received) == 1
    sender.record({"type": "subscription", "user": "alice"})
    times = [clock.seconds()]
    for _ in range(4):
        before = len(app.received)
        while len(app.received) == before:
            clock.advance(0.5)
            http.flush()
        times.append(clock.seconds())
    assert [b - a for a, b in zip(times, times[1:])] == [1.0, 2.0, 4.0, 4.0]
    attempts = app.received[:5]  # four refused, then accepted
    assert len({body for _, body in attempts}) == 1
    assert len({h["x-rosteradmin-transaction"] for h, _ in attempts}) == 1
    run(clock, http, 5)
    [(first, [one]), *_, (second, [two])] = app.transactions()
    assert first == one and second == two > first
    assert sender.snapshot().delivered == 2 and sender.snapshot().queued == 0
    headers, body = app.received[-1]
    signed = f"{headers['x-rosteradmin-timestamp']}.".encode() + body
    assert hmac.new(b"old-key", signed, hashlib.sha256).hexdigest() in headers["x-rosteradmin-signature"]
    assert json.loads(body)["events"][0]["type"] == "subscription"
    sender.stopService()


def test_queuedEventsSentAfterRestart(tmp_path: Path) -> None:
    """
    Events the web app did not take survive a new service on the same
    state file, and are sent by it under the same transaction id.
    """
    app = EventsApp([500])
    sender, clock, http = delivery(tmp_path, app)
    sender.startService()
    sender.record({"type": "roster.set", "user": "alice"})
    http.flush()
    [(txn, _)] = app.transactions()
    sender.stopService()
    sender.outbox.storage.close()
    again, clock, http = delivery(tmp_path, app)
    again.startService()
    http.flush()
    assert app.transactions() == [(txn, [txn]), (txn, [txn])]
    again.stopService()


def test_boundDropsNewEventsAndProblemWhenStale(tmp_path: Path) -> None:
    """
    Past the bound new events are dropped and counted; the oldest waiting
    too long makes a problem for C{/healthz}.
    """
    app = EventsApp([500] * 10)
    sender, clock, http = delivery(tmp_path, app, bound=2, staleAfter=0.0)
    sender.startService()
    for n in range(3):
        sender.record({"type": "t", "n": n})
    http.flush()
    snapshot = sender.snapshot()
    assert (snapshot.queued, snapshot.dropped, snapshot.delivered) == (2, 1, 0)
    assert snapshot.problem is not None and "HTTP 500" in snapshot.problem
    sender.stopService()


def test_rosterSetAndSubscriptionBecomeEvents() -> None:
    """
    A refused roster set becomes one event with each item's action (a
    contact in the roster is renamed, another added, one removed); a
    notice of the subscriptions module becomes a subscription event of
    the local user, in either direction; a notice from anyone but the
    domain is ignored.
    """
    events: list[dict[str, Any]] = []
    wire = ComponentOnWire(WebApp(), record=events.append)
    wire.handshake(PERMISSIONS_2)
    wire.backend.cache.put("alice", Roster([Contact("bob@example.org", "Bob", ("Friends",))]))
    wire.receive(f"<iq type='set' from='alice@example.org/res' to='{COMPONENT}' id='s'>"
                 f"<query xmlns='{NS_ROSTER}'><item jid='bob@example.org' name='Bobby'><group>Work</group></item>"
                 f"<item jid='Dave@example.org'/><item jid='carol@example.org' subscription='remove'/>"
                 f"<item jid='@@bad'/></query></iq>")
    [error] = wire.sent()
    assert error["type"] == "error"
    for sender, direction, frm, to in ((DOMAIN, "outbound", "alice@example.org/res", "dave@example.org"),
                                       (DOMAIN, "inbound", "eve@elsewhere.test", "alice@example.org"),
                                       ("elsewhere.test", "inbound", "eve@elsewhere.test", "alice@example.org")):
        wire.receive(f"<message from='{sender}' to='{COMPONENT}'><refused xmlns='{NS_SUBSCRIPTION}' "
                     f"type='subscribe' direction='{direction}' from='{frm}' to='{to}'/></message>")
    assert events == [
        {"type": "roster.set", "user": "alice", "resource": "alice@example.org/res", "items": [
            {"jid": "bob@example.org", "action": "rename", "name": "Bobby", "groups": ["Work"]},
            {"jid": "dave@example.org", "action": "add", "name": None, "groups": []},
            {"jid": "carol@example.org", "action": "remove"}]},
        {"type": "subscription", "user": "alice", "direction": "outbound", "presence": "subscribe",
         "from": "alice@example.org", "to": "dave@example.org"},
        {"type": "subscription", "user": "alice", "direction": "inbound", "presence": "subscribe",
         "from": "eve@elsewhere.test", "to": "alice@example.org"},
    ]


def test_guideVerifierAcceptsWhatIsSent(tmp_path: Path) -> None:
    """
    The web app's guide's signature check (docs/webapp.md), run as it
    is, accepts a transaction as sent with either key, and refuses another
    key, a changed body and an old timestamp.
    """
    [code] = [block.text for block in codeBlocks((ROOT / "docs" / "webapp.md").read_text())
              if block.language == "python" and "def verified(" in block.text]
    namespace: dict[str, Any] = {}
    exec(code, namespace)
    verified = namespace["verified"]
    app = EventsApp()
    sender, clock, http = delivery(tmp_path, app)
    sender.startService()
    sender.record({"type": "roster.set", "user": "alice"})
    http.flush()
    [(lowered, body)] = app.received
    headers = {"X-Rosteradmin-Timestamp": lowered["x-rosteradmin-timestamp"],
               "X-Rosteradmin-Signature": lowered["x-rosteradmin-signature"]}
    assert verified(headers, body, [b"old-key"]) and verified(headers, body, [b"other", b"new-key"])
    assert not verified(headers, body, [b"other"]) and not verified(headers, body + b" ", [b"new-key"])
    stale = {**headers, "X-Rosteradmin-Timestamp": str(int(headers["X-Rosteradmin-Timestamp"]) - 3600)}
    assert not verified(stale, body, [b"new-key"])
    sender.stopService()
