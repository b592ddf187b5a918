"""
Tests for many roster items per iq (contrib's mod_rosteradmin_roster) in
L{rosteradmin.privilege.PrivilegeHandler.write}, and the fallback to one
item per set on servers without it.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import capturedLogs
from twisted.words.xish import domish

from rosteradmin.rosterwrites import NS_BULK_ROSTER, bulkChunks
from rosteradmin.roster import Contact, RosterDiff
from tests.helpers import COMPONENT, PERMISSIONS_2, ComponentOnWire, WebApp, makeConfig
from tests.test_component import envelope, rosterGet, serverAnswers

ROSTER = {f"user{n}@example.org": {"name": f"User {n}", "groups": ["Friends"]} for n in range(400)}


def bulkServer(iq: domish.Element) -> str | None:
    """
    A server with mod_rosteradmin_roster: every get and set answered.
    """
    if iq.name != "iq" or iq.getAttribute("type") not in ("get", "set"):
        return None
    payload = "<query xmlns='jabber:iq:roster'/>" if iq["type"] == "get" else ""
    return f"<iq type='result' from='{iq['to']}' to='{COMPONENT}' id='{iq['id']}'>{payload}</iq>"


def sets(sent: list[Any]) -> list[Any]:
    """
    The roster writes among C{sent}: iq sets to alice but for the pushes
    to her client (privileged iqs).
    """
    return [s for s in sent if s.name == "iq" and s["type"] == "set" and s["to"] == "alice@example.org"
            and s.firstChildElement().name != "privileged_iq"]


def test_chunksFitTheBudget() -> None:
    """
    Items go in order, as few chunks as fit the budget each.
    """
    diff = RosterDiff(tuple(Contact(f"u{n}@example.org", "x" * 50, ()) for n in range(100)), ("gone@example.org",))
    chunks = bulkChunks(diff, 2000)
    assert all(len(c.encode()) <= 2000 for c in chunks) and len(chunks) > 1
    joined = "".join(chunks)
    assert joined.count("<item ") == 101 and joined.endswith("subscription='remove'/>")


def test_firstSyncIsOneIqPerChunk() -> None:
    """
    On a server that takes many items per iq, a 400-contact first sync is
    one iq per chunk that fits the stanza limit (here 16 KiB: a few), not
    400 sets; none over the limit.
    """
    wire = ComponentOnWire(WebApp({"alice": ROSTER}), makeConfig(max_stanza_bytes=16 * 1024), bulk=None)
    wire.handshake(PERMISSIONS_2)
    wire.receive(envelope(rosterGet()))
    written = sets(wire.answerRequests(bulkServer))
    assert 1 < len(written) < 10 and {s.query.uri for s in written} == {NS_BULK_ROSTER}
    assert sum(len(list(s.query.elements())) for s in written) == 400
    assert wire.transport.largestWrite <= 16 * 1024 and wire.component.privileges.bulk is True


def test_serverWithoutTheModuleGetsOneItemPerSet() -> None:
    """
    A server that refuses the many-items iq gets the same items one per
    privileged set, and is not asked again on this connection.  (The
    revocation of earlier promises sent to the domain at the first
    connection, tests/test_promises.py, is answered here: the write is the
    many-items iq refused.)
    """
    wire = ComponentOnWire(WebApp({"alice": dict(list(ROSTER.items())[:3])}), bulk=None)
    wire.handshake(PERMISSIONS_2)
    server = serverAnswers()
    with capturedLogs() as events:
        wire.receive(envelope(rosterGet()))
        written = sets(wire.answerRequests(lambda iq: bulkServer(iq) if iq.getAttribute("to") == "example.org"
                                           else server(iq)))  # type: ignore[operator]
    assert [s.query.uri for s in written] == [NS_BULK_ROSTER] + ["jabber:iq:roster"] * 3
    assert wire.component.privileges.bulk is False
    assert any("no mod_rosteradmin_roster" in str(e.get("log_format", "")) for e in events)
    wire.webApp.rosters["alice"] = {"bob@example.org": {}}
    refresh = wire.backend.refresh(["alice"])
    again = sets(wire.answerRequests(serverAnswers()))
    assert refresh.result.updated == 1 and {s.query.uri for s in again} == {"jabber:iq:roster"}
