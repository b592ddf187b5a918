# -*- test-case-name: tests.integration.test_events -*-
"""
What users tried reaches the web app, against a real Prosody with
contrib's modules: a refused roster set (add, rename, remove) and a
subscription presence mod_rosteradmin_subscriptions stopped (outbound
and inbound), each as a signed, numbered transaction; through a web app
that refuses for a while (nothing lost, nothing duplicated but whole
transactions under their id, order kept), and through a C{kill -9} of a
real C{twistd} process with events queued.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.web.client import HTTPConnectionPool

from tests.integration.harness import EventsPost, ProsodyServer, WebAppStub
from tests.integration.service import RunningService
from tests.integration.test_convergence import Rosteradmin

pytestmark = pytest.mark.integration

KEYS = (b"new-key", b"old-key")


def signedWithEveryKey(post: EventsPost) -> bool:
    """
    Whether the POST carries a valid signature by each of L{KEYS}.
    """
    [timestamp] = post.headers.getRawHeaders("X-Rosteradmin-Timestamp") or [""]
    [header] = post.headers.getRawHeaders("X-Rosteradmin-Signature") or [""]
    signed = timestamp.encode() + b"." + post.body
    offered = {part.removeprefix("v1=") for part in header.split(",")}
    return all(hmac.new(key, signed, hashlib.sha256).hexdigest() in offered for key in KEYS)


def checkDelivery(webapp: WebAppStub) -> list[dict[str, Any]]:
    """
    Check every POST so far: signed, its id in the header and the body
    the id of its last event; retries are the same body under the same
    id; accepted ids only grow, each accepted once, and no event is in
    two.  The accepted events, in order.
    """
    bodies: dict[int, bytes] = {}
    for post in webapp.events:
        assert signedWithEveryKey(post), post
        txn = post.transaction["txn_id"]
        assert post.headers.getRawHeaders("X-Rosteradmin-Transaction") == [str(txn)]
        assert txn == post.transaction["events"][-1]["id"]
        assert bodies.setdefault(txn, post.body) == post.body, "a transaction id reused for other events"
    accepted = [t["txn_id"] for t in webapp.accepted()]
    assert accepted == sorted(set(accepted)), accepted
    events = [event for t in webapp.accepted() for event in t["events"]]
    ids = [event["id"] for event in events]
    assert ids == sorted(set(ids)), ids
    return events


def summary(events: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """
    What each event says, without its id and time.
    """
    return [(e["type"], e["user"], tuple((i["jid"], i["action"]) for i in e["items"])) if e["type"] == "roster.set"
            else (e["type"], e["user"], e["direction"], e["presence"], e["from"], e["to"]) for e in events]


async def health(baseURL: str, path: str = "/healthz") -> tuple[int, bytes]:
    response = await treq.get(baseURL + path, pool=HTTPConnectionPool(reactor, persistent=False))
    return response.code, await response.content()


@pytest_twisted.ensureDeferred
async def test_everyAttemptReachesTheWebAppThroughRefusals(prosody: ProsodyServer, webapp: WebAppStub,
                                                           clients: Any, tmp_path: Path) -> None:
    """
    alice adds dave, renames bob and removes carol in her client (three
    refused roster sets), asks dave for a subscription (stopped on its way
    out), and a subscription request for her from elsewhere is stopped
    on its way in: while the web app refuses events (for several retries
    of the first transaction, 1 s, 2 s, then every 3 s), they queue and
    C{/healthz} says so; once it accepts, all five arrive, in order, each
    accepted once, every POST signed by both keys.
    """
    webapp.rosters["alice"] = {"bob@example.org": {"name": "Bob"}, "carol@example.org": {"name": "Carol"}}
    webapp.refuseEvents = 503
    service = RunningService(prosody, webapp.url, [
        "--state", str(tmp_path / "state.sqlite"), "--events-url", webapp.eventsURL,
        "--events-secret", ",".join(key.decode() for key in KEYS), "--events-retry-max-delay", "3",
        "--events-stale-after", "2"])
    await service.start()
    try:
        events = service.top.getServiceNamed("events")
        alice = await clients("alice")
        await alice.rosterGet(ver="")
        alice.sendPresence()
        for n, (jid, name, subscription) in enumerate([("dave@example.org", "Dave", None),
                                                       ("bob@example.org", "Bobby", None),
                                                       ("carol@example.org", None, "remove")]):
            reply = await alice.rosterSet(jid, name, subscription)
            assert reply["type"] == "error"
            await RunningService.waitUntil(lambda: events.snapshot().queued == n + 1, 5, f"event {n + 1} kept")
        alice.sendPresence(to="dave@example.org", type="subscribe")
        await RunningService.waitUntil(lambda: events.snapshot().queued == 4, 5, "the outbound subscription kept")
        service.component.xmlstream.send(
            f"<presence from='stranger@{prosody.componentJID}' to='alice@example.org' type='subscribe'/>")
        await RunningService.waitUntil(lambda: events.snapshot().queued == 5, 5, "the inbound subscription kept")
        await RunningService.waitUntil(lambda: len(webapp.events) >= 4, 15, "four refused attempts")
        code, body = await health(service.baseURL)
        assert code == 200 and b'"status": "degraded"' in body and b"has not accepted events" in body, body
        assert {post.transaction["txn_id"] for post in webapp.events} == {webapp.events[0].transaction["txn_id"]}
        webapp.refuseEvents = None
        await RunningService.waitUntil(lambda: events.snapshot().queued == 0, 10, "every event accepted")
        delivered = checkDelivery(webapp)
        assert summary(delivered) == [
            ("roster.set", "alice", (("dave@example.org", "add"),)),
            ("roster.set", "alice", (("bob@example.org", "rename"),)),
            ("roster.set", "alice", (("carol@example.org", "remove"),)),
            ("subscription", "alice", "outbound", "subscribe", "alice@example.org", "dave@example.org"),
            ("subscription", "alice", "inbound", "subscribe", f"stranger@{prosody.componentJID}",
             "alice@example.org"),
        ]
        assert delivered[0]["resource"] == alice.jid.full() and delivered[0]["items"][0]["name"] == "Dave"
        code, body = await health(service.baseURL)
        assert b'"events_error": null' in body, body
        code, metrics = await health(service.baseURL, "/metrics")
        assert re.search(rb"^rosteradmin_events_queued 0\.0$", metrics, re.M)
        assert re.search(rb"^rosteradmin_events_delivered_total 5\.0$", metrics, re.M)
    finally:
        await service.stop()


@pytest_twisted.ensureDeferred
async def test_eventsQueuedAtAKillAreDeliveredAfterRestart(prosody: ProsodyServer, webapp: WebAppStub,
                                                           clients: Any, tmp_path: Path) -> None:
    """
    A real C{twistd} rosteradmin keeps two events the web app refuses,
    and is killed with C{kill -9}; the next one on the same state file
    sends them once the web app accepts: the first under the id it was
    refused under, nothing lost or doubled.
    """
    (tmp_path / "events-keys").write_text("\n".join(key.decode() for key in KEYS) + "\n")
    settings = (f'events_url = "{webapp.eventsURL}"\nevents_secret_file = "{tmp_path / "events-keys"}"\n'
                f"events_retry_max_delay = 1.0\n")
    state = tmp_path / "state.sqlite"
    webapp.refuseEvents = 500
    first = Rosteradmin(prosody, webapp, tmp_path, "first", state, settings)
    try:
        await first.healthy()
        alice = await clients("alice")
        await alice.rosterGet(ver="")
        assert (await alice.rosterSet("dave@example.org", "Dave"))["type"] == "error"
        alice.sendPresence(to="erin@example.org", type="subscribe")

        async def queued() -> bytes:
            return (await health(first.baseURL, "/metrics"))[1]

        for _ in range(100):
            if re.search(rb"^rosteradmin_events_queued 2\.0$", await queued(), re.M) and webapp.events:
                break
            await RunningService.sleep(0.1)
        else:
            raise AssertionError(f"two events never queued:\n{first.output()[-3000:]}")
        first.kill()
    finally:
        first.ensureGone()
    refusedTxn = webapp.events[0].transaction["txn_id"]
    webapp.refuseEvents = None
    second = Rosteradmin(prosody, webapp, tmp_path, "second", state, settings)
    try:
        await second.healthy()
        await RunningService.waitUntil(lambda: sum(len(t["events"]) for t in webapp.accepted()) >= 2, 15,
                                       "both events accepted after the restart")
        delivered = checkDelivery(webapp)
        assert webapp.accepted()[0]["txn_id"] == refusedTxn
        assert summary(delivered) == [
            ("roster.set", "alice", (("dave@example.org", "add"),)),
            ("subscription", "alice", "outbound", "subscribe", "alice@example.org", "erin@example.org"),
        ]
        second.stop()
    finally:
        second.ensureGone()
