"""
Tests for L{rosteradmin.convergence}: what the server could not store is
written when the server takes writes again (every unsynced user), or when
one user's writes may be tried again (that user alone), within one bound
over every event.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from twisted.logger import capturedLogs
from twisted.words.xish import domish

from rosteradmin.convergence import RESYNC_CONCURRENCY
from rosteradmin.parking import PARK_FIRST_DELAY
from rosteradmin.roster import NS_ROSTER
from tests.helpers import COMPONENT, PERMISSIONS_2, ComponentOnWire, WebApp
from tests.test_component import serverAnswers


def unsyncedUsers(names: list[str]) -> ComponentOnWire:
    """
    A component whose server granted roster access on its first stream (so
    the resume of a previous run's work is done) and grants none on this
    one yet, with these users' rosters fetched and cached, and so unsynced.
    """
    wire = ComponentOnWire(WebApp({name: {"carol@example.org": {}} for name in names}))
    wire.handshake(PERMISSIONS_2)
    wire.reconnect("")
    with capturedLogs():
        for name in names:
            wire.backend.getRoster(name)
        assert wire.sent() == []
    assert wire.backend.unsynced == set(names)
    return wire


def rosterRequests(sent: list[domish.Element], kind: str) -> list[str]:
    """
    The users whose roster was read (C{"get"}) or written (C{"set"}).
    """
    return [s["to"].split("@")[0] for s in sent
            if s.name == "iq" and s.getAttribute("type") == kind and s.query is not None and s.query.uri == NS_ROSTER]


def refused(iq: domish.Element) -> str | None:
    """
    Refuse every privileged roster read, as a server failing does.
    """
    if iq.name != "iq" or iq.getAttribute("type") not in ("get", "set"):
        return None
    return (f"<iq type='error' from='{iq['to']}' to='{COMPONENT}' id='{iq['id']}'><error type='wait'>"
            "<internal-server-error xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>")


def answerInRounds(wire: ComponentOnWire, reply: Any) -> list[list[domish.Element]]:
    """
    Answer what the component sends, round by round (each round answers
    everything sent in the one before), until it sends no more.
    """
    rounds = []
    while sent := wire.sent():
        rounds.append(sent)
        for stanza in sent:
            answer = reply(stanza)
            if answer is not None:
                wire.receive(answer)
    return rounds


def test_twoRestorationsInARowKeepTheBound() -> None:
    """
    The server grants roster access twice in a row (a second advertisement
    on the same stream) and fails every read: the unsynced users are
    re-synced within one bound, not two, and each is read once, not once
    per restoration.  The next restoration re-syncs them again.
    """
    names = [f"user{n:02}" for n in range(3 * RESYNC_CONCURRENCY)]
    wire = unsyncedUsers(names)
    with capturedLogs():
        wire.receive(PERMISSIONS_2)
        wire.receive(PERMISSIONS_2)
        rounds = answerInRounds(wire, refused)
        assert max(len(rosterRequests(sent, "get")) for sent in rounds) == RESYNC_CONCURRENCY
        assert Counter(get for sent in rounds for get in rosterRequests(sent, "get")) == Counter(names)
        assert wire.backend.unsynced == set(names)
        wire.receive(PERMISSIONS_2)
        rounds = answerInRounds(wire, serverAnswers())
    assert max(len(rosterRequests(sent, "get")) for sent in rounds) == RESYNC_CONCURRENCY
    assert Counter(get for sent in rounds for get in rosterRequests(sent, "get")) == Counter(names)
    assert Counter(item for sent in rounds for item in rosterRequests(sent, "set")) == Counter(names)
    assert wire.backend.unsynced == set()


def test_unparkingResyncsThatUserOnly() -> None:
    """
    alice's writes are parked, and the server fails to read alice's and
    bob's rosters at the restoration: once alice's writes are unparked,
    alice alone is re-synced; bob, unsynced too, waits for the next time
    the server takes writes, not for an event that is not his.
    """
    wire = unsyncedUsers(["alice", "bob"])
    privileges = wire.component.privileges
    privileges.parking._strikes["alice"] = 1
    privileges.parking._writing["alice"] = 1  # in flight at the next loss of the stream
    with capturedLogs():
        privileges.parking.connectionLost()
        assert "alice" in privileges.parked
        wire.receive(PERMISSIONS_2)
        sent = wire.answerRequests(refused)
        assert sorted(rosterRequests(sent, "get")) == ["alice", "bob"]
        assert wire.backend.unsynced == {"alice", "bob"}
        wire.clock.advance(PARK_FIRST_DELAY)
        sent = wire.answerRequests(serverAnswers())
    assert privileges.parked == {}
    assert rosterRequests(sent, "get") == ["alice"] and rosterRequests(sent, "set") == ["alice"]
    assert wire.backend.unsynced == {"bob"}


def test_clientsUserGoesFirstThoughQueued() -> None:
    """
    A restoration queued every unsynced user behind the bound; a client of
    the last of them asks for its roster: that user is the next re-synced
    (when a place frees), not after the whole pass, and only once.
    """
    names = [f"user{n:02}" for n in range(3 * RESYNC_CONCURRENCY)]
    wire = unsyncedUsers(names)
    with capturedLogs():
        wire.receive(PERMISSIONS_2)
        inFlight = [s for s in wire.sent() if rosterRequests([s], "get")]
        assert rosterRequests(inFlight, "get") == names[:RESYNC_CONCURRENCY]
        wire.backend.getRoster(names[-1])
        assert wire.sent() == []
        answer = refused(inFlight[0])
        assert answer is not None
        wire.receive(answer)
        assert rosterRequests(wire.sent(), "get") == [names[-1]]
        for stanza in inFlight[1:]:
            answer = refused(stanza)
            assert answer is not None
            wire.receive(answer)
        rounds = answerInRounds(wire, refused)
    gets = [names[-1]] + [get for sent in rounds for get in rosterRequests(sent, "get")]
    assert Counter(gets) == Counter(names[RESYNC_CONCURRENCY:])
